"""``clm-explore runs``: the run registry's runs, newest first (the app's Runs page for a terminal or a script)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from clm_explore.cli import UserError, print_json
from clm_explore.cli.method_cmds import one_line
from clm_explore.config import BUDGET_METHODS
from clm_explore.runs import REGISTRY_NAME, RunStatus, RunStore, RunStoreError, default_root


def register(subparsers: Any) -> None:
    """Add the ``runs`` sub-command."""
    p = subparsers.add_parser(
        "runs", help="list the runs of the run registry, newest first",
        description="List the runs of the run registry ($CLM_EXPLORE_RUNS, default ./runs), newest first, with their "
        "status and headline figures: the runs finetune and the app wrote. A run whose process is gone (killed, or "
        "its server stopped) is marked interrupted first, as the app does.")
    p.add_argument("--status", choices=[status.value for status in RunStatus], default=None,
                   help="only runs with this status")
    p.add_argument("--method", default=None, help="only runs of this method")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="at most N runs (0 = all)")
    p.add_argument("--prune", type=float, default=None, metavar="DAYS",
                   help="delete the runs that ended more than DAYS days ago (their folders under the runs folder with "
                   "them; with --status, only those), then list what was deleted; a run folder is about 90 MB with "
                   "the default model, and nothing else deletes them")
    p.add_argument("--dry-run", action="store_true", help="with --prune: list what it would delete, delete nothing")
    p.add_argument("--json", action="store_true", help="print a JSON list, a run per object")
    p.set_defaults(func=run_runs, light=True)
    d = subparsers.add_parser(
        "doctor", help="check that this machine can serve clm-explore as configured",
        description="Check the CLM_EXPLORE_* settings as the app reads them, that the runs and uploads folders can be "
        "written, the run registry used, the disk has room, the model is installed and the device is there. Exit 1 "
        "when something is wrong (a health check for a server: the app's /_stcore/health says ok regardless).")
    d.add_argument("--json", action="store_true", help="print a JSON list, a check per object")
    d.set_defaults(func=run_doctor)
    e = subparsers.add_parser(
        "export", help="copy what serving a run needs into a folder of its own",
        description="Copy a finished run's model, tokenizer and model card (and a prefix or LoRA run's adapter) into a new "
        "folder, for serving or sharing: without its test predictions (the test split's texts), clm_run.json (the "
        "data's path, the command line), metrics, masks, deltas and mined tokens. --dtype float16 halves the size.")
    e.add_argument("--run", required=True, metavar="DIR", help="a run folder (or a run id of the registry)")
    e.add_argument("--out", required=True, metavar="DIR", help="the export's folder (new, or an earlier export)")
    e.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="the weights' type")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    e.add_argument("--patch", action="store_true",
                   help="a row method's run as its delta.safetensors in place of the weights (0.92 MiB for the "
                   "default model at 1%%), a LoRA run as its adapter: clm_explore.apply_delta(folder) rebuilds the "
                   "model over the base model")
    e.add_argument("--json", action="store_true",
                   help="print the export's folder, files (with their bytes), total bytes and dtype as JSON")
    e.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from clm_explore.cli.explain_cmds import checked_run
    from clm_explore.exports import export_run

    out = export_run(checked_run(args.run, "--run"), args.out, args.dtype, args.overwrite, patch=args.patch)
    files = {str(f.relative_to(out)): f.stat().st_size for f in sorted(out.rglob("*")) if f.is_file()}
    size = sum(files.values())
    if args.json:  # a serving script's step (the README review: every command but `app` took --json, not export)
        print_json({"run": str(args.run), "out": str(out), "dtype": args.dtype, "patch": args.patch,
                    "bytes": size, "files": files})
        return 0
    print(f"exported {args.run} to {out} ({size / 2**20:,.1f} MiB, {args.dtype}): " + ", ".join(sorted(files)))
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    from clm_explore.doctor import checks

    found = checks()
    if args.json:
        print_json([check.to_dict() for check in found])
    else:
        width = max(len(check.name) for check in found)
        for check in found:
            print(f"{'ok' if check.ok else 'PROBLEM':8} {check.name:{width}}  {one_line(check.said)}")
    return 0 if all(check.ok for check in found) else 1


def run_runs(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise UserError(f"--limit {args.limit} must be 0 (all) or more.")
    if not (default_root() / REGISTRY_NAME).is_file():  # a listing makes no registry (nor its folder)
        if args.json:
            print_json([])
        else:
            print(f"No run registry in {default_root().absolute()} (./runs of the folder you are in, or "
                  "$CLM_EXPLORE_RUNS: set it to another runs folder).")
        return 0
    store = RunStore()
    try:
        store.mark_interrupted()  # a CLI run killed outright stayed "running" until the app next looked
    except RunStoreError as exc:  # a registry this user may only read (or one held): listed as it stands
        print(f"note: runs whose process is gone could not be marked interrupted ({exc})", file=sys.stderr)
    if args.prune is not None:
        return _prune(store, args)
    records = [r for r in store.list() if (args.status is None or r.status.value == args.status)
               and (args.method is None or r.method == args.method)]
    records = records[: args.limit] if args.limit else records
    rows = [record.listed() for record in records]
    if args.json:
        print_json(rows)
        return 0
    size = f", taking {sum(row['size_bytes'] for row in rows) / 2**20:,.1f} MiB" if rows else ""
    print(f"{len(rows)} run(s) in {store.root.absolute()}{size}" + (":" if rows else ""))
    if rows:
        print(format_runs(rows))
    return 0


MAX_PRUNE_DAYS = 36_500


def _prune(store: RunStore, args: argparse.Namespace) -> int:
    """``runs --prune DAYS``: delete the runs that ended long ago (``RunStore.prune``), and list them."""
    from clm_explore.runs import PruneError

    if args.method is not None or args.limit:
        raise UserError("--method and --limit are not read with --prune: it deletes every run that ended before the "
                        "days given (--status narrows it).")
    if not 0 <= args.prune <= MAX_PRUNE_DAYS:  # nan and inf too: timedelta's own errors were tracebacks
        raise UserError(f"--prune {args.prune:g} must be a number of days from 0 to {MAX_PRUNE_DAYS:,}.")
    statuses = {RunStatus(args.status)} if args.status else None
    if statuses and not RunStatus(args.status).is_terminal:
        raise UserError(f"--prune deletes runs that ended; --status {args.status} runs have not (cancel them first).")
    said = ""
    try:
        records = store.prune(args.prune, statuses, dry_run=args.dry_run)
    except PruneError as exc:
        records, said = exc.deleted, str(exc)
    # A dry run's folders are still there: their sizes say what a prune would free
    rows = [{**(record.listed() if args.dry_run else record.summary()), "folder_deleted": store.holds_folder(record)}
            for record in records]
    if args.json:
        print_json(rows)
    else:
        print(_pruned_said(rows, args))
        if rows:
            print(format_runs(rows))
    if said:
        print(f"error: {said}", file=sys.stderr)
        return 1
    return 0


def _pruned_said(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """What a prune did (or would do): the runs folder's own runs are deleted, folder and all; runs registered from
    elsewhere (bench cells, --out folders) only unlisted, their folders kept. The scale review: a dry run said 460
    runs and 11.9 MB where 35 runs and 7.0 MB would go."""
    verb = "would delete" if args.dry_run else "deleted"
    own, kept = [r for r in rows if r["folder_deleted"]], [r for r in rows if not r["folder_deleted"]]
    freed = f" ({sum(row['size_bytes'] for row in own) / 2**20:,.1f} MiB)" if args.dry_run and own else ""
    said = f"{verb} {len(own)} run(s){freed} that ended more than {args.prune:g} day(s) ago"
    if kept:
        said += (f"; {'would unlist' if args.dry_run else 'unlisted'} {len(kept)} registered from elsewhere, their "
                 "folders kept")
    return said + (":" if rows else ".")


def format_runs(rows: list[dict[str, Any]]) -> str:
    """The runs as an aligned table; a failed run's reason on one line after its figures."""
    import pandas as pd

    def shown(form: str) -> Any:
        return lambda v: "–" if v is None or pd.isna(v) else form.format(v)

    sized = "size_bytes" in rows[0]  # not once deleted
    frame = pd.DataFrame(rows)[["id", "method", "status", "accuracy", "macro_f1", "trainable_params",
                                *(["size_bytes"] if sized else []), "created"]]
    # the budget of the methods that read one (the budget review: two sparse runs differed by id alone)
    frame.insert(2, "budget", [_budget_shown(row.get("budget")) if row["method"] in BUDGET_METHODS else "–"
                               for row in rows])
    if sized:
        frame["size_bytes"] = frame["size_bytes"] / 2**20
    for column, form in (("accuracy", "{:.4f}"), ("macro_f1", "{:.4f}"), ("trainable_params", "{:,.0f}"),
                         ("size_bytes", "{:,.1f}")):
        if column in frame:
            frame[column] = frame[column].map(shown(form))
    names = {"trainable_params": "trainable", "size_bytes": "MiB"}
    lines = frame.rename(columns=names).to_string(index=False).splitlines()
    for i, row in enumerate(rows, start=1):
        if row["error"]:
            lines[i] += f"  ({shortened(one_line(row['error']))})"  # one line, its cause kept
        elif row.get("progress"):
            lines[i] += f"  ({progress_said(row['progress'])})"
        if row.get("folder_deleted") is False:  # a prune's: said apart in the table too (the real-model review)
            lines[i] += "  (registered from elsewhere: its folder is kept)"
    return "\n".join(lines)


def _budget_shown(budget: Any) -> str:
    """A run's budget as the app says it: a share in percent, a count as a count."""
    if not isinstance(budget, int | float):
        return "–"
    return f"{budget * 100:.3g}%" if budget <= 1 else f"{int(budget):,}"


def progress_said(progress: dict[str, Any]) -> str:
    """Where a run's training is: "step 120 of 939 (13%), epoch 1, about 4 min left" ("40 s", under a minute;
    "evaluating and saving" after its last step)."""
    step, total = progress["step"], progress["total_steps"]
    said = f"step {step} of {total} ({step / max(total, 1):.0%}), epoch {progress.get('epoch')}"
    eta = progress.get("eta")
    if step >= total:
        return f"{said}, evaluating and saving"
    if not isinstance(eta, int | float):
        return said
    return said + (f", about {round(eta / 60)} min left" if eta >= 90 else f", about {max(1, round(eta))} s left")


def shortened(text: str, width: int = 160) -> str:
    """``text`` in at most ``width`` characters: its start and its end, where the cause of a failure is ("... (os
    error 28)"); cut at 120 from the start alone, the cause was lost (the operations review)."""
    if len(text) <= width:
        return text
    keep = (width - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"
