"""Finetune a classifier with any method and write a run folder (method.md sections 4 and 6).

``finetune`` is synchronous: it loads the model, lets the method's *preparer* decide what trains
(``PREPARERS``: sparse row deltas, full, and the baselines registered by ``clm_explore.baselines``),
runs one shared training loop, merges, evaluates and writes the run folder described in
docs/CONTRACTS.md. Progress goes out through ``on_step``, and before the first step through ``on_phase`` (phase,
done, total: loading the model, the head warm-up, mining, scoring rows per batch); ``should_stop`` is polled every
step and through the preparation, between its phases and at every scoring batch, so a cancel need not wait for
training.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file, save_model
from torch import nn
from transformers import PreTrainedModel, get_scheduler

from clm_explore.averaging import BestWeights, TailAverage
from clm_explore.batches import (
    batch_order,
    collate,
    cut_side,
    cut_texts_note,
    encode,
    longer_read_advice,
    predict_proba,
)
from clm_explore.config import (
    MINING_METHODS,
    ConfigError,
    FinetuneConfig,
    MaskConfig,
    MiningConfig,
    SensitivityConfig,
    from_dict,
    to_dict,
)
from clm_explore.data import (
    AnnotatedData,
    DataError,
    data_digest,
    is_draw_note,
    load_data,
    split_digest,
    write_csv,
)
from clm_explore.masks import (
    MaskSelection,
    budget_to_params,
    effective_min_layer,
    no_row_message,
    select_mask,
)
from clm_explore.metrics import PeakMemory, classification_metrics, out_of_scope_metrics
from clm_explore.mining import TaskTokens, adaptive_tokenization, mine_task_tokens, unused_slots
from clm_explore.modeling import (
    DEFAULT_SOURCE,
    TINY_SOURCE,
    LoadedModel,
    autocast_dtype,
    count_parameters,
    head_parameter_names,
    load_model,
    recorded_source,
    resolve_device,
    small_parameters,
    transformers_quieted,
    usable_positions,
)
from clm_explore.prefix_cache import PrefixCache, build_prefix_cache
from clm_explore.progress_bar import ProgressBar, combined
from clm_explore.provenance import provenance
from clm_explore.runs import (
    PROGRESS_LOG,
    RANK_COPIES,
    TRAINED_LENGTH_KEY,
    RunDirClaim,
    RunFolderError,
    RunStatus,
    check_run_dir,
    claimed_run_dir,
    holds_files,
    read_json_object,
    run_folder_lock,
    share_tensor_files,
    write_json_atomic,
    write_text_atomic,
)
from clm_explore.sensitivity import (
    SensitivityReport,
    backbone_parameter_count,
    calibration_rows,
    compute_sensitivity,
    make_batches,
    scorable_linears,
    warm_up_head,
)
from clm_explore.sparse import attach_deltas, delta_state, merge_deltas
from clm_explore.vocabulary import unreadable_note

if TYPE_CHECKING:
    from accelerate import Accelerator

ROW_DELTA_LR = 5e-3
"""Row-delta methods' default: best of 3.3e-4..1e-2 for sparse on banking77 validation (BENCHMARKS.md)."""
DEFAULT_LR = {"sparse": ROW_DELTA_LR, "sparse_merged": ROW_DELTA_LR, "random": ROW_DELTA_LR, "fisher": ROW_DELTA_LR,
              "gradient": ROW_DELTA_LR, "full": 2e-4, "layers": 2e-4, "head": 1e-2, "bitfit": 1e-3, "lora": 5e-4,
              "prefix": 1e-2}
SCHEDULER_NAMES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
"""FinetuneConfig.schedule -> the name ``transformers.get_scheduler`` knows (all warm up linearly first)."""
COMPILE_BACKEND = "inductor"
"""torch.compile's backend (the tests use 'aot_eager': the same tracing and autograd graphs, no code generation)."""
GRAPHS_PAD_MULTIPLE = 8
"""With CUDA graphs (``CUDA_GRAPH_MODES`` on a GPU), batches are padded to a multiple of this many tokens: each
new shape costs a graph recording, and at max_length 64 there are then 8 widths, not up to 64. On banking77 the
batches then hold 21% more tokens than padded to their longest row (16: 33%; 4: 9%, with 12 widths). Without
CUDA graphs every width is taken: after the second shape the compiler makes one graph for all."""
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
"""Compile modes that record CUDA graphs on a GPU (``torch._inductor.list_mode_options``: triton.cudagraphs)."""


@dataclass
class StepInfo:
    """One training step's progress, as ``finetune(on_step=...)`` hears it: the step and epoch, the loss, the speed
    and the time spent and left (seconds); ``eval`` holds the validation metrics on the step that ends an epoch."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    examples_per_second: float
    elapsed: float
    eta: float
    eval: dict | None = None
    lr: float = 0.0
    """The learning rate of the step just taken (the first parameter group: deltas, or the whole model)."""


@dataclass
class FinetuneResult:
    """What ``finetune`` returns: the run's status, its metrics (metrics.json) and its folder. Every function that
    takes a run takes it (``predict(result, texts)``); ``history()`` is the per-step curve (each epoch's end with its validation accuracy)."""

    status: str
    """'succeeded' or 'cancelled'."""
    metrics: dict
    out_dir: Path

    def __repr__(self) -> str:  # metrics.json holds a confusion matrix and curves: the headline figures only
        shown = ", ".join(f"{k} {self.metrics[k]:.4f}" for k in ("accuracy", "macro_f1") if k in self.metrics)
        # a collapse reads "succeeded" but predicted one label for every row (the notebook review): said, and where
        collapsed = ", collapsed to one label: .metrics['collapse_note']" if self.metrics.get("collapse_note") else ""
        return (f"FinetuneResult({self.status}{', ' + shown if shown else ''}{collapsed}, "
                f"out_dir={str(self.out_dir)!r})")

    def history(self) -> pd.DataFrame:
        """The run's progress.jsonl as a table: a row per training step (step, epoch, loss, lr, ...), and at each
        epoch's end that step again with ``eval_accuracy`` and ``eval_split`` set. Empty when no step was taken."""
        return read_history(self.out_dir)


def read_history(out_dir: str | Path) -> pd.DataFrame:
    """A run folder's progress.jsonl as ``FinetuneResult.history`` gives it (a line cut off by a stopped run is
    left out)."""
    rows = []
    path = Path(out_dir) / PROGRESS_LOG
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        evaluation = row.pop("eval", None) or {}
        rows.append({**row, "eval_accuracy": evaluation.get("accuracy"), "eval_split": evaluation.get("split")})
    columns = [f.name for f in fields(StepInfo) if f.name != "eval"] + ["eval_accuracy", "eval_split"]
    return pd.DataFrame(rows, columns=columns)


PhaseCallback = Callable[[str, int, int], None]
"""(phase, done, total): a preparation phase's progress ("scoring rows", 12, 128) before training's steps."""


def _quiet(phase: str, done: int, total: int) -> None:
    """A phase report nobody listens to."""


class _Stopped(Exception):
    """``should_stop`` answered True while the run was being prepared."""


FINISHING_PHASE = "evaluating on test and saving"
"""The phase reported after training's last step (``on_phase``), until the run is saved."""


def phase_reporter(on_phase: PhaseCallback | None, should_stop: Callable[[], bool] | None) -> PhaseCallback:
    """Reports a preparation phase and hears a cancel there: loading, mining and scoring a real model take
    minutes, and a cancel must not wait for training's first step. Raises ``_Stopped`` (``finetune`` ends the
    run cancelled)."""
    def report(phase: str, done: int, total: int) -> None:
        if on_phase is not None:
            on_phase(phase, done, total)
        if should_stop is not None and should_stop():
            raise _Stopped
    return report


@dataclass
class MethodContext:
    """What a preparer may use to decide which parameters train."""

    loaded: LoadedModel
    data: AnnotatedData
    cfg: FinetuneConfig
    device: torch.device
    out_dir: Path
    processes: int = 1
    prefix: PrefixCache | None = None
    """The frozen layers' outputs, when built for scoring (``frozen_prefix``); training reuses them."""
    report: PhaseCallback = _quiet
    """Where a preparer reports its phases (``phase_reporter``: may raise to cancel)."""
    given: GivenScores | None = None
    """Scores made before the run (``finetune(scores=...)``): used instead of scoring rows again."""

    def from_main(self, value: Any) -> Any:
        """``value`` as rank 0 made it, on every rank (with several processes; else ``value``). Each rank scores on
        its own, and on a GPU its sums may differ by a rounding, enough to move one row across the budget's cut:
        DDP then fails (parameters of other shapes) or trains rows that another rank's masks do not name."""
        if self.processes <= 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]


@dataclass
class Prepared:
    """A method's answer: what to optimise, and how to get a plain model back after training."""

    model: nn.Module
    param_groups: list[dict]
    finalize: Callable[[], PreTrainedModel]
    """Returns the standard transformers model to save (deltas merged, adapters folded in)."""
    files: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """Extra safetensors files for the run folder, written after training (e.g. masks, delta)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Facts for metrics.json (lowest_layer, prep_seconds, budget ...)."""
    after_training: Callable[[], dict[str, dict[str, torch.Tensor]]] | None = None
    """Called once training ends, before finalize: more files whose content exists only then."""
    keep_unmerged: Callable[[Path], None] | None = None
    """Called with the run folder once training ends, before finalize folds them in, on the main process: writes the
    trained parts a peft user loads on their own (a LoRA run's adapter)."""


