"""Speed and memory benchmarks: ``gczoo bench layers`` and ``gczoo bench models``.

* ``layers``: every attention block against a naive seed-style version and timm's counterpart, time
  and peak extra memory, forward or (``--backward``) the training step (``gczoo.bench.layers``).
* ``models``: zoo models' inference, training-step and ``torch.compile``'d time as ratios to timm's
  ResNets and attention models, next to GMAC ratios from ``gczoo.complexity`` (``gczoo.bench.models``).

How: ``timing`` (interleaved rounds, paired ratios, an A/A control for the noise floor), ``memory``
(peak extra memory; on the CPU measured in one fresh interpreter, documented there), ``report``
(tables, CSV/JSON), ``cli`` (flags). The naive baselines live in the private ``_naive`` module:
they exist to be measured against, not to be used.
"""
from .cli import build_parser, main
from .layers import LAYER_BLOCKS, TIMM_COUNTERPARTS, LayerCase, bench_layers, build_layer_impls, format_layer_table
from .memory import MEMORY_MODES, peak_extra_memory
from .models import MODEL_MODES, bench_models, format_model_table, nearest_timm_model
from .timing import CLOCKS

__all__ = [
    'LAYER_BLOCKS', 'TIMM_COUNTERPARTS', 'CLOCKS', 'MEMORY_MODES', 'MODEL_MODES', 'LayerCase', 'build_layer_impls',
    'bench_layers', 'bench_models', 'nearest_timm_model', 'peak_extra_memory', 'format_layer_table',
    'format_model_table', 'build_parser', 'main',
]
