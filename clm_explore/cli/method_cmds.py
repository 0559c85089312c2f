"""``mine``, ``sensitivity``, ``finetune`` and ``predict``: the method from the command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clm_explore.cli import (
    LINE_BREAK_ESCAPES,
    Terminated,
    UserError,
    add_data_args,
    add_run_length_arg,
    checked_max_length,
    checked_texts,
    load_noted_data,
    phase_printer,
    print_json,
    refuse_untrained_head,
    truncation_side_arg,
    warn_unreadable,
)
from clm_explore.config import (
    BUDGET_METHODS,
    COMPILE_MODES,
    FEW_SHOT_EPOCHS,
    FISHER_LABELS,
    HEAD_INITS,
    METHODS,
    MINING_METHODS,
    PREFIX_INITS,
    RELEVANCES,
    SCHEDULES,
    SCORES,
    SPECIFICITIES,
    FinetuneConfig,
    MaskConfig,
    MiningConfig,
    SensitivityConfig,
    budget_words,
    data_options_words,
    few_steps_note,
    to_dict,
)

if TYPE_CHECKING:
    import pandas as pd


def register(subparsers: Any) -> None:
    _register_mine(subparsers)
    _register_sensitivity(subparsers)
    _register_select(subparsers)
    _register_finetune(subparsers)
    _register_rerun(subparsers)
    _register_predict(subparsers)


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", metavar="SRC",
                        help="'default' (all-MiniLM-L6-v2), 'tiny-random', a local HF folder, a .gguf file or 'smollm2'")


# ---------------------------------------------------------------------------------------------- mine


def _register_mine(sub: Any) -> None:
    p = sub.add_parser("mine", help="mine task-specific token groups from the training split",
                       description="Mine the word pieces and words that tell DATA's labels apart (count, label "
                       "relevance, domain specificity against the general language) and print the top groups; --merge "
                       "adds the top multi-piece words to the tokenizer's unused slots.")
    add_data_args(p, carve=True, draw=True)
    _model_arg(p)
    _merge_arg(_mining_args(p))
    p.add_argument("--show", type=int, default=30, help="groups printed (human output)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_mine)


def _mining_args(p: argparse.ArgumentParser, scored: str = "") -> Any:
    """The mining options, the app's Tokens page's: mine, sensitivity and finetune take the same ones, so that a
    run the app made can be repeated from the command line (``scored``: what reads the groups, for the help)."""
    group = p.add_argument_group("mining options" + (f" ({scored})" if scored else ""))
    group.add_argument("--top", type=int, default=MiningConfig.top_k,
                       help="groups kept (0 = scaled with the rows, 64 to 1,024)")
    group.add_argument("--min-count", type=int, default=MiningConfig.min_count, help="rows a group must occur in")
    group.add_argument("--relevance", choices=RELEVANCES, default=MiningConfig.relevance,
                       help="label relevance of a group: KL divergence from the label prior, mutual information or chi2")
    group.add_argument("--specificity", choices=SPECIFICITIES, default=MiningConfig.specificity,
                       help="domain specificity of a group: against the general language (the wordfreq package's "
                       "word frequencies in --background-lang), or none (relevance alone)")
    group.add_argument("--background-lang", default=MiningConfig.background_lang, metavar="CODE",
                       help="language of the specificity background and of the function-word filter: auto (detected "
                       "from the training texts) or a wordfreq code such as en, de, fr")
    group.add_argument("--max-words", type=int, default=MiningConfig.max_words, metavar="N",
                       help="longest run of words mined as one group")
    group.add_argument("--fragment-min-chars", type=int, default=MiningConfig.fragment_min_chars, metavar="N",
                       help="shortest word fragment kept, in characters ('##s' reads 1; 1 = as runs before this "
                       "option mined)")
    group.add_argument("--min-score-share", type=float, default=MiningConfig.min_score_share, metavar="S",
                       help="keep a group only if its score is at least this share of the best group's (0 = any "
                       "score; on a few hundred rows 0.03 leaves out the commonest words, such as 'in' and 'from')")
    group.add_argument("--mining-length", type=int, default=MiningConfig.max_tokens, metavar="N",
                       help="sub-tokens of each text mined, from its start; runs read --max-length (64 unless set): "
                       "on texts longer than that, mine at that length so that the groups come from what runs read")
    return group


def _merge_arg(p: Any, default_note: str = "") -> None:
    p.add_argument("--merge", type=int, default=0, metavar="N",
                   help="adaptive tokenization: merge up to N of the top multi-piece words into unused vocabulary "
                        "slots, each in the tokenizer's normalised form and kept only where the new tokenizer then "
                        "produces it as one token (a rejected word's slot goes to the next word)"
                        + (f"; {default_note}" if default_note else ""))


def mining_config(args: argparse.Namespace, merge_tokens: int = 0) -> MiningConfig:
    """The mining options of ``args`` (``_mining_args``); a value out of range is a ConfigError, which the CLI
    says with the option's name."""
    return MiningConfig(top_k=args.top, min_count=args.min_count, relevance=args.relevance,
                        specificity=args.specificity, max_words=args.max_words, merge_tokens=merge_tokens,
                        fragment_min_chars=args.fragment_min_chars, min_score_share=args.min_score_share,
                        background_lang=args.background_lang, max_tokens=args.mining_length)


def run_mine(args: argparse.Namespace) -> int:
    from clm_explore.mining import adaptive_tokenization, mine_task_tokens
    from clm_explore.modeling import load_model

    if args.merge < 0:
        raise UserError(f"--merge {args.merge} must be 0 (no merging) or more.")
    if args.show < 0:
        raise UserError(f"--show {args.show} must be 0 or more.")
    data = load_noted_data(args)  # --shots: what a few-shot grid's cells mine (the mining review)
    train = data.train
    loaded = load_model(args.model, data.labels)
    warn_unreadable(loaded.tokenizer, train["text"].tolist())
    task_tokens = mine_task_tokens(train["text"].tolist(), train["label"].tolist(), loaded.tokenizer,
                                   mining_config(args))
    merge = adaptive_tokenization(loaded, task_tokens, train["text"].tolist(), args.merge) if args.merge else None
    frame = task_tokens.to_frame()
    if said := task_tokens.ungrouped_labels_note(train["label"]):  # on stderr, --json too (the diff review)
        print(f"note: {said} (--min-count, --top)", file=sys.stderr)
    if args.json:  # one shape with or without --merge: a list of groups, pieces as a list
        # pieces: the original tokenizer's split, also after --merge; merged_slot names the merged word's slot
        records = frame.assign(pieces=[g.pieces for g in task_tokens.groups]).to_dict(orient="records")
        if merge:
            for record, group in zip(records, task_tokens.groups, strict=True):
                record["merged_slot"] = group.merged_slot
            print(merge.summary(), file=sys.stderr)
        print_json(records)
        return 0
    background = f"; background: {task_tokens.background}" if task_tokens.background else ""
    print(f"{len(frame)} groups from {len(train)} training rows{background}")
    if frame.empty:
        print(f"No group occurs at least --min-count {args.min_count} times: lower it (or add rows).")
    elif args.show:
        print(mined_table(frame.head(args.show)).to_string(index=False))
    if merge:
        print(merge.summary())
    return 0


