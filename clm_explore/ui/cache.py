"""The only place with ``st.cache_*``: cached calls into the library, keyed by strings and configs.

Keys are (model source, the model folder's version, data choice, config): strings and frozen dataclasses, never
model objects.
Cached models are shared by every session and rerun, so nothing may change them; library calls that
modify a model (sensitivity warms up the head) get a fresh copy loaded inside the cached function.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import streamlit as st

from clm_explore.changes import WeightChanges
from clm_explore.config import (
    DataConfig,
    LabelAuditConfig,
    MaskConfig,
    MiningConfig,
    SensitivityConfig,
    to_dict,
)
from clm_explore.data import (
    AnnotatedData,
    DataError,
    DataReport,
    column_names,
    data_report,
    load_data,
    load_upload,
)
from clm_explore.doctor import device_setting
from clm_explore.jobs import KeyedTask, KeyedTasks
from clm_explore.label_issues import LabelIssues, find_label_issues
from clm_explore.layer_views import HeadAttention, LayerSimilarity
from clm_explore.masks import MaskSelection, select_mask
from clm_explore.mining import MergeReport, TaskTokens, adaptive_tokenization, mine_task_tokens
from clm_explore.modeling import (
    LoadedModel,
    load_model,
    release_gpu_memory,
    source_positions,
    unsupported_reason,
)
from clm_explore.provenance import model_version
from clm_explore.runs import UPLOADS_NAME, RunStore, folder_bytes, trained_max_length
from clm_explore.sensitivity import SensitivityReport, compute_sensitivity
from clm_explore.serverlog import server_logger
from clm_explore.training import DEFAULT_MERGE_TOKENS
from clm_explore.ui import score_cache, state
from clm_explore.ui.state import DataChoice

T = TypeVar("T")


HEAVY_AT_ONCE = 1
"""Page computations that load a model and pass over many rows (scoring, the merge measured, weight changes, CKA, the
case study, the report) run this many at a time on the server, whichever sessions ask; the others wait their turn
under their spinner (a page waiting cannot change until its turn has come and gone). In page threads,
outside the jobs' queue, several sessions' would otherwise run side by side, each with a model in memory, and take
the CPU (or GPU) from the jobs (the security review)."""
_HEAVY = threading.BoundedSemaphore(HEAVY_AT_ONCE)


@contextlib.contextmanager
def heavy_work() -> Iterator[None]:
    """Hold one of the server's ``HEAVY_AT_ONCE`` slots for a heavy page computation."""
    with _HEAVY:
        yield


@contextlib.contextmanager
def turn_note() -> Iterator[None]:
    """Around a page's call of a heavy computation: where another computation holds the server's slot (another
    session's, or this one's from a page left meanwhile), a note says so until the call returns (the multi-session
    review: a page waited 35 s under its own spinner, with no word of another's computation). On a cache hit the
    note, if any, goes at once."""
    if _HEAVY.acquire(blocking=False):
        _HEAVY.release()
        yield
        return
    note, started = st.empty(), time.monotonic()
    note.info("Another computation (scoring, weight changes, layer comparison or a report: another session's, or "
              "one this session left running) is under way on this server: this page's starts when it ends. Pages "
              "compute one at a time, so that training jobs keep the processor.")
    try:
        yield
    finally:  # said once it is over too, where it waited: a long result is not this page's own slowness
        took = time.monotonic() - started
        if took < TURN_NOTED_SECONDS:  # a cached result: nothing waited (the diff review)
            note.empty()
        else:
            note.caption(f"This took {took:.0f} s, another computation on the server first.")


TURN_NOTED_SECONDS = 1.0
"""``turn_note`` says how long a call took only from this long: a cache hit returns at once."""


@st.cache_resource(show_spinner=False)
def run_store(root: str) -> RunStore:
    return RunStore(root)


