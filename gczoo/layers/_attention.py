"""Attention arithmetic shared by the blocks: one fused softmax attention, and float32 products for
the logits and sums that overflow in float16.

Half precision (``.half()`` modules, or autocast) keeps the convolutions fast, but a product summed
over many channels or positions (attention logits, the unnormalised sums of the dot-product and
concatenation Non-local modes) can leave float16's range (65504) even when the block's output does
not. As timm and ``F.scaled_dot_product_attention`` do, those products are computed in float32 with
autocast switched off for them; float32 and float64 inputs pass through unchanged. The autocast
switch is only touched in eager Python when autocast is on, so TorchScript, FX and ``torch.export``
graphs see plain ops.
"""
from typing import List

import torch
import torch.fx
import torch.nn.functional as F

from ._chunked_attention import chunked_path_applies, chunked_softmax_attention
from ._fused_gate import graph_capture

__all__ = ['at_least_float32', 'autocast_on', 'einsum_float32', 'matmul_float32', 'softmax_attention']


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is float16/bfloat16, else unchanged (float64 stays float64)."""
    if t.dtype == torch.float16 or t.dtype == torch.bfloat16:
        return t.float()
    return t


def autocast_on(device_type: str) -> bool:
    """Is autocast on for this device type? (False for devices without autocast, such as 'meta'.)"""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


@torch.fx.wrap  # a leaf for FX tracing: it reads the device type and the autocast state
def matmul_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in at least float32 (also under autocast); the result stays in that precision."""
    if not torch.jit.is_scripting():
        if autocast_on(a.device.type):
            with torch.autocast(a.device.type, enabled=False):
                return torch.matmul(at_least_float32(a), at_least_float32(b))
    return torch.matmul(at_least_float32(a), at_least_float32(b))


@torch.fx.wrap  # a leaf for FX tracing: it reads the device type and the autocast state
def einsum_float32(equation: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.einsum(equation, a, b)`` in at least float32 (also under autocast)."""
    operands: List[torch.Tensor] = [at_least_float32(a), at_least_float32(b)]
    if not torch.jit.is_scripting():
        if autocast_on(a.device.type):
            with torch.autocast(a.device.type, enabled=False):
                return torch.einsum(equation, operands)
    return torch.einsum(equation, operands)


@torch.jit.unused
def _chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return chunked_softmax_attention(q, k, v, scale)


@torch.fx.wrap  # a leaf for FX tracing: it branches on the head sizes
def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for q (B, H, N, d), k (B, H, M, d), v (B, H, M, e) -> (B, H, N, e).

    ``F.scaled_dot_product_attention``'s fused CPU kernel is only taken when q, k, v share one dtype,
    one head size and a contiguous last dimension; otherwise it silently falls back to the N x M
    math path (measured: 2 x 16,384 positions x 128 channels, 4.2 GB vs 0.13 GB). So the inputs are
    brought to a common dtype, zero-padded to a common head size (zeros change neither q k^T nor,
    after slicing, the output) and made contiguous. ``scale`` is always passed explicitly. The
    inputs are 4-D because the ONNX (dynamo) exporter only translates 4-D attention. The fused
    kernels accumulate the logits and the softmax in float32 for float16/bfloat16 inputs.

    Unequal head sizes on the CPU in eager float32/float64 (SAGAN's C/8-wide keys) take
    ``chunked_softmax_attention`` instead: the padding would multiply the logits' cost (see
    ``_chunked_attention``). Graph capture (TorchScript, tracing, ``torch.compile``/``torch.export``)
    and CUDA keep SDPA.
    """
    if not torch.jit.is_scripting():
        if not graph_capture() and chunked_path_applies(q, k, v):
            return _chunked(q, k, v, scale)
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    d_qk = q.shape[-1]
    d_v = v.shape[-1]
    if d_qk < d_v:
        q = F.pad(q, [0, d_v - d_qk])
        k = F.pad(k, [0, d_v - d_qk])
    elif d_v < d_qk:
        v = F.pad(v, [0, d_qk - d_v])
    y = F.scaled_dot_product_attention(
        q.to(dtype).contiguous(), k.to(dtype).contiguous(), v.to(dtype).contiguous(), scale=scale)
    if d_v < d_qk:
        y = y[..., :d_v]
    return y
