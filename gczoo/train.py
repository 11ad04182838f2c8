"""Train or fine-tune a gczoo (or any timm) model: one CPU process, 8 GPUs, or several nodes.

    python -m gczoo.train                    # quick start: handwritten digits, resnet18_gc, CPU, minutes
    python -m gczoo.train --data-dir /data/imagenet --model resnet50_gc \\
        --pretrained-backbone resnet50.a1_in1k --attn-lr-scale 10 --amp bf16
    scripts/train.sh --nproc-per-node 8 --data-dir /data/imagenet ...   # torchrun, DDP

The flags are timm train.py's where one exists. The run is built from timm's parts
(``create_dataset``, ``resolve_data_config``/``create_transform``, ``Mixup``, ``create_optimizer_v2``,
``create_scheduler_v2``, ``ModelEmaV3``, its losses) and torch DDP (``DistributedSampler`` for
training, ``gczoo.distributed.ShardSampler`` + ``gczoo.evaluate.validate`` for validation).

What this module adds is the bookkeeping that makes a run reproducible and crash-proof:

* the data order of an epoch is a function of ``(seed, epoch)`` (``DistributedSampler``) and the
  augmentation of a sample a function of ``(seed, epoch, index)`` (``gczoo.data.SeededTransformDataset``);
* checkpoints (``last.pth.tar``, ``best.pth.tar``) are written atomically (temp file in the same
  folder, fsync, ``os.replace``) at every epoch end and every ``--checkpoint-interval`` updates, with
  model, optimizer, scheduler, EMA, grad scaler, epoch/step, every rank's RNG states, the sampler
  position, the epoch's running loss, the metric history and the args -- all as plain tensors,
  numbers and strings, so ``torch.load(weights_only=True)`` reads them;
* ``--resume PATH|auto`` continues exactly where the checkpoint was taken, mid-epoch included: on CPU
  a run killed with ``kill -9`` and resumed ends with the same weights and metrics, bit for bit, as
  one that was never interrupted (same world size; deterministic kernels);
* under torchrun with ``--max-restarts``, a restarted attempt resumes from ``last.pth.tar`` by itself.

Rank 0 writes ``summary.csv``, ``summary.png`` (loss and accuracy curves), ``results.json`` and,
at the end, the best model in timm's Hub layout under ``export/`` (``timm.create_model(
'local-dir:OUT/export', pretrained=True)`` loads it).
"""
import argparse
import contextlib
import csv
import dataclasses
import difflib
import functools
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    'CHECKPOINT_FORMAT', 'LAST_CHECKPOINT', 'BEST_CHECKPOINT', 'EXPORT_DIR', 'SUMMARY_COLUMNS', 'FAULT_EXIT_CODE',
    'Trainer', 'build_parser', 'parse_args', 'main', 'train', 'atomic_save', 'load_training_checkpoint',
    'attention_param_groups',
]

CHECKPOINT_FORMAT = 'gczoo.train/1'
LAST_CHECKPOINT = 'last.pth.tar'
BEST_CHECKPOINT = 'best.pth.tar'
EXPORT_DIR = 'export'
SUMMARY_COLUMNS = ('epoch', 'train_loss', 'val_loss', 'top1', 'top5', 'lr', 'images_per_s', 'epoch_time')
EMA_COLUMNS = ('ema_val_loss', 'ema_top1', 'ema_top5')
FAULT_EXIT_CODE = 75  # exit status of --fail-at-step (a simulated crash)
DEBUG_ENV = 'GCZOO_DEBUG'  # set to 1 to get tracebacks for user errors too

# Flags whose default depends on the data: timm train.py's for your own data (``--data-dir``), and a
# recipe for the embedded digits set that reaches >= 90% top-1 on 2 CPU cores in a few minutes.
TIMM_DEFAULTS: Dict[str, Any] = dict(
    model='resnet50_gc', img_size=None, epochs=300, batch_size=128, opt='sgd', lr=None, weight_decay=2e-5,
    warmup_epochs=5, smoothing=0.1, hflip=0.5, scale=(0.08, 1.0), color_jitter=0.4, crop_pct=None,
    train_interpolation='random', workers=4, threads=None,
)
DIGITS_DEFAULTS: Dict[str, Any] = dict(
    model='resnet18_gc', img_size=32, epochs=8, batch_size=64, opt='adamw', lr=2e-3, weight_decay=0.05,
    warmup_epochs=0, smoothing=0.1, hflip=0.0, scale=(0.6, 1.0), color_jitter=0.0, crop_pct=1.0,
    train_interpolation='bilinear', workers=0, threads=1,
)