def _per_model_version(cached: Callable[..., T]) -> Callable[..., T]:
    """``cached(source, version, *args)`` called as ``f(source, *args)``: the model folder's files (their names,
    sizes and times, ``state.model_version``) are part of the key, so that a model saved again into the same folder
    while the server runs is loaded again, not served from the cache (a named model has one version)."""

    @functools.wraps(cached)
    def call(source: str, *args: Any, **kwargs: Any) -> T:
        return cached(source, state.model_version(source), *args, **kwargs)

    call.clear = cached.clear  # type: ignore[attr-defined]
    return call


@_per_model_version
@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def model(source: str, version: str, labels: tuple[str, ...]) -> LoadedModel:
    """The model and tokenizer of ``source`` with a head for ``labels``. Shared: read only."""
    return load_model(source, list(labels), seed=0)


@_per_model_version
@st.cache_data(show_spinner=False, max_entries=32)
def model_positions(source: str, version: str) -> int | None:
    """The sub-tokens a text may take in the session's model (``modeling.source_positions``: its config alone)."""
    return source_positions(source)


@_per_model_version
@st.cache_data(show_spinner="Checking the model…", max_entries=32)
def unsupported_model(folder: str, version: str) -> str:
    """Why the sidebar's model folder cannot be used ('' when it can), from its config alone (no weights)."""
    return unsupported_reason(folder)


@_per_model_version
@st.cache_data(show_spinner="Counting the sub-tokens of the texts…", max_entries=16)
def text_lengths(source: str, version: str, choice: DataChoice) -> pd.Series:
    """Sub-tokens per text (the model's markers included), counted up to ``LENGTH_COUNTED`` (a longer text counts
    one more: its length is not needed, only that a run cuts it), over every split (a seeded sample of
    ``LENGTH_SAMPLE`` texts above that): the Data page says how many a run would cut. The tokenizer alone is
    loaded, a fresh one (not the shared model's: a fast tokenizer that two threads set truncation on at once
    fails); texts are cut and tokenized in chunks (``batches.tokenized``), as one upload's long texts took
    gigabytes."""
    from clm_explore.batches import sub_token_lengths
    from clm_explore.modeling import load_tokenizer

    annotated = data(choice)
    texts = pd.concat([annotated.split(split)["text"] for split in ("train", "validation", "test")])
    if len(texts) > LENGTH_SAMPLE:
        texts = texts.sample(LENGTH_SAMPLE, random_state=0)
    return pd.Series(sub_token_lengths(load_tokenizer(source), texts.tolist(), LENGTH_COUNTED), dtype="int64")


@_per_model_version
@st.cache_data(show_spinner="Checking that the model's vocabulary reads the texts…", max_entries=16)
def unreadable_note(source: str, version: str, choice: DataChoice) -> str:
    """What the Data page says when the model's vocabulary cannot read much of the training texts ('' when it
    can; ``vocabulary.count_unknown``): a Chinese upload was mined and trained to near chance with no word."""
    from clm_explore.modeling import load_tokenizer
    from clm_explore.vocabulary import unreadable_note

    return unreadable_note(load_tokenizer(source), data(choice).train["text"].tolist())


LENGTH_SAMPLE = 20_000
"""Texts whose sub-tokens the Data page counts at most (a seeded sample of a larger set): a second or two."""
LENGTH_COUNTED = 512
"""Sub-tokens counted per text at most: the most a run reads (the Finetune form's limit, ``forms.MAX_LENGTH``)."""


DATA_TTL = "2h"
"""How long a data set read (and its report) stays cached: an upload may be 200 MB of rows, and a server's eight
entries of them were held for its lifetime after their users left (the performance review). Read again after."""


