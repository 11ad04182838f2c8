"""BAM: Bottleneck Attention Module.

Park, Woo, Lee, Kweon, "BAM: Bottleneck Attention Module", BMVC 2018 (arXiv:1807.06514).

``out = x * (1 + sigmoid(combine(M_c(x), M_s(x))))`` with

* ``M_c`` (channel branch, ``(B, C, 1, 1)``): global average pool ->
  ``[Linear(C, C/r) -> BatchNorm1d -> act] x num_channel_layers -> Linear(C/r, C)``;
* ``M_s`` (spatial branch, ``(B, 1, H, W)``): ``Conv1x1(C, C/r) -> BN -> act ->
  [Conv3x3(C/r, C/r, dilation d, padding d) -> BN -> act] x num_dilated_convs -> Conv1x1(C/r, 1)``;
* ``combine='mul'`` (the authors' code, Jongchan/attention-module, and its ImageNet weights):
  ``M_c * M_s``; ``combine='sum'`` (the paper, Eq. 1-2): ``M_c + M_s``. Both broadcast to ``(B, C, H, W)``.
  The default is ``'mul'`` so the official checkpoints reproduce (see their issues #1, #39, #52).

Differences from the official code, none of which changes a result it produces: the average pool covers
the whole map for any ``H, W`` (the official ``avg_pool2d(x, H)`` breaks for ``H != W``, issue #50), and a
train-mode batch of one works (see ``BAM``). ``OFFICIAL_KEY_MAP`` renames the official keys to ours.
The paper places BAM between ResNet stages (after layer1, layer2, layer3), not inside every block.

Training speed: when a graph is recorded, ``_BAMFunction`` computes the gate's gradient in one
full-size buffer and adds every contribution to x's gradient in place (the two branches stay small
autograd graphs, see ``_fused_gate``); graph capture, TorchScript and inference use the plain ops.
"""
from typing import Callable, Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_act_layer

from ._fused_gate import (GateGraphs, dense_layout, graph_capture, records_a_graph, weighted_channel_sum,
                          weighted_position_sum)
from ._validate import check_choice, check_input, check_positive_int, resolve_rd_channels
from .norm import BatchNormAnyBatch1d, BatchNormAnyBatch2d

__all__ = ['BAM', 'COMBINE_TYPES', 'OFFICIAL_KEY_MAP', 'official_key_map']

COMBINE_TYPES = ('mul', 'sum')

_BN_KEYS = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')


def official_key_map(num_channel_layers: int = 1, num_dilated_convs: int = 2) -> Dict[str, str]:
    """Official key suffix (``...bam1.<suffix>``) -> key in ``BAM.state_dict()``, for a given depth.

    ``num_batches_tracked`` is absent from checkpoints saved before PyTorch 0.4.1: load those with
    ``strict=False`` or fill it in.
    """
    m: Dict[str, str] = {}

    def add(official: str, ours: str, keys=('weight', 'bias')) -> None:
        for k in keys:
            m[f'{official}.{k}'] = f'{ours}.{k}'

    c, s = 'channel_att.gate_c.', 'spatial_att.gate_s.'
    for i in range(num_channel_layers):
        add(f'{c}gate_c_fc_{i}', f'channel_gate.layers.{i}.fc')
        add(f'{c}gate_c_bn_{i + 1}', f'channel_gate.layers.{i}.bn', _BN_KEYS)
    add(f'{c}gate_c_fc_final', 'channel_gate.proj')
    add(f'{s}gate_s_conv_reduce0', 'spatial_gate.reduce.conv')
    add(f'{s}gate_s_bn_reduce0', 'spatial_gate.reduce.bn', _BN_KEYS)
    for i in range(num_dilated_convs):
        add(f'{s}gate_s_conv_di_{i}', f'spatial_gate.dilated.{i}.conv')
        add(f'{s}gate_s_bn_di_{i}', f'spatial_gate.dilated.{i}.bn', _BN_KEYS)
    add(f'{s}gate_s_conv_final', 'spatial_gate.proj')
    return m


# For the official configuration (and ImageNet checkpoints): one hidden channel layer, two dilated convs.
OFFICIAL_KEY_MAP: Dict[str, str] = official_key_map(1, 2)


class _FcBnAct(nn.Module):
    """``Linear -> BatchNorm1d -> act`` on ``(B, C_in)``."""

    def __init__(self, in_features: int, out_features: int, act_layer, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc = nn.Linear(in_features, out_features, **dd)
        self.bn = BatchNormAnyBatch1d(out_features, **dd)
        self.act = create_act_layer(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.fc(x)))


