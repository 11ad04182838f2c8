"""Global Context (GC) block and Simplified Non-local (SNL) block.

Paper: `GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond`,
Yue Cao, Jiarui Xu, Stephen Lin, Fangyun Wei, Han Hu, ICCVW 2019 - https://arxiv.org/abs/1904.11492

Both blocks share the paper's three-step global context framework:

1. context modelling - one query-independent context vector per image,
   ``c = sum_j softmax_j(W_k x) * x_j`` (attention pooling, ``W_k`` a 1x1 conv C -> 1),
   or a global average pool;
2. transform - ``W_v c`` (SNL, Eq. 2: one 1x1 conv C -> C) or the GC bottleneck
   ``conv1x1(C -> P) -> LayerNorm -> ReLU -> conv1x1(P -> C)`` (Eq. 3);
3. fusion - broadcast add to every position (``channel_add``) and/or a sigmoid channel gate
   (``channel_mul``); with both, multiply first, then add.

The attention pooling is a batched matmul ``(B, C, HW) @ (B, HW, 1)``: nothing HW x HW is ever formed.

Module and parameter names follow the official GCNet / mmcv ``ContextBlock`` (``conv_mask``,
``channel_add_conv.{0,1,3}``, ``channel_mul_conv.{0,1,3}``, LayerNorm weights of shape ``[P, 1, 1]``) so
its checkpoints map 1:1.
"""
import warnings
from typing import Callable, Dict, Optional, Sequence, Union

import torch
import torch.fx
import torch.nn as nn

from timm.layers.create_act import create_act_layer

from ._validate import as_tuple, check_choice, check_input, check_positive_int, resolve_rd_channels

__all__ = ['ContextBlock', 'SimplifiedNonLocal']

_POOLING_TYPES = ('att', 'avg')
_FUSION_TYPES = ('channel_add', 'channel_mul')


