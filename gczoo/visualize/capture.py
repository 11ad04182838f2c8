"""Capturing what each attention block attends to, without changing what the model computes.

A forward *pre*-hook on every chosen attention block keeps a copy of the block's input during one
ordinary forward pass; afterwards each block's ``attention_maps(input, queries)`` recomputes the
attention for the chosen query positions only. The forward itself is untouched (the logits are
bitwise those of a forward without hooks), the hooks are removed on exit, and nothing N x N is built.

Which map each block gives (see ``gczoo.layers``):

* Non-local, SAGAN self-attention: ``'query'``, one softmax row over the key positions per query.
* Criss-cross (CCNet): ``'query'`` (and ``'query_r2'`` ... for the later recurrences), each query's
  weights over its own row and column.
* GC block, Simplified Non-local: ``'context'``, the one softmax pooling mask shared by every query.
* CBAM, BAM: ``'spatial'``, the sigmoid spatial gate. (SE and the channel gates give per-channel
  weights, which have no place on the image.)
"""
import contextlib
import dataclasses
import fnmatch
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from gczoo.layers import attention_modules

__all__ = [
    'BlockMaps', 'select_blocks', 'capture_block_inputs', 'grid_query_points', 'points_to_cells', 'capture_attention',
]

Blocks = Sequence[Tuple[str, nn.Module]]


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
def capture_block_inputs(blocks: Blocks) -> Iterator[Dict[str, torch.Tensor]]:
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
        blocks: Optional[Blocks] = None,
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