def mined_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``mine``'s table: the score's parts beside it (label relevance, specificity against the general language), and
    the label's rows among the group's ("18/134": a group spread over many labels points weakly to any); ``reads``
    only where a group reads otherwise than its text (a fragment)."""
    shown = frame.assign(relevance=frame["relevance"].round(4), specificity=frame["specificity"].round(4),
                         score=frame["score"].round(4), lift=frame["lift"].round(2),
                         label_rows=[f"{n:.0f}/{c}" if n == n and n is not None else "-"
                                     for n, c in zip(frame["label_rows"], frame["count"], strict=True)])
    cols = ["text", "reads", "pieces", "count", "relevance", "specificity", "score", "label", "label_rows", "lift"]
    if (frame["reads"] == frame["text"]).all():
        cols.remove("reads")
    return shown[cols].rename(columns={"label_rows": "label rows"})


# --------------------------------------------------------------------------------------- sensitivity


def _register_sensitivity(sub: Any) -> None:
    p = sub.add_parser("sensitivity", help="score rows of every weight matrix (token-restricted Fisher)",
                       description="Warm up a head on DATA, score every row of every weight matrix on a calibration "
                       "subset and print the scores per layer and module; --out saves them, which finetune --scores "
                       "then trains from, and --budget shows what a budget selects.")
    add_data_args(p, carve=True, draw=True)
    _model_arg(p)
    _mining_args(p, "the groups whose positions --restriction tokens scores")
    p.add_argument("--restriction", choices=["tokens", "none"], default="tokens",
                   help="tokens: the Fisher over the mined groups' positions only (the method); none: every position")
    p.add_argument("--score", choices=SCORES, default=SensitivityConfig.score, help="the row score")
    _calibration_rows_arg(p)
    p.add_argument("--max-length", type=int, default=SensitivityConfig.max_length,
                   help="sub-tokens read per text while scoring (a finetune --scores run reading another length is "
                   "told so)")
    truncation_side_arg(p, "as the finetune runs the scores serve")
    _fisher_labels_arg(p)
    _head_warmup_arg(p)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--out", default=None, metavar="DIR", help="save scores here (safetensors) for later selection")
    p.add_argument("--budget", type=budget_value, default=None,
                   help="also show what this budget selects (with --json: selected_rows per layer and module; "
                   "`select DIR --budget B --json` gives the totals from saved scores in milliseconds), "
                   "a fraction of backbone parameters in (0, 1] or a count > 1")
    mask_group = _mask_args(p, "with --budget: what the mask takes, as finetune's options")
    mask_group.add_argument("--seed", type=int, default=0,
                            help="seeds the rows drawn at random (--random-share, --sample-temperature), as a finetune "
                            "--scores run of this seed draws them")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_sensitivity)


# --------------------------------------------------------------------------------------- select


def _register_select(sub: Any) -> None:
    p = sub.add_parser("select", help="what budgets select from saved row scores, without scoring again",
                       description="Read the row scores that sensitivity --out saved (or a run folder's) and print "
                       "what each budget selects: the parameters, what a sparse run trains with them, the lowest "
                       "layer, the step-time estimate and the optimizer memory. Milliseconds a budget, where "
                       "sensitivity --budget scores again.")
    p.add_argument("scores", metavar="SCORES",
                   help="a folder that sensitivity --out wrote, or a run folder (its own mask options and budget, "
                   "with any given here laid over them)")
    p.add_argument("--budget", type=budget_list, default=None, metavar="B[,B...]",
                   help="one or more budgets, comma-separated: fractions of the backbone in (0, 1] or whole "
                   f"parameter counts (default: a run folder's own budget, else {MaskConfig.budget:g})")
    group = _mask_args(p, "what the mask takes, as finetune's options (laid over a run folder's own)")
    group.add_argument("--seed", type=int, default=0,
                       help="seeds the rows drawn at random (--random-share, --sample-temperature)")
    p.add_argument("--json", action="store_true",
                   help="print JSON: a list, a budget each, of {budget, budget_params, selected_params, share, "
                   "trainable_params, lowest_layer, time_ratio_estimate, optimizer_bytes, note, rows: [{layer, "
                   "module, selected_rows, rows, eligible}]}")
    p.set_defaults(func=run_select)


def budget_list(text: str) -> list[float]:
    """``select --budget``'s comma-separated budgets, each as ``budget_value`` takes it."""
    budgets = [budget_value(part.strip()) for part in text.split(",") if part.strip()]
    if not budgets:
        raise argparse.ArgumentTypeError("give at least one budget")
    return budgets


def run_select(args: argparse.Namespace) -> int:
    from clm_explore.masks import human_bytes, run_mask_config, select_mask
    from clm_explore.runs import read_json_object
    from clm_explore.sensitivity import SensitivityReport

    folder = Path(args.scores).expanduser()
    report = SensitivityReport.load(folder)
    own = run_mask_config(folder)  # None: a scores folder
    changes = _mask_changes(args)
    base = replace(own, **changes) if own is not None else mask_config(argparse.Namespace(
        **{**vars(args), "budget": (args.budget or [MaskConfig.budget])[0]}))
    budgets = args.budget or [base.budget]  # a run folder: its own budget (as select_mask(run) takes it)
    notes = []
    if own is not None:
        notes.append(f"the run's own mask options ({_mask_words(own)})"
                     + (f", with {_mask_words(replace(MaskConfig(), **changes))} given here" if changes else ""))
        method = str(read_json_object(folder / "clm_run.json").get("method") or "")
        if method and method not in TOP_ROW_METHODS:  # the diff review: a random run's "own" rows were not these
            notes.append(f"the run's method, {method}, chose its rows otherwise: these are the top rows its scores "
                         "rank, as a sparse run of them would train")
    picked = [(budget, select_mask(report, replace(base, budget=budget))) for budget in budgets]
    if args.json:
        print_json([_selection_record(budget, sel) for budget, sel in picked])
        return 0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    rows = [{"budget": budget_words(budget), "selected": f"{sel.selected_params:,}", "share": f"{sel.share:.3%}",
             "trainable": "–" if sel.trainable_params is None else f"{sel.trainable_params:,}",
             "lowest layer": "embeddings" if sel.lowest_layer == -1 else sel.lowest_layer,
             "step time vs full": f"about {sel.time_ratio_estimate:.1f}",
             "optimizer memory": human_bytes(sel.optimizer_bytes)} for budget, sel in picked]
    import pandas as pd

    print(pd.DataFrame(rows).to_string(index=False))
    print("trainable: the selected rows with the head and LayerNorms a sparse run trains beside them; optimizer "
          "memory: AdamW's value, gradient and two moments, 16 bytes a trainable parameter (activations are not in "
          "it); step time: a rough estimate from the lowest layer and the share, which runs high")
    for budget, sel in picked:
        if sel.budget_note:
            print(f"note: {budget_words(budget)}: {sel.budget_note}", file=sys.stderr)
    return 0


TOP_ROW_METHODS = ("sparse", "sparse_merged", "fisher")
"""Methods whose rows are their scores' top rows under their mask options: ``select`` on their run shows them."""


