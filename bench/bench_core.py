"""Core method benchmark: sparse at a budget vs full finetuning, side by side in one run.

Each cell (variant x seed) runs in its own subprocess, one after the other, so peak memory is per cell
and both methods see the same machine state. Prints a table of ratios sparse / full:
time per epoch (prep excluded; also without the first epoch, which on a GPU pays for start-up), peak
training memory, accuracy and macro-F1 (mean over seeds), and wall time until sparse comes within 0.5 point
of full's final test accuracy (prep included).

    python bench/bench_core.py --data ../shared/data/banking77 --epochs 3 --seeds 0,1,2

Variants (``--variants``): ``full``; ``sparse`` (default config); ``sparse-all-layers`` (rows may sit in
any layer, so backward runs to the bottom); ``sparse-top2`` (rows only in layers 4-5 of 6: a shorter
backward); ``sparse-untargeted`` (Fisher without the token restriction); ``sparse-merged`` (with 64
adaptive merged tokens); ``sparse-cached`` and ``sparse-top2-cached`` (the frozen layers below the lowest
selected row computed once, ``FinetuneConfig.cache_frozen_layers``; ``sparse-cached-drop``: with dropout 0.1 on
the cached states, ``cache_input_dropout``; ``sparse-top2-cached-fp16``: the states stored as float16,
``cache_dtype``); ``full-compiled`` and ``sparse-compiled`` (``FinetuneConfig.compile="default"``), ``full-graphs``
and ``sparse-graphs`` (``"reduce-overhead"``: CUDA graphs on a GPU). The per-epoch test curve is for
reporting only.
Learning rates are the methods' defaults unless ``--lr variant=LR,...`` fixes them (choose them on
validation, e.g. with ``clm-explore bench --tune-lr``, never on test); ``--variant-epochs variant=N,...`` gives a
variant its own number of epochs, so that a pair of schedules of different lengths (full finetuning for 3
epochs, sparse for 6) runs side by side in one run and the time-to-accuracy ratio is read off one table.
``--curve-split validation`` is that
sweep on the full data: the per-epoch curve is taken on the validation split carved from train, and the
table shows the final validation accuracy per variant and learning rate (the test figures are not printed).

    python bench/bench_core.py --curve-split validation --variants sparse --lr sparse=2.5e-3 --out bench/out/sweep

A cell folder already in ``--out`` is reused only when it succeeded with this call's learning rate, epochs,
``--limit`` and ``--curve-split`` (``reuse_problem``); any other is run again, with a line saying why.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clm_explore.runs import read_json_object

VARIANTS = {
    "full": {"method": "full"},
    "sparse": {"method": "sparse"},
    "sparse-all-layers": {"method": "sparse", "mask": {"min_layer": 0}},
    "sparse-top2": {"method": "sparse", "mask": {"min_layer": 4}},
    "sparse-untargeted": {"method": "sparse", "sensitivity": {"restriction": "none"}},
    "sparse-merged": {"method": "sparse_merged"},
    # The cache's states were float32 when these three were measured; float16 became the default later.
    "sparse-cached": {"method": "sparse", "cache_frozen_layers": True, "cache_dtype": "float32"},
    "sparse-cached-drop": {"method": "sparse", "cache_frozen_layers": True, "cache_input_dropout": 0.1,
                           "cache_dtype": "float32"},
    "sparse-top2-cached": {"method": "sparse", "mask": {"min_layer": 4}, "cache_frozen_layers": True,
                           "cache_dtype": "float32"},
    "sparse-top2-cached-fp16": {"method": "sparse", "mask": {"min_layer": 4}, "cache_frozen_layers": True,
                                "cache_dtype": "float16"},
    # torch.compile (thirty-first session): its 'default' mode, and 'reduce-overhead' (CUDA graphs on a GPU).
    "full-compiled": {"method": "full", "compile": "default"},
    "sparse-compiled": {"method": "sparse", "compile": "default"},
    "full-graphs": {"method": "full", "compile": "reduce-overhead"},
    "sparse-graphs": {"method": "sparse", "compile": "reduce-overhead"},
    # SWA's recipe (twenty-fourth session): a constant rate, the trained weights averaged over the last half.
    "sparse-top2-cached-fp16-swa": {"method": "sparse", "mask": {"min_layer": 4}, "cache_frozen_layers": True,
                                    "cache_dtype": "float16", "schedule": "constant", "average_last": 0.5},
}


RECORD = "bench_core.json"
"""Written into a cell folder once its run succeeded: the spec it ran with, for the training-row limit,
which neither metrics.json nor clm_run.json records."""


def planned_settings(variant: str, epochs: int, lr: float, limit: int, curve_split: str) -> dict[str, Any]:
    """What a cell of this call must have trained with to be reused (lr 0 = the method's default rate)."""
    from clm_explore.training import DEFAULT_LR

    return {"lr": lr or DEFAULT_LR[VARIANTS[variant]["method"]], "epochs": epochs, "limit": limit,
            "curve_split": curve_split}


def recorded_settings(out: Path) -> dict[str, Any]:
    """status, lr, epochs, limit and curve_split as the cell folder records them (None where it does not)."""
    metrics, run, record = (read_json_object(out / name) for name in ("metrics.json", "clm_run.json", RECORD))
    curve = metrics.get("val_curve") or [{}]
    split = (run.get("config") or {}).get("curve_split") or curve[0].get("split")
    return {"status": metrics.get("status"), "lr": metrics.get("lr"), "epochs": metrics.get("epochs"),
            "limit": record.get("limit"), "curve_split": split}


def reuse_problem(out: Path, planned: dict[str, Any]) -> str:
    """'' when the cell in ``out`` succeeded with the ``planned`` settings, else why it must run (again).
    A setting the folder does not record is not judged (as ``clm-explore bench`` does): the cells published
    before RECORD existed have no limit written down, and rerunning them all would cost hours."""
    if not (out / "metrics.json").exists():
        return "not run yet"
    recorded = recorded_settings(out)
    if recorded["status"] != "succeeded":
        return f"its last run did not succeed (status {recorded['status']})"
    problems = []
    for key, want in planned.items():
        had = recorded[key]
        if had is None:
            continue
        if not (math.isclose(float(had), want, rel_tol=1e-6) if key == "lr" else had == want):
            problems.append(f"it ran with {key} {had}, now {want}")
    return "; ".join(problems)


def run_spec(out: Path, spec: dict) -> None:
    """Run one cell in a subprocess, then write its RECORD. A finished cell run again with other settings is set
    aside first (``set_aside``: nothing finished is lost, and a run that stops half way is not reused)."""
    from clm_explore.bench import set_aside

    if (out / "metrics.json").exists():
        print(f"  the old run is kept in {set_aside(out).name}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, __file__, "--cell", json.dumps(spec)], check=True, stdout=subprocess.DEVNULL)
    (out / RECORD).write_text(json.dumps({k: v for k, v in spec.items() if k != "threads"}, indent=1))


def run_cell(spec: dict) -> None:
    """Child process: one finetune, metrics to spec['out']/metrics.json."""
    import torch

    from clm_explore.config import FinetuneConfig
    from clm_explore.data import load_data
    from clm_explore.training import finetune

    torch.set_num_threads(spec["threads"])
    data = load_data(spec["data"])
    if spec["limit"]:
        fraction = min(1.0, spec["limit"] / len(data.train))
        data.train = data.train.groupby("label").sample(frac=fraction, random_state=0).reset_index(drop=True)
    cfg = FinetuneConfig.from_dict({**spec["config"], "curve_split": spec.get("curve_split", "test")})
    finetune(data, cfg, spec["out"], source=spec["model"], overwrite=True)  # a finished cell was set aside first


def time_selection(sens_dir: Path) -> dict[str, float]:
    from clm_explore.config import MaskConfig
    from clm_explore.masks import select_mask
    from clm_explore.sensitivity import SensitivityReport

    report = SensitivityReport.load(sens_dir)
    out = {}
    for budget in (0.001, 0.01, 0.1):
        started = time.perf_counter()
        for _ in range(5):
            select_mask(report, MaskConfig(budget=budget))
        out[f"select_ms@{budget:g}"] = (time.perf_counter() - started) / 5 * 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/banking77"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--budget", type=float, default=0.01)
    ap.add_argument("--limit", type=int, default=0, help="cap training rows (stratified), 0 = all")
    ap.add_argument("--variants", default="full,sparse,sparse-all-layers")
    ap.add_argument("--lr", default="", help="fixed learning rates per variant, e.g. full=6.7e-5,sparse=5e-3")
    ap.add_argument("--variant-epochs", default="",
                    help="epochs per variant where it differs from --epochs, e.g. sparse-top2-cached-fp16-swa=6")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32,
                    help="every variant's batch (a GPU's step at 32 is bound by launches, not arithmetic)")
    ap.add_argument("--reference", default="full", help="the variant the ratios divide by (e.g. full-graphs)")
    ap.add_argument("--out", default="bench/out/core")
    ap.add_argument("--curve-split", choices=("test", "validation"), default="test",
                    help="validation: a learning-rate sweep, scored on the validation split only")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        run_cell(json.loads(args.cell))
        return
    from clm_explore.cli.bench_cmds import parse_method_lrs  # the same METHOD=LR syntax as `bench --lr`

    lrs = parse_method_lrs(args.lr)
    epochs = parse_variant_epochs(args.variant_epochs, args.epochs)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for variant in args.variants.split(","):
            out = Path(args.out) / f"{variant}-s{seed}"
            planned = planned_settings(variant, epochs[variant], lrs.get(variant, 0.0), args.limit, args.curve_split)
            why = reuse_problem(out, planned)
            if why:
                config = {"epochs": epochs[variant], "seed": seed, "lr": lrs.get(variant, 0.0),
                          "batch_size": args.batch_size, **VARIANTS[variant]}
                config["mask"] = {"budget": args.budget, **config.get("mask", {})}
                spec = {"data": args.data, "model": args.model, "limit": args.limit, "threads": args.threads,
                        "config": config, "out": str(out), "curve_split": args.curve_split}
                print(f"running {variant} seed {seed} ({why}) ...", file=sys.stderr, flush=True)
                run_spec(out, spec)
            m = json.loads((out / "metrics.json").read_text())
            rows.append({"variant": variant, "seed": seed, **{k: m.get(k) for k in (
                "accuracy", "macro_f1", "train_seconds", "prep_seconds", "peak_memory_mb", "trainable_params",
                "lowest_layer", "lr")}, "epochs": len(m["epoch_seconds"]), "epoch_s": float(np.mean(m["epoch_seconds"])),
                         "later_epoch_s": _later_epochs_mean(m["epoch_seconds"]), "curve": m["val_curve"]})
    if args.curve_split == "validation":
        print(summarise_validation(pd.DataFrame(rows), args))
        return
    print(summarise(pd.DataFrame(rows), args))
    sens = Path(args.out) / f"sparse-s{args.seeds.split(',')[0]}" / "sensitivity"
    if sens.exists():
        print("\nselection from stored scores:", {k: round(v, 1) for k, v in time_selection(sens).items()})


