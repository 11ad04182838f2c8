"""Classification accuracy: ``validate()`` (top-1/top-5 over a loader, correct across ranks) and the
``gczoo eval`` command (timm validate.py's flags) on an ImageNet-layout or ImageFolder dataset.

* ``metrics``: ``validate`` (torchmetrics; also what training validates with);
* ``folders``: which folder, which class is which output (timm's ImageNet order for WordNet-id
  folders), a dataset that skips unreadable images and counts them;
* ``model``: the model to evaluate, its weights through ``gczoo.models.weights``;
* ``command``: the flags, one or many models, the results files.
"""
from .command import CSV_COLUMNS, build_parser, evaluate, main, model_runs, results_to_csv
from .folders import (
    BadImageError, ClassMapping, EvalImageFolder, SkippingLoader, collate_skipping, decode_image, find_eval_folder,
    read_class_map, resolve_class_mapping, scan_image_folder,
)
from .metrics import validate
from .model import create_eval_model

__all__ = [
    'validate', 'CSV_COLUMNS', 'BadImageError', 'ClassMapping', 'EvalImageFolder', 'SkippingLoader',
    'collate_skipping', 'decode_image', 'find_eval_folder', 'read_class_map', 'resolve_class_mapping',
    'scan_image_folder', 'create_eval_model', 'build_parser', 'evaluate', 'main', 'model_runs', 'results_to_csv',
]
