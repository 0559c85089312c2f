"""``clm-explore validate DATA`` (load a data set, check it and print what it holds) and ``clm-explore audit DATA``
(rows whose label their own text disputes)."""

from __future__ import annotations

import argparse
import sys
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clm_explore.cli import (
    LINE_BREAK_ESCAPES,
    UserError,
    add_data_args,
    data_config,
    phase_printer,
    print_json,
    truncation_side_arg,
)
from clm_explore.config import FinetuneConfig, LabelAuditConfig

if TYPE_CHECKING:  # pandas and scikit-learn load only when the command runs, so --help stays fast
    from clm_explore.data import DataReport
    from clm_explore.label_issues import LabelIssues

_LABELS_SHOWN = 30
"""Label table rows printed before '... and N more' (the JSON output always has all of them)."""


def register(subparsers: Any) -> None:
    """Add the ``validate`` sub-command."""
    parser = subparsers.add_parser(
        "validate",
        help="check a data set and print a report",
        description="Load DATA, check it (columns, encoding, empty rows, labels, splits) and print a report. "
        "Exit 0 when the data is usable (its problems, such as duplicates or rare labels, listed; exit 1 for them "
        "with --strict), 2 with a message saying what to fix when it is not.",
    )
    add_data_args(parser, carve=True)  # no --shots: a report on a draw hid the data's problems (the diff review)
    parser.add_argument("--model", default=None, metavar="SRC",
                        help="also count each text's sub-tokens with this model's tokenizer ('default', "
                        "'tiny-random', a folder) and how many are longer than --max-length (loads the tokenizer: "
                        "seconds)")
    parser.add_argument("--max-length", type=int, default=FinetuneConfig.max_length, metavar="N",
                        help="with --model: the sub-tokens a run reads per text, which longer texts are cut to")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when the report lists problems (a script or CI check that must stop on them)")
    parser.set_defaults(func=run_validate, light=True)  # no model: torch and transformers left unimported
    _register_audit(subparsers)


