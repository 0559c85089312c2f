"""Seconds to label 20,000 texts with the default model (the Runs page's cap on one file): prints one line.

Usage: ``python bench/label_speed.py [THREADS]`` (default 1). The head is untrained: the speed does not depend on it.
"""

import sys
import time
from pathlib import Path

import pandas as pd
import torch

from clm_explore.batches import predict_proba
from clm_explore.modeling import load_model

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
rows = pd.concat([pd.read_csv(BANKING77 / f"{split}.csv") for split in ("train", "test")])
texts = (rows["text"].tolist() * 2)[:20_000]
loaded = load_model("default", sorted(set(rows["label"])))
start = time.perf_counter()
predict_proba(loaded.model, loaded, texts, max_length=64)
print(f"20,000 texts, max length 64, {threads} thread(s): {time.perf_counter() - start:.1f} s")
