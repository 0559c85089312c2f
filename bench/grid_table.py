"""Print a bench grid folder's summary as a Markdown table (for BENCHMARKS.md), with the chosen LRs.

    python bench/grid_table.py bench/out/snips-10shot [more folders ...]
    python bench/grid_table.py --merge bench/out/snips-full bench/out/snips-full-others   # one table

Columns: method (budget; the row score when not Fisher), learning rate, accuracy and macro-F1 as mean ± std over seeds, seeds,
trainable share, train seconds (preparation included) and peak memory, each a mean over seeds.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd


def _pm(mean: float, std: float) -> str:
    """``mean ± std``; the mean alone where there is no std (one seed): "± 0.000" claimed a stability never measured."""
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def grid_table(*folders: Path) -> str:
    """One table of the summaries of the given grid folders (same data and settings, split over folders)."""
    s = pd.concat([pd.read_csv(folder / "summary.csv") for folder in folders], ignore_index=True)
    lines = [", ".join(f"`{folder}`" for folder in folders), "",
             "| method | LR | test acc | macro-F1 | seeds | trainable | train s (incl. prep) | peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in s.iterrows():
        name = r["method"] if pd.isna(r["budget"]) else f"{r['method']} @ {r['budget']:g}"
        if isinstance(r.get("score"), str) and r["score"] not in ("", "fisher"):  # the row score, when not the default
            name += f" ({r['score']} rows)"
        lines.append(f"| {name} | {r['lr']:.3g} | {_pm(r['accuracy_mean'], r['accuracy_std'])} | "
                     f"{_pm(r['macro_f1_mean'], r['macro_f1_std'])} | {r['seeds']} | "
                     f"{r['trainable_share_mean'] * 100:.2f}% | {r['train_seconds_mean']:.0f} | "
                     f"{r['peak_memory_mb_mean']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if args else 2)
    if missing := [f for f in args if f != "--merge" and not (Path(f) / "summary.csv").is_file()]:
        sys.exit(f"not a bench grid folder (no summary.csv): {', '.join(missing)}")
    if args[0] == "--merge":
        print(grid_table(*map(Path, args[1:])))
    else:
        print("\n\n".join(grid_table(Path(f)) for f in args))
