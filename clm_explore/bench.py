"""The benchmark grid: methods x budgets x seeds on one data set, with results, mask statistics and a report.

Each cell is one ``clm-explore finetune ... --json --out <cell>`` subprocess, so peak memory is measured
per cell and a crash costs one cell, not the grid. A cell whose ``metrics.json`` says it succeeded with the
planned method, seed, epochs and rate, and whose ``clm_run.json`` records the planned training settings, is not run
again, so an interrupted grid resumes where it stopped (one that finished with other settings, e.g. a rate the
sweep no longer chooses, is set aside and trained again). ``run_grid`` writes into ``out_dir``:

- ``data/`` (the train/validation/test files every cell reads, after ``shots``/``limit``), ``cells/``,
  ``logs/`` (each cell's stderr), ``bench.json`` (the config);
- ``results.csv`` (one row per method, budget and seed), ``summary.csv`` (mean and std over seeds),
  ``comparison.csv`` (each method against full finetuning, and sparse against the other cheap methods: the
  difference of means with a 95% Welch interval, the std ratio and a verdict),
  ``masks.csv`` (share of selected rows per (layer, module) for every row-mask run), ``overlap.csv``
  (Jaccard of the row masks of sparse, fisher, gradient and random), ``tuning.csv`` with ``tune_lr`` (the
  sweep's validation accuracies, with the row score too under ``tune_score``, widened past an edge choice
  with ``tune_widen``);
- ``report.html``: self-contained plotly figures (Pareto, stability, cost, curves, mask overlap).

The tables come from ``clm_explore.bench_results``, the page from ``clm_explore.bench_report``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clm_explore.bench_report import render_report
from clm_explore.bench_results import (
    INTERRUPTED_LINE,
    collect_results,
    compare_methods,
    mask_overlap,
    mask_statistics,
    read_metrics,
    summarise,
)
from clm_explore.config import (
    BUDGET_METHODS,  # noqa: F401 - also read from here: a budgeted method gets one cell per budget
    MAX_SEED,
    METHODS,
    SCORES,
    TUNE_WIDEN,
    ConfigError,
    DataConfig,
    FinetuneConfig,
    MaskConfig,
    SensitivityConfig,
    check_field_types,
    config_from,
    documented,
    keywords_checked,
    to_dict,
)
from clm_explore.data import AnnotatedData, few_shot, load_data, shots_note, write_csv
from clm_explore.provenance import (
    CELLS_AT_ONCE_ENV,
    MODEL_NAMES,
    code_differences,
    model_fingerprint,
    provenance,
)
from clm_explore.runs import (
    PROGRESS_LOG,
    RunStore,
    last_step,
    lock_owner,
    owner_lock,
    read_json_object,
    write_json_atomic,
    write_text_atomic,
)

LR_FACTORS = (1.0, 1 / 3, 3.0)
"""The LR sweep: the method's default times these (the default first, so it wins ties)."""
LR_STEP = 3.0
"""The factor between neighbouring rates of the sweep, also when it widens past an edge (``tune_widen``)."""
SCORE_METHODS = ("sparse", "sparse_merged")
"""Methods whose row score (SensitivityConfig.score) a grid may set or choose: the token-restricted rows."""
TUNE_SCORES = ("fisher", "taylor")
"""Row scores the sweep tries with ``tune_score`` (the default first, so it wins ties). Taylor rows led Fisher
rows by 13 points on trec6 10-shot development rows and trailed by 0.5-0.8 on three other sets: a per-task
choice, so the grid makes it on validation like the learning rate."""
SPREAD_METHODS = ("sparse", "sparse_merged", "fisher", "gradient")
"""Methods that train their scores' top rows, which ``spread_heads`` re-picks over the attention heads."""
SPREAD_SUFFIX = "+spread"
"""A row score of SCORE_METHODS with this suffix (``taylor+spread``) also spreads the attention rows over the heads
(``finetune --spread-heads``): the mask variant ``tune_spread`` sweeps and ``score`` may fix per method."""
SAME_CELLS = ("data", "model", "epochs", "shots", "limit", "batch_size", "max_length", "data_seed", "tune_lr", "lr",
              "tune_score", "score", "cold_head", "schedule", "average_last", "tune_widen",
              "tune_each_budget", "spread_heads", "tune_spread", "prefix_init", "weight_decay", "keep_best",
              "early_stop")
"""Config fields that change what a finished cell means; a resumed grid must match them."""
LEGACY_DEFAULTS = {"tune_widen": 0}
"""Fields whose default changed after grids were saved without them: such a grid ran at this value."""
DATA_DIGEST = "data_sha256"
"""bench.json's key for ``splits_digest`` of the rows the grid's cells read."""
MODEL_DIGEST = "model_files"
"""bench.json's key for ``model_fingerprint`` of the model folder or file the grid's cells train from."""


class BenchError(ConfigError):
    """A grid that cannot run as asked (bad option, or an output folder from a different grid)."""