@st.cache_data(show_spinner="Reading the data…", max_entries=8, ttl=DATA_TTL)
def data(choice: DataChoice, max_file_mb: float = DataConfig().max_file_mb) -> AnnotatedData:
    cfg = choice.data_config(max_file_mb=max_file_mb)
    if choice.kind == "upload":
        try:
            raw = Path(choice.path).read_bytes()
        except OSError as exc:  # cleaned up (old uploads are pruned when a server starts) or moved
            raise DataError(f"The uploaded file {choice.name} is no longer on the server; upload it again.") from exc
        return load_upload(raw, choice.name, cfg)
    return load_data(choice.path, cfg)


@st.cache_data(show_spinner=False, max_entries=8, ttl=DATA_TTL)
def report(choice: DataChoice) -> DataReport:
    return data_report(data(choice))


@st.cache_resource(show_spinner=False)
def _audits() -> KeyedTasks:
    # As many kept as st.cache_data's max_entries kept before; one at a time: each loads a model on the jobs' device.
    return KeyedTasks(kept=8, at_once=1)


def label_audit(source: str, choice: DataChoice, cfg: LabelAuditConfig, inline: bool = False) -> KeyedTask:
    """The label audit of the data as a task every session shares: started on a thread of its own the first time any
    session asks (a rerun, a click or a page change meanwhile neither stops it nor starts it again), its progress
    readable while it runs. It loads a model of its own (the shared one is read by other sessions' threads) and runs
    on the jobs' device. ``inline``: run in this thread (tests)."""
    key = _audit_key(source, choice, cfg)
    annotated = data(choice)  # here, in the page's thread: Streamlit's caches belong to a script run

    def work(report: Callable[[str, int, int], None]) -> LabelIssues:
        report("loading the model", 0, 1)
        fresh = load_model(source, annotated.labels, seed=0)
        try:
            return find_label_issues(fresh, annotated, cfg, device=device_setting()[0] or "auto",
                                     on_progress=report)
        finally:
            del fresh
            release_gpu_memory()  # the jobs' worker trains on the same GPU

    return _audits().get_or_start(key, work, inline=inline, label=audit_label(choice))


def audit_label(choice: DataChoice) -> str:
    """What a session waiting behind this audit reads: an upload's name is its session's own business."""
    return "the label check of " + ("an uploaded file" if choice.kind == "upload" else choice.shown)


def _audit_key(source: str, choice: DataChoice, cfg: LabelAuditConfig) -> tuple[str, ...]:
    return (source, state.model_version(source), repr(choice), _settings(cfg))


def _settings(cfg: Any) -> str:
    """A config as a key part: its fields as JSON (a config's tuples and nested configs hash alike this way)."""
    return json.dumps(to_dict(cfg), sort_keys=True)


def stop_audit(task: KeyedTask) -> None:
    """Stop a running label audit (for every session sharing it: they read that it stopped)."""
    _audits().stop(task)


def retry_failed_audit(source: str, choice: DataChoice, cfg: LabelAuditConfig) -> None:
    """Before a click starts the audit: one that failed or was stopped is dropped, so the click tries again (it is kept
    until then, so that every session following it reads its error rather than starting it again)."""
    failed = _audits().failed(_audit_key(source, choice, cfg))
    if failed is not None:
        _audits().forget(failed)


@st.cache_data(show_spinner=False, max_entries=16)
def columns(raw_digest: str, path: str, filename: str) -> list[str]:
    """Column names of an uploaded file (for the column mapping), read without its rows where the format allows;
    the file is read only when its digest is not cached yet ([] when it cannot be read: ``data`` then says why)."""
    return column_names(path, Path(filename).suffix)


@_per_model_version
@st.cache_data(show_spinner="Mining task tokens…", max_entries=16)
def task_tokens(source: str, version: str, choice: DataChoice, cfg: MiningConfig) -> TaskTokens:
    annotated = data(choice)
    tokenizer = model(source, tuple(annotated.labels)).tokenizer
    return mine_task_tokens(
        annotated.train["text"].tolist(), annotated.train["label"].tolist(), tokenizer, cfg
    )


