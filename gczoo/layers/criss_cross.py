"""Criss-cross attention (CCNet).

Paper: Zilong Huang, Xinggang Wang, Lichao Huang, Chang Huang, Yunchao Wei, Wenyu Liu,
"CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019 (arXiv:1811.11721).

Every position u of an (H, W) feature map attends to the H + W - 1 positions of its column and
its row, itself counted once. With q = W_q x, k = W_k x (1x1 convs, C -> C/8) and v = W_v x
(1x1 conv, C -> C):

    d_{u,p} = q_u . k_p                          for p in the cross of u
    A_u     = softmax_p(d_{u,p})                 jointly over the H + W - 1 positions
    y_u     = gamma * sum_p A_{u,p} v_p + x_u

``recurrence`` applies the same module (shared weights) R times, x <- CCA(x); with R = 2 (the
paper's RCCA) information from every position reaches every other one.

Layout: energies over the column are (B, H, W, H) with the self position (row index == u's row)
masked out, energies over the row are (B, H, W, W) and keep the self position. Memory is
O(B * H * W * (H + W)); nothing N x N is built. The self mask is a boolean tensor made on the
input's device and applied with ``masked_fill`` (no float mask to promote the energies, no
hard-coded device: CCNet #90, #98). For float16/bfloat16 inputs the energies and the softmax are
computed in float32 (also under autocast), then the weights are cast back for the sum over values.
In eager float32/float64 on the CPU that sum is ``_CrossSum``: batched products on strided views with
a hand-written backward (einsum copies v, the gradient and its outputs into permuted layouts first).

Parameter names (``query_conv``, ``key_conv``, ``value_conv``, ``gamma``) follow the official
CCNet / mmcv ``CrissCrossAttention`` key layout.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _attention
from ._fused_gate import graph_capture, plain_float_tensors
from ._validate import check_input, check_positive_int, query_index, resolve_rd_channels

__all__ = ['CrissCrossAttention']


def _cross_sum_explicit(a_h: torch.Tensor, a_w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """out[b, c, i, j] = sum_r a_h[b, i, j, r] v[b, c, r, j] + sum_s a_w[b, i, j, s] v[b, c, i, s]."""
    return torch.einsum('bijr,bcrj->bcij', a_h, v) + torch.einsum('bijs,bcis->bcij', a_w, v)


def _cross_sum_forward(a_h: torch.Tensor, a_w: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The sum over each position's row and column as batched products on strided views: the row sum
    reads v as it is, the column sum one transposed copy ``v_t`` (B, C, W, H); returns (out, v_t)."""
    v_t = v.transpose(2, 3).contiguous()
    out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    out_t = torch.empty_like(v_t)
    for b in range(v.shape[0]):
        torch.bmm(v[b].transpose(0, 1), a_w[b].transpose(1, 2), out=out[b].transpose(0, 1))  # per row i
        torch.bmm(v_t[b].transpose(0, 1), a_h[b].permute(1, 2, 0), out=out_t[b].transpose(0, 1))  # per column j
    return out.add_(out_t.transpose(2, 3)), v_t


