"""SAGAN self-attention for 2-D feature maps.

Paper: Han Zhang, Ian Goodfellow, Dimitris Metaxas, Augustus Odena,
"Self-Attention Generative Adversarial Networks", ICML 2019 (arXiv:1805.08318).

With f(x) = W_f x, g(x) = W_g x (1x1 convs, C -> C/8), h(x) = W_h x and the output conv
v(.) = W_v (.) (1x1 convs, C -> C), over the N = H * W positions:

    beta_{j,i} = softmax_i(f(x_j) . g(x_i))          (no 1/sqrt(d) scaling, as in the paper)
    o_j        = v(sum_i beta_{j,i} h(x_i))
    y_j        = gamma * o_j + x_j,                  gamma an nn.Parameter initialised to 0

No N x N matrix is built. On the CPU (eager float32/float64) the sum runs in query chunks at the
keys' own C/8 width (``_chunked_attention``; training 0.62x the naive N x N code's time, 0.17x its
memory, ``gczoo bench layers --backward``). Elsewhere (CUDA, half precision, autocast, graph capture)
it is ``F.scaled_dot_product_attention(..., scale=1.0)``, whose fused kernels need equal head sizes:
the query/key embeddings are zero-padded to the value width, which leaves every dot product unchanged.

Differences from the authors' code: no spectral normalisation (wrap the convs with
``torch.nn.utils.parametrizations.spectral_norm`` for GAN training), no 2x2 max-pooling of keys
and values, and h/v keep C channels (the official code narrows h to C/2). The 1x1 convs have no
bias, as the paper's W matrices and the official code.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _attention
from ._validate import check_input, check_positive_int, query_index, resolve_rd_channels

__all__ = ['SelfAttention2d']


class SelfAttention2d(nn.Module):
    """SAGAN self-attention block (zero-initialised ``gamma``: the identity at init).

    Args:
        channels: input (and output) channels C.
        rd_ratio: width of f (query) and g (key) as a fraction of ``channels`` (paper: 1/8).
        rd_channels: width of f and g; overrides ``rd_ratio`` when given.
        device, dtype: factory arguments for the parameters.
    """

    def __init__(
            self,
            channels: int,
            *,
            rd_ratio: float = 1. / 8,
            rd_channels: Optional[int] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.channels = check_positive_int('channels', channels)
        self.rd_channels = resolve_rd_channels(channels, rd_ratio, rd_channels)
        self.f = nn.Conv2d(channels, self.rd_channels, kernel_size=1, bias=False, **dd)  # query
        self.g = nn.Conv2d(channels, self.rd_channels, kernel_size=1, bias=False, **dd)  # key
        self.h = nn.Conv2d(channels, channels, kernel_size=1, bias=False, **dd)  # value
        self.v = nn.Conv2d(channels, channels, kernel_size=1, bias=False, **dd)  # output (paper's W_v)
        # A Parameter (not a plain tensor as in the seed code): trained, saved and moved with the module.
        self.gamma = nn.Parameter(torch.zeros(1, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default (PyTorch) init for f, g, h, v; ``gamma`` is zero-initialised so the block is the
        identity when inserted into a pretrained network."""
        for conv in (self.f, self.g, self.h, self.v):
            conv.reset_parameters()
        with torch.no_grad():
            self.gamma.zero_()

    def extra_repr(self) -> str:
        return f'channels={self.channels}, rd_channels={self.rd_channels}'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, 4, 'SelfAttention2d')
        batch, channels, height, width = x.shape
        # (B, 1, N, E) with a contiguous last dim: what the CPU flash kernel of SDPA requires.
        q = self.f(x).flatten(2).transpose(1, 2).unsqueeze(1)
        k = self.g(x).flatten(2).transpose(1, 2).unsqueeze(1)
        val = self.h(x).flatten(2).transpose(1, 2).unsqueeze(1)
        out = _attention.softmax_attention(q, k, val, 1.0)
        out = out[:, 0].transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.gamma * self.v(out)  # x first: the result keeps x's memory layout

    def attention_maps(self, x: torch.Tensor, queries: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``'query'``: (B, K, H, W), the rows beta_{j, .} of the query positions ``queries``
        (row-major flat indices; ``None``: the centre position). Each sums to 1; only K x N is computed."""
        check_input(x, self.channels, 4, 'SelfAttention2d')
        height, width = x.shape[2], x.shape[3]
        idx = query_index(queries, (height, width), x.device)
        q = self.f(x).flatten(2)[:, :, idx]  # (B, Cr, K)
        k = self.g(x).flatten(2)  # (B, Cr, N)
        # logits in float32 for half inputs (also under autocast), as the forward's SDPA kernel does
        beta = torch.softmax(_attention.einsum_float32('bck,bcn->bkn', q, k), dim=-1).to(x.dtype)
        return {'query': beta.reshape(beta.shape[0], beta.shape[1], height, width)}