@_per_model_version
@st.cache_data(show_spinner="Measuring adaptive tokenization…", max_entries=8)
def merge_report(source: str, version: str, choice: DataChoice, cfg: MiningConfig) -> MergeReport:
    annotated, groups = data(choice), task_tokens(source, choice, cfg)  # cached reads, before the slot
    n_merge = cfg.merge_tokens or DEFAULT_MERGE_TOKENS  # as many words as training would merge
    with heavy_work():  # a model of its own and every training text
        fresh = load_model(source, annotated.labels, seed=0)  # merging may add tokens: never the shared model
        return adaptive_tokenization(fresh, groups, annotated.train["text"].tolist(), n_merge)


@_per_model_version
@st.cache_resource(show_spinner="Scoring rows (sensitivity; one such computation at a time on this server)… cached "
                               "afterwards", max_entries=8)
def sensitivity(
    source: str, version: str, choice: DataChoice, mining_cfg: MiningConfig, cfg: SensitivityConfig
) -> SensitivityReport:
    """The sensitivity report (tensors; cached as a resource, treat as read only): ``scores_task``'s result, made in
    this thread when no session started it (a page that awaited it with ``views.await_scores`` finds it done)."""
    task = scores_task(source, choice, mining_cfg, cfg, inline=True)
    task.finished.wait()  # another session's, or this one's from a page left meanwhile: the same scores
    if task.error is not None:
        forget_scoring(task)  # said once; the next call scores again
        raise task.error
    report = task.result
    with _MADE_LOCK:
        _MADE_REPORTS[_report_key(source, version, choice, mining_cfg, cfg)] = report
    return report


@st.cache_resource(show_spinner=False)
def _scorings() -> KeyedTasks:
    return KeyedTasks(kept=8, at_once=1)  # one at a time, as the pages' other heavy computations


def scores_task(source: str, choice: DataChoice, mining_cfg: MiningConfig, cfg: SensitivityConfig,
                inline: bool = False) -> KeyedTask:
    """The sensitivity scores as a task every session shares (a rerun or a page change neither stops nor restarts
    it; its progress is readable meanwhile): the scores kept on disk for these arguments (``score_cache``: a restart
    or an evicted entry scores nothing again), else scored on a thread of its own and kept. ``inline``: in this
    thread (tests; ``sensitivity``)."""
    version = state.model_version(source)
    key = _report_key(source, version, choice, mining_cfg, cfg)
    task = _followed(_scorings(), key)
    if task is not None:  # a failed one too, until whoever reads its error forgets it (``forget_scoring``)
        return task
    kept = _kept_scores(source, version, choice, mining_cfg, cfg)
    ready = score_cache.load(kept)
    work = (lambda report: ready) if ready is not None else _scoring_work(source, choice, mining_cfg, cfg, kept)
    return _scorings().get_or_start(key, work, inline=inline, label=scoring_label(choice))


def _scoring_work(source: str, choice: DataChoice, mining_cfg: MiningConfig, cfg: SensitivityConfig, kept: Path
                  ) -> Callable[[Callable[[str, int, int], None]], SensitivityReport]:
    """The scoring as a task's work, its data and groups read now, in the page's thread (Streamlit's caches belong
    to a script run); what it makes is kept in ``kept``."""
    annotated = data(choice)
    groups = task_tokens(source, choice, mining_cfg) if cfg.restriction == "tokens" else None

    def work(report: Callable[[str, int, int], None]) -> SensitivityReport:
        made = _scored(source, annotated, groups, cfg, report)
        score_cache.save(made, kept)
        return made

    return work


def _followed(tasks: KeyedTasks, key: Any) -> KeyedTask | None:
    """The task of ``key`` that a page asking now may follow: none for one stopped while no page followed it (it is
    forgotten, so the asking page starts it again), else whatever ``known`` has."""
    task = tasks.known(key)
    if task is not None and task.stopped:
        tasks.forget(task)
        return None
    return task