def _default_help(key: str, fmt: Callable[[Any], str] = str) -> str:
    def show(v: Any) -> str:
        if v is None:
            return 'from the model'
        return ' '.join(str(x) for x in v) if isinstance(v, tuple) else fmt(v)
    timm_v, digits_v = TIMM_DEFAULTS[key], DIGITS_DEFAULTS[key]
    if timm_v == digits_v:
        return f'default: {show(timm_v)}'
    return f'default: {show(timm_v)}; {show(digits_v)} on the embedded digits set'


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults (except the data-dependent ones, whose help says both) and keep the epilog's layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ''
        if (action.default in (None, '', argparse.SUPPRESS) or 'default:' in help_text
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return help_text
        if isinstance(action.default, (list, tuple)):
            shown = ' '.join(f'{v:.4g}' if isinstance(v, float) else str(v) for v in action.default)
            return f'{help_text} (default: {shown})'
        return super()._get_help_string(action)


_EPILOG = """\
outputs (OUT = --output/--experiment):
  OUT/last.pth.tar, OUT/best.pth.tar   training checkpoints (atomic; torch.load(weights_only=True) reads them)
  OUT/summary.csv, OUT/summary.png     per-epoch losses, top-1/top-5, lr, images/s, epoch time; curves
  OUT/results.json                     best and final metrics
  OUT/export/                          best model in timm's Hub layout:
                                       timm.create_model('local-dir:OUT/export', pretrained=True)

resuming: --resume auto (or OUT/last.pth.tar) continues exactly, mid-epoch included; a torchrun restart
(--max-restarts) resumes from OUT/last.pth.tar by itself (pass --experiment so every attempt uses the
same OUT, or let gczoo derive it from torchrun's run id). Calling torchrun yourself with --max-restarts, set
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 as scripts/train.sh does (pytorch/pytorch#135712: otherwise a restarted
worker group can read the dead group's addresses).
user errors (bad data, flags or checkpoints) print one line and exit with status 2; set GCZOO_DEBUG=1
for a traceback.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m gczoo.train`` / ``gczoo train`` / ``scripts/train.sh``."""
    p = argparse.ArgumentParser(
        prog='python -m gczoo.train', description=__doc__.split('\n\n')[0] + (
            ' With no --data-dir it trains resnet18_gc on scikit-learn\'s handwritten digits (written once as an '
            'ImageFolder tree under $GCZOO_DATA_HOME, default ~/.cache/gczoo; nothing is downloaded).'),
        formatter_class=_Formatter, epilog=_EPILOG)

    g = p.add_argument_group('data')
    g.add_argument('--data-dir', '--data', dest='data_dir', metavar='DIR', default=None,
                   help='dataset root; ImageNet/ImageFolder layout DIR/<split>/<class>/<image> '
                        '(default: the embedded handwritten digits)')
    g.add_argument('--dataset', default='', metavar='NAME',
                   help="'' (default) for a folder dataset, 'digits' for the embedded one, or any name timm's "
                        "create_dataset knows (e.g. torch/cifar10; map-style datasets only)")
    g.add_argument('--train-split', default='train', metavar='NAME', help='training split (sub-folder)')
    g.add_argument('--val-split', default='validation', metavar='NAME',
                   help='validation split (sub-folder; val/valid/validation/eval are all found)')
    g.add_argument('--dataset-download', action='store_true', help='let torch/* datasets download themselves')
    g.add_argument('-j', '--workers', type=int, default=None, metavar='N',
                   help='data loading worker processes per rank (' + _default_help('workers') + ')')
    g.add_argument('--pin-mem', action='store_true', help='pin host memory in the loaders (faster copies to GPU)')

    g = p.add_argument_group('model')
    g.add_argument('--model', default=None, metavar='NAME',
                   help='any timm model name; gczoo registers its zoo (' + _default_help('model') + ')')
    g.add_argument('--pretrained', action='store_true',
                   help="start from the model's pretrained weights (timm's pretrained=True)")
    g.add_argument('--pretrained-backbone', default=None, metavar='SOURCE',
                   help='gczoo models: transplant an ImageNet ResNet (timm name with tag, e.g. resnet50.a1_in1k, '
                        'or a .safetensors/.pth file) into the backbone; attention blocks start at identity')
    g.add_argument('--initial-checkpoint', default=None, metavar='PATH',
                   help='start from these weights (safetensors or a torch file read with weights_only=True); '
                        'a classifier of another size is left at init')
    g.add_argument('--resume', default=None, metavar='PATH|auto',
                   help="continue a run from a training checkpoint exactly; 'auto' = OUT/last.pth.tar if it exists")
    g.add_argument('--num-classes', type=int, default=None, metavar='N',
                   help='classes of the classifier; must match the class count of the data (default: from the data)')
    g.add_argument('--img-size', type=int, default=None, metavar='PX',
                   help='input image size (' + _default_help('img_size') + ')')
    g.add_argument('--crop-pct', type=float, default=None, metavar='PCT',
                   help='validation center-crop fraction (' + _default_help('crop_pct') + ')')
    g.add_argument('--mean', type=float, nargs=3, default=None, metavar='M', help='normalization mean (default: model)')
    g.add_argument('--std', type=float, nargs=3, default=None, metavar='S', help='normalization std (default: model)')
    g.add_argument('--interpolation', default='', metavar='NAME',
                   help='validation resize interpolation (default: model)')
    g.add_argument('--drop', type=float, default=0.0, metavar='P', help='dropout before the classifier')
    g.add_argument('--drop-path', type=float, default=None, metavar='P', help='stochastic depth rate (default: model)')
    g.add_argument('--attn-lr-scale', type=float, default=1.0, metavar='S',
                   help='learning rate of the attention blocks (gczoo.models.attention_modules) = lr x S; '
                        'e.g. 10 when fine-tuning a transplanted backbone (--pretrained-backbone)')
    g.add_argument('--freeze-bn-stats', action='store_true',
                   help='BatchNorm layers use (and keep) their running statistics during training, their affine '
                        'weights still train: results no longer depend on how the global batch is split across '
                        'ranks; usual for fine-tuning with small per-GPU batches')

    g = p.add_argument_group('batch, precision and speed')
    g.add_argument('-b', '--batch-size', type=int, default=None, metavar='N',
                   help='batch size per process (' + _default_help('batch_size') + ')')
    g.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                   help='validation batch size per process (default: --batch-size)')
    g.add_argument('--grad-accum-steps', type=int, default=1, metavar='N',
                   help='micro-batches per optimizer update (DDP syncs gradients only on the last one)')
    g.add_argument('--amp', nargs='?', const='bf16', default='none',
                   choices=('bf16', 'bfloat16', 'fp16', 'float16', 'none'),
                   help='mixed precision autocast on the device (--amp alone = bf16); fp16 on CUDA uses a GradScaler')
    g.add_argument('--channels-last', action='store_true', help='channels-last memory layout for model and inputs')
    g.add_argument('--compile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                   help='torch.compile the training model (--compile alone = inductor)')
    g.add_argument('--sync-bn', action='store_true',
                   help='convert BatchNorm to SyncBatchNorm (CUDA multi-process runs; torch has no CPU SyncBatchNorm: '
                        'an error on CPU with several processes, a no-op with one)')
    g.add_argument('--device', default=None, metavar='DEV',
                   help="'cpu', 'cuda' (one GPU per local rank) or None: CUDA when available")
    g.add_argument('--threads', type=int, default=None, metavar='N',
                   help='CPU threads per process (torch.set_num_threads) (default: torch\'s, one per core, or '
                        '$OMP_NUM_THREADS; 1 on the embedded digits set unless $OMP_NUM_THREADS is set: on a '
                        'shared 2-core machine, OpenMP threads spin-waiting on each other made 2 threads 2-17x '
                        'slower than 1 for that small model)')
    g.add_argument('--deterministic', action='store_true',
                   help='torch.use_deterministic_algorithms and deterministic cuDNN (CPU runs are already)')

    g = p.add_argument_group('optimizer')
    g.add_argument('--opt', default=None, metavar='NAME',
                   help="any timm optimizer: sgd, momentum, adamw, lamb, ... (" + _default_help('opt') + ')')
    g.add_argument('--opt-eps', type=float, default=None, metavar='EPS', help='optimizer epsilon (default: optimizer)')
    g.add_argument('--opt-betas', type=float, nargs='+', default=None, metavar='B',
                   help='optimizer betas (default: optimizer)')
    g.add_argument('--momentum', type=float, default=0.9, metavar='M', help='momentum (SGD-like optimizers)')
    g.add_argument('--weight-decay', type=float, default=None, metavar='WD',
                   help='weight decay; biases and norm weights get none (' + _default_help('weight_decay') + ')')
    g.add_argument('--clip-grad', type=float, default=None, metavar='NORM', help='clip gradients (default: off)')
    g.add_argument('--clip-mode', default='norm', choices=('norm', 'value', 'agc'), help='gradient clipping mode')

    g = p.add_argument_group('learning rate schedule')
    g.add_argument('--sched', default='cosine', metavar='NAME',
                   help='cosine, tanh, step, multistep, plateau, poly, wsd, rsqrt, constant or none (timm schedulers)')
    g.add_argument('--sched-on-updates', action='store_true', help='step the schedule every update, not every epoch')
    g.add_argument('--lr', type=float, default=None, metavar='LR',
                   help='learning rate (' + _default_help('lr', fmt=lambda v: f'{v:g}').replace(
                       'from the model', 'lr-base x global batch / lr-base-size') + ')')
    g.add_argument('--lr-base', type=float, default=0.1, metavar='LR',
                   help='base lr for --lr-base-size images (used when --lr is unset)')
    g.add_argument('--lr-base-size', type=int, default=256, metavar='N', help='global batch size of --lr-base')
    g.add_argument('--lr-base-scale', default='', choices=('', 'linear', 'sqrt'),
                   help="how lr scales with the global batch (default '': sqrt for adam-like optimizers, else linear)")
    g.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR', help='lr at the start of warmup')
    g.add_argument('--min-lr', type=float, default=0.0, metavar='LR', help='lower bound of cyclic schedules')
    g.add_argument('--epochs', type=int, default=None, metavar='N',
                   help='epochs to train (' + _default_help('epochs') + ')')
    g.add_argument('--warmup-epochs', type=int, default=None, metavar='N',
                   help='epochs of linear warmup (' + _default_help('warmup_epochs') + ')')
    g.add_argument('--warmup-prefix', action='store_true',
                   help='warmup epochs come before --epochs instead of within them')
    g.add_argument('--cooldown-epochs', type=int, default=0, metavar='N', help='epochs at min-lr after the schedule')
    g.add_argument('--decay-epochs', type=float, default=90, metavar='N', help='step schedule: epochs between decays')
    g.add_argument('--decay-milestones', type=int, nargs='+', default=[90, 180, 270], metavar='E',
                   help='multistep schedule: epochs to decay at')
    g.add_argument('--decay-rate', type=float, default=0.1, metavar='R', help='step/multistep/plateau decay factor')
    g.add_argument('--patience-epochs', type=int, default=10, metavar='N', help='plateau schedule patience')

    g = p.add_argument_group('augmentation and regularization')
    g.add_argument('--no-aug', action='store_true', help='no training augmentation (resize + center crop only)')
    g.add_argument('--scale', type=float, nargs=2, default=None, metavar=('MIN', 'MAX'),
                   help='random-resized-crop area range (' + _default_help('scale') + ')')
    g.add_argument('--ratio', type=float, nargs=2, default=(3. / 4., 4. / 3.), metavar=('MIN', 'MAX'),
                   help='random-resized-crop aspect ratio range')
    g.add_argument('--hflip', type=float, default=None, metavar='P',
                   help='horizontal flip probability (' + _default_help('hflip') + ')')
    g.add_argument('--vflip', type=float, default=0.0, metavar='P', help='vertical flip probability')
    g.add_argument('--color-jitter', type=float, default=None, metavar='F',
                   help='color jitter strength (' + _default_help('color_jitter') + ')')
    g.add_argument('--aa', default=None, metavar='POLICY',
                   help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 or original (default: off)")
    g.add_argument('--train-interpolation', default=None, metavar='NAME',
                   help='training resize interpolation (' + _default_help('train_interpolation') + ')')
    g.add_argument('--reprob', type=float, default=0.0, metavar='P', help='random erasing probability')
    g.add_argument('--remode', default='pixel', metavar='MODE', help='random erasing mode')
    g.add_argument('--recount', type=int, default=1, metavar='N', help='random erasing count')
    g.add_argument('--mixup', type=float, default=0.0, metavar='ALPHA', help='mixup alpha (on if > 0)')
    g.add_argument('--cutmix', type=float, default=0.0, metavar='ALPHA', help='cutmix alpha (on if > 0)')
    g.add_argument('--cutmix-minmax', type=float, nargs=2, default=None, metavar=('MIN', 'MAX'),
                   help='cutmix box ratio range (overrides --cutmix alpha)')
    g.add_argument('--mixup-prob', type=float, default=1.0, metavar='P', help='probability of mixup/cutmix per batch')
    g.add_argument('--mixup-switch-prob', type=float, default=0.5, metavar='P',
                   help='probability of cutmix instead of mixup when both are on')
    g.add_argument('--mixup-mode', default='batch', choices=('batch', 'pair', 'elem'),
                   help='draw mixup/cutmix parameters per batch, per pair of samples or per sample')
    g.add_argument('--mixup-off-epoch', type=int, default=0, metavar='E',
                   help='turn mixup/cutmix off from this epoch (0: never)')
    g.add_argument('--smoothing', type=float, default=None, metavar='EPS',
                   help='label smoothing (' + _default_help('smoothing') + ')')

    g = p.add_argument_group('model EMA')
    g.add_argument('--model-ema', action='store_true',
                   help='keep an exponential moving average of the weights (timm ModelEmaV3); validated each epoch, '
                        'and it is what best.pth.tar/export hold')
    g.add_argument('--model-ema-decay', type=float, default=0.9998, metavar='D',
                   help='EMA decay per update (weight of the old average)')
    g.add_argument('--model-ema-warmup', action='store_true', help='EMA decay warmup')
    g.add_argument('--model-ema-force-cpu', action='store_true', help='keep the EMA on the CPU')

    g = p.add_argument_group('run, output and checkpoints')
    g.add_argument('--seed', type=int, default=42, metavar='S', help='seed of init, data order and augmentation')
    g.add_argument('--output', default='output/train', metavar='DIR', help='parent folder of the run folder OUT')
    g.add_argument('--experiment', default=None, metavar='NAME',
                   help='run folder name: OUT = --output/NAME (default: <timestamp>-<model>-<img-size>)')
    g.add_argument('--eval-metric', default='top1', choices=('top1', 'top5', 'loss'),
                   help='metric choosing best.pth.tar')
    g.add_argument('--checkpoint-interval', type=int, default=0, metavar='N',
                   help='also write last.pth.tar every N optimizer updates (0: at epoch ends only)')
    g.add_argument('--log-interval', type=int, default=50, metavar='N', help='print a progress line every N updates')
    g.add_argument('--no-progress', action='store_true', help='no tqdm progress bars')
    g.add_argument('--no-export', action='store_true', help='do not write OUT/export at the end')
    g.add_argument('--fail-at-step', type=int, default=None, metavar='N',
                   help='testing: exit abruptly (status %d) after update N, only on the first attempt '
                        '(TORCHELASTIC_RESTART_COUNT 0 or unset), to exercise --resume and torchrun restarts'
                        % FAULT_EXIT_CODE)
    g.add_argument('--fail-rank', type=int, default=-1, metavar='R',
                   help='testing: the rank that --fail-at-step stops (-1: the last rank)')
    return p


def _uses_embedded_digits(args: argparse.Namespace) -> bool:
    return args.data_dir is None and args.dataset in ('', 'digits')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` and fill the data-dependent defaults (timm's, or the digits recipe)."""
    args = build_parser().parse_args(argv)
    recipe = DIGITS_DEFAULTS if _uses_embedded_digits(args) else TIMM_DEFAULTS
    for key, value in recipe.items():
        if key == 'threads' and os.environ.get('OMP_NUM_THREADS'):
            continue  # an explicit OMP_NUM_THREADS wins over the recipe
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.amp = {'bfloat16': 'bf16', 'float16': 'fp16'}.get(args.amp, args.amp)
    _check_args(args)
    return args


def _check_args(args: argparse.Namespace) -> None:
    positive = {'--threads': args.threads or 1, '--batch-size': args.batch_size, '--epochs': args.epochs, '--grad-accum-steps': args.grad_accum_steps,
                '--log-interval': args.log_interval}
    if args.validation_batch_size is not None:
        positive['--validation-batch-size'] = args.validation_batch_size
    if args.img_size is not None:
        positive['--img-size'] = args.img_size
    if args.num_classes is not None:
        positive['--num-classes'] = args.num_classes
    for flag, value in positive.items():
        if value < 1:
            raise ValueError(f'{flag} must be >= 1, got {value}')
    for flag, value in {'--workers': args.workers, '--checkpoint-interval': args.checkpoint_interval,
                        '--warmup-epochs': args.warmup_epochs}.items():
        if value < 0:
            raise ValueError(f'{flag} must be >= 0, got {value}')
    if not args.attn_lr_scale > 0:
        raise ValueError(f'--attn-lr-scale must be > 0, got {args.attn_lr_scale}')
    if args.pretrained and args.pretrained_backbone:
        raise ValueError('pass either --pretrained or --pretrained-backbone, not both')
    if _mixup_active(args) and args.batch_size % 2:
        raise ValueError(f'--mixup/--cutmix pair samples within a batch: --batch-size must be even, '
                         f'got {args.batch_size}')
    if args.fail_at_step is not None and args.fail_at_step < 1:
        raise ValueError(f'--fail-at-step must be >= 1, got {args.fail_at_step}')


def _mixup_active(args: argparse.Namespace) -> bool:
    return args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None


# ---------------------------------------------------------------------------------------------
# files: atomic writes, checkpoints, summary
# ---------------------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened/fsynced
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=str(path.parent))
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``: a reader (or
    a crash at any moment) sees the old file or the new one, never a half-written one."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def load_training_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by ``gczoo.train`` with ``torch.load(weights_only=True)``.

    Raises ``CheckpointError`` for a missing, truncated/corrupt or foreign file.
    """
    from gczoo.models import CheckpointError
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {str(path)!r} does not exist')
    if path.suffix == '.safetensors':
        raise CheckpointError(
            f'{str(path)!r} is a safetensors weights file, not a gczoo training checkpoint (no {CHECKPOINT_FORMAT!r} '
            f'training state); to start from its weights use --initial-checkpoint instead of --resume')
    try:
        ckpt = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as e:  # zip/unpickling errors of all kinds mean the same thing here
        raise CheckpointError(
            f'checkpoint {str(path)!r} could not be read with torch.load(weights_only=True) '
            f'(truncated or corrupt?): {type(e).__name__}: {e}') from e
    if not isinstance(ckpt, Mapping) or ckpt.get('format') != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f'{str(path)!r} is not a gczoo training checkpoint (no {CHECKPOINT_FORMAT!r} training state); '
            f'to start from its weights use --initial-checkpoint instead of --resume')
    return dict(ckpt)


def _plain(value: Any) -> Any:
    """``value`` as the plain types ``torch.load(weights_only=True)`` accepts."""
    if value is None or isinstance(value, (bool, torch.Tensor)):
        return value
    for plain_type in (int, float, str):  # also turns subclasses (torch's TorchVersion, IntEnum) into the base type
        if isinstance(value, plain_type):
            return plain_type(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        # int keys stay ints: the optimizer's state is keyed by parameter index
        return {(k if type(k) in (int, str) else str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return str(value)


def _capture_rng() -> Dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        'python_version': int(version), 'python_state': torch.tensor(mt_state, dtype=torch.int64),
        'python_gauss': gauss,
        'numpy_name': str(np_name), 'numpy_keys': torch.from_numpy(np_keys.astype(np.int64)),
        'numpy_pos': int(np_pos), 'numpy_has_gauss': int(np_has_gauss), 'numpy_gauss': float(np_gauss),
        'torch': torch.get_rng_state(),
        'cuda': (list(torch.cuda.get_rng_state_all())
                 if torch.cuda.is_available() and torch.cuda.is_initialized() else []),
    }
    return state


def _restore_rng(state: Mapping[str, Any]) -> None:
    random.setstate((state['python_version'], tuple(int(x) for x in state['python_state'].tolist()),
                     state['python_gauss']))
    np.random.set_state((state['numpy_name'], state['numpy_keys'].numpy().astype(np.uint32), state['numpy_pos'],
                         state['numpy_has_gauss'], state['numpy_gauss']))
    torch.set_rng_state(state['torch'])
    if state.get('cuda') and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _load_model_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, hint: str = '') -> None:
    from gczoo.models import CheckpointError, unwrap_state_dict
    from gczoo.models.weights import compare_state_dicts
    state_dict = unwrap_state_dict(dict(state_dict), source=source)
    mismatch = compare_state_dicts(model.state_dict(), state_dict)
    if mismatch:
        raise CheckpointError(f'{source} does not fit {type(model).__name__} {hint}: {mismatch}')
    model.load_state_dict(state_dict)


def _write_summary(out_dir: Path, history: List[Dict[str, Any]]) -> None:
    columns = list(SUMMARY_COLUMNS) + [c for c in EMA_COLUMNS if history and c in history[0]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k) for k in columns})
    _atomic_write_text(out_dir / 'summary.csv', buf.getvalue())


def _plot_summary(out_dir: Path, history: List[Dict[str, Any]]) -> None:
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
    _atomic_write(out_dir / 'summary.png', lambda f: f.write(buf.getvalue()))


# ---------------------------------------------------------------------------------------------
# model, data, optimizer
# ---------------------------------------------------------------------------------------------

def _check_model_name(name: str) -> None:
    import timm
    if name.startswith(('hf-hub:', 'local-dir:')) or timm.is_model(name):
        return
    candidates = timm.list_models()
    close = difflib.get_close_matches(name.split('.')[0], candidates, n=6, cutoff=0.6)
    from gczoo.models import ZOO_MODELS
    raise ValueError(
        f'--model {name!r} is not a timm or gczoo model; '
        f'closest names: {", ".join(close) or "none"}; gczoo models: {", ".join(ZOO_MODELS)}')


def _create_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    import timm
    from gczoo.models import ZOO_MODELS
    _check_model_name(args.model)
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, drop_rate=args.drop)
    if args.drop_path is not None:
        kwargs['drop_path_rate'] = args.drop_path
    if args.pretrained_backbone:
        if args.model.split('.')[0] not in ZOO_MODELS:
            raise ValueError(f'--pretrained-backbone needs a gczoo model ({", ".join(ZOO_MODELS)}), '
                             f'got --model {args.model!r}')
        kwargs['pretrained_backbone'] = args.pretrained_backbone
    model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
    if args.initial_checkpoint:
        _load_initial_checkpoint(model, args.initial_checkpoint)
    return model


def _load_initial_checkpoint(model: nn.Module, path: str) -> None:
    from gczoo.models import CheckpointError, read_state_dict
    from gczoo.models.weights import classifier_names, compare_state_dicts
    state_dict = read_state_dict(path)  # unwraps training checkpoints (EMA weights first)
    heads = tuple(f'{name}.' for name in classifier_names(model))
    target = model.state_dict()
    skipped = [k for k, v in state_dict.items()
               if k.startswith(heads) and k in target and tuple(v.shape) != tuple(target[k].shape)]
    state_dict = {k: v for k, v in state_dict.items() if k not in skipped}
    mismatch = compare_state_dicts(
        target, state_dict, may_be_missing=lambda k: k in skipped or k.endswith('num_batches_tracked'))
    if mismatch:
        raise CheckpointError(f'--initial-checkpoint {path!r} does not fit --model {type(model).__name__}: {mismatch}')
    model.load_state_dict(state_dict, strict=False)
    if skipped:
        print(f'--initial-checkpoint: classifier {", ".join(skipped)} has another number of classes; left at init')


def attention_param_groups(
        model: nn.Module, weight_decay: float, attn_lr_scale: float, no_weight_decay_list: Iterable[str] = (),
) -> List[Dict[str, Any]]:
    """timm's weight-decay parameter groups, each split into backbone and attention-block parameters;
    the attention groups carry ``lr_scale = attn_lr_scale`` (timm's schedulers multiply it in)."""
    from timm.optim import param_groups_weight_decay
    from gczoo.models import attention_modules
    attn_ids = {id(p) for _, m in attention_modules(model) for p in m.parameters()}
    if not attn_ids:
        raise ValueError(f'--attn-lr-scale {attn_lr_scale:g} needs a model with gczoo attention blocks; '
                         f'{type(model).__name__} has none')
    groups = []
    for group in param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_weight_decay_list):
        base = [p for p in group['params'] if id(p) not in attn_ids]
        attn = [p for p in group['params'] if id(p) in attn_ids]
        if base:
            groups.append({**group, 'params': base})
        if attn:
            groups.append({**group, 'params': attn, 'lr_scale': attn_lr_scale})
    return groups


def _resolve_lr(args: argparse.Namespace, world_size: int) -> float:
    if args.lr is not None:
        return args.lr
    global_batch = args.batch_size * world_size * args.grad_accum_steps
    ratio = global_batch / args.lr_base_size
    scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    return args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)


def _build_datasets(args: argparse.Namespace, env: Any) -> Tuple[Any, Any, List[str], str]:
    """(train, val) datasets without transforms, the class names, and a description of the data."""
    from timm.data import create_dataset
    from gczoo.data import check_image_folder, prepare_digits
    from gczoo.models.weights import format_keys

    if _uses_embedded_digits(args):
        if env.local_rank == 0:
            root = prepare_digits()
        if env.distributed:
            dist.barrier()
        root = prepare_digits()  # rank 0 of the node wrote it; this only reads the manifest
        data_dir, dataset_name, what = str(root), '', f'embedded handwritten digits ({root})'
    else:
        data_dir, dataset_name = args.data_dir, args.dataset
        what = f'{dataset_name or "folder"} dataset at {data_dir}'
    if dataset_name in ('', 'digits'):
        train_dir, train_classes = check_image_folder(data_dir, args.train_split)
        val_dir, val_classes = check_image_folder(data_dir, args.val_split)
        unknown = sorted(set(val_classes) - set(train_classes))
        if unknown:
            raise ValueError(f'validation split {str(val_dir)!r} has classes the training split {str(train_dir)!r} '
                             f'does not: {format_keys(unknown)}')
        train_ds = create_dataset('', root=str(train_dir), split=args.train_split, search_split=False, is_training=True)
        class_to_idx = dict(train_ds.reader.class_to_idx)
        val_ds = create_dataset('', root=str(val_dir), split=args.val_split, search_split=False, class_map=class_to_idx)
        class_names = [name for name, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    else:
        if data_dir is None:
            raise ValueError(f'--dataset {dataset_name!r} needs --data-dir (where it is, or should be downloaded to)')
        kw = dict(root=data_dir, download=args.dataset_download, batch_size=args.batch_size, seed=args.seed)
        try:
            train_ds = create_dataset(dataset_name, split=args.train_split, is_training=True, **kw)
            val_ds = create_dataset(dataset_name, split=args.val_split, **kw)
        except (RuntimeError, FileNotFoundError, AssertionError) as e:
            raise ValueError(f'--dataset {dataset_name!r} at {data_dir!r} could not be opened: {e}') from e
        if isinstance(train_ds, torch.utils.data.IterableDataset):
            raise ValueError(f'--dataset {dataset_name!r} is a streaming (iterable) dataset; gczoo.train needs '
                             f'map-style datasets for exact, resumable data order')
        classes = getattr(train_ds, 'classes', None)
        if classes is None:
            raise ValueError(f'--dataset {dataset_name!r} does not expose its classes; use an ImageFolder tree')
        class_names = [str(c) for c in classes]
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError(f'{what}: the training or validation split is empty')
    return train_ds, val_ds, class_names, what


class _ApplyTransform(torch.utils.data.Dataset):
    """Deterministic (validation) transform over a dataset returning (image, target)."""

    def __init__(self, dataset: Any, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        img, target = self.dataset[index][:2]
        return self.transform(img), target


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Progress:
    """Where the run is, all of it saved in the checkpoint."""
    epoch: int = 0  # the epoch in progress (or the next to start, with batches_done == 0)
    batches_done: int = 0  # micro-batches of `epoch` this rank has trained on
    num_updates: int = 0  # optimizer updates since the start of training
    loss_sum: float = 0.0  # this rank's running train loss sum over the samples of `epoch`
    loss_count: int = 0
    elapsed: float = 0.0  # training wall time of earlier processes of this run (s)
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    best: Optional[Dict[str, Any]] = None  # {'epoch', 'metric', 'top1', 'top5', 'val_loss'}


def _elastic_restart_count() -> int:
    return int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') or 0)


def _experiment_name(args: argparse.Namespace) -> str:
    if args.experiment:
        return args.experiment
    slug = args.model.replace('/', '_').replace(':', '_')
    img = args.img_size or 'auto'
    if int(os.environ.get('TORCHELASTIC_MAX_RESTARTS', '0') or 0) > 0:
        # every attempt of a torchrun job with restarts must find the same folder: use its run id
        return f'{slug}-{img}-elastic-{os.environ.get("TORCHELASTIC_RUN_ID", "none")}'
    return f'{time.strftime("%Y%m%d-%H%M%S")}-{slug}-{img}'


def _broadcast(value: Any, env: Any) -> Any:
    if not env.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _log(env: Any, *msg: Any) -> None:
    if env.is_main:
        print(*msg, flush=True)


class Trainer:
    """One training run: ``Trainer(args)`` builds it (data, model, optimizer, schedule, EMA, DDP) and
    restores a checkpoint if asked; ``fit()`` trains, validates, checkpoints and exports.

    Every rank builds the same objects; rank 0 alone writes files. Collectives (checkpoint gathering,
    validation, the epoch's loss reduction) are entered by every rank in the same order.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        from timm.utils import random_seed
        from gczoo.distributed import init_distributed

        self.args = args
        self.started = time.time()
        use_cuda = torch.cuda.is_available() if args.device is None else args.device.startswith('cuda')
        if args.sync_bn and int(os.environ.get('WORLD_SIZE', '1')) > 1 and not use_cuda:
            raise ValueError('--sync-bn: torch\'s SyncBatchNorm runs on GPUs only, and this is a multi-process CPU '
                             'run; drop --sync-bn (each rank normalizes its own batch) or use --freeze-bn-stats')
        if args.threads:
            torch.set_num_threads(args.threads)
        self.env = init_distributed(args.device)
        self.device = self.env.device
        if args.fail_rank < 0:
            args.fail_rank = self.env.world_size - 1
        if args.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        elif self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(args.amp)
        self.show_progress = self.env.is_main and not args.no_progress

        self.out_dir = self._make_output_dir()
        self.resume_path, ckpt = self._read_resume_checkpoint()
        random_seed(args.seed, 0)  # same init on every rank (DDP broadcasts rank 0's weights anyway)
        self._build_data_and_model(ckpt)
        self._build_optimization()
        self.progress = _Progress()
        if ckpt is not None:
            self._restore(ckpt)
        else:
            random_seed(args.seed, self.env.rank)  # per-rank streams for mixup, dropout, drop-path (as timm)
        if self.env.is_main:  # the files always agree with the checkpoint the run continues from
            _write_summary(self.out_dir, self.progress.history)
        self._wrap_model()
        self.process_started = time.time()

    # -- setup -------------------------------------------------------------------------------

    def _log(self, *msg: Any) -> None:
        _log(self.env, *msg)

    def _make_output_dir(self) -> Path:
        out_dir = Path(self.args.output) / _broadcast(_experiment_name(self.args), self.env)  # rank 0 names it
        if self.env.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            for stale in out_dir.glob('.*.tmp'):  # temp files of a process killed while writing
                with contextlib.suppress(OSError):
                    stale.unlink()
        return out_dir

    def _read_resume_checkpoint(self) -> Tuple[Optional[Path], Optional[Dict[str, Any]]]:
        resume = self.args.resume
        restart = _elastic_restart_count()
        if resume is None and restart > 0:
            resume = 'auto'  # a torchrun restart continues from the last checkpoint
            self._log(f'torchrun restart {restart}: resuming from {self.out_dir / LAST_CHECKPOINT} if present')
        if resume == 'auto':
            path = self.out_dir / LAST_CHECKPOINT
            return (path, load_training_checkpoint(path)) if path.is_file() else (None, None)
        if resume:
            return Path(resume), load_training_checkpoint(resume)
        return None, None

    def _build_data_and_model(self, ckpt: Optional[Dict[str, Any]]) -> None:
        from timm.data import create_transform, resolve_data_config
        from torch.utils.data import DataLoader
        from gczoo.data import ResumableDistributedSampler, SeededTransformDataset
        from gczoo.distributed import ShardSampler
        from gczoo.models import CheckpointError

        args, env = self.args, self.env
        train_ds, val_ds, self.class_names, self.data_what = _build_datasets(args, env)
        self.num_classes = len(self.class_names)
        if args.num_classes is not None and args.num_classes != self.num_classes:
            raise ValueError(f'--num-classes {args.num_classes} does not match the data: {self.data_what} has '
                             f'{self.num_classes} classes')
        if ckpt is not None and ckpt.get('num_classes') not in (None, self.num_classes):
            raise CheckpointError(f'--resume {str(self.resume_path)!r} was trained on {ckpt["num_classes"]} classes; '
                                  f'{self.data_what} has {self.num_classes}')
        self.model = _create_model(args, self.num_classes)

        self.data_config = resolve_data_config(
            {k: getattr(args, k) for k in ('img_size', 'mean', 'std', 'crop_pct', 'interpolation') if getattr(args, k)},
            model=self.model)
        train_config = {k: v for k, v in self.data_config.items() if k not in ('crop_pct', 'crop_mode')}
        train_config['interpolation'] = args.train_interpolation or self.data_config['interpolation']
        train_transform = create_transform(
            **train_config, is_training=True, no_aug=args.no_aug, scale=tuple(args.scale), ratio=tuple(args.ratio),
            hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
            re_prob=args.reprob, re_mode=args.remode, re_count=args.recount)
        self.train_set = SeededTransformDataset(train_ds, train_transform, seed=args.seed)
        self.val_set = _ApplyTransform(val_ds, create_transform(**self.data_config, is_training=False))

        # the order of an epoch is f(seed, epoch); a dedicated generator keeps DataLoader off the global RNG
        self.sampler = ResumableDistributedSampler(self.train_set, num_replicas=env.world_size, rank=env.rank,
                                                   shuffle=True, seed=args.seed)
        self.loader_generator = torch.Generator()
        self.loader_generator.manual_seed(args.seed + env.rank)
        pin = args.pin_mem and self.device.type == 'cuda'
        self.train_loader = DataLoader(self.train_set, batch_size=args.batch_size, sampler=self.sampler,
                                       num_workers=args.workers, drop_last=True, pin_memory=pin,
                                       generator=self.loader_generator)
        self.val_loader = DataLoader(self.val_set, batch_size=args.validation_batch_size or args.batch_size,
                                     sampler=ShardSampler(len(self.val_set), env.rank, env.world_size),
                                     num_workers=args.workers, pin_memory=pin)
        self.batches_per_epoch = self.sampler.num_samples // args.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f'{self.data_what}: the training split has {len(self.train_set)} images, fewer than one global batch '
                f'(--batch-size {args.batch_size} x {env.world_size} processes); lower --batch-size')

        self.model.to(self.device)
        if args.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if args.sync_bn:
            if env.distributed:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:
                self._log('--sync-bn: one process, nothing to synchronize; BatchNorm left as is')
        if args.freeze_bn_stats:
            self._log('--freeze-bn-stats: BatchNorm uses its running statistics; affine weights train')

    def _build_optimization(self) -> None:
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2, scheduler_kwargs
        from timm.utils import ModelEmaV3

        args, model = self.args, self.model
        self.lr = _resolve_lr(args, self.env.world_size)
        opt_kwargs: Dict[str, Any] = {}
        if args.opt_eps is not None:
            opt_kwargs['eps'] = args.opt_eps
        if args.opt_betas is not None:
            opt_kwargs['betas'] = tuple(args.opt_betas)
        group_fn = None
        if args.attn_lr_scale != 1.0:
            group_fn = functools.partial(
                attention_param_groups, weight_decay=args.weight_decay, attn_lr_scale=args.attn_lr_scale,
                no_weight_decay_list=getattr(model, 'no_weight_decay', lambda: set())())
        self.optimizer = create_optimizer_v2(model, args.opt, lr=self.lr, weight_decay=args.weight_decay,
                                             momentum=args.momentum, param_group_fn=group_fn, **opt_kwargs)
        updates_per_epoch = math.ceil(self.batches_per_epoch / args.grad_accum_steps)
        self.scheduler, self.num_epochs = create_scheduler_v2(
            self.optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)
        if self.scheduler is None:  # no scheduler to apply timm's lr_scale: do it once here
            for group in self.optimizer.param_groups:
                group['lr'] = group['lr'] * group.get('lr_scale', 1.0)

        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler('cuda') if fp16 and self.device.type == 'cuda' else None
        if fp16 and self.device.type != 'cuda':
            self._log('--amp fp16 without CUDA: no loss scaling (GradScaler is used on CUDA only); bf16 is safer here')

        self.model_ema = None
        if args.model_ema:
            self.model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                                        device=torch.device('cpu') if args.model_ema_force_cpu else None)

        self.mixup_fn = None
        if _mixup_active(args):
            self.mixup_fn = Mixup(
                mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                label_smoothing=args.smoothing, num_classes=self.num_classes)
            self.train_loss_fn: nn.Module = SoftTargetCrossEntropy()  # mixup folds the smoothing into the targets
        elif args.smoothing:
            self.train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
        else:
            self.train_loss_fn = nn.CrossEntropyLoss()
        self.val_loss_fn = nn.CrossEntropyLoss()

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        """Everything the checkpoint holds, then this rank's RNG states: the run goes on as if never stopped."""
        from gczoo.models import CheckpointError
        args, env, where = self.args, self.env, f'--resume {str(self.resume_path)!r}'
        hint = f'(the checkpoint was written by --model {ckpt.get("arch")!r}; this run builds --model {args.model!r})'
        _load_model_state(self.model, ckpt['state_dict'], where, hint)
        try:
            self.optimizer.load_state_dict(ckpt['optimizer'])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f'{where}: the optimizer state does not fit this run '
                                  f'(another --opt or --attn-lr-scale?): {e}') from e
        if self.scheduler is not None and ckpt.get('scheduler') is not None:
            self.scheduler.load_state_dict(ckpt['scheduler'])
        if self.model_ema is not None:
            if ckpt.get('state_dict_ema') is None:
                self._log(f'{where} has no EMA weights; the EMA starts from the current weights')
                self.model_ema.module.load_state_dict(self.model.state_dict())
            else:
                _load_model_state(self.model_ema.module, ckpt['state_dict_ema'], f'{where} (EMA)', hint)
        if self.scaler is not None and ckpt.get('scaler') is not None:
            self.scaler.load_state_dict(ckpt['scaler'])

        progress = _Progress(epoch=int(ckpt['epoch']), batches_done=int(ckpt['batches_done']),
                             num_updates=int(ckpt['num_updates']), elapsed=float(ckpt.get('elapsed') or 0.0),
                             history=list(ckpt.get('history') or []), best=ckpt.get('best'))
        rank_states = ckpt.get('rank_states') or []
        if env.rank < len(rank_states):
            state = rank_states[env.rank]
            _restore_rng(state['rng'])
            self.loader_generator.set_state(state['loader_generator'])
            progress.loss_sum, progress.loss_count = float(state['loss_sum']), int(state['loss_count'])
        layout = (ckpt.get('world_size'), ckpt.get('batch_size'), ckpt.get('grad_accum_steps'))
        if layout != (env.world_size, args.batch_size, args.grad_accum_steps):
            # skip the same share of the epoch; which samples the rest of it holds differs
            old_world, old_batch = int(layout[0] or 1), int(layout[1] or args.batch_size)
            samples_done = progress.batches_done * old_batch * old_world
            progress.batches_done = min(self.batches_per_epoch, samples_done // (env.world_size * args.batch_size))
            # the epoch's running loss: all of it on rank 0 (the epoch end sums over ranks)
            progress.loss_sum = sum(float(st['loss_sum']) for st in rank_states) if env.rank == 0 else 0.0
            progress.loss_count = sum(int(st['loss_count']) for st in rank_states) if env.rank == 0 else 0
            self._log(f'{where}: the checkpoint ran with world size, batch, accumulation {layout}; this run uses '
                      f'{(env.world_size, args.batch_size, args.grad_accum_steps)}: it continues, but not exactly')
        self.progress = progress
        self._log(f'resumed from {self.resume_path}: epoch {progress.epoch + 1}, batch {progress.batches_done}/'
                  f'{self.batches_per_epoch}, update {progress.num_updates}')

    def _wrap_model(self) -> None:
        from torch.nn.parallel import DistributedDataParallel
        self.train_model: nn.Module = self.model
        if self.args.compile:
            self.train_model = torch.compile(self.model, backend=self.args.compile)
        if self.env.distributed:
            device_ids = [self.device.index] if self.device.type == 'cuda' else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=device_ids)

    # -- checkpoints -------------------------------------------------------------------------

    def _rank_states(self) -> List[Dict[str, Any]]:
        """Every rank's RNG states and running loss (a collective: all ranks call it)."""
        state = {'rng': _capture_rng(), 'loader_generator': self.loader_generator.get_state(),
                 'loss_sum': self.progress.loss_sum, 'loss_count': self.progress.loss_count}
        if not self.env.distributed:
            return [state]
        states: List[Any] = [None] * self.env.world_size
        dist.all_gather_object(states, state)
        return states

    def save_checkpoint(self, best: bool = False) -> None:
        """Write ``last.pth.tar`` (and ``best.pth.tar``) atomically; every rank must call it."""
        rank_states = self._rank_states()
        if not self.env.is_main:
            return
        args, p = self.args, self.progress
        payload = {
            'format': CHECKPOINT_FORMAT,
            'arch': args.model,
            'num_classes': self.num_classes,
            'class_names': list(self.class_names),
            'epoch': p.epoch,
            'batches_done': p.batches_done,
            'num_updates': p.num_updates,
            'elapsed': p.elapsed + time.time() - self.process_started,
            'world_size': self.env.world_size,
            'batch_size': args.batch_size,
            'grad_accum_steps': args.grad_accum_steps,
            'sampler': {'epoch': p.epoch, 'seed': args.seed, 'samples_done_per_rank': p.batches_done * args.batch_size},
            'state_dict': self.model.state_dict(),
            'optimizer': _plain(self.optimizer.state_dict()),
            'scheduler': _plain(self.scheduler.state_dict()) if self.scheduler is not None else None,
            'state_dict_ema': self.model_ema.module.state_dict() if self.model_ema is not None else None,
            'scaler': _plain(self.scaler.state_dict()) if self.scaler is not None else None,
            'rank_states': rank_states,
            'history': _plain(p.history),
            'best': _plain(p.best),
            'metric': p.best['metric'] if p.best else None,
            'args': _plain(vars(args)),
            'torch_version': str(torch.__version__),
        }
        if best:
            atomic_save(payload, self.out_dir / BEST_CHECKPOINT)
        atomic_save(payload, self.out_dir / LAST_CHECKPOINT)

    # -- training ----------------------------------------------------------------------------

    def fit(self) -> int:
        """Train to the last epoch, then export the best model and write ``results.json``."""
        n_params = sum(p.numel() for p in self.model.parameters())
        a = self.args
        self._log(f'{a.model}: {n_params / 1e6:.2f}M parameters, {self.num_classes} classes | {self.data_what}: '
                  f'{len(self.train_set)} train / {len(self.val_set)} val images | {self.env.world_size} process(es) '
                  f'on {self.device}, batch {a.batch_size} x {self.env.world_size} x {a.grad_accum_steps} accum, '
                  f'lr {self.lr:g}, {self.num_epochs} epochs | output {self.out_dir}')
        while self.progress.epoch < self.num_epochs:
            epoch_start = time.time()
            images = self.train_epoch()
            self.end_epoch(images, train_time=time.time() - epoch_start, epoch_start=epoch_start)
        self._finish()
        return 0

    def _set_train_mode(self) -> None:
        self.train_model.train()
        if self.args.freeze_bn_stats:  # eval-mode BN: normalizes with (and never updates) its running stats
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def train_epoch(self) -> int:
        """The rest of the current epoch (all of it unless resumed mid-epoch); returns this rank's image count."""
        from timm.utils import dispatch_clip_grad
        from tqdm import tqdm

        args, env, p = self.args, self.env, self.progress
        epoch = p.epoch
        if self.mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            self.mixup_fn.mixup_enabled = False
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(p.batches_done * args.batch_size)
        self.train_set.set_epoch(epoch)
        self._set_train_mode()
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        bar = tqdm(total=self.batches_per_epoch, initial=p.batches_done, desc=f'epoch {epoch + 1}/{self.num_epochs}',
                   unit='batch', leave=False, dynamic_ncols=True, disable=not self.show_progress)
        images_seen = 0
        self.optimizer.zero_grad(set_to_none=True)
        for batch_idx, (images, targets) in enumerate(self.train_loader, start=p.batches_done):
            # the update groups are fixed by the position in the epoch, so a resumed epoch keeps them
            group_start = (batch_idx // args.grad_accum_steps) * args.grad_accum_steps
            group_size = min(args.grad_accum_steps, self.batches_per_epoch - group_start)
            need_update = batch_idx == group_start + group_size - 1
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if self.mixup_fn is not None:
                images, targets = self.mixup_fn(images, targets)
            # DDP all-reduces gradients on the last micro-batch of an update only
            sync = self.train_model.no_sync() if env.distributed and not need_update else contextlib.nullcontext()
            with sync:
                with autocast:
                    loss = self.train_loss_fn(self.train_model(images), targets)
                scaled = loss / group_size
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            p.loss_sum += float(loss.detach().float().item()) * images.shape[0]
            p.loss_count += images.shape[0]
            images_seen += images.shape[0]
            p.batches_done = batch_idx + 1
            bar.update(1)
            if not need_update:
                continue

            if args.clip_grad is not None:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                dispatch_clip_grad(self.model.parameters(), value=args.clip_grad, mode=args.clip_mode)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            p.num_updates += 1
            if self.model_ema is not None:
                self.model_ema.update(self.model, step=p.num_updates)
            if self.scheduler is not None:
                self.scheduler.step_update(num_updates=p.num_updates)
            lr = self.optimizer.param_groups[0]['lr']
            bar.set_postfix(loss=f'{p.loss_sum / max(p.loss_count, 1):.4f}', lr=f'{lr:.3g}')
            if (args.fail_at_step == p.num_updates and env.rank == args.fail_rank
                    and _elastic_restart_count() == 0):
                print(f'--fail-at-step {args.fail_at_step}: rank {env.rank} exits with status {FAULT_EXIT_CODE} '
                      f'(simulated crash)', file=sys.stderr, flush=True)
                os._exit(FAULT_EXIT_CODE)
            if not self.show_progress and p.num_updates % args.log_interval == 0:
                self._log(f'epoch {epoch + 1} [{p.batches_done}/{self.batches_per_epoch}] update {p.num_updates} '
                          f'loss {p.loss_sum / max(p.loss_count, 1):.4f} lr {lr:.3g}')
            if (args.checkpoint_interval and p.num_updates % args.checkpoint_interval == 0
                    and p.batches_done < self.batches_per_epoch):
                self.save_checkpoint()
        bar.close()
        return images_seen

    def _validate(self, model: nn.Module, label: str) -> Dict[str, float]:
        from gczoo.evaluate import validate
        return validate(model, self.val_loader, num_classes=self.num_classes, device=self.device,
                        amp_dtype=self.amp_dtype, channels_last=self.args.channels_last, criterion=self.val_loss_fn,
                        progress=label if self.show_progress else None)

    def end_epoch(self, images_seen: int, train_time: float, epoch_start: float) -> None:
        """Global train loss, validation (EMA too), schedule step, best/last checkpoints, summary files."""
        args, p = self.args, self.progress
        epoch = p.epoch
        totals = torch.tensor([p.loss_sum, float(p.loss_count), float(images_seen)], dtype=torch.float64,
                              device=self.device)
        if self.env.distributed:
            dist.all_reduce(totals)
        lr = self.optimizer.param_groups[0]['lr']
        metrics = self._validate(self.model, 'validate')
        row: Dict[str, Any] = {
            'epoch': epoch + 1, 'train_loss': float(totals[0] / totals[1]) if totals[1] > 0 else float('nan'),
            'val_loss': metrics['loss'], 'top1': metrics['top1'], 'top5': metrics['top5'], 'lr': lr,
            'images_per_s': float(totals[2]) / train_time if train_time > 0 else float('nan'), 'epoch_time': 0.0}
        chosen = metrics
        if self.model_ema is not None:
            chosen = self._validate(self.model_ema.module, 'validate EMA')
            row.update(ema_val_loss=chosen['loss'], ema_top1=chosen['top1'], ema_top5=chosen['top5'])
        row['epoch_time'] = time.time() - epoch_start
        metric = chosen[args.eval_metric]
        if self.scheduler is not None:
            self.scheduler.step(epoch + 1, metric)
        is_best = p.best is None or (metric < p.best['metric'] if args.eval_metric == 'loss'
                                     else metric > p.best['metric'])
        if is_best:
            p.best = {'epoch': epoch + 1, 'metric': metric, 'eval_metric': args.eval_metric, 'top1': chosen['top1'],
                      'top5': chosen['top5'], 'val_loss': chosen['loss'], 'ema': self.model_ema is not None}
        p.history.append(row)
        p.epoch, p.batches_done, p.loss_sum, p.loss_count = epoch + 1, 0, 0.0, 0
        self.save_checkpoint(best=is_best)
        if self.env.is_main:
            _write_summary(self.out_dir, p.history)
            _plot_summary(self.out_dir, p.history)
            ema = f"  EMA top-1 {row['ema_top1']:.2f}" if self.model_ema is not None else ''
            print(f"epoch {epoch + 1}/{self.num_epochs}  train_loss {row['train_loss']:.4f}  val_loss "
                  f"{row['val_loss']:.4f}  top-1 {row['top1']:.2f}  top-5 {row['top5']:.2f}{ema}  lr {lr:.3g}  "
                  f"{row['images_per_s']:.0f} img/s  {row['epoch_time']:.1f} s", flush=True)

    def _finish(self) -> None:
        """Export the best weights in timm's Hub layout and write results.json (rank 0)."""
        p, out_dir = self.progress, self.out_dir
        if self.env.is_main:
            export_dir = None
            best_path = out_dir / BEST_CHECKPOINT
            if not self.args.no_export and best_path.is_file():
                export_dir = _export_best(self.model, best_path, out_dir / EXPORT_DIR, self.data_config,
                                          self.class_names)
            final = p.history[-1] if p.history else {}
            results = {
                'model': self.args.model, 'num_classes': self.num_classes, 'class_names': self.class_names,
                'data': self.data_what, 'train_images': len(self.train_set), 'val_images': len(self.val_set),
                'world_size': self.env.world_size, 'epochs': self.num_epochs, 'num_updates': p.num_updates,
                'best': p.best, 'final': final,
                'wall_time_s': p.elapsed + time.time() - self.process_started,
                'this_process_s': time.time() - self.started,
                'output': str(out_dir), 'export': str(export_dir) if export_dir else None,
                'checkpoints': {'last': str(out_dir / LAST_CHECKPOINT), 'best': str(best_path)},
                'args': _plain(vars(self.args)),
            }
            _atomic_write_text(out_dir / 'results.json', json.dumps(results, indent=2) + '\n')
            best = p.best or {}
            print(f"done: best top-1 {best.get('top1', float('nan')):.2f} (epoch {best.get('epoch')}), final top-1 "
                  f"{final.get('top1', float('nan')):.2f}, {results['wall_time_s']:.0f} s | {out_dir}"
                  + (f' | export: {export_dir}' if export_dir else ''), flush=True)
        if self.env.distributed:
            dist.barrier()


def train(args: argparse.Namespace) -> int:
    """Run training as ``args`` (from ``parse_args``) says; returns the exit status."""
    import gczoo  # noqa: F401  (registers the zoo with timm)
    return Trainer(args).fit()


def _export_best(model: nn.Module, best_path: Path, export_dir: Path, data_config: Dict[str, Any],
                 class_names: List[str]) -> Path:
    import copy
    from gczoo.models.hub_folder import save_pretrained
    ckpt = load_training_checkpoint(best_path)
    weights = ckpt['state_dict_ema'] if ckpt.get('state_dict_ema') is not None else ckpt['state_dict']
    export_model = copy.deepcopy(model).cpu()
    if any(isinstance(m, nn.SyncBatchNorm) for m in export_model.modules()):
        export_model = _revert_sync_batchnorm(export_model)
    _load_model_state(export_model, weights, str(best_path))
    export_model.to(memory_format=torch.contiguous_format).eval()
    return save_pretrained(export_model, export_dir, data_config=dict(data_config), label_names=class_names)


def _revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.SyncBatchNorm):
        out = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        out.load_state_dict(module.state_dict())
    for name, child in module.named_children():
        out.add_module(name, _revert_sync_batchnorm(child))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m gczoo.train`` / ``gczoo train``: returns 0, 2 for user errors (one line, no traceback)."""
    from gczoo.distributed import cleanup_distributed
    from gczoo.models import PretrainedWeightsError
    try:
        try:
            args = parse_args(argv)
        except SystemExit as e:  # --help, or argparse's own usage error
            return int(e.code or 0)
        return train(args)
    except (ValueError, PretrainedWeightsError, FileNotFoundError) as e:  # CheckpointError is a ValueError
        if os.environ.get(DEBUG_ENV):
            raise
        print(f'gczoo train: error: {e}', file=sys.stderr, flush=True)
        return 2
    finally:
        cleanup_distributed()


if __name__ == '__main__':
    sys.exit(main())
