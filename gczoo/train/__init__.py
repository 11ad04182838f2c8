"""Train or fine-tune a gczoo (or any timm) model: one CPU process, 8 GPUs, or several nodes.

    python -m gczoo.train                    # quick start: handwritten digits, resnet18_gc, CPU, minutes
    python -m gczoo.train --data-dir /data/imagenet --model resnet50_gc \\
        --pretrained-backbone resnet50.a1_in1k --attn-lr-scale 10 --amp bf16
    scripts/train.sh --nproc-per-node 8 --data-dir /data/imagenet ...   # torchrun, DDP

One concern per module:

* ``args``: the flags (timm train.py's names and meanings, every value checked); ``timm_flags``: the
  timm flags gczoo lacks, and why; ``config``: ``-c FILE.yaml``, the data-dependent defaults, ``args.yaml``;
* ``build``: the model (weights through ``gczoo.models.weights``), datasets, optimizer, schedule, losses;
* ``checkpoint``: atomic checkpoint files (``last``, ``model_best``, ``checkpoint-N``), reading them back,
  RNG states; ``state``: what a checkpoint holds and how a run resumes from it;
* ``rundir``: the output folder (unique names, the lock, stale temporaries); ``guards``: divergence;
* ``trainer``: the ``Trainer`` (DDP, BatchNorm sync, EMA, exact resume);
* ``outputs``: ``args.yaml``, ``summary.csv``, ``curves.png``, ``results.json``, the Hub-layout export.

Errors are raised, never printed here: ``gczoo.cli.run`` turns them into one line and exit 2.
"""
import argparse
from typing import List, Optional

from gczoo.distributed import cleanup_distributed

from .args import DIGITS_DEFAULTS, FAULT_EXIT_CODE, TIMM_DEFAULTS, build_parser
from .build import attention_param_groups, create_train_model
from .checkpoint import (
    BEST_CHECKPOINT, CHECKPOINT_FORMAT, HISTORY_CHECKPOINT, LAST_CHECKPOINT, atomic_save, load_training_checkpoint,
)
from .config import args_yaml, parse_args
from .guards import TrainingDiverged
from .outputs import ARGS_FILE, EMA_COLUMNS, EXPORT_DIR, RESULTS_FILE, SUMMARY_COLUMNS, SUMMARY_FILE, SUMMARY_PLOT
from .rundir import LOCK_FILE, RunFolderBusy
from .timm_flags import MISSING_TIMM_FLAGS
from .trainer import Trainer, train

__all__ = [
    'CHECKPOINT_FORMAT', 'LAST_CHECKPOINT', 'BEST_CHECKPOINT', 'HISTORY_CHECKPOINT', 'EXPORT_DIR', 'ARGS_FILE',
    'RESULTS_FILE', 'SUMMARY_FILE', 'SUMMARY_PLOT', 'SUMMARY_COLUMNS', 'EMA_COLUMNS', 'LOCK_FILE', 'FAULT_EXIT_CODE',
    'TIMM_DEFAULTS', 'DIGITS_DEFAULTS', 'MISSING_TIMM_FLAGS', 'Trainer', 'TrainingDiverged', 'RunFolderBusy',
    'build_parser', 'parse_args', 'args_yaml', 'main', 'train', 'atomic_save', 'load_training_checkpoint',
    'attention_param_groups', 'create_train_model',
]


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo train`` / ``python -m gczoo.train``: parse, train, return 0. Errors propagate to
    ``gczoo.cli.run`` (one line, exit 2); the process group is left in every case."""
    try:
        args: argparse.Namespace = parse_args(argv)
        return train(args)
    finally:
        cleanup_distributed()
