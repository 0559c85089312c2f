#!/usr/bin/env bash
# The published method grids of BENCHMARKS.md, in lanes that run two at a time side by side on a 2-core machine,
# one thread per cell (OMP_NUM_THREADS=1):
#   bash bench/tables.sh core     # banking77 full data, sparse vs full, 3 seeds (twice: before and after the
#                                 # scoring floor); then the trec6 full-data grid; the banking77 full-data
#                                 # learning-rate sweep
#   bash bench/tables.sh fewshot  # 10-shot grids (LR tuned on validation), the budget sweep, banking77 10-shot,
#                                 # hint3 on full data
#   bash bench/tables.sh fulldata # snips full data, every method; banking77 full data, the other methods;
#                                 # the budget sweep on trec6 full data
#   bash bench/tables.sh fewshot_long # 10-shot with three times the epochs: full, sparse, random, fisher
#                                 # (made with the 5-epoch head warm-up that was the default then)
#   bash bench/tables.sh fewshot_probes # variants of those grids scored on development rows (probe_fewshot.py)
#   bash bench/tables.sh fewshot_auto # the 10-shot grids again with the automatic head warm-up
#   bash bench/tables.sh score_tuned # the row score chosen on validation (--tune-score) on the 10-shot grids;
#                                 # hint3 and trec6 full data with the automatic warm-up and swept rates
#   bash bench/tables.sh out_of_scope # hint3 again, with metrics.json's out_of_scope scores (abstention
#                                 # below a threshold chosen on validation): sofmattress full data and
#                                 # 10-shot, both head warm-ups; curekart full data with swept rates, and
#                                 # 10-shot; powerplay11 full data
#   bash bench/tables.sh rows_again # twenty-first session: random and Fisher rows at the automatic warm-up on
#                                 # the 10-shot grids but hint3 (5 seeds), full's best recipe on banking77; the layer floor
#                                 # at 4 on development rows; trec6 full data against sparse's Taylor rows
#   bash bench/tables.sh head_start # twenty-second session: where training's head starts in 10-shot
#                                 # (--cold-head, no warm-up) on development rows, then on snips and trec6 test
#   bash bench/tables.sh head_init # twenty-third session: a centroid head (--head-init centroid), random rows
#                                 # and Taylor rows without the warm-up, on development rows; then banking77 and
#                                 # hint3 10-shot test; banking77 time to accuracy on seeds 3-4
#   bash bench/tables.sh averaging # twenty-fourth session: the trained weights averaged over the last half of
#                                 # the steps (--average-last), with linear decay and a constant rate, and
#                                 # label smoothing, on 10-shot development rows; banking77 10-shot test and
#                                 # full-data probes (validation carve)
#   bash bench/tables.sh same_run # twenty-fifth session: SWA's time to accuracy beside full finetuning in one
#                                 # run (seeds 0-4, two lanes); the SWA recipe on trec6 10-shot development rows
#   bash bench/tables.sh swa_rows # twenty-sixth session: SWA's recipe given to the baselines too: random, Fisher
#                                 # and full on banking77 10-shot test; full, sparse, random, Fisher on trec6 full
#                                 # data; full and sparse on hint3_sofmattress full data (5 seeds, both warm-ups);
#                                 # full on banking77 full data (seeds 1-2)
#   bash bench/tables.sh intervals # twenty-seventh session: seeds added where a target's 95% interval hinged on
#                                 # them (hint3 10-shot full finetuning with abstention, trec6 10-shot seeds 3-4,
#                                 # snips 10-shot seeds 5-9, snips full data seeds 3-4, banking77 full data
#                                 # seeds 3-4: sparse at 3 epochs, both at 6)
#   bash bench/tables.sh oracle   # twenty-eighth session: sparse with the rows full finetuning moved most
#                                 # (bench/probe_oracle.py): banking77 full data, seeds 0-2 (validation carve);
#                                 # snips, trec6 and hint3_sofmattress 10-shot, 5 seeds
#   bash bench/tables.sh widened  # thirty-second session: the 10-shot grids with the sweep widened past its edge
#   bash bench/tables.sh widened_rows  # thirty-third session: random, Fisher and gradient rows and full finetuning
#                                 # with the widened sweep (10-shot), hint3 full data, 10-shot budget sweeps
#   bash bench/tables.sh widened_full  # thirty-fourth session: trec6 full data's baselines, widened sweep
#   bash bench/tables.sh mixed    # thirty-fourth/-fifth sessions: half the budget on top rows, half on random
#                                 # rows (mask.random_share=0.5), 10-shot development rows
#   bash bench/tables.sh snips_3ep  # thirty-fifth session: snips full data's baselines over 3 epochs
#   bash bench/tables.sh model_fisher  # thirty-sixth session: Fisher rows at labels drawn from the model
#                                 # (sensitivity.fisher_labels=model, 4 draws), 10-shot development rows, 5 seeds
#   bash bench/tables.sh snips_3ep_sweep  # thirty-sixth session: snips full data's baselines, 3-epoch sweep
#   bash bench/tables.sh snips_3ep_rows   # thirty-seventh session: snips full data's sparse, random, Fisher and
#                                         # gradient rows and the probe, 3-epoch sweep
#   bash bench/tables.sh within           # thirty-seventh session: the default mask's count per map, its rows
#                                         # re-picked uniformly inside each map, and the random mask's count per map
#                                         # filled with top rows (10-shot development rows, 5 seeds; trec6 in the
#                                         # thirty-eighth)
#   bash bench/tables.sh heads            # thirty-eighth session: uniform rows in the attention maps only, and the
#                                         # attention maps' top rows spread over the heads (same rows and seeds;
#                                         # spread_heads then on the grids' test splits)
#   bash bench/tables.sh heads_full       # thirty-eighth session: spread_heads on snips and banking77 full data,
#                                         # 3 epochs, 3 seeds
#   bash bench/tables.sh heads_grids      # thirty-eighth session: the four 10-shot row grids with
#                                         # bench --spread-heads
#   bash bench/tables.sh snips_3ep_merged # thirty-ninth session: snips full data's sparse_merged, 3-epoch sweep
#   bash bench/tables.sh cold_heads       # thirty-ninth session: spread_heads with training from the loaded head,
#                                         # 10-shot development rows, then snips' test split over 10 seeds; full
#                                         # finetuning from the loaded head at its swept rate (snips, trec6, hint3)
#   bash bench/tables.sh cold_baselines   # fortieth session: LoRA, BitFit, prefix tuning and whole layers trained
#                                         # from the loaded head, each with its own sweep, on the four 10-shot sets
#   bash bench/tables.sh scoring_seed     # fortieth session: the scoring's seed following the run's, development rows
#   bash bench/tables.sh sampled  # twenty-ninth session: rows drawn in proportion to their score
#                                 # (mask.strategy=sampled) on 10-shot development rows (snips, trec6,
#                                 # hint3_sofmattress, banking77), 5 seeds; their test splits once (not trec6)
# Each grid resumes where it stopped: rerun the same lane after an interruption. The banking77 grids
# hold fewer methods than the others: what fit the sessions' CPU time. Every sweep here but the `widened` lanes'
# is the one the grids were published with, three rates (`--tune-widen 0`); since the thirty-second session `bench --tune-lr` widens past
# an edge choice by default, and the published grids went on upwards by hand instead (upward_rate below).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
DATA=${DATA:-../shared/data}
OUT=${OUT:-bench/out}
ALL=full,sparse,sparse_merged,head,bitfit,lora,prefix,layers,random,fisher,gradient
CLI=run_cli
# `bench` exits 1 when some cells of its grid did not finish (its tables are written all the same): a lane goes on to
# its next grid, as it did before bench said so; any other failure stops the lane.
run_cli() {
    local rc=0
    .venv/bin/clm-explore "$@" || rc=$?
    if [ "$rc" -eq 1 ] && [ "$1" = bench ]; then
        echo "note: some cells of that grid did not finish (see its logs/); going on" >&2
        return 0
    fi
    return "$rc"
}

# One more rate for METHOD on a grid's validation carve (seed 0), after its `--tune-lr` grid chose its top
# rate: the grid's data_tune holds the carve as its test split. Grid: $OUT/banking77-full-METHOD-tuned and
# 3 epochs unless GRID and EPOCHS are given.
upward_rate() {
    local method=$1 lr=$2 grid=${3:-"$OUT/banking77-full-$1-tuned"} epochs=${4:-3}
    $CLI finetune --data "$grid/data_tune" --method "$method" --lr "$lr" --epochs "$epochs" --seed 0 --device cpu \
        --out "$grid/extra/$method-s0-lr$lr" --overwrite --json >/dev/null
}

# The learning rate a `--tune-lr` grid chose for METHOD: chosen_lr GRID METHOD.
chosen_lr() {
    .venv/bin/python -c "import pandas as pd; t = pd.read_csv('$1/tuning.csv'); \
print(t[t.chosen & (t.method == '$2')].lr.iloc[0])"
}

core() {
    # Learning rates chosen on validation by the banking77 --limit 3000 sweeps (BENCHMARKS.md, never test).
    .venv/bin/python bench/bench_core.py --data "$DATA/banking77" --epochs 3 --seeds 0,1,2 --threads 1 \
        --variants full,sparse,sparse-top2 --lr full=6.67e-5,sparse=5e-3,sparse-top2=5e-3 --out "$OUT/b77-core-full"
    # All again, side by side, after finetune began scoring only the layers the mask may pick (third
    # session; it ran as two processes, full in one lane and the sparse variants in the other).
    .venv/bin/python bench/bench_core.py --data "$DATA/banking77" --epochs 3 --seeds 0,1,2 --threads 1 \
        --variants full,sparse,sparse-top2 --lr full=6.67e-5,sparse=5e-3,sparse-top2=5e-3 --out "$OUT/b77-core-floor"
    $CLI bench --data "$DATA/trec6" --methods "$ALL" --seeds 3 --epochs 3 \
        --out "$OUT/trec6-full"
    # Fourth session: the learning rates swept on the full train split itself (seed 0, scored on the 10%
    # validation carve; the rates above came from the 3,000-row sample).
    for v in sparse-top2=5e-3,1e-2,2.5e-3 full=6.67e-5,1.33e-4,3.33e-5 sparse=1.25e-3,2.5e-3,5e-3; do
        for lr in $(tr , ' ' <<<"${v#*=}"); do
            .venv/bin/python bench/bench_core.py --curve-split validation --variants "${v%%=*}" \
                --lr "${v%%=*}=$lr" --epochs 3 --seeds 0 --threads 1 --out "$OUT/b77-sweep/${v%%=*}-lr$lr"
        done
    done
    .venv/bin/python bench/bench_core.py --curve-split validation --variants full --lr full=2.67e-4 --epochs 3 \
        --seeds 0 --threads 1 --out "$OUT/b77-sweep/full-lr2.67e-4"  # full chose the grid's top: one step more
    .venv/bin/python bench/bench_core.py --variants sparse-top2 --lr sparse-top2=1.25e-3 --curve-split validation \
        --epochs 3 --seeds 0 --threads 1 --out "$OUT/b77-sweep/sparse-top2-lr1.25e-3"
    # ... and the core run at the rates that sweep chose.
    .venv/bin/python bench/bench_core.py --data "$DATA/banking77" --epochs 3 --seeds 0,1,2 --threads 1 \
        --variants full,sparse,sparse-top2 --lr full=1.33e-4,sparse=2.5e-3,sparse-top2=2.5e-3 --out "$OUT/b77-core-tuned"
}