def _mask_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The mask options given on the command line away from their defaults, as MaskConfig fields: laid over a run's
    own options (the diff review: one option given dropped all the run's others)."""
    changes: dict[str, Any] = {}
    if args.min_layer != MaskConfig.min_layer:
        changes["min_layer"] = args.min_layer
    if args.cost_aware != MaskConfig.cost_aware:
        changes["cost_aware"] = args.cost_aware
    if args.sample_temperature is not None:
        changes.update(strategy="sampled", sample_temperature=args.sample_temperature)
    if args.random_share != MaskConfig.random_share:
        changes["random_share"] = args.random_share
    if args.spread_heads:
        changes["spread_heads"] = True
    if args.no_embeddings:
        changes["include_embeddings"] = False
    if args.train_biases:
        changes["train_biases"] = True
    if args.seed != 0:
        changes["seed"] = args.seed
    return changes


def _selection_record(budget: float, sel: Any) -> dict[str, Any]:
    return {"budget": budget, "budget_params": sel.budget_params, "selected_params": sel.selected_params,
            "share": sel.share, "trainable_params": sel.trainable_params, "lowest_layer": sel.lowest_layer,
            "time_ratio_estimate": sel.time_ratio_estimate, "optimizer_bytes": sel.optimizer_bytes,
            "note": sel.budget_note, "rows": sel.table[["layer", "module", "selected_rows", "rows", "eligible"]].to_dict(
                orient="records")}


def _mask_words(cfg: MaskConfig) -> str:
    """A mask's options away from the defaults, as finetune's flags name them ("the defaults" where none is)."""
    said = [f"--min-layer {cfg.min_layer}" if cfg.min_layer != MaskConfig.min_layer else "",
            f"--cost-aware {cfg.cost_aware:g}" if cfg.cost_aware != MaskConfig.cost_aware else "",
            f"--sample-temperature {cfg.sample_temperature:g}" if cfg.strategy == "sampled" else "",
            "random rows" if cfg.strategy == "random" else "",
            f"--random-share {cfg.random_share:g}" if cfg.random_share != MaskConfig.random_share else "",
            "--spread-heads" if cfg.spread_heads else "", "--no-embeddings" if not cfg.include_embeddings else "",
            "--train-biases" if cfg.train_biases else ""]
    return ", ".join(word for word in said if word) or "the defaults"


def _fisher_labels_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fisher-labels", choices=FISHER_LABELS, default=SensitivityConfig.fisher_labels,
                   help="the Fisher score's labels: the annotated ones (empirical Fisher) or drawn from the "
                        "warmed-up model (true Fisher; --score fisher only)")
    p.add_argument("--label-draws", type=int, default=SensitivityConfig.label_draws, metavar="N",
                   help="model-label draws per calibration row (--fisher-labels model), one scoring pass each")


def _calibration_rows_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration-rows", type=int, default=SensitivityConfig.calibration_rows, metavar="N",
                   help="training rows the row scores are computed on (drawn with the scoring's seed above N)")


def _head_warmup_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head-warmup-epochs", type=int, default=SensitivityConfig.warmup_epochs,
                   help="epochs of the head warm-up (a linear probe on a one-layer head) before scoring "
                        "(-1 = auto: 5, or 1 below 20 training rows per label)")
    p.add_argument("--head-init", choices=HEAD_INITS, default=SensitivityConfig.head_init,
                   help="where the warm-up starts: the head as loaded, or a nearest-centroid head of the "
                        "calibration rows (the same for every seed on a one-layer head; also with "
                        "--head-warmup-epochs 0)")


def run_sensitivity(args: argparse.Namespace) -> int:
    from clm_explore.masks import select_mask
    from clm_explore.mining import mine_task_tokens
    from clm_explore.modeling import load_model
    from clm_explore.sensitivity import compute_sensitivity

    _check_scores_folder(args.out)
    if args.budget is None and _mask_options_given(args):
        print("note: the mask options (--min-layer, --random-share and the like) are read with --budget only",
              file=sys.stderr)
    cfg = SensitivityConfig(restriction=args.restriction, score=args.score, calibration_rows=args.calibration_rows,
                            max_length=args.max_length, truncation_side=args.truncation_side,
                            fisher_labels=args.fisher_labels, label_draws=args.label_draws,
                            warmup_epochs=args.head_warmup_epochs, head_init=args.head_init)  # checked before loading
    data = load_noted_data(args)
    loaded = load_model(args.model, data.labels)
    warn_unreadable(loaded.tokenizer, data.train["text"].tolist())
    if args.budget is not None:  # before the scoring pass: a budget or floor the model cannot hold is said at once
        from clm_explore.training import check_runnable

        mask = mask_config(args)
        _check_budget_fits(mask, loaded)
        check_runnable(FinetuneConfig(method="sparse", mask=mask), loaded)
    task_tokens = mine_task_tokens(data.train["text"].tolist(), data.train["label"].tolist(), loaded.tokenizer,
                                   mining_config(args))
    report = compute_sensitivity(loaded, data, task_tokens, cfg, device=args.device,
                                 on_progress=None if args.json else _progress_printer("scoring"), progress=False)
    if args.out:
        report.save(args.out)
        task_tokens.save(Path(args.out) / "task_tokens.json")
        print(f"saved the scores to {args.out} (finetune --scores {args.out} trains from them)", file=sys.stderr)
    table = report.table[["layer", "module", "score", "norm_score", "rows", "params"]]
    sel = select_mask(report, mask_config(args)) if args.budget is not None else None
    if sel is not None:  # each (layer, module) also says how many of its rows the budget selects
        table = table.merge(sel.table[["layer", "module", "selected_rows"]], on=["layer", "module"], how="left")
        table["selected_rows"] = table["selected_rows"].fillna(0).astype(int)
    if args.json:
        print_json(table.to_dict(orient="records"))
        if sel is not None and sel.budget_note:
            print(f"note: {sel.budget_note}", file=sys.stderr)
        return 0
    print(table.to_string(index=False))
    # The real-model review: read as the selection's order, norm_score ran against it (a map at 0.00004 got 22 rows).
    print("norm_score: the map's score per parameter, the highest 1; rows are selected on each row's score over its "
          "map's mean, so a map low here may still hold selected rows")
    print(f"{report.seconds:.1f} s; " + "; ".join(report.notes))
    if sel is not None:
        lowest = f"{sel.lowest_layer} (the embeddings)" if sel.lowest_layer == -1 else sel.lowest_layer
        trained = "" if sel.trainable_params is None else (
            f"; a sparse run trains {sel.trainable_params:,} with its head and LayerNorms")  # as finetune prints it
        print(f"budget {args.budget:g}: {sel.selected_params:,} parameters selected ({sel.share:.3%}){trained}; lowest "
              f"layer {lowest}, estimated step time vs full {sel.time_ratio_estimate:.2f}")
        if sel.budget_note:
            print(f"note: {sel.budget_note}", file=sys.stderr)
    return 0


def _check_scores_folder(out: str | None) -> None:
    """``sensitivity --out``: a new or empty folder, or an earlier one of its own (its files are replaced), checked
    before the scoring: never a data or run folder whose files would be overwritten or mixed with the scores."""
    if out is None:
        return
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out} is a file; the scores go into a folder.")
    if path.is_dir() and any(path.iterdir()) and not (path / "sensitivity.json").is_file():
        raise UserError(f"--out {out} holds other files (it is not an earlier sensitivity output); choose a new or "
                        "empty folder.")
    path.mkdir(parents=True, exist_ok=True)  # a folder it cannot write (read-only, not this user's): said now, not
    tempfile.TemporaryFile(dir=path).close()  # after minutes of scoring


