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

Speed (``gczoo bench layers --backward``): autograd's generic backward of this chain allocates a
full-size tensor per step (``amax``'s tie masks, the pooling scatters, the broadcast gradients, the
products in front of each reduction) and adds them up. In training, with the paper's ``avg``/``max``
pooling, ``_CBAMFunction`` keeps one full-size buffer instead and writes every contribution into it
in place; it saves only ``x`` (every sum over channels of ``x1`` is a matrix product with ``M_c``).
The small gates (MLP, conv, BN) stay ordinary autograd graphs. In inference the spatial gate is
applied in place. Other pool types, TorchScript, tracing and ``torch.compile`` use the plain ops.
"""
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_act_layer

from ._fused_gate import (GateGraphs, channel_dots, dense_layout, graph_capture, has_parameters, records_a_graph,
                          weighted_channel_sum)
from ._validate import as_tuple, check_input, check_positive_int, resolve_rd_channels
from .norm import BatchNormAnyBatch2d, batch_norm_any_batch

__all__ = ['CBAM', 'OFFICIAL_KEY_MAP', 'POOL_TYPES']

torch.fx.wrap('batch_norm_any_batch')  # an FX leaf here too (its branch reads the input's shape), as in norm.py

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

    def pool(self, x: torch.Tensor, index_max: bool = False) -> List[torch.Tensor]:
        pooled: List[torch.Tensor] = []
        for pid in self.pool_ids:
            if pid == 0:  # avg
                pooled.append(x.mean((2, 3)))
            elif pid == 1:  # max; index_max: the index-returning max, whose backward is one scatter where
                # amax's builds full-size tie masks (and spreads ties, where the official max_pool2d picks one)
                pooled.append(torch.max(x.flatten(2), -1)[0] if index_max else x.amax((2, 3)))
            elif pid == 2:  # lp: L2 power pooling over the whole map, == F.lp_pool2d(x, 2, (H, W))
                pooled.append(torch.linalg.vector_norm(x, 2.0, dim=(2, 3)))
            else:  # lse: log-sum-exp over positions (max-shifted inside torch.logsumexp: stable)
                pooled.append(torch.logsumexp(x, dim=(2, 3)))
        return pooled

    def gate(self, pooled: List[torch.Tensor], fc1_weight: torch.Tensor, fc1_bias: torch.Tensor,
             fc2_weight: torch.Tensor, fc2_bias: torch.Tensor) -> torch.Tensor:
        """sigmoid(sum of the MLP over the descriptors); the weights are arguments for ``_CBAMFunction``."""
        # one MLP call on the stacked descriptors (P, B, C), then the sum over P
        hidden = self.act(F.linear(torch.stack(pooled, 0), fc1_weight, fc1_bias))
        return torch.sigmoid(F.linear(hidden, fc2_weight, fc2_bias).sum(0))

    def forward(self, x: torch.Tensor, index_max: bool = False) -> torch.Tensor:
        return self.gate(self.pool(x, index_max), self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)


class _SpatialGate(nn.Module):
    """``cat[max_C, mean_C] -> conv kxk (no bias) -> BN -> sigmoid``. Returns ``(B, 1, H, W)``."""

    def __init__(self, kernel_size: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False, **dd)
        self.bn = BatchNormAnyBatch2d(1, eps=1e-5, momentum=0.01, affine=True, **dd)

    def gate(self, pooled: torch.Tensor, conv_weight: torch.Tensor, bn_weight: Optional[torch.Tensor],
             bn_bias: Optional[torch.Tensor]) -> torch.Tensor:
        """sigmoid(BN(conv(pooled))) of the ``(B, 2, H, W)`` channel pool; weights as arguments."""
        y = F.conv2d(pooled, conv_weight, None, 1, self.conv.padding)
        bn = self.bn
        y = batch_norm_any_batch(y, bn.running_mean, bn.running_var, bn_weight, bn_bias, bn.num_batches_tracked,
                                 bn.training and bn.track_running_stats, bn.momentum, bn.eps)
        return torch.sigmoid(y)

    def forward(self, x: torch.Tensor, index_max: bool = False) -> torch.Tensor:
        # channel pool: max first, then mean (official order); index_max as in _ChannelGate.pool
        x_max = torch.max(x, 1, keepdim=True)[0] if index_max else x.amax(1, keepdim=True)
        return self.gate(torch.cat([x_max, x.mean(1, keepdim=True)], 1),
                         self.conv.weight, self.bn.weight, self.bn.bias)


class _CBAMFunction(torch.autograd.Function):
    """CBAM with avg/max channel pooling and a backward that writes into one full-size buffer.

    ``forward(x, block, *params)``: ``params`` are ``block``'s parameters (so autograd hands their
    gradients back through this node). The gates run on detached copies of them, as small autograd
    graphs that ``backward`` differentiates with ``torch.autograd.grad``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: 'CBAM', *params: torch.Tensor) -> torch.Tensor:
        cg, sg = block.channel_gate, block.spatial_gate
        graphs = GateGraphs(params)
        leaf = graphs.leaf
        flat = x.flatten(2)  # a view: x is contiguous or channels_last (checked by the caller)
        pooled, max_index = [], None
        for pid in cg.pool_ids:  # computed without a graph, then leaves of the gate's small graph
            if pid == 0:
                pooled.append(flat.mean(-1).requires_grad_())
            else:
                values, max_index = flat.max(-1)
                pooled.append(values.requires_grad_())
        with torch.enable_grad():
            g = cg.gate(pooled, leaf(cg.fc1.weight), leaf(cg.fc1.bias), leaf(cg.fc2.weight), leaf(cg.fc2.bias))
        g_full = g.detach().to(torch.promote_types(x.dtype, g.dtype))[:, :, None, None]
        out = x * g_full  # x1; becomes the output in place below
        s = c_pooled = c_index = None
        if sg is not None:
            c_max, c_index = out.max(1, keepdim=True)
            c_pooled = [c_max.requires_grad_(), out.mean(1, keepdim=True).requires_grad_()]
            with torch.enable_grad():
                s = sg.gate(torch.cat(c_pooled, 1), leaf(sg.conv.weight), leaf(sg.bn.weight), leaf(sg.bn.bias))
            out.mul_(s.detach().to(out.dtype))
        ctx.save_for_backward(x, g_full, max_index, c_index)
        ctx.graphs = (pooled, g, c_pooled, s)
        ctx.gate_graphs = graphs
        ctx.pool_ids = list(cg.pool_ids)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, g_full, max_index, c_index = ctx.saved_tensors
        pooled, g, c_pooled, s = ctx.graphs
        small_backward = ctx.gate_graphs.backward
        c = x.shape[1]
        grad = torch.empty_like(x, dtype=g_full.dtype)  # x's layout, so flatten(2) is a view
        if s is not None:
            # d out / d s: sum over C of grad_out * x1 = sum over C of (grad_out * x) * M_c, a matrix product
            torch.mul(grad_out, x, out=grad)
            grad_s = weighted_channel_sum(grad, g_full[:, :, 0, 0])
            d_max, d_mean = small_backward(s, c_pooled, grad_s)
            # d x1 = grad_out * M_s + the channel pool's: mean (broadcast) and max (one scatter)
            torch.addcmul(d_mean / c, grad_out, s.detach().to(grad.dtype), out=grad)
            grad.scatter_add_(1, c_index, d_max.to(grad.dtype))
        else:
            grad.copy_(grad_out)
        # d M_c: sum over H, W of d x1 * x, a batched dot product
        grad_g = channel_dots(grad, x)
        d_pooled = small_backward(g, pooled, grad_g)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # d x = d x1 * M_c + the spatial pool's: mean (broadcast, fused into the product), max (a scatter)
            d_avg = [d for pid, d in zip(ctx.pool_ids, d_pooled) if pid == 0]
            if d_avg:
                torch.addcmul((d_avg[0] / (x.shape[2] * x.shape[3])).to(grad.dtype)[:, :, None, None], grad, g_full,
                              out=grad)
            else:
                grad.mul_(g_full)
            for pid, d in zip(ctx.pool_ids, d_pooled):
                if pid == 1:
                    grad.flatten(2).scatter_add_(2, max_index.unsqueeze(-1), d.to(grad.dtype).unsqueeze(-1))
            grad_x = grad.to(x.dtype)
        return (grad_x, None, *ctx.gate_graphs.param_grads())


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
        if not torch.jit.is_scripting():
            if graph_capture():  # the plain ops, the same whether or not grad is enabled
                return self._forward_ops(x, inplace=False, index_max=False)
            if self._fused_backward_applies(x):
                return self._forward_fused(x)
        grad = torch.is_grad_enabled()
        return self._forward_ops(x, inplace=not grad, index_max=grad)

    def _forward_ops(self, x: torch.Tensor, inplace: bool, index_max: bool) -> torch.Tensor:
        x = x * self.channel_gate(x, index_max)[:, :, None, None]
        if self.spatial_gate is not None:
            s = self.spatial_gate(x, index_max)
            # x is this call's own product; without a graph to record, the gate is applied in place
            # (one full-size allocation less) unless that would narrow the dtype the product has
            if inplace and torch.promote_types(x.dtype, s.dtype) == x.dtype:
                x = x.mul_(s)
            else:
                x = x * s
        return x

    @torch.jit.unused
    def _fused_backward_applies(self, x: torch.Tensor) -> bool:
        """Whether ``_CBAMFunction`` can run this call: a graph is recorded, avg/max pooling, no
        activation parameters, a dense NCHW or channels_last input, no torch.func transform."""
        if not records_a_graph(x, self) or any(pid > 1 for pid in self.channel_gate.pool_ids):
            return False
        return not has_parameters([self.channel_gate.act]) and dense_layout(x)

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        return _CBAMFunction.apply(x, self, *self.parameters())

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
