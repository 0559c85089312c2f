"""The app's shared job queue (one per server process and run root) and the live progress fragment."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from clm_explore import doctor
from clm_explore.config import FinetuneConfig, MaskConfig, to_dict
from clm_explore.data import data_digest
from clm_explore.datareport import plural, row_points
from clm_explore.jobs import Job, JobQueue, Progress, last_line
from clm_explore.modeling import recorded_source
from clm_explore.reruns import next_seeds, same_setting, seed_variants
from clm_explore.runs import (
    DRAW_MARK,
    RunRecord,
    RunStatus,
    RunStore,
    RunStoreError,
    data_key_name,
    default_root,
    read_json_object,
    same_data_set,
)
from clm_explore.training import FINISHING_PHASE
from clm_explore.ui import cache, forms, run_views, state
from clm_explore.ui.state import DataChoice
from clm_explore.ui.views import CHART_CONFIG, duration, escape_markdown, label_text, metric_row

if TYPE_CHECKING:
    from clm_explore.sensitivity import SensitivityReport


def store() -> RunStore:
    """The server's run registry, with runs whose process died (a killed CLI run) marked interrupted."""
    runs = cache.run_store(str(default_root().resolve()))
    runs.mark_interrupted()
    return runs


@st.cache_resource(show_spinner=False)
def _queue(root: str, inline: bool) -> JobQueue:
    # Created once per server process (and run root): runs left pending/running by a previous
    # process are marked interrupted here, before any new job starts. Jobs run in a worker process per
    # device (see clm_explore.jobs), started now for the default device so that its imports are done
    # by the time someone presses Launch.
    runs = cache.run_store(root)
    runs.mark_interrupted()
    jobs = JobQueue(runs, inline=inline, processes=True, torch_threads=cache.configure_torch(),
                    preload=("clm_explore.training",))  # fmt: skip
    jobs.warm(forms.default_device())
    return jobs


def job_queue() -> JobQueue:
    """The queue every session shares (inline when the session or env asks for synchronous jobs)."""
    return _queue(str(default_root().resolve()), state.inline_jobs())


MAX_ACTIVE_PER_SESSION = 12
"""Jobs one browser session may have waiting or running at once: the queue is the server's, and one session's
hundred launches would hold everyone else's jobs back (each queued job also keeps its data in memory). Every
method of the Budget page's launch list fits at once at one seed."""
MAX_ACTIVE_ON_SERVER = doctor.MAX_JOBS  # doctor's: the check and the app read the setting alike


def max_active_on_server() -> int:
    """``$CLM_EXPLORE_MAX_JOBS`` when it is a positive whole number, else MAX_ACTIVE_ON_SERVER (logged at start)."""
    return int(doctor.setting("CLM_EXPLORE_MAX_JOBS"))


def check_room(launching: int) -> None:
    """Refuse ``launching`` more jobs when this session's waiting and running ones, or the server's, would pass
    their cap."""
    from clm_explore.config import ConfigError

    active = job_queue().active()
    mine = sum(1 for job in active if job.run_id and state.launched_here(job.run_id))
    if mine + launching > MAX_ACTIVE_PER_SESSION:
        advice = ("wait for some to end, or cancel some, before launching more" if launching <= MAX_ACTIVE_PER_SESSION
                  else "launch fewer at a time (fewer seeds or methods)")
        raise ConfigError(f"This launch asks for {launching} run(s) and this session has {mine} job(s) waiting or "
                          f"running; {MAX_ACTIVE_PER_SESSION} at a time is the most one session may have on the shared "
                          f"queue: {advice}.")
    most = max_active_on_server()
    if len(active) + launching > most:
        raise ConfigError(f"This launch asks for {launching} run(s) and the server's queue holds {len(active)} job(s) "
                          f"waiting or running, of every session; {most} at a time is the most it takes: try again "
                          "when some have ended.")


@dataclass
class LaunchPlan:
    """One run to queue: its name, config and the scores it trains from (None: it scores for itself)."""

    name: str
    cfg: FinetuneConfig
    scores: SensitivityReport | None = None


