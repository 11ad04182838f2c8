"""GCNet's query-independence measure: how alike the attention maps of different query positions are.

GCNet (Cao et al., arXiv:1904.11492, Sec. 3.1) observed that a Non-local block attends to almost the
same positions whatever the query, and measured it as the average distance between the maps of
different queries. For the maps of K queries of one image:

* cosine distance ``1 - <p, q> / (|p| |q|)``, in [0, 2] ([0, 1] for non-negative maps);
* Jensen-Shannon divergence ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2``, ``m = (p + q) / 2``,
  natural log, in [0, ln 2];

each averaged over the pairs of distinct queries.

Criss-cross attention needs a different object: a single step's maps lie on different crosses (the
query's row and column), so two queries share at most two positions and their distance mostly
measures that geometry. What is compared instead is the *effective* attention after the R recurrent
steps (CCNet Sec. 3.3), the product A_R ... A_1 of the steps' row-stochastic weights restricted to
the K query rows, next to the same product for uniform weights on every cross (the query dependence
the geometry alone gives).
"""
import math
from typing import Callable, Tuple

import torch
import torch.nn.functional as F

from gczoo.layers import CrissCrossAttention

__all__ = [
    'LN2', 'pairwise_cosine_distance', 'pairwise_js_divergence', 'mean_pairwise_distances',
    'criss_cross_effective_maps', 'uniform_cross_effective_maps',
]

LN2 = math.log(2.0)  # the largest Jensen-Shannon divergence in nats


def _check_maps(maps: torch.Tensor) -> torch.Tensor:
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f'maps must be a tensor (B, K, ...), got {type(maps).__name__}')
    if maps.dim() < 3 or maps.shape[1] < 2:
        raise ValueError(f'maps must be (B, K, ...) with K >= 2 queries, got shape {list(maps.shape)}')
    return maps.flatten(2).double()


def pairwise_cosine_distance(maps: torch.Tensor) -> torch.Tensor:
    """(B, K, K) cosine distances ``1 - cos`` between the K maps of each of the B images (maps (B, K, ...))."""
    unit = F.normalize(_check_maps(maps), dim=-1)
    return (1.0 - unit @ unit.transpose(1, 2)).clamp(0.0, 2.0)


def pairwise_js_divergence(maps: torch.Tensor) -> torch.Tensor:
    """(B, K, K) Jensen-Shannon divergences (natural log, in [0, ln 2]) between the K maps of each image.

    Maps must be non-negative; each is normalised to sum to 1 first (the softmax maps already do).
    Computed one row of pairs at a time: (B, K, M) memory, never (B, K, K, M).
    """
    p = _check_maps(maps)
    if bool((p < 0).any()):
        raise ValueError('maps must be non-negative for the Jensen-Shannon divergence (got negative weights)')
    p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    logp = torch.where(p > 0, p.log(), torch.zeros_like(p))
    batch, k, _ = p.shape
    out = p.new_zeros(batch, k, k)
    for i in range(k):
        m = 0.5 * (p[:, i:i + 1] + p)  # (B, K, M)
        logm = torch.where(m > 0, m.log(), torch.zeros_like(m))
        kl_i = (p[:, i:i + 1] * (logp[:, i:i + 1] - logm)).sum(-1)
        kl_j = (p * (logp - logm)).sum(-1)
        out[:, i] = 0.5 * (kl_i + kl_j)
    return out.clamp(0.0, LN2)


def mean_pairwise_distances(maps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per image (B,), the mean cosine distance and mean JS divergence over all pairs of distinct queries.

    JS is NaN when the maps have negative weights (e.g. Non-local's dot-product mode).
    """
    cos = pairwise_cosine_distance(maps)
    k = cos.shape[1]
    iu = torch.triu_indices(k, k, 1, device=cos.device)
    cos_mean = cos[:, iu[0], iu[1]].mean(-1)
    if bool((maps < 0).any()):
        js_mean = torch.full_like(cos_mean, float('nan'))
    else:
        js_mean = pairwise_js_divergence(maps)[:, iu[0], iu[1]].mean(-1)
    return cos_mean, js_mean


def _compose_rows(
        last_rows: torch.Tensor, steps: int, step_rows: Callable[[int, torch.Tensor], torch.Tensor],
        chunk_size: int,
) -> torch.Tensor:
    """rows <- rows @ A_t for t = steps - 1 ... 1, with A_t's rows fetched only for positions that carry weight."""
    rows = last_rows
    for step in range(steps - 1, 0, -1):
        support = torch.nonzero(rows.abs().sum((0, 1)) > 0).flatten()
        new_rows = torch.zeros_like(rows)
        for chunk in support.split(chunk_size):
            new_rows += torch.bmm(rows[:, :, chunk], step_rows(step, chunk).to(rows.dtype))
        rows = new_rows
    return rows


def _step_key(step: int) -> str:
    return 'query' if step == 1 else f'query_r{step}'


def criss_cross_effective_maps(
        block: CrissCrossAttention, x: torch.Tensor, queries: torch.Tensor, chunk_size: int = 256,
) -> torch.Tensor:
    """(B, K, H, W) effective attention of the queries through all ``block.recurrence`` steps.

    The product A_R ... A_1 of the steps' weights (each a row-stochastic matrix over the H x W positions,
    non-zero on each query's cross), restricted to the K query rows, so each map sums to 1. Built from
    ``block.attention_maps`` rows in chunks of ``chunk_size`` positions: no H*W x H*W matrix.
    """
    batch, _, height, width = x.shape
    steps = block.recurrence
    last = block.attention_maps(x, queries)[_step_key(steps)].flatten(2)

    def step_rows(step: int, positions: torch.Tensor) -> torch.Tensor:
        return block.attention_maps(x, positions)[_step_key(step)].flatten(2)

    rows = _compose_rows(last, steps, step_rows, chunk_size)
    return rows.reshape(batch, -1, height, width)


def _uniform_cross_rows(positions: torch.Tensor, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """(1, K, H*W): weight 1 / (H + W - 1) on each position's row and column (itself once)."""
    rows = torch.div(positions, width, rounding_mode='floor')
    cols = positions - rows * width
    grid_r = torch.arange(height, device=positions.device)[:, None]
    grid_c = torch.arange(width, device=positions.device)[None, :]
    on_cross = (grid_r[None] == rows[:, None, None]) | (grid_c[None] == cols[:, None, None])  # (K, H, W)
    return (on_cross.to(dtype) / (height + width - 1)).flatten(1).unsqueeze(0)


def uniform_cross_effective_maps(
        queries: torch.Tensor, height: int, width: int, steps: int, chunk_size: int = 256,
) -> torch.Tensor:
    """(1, K, H, W) effective attention of ``steps`` criss-cross steps with uniform weights on every cross:
    the query dependence that the criss-cross geometry alone produces."""
    queries = queries.long()
    last = _uniform_cross_rows(queries, height, width, torch.float64)

    def step_rows(step: int, positions: torch.Tensor) -> torch.Tensor:
        return _uniform_cross_rows(positions, height, width, torch.float64)

    return _compose_rows(last, steps, step_rows, chunk_size).reshape(1, -1, height, width)