@keywords_checked
@documented
@dataclass(frozen=True)
class BenchConfig:
    methods: tuple[str, ...] = ("full", "sparse", "lora")
    """The methods compared (``config.METHODS``), each in cells of its own."""
    budgets: tuple[float, ...] = (0.01,)
    """Budgets of the budgeted methods (fractions of the backbone, or counts > 1)."""
    seeds: int = 3
    """Seeds 0..seeds-1 per (method, budget)."""
    epochs: int = 3
    """Training epochs of every cell (and of the learning-rate sweep's)."""
    shots: int = 0
    """Training rows per label (few-shot, seeded by ``data_seed``); 0 = all."""
    limit: int = 0
    """Cap on training rows, stratified by label (validation is capped at a quarter of it, or one row per label where
    that is more); 0 = none."""
    tune_lr: bool = False
    """Per method, pick the LR among default x LR_FACTORS by validation accuracy (1 seed), then use it."""
    lr: dict[str, float] = field(default_factory=dict)
    """Fixed learning rates per method (e.g. chosen by an earlier ``tune_lr`` grid); the rest use their default."""
    tune_widen: int = TUNE_WIDEN
    """With ``tune_lr``: when a method's best rate is the lowest or the highest it tried, the sweep tries one
    more, LR_STEP further that way, at most this many times per method (0 = the three rates only). Until the
    thirty-second session the sweep stopped at three rates, and on banking77 five baselines chose its top
    one; going on lifted them by 1 to 16 points in 10-shot, three of them peaking 27x above their default
    rate (BENCHMARKS.md)."""
    tune_each_budget: bool = False
    """With ``tune_lr``: every budget of the budgeted methods gets its own sweep (and rate), not only the middle
    one. A rate chosen at 1% can be far off at 5% (on trec6 10-shot 1%'s rate collapsed every 5% row method,
    BENCHMARKS.md); the sweep then costs a cell per rate per budget."""
    tune_score: bool = False
    """With ``tune_lr``: the sweep of SCORE_METHODS runs every rate with each of TUNE_SCORES and the best
    (rate, score) pair on validation is used."""
    tune_spread: bool = False
    """With ``tune_lr``: the sweep of SCORE_METHODS runs every rate and score with the attention rows as scored and
    spread over the heads (``score + SPREAD_SUFFIX``), and the best on validation is used. Spread rows lifted
    trec6's Fisher rows by 8 points on test and cost its Taylor rows 2.7 (thirty-eighth session): another per-set
    choice. Only our method's cells sweep it; ``spread_heads`` gives spread rows to every top-row method."""
    score: dict[str, str] = field(default_factory=dict)
    """Fixed row scores per method of SCORE_METHODS (e.g. chosen by an earlier ``tune_score`` grid); default fisher.
    A score may end in SPREAD_SUFFIX (``taylor+spread``)."""
    cold_head: bool = False
    """Every cell trains from the head as loaded, not the warmed-up one (``finetune --cold-head``)."""
    spread_heads: bool = False
    """The cells of SPREAD_METHODS take each attention map's rows round-robin over its heads
    (``finetune --spread-heads``, ``MaskConfig.spread_heads``); random rows and the other methods are unchanged."""
    schedule: str = FinetuneConfig.schedule
    """Every cell's learning-rate schedule after the warm-up (``finetune --schedule``)."""
    average_last: float = FinetuneConfig.average_last
    """Every cell evaluates and saves its trained weights averaged over this last share of the steps
    (``finetune --average-last``; 0 = off). With ``schedule="constant"`` and 0.5 it is SWA's recipe, the fastest
    to full finetuning's accuracy on banking77 (BENCHMARKS.md); the grid gives it to every method alike."""
    prefix_init: str = FinetuneConfig.prefix_init
    """Where the prefix method's cells start (``finetune --prefix-init``)."""
    keep_best: bool = False
    """Every cell saves and scores the weights of its best epoch on validation (``finetune --keep-best``). The
    learning-rate sweep's cells too: they choose on the sweep's own validation rows, one per label (the rows their
    epoch curves read), and are scored on the grid's validation split, which holds those rows; a rough choice, made
    alike for every method."""
    early_stop: int = 0
    """Every cell stops after this many epochs without a better validation accuracy (``finetune --early-stop``)."""
    weight_decay: dict[str, float] = field(default_factory=dict)
    """AdamW weight decay per method (``finetune --weight-decay``; e.g. ``{"sparse": 1.0}``), in its sweep's cells
    too; the rest train without."""
    model: str = "default"
    """The model every cell trains from (``load_model``'s sources: a name, a folder, a GGUF file)."""
    batch_size: int = 32
    """Training rows per step in every cell."""
    max_length: int = 64
    """Sub-tokens read per text in every cell."""
    device: str = "auto"
    """Where the cells train: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    jobs: int = 1
    """Cells that run at the same time, each its own process. With several GPUs (device auto or cuda) each
    running cell gets one of them in turn (CUDA_VISIBLE_DEVICES); on a CPU each gets cores / jobs threads
    unless OMP_NUM_THREADS is set. Cells that ran side by side time each other's contention: compare their
    seconds with each other, not with a grid run one cell at a time."""
    data_seed: int = 0
    """Seed of the data's draws: the ``shots`` rows per label, the ``limit`` rows and the sweep's validation rows."""
    data: str = ""
    """Where the data came from (recorded, and checked when a grid resumes)."""

    def __post_init__(self) -> None:
        try:
            check_field_types(self)
        except ConfigError as exc:
            raise BenchError(str(exc)) from exc
        for name in ("methods", "budgets"):  # a string would be read a character at a time ("got s, p, a, r, ...")
            if isinstance(getattr(self, name), str | int | float):
                raise BenchError(f"{name} is a tuple, e.g. {name}=({getattr(self, name)!r},); got "
                                 f"{type(getattr(self, name)).__name__} {getattr(self, name)!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise BenchError(f"methods must be among {', '.join(METHODS)}; got {', '.join(unknown) or 'none'}")
        if any(not (0 < b <= 1 or (b > 1 and float(b).is_integer())) for b in self.budgets) or not self.budgets:
            raise BenchError("budgets must be fractions in (0, 1] or whole counts > 1; got "
                             f"{', '.join(f'{b:g}' for b in self.budgets) or 'none'}")
        # A repeat would train one cell twice into one folder and count it as two seeds.
        # Budgets are told apart by their cell folders' names ({budget:g}): 0.0100001 and 0.01 would share one.
        if len(set(self.methods)) < len(self.methods) or len({f"{b:g}" for b in self.budgets}) < len(self.budgets):
            raise BenchError(f"each method and budget once: got methods {', '.join(self.methods)} and budgets "
                             f"{', '.join(f'{b:g}' for b in self.budgets)}")
        for name in ("seeds", "epochs"):
            if getattr(self, name) < 1:
                raise BenchError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tune_widen < 0:
            raise BenchError(f"tune_widen must be >= 0, got {self.tune_widen}")
        if self.jobs < 1:
            raise BenchError(f"jobs must be >= 1, got {self.jobs}")
        if not 0 <= self.data_seed <= MAX_SEED:
            raise BenchError(f"data_seed must be in 0..{MAX_SEED}, got {self.data_seed}")
        try:  # finetune's own rules, said before any cell rather than by every cell
            FinetuneConfig(schedule=self.schedule, average_last=self.average_last, batch_size=self.batch_size,
                           max_length=self.max_length, prefix_init=self.prefix_init, keep_best=self.keep_best,
                           early_stop=self.early_stop)
        except ConfigError as exc:
            raise BenchError(str(exc)) from exc
        if self.shots < 0 or self.limit < 0:
            raise BenchError(f"--shots and --limit must be >= 0, got {self.shots} and {self.limit}")
        if self.lr and self.tune_lr:
            raise BenchError("give fixed learning rates or tune them, not both")
        stray = [m for m in self.lr if m not in self.methods]
        if stray or any(not v > 0 for v in self.lr.values()):
            raise BenchError(f"learning rates must be > 0 and for methods of the grid; got {self.lr}")
        if any(m not in self.methods for m in self.weight_decay) or any(not v >= 0 for v in self.weight_decay.values()):
            raise BenchError(f"weight decays must be >= 0 and for methods of the grid; got {self.weight_decay}")
        self._check_scores()

    def _check_scores(self) -> None:
        if self.tune_score and not self.tune_lr:
            raise BenchError("tune_score sweeps the row score with the learning rate: it needs tune_lr")
        if self.tune_each_budget and not self.tune_lr:
            raise BenchError("tune_each_budget sweeps the learning rate per budget: it needs tune_lr")
        if self.tune_spread and not self.tune_lr:
            raise BenchError("tune_spread sweeps the spread rows with the learning rate: it needs tune_lr")
        if self.tune_spread and self.spread_heads:
            raise BenchError("spread_heads already spreads every top-row method's rows: drop it or tune_spread")
        swept = [name for name, on in (("tune_score", self.tune_score), ("tune_spread", self.tune_spread)) if on]
        if swept and not any(m in SCORE_METHODS for m in self.methods):  # the bench review: accepted, did nothing
            raise BenchError(f"{' and '.join(swept)} only affect {' and '.join(SCORE_METHODS)}, which this grid does not "
                             f"run ({', '.join(self.methods)}): add one of them to the methods or drop {' and '.join(swept)}")
        if self.score and (self.tune_score or self.tune_spread):
            raise BenchError("give fixed row scores or tune them (tune_score, tune_spread), not both")
        stray = [m for m in self.score if m not in self.methods or m not in SCORE_METHODS]
        if stray or any(split_score(v)[0] not in SCORES for v in self.score.values()):
            raise BenchError(f"row scores must be among {', '.join(SCORES)} (each may end in {SPREAD_SUFFIX}) and for "
                             f"methods of the grid among {', '.join(SCORE_METHODS)}; got {self.score}")
        if self.spread_heads and any(split_score(v)[1] for v in self.score.values()):
            raise BenchError(f"spread_heads already spreads every top-row method's rows: drop {SPREAD_SUFFIX}")


def split_score(score: str) -> tuple[str, bool]:
    """(row score, spread over the heads) of a grid's score: ``taylor+spread`` -> ("taylor", True)."""
    if score.endswith(SPREAD_SUFFIX):
        return score[: -len(SPREAD_SUFFIX)], True
    return score, False


@dataclass(frozen=True)
class Cell:
    """One finetuning run of the grid."""

    method: str
    budget: float | None
    seed: int
    lr: float = 0.0
    """0 = the method's default learning rate."""
    score: str = ""
    """Row score of a SCORE_METHODS cell; '' = the default (folder names and commands stay as before)."""

    @property
    def name(self) -> str:
        budget = f"-b{self.budget:g}" if self.budget is not None else ""
        score = f"-{self.score}" if self.score else ""
        return f"{self.method}{score}{budget}-s{self.seed}"

    @property
    def row_score(self) -> str:
        """The row score the cell's mask was chosen by ('' for methods without a choice of score)."""
        return (self.score or SensitivityConfig.score) if self.method in SCORE_METHODS else ""