def scoring_label(choice: DataChoice) -> str:
    """What a session waiting behind this scoring reads: an upload's name is its session's own business."""
    return "the scoring of " + ("an uploaded file" if choice.kind == "upload" else choice.shown)


def forget_scoring(task: KeyedTask) -> None:
    """Drop a scoring that failed or was stopped, once the page said so: the next look starts it again."""
    _scorings().forget(task)


def _scored(source: str, annotated: AnnotatedData, groups: TaskTokens | None, cfg: SensitivityConfig,
            report: Callable[[str, int, int], None]) -> SensitivityReport:
    device = device_setting()[0] or "auto"  # the GPU when present, like the jobs
    report("waiting for the server's other computations", 0, 1)
    with heavy_work():  # the model loaded inside: sessions waiting for the slot hold none (the diff review)
        report("loading the model and warming up its head", 0, 1)
        fresh = load_model(source, annotated.labels, seed=cfg.rng_seed)  # the head gets warmed up: not the shared model
        try:
            return compute_sensitivity(fresh, annotated, groups, cfg, device=device, progress=False,
                                       on_progress=lambda done, total: report("scoring rows", done, total))
        finally:
            del fresh
            release_gpu_memory()  # the jobs' worker trains on the same GPU


def _kept_scores(source: str, version: str, choice: DataChoice, mining_cfg: MiningConfig, cfg: SensitivityConfig
                 ) -> Path:
    """Where ``score_cache`` keeps the report for these arguments: the data's files' version too (a server data set
    edited on disk scores afresh)."""
    # model_version: a named model's package version (the session's version key is '' for one), so an upgraded
    # model package scores afresh
    parts = (*_report_key(source, version, choice, mining_cfg, cfg), choice.version, model_version(source))
    return score_cache.folder_for(score_cache.owner_prefix(choice.kind, choice.digest), parts)


# The reports ``sensitivity`` made that its cache (or a queued run) still holds: a launch looks here for scores it
# would make itself, without ever scoring in the page's thread. Weak values: an evicted report is forgotten.
_MADE_REPORTS: weakref.WeakValueDictionary[tuple[str, ...], SensitivityReport] = weakref.WeakValueDictionary()
_MADE_LOCK = threading.Lock()


def _report_key(source: str, version: str, choice: DataChoice, mining_cfg: MiningConfig, cfg: SensitivityConfig
                ) -> tuple[str, ...]:
    return (source, version, repr(choice), _settings(mining_cfg), _settings(cfg))


def made_sensitivity(
    source: str, choice: DataChoice, mining_cfg: MiningConfig, cfg: SensitivityConfig
) -> SensitivityReport | None:
    """The report ``sensitivity`` already made for these arguments and still caches or keeps on disk, else None
    (never scores)."""
    version = state.model_version(source)
    with _MADE_LOCK:
        report = _MADE_REPORTS.get(_report_key(source, version, choice, mining_cfg, cfg))
    return report if report is not None else score_cache.load(_kept_scores(source, version, choice, mining_cfg, cfg))


def mask(
    source: str, choice: DataChoice, mining_cfg: MiningConfig, sens: SensitivityConfig, cfg: MaskConfig
) -> MaskSelection:
    return timed_mask(source, choice, mining_cfg, sens, cfg)[0]


@_per_model_version
@st.cache_resource(show_spinner=False, max_entries=64)
def timed_mask(
    source: str, version: str, choice: DataChoice, mining_cfg: MiningConfig, sens: SensitivityConfig, cfg: MaskConfig
) -> tuple[MaskSelection, float]:
    """The selection and the seconds its selection took from the scores (timed here, not around a cache hit)."""
    report = sensitivity(source, choice, mining_cfg, sens)
    started = time.perf_counter()
    return select_mask(report, cfg), time.perf_counter() - started


