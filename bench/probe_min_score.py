"""Fifty-eighth session: sparse on a 10-shot draw (bench --shots 10, data seed 0) with every mined group kept
(min_score_share 0, the default) or only those scoring at least 3% of the best (0.03), 30 epochs, seeds 0-2, default
model, one thread. Prints data, seed, share, groups, test accuracy, macro-F1, seconds.
Usage: OMP_NUM_THREADS=1 python bench/probe_min_score.py DATA_NAME [OUT_DIR]"""
import sys
import time

from clm_explore import finetune, load_data
from clm_explore.bench import BenchConfig, grid_splits
from clm_explore.config import FinetuneConfig, MiningConfig

NAME = sys.argv[1]
OUT = sys.argv[2] if len(sys.argv) > 2 else f"bench/out/s58-min-score-{NAME}"
train, validation, test = grid_splits(load_data(f"../shared/data/{NAME}"), BenchConfig(methods=("sparse",), shots=10))
data = load_data({"train": train, "validation": validation, "test": test})
for seed in (0, 1, 2):
    for share in (0.0, 0.03):
        t = time.time()
        cfg = FinetuneConfig(method="sparse", epochs=30, seed=seed, device="cpu",
                             mining=MiningConfig(min_score_share=share))
        r = finetune(data, cfg, f"{OUT}/s{seed}-m{share}", progress=False)
        groups = r.metrics.get("mined_groups", "?")
        print(NAME, seed, share, groups, round(r.metrics["accuracy"], 4), round(r.metrics["macro_f1"], 4),
              round(time.time() - t), flush=True)