@dataclass
class BenchResult:
    out_dir: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    lrs: dict[str, float] = field(default_factory=dict)
    """Learning rate used per method (chosen by the sweep with tune_lr, else the default); a method whose budgets
    ran at different rates (tune_each_budget) has a key per budget instead, ``method@budget`` (rate_key)."""
    scores: dict[str, str] = field(default_factory=dict)
    """Row score used per method of SCORE_METHODS (chosen by the sweep with tune_score, else fixed or default),
    keyed like ``lrs``."""
    files: dict[str, Path] = field(default_factory=dict)
    comparison: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Differences between methods with their intervals (``bench_results.compare_methods``)."""
    tuning: pd.DataFrame | None = None
    """The learning-rate sweep with ``tune_lr`` (``tune_learning_rates``), else None."""

    def __repr__(self) -> str:  # the default nests three DataFrames' reprs
        cells = len(self.results)
        finished = int((self.results["status"] == "succeeded").sum()) if "status" in self.results else cells
        return (f"BenchResult({finished} of {cells} cells succeeded, {len(self.summary)} summary rows, "
                f"out_dir={str(self.out_dir)!r}; see .summary, .comparison, .files)")


Runner = Callable[[Cell, Path, Path, Path, Callable[[str], None]], int | None]
"""runner(cell, data_dir, cell_dir, log_path, report) trains one cell into cell_dir (report: status text); it may
return the cell process's exit code (an interrupt's marks the cell interrupted)."""
INTERRUPT_EXIT_CODES = (130, 143, -signal.SIGINT, -signal.SIGTERM)
"""Exit codes of a cell process stopped by Ctrl+C or kill: the CLI's own (130) or the signal's, before it ran."""


# ------------------------------------------------------------------------------------------------ data


def draw_note(cfg: BenchConfig) -> str:
    """With --shots: every seed trains on the same draw of rows, so the seeds' spread leaves out which rows were
    drawn (the bench review), which in few-shot work is often the larger part; '' without --shots."""
    if not cfg.shots:
        return ""
    return (f"--shots {cfg.shots}: every seed trains on the same {cfg.shots} rows per label (--data-seed "
            f"{cfg.data_seed}); the spread over seeds leaves out which rows were drawn (another --data-seed draws "
            "others)")


def stratified_cap(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """At most ``n`` rows, each label in proportion to its count and every label kept once when n allows."""
    if n <= 0 or len(frame) <= n:
        return frame.reset_index(drop=True)
    key = np.random.default_rng(seed).random(len(frame))
    labels = frame["label"].to_numpy()
    rank = pd.Series(key).groupby(labels).rank(method="first").to_numpy() - 1
    size = pd.Series(labels).map(pd.Series(labels).value_counts()).to_numpy()
    position = (rank + 0.5) / size  # a row's place inside its label: taking the lowest keeps proportions
    if n >= len(np.unique(labels)):
        position[rank == 0] = -1.0
    keep = np.sort(np.lexsort((key, position))[:n])
    return frame.iloc[keep].reset_index(drop=True)


def prepare_data(data: AnnotatedData, cfg: BenchConfig, out_dir: Path) -> tuple[Path, Path]:
    """Write the grid's data folder (after shots/limit) and the LR-tuning folder (test = validation).

    Returns:
        (data folder, tuning folder). The tuning folder never holds a test row: its "test" file is the
        validation split, which is carved from train when the data has none.
    """
    return write_grid_data(grid_splits(data, cfg), cfg, out_dir)


def grid_splits(data: AnnotatedData, cfg: BenchConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The (train, validation, test) rows the grid's cells read, after shots and limit."""
    train, val = data.train, data.validation
    if cfg.shots:
        train, val = few_shot(train, cfg.shots, cfg.data_seed), few_shot(val, cfg.shots, cfg.data_seed)
    if cfg.limit:
        train = stratified_cap(train, cfg.limit, cfg.data_seed)
        val = stratified_cap(val, validation_cap(val, cfg.limit), cfg.data_seed)
    return train, val, data.test


def validation_cap(val: pd.DataFrame, limit: int) -> int:
    """Validation rows kept under ``--limit``: a quarter of it, but at least one per label of validation.

    Why: with 4 labels, --limit 12 kept 3 validation rows, so the learning-rate sweep chose its rates on rows
    that left a label out (the bench review); ``stratified_cap`` keeps every label once when the cap allows.
    """
    return max(limit // 4, val["label"].nunique(), 1)


def splits_digest(splits: tuple[pd.DataFrame, ...]) -> str:
    """SHA-256 of the splits' text and label columns, as written: a resumed grid must read the rows its finished
    cells read (another --label-col, or the file edited in place, changes them)."""
    digest = hashlib.sha256()
    for frame in splits:
        digest.update(frame[["text", "label"]].to_csv(index=False).encode())
    return digest.hexdigest()


def write_grid_data(splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], cfg: BenchConfig,
                    out_dir: Path) -> tuple[Path, Path]:
    """``prepare_data``'s folders from ``grid_splits``."""
    train, val, test = splits
    folders = out_dir / "data", out_dir / "data_tune"
    _write_splits(folders[0], train, val, test)
    _write_splits(folders[1], train, few_shot(val, 1, cfg.data_seed), val)  # one row per label for epoch curves
    return folders