@torch.fx.wrap  # a leaf for FX tracing: it branches on the dtype
def _softmax_pool_weights(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, computed in float32 when ``logits`` are float16/bfloat16.

    ``logits``: (B, 1, HW). Returns weights in the logits' (input) dtype that sum to 1 over HW.
    """
    if logits.dtype == torch.float16 or logits.dtype == torch.bfloat16:
        return torch.softmax(logits.float(), dim=-1).to(logits.dtype)
    return torch.softmax(logits, dim=-1)


def _init_conv_mask(conv: nn.Conv2d) -> None:
    """Kaiming-normal (fan_in, ReLU gain) weight and zero bias, as mmcv's ``kaiming_init(mode='fan_in')``."""
    nn.init.kaiming_normal_(conv.weight, a=0, mode='fan_in', nonlinearity='relu')
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ContextBlock(nn.Module):
    """Global context (GC) block of GCNet (Cao et al., arXiv:1904.11492, Eq. 3 / Fig. 4(d)).

    ``z = x * sigmoid(T_mul(c)) + T_add(c)`` where ``c`` is the image's context vector
    (softmax attention pooling ``'att'`` or global average pooling ``'avg'``) and each transform
    ``T`` is ``conv1x1(C -> P) -> LayerNorm([P, 1, 1]) -> ReLU -> conv1x1(P -> C)``. Only the
    transforms named in ``fusion_types`` exist; with both, the multiplication is applied first.

    Args:
        channels: input (= output) channels C.
        rd_ratio: bottleneck ratio, ``P = int(C * rd_ratio)`` (the paper's 1/r; r = 16 by default,
            the GCNet detection configs also use r = 4). A ratio leaving ``P = 0`` is refused; ``P = 1``
            with LayerNorm warns (a LayerNorm over one channel outputs its bias: the context is ignored).
        rd_channels: bottleneck width P, overrides ``rd_ratio``.
        pooling_type: ``'att'`` (softmax attention pooling, the paper's GC block) or ``'avg'``
            (global average pooling, as SE).
        fusion_types: one or both of ``'channel_add'`` (the paper's default) and ``'channel_mul'``.
        norm_layer: normalisation between the two transform convs. ``nn.LayerNorm`` (default) is built
            as ``nn.LayerNorm([P, 1, 1])`` - the paper's / mmcv's layout and checkpoint shapes. Any other
            callable is called as ``norm_layer(P, device=..., dtype=...)`` and gets a (B, P, 1, 1) input;
            ``None`` means no normalisation (``nn.Identity``, keeping the Sequential's index layout).
        act_layer: activation inside the transform (ReLU); a class or a timm activation name.

    Initialisation (:meth:`reset_parameters`) follows mmcv: ``conv_mask`` kaiming-normal fan_in, the
    transforms' first conv PyTorch default, LayerNorm ones/zeros, and the LAST conv of every transform
    zero (weight and bias). With ``fusion_types=('channel_add',)`` the block is then exactly the identity.
    With ``channel_mul`` the zero conv gives ``sigmoid(0) = 0.5``: the block halves its input at init
    (``channel_mul`` only: ``z = 0.5 x``; both: ``z = 0.5 x``) - mmcv does the same.

    ``attention_maps`` returns ``'context'`` (B, 1, H, W) - the softmax pooling weights (uniform
    ``1 / HW`` for ``'avg'``) - and, with ``channel_mul``, ``'channel'`` (B, C), the sigmoid gate.
    """

    def __init__(
            self,
            channels: int,
            *,
            rd_ratio: float = 1. / 16,
            rd_channels: Optional[int] = None,
            pooling_type: str = 'att',
            fusion_types: Union[str, Sequence[str]] = ('channel_add',),
            norm_layer: Optional[Callable[..., nn.Module]] = nn.LayerNorm,
            act_layer: Union[str, Callable[..., nn.Module]] = nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        rd = resolve_rd_channels(channels, rd_ratio, rd_channels)
        check_choice('pooling_type', pooling_type, _POOLING_TYPES)
        fusions = as_tuple('fusion_types', fusion_types, _FUSION_TYPES)
        self.channels = channels
        self.rd_channels = rd
        self.pooling_type = pooling_type
        self.fusion_types = fusions
        if rd == 1 and norm_layer is nn.LayerNorm:
            warnings.warn(
                f'ContextBlock: rd_channels=1 (channels={channels}, rd_ratio={rd_ratio}) with LayerNorm makes the '
                f'transform a constant (LayerNorm over one channel outputs its bias), so the context is ignored; '
                f'use rd_ratio or rd_channels giving >= 2 channels', UserWarning, stacklevel=2)

        if pooling_type == 'att':
            self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1, **dd)
        else:
            self.conv_mask = None
        if 'channel_add' in fusions:
            self.channel_add_conv = self._make_transform(channels, rd, norm_layer, act_layer, dd)
        else:
            self.channel_add_conv = None
        if 'channel_mul' in fusions:
            self.channel_mul_conv = self._make_transform(channels, rd, norm_layer, act_layer, dd)
        else:
            self.channel_mul_conv = None
        self.reset_parameters()

    @staticmethod
    def _make_transform(channels: int, rd: int, norm_layer, act_layer, dd: dict) -> nn.Sequential:
        if norm_layer is None:
            norm = nn.Identity()
        elif norm_layer is nn.LayerNorm:
            norm = nn.LayerNorm([rd, 1, 1], **dd)
        else:
            norm = norm_layer(rd, **dd)
        return nn.Sequential(
            nn.Conv2d(channels, rd, kernel_size=1, **dd),
            norm,
            create_act_layer(act_layer, inplace=True),
            nn.Conv2d(rd, channels, kernel_size=1, **dd),
        )

    def reset_parameters(self) -> None:
        """mmcv's GC init; the last conv of each transform is zero-initialised (weight and bias).

        The zero last conv makes ``channel_add`` add 0, so a ``channel_add``-only block is the identity
        when inserted into a pretrained network (or after timm's ``ResNet.init_weights``, which
        re-initialises every Conv2d and would otherwise destroy it - call this afterwards).
        For ``channel_mul`` the same zero conv gives a constant gate ``sigmoid(0) = 0.5`` (as mmcv).
        ``conv_mask`` is kaiming-normal (fan_in, bias 0); the transforms' first conv uses PyTorch's
        default conv init and the norm layer its own ``reset_parameters``.
        """
        if self.conv_mask is not None:
            _init_conv_mask(self.conv_mask)
        for transform in (self.channel_add_conv, self.channel_mul_conv):
            if transform is None:
                continue
            for m in transform:
                if hasattr(m, 'reset_parameters'):
                    m.reset_parameters()
            last = transform[3]
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)

    def _pool_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention-pooling weights (B, 1, HW); only for ``pooling_type='att'``."""
        B, C, H, W = x.shape
        conv_mask = self.conv_mask
        if conv_mask is None:
            raise RuntimeError("ContextBlock: attention pooling weights need pooling_type='att'")
        return _softmax_pool_weights(conv_mask(x).reshape(B, 1, H * W))

    def _context(self, x: torch.Tensor) -> torch.Tensor:
        """The context vector (B, C, 1, 1)."""
        B, C, H, W = x.shape
        if self.conv_mask is not None:
            weights = self._pool_weights(x)  # (B, 1, HW)
            # (B, C, HW) @ (B, HW, 1) -> (B, C, 1): no HW x HW tensor
            context = torch.matmul(x.reshape(B, C, H * W), weights.transpose(1, 2))
            return context.reshape(B, C, 1, 1)
        return x.mean((2, 3), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, 4, 'ContextBlock')
        context = self._context(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out

    def attention_maps(self, x: torch.Tensor, queries: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``'context'`` (B, 1, H, W) pooling weights (sum to 1) and, with ``channel_mul``, ``'channel'`` (B, C).

        ``queries`` is ignored: the context is query-independent.
        """
        check_input(x, self.channels, 4, 'ContextBlock')
        B, C, H, W = x.shape
        maps: Dict[str, torch.Tensor] = {}
        if self.conv_mask is not None:
            maps['context'] = self._pool_weights(x).reshape(B, 1, H, W)
        else:
            maps['context'] = torch.full((B, 1, H, W), 1.0 / (H * W), device=x.device, dtype=x.dtype)
        if self.channel_mul_conv is not None:
            maps['channel'] = torch.sigmoid(self.channel_mul_conv(self._context(x))).reshape(B, C)
        return maps

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, rd_channels={self.rd_channels}, '
                f'pooling_type={self.pooling_type!r}, fusion_types={self.fusion_types!r}')


