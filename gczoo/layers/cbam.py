"""CBAM: Convolutional Block Attention Module.

Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018 (arXiv:1807.06521).

Semantics follow the authors' code (Jongchan/attention-module), so their ImageNet checkpoints load
after renaming the keys with ``OFFICIAL_KEY_MAP``:

* channel gate (Eq. 2): every pooled descriptor (``pool_types``) goes through one shared MLP
  ``Linear(C, C/r) -> act -> Linear(C/r, C)`` (both with bias); the MLP outputs are summed and
  passed through a sigmoid. ``x1 = x * M_c(x)``.
* spatial gate (Eq. 3): ``cat[max over C, mean over C]`` of ``x1`` (this order, as in the official
  code; timm's ``CbamModule`` uses ``[mean, max]``, so spatial weights are not interchangeable)
  ``-> Conv2d(2, 1, 7, padding=3, bias=False) -> BatchNorm2d(1, eps=1e-5, momentum=0.01) -> sigmoid``.
  ``out = x1 * M_s(x1)``.
"""
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_act_layer

from ._validate import as_tuple, check_input, check_positive_int, resolve_rd_channels
from .norm import BatchNormAnyBatch2d

__all__ = ['CBAM', 'OFFICIAL_KEY_MAP', 'POOL_TYPES']

POOL_TYPES = ('avg', 'max', 'lp', 'lse')

# Suffix of a key in the official checkpoints (``...cbam.<suffix>``) -> key in ``CBAM.state_dict()``.
# The official ``ChannelGate.mlp`` is ``Sequential(Flatten, Linear, ReLU, Linear)``, hence ``mlp.1``/``mlp.3``.
# ``num_batches_tracked`` is absent from checkpoints saved before PyTorch 0.4.1: load those with ``strict=False``
# or fill it in. With ``no_spatial=True`` the ``SpatialGate.*`` entries do not occur.
OFFICIAL_KEY_MAP: Dict[str, str] = {
    'ChannelGate.mlp.1.weight': 'channel_gate.fc1.weight',
    'ChannelGate.mlp.1.bias': 'channel_gate.fc1.bias',
    'ChannelGate.mlp.3.weight': 'channel_gate.fc2.weight',
    'ChannelGate.mlp.3.bias': 'channel_gate.fc2.bias',
    'SpatialGate.spatial.conv.weight': 'spatial_gate.conv.weight',
    'SpatialGate.spatial.bn.weight': 'spatial_gate.bn.weight',
    'SpatialGate.spatial.bn.bias': 'spatial_gate.bn.bias',
    'SpatialGate.spatial.bn.running_mean': 'spatial_gate.bn.running_mean',
    'SpatialGate.spatial.bn.running_var': 'spatial_gate.bn.running_var',
    'SpatialGate.spatial.bn.num_batches_tracked': 'spatial_gate.bn.num_batches_tracked',
}

_POOL_IDS = {name: i for i, name in enumerate(POOL_TYPES)}