class _ConvBnAct(nn.Module):
    """``Conv2d -> BatchNorm2d -> act``."""

    def __init__(
            self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, act_layer,
            device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, **dd)
        self.bn = BatchNormAnyBatch2d(out_channels, **dd)
        self.act = create_act_layer(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _ChannelGate(nn.Module):
    """MLP with BN on the globally average-pooled ``(B, C)``; returns the logits ``M_c`` as ``(B, C)``."""

    def __init__(self, channels: int, rd_channels: int, num_layers: int, act_layer, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            [_FcBnAct(channels if i == 0 else rd_channels, rd_channels, act_layer, **dd) for i in range(num_layers)])
        self.proj = nn.Linear(rd_channels, channels, **dd)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            y = layer(y)
        return self.proj(y)


class _SpatialGate(nn.Module):
    """1x1 reduce -> dilated 3x3 convs -> 1x1 to one channel; returns the logits ``M_s`` ``(B, 1, H, W)``."""

    def __init__(
            self, channels: int, rd_channels: int, num_dilated_convs: int, dilation: int, act_layer,
            device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.reduce = _ConvBnAct(channels, rd_channels, 1, 1, act_layer, **dd)
        self.dilated = nn.ModuleList(
            [_ConvBnAct(rd_channels, rd_channels, 3, dilation, act_layer, **dd) for _ in range(num_dilated_convs)])
        self.proj = nn.Conv2d(rd_channels, 1, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)
        for layer in self.dilated:
            y = layer(y)
        return self.proj(y)


class _BAMFunction(torch.autograd.Function):
    """``x * (1 + sigmoid(combine(M_c, M_s)))`` with a backward of two full-size buffers (besides
    the spatial branch's own); saves ``x`` and the gate. ``params`` are the block's parameters."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: 'BAM', *params: torch.Tensor) -> torch.Tensor:
        graphs = GateGraphs(params)
        pooled = x.mean((2, 3)).requires_grad_()
        x_leaf = x.detach().requires_grad_(x.requires_grad)  # the spatial branch's input
        with torch.enable_grad():  # the two branches as small graphs (the spatial one is C/r wide)
            m_c = graphs.call(block.channel_gate, pooled)
            m_s = graphs.call(block.spatial_gate, x_leaf)
        gate = block._gate(m_c.detach()[:, :, None, None], m_s.detach())
        ctx.save_for_backward(x, gate)
        ctx.graphs = (pooled, m_c, x_leaf, m_s)
        ctx.gate_graphs = graphs
        ctx.combine = block.combine
        return torch.addcmul(x, x, gate)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, gate = ctx.saved_tensors
        pooled, m_c, x_leaf, m_s = ctx.graphs
        # d logits = dz * x * t * (1 - t), in one buffer
        d_logits = torch.mul(grad_out, x)
        d_logits.mul_(gate)
        d_logits.addcmul_(d_logits, gate, value=-1)
        if ctx.combine == 'mul':  # logits = M_c * M_s
            d_m_c = weighted_position_sum(d_logits, m_s.detach())
            d_m_s = weighted_channel_sum(d_logits, m_c.detach())
        else:
            d_m_c = d_logits.sum((2, 3))
            d_m_s = d_logits.sum(1, keepdim=True)
        del d_logits
        (d_pooled,) = ctx.gate_graphs.backward(m_c, [pooled], d_m_c)
        grad_x = None
        if ctx.needs_input_grad[0]:
            (grad_x,) = ctx.gate_graphs.backward(m_s, [x_leaf], d_m_s)  # fresh: accumulated into in place
            grad_x = grad_x.to(grad_out.dtype)
            grad_x.add_(grad_out).addcmul_(grad_out, gate)  # dz * (1 + t)
            grad_x.add_((d_pooled / (x.shape[2] * x.shape[3])).to(grad_x.dtype)[:, :, None, None])
            grad_x = grad_x.to(x.dtype)
        else:
            ctx.gate_graphs.backward(m_s, [], d_m_s)
        return (grad_x, None, *ctx.gate_graphs.param_grads())


class BAM(nn.Module):
    """Bottleneck Attention Module: ``x * (1 + sigmoid(combine(M_c, M_s)))``.

    Args:
        channels: input (= output) channels C.
        rd_ratio: reduction of both branches, width ``int(C * rd_ratio)`` (official: ``C // 16``).
        rd_channels: bottleneck width, overrides ``rd_ratio``.
        dilation: dilation (= padding) of the 3x3 convs of the spatial branch (paper: 4).
        num_dilated_convs: number of dilated 3x3 convs (paper: 2; 0 leaves 1x1 convs only).
        combine: ``'mul'`` (default; the official code and checkpoints) or ``'sum'`` (the paper's Eq. 1-2).
        num_channel_layers: hidden ``Linear -> BN -> act`` layers of the channel MLP (official: 1).
        act_layer: activation (class or timm name).

    Batch of one in train mode: ``BatchNorm1d`` of the channel MLP sees one value per channel, where
    train-mode BN is undefined (PyTorch raises, pytorch #13223). For such a call (any BN of the block
    receiving a single value per channel) that BN normalises with its running statistics, exactly as in
    eval mode, and leaves them un-updated; its affine weight and bias still train. Batches of two or
    more use standard train-mode BN.
    """

    def __init__(
            self,
            channels: int,
            *,
            rd_ratio: float = 1. / 16,
            rd_channels: Optional[int] = None,
            dilation: int = 4,
            num_dilated_convs: int = 2,
            combine: str = 'mul',
            num_channel_layers: int = 1,
            act_layer: Union[str, Callable[..., nn.Module]] = nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        rd = resolve_rd_channels(channels, rd_ratio, rd_channels)
        check_positive_int('dilation', dilation)
        if isinstance(num_dilated_convs, bool) or not isinstance(num_dilated_convs, int):
            raise TypeError(
                f'num_dilated_convs must be an int, got {type(num_dilated_convs).__name__} ({num_dilated_convs!r})')
        if num_dilated_convs < 0:
            raise ValueError(f'num_dilated_convs must be >= 0, got {num_dilated_convs}')
        check_choice('combine', combine, COMBINE_TYPES)
        check_positive_int('num_channel_layers', num_channel_layers)
        self.channels = channels
        self.rd_channels = rd
        self.dilation = dilation
        self.num_dilated_convs = num_dilated_convs
        self.num_channel_layers = num_channel_layers
        self.combine = combine
        self.channel_gate = _ChannelGate(channels, rd, num_channel_layers, act_layer, **dd)
        self.spatial_gate = _SpatialGate(channels, rd, num_dilated_convs, dilation, act_layer, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear/Conv: PyTorch defaults; BN: weight 1, bias 0, running stats reset.

        Nothing is zero-initialised: the scale ``1 + sigmoid(.)`` lies in (1, 2), so the block cannot
        be the identity and there is no identity init to restore. (The official training script
        kaiming-inits (fan_out) the convs and zeroes all biases; apply that in a model's init if
        reproducing their training from scratch.)
        """
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, 4, 'BAM')
        if not torch.jit.is_scripting():
            if not graph_capture() and records_a_graph(x, self) and dense_layout(x):
                return self._forward_fused(x)
        return self._forward_ops(x)

    def _forward_ops(self, x: torch.Tensor) -> torch.Tensor:
        m_c = self.channel_gate(x.mean((2, 3)))[:, :, None, None]  # pooled over all H*W, square or not
        m_s = self.spatial_gate(x)
        return torch.addcmul(x, x, self._gate(m_c, m_s))  # x * (1 + gate) without another full-size temporary

    def _gate(self, m_c: torch.Tensor, m_s: torch.Tensor) -> torch.Tensor:
        """sigmoid(combine(M_c, M_s)) of ``(B, C, 1, 1)`` and ``(B, 1, H, W)`` logits: ``(B, C, H, W)``."""
        return torch.sigmoid(m_c * m_s) if self.combine == 'mul' else torch.sigmoid(m_c + m_s)

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        return _BAMFunction.apply(x, self, *self.parameters())

    def attention_maps(self, x: torch.Tensor, queries: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``'channel'``: ``sigmoid(M_c)`` ``(B, C)``; ``'spatial'``: ``sigmoid(M_s)`` ``(B, 1, H, W)``.

        The forward's scale is ``1 + sigmoid(M_c * M_s)`` (``'mul'``) or ``1 + sigmoid(M_c + M_s)``
        (``'sum'``); the logits are ``logit`` of the two maps, so the scale can be rebuilt from them.
        ``queries`` is ignored. In train mode the BN batch statistics are used as in forward, but the BN
        running statistics are left untouched.
        """
        check_input(x, self.channels, 4, 'BAM')
        saved = [b.clone() for b in self.buffers()]
        try:
            m_c = self.channel_gate(x.mean((2, 3)))
            m_s = self.spatial_gate(x)
        finally:
            with torch.no_grad():
                for b, s in zip(self.buffers(), saved):
                    b.copy_(s)
        return {'channel': torch.sigmoid(m_c), 'spatial': torch.sigmoid(m_s)}

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, rd_channels={self.rd_channels}, combine={self.combine!r}, '
                f'dilation={self.dilation}, num_dilated_convs={self.num_dilated_convs}, '
                f'num_channel_layers={self.num_channel_layers}')
