"""Every finetune method for one epoch on the tiny random BERT, on CUDA: the first thing `bench/gpu_run.sh`
runs on a lent GPU, so that a CUDA-only fault shows in seconds, before the long runs.

    python bench/gpu_smoke.py DATA_FOLDER [--device cuda] [--compiled]

``--compiled`` runs only full finetuning and sparse compiled with CUDA graphs (``compile="reduce-overhead"``),
the check before `gpu_run.sh`'s graphs stage.

Prints one line per method (accuracy, trainable parameters, seconds) and exits 1 if any method failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from clm_explore.config import FinetuneConfig, MaskConfig
from clm_explore.data import AnnotatedData, load_data
from clm_explore.training import finetune

METHODS = ["full", "sparse", "sparse_merged", "head", "bitfit", "lora", "prefix", "layers", "random", "fisher",
           "gradient"]
EXTRA = {  # the options the benches use on top of a method's defaults
    "sparse cached fp16 swa": {"method": "sparse", "cache_frozen_layers": True, "cache_dtype": "float16",
                               "mask": MaskConfig(budget=0.05, min_layer=1), "schedule": "constant",
                               "average_last": 0.5},
}
COMPILED = {f"{m} graphs": {"method": m, "compile": "reduce-overhead"} for m in ("full", "sparse")}


def small_slice(data: AnnotatedData, labels: int = 4, rows: int = 24) -> AnnotatedData:
    keep = data.labels[:labels]
    def part(frame, n):
        return frame[frame["label"].isin(keep)].groupby("label").head(n).reset_index(drop=True)
    return AnnotatedData(part(data.train, rows), part(data.validation, 4), part(data.test, 8), keep, source="slice")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compiled", action="store_true", help="only the two methods under torch.compile")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, cuda available {torch.cuda.is_available()}", flush=True)
    data = small_slice(load_data(args.data))
    runs = COMPILED if args.compiled else {m: {"method": m} for m in METHODS} | EXTRA
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in runs.items():
            started = time.perf_counter()
            try:
                cfg = FinetuneConfig.from_dict({"epochs": 1, "batch_size": 8, "device": args.device,
                                                "mask": MaskConfig(budget=0.05)} | options)
                result = finetune(data, cfg, Path(tmp) / name.replace(" ", "-"), source="tiny-random")
                m = result.metrics
                print(f"{name:24s} ok   acc {m['accuracy']:.3f}  trainable {m['trainable_params']:>8}  "
                      f"peak {m['peak_memory_mb']:.0f} MB  {time.perf_counter() - started:.1f} s", flush=True)
            except Exception:
                failed.append(name)
                print(f"{name:24s} FAILED", flush=True)
                traceback.print_exc()
    print(f"failed: {', '.join(failed) or 'none'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