def launch(
    name: str, cfg: FinetuneConfig, choice: DataChoice, source: str, scores: SensitivityReport | None = None
) -> Job:
    """Create the run (pending) and queue ``finetune`` for it on the config's device; ``scores``, when given, are the
    page's, which the run would make itself (``training.scores_alike``): it trains from them, not scoring again.
    Without them, a report the pages already made that the run would make itself is used the same way."""
    return launch_plans([LaunchPlan(name, cfg, scores)], choice, source)[0]


def launch_seeds(name: str, cfg: FinetuneConfig, choice: DataChoice, source: str, seeds: int) -> list[Job]:
    """``seeds`` runs of ``cfg`` at its seed and the ones after it (named ``NAME-sSEED``), all or none queued. One
    seed is ``launch`` itself."""
    if seeds <= 1:
        return [launch(name, cfg, choice, source)]
    return launch_plans([LaunchPlan(f"{name}-s{seed}", dataclasses.replace(cfg, seed=seed))
                         for seed in range(cfg.seed, cfg.seed + seeds)], choice, source)


def launch_plans(plans: list[LaunchPlan], choice: DataChoice, source: str) -> list[Job]:
    """Queue every plan or none: the session's and the server's room, each config and the data are checked first
    (a refusal is a message, not a failed job), then the runs are created and queued without reading the session;
    a fault while queueing (the registry, the disk) cancels the jobs already queued and deletes the run it was at.

    Why: Streamlit stops a script for its next run at any read of the session or widget (a second click, say). Before,
    a 10-seed launch touched again within seconds queued five runs and left a sixth registered "pending" with no job
    behind it, which could then be neither cancelled nor deleted."""
    from clm_explore.training import check_runnable, check_splits

    check_room(len(plans))
    annotated = cache.data(choice)
    for plan in plans:  # a split the run needs missing: a message now, not a job that fails when its turn comes
        check_splits(annotated, plan.cfg)
    loaded = cache.model(source, tuple(annotated.labels))
    plans = [dataclasses.replace(plan, scores=plan.scores if plan.scores is not None
                                 else made_scores(plan.cfg, choice, source)) for plan in plans]
    for plan in plans:
        check_runnable(plan.cfg, loaded)
    digest = data_digest(annotated)
    target = _LaunchTarget(store(), job_queue(), state.owner_id(), state.launched_runs(),
                           queued_data(annotated, (digest, repr(choice))), source, choice,
                           f"on {data_key_name(choice.key)} with {run_views.model_name(source)}", digest)
    queued: list[Job] = []
    try:
        for plan in plans:
            queued.append(_queue_run(plan, target))
    except BaseException:
        for job in queued:  # all or none: the runs stay, cancelled, for the user to see and delete
            target.queue.cancel(job.id, by=target.owner)
        raise
    return queued


_QUEUED_DATA: weakref.WeakValueDictionary[tuple[str, str], object] = weakref.WeakValueDictionary()
_QUEUED_DATA_LOCK = threading.Lock()


def queued_data(annotated: object, key: tuple[str, str]) -> object:
    """One copy of the data for every queued job that trains on the same rows: st.cache_data hands each launch a
    copy of its own, so 48 queued jobs of a 200 MB upload held 48 copies in the server's memory (the security
    review). Kept while a job holds it (weak values)."""
    with _QUEUED_DATA_LOCK:
        kept = _QUEUED_DATA.get(key)
        if kept is not None:
            return kept
        with contextlib.suppress(TypeError):  # an object that takes no weak reference is queued as it is
            _QUEUED_DATA[key] = annotated
        return annotated


@dataclass
class _LaunchTarget:
    """Where ``launch_plans`` queues its runs, every value read from the session before the first is registered."""

    runs: RunStore
    queue: JobQueue
    owner: str
    launched: set[str]
    """The session's own set of launched runs, changed in place (no session read)."""
    data: object
    source: str
    choice: DataChoice
    about: str
    digest: str
    """``data.data_digest`` of the data: runs of the CLI on the same rows compare with these (``run_views``)."""


