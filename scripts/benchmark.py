#!/usr/bin/env python3
"""Throughput of the zoo models as ratios to timm's ResNets and attention models, next to GMAC ratios.

Same as ``gczoo bench models`` (``python scripts/benchmark.py layers ...`` runs ``gczoo bench layers``);
see ``gczoo.bench`` for the method and ``--help`` for the flags.

    python scripts/benchmark.py                              # every zoo model, batch 8 at 224
    python scripts/benchmark.py --models resnet50_cbam --batch 1 8 32 --modes infer compile
"""
import sys

from gczoo.cli import run_command

if __name__ == '__main__':
    argv = sys.argv[1:]
    if not argv or argv[0] not in ('layers', 'models', '-h', '--help'):
        argv = ['models'] + argv
    sys.exit(run_command('bench', argv))