def _cross_sum_inference(a_h: torch.Tensor, a_w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``_cross_sum_forward`` without autograd: the transposed copy of v and the column sums one image at a
    time (nothing is kept for a backward), so two (C, H, W) temporaries exist instead of two (B, C, H, W)."""
    out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    for b in range(v.shape[0]):
        torch.bmm(v[b].transpose(0, 1), a_w[b].transpose(1, 2), out=out[b].transpose(0, 1))  # per row i
        v_t = v[b].transpose(1, 2).contiguous()  # (C, W, H)
        cols = torch.bmm(v_t.transpose(0, 1), a_h[b].permute(1, 2, 0))  # per column j: (W, C, H)
        del v_t
        out[b].add_(cols.permute(1, 2, 0))
    return out


class _CrossSum(torch.autograd.Function):
    """``_cross_sum_explicit`` with hand-laid-out products (training 0.7x einsum's time, measured at
    8 x 256 x 56 x 56: einsum permutes and copies v, the gradient and both outputs on every call)."""

    @staticmethod
    def forward(ctx, a_h: torch.Tensor, a_w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out, v_t = _cross_sum_forward(a_h, a_w, v)
        ctx.save_for_backward(a_h, a_w, v, v_t)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        a_h, a_w, v, v_t = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the explicit form instead
            with torch.enable_grad():
                return torch.autograd.grad(_cross_sum_explicit(a_h, a_w, v), (a_h, a_w, v), grad_out,
                                           create_graph=True)
        batch, channels, height, width = v.shape
        grad_out = grad_out.contiguous()
        grad_t = grad_out.transpose(2, 3).contiguous()
        need_a_h, need_a_w, need_v = ctx.needs_input_grad
        d_a_w = v.new_empty(batch, height, width, width) if need_a_w else None
        d_a_h_t = v.new_empty(batch, width, height, height) if need_a_h else None  # (b, j, i, r)
        d_v = torch.empty(v.shape, dtype=v.dtype, device=v.device) if need_v else None
        d_v_t = torch.empty_like(v_t) if need_v else None
        for b in range(batch):
            g_rows, g_cols = grad_out[b].transpose(0, 1), grad_t[b].transpose(0, 1)  # (i, c, j), (j, c, i)
            if d_a_w is not None:
                torch.bmm(g_rows.transpose(1, 2), v[b].transpose(0, 1), out=d_a_w[b])
            if d_a_h_t is not None:
                torch.bmm(g_cols.transpose(1, 2), v_t[b].transpose(0, 1), out=d_a_h_t[b])
            if d_v is not None:
                torch.bmm(g_rows, a_w[b], out=d_v[b].transpose(0, 1))
                torch.bmm(g_cols, a_h[b].transpose(0, 1), out=d_v_t[b].transpose(0, 1))
        if d_v is not None:
            d_v.add_(d_v_t.transpose(2, 3))
        return None if d_a_h_t is None else d_a_h_t.transpose(1, 2), d_a_w, d_v


def _cross_sum(a_h: torch.Tensor, a_w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if not torch.jit.is_scripting():
        if _cross_sum_fast_applies(a_h, v):
            return _cross_sum_fast(a_h, a_w, v)
    return _cross_sum_explicit(a_h, a_w, v)


@torch.jit.unused
def _cross_sum_fast_applies(a_h: torch.Tensor, v: torch.Tensor) -> bool:
    """Eager CPU float32/float64 without autocast or torch.func transforms; graph capture keeps einsum."""
    return not graph_capture() and plain_float_tensors(a_h, v)


@torch.jit.unused
def _cross_sum_fast(a_h: torch.Tensor, a_w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and (a_h.requires_grad or a_w.requires_grad or v.requires_grad):
        return _CrossSum.apply(a_h, a_w, v)
    return _cross_sum_inference(a_h, a_w, v)


class CrissCrossAttention(nn.Module):
    """Criss-cross attention block of CCNet, applied ``recurrence`` times with shared weights.

    Args:
        channels: input (and output) channels C.
        rd_ratio: query/key width as a fraction of ``channels`` (paper: 1/8).
        rd_channels: query/key width; overrides ``rd_ratio`` when given.
        recurrence: how many times the same block is applied (paper's RCCA: 2).
        device, dtype: factory arguments for the parameters.

    ``gamma`` starts at 0, so the block is the identity at initialisation.
    """

    def __init__(
            self,
            channels: int,
            *,
            rd_ratio: float = 1. / 8,
            rd_channels: Optional[int] = None,
            recurrence: int = 2,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.channels = check_positive_int('channels', channels)
        self.rd_channels = resolve_rd_channels(channels, rd_ratio, rd_channels)
        self.recurrence = check_positive_int('recurrence', recurrence)
        self.query_conv = nn.Conv2d(channels, self.rd_channels, kernel_size=1, **dd)
        self.key_conv = nn.Conv2d(channels, self.rd_channels, kernel_size=1, **dd)
        self.value_conv = nn.Conv2d(channels, channels, kernel_size=1, **dd)
        self.gamma = nn.Parameter(torch.zeros(1, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default (PyTorch) init for the three 1x1 convs; ``gamma`` is zero-initialised so the
        block is the identity when inserted into a pretrained network."""
        self.query_conv.reset_parameters()
        self.key_conv.reset_parameters()
        self.value_conv.reset_parameters()
        with torch.no_grad():
            self.gamma.zero_()

    def extra_repr(self) -> str:
        return f'channels={self.channels}, rd_channels={self.rd_channels}, recurrence={self.recurrence}'

    @staticmethod
    def _self_mask(height: int, device: torch.device) -> torch.Tensor:
        """(H, 1, H) bool, True where the column key is the query's own row: from an ``arange`` comparison,
        not ``torch.eye(dtype=bool)``, which the TorchScript ONNX exporter turns into an ``EyeLike`` on
        bool that ONNX Runtime cannot run."""
        rows = torch.arange(height, device=device)
        return (rows.unsqueeze(1) == rows.unsqueeze(0)).unsqueeze(1)

    def _cross_weights(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Softmax weights over each position's column (B, H, W, H) and row (B, H, W, W), as views of one tensor.
        A function of its own so that q, k and the energies are freed before the sum over values."""
        height, width = x.shape[2], x.shape[3]
        q = self.query_conv(x)
        k = self.key_conv(x)
        # e_h[b, i, j, r] = q[b, :, i, j] . k[b, :, r, j]  (column of (i, j)); the self entry r == i is
        # excluded here and kept in the row energies, so every position is counted exactly once.
        # Energies and softmax in float32 for half inputs (also under autocast): q . k sums C/8 products.
        # contiguous: einsum returns a permuted view, whose strides torch.export cannot order symbolically
        # once H is an expression of the network's input size (a ResNet stage), so masked_fill failed to export
        e_h = _attention.einsum_float32('bcij,bcrj->bijr', q, k).contiguous()
        e_h = e_h.masked_fill(self._self_mask(height, x.device), float('-inf'))
        # e_w[b, i, j, s] = q[b, :, i, j] . k[b, :, i, s]  (row of (i, j))
        e_w = _attention.einsum_float32('bcij,bcis->bijs', q, k)
        attn = torch.softmax(torch.cat([e_h, e_w], dim=-1), dim=-1).to(q.dtype)  # q's dtype is the convs' (v's)
        a_h, a_w = torch.split(attn, [height, width], dim=-1)
        return a_h, a_w

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        """One criss-cross attention pass: gamma * CCA(x) + x."""
        a_h, a_w = self._cross_weights(x)
        out = _cross_sum(a_h, a_w, self.value_conv(x))
        return torch.addcmul(x, self.gamma, out)  # gamma * out + x in one pass, x's memory layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, 4, 'CrissCrossAttention')
        for _ in range(self.recurrence):
            x = self._step(x)
        return x

    def _cross_rows(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Weights of the queries ``idx`` over their crosses, scattered onto (B, K, H, W)."""
        height, width = x.shape[2], x.shape[3]
        rows = torch.div(idx, width, rounding_mode='floor')
        cols = idx - rows * width
        q = self.query_conv(x).flatten(2)[:, :, idx]  # (B, Cr, K)
        k = self.key_conv(x)  # (B, Cr, H, W)
        e_h = _attention.einsum_float32('bck,bcrk->bkr', q, k[:, :, :, cols])  # column of each query: (B, K, H)
        self_mask = torch.arange(height, device=x.device).unsqueeze(0) == rows.unsqueeze(1)  # (K, H)
        e_h = e_h.masked_fill(self_mask, float('-inf'))
        e_w = _attention.einsum_float32('bck,bcks->bks', q, k[:, :, rows, :])  # row of each query: (B, K, W)
        attn = torch.softmax(torch.cat([e_h, e_w], dim=-1), dim=-1)
        a_h, a_w = torch.split(attn, [height, width], dim=-1)
        col_onehot = F.one_hot(cols, width).to(attn.dtype)  # (K, W)
        row_onehot = F.one_hot(rows, height).to(attn.dtype)  # (K, H)
        maps = a_h.unsqueeze(-1) * col_onehot[None, :, None, :] + a_w.unsqueeze(2) * row_onehot[None, :, :, None]
        return maps.to(x.dtype)  # computed in float32 for half inputs

    def attention_maps(self, x: torch.Tensor, queries: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Criss-cross weights of the query positions ``queries`` (row-major flat indices; ``None``: centre).

        Returns ``'query'``: (B, K, H, W), each query's H + W - 1 weights of the first recurrence
        step scattered onto its row and column (zeros elsewhere, sums to 1). For ``recurrence`` R > 1
        also ``'query_r2'`` ... ``'query_rR'``: the weights of step t, computed on the output of step
        t - 1 (what the forward uses at that step). Only K rows are computed, never N x N.
        """
        check_input(x, self.channels, 4, 'CrissCrossAttention')
        height, width = x.shape[2], x.shape[3]
        idx = query_index(queries, (height, width), x.device)
        maps: Dict[str, torch.Tensor] = {}
        for step in range(self.recurrence):
            maps['query' if step == 0 else f'query_r{step + 1}'] = self._cross_rows(x, idx)
            if step + 1 < self.recurrence:
                x = self._step(x)
        return maps