@st.cache_data(show_spinner="Comparing the run's weights with its base model's…", max_entries=32)
def weight_changes(run_path: str, mtime: float, base_version: str) -> WeightChanges:
    """How far the run moved its base model's weights (``mtime``, of a file saving its model rewrites, and its base
    model's ``state.model_version`` key the cache)."""
    from clm_explore.changes import weight_changes as changes

    with heavy_work():
        return changes(run_path)


@st.cache_resource(show_spinner="Loading the run's model…", max_entries=4)
def run_model(run_path: str, mtime: float) -> LoadedModel:
    """A finetuned run folder's model (``mtime``, of a file the run rewrites when it is trained again, keys the cache)."""
    from clm_explore.attribution import load_run_model

    return load_run_model(run_path)


@st.cache_data(show_spinner="Comparing the layers' representations…", max_entries=32)
def layer_similarity(run_path: str, mtime: float, other_path: str, other_mtime: float, base_version: str
                     ) -> LayerSimilarity:
    """Linear CKA per layer between a run and another run (``other_path``), or its base model (``other_path`` ''),
    on the run's test rows (a sample of ``UI_CKA_ROWS``). The runs' ``mtime`` and the base model's version key the
    cache."""
    from clm_explore.layer_views import layer_similarity as similarity

    with heavy_work():
        return similarity(run_path, other_path or None, max_rows=UI_CKA_ROWS)


UI_CKA_ROWS = 256
"""Test rows the Compare page's CKA reads: a few seconds a model on a CPU; CKA over 256 texts is stable to ~0.01."""


@st.cache_data(show_spinner="Reading the attention heads…", max_entries=32)
def head_attention(run_path: str, mtime: float, text: str, groups_from: str) -> HeadAttention:
    """Each head's attention in ``text``; ``groups_from`` (a run folder, or '') marks the task tokens of a run that
    mined none."""
    from clm_explore.layer_views import head_attention as heads

    return heads(run_path, text, loaded=run_model(run_path, mtime), groups_from=groups_from or None)


@st.cache_data(show_spinner=False, max_entries=32)
def predictions(run_path: str, mtime: float) -> pd.DataFrame:
    from clm_explore.casestudy import read_predictions

    # A damaged file is a DataError naming it (the page's one paragraph), not a KeyError traceback.
    return read_predictions(Path(run_path) / "predictions.csv", ("text", "label", "pred", "prob"))


@st.cache_data(show_spinner="Explaining…", max_entries=64)
def attributions(run_path: str, mtime: float, texts: tuple[str, ...], target: str | None = None,
                 output: str = "probability") -> list[Any]:
    """Each text's word attributions under the run, toward its own prediction, or toward the label ``target`` (a
    row's gold label: both runs of a pair then answer one question), of its probability or its logit (``output``)."""
    from clm_explore.attribution import AttributionConfig, explain

    loaded = run_model(run_path, mtime)
    # the run's predictions read as much
    cfg = AttributionConfig(max_length=trained_max_length(Path(run_path)), output=output)
    return explain(loaded.model, loaded.tokenizer, list(texts), cfg, target=target)


def file_mtime(path: str | Path) -> float:
    """Modification time used to key caches of files that may be rewritten (0 when missing)."""
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(show_spinner=False)
def _studies() -> KeyedTasks:
    return KeyedTasks(kept=16, at_once=1)


def case_study(run_a: str, mtime_a: float, run_b: str, mtime_b: float, max_rows: int, output: str = "probability",
               inline: bool = False) -> KeyedTask:
    """Both runs' attributions of their test rows and top words as a task every session shares, its progress (rows
    attributed) readable while it runs: a minute's spinner was all a demo's audience saw of the step that explains
    the models (the demo review). It waits for the server's heavy slot inside the task, so the page stays live.
    ``output``: what the attributions measure (``AttributionConfig.output``). ``inline``: run in this thread (tests)."""
    from clm_explore.attribution import AttributionConfig
    from clm_explore.casestudy import case_study as study

    def work(report: Callable[[str, int, int], None]) -> Any:
        report("waiting for another computation on the server", 0, 1)
        with heavy_work():
            return study(run_a, run_b, cfg=AttributionConfig(output=output), max_rows=max_rows, on_progress=report,
                         progress=False)

    key = (run_a, mtime_a, run_b, mtime_b, max_rows, output)
    _followed(_studies(), key)
    return _studies().get_or_start(key, work, inline=inline, label="the top words of two runs")


