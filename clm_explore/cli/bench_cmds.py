"""``bench``: the method x budget x seed grid, each cell a ``finetune`` subprocess (see clm_explore.bench)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clm_explore.cli import UserError, add_data_args, data_config, print_json
from clm_explore.config import METHODS, PREFIX_INITS, SCHEDULES, TUNE_WIDEN, FinetuneConfig

if TYPE_CHECKING:
    import pandas as pd

    from clm_explore.bench import BenchConfig


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="run a benchmark grid of methods, budgets and seeds (resumable)",
                              description="Runs every (method, budget, seed) cell as a `finetune` subprocess, "
                              "skips cells finished earlier in the same --out folder, and writes results.csv, "
                              "summary.csv, comparison.csv (differences with 95% Welch intervals), masks.csv, "
                              "overlap.csv and report.html there.")
    add_data_args(p, positional=False)
    p.add_argument("--methods", default="full,sparse,lora", help=f"comma-separated, among: {', '.join(METHODS)}")
    p.add_argument("--budgets", default="0.01", help="comma-separated budgets of the budgeted methods "
                   "(sparse, sparse_merged, layers, random, fisher, gradient); ignored by the others")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per cell")
    p.add_argument("--epochs", type=int, default=FinetuneConfig.epochs, help="every cell's epochs")
    p.add_argument("--shots", type=int, default=0, metavar="K",
                   help="K training (and validation) rows per label, all of a label's where it has fewer (few-shot; "
                   "0 = all)")
    p.add_argument("--limit", type=int, default=0, metavar="N",
                   help="cap training rows at N and validation rows at N/4 (at least one per label), stratified "
                   "(0 = all)")
    p.add_argument("--data-seed", type=int, default=0, metavar="S",
                   help="seeds which rows --shots and --limit draw; every seed of the grid trains on that one draw "
                   "(a grid per data seed, each in its own --out, gives the spread over draws)")
    p.add_argument("--tune-lr", action="store_true",
                   help="per method, sweep 3 learning rates on a validation split (never test), more where the best "
                   "is at an edge (--tune-widen), and use the best")
    p.add_argument("--tune-widen", type=int, default=TUNE_WIDEN, metavar="N",
                   help="with --tune-lr: where the best rate is the lowest or highest tried, try one more a factor "
                   "of 3 further, up to N times per method (0 = the 3 rates only)")
    p.add_argument("--tune-each-budget", action="store_true",
                   help="with --tune-lr: sweep every budget of the budgeted methods, not only the middle one")
    p.add_argument("--lr", default="", metavar="M=LR,...",
                   help="fixed learning rates per method, e.g. sparse=5e-3,full=6.7e-5 (others: their default)")
    p.add_argument("--weight-decay", default="", metavar="M=WD,...",
                   help="AdamW weight decay per method, e.g. sparse=1.0 (finetune --weight-decay; others: none)")
    p.add_argument("--tune-score", action="store_true",
                   help="with --tune-lr: sweep the row score of sparse/sparse_merged too (fisher, taylor) and use "
                   "the best (rate, score) pair on validation")
    p.add_argument("--tune-spread", action="store_true",
                   help="with --tune-lr: sweep sparse/sparse_merged with the attention rows as scored and spread over "
                   "the heads too, and use the best on validation (with --tune-score: every score both ways)")
    p.add_argument("--score", default="", metavar="M=SCORE,...",
                   help="fixed row scores of sparse/sparse_merged, e.g. sparse=taylor (others: fisher); a score "
                   "ending in +spread also spreads the attention rows over the heads, e.g. sparse=fisher+spread")
    p.add_argument("--cold-head", action="store_true",
                   help="every cell trains from the head as loaded, not the warmed-up one (finetune --cold-head)")
    p.add_argument("--spread-heads", action="store_true",
                   help="the top-row methods (sparse, sparse_merged, fisher, gradient) take each attention map's rows "
                   "round-robin over its heads (finetune --spread-heads)")
    p.add_argument("--schedule", default=FinetuneConfig.schedule, choices=SCHEDULES,
                   help="every cell's learning rate after the warm-up: linear or cosine decay to 0, or constant")
    p.add_argument("--average-last", type=float, default=FinetuneConfig.average_last, metavar="SHARE",
                   help="every cell averages its trained weights over this last share of the steps (0 = off); "
                   "with --schedule constant and 0.5 it is SWA's recipe")
    p.add_argument("--prefix-init", choices=PREFIX_INITS, default=FinetuneConfig.prefix_init,
                   help="where the prefix method's keys and values start (finetune --prefix-init)")
    p.add_argument("--keep-best", action="store_true",
                   help="every cell saves and scores its best epoch on validation (finetune --keep-best)")
    p.add_argument("--early-stop", type=int, default=FinetuneConfig.early_stop, metavar="N",
                   help="every cell stops after N epochs without a better validation accuracy (0 = off)")
    p.add_argument("--model", default="default", metavar="SRC",
                   help="'default' (all-MiniLM-L6-v2), 'tiny-random', a local HF folder, a .gguf file or 'smollm2'")
    p.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size, help="every cell's rows per step")
    p.add_argument("--max-length", type=int, default=FinetuneConfig.max_length,
                   help="every cell's sub-tokens per text")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="cells run at the same time, each its own process; with several GPUs each gets one in turn, "
                   "on a CPU cores/N threads each unless OMP_NUM_THREADS is set")
    p.add_argument("--out", default="bench-out", metavar="DIR", help="grid folder; rerun with it to resume")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_bench)


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise UserError(f"--{what} must be comma-separated numbers, got {text!r}") from exc


def parse_method_lrs(text: str, flag: str = "--lr", example: str = "sparse=5e-3") -> dict[str, float]:
    """``METHOD=NUMBER`` pairs (``--lr``, ``--weight-decay``) as a dict."""
    numbers = {}
    for method, value in _method_pairs(text, flag, "METHOD=" + flag.lstrip("-").upper(), example):
        try:
            numbers[method] = float(value)
        except ValueError as exc:
            raise UserError(f"{flag} takes METHOD={flag.lstrip('-').upper()} pairs separated by commas, e.g. "
                            f"{example}; got {value!r}") from exc
    return numbers


def parse_method_scores(text: str) -> dict[str, str]:
    return dict(_method_pairs(text, "--score", "METHOD=SCORE", "sparse=taylor"))


def _method_pairs(text: str, flag: str, shape: str, example: str) -> list[tuple[str, str]]:
    pairs = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        method, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"{flag} takes {shape} pairs separated by commas, e.g. {example}; got {item!r}")
        pairs.append((method.strip(), value.strip()))
    return pairs


def bench_config(args: argparse.Namespace) -> BenchConfig:
    from clm_explore.bench import BenchConfig

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return BenchConfig(methods=methods, budgets=_floats(args.budgets, "budgets"), seeds=args.seeds,
                       epochs=args.epochs, shots=args.shots, limit=args.limit, data_seed=args.data_seed,
                       tune_lr=args.tune_lr,
                       tune_widen=args.tune_widen, tune_each_budget=args.tune_each_budget,
                       lr=parse_method_lrs(args.lr), tune_score=args.tune_score, tune_spread=args.tune_spread, score=parse_method_scores(args.score),
                       cold_head=args.cold_head, spread_heads=args.spread_heads, schedule=args.schedule, average_last=args.average_last,
                       prefix_init=args.prefix_init, keep_best=args.keep_best, early_stop=args.early_stop,
                       model=args.model, batch_size=args.batch_size,
                       weight_decay=parse_method_lrs(args.weight_decay, "--weight-decay", "sparse=1.0"),
                       max_length=args.max_length, device=args.device, jobs=args.jobs,
                       data=str(Path(args.data).resolve()))


def _first_error(results) -> str | None:
    """The first failed cell's error text (its log's last lines but the data's warnings and notes), or None when every cell finished."""
    errors = results.loc[results["status"] != "succeeded", "error"].dropna().astype(str)
    return errors.iloc[0] if len(errors) else None