class SimplifiedNonLocal(nn.Module):
    """Simplified Non-local (SNL) block of GCNet (Cao et al., arXiv:1904.11492, Eq. 2 / Fig. 3(b)).

    ``z_i = x_i + W_v sum_j [exp(W_k x_j) / sum_m exp(W_k x_m)] x_j`` with ``W_k`` a 1x1 conv C -> 1
    (``conv_mask``) and ``W_v`` a 1x1 conv C -> C with bias (``conv_value``), applied once to the
    pooled context (the paper moves ``W_v`` outside the attention pooling by the distributive law).

    Following the paper's Fig. 3(b) there is no normalisation after ``W_v`` (unlike the original
    Non-local block's BN, and unlike the GC block's LayerNorm bottleneck).

    Initialisation (:meth:`reset_parameters`): ``conv_mask`` kaiming-normal fan_in (as the GC block),
    ``W_v`` zero (weight and bias) so the block is exactly the identity at init.

    ``attention_maps`` returns ``'context'`` (B, 1, H, W), the softmax pooling weights.
    """

    def __init__(self, channels: int, *, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.channels = check_positive_int('channels', channels)
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1, **dd)
        self.conv_value = nn.Conv2d(channels, channels, kernel_size=1, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``conv_value`` (W_v) is zero-initialised (weight and bias).

        So the block is the identity when inserted into a pretrained network (call this again after
        timm's ``ResNet.init_weights``, which re-initialises every Conv2d). ``conv_mask`` (W_k) is
        kaiming-normal (fan_in, bias 0).
        """
        _init_conv_mask(self.conv_mask)
        nn.init.zeros_(self.conv_value.weight)
        if self.conv_value.bias is not None:
            nn.init.zeros_(self.conv_value.bias)

    def _pool_weights(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        return _softmax_pool_weights(self.conv_mask(x).reshape(B, 1, H * W))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, 4, 'SimplifiedNonLocal')
        B, C, H, W = x.shape
        weights = self._pool_weights(x)  # (B, 1, HW)
        context = torch.matmul(x.reshape(B, C, H * W), weights.transpose(1, 2)).reshape(B, C, 1, 1)
        return x + self.conv_value(context)

    def attention_maps(self, x: torch.Tensor, queries: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``'context'`` (B, 1, H, W): the softmax pooling weights (sum to 1). ``queries`` is ignored."""
        check_input(x, self.channels, 4, 'SimplifiedNonLocal')
        B, C, H, W = x.shape
        return {'context': self._pool_weights(x).reshape(B, 1, H, W)}

    def extra_repr(self) -> str:
        return f'channels={self.channels}'