def _progress_printer(what: str):
    """A count rewritten on one line in a terminal; in a log, its last value only (as ``phase_printer``)."""
    live = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        if live:
            print(f"\r{what} {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
        elif done == total:
            print(f"{what} {done}/{total}", file=sys.stderr, flush=True)
    return show


# ------------------------------------------------------------------------------------------ finetune


def _register_finetune(sub: Any) -> None:
    p = sub.add_parser("finetune", help="finetune with a method and write a run folder",
                       description="Train a classifier on DATA with one method (sparse: the top-scored rows within "
                       "the budget) and write a run folder: a transformers model, its masks, metrics.json, "
                       "predictions.csv and a model card.")
    add_data_args(p, positional=False, carve=True, draw=True)
    _model_arg(p)
    p.add_argument("--method", default="sparse", help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--budget", type=budget_value, default=MaskConfig.budget,
                   help="fraction of backbone parameters in (0, 1], or a count > 1")
    p.add_argument("--epochs", type=int, default=FinetuneConfig.epochs, help="passes over the training split")
    p.add_argument("--lr", type=float, default=0.0, help="0 = the method's default")
    p.add_argument("--head-lr", type=float, default=FinetuneConfig.head_lr,
                   help="the row methods' head rate (0 = --lr)")
    p.add_argument("--norm-lr", type=float, default=FinetuneConfig.norm_lr,
                   help="the row methods' LayerNorm rate (0 = --lr)")
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout probability while training (default: the checkpoint's)")
    p.add_argument("--cache-frozen-layers", action=argparse.BooleanOptionalAction,
                   default=FinetuneConfig.cache_frozen_layers,
                   help="row methods: compute the frozen layers below the lowest selected row once, not every step "
                   "(default: off)")
    p.add_argument("--compile", default=FinetuneConfig.compile, choices=COMPILE_MODES, metavar="MODE",
                   help="torch.compile the training step: off, default, reduce-overhead (CUDA graphs on a GPU) or "
                        "max-autotune (CUDA graphs too); not with --cache-frozen-layers")
    p.add_argument("--schedule", default=FinetuneConfig.schedule, choices=SCHEDULES,
                   help="learning rate after the warm-up: linear or cosine decay to 0, or constant")
    p.add_argument("--warmup-ratio", type=float, default=FinetuneConfig.warmup_ratio,
                   help="share of steps with a linear warm-up, in [0, 1)")
    p.add_argument("--label-smoothing", type=float, default=FinetuneConfig.label_smoothing,
                   help="label smoothing of the training loss, in [0, 1)")
    p.add_argument("--weight-decay", type=float, default=FinetuneConfig.weight_decay,
                   help="AdamW weight decay; the row methods decay only their deltas, which pulls the trained rows "
                   "back towards the checkpoint's")
    p.add_argument("--average-last", type=float, default=FinetuneConfig.average_last, metavar="SHARE",
                   help="average the trained weights over this last share of the steps, in [0, 1] (0 = off)")
    p.add_argument("--keep-best", action="store_true",
                   help="save (and score on test) the weights of the epoch with the best validation accuracy, not "
                   "the last epoch's")
    p.add_argument("--early-stop", type=int, default=FinetuneConfig.early_stop, metavar="N",
                   help="stop after N epochs in a row without a better validation accuracy (0 = off)")
    p.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size, help="rows per step")
    p.add_argument("--max-length", type=int, default=FinetuneConfig.max_length,
                   help="sub-tokens read per text (predictions and attributions then read as many); longer reads "
                   "cost time and memory: the default model at batch 32, sparse, one thread took about 11 s an "
                   "epoch of 240 rows and 1.3 GB at 64, 58 s and 3.6 GB at 256, 7.8 GB at 512 (the process's peak)")
    truncation_side_arg(p, "in training, and in the run's predictions and attributions, which its tokenizer keeps")
    p.add_argument("--seed", type=int, default=0, help="seeds the head, the order of rows, dropout and drawn rows")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    _mask_args(p)
    _merge_arg(_mining_args(p, f"the methods that mine: {', '.join(MINING_METHODS)}"),
               "the methods that mine merge before scoring; sparse_merged: 0 = 64")
    p.add_argument("--score", choices=SCORES, default=SensitivityConfig.score,
                   help="row score of the sparse method's sensitivity pass")
    _calibration_rows_arg(p)
    _fisher_labels_arg(p)
    _head_warmup_arg(p)
    p.add_argument("--cold-head", action="store_true",
                   help="train from the head as loaded (seeded random), not the warmed-up one; row methods still "
                   "warm a head for their scores")
    p.add_argument("--prefix-init", choices=PREFIX_INITS, default=FinetuneConfig.prefix_init,
                   help="prefix method: where the prefix keys and values start (random: peft's draws; zero: "
                   "they add nothing to an attention output at the start)")
    p.add_argument("--out-of-scope-quantile", type=float, default=FinetuneConfig.out_of_scope_quantile, metavar="Q",
                   help="test labels unseen in train are scored with abstention below this quantile of the "
                   "validation rows' top probabilities, in (0, 1)")
    p.add_argument("--scores", default=None, metavar="DIR",
                   help="sparse, fisher, random: choose the rows from scores saved by `sensitivity --out DIR` (same "
                   "model and labels) instead of scoring again; their settings replace --score, "
                   "--fisher-labels, --label-draws and the head warm-up options")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: a new folder under the run root)")
    p.add_argument("--name", default=None, help="the run's name in the registry and the app's Runs page (`runs "
                   "--json`; its id is made from it); default: the --out folder's name (GRID/CELL for a bench's "
                   "cell), else METHOD-DATA. A registry made anew names runs by their folders")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out run folder (one holding clm_run.json)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_finetune_process)


def _mask_args(p: argparse.ArgumentParser, title: str = "what the mask takes (row methods, layers)") -> Any:
    """What a mask takes: finetune's options, which sensitivity --budget takes too, so that it shows the rows a run
    of the same options trains. Returns their group."""
    group = p.add_argument_group(title)
    group.add_argument("--min-layer", type=int, default=MaskConfig.min_layer,
                       help="no rows below this layer (-1 = auto: the upper half; 0 = all layers and embeddings)")
    group.add_argument("--cost-aware", type=float, default=MaskConfig.cost_aware, metavar="W",
                       help="tilt every row's score towards upper layers: score x (1 + W x (layer + 1) / (layers + "
                       "1)); 0 = off. A tilt of every score, not a tie-break: short of very large weights it did not lift the "
                       "lowest selected layer (BENCHMARKS.md); --min-layer is the speed knob")
    group.add_argument("--sample-temperature", type=float, default=None, metavar="T",
                       help="sparse: draw rows with probability proportional to score ** (1/T) instead of taking the "
                       "top ones (default: off, the top ones)")
    group.add_argument("--random-share", type=float, default=MaskConfig.random_share, metavar="S",
                       help="row methods: spend this share of the budget in [0, 1] on random rows, the rest on the "
                       "top ones")
    group.add_argument("--spread-heads", action="store_true",
                       help="top rows: take each query, key and value map's rows round-robin over its attention heads")
    group.add_argument("--no-embeddings", action="store_true", help="word-embedding rows may not be selected")
    group.add_argument("--train-biases", action="store_true",
                       help="row methods: also train every linear bias at and above the lowest selected layer")
    return group


def _mask_options_given(args: argparse.Namespace) -> bool:
    """Whether any of ``_mask_args``' options is away from its default."""
    return (args.min_layer != MaskConfig.min_layer or args.cost_aware != MaskConfig.cost_aware
            or args.sample_temperature is not None or args.random_share != MaskConfig.random_share
            or args.spread_heads or args.no_embeddings or args.train_biases or args.seed != 0)


