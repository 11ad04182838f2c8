"""``gczoo bench nl3d``: the Non-local block of the I3D video models (``NonLocal3d``, embedded Gaussian,
1x2x2 sub-sampling, no scaling: mmaction2's NL config) against a naive one that builds the
(THW x THW/4) pairwise matrix and its softmax, as mmcv's ``NonLocal3d`` does.

Paper: `Non-local Neural Networks` - Wang et al., CVPR 2018, https://arxiv.org/abs/1711.07971.

gczoo's block hands theta, phi and g to ``F.scaled_dot_product_attention``; where SDPA has a fused
kernel for the shapes (flash / memory-efficient attention on CUDA, the fused CPU kernel) nothing
THW x THW' is materialised. The benchmark checks in float64 that both compute the same function, then
measures time (interleaved rounds, medians) and peak extra memory of one forward call, and prints the
ratios gczoo / naive. Defaults: the first NL block of i3d_r50_nl on a 32-frame 224x224 clip
(res3: C=512, T=4, 28x28).
"""
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from gczoo.layers import NonLocal3d

from .pair import add_pair_flags, time_and_memory
from .report import fmt, markdown

__all__ = ['NaiveNonLocal3d', 'build_nl3d_impls', 'bench_nl3d', 'format_nl3d_table']

_NL_KWARGS = dict(mode='embedded_gaussian', sub_sample=True, use_scale=False)


class NaiveNonLocal3d(nn.Module):
    """mmcv's NonLocal3d computation: the explicit (N, THW, THW') pairwise matrix, softmax, matmul.
    Takes its weights from a gczoo :class:`~gczoo.layers.NonLocal3d` (a measurement baseline only)."""

    def __init__(self, block: NonLocal3d):
        super().__init__()
        self.block = block  # its convs, pool and norm; only the attention is computed differently
        self.inter = block.inner_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, b = x.shape[0], self.block
        theta = b.theta(x).view(n, self.inter, -1).permute(0, 2, 1)
        phi = b.pool(b.phi(x)).view(n, self.inter, -1)
        g = b.pool(b.g(x)).view(n, self.inter, -1).permute(0, 2, 1)
        pairwise = torch.matmul(theta, phi).softmax(dim=-1)  # (n, THW, THW'): what gczoo never builds
        y = torch.matmul(pairwise, g).permute(0, 2, 1).reshape(n, self.inter, *x.shape[2:])
        return x + b.norm(b.conv_out(y))


def build_nl3d_impls(channels: int, seed: int = 0) -> Dict[str, nn.Module]:
    """``{'gczoo': NonLocal3d, 'naive': NaiveNonLocal3d}`` sharing random weights (norm not at zero)."""
    gen = torch.Generator().manual_seed(seed)
    block = NonLocal3d(channels, **_NL_KWARGS)
    with torch.no_grad():
        for t in block.parameters():
            t.copy_(torch.randn(t.shape, generator=gen) * 0.05)
    block.eval()
    twin = NonLocal3d(channels, **_NL_KWARGS).eval()
    twin.load_state_dict(block.state_dict())
    return {'gczoo': block, 'naive': NaiveNonLocal3d(twin).eval()}


def max_abs_diff(channels: int, shape: Sequence[int], seed: int = 0) -> float:
    """max |gczoo - naive| in float64 on a small input of ``shape``'s T (the equivalence check)."""
    impls = {k: v.double() for k, v in build_nl3d_impls(channels, seed).items()}
    t, h, w = shape[-3], min(shape[-2], 8), min(shape[-1], 8)
    x = torch.randn(1, channels, t, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((impls['gczoo'](x) - impls['naive'](x)).abs().max())


def _check_fits(matrix_bytes: int, device: torch.device) -> None:
    """``ValueError`` before measuring when the naive block's float32 pairwise matrix alone exceeds the
    device's memory (it would end in an allocator traceback or the OOM killer)."""
    import os
    try:
        total = (torch.cuda.get_device_properties(device).total_memory if device.type == 'cuda'
                 else os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))
    except (ValueError, OSError, AttributeError, RuntimeError):  # unknown: measure and see
        return
    if matrix_bytes > total:
        raise ValueError(f"the naive block's THW x THW' matrix alone needs {matrix_bytes / 2 ** 30:.1f} GiB, more than "
                         f'the {total / 2 ** 30:.1f} GiB of {device}: lower --size, --frames or --batch')


def bench_nl3d(
        batch: int, channels: int, frames: int, size: int, *, rounds: int, warmup: int, min_time: float,
        memory: str, device: str, clock: str, seed: int = 0,
) -> List[Dict[str, Any]]:
    """One row: time and peak extra memory of gczoo's NonLocal3d and the naive one, and their ratios."""
    shape = (batch, channels, frames, size, size)
    diff = max_abs_diff(channels, shape, seed)
    if diff > 1e-9:
        raise AssertionError(f'gczoo and naive NonLocal3d differ by {diff:g} in float64: not the same function')
    queries, keys = frames * size * size, frames * (size // 2) ** 2
    matrix_bytes = batch * queries * keys * 4  # the naive block's float32 pairwise matrix
    _check_fits(matrix_bytes, torch.device(device))
    row: Dict[str, Any] = dict(shape='x'.join(map(str, shape)), keys=keys, queries=queries,
                               naive_matrix_bytes=matrix_bytes, max_abs_diff_f64=diff)
    row.update(time_and_memory('gczoo.bench.nonlocal3d:build_nl3d_impls', 'naive', shape, (1, channels, frames, 4, 4),
                               rounds=rounds, warmup=warmup, min_time=min_time, memory=memory, device=device,
                               clock=clock, seed=seed))
    return [row]


def format_nl3d_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The printed table: one line per shape."""
    mib = 1 / 2 ** 20
    lines = [['input (B x C x T x H x W)', 'THW x THW\'', 'gczoo ms', 'naive ms', 't ratio [q1, q3]',
              'gczoo MiB', 'naive MiB', 'mem ratio', 'naive matrix MiB']]
    for r in rows:
        mem = [fmt(r[k] * mib if r[k] is not None else None, '.1f') for k in ('mem_gczoo_bytes', 'mem_naive_bytes')]
        lines.append([r['shape'], f"{r['queries']} x {r['keys']}", fmt(r['t_gczoo_ms']), fmt(r['t_naive_ms']),
                      f"{fmt(r['t_ratio'])} [{fmt(r['t_ratio_q1'])}, {fmt(r['t_ratio_q3'])}]", *mem,
                      fmt(r['mem_ratio']), fmt(r['naive_matrix_bytes'] * mib, '.1f')])
    return markdown(lines)


def add_nl3d_parser(sub: Any, common: Optional[Callable[[Any], None]] = None) -> Any:
    """The ``nl3d`` subcommand's flags (``gczoo bench nl3d --help``)."""
    from gczoo.args import positive_int
    p = sub.add_parser('nl3d', help="the video models' NonLocal3d vs a naive THW x THW' one: time and memory",
                       description=__doc__.split('\n\n')[0])
    p.add_argument('--batch', type=positive_int, default=8)
    p.add_argument('--channels', type=positive_int, default=512)
    p.add_argument('--frames', type=positive_int, default=4, help="T at the block (i3d_r50_nl's res3: 4)")
    p.add_argument('--size', type=positive_int, default=28, help='H = W at the block (>= 2)')
    add_pair_flags(p)
    if common is not None:
        common(p)
    return p
