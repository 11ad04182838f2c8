#!/usr/bin/env python
"""Parameters, GMACs (multiply-adds, timm's convention) and GFLOPs (= 2 x GMACs) of gczoo models.

    python scripts/complexity.py --all                      # every zoo model + timm's resnet50, at 224
    python scripts/complexity.py resnet50_gc resnet50_nl --img-size 320
    python scripts/complexity.py --all --img-size 256 192 --output output/complexity_256x192

Prints a Markdown table and writes PREFIX.csv / PREFIX.json (default output/complexity). This is
`gczoo complexity` (through the CLI runner); the counting convention is documented in gczoo/complexity.py.
"""
import sys

from gczoo.cli import run_command

if __name__ == '__main__':
    sys.exit(run_command('complexity'))  # errors: one line, exit 2 (GCZOO_DEBUG=1 for the traceback)