def _queue_run(plan: LaunchPlan, target: _LaunchTarget) -> Job:
    """Register the plan's run and queue its job; no Streamlit call in here (see ``launch_plans``)."""
    from clm_explore.training import finetune, given_scores, recorded_config

    cfg, choice = plan.cfg, target.choice
    settled = recorded_config(cfg, given_scores(plan.scores, cfg))  # what clm_run.json will say, as the CLI records
    run = target.runs.create(plan.name, cfg.method, {**to_dict(settled), "source": recorded_source(target.source),
                                                     "data": choice.key, "data_digest": target.digest})
    kwargs = {"data": target.data, "cfg": cfg, "out_dir": str(run.path), "source": target.source}
    try:
        if choice.kind == "upload":  # its predictions hold the upload's test texts: closed on disk as the upload is
            run.path.chmod(0o700)
        job = target.queue.submit(finetune, kwargs | ({"scores": plan.scores} if plan.scores is not None else {}),
                                  run_id=run.id, owner=target.owner,
                                  device=forms.default_device() if cfg.device == "auto" else cfg.device)
    except BaseException:
        with contextlib.suppress(RunStoreError):  # the launch's own error is the one to show, not the clean-up's
            target.runs.delete(run.id, force=True)  # no run left "pending" with no job behind it
        raise
    job.label = f"{cfg.method} {target.about}"  # a shared queue: what is this job? (its session marked on the card)
    target.launched.add(run.id)
    return job


RELAUNCHABLE = (RunStatus.FAILED, RunStatus.INTERRUPTED, RunStatus.CANCELLED)
"""Runs that ended without a model: the Runs page offers to launch them again with their own settings."""


def relaunch_refusal(run: RunRecord, choice: DataChoice | None) -> str:
    """Why ``run`` cannot be launched again from this session as it was ('' when it can): it needs the data it was
    launched on chosen (an upload is its session's own; the server has no other copy to give) and a model this
    server lets a browser load."""
    data_key = str(run.config.get("data", ""))
    recorded = run.config.get("data_digest") or read_json_object(run.path / "clm_run.json").get("data_digest")
    if choice is not None and data_key != choice.key and recorded and recorded == data_digest(cache.data(choice)):
        return state.refused_model_source(str(run.config.get("source", "")))  # its rows, chosen under another name
    if choice is None or data_key != choice.key:
        if not _app_data_key(data_key):  # a CLI run names its data by its path: the Data page cannot choose that
            return (f"It was trained from the command line on a data file the Data page does not offer: train it "
                    f"again there, with `clm-explore rerun --run {run.id} --seed S`.")
        if choice is not None and same_data_set(data_key, choice.key):  # the draw or the carve differs
            as_trained = data_key_name(data_key) + ("" if DRAW_MARK in data_key else ", every row")
            return (f"It was trained on {as_trained}; the data is read now as {choice.shown}. To launch it again "
                    "with its settings, set the Data page's Few-shot and Splits boxes as the run had them.")
        return (f"To launch it again with its settings, choose its data on the Data page "
                f"({data_key_name(data_key) or 'not recorded'}).")
    if recorded and recorded != data_digest(cache.data(choice)):  # the same name, other rows (a file edited on disk)
        return "The data chosen now has the same name as this run's but other rows: it is not launched again on them."
    return state.refused_model_source(str(run.config.get("source", "")))


def _app_data_key(data: str) -> bool:
    """Whether a run's recorded data is a key the app made (``DataChoice.key``: its kind first), not a CLI path."""
    return data.split(":", 1)[0] in ("sample", "shared", "upload") and ":" in data


