"""Train or fine-tune a gczoo (or any timm) model: one CPU process, 8 GPUs, or several nodes.

    python -m gczoo.train                    # quick start: handwritten digits, resnet18_gc, CPU, minutes
    python -m gczoo.train --data-dir /data/imagenet --model resnet50_gc \\
        --pretrained-backbone resnet50.a1_in1k --attn-lr-scale 10 --amp bf16
    scripts/train.sh --nproc-per-node 8 --data-dir /data/imagenet ...   # torchrun, DDP

One concern per module:

* ``args``: the command line (timm train.py's flag names and meanings, every value checked);
* ``build``: the model (``--initial-checkpoint`` through ``gczoo.models.weights``), datasets, lr,
  the attention blocks' parameter groups;
* ``checkpoint``: atomic checkpoint files, reading them back, RNG states;
* ``trainer``: the ``Trainer`` (DDP, EMA, exact resume);
* ``outputs``: ``summary.csv``, the curves, ``results.json``, the Hub-layout export.

Errors are raised, never printed here: ``gczoo.cli.run`` turns them into one line and exit 2.
"""
import argparse
from typing import List, Optional

from .args import DIGITS_DEFAULTS, FAULT_EXIT_CODE, TIMM_DEFAULTS, build_parser, parse_args
from .build import attention_param_groups, create_train_model
from .checkpoint import (
    BEST_CHECKPOINT, CHECKPOINT_FORMAT, LAST_CHECKPOINT, atomic_save, load_training_checkpoint,
)
from .outputs import EMA_COLUMNS, EXPORT_DIR, SUMMARY_COLUMNS
from .trainer import Trainer, train

__all__ = [
    'CHECKPOINT_FORMAT', 'LAST_CHECKPOINT', 'BEST_CHECKPOINT', 'EXPORT_DIR', 'SUMMARY_COLUMNS', 'EMA_COLUMNS',
    'FAULT_EXIT_CODE', 'TIMM_DEFAULTS', 'DIGITS_DEFAULTS', 'Trainer', 'build_parser', 'parse_args', 'main', 'train',
    'atomic_save', 'load_training_checkpoint', 'attention_param_groups', 'create_train_model',
]


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo train`` / ``python -m gczoo.train``: parse, train, return 0. Errors propagate to
    ``gczoo.cli.run`` (one line, exit 2); the process group is left in every case."""
    from gczoo.distributed import cleanup_distributed
    try:
        args: argparse.Namespace = parse_args(argv)
        return train(args)
    finally:
        cleanup_distributed()
