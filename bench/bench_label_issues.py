"""How well the label audit finds labels that are wrong: a share of the training rows get another label (drawn at
random among the others, seeded), the audit runs on the training split, and the table says how many of the changed
rows it flagged (recall), how many of its flags were changed rows (precision: flags on unchanged rows may still be
the data's own errors), the same for its first k flags (k = rows changed), and its seconds.

    python bench/bench_label_issues.py --data ../shared/data/banking77 --rates 0,0.02,0.05 --seeds 0,1
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def changed(train, rate: float, seed: int):
    """A copy of ``train`` with ``rate`` of its rows given another label, and the positions changed."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(train), int(round(rate * len(train))), replace=False))
    labels = np.array(sorted(train["label"].unique()))
    out = train.copy()
    for row in rows:
        out.iloc[row, out.columns.get_loc("label")] = rng.choice(labels[labels != out["label"].iloc[row]])
    return out, set(rows.tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="default")
    parser.add_argument("--rates", default="0,0.02,0.05", help="shares of training rows relabelled")
    parser.add_argument("--seeds", default="0", help="seeds of the relabelling")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from clm_explore.config import LabelAuditConfig
    from clm_explore.data import load_data
    from clm_explore.label_issues import find_label_issues
    from clm_explore.modeling import load_model

    data = load_data(args.data)
    loaded = load_model(args.model, data.labels)
    cfg = LabelAuditConfig(splits=("train",))
    print(f"{data.source}: {len(data.train):,} training rows, {len(data.labels)} labels, model {args.model}")
    print("| relabelled | seed | flagged | recall | precision | precision of the first k | probe accuracy | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for rate in (float(r) for r in args.rates.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            train, truth = changed(data.train, rate, seed)
            started = time.perf_counter()
            result = find_label_issues(loaded, load_data({"train": train, "validation": data.validation,
                                                          "test": data.test}), cfg)
            seconds = time.perf_counter() - started
            flagged = result.issues["row"].tolist()
            hits = len(truth & set(flagged))
            first = len(truth & set(flagged[: len(truth)]))
            recall = f"{hits / len(truth):.3f} ({hits}/{len(truth)})" if truth else "-"
            precision = f"{hits / len(flagged):.3f}" if truth and flagged else "-"
            first_k = f"{first / len(truth):.3f}" if truth else "-"
            print(f"| {rate:.0%} ({len(truth)}) | {seed} | {len(flagged)} | {recall} | {precision} | {first_k} | "
                  f"{result.probe_accuracy:.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