def relaunch_control(run: RunRecord, key: str) -> None:
    """For a run that ended without a model (a server restart interrupted it, a failure, a cancel): a button that
    launches it again with its own settings, on the same data and model; before, its options had to be found in its
    config and set again by hand (the crash review)."""
    if run.status not in RELAUNCHABLE or not run.config.get("method"):
        return
    if refusal := relaunch_refusal(run, state.data_choice()):
        st.caption(escape_markdown(refusal))
        return
    if not st.button("Launch again with its settings", key=f"{key}_relaunch",
                     help="Queues a new run with this run's method, budget, epochs, seed and other options, on the "
                     "same data and model. This run stays as it is; delete it below if it is of no more use."):
        return
    from clm_explore.config import ConfigError
    from clm_explore.data import DataError
    from clm_explore.modeling import ModelSourceError

    try:
        job = launch(run.name, FinetuneConfig.from_dict(run.config), state.data_choice(), str(run.config["source"]))
    except (ConfigError, DataError, ModelSourceError, TypeError) as exc:  # TypeError: a config of another version
        st.error(escape_markdown(f"It cannot be launched again: {exc}"))
        return
    st.success(f"Queued again as {short_run_name(job.run_id or '')}; follow it on the Finetune page.")
    st.page_link("app_pages/5_finetune.py", label="Go to Finetune", icon=":material/model_training:")


MAX_MORE_SEEDS = 10
"""The most seeds one click on a finished run adds."""


def more_seeds_control(run: RunRecord, records: list[RunRecord], key: str) -> None:
    """For a succeeded run: queue its setting again at the lowest seeds that no run of the same setting on the same
    data and model has (waiting, running or succeeded), named ``NAME-sSEED``, to compare the seed groups below. Before,
    a run's settings had to be found in its config and set again on the Finetune form (the CLI's ``rerun --seed`` and
    ``clm_explore.rerun`` had it)."""
    if run.status is not RunStatus.SUCCEEDED or not run.config.get("method"):
        return
    seeds_of_setting = {r.config.get("seed") for r in records if r.status in SEEDS_TAKEN
                        and same_setting(r.config, run.config)}
    taken = {seed for seed in seeds_of_setting if isinstance(seed, int)}
    with st.expander(f"Train this setting at more seeds ({len(taken)} so far)"):
        if refusal := relaunch_refusal(run, state.data_choice()):
            st.caption(escape_markdown(refusal.replace("launch it again", "train it at more seeds")))
            return
        count = int(st.number_input("Seeds to add", 1, MAX_MORE_SEEDS, 2, key=f"{key}_more_seeds_n"))
        seeds = next_seeds(taken, count)
        st.caption(f"Seeds taken by runs of this setting: {', '.join(map(str, sorted(taken))) or 'none'}. "
                   f"The new runs train at seed {', '.join(map(str, seeds))}, each on the same data and model.")
        if not st.button(f"Train at {count} more seed{'s' if count > 1 else ''}", key=f"{key}_more_seeds"):
            return
        _launch_more_seeds(run, seeds)


SEEDS_TAKEN = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SUCCEEDED)
"""The runs whose seeds are not offered again: a run that failed or was stopped left its seed without a result."""


def _launch_more_seeds(run: RunRecord, seeds: list[int]) -> None:
    from clm_explore.config import ConfigError
    from clm_explore.data import DataError
    from clm_explore.modeling import ModelSourceError

    base = re.sub(r"-s\d+$", "", run.name)
    try:
        plans = [LaunchPlan(f"{base}-s{cfg.seed}", cfg) for cfg in seed_variants(run.config, seeds)]
        queued = launch_plans(plans, state.data_choice(), str(run.config["source"]))
    except (ConfigError, DataError, ModelSourceError) as exc:  # nothing is queued
        st.error(escape_markdown(f"It cannot be trained at more seeds: {exc}"))
        return
    st.success(f"Queued {len(queued)} run(s) at seed {', '.join(map(str, seeds))}; follow them on the Finetune page, "
               "then compare the seed groups above.")
    st.page_link("app_pages/5_finetune.py", label="Go to Finetune", icon=":material/model_training:")