class _ChannelGate(nn.Module):
    """Shared MLP over the pooled descriptors, summed, then sigmoid. Returns ``(B, C)``."""

    def __init__(
            self,
            channels: int,
            rd_channels: int,
            pool_types: Sequence[str],
            act_layer: Union[str, Callable[..., nn.Module]],
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        # ints, so TorchScript dispatches with if/elif on a List[int]
        self.pool_ids: List[int] = [_POOL_IDS[p] for p in pool_types]
        self.fc1 = nn.Linear(channels, rd_channels, bias=True, **dd)
        self.act = create_act_layer(act_layer)
        self.fc2 = nn.Linear(rd_channels, channels, bias=True, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled: List[torch.Tensor] = []
        for pid in self.pool_ids:
            if pid == 0:  # avg
                pooled.append(x.mean((2, 3)))
            elif pid == 1:  # max
                pooled.append(x.amax((2, 3)))
            elif pid == 2:  # lp: L2 power pooling over the whole map, == F.lp_pool2d(x, 2, (H, W))
                pooled.append(torch.linalg.vector_norm(x, 2.0, dim=(2, 3)))
            else:  # lse: log-sum-exp over positions (max-shifted inside torch.logsumexp: stable)
                pooled.append(torch.logsumexp(x, dim=(2, 3)))
        # one MLP call on the stacked descriptors (P, B, C), then the sum over P
        logits = self.fc2(self.act(self.fc1(torch.stack(pooled, 0)))).sum(0)
        return torch.sigmoid(logits)


class _SpatialGate(nn.Module):
    """``cat[max_C, mean_C] -> conv kxk (no bias) -> BN -> sigmoid``. Returns ``(B, 1, H, W)``."""

    def __init__(self, kernel_size: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False, **dd)
        self.bn = BatchNormAnyBatch2d(1, eps=1e-5, momentum=0.01, affine=True, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channel pool: max first, then mean (official order)
        y = self.conv(torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1))
        return torch.sigmoid(self.bn(y))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (channel gate, then spatial gate), official semantics.

    Args:
        channels: input (= output) channels C.
        rd_ratio: MLP reduction, hidden width ``int(C * rd_ratio)`` (official: ``C // 16``).
        rd_channels: hidden width, overrides ``rd_ratio``.
        pool_types: descriptors fed to the shared MLP, any of ``'avg'`` (global average), ``'max'``
            (global max), ``'lp'`` (L2 power pooling, ``sqrt(sum x^2)`` over the map), ``'lse'``
            (log-sum-exp over the map, computed stably). Default ``('avg', 'max')`` as in the paper.
        spatial_kernel_size: odd kernel of the spatial convolution (paper and official: 7).
        no_spatial: channel gate only (the official ``no_spatial`` switch).
        act_layer: MLP activation (class or timm name).

    If a train-mode call gives the spatial BatchNorm a single value (batch 1 with a 1x1 map), that
    call normalises with the running statistics instead of raising; otherwise BN is standard.
    """

    def __init__(
            self,
            channels: int,
            *,
            rd_ratio: float = 1. / 16,
            rd_channels: Optional[int] = None,
            pool_types: Sequence[str] = ('avg', 'max'),
            spatial_kernel_size: int = 7,
            no_spatial: bool = False,
            act_layer: Union[str, Callable[..., nn.Module]] = nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        rd = resolve_rd_channels(channels, rd_ratio, rd_channels)
        pools = as_tuple('pool_types', pool_types, POOL_TYPES)
        check_positive_int('spatial_kernel_size', spatial_kernel_size)
        if spatial_kernel_size % 2 == 0:
            raise ValueError(
                f'spatial_kernel_size must be odd (same-size padding), got {spatial_kernel_size}')
        if not isinstance(no_spatial, bool):
            raise TypeError(f'no_spatial must be a bool, got {type(no_spatial).__name__} ({no_spatial!r})')
        self.channels = channels
        self.rd_channels = rd
        self.pool_types = pools
        self.no_spatial = no_spatial
        self.channel_gate = _ChannelGate(channels, rd, pools, act_layer, **dd)
        self.spatial_gate: Optional[_SpatialGate] = (
            None if no_spatial else _SpatialGate(spatial_kernel_size, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear/Conv: PyTorch defaults; BN: weight 1, bias 0, running stats reset.

        Nothing is zero-initialised: a sigmoid gate cannot be the identity (sigmoid(0) = 0.5 halves
        the features), so there is no identity init to restore. (The official ImageNet training script
        additionally sets the spatial BN weight to 0, kaiming-inits convs and zeroes all biases; apply
        that in a model's init if reproducing their training from scratch.)
        """
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.reset_parameters()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # running stats, weight 1, bias 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, 4, 'CBAM')
        x = x * self.channel_gate(x)[:, :, None, None]
        if self.spatial_gate is not None:
            x = x * self.spatial_gate(x)
        return x

    def attention_maps(self, x: torch.Tensor, queries: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``'channel'``: channel gate after sigmoid ``(B, C)``; ``'spatial'`` (unless ``no_spatial``):
        spatial gate after sigmoid ``(B, 1, H, W)``, computed on the channel-refined features as in forward.
        ``queries`` is ignored (not a query-based block). In train mode the BN batch statistics are used
        as in forward, but the BN running statistics are left untouched."""
        check_input(x, self.channels, 4, 'CBAM')
        saved = [b.clone() for b in self.buffers()]
        try:
            channel = self.channel_gate(x)
            maps = {'channel': channel}
            if self.spatial_gate is not None:
                maps['spatial'] = self.spatial_gate(x * channel[:, :, None, None])
        finally:
            with torch.no_grad():
                for b, s in zip(self.buffers(), saved):
                    b.copy_(s)
        return maps

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, rd_channels={self.rd_channels}, '
                f'pool_types={self.pool_types}, no_spatial={self.no_spatial}')