Preparer = Callable[[MethodContext], Prepared]
PREPARERS: dict[str, Preparer] = {}


def register_method(name: str) -> Callable[[Preparer], Preparer]:
    def add(fn: Preparer) -> Preparer:
        PREPARERS[name] = fn
        return fn
    return add


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    names = set(head_parameter_names(model))
    params = [p for n, p in model.named_parameters() if n in names]
    for p in params:
        p.requires_grad_(True)
    return params


@register_method("full")
def prepare_full(ctx: MethodContext) -> Prepared:
    model = ctx.loaded.model
    for p in model.parameters():
        p.requires_grad_(True)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": ctx.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return Prepared(model, groups, lambda: model)


def mine_and_score(ctx: MethodContext, restriction: str, merge_tokens: int | None = None,
                   all_layers: bool = False, score: str | None = None) -> tuple[TaskTokens, SensitivityReport, float]:
    """Mine groups on train, merge the top words when asked (``merge_tokens``, default the config's), then
    row sensitivity (of the layers the mask may pick from, or of every layer with ``all_layers``; the
    config's score unless ``score`` names one); all saved into the run folder. Returns seconds too."""
    if ctx.given is not None:
        return _given(ctx)
    started = time.perf_counter()
    train = ctx.data.train
    sens_cfg = replace(ctx.cfg.sensitivity if all_layers else scoring_config(ctx), restriction=restriction,
                       score=score or ctx.cfg.sensitivity.score)
    ctx.report("mining task tokens", 0, 1)
    task_tokens = mine_task_tokens(train["text"].tolist(), train["label"].tolist(), ctx.loaded.tokenizer, ctx.cfg.mining)
    merge_tokens = ctx.cfg.mining.merge_tokens if merge_tokens is None else merge_tokens
    if merge_tokens:
        ctx.report("merging task tokens", 0, 1)
        merge = adaptive_tokenization(ctx.loaded, task_tokens, train["text"].tolist(), merge_tokens)
        write_json_atomic(ctx.out_dir / "merge.json", merge.to_dict())
    prefix = frozen_prefix(ctx, sens_cfg.min_layer, sens_cfg.max_length)
    # The warm-up runs first inside the scoring call (one forward pass for its features, then epochs over them).
    ctx.report("head warm-up" if sens_cfg.prepares_head else "scoring rows", 0, 1)
    report = compute_sensitivity(ctx.loaded, ctx.data, task_tokens, sens_cfg, device=str(ctx.device),
                                 on_progress=lambda done, total: ctx.report("scoring rows", done, total), prefix=prefix)
    task_tokens.save(ctx.out_dir / "task_tokens.json")
    report.save(ctx.out_dir / "sensitivity")
    return task_tokens, report, time.perf_counter() - started


SCORES_METHODS = {"sparse": "tokens", "fisher": "none", "random": None}
"""Methods that can train from scores made before the run (``finetune(scores=...)``, ``--scores``), with the
restriction those scores must have been made with (None: any; random rows read only which rows may be taken)."""


@dataclass
class GivenScores:
    """Scores made before the run, with the groups they were restricted to when they came with them, and the
    settings they were made with (what the run records as its own)."""

    report: SensitivityReport
    task_tokens: TaskTokens | None
    origin: str
    """Their folder (resolved), or 'given' (a report passed in memory); recorded in metrics.json as
    ``scores_from``."""
    sensitivity: SensitivityConfig
    mining: MiningConfig | None
    """The groups' mining settings; None where the report does not say (made without groups, or saved before)."""


def given_scores(scores: SensitivityReport | GivenScores | str | Path | None, cfg: FinetuneConfig) -> GivenScores | None:
    """``finetune``'s ``scores``, loaded (a folder of ``sensitivity --out`` or ``report.save``) and checked against
    the run's method and options, before any model loads; None when none were given.

    Raises:
        ConfigError: a method that does not train scored rows, merged tokens, an unreadable or incomplete folder,
            scores of another kind.
    """
    if scores is None:
        return None
    if cfg.method not in SCORES_METHODS:
        raise ConfigError(f"Row scores made beforehand (--scores) serve the methods that train scored rows "
                          f"({', '.join(SCORES_METHODS)}); {cfg.method!r} makes its own choice or trains no rows")
    if isinstance(scores, GivenScores):
        scores, tokens, origin = scores.report, scores.task_tokens, scores.origin
    elif isinstance(scores, SensitivityReport):
        tokens, origin = None, "given"
    elif isinstance(scores, str | Path):
        folder = Path(scores).expanduser().resolve()
        scores, tokens, origin = SensitivityReport.load(folder), _saved_tokens(folder), str(folder)
    else:
        raise TypeError(f"scores is a SensitivityReport (compute_sensitivity) or the folder it was saved to; got "
                        f"{type(scores).__name__}")
    made = scores.config
    wanted = SCORES_METHODS[cfg.method]
    if wanted is not None and made.get("restriction") != wanted:
        raise ConfigError(f"the scores ({origin}) were made with restriction {made.get('restriction')!r}; "
                          f"{cfg.method!r} trains rows scored with {wanted!r} (sensitivity --restriction {wanted})")
    if cfg.method == "fisher" and made.get("score") != "fisher":
        raise ConfigError(f"the scores ({origin}) are {made.get('score')!r} scores; 'fisher' trains Fisher rows "
                          "(sensitivity --score fisher)")
    if cfg.mining.merge_tokens or (scores.mining or {}).get("merge_tokens"):
        raise ConfigError(f"merge_tokens merges words into the tokenizer before the rows are scored; scores made "
                          f"beforehand ({origin}) cannot serve a run that merges, nor come from one")
    try:  # config.max_length, not a command's --max-length: the file says it, not an option
        sensitivity = from_dict(SensitivityConfig, made)
        mining = from_dict(MiningConfig, scores.mining) if scores.mining else None  # {}: a file without its settings
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"the scores ({origin}) hold settings that are not valid: config.{exc}") from exc
    if sensitivity.prepares_head and not scores.head_state:
        raise ConfigError(f"the scores ({origin}) were made from a warmed-up head that is missing (head.safetensors)")
    return GivenScores(scores, tokens, origin, replace(sensitivity, seed=sensitivity.rng_seed), mining)


def recorded_config(cfg: FinetuneConfig, given: GivenScores | None = None) -> FinetuneConfig:
    """``cfg`` as a run trains with it and records it (clm_run.json's config): the mask's draws seeded with the run's
    seed unless it names one, and ``scoring_settled``. A bench compares a finished cell's record with this."""
    if cfg.mask.seed is None:  # random and drawn rows follow the run's seed unless the mask has its own
        cfg = replace(cfg, mask=replace(cfg.mask, seed=cfg.seed))
    return scoring_settled(cfg, given)


def scoring_settled(cfg: FinetuneConfig, given: GivenScores | None) -> FinetuneConfig:
    """``cfg`` with the sensitivity (and mining) settings the run scores with and records: the given scores' own,
    or the config's reading what training reads, seeded with the run's seed unless it names one."""
    if given is not None:  # options that made nothing must not read as the run's
        return replace(cfg, sensitivity=given.sensitivity, mining=given.mining or cfg.mining)
    seed = cfg.seed if cfg.sensitivity.seed is None else cfg.sensitivity.seed
    return replace(cfg, sensitivity=replace(cfg.sensitivity, max_length=cfg.max_length,
                                            truncation_side=cfg.truncation_side, seed=seed))


SCORED_AS = {"sparse": {"restriction": "tokens"}, "random": {"restriction": "tokens"},
             "fisher": {"restriction": "none", "score": "fisher"}}
"""How each of ``SCORES_METHODS`` scores rows when it scores them itself (over ``cfg.sensitivity``)."""


def scores_alike(report: SensitivityReport, cfg: FinetuneConfig) -> bool:
    """Whether ``finetune`` with ``cfg`` would make ``report``'s scores itself: a method that trains scored rows,
    the same settings (its restriction and score, read at its length, with its scoring seed), groups mined with the
    run's mining settings and none merged, a head loaded with the run's seed (a report made outside a run loads it
    with its scoring seed, as the app's pages do), the same layers scored above the mask's floor, and no frozen
    layers cached (scores read through the cache differ by a rounding even in float32, by 38% in bfloat16: a row at
    the budget's cut could change). The app gives such a report to the run
    (``scores=``): the rows a page showed are the rows a sparse run trains, and they are not scored twice."""
    if cfg.method not in SCORED_AS or not report.mining or cfg.mining.merge_tokens or cfg.cache_frozen_layers:
        return False
    settled = _as_json(to_dict(replace(scoring_settled(cfg, None).sensitivity, **SCORED_AS[cfg.method])))
    made = {"truncation_side": "right", **_as_json(report.config)}  # a report saved before the side was, read starts
    floor = mask_floor(cfg.mask, report.n_layers)
    if (made.get("seed") or 0) != cfg.seed or _as_json(report.mining) != _as_json(to_dict(cfg.mining)):
        return False
    if max(made.get("min_layer", 0), floor) != max(settled["min_layer"], floor):  # the rows that may be chosen
        return False
    return all(made.get(key) == value for key, value in settled.items() if key != "min_layer")


def _as_json(settings: dict) -> dict:
    """Settings as JSON holds them (a saved report's tuples are lists), so that saved and in-memory ones compare."""
    return json.loads(json.dumps(settings))


def mask_floor(mask: MaskConfig, n_layers: int) -> int:
    """The lowest layer a mask may take rows from (a pooler-only mask: the top block), which a row method's own
    scoring starts at unless its sensitivity settings start higher."""
    return min(effective_min_layer(mask, n_layers), n_layers - 1)


