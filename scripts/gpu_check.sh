#!/usr/bin/env bash
# GPU truth (issue 21): one command that proves every CUDA path of gczoo against numbers and measures it.
#
#   scripts/gpu_check.sh [OUT]        (no network; under 8 minutes on one GPU)
#
# OUT (and PYTHON, default: python on PATH) are taken from the current folder; default OUT: output/gpu_check
# in the repository. A missing interpreter, torch/timm/pytest or an unwritable OUT: one line, exit 2.
#
# 1. The CUDA tests (pytest -m cuda; tests/cuda/ and every other test marked cuda): each block's forward
#    and backward in float32/float16/bfloat16 (half modules and autocast) against float64 CPU, channels_last,
#    the softmax blocks on SDPA's fused kernels with the math fallback disabled, torch.compile against
#    eager, every zoo model's AMP + channels_last training step against float32, the ONNX export of a CUDA
#    model in ONNX Runtime, a 1-GPU scripts/train.sh run (float16 AMP with loss scaling, channels_last,
#    SyncBN, pinned-memory loaders, EMA) restarted by torchrun and resumed to the unbroken run's weights,
#    NCCL DDP with SyncBatchNorm. JUnit XML: OUT/cuda_tests.xml.
# 2. gczoo bench models on CUDA (AMP, channels_last): inference and training img/s and training peak
#    memory of every zoo model next to timm's ResNet of its depth and timm's nearest attention model
#    (seresnet50, CBAM and GC ResNets): OUT/bench/models.csv/.json and the printed table.
# 3. gczoo bench layers --backward on CUDA: every block's training step against the naive seed code and
#    timm's blocks, time and peak memory: OUT/bench/layers_bwd.csv/.json and the printed table.
#
# Without a GPU, step 1 runs (each test skips with its reason), one line says so and the script exits 0.
# GCZOO_CUDA_TESTS_ON=cpu runs the tests' arithmetic on the CPU instead (a dry run of the tests).
if [ -z "${BASH_VERSION:-}" ]; then echo "gpu_check: run it with bash (scripts/gpu_check.sh or bash scripts/gpu_check.sh), not sh" >&2; exit 2; fi
set -euo pipefail
# OUT and PYTHON are paths as the caller wrote them, from the caller's folder (the script then runs in the repo)
usage='usage: scripts/gpu_check.sh [OUT]   (OUT: the results folder, default output/gpu_check in the repository)'
case "${1:-}" in
    -h|--help) echo "$usage"; exit 0 ;;
    -*) echo "gpu_check: unknown option $1 (it takes one argument, the results folder); $usage" >&2; exit 2 ;;
esac
[[ $# -le 1 ]] || { echo "gpu_check: $# arguments given, it takes at most one (the results folder); $usage" >&2; exit 2; }
absolute() { if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s' "$PWD/$1"; fi; }
OUT="${1:-}"
[[ -n "$OUT" ]] && OUT=$(absolute "$OUT")
PYTHON="${PYTHON:-$(command -v python || command -v python3 || true)}"
[[ -n "$PYTHON" ]] || { echo "gpu_check: no python on PATH; activate the environment gczoo is installed in, or set PYTHON=" >&2; exit 2; }
[[ "$PYTHON" == */* ]] && PYTHON=$(absolute "$PYTHON")
cd "$(dirname "$(readlink -f "$0")")/.."  # the repository, also when run through a symlink
[[ -d tests/cuda ]] || { echo "gpu_check: $PWD has no tests/cuda; run the gpu_check.sh of a gczoo checkout" >&2; exit 2; }
OUT="${OUT:-$PWD/output/gpu_check}"
mkdir -p "$OUT/bench" 2>/dev/null && [[ -w "$OUT/bench" ]] || {
    echo "gpu_check: cannot create the output folder $OUT; pass another one" >&2; exit 2; }
start=$(date +%s)

missing=$("$PYTHON" -c 'import importlib.util as u; print(" ".join(m for m in ("torch", "timm", "pytest") if u.find_spec(m) is None))' 2>/dev/null) || {
    echo "gpu_check: cannot run python ($PYTHON); set PYTHON= to the interpreter of the environment gczoo is installed in" >&2; exit 2; }
[[ -z "$missing" ]] || {
    echo "gpu_check: python ($PYTHON) cannot import ${missing// /, }; activate the environment gczoo is installed in (pip install -e '.[test]'), or set PYTHON=" >&2; exit 2; }
has_gpu=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))')
case "${GCZOO_CUDA_TESTS_ON:-}" in
    '') ;;
    cpu) [[ "$has_gpu" != 1 ]] || { echo "gpu_check: GCZOO_CUDA_TESTS_ON=cpu would run the CUDA tests on the CPU of a machine that has a GPU; unset it (it is for a dry run where no GPU is)" >&2; exit 2; } ;;
    *) echo "gpu_check: GCZOO_CUDA_TESTS_ON=$GCZOO_CUDA_TESTS_ON is not understood: its one value is cpu (a CPU dry run of the CUDA tests); unset it to test on the GPU" >&2; exit 2 ;;
esac
if [[ "$has_gpu" == 1 ]]; then
    "$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")' \
        | tee "$OUT/device.txt"
fi

echo "gpu_check: [1/3] the CUDA tests (pytest -m cuda)"
"$PYTHON" -m pytest -q -m cuda -rs -p no:cacheprovider --junitxml "$OUT/cuda_tests.xml" tests || { rc=$?
    echo "gpu_check: the CUDA tests failed (pytest exit status $rc; the failures are above and in $OUT/cuda_tests.xml); the benchmarks did not run" >&2
    exit "$rc"; }

if [[ "$has_gpu" != 1 && "${GCZOO_CUDA_TESTS_ON:-}" != cpu ]]; then
    echo "gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False): the CUDA tests skipped and no benchmark ran; run scripts/gpu_check.sh where a GPU is"
    exit 0
fi
if [[ "$has_gpu" != 1 ]]; then
    echo "gpu_check: CPU dry run of the CUDA tests done; the benchmarks need a GPU"
    exit 0
fi

echo "gpu_check: [2/3] gczoo bench models --device cuda"
"$PYTHON" -m gczoo.bench models --device cuda --batch 64 --img-size 224 --steps 5 --warmup 2 --modes infer train \
    --output-dir "$OUT/bench" --no-progress | tee "$OUT/bench_models.txt"

echo "gpu_check: [3/3] gczoo bench layers --backward --device cuda"
"$PYTHON" -m gczoo.bench layers --backward --device cuda --batch 32 --channels 256 --size 56 --memory inprocess \
    --repeats 5 --budget 3 --output-dir "$OUT/bench" --no-progress | tee "$OUT/bench_layers.txt"

echo "gpu_check: done in $(( $(date +%s) - start )) s; results in $OUT"
