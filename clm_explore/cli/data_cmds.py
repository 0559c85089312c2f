"""``clm-explore validate DATA``: load a data set, check it and print what it holds."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from clm_explore.cli import add_data_args, print_json
from clm_explore.config import DataConfig

if TYPE_CHECKING:  # pandas and scikit-learn load only when the command runs, so --help stays fast
    from clm_explore.data import DataReport

_LABELS_SHOWN = 30
"""Label table rows printed before '... and N more' (the JSON output always has all of them)."""


def register(subparsers: Any) -> None:
    """Add the ``validate`` sub-command."""
    parser = subparsers.add_parser(
        "validate",
        help="check a data set and print a report",
        description="Load DATA, check it (columns, encoding, empty rows, labels, splits) and print a report. "
        "Exit 0 when the data is usable, 2 with a message saying what to fix when it is not.",
    )
    add_data_args(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    """Load, report, print; a ``DataError`` propagates to ``cli.main`` (exit 2)."""
    cfg = DataConfig(text_col=args.text_col, label_col=args.label_col, max_file_mb=args.max_file_mb)
    from clm_explore.data import data_report, load_data

    report = data_report(load_data(args.data, cfg))
    if args.json:
        print_json(report.to_dict())
    else:
        print(format_report(report))
    return 0


def format_report(report: DataReport) -> str:
    """A plain-text report: sizes, labels, lengths, notes and problems."""
    lines = [
        f"Data: {report.source}",
        f"Usable: {report.rows:,} rows, {len(report.labels)} labels "
        f"(train {report.splits['train']:,}, validation {report.splits['validation']:,}, "
        f"test {report.splits['test']:,}).",
        "",
        *_length_lines(report),
        "",
        *_label_lines(report),
    ]
    for title, items in (("Notes", report.notes), ("Problems", report.problems)):
        lines += ["", f"{title}:", *(f"  - {item}" for item in items)] if items else ["", f"{title}: none"]
    return "\n".join(lines)


def _length_lines(report: DataReport) -> list[str]:
    lines = ["Text length     min  median     p95     max"]
    for unit in ("chars", "words"):
        s = report.lengths["all"][unit]
        lines.append(f"  {unit:<11}{s['min']:>6}{s['median']:>8g}{s['p95']:>8g}{s['max']:>8}")
    return lines


def _label_lines(report: DataReport) -> list[str]:
    from clm_explore.data import SPLITS

    width = min(40, max(len("label"), *(len(label) for label in report.label_counts)))
    lines = [f"{'label':<{width}}  " + "  ".join(f"{s:>10}" for s in SPLITS)]
    items = list(report.label_counts.items())
    for label, counts in items[:_LABELS_SHOWN]:
        lines.append(f"{label[:width]:<{width}}  " + "  ".join(f"{counts[s]:>10,}" for s in SPLITS))
    if len(items) > _LABELS_SHOWN:
        lines.append(f"... and {len(items) - _LABELS_SHOWN} more labels (see --json)")
    return lines