def check_scores_fit(given: GivenScores, loaded: LoadedModel, labels: list[str], mask: MaskConfig) -> None:
    """Refuse, before any run folder is claimed, scores made on another model or for other labels, and a budget
    they cannot fill. (Scores that start above the mask's floor serve, as a run's own scoring from a higher
    ``sensitivity.min_layer`` does: the rows below are not candidates, and the run's metrics say so.)

    Raises:
        ConfigError: naming the scores.
    """
    try:
        given.report.check_fits(loaded, labels)
    except ConfigError as exc:
        raise ConfigError(f"the scores ({given.origin}) cannot choose this run's rows: {exc}") from exc
    select_mask(given.report, mask)  # a budget below their cheapest row: said now, not after the folder is claimed


def check_scores_outside(given: GivenScores, out_dir: Path) -> None:
    """Refuse scores that lie inside the run folder: claiming it (with overwrite) would delete them first."""
    if given.origin == "given":
        return
    folder, out = Path(given.origin), Path(out_dir).expanduser().resolve()
    if folder == out or out in folder.parents:
        raise ConfigError(f"the scores ({folder}) lie inside the run folder {out}, which this run writes: copy them "
                          "elsewhere first")


def _saved_tokens(folder: Path) -> TaskTokens | None:
    """The groups saved beside the scores (``sensitivity --out`` writes them), or None."""
    path = folder / "task_tokens.json"
    if not path.exists():
        return None
    try:
        return TaskTokens.load(path)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{path} cannot be read as mined groups ({exc!r}); remove it, or score again with "
                          "sensitivity --out") from exc


def _given(ctx: MethodContext) -> tuple[TaskTokens, SensitivityReport, float]:
    """``mine_and_score`` with scores made beforehand: their groups (mined here with their settings when they came
    without them), both saved into the run folder as a scored run's are. Returns seconds too."""
    started = time.perf_counter()
    task_tokens = ctx.given.task_tokens
    if task_tokens is None:  # for the run folder (the case study reads them); the scores are not redone
        ctx.report("mining task tokens", 0, 1)
        train = ctx.data.train
        task_tokens = mine_task_tokens(train["text"].tolist(), train["label"].tolist(), ctx.loaded.tokenizer,
                                       ctx.cfg.mining)
    task_tokens.save(ctx.out_dir / "task_tokens.json")
    ctx.given.report.save(ctx.out_dir / "sensitivity")
    return task_tokens, ctx.given.report, time.perf_counter() - started


def frozen_prefix(ctx: MethodContext, min_layer: int, max_length: int) -> PrefixCache | None:
    """With ``cache_frozen_layers``, the training rows' hidden states at layer ``min_layer``, computed once
    (in ``ctx.prefix``) for the head warm-up, the scoring and training alike: a method that scores only
    from there up selects nothing below, so those layers never change. None where it does not apply
    (nothing frozen, several processes, other token ids than training's) or cannot be built (training
    then tries again and records why)."""
    cfg = ctx.cfg
    if not cfg.cache_frozen_layers or ctx.processes > 1 or min_layer < 1 or max_length != cfg.max_length:
        return None
    if ctx.prefix is None or ctx.prefix.start != min_layer:
        ctx.report("caching the frozen layers", 0, 1)
        ids = encode(ctx.loaded, ctx.data.train["text"].tolist(), cfg.max_length)
        ctx.prefix, _ = build_prefix_cache(ctx.loaded.model, ids, ctx.loaded.tokenizer.pad_token_id, min_layer,
                                           ctx.device, cfg.cache_max_mb, require_frozen=False,
                                           dtype=getattr(torch, cfg.cache_dtype))
    return ctx.prefix


ROW_METHODS = ("sparse", "sparse_merged", "random", "fisher", "gradient")
"""Methods that train rows chosen under the budget (``check_runnable`` checks their mask can hold one)."""


def check_splits(data: AnnotatedData, cfg: FinetuneConfig) -> None:
    """Refuse data without the splits a run of ``cfg`` needs: test rows to score it on, validation rows when it keeps
    its best epoch or stops early (``finetune`` calls it; the app before it queues a job, which would fail).

    Raises:
        DataError: naming the split and how to give it."""
    if (cfg.keep_best or cfg.early_stop) and data.validation.empty:
        raise DataError(f"{data.source or 'The data'} has no validation rows, which keep_best and early_stop choose "
                        "on. Give it a validation split, or leave both off.")
    if data.test.empty:  # found after training, the metrics' failure said nothing of the data
        raise DataError(f"{data.source or 'The data'} has no test rows to score the run on{_carve_said(data)}. Give it "
                        "a test split (a test file, or a split column) with rows of its labels.")


def check_runnable(cfg: FinetuneConfig, loaded: LoadedModel) -> None:
    """Refuse, before any mining, scoring or training, a method this model cannot run: for a row method no linear
    map it can score, a layer floor above the model, a budget above the backbone or below the cheapest row it may
    pick; for whole layers no linear map to rank them by or a budget above the backbone; merged tokens without an
    unused vocabulary slot (it would train as sparse); BitFit on a model without biases (it would be a linear
    probe under BitFit's name); prefix tuning on a model that takes no past key values (MPNet, DistilBERT, DeBERTa).

    Raises:
        ModelSourceError, ConfigError: with what to change (``finetune`` calls it; the CLI and the app call it
            before a run folder or a queued job exists).
    """
    model = loaded.model
    positions = usable_positions(getattr(model, "config", None))
    prefix = cfg.prefix_tokens if cfg.method == "prefix" else 0  # its virtual tokens take positions before the text's
    if isinstance(positions, int) and cfg.max_length > positions - prefix:  # an index error deep in the first batch
        taken = f" less the {prefix} prefix tokens" if prefix else ""
        raise ConfigError(f"max_length {cfg.max_length} is above the {positions} positions a text may take in "
                          f"{type(model).__name__}{taken}: read at most {positions - prefix} sub-tokens per text.")
    if cfg.method == "bitfit" and not any(n.endswith(".bias") for n, _ in backbone_named_parameters(model)):
        raise ConfigError(f"{type(model).__name__} has no bias terms outside its head, so BitFit would train the head "
                          "alone: use --method head for that.")
    if cfg.method == "prefix":
        from clm_explore.baselines import takes_a_prefix

        if not takes_a_prefix(model):
            raise ConfigError(f"{type(model).__name__} takes no past key values, through which prefix tuning (peft) "
                              "feeds its prefixes: use --method lora for an adapter baseline.")
    merging = cfg.method == "sparse_merged" or (cfg.mining.merge_tokens and cfg.method in MINING_METHODS)
    if merging and loaded.tokenizer is not None and not unused_slots(loaded.tokenizer.get_vocab()):
        # --merge N on such a model trained exactly as without it, said only in merge.json (the models review)
        what = "sparse_merged" if cfg.method == "sparse_merged" else f"merge_tokens {cfg.mining.merge_tokens} (--merge)"
        instead = "Use --method sparse." if cfg.method == "sparse_merged" else "Leave merging out (--merge 0)."
        raise ConfigError(f"{what} merges mined words into the tokenizer's unused slots ([unused0] ... in BERT "
                          f"vocabularies), and {type(loaded.tokenizer).__name__} of this model has none: nothing "
                          f"would be merged. {instead}")
    if cfg.method == "layers":
        scorable_linears(model)  # whole layers are ranked by their rows' scores
        try:
            budget_to_params(cfg.mask.budget, backbone_parameter_count(model))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if cfg.method not in ROW_METHODS:
        return
    linears = scorable_linears(model)
    n_layers = model.config.num_hidden_layers
    floor = effective_min_layer(cfg.mask, n_layers)
    has_pooler = any(layer == n_layers for _, layer, _ in linears.values())
    if floor > n_layers or (floor == n_layers and not has_pooler):
        pooler = f", and {n_layers} for its pooler" if has_pooler else ""
        raise ConfigError(f"mask min_layer {cfg.mask.min_layer} is above the model's layers (0-{n_layers - 1}"
                          f"{pooler}).")
    # a row with its bias: a key row costs one less (its bias does not train), but selection buys rows in score order
    # and the first is most often not a key's, so a budget of a key row's cost would pass here and fail after the
    # scoring, a failed run listed (the diff review)
    costs = [lin.in_features + (lin.bias is not None) for lin, layer, _ in linears.values() if layer >= floor]
    if floor == 0 and cfg.mask.include_embeddings:  # 0: the mined words' embedding rows compete too
        costs.append(model.get_input_embeddings().embedding_dim)
    backbone = backbone_parameter_count(model)
    try:
        budget = budget_to_params(cfg.mask.budget, backbone)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if costs and budget < min(costs):
        raise ConfigError(no_row_message(budget, min(costs), backbone, cfg.mask.budget))


