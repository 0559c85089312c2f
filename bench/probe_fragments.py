"""Fifty-seventh session: sparse on trec6 with short word fragments kept (fragment_min_chars=1, the old default) or
left out (3), 3 seeds, 3 epochs, default model, one thread. Prints seed, fragment_min_chars, test accuracy, macro-F1,
seconds. Usage: OMP_NUM_THREADS=1 python bench/probe_fragments.py [OUT_DIR]"""
import sys
import time

from clm_explore import finetune, load_data
from clm_explore.config import FinetuneConfig, MiningConfig

OUT = sys.argv[1] if len(sys.argv) > 1 else "bench/out/s57-fragments"
data = load_data("../shared/data/trec6")
for seed in (0, 1, 2):
    for m in (1, 3):
        t = time.time()
        r = finetune(data, FinetuneConfig(method="sparse", epochs=3, seed=seed, device="cpu",
                                          mining=MiningConfig(fragment_min_chars=m)),
                     f"{OUT}/s{seed}-m{m}", progress=False)
        print(seed, m, round(r.metrics["accuracy"], 4), round(r.metrics["macro_f1"], 4), round(time.time() - t), flush=True)