fewshot() {
    # Made before the automatic head warm-up (hint3 and the 10-shot sets now get a 1-epoch one, which bench
    # cannot turn off): a rerun in a fresh folder gives today's defaults, not the published 10-epoch tables.
    for name in snips trec6 hint3_sofmattress; do
        $CLI bench --data "$DATA/$name" --shots 10 --methods "$ALL" --seeds 3 --epochs 10 --tune-lr --tune-widen 0 \
            --out "$OUT/$name-10shot"
    done
    # The budget sweep on trec6 10-shot at the learning rates that grid chose on validation; its 1% cells
    # are the grid's own (same data, seeds and learning rates), so only 0.1% and 5% run here.
    lrs=$(.venv/bin/python -c "import pandas as pd; t = pd.read_csv('$OUT/trec6-10shot/tuning.csv'); \
t = t[t.chosen & t.method.isin(['sparse', 'random', 'fisher'])]; print(','.join(f'{m}={v}' for m, v in zip(t.method, t.lr)))")
    $CLI bench --data "$DATA/trec6" --shots 10 --methods sparse,random,fisher --budgets 0.001,0.05 \
        --seeds 3 --epochs 10 --lr "$lrs" --out "$OUT/trec6-10shot-budgets"
    # ... and all three budgets again at one common rate, the row methods' default.
    $CLI bench --data "$DATA/trec6" --shots 10 --methods sparse,random,fisher --budgets 0.001,0.01,0.05 \
        --seeds 3 --epochs 10 --lr sparse=5e-3,random=5e-3,fisher=5e-3 --out "$OUT/trec6-10shot-budgets-lr5e-3"
    # banking77 10-shot: full and sparse with their LR sweeps, then random rows at sparse's chosen LR.
    $CLI bench --data "$DATA/banking77" --shots 10 --methods full,sparse --seeds 3 --epochs 5 --tune-lr --tune-widen 0 \
        --out "$OUT/banking77-10shot"
    lr=$(chosen_lr "$OUT/banking77-10shot" sparse)
    $CLI bench --data "$DATA/banking77" --shots 10 --methods random --seeds 3 --epochs 5 --lr "random=$lr" \
        --out "$OUT/banking77-10shot-random"
    # ... the other row methods at that LR too (third session), then the rest with their own sweeps.
    $CLI bench --data "$DATA/banking77" --shots 10 --methods fisher,gradient,sparse_merged --seeds 3 --epochs 5 \
        --lr "fisher=$lr,gradient=$lr,sparse_merged=$lr" --out "$OUT/banking77-10shot-rows"
    # ... and the other baselines with their own sweeps (fourth session).
    $CLI bench --data "$DATA/banking77" --shots 10 --methods head,layers,bitfit,lora,prefix --seeds 3 --epochs 5 \
        --tune-lr --tune-widen 0 --out "$OUT/banking77-10shot-tuned"
    # hint3 on its full training split (328 rows; 10 epochs as in 10-shot), every method with its sweep.
    $CLI bench --data "$DATA/hint3_sofmattress" --methods "$ALL" --seeds 3 --epochs 10 --tune-lr --tune-widen 0 \
        --out "$OUT/hint3_sofmattress-full"
}

fulldata() {
    # Fifth session: snips on its full training split (1 epoch: 13,084 rows) in two folders, the 6 row and
    # full methods in one and the 5 other baselines in the other (they ran side by side, one per lane) ...
    $CLI bench --data "$DATA/snips" --methods full,sparse,random,fisher,gradient,sparse_merged --seeds 3 \
        --epochs 1 --out "$OUT/snips-full"
    $CLI bench --data "$DATA/snips" --methods layers,lora,bitfit,prefix,head --seeds 3 --epochs 1 \
        --out "$OUT/snips-full-others"
    # ... and full vs sparse over 3 epochs (two folders, run side by side; seed 0 in the sixth session, seeds
    # 1-2 in the seventh, resuming the same folders).
    $CLI bench --data "$DATA/snips" --methods full --seeds 3 --epochs 3 --out "$OUT/snips-full-3ep"
    $CLI bench --data "$DATA/snips" --methods sparse --seeds 3 --epochs 3 --out "$OUT/snips-full-3ep-b"
    # ... and banking77 on full data beyond full and sparse: random and Fisher rows at sparse's rate (3 seeds),
    # the other methods one seed each (gradient and merged-token rows at sparse's rate, the rest at defaults).
    $CLI bench --data "$DATA/banking77" --methods random,fisher --seeds 3 --epochs 3 \
        --lr random=2.5e-3,fisher=2.5e-3 --out "$OUT/banking77-full-rows"
    $CLI bench --data "$DATA/banking77" --methods lora,layers,gradient,bitfit,prefix,head,sparse_merged --seeds 1 \
        --epochs 3 --lr gradient=2.5e-3,sparse_merged=2.5e-3 --out "$OUT/banking77-full-others"
    # Seeds 1 and 2 of those (the sixth session ran the next two commands side by side): the second folder
    # starts as a copy of the first, so each command resumes from seed 0's finished cells of its methods.
    [ -d "$OUT/banking77-full-others-b" ] || cp -r "$OUT/banking77-full-others" "$OUT/banking77-full-others-b"
    $CLI bench --data "$DATA/banking77" --methods lora,layers,gradient,bitfit --seeds 3 --epochs 3 \
        --lr gradient=2.5e-3 --out "$OUT/banking77-full-others"
    $CLI bench --data "$DATA/banking77" --methods prefix,head,sparse_merged --seeds 3 --epochs 3 \
        --lr sparse_merged=2.5e-3 --out "$OUT/banking77-full-others-b"
    # The budget sweep on full data: trec6 at 0.1% and 5% (the 1% cells are trec6-full's: same data, seeds,
    # epochs and default rates); sparse, random and (added in the sixth session, resuming the folder) fisher rows.
    $CLI bench --data "$DATA/trec6" --methods sparse,random,fisher --budgets 0.001,0.05 --seeds 3 --epochs 3 \
        --out "$OUT/trec6-full-budgets"
    # Seventh session: LoRA and prefix tuning on banking77 full data with their own rate sweeps (default x
    # {1/3, 1, 3} on the validation carve), two lanes side by side. Both chose their top rate, so the sweep
    # went on upwards, one rate at a time, on the same carve (data_tune: its test split is the validation
    # carve), and LoRA's 3 seeds ran again at the best of those (4.5e-3).
    $CLI bench --data "$DATA/banking77" --methods lora --tune-lr --tune-widen 0 --seeds 3 --epochs 3 --out "$OUT/banking77-full-lora-tuned"
    $CLI bench --data "$DATA/banking77" --methods prefix --tune-lr --tune-widen 0 --seeds 3 --epochs 3 --out "$OUT/banking77-full-prefix-tuned"
    for lr in 0.0045 0.0135; do upward_rate lora $lr; done
    $CLI bench --data "$DATA/banking77" --methods lora --lr lora=0.0045 --seeds 3 --epochs 3 --out "$OUT/banking77-full-lora-0.0045"
    upward_rate prefix 0.09
    # Eighth session: BitFit, whole-layer selection and the linear probe the same way. BitFit chose its top
    # rate, so two upward rates ran on the carve and its 3 seeds ran at the best (9e-3); layers chose its
    # top rate, one upward rate (1.8e-3) scored below it, and the grid went on at 6e-4; the probe chose its
    # top rate, one upward rate (9e-2) scored higher, and 3 seeds ran there too.
    $CLI bench --data "$DATA/banking77" --methods bitfit --tune-lr --tune-widen 0 --seeds 3 --epochs 3 --out "$OUT/banking77-full-bitfit-tuned"
    for lr in 0.009 0.027; do upward_rate bitfit $lr; done
    $CLI bench --data "$DATA/banking77" --methods bitfit --lr bitfit=0.009 --seeds 3 --epochs 3 --out "$OUT/banking77-full-bitfit-0.009"
    $CLI bench --data "$DATA/banking77" --methods layers --tune-lr --tune-widen 0 --seeds 3 --epochs 3 --out "$OUT/banking77-full-layers-tuned"
    upward_rate layers 0.0018
    $CLI bench --data "$DATA/banking77" --methods head --tune-lr --tune-widen 0 --seeds 3 --epochs 3 --out "$OUT/banking77-full-head-tuned"
    upward_rate head 0.09
    $CLI bench --data "$DATA/banking77" --methods head --lr head=0.09 --seeds 3 --epochs 3 --out "$OUT/banking77-full-head-0.09"
    # Ninth session: snips full data (1 epoch) again, every method with its own rate sweep (--tune-lr --tune-widen 0), in two
    # folders side by side. Where a method's sweep chose its default rate, its three cells were copied from the
    # fifth session's grids above before the grid reached them (same data, seeds, epochs and rate; runs are
    # deterministic here); without the copies the grid trains them again.
    $CLI bench --data "$DATA/snips" --methods full,sparse,sparse_merged,lora,head --tune-lr --tune-widen 0 --seeds 3 --epochs 1 \
        --out "$OUT/snips-full-tuned"
    $CLI bench --data "$DATA/snips" --methods random,fisher,gradient,layers,bitfit,prefix --tune-lr --tune-widen 0 --seeds 3 \
        --epochs 1 --out "$OUT/snips-full-tuned-b"
    # Tenth session: prefix tuning, BitFit and the probe chose their top rate there, so the sweep went on
    # upwards on the same validation split, one rate at a time while the score rose, and 3 seeds ran at the
    # best rate where it moved (BitFit's 9e-3 scored below its 3e-3: no new cells).
    for lr in 0.09 0.27; do upward_rate prefix $lr "$OUT/snips-full-tuned-b" 1; done
    upward_rate bitfit 0.009 "$OUT/snips-full-tuned-b" 1
    for lr in 0.09 0.27 0.81; do upward_rate head $lr "$OUT/snips-full-tuned" 1; done
    $CLI bench --data "$DATA/snips" --methods prefix --lr prefix=0.09 --seeds 3 --epochs 1 --out "$OUT/snips-full-prefix-0.09"
    $CLI bench --data "$DATA/snips" --methods head --lr head=0.27 --seeds 3 --epochs 1 --out "$OUT/snips-full-head-0.27"
}