def _register_audit(subparsers: Any) -> None:
    defaults = LabelAuditConfig()
    parser = subparsers.add_parser(
        "audit",
        help="find rows whose label is likely wrong",
        description="Flag rows whose label their own text disputes: confident learning (cleanlab's "
        "confident_learning filter) over out-of-fold probabilities of a linear probe on the model's frozen features. One forward pass, no "
        "finetuning; most disputed first.",
    )
    add_data_args(parser, carve=True)
    parser.add_argument("--model", default="default", metavar="SRC",
                        help="'default' (all-MiniLM-L6-v2), 'tiny-random', a local HF folder, a .gguf file or 'smollm2'")
    parser.add_argument("--splits", default=",".join(defaults.splits),
                        help="splits audited together, comma-separated")
    parser.add_argument("--folds", type=int, default=defaults.folds,
                        help="cross-validation folds: each row is judged by a probe that never saw it")
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="sub-tokens read per text")
    truncation_side_arg(parser, "as the runs it serves cut them (finetune --truncation-side)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--show", type=int, default=30, help="flagged rows printed (human output; --json has all)")
    parser.add_argument("--out", default=None, metavar="FILE", help="also write every flagged row to this CSV file")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: {checked, flagged, probe_accuracy, notes, issues: [{split, row, text, label, "
                        "suggested, label_prob, suggested_prob}]}")
    parser.set_defaults(func=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    from clm_explore.cli import load_noted_data
    from clm_explore.data import write_csv
    from clm_explore.label_issues import find_label_issues
    from clm_explore.modeling import load_model

    cfg = LabelAuditConfig(folds=args.folds, max_length=args.max_length, truncation_side=args.truncation_side,
                           splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()))
    if args.show < 0:
        raise UserError(f"--show {args.show} must be 0 or more.")
    out = audit_out_path(args.out) if args.out is not None else None
    data = load_noted_data(args)
    # TooFewRowsError (too few rows per label for the folds) is a DataError: exit 2 with its message.
    result = find_label_issues(load_model(args.model, data.labels), data, cfg, device=args.device,
                               on_progress=phase_printer())
    if out is not None:
        write_csv(result.issues, out)
        print(f"wrote the {len(result.issues):,} flagged row(s) to {out}", file=sys.stderr)
    if args.json:
        print_json({"checked": result.checked, "flagged": len(result.issues), "probe_accuracy": result.probe_accuracy,
                    "notes": result.notes, "issues": result.to_records()})
        return 0
    print(format_audit(result, args.show))
    return 0


def audit_out_path(given: str) -> Path:
    """``--out`` of ``audit``: a new .csv file, or an earlier audit's CSV to replace (``csv_out_path``)."""
    from clm_explore.label_issues import ISSUE_COLUMNS

    return csv_out_path(given, ",".join(ISSUE_COLUMNS), "an earlier audit's CSV", exact=True)


def csv_out_path(given: str, header: str, kind: str, exact: bool = False) -> Path:
    """``--out``: a new .csv file in an existing folder, or a CSV this command wrote before (its header is ``header``,
    or starts with it unless ``exact``) to replace; never a data file, a run's predictions.csv or any other file (a
    path typed wrong must not destroy it). ``kind`` names what may be replaced in the refusal."""
    from clm_explore.cli import UserError

    out = Path(given).expanduser()
    if out.suffix.lower() != ".csv":
        raise UserError(f"--out {given!r} must name a .csv file.")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist.")
    if out.exists():
        try:
            with out.open(encoding="utf-8-sig") as f:  # the app's downloads lead with UTF-8's byte order mark
                found = f.readline().strip()
        except (OSError, UnicodeDecodeError):
            found = ""
        if not (found == header if exact else found.startswith(header)):
            raise UserError(f"--out {out} exists and is not {kind}; choose a new file name.")
    return out


def format_audit(result: LabelIssues, show: int) -> str:
    """The flagged rows as a table (the text cut to 60 characters), with what was checked."""
    lines = [f"{len(result.issues):,} of {result.checked:,} rows flagged ({result.seconds:.1f} s); the probe judging "
             f"them is right on {result.probe_accuracy:.1%} of the rows it did not see."]
    lines += [f"note: {note}" for note in result.notes]
    if len(result.issues) and show:
        shown = result.issues.head(show).assign(text=lambda f: f["text"].str.slice(0, 60))
        lines += ["", shown.to_string(index=False, float_format=probability_text)]
    if len(result.issues) > show:
        lines.append(f"... and {len(result.issues) - show:,} more (--show N, --json or --out FILE)")
    return "\n".join(lines)


def probability_text(p: float) -> str:
    """A probability at 3 decimals, but never 0.000 or 1.000 for one that is neither: a confident probe gives its
    rows such probabilities, and the table ranks them by the smallest (the JSON and --out keep them in full)."""
    if 0 < p < 0.0005:
        return f"{p:.1e}"
    if 0.9995 <= p < 1:
        return ">0.999"
    return f"{p:.3f}"


def run_validate(args: argparse.Namespace) -> int:
    """Load, report, print; a ``DataError`` propagates to ``cli.main`` (exit 2)."""
    cfg = data_config(args)
    from clm_explore.data import data_report, load_data

    data = load_data(args.data, cfg)
    report = data_report(data)
    counted = sub_token_counts(data, args.model, args.max_length) if args.model else None
    if args.json:
        print_json({**report.to_dict(), **({"sub_tokens": counted} if counted else {})})
    else:
        print(format_report(report) + (f"\n\n{sub_token_text(counted)}" if counted else ""))
    return 1 if args.strict and report.problems else 0


def sub_token_counts(data: Any, model: str, max_length: int) -> dict[str, Any]:
    """Each text's sub-tokens under ``model``'s tokenizer (every split, counted up to 512) and how many a run
    reading ``max_length`` cuts: the long-text review's CLI path (validate, finetune, evaluate) never counted them,
    while the app's Data page did."""
    if not 8 <= max_length <= 512:
        raise UserError(f"--max-length {max_length} must be in 8..512.")
    import numpy as np

    from clm_explore.batches import sub_token_lengths
    from clm_explore.modeling import load_tokenizer, source_positions

    if (positions := source_positions(model)) and max_length > positions:  # as finetune refuses it
        raise UserError(f"--max-length {max_length} is above the {positions} positions a text may take in {model}.")

    texts = [text for split in ("train", "validation", "test") for text in data.split(split)["text"]]
    lengths = np.asarray(sub_token_lengths(load_tokenizer(model), texts, 512))
    return {"model": model, "max_length": max_length, "texts": len(texts),
            "longer": int((lengths > max_length).sum()), "min": int(lengths.min()),
            "median": float(np.median(lengths)), "p95": round(float(np.percentile(lengths, 95))),
            "max": int(lengths.max()), "max_is_more": bool(lengths.max() > 512)}


def sub_token_text(counted: dict[str, Any]) -> str:
    """``sub_token_counts`` in lines: the lengths, then the texts a run would cut."""
    longest = "more than 512" if counted["max_is_more"] else f"{counted['max']:,}"
    lines = [f"Sub-tokens ({counted['model']}'s tokenizer, markers included): min {counted['min']:,}, median "
             f"{counted['median']:g}, p95 {counted['p95']:,}, max {longest}."]
    share = counted["longer"] / max(counted["texts"], 1)
    lines.append(f"{counted['longer']:,} of {counted['texts']:,} texts ({share:.1%}) are longer than the "
                 f"{counted['max_length']} sub-tokens a run reads (--max-length): only their start is read."
                 if counted["longer"] else f"Every text fits in the {counted['max_length']} sub-tokens a run reads.")
    return "\n".join(lines)


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
        lines += ["", f"{title}:", *(f"  - {_shown(item)}" for item in items)] if items else ["", f"{title}: none"]
    return "\n".join(lines)


def _shown(text: str) -> str:
    """``text`` on one line of the report: a label's tab or line break written as its escape (a raw tab broke the
    label table's columns), backslashes as they are (a note's Windows path)."""
    return text.translate(LINE_BREAK_ESCAPES)


def _length_lines(report: DataReport) -> list[str]:
    lines = ["Text length     min  median     p95     max"]
    for unit in ("chars", "words"):
        s = report.lengths["all"][unit]
        lines.append(f"  {unit:<11}{s['min']:>6}{s['median']:>8g}{s['p95']:>8g}{s['max']:>8}")
    return lines


def display_width(text: str) -> int:
    """The columns a terminal gives ``text``: a Chinese character or an emoji takes two, a combining accent none
    (padding by ``len`` put the columns after Chinese labels out of line: the language review)."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _cut_to_width(text: str, width: int) -> str:
    """``text`` as it fits in ``width`` columns, cut with "…" (said so) where it does not."""
    if display_width(text) <= width:
        return text
    while text and display_width(text) > width - 1:
        text = text[:-1]
    return text + "…"


def _label_lines(report: DataReport) -> list[str]:
    from clm_explore.data import SPLITS

    shown = {label: _shown(label) for label in report.label_counts}
    width = min(40, max(len("label"), *(display_width(label) for label in shown.values())))
    lines = [f"{'label':<{width}}  " + "  ".join(f"{s:>10}" for s in SPLITS)]
    items = list(report.label_counts.items())
    for label, counts in items[:_LABELS_SHOWN]:
        name = _cut_to_width(shown[label], width)
        lines.append(name + " " * (width - display_width(name)) + "  " + "  ".join(f"{counts[s]:>10,}" for s in SPLITS))
    if len(items) > _LABELS_SHOWN:
        lines.append(f"... and {len(items) - _LABELS_SHOWN} more labels (see --json)")
    return lines
