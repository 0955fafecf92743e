#!/usr/bin/env bash
# Issue 4's GPU measurements in one prepared run, for a session that is lent a GPU machine
# (about 15 minutes of device time, start-up included, so everything runs in one call).
#
#   bash bench/device_check.sh MNIST_DIR [OUT_DIR]
#
# MNIST_DIR: the MNIST IDX files (../shared does not travel to the device machine: copy them
# into an ignored folder such as .devdata/mnist and carry it). Builds the C solver in place,
# then prints: a ResNet-50 matched on the GPU, random and trained MLP pairs of widths 2048 and
# 4096 with both solvers. Each step has its own time limit, so one slow step cannot eat the
# rest; the tables also go to OUT_DIR (default: $OUT, else ./device-check).
# DEVICE (default cuda) and WIDTHS (default 2048,4096) override, for a dry run on a CPU:
#   DEVICE=cpu WIDTHS=128 bash bench/device_check.sh ../shared/data/mnist /tmp/dry
set -uo pipefail
device=${DEVICE:-cuda}
widths=${WIDTHS:-2048,4096}
mnist=${1:?usage: bash bench/device_check.sh MNIST_DIR [OUT_DIR]}
out=${2:-${OUT:-device-check}}
mkdir -p "$out"
export PYTHONPATH=.
python3 setup.py build_ext --inplace -q >/dev/null 2>&1 || echo "C solver not built: solver=auto falls back to SciPy"
if [ "$device" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"; fi
step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "## $name"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.md" | grep -v "^\s*$" | tail -n 12
}
step resnet50 120 python3 bench/resnet50_matching.py --device "$device"
step mlp-random 150 python3 bench/matching_speed.py --widths "$widths" --device "$device" --no-baseline \
    --solvers lap,auction
step mlp-trained 200 python3 bench/matching_speed.py --pairs trained --mnist "$mnist" --widths "$widths" \
    --device "$device" --no-baseline --solvers lap,auction