def made_scores(cfg: FinetuneConfig, choice: DataChoice, source: str) -> SensitivityReport | None:
    """A report the Sensitivity or Budget page already made (any session's, still cached) that a run with ``cfg``
    would make itself, so that a launch from the Finetune form trains from the rows those pages showed without
    scoring again; None when there is none (the run scores for itself; nothing is scored here)."""
    from clm_explore.training import SCORED_AS, scores_alike, scoring_settled

    # at the length and end the run reads, as the pages score (forms.scoring_cfg): the form's settings alone missed
    # a page's report of a run reading 48 sub-tokens, or keeping texts' ends (the diff review)
    read = scoring_settled(cfg, None).sensitivity
    settled = dataclasses.replace(read, **SCORED_AS.get(cfg.method, {}))
    for sens in dict.fromkeys((read, settled)):  # the page's settings, or the method's own over them
        report = cache.made_sensitivity(source, choice, cfg.mining, sens)
        if report is not None and scores_alike(report, cfg):
            return report
    return None


def launch_many(methods: list[str], mask: MaskConfig, choice: DataChoice, source: str, device: str,
                epochs: int | None = None, seed: int | None = None,
                scores: SensitivityReport | None = None, seeds: int = 1, max_length: int | None = None,
                truncation_side: str | None = None) -> list[Job]:
    """One run per method with the same budget and row choice (the Budget page's launch list), and the same
    ``epochs``, ``seed``, ``max_length`` and ``truncation_side`` (FinetuneConfig's defaults when None); ``seeds`` runs
    of each, at ``seed`` and the ones after it (``NAME-sSEED``). ``scores``: the page's; a row method that would make them itself (a seed-0 run at the
    page's settings) trains the rows the page shows from them."""
    from clm_explore.training import scores_alike

    chosen = {name: value for name, value in (("epochs", epochs), ("seed", seed), ("max_length", max_length),
                                              ("truncation_side", truncation_side)) if value is not None}
    base = FinetuneConfig(mask=mask, mining=state.mining_cfg(), sensitivity=state.sens_cfg(), device=device,
                          **chosen)
    cfgs = [dataclasses.replace(base, method=method, seed=base.seed + i) for method in methods for i in range(seeds)]
    suffix = (lambda cfg: f"-s{cfg.seed}") if seeds > 1 else (lambda cfg: "")
    return launch_plans([LaunchPlan(forms.default_run_name(cfg.method, mask.budget) + suffix(cfg), cfg,
                                    scores if scores is not None and scores_alike(scores, cfg) else None)
                         for cfg in cfgs], choice, source)  # all or none: a refusal leaves no half of the list queued


@st.fragment(run_every=1.0)
def progress_panel(key: str = "ft") -> None:
    """Every job of the shared queue (progress, loss and metric curves, speed, ETA, cancel), then the
    newest runs, which show a job's result as soon as it ends.

    The fragment reruns itself every second. The run list lives inside it on purpose: a full-page
    ``st.rerun()`` fired from here when a job ended could coalesce with a navigation click that was
    pending at that moment and keep the user on this page (Streamlit folds both into one rerun of the
    page that called ``st.rerun``).
    """
    try:
        _progress_panel(key)
    except RunStoreError as exc:  # a fragment's rerun is outside app.py's handler: one paragraph, not a traceback
        st.error(escape_markdown(str(exc)))


def _progress_panel(key: str) -> None:
    jobs = job_queue().jobs()
    records = store().list(limit=10)  # redrawn every second in every session: read ten rows, not the registry
    if not jobs:
        st.caption("No jobs yet in this server's queue." + _lost_jobs_note(records))
    ahead = jobs_ahead(jobs)
    cards = shown_jobs(jobs, ahead=ahead)
    deleted = _deleted_runs([job.run_id for job in cards if job.done and job.run_id])
    figures = {r.id: r.metrics for r in records}  # the registry's copy: no file read a redraw
    for job in cards:
        _job_card(job, key, deleted, figures.get(job.run_id or "", {}), ahead.get(job.id, 0))
    for line in run_views.seed_group_lines(records):
        st.caption(escape_markdown(line) + ": **Compare groups of runs** on the Runs page tells a difference from "
                   "chance.")
    if any(job.status is RunStatus.SUCCEEDED for job in cards):
        st.page_link("app_pages/6_compare.py", label="Compare finished runs: predictions, attributions, layers",
                     icon=":material/compare_arrows:")
    st.header("Recent runs", anchor=False)
    if records:
        run_views.render_runs_table(records, key=key)
    else:
        st.caption("No runs yet.")