fewshot_long() {
    # Fourteenth session: 10-shot again with three times the epochs (30; banking77 15, three times its 5),
    # full finetuning, sparse, random and Fisher rows (banking77: full and sparse), every method with its own
    # rate sweep on the validation carve. Two grids ran side by side, one per lane.
    for name in trec6 snips hint3_sofmattress; do
        $CLI bench --data "$DATA/$name" --shots 10 --methods full,sparse,random,fisher --seeds 3 --epochs 30 \
            --tune-lr --tune-widen 0 --out "$OUT/$name-10shot-e30"
    done
    $CLI bench --data "$DATA/banking77" --shots 10 --methods full,sparse --seeds 3 --epochs 15 --tune-lr --tune-widen 0 \
        --out "$OUT/banking77-10shot-e15"
    # ... and random and Fisher rows there at sparse's chosen rate, as in the 5-epoch banking77 10-shot table.
    lr=$(chosen_lr "$OUT/banking77-10shot-e15" sparse)
    $CLI bench --data "$DATA/banking77" --shots 10 --methods random,fisher --seeds 3 --epochs 15 \
        --lr "random=$lr,fisher=$lr" --out "$OUT/banking77-10shot-e15-rows"
}

fewshot_probes() {
    # Fifteenth session: variants of the 30-epoch (banking77 15) 10-shot grids above, scored on development
    # rows, never test (bench/probe_fewshot.py; results in GRID/probes/dev.tsv). Made with the library as it
    # stood before the automatic head warm-up (5 epochs then: w5 pins it), at the rates those grids chose.
    local probe=".venv/bin/python bench/probe_fewshot.py" s5=0,1,2,3,4 w5=sensitivity.warmup_epochs=5 g
    g="$OUT/trec6-10shot-e30"
    $probe "$g" default sparse 5e-3 $s5 $w5
    $probe "$g" random random 5e-3 $s5 $w5
    $probe "$g" rank sparse 5e-3 $s5 sensitivity.normalise=rank $w5
    $probe "$g" warm50 sparse 5e-3 $s5 sensitivity.warmup_epochs=50
    $probe "$g" mincount2 sparse 5e-3 $s5 mining.min_count=2 $w5
    $probe "$g" minlayer0 sparse 5e-3 $s5 mask.min_layer=0 $w5
    $probe "$g" biases sparse 5e-3 $s5 mask.train_biases=true $w5
    $probe "$g" taylor sparse 5e-3 $s5 sensitivity.score=taylor $w5
    $probe "$g" cost1 sparse 5e-3 $s5 mask.cost_aware=1.0 $w5
    $probe "$g" fisher fisher 5e-3 $s5 $w5
    $probe "$g" warm1 sparse 5e-3 $s5 sensitivity.warmup_epochs=1
    $probe "$g" warm2 sparse 5e-3 $s5 sensitivity.warmup_epochs=2
    $probe "$g" warm0 sparse 5e-3 $s5 sensitivity.warmup_epochs=0
    $probe "$g" full full 2e-4 $s5 $w5
    $probe "$g" full-warm1 full 2e-4 $s5 sensitivity.warmup_epochs=1
    $probe "$g" taylor-warm1 sparse 5e-3 $s5 sensitivity.score=taylor sensitivity.warmup_epochs=1
    $probe "$g" full-warm0 full 2e-4 $s5 sensitivity.warmup_epochs=0
    $probe "$g" random-warm1 random 5e-3 $s5 sensitivity.warmup_epochs=1
    g="$OUT/snips-10shot-e30"
    $probe "$g" default sparse 5e-3 $s5 $w5
    $probe "$g" warm1 sparse 5e-3 $s5 sensitivity.warmup_epochs=1
    $probe "$g" mincount2 sparse 5e-3 $s5 mining.min_count=2 $w5
    $probe "$g" random random 5e-3 $s5 $w5
    $probe "$g" warm50 sparse 5e-3 $s5 sensitivity.warmup_epochs=50
    $probe "$g" taylor sparse 5e-3 $s5 sensitivity.score=taylor $w5
    $probe "$g" taylor-warm1 sparse 5e-3 $s5 sensitivity.score=taylor sensitivity.warmup_epochs=1
    $probe "$g" full full 6.67e-5 $s5 $w5
    g="$OUT/hint3_sofmattress-10shot-e30"
    $probe "$g" default sparse 1.67e-3 $s5 $w5
    $probe "$g" random random 1.67e-3 $s5 $w5
    $probe "$g" taylor sparse 1.67e-3 $s5 sensitivity.score=taylor $w5
    $probe "$g" warm1 sparse 1.67e-3 $s5 sensitivity.warmup_epochs=1
    g="$OUT/banking77-10shot-e15"
    $probe "$g" default sparse 5e-3 0,1,2 $w5
    $probe "$g" taylor sparse 5e-3 0,1,2 sensitivity.score=taylor $w5
    $probe "$g" warm1 sparse 5e-3 0,1,2 sensitivity.warmup_epochs=1
    # Taylor rows on banking77 full data, the sixth session's single-seed probe setting.
    bash bench/probe_sparse.sh taylor 0 --score taylor
    # How far the 5-epoch warm-up takes the head.
    .venv/bin/python bench/probe_head_warmup.py "$OUT"/{trec6,snips,hint3_sofmattress}-10shot-e30 "$OUT/banking77-10shot-e15"
}

fewshot_auto() {
    # Fifteenth session: the 10-shot grids again with the automatic head warm-up (1 epoch below 20 rows per
    # label), every rate swept again; same shots and seeds as fewshot_long. Two lanes: the first three grids
    # and the trec6 checks in one, banking77 in the other.
    $CLI bench --data "$DATA/trec6" --shots 10 --methods full,sparse,random,fisher --seeds 3 --epochs 30 \
        --tune-lr --tune-widen 0 --out "$OUT/trec6-10shot-e30-auto"
    for name in snips hint3_sofmattress; do
        $CLI bench --data "$DATA/$name" --shots 10 --methods full,sparse --seeds 3 --epochs 30 --tune-lr --tune-widen 0 \
            --out "$OUT/$name-10shot-e30-auto"
    done
    # On test, once chosen: Taylor rows on trec6 at sparse's chosen rate (they led on development rows), and
    # full finetuning at the rate the 5-epoch-warm-up grid had chosen (this grid's 59-row carve chose 6.67e-5).
    local g="$OUT/trec6-10shot-e30-auto"
    .venv/bin/python bench/probe_fewshot.py --test "$g" taylor sparse "$(chosen_lr "$g" sparse)" 0,1,2 sensitivity.score=taylor
    .venv/bin/python bench/probe_fewshot.py --test "$g" full-lr2e-4 full 2e-4 0,1,2
    $CLI bench --data "$DATA/banking77" --shots 10 --methods full,sparse --seeds 3 --epochs 15 --tune-lr --tune-widen 0 \
        --out "$OUT/banking77-10shot-e15-auto"
    # Taylor rows on the other three test splits too, for the record (development rows chose Fisher there).
    for g in "$OUT"/{snips,hint3_sofmattress}-10shot-e30-auto "$OUT/banking77-10shot-e15-auto"; do
        .venv/bin/python bench/probe_fewshot.py --test "$g" taylor sparse "$(chosen_lr "$g" sparse)" 0,1,2 sensitivity.score=taylor
    done
}

score_tuned() {
    # Sixteenth session, in order; the session ran them in two lanes (hint3 full data, the 10-shot grids and
    # the budget sweep in one; trec6 full data and the probes in the other). The 10-shot grids sweep the row
    # score with the rate on each grid's validation carve (same shots and seeds as fewshot_auto; trec6's full
    # rows again, for a self-contained table).
    $CLI bench --data "$DATA/hint3_sofmattress" --methods full,sparse,random,fisher --seeds 3 --epochs 10 \
        --tune-lr --tune-widen 0 --out "$OUT/hint3_sofmattress-full-auto"
    $CLI bench --data "$DATA/trec6" --shots 10 --methods full,sparse --seeds 3 --epochs 30 --tune-lr --tune-widen 0 --tune-score \
        --out "$OUT/trec6-10shot-e30-tunescore"
    for name in snips hint3_sofmattress; do
        $CLI bench --data "$DATA/$name" --shots 10 --methods sparse --seeds 3 --epochs 30 --tune-lr --tune-widen 0 --tune-score \
            --out "$OUT/$name-10shot-e30-tunescore"
    done
    $CLI bench --data "$DATA/banking77" --shots 10 --methods sparse --seeds 3 --epochs 15 --tune-lr --tune-widen 0 --tune-score \
        --out "$OUT/banking77-10shot-e15-tunescore"
    # The budget sweep on trec6 10-shot at the rate and row score the 1% carve chose (its 1% sparse cells are
    # trec6-10shot-e30-tunescore's, copied in by the session), random and unrestricted Fisher rows beside it.
    $CLI bench --data "$DATA/trec6" --shots 10 --methods sparse,random,fisher --budgets 0.001,0.01,0.05 --seeds 3 \
        --epochs 30 --lr sparse=5e-3,random=5e-3,fisher=5e-3 --score sparse=taylor --out "$OUT/trec6-10shot-e30-budgets-taylor"
    $CLI bench --data "$DATA/trec6" --methods full,sparse --seeds 3 --epochs 3 --tune-lr --tune-widen 0 --out "$OUT/trec6-full-tuned"
    # Then sparse's row score swept too (the session copied trec6-full-tuned's finished Fisher cells into this
    # folder first, the same runs, rather than train them again).
    $CLI bench --data "$DATA/trec6" --methods sparse --seeds 3 --epochs 3 --tune-lr --tune-widen 0 --tune-score \
        --out "$OUT/trec6-full-tunescore"
    # Full finetuning's head warm-up (1 epoch, the automatic length at 10 shots, or 5) on development rows.
    for g in snips:6.67e-5 hint3_sofmattress:2e-4; do
        for w in 1 5; do
            .venv/bin/python bench/probe_fewshot.py "$OUT/${g%%:*}-10shot-e30-tunescore" "full-warm$w" full "${g#*:}" \
                0,1,2,3,4 "sensitivity.warmup_epochs=$w"
        done
    done
}

