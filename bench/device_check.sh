#!/usr/bin/env bash
# The GPU matching measurements of docs/benchmarks.md in one prepared run (about 15 minutes of
# device time, start-up included, so everything runs in one call).
#
#   bash bench/device_check.sh MNIST_DIR [OUT_DIR]
#
# MNIST_DIR: the MNIST IDX files (on a remote machine, copy them into an ignored folder such as
# .devdata/mnist next to the code). Builds the C solver in place,
# then prints: the CUDA tests (where pytest is installed), a ResNet-50 matched on the GPU, trained and
# random MLP pairs of widths 2048 and 4096 with the default solver (and the dense one, trained). Each step has its own time limit, so one slow step cannot eat the
# rest; the tables also go to OUT_DIR (default: $OUT, else ./device-check).
# DEVICE (default cuda), WIDTHS (default 2048,4096), SOLVERS (trained pairs; default auto,lap:
# auto is the sparse solver on a GPU), RANDOM_SOLVERS (default auto) and AUCTION_WIDTHS (default
# none) and REPEATS (median of; default 1) override, for a dry run on a CPU:
#   DEVICE=cpu WIDTHS=128 AUCTION_WIDTHS=128 bash bench/device_check.sh MNIST_DIR /tmp/dry
set -uo pipefail
device=${DEVICE:-cuda}
widths=${WIDTHS:-2048,4096}
mnist=${1:?usage: bash bench/device_check.sh MNIST_DIR [OUT_DIR]}
out=${2:-${OUT:-device-check}}
mkdir -p "$out"
export PYTHONPATH=.
python3 setup.py build_ext --inplace -q >/dev/null 2>&1 || echo "C solver not built: solver=auto falls back to SciPy"
if [ "$device" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"; fi
echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cores, avx512f: $(grep -c -m1 avx512f /proc/cpuinfo)" \
    | tee "$out/host.txt"
step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "## $name"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.md" | grep -v "^\s*$" | tail -n 12
}
if [ "$device" = cuda ] && python3 -c "import pytest, hypothesis" 2>/dev/null; then
    step cuda-tests 90 python3 -m pytest -q -p no:cacheprovider -k "cuda" tests/merging
fi
step resnet50 90 python3 bench/resnet50_matching.py --device "$device"
step mlp-trained 150 python3 bench/matching_speed.py --pairs trained --mnist "$mnist" --widths "$widths" \
    --device "$device" --no-baseline --solvers "${SOLVERS:-auto,lap}" --repeats "${REPEATS:-1}"
step mlp-random 120 python3 bench/matching_speed.py --widths "$widths" --device "$device" --no-baseline \
    --solvers "${RANDOM_SOLVERS:-auto}" --repeats "${REPEATS:-1}"
if [ -n "${AUCTION_WIDTHS:-}" ]; then
    step mlp-random-auction 60 python3 bench/matching_speed.py --widths "$AUCTION_WIDTHS" \
        --device "$device" --no-baseline --solvers auction
fi
