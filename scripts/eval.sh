#!/usr/bin/env bash
# Top-1/top-5 of a model on an ImageNet-layout folder (DATA/val/<wnid>/*.JPEG) or an ImageFolder,
# under torchrun on this machine: NPROC processes (one per GPU; gloo on CPU), each taking every
# NPROC-th image, the metric states summed across them (the same numbers as one process).
#
#   scripts/eval.sh --model resnet50_gc --checkpoint model_best.pth.tar --use-ema --data-dir /data/imagenet
#   NPROC=8 scripts/eval.sh --model resnet50_gc --pretrained --data-dir /data/imagenet --amp --results-file r.csv
#   scripts/eval.sh --model local-dir:OUT/export --data-dir /data/flowers --on-bad-image error --output-dir out/
#
# Runs: torchrun --standalone --nproc-per-node ${NPROC:-1} -m gczoo.evaluate "$@" (torchrun is
# `$PYTHON -m torch.distributed.run`; PYTHON picks the interpreter). The flags are timm validate.py's
# (--results-file writes its CSV, or JSON with --results-format json); --output-dir also writes
# <model>.csv and .json with everything. Every flag: scripts/eval.sh --help (this is `gczoo eval`).
set -euo pipefail
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
for arg in "$@"; do
    if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
        exec "$PYTHON" -m gczoo.evaluate --help
    fi
done
exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "${NPROC:-1}" -m gczoo.evaluate "$@"