out_of_scope() {
    # Twentieth session, two lanes (sofmattress full data then its 5-epoch warm-up probes, in one; the 10-shot
    # grid in the other; then curekart in two folders, one per pair of methods). The sofmattress rates are the
    # ones its carves chose in the sixteenth session (the cells' plain accuracies repeat that session's).
    local lrs=full=2e-4,sparse=5e-3,random=5e-3,fisher=5e-3
    $CLI bench --data "$DATA/hint3_sofmattress" --methods full,sparse,random,fisher --seeds 3 --epochs 10 \
        --lr "$lrs" --out "$OUT/hint3_sofmattress-full-oos"
    $CLI bench --data "$DATA/hint3_sofmattress" --shots 10 --methods full,sparse,random,fisher --seeds 3 --epochs 30 \
        --lr "$lrs" --out "$OUT/hint3_sofmattress-10shot-e30-oos"
    for g in full-oos 10shot-e30-oos; do
        .venv/bin/python bench/probe_fewshot.py --test "$OUT/hint3_sofmattress-$g" full-warm5 full 2e-4 0,1,2 \
            sensitivity.warmup_epochs=5
        .venv/bin/python bench/probe_fewshot.py --test "$OUT/hint3_sofmattress-$g" sparse-warm5 sparse 5e-3 0,1,2 \
            sensitivity.warmup_epochs=5
    done
    $CLI bench --data "$DATA/hint3_curekart" --methods full,sparse --seeds 3 --epochs 10 --tune-lr --tune-widen 0 \
        --out "$OUT/hint3_curekart-full-oos"
    $CLI bench --data "$DATA/hint3_curekart" --methods random,fisher --seeds 3 --epochs 10 --tune-lr --tune-widen 0 \
        --out "$OUT/hint3_curekart-full-oos-rf"
    .venv/bin/python bench/probe_fewshot.py --test "$OUT/hint3_curekart-full-oos" full-warm5 full 2e-4 0,1,2 \
        sensitivity.warmup_epochs=5
    .venv/bin/python bench/probe_fewshot.py --test "$OUT/hint3_curekart-full-oos" sparse-warm5 sparse 5e-3 0,1,2 \
        sensitivity.warmup_epochs=5
    # curekart 10-shot at the rates its full-data carve chose (two folders, the same shots: one lane each)
    $CLI bench --data "$DATA/hint3_curekart" --shots 10 --methods full --seeds 3 --epochs 30 --lr full=2e-4 \
        --out "$OUT/hint3_curekart-10shot-e30-oos-full"
    $CLI bench --data "$DATA/hint3_curekart" --shots 10 --methods sparse,random,fisher --seeds 3 --epochs 30 \
        --lr sparse=5e-3,random=5e-3,fisher=5e-3 --out "$OUT/hint3_curekart-10shot-e30-oos"
    .venv/bin/python bench/probe_fewshot.py --test "$OUT/hint3_curekart-10shot-e30-oos-full" full-warm5 full 2e-4 \
        0,1,2 sensitivity.warmup_epochs=5
    .venv/bin/python bench/probe_fewshot.py --test "$OUT/hint3_curekart-10shot-e30-oos" sparse-warm5 sparse 5e-3 \
        0,1,2 sensitivity.warmup_epochs=5
    # powerplay11 full data, rates swept (full chose 6e-4, sparse and random 5e-3), then the 5-epoch warm-ups
    $CLI bench --data "$DATA/hint3_powerplay11" --methods full --seeds 3 --epochs 10 --tune-lr --tune-widen 0 \
        --out "$OUT/hint3_powerplay11-full-oos"
    $CLI bench --data "$DATA/hint3_powerplay11" --methods sparse,random --seeds 3 --epochs 10 --tune-lr --tune-widen 0 \
        --out "$OUT/hint3_powerplay11-full-oos-sr"
    .venv/bin/python bench/probe_fewshot.py --test "$OUT/hint3_powerplay11-full-oos" full-warm5 full 6e-4 0,1,2 \
        sensitivity.warmup_epochs=5
    .venv/bin/python bench/probe_fewshot.py --test "$OUT/hint3_powerplay11-full-oos-sr" sparse-warm5 sparse 5e-3 \
        0,1,2 sensitivity.warmup_epochs=5
}

rows_again() {
    # Twenty-first session, two lanes: banking77 10-shot (then trec6 full data, 5 seeds) in one; the trec6 and
    # snips 10-shot grids, the development-row probes, trec6 full data's row masks and full's best banking77
    # recipe in the other. Seeds 3-4 were added before reading them: the 5-seed means are the reported ones.
    $CLI bench --data "$DATA/banking77" --shots 10 --methods sparse,random,fisher --seeds 5 --epochs 15 \
        --lr sparse=5e-3,random=5e-3,fisher=5e-3 --out "$OUT/banking77-10shot-e15-auto-rows"
    .venv/bin/python bench/probe_fewshot.py --test "$OUT/banking77-10shot-e15-auto-rows" full-warm5 full 2e-4 \
        0,1,2,3,4 sensitivity.warmup_epochs=5
    .venv/bin/python bench/probe_fewshot.py --test "$OUT/banking77-10shot-e15-auto-rows" full-auto full 2e-4 0,1,2,3,4
    for name in trec6 snips; do
        $CLI bench --data "$DATA/$name" --shots 10 --methods sparse,random,fisher --seeds 5 --epochs 30 \
            --lr sparse=5e-3,random=5e-3,fisher=5e-3 --out "$OUT/$name-10shot-e30-auto21"
    done
    # the layer floor at 4 (rows in the top two layers) against the default floor (3), on development rows;
    # hint3's 10-shot grid is out_of_scope's
    for g in "$OUT"/{trec6,snips}-10shot-e30-auto21 "$OUT/hint3_sofmattress-10shot-e30-oos"; do
        .venv/bin/python bench/probe_fewshot.py "$g" default21 sparse 5e-3 0,1,2,3,4
        .venv/bin/python bench/probe_fewshot.py "$g" top2 sparse 5e-3 0,1,2,3,4 mask.min_layer=4
    done
    # trec6 full data: random and Fisher rows against sparse with the Taylor rows its carve chose (score_tuned)
    $CLI bench --data "$DATA/trec6" --methods sparse,random,fisher --seeds 3 --epochs 3 \
        --lr sparse=5e-3,random=5e-3,fisher=5e-3 --score sparse=taylor --out "$OUT/trec6-full-rows21"
    mkdir -p "$OUT/trec6-full-5seeds21/cells"
    cp -rn "$OUT"/trec6-full-rows21/cells/sparse-taylor-b0.01-s{0,1,2} "$OUT/trec6-full-5seeds21/cells/"
    $CLI bench --data "$DATA/trec6" --methods full,sparse --seeds 5 --epochs 3 --lr full=2e-4,sparse=5e-3 \
        --score sparse=taylor --out "$OUT/trec6-full-5seeds21"
}

head_start() {
    # Twenty-second session: where training's head starts in 10-shot (finetune --cold-head), on development rows
    # (never test), sparse at 5e-3, 5 seeds (banking77 3; the session ran them in two lanes); the grids are the twenty-first session's
    # (hint3's is out_of_scope's). Then on test where development rows chose no warm-up for sparse (snips,
    # trec6): sparse, random rows and full finetuning without it, and full's best snips recipe to 5 seeds.
    local probe=".venv/bin/python bench/probe_fewshot.py" s5=0,1,2,3,4 g
    local trec6="$OUT/trec6-10shot-e30-auto21" snips="$OUT/snips-10shot-e30-auto21"
    local hint3="$OUT/hint3_sofmattress-10shot-e30-oos" b77="$OUT/banking77-10shot-e15-auto-rows"
    $probe "$trec6" w5 sparse 5e-3 $s5 sensitivity.warmup_epochs=5
    $probe "$trec6" random-w5 random 5e-3 $s5 sensitivity.warmup_epochs=5
    $probe "$trec6" zscore sparse 5e-3 $s5 sensitivity.normalise=zscore
    $probe "$snips" zscore sparse 5e-3 $s5 sensitivity.normalise=zscore
    $probe "$trec6" taylor sparse 5e-3 $s5 sensitivity.score=taylor
    $probe "$trec6" taylor-w0 sparse 5e-3 $s5 sensitivity.score=taylor sensitivity.warmup_epochs=0
    $probe "$hint3" auto22 sparse 5e-3 $s5
    for g in "$trec6" "$snips" "$hint3"; do
        $probe "$g" w0 sparse 5e-3 $s5 sensitivity.warmup_epochs=0
        $probe "$g" cold sparse 5e-3 $s5 head_warmup=false
        $probe "$g" cold-w5 sparse 5e-3 $s5 head_warmup=false sensitivity.warmup_epochs=5
    done
    $probe "$b77" auto22 sparse 5e-3 0,1,2
    $probe "$b77" w0 sparse 5e-3 0,1,2 sensitivity.warmup_epochs=0
    $probe "$b77" cold-w5 sparse 5e-3 0,1,2 head_warmup=false sensitivity.warmup_epochs=5
    for g in "$snips" "$trec6"; do
        $probe --test "$g" w0 sparse 5e-3 $s5 sensitivity.warmup_epochs=0
        $probe --test "$g" random-w0 random 5e-3 $s5 sensitivity.warmup_epochs=0
    done
    $probe --test "$snips" full-w0 full 6.67e-5 $s5 sensitivity.warmup_epochs=0
    $probe --test "$trec6" full-w0 full 2e-4 $s5 sensitivity.warmup_epochs=0
    $probe --test "$snips" full-w5 full 6.67e-5 $s5 sensitivity.warmup_epochs=5
    $probe --test "$snips" cold sparse 5e-3 $s5 head_warmup=false
    # sparse's rate without the warm-up, on snips development rows (after the test runs above)
    $probe "$snips" w0-lr2.5e-3 sparse 2.5e-3 $s5 sensitivity.warmup_epochs=0
    $probe "$snips" w0-lr1e-2 sparse 1e-2 $s5 sensitivity.warmup_epochs=0
}

