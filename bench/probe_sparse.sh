#!/usr/bin/env bash
# Single-seed probes of the core method on banking77 (issue #3): sparse at 1%, 3 epochs, at the rate the
# full-split sweep chose (2.5e-3), with extra finetune options; scored on the validation carve of the
# banking77 full-data grids (bench/out/banking77-full-rows/data: train and validation carved from the training
# split; test is reported, never used to choose). One thread; run two probes side by side at most.
#   bash bench/probe_sparse.sh NAME SEED [finetune options ...]
#   e.g. bash bench/probe_sparse.sh schedule-cosine 0 --schedule cosine
# CLI names the command line to run (default: the venv's clm-explore; a probe script may stand in).
# To keep library edits out of a long probe, run a copy of the package (git archive HEAD clm_explore) from a
# venv that sees the copy, with python -P: without -P, `python -m` puts this folder first on sys.path and
# the working tree's package is imported after all.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
OUT=${OUT:-bench/out}
CLI=${CLI:-.venv/bin/clm-explore}
DATA=${DATA:-$OUT/banking77-full-rows/data}
name=$1 seed=$2
shift 2
run="$OUT/b77-probe/$name-s$seed"
mkdir -p "$OUT/b77-probe"
$CLI finetune --data "$DATA" --method sparse --lr 2.5e-3 --epochs 3 --seed "$seed" --device cpu \
    "$@" --out "$run" --overwrite --json > "$run.json"
# One line: the probe, validation accuracy after each epoch, test accuracy, train seconds (incl. preparation).
.venv/bin/python - "$run/metrics.json" "$name" "$seed" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
val = " / ".join(f"{p['accuracy']:.4f}" for p in m["val_curve"])
print(f"{sys.argv[2]:24s} seed {sys.argv[3]}  validation {val}  test {m['accuracy']:.4f}  train {m['train_seconds']:.0f} s")
PY
