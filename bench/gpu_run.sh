#!/usr/bin/env bash
# The banking77 benches on a lent GPU (bf16 autocast), in one call: run from the repository root with the
# folder of `bench/gpu_prepare.py` (.devcarry/: the model in float16, the data, plotly's wheel, wordfreq's
# figures). Stages, each logged to $OUT and stopped at a deadline so that what finished comes back:
#   1. the machine and the package versions;
#   2. bench/gpu_smoke.py: every method one epoch on the tiny model on CUDA (stops here if one fails);
#   3. bench/bench_core.py alone on the GPU: full finetuning and sparse at 1%, 3 seeds, 3 epochs, at the rates
#      chosen on the CPU's validation carve (full 1.33e-4, sparse 2.5e-3): time per epoch, peak memory,
#      accuracy and time to accuracy, as ratios measured side by side;
#   4. (only when STAGES names `batch`) the same pair at a larger batch (PROBE_BATCH, 256), seed 0, 2 epochs, at
#      the same rates: whether sparse's saving shows once a step is bound by arithmetic, not launches;
#   4b. (only when STAGES names `graphs`) the pair compiled with CUDA graphs (`--compile reduce-overhead`,
#      variants full-graphs and sparse-graphs), seeds 0-1, 3 epochs: the time per epoch once launches are
#      replayed from a graph, as ratios to full-graphs;
#   4c. (only when STAGES names `recipe`) sparse with SWA's recipe (rows in layers 4-5, the frozen layers
#      cached in float16, a constant rate, the last half averaged; 6 epochs), seeds 0-2, beside the core
#      stage's full cells: the time until it comes within 0.5 point of full (0.42 of full's time on the CPU);
#   5. (only when STAGES names `fewshot`) the 10-shot grids of other carried data sets, one lane per method;
#   6. the other methods of the full-data table, 3 seeds, 3 epochs, at the rates of the CPU table, one
#      `clm-explore bench` lane per method, all lanes at once (their seconds are shared-GPU seconds: rough).
# STAGES (default smoke,core,grid) names the stages to run, e.g. STAGES=core,batch,graphs,recipe,fewshot.
# $OUT/gpu.tar.gz holds every run's metrics and the grids' CSV files (no weights).
#
#   OUT=/tmp/gpu-out BUDGET_S=480 bash bench/gpu_run.sh
# A dry run on a CPU (the script's plumbing only): DEVICE=cpu LIMIT=200 EPOCHS=1 PY=.venv/bin/python bash bench/gpu_run.sh
set -u
OUT=${OUT:-/tmp/gpu-out}
WORK=${WORK:-/tmp/gpu-work}
CARRY=${CARRY:-.devcarry}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-0}
EPOCHS=${EPOCHS:-3}
STAGES=${STAGES:-smoke,core,grid}
[ -n "${SKIP_SMOKE:-}" ] && STAGES=${STAGES//smoke/}  # the thirtieth session's rerun spelled it so
DEADLINE=$(($(date +%s) + ${BUDGET_S:-480}))
DATA=$CARRY/data/banking77
MODEL=$WORK/model
mkdir -p "$OUT" "$WORK"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 WORDFREQ_MISSES=$OUT/wordfreq_misses.txt
# Seconds to the deadline less a reserve, at least 1 (`timeout 0` would mean no limit at all).
left() { local s=$((DEADLINE - $(date +%s) - ${1:-0})); echo $((s > 1 ? s : 1)); }
stage() { [[ ",$STAGES," == *",$1,"* ]]; }

pack() {
    (cd "$WORK" && find . \( -name '*.json' -o -name '*.jsonl' -o -name '*.csv' -o -name '*.log' \) \
        -not -path './model/*' -not -path '*/sensitivity/*' -not -name 'tokenizer*' -print0 |
        tar --null -czf "$OUT/gpu.tar.gz" -T -)
    [ -s "$WORDFREQ_MISSES" ] && echo "wordfreq stand-in misses: $(wc -l <"$WORDFREQ_MISSES")" || echo "wordfreq stand-in: no misses"
    ls -la "$OUT"
}
trap pack EXIT

# 1. the machine, the packages; plotly from its wheel, wordfreq's stand-in, the model back to float32.
nvidia-smi -L || echo "no nvidia-smi"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$CARRY"/whl/*.whl
export PYTHONPATH=$PWD:$PWD/$CARRY/site:/tmp/site
$PY - "$CARRY/model" "$MODEL" <<'EOF'
import shutil, sys
from importlib.metadata import version
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
shutil.copytree(src, dst, dirs_exist_ok=True)
tensors = load_file(src / "model.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, dst / "model.safetensors",
          metadata={"format": "pt"})
def installed(name):
    try:
        return version(name)
    except Exception:
        return "absent"
print("versions:", ", ".join(f"{p} {installed(p)}" for p in ("torch", "transformers", "peft", "accelerate", "pandas",
                                                             "numpy", "safetensors", "plotly")))
if torch.cuda.is_available():
    print("gpu:", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
EOF

# 2. every method on CUDA, tiny model.
# The tiny model's tokenizer asks wordfreq other words: its misses go to their own file.
if stage smoke; then
    WORDFREQ_MISSES=$OUT/smoke_wordfreq_misses.txt timeout "$(left 300)" $PY bench/gpu_smoke.py "$DATA" \
        --device "$DEVICE" 2>&1 | tee "$OUT/smoke.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "smoke failed: stopping"; exit 3; }
fi

# 3. the core bench, alone on the GPU; cells an earlier call finished travel in $CARRY/core and are kept.
core_pair=(--data "$DATA" --model "$MODEL" --threads 4 --limit "$LIMIT" --variants full,sparse
           --lr full=1.33e-4,sparse=2.5e-3)
if stage core; then
    [ -d "$CARRY/core" ] && cp -r "$CARRY/core" "$WORK/"
    timeout "$(left 200)" $PY bench/bench_core.py "${core_pair[@]}" --epochs "$EPOCHS" --seeds 0,1,2 \
        --out "$WORK/core" 2>&1 | tee "$OUT/core.txt"
    pkill -f "bench_core.py --cell"  # a cell the deadline cut short would hold the GPU
fi

# 4. the pair at a larger batch.
if stage batch; then
    b=${PROBE_BATCH:-256}
    timeout "$(left 150)" $PY bench/bench_core.py "${core_pair[@]}" --epochs 2 --seeds 0 --batch-size "$b" \
        --out "$WORK/core-b$b" 2>&1 | tee "$OUT/core-b$b.txt"
    pkill -f "bench_core.py --cell"
fi

# 4b. the pair with CUDA graphs; its ratios divide by full-graphs (eager full's cells are in the core stage).
if stage graphs && timeout "$(left 200)" $PY bench/gpu_smoke.py "$DATA" --device "$DEVICE" --compiled 2>&1 |
        tee "$OUT/smoke-graphs.txt" && [ "${PIPESTATUS[0]}" = 0 ]; then
    timeout "$(left 150)" $PY bench/bench_core.py --data "$DATA" --model "$MODEL" --threads 4 --limit "$LIMIT" \
        --variants full-graphs,sparse-graphs --lr full-graphs=1.33e-4,sparse-graphs=2.5e-3 --reference full-graphs \
        --epochs "$EPOCHS" --seeds 0,1 --out "$WORK/core-graphs" 2>&1 | tee "$OUT/core-graphs.txt"
    pkill -f "bench_core.py --cell"
fi

# 4c. SWA's recipe beside the core stage's full cells (the same folder: finished cells are reused, not rerun).
if stage recipe; then
    swa=sparse-top2-cached-fp16-swa
    timeout "$(left 150)" $PY bench/bench_core.py --data "$DATA" --model "$MODEL" --threads 4 --limit "$LIMIT" \
        --variants "full,$swa" --lr "full=1.33e-4,$swa=2.5e-3" --variant-epochs "$swa=6" --epochs "$EPOCHS" \
        --seeds 0,1,2 --out "$WORK/core" 2>&1 | tee "$OUT/core-recipe.txt"
    pkill -f "bench_core.py --cell"
fi

# Lanes: one `clm-explore bench` per method, all at once, then each lane's summary.
# run_lanes DATA PREFIX "SHARED OPTIONS" LANE...  (a LANE is METHOD, or METHOD=LR for a fixed rate)
run_lanes() {
    local data=$1 prefix=$2 shared=$3 lane m
    shift 3
    for lane in "$@"; do
        m=${lane%%=*}
        local rate=()
        [[ $lane == *=* ]] && rate=(--lr "$lane")
        # shellcheck disable=SC2086  # $shared is a list of options
        OMP_NUM_THREADS=2 timeout "$(left 15)" $PY -m clm_explore.cli bench --data "$data" --model "$MODEL" \
            --methods "$m" --limit "$LIMIT" --device "$DEVICE" "${rate[@]}" $shared --out "$WORK/$prefix-$m" \
            >"$WORK/$prefix-$m.log" 2>&1 &
    done
    wait
    for lane in "$@"; do
        m=${lane%%=*}
        echo "== $prefix $m"; tail -n 3 "$WORK/$prefix-$m.log"
        [ -f "$WORK/$prefix-$m/results.csv" ] && cat "$WORK/$prefix-$m/results.csv"
    done
}

# 5. (only when STAGES names `fewshot`) the 10-shot grids of FEWSHOT_DATA (carried data sets; default snips,
#    trec6 and hint3_sofmattress), one data set at a time, every method of FEWSHOT_METHODS with its own rate
#    sweep on validation (--tune-lr), FEWSHOT_SEEDS seeds (3), FEWSHOT_EPOCHS epochs (10, the published grids').
if stage fewshot; then
    all=full,sparse,sparse_merged,head,bitfit,lora,prefix,layers,random,fisher,gradient
    IFS=, read -r -a methods <<<"${FEWSHOT_METHODS:-$all}"
    for name in ${FEWSHOT_DATA:-snips trec6 hint3_sofmattress}; do
        run_lanes "$CARRY/data/$name" "$name-10shot" \
            "--shots 10 --tune-lr --tune-widen 0 --seeds ${FEWSHOT_SEEDS:-3} --epochs ${FEWSHOT_EPOCHS:-10}" "${methods[@]}"
    done
fi

# 6. the other methods of banking77's full-data table.
stage grid || exit 0
run_lanes "$DATA" grid "--seeds 3 --epochs $EPOCHS" head=9e-2 bitfit=9e-3 lora=4.5e-3 prefix=3e-2 layers=6e-4 \
    random=2.5e-3 fisher=2.5e-3 gradient=2.5e-3
