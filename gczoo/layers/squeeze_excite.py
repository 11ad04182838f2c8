"""Squeeze-and-Excitation (SE) block.

Paper: `Squeeze-and-Excitation Networks`, Jie Hu, Li Shen, Gang Sun, CVPR 2018 - https://arxiv.org/abs/1709.01507

``z = x * sigmoid(W_2 relu(W_1 GAP(x) + b_1) + b_2)`` with ``W_1``: C -> C/r and ``W_2``: C/r -> C
(Eq. 2-4 of the paper), implemented with 1x1 convs named ``fc1`` / ``fc2`` as timm's ``SEModule``.

Training speed: the gate is limited by memory traffic. When a graph is recorded, ``_SEFunction``
writes the input's gradient in one full-size pass, ``dx = dz * g + (dL/ds) / HW``, with ``dL/dg`` a
per-channel dot product of ``dz`` and ``x``, where autograd allocates three full-size tensors (see
``_fused_gate``). Graph capture, TorchScript and inference use the plain ops.
"""
from typing import Callable, Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.create_act import create_act_layer

from ._fused_gate import GateGraphs, channel_dots, dense_layout, graph_capture, has_parameters, records_a_graph
from ._validate import check_input, resolve_rd_channels

__all__ = ['SqueezeExcite']


class _SEFunction(torch.autograd.Function):
    """``x * gate(mean(x))`` with a one-pass backward; ``params`` are the block's (fc1, fc2)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: 'SqueezeExcite', *params: torch.Tensor) -> torch.Tensor:
        graphs = GateGraphs(params)
        pooled = x.mean((2, 3), keepdim=True).requires_grad_()  # a leaf of the gate's small graph
        with torch.enable_grad():
            gate = block.excite(pooled, graphs.leaf(block.fc1.weight), graphs.leaf(block.fc1.bias),
                                graphs.leaf(block.fc2.weight), graphs.leaf(block.fc2.bias))
        gate_full = gate.detach().to(torch.promote_types(x.dtype, gate.dtype))
        ctx.save_for_backward(x, gate_full)
        ctx.graphs = (pooled, gate)
        ctx.gate_graphs = graphs
        return x * gate_full

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, gate_full = ctx.saved_tensors
        pooled, gate = ctx.graphs
        grad_gate = channel_dots(grad_out, x)[:, :, None, None]
        (d_pooled,) = ctx.gate_graphs.backward(gate, [pooled], grad_gate)
        grad_x = None
        if ctx.needs_input_grad[0]:
            mean_part = (d_pooled / (x.shape[2] * x.shape[3])).to(grad_out.dtype)
            grad_x = torch.addcmul(mean_part, grad_out, gate_full.to(grad_out.dtype)).to(x.dtype)
        return (grad_x, None, *ctx.gate_graphs.param_grads())


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation block (Hu et al., arXiv:1709.01507).

    Squeeze: global average pool -> (B, C, 1, 1). Excitation: ``fc1`` (1x1 conv C -> P, bias) ->
    ReLU -> ``fc2`` (1x1 conv P -> C, bias) -> sigmoid gate. Output ``x * gate``.

    Args:
        channels: input (= output) channels C.
        rd_ratio: reduction, ``P = int(C * rd_ratio)`` exactly as the paper's ``C / r`` (r = 16). This
            differs from timm's ``SEModule``, which rounds ``C * rd_ratio`` up to a multiple of
            ``rd_divisor=8`` (``make_divisible``): the widths agree whenever ``C / 16`` is a multiple of 8
            (every SE of a seresnet50: C = 256...2048, so its weights map 1:1), but not for small C
            (C = 64: ours 4, timm 8). Pass ``rd_channels`` to reproduce a timm width. A ratio leaving
            ``P = 0`` is refused at construction.
        rd_channels: bottleneck width P, overrides ``rd_ratio``.
        act_layer: activation between the two convs (ReLU); a class or a timm activation name.
        gate_layer: gate activation (sigmoid); a class or a timm activation name such as ``'sigmoid'``.

    Parameter names (``fc1.weight``, ``fc1.bias``, ``fc2.weight``, ``fc2.bias``) are those of timm's
    ``SEModule`` (its ``bn`` is an ``nn.Identity`` without parameters), so its state dicts load 1:1
    for equal widths.

    ``attention_maps`` returns ``'channel'`` (B, C): the gate after its sigmoid.
    """

    def __init__(
            self,
            channels: int,
            *,
            rd_ratio: float = 1. / 16,
            rd_channels: Optional[int] = None,
            act_layer: Union[str, Callable[..., nn.Module]] = nn.ReLU,
            gate_layer: Union[str, Callable[..., nn.Module]] = nn.Sigmoid,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        rd = resolve_rd_channels(channels, rd_ratio, rd_channels)
        self.channels = channels
        self.rd_channels = rd
        self.fc1 = nn.Conv2d(channels, rd, kernel_size=1, bias=True, **dd)
        self.act = create_act_layer(act_layer, inplace=True)
        self.fc2 = nn.Conv2d(rd, channels, kernel_size=1, bias=True, **dd)
        self.gate = create_act_layer(gate_layer)
        if self.act is None or self.gate is None:
            raise ValueError(f'act_layer and gate_layer must name an activation, got {act_layer!r}, {gate_layer!r}')
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default conv init for ``fc1`` and ``fc2``; nothing is zero-initialised.

        An SE block cannot be made the identity by a zero init: a zero ``fc2`` gives a constant gate
        ``sigmoid(0) = 0.5`` (a halving), not 1. (timm's ``ResNet.init_weights`` then re-inits both convs
        with kaiming, as for timm's own SE models.)
        """
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def excite(self, pooled: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: Optional[torch.Tensor],
               fc2_weight: torch.Tensor, fc2_bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The gate of the pooled ``(B, C, 1, 1)`` descriptor; weights as arguments for ``_SEFunction``."""
        return self.gate(F.conv2d(self.act(F.conv2d(pooled, fc1_weight, fc1_bias)), fc2_weight, fc2_bias))

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, 4, 'SqueezeExcite')
        if not torch.jit.is_scripting():
            if not graph_capture() and self._fused_backward_applies(x):
                return self._forward_fused(x)
        return self._forward_ops(x)

    def _forward_ops(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._gate(x)

    @torch.jit.unused
    def _fused_backward_applies(self, x: torch.Tensor) -> bool:
        return records_a_graph(x, self) and not has_parameters([self.act, self.gate]) and dense_layout(x)

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        return _SEFunction.apply(x, self, *self.parameters())

    def attention_maps(self, x: torch.Tensor, queries: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``'channel'`` (B, C): the excitation gate after its sigmoid. ``queries`` is ignored."""
        check_input(x, self.channels, 4, 'SqueezeExcite')
        return {'channel': self._gate(x).reshape(x.shape[0], self.channels)}

    def extra_repr(self) -> str:
        return f'channels={self.channels}, rd_channels={self.rd_channels}'
