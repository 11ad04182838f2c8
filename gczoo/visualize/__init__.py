"""What the attention blocks attend to: attention-map PNGs and GCNet's query-independence analysis.

GCNet (Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
arXiv:1904.11492, Sec. 3.1) observed that the attention maps a Non-local block computes for different
query positions are almost the same, and measured it as the average distance between the maps of
different queries. This package makes both the pictures and the measurement for any gczoo model:

* ``images``   -- the inputs: scikit-image's sample photos, image files, image folders; timm's eval transform.
* ``loading``  -- the model: a name, ``NAME=CHECKPOINT``, ``local-dir:``/``hf-hub:``, through gczoo's one loading path.
* ``capture``  -- forward pre-hooks keep each block's input; ``attention_maps`` recomputes its maps.
* ``metrics``  -- the query-independence measure (cosine distance, Jensen-Shannon divergence).
* ``analysis`` -- the measure over a set of images, per block, and its CSV/JSON/PNG.
* ``plots``    -- the figures (map grid, bar chart); ``pictures`` -- one PNG per image.
* ``cli`` -- ``gczoo visualize`` and ``gczoo analyze-attention`` (files written with ``gczoo.files``).
"""
from .analysis import CSV_COLUMNS, analyze_attention, write_analysis
from .capture import (
    BlockMaps, capture_attention, capture_block_inputs, grid_query_points, points_to_cells, select_blocks,
)
from .cli import analyze_main, main
from .images import SAMPLE_IMAGES, data_transform, find_image_files, load_images, read_image, sample_images
from .loading import LoadedModel, load_model, parse_model_spec
from .metrics import (
    criss_cross_effective_maps, mean_pairwise_distances, pairwise_cosine_distance, pairwise_js_divergence,
    uniform_cross_effective_maps,
)
from .pictures import visualize
from .plots import CELL_INCHES, DPI, HEADER_INCHES, analysis_figure, attention_figure, grid_pixel_size

__all__ = [
    'SAMPLE_IMAGES', 'CELL_INCHES', 'HEADER_INCHES', 'DPI', 'CSV_COLUMNS', 'BlockMaps', 'LoadedModel', 'sample_images',
    'read_image', 'load_images', 'find_image_files', 'load_model', 'parse_model_spec', 'data_transform',
    'select_blocks', 'grid_query_points', 'points_to_cells', 'capture_block_inputs', 'capture_attention',
    'pairwise_cosine_distance', 'pairwise_js_divergence', 'mean_pairwise_distances', 'criss_cross_effective_maps',
    'uniform_cross_effective_maps', 'grid_pixel_size', 'attention_figure', 'analysis_figure', 'visualize',
    'analyze_attention', 'write_analysis', 'main', 'analyze_main',
]