def backbone_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of everything but the classification head."""
    head = set(head_parameter_names(model))
    return [(n, p) for n, p in model.named_parameters() if n not in head]


def scoring_config(ctx: MethodContext) -> SensitivityConfig:
    """The sensitivity options, scoring only the layers the mask may pick from (a shorter backward)."""
    n_layers = ctx.loaded.model.config.num_hidden_layers
    floor = mask_floor(ctx.cfg.mask, n_layers)  # a pooler-only mask scores the top block too
    return replace(ctx.cfg.sensitivity, min_layer=max(ctx.cfg.sensitivity.min_layer, floor))


def prepare_rows(ctx: MethodContext, report: SensitivityReport, selection: MaskSelection, prep_seconds: float) -> Prepared:
    """Row deltas for a selection (rank 0's, with several processes), the warmed-up head, LayerNorms at or above
    the lowest selected layer."""
    selection = ctx.from_main(selection)
    model = ctx.loaded.model
    freeze_all(model)
    if report.head_state:
        model.load_state_dict(report.head_state, strict=False)
    # The key maps' rows train no bias entry, whatever an older report's flag says (modeling.is_attention_key)
    wrappers = attach_deltas(model, selection.masks, {n for n, info in report.matrices.items() if info.module == "k"})
    if "bias" in ctx.cfg.mask.small_kinds:  # the maps' whole biases train: a row's bias delta would train it twice
        for wrapper in wrappers.values():
            if getattr(wrapper, "delta_b", None) is not None:
                wrapper.delta_b.requires_grad_(False)
    deltas = [p for w in wrappers.values() for p in w.parameters() if p.requires_grad]
    head = head_parameters(model)
    small = _small_params(model, selection.lowest_layer, ctx.cfg.mask)
    lr = ctx.cfg.lr or DEFAULT_LR[ctx.cfg.method]
    head_lr, norm_lr = ctx.cfg.head_lr or lr, ctx.cfg.norm_lr or lr
    groups = [{"params": deltas, "weight_decay": ctx.cfg.weight_decay},
              {"params": small, "weight_decay": 0.0, "lr": norm_lr},
              {"params": head, "weight_decay": 0.0, "lr": head_lr}]
    masks = {k: v.to(torch.uint8) for k, v in selection.masks.items()}

    def finalize() -> PreTrainedModel:
        merge_deltas(model, wrappers)
        return model

    info = {"lowest_layer": selection.lowest_layer, "prep_seconds": prep_seconds, "budget": ctx.cfg.mask.budget,
            "selected_params": selection.selected_params, "budget_share": selection.share,
            "time_ratio_estimate": selection.time_ratio_estimate}
    if selection.budget_note:
        info["budget_note"] = selection.budget_note
    if report.zero_note and ctx.cfg.method != "random":
        info["score_note"] = report.zero_note
    if report.no_tokens_note and ctx.cfg.method != "random":
        info["no_tokens_note"] = report.no_tokens_note
    if report.thin_restriction_note and ctx.cfg.method != "random":
        info["restriction_note"] = report.thin_restriction_note
    if merge_note := _merged_rows_note(ctx, report, selection):
        info["merge_note"] = merge_note
    if ctx.cfg.mask.train_biases and not any(kind == "bias" for kind, _, _ in small_parameters(model)):
        info["biases_note"] = "the model's linear maps have no biases: train_biases changed nothing"
    trained_whole = {id(p) for p in head + small}

    def patch() -> dict[str, dict[str, torch.Tensor]]:
        """The run as a patch over its base model: the trained rows' deltas, and the head and the norms and biases
        that trained whole (``exports.apply_delta`` rebuilds the model from them)."""
        state = delta_state(wrappers)
        state.update({f"{WHOLE_PREFIX}{name.replace('.base.', '.')}": p.detach().float().cpu()
                      for name, p in model.named_parameters() if id(p) in trained_whole})
        return {"delta": state}

    return Prepared(model, [g for g in groups if g["params"]], finalize, {"masks": masks}, info,
                    after_training=patch)


WHOLE_PREFIX = "whole."
"""delta.safetensors' names of the parameters a row method trained whole (the head, norms, biases)."""


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout's probability: dropout layers (BERT's attention reads its module's p when training) and
    attention dropout held as a number (Llama-style decoders have no dropout layer at all). Returns how many were
    set (0: the model has none, and the option changes nothing)."""
    changed = 0
    for mod in model.modules():
        if isinstance(mod, nn.Dropout):
            mod.p = p
            changed += 1
        elif _is_rate(getattr(mod, "attention_dropout", None)):
            mod.attention_dropout = p
            changed += 1
    return changed


def _is_rate(value: object) -> bool:
    """A number held as a dropout rate: a float, or an int (a config's "attention_dropout": 0 stays one)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _small_params(model: nn.Module, lowest_layer: int | None, mask: MaskConfig) -> list[nn.Parameter]:
    """LayerNorm gains and biases (train_layernorm) and linear biases (train_biases) at or above the lowest
    selected layer, so backward still stops there; the head has its own group."""
    if lowest_layer is None:
        return []
    params = [p for kind, layer, p in small_parameters(model) if kind in mask.small_kinds and layer >= lowest_layer]
    for p in params:
        p.requires_grad_(True)
    return params


@register_method("sparse")
def prepare_sparse(ctx: MethodContext) -> Prepared:
    """Ours: token-restricted Fisher rows under the budget."""
    _, report, seconds = mine_and_score(ctx, "tokens")
    return prepare_rows(ctx, report, select_mask(report, ctx.cfg.mask), seconds)


def _merged_rows_note(ctx: MethodContext, report: SensitivityReport, selection: MaskSelection) -> str:
    """A sentence when words were merged (merge.json) and some of their new embedding rows are not selected: those
    keep the mean of their pieces' rows, never trained (under the default layer floor none of them is: the models
    review found the merged rows exactly at their start); '' otherwise."""
    merged = read_json_object(ctx.out_dir / "merge.json").get("merged")
    ids = [int(m["id"]) for m in merged if isinstance(m, dict) and isinstance(m.get("id"), int)] if merged else []
    if not ids:
        return ""
    # The word embeddings' name as the scores and masks have it (the model's modules are wrapped for training now)
    embeddings = next((name for name, info in report.matrices.items() if info.module == "embeddings"), "")
    rows = selection.masks.get(embeddings)
    left = len(ids) - (int(rows[ids].sum()) if rows is not None else 0)
    if not left:
        return ""
    floor = effective_min_layer(ctx.cfg.mask, ctx.loaded.model.config.num_hidden_layers)
    why = ("; the mask leaves the word embeddings out (include_embeddings, --no-embeddings)"
           if not ctx.cfg.mask.include_embeddings else
           "; the mask's layer floor keeps the word embeddings out (--min-layer 0 lets them compete)" if floor > 0
           else "")
    return (f"{left} of the {len(ids)} merged words' embedding rows were not selected, so they keep the mean of "
            f"their pieces' rows{why}")


DEFAULT_MERGE_TOKENS = 64
"""Words merged by 'sparse_merged' when MiningConfig.merge_tokens is 0."""


@register_method("sparse_merged")
def prepare_sparse_merged(ctx: MethodContext) -> Prepared:
    """The adaptive-token ablation: ours with the top mined words merged into unused vocabulary slots
    (mean-of-pieces embeddings, no parameter added) before scoring and training."""
    merge_tokens = ctx.cfg.mining.merge_tokens or DEFAULT_MERGE_TOKENS
    _, report, seconds = mine_and_score(ctx, "tokens", merge_tokens)
    return prepare_rows(ctx, report, select_mask(report, ctx.cfg.mask), seconds)


HEAD_WARMUP_METHODS = ("full", "head", "bitfit", "lora", "prefix")
"""Methods without a sensitivity pass of their own; they get the same head warm-up here."""
CACHE_METHODS = (*ROW_METHODS, "layers")
"""Methods that train from a lowest layer up, below which ``cache_frozen_layers`` can cache the frozen layers."""


def warm_up_head_only(ctx: MethodContext) -> float:
    """The row methods' head warm-up, for a method that scores no rows. Returns its seconds."""
    started = time.perf_counter()
    sens = ctx.cfg.sensitivity
    texts, labels = calibration_rows(ctx.data, sens)
    batches = make_batches(ctx.loaded, texts, labels, None, sens.batch_size, sens.max_length)
    warm_up_head(ctx.loaded, batches, sens, ctx.device, train_rows=len(ctx.data.train))
    return time.perf_counter() - started


def head_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the classification head's parameters, by name."""
    names = set(head_parameter_names(model))
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in names}


@torch.no_grad()
def restore_head(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the head's parameters in place (an optimizer built on them keeps them)."""
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


def _preparer(method: str) -> Preparer:
    if method not in PREPARERS:
        import clm_explore.baselines  # noqa: F401  (registers the comparison methods)
    if method not in PREPARERS:
        raise ValueError(f"method {method!r} is not available; known: {', '.join(sorted(PREPARERS))}")
    return PREPARERS[method]


# ----------------------------------------------------------------------------------------------- loop


@contextmanager
def global_rng_kept() -> Iterator[None]:
    """torch's CPU and NumPy's global random state as it was, after the block (and a GPU's, where CUDA was in use
    before it): a run seeds them for its own draws (the head's init, dropout), and a notebook's next ``torch.rand``
    must not start from the run's seed."""
    numpy_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


@global_rng_kept()
@transformers_quieted()  # its own loads, saves and peft's reports; a job worker's log stays the tool's
def finetune(
    data: AnnotatedData | str | Path | pd.DataFrame,
    cfg: FinetuneConfig,
    out_dir: str | Path,
    source: str = "default",
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    on_phase: PhaseCallback | None = None,
    progress: bool | None = None,
    scores: SensitivityReport | GivenScores | str | Path | None = None,
) -> FinetuneResult:
    """Finetune ``source`` on ``data`` with ``cfg.method`` and write the run folder ``out_dir``.

    The model is loaded from ``source`` and the groups, scores and mask are made here, from ``cfg`` (mining,
    sensitivity, mask), unless ``scores`` gives the scores: then 'sparse' trains the rows
    ``select_mask(scores, cfg.mask)`` shows (the mask's seed is the run's unless it names one), 'random' draws its
    rows among those the scores let it take, and 'fisher' takes their top rows. The run is not in the app's run list
    until ``RunStore().register_folder(out_dir)``.

    Args:
        data: the splits (``load_data``), or a path or DataFrame that ``load_data`` reads.
        cfg: the method and its settings (``FinetuneConfig``; the mask's in ``cfg.mask``).
        out_dir: the run folder to write: a new or empty folder (see ``overwrite``).
        source: a model name or folder (``load_model``'s source), recorded with the run.
        on_step: called after every training step and at every epoch's end (``StepInfo``).
        should_stop: polled at every step and through the preparation (between its phases and at every scoring
            batch); True cancels. Under several processes (accelerate launch) pass none: a rank that stopped alone
            would leave the others waiting.
        on_phase: called with (phase, done, total) while the run is prepared, before training's first step:
            "loading the model", "head warm-up", "mining task tokens", "scoring rows" (per batch), ...
        overwrite: replace an earlier run in ``out_dir`` (its files would otherwise mix with this run's);
            without it such a folder is refused (``runs.RunFolderError``). The earlier run is kept aside until this
            one succeeds, and put back (with a warning) when it fails or is cancelled.
        progress: a progress bar (tqdm: a widget in Jupyter, a text bar on stderr) over the preparation's phases
            and the steps, with the loss and each epoch's validation accuracy. None (default): shown when neither
            ``on_step`` nor ``on_phase`` is given; never on the other processes of a multi-process run.
        scores: row scores made beforehand, for 'sparse' (token-restricted), 'fisher' (unrestricted Fisher) or
            'random' (which rows may be taken): a ``SensitivityReport`` or the folder it was saved to
            (``report.save``, ``clm-explore sensitivity --out``). They must be of this model (its source and
            shapes) and these labels, and not for merged tokens (scores that start above the mask's lowest layer
            leave the rows below out, and ``scores_note`` says so); the run trains
            from their warmed-up head and records their settings as its ``cfg.sensitivity`` (and their groups'
            as its ``cfg.mining``; ``scores_from`` in metrics.json says where they came from). Saves the mining and
            scoring; refused before any folder is touched.

    Returns:
        FinetuneResult; status 'cancelled' when ``should_stop`` returned True (no model is saved then).
    """
    if isinstance(data, str | Path | pd.DataFrame):
        data = load_data(data)
    if isinstance(cfg, dict):  # a notebook's {"method": "sparse", "mask": {"budget": 0.02}}
        cfg = FinetuneConfig(**cfg)
    if not isinstance(data, AnnotatedData) or not isinstance(cfg, FinetuneConfig):
        raise TypeError(f"finetune(data, cfg, out_dir): data is AnnotatedData, a path or a DataFrame (as load_data "
                        f"takes), cfg a FinetuneConfig; got "
                        f"{type(data).__name__} and {type(cfg).__name__}")
    if not isinstance(source, str | Path):  # a LoadedModel: the run must name where its model came from
        raise TypeError(f"source is a model name or folder, as load_model takes; got {type(source).__name__}")
    source = str(source)
    out_dir = Path(out_dir)
    check_splits(data, cfg)
    given = given_scores(scores, cfg)
    cfg = recorded_config(cfg, given)
    device = resolve_device(cfg.device)
    accelerator = _distributed(device)
    check_processes(len(data.train), cfg.batch_size, accelerator.num_processes if accelerator else 1)
    main = accelerator is None or accelerator.is_main_process
    # A new or empty folder, or an earlier run's with overwrite: stale masks, scores or an adapter would be read as
    # this run's, and a notebook's working folder or a data folder must not fill with run files. Checked on every
    # process (one refused alone would leave the others waiting at the barrier), before the model loads.
    if given is not None:
        check_scores_outside(given, out_dir)
    check_run_dir(out_dir, overwrite, launch_peer=not main)
    _seed_everything(cfg.seed)
    quiet = on_step is None and on_phase is None  # no caller listening: a notebook, a script
    bar = ProgressBar() if main and (progress or (progress is None and quiet)) else None
    if bar is not None:
        on_step, on_phase = combined(on_step, bar.on_step), combined(on_phase, bar.on_phase)
    with contextlib.ExitStack() as closing:
        if bar is not None:
            closing.callback(bar.close)
        if on_phase is not None:
            on_phase("loading the model", 0, 1)
        loaded = load_model(source, data.labels, seed=cfg.seed, keep_global_rng=False)  # global_rng_kept restores
        loaded.tokenizer.truncation_side = cfg.truncation_side  # read so in training and scoring, and saved so
        check_runnable(cfg, loaded)  # before the folder: a refused config leaves nothing behind
        language = _data_language(data, cfg)  # a background_lang wordfreq lacks is refused here, before it too
        if quiet and main and (said := unreadable_note(loaded.tokenizer, data.train["text"].tolist())):
            # A notebook's word before minutes of training (the CLI prints its own), at the caller's line: past this
            # function and its two decorators' frames
            warnings.warn(said, stacklevel=4)
        if given is not None:
            check_scores_fit(given, loaded, data.labels, cfg.mask)
        claim = None
        if main and out_dir.exists() and holds_files(out_dir):  # claimed only now: overwrite=True must not move a
            # finished run aside for a mistyped source or a refused config; it is put back unless this one succeeds
            closing.callback(lambda: _warn_put_back(claim))  # after the claim ends (a stack: last in, first out)
            claim = closing.enter_context(claimed_run_dir(out_dir, overwrite))
        if accelerator is not None:
            device = accelerator.device
            # Rank 0 has claimed (and with overwrite emptied) the run folder before any other rank writes into it.
            accelerator.wait_for_everyone()
            if not main:  # other ranks keep their own copy, for checks, out of the way
                out_dir = out_dir / RANK_COPIES / str(accelerator.process_index)
        out_dir.mkdir(parents=True, exist_ok=True)
        if main:  # another process's --overwrite or run into this folder is refused while this one writes it
            closing.enter_context(run_folder_lock(out_dir))
        loaded.model.to(device)
        write_json_atomic(out_dir / "clm_run.json", _run_record(cfg, source, data, language, given))
        with _ending_recorded(out_dir):  # from here the folder is a run folder: one that raises says how it ended
            stop = _stop_when_folder_gone(should_stop, out_dir) if main else should_stop
            result = _train_and_save(loaded, data, cfg, device, out_dir, accelerator, on_step, stop, on_phase, given)
        if claim is not None and result.status == "succeeded":
            claim.keep()
        return result


def scores_read_note(made: SensitivityConfig, cfg: FinetuneConfig) -> str:
    """'' where the given scores read texts as the run does, else how they differ: the rows chosen from texts' starts
    for a run that reads their ends were said nowhere (the diff review)."""
    said = []
    if made.max_length != cfg.max_length:
        said.append(f"{made.max_length} sub-tokens per text where this run reads {cfg.max_length}")
    if made.truncation_side != cfg.truncation_side:
        kept = {"right": "starts", "left": "ends"}
        said.append(f"long texts' {kept[made.truncation_side]} where this run reads their "
                    f"{kept[cfg.truncation_side]}")
    if not said:
        return ""
    return (f"the scores were made reading {' and '.join(said)}: it trains the rows they chose, which a run scoring "
            "for itself may not")


def _run_record(cfg: FinetuneConfig, source: str, data: AnnotatedData, language: str | None,
                given: GivenScores | None) -> dict[str, Any]:
    """A run's clm_run.json: its method, model, data (as given, its digest, the options it was read with and its
    absolute path), its config, the scores it was given, and what made it (``provenance``)."""
    return {"method": cfg.method, "source": recorded_source(source), "data": data.source, "data_path": data.path,
            "data_digest": data_digest(data), "data_config": to_dict(data.config) if data.config else None,
            "data_carved": list(data.carved),
            "language": language, "config": to_dict(cfg),
            "scores_from": given.origin if given is not None else None,
            "created": datetime.now(UTC).isoformat(), "provenance": provenance(source, torch.get_num_threads())}


def _data_language(data: AnnotatedData, cfg: FinetuneConfig) -> str | None:
    """The training texts' language as wordfreq codes it ('de'): mining's background language, given or detected
    (the model card's ``language`` metadata); None where it has no word list for them or is not installed."""
    from clm_explore.mining import background_language

    return background_language(data.train["text"].tolist(), cfg.mining.background_lang).lang


def _warn_put_back(claim: RunDirClaim | None) -> None:
    """A notebook's word on the run an overwrite did not replace (the CLI prints its own)."""
    if claim is None or claim.earlier is None or claim.kept:
        return
    if claim.restored:
        warnings.warn(f"this run did not succeed: the earlier run in {claim.path} was put back", stacklevel=3)
    else:
        warnings.warn(f"this run did not succeed, and the earlier run that was in {claim.path} could not be put back: "
                      f"it is kept in {claim.earlier}", stacklevel=3)


def _train_and_save(loaded: LoadedModel, data: AnnotatedData, cfg: FinetuneConfig, device: torch.device,
                    out_dir: Path, accelerator: Accelerator | None, on_step: Callable[[StepInfo], None] | None,
                    should_stop: Callable[[], bool] | None, on_phase: PhaseCallback | None,
                    given: GivenScores | None = None) -> FinetuneResult:
    """``finetune`` once its run folder holds clm_run.json: prepare the method, train, evaluate, save."""
    main = accelerator is None or accelerator.is_main_process
    ctx = MethodContext(loaded, data, cfg, device, out_dir, accelerator.num_processes if accelerator else 1,
                        report=phase_reporter(on_phase, should_stop), given=given)
    base_params = count_parameters(loaded.model)
    try:
        ctx.report("preparing " + cfg.method, 0, 1)
        warmup = cfg.head_warmup and cfg.method in HEAD_WARMUP_METHODS
        if warmup:
            ctx.report("head warm-up", 0, 1)
        warmup_seconds = warm_up_head_only(ctx) if warmup else 0.0
        loaded_head = None if cfg.head_warmup or cfg.method in HEAD_WARMUP_METHODS else head_state(loaded.model)
        prepared = _preparer(cfg.method)(ctx)
        ctx.report("training", 0, 1)
    except _Stopped:
        return _cancelled(out_dir, 0)
    if given is not None:
        prepared.info["scores_from"] = given.origin
        floor = mask_floor(cfg.mask, given.report.n_layers)
        if given.report.scored_from_layer > floor:
            start = given.report.scored_from_layer
            prepared.info["scores_note"] = (f"the scores start at layer {start}: rows of layers {floor}-{start - 1}, "
                                            "which the mask allows, were not candidates")
        if (read := scores_read_note(given.sensitivity, cfg)):  # said in the run's metrics, every face
            prepared.info["scores_read_note"] = read
        made_on = given.report.train_digest
        if made_on is not None and made_on != split_digest(data.train):
            prepared.info["scores_data_note"] = ("the scores were made on other training rows than this run's (their "
                                                 "texts, labels or order differ): the rows chosen are the ones those "
                                                 "rows' task needed")
        if given.task_tokens is None and given.mining is None:
            prepared.info["tokens_note"] = ("the scores do not say how their groups were mined: task_tokens.json "
                                            "holds groups mined with this run's mining settings")
    if loaded_head is not None:  # the scores came from a warmed head; training starts from the loaded one
        restore_head(prepared.model, loaded_head)
    if warmup_seconds:
        prepared.info["prep_seconds"] = prepared.info.get("prep_seconds", 0.0) + warmup_seconds
    if cfg.dropout is not None and not set_dropout(prepared.model, cfg.dropout):
        prepared.info["dropout_note"] = "the model has no dropout to set: the dropout option changed nothing"
    lr = cfg.lr or DEFAULT_LR[cfg.method]
    with open(out_dir / PROGRESS_LOG, "w") as progress:
        loop = _TrainLoop(loaded, data, cfg, prepared, device, lr, _logged(on_step, progress), should_stop, accelerator,
                          scoring_prefix=ctx.prefix)
        ctx.prefix = None  # the loop owns it now: it frees the states if they do not apply
        with PeakMemory(device) as memory:
            loop.memory = memory
            status = loop.run()
    if status == "cancelled":
        return _cancelled(out_dir, loop.step)
    if on_phase is not None:  # the last step is not the end: a card read "step 34/34" for 17 s (multi-session review)
        on_phase(FINISHING_PHASE, 0, 1)
    files = dict(prepared.files)
    if prepared.after_training:
        files.update(prepared.after_training())
    if prepared.keep_unmerged is not None and main:
        prepared.keep_unmerged(out_dir)
    model = prepared.finalize()
    metrics = _evaluate_and_save(loaded, model, data, cfg, out_dir, files, main)
    metrics.update(prepared.info)
    ranks = _per_rank(accelerator, {"train_seconds": loop.train_seconds, "peak_memory_mb": memory.mb + loop.memory_before_mb})
    if len(ranks) > 1:
        metrics["per_rank"] = ranks
    metrics.update(method=cfg.method, seed=cfg.seed, epochs=cfg.epochs, lr=lr, batch_size=cfg.batch_size,
                   train_seconds=max(r["train_seconds"] for r in ranks),
                   examples_per_second=loop.examples / max(sum(loop.epoch_seconds), 1e-9),
                   peak_memory_mb=max(r["peak_memory_mb"] for r in ranks), trainable_params=loop.trainable_params,
                   epoch_seconds=loop.epoch_seconds,
                   total_params=count_parameters(model), base_params=base_params,
                   backbone_params=backbone_parameter_count(model), val_curve=loop.val_curve,
                   device=str(device), status="succeeded")
    if loop.average is not None:
        metrics["averaged_steps"] = loop.average.count
    if cfg.keep_best or cfg.early_stop:
        metrics.update(best_epoch=loop.best_epoch, best_val_accuracy=loop.best_accuracy,
                       saved_epoch=loop.best_epoch if cfg.keep_best else len(loop.epoch_seconds))
    if loop.stopped_after is not None:
        metrics["stopped_after"] = loop.stopped_after
    if not cfg.lr and loaded.source not in (DEFAULT_SOURCE, TINY_SOURCE):
        # SmolLM2's sparse loss went 0.45 -> 4.16 at its second step at this rate (the models review)
        metrics["lr_note"] = (f"the learning rate {lr:g} is {cfg.method}'s default, chosen on all-MiniLM-L6-v2; on "
                              "another model it may be far off: `clm-explore bench --tune-lr` chooses one on "
                              "validation rows")
    if said := unreadable_note(loaded.tokenizer, data.train["text"].tolist()):  # its model card says so too
        metrics["vocabulary_note"] = said
    metrics.setdefault("budget", None)
    write_json_atomic(out_dir / "metrics.json", metrics)
    if main:
        _write_card(out_dir)
    share_tensor_files(out_dir.rglob("*.safetensors"))  # the run's own: its folder was new or emptied for it
    return FinetuneResult("succeeded", metrics, out_dir)


def _carve_said(data: AnnotatedData) -> str:
    """The data's note on its test carve, as a clause (why a carve left none, when it says)."""
    said = [note for note in data.notes if "test" in note and not is_draw_note(note)]
    return f" ({said[0].rstrip('.')})" if said else ""


def _write_card(out_dir: Path) -> None:
    """The run's model card (README.md); a card that cannot be made is said in a warning, not a failed run: the
    model and its figures are saved, and ``clm-explore card`` can make it later."""
    from clm_explore.cards import write_model_card

    try:
        write_model_card(out_dir)
    except Exception as exc:  # noqa: BLE001 - anything: the trained run stands without its card
        warnings.warn(f"{out_dir}: the model card (README.md) could not be written ({exc}); "
                      f"`clm-explore card --run {out_dir} --write` tries again.", stacklevel=2)


def _stop_when_folder_gone(should_stop: Callable[[], bool] | None, out_dir: Path) -> Callable[[], bool]:
    """``should_stop``, which also raises ``RunFolderError`` once the run folder is gone: a folder deleted while its
    run trained (from the app's Runs page, say) failed only at the end, on a raw FileNotFoundError for
    predictions.csv (the app review). Polled at every step: a stat."""

    def stop() -> bool:
        if not out_dir.is_dir():
            raise RunFolderError(f"{out_dir} was deleted while its run trained: the run stops, with nowhere to save.")
        return bool(should_stop and should_stop())
    return stop


@contextmanager
def _ending_recorded(out_dir: Path) -> Iterator[None]:
    """A run that raises leaves metrics.json saying how it ended (cancelled on KeyboardInterrupt, else failed), as
    the CLI and the app record it, so that the folder registered later does not read as pending. The caller's
    record (``RunStore.set_status``: interrupted, say) replaces it."""
    try:
        yield
    except BaseException as exc:
        if not (out_dir / "metrics.json").exists():
            status = RunStatus.CANCELLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
            with contextlib.suppress(OSError):  # a full disk: the error the caller sees is the one that counts
                write_json_atomic(out_dir / "metrics.json",
                                  {"status": status.value, "error": str(exc) or type(exc).__name__})
        raise


def _per_rank(accelerator: Accelerator | None, values: dict[str, float]) -> list[dict[str, float]]:
    """Every process's ``values``, in rank order (one process: its own). A collective: every rank must call it.
    The run's time is its slowest process's and its memory the largest one's (the GPU that runs out first)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [values]
    mine = torch.tensor([list(values.values())], dtype=torch.float64, device=accelerator.device)
    return [dict(zip(values, row, strict=True)) for row in accelerator.gather(mine).tolist()]


def _cancelled(out_dir: Path, steps: int) -> FinetuneResult:
    write_json_atomic(out_dir / "metrics.json", {"status": "cancelled", "steps": steps})
    return FinetuneResult("cancelled", {"status": "cancelled"}, out_dir)


class _TrainLoop:
    def __init__(self, loaded, data, cfg, prepared, device, lr, on_step, should_stop, accelerator=None,
                 scoring_prefix: PrefixCache | None = None):
        self.loaded, self.data, self.cfg, self.prepared = loaded, data, cfg, prepared
        self.device, self.on_step, self.should_stop = device, on_step, should_stop
        self.trainable_params = trainable_count(prepared.model)
        # Several processes (accelerate launch / torchrun): DDP averages gradients, each rank takes
        # every world-th batch, so all ranks step in lockstep on the same weights.
        self.rank: int
        self.world: int
        self.rank, self.world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        self.model = accelerator.prepare_model(prepared.model) if accelerator else prepared.model
        self.eval_model = prepared.model
        if cfg.compile != "off":
            self.model = compiled(self.model, cfg.compile)
        self.pad_multiple = batch_pad_multiple(cfg.compile, device)
        self.optimizer = torch.optim.AdamW(prepared.param_groups, lr=lr)
        self.train_ids = encode(loaded, data.train["text"].tolist(), cfg.max_length)
        self.train_labels = torch.as_tensor(data.label_ids("train"))
        check_processes(len(self.train_ids), cfg.batch_size, self.world)
        steps_per_epoch = -(-len(self.train_ids) // cfg.batch_size) // self.world
        self.total_steps = steps_per_epoch * cfg.epochs
        self.scheduler = get_scheduler(SCHEDULER_NAMES[cfg.schedule], self.optimizer,
                                       num_warmup_steps=int(cfg.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        trained = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.average = TailAverage.for_share(trained, cfg.average_last, self.total_steps) if cfg.average_last else None
        self.best_weights = BestWeights(trained) if cfg.keep_best else None
        self.best_accuracy, self.best_epoch = -1.0, 0
        self.stopped_after: int | None = None
        """The epoch after which ``early_stop`` ended training, None when it ran every epoch."""
        self.step = self.examples = 0
        self.train_seconds = float(prepared.info.get("prep_seconds", 0.0))
        self.val_curve: list[dict] = []
        self.epoch_seconds: list[float] = []
        self.eval_rows_per_second: float | None = None
        """The last epoch's evaluation pace (rows a second): the ETA adds the evaluations still to come at it."""
        self.last_loss = self.last_lr = 0.0
        self.scoring_prefix = scoring_prefix
        self.memory: PeakMemory | None = None
        """Training's memory measurement (set by ``finetune``): the epochs' validation passes are left out of it."""
        self.memory_before_mb = self.average.megabytes if self.average else 0.0
        """Memory the loop holds but allocated before its measurement began: the averaged weights' buffers, and a
        prefix cache built for scoring."""

    def run(self) -> str:
        dtype = autocast_dtype(self.device)
        lengths = [len(x) for x in self.train_ids]
        prefix = self._prefix_cache()
        for epoch in range(1, self.cfg.epochs + 1):
            self.model.train()
            for idx, step_examples in self._my_batches(lengths):
                if self.should_stop and self.should_stop():
                    return "cancelled"
                started = time.perf_counter()
                input_ids, mask = collate(self.train_ids, idx, self.loaded.tokenizer.pad_token_id, self.pad_multiple)
                feeding = prefix.feeding(idx) if prefix else nullcontext()
                with feeding, torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                    logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
                loss = nn.functional.cross_entropy(logits.float(), self.train_labels[idx].to(self.device),
                                                   label_smoothing=self.cfg.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.last_lr = self.optimizer.param_groups[0]["lr"]
                self.optimizer.step()
                self.scheduler.step()
                if self.average is not None:
                    self.average.update(self.step + 1)  # inside the timed step: averaging is training's cost
                # Read inside the timed step: on a GPU it waits for the step's queued kernels, which the
                # clock would otherwise miss (the thirtieth session's GPU seconds stopped before it).
                self.last_loss = loss.item()
                self.train_seconds += time.perf_counter() - started
                self.step += 1
                self.examples += step_examples
                self._report(epoch, self.last_loss, None)
            self.epoch_seconds.append(self.train_seconds - sum(self.epoch_seconds) - self._prep_seconds())
            if self._no_gain_for_long(epoch, self._end_epoch(epoch)) and epoch < self.cfg.epochs:
                self.stopped_after = epoch
                break
        if self.average is not None:
            self.average.swap()  # training's result is the average from here on (evaluation, saving)
        if self.best_weights is not None:
            self.best_weights.restore()  # training's result is the best epoch's weights (the last's when it was best)
        return "succeeded"

    def _no_gain_for_long(self, epoch: int, accuracy: float | None) -> bool:
        """Track the best validation accuracy (keeping its weights with ``keep_best``); True when ``early_stop``
        epochs in a row have not bettered it."""
        if accuracy is None:
            return False
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = accuracy, epoch
            if self.best_weights is not None:
                with self.memory.paused() if self.memory else nullcontext():  # kept like the evaluation: untimed
                    self.best_weights.keep()
        return bool(self.cfg.early_stop) and epoch - self.best_epoch >= self.cfg.early_stop

    def _prefix_cache(self) -> PrefixCache | None:
        """The frozen layers' outputs, when configured: the ones built for scoring where they still apply
        (their seconds are in the preparation's already), else built here, inside the timed loop."""
        if not self.cfg.cache_frozen_layers:
            return None
        early, self.scoring_prefix = self.scoring_prefix, None
        if early is not None and self._still_applies(early):
            cache, built = early, {"built": "before scoring"}
            self.memory_before_mb += early.megabytes  # allocated before the loop's memory measurement began
        else:
            del early  # frees its states before another cache is built
            cache, built = self._build_prefix_cache(), {}
            if cache is None:
                return None
            self.prepared.info["prep_seconds"] = self._prep_seconds() + cache.seconds
            self.train_seconds += cache.seconds
        cache.input_dropout = self.cfg.cache_input_dropout
        self.prepared.info["prefix_cache"] = {**cache.info(), **built}
        return cache

    def _build_prefix_cache(self) -> PrefixCache | None:
        cache, why = None, "several processes train"
        if self.cfg.method not in CACHE_METHODS:
            why = f"{self.cfg.method} trains no layer range above frozen ones (the cache serves the row methods and 'layers')"
        elif self.world == 1:
            cache, why = build_prefix_cache(self.eval_model, self.train_ids, self.loaded.tokenizer.pad_token_id,
                                            self.prepared.info.get("lowest_layer"), self.device,
                                            self.cfg.cache_max_mb, dtype=getattr(torch, self.cfg.cache_dtype))
        if cache is None:
            self.prepared.info["prefix_cache"] = {"off": why}
        return cache

    def _still_applies(self, cache: PrefixCache) -> bool:
        lowest = self.prepared.info.get("lowest_layer")
        return (cache.model is self.eval_model and lowest is not None and cache.start <= lowest
                and cache.fits(self.train_ids) and not cache.trains_below())

    def _prep_seconds(self) -> float:
        return float(self.prepared.info.get("prep_seconds", 0.0))

    def _my_batches(self, lengths: list[int]) -> list[tuple[np.ndarray, int]]:
        """This process's batches, each with the rows that every process's batch of that step holds together (a
        last short batch may fall to any process)."""
        batches = batch_order(lengths, self.cfg.batch_size, self.generator)
        usable = len(batches) // self.world * self.world  # equal step counts: DDP syncs every backward
        return [(batches[start + self.rank], sum(len(b) for b in batches[start : start + self.world]))
                for start in range(0, usable, self.world)]

    def _end_epoch(self, epoch: int) -> float | None:
        """Evaluate on the curve's split (the epoch's point of ``val_curve``) and return its accuracy; None when
        there is no evaluation."""
        split = self.data.split(self.cfg.curve_split)
        if not self.cfg.eval_every_epoch or split.empty:
            return None
        started = time.perf_counter()
        with self.memory.paused() if self.memory else nullcontext(), self._averaged():
            probs = predict_proba(self.eval_model, self.loaded, split["text"].tolist(), self.cfg.max_length,
                                  device=self.device)
        self.eval_rows_per_second = len(split) / max(time.perf_counter() - started, 1e-9)
        accuracy = float((probs.argmax(1) == self.data.label_ids(self.cfg.curve_split)).mean())
        chooses = self.cfg.keep_best or self.cfg.early_stop
        if chooses and self.world > 1 and torch.distributed.is_initialized():  # every rank keeps and stops as rank 0
            shared = torch.tensor([accuracy], dtype=torch.float64, device=self.device)
            torch.distributed.broadcast(shared, src=0)
            accuracy = float(shared.item())
        point = {"epoch": epoch, "seconds": self.train_seconds, "accuracy": accuracy, "split": self.cfg.curve_split}
        self.val_curve.append(point)
        self._report(epoch, self.last_loss, point)  # progress.jsonl stays strict JSON (no NaN)
        return accuracy

    def _evaluation_left_seconds(self, training_rate: float = 0.0) -> float:
        """The evaluations still to come: each remaining epoch's on the curve's split and the test split's at the end.
        The ETA counted the training steps alone, so a card read "0s" while a large validation split and the test
        split were still to be read (the UX review). Their pace: the last evaluation's, but never below training's
        rows per second (``training_rate``), which reads the rows forward and backward: a few-shot run's 7
        validation rows, one batch of mostly fixed cost, paced its 700 test rows so slowly that the ETA said 1m 29s
        of a run that ended 16 s later (the few-shot review). 0 while neither pace is known."""
        pace = max(self.eval_rows_per_second or 0.0, training_rate)
        if pace <= 0:
            return 0.0
        epochs_left = self.cfg.epochs - len(self.epoch_seconds)  # the epoch evaluated now is counted there already
        rows = max(epochs_left, 0) * len(self.data.split(self.cfg.curve_split)) + len(self.data.test)
        return rows / pace

    @contextmanager
    def _averaged(self) -> Iterator[None]:
        """The averaged weights in place while inside (when averaging has begun), training's after."""
        if self.average is not None:
            self.average.swap()
        try:
            yield
        finally:
            if self.average is not None:
                self.average.swap()

    def _report(self, epoch: int, loss: float, evaluation: dict | None) -> None:
        if not self.on_step:
            return
        rate = self.examples / max(self.train_seconds - self._prep_seconds(), 1e-9)
        eta = (self.total_steps - self.step) * self.cfg.batch_size * self.world / max(rate, 1e-9)  # rate: all ranks
        # Training's pace bounds an evaluation's where both read every layer on one process's rows: each process
        # evaluates the whole split, and a cached run's steps skip the frozen layers an evaluation reads (the diff
        # review).
        floor = rate / self.world if self.examples and not self.cfg.cache_frozen_layers else 0.0
        eta += self._evaluation_left_seconds(floor)
        self.on_step(StepInfo(self.step, self.total_steps, epoch, loss, rate, self.train_seconds, eta, evaluation,
                              self.last_lr))


def _evaluate_and_save(loaded, model, data, cfg, out_dir: Path, files: dict, main: bool = True) -> dict:
    texts = data.test["text"].tolist()
    probs = predict_proba(model, loaded, texts, cfg.max_length)
    pred = probs.argmax(1)
    gold = data.label_ids("test")
    metrics = classification_metrics(gold, pred, data.labels)
    metrics["labels_predicted"] = int(len(np.unique(pred)))
    if said := _collapse_note(pred, gold, data.labels, cfg):
        longer = longer_read_advice(cfg.max_length, usable_positions(loaded.model.config), "--max-length",
                                    cfg.truncation_side, SWITCH_SIDE)
        if cut := cut_texts_note(loaded.tokenizer, data.train["text"].tolist(), cfg.max_length, "this run", longer,
                                 what="training texts"):  # the long-text review: blamed on the rate
            said += f" Also: {cut}."
        metrics["collapse_note"] = said
    labels = np.array(data.labels)
    rows = pd.DataFrame({"row": range(len(texts)), "text": texts, "label": data.test["label"].tolist(),
                         "pred": labels[pred], "prob": probs.max(1)})
    scope = _out_of_scope(loaded, model, data, cfg, gold, pred, probs.max(1))
    if scope is not None:
        metrics["out_of_scope"] = scope
        if scope["threshold"] is not None:
            rows["out_of_scope"] = rows["prob"] < scope["threshold"]
    write_csv(rows, out_dir / "predictions.csv")  # its texts exactly, a lone carriage return too
    model.config.id2label = dict(enumerate(data.labels))
    model.config.label2id = {name: i for i, name in enumerate(data.labels)}
    setattr(model.config, TRAINED_LENGTH_KEY, cfg.max_length)  # what explain() of the loaded run reads
    model.config.problem_type = "single_label_classification"  # one label a text: other tools read it (softmax)
    if not main:
        # transformers saves only on the main process; a secondary rank keeps its weights for checks (save_model
        # drops the tensors a model shares, e.g. prefix tuning's word embeddings, which save_file refuses).
        save_model(model, str(out_dir / "model.safetensors"))
    else:
        with transformers_quieted():
            model.save_pretrained(out_dir, safe_serialization=True)
            save_tokenizer(loaded.tokenizer, out_dir, cfg.max_length)
    for name, tensors in files.items():
        if tensors:
            save_file({k: v.contiguous() for k, v in tensors.items()}, out_dir / f"{name}.safetensors")
    return metrics


COLLAPSE_MIN_ROWS = 10
"""Test rows below which one label for every row is no evidence of a collapse (the few-shot review: 3 test rows)."""


def _collapse_note(pred: np.ndarray, gold: np.ndarray, labels: list[str], cfg: FinetuneConfig) -> str:
    """A warning when every test row was predicted as one label, of test rows of several labels: the run "succeeded"
    yet learned nothing (the operations review: LoRA at rate 1.0 and full finetuning at 1e3 ended succeeded at
    chance, with no word). A test split of one label, answered right, is no collapse (the diff review)."""
    if len(pred) < COLLAPSE_MIN_ROWS or len(labels) < 2 or len(np.unique(pred)) > 1 or len(np.unique(gold)) < 2:
        return ""
    rate = f"the rate {cfg.lr:g}" if cfg.lr else f"{cfg.method}'s default rate"
    return (f"every test row was predicted as {labels[int(pred[0])]!r}: the training collapsed (its accuracy is that "
            f"label's share of the test rows). Too high a learning rate ({rate}) or too few steps are the usual "
            f"causes: {COLLAPSE_REMEDY}.")


COLLAPSE_REMEDY = "try a lower --lr, more epochs, or `clm-explore bench --tune-lr`"
"""The collapse note's advice, in the CLI's words (the app shows it in its own: ``app_words``)."""
SWITCH_SIDE = "--truncation-side left"
"""How a run keeps long texts' ends, in the CLI's words (the app's: ``app_words``)."""


def _out_of_scope(loaded, model, data, cfg, gold: np.ndarray, pred: np.ndarray, top: np.ndarray) -> dict | None:
    """Abstention scores when test has labels unseen in train; the threshold comes from the validation rows of
    train's labels: it is to turn away the quantile's share of in-scope queries, and a validation row of a label
    train lacks, unsure as it is, pulled it down (the metrics review: 0.40 where the in-scope rows said 0.65, and no
    in-scope test row turned away)."""
    if not (gold == -1).any():
        return None
    in_scope = data.label_ids("validation") >= 0
    texts = data.split("validation")["text"].tolist()
    validation = [text for text, known in zip(texts, in_scope, strict=True) if known]
    val_top = predict_proba(model, loaded, validation, cfg.max_length).max(1) if validation else np.zeros(0)
    scope = out_of_scope_metrics(gold, pred, top, val_top, cfg.out_of_scope_quantile, len(data.labels))
    if scope is not None and (left_out := int((~in_scope).sum())):
        scope["validation_rows_left_out"] = left_out  # their labels are not train's: no in-scope query to turn away
    return scope


def check_processes(train_rows: int, batch_size: int, processes: int) -> None:
    """Refuse more processes than the training rows make batches: each takes every processes-th batch, and one
    without a batch would "succeed" without a step.

    Raises:
        ConfigError: the figures, and what to change.
    """
    if processes > 1 and -(-train_rows // batch_size) < processes:
        raise ConfigError(f"{train_rows} training rows make fewer batches of {batch_size} than the {processes} "
                          "processes: lower --batch-size or use fewer processes")


def _distributed(device: torch.device):
    """An Accelerator when launched as several processes (WORLD_SIZE > 1), else None.

    Mixed precision and compilation stay the run's own (bf16 autocast on CUDA, ``cfg.compile``): a launch's
    ``--mixed_precision fp16`` or a default_config.yaml would otherwise wrap the model in accelerate's fp16 autocast,
    under the loop's bf16 and with no loss scaling, and a config's dynamo backend would compile it unasked (the GPU
    review). DDP broadcasts no buffers each step: the runs' buffers (position ids, delta rows) never change."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator(**accelerator_options(device))


def accelerator_options(device: torch.device) -> dict[str, Any]:
    """``Accelerator``'s arguments for a run: its own precision and compilation, whatever the launch says."""
    from accelerate.utils import DistributedDataParallelKwargs

    return {"cpu": device.type == "cpu", "mixed_precision": "no", "dynamo_backend": "no",
            "kwargs_handlers": [DistributedDataParallelKwargs(broadcast_buffers=False)]}


def _logged(on_step: Callable[[StepInfo], None] | None, progress) -> Callable[[StepInfo], None]:
    """Append every step to progress.jsonl, then pass it on."""

    def log(info: StepInfo) -> None:
        # Strict JSON: a diverged step's NaN loss is null, not the bare NaN token that JSON readers refuse
        progress.write(json.dumps(_finite(asdict(info)), allow_nan=False) + "\n")
        progress.flush()
        if on_step:
            on_step(info)

    return log


LOAD_OPTIONS = ("max_length", "is_local", "local_files_only")
"""Keys a loaded tokenizer's settings carry from how it was loaded (the base's truncation, the offline switches),
which a run folder's tokenizer_config.json must not pass on."""


def save_tokenizer(tokenizer: Any, out_dir: Path, max_length: int) -> None:
    """Save a run's tokenizer so that tools outside clm-explore read texts at the length the run trained at: its
    ``model_max_length`` (``pipeline(..., truncation=True)`` cuts there) and tokenizer.json's truncation (the
    ``tokenizers`` library's) are ``max_length``, cut at the end the run cut (its ``truncation_side``, which
    tokenizer_config.json keeps too). The interop review: they said 512 and the base's 128, and a plain
    pipeline differed on 2 of 800 test rows. The tokenizer given is left as it was (a copy is saved)."""
    saved = copy.copy(tokenizer)
    saved.model_max_length = max_length
    saved.init_kwargs = {key: value for key, value in tokenizer.init_kwargs.items() if key not in LOAD_OPTIONS}
    saved.init_kwargs["truncation_side"] = cut_side(tokenizer)  # tokenizer_config.json: a slow tokenizer reads it too
    saved.save_pretrained(out_dir)
    fast = out_dir / "tokenizer.json"
    if fast.is_file():
        spec = json.loads(fast.read_text(encoding="utf-8"))
        spec["truncation"] = {"direction": cut_side(tokenizer).capitalize(), "max_length": max_length,
                              "strategy": "LongestFirst", "stride": 0}
        write_text_atomic(fast, json.dumps(spec, ensure_ascii=False))


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float, however deep in dicts and lists, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def batch_pad_multiple(mode: str, device: torch.device) -> int:
    """Tokens a training batch's width is a multiple of: GRAPHS_PAD_MULTIPLE where CUDA graphs record one graph per
    width (a GPU, a mode of CUDA_GRAPH_MODES), else 1 (the longest row: padding would only add work)."""
    return GRAPHS_PAD_MULTIPLE if device.type == "cuda" and mode in CUDA_GRAPH_MODES else 1


def compiled(model: nn.Module, mode: str) -> nn.Module:
    """``model`` under ``torch.compile`` in ``mode`` (a FinetuneConfig.compile value other than 'off')."""
    if COMPILE_BACKEND != "inductor":  # modes are inductor's options
        return torch.compile(model, backend=COMPILE_BACKEND)
    return torch.compile(model, mode=None if mode == "default" else mode)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


