"""Mining + sensitivity time on a full training split (the method's preparation before training).

    python bench/bench_prep.py [--data ../shared/data/banking77] [--calibration-rows 4096] \
        [--min-layers 0,3,4 --repeats 2] [--prefix-cache 3,4]

Prints seconds for mining, head warm-up + row scoring, and selection at three budgets. With
``--min-layers``, the warm-up + scoring pass is timed once per lowest scored layer (interleaved, each
repeat in the same order; ``finetune`` scores from the mask's lowest eligible layer, 3 of 6 by default,
so its backward stops there), and the ratio to scoring every layer is printed. With ``--prefix-cache``,
for each of those floors the preparation with the frozen-layer cache (``cache_frozen_layers``) is timed
both ways, interleaved: the cache built after scoring (warm-up + scoring over every layer, then the cache)
and built before it (the cache, then warm-up + scoring over the layers above it only, as ``finetune`` does).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from clm_explore.batches import encode
from clm_explore.config import FinetuneConfig, MaskConfig, SensitivityConfig
from clm_explore.data import load_data
from clm_explore.masks import select_mask
from clm_explore.mining import mine_task_tokens
from clm_explore.modeling import load_model
from clm_explore.prefix_cache import PrefixCache, build_prefix_cache
from clm_explore.sensitivity import compute_sensitivity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/banking77"))
    ap.add_argument("--calibration-rows", type=int, default=SensitivityConfig.calibration_rows)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-layers", default="", help="comma-separated lowest scored layers to time, e.g. 0,3,4")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--prefix-cache", default="", help="comma-separated floors at which to time the cache both ways")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.data)
    loaded = load_model("default", data.labels)
    started = time.perf_counter()
    task_tokens = mine_task_tokens(data.train["text"].tolist(), data.train["label"].tolist(), loaded.tokenizer)
    mined = time.perf_counter() - started
    report = compute_sensitivity(loaded, data, task_tokens, SensitivityConfig(calibration_rows=args.calibration_rows))
    scored = time.perf_counter() - started - mined
    print(f"train rows {len(data.train)}, calibration rows {min(len(data.train), args.calibration_rows)}, "
          f"{args.threads} threads")
    print(f"mining            {mined:7.1f} s  ({len(task_tokens.groups)} groups)")
    print(f"warm-up + scoring {scored:7.1f} s")
    print(f"total             {mined + scored:7.1f} s")
    for budget in (0.001, 0.01, 0.1):
        t = time.perf_counter()
        sel = select_mask(report, MaskConfig(budget=budget))
        print(f"select at {budget:<6g} {1000 * (time.perf_counter() - t):7.1f} ms  lowest layer {sel.lowest_layer}")
    if args.min_layers:
        time_scoring_floors(data, task_tokens, args, [int(x) for x in args.min_layers.split(",")])
    if args.prefix_cache:
        time_prefix_cache(data, task_tokens, args, [int(x) for x in args.prefix_cache.split(",")])


def time_scoring_floors(data, task_tokens, args: argparse.Namespace, floors: list[int]) -> None:
    seconds: dict[int, list[float]] = {f: [] for f in floors}
    for _ in range(args.repeats):
        for floor in floors:
            loaded = load_model("default", data.labels)  # a fresh head: every pass warms up the same way
            cfg = SensitivityConfig(calibration_rows=args.calibration_rows, min_layer=floor)
            started = time.perf_counter()
            compute_sensitivity(loaded, data, task_tokens, cfg)
            seconds[floor].append(time.perf_counter() - started)
    base = min(seconds[floors[0]])
    print(f"\nwarm-up + scoring by lowest scored layer (best of {args.repeats}):")
    for floor in floors:
        print(f"min_layer {floor}  {min(seconds[floor]):7.1f} s  ratio {min(seconds[floor]) / base:.3f}  "
              f"(runs: {', '.join(f'{s:.1f}' for s in seconds[floor])})")


def time_prefix_cache(data, task_tokens, args: argparse.Namespace, floors: list[int]) -> None:
    rows: list[tuple] = []
    for _ in range(args.repeats):
        for floor in floors:
            cfg = SensitivityConfig(calibration_rows=args.calibration_rows, min_layer=floor)
            loaded = load_model("default", data.labels)
            started = time.perf_counter()
            compute_sensitivity(loaded, data, task_tokens, cfg)
            scoring = time.perf_counter() - started
            _, build_after = _timed_cache(loaded, data, floor)
            loaded = load_model("default", data.labels)
            cache, build_before = _timed_cache(loaded, data, floor)
            started = time.perf_counter()
            compute_sensitivity(loaded, data, task_tokens, cfg, prefix=cache)
            rows.append((floor, scoring, build_after, build_before, time.perf_counter() - started))
    print("\nwith the frozen-layer cache: built after scoring (old) or before it, feeding warm-up + scoring (new)")
    print("floor  scoring  cache  | cache  fed scoring  | old total  new total  new/old")
    for floor, scoring, after, before, fed in rows:
        print(f"{floor:5d}  {scoring:7.1f}  {after:5.1f}  | {before:5.1f}  {fed:11.1f}  | {scoring + after:9.1f}  "
              f"{before + fed:9.1f}  {(before + fed) / (scoring + after):7.3f}")


def _timed_cache(loaded, data, floor: int) -> tuple[PrefixCache, float]:
    started = time.perf_counter()
    ids = encode(loaded, data.train["text"].tolist(), SensitivityConfig.max_length)
    cache, why = build_prefix_cache(loaded.model, ids, loaded.tokenizer.pad_token_id, floor, torch.device("cpu"),
                                    require_frozen=False, dtype=getattr(torch, FinetuneConfig.cache_dtype))
    if cache is None:
        raise SystemExit(f"no cache at layer {floor}: {why}")
    return cache, time.perf_counter() - started


if __name__ == "__main__":
    main()
