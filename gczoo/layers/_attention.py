"""Softmax attention through PyTorch's fused kernel, with nothing N x M kept in memory."""
import torch
import torch.fx
import torch.nn.functional as F

__all__ = ['softmax_attention']


@torch.fx.wrap  # a leaf for FX tracing: it branches on the head sizes
def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for q (..., N, d), k (..., M, d), v (..., M, e) -> (..., N, e).

    ``F.scaled_dot_product_attention``'s fused CPU kernel is only taken when q, k, v share one dtype,
    one head size and a contiguous last dimension; otherwise it silently falls back to the N x M
    math path (measured: 2 x 16,384 positions x 128 channels, 4.2 GB vs 0.13 GB). So the inputs are
    brought to a common dtype, zero-padded to a common head size (zeros change neither q k^T nor,
    after slicing, the output) and made contiguous. ``scale`` is always passed explicitly.
    """
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
