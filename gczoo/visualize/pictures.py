"""``visualize``: one PNG per image of what each attention block of a model attends to.

Each image goes through timm's eval transform for the model, one forward with the blocks' inputs
captured (``gczoo.visualize.capture``), and a grid of the maps over the input
(``gczoo.visualize.plots``). Each PNG is written whole or not at all (``gczoo.files``).
"""
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import torch.nn as nn

from .capture import capture_attention, grid_query_points, select_blocks
from .images import data_transform, to_display
from gczoo.files import check_output_dir, write_files
from .plots import DPI, attention_figure

if TYPE_CHECKING:
    from PIL import Image

__all__ = ['visualize']


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
    """Write one PNG per ``(name, image)``: each block's attention maps overlaid on the (resized, cropped) input.

    ``query_points``: (y, x) pixel coordinates in the model's input image (after timm's eval transform,
    e.g. 224 x 224); default: ``num_queries`` points on a grid. ``blocks``: module-name globs. Images
    with the same name get ``_1``, ``_2`` ... suffixes. Returns the written paths.
    """
    from tqdm import tqdm
    if not images:
        raise ValueError('images: need at least one image')
    chosen = select_blocks(model, blocks)
    transform, config = data_transform(model, img_size)
    device = next(model.parameters()).device
    out = check_output_dir(out_dir, 'out_dir')
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
        figure = attention_figure(to_display(x[0], config), block_maps, pts, title.strip())
        write_files({path: lambda f: figure.savefig(f, format='png', dpi=DPI)})
        written.append(path)
    return written