def budget_value(text: str) -> float:
    """``--budget``'s value, refused as argparse refuses a word (at once, before the data, the model or their imports:
    the budget review waited 6-11 s for a refusal of 0): a fraction in (0, 1] or a whole count above 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not (0 < value <= 1 or (value > 1 and value.is_integer())):
        raise argparse.ArgumentTypeError(f"{text} must be a fraction in (0, 1] or a whole parameter count above 1")
    return value


def mask_config(args: argparse.Namespace) -> MaskConfig:
    """The mask options of ``args`` (``_mask_args``, ``--budget`` and ``--seed``)."""
    if not (0 < args.budget <= 1 or (args.budget > 1 and float(args.budget).is_integer())):
        raise UserError(f"--budget {args.budget:g} must be a fraction in (0, 1] or a whole parameter count above 1.")
    sampling = {} if args.sample_temperature is None else {"strategy": "sampled",
                                                           "sample_temperature": args.sample_temperature}
    return MaskConfig(budget=args.budget, min_layer=args.min_layer, cost_aware=args.cost_aware,
                      include_embeddings=not args.no_embeddings, train_biases=args.train_biases,
                      random_share=args.random_share, spread_heads=args.spread_heads, seed=args.seed, **sampling)


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    if args.method not in METHODS:
        raise UserError(f"Unknown method {args.method!r}; choose one of {', '.join(METHODS)}.")
    mask = mask_config(args)
    return FinetuneConfig(method=args.method, epochs=args.epochs, lr=args.lr, head_lr=args.head_lr,
                          norm_lr=args.norm_lr, dropout=args.dropout, cache_frozen_layers=args.cache_frozen_layers,
                          compile=args.compile,
                          schedule=args.schedule, warmup_ratio=args.warmup_ratio, batch_size=args.batch_size,
                          label_smoothing=args.label_smoothing, average_last=args.average_last,
                          weight_decay=args.weight_decay, keep_best=args.keep_best, early_stop=args.early_stop,
                          max_length=args.max_length, truncation_side=args.truncation_side, seed=args.seed,
                          device=args.device, mask=mask,
                          out_of_scope_quantile=args.out_of_scope_quantile, head_warmup=not args.cold_head,
                          prefix_init=args.prefix_init, mining=mining_config(args, args.merge),
                          sensitivity=SensitivityConfig(score=args.score, fisher_labels=args.fisher_labels,
                                                        label_draws=args.label_draws,
                                                        calibration_rows=args.calibration_rows,
                                                        warmup_epochs=args.head_warmup_epochs,
                                                        head_init=args.head_init))


def run_finetune_process(args: argparse.Namespace) -> int:
    """``run_finetune``, then, under several processes, the process group ended on every rank together: one left to
    the interpreter's exit let a rank abort (gloo: "terminate called without an active exception") while others
    still talked to it."""
    try:
        code = run_finetune(args)
    except BaseException:
        _end_process_group(together=False)  # the others may wait in another collective: no barrier to hang on
        raise
    _end_process_group(together=True)
    return code


def _end_process_group(together: bool) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # a rank that failed: the launcher ends every process anyway
            if together:
                dist.barrier()
            dist.destroy_process_group()


def run_finetune(args: argparse.Namespace) -> int:
    from clm_explore.modeling import load_model, resolve_device
    from clm_explore.runs import RunStore, check_run_dir, claimed_run_dir, default_root
    from clm_explore.training import (
        check_processes,
        check_runnable,
        check_scores_fit,
        check_scores_outside,
        check_splits,
        finetune,
        given_scores,
        scores_read_note,
        scoring_settled,
    )

    rerun = getattr(args, "rerun", None)  # a RerunPlan: `rerun` gives the run's own config, rows and scores
    cfg = rerun.cfg if rerun else finetune_config(args)
    for note in _unused_options(args):
        print(f"note: {note}", file=sys.stderr)
    given = given_scores(args.scores, cfg)  # a folder that cannot serve is said before the model loads
    brings_groups = given is not None and (given.task_tokens is not None or given.mining is not None)
    if brings_groups and cfg.mining != MiningConfig() and not rerun:  # saved without either: mined here, so
        print("note: the mining options are not read with --scores: the groups come with the scores, mined as "
              "they were made", file=sys.stderr)
    if given is not None:  # the registry records the settings the scores were made with, as the run folder does
        cfg = scoring_settled(cfg, given)
        if args.out:
            check_scores_outside(given, Path(args.out))  # --overwrite would delete them before they are read
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and not args.out:  # on every process: a refusal on one alone left the others waiting for it
        raise UserError("Several processes need --out DIR, so that every process writes into the same run folder.")
    data = rerun.data if rerun else load_noted_data(args)
    if len(data.labels) < 2:
        raise UserError(f"{args.data} has a single label ({data.labels[0]!r}); a classifier needs at least two.")
    check_processes(len(data.train), cfg.batch_size, processes)
    check_splits(data, cfg)  # before a run is registered: refused later, it was listed failed (the diff review)
    loaded = load_model(args.model, data.labels)
    _check_budget_fits(cfg.mask, loaded)
    check_runnable(cfg, loaded)  # a row method's mask must hold a row: said before any folder or work
    warn_unreadable(loaded.tokenizer, data.train["text"].tolist())
    args.training_notes = [] if rerun else _training_notes(loaded, data, cfg)  # said once its folder is taken
    if given is not None:
        check_scores_fit(given, loaded, data.labels, cfg.mask)
        if said := scores_read_note(given.sensitivity, cfg):  # the faces review: said nowhere, yet the rows may differ
            print(f"note: {said.replace('the scores', f'the scores in {args.scores}', 1)}", file=sys.stderr)
    resolve_device(cfg.device)  # a bad --device is a message before any folder is touched
    protected = (default_root(), Path(args.data))
    if int(os.environ.get("RANK", "0")) > 0:
        # accelerate launch / torchrun: rank 0 owns the run folder and the registry entry; the others refuse a
        # folder as it does, before any process waits for another.
        check_run_dir(args.out, args.overwrite, protected, launch_peer=True)  # rank 0 holds the folder's lock
        finetune(data, cfg, Path(args.out), source=args.model, overwrite=args.overwrite, scores=given)
        return 0
    store = RunStore()
    store.check_writable()  # a registry held or damaged is said before --overwrite moves the earlier run aside
    if not args.out:
        return _train_registered(args, cfg, data, store, None, processes, given)
    claim = None
    try:
        # The folder's lock is held from the claim on (finetune takes it again inside): a second run into this
        # folder is refused before it registers, where it took over this run's record and, refused later, marked
        # the live run failed; and the earlier run is put back into a folder no other run could enter.
        with claimed_run_dir(args.out, args.overwrite, protected=protected) as claim:
            return _train_registered(args, cfg, data, store, claim.path, processes, given, claim)
    finally:
        if claim is not None and claim.earlier is not None and not claim.kept:  # the earlier run put back (or kept)
            _said_put_back(store, claim)


def _training_notes(loaded: Any, data: Any, cfg: FinetuneConfig) -> list[str]:
    """What ``finetune`` says of its data before it trains: the steps few-shot data makes at these epochs, and how
    many training texts are longer than it reads (with how to read more, where the model can)."""
    from clm_explore.batches import cut_texts_note, cutting, longer_read_advice
    from clm_explore.modeling import usable_positions
    from clm_explore.training import SWITCH_SIDE

    notes = []
    if few := few_steps_note(len(data.train), data.train["label"].nunique(), cfg.epochs, cfg.batch_size):
        notes.append(f"{few} (--epochs {FEW_SHOT_EPOCHS})")
    longer = longer_read_advice(cfg.max_length, usable_positions(loaded.model.config), "--max-length",
                                cfg.truncation_side, SWITCH_SIDE)
    with cutting(loaded.tokenizer, cfg.truncation_side):  # as the run will
        cut = cut_texts_note(loaded.tokenizer, data.train["text"].tolist(), cfg.max_length, "this run", longer,
                             what="training texts")
    if cut:
        notes.append(cut)
    return notes


def _said_put_back(store: Any, claim: Any) -> None:
    """After a run into a folder that held a finished one stopped short: where the earlier run is, and its registry
    record read again from it (the new run's failure had been recorded under the folder)."""
    from clm_explore.runs import RunStoreError

    if claim.restored:
        print(f"note: the earlier run in {claim.path} was put back.", file=sys.stderr)
        with contextlib.suppress(RunStoreError):  # the registry's trouble must not hide why the run stopped
            store.register_folder(claim.path)
    else:
        print(f"note: the earlier run that was in {claim.path} is kept in {claim.earlier}: move its files back by "
              "hand, then list it again (in Python: clm_explore.RunStore().register_folder(path)).", file=sys.stderr)


def _train_registered(args: argparse.Namespace, cfg: Any, data: Any, store: Any, out: Path | None,
                      processes: int, given: Any = None, claim: Any = None) -> int:
    """``finetune`` once its folder is claimed: the run registered (as the app records one), trained, recorded. The
    claim is kept as soon as the run is saved: the registry's trouble afterwards must not put the earlier run back
    in place of a finished one (the concurrency review: a registry held by another process for 30 s did)."""
    from clm_explore.data import data_digest
    from clm_explore.modeling import recorded_source
    from clm_explore.runs import RunStatus, RunStoreError
    from clm_explore.training import finetune, recorded_config

    # As the app records a run (the Runs and Compare pages group by model and data): before clm_run.json exists, with
    # the config clm_run.json will hold (the faces review: the Runs page said the rows were scored at 64 sub-tokens,
    # the run's own 32 settled only in its folder).
    # the data named with its carve and draw (the Runs and Compare pages' data column), as a registry made anew from
    # clm_run.json names it (runs._registry_config)
    said = data_options_words(to_dict(data.config), data.carved) if data.config else ""
    listed = {**to_dict(recorded_config(cfg, given)), "source": recorded_source(args.model),
              "data": data.source + said,
              "data_digest": data_digest(data)}  # the same rows as an app run's, whatever each calls the data
    for note in getattr(args, "training_notes", []):  # rank 0 alone, after every refusal (the diff review)
        print(f"note: {note}", file=sys.stderr)
    name = getattr(args, "name", None)  # `rerun` names its runs as their folders
    record = (store.register_folder(out, name=name, method=cfg.method, config=listed) if out
              else store.create(name or f"{cfg.method}-{Path(args.data).stem}", cfg.method, listed))
    run_dir = store.path(record.id)
    store.set_status(record.id, RunStatus.RUNNING)
    try:
        result = finetune(data, cfg, run_dir, source=args.model,
                          on_step=None if args.json else _step_printer(),
                          on_phase=None if args.json else phase_printer(), progress=False, scores=given)
    except BaseException as exc:
        with contextlib.suppress(RunStoreError):  # the registry's trouble must not hide why the run stopped
            if isinstance(exc, Terminated):  # not the user's Ctrl+C: a kill, a timeout, a scheduler, a launcher
                store.set_status(record.id, RunStatus.INTERRUPTED, error=(
                    "stopped by SIGTERM, which the launcher sends every process when one of them fails, or when it is "
                    "stopped itself" if processes > 1 else "stopped by SIGTERM (a kill, `timeout`, a scheduler)"))
            else:  # a cancel's KeyboardInterrupt says nothing: its name, not ''
                store.set_status(record.id, RunStatus.CANCELLED if isinstance(exc, KeyboardInterrupt)
                                 else RunStatus.FAILED, error=str(exc) or type(exc).__name__)
        _budget_error(exc)
        raise
    if claim is not None:
        claim.keep()
    try:
        store.set_status(record.id, RunStatus.SUCCEEDED)
    except RunStoreError as exc:
        print(f"note: the run is saved in {run_dir}, but the registry could not record it as finished ({exc}); list "
              f"it again when the registry is free (in Python: clm_explore.RunStore().register_folder(path)).",
              file=sys.stderr)
    metrics = {k: v for k, v in result.metrics.items() if k not in ("confusion",)}
    rerun = getattr(args, "rerun", None)
    if args.json:
        reran = {"rerun_of": str(rerun.run), "rerun_of_metrics": _figures(rerun.run)} if rerun else {}
        print_json({"run": record.id, "out_dir": str(run_dir), **metrics, **reran})
    else:
        print(f"run {record.id} -> {run_dir}")
        print(f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  trainable "
              f"{metrics['trainable_params']:,} / {metrics['total_params']:,}  {_time_text(metrics)}")
        if isinstance(scope := metrics.get("out_of_scope"), dict) and scope.get("rows"):
            from clm_explore.cli.evaluate_cmds import out_of_scope_lines

            print(out_of_scope_lines(scope))  # the plain accuracy counts every unseen label's row wrong
        if rerun:
            print(_reran_text(rerun.run))
        if epochs_said := _epochs_text(metrics, cfg):
            print(epochs_said)
        from clm_explore.mining import MergeReport
        from clm_explore.runs import read_json_object

        merge = read_json_object(run_dir / "merge.json")
        if merge:  # what adaptive tokenization merged and bought (merge.json alone said it; the models review)
            print(f"merge: {MergeReport.from_dict(merge).summary()}")
        for key, note in metrics.items():  # budget_note, score_note, dropout_note, biases_note, mask_note
            if key.endswith("_note") and note:  # results on stdout, notes on stderr (the CLI review)
                print(f"{'warning' if key in WARNING_NOTES else 'note'}: {note}", file=sys.stderr)
    return 0


WARNING_NOTES = ("collapse_note",)
"""metrics.json notes that say the run's figures may mean little: printed as warnings."""


def _register_rerun(sub: Any) -> None:
    p = sub.add_parser("rerun", help="train a run again from its own record",
                       description="Train a run again with its own settings, model and scores, on its rows read with "
                       "its data options (clm_run.json), into a new run folder; the data must still hold the same "
                       "rows. On the same code, packages and threads the weights come out the same; what may make "
                       "them differ is said in a note.")
    p.add_argument("--run", required=True, metavar="DIR", help="a run folder (or a run id of the registry)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="its data, where the recorded path is not on this machine (an app upload, a moved file)")
    p.add_argument("--seed", type=int, default=None, help="another seed (default: the run's)")
    p.add_argument("--device", default=None, help="another device (default: the run's): auto, cpu, cuda, cuda:N")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: a new folder under the run root)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out run folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_rerun)