def jobs_ahead(jobs: list[Job]) -> dict[str, int]:
    """Per waiting job, how many jobs run before it on its device: the running one and the waiting ones whose turn
    comes first (the queue's turn order, computed once a redraw, not per card)."""
    ahead: dict[str, int] = {}
    for device in {job.device for job in jobs if job.status is RunStatus.PENDING}:
        running = sum(1 for job in jobs if job.device == device and job.status is RunStatus.RUNNING)
        for place, job in enumerate(job_queue().turn_order(device)):
            ahead[job.id] = running + place
    return ahead


def _lost_jobs_note(records: list[RunRecord]) -> str:
    """Why an empty queue holds none of this session's jobs: the server restarted (a queue lives in its process)
    and the runs they were training read interrupted below."""
    lost = [r for r in records if r.status is RunStatus.INTERRUPTED and state.launched_here(r.id)]
    if not lost:
        return ""
    return (f" The server restarted since this session launched {len(lost)} of the runs below, which it "
            "interrupted: the Runs page launches each again with its settings.")


def _deleted_runs(run_ids: list[str]) -> set[str]:
    """The runs of finished cards that are no longer on the server (a card outlives its run, which anyone may
    delete); one registry query a redraw, which comes every second in every session."""
    try:
        return set(run_ids) - store().known(run_ids)
    except Exception:  # noqa: BLE001 - a registry that cannot answer (locked, say) says nothing of the runs
        return set()


def shown_jobs(jobs: list[Job], finished_shown: int = 8, ahead: dict[str, int] | None = None) -> list[Job]:
    """The panel's cards: every job still waiting or running (several sessions may have queued many; the running one
    must keep its Cancel button), then the newest ``finished_shown`` finished ones, newest first. The active ones in
    the order they run (``ahead``, ``jobs_ahead``'s: running first, then by turn), newest first where it is not
    given: by launch their "N ahead" read 2, 6, 4, 1, 5, 3 down the panel (the multi-session review)."""
    active = list(reversed([j for j in jobs if not j.done]))
    if ahead is not None:
        active.sort(key=lambda job: (job.id in ahead, ahead.get(job.id, 0)))  # stable: ties stay newest first
    ended = [j for j in jobs if j.done][-finished_shown:]
    return active + list(reversed(ended))


