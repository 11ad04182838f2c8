"""Softmax attention in query chunks with explicit matrix products, for unequal head sizes on the CPU.

``F.scaled_dot_product_attention``'s fused CPU kernel needs one head size for q, k and v, so a block
whose keys are narrower than its values (SAGAN: C/8 against C) pays for zero-padding: the logits and
the kernel's recomputation of them in backward cost C instead of C/8 per pair (measured, 8 x 3136
positions, C = 256: training 1.06x the naive N x N code). Here the logits are computed at the narrow
width, one chunk of queries at a time (at most ``CHUNK_ELEMENTS`` logits: no N x M matrix), and the
backward recomputes each chunk's softmax (a C/8-wide product) instead of saving it, as
FlashAttention does (Dao et al., arXiv:2205.14135, Sec. 3.1):

    P = softmax(q k^T * s)      O = P v
    dv += P^T dO                dP = dO v^T
    dS = P * (dP - D) * s       D_i = dO_i . O_i  (= sum_j P_ij dP_ij, without an N x M product)
    dq = dS k                   dk += dS^T q

``ChunkedSoftmaxAttention`` is an autograd Function: in-place, chunk-sized buffers in its backward.
Its backward is itself differentiable (gradient penalties of GAN discriminators need that): under
``create_graph=True`` it differentiates the explicit formula through autograd instead.
"""
from typing import Iterator, Tuple

import torch

from ._fused_gate import plain_float_tensors

__all__ = ['CHUNK_ELEMENTS', 'ChunkedSoftmaxAttention', 'chunked_path_applies', 'chunked_softmax_attention']

# Logits per chunk: 2**20 float32 values = 4 MB, so a chunk's buffers stay in the allocator's cache
# (measured on SAGAN's training step, 8 x 3136 positions: 2**18..2**22 within 10 % of each other, one whole
# N x M matrix 1.6x slower).
CHUNK_ELEMENTS = 2 ** 20


def _chunks(batch: int, queries: int, keys: int) -> Iterator[Tuple[int, int, int, int]]:
    """``(b0, b1, s0, s1)`` tiles of batch rows and query rows, each with at most ``CHUNK_ELEMENTS``
    logits (at least one query row). A tile spans several batch rows only with all their queries,
    so ``t[b0:b1, s0:s1]`` of a contiguous ``t`` is contiguous (a valid ``out=``)."""
    per_batch = queries * keys
    if per_batch <= CHUNK_ELEMENTS:
        group = max(1, CHUNK_ELEMENTS // max(per_batch, 1))
        for b0 in range(0, batch, group):
            yield b0, min(batch, b0 + group), 0, queries
        return
    rows = max(1, CHUNK_ELEMENTS // keys)
    for b in range(batch):
        for s0 in range(0, queries, rows):
            yield b, b + 1, s0, min(queries, s0 + rows)


def _probabilities(q: torch.Tensor, k_t: torch.Tensor, scale: float) -> torch.Tensor:
    logits = torch.matmul(q, k_t)
    if scale != 1.0:
        logits.mul_(scale)
    return torch.softmax(logits, dim=-1)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
    k_t = k.transpose(1, 2)
    for b0, b1, s0, s1 in _chunks(q.shape[0], q.shape[1], k.shape[1]):
        torch.matmul(_probabilities(q[b0:b1, s0:s1], k_t[b0:b1], scale), v[b0:b1], out=out[b0:b1, s0:s1])
    return out


def _explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """The formula with autograd's ops (N x M), for the differentiable backward."""
    return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(1, 2)) * scale, dim=-1), v)


class ChunkedSoftmaxAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v for q (B, N, d), k (B, M, d), v (B, M, e) -> (B, N, e); saves q, k,
    v and the output (no N x M tensor)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = _forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out = ctx.saved_tensors
        scale = ctx.scale
        if torch.is_grad_enabled():  # create_graph=True: a graph of the gradient is wanted
            with torch.enable_grad():
                return (*torch.autograd.grad(_explicit(q, k, v, scale), (q, k, v), grad_out, create_graph=True),
                        None)
        grad_out = grad_out.contiguous()
        row_dots = (grad_out * out).sum(-1, keepdim=True)  # D = rowsum(dO * O) = rowsum(P * dP)
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros_like(k)
        grad_v = torch.zeros_like(v)
        k_t, v_t = k.transpose(1, 2), v.transpose(1, 2)
        for b0, b1, s0, s1 in _chunks(q.shape[0], q.shape[1], k.shape[1]):
            q_c, g_c = q[b0:b1, s0:s1], grad_out[b0:b1, s0:s1]
            p = _probabilities(q_c, k_t[b0:b1], scale)
            grad_v[b0:b1].baddbmm_(p.transpose(1, 2), g_c)
            d_s = torch.matmul(g_c, v_t[b0:b1]).sub_(row_dots[b0:b1, s0:s1]).mul_(p)  # dS / scale
            torch.matmul(d_s, k[b0:b1], out=grad_q[b0:b1, s0:s1])
            grad_k[b0:b1].baddbmm_(d_s.transpose(1, 2), q_c)
        if scale != 1.0:
            grad_q.mul_(scale)
            grad_k.mul_(scale)
        return grad_q, grad_k, grad_v, None


def chunked_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for 4-D q (B, H, N, d), k (B, H, M, d), v (B, H, M, e) -> (B, H, N, e),
    in chunks of at most ``CHUNK_ELEMENTS`` logits; no autograd Function without a graph to record."""
    batch, heads = q.shape[0], q.shape[1]
    q3, k3, v3 = (t.reshape(batch * heads, t.shape[2], t.shape[3]) for t in (q, k, v))
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out = ChunkedSoftmaxAttention.apply(q3, k3, v3, float(scale))
    else:
        out = _forward(q3.contiguous(), k3.contiguous(), v3.contiguous(), float(scale))
    return out.reshape(batch, heads, q.shape[2], v.shape[3])


def chunked_path_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the chunked path should run (eager only; the caller checks for graph capture): CPU (or
    meta) float32/float64 tensors of unequal head sizes, autocast off, no torch.func transform.
    Equal sizes keep SDPA's fused kernel (faster here); CUDA keeps its fused kernels. On 'meta'
    (shapes only, as ``gczoo complexity`` runs) the products counted are the block's own, not the
    zero-padding SDPA would need."""
    return q.shape[-1] != v.shape[-1] and plain_float_tensors(q, k, v, devices=('cpu', 'meta'))
