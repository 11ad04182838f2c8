"""What a run leaves for people and other tools: ``summary.csv``, the curves, ``results.json``, the export.

Every file is written whole (``gczoo.files.atomic_write``) and rewritten from the run's history at
each epoch end, so after a crash and ``--resume`` the files agree with the checkpoint the run went
on from. (timm's ``update_summary`` appends a row per epoch: a resumed run would repeat rows.)
"""
import copy
import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from gczoo.files import atomic_write, atomic_write_text

__all__ = [
    'SUMMARY_COLUMNS', 'EMA_COLUMNS', 'SUMMARY_PLOT', 'EXPORT_DIR', 'RESULTS_FILE', 'write_summary', 'plot_summary',
    'write_results', 'export_best',
]

SUMMARY_COLUMNS = ('epoch', 'train_loss', 'val_loss', 'top1', 'top5', 'lr', 'images_per_s', 'epoch_time')
EMA_COLUMNS = ('ema_val_loss', 'ema_top1', 'ema_top5')
SUMMARY_PLOT = 'summary.png'
EXPORT_DIR = 'export'
RESULTS_FILE = 'results.json'


def write_summary(out_dir: Path, history: Sequence[Mapping[str, Any]]) -> Path:
    """``OUT/summary.csv``: one row per finished epoch (the EMA columns when the run has an EMA)."""
    columns = list(SUMMARY_COLUMNS) + [c for c in EMA_COLUMNS if history and c in history[0]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k) for k in columns})
    return atomic_write_text(out_dir / 'summary.csv', buf.getvalue())


def plot_summary(out_dir: Path, history: Sequence[Mapping[str, Any]]) -> Path:
    """Loss and accuracy curves per epoch as a PNG (matplotlib's Agg canvas: no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [row['epoch'] for row in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r['train_loss'] for r in history], 'o-', label='train loss')
    ax_loss.plot(epochs, [r['val_loss'] for r in history], 's-', label='val loss')
    ax_acc.plot(epochs, [r['top1'] for r in history], 'o-', label='val top-1')
    ax_acc.plot(epochs, [r['top5'] for r in history], 's-', label='val top-5')
    if history and 'ema_top1' in history[0]:
        ax_loss.plot(epochs, [r['ema_val_loss'] for r in history], '^--', label='EMA val loss')
        ax_acc.plot(epochs, [r['ema_top1'] for r in history], '^--', label='EMA val top-1')
    ax_loss.set_xlabel('epoch')
    ax_loss.set_ylabel('loss')
    ax_acc.set_xlabel('epoch')
    ax_acc.set_ylabel('accuracy (%)')
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(out_dir.name)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
    return atomic_write(out_dir / SUMMARY_PLOT, lambda f: f.write(buf.getvalue()))


def write_results(out_dir: Path, results: Mapping[str, Any]) -> Path:
    """``OUT/results.json``."""
    return atomic_write_text(out_dir / RESULTS_FILE, json.dumps(results, indent=2) + '\n')


def _revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    # timm has convert_sync_batchnorm but no way back; the export must load without torch.distributed
    out = module
    if isinstance(module, nn.SyncBatchNorm):
        out = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        out.load_state_dict(module.state_dict())
    for name, child in module.named_children():
        out.add_module(name, _revert_sync_batchnorm(child))
    return out


def export_best(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str, export_dir: Path,
                data_config: Dict[str, Any], class_names: Optional[List[str]]) -> Path:
    """Write ``weights`` (a state dict of ``model``'s architecture) in timm's Hub layout to ``export_dir``.

    The weights go through ``gczoo.models.weights.load_weights`` (keys, shapes, dtypes, finiteness)
    into a CPU copy of ``model``, and ``gczoo.models.hub_folder.save_pretrained`` writes the folder.
    """
    from gczoo.models.hub_folder import save_pretrained
    from gczoo.models.weights import load_weights
    export_model = copy.deepcopy(model).cpu()
    if any(isinstance(m, nn.SyncBatchNorm) for m in export_model.modules()):
        export_model = _revert_sync_batchnorm(export_model)
    load_weights(export_model, weights, what=source)
    export_model.to(memory_format=torch.contiguous_format).eval()
    return save_pretrained(export_model, export_dir, data_config=dict(data_config), label_names=class_names)

