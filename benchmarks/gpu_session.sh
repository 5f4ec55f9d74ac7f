#!/usr/bin/env bash
# The GPU figures of docs/results.md in two parts that each fit one 10-minute call on a lent
# H100/H200 (issue 11). Run from the repository root with dmjd importable (pip install -e . or
# PYTHONPATH=src):
#
#   benchmarks/gpu_session.sh repro      OUT FMNIST_DIR   # reproduction benchmark, gpu testbed (<= 7 min)
#   benchmarks/gpu_session.sh throughput OUT MAE_DIR      # throughput, CUDA graphs, MFU, official MAE (<= 10 min)
#   benchmarks/gpu_session.sh loader     OUT              # loader paths incl. GPU JPEG decoding (<= 4 min)
#
# FMNIST_DIR holds Fashion-MNIST's *-ubyte.gz files; MAE_DIR is a checkout of facebookresearch/mae.
# The loader part needs the webdataset package. A 15-minute device budget holds the repro part and
# either of the others, not all three: repro first (issue 11), then throughput or loader (issue 14).
# A bare device image may lack dmjd's own dependencies (on 2026-11-28: pydantic): carry their wheels
# and install them first, e.g. `python3 -m pip install --no-index --no-deps --target /tmp/site
# WHEELS/*.whl && export PYTHONPATH=/tmp/site:$PWD/src DMJD_GIT_COMMIT=<commit>` (the device's copy
# of the tree may carry a stale .git; DMJD_GIT_COMMIT is what the reports record).
set -uo pipefail
part=${1:?repro, throughput or loader}
out=${2:?output folder}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

run() {  # run NAME SECONDS CMD...: a step with its own time limit, its log kept in $out/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  echo "== $name exit ${PIPESTATUS[0]}"
}

case $part in
  repro)
    data=${3:?Fashion-MNIST folder}
    run bench 560 "$py" -m dmjd bench --testbed gpu --output-dir "$out/bench" --data-path "$data"
    ;;
  throughput)
    mae=${3:?facebookresearch/mae checkout}
    tp="$py benchmarks/throughput.py --device cuda"
    run tp-ti-eager 70 $tp --setting vit-ti4-32 --batch 512 --data device --modes eager --steps 100 --warmup 20 \
      --output "$out/tp-ti-eager"
    run official-b16 150 "$py" benchmarks/official_mae.py --mae-dir "$mae" --setting vit-b16 --batch 256 \
      --steps 20 --warmup 5 --rounds 1 --fast-mode reduce-overhead --output "$out/official-b16"
    run tp-ti-graphs 220 $tp --setting vit-ti4-32 --batch 512 --data device --modes reduce-overhead \
      --steps 100 --warmup 20 --output "$out/tp-ti-graphs"
    run tp-b16-compile 130 $tp --setting vit-b16 --batch 256 --configs DMJD --modes default --steps 20 --warmup 5 \
      --output "$out/tp-b16-compile"
    ;;
  loader)
    run loader 230 "$py" benchmarks/loader.py --device cuda --workers 1,2,4 --images 2048 --batch 128 \
      --batches 12 --output "$out/loader"
    ;;
  *)
    echo "unknown part $part (repro, throughput or loader)" >&2
    exit 2
    ;;
esac
