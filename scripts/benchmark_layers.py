#!/usr/bin/env python3
"""Benchmark every attention block against a naive baseline and timm's counterpart (time, peak memory).

Same as ``gczoo bench layers``; see ``gczoo.bench`` for the method and ``--help`` for the flags.

    python scripts/benchmark_layers.py                      # 8x256x56x56 + Non-local at 2x256x128x128
    python scripts/benchmark_layers.py --threads 1 --backward --nl-large-size 0
"""
import sys

from gczoo.cli import run_command

if __name__ == '__main__':
    sys.exit(run_command('bench', ['layers'] + sys.argv[1:]))
