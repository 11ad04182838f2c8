#!/usr/bin/env bash
# Top-1/top-5 of a model on an ImageNet-layout folder (DATA/val/<wnid>/*.JPEG) or an ImageFolder,
# under torchrun on this machine: NPROC processes (one per GPU; gloo on CPU), each taking every
# NPROC-th image, the metric states summed across them (the same numbers as one process).
#
#   scripts/eval.sh --model resnet50_gc --checkpoint best.safetensors --data-dir /data/imagenet
#   NPROC=8 scripts/eval.sh --model hf-hub:gczoo/resnet50_gc.ft_in1k --data-dir /data/imagenet --amp
#   scripts/eval.sh --model local-dir:OUT/export --data-dir /data/flowers --on-bad-image error
#
# Runs: torchrun --standalone --nproc-per-node ${NPROC:-1} -m gczoo.evaluate "$@" (torchrun is
# `$PYTHON -m torch.distributed.run`; PYTHON picks the interpreter). Writes output/eval/<model>.csv
# (timm validate.py's columns) and .json. Every flag: scripts/eval.sh --help (this is `gczoo eval`).
set -euo pipefail
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
for arg in "$@"; do
    if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
        exec "$PYTHON" -m gczoo.evaluate --help
    fi
done
exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "${NPROC:-1}" -m gczoo.evaluate "$@"
