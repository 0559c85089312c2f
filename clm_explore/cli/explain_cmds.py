"""``clm-explore explain`` (word attributions of texts under a run's model) and ``clm-explore report``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from clm_explore.cli import (
    ENCODING_HELP,
    SPLIT_COL_HELP,
    UserError,
    checked_max_length,
    checked_texts,
    load_noted_data,
    phase_printer,
    print_json,
    refuse_untrained_head,
)
from clm_explore.config import (  # torch and captum load only when a command runs
    ATTRIBUTION_OUTPUTS,
    AttributionConfig,
    DataConfig,
)
from clm_explore.runs import trained_max_length, unfinished_reason

if TYPE_CHECKING:
    from clm_explore.attribution import TokenAttribution


def register(subparsers: Any) -> None:
    """Add the ``explain``, ``report``, ``changes`` and ``card`` sub-commands."""
    explain = subparsers.add_parser(
        "explain",
        help="word attributions of texts under a run's model",
        description="Integrated Gradients on the word embeddings of the run's model: one score per word "
        "(positive = towards the target label). Scores sum to p(text) - p(reference) up to delta (--output logit: "
        "the target's logit and its change).",
    )
    explain.add_argument(
        "--run", required=True, metavar="DIR", help="a run folder (a finetuned model folder) or a run id of the registry"
    )
    explain.add_argument(
        "--text", action="append", required=True, metavar="T", help="a text (repeat for more)"
    )
    explain.add_argument(
        "--target", default=None, metavar="LABEL",
        help="label explained, by name (or by its id, 0-based in the run's label order, when no label has that name); "
        "default: the predicted one"
    )
    explain.add_argument("--steps", type=int, default=AttributionConfig.n_steps, help="interpolation steps (2-1024)")
    _add_output_arg(explain)
    explain.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="sub-tokens kept, 8-512 (default: the length the run trained with, as its predictions read)",
    )
    explain.add_argument(
        "--json",
        action="store_true",
        help="print JSON (a list, an object per text, as predict --json): tokens (words), scores, target, target_id, "
        "predicted, predicted_id, probability (of the target), delta, output, sub_tokens, sub_token_scores, note",
    )
    explain.set_defaults(func=run_explain)

    report = subparsers.add_parser(
        "report",
        help="write an HTML report of a run (or two runs side by side)",
        description="One self-contained HTML file: metrics, confusion matrices, per-label F1, top attributed "
        "words per label with mined groups marked, the mask and weight-change heatmaps, linear CKA per layer and "
        "disagreement rows.",
    )
    report.add_argument("--run", required=True, metavar="A", help="the run folder (or run id) studied (e.g. sparse)")
    report.add_argument("--vs", default=None, metavar="B", help="a second run folder or run id (e.g. full)")
    report.add_argument(
        "--data", default=None, metavar="DATA", help="data whose test split is explained instead"
    )
    _add_column_args(report)
    report.add_argument(
        "--out",
        required=True,
        metavar="HTML",
        help="the HTML file to write (.html; an existing file is replaced only when it is an HTML page; not inside a "
        "run folder)",
    )
    report.add_argument("--steps", type=int, default=AttributionConfig.n_steps, help="interpolation steps (2-1024)")
    _add_output_arg(report)
    report.add_argument(
        "--max-rows",
        type=int,
        default=300,
        help="rows attributed per run (disagreements first, then rows taken from each label in turn)",
    )
    report.add_argument("--top-k", type=int, default=10, help="top words per label")
    report.add_argument("--target", choices=["predicted", "gold"], default="predicted",
                        help="the label each row's scores explain: each run's own prediction, or the row's gold label "
                        "(then both runs of a disagreement row explain the same label)")
    report.add_argument("--show-rows", type=int, default=10, metavar="N",
                        help="rows drawn word by word at the end (disagreements first, from each label in turn)")
    report.add_argument(
        "--json",
        action="store_true",
        help='print {"out": HTML, "rows_attributed": N, "rows": M} instead of a sentence',
    )
    report.set_defaults(func=run_report)

    changes = subparsers.add_parser(
        "changes",
        help="how far a run moved each weight matrix of its base model",
        description="Per layer and module: the rows and parameters a finished run changed, and the change's size "
        "relative to the base weights (a sparse run moves only its selected rows; full finetuning every matrix).",
    )
    changes.add_argument("--run", required=True, metavar="DIR", help="a run folder or a run id of the registry")
    changes.add_argument("--base", default=None, metavar="SRC",
                         help="the base model (default: the one the run was trained from, in its clm_run.json)")
    changes.add_argument("--json", action="store_true",
                         help="print JSON: run, source, backbone_params, backbone_params_changed, other_params_changed, "
                         "merged_rows, stored (the weights file's dtype) and matrices (name, layer, module, rows, rows_changed, share_rows_changed, "
                         "biases_changed, params, params_changed, share_params_changed, change_norm, relative_change)")
    changes.set_defaults(func=run_changes)

    card = subparsers.add_parser(
        "card",
        help="the model card (README.md) of a finished run",
        description="The Hugging Face model card of a run: the Hub's metadata (base model, tags, test accuracy and "
        "macro-F1), then how it was trained, what was trained, its results per label and how to use it. finetune "
        "writes it into the run folder; this prints it, or writes it for a run saved before cards were written.",
    )
    card.add_argument("--run", required=True, metavar="DIR", help="a run folder or a run id of the registry")
    card.add_argument("--write", action="store_true",
                      help="write it as README.md in the run folder (replacing an earlier card) instead of printing it")
    card.add_argument("--json", action="store_true",
                      help='print {"run": DIR, "card": MARKDOWN, "path": the README.md written, or null}')
    card.set_defaults(func=run_card, light=True)  # reads files alone: torch and transformers left unimported


def _add_column_args(parser: argparse.ArgumentParser) -> None:
    """The column options of ``cli.add_data_args``, for report's optional --data (add_data_args's is required)."""
    parser.add_argument("--text-col", default=None, help="text column of --data (detected when omitted)")
    parser.add_argument("--label-col", default=None, help="label column of --data (detected when omitted)")
    parser.add_argument("--split-col", default=None, help=SPLIT_COL_HELP)
    parser.add_argument("--encoding", default=None, metavar="NAME", help=ENCODING_HELP)
    parser.add_argument(
        "--max-file-mb",
        type=float,
        default=DataConfig.max_file_mb,
        help="refuse --data files above this size (a Parquet file's text and label candidates are also measured "
        "uncompressed and decoded)",
    )


@overload
def checked_run(path: str, flag: str) -> Path: ...


@overload
def checked_run(path: None, flag: str) -> None: ...


def checked_run(path: str | None, flag: str) -> Path | None:
    """The run folder of ``path`` (a folder, or a run id of the registry), refused with what is wrong: missing,
    not finished, not a run folder, or a base model."""
    if path is None:
        return None
    run = Path(path).expanduser()
    run_id = None if run.is_dir() else path
    if run_id is not None:  # a run id of the registry, as predict takes
        from clm_explore.cli.method_cmds import resolve_run_dir

        try:
            run = resolve_run_dir(path)
        except UserError:
            raise UserError(f"{flag} {path}: no such run folder or run id.") from None
        if not run.is_dir():  # the registry's folder was moved or deleted since
            raise UserError(f"{flag} {path}: the run's folder {run} does not exist (moved or deleted); pass the "
                            "folder where it is now.")
    unfinished = unfinished_reason(run)
    if unfinished is None and run_id is not None and not (run / "config.json").is_file():
        unfinished = _registry_unfinished(run_id)  # its folder has no model yet: what the registry says
    if unfinished:
        raise UserError(f"{flag} {path}: the run is not finished ({unfinished}); pass a run that succeeded.")
    if not (run / "config.json").is_file():
        raise UserError(f"{flag} {path}: not a run folder (no config.json); pass the folder finetune wrote.")
    return refuse_untrained_head(run, flag)


def _registry_unfinished(run_id: str) -> str | None:
    """The registry's status of a run that has not succeeded (e.g. running: its folder may still be empty while the
    model loads), or None."""
    from clm_explore.runs import RunStatus, RunStore

    try:
        status = RunStore().get(run_id).status
    except Exception:  # an unreadable registry: the folder's own checks decide
        return None
    return None if status is RunStatus.SUCCEEDED else f"status {status.value}"


def run_explain(args: argparse.Namespace) -> int:
    from clm_explore.attribution import AttributionError, explain, load_run_model

    run = checked_run(args.run, "--run")
    checked_texts(args.text, purpose="explain", has_file=False)  # explain reads no --file
    length = checked_max_length(args.max_length, run) or trained_max_length(run)
    cfg = AttributionConfig(n_steps=args.steps, max_length=length, output=args.output)
    loaded = load_run_model(run)
    try:
        results = explain(loaded.model, loaded.tokenizer, args.text, cfg, target=args.target)
    except AttributionError as exc:
        raise UserError(str(exc)) from exc
    labels = {int(k): str(v) for k, v in loaded.model.config.id2label.items()}
    if args.json:
        print_json([r.to_record() for r in results])  # a list for one text too, as predict's
    else:
        print("\n\n".join(format_attribution(r, labels) for r in results))
    return 0


def run_changes(args: argparse.Namespace) -> int:
    from clm_explore.changes import layer_names, weight_changes

    result = weight_changes(checked_run(args.run, "--run"), args.base)
    if args.json:
        print_json(result.to_record())
        return 0
    table = result.table.assign(layer=layer_names(result.table["layer"]))
    shown = table[["layer", "module", "rows_changed", "rows", "biases_changed", "params_changed", "relative_change"]]
    print(shown.to_string(index=False, formatters={"relative_change": "{:.3g}".format}))
    print(result.summary())
    return 0


def run_card(args: argparse.Namespace) -> int:
    from clm_explore.cards import ModelCardError, model_card, write_model_card

    run = checked_run(args.run, "--run")
    try:
        path = write_model_card(run) if args.write else None
        text = path.read_text(encoding="utf-8") if path else model_card(run)
    except ModelCardError as exc:
        raise UserError(f"--run {args.run}: {exc}") from exc
    except OSError as exc:  # a read-only run folder, say
        raise UserError(f"--run {args.run}: README.md cannot be written there ({exc.strerror or exc}); print the card "
                        "without --write and save it where you can.") from exc
    if args.json:
        print_json({"run": str(run), "card": text, "path": str(path) if path else None})
    elif path:
        print(f"wrote {path}")
    else:
        print(text, end="")
    return 0


def _add_output_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", choices=ATTRIBUTION_OUTPUTS, default=AttributionConfig.output,
        help="what the scores explain: the target's probability (the scores sum to its change from the reference, "
        "at most 1) or its logit (the score before the softmax: unbounded, in the run's own units)")


def format_attribution(res: TokenAttribution, labels: dict[int, str] | None = None) -> str:
    """Words with their scores, one per line, then the target, probability and delta (and the predicted label
    where it is not the target; ``labels``: id -> name)."""
    width = max((len(w) for w in res.words), default=4)
    lines = [f"{word:<{width}}  {score:+.4f}" for word, score in zip(res.words, res.scores, strict=True)]
    if res.predicted >= 0 and res.predicted != res.target:
        which = f"not the predicted {(labels or {}).get(res.predicted, res.predicted)}"
    else:
        which = "the predicted label"
    # The attributions review: the plain output did not say the target was the prediction, nor what the scores add to
    change = "logit - logit(reference)" if res.output == "logit" else "p - p(reference)"
    lines.append(f"target {res.target_label} ({which}, p={res.probability:.3f}); the scores sum to {change} "
                 f"= {res.change:+.4f}, up to delta {res.delta:+.4f}")
    if res.note:
        lines.append(f"note: {res.note}")
    return "\n".join(lines)


def _run_labels(run: Path) -> set[str]:
    try:
        return {str(v) for v in json.loads((run / "config.json").read_text()).get("id2label", {}).values()}
    except (OSError, ValueError, AttributeError):
        return set()


def _check_same_task(run_a: Path, run_b: Path, same_rows: bool = True) -> None:
    """A case study pairs two runs' predictions row by row: they must classify the same labels, and (unless the rows
    come from --data) on the same test rows."""
    labels_a, labels_b = _run_labels(run_a), _run_labels(run_b)
    if labels_a and labels_b and labels_a != labels_b:
        raise UserError(f"--run and --vs classify different labels ({len(labels_a)} and {len(labels_b)}, "
                        f"{len(labels_a & labels_b)} shared): a report compares two runs of one data set.")
    texts = [_test_texts(run) for run in (run_a, run_b)] if same_rows else [None, None]
    if all(t is not None for t in texts) and texts[0] != texts[1]:
        raise UserError("--run and --vs were tested on different rows (their predictions.csv differ): a report "
                        "compares two runs of one data set.")


def _test_texts(run: Path) -> list[str] | None:
    import pandas as pd

    try:
        return pd.read_csv(run / "predictions.csv", usecols=["text"], keep_default_na=False)["text"].tolist()
    except (OSError, ValueError):
        return None


def run_report(args: argparse.Namespace) -> int:
    from clm_explore.casestudy import case_study

    run_a = checked_run(args.run, "--run")
    run_b = checked_run(args.vs, "--vs")
    if args.data is not None and not Path(args.data).exists():
        raise UserError(f"--data {args.data}: no such file or folder.")
    out = _check_out(args.out)  # checked before the attributions, which take a while
    if args.data is None:
        for run, flag, name in ((run_a, "--run", args.run), (run_b, "--vs", args.vs)):
            if run is not None and not (run / "predictions.csv").is_file():
                raise UserError(
                    f"{flag} {name} has no predictions.csv; pass --data with the rows to explain."
                )
    for run in (run_a, run_b):
        _check_run_files(run, with_predictions=args.data is None)
    if args.max_rows < 1 or args.top_k < 1 or args.show_rows < 1:
        raise UserError(f"--max-rows, --top-k and --show-rows must be >= 1; got {args.max_rows}, {args.top_k} and "
                        f"{args.show_rows}.")
    if run_b is not None:
        _check_same_task(run_a, run_b, same_rows=args.data is None)  # --data: both explain those rows
    # max_length None: each run's trained length
    cfg = AttributionConfig(n_steps=args.steps, target=args.target, output=args.output)
    data = _report_data(args)  # before the attributions: a bad column stops the command at once
    if data is not None:
        _check_data_labels(data, run_a)
    try:
        study = case_study(run_a, run_b, data, cfg=cfg, k=args.top_k, max_rows=args.max_rows,
                           on_progress=None if args.json else phase_printer(), progress=False)
    except (OSError, ValueError) as exc:  # e.g. a run file that cannot be read
        raise UserError(str(exc)) from exc
    out = _write(study, out, args.show_rows)
    done, total = study.coverage()
    if args.json:
        print_json({"out": str(out), "rows_attributed": done, "rows": total})
    else:
        print(f"report written to {out}; {study.coverage_text()}")
    return 0


def _check_out(out: str) -> Path:
    """--out as ``report.check_out_path`` takes it: an .html file, not a data or run file, outside the runs."""
    from clm_explore.report import ReportPathError, check_out_path

    try:
        return check_out_path(out)
    except ReportPathError as exc:
        raise UserError(f"--out {exc}") from None


def _check_run_files(run: Path | None, with_predictions: bool) -> None:
    """The run files the report reads after the attributions (mined groups, masks) and, without --data, its
    predictions.csv: a damaged one is said now, not after minutes of work (each raises an error naming the file)."""
    if run is None:
        return
    from clm_explore.casestudy import load_task_tokens, split_frame
    from clm_explore.report import mask_table

    load_task_tokens(run)
    mask_table(run)
    if with_predictions:
        split_frame(run)


def _write(study: Any, out: Path, show_rows: int) -> Path:
    """``write_report`` with its failures said in words (the folder checked at first may have changed since)."""
    from clm_explore.report import ReportPathError, write_report

    try:
        return write_report(study, out, show_rows)
    except ReportPathError as exc:
        raise UserError(f"--out {exc}") from None
    except OSError as exc:
        raise UserError(f"--out {out}: the report cannot be written ({exc.strerror or type(exc).__name__}); choose "
                        "a file in a folder you can write to.") from None


def _check_data_labels(data: Any, run: Path) -> None:
    """Refuse --data whose labels the run does not classify at all (a report of another task's rows, every one
    "wrong"); say how many rows carry labels the run lacks when some do."""
    if data.empty:
        raise UserError("--data has no test rows to explain (a single file's carved test split came out empty: too "
                        "few distinct texts per label). Pass more rows, or a folder with a test file.")
    known = _run_labels(run)
    labels = set(data["label"].astype(str))
    if not known or labels <= known:
        return
    if not labels & known:
        raise UserError(f"--data's labels share none with the run's ({len(labels)} and {len(known)}, e.g. "
                        f"{sorted(labels)[0]!r} and {sorted(known)[0]!r}): pass rows of the task the run was trained on.")
    unknown = int((~data["label"].astype(str).isin(known)).sum())
    print(f"note: {unknown} of --data's {len(data)} rows carry labels the run does not have; they count as wrong "
          "among the rows shown; the report's accuracy on these rows leaves them out.", file=sys.stderr)


def _report_data(args: argparse.Namespace) -> Any:
    """--data's test split (a DataFrame with text and label), read with the column options, its load notes printed
    (a single file's test split is carved: the report explains only that part); None without --data."""
    if args.data is None:
        return None
    return load_noted_data(args).test