def forget_study(task: KeyedTask) -> None:
    """Drop a case study that failed, once the page said why: the next look starts it again."""
    _studies().forget(task)


@st.cache_resource(show_spinner=False)
def _labellings() -> KeyedTasks:
    return KeyedTasks(kept=8, at_once=1)


MAX_LABEL_TEXTS = 20_000
"""The most texts of one file the app labels (60-80 s for 20,000 banking77 texts at 64 sub-tokens with the default
model on one CPU thread: BENCHMARKS.md); the CLI's ``predict --file`` takes up to ``DataConfig.max_rows``."""


def labelling_key(run_path: str, mtime: float, digest: str, name: str, text_col: str | None) -> tuple[Any, ...]:
    return (run_path, mtime, digest, name, text_col)


def known_labelling(key: tuple[Any, ...]) -> KeyedTask | None:
    """The labelling of ``key`` (``labelling_key``) a page may follow, or None."""
    return _followed(_labellings(), key)


def label_upload(key: tuple[Any, ...], raw: bytes, inline: bool = False) -> KeyedTask:
    """A file's texts labelled by a run (``batches.label_file``) as a task of its own, its progress readable while
    it runs and its result kept for the pages that follow it: (the table, the reader's notes). The file is read from
    a private temporary folder that goes with the task; the run is loaded in the task (the cached one is other
    threads'). ``inline``: run in this thread (tests)."""

    from clm_explore.batches import label_file

    run_path, _, _, name, text_col = key

    def work(report: Callable[[str, int, int], None]) -> tuple[pd.DataFrame, list[str]]:
        report("waiting for another computation on the server", 0, 1)
        with heavy_work(), private_copy(raw, name) as path:
            notes: list[str] = []
            try:
                table = label_file(run_path, path, text_col, max_texts=MAX_LABEL_TEXTS, notes=notes,
                                   on_progress=lambda done, total: report("labelling the texts", done, total))
            except DataError as exc:  # said of the file as its user named it, not of the server's copy
                raise DataError(_named_as_uploaded(str(exc), path, name)) from None
        return table, [_named_as_uploaded(note, path, name) for note in notes]

    return _labellings().get_or_start(key, work, inline=inline, label="the labelling of an uploaded file")


@contextlib.contextmanager
def private_copy(raw: bytes, name: str) -> Iterator[Path]:
    """An uploaded file's bytes as a file in a private temporary folder, deleted on leaving: named by its suffix alone
    (its format; the name is user text)."""
    with tempfile.TemporaryDirectory(prefix="clm-label-") as folder:
        path = Path(folder) / f"uploaded{Path(name).suffix.lower()}"
        path.write_bytes(raw)
        yield path


def _named_as_uploaded(message: str, copy: Path, name: str) -> str:
    return message.replace(str(copy), name).replace(copy.name, name)


def stop_labelling(task: KeyedTask) -> None:
    _labellings().stop(task)


def forget_labelling(task: KeyedTask) -> None:
    """Drop a labelling that failed or stopped, once the page said why: the next click starts it again."""
    _labellings().forget(task)