def run_rerun(args: argparse.Namespace) -> int:
    from clm_explore.cli import build_parser, say_data_notes
    from clm_explore.reruns import rerun_plan

    changes = {key: value for key, value in (("seed", args.seed), ("device", args.device)) if value is not None}
    plan = rerun_plan(_recorded_run_dir(args.run), args.data, **changes)
    say_data_notes(plan.data)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    # finetune's own path (checks, registry, folder claim, output) with the run's config, rows and scores
    run_args = build_parser().parse_args(["finetune", "--data", plan.data.source, "--model", plan.source,
                                          "--method", plan.cfg.method])
    run_args.out, run_args.overwrite, run_args.json = args.out, args.overwrite, args.json
    run_args.scores, run_args.rerun = (str(plan.scores) if plan.scores else None), plan
    return run_finetune_process(run_args)


def _recorded_run_dir(run: str) -> Path:
    """A run folder holding clm_run.json (a failed or cancelled run's too), or a run id of the registry."""
    path = Path(run).expanduser()
    if (path / "clm_run.json").is_file():
        return path
    from clm_explore.runs import REGISTRY_NAME, RunStore, default_root

    if (default_root() / REGISTRY_NAME).is_file() and RunStore().known([run]):
        return RunStore().path(run)
    raise UserError(f"{run!r} is neither a run folder (with clm_run.json) nor a known run id.")


