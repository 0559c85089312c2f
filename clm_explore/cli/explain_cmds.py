"""``clm-explore explain`` (word attributions of texts under a run's model) and ``clm-explore report``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clm_explore.cli import UserError, checked_max_length, checked_texts, print_json
from clm_explore.config import AttributionConfig  # torch and captum load only when a command runs
from clm_explore.runs import trained_max_length

if TYPE_CHECKING:
    from clm_explore.attribution import TokenAttribution


def register(subparsers: Any) -> None:
    """Add the ``explain`` and ``report`` sub-commands."""
    explain = subparsers.add_parser(
        "explain",
        help="word attributions of texts under a run's model",
        description="Integrated Gradients on the word embeddings of the run's model: one score per word "
        "(positive = towards the target label). Scores sum to p(text) - p(reference) up to delta.",
    )
    explain.add_argument(
        "--run", required=True, metavar="DIR", help="a run folder (a finetuned model folder)"
    )
    explain.add_argument(
        "--text", action="append", required=True, metavar="T", help="a text (repeat for more)"
    )
    explain.add_argument(
        "--target", default=None, metavar="LABEL", help="label explained (default: predicted)"
    )
    explain.add_argument("--steps", type=int, default=AttributionConfig.n_steps, help="interpolation steps")
    explain.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="sub-tokens kept (default: the length the run trained with, as its predictions read)",
    )
    explain.add_argument(
        "--json", action="store_true", help="print JSON (an object for one text, else a list)"
    )
    explain.set_defaults(func=run_explain)

    report = subparsers.add_parser(
        "report",
        help="write an HTML report of a run (or two runs side by side)",
        description="One self-contained HTML file: metrics, confusion matrices, per-label F1, top attributed "
        "words per label with mined groups marked, the mask heatmap and disagreement rows.",
    )
    report.add_argument("--run", required=True, metavar="A", help="the run folder studied (e.g. sparse)")
    report.add_argument("--vs", default=None, metavar="B", help="a second run folder (e.g. full)")
    report.add_argument(
        "--data", default=None, metavar="DATA", help="data whose test split is explained instead"
    )
    report.add_argument("--out", required=True, metavar="HTML", help="the HTML file to write")
    report.add_argument("--steps", type=int, default=AttributionConfig.n_steps, help="interpolation steps")
    report.add_argument(
        "--max-rows", type=int, default=300, help="rows attributed per run (disagreements first)"
    )
    report.add_argument("--top-k", type=int, default=10, help="top words per label")
    report.add_argument("--json", action="store_true", help='print {"out": HTML} instead of a sentence')
    report.set_defaults(func=run_report)


def _check_run(path: str | None, flag: str) -> Path | None:
    if path is None:
        return None
    run = Path(path).expanduser()
    if not run.is_dir():  # a run id of the registry, as predict takes
        from clm_explore.cli.method_cmds import resolve_run_dir

        try:
            return resolve_run_dir(path)
        except UserError:
            raise UserError(f"{flag} {path}: no such run folder or run id.") from None
    if not (run / "config.json").is_file():
        raise UserError(f"{flag} {path}: not a run folder (no config.json); pass the folder finetune wrote.")
    return run


def run_explain(args: argparse.Namespace) -> int:
    from clm_explore.attribution import AttributionError, explain, load_run_model

    run = _check_run(args.run, "--run")
    checked_texts(args.text)
    length = checked_max_length(args.max_length, run) or trained_max_length(run)
    cfg = AttributionConfig(n_steps=args.steps, max_length=length)
    loaded = load_run_model(run)
    try:
        results = explain(loaded.model, loaded.tokenizer, args.text, cfg, target=args.target)
    except AttributionError as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        payload = [_as_json(r) for r in results]
        print_json(payload[0] if len(payload) == 1 else payload)
    else:
        print("\n\n".join(format_attribution(r) for r in results))
    return 0


def _as_json(res: TokenAttribution) -> dict[str, Any]:
    return {
        "tokens": res.words,
        "scores": res.scores,
        "target": res.target_label,
        "target_id": res.target,
        "probability": res.probability,
        "delta": res.delta,
        "sub_tokens": res.tokens,
        "sub_token_scores": res.token_scores,
        "note": res.note,
    }


def format_attribution(res: TokenAttribution) -> str:
    """Words with their scores, one per line, then the target, probability and delta."""
    width = max((len(w) for w in res.words), default=4)
    lines = [f"{word:<{width}}  {score:+.4f}" for word, score in zip(res.words, res.scores, strict=True)]
    lines.append(f"target {res.target_label} (p={res.probability:.3f}), delta {res.delta:+.4f}")
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
    from clm_explore.report import build_report

    run_a = _check_run(args.run, "--run")
    run_b = _check_run(args.vs, "--vs")
    if args.data is not None and not Path(args.data).exists():
        raise UserError(f"--data {args.data}: no such file or folder.")
    if Path(args.out).is_dir():  # checked before the attributions, which take a while
        raise UserError(f"--out {args.out} is a folder; give the HTML file to write, e.g. {Path(args.out) / 'report.html'}.")
    if run_b is None and args.data is None and not (run_a / "predictions.csv").is_file():
        raise UserError(f"--run {args.run} has no predictions.csv; pass --data with the rows to explain.")
    if args.max_rows < 0 or args.top_k < 1:
        raise UserError(f"--max-rows must be >= 0 and --top-k >= 1; got {args.max_rows} and {args.top_k}.")
    if run_b is not None:
        _check_same_task(run_a, run_b, same_rows=args.data is None)  # --data: both explain those rows
    cfg = AttributionConfig(n_steps=args.steps)  # max_length None: each run is read at its trained length
    try:
        out = build_report(run_a, run_b, args.data, args.out, cfg=cfg, k=args.top_k, max_rows=args.max_rows)
    except (OSError, ValueError) as exc:  # e.g. --out in a folder that cannot be written
        raise UserError(str(exc)) from exc
    if args.json:
        print_json({"out": str(out)})
    else:
        print(f"report written to {out}")
    return 0
