"""The figures: a grid of attention maps over the input image, and the query-independence bar chart.

Both are matplotlib ``Figure`` objects built without pyplot (no global state, no display needed);
writing them is the caller's job (see ``gczoo.files``). matplotlib is imported inside the
functions: it comes with the ``viz`` extra, and the command line names the extra when it is missing.

Every grid cell is ``CELL_INCHES`` square at ``DPI``, plus a ``HEADER_INCHES`` title strip: multiples
of 0.5 inch are exact in binary, so a PNG is exactly (cols * 250) x (rows * 250 + 50) pixels.
"""
import math
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .capture import BlockMaps
from .metrics import LN2

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ['CELL_INCHES', 'HEADER_INCHES', 'DPI', 'grid_pixel_size', 'attention_figure', 'analysis_figure']

CELL_INCHES = 2.5
HEADER_INCHES = 0.5
DPI = 100
_CMAP = 'jet'
_ALPHA = 0.5
_QUERY_COLORS = ('#ffffff', '#ff2d55', '#00e5ff', '#ffd60a', '#7cff4f', '#bf5af2', '#ff9f0a', '#0a84ff')
_MODEL_COLORS = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f')


def grid_pixel_size(rows: int, cols: int) -> Tuple[int, int]:
    """(width, height) in pixels of a PNG with ``rows`` x ``cols`` panels."""
    return int(round(cols * CELL_INCHES * DPI)), int(round((rows * CELL_INCHES + HEADER_INCHES) * DPI))


# ----------------------------------------------------------------------------------------------- map grid

def _upsample(m: torch.Tensor, size: Tuple[int, int]) -> np.ndarray:
    return F.interpolate(m[None, None].float(), size=size, mode='bilinear', align_corners=False)[0, 0].cpu().numpy()


def _cell_centre(
        cell: Tuple[int, int], feature_size: Tuple[int, int], image_size: Tuple[int, int]) -> Tuple[float, float]:
    return ((cell[0] + 0.5) * image_size[0] / feature_size[0], (cell[1] + 0.5) * image_size[1] / feature_size[1])


def _span(lo: float, hi: float) -> str:
    """'[lo, hi]' with just enough digits that the two differ (a near-uniform map is not shown as [1, 1])."""
    digits = 3
    if hi > lo:
        digits = min(8, max(3, 2 - int(math.floor(math.log10((hi - lo) / max(abs(hi), 1e-30))))))
    return f'[{lo:.{digits}g}, {hi:.{digits}g}]'


def _outline():
    from matplotlib import patheffects
    return [patheffects.withStroke(linewidth=2.5, foreground='black')]


def _mark(ax, y: float, x: float, k: int, size: float = 9) -> None:
    color = _QUERY_COLORS[k % len(_QUERY_COLORS)]
    ax.plot([x], [y], marker='o', markersize=size, markerfacecolor=color, markeredgecolor='black', markeredgewidth=1.5)
    ax.annotate(str(k + 1), (x, y), xytext=(6, 6), textcoords='offset points', color=color, fontsize=9,
                fontweight='bold', path_effects=_outline())


def _layout(block_maps: List[BlockMaps], num_queries: int) -> Tuple[List[List[Dict[str, Any]]], int]:
    """Rows of panel descriptions: one row per query-map (points panel + one panel per query), then the
    single maps (context/spatial) packed into rows of the same width."""
    query_rows, singles = [], []
    for bm in block_maps:
        for key in bm.maps:
            (query_rows if key.startswith('query') else singles).append((bm, key))
    cols = num_queries + 1 if query_rows else max(2, min(5, len(singles) + 1))
    rows: List[List[Dict[str, Any]]] = []
    for bm, key in query_rows:
        size = f'{bm.feature_size[0]}x{bm.feature_size[1]}'
        row = [dict(kind='points', bm=bm, title=f'{bm.name}  ({bm.block_type})\n{key}, queries on its {size} grid')]
        row += [dict(kind='map', bm=bm, key=key, k=k, title=f'query {k + 1} at cell {bm.query_cells[k]}')
                for k in range(num_queries)]
        rows.append(row)
    panels = [] if query_rows else [dict(kind='image', title='input')]
    panels += [dict(kind='map', bm=bm, key=key, k=0, title=f'{bm.name}  ({bm.block_type})\n{key} map')
               for bm, key in singles]
    rows += [panels[i:i + cols] for i in range(0, len(panels), cols)]
    return rows, cols


def _draw_map(ax, panel: Dict[str, Any], image_size: Tuple[int, int], batch_index: int) -> None:
    bm: BlockMaps = panel['bm']
    m = bm.maps[panel['key']][batch_index, panel['k']]
    up = _upsample(m, image_size)
    # Each map to its own range: near-uniform softmax maps (a Non-local block at init) would otherwise
    # be one flat colour; the title says how far from uniform the map really is.
    vmin, vmax = float(up.min()), float(up.max())
    ax.imshow(up, cmap=_CMAP, alpha=_ALPHA, vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-12)
    lo, hi = float(m.min()), float(m.max())
    if panel['key'] == 'spatial':
        span = f'gate in {_span(lo, hi)}'
    else:  # a probability map over n positions, as multiples of uniform 1/n
        n = m.numel()
        span = f'p*{n} in {_span(lo * n, hi * n)}'
    ax.set_title(f'{panel["title"]}\n{span}', fontsize=8)
    if panel['key'].startswith('query'):
        y, x = _cell_centre(bm.query_cells[panel['k']], bm.feature_size, image_size)
        _mark(ax, y, x, panel['k'])


