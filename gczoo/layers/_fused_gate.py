"""What the blocks' eager-only fast paths share: the gates' hand-written backwards (CBAM, SE, BAM), and
the checks that also decide the chunked attention (SAGAN) and criss-cross sums.

A gate ``x * g(x)`` is cheap in FLOPs and limited by memory traffic: autograd's generic backward of
it allocates a full-size tensor per elementwise step (the broadcast products, the pooling's expanded
gradient, their sum), and on the CPU every fresh full-size allocation also pays its page faults. The
blocks' autograd Functions do the full-size work themselves, in as few buffers as possible, and leave
the small parts (the MLP on the pooled descriptors, a gate's conv and BN) to autograd: those run in
the Function's forward as small graphs on detached copies of the parameters, which ``GateGraphs``
differentiates in the backward and whose gradients it hands back through the Function.

The Functions are eager-only: graph capture (FX, ``torch.jit.trace``/ONNX, ``torch.compile``,
``torch.export``) and TorchScript use each block's plain ops (``graph_capture``), as do torch.func
transforms and calls that record no graph (``records_a_graph``).
"""
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = [
    'GateGraphs', 'channel_dots', 'dense_layout', 'graph_capture', 'has_parameters', 'records_a_graph',
    'plain_float_tensors', 'torch_func_active', 'weighted_channel_sum', 'weighted_position_sum',
]


def graph_capture() -> bool:
    """Is a graph being captured (FX symbolic tracing, ``torch.jit.trace``, dynamo/``torch.export``)?"""
    return is_fx_symbolic_tracing() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def torch_func_active() -> bool:
    """Is a torch.func transform (grad, vmap, ...) running? Autograd Functions without vmap/jvp rules
    cannot run under one (private API; assumed active where it is missing, so the plain ops run)."""
    return getattr(torch._C, '_are_functorch_transforms_active', lambda: True)()


def plain_float_tensors(*tensors: torch.Tensor, devices: Tuple[str, ...] = ('cpu',)) -> bool:
    """Do ``tensors`` share one dtype, float32 or float64, on one of ``devices``, with autocast off and
    no torch.func transform running? (What the explicit-product fast paths handle; half precision and
    autocast keep the kernels that accumulate in float32.)"""
    dtype, device = tensors[0].dtype, tensors[0].device.type
    if dtype not in (torch.float32, torch.float64) or device not in devices:
        return False
    if any(t.dtype != dtype or t.device.type != device for t in tensors[1:]):
        return False
    return not torch.is_autocast_enabled('cpu') and not torch_func_active()


def records_a_graph(x: torch.Tensor, module: nn.Module) -> bool:
    """Does this eager call record an autograd graph through ``x`` or ``module``'s parameters, outside
    any torch.func transform (which an autograd Function without vmap/jvp rules cannot run under)?"""
    if not torch.is_grad_enabled() or torch_func_active():
        return False
    return x.requires_grad or any(p.requires_grad for p in module.parameters())


def dense_layout(x: torch.Tensor) -> bool:
    """NCHW-contiguous or channels_last: ``x.flatten(2)`` is then a view the Functions can write through."""
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


def has_parameters(modules: Iterable[nn.Module]) -> bool:
    """Whether any of ``modules`` (activation layers) has parameters the Functions would not see."""
    return any(True for m in modules for _ in m.parameters())


# The three reductions of the gates' backwards, each in its fastest form for NCHW and channels_last
# inputs (measured, 8 x 256 x 56 x 56 float32, 1 thread; einsum permutes and copies its operands first:
# 7.7 / 41.7 ms for channel_dots, 15.9 / 20.7 ms for weighted_position_sum).

def channel_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, C)``: sum over H, W of ``a * b`` (7.7 ms NCHW, a batched dot product without a full-size
    temporary; 8.4 ms channels_last, the product and its sum)."""
    if a.is_contiguous() and b.is_contiguous():
        batch, channels = a.shape[0], a.shape[1]
        return torch.bmm(a.reshape(batch * channels, 1, -1), b.reshape(batch * channels, -1, 1)).view(batch, channels)
    return (a * b).sum((2, 3))


def weighted_position_sum(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(B, C)``: sum over H, W of ``u * w`` for a ``(B, 1, H, W)`` map ``w`` (2.7 / 7.9 ms)."""
    if u.is_contiguous():  # a batched matrix-vector product
        return torch.bmm(u.flatten(2), w.reshape(w.shape[0], -1, 1).to(u.dtype))[:, :, 0]
    return (u * w.to(u.dtype)).sum((2, 3))


def weighted_channel_sum(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)``: sum over C of ``u * w`` for ``(B, C)`` weights ``w`` (1.8 / 5.1 ms)."""
    return torch.bmm(w.to(u.dtype)[:, None, :], u.flatten(2)).view(u.shape[0], 1, u.shape[2], u.shape[3])


class GateGraphs:
    """Detached leaves of a block's parameters for the small graphs of a fused Function's forward,
    and the backward through those graphs.

    ``leaf(p)`` is the leaf standing for parameter ``p``; ``backward(outputs, inputs, grads)`` returns
    the gradients of ``inputs`` and accumulates those of the leaves; ``param_grads()`` lists them in
    the order of ``params`` (None where a parameter needs none), as the Function's backward returns
    them, and starts the next accumulation (a graph kept with ``retain_graph=True`` runs again).
    """

    def __init__(self, params: Sequence[torch.Tensor]):
        self.params = list(params)
        self.leaves = [p.detach().requires_grad_(p.requires_grad) for p in self.params]
        self._leaf: Dict[int, torch.Tensor] = {id(p): leaf for p, leaf in zip(self.params, self.leaves)}
        self._grads: Dict[int, torch.Tensor] = {}

    def leaf(self, param: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if param is None else self._leaf[id(param)]

    def call(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        """``module(*args)`` with its parameters replaced by their leaves (its buffers are its own, so
        BatchNorm updates its running statistics as usual)."""
        leaves = {name: self._leaf[id(p)] for name, p in module.named_parameters()}
        return torch.func.functional_call(module, leaves, args)

    def backward(self, outputs: torch.Tensor, inputs: List[torch.Tensor], grads: torch.Tensor
                 ) -> Tuple[Optional[torch.Tensor], ...]:
        wanted = [leaf for leaf in self.leaves if leaf.requires_grad]
        # retain_graph: the outer backward may run again (backward(retain_graph=True)); these graphs are small
        result = torch.autograd.grad(outputs, inputs + wanted, grads.to(outputs.dtype), allow_unused=True,
                                     retain_graph=True)
        for leaf, grad in zip(wanted, result[len(inputs):]):
            if grad is not None:
                self._grads[id(leaf)] = grad if id(leaf) not in self._grads else self._grads[id(leaf)] + grad
        return result[:len(inputs)]

    def param_grads(self) -> List[Optional[torch.Tensor]]:
        grads, self._grads = self._grads, {}
        return [grads.get(id(leaf)) if leaf.requires_grad else None for leaf in self.leaves]