head_init() {
    # Twenty-third session: the head that training starts from, on development rows (never test), sparse at
    # 5e-3, 5 seeds (banking77 3), the twenty-second session's grids; two lanes. First the starting heads alone
    # on the frozen features, then finetuning from them; then test where development rows chose.
    local probe=".venv/bin/python bench/probe_fewshot.py" s5=0,1,2,3,4 g
    local trec6="$OUT/trec6-10shot-e30-auto21" snips="$OUT/snips-10shot-e30-auto21"
    local hint3="$OUT/hint3_sofmattress-10shot-e30-oos" b77="$OUT/banking77-10shot-e15-auto-rows"
    local centroid="sensitivity.warmup_epochs=0 sensitivity.head_init=centroid"
    .venv/bin/python bench/probe_head_start.py "$trec6" "$snips" "$hint3" "$b77"
    for g in "$trec6" "$snips" "$hint3"; do
        $probe "$g" c0 sparse 5e-3 $s5 $centroid sensitivity.centroid_scale=0.5
    done
    for g in "$trec6" "$snips"; do
        $probe "$g" c005 sparse 5e-3 $s5 $centroid sensitivity.centroid_scale=0.05
        $probe "$g" c0-cold sparse 5e-3 $s5 $centroid sensitivity.centroid_scale=0.5 head_warmup=false
        $probe "$g" random-w0 random 5e-3 $s5 sensitivity.warmup_epochs=0
        $probe "$g" zscore-w0 sparse 5e-3 $s5 sensitivity.warmup_epochs=0 sensitivity.normalise=zscore
        for rate in 2e-2 1e-3 2e-4; do
            $probe "$g" "w0-hlr$rate" sparse 5e-3 $s5 sensitivity.warmup_epochs=0 head_lr=$rate
        done
    done
    $probe "$snips" taylor-w0 sparse 5e-3 $s5 sensitivity.warmup_epochs=0 sensitivity.score=taylor
    $probe "$snips" taylor-auto sparse 5e-3 $s5 sensitivity.score=taylor
    $probe "$hint3" taylor-w0 sparse 5e-3 $s5 sensitivity.warmup_epochs=0 sensitivity.score=taylor
    $probe "$hint3" random-auto random 5e-3 $s5
    $probe "$hint3" w0-hlr2e-4 sparse 5e-3 $s5 sensitivity.warmup_epochs=0 head_lr=2e-4
    $probe "$b77" w0-hlr2e-4 sparse 5e-3 0,1,2 sensitivity.warmup_epochs=0 head_lr=2e-4
    $probe "$b77" c005 sparse 5e-3 0,1,2 $centroid sensitivity.centroid_scale=0.05
    $probe "$b77" c005-auto sparse 5e-3 0,1,2 sensitivity.head_init=centroid sensitivity.centroid_scale=0.05
    $probe --test "$hint3" auto sparse 5e-3 $s5
    $probe --test "$hint3" random-auto random 5e-3 $s5
    for g in "$b77" "$trec6" "$snips"; do
        $probe --test "$g" c005 sparse 5e-3 $s5 $centroid sensitivity.centroid_scale=0.05
    done
    # Time to accuracy on banking77 seeds 3-4, the nineteenth session's float16 pair (one lane each).
    .venv/bin/python bench/bench_core.py --data "$DATA/banking77" --epochs 3 --seeds 3,4 --threads 1 \
        --variants full --lr full=1.33e-4 --out "$OUT/ttt4-full"
    .venv/bin/python bench/bench_core.py --data "$DATA/banking77" --epochs 6 --seeds 3,4 --threads 1 \
        --variants sparse-top2-cached-fp16 --lr sparse-top2-cached-fp16=2.5e-3 --out "$OUT/ttt4-fp16"
}

averaging() {
    # Twenty-fourth session: tail averaging (SWA-style) and label smoothing, sparse at 5e-3 on the twenty-third
    # session's 10-shot grids (development rows, 5 seeds, banking77 3), then banking77 test; two lanes.
    local probe=".venv/bin/python bench/probe_fewshot.py" s5=0,1,2,3,4 seed
    local trec6="$OUT/trec6-10shot-e30-auto21" snips="$OUT/snips-10shot-e30-auto21"
    local b77="$OUT/banking77-10shot-e15-auto-rows" swa="schedule=constant average_last=0.5"
    $probe "$snips" w0-avg50 sparse 5e-3 $s5 sensitivity.warmup_epochs=0 average_last=0.5
    $probe "$snips" auto-avg50 sparse 5e-3 $s5 average_last=0.5
    $probe "$snips" w0-const sparse 5e-3 $s5 sensitivity.warmup_epochs=0 schedule=constant
    $probe "$snips" w0-const-avg50 sparse 5e-3 $s5 sensitivity.warmup_epochs=0 $swa
    $probe "$snips" w0-ls10 sparse 5e-3 $s5 sensitivity.warmup_epochs=0 label_smoothing=0.1
    $probe "$trec6" auto-ls10 sparse 5e-3 $s5 label_smoothing=0.1
    $probe "$b77" auto-avg50 sparse 5e-3 0,1,2 average_last=0.5
    $probe "$b77" const-avg50 sparse 5e-3 0,1,2 $swa
    $probe --test "$b77" auto-avg50 sparse 5e-3 $s5 average_last=0.5
    $probe --test "$b77" const-avg50 sparse 5e-3 $s5 $swa
    # banking77 full data, 3 epochs, the validation carve (probe_sparse.sh: sparse at 2.5e-3 unless --lr).
    for seed in 0 1 2; do
        bash bench/probe_sparse.sh const-avg50 "$seed" --schedule constant --average-last 0.5
    done
    bash bench/probe_sparse.sh const-avg50-lr5e-3 0 --schedule constant --average-last 0.5 --lr 5e-3
    bash bench/probe_sparse.sh full-const-avg50 0 --method full --lr 1.33e-4 --schedule constant --average-last 0.5
    # Time to accuracy with SWA's recipe (seeds 3 and 4, one lane each; then 0 and 1, then 2).
    for seed in 3 4 0 1 2; do
        .venv/bin/python bench/bench_core.py --data "$DATA/banking77" --epochs 6 --seeds "$seed" --threads 1 \
            --variants sparse-top2-cached-fp16-swa --lr sparse-top2-cached-fp16-swa=2.5e-3 --out "$OUT/ttt4-swa-s$seed"
    done
}

same_run() {
    # Twenty-fifth session: full finetuning (3 epochs) and sparse-top2 cached with SWA's recipe (6 epochs) in one
    # bench_core run per lane, seeds 0-2 in the first lane and 3-4 in the second (there the order within a seed is
    # reversed, so both lanes run both methods); the second lane then probes SWA on trec6 10-shot.
    local v=sparse-top2-cached-fp16-swa
    local pair=(--data "$DATA/banking77" --epochs 3 --variant-epochs "$v=6" --threads 1 --lr "full=1.33e-4,$v=2.5e-3")
    .venv/bin/python bench/bench_core.py "${pair[@]}" --seeds 0,1,2 --variants "full,$v" --out "$OUT/ttt5-a" &
    .venv/bin/python bench/bench_core.py "${pair[@]}" --seeds 3,4 --variants "$v,full" --out "$OUT/ttt5-b"
    local probe=".venv/bin/python bench/probe_fewshot.py" trec6="$OUT/trec6-10shot-e30-auto21"
    $probe "$trec6" auto-swa sparse 5e-3 0,1,2,3,4 schedule=constant average_last=0.5
    $probe "$trec6" w0-swa sparse 5e-3 0,1,2,3,4 sensitivity.warmup_epochs=0 schedule=constant average_last=0.5
    wait
}

swa_rows() {
    # Twenty-sixth session: the recipe that matched full finetuning's best on banking77 10-shot (sparse, a constant
    # rate, the last half of the steps averaged) given to random and unrestricted-Fisher rows and to full
    # finetuning at its best warm-up, on test once; then trec6's full split with it for every method (bench
    # --schedule/--average-last), sparse with the Taylor rows its carve chose. Two lanes.
    local probe=".venv/bin/python bench/probe_fewshot.py" s5=0,1,2,3,4 swa=(schedule=constant average_last=0.5)
    local b77="$OUT/banking77-10shot-e15-auto-rows" recipe=(--schedule constant --average-last 0.5)
    {
        $probe --test "$b77" random-const-avg50 random 5e-3 $s5 "${swa[@]}"
        $probe --test "$b77" fisher-const-avg50 fisher 5e-3 $s5 "${swa[@]}"
        $CLI bench --data "$DATA/trec6" --methods sparse --seeds 5 --epochs 3 --lr sparse=5e-3 --score sparse=taylor \
            "${recipe[@]}" --out "$OUT/trec6-full-swa-sparse"
        $CLI bench --data "$DATA/trec6" --methods random,fisher --seeds 3 --epochs 3 --lr random=5e-3,fisher=5e-3 \
            "${recipe[@]}" --out "$OUT/trec6-full-swa-rows"
    } &
    $probe --test "$b77" full-warm5-const-avg50 full 2e-4 $s5 sensitivity.warmup_epochs=5 "${swa[@]}"
    $CLI bench --data "$DATA/trec6" --methods full --seeds 5 --epochs 3 --lr full=2e-4 "${recipe[@]}" \
        --out "$OUT/trec6-full-swa-full"
    wait
    # hint3_sofmattress's full split (5 seeds; the rates its carve chose in the sixteenth session), the default
    # recipe and SWA's at the automatic warm-up through the grid, then both at the 5-epoch warm-up on its data.
    local hint3=(--data "$DATA/hint3_sofmattress" --methods full,sparse --seeds 5 --epochs 10 --lr full=2e-4,sparse=5e-3)
    local lin5="$OUT/hint3_sofmattress-full-lin5"
    {
        $CLI bench "${hint3[@]}" --out "$lin5"
        $probe --test "$lin5" full-warm5 full 2e-4 $s5 sensitivity.warmup_epochs=5
        $probe --test "$lin5" full-warm5-swa full 2e-4 $s5 sensitivity.warmup_epochs=5 "${swa[@]}"
    } &
    $CLI bench "${hint3[@]}" "${recipe[@]}" --out "$OUT/hint3_sofmattress-full-swa5"
    wait
    $probe --test "$lin5" sparse-warm5 sparse 5e-3 $s5 sensitivity.warmup_epochs=5 &
    $probe --test "$lin5" sparse-warm5-swa sparse 5e-3 $s5 sensitivity.warmup_epochs=5 "${swa[@]}"
    wait
    # banking77 full data: full finetuning with the recipe on seeds 1 and 2 (seed 0: the averaging lane)
    bash bench/probe_sparse.sh full-const-avg50 1 --method full --lr 1.33e-4 "${recipe[@]}" &
    bash bench/probe_sparse.sh full-const-avg50 2 --method full --lr 1.33e-4 "${recipe[@]}"
    wait
}