@st.cache_data(show_spinner="Writing the case-study report…", max_entries=8)
def report_html(run_a: str, mtime_a: float, run_b: str, mtime_b: float, max_rows: int,
                output: str = "probability") -> bytes:
    """The HTML report of the two runs' case study: the top words' own (``case_study``, which the page awaits first
    with its progress), so the rows are attributed once for both. The report attributed them all again, under a
    spinner, after the top words had waited a minute for the same."""
    from clm_explore.report import write_report

    task = case_study(run_a, mtime_a, run_b, mtime_b, max_rows, output, inline=True)
    task.finished.wait()
    if task.error is not None:
        forget_study(task)  # said once; the next look starts it again
        raise task.error
    # In the slot: writing it loads both runs' models and their base model again (weight changes, CKA)
    with tempfile.TemporaryDirectory() as tmp, heavy_work():
        return write_report(task.result, Path(tmp) / "report.html").read_bytes()


@st.cache_data(show_spinner=False, ttl=300)
def runs_disk(root: str) -> tuple[int, int]:
    """The bytes the runs folder holds and the bytes free on its disk, read at most every 5 minutes (a walk over
    every run's files)."""
    try:  # the runs' folders alone: not the uploads, nor what killed processes left (hidden), nor the registry
        folders = [entry for entry in Path(root).iterdir() if entry.is_dir() and not entry.is_symlink()
                   and entry.name != UPLOADS_NAME and not entry.name.startswith(".")]
    except OSError:
        folders = []
    used = sum(folder_bytes(folder) for folder in folders)
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = -1
    return used, free


@st.cache_resource(show_spinner=False, ttl=3600)
def pruned_uploads(root: str) -> list[str]:
    """When a server starts, then at most hourly (on the next page shown): old sessions' uploads deleted
    (``state.prune_uploads``). Not only at start: a server may run for weeks."""
    days = state.upload_max_days()
    score_cache.prune(Path(root), days)  # the scores kept for the sessions' data, by the same days
    pruned = state.prune_uploads(Path(root), days)
    if pruned:  # the administrator's record of what went (the operations review: 20 sessions went without a word)
        server_logger("clm_explore.server").info("deleted %d session(s) unused for over %g day(s) from %s", len(pruned),
                                                 days, root)
    return pruned


@st.cache_resource(show_spinner=False)
def configure_torch() -> int:
    """Once per server: ``$CLM_EXPLORE_TORCH_THREADS`` CPU threads for torch (its default when unset or not a whole
    number above 0), transformers' reports and progress bars off (the server's log is the tool's), and what
    ``clm-explore doctor`` would find wrong written to the server's log (a setting written wrong raised on every page
    or was ignored in silence, the operations review)."""
    import torch

    from clm_explore.doctor import MOST_THREADS, env_number, problems
    from clm_explore.modeling import quiet_transformers

    quiet_transformers()
    threads, _ = env_number("CLM_EXPLORE_TORCH_THREADS", 0, whole=True, positive=True, most=MOST_THREADS)
    if threads:
        try:
            torch.set_num_threads(int(threads))
        except (RuntimeError, ValueError) as exc:  # torch's own limit: its default stands, said in the log
            server_logger("clm_explore.server").warning("CLM_EXPLORE_TORCH_THREADS=%d: %s", int(threads), exc)
    for said in problems():
        server_logger("clm_explore.server").warning(said)
    freeze_imported_objects()
    return torch.get_num_threads()


def freeze_imported_objects() -> None:
    """Import what the pages run on, then move every object alive into the garbage collector's permanent generation.

    Streamlit collects garbage in full after every script run (``runner.postScriptGC``), and a full collection
    walks every object: with torch and transformers imported, about half a million, 230-430 ms of CPU on every
    click, Budget move and one-second refresh of the Finetune page in every session (the performance review: four
    tabs idle on Finetune held 88-95% of a core; frozen, 7-9%, and a Budget move's rerun fell from 356 to 46 ms of
    CPU). Objects made later are collected as before; what is frozen here lives as long as the server anyway.
    """
    import gc

    import clm_explore.training  # noqa: F401 - transformers, peft and the method: what the pages' work imports

    gc.collect()
    gc.freeze()