def _job_card(job: Job, key: str, deleted: set[str], metrics: dict[str, Any], ahead: int) -> None:
    p = job.progress()
    run_name = job.run_id or job.id
    with st.container(border=True):
        c1, c2 = st.columns([5, 1])
        about = f" · {escape_markdown(job.label)}" if job.label else ""
        yours = " · *launched here*" if job.run_id and state.launched_here(job.run_id) else ""
        gone = " · run deleted since" if job.run_id in deleted else ""
        yours += " · cancelled from another session" if yours and _cancelled_elsewhere(job) else ""
        c1.markdown(f"**{escape_markdown(run_name)}**{about} · {job.device} · `{job.status.value}`{gone}{yours}")
        if not job.done:
            with c2:
                cancel_control(job, key)
        if job.status is RunStatus.PENDING:
            st.caption(f"Waiting in the queue ({ahead} job(s) ahead on {job.device}; turns go round the browsers that "
                       "have jobs waiting).")
            return
        st.progress(*progress_bar(p, job.status if job.done else None))
        if job.cancel_event.is_set() and not job.done:  # every session sees it (a toast from the callback did not)
            st.caption("Cancel requested: the job stops at its next step or scoring batch.")
        elapsed = p.elapsed or ((job.finished or time.time()) - job.started if job.started else None)
        with metric_row():  # wraps on a narrow window instead of cutting the figures
            st.metric("Loss", f"{p.loss:.4f}" if p.loss is not None else "–", width="content")
            st.metric("Examples/s", f"{p.examples_per_second:.1f}" if p.examples_per_second else "–", width="content")
            st.metric("Elapsed", duration(elapsed), width="content")  # cancelled before it started: "–"
            st.metric("ETA", duration(p.eta) if p.eta is not None and not job.done else "–", width="content")
            if job.status is RunStatus.SUCCEEDED and isinstance(metrics.get("accuracy"), int | float):
                rows = metrics.get("test_rows")
                st.metric("Test accuracy", f"{metrics['accuracy']:.4f}", width="content",
                          help=f"On {plural(rows, 'test row')}: one row is {row_points(rows)} points." if isinstance(rows, int)
                          and rows > 0 else None)
        if job.status is RunStatus.SUCCEEDED and metrics.get("collapse_note"):  # succeeded, yet learned nothing
            st.warning(escape_markdown(run_views.app_words(str(metrics["collapse_note"]))), icon=":material/warning:")
        # Live curves only while a job runs: redrawing every finished job's plotly figures each second, in
        # every open session, held the server's CPU away from the jobs themselves (in the two-user browser
        # test, with four finished jobs on the board, a head job on the tiny model waited 99 s, now 21 s).
        show = not job.done or st.toggle(f"Curves of {label_text(run_name)}", key=f"{key}_curves_{job.id}")
        if p.losses and show:
            _curves(p.losses, p.eval_history, f"{key}_{job.id}", f"Training loss and validation scores of {run_name}")
        if job.status is RunStatus.FAILED and job.error:
            st.error(f"The job failed: {escape_markdown(last_line(job.error) or '')}")
            if yours:  # its code paths and lines are for the one who launched it, not every user of the server
                with st.expander("Traceback"):
                    st.code(job.error[-3000:])


def _cancelled_elsewhere(job: Job) -> bool:
    """Whether another session cancelled the job (its owner is told; the queue is shared by every session)."""
    ended_otherwise = job.done and job.status is not RunStatus.CANCELLED  # it finished before the cancel took
    return job.cancel_event.is_set() and not ended_otherwise and job.cancelled_by not in (None, state.owner_id())


def progress_bar(p: Progress, ended: RunStatus | None = None) -> tuple[float, str]:
    """The bar's fill and text: training's steps, or before the first step the preparation's phase (loading,
    mining and scoring a real model take minutes, which a bar stuck at step 0 would not explain). ``ended``: the
    status of a job that has ended; one that ended before its first step says how, not "preparing"."""
    preparing = bool(p.step == 0 and p.phase and p.phase != "training")
    if ended is not None and ended.is_terminal and p.step == 0:  # e.g. cancelled while its rows were scored
        if ended is RunStatus.SUCCEEDED:
            return 1.0, "succeeded (no training step reported)"
        phase = p.phase.removeprefix("preparing ")  # "preparing full": the phase names it already
        how = f"while preparing ({phase})" if preparing else "before its first step"
        return 0.0, f"{ended.value} {how}"
    if preparing:
        counted = f" {p.phase_done}/{p.phase_total}" if p.phase_total > 1 else ""
        fill = p.phase_done / p.phase_total if p.phase_total > 1 else 0.0
        return min(fill, 1.0), f"preparing: {p.phase}{counted}"
    if p.step == 0:  # a method without preparation phases, or training's first step under way
        return 0.0, "starting training"
    at = f"step {p.step}/{p.total_steps or '?'} · epoch {p.epoch:g}"  # the epoch under way, 1, 2, ...
    if ended is not None and ended.is_terminal and ended is not RunStatus.SUCCEEDED:  # a killed worker's bar read
        return p.fraction, f"{ended.value} at {at}"  # as if the job still ran (the app review)
    if ended is None and p.phase == FINISHING_PHASE:  # the steps done, the run not yet saved
        return p.fraction, f"{at} · {FINISHING_PHASE}…"
    return p.fraction, at