intervals() {
    # Twenty-seventh session: seeds added where a target's 95% interval hinged on them, on the grids' own shots and
    # test splits (probe_fewshot.py --test): full finetuning's per-seed abstention scores on hint3 10-shot (both
    # warm-ups), trec6 10-shot seeds 3-4 (Taylor rows, full at 2e-4), snips 10-shot seeds 5-9. Two lanes. The
    # intervals: bench/interval.py on these run folders and on the per-seed figures of the earlier tables.
    local probe=".venv/bin/python bench/probe_fewshot.py --test" hint3="$OUT/hint3_sofmattress-10shot-e30-oos"
    local trec6="$OUT/trec6-10shot-e30-auto21" snips="$OUT/snips-10shot-e30-auto21"
    {
        $probe "$hint3" full-w5 full 2e-4 0,1,2,3,4 sensitivity.warmup_epochs=5
        $probe "$trec6" taylor sparse 5e-3 0,3,4 sensitivity.score=taylor
        $probe "$snips" w0 sparse 5e-3 5,6,7,8,9 sensitivity.warmup_epochs=0
        $probe "$snips" random-w0 random 5e-3 5,6,7 sensitivity.warmup_epochs=0
    } &
    $probe "$hint3" full-auto full 2e-4 0,1,2,3,4
    $probe "$trec6" full-2e-4 full 2e-4 0,3,4
    $probe "$snips" full-w5 full 6.67e-5 5,6,7,8,9 sensitivity.warmup_epochs=5
    $probe "$snips" random-w0 random 5e-3 8,9 sensitivity.warmup_epochs=0
    wait
    # snips full data, 3 epochs: seeds 3-4 (the fulldata lane's two grids resumed with --seeds 5 run only those)
    $CLI bench --data "$DATA/snips" --methods full --seeds 5 --epochs 3 --out "$OUT/snips-full-3ep" &
    $CLI bench --data "$DATA/snips" --methods sparse --seeds 5 --epochs 3 --out "$OUT/snips-full-3ep-b"
    wait
    # banking77 full data, 3 epochs: sparse at its defaults on seeds 3-4 (the validation carve)
    bash bench/probe_sparse.sh default22 3 &
    bash bench/probe_sparse.sh default22 4
    wait
    # and 6 epochs each on seeds 3-4, the two methods side by side
    { bash bench/probe_sparse.sh epochs-6 3 --epochs 6; bash bench/probe_sparse.sh epochs-6 4 --epochs 6; } &
    bash bench/probe_sparse.sh full-epochs-6 3 --method full --lr 1.33e-4 --epochs 6
    bash bench/probe_sparse.sh full-epochs-6 4 --method full --lr 1.33e-4 --epochs 6
    wait
}

# A 10-shot folder for NAME at $OUT/NAME-10shot-oracle: the grids' shots (data_seed 0) in data/, and the bench.json
# that bench/probe_fewshot.py reads (its data set and 30 epochs). That bench.json is the one fewshot_long's grid
# writes (full,sparse, 3 seeds, --tune-lr --tune-widen 0), so that the banking77 grid still resumes in a folder
# made here first.
oracle_shots() {  # NAME [FOLDER [EPOCHS]]: the 10-shot grids' shots of NAME in FOLDER, with its bench.json
    local name=$1 g=${2:-"$OUT/$1-10shot-oracle"} epochs=${3:-30}
    .venv/bin/python -c "from dataclasses import asdict; from pathlib import Path
from clm_explore.bench import BenchConfig, prepare_data
from clm_explore.data import load_data
from clm_explore.runs import write_json_atomic
cfg = BenchConfig(methods=('full', 'sparse'), shots=10, epochs=$epochs, tune_lr=True, tune_widen=0,
                  data=str(Path('$DATA/$name').resolve()))
prepare_data(load_data('$DATA/$name'), cfg, Path('$g'))
write_json_atomic(Path('$g') / 'bench.json', asdict(cfg))"
}

probe_grids() {  # the four 10-shot grids the development-row probes use, rebuilt where a folder is missing
    [ -f "$OUT/banking77-10shot-e15/bench.json" ] || oracle_shots banking77 "$OUT/banking77-10shot-e15" 15
    local name
    for name in snips trec6 hint3_sofmattress; do
        [ -f "$OUT/$name-10shot-oracle/bench.json" ] || oracle_shots "$name"
    done
}

oracle() {
    # Twenty-eighth session: does the choice of rows keep sparse behind? Full finetuning first, then sparse with
    # the rows that run moved most (bench/probe_oracle.py), per seed. banking77 full data on the validation
    # carve (probe_sparse.sh's setting: the shared split's validation file), seeds 0-2, and with every layer eligible
    # (seed 0); two lanes.
    local oracle="env ORACLE_RUN=$OUT/b77-probe/full-s" probe="env DATA=$DATA/banking77 bash bench/probe_sparse.sh"
    for s in 0 1 2; do $probe full "$s" --method full --lr 1.33e-4; done &
    $probe default 0
    wait
    for s in 0 1 2; do
        CLI="$oracle$s ORACLE_NORM=mean .venv/bin/python bench/probe_oracle.py" $probe oracle-mean "$s" &
        CLI="$oracle$s ORACLE_NORM=none .venv/bin/python bench/probe_oracle.py" $probe oracle-none "$s"
        wait
    done
    CLI="${oracle}0 .venv/bin/python bench/probe_oracle.py" $probe oracle-mean-all-layers 0 --min-layer 0
    # snips 10-shot (the shots of the 10-shot grids), 30 epochs: full finetuning at its best recipe (6.67e-5,
    # 5-epoch warm-up; and 3 epochs of it), then sparse at the automatic warm-up with the rows each seed's full run
    # moved most (both normalisations; and from the 3-epoch run), the Fisher rows and random rows beside them.
    local g="$OUT/snips-10shot-oracle" s
    oracle_shots snips
    shot() { local name=$1; shift; "$@" --data "$g/data" --seed "$s" --device cpu --out "$g/$name-s$s" --overwrite --json > /dev/null; }
    for s in 0 1 2 3 4; do
        shot full $CLI finetune --method full --lr 6.67e-5 --head-warmup-epochs 5 --epochs 30
        shot full3 $CLI finetune --method full --lr 6.67e-5 --head-warmup-epochs 5 --epochs 3
        for m in sparse random; do shot "$m" $CLI finetune --method "$m" --lr 5e-3 --epochs 30; done
        local rows=(.venv/bin/python bench/probe_oracle.py finetune --method sparse --lr 5e-3 --epochs 30)
        ORACLE_RUN="$g/full-s$s" shot oracle "${rows[@]}"
        ORACLE_RUN="$g/full-s$s" ORACLE_NORM=none shot oracle-none "${rows[@]}"
        ORACLE_RUN="$g/full3-s$s" shot oracle3 "${rows[@]}"
    done
    # trec6 10-shot the same way: full finetuning at 2e-4 (the automatic warm-up), the Fisher rows, the oracle
    g="$OUT/trec6-10shot-oracle"
    oracle_shots trec6
    for s in 0 1 2 3 4; do
        shot full $CLI finetune --method full --lr 2e-4 --epochs 30
        shot sparse $CLI finetune --method sparse --lr 5e-3 --epochs 30
        ORACLE_RUN="$g/full-s$s" shot oracle "${rows[@]}"
    done
    # both on development rows (probe_fewshot.py: 600 rows that are neither shots nor test): the Fisher rows, random
    # rows, the oracle, the Fisher rows spread evenly over the matrices (rank normalisation), gradient-magnitude rows
    for g in "$OUT"/{snips,trec6}-10shot-oracle; do
        .venv/bin/python bench/probe_fewshot.py "$g" default sparse 5e-3 0,1,2,3,4
        .venv/bin/python bench/probe_fewshot.py "$g" random random 5e-3 0,1,2,3,4
        ORACLE_RUN="$g/full-s{seed}" .venv/bin/python bench/probe_oracle.py --fewshot "$g" oracle sparse 5e-3 0,1,2,3,4
        .venv/bin/python bench/probe_fewshot.py "$g" rank sparse 5e-3 0,1,2,3,4 sensitivity.normalise=rank
        .venv/bin/python bench/probe_fewshot.py "$g" gradient sparse 5e-3 0,1,2,3,4 sensitivity.score=gradient
    done
    # hint3_sofmattress 10-shot: full finetuning (2e-4, the 5-epoch warm-up), then on development rows the Fisher
    # rows, random rows and the oracle, and on test the Fisher rows and the oracle
    g="$OUT/hint3_sofmattress-10shot-oracle"
    oracle_shots hint3_sofmattress
    for s in 0 1 2 3 4; do shot full $CLI finetune --method full --lr 2e-4 --head-warmup-epochs 5 --epochs 30; done
    .venv/bin/python bench/probe_fewshot.py "$g" default sparse 5e-3 0,1,2,3,4
    .venv/bin/python bench/probe_fewshot.py "$g" random random 5e-3 0,1,2,3,4
    ORACLE_RUN="$g/full-s{seed}" .venv/bin/python bench/probe_oracle.py --fewshot "$g" oracle sparse 5e-3 0,1,2,3,4
    .venv/bin/python bench/probe_fewshot.py --test "$g" default sparse 5e-3 0,1,2,3,4
    ORACLE_RUN="$g/full-s{seed}" .venv/bin/python bench/probe_oracle.py --fewshot --test "$g" oracle sparse 5e-3 0,1,2,3,4
}

sampled() {
    # Twenty-ninth session: between top-k and random rows. Rows drawn without replacement in proportion to
    # score ** (1 / T) (mask.strategy=sampled), Fisher and Taylor scores, on the oracle lane's 10-shot shots,
    # scored on development rows (probe_fewshot.py), 5 seeds, beside the top-k rows and random rows; two lanes.
    local probe=".venv/bin/python bench/probe_fewshot.py" seeds=0,1,2,3,4 g t
    local snips="$OUT/snips-10shot-oracle" trec6="$OUT/trec6-10shot-oracle" hint3="$OUT/hint3_sofmattress-10shot-oracle"
    for name in snips trec6 hint3_sofmattress; do [ -f "$OUT/$name-10shot-oracle/bench.json" ] || oracle_shots "$name"; done
    draw() { $probe "$1" "sampled-$2-t$3" sparse 5e-3 $seeds mask.strategy=sampled sensitivity.score="$2" mask.sample_temperature="$3"; }
    (
        for g in "$snips" "$trec6" "$hint3"; do $probe "$g" default sparse 5e-3 $seeds; done
        $probe "$snips" random random 5e-3 $seeds
        for g in "$trec6" "$hint3"; do $probe "$g" taylor sparse 5e-3 $seeds sensitivity.score=taylor; done
        for g in "$snips" "$trec6" "$hint3"; do draw "$g" fisher 0.3; done
    ) &
    for g in "$snips" "$trec6" "$hint3"; do draw "$g" fisher 1; draw "$g" taylor 1; done
    for t in 0.3 0.1; do for g in "$trec6" "$snips"; do draw "$g" taylor "$t"; done; done
    wait
    # snips's and hint3's test splits once, after the choice: the top Fisher rows and the T = 1 draw of them
    for g in "$snips" "$hint3"; do
        $probe --test "$g" default sparse 5e-3 $seeds &
        $probe --test "$g" sampled-fisher-t1 sparse 5e-3 $seeds mask.strategy=sampled
        wait
    done
    # banking77 10-shot (15 epochs): development rows for the top Fisher rows, random rows and the T = 1 draw;
    # then the draw on test (the top Fisher rows' and random rows' test figures are the fewshot_auto grid's)
    local b77="$OUT/banking77-10shot-e15"
    [ -f "$b77/bench.json" ] || oracle_shots banking77 "$b77" 15
    { $probe "$b77" default sparse 5e-3 $seeds; $probe "$b77" random random 5e-3 $seeds; } &
    draw "$b77" fisher 1
    $probe --test "$b77" sampled-fisher-t1 sparse 5e-3 $seeds mask.strategy=sampled
    wait
}

