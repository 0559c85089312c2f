"""``clm-explore evaluate``: a finished run scored on labelled rows it has not seen (a fresh batch of annotations,
another data set), as ``finetune`` scored it on its own test split."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from clm_explore.cli import UserError, add_data_args, add_run_length_arg, checked_max_length, print_json
from clm_explore.cli.method_cmds import abstention_threshold, one_line
from clm_explore.config import FEW_VALIDATION_ROWS


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` sub-command."""
    p = subparsers.add_parser(
        "evaluate", help="score a finished run on labelled data: accuracy, macro-F1, F1 per label",
        description="Score a finished run on labelled rows: a data file (every row is scored, none carved off; where "
        "a split column names test rows, those) or a folder of splits (its test file). Prints accuracy, macro-F1 and the labels with the lowest F1; rows whose "
        "label the run was not trained on are counted wrong and named.")
    p.add_argument("--run", required=True, metavar="DIR", help="a run folder (or a run id of the registry)")
    add_data_args(p, positional=False,
                  data_help="a CSV/TSV/JSONL/JSON/Parquet file of text and label, or a folder with a test file",
                  split_help="column of the file that puts each row in train, validation or test: its test rows are "
                  "scored (default: a column named 'split', when every value names a split)")
    add_run_length_arg(p)
    p.add_argument("--abstain-below", default=None, metavar="P|run",
                   help="where rows hold labels the run was not trained on: score answering (out of scope) below this "
                   "top probability; 'run' (or nothing): the threshold the run chose on its validation rows, when it "
                   "chose one")
    p.add_argument("--show", type=int, default=10, metavar="N", help="labels listed, lowest F1 first (0 = all)")
    p.add_argument("--predictions", default=None, metavar="CSV",
                   help="also write a row per text (row, text, label, pred, prob, and out_of_scope where a threshold "
                   "applies, correct) to this CSV file")
    p.add_argument("--json", action="store_true",
                   help="print JSON: run, rows, accuracy, macro_f1, macro_f1_labels, per_label_f1, labels, confusion, "
                   "unseen_labels, "
                   "out_of_scope (null when every label is the run's), predictions (the CSV written, or null)")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from clm_explore.batches import evaluate
    from clm_explore.cli.explain_cmds import checked_run
    from clm_explore.data import write_csv

    if args.show < 0:
        raise UserError(f"--show {args.show} must be 0 (all) or more.")
    target = Path(args.predictions).expanduser() if args.predictions else None
    if target is not None and (target.is_dir() or not target.parent.is_dir()):
        raise UserError(f"--predictions {args.predictions}: not a file in an existing folder; name a CSV file.")
    run_dir = checked_run(args.run, "--run")  # an unfinished run is said so, as predict says it
    if target is not None:
        _check_predictions_target(target, run_dir, Path(args.data).expanduser())
    length = checked_max_length(args.max_length, run_dir)
    threshold = abstention_threshold(args.abstain_below, run_dir)
    notes: list[str] = []
    result = evaluate(run_dir, args.data, length, text_col=args.text_col, label_col=args.label_col,
                      split_col=args.split_col, max_file_mb=args.max_file_mb, encoding=args.encoding, notes=notes,
                      abstain_below=threshold)
    for note in notes:  # as the training commands print the loader's notes
        print(f"note: {note}", file=sys.stderr)
    if target is not None:
        write_csv(result.predictions, target)
    if args.json:
        keys = ("accuracy", "macro_f1", "macro_f1_labels", "per_label_f1", "labels", "confusion", "confusion_unseen")
        print_json({"run": result.run, "rows": len(result.predictions),
                    **{k: result.metrics[k] for k in keys if k in result.metrics},
                    "unseen_labels": result.unseen_labels, "out_of_scope": result.metrics.get("out_of_scope"),
                    "predictions": str(target) if target else None})
        return 0
    print(f"run: {result.run}")
    unseen_rows = int((~result.predictions["label"].isin(result.metrics["labels"])).sum())
    unseen = (f" ({unseen_rows} with a label the run was not trained on, counted wrong: "
              f"{', '.join(map(one_line, result.unseen_labels[:5]))}{', ...' if len(result.unseen_labels) > 5 else ''})"
              if unseen_rows else "")
    print(f"rows: {len(result.predictions):,}{unseen}")
    print(f"accuracy {result.accuracy:.4f}   macro-F1 {result.macro_f1:.4f}")
    if scope := result.metrics.get("out_of_scope"):
        print(out_of_scope_lines(scope))
    table = result.to_frame()
    shown = table if args.show == 0 else table.head(args.show)
    print(f"\n{'every label' if len(shown) == len(table) else f'the {len(shown)} labels with the lowest F1'} "
          f"(of {len(table)}):")
    shown = shown.assign(label=shown["label"].map(one_line))
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="-"))
    if target is not None:
        print(f"\npredictions: {target}")
    return 0


def out_of_scope_lines(scope: dict[str, Any]) -> str:
    """What the out-of-scope figures say, in words: how well the top probability tells the unseen labels' rows
    apart (no threshold), and what answering "out of scope" below the threshold would score."""
    auroc = "-" if scope.get("auroc") is None else f"{scope['auroc']:.3f}"
    in_scope = "-" if scope.get("in_scope_accuracy") is None else f"{scope['in_scope_accuracy']:.4f}"
    lines = [f"out of scope ({scope['rows']:,} rows): AUROC of the top probability at telling them apart {auroc}; "
             f"in-scope accuracy {in_scope}"]
    if scope.get("threshold") is None:
        lines.append("  no threshold: the run chose none (give --abstain-below P to score abstaining)")
    else:
        lines.append(f"  answering out of scope below {scope['threshold']:.3f}: accuracy {scope['accuracy']:.4f}, "
                     f"macro-F1 {scope['macro_f1']:.4f}, out-of-scope recall {scope['oos_recall']:.3f}, precision "
                     f"{scope['oos_precision']:.3f}, in-scope rows turned away {scope['in_scope_rejected']:.3f}")
        if (rows := scope.get("validation_rows")) and scope.get("quantile") is not None:
            lines.append(f"  (the threshold turns away {scope['quantile']:.0%} of the {rows:,} in-scope validation rows"
                         + (": few rows make a rough quantile" if rows < FEW_VALIDATION_ROWS else "") + ")")
    return "\n".join(lines)


PREDICTIONS_HEADER = "row,text,label,pred,prob,correct"
"""The first line of the file ``--predictions`` writes: the only kind of existing file it replaces (with
``PREDICTIONS_HEADER_OUT_OF_SCOPE``, where a threshold applied)."""
PREDICTIONS_HEADER_OUT_OF_SCOPE = "row,text,label,pred,prob,out_of_scope,correct"


def _check_predictions_target(target: Path, run_dir: Path, data: Path) -> None:
    """Refuse a --predictions file inside the run folder or the data, or an existing file that is not an earlier
    predictions file (the CLI review: it replaced the test data and the run's metrics.json without a word)."""
    resolved = target.resolve()
    for place, what in ((run_dir.resolve(), "the run's folder"), (data.resolve(), "the data")):
        if resolved == place or place in resolved.parents:
            raise UserError(f"--predictions {target} is inside {what}; name a file elsewhere.")
    if resolved.is_file():
        with open(resolved, encoding="utf-8", errors="replace") as file:
            first = file.readline().strip()
        if first not in (PREDICTIONS_HEADER, PREDICTIONS_HEADER_OUT_OF_SCOPE):
            raise UserError(f"--predictions {target} exists and is not a file evaluate wrote (its first line is not "
                            f"{PREDICTIONS_HEADER!r}); name a new file, or delete it first.")
