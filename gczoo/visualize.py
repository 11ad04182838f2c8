"""What the attention blocks attend to: attention-map PNGs and GCNet's query-independence analysis.

GCNet (Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
arXiv:1904.11492, Sec. 3.1) observed that the attention maps a Non-local block computes for different
query positions are almost the same, and measured it as the average distance between the maps of
different queries. This module makes both the pictures and the measurement for any gczoo model.

How the maps are obtained: a forward *pre*-hook on every attention block keeps the block's input during
one ordinary forward pass; afterwards each block's ``attention_maps(input, queries)`` recomputes the
attention for the chosen query positions only. The forward itself is untouched (the logits are
bitwise those of a forward without hooks) and nothing N x N is ever built.

Which map each block gives (see ``gczoo.layers``):

* Non-local, SAGAN self-attention: ``'query'``, one softmax row over the key positions per query.
* Criss-cross (CCNet): ``'query'`` (and ``'query_r2'`` ... for the later recurrences), each query's
  weights over its own row and column.
* GC block, Simplified Non-local: ``'context'``, the one softmax pooling mask shared by every query.
* CBAM, BAM: ``'spatial'``, the sigmoid spatial gate. (SE and the channel gates give per-channel weights,
  which have no place on the image and are not drawn.)

Query-independence measure (``analyze_attention``): for K query positions on a regular grid of the
block's input, the cosine distance ``1 - <p, q> / (|p| |q|)`` (in [0, 2]; [0, 1] for non-negative maps)
and the Jensen-Shannon divergence ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2, m = (p + q) / 2``
(natural log, in [0, ln 2]) of every pair of distinct queries' maps, averaged over the pairs, then over
the images (the tables also give the standard deviation over images).

* Non-local / SAGAN: the query rows themselves (probability vectors over the key positions).
* Criss-cross: a single step's maps live on different crosses (the query's row and column), so two
  queries share at most two positions and their distance mostly measures that geometry. What is
  compared instead is the *effective* attention after the R recurrent steps (CCNet Sec. 3.3:
  information reaches every position after R = 2), the composition A_R ... A_1 of the steps' row-
  stochastic weights, restricted to the K query rows (a full-image probability map per query). Its
  geometry alone already makes it query-dependent, so a second row ``effective_uniform`` gives the
  same measure for uniform weights on every cross: the learned attention is query-independent to the
  extent that it gets close to *that* figure, not to 0.
* GC block / Simplified Non-local: one map shared by every query, so the distance is 0 by
  construction; reported as reference rows.
* CBAM, BAM, SE: no per-query attention over positions; not part of the analysis.
"""
import argparse
import contextlib
import csv
import dataclasses
import fnmatch
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gczoo.layers import ContextBlock, CrissCrossAttention, NonLocal, SelfAttention2d, SimplifiedNonLocal
from gczoo.models import CheckpointError, PretrainedWeightsError, attention_modules, read_state_dict
from gczoo.models.weights import classifier_names

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    'SAMPLE_IMAGES', 'CELL_INCHES', 'HEADER_INCHES', 'DPI', 'BlockMaps', 'LoadedModel', 'sample_images',
    'load_images', 'load_model', 'data_transform', 'select_blocks', 'grid_query_points', 'points_to_cells',
    'capture_block_inputs', 'capture_attention', 'pairwise_cosine_distance', 'pairwise_js_divergence',
    'mean_pairwise_distances', 'criss_cross_effective_maps', 'uniform_cross_effective_maps', 'grid_pixel_size',
    'visualize', 'analyze_attention', 'write_analysis', 'main', 'analyze_main',
]

# Real photographs that install with scikit-image (no download): name -> loader of an (H, W[, 3]) uint8 array.
SAMPLE_IMAGES: Dict[str, Callable[[], np.ndarray]] = {
    'astronaut': lambda: _skimage_data().astronaut(),
    'coffee': lambda: _skimage_data().coffee(),
    'chelsea': lambda: _skimage_data().chelsea(),
    'rocket': lambda: _skimage_data().rocket(),
    'motorcycle': lambda: _skimage_data().stereo_motorcycle()[0],
    'camera': lambda: _skimage_data().camera(),
}

# Every grid cell is CELL_INCHES square at DPI, plus a HEADER_INCHES title strip: multiples of 0.5 inch
# are exact in binary, so a PNG is exactly (cols * 250) x (rows * 250 + 50) pixels.
CELL_INCHES = 2.5
HEADER_INCHES = 0.5
DPI = 100
_CMAP = 'jet'
_ALPHA = 0.5
_QUERY_COLORS = ('#ffffff', '#ff2d55', '#00e5ff', '#ffd60a', '#7cff4f', '#bf5af2', '#ff9f0a', '#0a84ff')
_CONTEXT_TYPES = (ContextBlock, SimplifiedNonLocal)
_QUERY_TYPES = (NonLocal, SelfAttention2d)
_LN2 = math.log(2.0)