# Thirty-second session: the 10-shot grids again with the sweep widened past its edge (the default now), sparse
# and five baselines, two cells at a time (--jobs 2); banking77 also at the old three rates' choices; trec6's
# budget sweep with a sweep per budget. banking77 ran first as two grids widened twice (b77-10shot-widen-A/-B),
# then the methods still at the edge went on in b77-10shot-widen4 (their sweep cells copied in); one grid at
# the default four steps tries the same rates and so should make the same choices (the cells are deterministic
# on the CPU: widen4's seeds repeated -A's and -B's exactly).
widened() {
    local out="$OUT/s32" bench="$CLI bench --shots 10 --seeds 3 --tune-lr --jobs 2"
    local all=sparse,head,bitfit,lora,prefix,layers
    $bench --data "$DATA/banking77" --methods "$all" --epochs 5 --out "$out/b77-10shot-widen"
    $bench --data "$DATA/banking77" --methods head,bitfit,layers,lora,prefix --epochs 5 --tune-widen 0 \
        --out "$out/b77-10shot-narrow"  # the three-rate sweep's choices: head 3e-2, bitfit 3e-3, layers 6e-4,
                                        # lora 1.5e-3, prefix 3e-2 (the published run fixed them with --lr)
    $bench --data "$DATA/snips" --methods "$all" --epochs 30 --out "$out/snips-10shot-widen"
    $bench --data "$DATA/trec6" --methods "$all" --epochs 30 --tune-score --out "$out/trec6-10shot-widen"
    $bench --data "$DATA/hint3_sofmattress" --methods "$all" --epochs 30 --out "$out/hint3-10shot-widen"
    for name in snips trec6; do
        $bench --data "$DATA/$name" --methods full --epochs 30 --out "$out/$name-10shot-widen-full"
    done
    $bench --data "$DATA/trec6" --methods sparse,random,fisher --budgets 0.001,0.01,0.05 --epochs 30 \
        --tune-each-budget --out "$out/trec6-10shot-budgets-each"
}

widened_rows() {
    local out="$OUT/s33" bench="$CLI bench --tune-lr --jobs 2"
    $bench --data "$DATA/banking77" --shots 10 --methods sparse,random,fisher,gradient,full --epochs 5 --seeds 5 \
        --out "$out/b77-10shot-widen-rows"
    $bench --data "$DATA/snips" --shots 10 --methods sparse,random,fisher,gradient --epochs 30 --seeds 3 \
        --out "$out/snips-10shot-widen-rows"
    $bench --data "$DATA/trec6" --shots 10 --methods sparse,gradient --epochs 30 --seeds 3 --tune-score \
        --out "$out/trec6-10shot-widen-rows"
    $bench --data "$DATA/hint3_sofmattress" --shots 10 --methods sparse,random,fisher,gradient,full --epochs 30 --seeds 3 \
        --out "$out/hint3-10shot-widen-rows"
    $bench --data "$DATA/hint3_sofmattress" --methods full,sparse,head,bitfit,lora,prefix,layers,random,fisher,gradient \
        --epochs 10 --seeds 3 --out "$out/hint3-full-widen"
    # The budget sweep at 0.1% and 5% (1% is in the grids above), a sweep per budget.
    for name in snips hint3_sofmattress; do
        $bench --data "$DATA/$name" --shots 10 --methods sparse,random,fisher --budgets 0.001,0.05 --epochs 30 --seeds 3 \
            --tune-each-budget --out "$out/$name-10shot-budgets-each"
    done
    $bench --data "$DATA/banking77" --shots 10 --methods sparse,random,fisher --budgets 0.001,0.05 --epochs 5 --seeds 3 \
        --tune-each-budget --out "$out/banking77-10shot-budgets-each"
}

# Thirty-fourth session: trec6 full data's baselines with the widened sweep (sparse beside them, its row score
# swept too).
widened_full() {
    $CLI bench --data "$DATA/trec6" --methods sparse,head,bitfit,lora,prefix,layers --epochs 3 --seeds 3 \
        --tune-lr --tune-score --jobs 2 --out "$OUT/s34/trec6-full-widen"
}

# Thirty-fourth and thirty-fifth sessions: masks whose top rows fill half the budget and random rows the rest
# (mask.random_share) on the 10-shot development rows of the twenty-eighth and thirty-first sessions' probes, 5 seeds.
mixed() {
    local probe=".venv/bin/python bench/probe_fewshot.py" seeds=0,1,2,3,4
    probe_grids  # the grids' shots (data_seed 0) and bench.json, rebuilt where an earlier lane's folder is missing
    $probe "$OUT/banking77-10shot-e15" mixed-0.5 sparse 5e-3 $seeds mask.random_share=0.5 &
    $probe "$OUT/snips-10shot-oracle" mixed-0.5 sparse 5e-3 $seeds mask.random_share=0.5
    $probe "$OUT/trec6-10shot-oracle" mixed-taylor-0.5 sparse 5e-3 $seeds sensitivity.score=taylor mask.random_share=0.5
    wait
    $probe "$OUT/hint3_sofmattress-10shot-oracle" mixed-0.5 sparse 5e-3 $seeds mask.random_share=0.5 &
    $probe "$OUT/trec6-10shot-oracle" mixed-0.5 sparse 5e-3 $seeds mask.random_share=0.5
    wait
}

# Thirty-fifth session: snips full data's BitFit, LoRA, prefix tuning and whole layers over 3 epochs at the rates
# their 1-epoch sweeps chose (ninth and tenth sessions), sparse beside them.
snips_3ep() {
    $CLI bench --data "$DATA/snips" --methods sparse,bitfit,lora,prefix,layers --epochs 3 --seeds 3 \
        --lr sparse=5e-3,bitfit=3e-3,lora=5e-4,prefix=9e-2,layers=2e-4 --jobs 2 --out "$OUT/s35/snips-full-3ep-baselines"
}

# Thirty-sixth session: the Fisher rows scored at labels drawn from the warmed-up model (the true Fisher, 4
# draws per row) on the same development rows as the mixed lane, 5 seeds.
model_fisher() {
    local probe=".venv/bin/python bench/probe_fewshot.py" seeds=0,1,2,3,4
    local opts="sensitivity.fisher_labels=model sensitivity.label_draws=4"
    probe_grids
    (
        $probe "$OUT/banking77-10shot-e15" model-fisher-4 sparse 5e-3 $seeds $opts
        $probe "$OUT/hint3_sofmattress-10shot-oracle" model-fisher-4 sparse 5e-3 $seeds $opts
    ) &
    $probe "$OUT/snips-10shot-oracle" model-fisher-4 sparse 5e-3 $seeds $opts
    $probe "$OUT/trec6-10shot-oracle" model-fisher-4 sparse 5e-3 $seeds $opts
    wait
}

# Thirty-sixth session: snips full data's BitFit, LoRA, prefix tuning and whole layers with their own 3-epoch
# learning-rate sweep on the validation carve (widened past an edge choice).
snips_3ep_sweep() {
    $CLI bench --data "$DATA/snips" --methods bitfit,lora,prefix,layers --epochs 3 --seeds 3 \
        --tune-lr --jobs 2 --out "$OUT/s36/snips-full-3ep-sweep"
}

snips_3ep_rows() {
    $CLI bench --data "$DATA/snips" --methods sparse,random,fisher,gradient,head --epochs 3 --seeds 3 \
        --tune-lr --jobs 2 --out "$OUT/s37/snips-full-3ep-rows"
}

# Thirty-seventh session: is the top rows' 10-shot gap to random rows in the share of the budget each map gets or
# in which rows of a map are chosen? The default mask's row count per map kept, its rows drawn uniformly inside
# each map (shuffle), or the random mask's count per map filled with top rows (quota; bench/probe_within.py),
# same development rows, rates and seeds as the mixed lane.
within() {
    local probe=".venv/bin/python bench/probe_within.py" seeds=0,1,2,3,4
    probe_grids
    ($probe shuffle "$OUT/banking77-10shot-e15" within-shuffle sparse 5e-3 $seeds
     $probe quota "$OUT/banking77-10shot-e15" within-quota sparse 5e-3 $seeds) &
    local mode
    for mode in shuffle quota; do
        $probe $mode "$OUT/snips-10shot-oracle" within-$mode sparse 5e-3 $seeds
        $probe $mode "$OUT/hint3_sofmattress-10shot-oracle" within-$mode sparse 5e-3 $seeds
        # thirty-eighth session: trec6 with the Taylor rows its carve chose
        $probe $mode "$OUT/trec6-10shot-oracle" within-$mode-taylor sparse 5e-3 $seeds sensitivity.score=taylor
    done
    # the control: random rows on snips' development rows again
    .venv/bin/python bench/probe_fewshot.py "$OUT/snips-10shot-oracle" random-recheck random 5e-3 $seeds
    wait
}

# Thirty-eighth session: where shuffle's banking77 gain sits. Uniform rows only in the attention query, key and
# value maps (shuffle-attn), and the top rows of those maps spread evenly over the attention heads
# (mask.spread_heads, first run as a probe_within mode with the same masks), the default count per map each; same
# grids, rates and seeds as the within lane; then spread_heads on the grids' test splits, with the default rows'
# seed 0 again as a control.
heads() {
    probe_grids
    local seeds=0,1,2,3,4 fewshot=".venv/bin/python bench/probe_fewshot.py"
    local within=".venv/bin/python bench/probe_within.py shuffle-attn"
    ($fewshot "$OUT/banking77-10shot-e15" within-heads sparse 5e-3 $seeds mask.spread_heads=true
     $fewshot --test "$OUT/banking77-10shot-e15" heads sparse 5e-3 $seeds mask.spread_heads=true
     $fewshot --test "$OUT/banking77-10shot-e15" top-recheck sparse 5e-3 0
     $within "$OUT/banking77-10shot-e15" within-shuffle-attn sparse 5e-3 $seeds) &
    local grid
    for grid in snips-10shot-oracle trec6-10shot-oracle hint3_sofmattress-10shot-oracle; do
        local taylor=() suffix="" control=top-recheck
        [[ $grid == trec6* ]] && taylor=(sensitivity.score=taylor) suffix=-taylor control=taylor-recheck
        $fewshot "$OUT/$grid" within-heads$suffix sparse 5e-3 $seeds mask.spread_heads=true "${taylor[@]}"
        $within "$OUT/$grid" within-shuffle-attn$suffix sparse 5e-3 $seeds "${taylor[@]}"
        $fewshot --test "$OUT/$grid" heads$suffix sparse 5e-3 $seeds mask.spread_heads=true "${taylor[@]}"
        $fewshot --test "$OUT/$grid" $control sparse 5e-3 0 "${taylor[@]}"
    done
    # trec6's default Fisher rows, once the Taylor rows' loss was known
    $fewshot "$OUT/trec6-10shot-oracle" within-heads-fisher sparse 5e-3 $seeds mask.spread_heads=true
    $fewshot --test "$OUT/trec6-10shot-oracle" heads-fisher sparse 5e-3 $seeds mask.spread_heads=true
    wait
}