def cancel_control(job: Job, key: str) -> None:
    """Cancel a job in two clicks: "Cancel…" asks, "Yes, cancel it" cancels, "Keep it" backs out. Every session
    sees every job, so one click must not end another user's run by accident."""
    armed = f"{key}_cancel_armed"
    if _armed_job(armed) != job.id:
        # the run named in the label: each job's button is told apart by a screen reader, not only by its card
        # The run's name without its launch time first: "Cancel 20261207-…" was all a narrow card showed of every
        # button (the multi-session review).
        st.button(f"Cancel {label_text(short_run_name(job.run_id or job.id))}…", key=f"{key}_cancel_{job.id}",
                  on_click=_arm_cancel,
                  args=(armed, job.id),
                  help="Asks before cancelling: this queue is shared, the job may be another user's.")
        return
    # Whose it is, as far as this session knows: the same words on one's own jobs and others' told nothing (the
    # multi-session review).
    whose = ("this session launched it." if job.run_id and state.launched_here(job.run_id) else
             "this session did not launch it: it is most likely another user's" + (
                 f" ({escape_markdown(job.label)})." if job.label else "."))
    st.caption(f"Cancel {escape_markdown(job.run_id or job.id)}? Every user of this server sees this job; {whose}")
    st.button("Yes, cancel it", key=f"{key}_cancel_yes_{job.id}", type="primary", on_click=_confirm_cancel,
              args=(armed, job.id))
    st.button("Keep it", key=f"{key}_cancel_no_{job.id}", on_click=_arm_cancel, args=(armed, None))


_LAUNCH_TIME = re.compile(r"^\d{8}-\d{6}-(?=.)")


def short_run_name(run_id: str) -> str:
    """A run id without the launch time the registry puts before its name ("20261207-061217-bob-full-s3":
    "bob-full-s3"); an id without one as it is."""
    return _LAUNCH_TIME.sub("", run_id)


CANCEL_ARMED_SECONDS = 30.0
"""How long "Cancel…" waits for its confirmation: a question left open must not greet a later visit."""


def _armed_job(armed: str) -> str | None:
    asked = st.session_state.get(armed)
    if not asked or time.time() - asked[1] > CANCEL_ARMED_SECONDS:
        return None
    return asked[0]


def _arm_cancel(armed: str, job_id: str | None) -> None:
    st.session_state[armed] = (job_id, time.time()) if job_id else None


def _confirm_cancel(armed: str, job_id: str) -> None:
    st.session_state[armed] = None
    job_queue().cancel(job_id, by=state.owner_id())  # a waiting job ends at once; a running one's card says so


CURVE_METRICS = ("accuracy", "macro_f1")
"""Validation figures drawn on the curves' 0-1 axis (an epoch's eval also reports its seconds, not a score)."""
CURVE_POINTS = 1000
"""Most loss points a live curve sends: it is redrawn every second in every open session."""


def _curves(losses: list[tuple[int, float]], evals: list[dict], key: str, alt: str) -> None:
    frame = pd.DataFrame(losses[:: max(1, -(-len(losses) // CURVE_POINTS))], columns=["step", "loss"])
    fig = go.Figure(go.Scatter(x=frame["step"], y=frame["loss"], name="train loss", mode="lines"))
    metric_names = [k for k in CURVE_METRICS if evals and isinstance(evals[0].get(k), (int, float))]
    for name in metric_names:
        fig.add_trace(
            go.Scatter(
                x=[e["step"] for e in evals],
                y=[e[name] for e in evals],
                name=f"val {name}",
                mode="lines+markers",
                marker=dict(size=8),  # one epoch is one point: a pale dot at plotly's default size
                yaxis="y2",
            )
        )
    fig.update_layout(
        height=220,
        margin=dict(l=10, r=10, t=10, b=10),
        xaxis_title="step",
        yaxis_title="train loss",
        yaxis2=dict(overlaying="y", side="right", range=[0, 1], showgrid=False, title="validation score",
                    tickformat=".1f", dtick=0.2),
        legend=dict(orientation="h", y=1.15),
    )
    st.plotly_chart(fig, key=f"{key}_curve", width="stretch", config=CHART_CONFIG, alt=alt)
