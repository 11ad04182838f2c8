#!/usr/bin/env python3
"""Throughput of the zoo models as ratios to timm's ResNets and attention models, next to GMAC ratios.

Same as ``gczoo bench models`` (``python scripts/benchmark.py layers ...`` runs ``gczoo bench layers``);
see ``gczoo.benchmark`` for the method and ``--help`` for the flags.

    python scripts/benchmark.py                              # every zoo model, batch 8 at 224
    python scripts/benchmark.py --models resnet50_gc resnet50_se --steps 10
"""
import sys

from gczoo.benchmark import main

if __name__ == '__main__':
    argv = sys.argv[1:]
    if not argv or argv[0] not in ('layers', 'models'):
        argv = ['models'] + argv
    sys.exit(main(argv))