# Thirty-eighth session: spread_heads on full data over 3 epochs, 3 seeds: snips with the default sparse cell's
# command on the snips_3ep lane's data folder (its seeds 0-2 are the published top rows), banking77 through
# probe_sparse.sh on the full-data grids' carve; the top rows' seed 0 again on each as a control.
heads_full() {
    local snips_data="$OUT/s35/snips-full-3ep-baselines/data" folder="$OUT/s38/snips-full-heads" seed
    [ -f "$snips_data/train.csv" ] || { echo "run the snips_3ep lane first: it writes $snips_data" >&2; exit 2; }
    [ -f "$OUT/banking77-full-rows/data/train.csv" ] || .venv/bin/python -c "from pathlib import Path
from clm_explore.bench import BenchConfig, prepare_data
from clm_explore.data import load_data
prepare_data(load_data('$DATA/banking77'), BenchConfig(methods=['full']), Path('$OUT/banking77-full-rows'))"
    mkdir -p "$folder"
    snips_cell() {  # SEED NAME [finetune options]
        $CLI finetune --data "$snips_data" --method sparse --epochs 3 --seed "$1" --budget 0.01 --lr 0.005 \
            --device cpu "${@:3}" --out "$folder/$2-s$1" --overwrite --json > "$folder/$2-s$1.json"
    }
    (for seed in 0 1 2; do snips_cell $seed heads --spread-heads; done; snips_cell 0 plain) &
    for seed in 0 1 2; do bash bench/probe_sparse.sh heads $seed --spread-heads; done
    bash bench/probe_sparse.sh default 0
    wait
}

# Thirty-eighth session: the thirty-third session's 10-shot row grids with bench --spread-heads.
heads_grids() {
    local bench="$CLI bench --tune-lr --jobs 2 --spread-heads --shots 10 --seeds 3"
    $bench --data "$DATA/snips" --methods sparse,fisher,gradient --epochs 30 --out "$OUT/s38/snips-10shot-spread-rows"
    $bench --data "$DATA/banking77" --methods sparse --epochs 5 --out "$OUT/s38/b77-10shot-spread-rows"
    $bench --data "$DATA/trec6" --methods sparse,gradient --epochs 30 --tune-score --out "$OUT/s38/trec6-10shot-spread-rows"
    $bench --data "$DATA/hint3_sofmattress" --methods sparse,fisher,gradient --epochs 30 \
        --out "$OUT/s38/hint3-10shot-spread-rows"
}

# Thirty-ninth session (started in the thirty-eighth): snips full data's merged adaptive tokens over 3 epochs with
# their own sweep, the last method of the grid without a 3-epoch reading there.
snips_3ep_merged() {
    $CLI bench --data "$DATA/snips" --methods sparse_merged --epochs 3 --seeds 3 --tune-lr --jobs 2 \
        --out "$OUT/s38/snips-full-3ep-merged"
}

# Thirty-ninth session: the attention rows spread over the heads (mask.spread_heads) and training from the loaded
# head (head_warmup=false, `--cold-head`) together, on the 10-shot development rows (5 seeds; trec6 with its Taylor
# rows, cold head only), then snips' test split (seeds 0-9), where the development rows chose it.
cold_heads() {
    local fewshot=".venv/bin/python bench/probe_fewshot.py" seeds=0,1,2,3,4
    local both="mask.spread_heads=true head_warmup=false"
    probe_grids
    $fewshot "$OUT/banking77-10shot-e15" cold-heads sparse 5e-3 $seeds $both &
    $fewshot "$OUT/snips-10shot-oracle" cold-heads sparse 5e-3 $seeds $both
    $fewshot "$OUT/snips-10shot-oracle" cold-top sparse 5e-3 $seeds head_warmup=false
    $fewshot "$OUT/trec6-10shot-oracle" cold-taylor sparse 5e-3 $seeds sensitivity.score=taylor head_warmup=false
    $fewshot "$OUT/hint3_sofmattress-10shot-oracle" cold-heads sparse 5e-3 $seeds $both
    $fewshot --test "$OUT/snips-10shot-oracle" cold-heads sparse 5e-3 $seeds $both
    $fewshot --test "$OUT/snips-10shot-oracle" cold-top sparse 5e-3 $seeds head_warmup=false
    $fewshot --test "$OUT/snips-10shot-oracle" cold-heads-more sparse 5e-3 5,6,7,8,9 $both
    wait
    # every method from the loaded head at its own swept rate; full finetuning's snips rate (2e-4) on seeds 3-9
    $CLI bench --data "$DATA/snips" --shots 10 --methods sparse,random,full --seeds 3 --epochs 30 --tune-lr --jobs 2 \
        --cold-head --spread-heads --out "$OUT/s39/snips-10shot-cold-spread"
    $fewshot --test "$OUT/snips-10shot-oracle" full-cold full 2e-4 0,3,4,5 head_warmup=false &
    $fewshot --test "$OUT/snips-10shot-oracle" full-cold-b full 2e-4 6,7,8,9 head_warmup=false
    wait
    local data
    for data in trec6 hint3_sofmattress; do
        $CLI bench --data "$DATA/$data" --shots 10 --methods full --seeds 5 --epochs 30 --tune-lr --jobs 2 \
            --cold-head --out "$OUT/s39/${data%%_*}-10shot-full-cold"
    done
    $CLI bench --data "$DATA/banking77" --shots 10 --methods full --seeds 5 --epochs 15 --tune-lr --jobs 2 \
        --cold-head --out "$OUT/s39/banking77-10shot-full-cold"
}

cold_baselines() {
    # Fortieth session: LoRA, BitFit, prefix tuning and whole layers from the loaded head (--cold-head), each with
    # its own widened sweep, on the four 10-shot sets (30 epochs; banking77 5, as the thirty-second session's grid)
    local data
    for data in trec6 hint3_sofmattress snips; do
        $CLI bench --data "$DATA/$data" --shots 10 --methods lora,bitfit,prefix,layers --seeds 3 --epochs 30 --tune-lr \
            --jobs 2 --cold-head --out "$OUT/s40/${data%%_*}-10shot-cold-baselines"
    done
    $CLI bench --data "$DATA/banking77" --shots 10 --methods lora,bitfit,prefix,layers --seeds 3 --epochs 5 --tune-lr \
        --jobs 2 --cold-head --out "$OUT/s40/banking77-10shot-cold-baselines"
    # trec6's BitFit from the warmed head at the rate the loaded head's sweep chose (a check of what the rate buys)
    $CLI bench --data "$DATA/trec6" --shots 10 --methods bitfit --seeds 3 --epochs 30 --lr bitfit=0.027 --jobs 2 \
        --out "$OUT/s40/trec6-10shot-bitfit-warm-2.7e-2"
    # the random, Fisher and gradient rows from the loaded head, each with its own sweep
    for data in trec6 hint3_sofmattress; do
        $CLI bench --data "$DATA/$data" --shots 10 --methods random,fisher,gradient --seeds 3 --epochs 30 --tune-lr \
            --jobs 2 --cold-head --out "$OUT/s40/${data%%_*}-10shot-cold-rows"
    done
    $CLI bench --data "$DATA/banking77" --shots 10 --methods random,fisher,gradient --seeds 3 --epochs 5 --tune-lr \
        --jobs 2 --cold-head --out "$OUT/s40/banking77-10shot-cold-rows"
}

scoring_seed() {
    # Fortieth session: the scoring's seed following the run's (sensitivity.seed=none) on development rows
    local probe=".venv/bin/python bench/probe_fewshot.py" seeds=0,1,2,3,4
    probe_grids
    $probe "$OUT/snips-10shot-oracle" seed0-top sparse 5e-3 $seeds
    $probe "$OUT/snips-10shot-oracle" seednone-top sparse 5e-3 $seeds sensitivity.seed=none
    $probe "$OUT/trec6-10shot-oracle" seednone-taylor sparse 5e-3 $seeds sensitivity.score=taylor sensitivity.seed=none
    $probe "$OUT/trec6-10shot-oracle" seed0-full full 2e-4 $seeds
    $probe "$OUT/trec6-10shot-oracle" seednone-full full 2e-4 $seeds sensitivity.seed=none
}

# Forty-first session: sparse's sweep choosing the row score and spread rows per set on the carve (--tune-spread),
# the four 10-shot grids' shots and epochs; banking77's choice and full finetuning at its widened rate over 5 seeds.
tune_spread() {
    local B="$CLI bench --tune-lr --tune-score --tune-spread --jobs 2 --methods sparse --shots 10"
    for name in trec6 snips hint3_sofmattress; do
        $B --data "$DATA/$name" --seeds 3 --epochs 30 --out "$OUT/$name-10shot-tune-spread"
    done
    $B --data "$DATA/banking77" --seeds 5 --epochs 5 --out "$OUT/b77-10shot-tune-spread"
    $CLI bench --lr full=6e-4 --jobs 2 --methods full --shots 10 --seeds 5 --data "$DATA/banking77" --epochs 5 \
        --out "$OUT/b77-10shot-full-6e-4"
}

case "${1:-}" in
core | fewshot | fewshot_long | fewshot_probes | fewshot_auto | fulldata | score_tuned | out_of_scope | rows_again | head_start | head_init | averaging | same_run | swa_rows | intervals | oracle | sampled | widened | widened_rows | widened_full | mixed | snips_3ep | model_fisher | snips_3ep_sweep | snips_3ep_rows | within | heads | heads_full | heads_grids | snips_3ep_merged | cold_heads | cold_baselines | scoring_seed | tune_spread) "$1" ;;
*) echo "usage: bash bench/tables.sh core|fewshot|fewshot_long|fewshot_probes|fewshot_auto|fulldata|score_tuned|out_of_scope|rows_again|head_start|head_init|averaging|same_run|swa_rows|intervals|oracle|sampled|widened|widened_rows|widened_full|mixed|snips_3ep|model_fisher|snips_3ep_sweep|snips_3ep_rows|within|heads|heads_full|heads_grids|snips_3ep_merged|cold_heads|cold_baselines|scoring_seed|tune_spread" >&2; exit 2 ;;
esac