def parse_variant_epochs(text: str, default: int) -> dict[str, int]:
    """``variant=N,...`` -> epochs per variant (every other variant gets ``default``)."""
    epochs: dict[str, int] = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        variant, _, value = item.partition("=")
        if variant not in VARIANTS or not value.isdigit() or int(value) < 1:
            raise SystemExit(f"--variant-epochs takes VARIANT=N pairs (N >= 1, VARIANT one of {', '.join(VARIANTS)}); "
                             f"got {item!r}")
        epochs[variant] = int(value)
    return {variant: epochs.get(variant, default) for variant in VARIANTS}


def _later_epochs_mean(seconds: list[float]) -> float:
    """Mean seconds of the epochs after the first: on a GPU the first also pays for start-up (the first use
    of CUDA and of each batch shape, by the look of it), 2-5 times a later epoch's cost in the thirtieth session."""
    return float(np.mean(seconds[1:])) if len(seconds) > 1 else float("nan")


def _mean_of_reached(seconds: list[float]) -> float:
    """Mean over the runs that reached the target; NaN when none did."""
    reached = [s for s in seconds if not np.isnan(s)]
    return float(np.mean(reached)) if reached else float("nan")


def _time_to_target(curve: list[dict], target: float) -> float:
    """Seconds until the per-epoch test accuracy first reaches ``target`` (a curve point's seconds
    already include the preparation: head warm-up, mining and scoring)."""
    for point in curve:
        if point["accuracy"] >= target:
            return point["seconds"]
    return float("nan")