def attention_figure(
        image: np.ndarray,
        block_maps: List[BlockMaps],
        query_points: Sequence[Tuple[float, float]],
        title: str,
        batch_index: int = 0,
) -> 'Figure':
    """A grid of ``image`` (H, W, 3 in [0, 1]) overlaid with each block's maps (of batch item ``batch_index``).

    Query maps get a row each (the query points, then one panel per query); context and spatial maps
    are packed into rows after them. The PNG is ``grid_pixel_size(rows, cols)`` pixels.
    """
    from matplotlib.figure import Figure
    rows, cols = _layout(block_maps, len(query_points))
    image_size = image.shape[:2]
    fig = Figure(figsize=(cols * CELL_INCHES, len(rows) * CELL_INCHES + HEADER_INCHES), dpi=DPI,
                 layout='constrained')
    fig.suptitle(title, fontsize=11)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(row):
                continue
            panel = row[c]
            ax.imshow(image)
            ax.set_title(panel['title'], fontsize=8)
            if panel['kind'] == 'points':
                for k, (y, x) in enumerate(query_points):
                    _mark(ax, y, x, k)
            elif panel['kind'] == 'map':
                _draw_map(ax, panel, image_size, batch_index)
    return fig


# ----------------------------------------------------------------------------------------------- bar chart

def _collapse_context_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The (all-zero) context rows of a model become one bar per block type."""
    out: List[Dict[str, Any]] = []
    merged: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for r in rows:
        if r['map'] != 'context':
            out.append(r)
            continue
        key = (r['label'], r['block_type'])
        if key not in merged:
            merged[key] = dict(r, count=0)
            out.append(merged[key])
        merged[key]['count'] += 1
        for metric in ('cosine_distance', 'js_divergence'):
            merged[key][metric] = max(merged[key][metric], r[metric])
    for m in merged.values():
        m['block'] = f'{m["count"]} block{"s" if m["count"] > 1 else ""}'
        m['map'] = 'context (0 by construction)'
    return out


def analysis_figure(rows: List[Dict[str, Any]], title: str) -> 'Figure':
    """Horizontal grouped bars of the analysis rows: one group per (block, map), one bar per model label,
    cosine distance on the left and Jensen-Shannon divergence on the right (1400 px wide)."""
    from matplotlib.figure import Figure
    rows = _collapse_context_rows(rows)
    labels = list(dict.fromkeys(r['label'] for r in rows))
    keys = list(dict.fromkeys((r['block'], r['block_type'], r['map']) for r in rows))
    by_key = {(r['label'], r['block'], r['block_type'], r['map']): r for r in rows}
    # y position of every bar, groups separated by a gap, first group at the top
    bars: List[Tuple[float, int, Dict[str, Any]]] = []
    ticks: List[Tuple[float, str]] = []
    y = 0.0
    for key in keys:
        group = [(li, by_key[(label,) + key]) for li, label in enumerate(labels) if (label,) + key in by_key]
        start = y
        for li, row in group:
            bars.append((y, li, row))
            y += 1.0
        ticks.append(((start + y - 1.0) / 2, f'{key[0]}  {key[1]}\n{key[2]}'))
        y += 0.6
    height = max(3.0, 0.28 * y + 2.0 + 0.25 * math.ceil(len(labels) / 4))
    fig = Figure(figsize=(14.0, height), dpi=DPI, layout='constrained')
    fig.suptitle(title, fontsize=11)
    axes = fig.subplots(1, 2, sharey=True)
    metrics = (('cosine_distance', 'mean cosine distance between the maps of different queries', 1.0),
               ('js_divergence', 'mean Jensen-Shannon divergence (nats; at most ln 2 = 0.693)', LN2))
    for ax, (metric, xlabel, xmax) in zip(axes, metrics):
        top = 0.0
        for li, label in enumerate(labels):
            color = _MODEL_COLORS[li % len(_MODEL_COLORS)]
            sel = [(yy, row) for yy, l, row in bars if l == li and math.isfinite(row[metric])]
            if not sel:
                ax.barh([], [], color=color, label=label)
                continue
            ys = [yy for yy, _ in sel]
            vs = [row[metric] for _, row in sel]
            hatches = ['//' if row['map'] == 'effective_uniform' else None for _, row in sel]
            drawn = ax.barh(ys, vs, height=0.8, color=color, label=label, hatch=hatches, edgecolor='white')
            ax.bar_label(drawn, labels=[f'{v:.3g}' for v in vs], fontsize=7, padding=2)
            top = max([top] + vs)
        ax.set_xlim(0, min(xmax, top * 1.3) if top > 0 else 0.05 * xmax)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(axis='x', alpha=0.3)
    axes[0].invert_yaxis()  # shared by both panels: first block at the top
    axes[0].set_yticks([t for t, _ in ticks])
    axes[0].set_yticklabels([s for _, s in ticks], fontsize=8)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc='outside lower center', ncols=min(4, len(names)), fontsize=8)
    return fig
