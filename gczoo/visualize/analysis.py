"""GCNet's query-independence analysis of a model's attention blocks over a set of images.

For K query positions on a regular grid of each block's input, the mean pairwise cosine distance and
Jensen-Shannon divergence of their attention maps (``gczoo.visualize.metrics``), averaged over the
images (with the standard deviation over images):

* Non-local / SAGAN: the query rows themselves (probability vectors over the key positions).
* Criss-cross: the *effective* attention through the R recurrent steps, and next to it
  ``effective_uniform``, the same measure for uniform weights on every cross: the learned attention
  is query-independent to the extent that it gets close to *that* figure, not to 0.
* GC block / Simplified Non-local: one map shared by every query, so 0 by construction; reported as
  reference rows.
* CBAM, BAM, SE: no per-query attention over positions; not part of the analysis.

The rows go to ``attention_analysis.csv``/``.json`` and a bar chart (:func:`write_analysis`).
"""
import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from gczoo.layers import ContextBlock, CrissCrossAttention, NonLocal, SelfAttention2d, SimplifiedNonLocal

from .capture import capture_block_inputs, grid_query_points, points_to_cells, select_blocks
from .images import data_transform, image_batches
from .loading import LoadedModel
from .metrics import criss_cross_effective_maps, mean_pairwise_distances, uniform_cross_effective_maps
from gczoo.files import check_output_dir, write_files
from .plots import DPI, analysis_figure

__all__ = ['CSV_COLUMNS', 'analyze_attention', 'write_analysis']

CSV_COLUMNS = (
    'model', 'label', 'block', 'block_type', 'map', 'cosine_distance', 'cosine_distance_std', 'js_divergence',
    'js_divergence_std', 'n_images', 'n_queries', 'feature_size', 'key_size', 'note',
)
_CONTEXT_TYPES = (ContextBlock, SimplifiedNonLocal)
_QUERY_TYPES = (NonLocal, SelfAttention2d)


def _feature_queries(num_queries: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    cells = points_to_cells(grid_query_points(num_queries, height, width), (height, width), (height, width))
    return torch.tensor(sorted({r * width + c for r, c in cells}), dtype=torch.long, device=device)


class _Accumulator:
    """Per-image distances of one (block, map) and the facts its table row reports."""

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


def _measure_block(slot, name: str, block: nn.Module, inp: torch.Tensor, num_queries: int) -> None:
    """Add one batch's distances of one block (input ``inp``) to its accumulator(s)."""
    h, w = inp.shape[-2:]
    feature = f'{h}x{w}'
    if isinstance(block, _CONTEXT_TYPES):
        zeros = torch.zeros(inp.shape[0], dtype=torch.float64)
        slot(name, 'context', block, n_queries=0, feature_size=feature, key_size=feature,
             note='one context map shared by every query: 0 by construction').add(zeros, zeros)
        return
    if not isinstance(block, _QUERY_TYPES + (CrissCrossAttention,)):
        return  # CBAM, BAM, SE: no per-query attention over positions
    queries = _feature_queries(num_queries, h, w, inp.device)
    if queries.numel() < 2:  # a 1x1 grid: nothing to compare; say so instead of dropping the block
        nan = torch.full((inp.shape[0],), float('nan'), dtype=torch.float64)
        slot(name, 'query', block, n_queries=queries.numel(), feature_size=feature, key_size='',
             note=f'a {feature} grid has fewer than 2 query positions: use a larger --img-size').add(nan, nan)
        return
    if isinstance(block, CrissCrossAttention):
        eff = criss_cross_effective_maps(block, inp, queries)
        note = (f'composition of the {block.recurrence} recurrent steps (a full-image map per query)'
                if block.recurrence > 1 else
                'single step: maps lie on different crosses; compare with effective_uniform')
        slot(name, 'effective', block, n_queries=queries.numel(), feature_size=feature, key_size=feature,
             note=note).add(*mean_pairwise_distances(eff))
        base = uniform_cross_effective_maps(queries, h, w, block.recurrence).expand(inp.shape[0], -1, -1, -1)
        slot(name, 'effective_uniform', block, n_queries=queries.numel(), feature_size=feature, key_size=feature,
             note='same measure for uniform weights: what the geometry alone gives').add(*mean_pairwise_distances(base))
        return
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

    ``data_dir``: an image folder (ImageFolder, ImageNet layout -- its val split -- or flat; default:
    scikit-image's sample photos). Returns one row (dict with ``CSV_COLUMNS``) per block and map kind:
    ``'query'`` (Non-local, SAGAN), ``'effective'`` and ``'effective_uniform'`` (criss-cross),
    ``'context'`` (GC / SNL reference, 0).
    """
    from tqdm import tqdm
    model = loaded.model
    chosen = select_blocks(model, blocks)
    transform, _ = data_transform(model, img_size)
    batches, n_images = image_batches(data_dir, transform, batch_size, max_images)
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
                    if inp is not None and inp.dim() == 4:
                        _measure_block(slot, name, block, inp, num_queries)
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


def _csv_text(rows: List[Dict[str, Any]]) -> str:
    text = io.StringIO(newline='')
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items()})
    return text.getvalue()


def _json_text(rows: List[Dict[str, Any]], config: Dict[str, Any]) -> str:
    finite = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    return json.dumps({'config': config, 'rows': finite}, indent=2)


def write_analysis(
        rows: List[Dict[str, Any]], out_dir: Union[str, os.PathLike], *, config: Optional[Dict[str, Any]] = None,
        stem: str = 'attention_analysis',
) -> Dict[str, Path]:
    """Write ``<stem>.csv``, ``<stem>.json`` (rows + config) and ``<stem>.png`` (bar chart) into ``out_dir``:
    all three or, on a failure such as a full disk, none (``gczoo.files.write_files``)."""
    out = check_output_dir(out_dir, 'out_dir')
    paths = {ext: out / f'{stem}.{ext}' for ext in ('csv', 'json', 'png')}
    csv_bytes = _csv_text(rows).encode()
    json_bytes = _json_text(rows, config or {}).encode()
    n_img = sorted({r['n_images'] for r in rows})
    figure = analysis_figure(rows, f"Query independence of the attention maps (GCNet Sec. 3.1); "
                                   f"images: {', '.join(map(str, n_img))}")
    write_files({
        paths['csv']: lambda f: f.write(csv_bytes),
        paths['json']: lambda f: f.write(json_bytes),
        paths['png']: lambda f: figure.savefig(f, format='png', dpi=DPI),
    })
    return paths
