#!/usr/bin/env bash
# Issue 17's GPU check: one script, for a machine with one GPU, done in at most 8 minutes. It prints
#   1. images/s per GPU scoring ResNet-50 at 224 px, R = 10, bf16, on generated ~500x375 JPEGs (the scoring actor's
#      device step fed by decode processes), view passes/s against the T4's 290 images/s, and GPU utilisation in
#      steady state (nvidia-smi sampling);
#   2. the rank correlation of ECLE and proximity between the CPU (float32) and GPU (bf16) paths on the same 512
#      images;
#   3. SimCLR training images/s per GPU with and without Ray Train (bench/bench_train.py --gpu);
#   4. scoring images/s through the Ray Data pipeline (score_pool, one GPU actor, reads on the other CPUs);
#   5. host CPU ms per image outside the model forward: the replaced CPU path, the device path on CPU and on CUDA
#      (bench/bench_augment.py; it reads the replaced path from tests/, present in a checkout).
# It installs nothing beyond `pip install -e .[gpu]`, and runs that only when mak_ray is not importable.
# Each step gets a share of the 8 minutes and is cut at it; a cut step says so and the next one runs.
#
#   bash bench/gpu_check.sh               # on the GPU machine (PYTHON=... picks the interpreter)
#   bash bench/gpu_check.sh --cpu-quick   # every step, tiny, on a CPU: checks the script where no GPU is lent
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

QUICK=0
[[ "${1:-}" == "--cpu-quick" ]] && QUICK=1
TOTAL_S=480
((QUICK)) && TOTAL_S=1200
START=$SECONDS

if ! "$PY" -c "import mak_ray, torch, ray" 2>/dev/null; then
    echo "== installing the project: pip install -e .[gpu]"
    "$PY" -m pip install -q -e '.[gpu]' || exit 1
    START=$SECONDS  # the 8 minutes are the check's, not the install's
fi

step() {  # step NAME BUDGET_S CMD...: run CMD for at most BUDGET_S seconds (and never past the total)
    local name=$1 budget=$2
    shift 2
    local left=$((TOTAL_S - (SECONDS - START)))
    ((budget > left)) && budget=$left
    if ((budget < 10)); then
        echo "== $name: skipped, the 8 minutes are spent"
        return
    fi
    echo "== $name (at most ${budget} s)"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=10 "$budget" "$@"
    local rc=$?
    if ((rc == 124 || rc == 137)); then
        echo "== $name: CUT at ${budget} s (its figures above are partial)"
    elif ((rc != 0)); then
        echo "== $name: FAILED (exit $rc)"
    fi
    echo "== $name: $((SECONDS - t0)) s"
}

if ((QUICK)); then
    step "scoring: throughput, CPU/GPU correlation, Ray Data pipeline" 600 \
        "$PY" -m bench.gpu_check --device cpu --quick
    step "training with and without Ray Train" 300 \
        "$PY" -m bench.bench_train --images 64 --batch 16 --epochs 2 --size 32 --width 8 --no-scaling
    step "host CPU per image outside the forward" 300 \
        "$PY" -m bench.bench_augment --devices cpu --images 8 --batch 4 --image-size 64 --bank 1024
    echo "== gpu_check.sh --cpu-quick: $((SECONDS - START)) s in all (no 8-minute limit applies to it)"
    exit 0
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to torch: nothing to check (bash bench/gpu_check.sh --cpu-quick checks the script)"
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
step "scoring: throughput, CPU/GPU correlation, Ray Data pipeline" 310 \
    "$PY" -m bench.gpu_check --device cuda
step "training with and without Ray Train" 120 \
    "$PY" -m bench.bench_train --gpu --images 2048 --epochs 4
step "host CPU per image outside the forward: replaced path, device path on CPU and CUDA" 50 \
    "$PY" -m bench.bench_augment --devices cpu cuda --images 64 --batch 32
echo "== gpu_check.sh: $((SECONDS - START)) s in all (limit ${TOTAL_S} s)"