def _skimage_data():
    import skimage.data
    return skimage.data


# ----------------------------------------------------------------------------------------------- inputs

def sample_images(names: Optional[Sequence[str]] = None) -> List[Tuple[str, 'Image.Image']]:
    """``(name, RGB PIL image)`` of scikit-image's bundled photos (default: all of ``SAMPLE_IMAGES``)."""
    from PIL import Image
    names = list(SAMPLE_IMAGES) if names is None else list(names)
    unknown = [n for n in names if n not in SAMPLE_IMAGES]
    if unknown:
        raise ValueError(f'names: unknown sample images {unknown}; choose from {list(SAMPLE_IMAGES)}')
    out = []
    for name in names:
        array = SAMPLE_IMAGES[name]()
        out.append((name, Image.fromarray(array).convert('RGB')))
    return out


def load_images(paths: Sequence[Union[str, os.PathLike]]) -> List[Tuple[str, 'Image.Image']]:
    """``(file stem, RGB PIL image)`` for each path; ``ValueError`` naming IMAGE for a missing/unreadable file."""
    from PIL import Image, UnidentifiedImageError
    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f'IMAGE: {str(path)!r} is not an existing file')
        try:
            with Image.open(path) as img:
                out.append((path.stem, img.convert('RGB')))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f'IMAGE: {str(path)!r} is not a readable image: {e}') from e
    return out


@dataclasses.dataclass
class LoadedModel:
    """A model ready for analysis and what to call it in tables and charts."""
    label: str
    arch: str
    model: nn.Module


def _parse_spec(spec: str, checkpoint: Optional[str]) -> Tuple[str, Optional[str]]:
    if not isinstance(spec, str) or not spec:
        raise TypeError(f'MODEL must be a non-empty str, got {spec!r}')
    if spec.startswith(('local-dir:', 'hf-hub:')):
        return spec, checkpoint
    if '=' in spec:
        name, _, path = spec.partition('=')
        if checkpoint is not None:
            raise ValueError(
                f'MODEL {spec!r} names a checkpoint and --checkpoint {checkpoint!r} is given too; pick one')
        return name, path
    return spec, checkpoint


def load_model(
        spec: str,
        *,
        pretrained: bool = False,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        seed: int = 0,
        device: Union[str, torch.device] = 'cpu',
) -> LoadedModel:
    """Build a model for visualisation/analysis, in eval mode.

    ``spec`` is a zoo (or any timm) model name (random init with ``seed`` unless ``pretrained`` or a
    ``checkpoint`` is given), ``NAME=CHECKPOINT`` (same as ``checkpoint``), or a ``local-dir:DIR`` /
    ``hf-hub:ORG/REPO`` name that timm loads with its weights. Checkpoints are read with
    ``gczoo.models.read_state_dict`` (safetensors or ``weights_only`` torch files); the number of
    classes is taken from the checkpoint's classifier.
    """
    import timm
    name, checkpoint = _parse_spec(spec, None if checkpoint is None else str(checkpoint))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name.startswith(('local-dir:', 'hf-hub:')):
            if checkpoint is not None:
                raise ValueError(f'--checkpoint cannot be combined with MODEL {name!r}, which carries its own weights')
            model = timm.create_model(name, pretrained=True)
            label = name
        else:
            if not timm.is_model(name):
                from gczoo.models import ZOO_MODELS
                raise ValueError(f'MODEL: unknown model {name!r}; zoo models: {", ".join(ZOO_MODELS)} '
                                 f'(or local-dir:DIR, hf-hub:ORG/REPO, NAME=CHECKPOINT)')
            if checkpoint is not None:
                if pretrained:
                    raise ValueError('pass either --pretrained or --checkpoint, not both')
                state_dict = read_state_dict(checkpoint)
                model = timm.create_model(name)
                classifier = classifier_names(model)[0]
                weight = state_dict.get(f'{classifier}.weight')
                if weight is not None and weight.shape[0] != model.num_classes:
                    model = timm.create_model(name, num_classes=weight.shape[0])
                try:
                    model.load_state_dict(state_dict)
                except RuntimeError as e:
                    raise CheckpointError(f'checkpoint {str(checkpoint)!r} does not fit model {name!r}: {e}') from e
                label = f'{name} ({Path(checkpoint).name})'
            else:
                model = timm.create_model(name, pretrained=pretrained)
                label = f'{name} ({"pretrained" if pretrained else "random init"})'
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or name
    if not attention_modules(model):
        raise ValueError(f'MODEL {spec!r} has no gczoo attention block (see `gczoo list`)')
    return LoadedModel(label=label, arch=arch, model=model.to(device).eval())


