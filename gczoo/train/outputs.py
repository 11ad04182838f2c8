"""What a run leaves for people and other tools: ``summary.csv``, the curves, ``results.json``, the export.

Every file is written whole (``gczoo.files.atomic_write``) and rewritten from the run's history at
each epoch end, so after a crash and ``--resume`` the files agree with the checkpoint the run went
on from. (timm's ``update_summary`` appends a row per epoch: a resumed run would repeat rows.)
"""
import copy
import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from gczoo.files import atomic_write, atomic_write_text, staged_folder, umask_mode
from gczoo.models.hub_folder import file_name, save_pretrained
from gczoo.models.weights import load_weights

__all__ = [
    'SUMMARY_COLUMNS', 'EMA_COLUMNS', 'SUMMARY_FILE', 'SUMMARY_PLOT', 'ARGS_FILE', 'EXPORT_DIR', 'RESULTS_FILE',
    'write_summary', 'plot_summary', 'write_args',
    'write_results', 'export_best',
]

# timm's summary.csv columns (update_summary: epoch, train_*, eval_*, lr), then gczoo's timings, then the EMA's
SUMMARY_COLUMNS = ('epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr', 'images_per_s', 'epoch_time')
EMA_COLUMNS = ('ema_eval_loss', 'ema_eval_top1', 'ema_eval_top5')
SUMMARY_FILE = 'summary.csv'
SUMMARY_PLOT = 'curves.png'
ARGS_FILE = 'args.yaml'
EXPORT_DIR = 'export'
RESULTS_FILE = 'results.json'


def write_summary(out_dir: Path, history: Sequence[Mapping[str, Any]]) -> Path:
    """``OUT/summary.csv``: one row per finished epoch, ``epoch`` counted from 0 as timm's ``update_summary``
    writes it (the EMA columns when the run has one)."""
    columns = list(SUMMARY_COLUMNS) + [c for c in EMA_COLUMNS if history and c in history[0]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k) for k in columns})
    return atomic_write_text(out_dir / SUMMARY_FILE, buf.getvalue())


def plot_summary(out_dir: Path, history: Sequence[Mapping[str, Any]]) -> Path:
    """Loss and accuracy curves per epoch as a PNG (matplotlib's Agg canvas: no display needed)."""
    # the train extra, imported where used: gczoo.cli names a missing extra
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [row['epoch'] for row in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r['train_loss'] if r['train_loss'] is not None else math.nan for r in history], 'o-',
                 label='train loss')
    ax_loss.plot(epochs, [r['eval_loss'] for r in history], 's-', label='eval loss')
    ax_acc.plot(epochs, [r['eval_top1'] for r in history], 'o-', label='eval top-1')
    ax_acc.plot(epochs, [r['eval_top5'] for r in history], 's-', label='eval top-5')
    if history and 'ema_eval_top1' in history[0]:
        ax_loss.plot(epochs, [r['ema_eval_loss'] for r in history], '^--', label='EMA eval loss')
        ax_acc.plot(epochs, [r['ema_eval_top1'] for r in history], '^--', label='EMA eval top-1')
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


def _non_finite_paths(value: Any, path: str = '') -> List[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return [path or 'value']
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _non_finite_paths(v, f'{path}.{k}' if path else str(k))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _non_finite_paths(v, f'{path}[{i}]')]
    return []


def write_args(out_dir: Path, text: str) -> Path:
    """``OUT/args.yaml``: every setting of the run (``gczoo train -c OUT/args.yaml`` runs it again)."""
    return atomic_write_text(out_dir / ARGS_FILE, text)


def write_results(out_dir: Path, results: Mapping[str, Any]) -> Path:
    """``OUT/results.json``; refuses NaN/inf (strict JSON has none, and a card or leaderboard built from
    a NaN top-1 would be a lie): ``ValueError`` naming the entries."""
    bad = _non_finite_paths(results)
    if bad:
        raise ValueError(f'{out_dir / RESULTS_FILE}: not written, these metrics are not finite numbers: '
                         f'{", ".join(bad[:8])}; the run did not produce a usable model')
    return atomic_write_text(out_dir / RESULTS_FILE, json.dumps(results, indent=2, allow_nan=False) + '\n')


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
                data_config: Dict[str, Any], class_names: Optional[List[str]],
                metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``weights`` (a state dict of ``model``'s architecture) in timm's Hub layout to ``export_dir``,
    all at once: into a temporary sibling folder first, renamed into place when complete. A reader or a
    crash sees the old export or the new one, never a half-written folder; a killed run leaves
    ``.export.<random>.tmp``, which the next run on the folder removes.

    The weights go through ``gczoo.models.weights.load_weights`` (keys, shapes, dtypes, finiteness)
    into a CPU copy of ``model``; ``gczoo.models.hub_folder.save_pretrained`` writes the files, with
    ``metadata`` (``gczoo.models.hub_folder.export_metadata``: where the weights come from) describing them
    in ``config.json``.
    """
    export_model = copy.deepcopy(model).cpu()
    if any(isinstance(m, nn.SyncBatchNorm) for m in export_model.modules()):
        export_model = _revert_sync_batchnorm(export_model)
    load_weights(export_model, weights, what=source)
    export_model.to(memory_format=torch.contiguous_format).eval()

    export_dir = Path(export_dir)
    # an earlier export (a resumed run finishing again) is swapped out whole (gczoo.files.staged_folder)
    with staged_folder(export_dir) as tmp:
        save_pretrained(export_model, tmp, data_config=dict(data_config), label_names=class_names,
                        **dict(metadata or {'origin': f'weights from {file_name(source)}'}))
        for path in tmp.iterdir():
            os.chmod(path, umask_mode())  # safetensors writes its files 0600 whatever the umask
    return export_dir