def _figures(run_dir: Path) -> dict[str, Any]:
    from clm_explore.runs import read_json_object

    metrics = read_json_object(run_dir / "metrics.json")
    return {key: metrics.get(key) for key in ("accuracy", "macro_f1", "status")}


def _reran_text(run_dir: Path) -> str:
    figures = _figures(run_dir)
    if not isinstance(figures["accuracy"], int | float) or not isinstance(figures["macro_f1"], int | float):
        return f"the run it reran ({run_dir.name}) has no figures ({figures['status'] or 'no metrics.json'})"
    return (f"the run it reran ({run_dir.name}): accuracy {figures['accuracy']:.4f}  macro-F1 "
            f"{figures['macro_f1']:.4f}")


def _unused_options(args: argparse.Namespace) -> list[str]:
    """Options given away from their defaults that the method does not read (said, not refused: a script may pass
    one recipe to every method)."""
    unused = []
    if args.method not in BUDGET_METHODS and args.budget != MaskConfig.budget:
        unused.append(f"--budget is not read by {args.method}, which trains what it trains (the row methods and "
                      "layers read it)")
    if args.method in ("full", "head", "bitfit", "lora", "prefix", "random") and args.score != SensitivityConfig.score:
        unused.append(f"--score is not read by {args.method}, which chooses no rows by their scores")
    if mining_config(args, args.merge) != MiningConfig() and args.method not in MINING_METHODS:
        unused.append(f"the mining options are not read by {args.method}, which mines no groups")
    return unused


def _epochs_text(metrics: dict[str, Any], cfg: FinetuneConfig) -> str:
    """Which epoch the saved weights are, and why training stopped early, when --keep-best or --early-stop chose."""
    if "best_epoch" not in metrics:
        return ""
    said = []
    if metrics.get("stopped_after"):
        said.append(f"stopped after epoch {metrics['stopped_after']} of {cfg.epochs}: no better validation accuracy "
                    f"for {cfg.early_stop} epoch(s)")
    if cfg.keep_best:
        said.append(f"saved epoch {metrics['saved_epoch']}'s weights, the best on validation "
                    f"({metrics['best_val_accuracy']:.4f})")
    return "; ".join(said)


def _time_text(metrics: dict[str, Any]) -> str:
    """The run's time, split where it has a preparation (mining and scoring rows) before its epochs: the total
    alone made a sparse run read slower than full finetuning whose epochs cost half again as much."""
    total = f"train {metrics['train_seconds']:.1f} s"
    epochs = metrics.get("epoch_seconds") or []
    if not metrics.get("prep_seconds") or not epochs:
        return total
    return (f"{total} (preparation {metrics['prep_seconds']:.1f} s, then {sum(epochs) / len(epochs):.1f} s "
            f"per epoch)")


def _check_budget_fits(mask: MaskConfig, loaded: Any) -> None:
    """Refuse a budget above the backbone of ``loaded`` before any run folder is made or any work is done."""
    from clm_explore.masks import budget_to_params
    from clm_explore.sensitivity import backbone_parameter_count

    try:
        budget_to_params(mask.budget, backbone_parameter_count(loaded.model))
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _budget_error(exc: BaseException) -> None:
    """The budget check lives in masks.budget_to_params; turn its ValueError into a user error."""
    if isinstance(exc, ValueError) and "budget" in str(exc):
        raise UserError(str(exc)) from exc


def _step_printer():
    """Training's steps on stderr: one line rewritten in a terminal; in a log, a line every tenth of the steps (the
    rewritten line ran every report together into one)."""
    live = sys.stderr.isatty()

    def show(info) -> None:
        if info.eval:
            print(f"{chr(10) if live else ''}epoch {info.epoch}: validation accuracy {info.eval['accuracy']:.4f}",
                  file=sys.stderr)
            return
        every = 10 if live else max(info.total_steps // 10, 1)
        if info.step % every == 0 or info.step == info.total_steps:
            line = (f"step {info.step}/{info.total_steps} loss {info.loss:.4f} {info.examples_per_second:.0f} ex/s "
                    f"eta {info.eta:.0f} s")
            print(f"\r{line}" if live else line, end="" if live else "\n", file=sys.stderr, flush=True)
    return show


# ------------------------------------------------------------------------------------------- predict


def _register_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="predict labels with a finetuned run",
                       description="Print each text's label, its probability and the text, tab-separated (--json: "
                       "the top labels per text).")
    p.add_argument("--run", required=True, metavar="DIR", help="a run folder (or a run id of the registry)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to classify (repeatable)")
    src.add_argument("--file", help="a data file; its text column is classified (a .txt file or '-', standard "
                     "input: one text per line)")
    p.add_argument("--text-col", default=None, help="text column of --file (detected when omitted)")
    p.add_argument("--encoding", default=None, metavar="NAME", help="the encoding of --file where it is not UTF-8 (gb18030, cp932, cp1251, ...; default: guessed, and named in a "
                   "note)")
    p.add_argument("--top", type=int, default=3, help="labels listed per text in --json (plain output: the first)")
    add_run_length_arg(p)
    p.add_argument("--abstain-below", default=None, metavar="P|run|none",
                   help="answer (out of scope) when the top probability is below P; 'run' = the threshold the run "
                   "chose on its validation rows (metrics.json's out_of_scope, when its test had unseen labels), "
                   "which applies by default where there is one, as the app labels a file; 'none' = the model's "
                   "label for every text. --json keeps the model's label and adds out_of_scope: true")
    p.add_argument("--json", action="store_true",
                   help="print JSON (a list: text, label, probability, top) instead of lines of label, probability "
                   "and text separated by tabs (a text's tabs, line breaks and backslashes written \\t, \\n, \\\\)")
    p.add_argument("--out", default=None, metavar="FILE.csv",
                   help="write a CSV file instead (UTF-8): a row per text in order with row, text, label, "
                   "probability, runner_up, runner_up_probability and, with a threshold, out_of_scope; it "
                   "replaces an earlier predict CSV, never another file")
    p.set_defaults(func=run_predict)


def resolve_run_dir(run: str) -> Path:
    """A run folder path, or a run id looked up in the registry (not created here when there is none)."""
    path = Path(run).expanduser()
    if (path / "config.json").is_file():
        return refuse_untrained_head(path, "--run")
    from clm_explore.runs import REGISTRY_NAME, RunStore, default_root

    if (default_root() / REGISTRY_NAME).is_file():
        store = RunStore()  # a registry that cannot be read says so (RunStoreError), not "not a known run id"
        if store.known([run]):
            return store.path(run)
    raise UserError(f"{run!r} is neither a run folder (with config.json) nor a known run id.")