def data_transform(model: nn.Module, img_size: Optional[int] = None) -> Tuple[Callable, Dict[str, Any]]:
    """timm's eval transform for ``model`` (its data config; ``img_size`` overrides the input size)."""
    from timm.data import create_transform, resolve_data_config
    args = {} if img_size is None else {'input_size': (3, int(img_size), int(img_size))}
    config = resolve_data_config(args, model=model)
    return create_transform(**config, is_training=False), config


def _to_display(x: torch.Tensor, config: Dict[str, Any]) -> np.ndarray:
    """A normalised (3, H, W) input back to an (H, W, 3) float image in [0, 1]."""
    mean = torch.tensor(config['mean'], dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(config['std'], dtype=x.dtype, device=x.device)[:, None, None]
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).cpu().float().numpy()


# ----------------------------------------------------------------------------------------------- capture

def select_blocks(model: nn.Module, patterns: Optional[Sequence[str]] = None) -> List[Tuple[str, nn.Module]]:
    """The model's attention blocks whose module name matches any of the glob ``patterns`` (all if None)."""
    blocks = attention_modules(model)
    if not patterns:
        return blocks
    chosen = [(n, m) for n, m in blocks if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        raise ValueError(f'--blocks {list(patterns)} matches none of the attention blocks {[n for n, _ in blocks]}')
    return chosen


@contextlib.contextmanager
def capture_block_inputs(blocks: Sequence[Tuple[str, nn.Module]]) -> Iterator[Dict[str, torch.Tensor]]:
    """Within the context, a copy of the first input each block receives is stored under its name.

    Forward pre-hooks only read the input, so the forward computes exactly what it does without them;
    the hooks are removed on exit.
    """
    captured: Dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: Tuple[Any, ...]) -> None:
            if name not in captured and args and isinstance(args[0], torch.Tensor):
                # a copy: later in-place ops of the network (timm's `x += shortcut`, inplace ReLU) may
                # overwrite the very tensor the block was given
                captured[name] = args[0].detach().clone()
        return hook

    try:
        for name, block in blocks:
            handles.append(block.register_forward_pre_hook(make_hook(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def grid_query_points(num_queries: int, height: float, width: float) -> List[Tuple[float, float]]:
    """Up to ``num_queries`` (y, x) points at the centres of a regular rows x cols grid over a height x width area.

    rows = floor(sqrt(K * H / W)), cols = K // rows (both at least 1 and at most H, W when these are cell
    counts), so the grid follows the aspect ratio: K=4 -> 2x2, K=32 on a square -> 5x6 = 30 points.
    """
    if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 1:
        raise ValueError(f'--queries must be an int >= 1, got {num_queries!r}')
    rows = max(1, min(int(height), int(math.floor(math.sqrt(num_queries * height / width)))))
    cols = max(1, min(int(width), num_queries // rows))
    return [((i + 0.5) * height / rows, (j + 0.5) * width / cols) for i in range(rows) for j in range(cols)]


def points_to_cells(
        points: Sequence[Tuple[float, float]], image_size: Tuple[int, int], feature_size: Tuple[int, int],
) -> List[Tuple[int, int]]:
    """Feature-grid (row, col) of the cell containing each image point (y, x)."""
    ih, iw = image_size
    fh, fw = feature_size
    return [(min(fh - 1, max(0, int(y * fh / ih))), min(fw - 1, max(0, int(x * fw / iw)))) for y, x in points]


@dataclasses.dataclass
class BlockMaps:
    """The spatial attention maps of one block for one batch.

    ``maps``: key -> (B, K or 1, h, w) tensor ('query*' maps have one channel per query; 'context' and
    'spatial' one). ``query_cells``: (row, col) on the block's input grid of each query.
    """
    name: str
    block_type: str
    feature_size: Tuple[int, int]
    query_cells: List[Tuple[int, int]]
    maps: Dict[str, torch.Tensor]


def capture_attention(
        model: nn.Module,
        x: torch.Tensor,
        *,
        blocks: Optional[Sequence[Tuple[str, nn.Module]]] = None,
        query_points: Optional[Sequence[Tuple[float, float]]] = None,
        num_queries: int = 4,
) -> Tuple[torch.Tensor, List[BlockMaps]]:
    """One forward of ``model`` on ``x`` and every block's spatial attention maps.

    ``query_points`` are (y, x) pixel coordinates of ``x`` (default: ``grid_query_points(num_queries)``);
    each block gets the cells of its own input grid that contain them. Returns the model output (the
    same tensor the model gives without this function) and one ``BlockMaps`` per block that ran.
    """
    blocks = attention_modules(model) if blocks is None else list(blocks)
    image_size = (x.shape[-2], x.shape[-1])
    if query_points is None:
        query_points = grid_query_points(num_queries, *image_size)
    for y, x_ in query_points:
        if not (0 <= y < image_size[0] and 0 <= x_ < image_size[1]):
            raise ValueError(f'--query-points: ({y}, {x_}) lies outside the {image_size[0]}x{image_size[1]} input')
    with capture_block_inputs(blocks) as inputs, torch.no_grad():
        output = model(x)
    results = []
    with torch.no_grad():
        for name, block in blocks:
            inp = inputs.get(name)
            if inp is None or inp.dim() != 4:
                continue  # not run in this forward, or not a 2-D feature map
            feature_size = (inp.shape[-2], inp.shape[-1])
            cells = points_to_cells(query_points, image_size, feature_size)
            idx = torch.tensor([r * feature_size[1] + c for r, c in cells], dtype=torch.long, device=inp.device)
            maps = {k: v for k, v in block.attention_maps(inp, idx).items() if v.dim() == 4}
            if maps:
                results.append(BlockMaps(name, type(block).__name__, feature_size, cells, maps))
    return output, results


# ----------------------------------------------------------------------------------------------- metrics

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
    return out.clamp(0.0, _LN2)


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


# ----------------------------------------------------------------------------------------------- pictures

def grid_pixel_size(rows: int, cols: int) -> Tuple[int, int]:
    """(width, height) in pixels of a PNG with ``rows`` x ``cols`` panels."""
    return int(round(cols * CELL_INCHES * DPI)), int(round((rows * CELL_INCHES + HEADER_INCHES) * DPI))


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


def _mark(ax, y: float, x: float, k: int, size: float = 9) -> None:
    color = _QUERY_COLORS[k % len(_QUERY_COLORS)]
    ax.plot([x], [y], marker='o', markersize=size, markerfacecolor=color, markeredgecolor='black', markeredgewidth=1.5)
    ax.annotate(str(k + 1), (x, y), xytext=(6, 6), textcoords='offset points', color=color, fontsize=9,
                fontweight='bold', path_effects=_outline())


def _outline():
    from matplotlib import patheffects
    return [patheffects.withStroke(linewidth=2.5, foreground='black')]


def _layout(block_maps: List[BlockMaps], num_queries: int) -> Tuple[List[List[Dict[str, Any]]], int]:
    """Rows of panel descriptions: one row per query-map (points panel + one panel per query), then the
    single maps (context/spatial) packed into rows of the same width."""
    query_rows, singles = [], []
    for bm in block_maps:
        for key, m in bm.maps.items():
            if key.startswith('query'):
                query_rows.append((bm, key))
            else:
                singles.append((bm, key))
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


def _draw_figure(
        image: np.ndarray, block_maps: List[BlockMaps], batch_index: int, query_points: Sequence[Tuple[float, float]],
        title: str, path: Path,
) -> Tuple[int, int]:
    from matplotlib.figure import Figure
    num_queries = len(query_points)
    rows, cols = _layout(block_maps, num_queries)
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
                bm: BlockMaps = panel['bm']
                m = bm.maps[panel['key']][batch_index, panel['k']]
                up = _upsample(m, image_size)
                # Each map to its own range: near-uniform softmax maps (a Non-local block at init) would
                # otherwise be one flat colour; the title says how far from uniform the map really is.
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
    fig.savefig(path, dpi=DPI)
    return grid_pixel_size(len(rows), cols)


def visualize(
        model: nn.Module,
        images: Sequence[Tuple[str, 'Image.Image']],
        out_dir: Union[str, os.PathLike],
        *,
        num_queries: int = 4,
        query_points: Optional[Sequence[Tuple[float, float]]] = None,
        blocks: Optional[Sequence[str]] = None,
        img_size: Optional[int] = None,
        model_label: str = '',
        progress: bool = True,
) -> List[Path]:
    """Write one PNG per image: each block's attention maps overlaid on the (resized, cropped) input.

    ``query_points``: (y, x) pixel coordinates in the model's input image (after timm's eval transform,
    e.g. 224 x 224); default: ``num_queries`` points on a grid. ``blocks``: module-name globs.
    Returns the written paths.
    """
    from tqdm import tqdm
    if not images:
        raise ValueError('images: need at least one image')
    chosen = select_blocks(model, blocks)
    transform, config = data_transform(model, img_size)
    device = next(model.parameters()).device
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points = None if query_points is None else [(float(y), float(x)) for y, x in query_points]
    written: List[Path] = []
    used_names: Dict[str, int] = {}
    for name, img in tqdm(images, desc='visualize', disable=not progress):
        x = transform(img).unsqueeze(0).to(device)
        pts = points if points is not None else grid_query_points(num_queries, x.shape[-2], x.shape[-1])
        _, block_maps = capture_attention(model, x, blocks=chosen, query_points=pts)
        if not block_maps:
            raise ValueError(f'--blocks: none of {[n for n, _ in chosen]} gives a spatial map '
                             f'(SE and channel gates have none)')
        count = used_names.get(name, 0)
        used_names[name] = count + 1
        path = out / (f'{name}.png' if count == 0 else f'{name}_{count}.png')
        title = f'{model_label}  {name}  ({x.shape[-2]}x{x.shape[-1]} input; each map scaled to its own range)'
        _draw_figure(_to_display(x[0], config), block_maps, 0, pts, title.strip(), path)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------- analysis

_CSV_COLUMNS = (
    'model', 'label', 'block', 'block_type', 'map', 'cosine_distance', 'cosine_distance_std', 'js_divergence',
    'js_divergence_std', 'n_images', 'n_queries', 'feature_size', 'key_size', 'note',
)


def _feature_queries(num_queries: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    cells = points_to_cells(grid_query_points(num_queries, height, width), (height, width), (height, width))
    return torch.tensor(sorted({r * width + c for r, c in cells}), dtype=torch.long, device=device)


class _Accumulator:
    def __init__(self) -> None:
        self.cos: List[float] = []
        self.js: List[float] = []
        self.info: Dict[str, Any] = {}

    def add(self, cos: torch.Tensor, js: torch.Tensor) -> None:
        self.cos += cos.tolist()
        self.js += js.tolist()


def _mean_std(values: List[float]) -> Tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0 or np.isnan(a).all():
        return float('nan'), float('nan')
    return float(np.mean(a)), float(np.std(a))


def _image_loader(
        data_dir: Optional[Union[str, os.PathLike]], transform: Callable, batch_size: int, max_images: Optional[int],
) -> Tuple[Iterable[torch.Tensor], int]:
    """Batches of transformed images from ``data_dir`` (ImageFolder, ImageNet layout or flat) or the samples."""
    if data_dir is None:
        tensors = [transform(img) for _, img in sample_images(list(SAMPLE_IMAGES)[:max_images])]
        batches = [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]
        return batches, len(tensors)
    from timm.data import create_dataset
    if not Path(data_dir).is_dir():
        raise ValueError(f'--data-dir: {str(data_dir)!r} is not a directory')
    dataset = create_dataset('', root=str(data_dir), split='validation', transform=transform)
    if len(dataset) == 0:
        raise ValueError(f'--data-dir: no images found under {str(data_dir)!r}')
    if max_images is not None and len(dataset) > max_images:
        # evenly spaced, so every class of a sorted ImageFolder is represented
        indices = np.linspace(0, len(dataset) - 1, max_images).round().astype(int).tolist()
        dataset = torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    return (images for images, _ in loader), len(dataset)


def analyze_attention(
        loaded: LoadedModel,
        *,
        data_dir: Optional[Union[str, os.PathLike]] = None,
        num_queries: int = 32,
        blocks: Optional[Sequence[str]] = None,
        img_size: Optional[int] = None,
        batch_size: int = 4,
        max_images: Optional[int] = None,
        progress: bool = True,
) -> List[Dict[str, Any]]:
    """GCNet's query-independence measure for every attention block of one model (see the module docstring).

    Returns one row (dict with the CSV columns) per block and map kind: ``'query'`` (Non-local, SAGAN),
    ``'effective'`` and ``'effective_uniform'`` (criss-cross), ``'context'`` (GC / SNL reference, 0).
    """
    from tqdm import tqdm
    model = loaded.model
    chosen = select_blocks(model, blocks)
    transform, _ = data_transform(model, img_size)
    batches, n_images = _image_loader(data_dir, transform, batch_size, max_images)
    device = next(model.parameters()).device
    acc: Dict[Tuple[str, str], _Accumulator] = {}

    def slot(name: str, kind: str, block: nn.Module, **info: Any) -> _Accumulator:
        a = acc.setdefault((name, kind), _Accumulator())
        a.info.update(block_type=type(block).__name__, **info)
        return a

    with tqdm(total=n_images, desc=f'analyze {loaded.label}', disable=not progress) as bar:
        for x in batches:
            x = x.to(device)
            with capture_block_inputs(chosen) as inputs, torch.no_grad():
                model(x)
            with torch.no_grad():
                for name, block in chosen:
                    inp = inputs.get(name)
                    if inp is None or inp.dim() != 4:
                        continue
                    h, w = inp.shape[-2:]
                    feature = f'{h}x{w}'
                    if isinstance(block, _CONTEXT_TYPES):
                        zeros = torch.zeros(inp.shape[0], dtype=torch.float64)
                        slot(name, 'context', block, n_queries=0, feature_size=feature, key_size=feature,
                             note='one context map shared by every query: 0 by construction').add(zeros, zeros)
                        continue
                    if not isinstance(block, _QUERY_TYPES + (CrissCrossAttention,)):
                        continue  # CBAM, BAM, SE: no per-query attention over positions
                    queries = _feature_queries(num_queries, h, w, inp.device)
                    if queries.numel() < 2:  # a 1x1 grid: nothing to compare; say so instead of dropping the block
                        nan = torch.full((inp.shape[0],), float('nan'), dtype=torch.float64)
                        slot(name, 'query', block, n_queries=queries.numel(), feature_size=feature, key_size='',
                             note=f'a {feature} grid has fewer than 2 query positions: use a larger --img-size'
                             ).add(nan, nan)
                        continue
                    if isinstance(block, CrissCrossAttention):
                        eff = criss_cross_effective_maps(block, inp, queries)
                        note = (f'composition of the {block.recurrence} recurrent steps (a full-image map per query)'
                                if block.recurrence > 1 else
                                'single step: maps lie on different crosses; compare with effective_uniform')
                        slot(name, 'effective', block, n_queries=queries.numel(), feature_size=feature,
                             key_size=feature, note=note).add(*mean_pairwise_distances(eff))
                        base = uniform_cross_effective_maps(queries, h, w, block.recurrence)
                        base = base.expand(inp.shape[0], -1, -1, -1)
                        slot(name, 'effective_uniform', block, n_queries=queries.numel(), feature_size=feature,
                             key_size=feature, note='same measure for uniform weights: what the geometry alone gives'
                             ).add(*mean_pairwise_distances(base))
                        continue
                    maps = block.attention_maps(inp, queries)['query']
                    key_size = 'x'.join(str(s) for s in maps.shape[2:])
                    note = ''
                    if isinstance(block, NonLocal) and block.mode not in ('gaussian', 'embedded_gaussian'):
                        note = f'{block.mode} weights are not a softmax: JS on the renormalised maps (NaN if negative)'
                    if maps.shape[2:].numel() == 1:
                        note = ('a single key position (sub-sampled keys of a small grid): every map is [1], '
                                'so 0 says nothing; use a larger --img-size')
                    slot(name, 'query', block, n_queries=queries.numel(), feature_size=feature, key_size=key_size,
                         note=note).add(*mean_pairwise_distances(maps))
            bar.update(x.shape[0])

    rows = []
    for (name, kind), a in acc.items():
        cos, cos_std = _mean_std(a.cos)
        js, js_std = _mean_std(a.js)
        rows.append(dict(
            model=loaded.arch, label=loaded.label, block=name, block_type=a.info['block_type'], map=kind,
            cosine_distance=cos, cosine_distance_std=cos_std, js_divergence=js, js_divergence_std=js_std,
            n_images=len(a.cos), n_queries=a.info['n_queries'], feature_size=a.info['feature_size'],
            key_size=a.info['key_size'], note=a.info['note']))
    return rows


def _collapse_context_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """For the chart: the (all-zero) context rows of a model become one bar per block type."""
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


def _plot_analysis(rows: List[Dict[str, Any]], path: Path, title: str) -> None:
    """Horizontal grouped bars: one group per (block, map), one bar per model label that has it."""
    from matplotlib.figure import Figure
    rows = _collapse_context_rows(rows)
    labels = list(dict.fromkeys(r['label'] for r in rows))
    keys = list(dict.fromkeys((r['block'], r['block_type'], r['map']) for r in rows))
    by_key = {(r['label'], r['block'], r['block_type'], r['map']): r for r in rows}
    colors = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f')
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
               ('js_divergence', 'mean Jensen-Shannon divergence (nats; at most ln 2 = 0.693)', _LN2))
    for ax, (metric, xlabel, xmax) in zip(axes, metrics):
        top = 0.0
        for li, label in enumerate(labels):
            sel = [(yy, row[metric]) for yy, l, row in bars if l == li and math.isfinite(row[metric])]
            if not sel:
                ax.barh([], [], color=colors[li % len(colors)], label=label)
                continue
            ys, vs = zip(*sel)
            hatches = ['//' if row['map'] == 'effective_uniform' else None for yy, l, row in bars
                       if l == li and math.isfinite(row[metric])]
            drawn = ax.barh(ys, vs, height=0.8, color=colors[li % len(colors)], label=label, hatch=hatches,
                            edgecolor='white')
            ax.bar_label(drawn, labels=[f'{v:.3g}' for v in vs], fontsize=7, padding=2)
            top = max((top,) + vs)
        ax.set_xlim(0, min(xmax, top * 1.3) if top > 0 else 0.05 * xmax)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(axis='x', alpha=0.3)
    axes[0].invert_yaxis()  # shared by both panels: first block at the top
    axes[0].set_yticks([t for t, _ in ticks])
    axes[0].set_yticklabels([s for _, s in ticks], fontsize=8)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc='outside lower center', ncols=min(4, len(names)), fontsize=8)
    fig.savefig(path, dpi=DPI)


def write_analysis(
        rows: List[Dict[str, Any]], out_dir: Union[str, os.PathLike], *, config: Optional[Dict[str, Any]] = None,
        stem: str = 'attention_analysis',
) -> Dict[str, Path]:
    """Write ``<stem>.csv``, ``<stem>.json`` (rows + config) and ``<stem>.png`` (bar chart) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f'{stem}.{ext}' for ext in ('csv', 'json', 'png')}
    with open(paths['csv'], 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items()})
    json_rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                 for r in rows]
    with open(paths['json'], 'w') as f:
        json.dump({'config': config or {}, 'rows': json_rows}, f, indent=2)
    n_img = sorted({r['n_images'] for r in rows})
    _plot_analysis(rows, paths['png'], f"Query independence of the attention maps (GCNet Sec. 3.1); "
                                       f"images: {', '.join(map(str, n_img))}")
    return paths


# ----------------------------------------------------------------------------------------------- CLI

def _query_point(text: str) -> Tuple[float, float]:
    try:
        y, x = (float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected y,x (pixels of the model input), got {text!r}') from None
    return y, x


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--pretrained', action='store_true', help='load the published weights of (the first) MODEL')
    parser.add_argument('--checkpoint', default=None, help='weights file (.safetensors, or a torch file read with '
                                                           'weights_only=True) for (the single) MODEL')
    parser.add_argument('--blocks', nargs='+', default=None, metavar='GLOB',
                        help='only the attention blocks whose module name matches (e.g. "layer3.*")')
    parser.add_argument('--img-size', type=int, default=None, help="input size (default: the model's data config)")
    parser.add_argument('--seed', type=int, default=0, help='seed of the random init (default 0)')
    parser.add_argument('--device', default='cpu', help='torch device (default cpu)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def _run(fn: Callable[[], int], prog: str) -> int:
    try:
        return fn()
    except (ValueError, TypeError, PretrainedWeightsError) as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        return 2


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo visualize MODEL [IMAGE ...]``: one PNG of attention maps per image."""
    parser = argparse.ArgumentParser(
        prog='gczoo visualize', description=(
            'PNG grids of what each attention block of MODEL attends to: the query points on the image and each '
            "query's map (Non-local, SAGAN, criss-cross), the context mask (GC, Simplified NL) and the spatial gate "
            "(CBAM, BAM), overlaid on the model's input image. Without IMAGE: scikit-image's sample photos."))
    parser.add_argument('model', metavar='MODEL', help='zoo model name (random init unless --pretrained/--checkpoint), '
                                                      'NAME=CHECKPOINT, local-dir:DIR or hf-hub:ORG/REPO')
    parser.add_argument('images', metavar='IMAGE', nargs='*', help='image files (default: the sample photos)')
    parser.add_argument('--queries', type=int, default=4, help='query points on a grid (default 4)')
    parser.add_argument('--query-points', nargs='+', type=_query_point, default=None, metavar='Y,X',
                        help='query points in pixels of the model input image (overrides --queries)')
    parser.add_argument('--out', default='attention_maps', help='output directory (default ./attention_maps)')
    _add_model_args(parser)
    args = parser.parse_args(argv)

    def run() -> int:
        images = load_images(args.images) if args.images else sample_images()
        loaded = load_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, seed=args.seed,
                            device=args.device)
        paths = visualize(loaded.model, images, args.out, num_queries=args.queries, query_points=args.query_points,
                          blocks=args.blocks, img_size=args.img_size, model_label=loaded.label,
                          progress=not args.no_progress)
        for path in paths:
            print(path)
        return 0

    return _run(run, 'gczoo visualize')


def analyze_main(argv: Optional[List[str]] = None) -> int:
    """``gczoo analyze-attention MODEL [MODEL ...] [--compare MODEL ...]``: CSV, JSON and bar chart."""
    parser = argparse.ArgumentParser(
        prog='gczoo analyze-attention', description=(
            "GCNet's query-independence measure: the mean cosine distance and Jensen-Shannon divergence between "
            'the attention maps of different query positions, per attention block, over a folder of images '
            "(default: scikit-image's sample photos). Non-local and SAGAN: the query maps; criss-cross: the "
            'effective map through its recurrent steps, next to the same measure for uniform weights; GC / '
            'Simplified NL: 0 by construction (reference rows).'))
    parser.add_argument('models', metavar='MODEL', nargs='+',
                        help='zoo model name (random init unless --pretrained/--checkpoint), NAME=CHECKPOINT, '
                             'local-dir:DIR or hf-hub:ORG/REPO')
    parser.add_argument('--compare', nargs='+', default=[], metavar='MODEL',
                        help='more models for the same table and chart, e.g. local-dir:OUT/export')
    parser.add_argument('--data-dir', default=None,
                        help='ImageFolder, ImageNet layout (its val/ split is used) or a flat folder of images')
    parser.add_argument('--max-images', type=int, default=None, help='use at most this many images (evenly spaced)')
    parser.add_argument('--queries', type=int, default=32, help='query positions per block, on a grid (default 32)')
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--out', default='attention_analysis', help='output directory (default ./attention_analysis)')
    _add_model_args(parser)
    args = parser.parse_args(argv)

    def run() -> int:
        specs = list(args.models) + list(args.compare)
        if args.checkpoint is not None and len(args.models) != 1:
            raise ValueError('--checkpoint applies to a single MODEL; use NAME=CHECKPOINT to give several')
        if args.max_images is not None and args.max_images < 1:
            raise ValueError(f'--max-images must be >= 1, got {args.max_images}')
        if args.batch_size < 1:
            raise ValueError(f'--batch-size must be >= 1, got {args.batch_size}')
        if args.data_dir is not None and not Path(args.data_dir).is_dir():
            raise ValueError(f'--data-dir: {args.data_dir!r} is not a directory')
        rows: List[Dict[str, Any]] = []
        for i, spec in enumerate(specs):
            first = i == 0
            loaded = load_model(spec, pretrained=args.pretrained and first, seed=args.seed, device=args.device,
                                checkpoint=args.checkpoint if first else None)
            rows += analyze_attention(loaded, data_dir=args.data_dir, num_queries=args.queries, blocks=args.blocks,
                                      img_size=args.img_size, batch_size=args.batch_size, max_images=args.max_images,
                                      progress=not args.no_progress)
        if not rows:
            raise ValueError('MODEL: none of the selected blocks has query-based or context attention '
                             '(Non-local, SAGAN, criss-cross, GC, Simplified NL)')
        config = dict(models=specs, checkpoint=args.checkpoint, pretrained=args.pretrained, queries=args.queries,
                      data_dir=args.data_dir or 'scikit-image samples: ' + ', '.join(SAMPLE_IMAGES),
                      img_size=args.img_size, seed=args.seed, blocks=args.blocks, max_images=args.max_images)
        paths = write_analysis(rows, args.out, config=config)
        _print_table(rows)
        for path in paths.values():
            print(path)
        return 0

    return _run(run, 'gczoo analyze-attention')


def _print_table(rows: List[Dict[str, Any]]) -> None:
    print(f'{"label":<32} {"block":<14} {"type":<20} {"map":<18} {"cos dist":>9} {"JS":>9} {"imgs":>5} {"K":>4}')
    for r in rows:
        print(f'{r["label"][:32]:<32} {r["block"]:<14} {r["block_type"]:<20} {r["map"]:<18} '
              f'{r["cosine_distance"]:>9.4g} {r["js_divergence"]:>9.4g} {r["n_images"]:>5} {r["n_queries"]:>4}')


if __name__ == '__main__':
    sys.exit(main())