def summarise_validation(df: pd.DataFrame, args: argparse.Namespace) -> str:
    """The sweep's table: validation accuracy after each epoch and at the end (the test split chooses nothing)."""
    df = df.assign(val_final=[c[-1]["accuracy"] for c in df["curve"]],
                   val_per_epoch=[" / ".join(f"{p['accuracy']:.4f}" for p in c) for c in df["curve"]])
    if any(p["split"] != "validation" for c in df["curve"] for p in c):  # a folder of a test-curve run
        raise SystemExit(f"{args.out} holds cells with a test curve: sweep into a folder of its own")
    lines = [f"validation sweep: data {args.data}  epochs {args.epochs}  budget {args.budget:g}  seeds {args.seeds}", ""]
    table = df[["variant", "lr", "seed", "val_final", "val_per_epoch", "epoch_s"]].round({"val_final": 4, "epoch_s": 1})
    lines.append(table.to_string(index=False))
    return "\n".join(lines)


def summarise(df: pd.DataFrame, args: argparse.Namespace) -> str:
    ref = args.reference
    ref_rows = df[df.variant == ref]
    lines = [f"reference {ref}  data {args.data}  epochs {args.epochs}  budget {args.budget:g}  seeds {args.seeds}  "
             f"limit {args.limit or 'all'}  threads {args.threads}  batch {args.batch_size}", ""]
    table = df.groupby("variant").agg(
        accuracy=("accuracy", "mean"), acc_std=("accuracy", "std"), macro_f1=("macro_f1", "mean"),
        epoch_s=("epoch_s", "mean"), later_epoch_s=("later_epoch_s", "mean"), prep_s=("prep_seconds", "mean"),
        peak_mb=("peak_memory_mb", "mean"),
        trainable=("trainable_params", "mean"), epochs=("epochs", "first"), lowest_layer=("lowest_layer", "first"), lr=("lr", "first"))
    if not ref_rows.empty:
        target = ref_rows["accuracy"].mean() - 0.005
        ref_total = ref_rows["train_seconds"].mean()  # preparation included, as in the curves
        table["epoch_ratio"] = table["epoch_s"] / table.loc[ref, "epoch_s"]
        table["later_ratio"] = table["later_epoch_s"] / table.loc[ref, "later_epoch_s"]
        table["memory_ratio"] = table["peak_mb"] / table.loc[ref, "peak_mb"]
        table["time_to_full-0.5pt"] = [
            _mean_of_reached([_time_to_target(c, target) for c in df[df.variant == v]["curve"]]) for v in table.index]
        table["ttt_ratio"] = table["time_to_full-0.5pt"] / ref_total
        lines.append(f"target for time-to-accuracy: {ref}'s mean final test accuracy - 0.5 pt = {target:.4f}; "
                     f"{ref}'s total time (training + head warm-up) {ref_total:.1f} s")
    lines.append(table.round(4).to_string())
    return "\n".join(lines)


if __name__ == "__main__":
    main()
