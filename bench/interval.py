"""The difference between two methods' mean test accuracy, with its 95% Welch interval, from per-seed runs.

Each side is NAME=SPEC, SPEC a comma-separated list of accuracies or of run folders (their metrics.json);
the first side minus the second is reported in points, as `clm-explore bench` prints it (comparison.csv holds fractions)
(clm_explore.bench_results.difference_interval), with the ratio of their seed stds and its 95% interval
(F distribution; std_ratio_interval).

    python bench/interval.py sparse=0.9331,0.9377,0.9305 full=0.9351,0.9279,0.9338
    python bench/interval.py sparse=bench/out/b77-probe/epochs-12-s0,bench/out/b77-probe/epochs-12-s1 full=...
    python bench/interval.py --metric macro_f1 sparse=RUN,RUN full=RUN,RUN
    python bench/interval.py --metric out_of_scope.accuracy sparse=RUN,RUN full=RUN,RUN   # with abstention
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from clm_explore.bench_results import (
    difference_interval,
    interval_verdict,
    metric_at,
    std_ratio,
    std_ratio_interval,
)


def read_side(spec: str, metric: str) -> tuple[str, list[float]]:
    name, _, values = spec.partition("=")
    if not values:
        raise SystemExit(f"{spec!r}: expected NAME=VALUE,VALUE,... or NAME=RUN_DIR,RUN_DIR,...")
    out = []
    for item in values.split(","):
        path = Path(item)
        if path.is_dir():
            out.append(_read_metric(path, metric))
            continue
        try:
            out.append(float(item))
        except ValueError:
            raise SystemExit(f"{item!r}: neither a run folder nor a number") from None
    return name, out


def _read_metric(run: Path, metric: str) -> float:
    """A metrics.json value; a dotted key reads a nested one (out_of_scope.accuracy: the accuracy with abstention)."""
    if not (run / "metrics.json").is_file():
        raise SystemExit(f"{run} has no metrics.json: a run still going, or one that failed")
    value = metric_at(json.loads((run / "metrics.json").read_text()), metric.split("."))
    if value is None:
        raise SystemExit(f"{run}/metrics.json has no number at {metric!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--metric", default="accuracy", help="metrics.json key for run folders, dotted for a nested one (default accuracy)")
    args = parser.parse_args()
    (a_name, a), (b_name, b) = read_side(args.first, args.metric), read_side(args.second, args.metric)
    diff, low, high = difference_interval(a, b)
    spread = ""
    if min(len(a), len(b)) > 1:
        ratio, (ratio_low, ratio_high) = std_ratio(a, b), std_ratio_interval(a, b)
        bounds = "" if math.isnan(ratio_low) else f" [{ratio_low:.2f}, {ratio_high:.2f}]"  # NaN: a side without spread
        spread = f", std {statistics.stdev(a):.4f} vs {statistics.stdev(b):.4f}" + (
            "" if math.isnan(ratio) else f" (ratio {ratio:.2f}{bounds})")  # NaN: b has no spread
    verdict = interval_verdict(low, high, min(len(a), len(b)))
    interval = "" if math.isnan(low) else f" [{low * 100:+.2f}, {high * 100:+.2f}]"  # NaN: one seed or no spread
    print(f"{a_name} - {b_name}: {diff * 100:+.2f} points{interval} {verdict} "
          f"({len(a)} vs {len(b)} seeds{spread})")


if __name__ == "__main__":
    main()