def run_predict(args: argparse.Namespace) -> int:
    from clm_explore.batches import predict, prediction_table
    from clm_explore.cli.data_cmds import csv_out_path

    if args.top < 1:
        raise UserError(f"--top {args.top} must be at least 1.")
    from clm_explore.cli.explain_cmds import checked_run

    run_dir = checked_run(args.run, "--run")  # an unfinished run is said so, as explain says it
    length = checked_max_length(args.max_length, run_dir)
    threshold = _prediction_threshold(args.abstain_below, run_dir)
    if args.out and args.json:
        raise UserError("--out writes a CSV file and --json prints JSON: choose one.")
    out = csv_out_path(args.out, PREDICTION_HEADER, "an earlier predict CSV") if args.out else None
    texts = checked_texts(args.text) if args.text else texts_from_file(args.file, args.text_col, args.encoding)
    frame = predict(run_dir, texts, length)  # at the run's trained length unless --max-length
    _note_unreadable_texts(run_dir, texts)
    if out is not None:
        table = prediction_table(frame, threshold)
        if args.abstain_below is None and threshold is not None:
            _say_run_threshold(int(table["out_of_scope"].sum()), threshold, "out_of_scope True in the file")
        return _write_predictions(table, out)
    probs, labels = frame.to_numpy(), list(frame.columns)
    results = []
    for text, p in zip(texts, probs, strict=True):
        top = p.argsort()[::-1][: args.top]
        results.append({"text": text, "label": labels[top[0]], "probability": float(p[top[0]]),
                        "top": [{"label": labels[i], "probability": float(p[i])} for i in top]})
        if threshold is not None:
            results[-1]["out_of_scope"] = bool(p[top[0]] < threshold)
    if args.abstain_below is None and threshold is not None:
        _say_run_threshold(sum(r.get("out_of_scope", False) for r in results), threshold,
                           "out_of_scope: true" if args.json else OUT_OF_SCOPE)
    if args.json:
        print_json(results)
    else:
        for r in results:
            label = OUT_OF_SCOPE if r.get("out_of_scope") else r["label"]
            print(f"{one_line(label)}\t{r['probability']:.3f}\t{one_line(r['text'])}")
    return 0


def _say_run_threshold(turned_away: int, threshold: float, shown: str) -> None:
    """A note on the texts ``predict`` abstains on by the run's own threshold, which no option asked for."""
    if turned_away:
        print(f"note: {turned_away} text(s) scored below the out-of-scope threshold this run chose on its validation "
              f"rows ({threshold:.3f}): {shown}, as the app labels them (--abstain-below none: the model's label).",
              file=sys.stderr)


PREDICTION_HEADER = "row,text,label,probability"
"""How a CSV of ``predict --out`` begins (``batches.prediction_table``): the one file --out may replace."""


def _write_predictions(table: Any, out: Path) -> int:
    from clm_explore.data import write_csv

    write_csv(table, out)
    counts = table["label"].value_counts()
    shown = ", ".join(f"{one_line(str(label))} {n:,}" for label, n in counts.head(5).items())
    more = f" and {len(counts) - 5} more label(s)" if len(counts) > 5 else ""
    print(f"{len(table):,} text(s) labelled into {out}: {shown}{more}")
    return 0


def _note_unreadable_texts(run_dir: Path, texts: list[str]) -> None:
    """Name the texts that are mostly the model's unknown token: each gets the same prediction whatever it says (the
    language review: every emoji-only or Thai text got one label at 0.407)."""
    from clm_explore.modeling import load_tokenizer
    from clm_explore.vocabulary import MULTILINGUAL_HINT, mostly_unknown_texts

    unreadable = mostly_unknown_texts(load_tokenizer(str(run_dir)), texts)
    if unreadable:
        shown = ", ".join(str(i + 1) for i in unreadable[:10]) + (" and more" if len(unreadable) > 10 else "")
        print(f"note: {len(unreadable)} text(s) (number {shown}, counted from 1) are mostly unknown sub-tokens to this "
              f"model's vocabulary: their predictions say little. {MULTILINGUAL_HINT}", file=sys.stderr)


def one_line(text: str) -> str:
    """A text as one tab-separated field: its backslashes, tabs and line breaks written as escapes (\\, \\t, \\n,
    \\r), and the other characters Python's ``splitlines`` breaks at as \\x0c, \\u2028 and the like, so that a
    script reads a line per text and three fields a line."""
    return text.replace("\\", "\\\\").translate(LINE_BREAK_ESCAPES)


OUT_OF_SCOPE = "(out of scope)"
"""What ``predict`` prints in place of a label it abstains on."""


def _prediction_threshold(value: str | None, run_dir: Path) -> float | None:
    """``predict``'s threshold: the run's own where it chose one unless ``--abstain-below`` says otherwise ('none':
    no abstaining), as the app's Runs page and ``label_file`` label a file (the faces review: the same run answered
    the same file with and without "out of scope" by face)."""
    from clm_explore.batches import chosen_threshold

    if value is None:
        return chosen_threshold(run_dir)
    return None if value == "none" else abstention_threshold(value, run_dir, "'run' or 'none'")


def abstention_threshold(value: str | None, run_dir: Path, words: str = "'run'") -> float | None:
    """``--abstain-below``: a probability in (0, 1), 'run' (the run's validation threshold) or None."""
    if value is None:
        return None
    if value == "run":
        from clm_explore.runs import read_json_object

        metrics = read_json_object(run_dir / "metrics.json")
        if not metrics:
            raise UserError(f"{run_dir} has no readable metrics.json for --abstain-below run.")
        scope = metrics.get("out_of_scope") or {}
        if not isinstance(scope, dict) or scope.get("threshold") is None:
            # the review of the new features: a run without validation rows was said to have no unseen label
            why = ("it had no validation rows to choose one on" if isinstance(scope, dict) and scope.get("rows")
                   else "its test split had no label unseen in train")
            raise UserError(f"{run_dir} chose no out-of-scope threshold ({why}); give --abstain-below a probability "
                            "instead.")
        return float(scope["threshold"])
    try:
        threshold = float(value)
    except ValueError:
        threshold = -1.0
    if not 0 < threshold < 1:
        raise UserError(f"--abstain-below takes a probability in (0, 1) or {words}; got {value!r}.")
    return threshold


def texts_from_file(path: str, text_col: str | None, encoding: str | None = None) -> list[str]:
    """Texts of any data file ``load_data`` reads (labels not needed), or of a .txt file, one per line; ``encoding``:
    the file's where it is not UTF-8 (else guessed)."""
    from clm_explore.config import DataConfig
    from clm_explore.data import read_text_stream, read_texts

    notes: list[str] = []
    if path == "-":  # a pipe: one text per line, as a .txt file
        if sys.stdin is None:  # started with standard input closed (<&-)
            raise UserError("--file -: standard input is closed; pipe the texts in, one per line.")
        if text_col:
            notes.append("--text-col is not read with --file -: standard input is one text per line")
        if sys.stdin.isatty():
            print("reading texts from standard input, one per line; end with Ctrl-D", file=sys.stderr)
        texts = read_text_stream(sys.stdin.buffer, cfg=DataConfig(encoding=encoding), notes=notes)
    else:
        texts = read_texts(path, text_col, cfg=DataConfig(encoding=encoding), notes=notes)
    for note in notes:  # as the training commands print the loader's notes
        print(f"note: {note}", file=sys.stderr)
    return texts
