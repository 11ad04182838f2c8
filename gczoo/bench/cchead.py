"""``gczoo bench cchead``: the criss-cross attention of CCNet's segmentation head (RCCA: one
``CrissCrossAttention``, recurrence 2, C = 512 -> C/8 = 64 queries/keys) against mmcv's formulation of
the same block (einsum energies, an additive -inf diagonal matrix, ``cat`` + softmax, two einsums back).

Paper: Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019 (arXiv:1811.11721).

The default input, 2 x 512 x 97 x 97, is what the head's RCCA sees on a 769 x 769 Cityscapes crop (output
stride 8) and the size mmcv's ``CrissCrossAttention`` docstring benchmarks. Both blocks share weights; the
benchmark first checks in float64 that they compute the same function, then measures inference time
(interleaved rounds, medians, paired ratio) and the peak extra memory of one forward call, and prints
the ratios gczoo / mmcv-formulation (< 1: gczoo faster or smaller). The rest of the head (3x3 convs,
concat, classifier) is the same code in both and is left out so the ratio is the attention's.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from gczoo.layers import CrissCrossAttention

from .pair import add_pair_flags, time_and_memory
from .report import fmt, markdown

__all__ = ['EinsumCrissCross', 'build_cc_impls', 'cc_max_abs_diff', 'bench_cchead',
           'format_cchead_table', 'add_cchead_parser']


class EinsumCrissCross(nn.Module):
    """mmcv's ``CrissCrossAttention`` computation (mmcv >= 1.3.13, pure PyTorch), applied ``recurrence`` times,
    on the convs and gamma of a gczoo :class:`~gczoo.layers.CrissCrossAttention` (a measurement baseline only)."""

    def __init__(self, block: CrissCrossAttention):
        super().__init__()
        self.block = block

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        height = x.shape[2]
        query, key, value = b.query_conv(x), b.key_conv(x), b.value_conv(x)
        neg_inf_diag = torch.diag(torch.full((height,), float('-inf'), device=x.device, dtype=x.dtype))
        energy_h = (torch.einsum('bchw,bciw->bwhi', query, key) + neg_inf_diag).transpose(1, 2)
        energy_w = torch.einsum('bchw,bchj->bhwj', query, key)
        attn = F.softmax(torch.cat([energy_h, energy_w], dim=-1), dim=-1)
        out = torch.einsum('bciw,bhwi->bchw', value, attn[..., :height])
        out = out + torch.einsum('bchj,bhwj->bchw', value, attn[..., height:])
        return (b.gamma * out + x).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.block.recurrence):
            x = self._step(x)
        return x


def build_cc_impls(channels: int, seed: int = 0) -> Dict[str, nn.Module]:
    """``{'gczoo': CrissCrossAttention, 'mmcv': EinsumCrissCross}`` sharing random weights (gamma non-zero)."""
    gen = torch.Generator().manual_seed(seed)
    block = CrissCrossAttention(channels, rd_channels=max(1, channels // 8), recurrence=2)
    with torch.no_grad():
        for t in block.parameters():
            t.copy_(torch.randn(t.shape, generator=gen) * 0.05)
        block.gamma.fill_(0.5)
    twin = CrissCrossAttention(channels, rd_channels=max(1, channels // 8), recurrence=2)
    twin.load_state_dict(block.state_dict())
    return {'gczoo': block.eval(), 'mmcv': EinsumCrissCross(twin).eval()}


def cc_max_abs_diff(channels: int, seed: int = 0) -> float:
    """max |gczoo - mmcv formulation| in float64 on a small non-square input (the equivalence check)."""
    impls = {k: v.double() for k, v in build_cc_impls(channels, seed).items()}
    x = torch.randn(2, channels, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((impls['gczoo'](x) - impls['mmcv'](x)).abs().max())


def bench_cchead(batch: int, channels: int, height: int, width: int, *, rounds: int, warmup: int, min_time: float,
                 memory: str, device: str, clock: str, seed: int = 0) -> List[Dict[str, Any]]:
    """One row: time and peak extra memory of gczoo's RCCA and mmcv's formulation, and their ratios."""
    diff = cc_max_abs_diff(channels, seed)
    if diff > 1e-9:
        raise AssertionError(f'gczoo and mmcv-formulation criss-cross differ by {diff:g} in float64')
    shape = (batch, channels, height, width)
    row: Dict[str, Any] = dict(shape='x'.join(map(str, shape)), recurrence=2, max_abs_diff_f64=diff)
    row.update(time_and_memory('gczoo.bench.cchead:build_cc_impls', 'mmcv', shape, (1, channels, 4, 4),
                               rounds=rounds, warmup=warmup, min_time=min_time, memory=memory, device=device,
                               clock=clock, seed=seed))
    return [row]


def format_cchead_table(rows: Sequence[Dict[str, Any]]) -> str:
    mib = 1 / 2 ** 20
    lines = [['input (B x C x H x W)', 'gczoo ms', 'mmcv-einsum ms', 't ratio [q1, q3]', 'gczoo MiB', 'mmcv MiB',
              'mem ratio']]
    for r in rows:
        mem = [fmt(r[k] * mib if r[k] is not None else None, '.1f') for k in ('mem_gczoo_bytes', 'mem_mmcv_bytes')]
        lines.append([r['shape'], fmt(r['t_gczoo_ms']), fmt(r['t_mmcv_ms']),
                      f"{fmt(r['t_ratio'])} [{fmt(r['t_ratio_q1'])}, {fmt(r['t_ratio_q3'])}]", *mem,
                      fmt(r['mem_ratio'])])
    return markdown(lines)


def add_cchead_parser(sub: Any, common: Optional[Callable[[Any], None]] = None) -> Any:
    """The ``cchead`` subcommand's flags (``gczoo bench cchead --help``)."""
    from gczoo.args import positive_int
    p = sub.add_parser('cchead', help="CCNet head's criss-cross attention vs mmcv's einsum formulation",
                       description=__doc__.split('\n\n')[0])
    p.add_argument('--batch', type=positive_int, default=2)
    p.add_argument('--channels', type=positive_int, default=512)
    p.add_argument('--height', type=positive_int, default=97)
    p.add_argument('--width', type=positive_int, default=97)
    add_pair_flags(p)
    if common is not None:
        common(p)
    return p