def run_bench(args: argparse.Namespace) -> int:
    from clm_explore.bench import run_grid
    from clm_explore.bench_results import collapsed_note, devices_note, timing_note

    cfg = bench_config(args)
    data_cfg = data_config(args)
    try:
        result = run_grid(args.data, cfg, args.out, data_cfg)  # a plain `kill` stops it as Ctrl+C does (cli.main)
    except KeyboardInterrupt:
        print(f"the finished cells are kept, and results.csv and report.html say what finished; run the same command "
              f"again to resume (outputs in {args.out})", file=sys.stderr)
        raise
    summary = result.summary
    # Any cell that did not finish fails the command (exit 1, as pytest's failures do), so a script or a CI job
    # notices a partial grid; the tables of what finished are written all the same (the bench review).
    failed = result.results[result.results["status"] != "succeeded"]
    if args.json:
        print_json({"out_dir": str(result.out_dir), "files": {k: str(v) for k, v in result.files.items()},
                    "lr": result.lrs, "score": result.scores, "cells": len(result.results),
                    "lr_at_edge": _edges(result.tuning), "lr_chosen_by": _chosen_by(result.tuning),
                    "failed": int((result.results["status"] != "succeeded").sum()),
                    "collapsed": int((result.results["labels_predicted"] == 1).sum()),
                    "first_error": _first_error(result.results),
                    "summary": summary.to_dict(orient="records"),
                    "comparison": result.comparison.to_dict(orient="records")})
        return 1 if len(failed) else 0

    if summary.empty:  # every cell failed: say why (the first cell's error) and fail, so scripts notice
        first = _first_error(result.results) or "none recorded"
        print(f"no cell finished ({len(failed)} failed); the first error: {first}\n"
              f"logs in {args.out}/logs; report: {result.files['report']}", file=sys.stderr)
        return 1
    cols = [c for c in ("method", "budget", "score", "seeds", "accuracy_mean", "accuracy_std", "macro_f1_mean",
                        "trainable_share_mean", "train_seconds_mean", "peak_memory_mb_mean") if c in summary]
    if "score" in summary and not summary["score"].fillna("").astype(bool).any():
        cols.remove("score")  # no method of this grid has a row score to show
    if "over_budget" in summary and summary["over_budget"].any():
        cols.append("over_budget")  # whole layers above the budget: their share is not the budget's
    # Test rows with labels unseen in train: plain accuracy counts them all wrong (0.003 on hint3_curekart, where
    # they are half the test rows), and their figures were in the CSV alone (the bench review).
    if "oos_accuracy_mean" in summary:
        cols.insert(cols.index("macro_f1_mean") + 1, "oos_accuracy_mean")
    print(summary[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-"))  # full: no budget
    for line in sweep_lines(result.tuning):
        print(line)
    for line in comparison_lines(result.comparison):
        print(line)
    for note in (collapsed_note(result.results), devices_note(result.results), timing_note(result.results)):
        if note:
            print(f"note: {note}", file=sys.stderr)
    if len(failed):
        print(f"{len(failed)} cell(s) did not finish; rerun the same command to retry them (logs in {args.out}/logs).",
              file=sys.stderr)
    print(f"report: {result.files['report']}")
    return 1 if len(failed) else 0


CHOSEN_BY_WORDS = {"tie": " (every rate tied: the default by the tie)",
                   "part": " (not every rate of its sweep finished)"}
"""What ``sweep_lines`` says of a rate not chosen on a full sweep's scores (tuning.csv's ``chosen_by``)."""


def sweep_lines(tuning: pd.DataFrame | None) -> list[str]:
    """The rates (and row scores) the sweep chose, and a warning for each still at the edge of what it tried."""
    if tuning is None or not tuning["chosen"].any():
        return []
    chosen = tuning[tuning["chosen"]]
    names = _chosen_names(chosen)
    picks = ", ".join(f"{name}={r['lr']:.3g}" + (f" ({r['score']})" if r["score"] else "")
                      + CHOSEN_BY_WORDS.get(r.get("chosen_by") or "", "")
                      for name, (_, r) in zip(names, chosen.iterrows(), strict=True))
    lines = [f"learning rates chosen on validation: {picks}"]
    for name, (_, r) in zip(names, chosen.iterrows(), strict=True):
        if r["edge"]:
            lines.append(f"  {name}: {r['lr']:.3g} is the {r['edge']} rate tried, so a wider sweep may do better "
                         "(raise --tune-widen in a new --out)")
    return lines


def comparison_lines(comparison: pd.DataFrame) -> list[str]:
    """One line per compared pair: the accuracy difference in points, its interval, the verdict, the std ratio,
    and the accuracy with abstention where test has out-of-scope rows."""
    if comparison.empty:
        return []
    lines = ["test accuracy differences in points (mean over seeds, 95% Welch interval):"]
    for _, r in comparison.iterrows():
        pair = f"{_name(r['method'], r['budget'])} - {_name(r['versus'], r['versus_budget'])}"
        ratio = "" if math.isnan(r["std_ratio"]) else f", std ratio {_ratio(r)}"
        scope = f"; with abstention {_points(r, 'oos_accuracy')}" if "oos_accuracy_diff" in r else ""
        lines.append(f"  {pair}: {_points(r, 'accuracy')} {r['verdict']} "
                     f"({r['seeds']} vs {r['versus_seeds']} seeds{ratio}){scope}")
    return lines


def _chosen_by(tuning: pd.DataFrame | None) -> dict[str, str]:
    """Per method whose rate a tie chose ('tie') or a sweep that did not finish ('part')."""
    if tuning is None or "chosen_by" not in tuning:
        return {}
    chosen = tuning[tuning["chosen"]]
    return {name: how for name, how in zip(_chosen_names(chosen), chosen["chosen_by"], strict=True) if how}


def _edges(tuning: pd.DataFrame | None) -> dict[str, str]:
    """Per method whose chosen rate is the lowest or highest its sweep tried: which edge."""
    if tuning is None:
        return {}
    chosen = tuning[tuning["chosen"]]
    return {name: edge for name, edge in zip(_chosen_names(chosen), chosen["edge"], strict=True) if edge}


def _chosen_names(chosen: pd.DataFrame) -> list[str]:
    """'sparse', or 'sparse@0.05' where a method has a choice per budget (tune_each_budget)."""
    per_budget = chosen["method"].duplicated(keep=False)
    return [_name(m, b) if several else m
            for m, b, several in zip(chosen["method"], chosen["budget"], per_budget, strict=True)]


def _ratio(row: pd.Series) -> str:
    """'0.50 [0.16, 1.55]': the std ratio and its interval (none where one side has no spread)."""
    low, high = row["std_ratio_low"], row["std_ratio_high"]
    return f"{row['std_ratio']:.2f}" + ("" if math.isnan(low) else f" [{low:.2f}, {high:.2f}]")


def _points(row: pd.Series, metric: str) -> str:
    """'+0.10 [-0.31, +0.50]': a difference and its interval in points (no interval with one seed a side or no spread)."""
    low, high = row[f"{metric}_low"], row[f"{metric}_high"]
    interval = "" if math.isnan(low) else f" [{low * 100:+.2f}, {high * 100:+.2f}]"
    return f"{row[f'{metric}_diff'] * 100:+.2f}{interval}"


def _name(method: str, budget: float) -> str:
    return method if math.isnan(budget) else f"{method}@{budget:g}"


