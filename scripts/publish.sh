#!/usr/bin/env bash
# Publish trained gczoo weights to the Hugging Face Hub (model.safetensors + config.json + model card).
#
#   scripts/publish.sh OUT --tag ft_in1k                 # upload OUT/export as gczoo/<model>.ft_in1k
#   scripts/publish.sh OUT --tag ft_in1k --dry-run --local-dir hub/   # write and check the folder only
#   scripts/publish.sh best.pth.tar --model resnet50_gc --repo-id me/resnet50_gc.mine --private
#
# The token comes from HF_TOKEN or `hf auth login`. Every flag: scripts/publish.sh --help
# (this is `gczoo publish`; PYTHON selects the interpreter, default python).
set -euo pipefail
PYTHON="${PYTHON:-python}"
exec "$PYTHON" -m gczoo.cli publish "$@"