def _write_splits(folder: Path, train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in (("train", train), ("validation", val), ("test", test)):
        write_csv(frame[["text", "label"]], folder / f"{name}.csv")


# ------------------------------------------------------------------------------------------------ grid


def plan_cells(cfg: BenchConfig, lrs: dict[str, float] | None = None, scores: dict[str, str] | None = None) -> list[Cell]:
    """Every cell of the grid, method by method (budget None for methods without one). ``lrs`` and ``scores``
    are keyed by method, or by ``rate_key(method, budget)`` where a budget has its own."""
    lrs, scores = lrs or {}, {**cfg.score, **(scores or {})}
    cells = []
    for method in cfg.methods:
        budgets: tuple[float | None, ...] = cfg.budgets if method in BUDGET_METHODS else (None,)
        for b in budgets:
            key = rate_key(method, b)
            lr, score = lrs.get(key, lrs.get(method, 0.0)), scores.get(key, scores.get(method, ""))
            cells += [Cell(method, b, s, lr, _cell_score(score)) for s in range(cfg.seeds)]
    return cells


def rate_key(method: str, budget: float | None) -> str:
    """``sparse@0.05``: the key of a rate (or row score) chosen for one budget of a method."""
    return method if budget is None else f"{method}@{budget:g}"


def _cell_score(score: str) -> str:
    """'' for the default row score unspread (folder names and commands stay as they were before scores)."""
    return "" if score == SensitivityConfig.score else score


def finished(cell_dir: Path) -> bool:
    """True when the cell's metrics.json exists and says it succeeded."""
    return read_metrics(cell_dir).get("status") == "succeeded"


def stale_settings(cell: Cell, metrics: dict, epochs: int | None = None) -> list[tuple[str, Any, Any]]:
    """(setting, as trained, as planned) for each of lr, seed, method and epochs where a finished cell's
    metrics.json differs from the plan; settings it does not record are not judged.

    Why: a cell's folder name holds no rate, so a rerun whose sweep chose another rate (a sweep cell that failed
    the first time and wins now) would otherwise keep main cells trained at the old one.
    """
    from clm_explore.training import DEFAULT_LR

    planned = {"lr": cell.lr or DEFAULT_LR[cell.method], "seed": cell.seed, "method": cell.method, "epochs": epochs}
    stale = []
    for key, want in planned.items():
        had = metrics.get(key)
        if want is None or had is None:
            continue
        if not _same_setting(had, want):
            stale.append((key, had, want))
    return stale


def _same_setting(had: Any, want: Any) -> bool:
    """Rates compare with a relative tolerance (JSON and ``repr`` round trips), the rest exactly."""
    if isinstance(want, float):
        try:
            return math.isclose(float(had), want, rel_tol=1e-6)
        except (TypeError, ValueError):
            return False
    return had == want


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def planned_config(cell: Cell, cfg: BenchConfig) -> dict[str, Any]:
    """Every setting finetune records (clm_run.json's config) for ``cell``'s command, keyed by its path in that config
    ("mask.budget"), valued as finetune records them: the command read as finetune reads it. The rate, seed, method
    and epochs are ``stale_settings``' (metrics.json's), the device is the grid's to check (a cell may train
    elsewhere). Every setting, not a list of the options a grid sets: a default that changed between versions (the
    scoring's length, 64 then 32) kept an older version's cells beside new ones (the upgrade review)."""
    from clm_explore.cli.method_cmds import finetune_config
    from clm_explore.training import recorded_config

    command = finetune_command(cell, cfg, Path("data"), Path("cell"))
    planned = recorded_config(finetune_config(_cli_parser().parse_args(command[3:])))
    planned = json.loads(json.dumps(to_dict(planned)))  # lists, not tuples: as clm_run.json holds them
    return {key: value for key, value in _flat(planned).items() if key not in JUDGED_ELSEWHERE}


JUDGED_ELSEWHERE = ("lr", "seed", "method", "epochs", "device")
"""Settings ``planned_config`` leaves out: ``stale_settings`` judges the first four, and a cell may train on
another device than the grid names."""


@cache
def _cli_parser() -> Any:
    from clm_explore.cli import build_parser

    return build_parser()


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'mask': {'budget': 0.01}} -> {'mask.budget': 0.01}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(cell: Cell, cfg: BenchConfig, recorded: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, as trained, as planned) for each of ``planned_config`` where the config a finished cell recorded
    (clm_run.json's) differs; settings it does not record are not judged.

    Why: bench.json is checked only when a cell finished, and a cell process that outlived its killed bench could
    finish later with the old settings in a grid a rerun had recorded with new ones (the bench review: a cell
    trained at --max-length 32 kept in a grid of 48). The cell's own record says what it trained with.
    """
    differences = []
    for key, want in planned_config(cell, cfg).items():
        had: Any = recorded
        for part in key.split("."):
            had = had.get(part) if isinstance(had, dict) else None
        if had is not None and not _same_setting(had, want):
            differences.append((key, had, want))
    return differences


def _needs_run(cell: Cell, root: Path, cfg: BenchConfig | None) -> bool:
    """True for a cell not finished, or finished with settings the plan no longer has (said on stderr; its folder
    is set aside, not deleted, so a finished run is never lost and a failed rerun is not read as its success)."""
    cell_dir = root / cell.name
    if not finished(cell_dir):
        return True
    stale = stale_settings(cell, read_metrics(cell_dir), cfg.epochs if cfg else None)
    if cfg is not None:
        recorded = read_json_object(cell_dir / "clm_run.json").get("config")
        stale += config_differences(cell, cfg, recorded if isinstance(recorded, dict) else {})
    if not stale:
        return False
    had = ", ".join(f"{key}={_shown(value)}" for key, value, _ in stale)
    now = ", ".join(f"{key}={_shown(value)}" for key, _, value in stale)
    kept = set_aside(cell_dir)
    print(f"{root.name}/{cell.name} finished with {had}; the grid now gives it {now}: training it again (the old "
          f"run is kept in {kept.name})", file=sys.stderr, flush=True)
    return True


REPLACED_MARK = ".replaced-"
"""``<cell>.replaced-<n>``: a finished cell folder set aside because the grid trains that cell again (``set_aside``)."""


def set_aside(folder: Path) -> Path:
    """Rename a finished cell folder that will be trained again to ``<name>.replaced-<n>`` beside it (the lowest
    free n); returns the new path."""
    n = 1
    while (kept := folder.with_name(f"{folder.name}{REPLACED_MARK}{n}")).exists():
        n += 1
    return folder.rename(kept)


def finetune_command(cell: Cell, cfg: BenchConfig, data_dir: Path, cell_dir: Path) -> list[str]:
    """The ``clm-explore finetune`` command line of one cell."""
    cmd = [sys.executable, "-m", "clm_explore.cli", "finetune", "--data", str(data_dir), "--model", cfg.model,
           "--method", cell.method, "--epochs", str(cfg.epochs), "--seed", str(cell.seed),
           "--batch-size", str(cfg.batch_size), "--max-length", str(cfg.max_length), "--device", cfg.device,
           "--out", str(cell_dir), "--overwrite", "--json"]
    if cell.budget is not None:
        cmd += ["--budget", repr(cell.budget)]
    if cell.lr:
        cmd += ["--lr", repr(cell.lr)]
    score, spread = split_score(cell.score)
    if score:
        cmd += ["--score", score]
    if cfg.cold_head:
        cmd.append("--cold-head")
    if spread or (cfg.spread_heads and cell.method in SPREAD_METHODS):
        cmd.append("--spread-heads")
    if cfg.schedule != FinetuneConfig.schedule:
        cmd += ["--schedule", cfg.schedule]
    if cfg.average_last:
        cmd += ["--average-last", repr(cfg.average_last)]
    if cfg.keep_best:
        cmd.append("--keep-best")
    if cfg.early_stop:
        cmd += ["--early-stop", str(cfg.early_stop)]
    if cell.method == "prefix" and cfg.prefix_init != FinetuneConfig.prefix_init:
        cmd += ["--prefix-init", cfg.prefix_init]
    if cfg.weight_decay.get(cell.method):
        cmd += ["--weight-decay", repr(cfg.weight_decay[cell.method])]
    return cmd


def subprocess_runner(cfg: BenchConfig, pass_fds: tuple[int, ...] = ()) -> Runner:
    """Run each cell as a subprocess; stderr goes to the log, progress is read from progress.jsonl. With
    ``cfg.jobs`` > 1 each running cell holds one of ``cell_environments`` (its GPU or its threads). ``pass_fds``:
    file descriptors every cell process inherits (``cells_lock``'s)."""
    slots: queue.SimpleQueue[dict[str, str]] = queue.SimpleQueue()
    for env in cell_environments(cfg.jobs, cfg.device):
        slots.put(env)

    def run(cell: Cell, data_dir: Path, cell_dir: Path, log_path: Path, report: Callable[[str], None]) -> int:
        slot = slots.get()
        try:  # the cell records how many ran at once (provenance): its time is contended above one
            return _run_process(finetune_command(cell, cfg, data_dir, cell_dir),
                                {**slot, CELLS_AT_ONCE_ENV: str(cfg.jobs)}, cell_dir, log_path, report, pass_fds)
        finally:
            slots.put(slot)

    return run


def cell_environments(jobs: int, device: str, gpus: list[str] | None = None) -> list[dict[str, str]]:
    """The extra environment of each of ``jobs`` cell slots: one GPU each in turn where ``device`` may take any
    of several (``gpus``: the visible ones, found when None); else, below the CPU's cores, an equal share of
    them as threads (unless OMP_NUM_THREADS is set)."""
    if device in ("auto", "cuda"):
        gpus = _visible_gpus() if gpus is None else gpus
        if len(gpus) > 1:
            return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(jobs)]
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        return [{"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}] * jobs
    return [{}] * jobs


def _visible_gpus() -> list[str]:
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _run_process(cmd: list[str], env: dict[str, str], cell_dir: Path, log_path: Path,
                 report: Callable[[str], None], pass_fds: tuple[int, ...] = ()) -> int:
    """Run one cell's process to its end; its exit code. It inherits ``pass_fds`` (``cells_lock``'s, so it holds the
    grid's cells lock as long as it lives), and its pid and cell are written into each of them."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, pass_fds=pass_fds,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
        for fd in pass_fds:  # for the rerun refused while it runs, to name it (an append: cells side by side)
            os.write(fd, f"{proc.pid} {cell_dir.name}\n".encode())
        try:
            while proc.poll() is None:
                report(_cell_progress(cell_dir))
                time.sleep(0.5)
        except BaseException:  # interrupted (or told to stop): stop the cell we started, leave it unfinished
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    _log_how_it_ended(log_path, proc.returncode)
    return proc.returncode


def _log_how_it_ended(log_path: Path, code: int) -> None:
    """Append how a failed cell process ended to its log: a process the kernel killed (out of memory) writes nothing
    itself, and its log held only the data's warnings, which then read as the cell's error (the operations review).
    Interrupt codes are left to ``_run_cell``, which marks the cell interrupted, not killed."""
    if code == 0 or code in INTERRUPT_EXIT_CODES:
        return
    with open(log_path, "a") as log:  # after all the child wrote
        log.write(f"{exit_line(code)}\n")


def exit_line(code: int) -> str:
    """The log's line for a cell process's non-zero exit ``code`` (negative: the signal that killed it)."""
    if code >= 0:
        return f"cell exited with code {code}"
    try:
        name = f"{signal.Signals(-code).name} ({-code})"
    except ValueError:  # a number the signal module has no name for
        name = str(-code)
    why = ": out of memory, or killed by someone" if -code == signal.SIGKILL else ""  # the kernel's OOM killer's
    return f"cell killed by signal {name}{why}"


def _cell_progress(cell_dir: Path) -> str:
    last = last_step(cell_dir)
    return "preparing" if last is None else f"step {last['step']}/{last['total_steps']}"


LOG_EVERY_SECONDS = 60.0


class ProgressBar:
    """One status line on stderr: cells done, the running cell, elapsed time and an estimate of the rest.

    On a terminal the line is redrawn in place (at most once a second); elsewhere (a log file, CI) a line is
    printed when a cell starts and when it ends and, while it runs, at most every ``LOG_EVERY_SECONDS`` when its
    step moved on (a banking77 cell is 20 minutes of CPU: its log said nothing in between, the bench review); each
    cell counts its own minute (cells side by side, ``jobs`` > 1, take turns at the line).
    """

    def __init__(self, total: int, stream=None, width: int = 24, jobs: int = 1):
        self.total, self.done, self.width, self.jobs = total, 0, width, jobs
        self._lock = threading.Lock()  # cells running side by side (jobs > 1) report from their own threads
        self.stream = stream or sys.stderr
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self.ran: list[float] = []
        self._last: tuple[float, str | None] = (-math.inf, None)  # when the last line was shown, and its detail
        self._logged: dict[str, tuple[float, str]] = {}  # without a terminal, per cell: its last line's time, detail

    def show(self, label: str, detail: str = "", final: bool = False) -> None:
        with self._lock:
            self._show(label, detail, final)

    def _show(self, label: str, detail: str, final: bool) -> None:
        now, (then, shown) = time.perf_counter(), self._last
        if self.is_tty:
            due = now - then >= 1 or detail != shown
        else:  # a cell's first line at once (it starts), then its step at most once a LOG_EVERY_SECONDS
            cell_then, cell_shown = self._logged.get(label, (-math.inf, None))
            due = label not in self._logged or (now - cell_then >= LOG_EVERY_SECONDS and detail != cell_shown)
        if not (final or due):
            return
        self._last = (now, detail)
        self._logged[label] = (now, detail)
        filled = int(self.width * self.done / max(self.total, 1))
        rest = np.mean(self.ran) * (self.total - self.done) / self.jobs if self.ran else 0.0
        left = f", ~{_clock(rest)} left" if self.ran else ""
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label} {detail}"
        line = f"{line} ({_clock(now - self.started)}{left})"
        self.stream.write(f"\r{line:<100}" if self.is_tty else line + "\n")
        self.stream.flush()

    def advance(self, seconds: float | None) -> None:
        with self._lock:
            self.done += 1
            if seconds is not None:
                self.ran.append(seconds)

    def close(self) -> None:
        if self.is_tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


class CellStopped(BaseException):
    """Raised into a running cell's progress report when the grid stops (an interrupt while cells run side by
    side): its runner stops the cell's process, which stays unfinished for a rerun. A BaseException, like
    KeyboardInterrupt, so that it is not recorded as the cell's failure."""


def _mark_interrupted(cell_dir: Path, log: Path) -> None:
    if not finished(cell_dir):
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            out.write(f"\n{INTERRUPTED_LINE}\n")


def _run_cells(cells: list[Cell], root: Path, data_dir: Path, runner: Runner, bar: ProgressBar | None,
               jobs: int = 1, cfg: BenchConfig | None = None) -> None:
    """Run the cells not finished yet, ``jobs`` at a time, and again those that finished with other settings than
    the plan's (``stale_settings``, and ``config_differences`` against the grid ``cfg``; None = the rate, seed and
    method only). On an interrupt the running cells are stopped and the interrupt goes on to the caller."""
    todo = []
    for cell in cells:
        if _needs_run(cell, root, cfg):
            todo.append(cell)
        elif bar:
            bar.advance(None)
    _say_other_code([root / cell.name for cell in cells if cell not in todo], root)
    if jobs == 1:
        for cell in todo:
            _run_cell(cell, root, data_dir, runner, bar)
        return
    stop, futures = threading.Event(), []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:  # submitting inside: an interrupt may come while the first cells already run
            for cell in todo:
                futures.append(pool.submit(_run_cell, cell, root, data_dir, runner, bar, stop))
            pending = set(futures)
            while pending:  # wake up twice a second: a signal another thread took is then handled here
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise


UNRECORDED_CODE = "made before clm-explore recorded the code that made a run"
"""How the note names a cell whose clm_run.json records no provenance (an older version's)."""


def _say_other_code(kept: list[Path], root: Path) -> None:
    """Say (stderr) which finished cells kept for their settings were made by other code or packages: their figures
    may differ from this version's (a fix in training, a library's kernels), and a grid mixing both says so (the
    upgrade review: an upgraded bench kept an older version's cells beside new ones without a word)."""
    other = {}
    for cell_dir in kept:
        made = read_json_object(cell_dir / "clm_run.json").get("provenance")
        said = code_differences(made) if isinstance(made, dict) else [UNRECORDED_CODE]
        if said:
            other[cell_dir.name] = said
    if not other:
        return
    names = sorted(other)
    print(f"note: {len(names)} finished cell(s) in {root.parent.name}/{root.name} kept for their settings were made by other code or "
          f"packages ({'; '.join(other[names[0]])}): {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}. "
          "Their figures may differ from this version's; a new --out trains every cell with this one.",
          file=sys.stderr, flush=True)


def _run_cell(cell: Cell, root: Path, data_dir: Path, runner: Runner, bar: ProgressBar | None,
              stop: threading.Event | None = None) -> None:
    if stop is not None and stop.is_set():
        return
    cell_dir, log = root / cell.name, root.parent / "logs" / f"{root.name}-{cell.name}.log"
    label = f"{cell.name}" + (f" lr={cell.lr:.3g}" if cell.lr else "")

    def report(detail: str) -> None:
        if stop is not None and stop.is_set():
            raise CellStopped(cell.name)
        if bar:
            bar.show(label, detail)

    started = time.perf_counter()
    (cell_dir / PROGRESS_LOG).unlink(missing_ok=True)  # a run stopped before: its steps are not this run's
    if bar:
        bar.show(label)
    try:
        code = runner(cell, data_dir, cell_dir, log, report)
    except Exception as exc:  # one broken cell must not stop the grid; its row says why
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"{type(exc).__name__}: {exc}\n")
    except BaseException:  # the grid stopped while the cell ran: its row says so, not "failed"
        _mark_interrupted(cell_dir, log)
        raise
    else:  # Ctrl+C reaches the cells' processes too: one may end before its grid hears of it
        if code in INTERRUPT_EXIT_CODES:
            _mark_interrupted(cell_dir, log)
    if bar:
        bar.advance(time.perf_counter() - started)
        bar.show(label, "done" if finished(cell_dir) else "FAILED (see logs/)", final=True)


def tune_cells(cfg: BenchConfig) -> list[Cell]:
    """The sweep: per method, seed 0 at the middle budget, LR = default x LR_FACTORS (x TUNE_SCORES with
    tune_score, x spread or not with tune_spread, for SCORE_METHODS), the default first so that it wins ties."""
    from clm_explore.training import DEFAULT_LR

    middle = sorted(cfg.budgets)[len(cfg.budgets) // 2]
    cells: list[Cell] = []
    for m in cfg.methods:
        scores = TUNE_SCORES if cfg.tune_score and m in SCORE_METHODS else (cfg.score.get(m, ""),)
        if cfg.tune_spread and m in SCORE_METHODS:  # every score as scored first, then spread
            plain = tuple(s or SensitivityConfig.score for s in scores)
            scores = plain + tuple(s + SPREAD_SUFFIX for s in plain)
        budgets: tuple[float | None, ...] = (None,)
        if m in BUDGET_METHODS:
            budgets = tuple(sorted(cfg.budgets)) if cfg.tune_each_budget else (middle,)
        cells += [_TunedCell(m, b, 0, float(f"{DEFAULT_LR[m] * f:.3g}"), _cell_score(s))
                  for b in budgets for s in scores for f in LR_FACTORS]
    return cells


def tune_learning_rates(cfg: BenchConfig, out_dir: Path, tune_dir: Path, runner: Runner,
                        bar: ProgressBar | None = None) -> tuple[dict[str, float], dict[str, str], pd.DataFrame]:
    """Run the sweep of ``tune_cells``, widened past its edges (``tune_widen``); per method (per budget with
    ``tune_each_budget``) the best validation accuracy picks the rate (and score).

    Returns:
        (learning rate per method, row score per SCORE_METHODS method, both keyed by ``rate_key`` with
        ``tune_each_budget``; the sweep's table: a row per rate tried, ``chosen`` on the best, ``edge`` =
        "lowest" / "highest" where the chosen rate is still the sweep's edge).
    """
    cells = tune_cells(cfg)
    root = out_dir / "tune"
    _run_cells(cells, root, tune_dir, runner, bar, cfg.jobs, cfg)
    for _ in range(cfg.tune_widen):
        wider = widened_cells(cells, root)
        if not wider:
            break
        if bar:
            bar.total += len(wider)
        _run_cells(wider, root, tune_dir, runner, bar, cfg.jobs, cfg)
        cells += wider
    best, table = sweep_table(cells, root)
    chosen: dict[str, float] = {}
    scores: dict[str, str] = {}
    for (method, budget), cell in best.items():
        key = rate_key(method, budget) if cfg.tune_each_budget else method
        chosen[key] = cell.lr if cell else 0.0
        if cell is None:  # said, or the default rate would pass for a choice
            print(f"warning: no learning-rate sweep cell of {key} finished; its cells train at "
                  "the default rate (a rerun retries the sweep)", file=sys.stderr, flush=True)
        elif _all_tied(table, method, budget):  # the first tried (the default) wins ties: no choice was made
            print(f"warning: every rate the sweep tried for {key} scored the same validation accuracy; the default "
                  "rate stands by the tie, not as a choice (more validation rows would tell them apart)",
                  file=sys.stderr, flush=True)
        if cell and method in SCORE_METHODS:
            scores[key] = cell.row_score
    return chosen, scores, table


def _all_tied(table: pd.DataFrame, method: str, budget: float | None) -> bool:
    """Whether every sweep cell of (method, budget) finished and all scored alike (and there were several): then
    the default, tried first, won by the tie."""
    rows = _sweep_rows(table, method, budget)
    scored = rows["val_accuracy"].dropna()
    return len(rows) > 1 and len(scored) == len(rows) and scored.nunique() == 1


def _sweep_rows(table: pd.DataFrame, method: str, budget: float | None) -> pd.DataFrame:
    return table[(table["method"] == method) & ((table["budget"] == budget) if budget is not None
                                                else table["budget"].isna())]


def sweep_table(cells: list[Cell], root: Path) -> tuple[dict[tuple[str, float | None], Cell | None], pd.DataFrame]:
    """The sweep's best cell per (method, budget) among those finished, and its table (a row per rate tried,
    ``val_accuracy`` blank where the cell did not finish; on the chosen row, ``chosen_by``: 'tie' when every rate
    scored alike and the default stood by the tie, 'part' when some of its sweep did not finish, else '')."""
    groups = dict.fromkeys((c.method, c.budget) for c in cells)
    best = {(m, b): _best_cell(_sweep_of(m, b, cells), root) for m, b in groups}
    winners = {cell for cell in best.values() if cell is not None}
    table = pd.DataFrame([{"method": c.method, "budget": c.budget, "lr": c.lr, "score": c.row_score,
                           "val_accuracy": read_metrics(root / c.name).get("accuracy"), "chosen": c in winners,
                           "edge": _edge(c, cells) if c in winners else ""} for c in cells])
    # The bench review: a tie, or a sweep stopped after one of its rates, read as a real choice in tuning.csv.
    table["chosen_by"] = ""
    for cell in winners:
        rows = _sweep_rows(table, cell.method, cell.budget)
        how = "part" if rows["val_accuracy"].isna().any() else "tie" if _all_tied(table, cell.method, cell.budget) else ""
        table.loc[rows.index[(rows["lr"] == cell.lr) & (rows["score"] == cell.row_score)], "chosen_by"] = how
    return best, table.sort_values(["method", "budget", "score", "lr"], kind="stable").reset_index(drop=True)


def widened_cells(cells: list[Cell], root: Path) -> list[Cell]:
    """One more sweep cell per (method, budget) whose best rate so far is the lowest or highest it tried (with the
    best cell's row score): a factor LR_STEP further that way. Empty when every best lies inside its sweep."""
    wider: list[Cell] = []
    for method, budget in dict.fromkeys((c.method, c.budget) for c in cells):
        best = _best_cell(_sweep_of(method, budget, cells), root)
        edge = _edge(best, cells) if best else ""
        if edge:
            lr = best.lr * (LR_STEP if edge == "highest" else 1 / LR_STEP)
            wider.append(_TunedCell(method, best.budget, 0, float(f"{lr:.3g}"), best.score))
    return wider


def _best_cell(cells: list[Cell], root: Path) -> Cell | None:
    """The cell with the best validation accuracy (the earliest on ties: the default rate first); None if none
    finished."""
    scored = [(c, read_metrics(root / c.name).get("accuracy")) for c in cells]
    scored = [(c, a) for c, a in scored if a is not None and not math.isnan(a)]
    return max(scored, key=lambda pair: pair[1])[0] if scored else None


def _sweep_of(method: str, budget: float | None, cells: list[Cell]) -> list[Cell]:
    return [c for c in cells if c.method == method and c.budget == budget]


def _edge(best: Cell, cells: list[Cell]) -> str:
    """"highest" / "lowest" when ``best`` has the highest / lowest rate tried for its method and budget with its
    row score."""
    rates = [c.lr for c in _sweep_of(best.method, best.budget, cells) if c.score == best.score]
    return "highest" if best.lr == max(rates) else "lowest" if best.lr == min(rates) else ""


@dataclass(frozen=True)
class _TunedCell(Cell):
    @property
    def name(self) -> str:
        return f"{super().name}-lr{self.lr:.3g}"


def run_grid(data_path: str | Path, cfg: BenchConfig, out_dir: str | Path, data_cfg: DataConfig | None = None,
             runner: Runner | None = None, progress: bool = True) -> BenchResult:
    """Run (or resume) the grid and write results, statistics and the report into ``out_dir``.

    Args:
        data_path: a data file or folder (``load_data``); splits are carved the usual way.
        cfg: the grid (a BenchConfig or a dict of its fields); ``cfg.data`` is filled with ``data_path`` when empty.
        out_dir: the grid's folder: its cells, results.csv, comparison.csv and report.html; a grid there resumes.
            Each cell's run is also listed in the run registry (``$CLM_EXPLORE_RUNS``, else ``./runs``), as a
            ``finetune`` run is: the app's Runs and Compare pages show it.
        data_cfg: how the data is read (columns, splits), as ``load_data`` takes it; None: the defaults.
        runner: trains one cell; defaults to a ``clm-explore finetune`` subprocess.
        progress: show a progress line on stderr.

    Raises:
        BenchError: ``out_dir`` holds a grid made with different data, model or training settings.
    """
    if not isinstance(data_path, str | Path):  # each cell's subprocess reads the data from its path
        raise TypeError(f"run_grid takes the data's file or folder (its path); got {type(data_path).__name__}")
    cfg = config_from(cfg, BenchConfig, "run_grid's cfg")
    data_cfg = config_from(data_cfg, DataConfig, "run_grid's data_cfg")
    if data_cfg.shots or data_cfg.shots_seed:  # drawn here, then again by BenchConfig.shots, unrecorded (the diff review)
        raise BenchError(f"run_grid draws its rows with BenchConfig(shots=, data_seed=) (bench --shots K --data-seed "
                         f"S), recorded in bench.json; data_cfg's shots={data_cfg.shots}, shots_seed="
                         f"{data_cfg.shots_seed} would draw before it, unrecorded. Move them to the BenchConfig.")
    out_dir = Path(out_dir)
    if not cfg.data:
        cfg = BenchConfig(**{**asdict(cfg), "data": str(Path(data_path).resolve())})
    if (model := recorded_model(cfg.model)) != cfg.model:  # the cells train from it however the grid was started
        cfg = BenchConfig(**{**asdict(cfg), "model": model})
    data = load_data(data_path, data_cfg)  # first: a mistyped --data leaves no bench.json
    check_out_dir(out_dir, data_path)
    splits = grid_splits(data, cfg)
    check_grid_rows(splits[0], cfg)
    if runner is None:  # each cell's finetune registers its run: a registry it cannot use failed every cell in turn
        RunStore().check_writable()
    check_model_and_device(cfg)  # before bench.json: a refused grid leaves the out folder as it was, and a
    check_budgets(cfg, data.labels)  # mistyped model or device is said once, not by every cell
    _refuse_a_file(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with grid_lock(out_dir), cells_lock(out_dir) as lock_fd:
        runner = runner or subprocess_runner(cfg, pass_fds=() if lock_fd is None else (lock_fd,))
        return _run_locked_grid(data_path, data, splits, cfg, out_dir, runner, progress)


GRID_LOCK = ".bench.lock"
"""The file a bench holds locked while it runs a grid in its folder (``runs.owner_lock``)."""


def grid_lock(out_dir: Path) -> Any:
    """The grid's lock, held while a bench runs it: a second bench on the same --out, or a resume started while the
    first still runs, is refused. Both ran every cell (the concurrency review): each refused the cells the other
    was writing and marked them failed though they succeeded, clobbered the other's logs, and retrained cells the
    other had finished."""
    path = out_dir / GRID_LOCK
    return owner_lock(path, lambda: BenchError(
        f"Another bench is running the grid in {out_dir}{lock_owner(path)}: wait for it to end (a rerun then resumes "
        "what it left), stop it, or give this one another --out."))


def _run_locked_grid(data_path: str | Path, data: Any, splits: Any, cfg: BenchConfig, out_dir: Path,
                     runner: Runner, progress: bool) -> BenchResult:
    """``run_grid`` once its checks passed and its lock is held."""
    _check_resume(out_dir, cfg, splits_digest(splits))
    for note in (*data.notes, shots_note(data.train, cfg.shots), draw_note(cfg), limit_note(splits[0], cfg),
                 budgets_note(cfg)):
        if progress and note:
            print(f"note: {note}", file=sys.stderr)
    data_dir, tune_dir = write_grid_data(splits, cfg, out_dir)
    lrs: dict[str, float] = dict(cfg.lr)
    tuning = None
    n_tune = len(tune_cells(cfg)) if cfg.tune_lr else 0
    bar = ProgressBar(n_tune + len(plan_cells(cfg)), jobs=cfg.jobs) if progress else None
    cells = plan_cells(cfg, lrs)
    try:
        if cfg.tune_lr:
            lrs, scores, tuning = tune_learning_rates(cfg, out_dir, tune_dir, runner, bar)
            cells = plan_cells(cfg, lrs, scores)
        _run_cells(cells, out_dir / "cells", data_dir, runner, bar, cfg.jobs, cfg)
    except KeyboardInterrupt:
        if cfg.tune_lr and tuning is None:  # stopped in the sweep: its finished cells are shown too
            tuning = sweep_table(tune_cells(cfg), out_dir / "tune")[1]
        write_outputs(out_dir, cells, lrs, tuning)  # what finished so far; a rerun resumes
        raise
    finally:
        if bar:
            bar.close()
    if progress and (note := left_out_note(out_dir / "cells", cells)):
        print(f"note: {note}", file=sys.stderr)
    return write_outputs(out_dir, cells, lrs, tuning)


CELLS_LOCK = ".bench.cells.lock"
"""The file a bench holds locked while it runs a grid and passes, open, to every cell process it starts, so that a
cell process which outlives its bench keeps it locked until it ends (``cells_lock``)."""


@contextmanager
def cells_lock(out_dir: Path) -> Iterator[int | None]:
    """Hold ``out_dir``'s CELLS_LOCK (taken under ``grid_lock``); yields its file descriptor, for the cell processes
    to inherit (None where ``fcntl`` is missing: Windows).

    Why: a bench killed with SIGKILL (or its terminal closed) loses ``grid_lock`` but leaves its running cell
    process training; a rerun with other settings then recorded them in bench.json while the orphan went on to
    finish its cell with the old ones (the bench review: a --max-length 32 cell in a grid of 48). An flock belongs
    to the open file, which the cell processes share: while one lives, the rerun is refused here.

    Raises:
        BenchError: a cell process of an earlier bench still holds it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield None
        return
    path = out_dir / CELLS_LOCK
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(_orphan_message(out_dir, path)) from None
        handle.truncate(0)  # the cell processes it names ended: the lock was free
        try:
            yield handle.fileno()
        finally:  # under grid_lock, so no other bench waits on this file
            path.unlink(missing_ok=True)


def _orphan_message(out_dir: Path, path: Path) -> str:
    pids = _living_cell_pids(path)
    named = ", ".join(f"pid {pid} ({cell})" for pid, cell in pids) or "its pid was not recorded"
    stop = f"stop it (kill {' '.join(str(pid) for pid, _ in pids)})" if pids else "stop it"
    return (f"A cell process of an earlier bench on {out_dir} is still running ({named}): that bench was killed "
            f"and left it training, and it may finish its cell with that bench's settings. Wait for it to end or "
            f"{stop}, then run the bench again.")


def _living_cell_pids(path: Path) -> list[tuple[int, str]]:
    """(pid, cell) of the cell processes ``path`` names (``_run_process`` writes them) that still run."""
    living = []
    with suppress(OSError):
        for line in path.read_text().splitlines():
            pid, _, cell = line.partition(" ")
            if pid.isdigit() and _alive(int(pid)):
                living.append((int(pid), cell))
    return living


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def left_out_note(cells_dir: Path, cells: list[Cell]) -> str:
    """A sentence when ``cells_dir`` holds finished cells this grid does not plan (an earlier run of the folder with
    more seeds, budgets or methods): the tables and report hold this grid's cells only, which a smaller rerun shrank
    without a word (the bench review); '' when there are none."""
    planned = {cell.name for cell in cells}
    # Cells set aside as trained with older settings (``set_aside``) are no other grid's: said once, when set aside
    # (the bench review: every rerun told to "rerun with the seeds, budgets and methods that made them").
    others = sorted(d.name for d in cells_dir.iterdir() if d.is_dir() and d.name not in planned
                    and REPLACED_MARK not in d.name and finished(d)) if cells_dir.is_dir() else []
    if not others:
        return ""
    return (f"{len(others)} finished cell(s) in {cells_dir} are not in this grid ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}): the tables and report hold this grid's cells only; rerun with the "
            "seeds, budgets and methods that made them to list them again")


def check_out_dir(out_dir: Path, data_path: str | Path) -> None:
    """Refuse an ``out_dir`` that is a run folder, the run registry's root, or the data itself (or holds it): the
    grid writes cells/, data/ and its tables into it, as ``finetune`` and ``report`` refuse to write there."""
    from clm_explore.runs import default_root

    out, data = Path(out_dir).resolve(), Path(data_path).resolve()
    if (out / "clm_run.json").is_file():
        raise BenchError(f"{out_dir} is a run folder (it holds clm_run.json); give the grid a folder of its own (--out).")
    if out == default_root().resolve():
        raise BenchError(f"{out_dir} is the run registry's folder; give the grid a folder of its own (--out).")
    if out == data or out in data.parents:
        raise BenchError(f"{out_dir} holds the data ({data_path}); give the grid a folder of its own (--out).")


MIN_ROWS_PER_LABEL = 2
"""Training rows per label a cell needs on average (``data.load_data`` refuses fewer)."""


def check_grid_rows(train: pd.DataFrame, cfg: BenchConfig) -> None:
    """Refuse shots or a limit that leave the cells too few training rows, before any cell fails on its own with
    advice about the label column."""
    labels = train["label"].nunique()
    if len(train) >= MIN_ROWS_PER_LABEL * labels:
        return
    cut = " and ".join(x for x in (f"--shots {cfg.shots}" if cfg.shots else "",
                                   f"--limit {cfg.limit}" if cfg.limit else "") if x)
    raise BenchError(f"{cut or 'the data'} leaves {len(train)} training rows for {labels} labels; every cell needs "
                     f"at least {MIN_ROWS_PER_LABEL} per label ({MIN_ROWS_PER_LABEL * labels} rows): "
                     + ("raise --shots or --limit." if cut else "add rows."))


def limit_note(train: pd.DataFrame, cfg: BenchConfig) -> str:
    """A sentence when --limit cut the --shots rows further, else ''."""
    labels = train["label"].nunique()
    if not (cfg.shots and cfg.limit) or len(train) >= cfg.shots * labels:
        return ""
    return (f"--limit {cfg.limit} keeps {len(train)} of the few-shot rows: about {len(train) / max(labels, 1):.1f} "
            f"per label, not --shots {cfg.shots}")


def budgets_note(cfg: BenchConfig) -> str:
    """A sentence when budgets were asked for a grid whose methods take none, else ''."""
    if any(m in BUDGET_METHODS for m in cfg.methods) or tuple(cfg.budgets) == BenchConfig.budgets:
        return ""
    return (f"--budgets {','.join(f'{b:g}' for b in cfg.budgets)} is unused: none of {', '.join(cfg.methods)} "
            f"takes a budget (those that do: {', '.join(sorted(BUDGET_METHODS))})")


def check_model_and_device(cfg: BenchConfig) -> None:
    """The model source and device every cell will use, checked once (a missing folder, a GPU this machine lacks)."""
    from clm_explore.modeling import resolve_device, resolve_source

    resolve_source(cfg.model)
    resolve_device(cfg.device)


def check_budgets(cfg: BenchConfig, labels: list[str]) -> None:
    """Refuse a budget that some budgeted method cannot run on ``cfg.model`` (above the backbone, below the cheapest
    row) before any sweep or cell, as ``finetune`` refuses it; otherwise every cell would fail on its own, minutes in.

    Raises:
        BenchError: naming the budget, the method and why.
    """
    from clm_explore.modeling import load_model
    from clm_explore.training import check_runnable

    methods = [m for m in cfg.methods if m in BUDGET_METHODS]
    if not methods:
        return
    loaded = load_model(cfg.model, labels)
    for budget in cfg.budgets:
        for method in methods:
            try:  # every budgeted method is a row method or whole layers: check_runnable checks its budget
                check_runnable(FinetuneConfig(method=method, mask=MaskConfig(budget=budget)), loaded)
            except ConfigError as exc:
                raise BenchError(f"--budgets {budget:g} cannot run {method} on {cfg.model}: {exc}") from exc


def _refuse_a_file(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BenchError(f"{out_dir} is a file; a grid's output is a folder. Choose another --out.")


def recorded_model(source: str) -> str:
    """A model source as a grid records and compares it: a folder or file as its absolute path, a name (MODEL_NAMES)
    or a source that names nothing as given.

    Why: a grid started with ``--model g1/cells/full-s0`` was refused when resumed with that folder's absolute path,
    the same model, as another model (the bench review).
    """
    if source in MODEL_NAMES:
        return source
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


GRID_FORMAT = "format"
"""bench.json's key for the format of the grid it describes (BENCH_FORMAT when written)."""
BENCH_FORMAT = 1
"""Raised when a grid folder changes so that an older version would misread it; a newer format is refused."""


def _check_resume(out_dir: Path, cfg: BenchConfig, digest: str = "") -> None:
    """Refuse an ``out_dir`` whose finished cells another grid made (other training settings, other rows:
    ``digest`` is ``splits_digest``, or a model folder whose files changed: ``model_fingerprint``); then record this
    grid in its bench.json."""
    _refuse_a_file(out_dir)
    grid_marks = ("bench.json", "cells", "tune")  # a grid folder keeps its cells when its bench.json was deleted
    others = out_dir.is_dir() and any(entry.name not in (GRID_LOCK, CELLS_LOCK) for entry in out_dir.iterdir())
    if others and not any((out_dir / mark).exists() for mark in grid_marks):
        raise BenchError(f"{out_dir} holds other files and no grid (no bench.json or cells): a grid would write its "
                         "cells, logs and report among them. Choose a new or empty folder for --out.")
    path, model_files = out_dir / "bench.json", model_fingerprint(cfg.model)
    written = _saved_config(path).get(GRID_FORMAT) if path.is_file() else None
    if isinstance(written, int) and written > BENCH_FORMAT:
        raise BenchError(f"{out_dir} holds a grid written by a newer clm-explore (bench.json's format "
                         f"{written}, this version's {BENCH_FORMAT}): its cells may hold "
                         "settings this version does not know. Upgrade clm-explore, or choose another --out.")
    if path.is_file() and _any_finished(out_dir):  # with nothing finished, nothing can mismatch: the grid starts over
        before, now = _saved_config(path), asdict(cfg)
        before["model"] = recorded_model(str(before.get("model", BenchConfig.model)))  # as recorded from now on
        if before.get(DATA_DIGEST, digest) != digest:  # grids saved before the digest existed are trusted
            # the draw's own options, named where they differ (the bench review: "--shots or --limit" left it open)
            drawn = [f"--{k.replace('_', '-')} {before[k]} there, {now[k]} now" for k in ("shots", "limit", "data_seed")
                     if k in before and before[k] != now[k]]
            why = "; ".join(drawn) if drawn else ("another --text-col or --label-col, other --shots or --limit, the "
                                                 "data file changed since, or clm-explore reads it otherwise now: "
                                                 "whole-number labels written 3.0 as 3, near-copies kept together "
                                                 "in a carved test split, a validation row per label under --limit")
            raise BenchError(f"{out_dir} holds a grid trained on other rows ({why}); its finished cells would not "
                             "match. Choose another --out, or delete that folder.")
        # Rates only matter for the methods both grids hold: a rerun with fewer (or other) methods
        # resumes as long as the rates of the methods it shares with the finished cells agree.
        shared = sorted(set(before.get("methods", ())) & set(cfg.methods))
        for grid in (before, now):  # as the cells resolve them: a rate or score left out is the method's default
            grid["lr"], grid["score"] = _resolved_rates(grid, shared), _resolved_scores(grid, shared)
            grid["weight_decay"] = {m: v for m, v in (grid.get("weight_decay") or {}).items() if m in shared and v}
        # A grid written before a training field existed ran at that field's default (its data is unknown).
        defaults = {k: v for k, v in asdict(BenchConfig()).items() if k in SAME_CELLS and k != "data"}
        before = {**defaults, **LEGACY_DEFAULTS, **before}
        sweeps = before["tune_lr"] and now["tune_lr"]
        for grid in (before, now):  # how the sweep goes only matters where both grids sweep (else tune_lr is said)
            if not sweeps:
                grid.update(tune_widen=0, tune_each_budget=False)
            if "prefix" not in shared:  # where the prefix starts only matters to prefix cells
                grid["prefix_init"] = FinetuneConfig.prefix_init
        changed = [k for k in SAME_CELLS if k in before and before[k] != now[k]]
        if changed:
            said = "; ".join(f"`{k}` {_shown(before[k])} there, {_shown(now[k])} now" for k in changed)
            raise BenchError(f"{out_dir} holds a grid with other settings ({said}); its finished cells would not "
                             "match. Choose another --out, or delete that folder.")
        if before.get(MODEL_DIGEST, model_files) != model_files:  # grids saved before the fingerprint are trusted
            raise BenchError(f"the model files in {cfg.model} changed (sizes or modification times) since {out_dir}'s "
                             "finished cells trained from them; they would not match. Choose another --out, or delete "
                             "that folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    # atomic: a grid killed while writing leaves the old file, never half of one
    write_json_atomic(path, {**asdict(cfg), DATA_DIGEST: digest, MODEL_DIGEST: model_files, GRID_FORMAT: BENCH_FORMAT,
                             "code": {k: v for k, v in provenance(cfg.model).items() if k in ("code", "packages")}})


def _any_finished(out_dir: Path) -> bool:
    """Whether any grid or sweep cell under ``out_dir`` finished."""
    return any(finished(cell) for part in ("cells", "tune") for cell in (out_dir / part).glob("*") if cell.is_dir())


def _resolved_rates(grid: dict[str, Any], methods: list[str]) -> dict[str, float]:
    from clm_explore.training import DEFAULT_LR

    fixed = grid.get("lr") or {}
    return {m: float(fixed.get(m, DEFAULT_LR[m])) for m in methods}


def _resolved_scores(grid: dict[str, Any], methods: list[str]) -> dict[str, str]:
    fixed = grid.get("score") or {}
    return {m: fixed.get(m) or SensitivityConfig.score for m in methods if m in SCORE_METHODS}


def _saved_config(path: Path) -> dict[str, Any]:
    """The config a grid saved in bench.json; a file that cannot be read is a BenchError saying what to do."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        saved, why = None, str(exc)
    else:
        why = "not a JSON object"
    if not isinstance(saved, dict):
        raise BenchError(f"{path} cannot be read ({why}), so this grid cannot be checked against the one that made "
                         f"{path.parent}'s cells. Choose another --out or delete that folder; if this very grid made it, "
                         "deleting bench.json alone resumes it (its finished cells are then trusted).")
    return saved


# --------------------------------------------------------------------------------------------- outputs


def write_outputs(out_dir: Path, cells: list[Cell], lrs: dict[str, float],
                  tuning: pd.DataFrame | None = None) -> BenchResult:
    """results.csv, summary.csv, comparison.csv, masks.csv, overlap.csv (+ tuning.csv) and report.html from the
    cell folders."""
    results = collect_results(out_dir, cells)
    summary, comparison = summarise(results), compare_methods(results)
    masks, overlap = mask_statistics(out_dir, results), mask_overlap(out_dir, results)
    tables = {"results": results, "summary": summary, "comparison": comparison, "masks": masks, "overlap": overlap}
    files = {name: out_dir / f"{name}.csv" for name in tables}
    # Each through a rename: a reader (a notebook polling results.csv) never sees half a table.
    for name, frame in tables.items():
        write_text_atomic(files[name], frame.to_csv(index=False))
    if tuning is not None:
        files["tuning"] = out_dir / "tuning.csv"
        write_text_atomic(files["tuning"], tuning.to_csv(index=False))
    files["report"] = out_dir / "report.html"
    write_text_atomic(files["report"], render_report(results, summary, masks, overlap, tuning,
                                             json.loads((out_dir / "bench.json").read_text()), comparison))
    ran = results.dropna(subset=["lr"])
    used = _keyed_by_method(zip(ran["method"], ran["budget"], ran["lr"].astype(float), strict=True))
    scores = _keyed_by_method((c.method, c.budget, c.row_score) for c in cells if c.row_score)
    ran_methods = {key.partition("@")[0] for key in used}
    unfinished = {k: v for k, v in lrs.items() if k.partition("@")[0] not in ran_methods}
    return BenchResult(out_dir, results, summary, {**unfinished, **used}, scores, files, comparison, tuning)


def _keyed_by_method(values: Iterable[tuple[str, float | None, Any]]) -> dict[str, Any]:
    """{method: value} from (method, budget, value) triples; a method whose budgets differ in value gets a key per
    budget instead (``rate_key``)."""
    per_method: dict[str, dict[str, Any]] = {}
    for method, budget, value in values:
        budget = None if budget is None or (isinstance(budget, float) and math.isnan(budget)) else budget
        per_method.setdefault(method, {})[rate_key(method, budget)] = value
    keyed: dict[str, Any] = {}
    for method, by_budget in per_method.items():
        distinct = set(by_budget.values())
        keyed.update({method: distinct.pop()} if len(distinct) == 1 else by_budget)
    return keyed
