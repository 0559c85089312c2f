"""A job queue for long work (finetuning): one worker thread per device, turns shared between owners, no Streamlit.

``JobQueue.submit(fn, kwargs, run_id, device, owner)`` queues ``fn(**kwargs, on_step=..., should_stop=...)``
on the worker of ``device`` ("cpu", "cuda:0", ...). Jobs on one device run one at a time; jobs on different
devices run side by side. Every job is visible to every caller of the same queue (the app keeps one queue per
server process). Turns go round the owners (the app's browser sessions): the next job is the oldest waiting job of
the owner served least recently, so one user's ten queued runs do not hold another's one run back behind all ten;
one owner's jobs run in the order they were submitted (``order_turns``).

The worker keeps a progress snapshot from ``on_step`` (the core's ``StepInfo``), polls a cancel
``Event`` through ``should_stop``, and moves the job's run in the ``RunStore`` through
running -> succeeded / failed / cancelled.

With ``processes=True`` (the app) each device's worker thread hands its jobs to a child process of its own
(``job_process.WorkerProcess``): the job then never waits on the GIL behind the server's page redraws,
and a crash in it fails the job, not the server. Without it (scripts, tests) jobs run in the thread.

Every change of a job's state is one line of the ``clm_explore.jobs`` logger (queued, started, and how it ended, with
its duration; never the user's texts or session, though a failure's last line may name a label or a column), and a
failed job's traceback is kept in its run folder (``ERROR_FILE``): the server's log held Streamlit's start-up lines
alone, and a traceback lived only in this process's memory (the operations review).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import logging
import math
import re
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clm_explore.job_process import JobFailed, WorkerProcess, takes_phases
from clm_explore.runs import (
    ERROR_FILE,
    PER_LABEL_METRICS,
    RunNotFoundError,
    RunStatus,
    RunStore,
    method_name,
    write_text_atomic,
)
from clm_explore.serverlog import server_logger

_STEP_FIELDS = ("step", "total_steps", "epoch", "loss", "examples_per_second", "elapsed", "eta")
FINISHED_JOBS_KEPT = 100
"""Finished jobs a queue remembers (their progress and curves; the runs themselves stay in the RunStore): a server
that runs for weeks would otherwise keep every job's per-step losses."""
_log = logging.getLogger("clm_explore.jobs")


@dataclass
class Progress:
    """What the UI shows while a job runs; copied out of the job under its lock."""

    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    examples_per_second: float | None = None
    elapsed: float = 0.0
    eta: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    """(step, loss) for every step reported so far."""
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    """The ``eval`` dicts reported at epoch ends, each with its step added."""
    phase: str = ""
    """The preparation's phase before the first step ("scoring rows"), when ``fn`` reports it (``on_phase``)."""
    phase_done: int = 0
    phase_total: int = 0

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


NEVER_STARTED = "the server stopped before its turn came: it never started; launch it again"
"""A queued job's error when the server stops before the job's turn (its run reads interrupted)."""


class Job:
    """One queued call. Read ``status`` and ``progress()``; ``cancel()`` asks it to stop."""

    def __init__(
        self, job_id: str, fn: Callable[..., Any], kwargs: dict[str, Any], run_id: str | None, device: str,
        owner: str | None = None,
    ):
        self.id = job_id
        self.fn = fn
        self.kwargs = kwargs
        self.run_id = run_id
        self.device = device
        self.owner = owner
        """Who queued it (an app session's token; None: a script): turns go round the owners. Never logged: the
        token opens a copy of its session."""
        self.method = method_name(getattr(kwargs.get("cfg"), "method", None) or getattr(fn, "__name__", "?"))
        """The run's method (``finetune``'s cfg), else the function's name: what the server's log names."""
        self.submitted = time.time()
        self.status = RunStatus.PENDING
        self.label = ""
        """What the job is, in a few words, for a shared queue's cards ("sparse on banking77_20")."""
        self.error: str | None = None
        """The traceback text when the job failed."""
        self.result: Any = None
        self.started: float | None = None
        self.finished: float | None = None
        self.cancel_event = threading.Event()
        self.cancelled_by: str | None = None
        """Who asked the job to stop (an app session's token, ``JobQueue.cancel``'s ``by``), to tell its owner."""
        self._lock = threading.Lock()
        self._progress = Progress()
        self._done = threading.Event()
        self._claimed = False

    def on_phase(self, phase: str, done: int, total: int) -> None:
        """Record a preparation phase's progress (``finetune``'s ``on_phase``)."""
        with self._lock:
            self._progress.phase, self._progress.phase_done, self._progress.phase_total = phase, done, total

    def on_step(self, info: Any) -> None:
        """Record one step report (a ``StepInfo`` dataclass, or a dict with the same fields; a worker process
        relays a phase report as ``{"phase": (phase, done, total)}``)."""
        data = dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)
        if "phase" in data:
            self.on_phase(*data["phase"])
            return
        if isinstance(data.get("loss"), float) and not math.isfinite(data["loss"]):
            data["loss"] = None  # the epoch-end report carries eval only (loss NaN)
        with self._lock:
            p = self._progress
            for name in _STEP_FIELDS:
                if data.get(name) is not None:
                    setattr(p, name, data[name])
            if data.get("loss") is not None:
                p.losses.append((int(p.step), float(data["loss"])))
            if data.get("eval"):
                p.eval_history.append({"step": p.step, "epoch": p.epoch, **data["eval"]})

    def should_stop(self) -> bool:
        return self.cancel_event.is_set()

    def cancel(self) -> None:
        """Ask the job to stop; a job still waiting in the queue will never start. ``JobQueue.cancel`` also
        ends a waiting job at once (its status and its run's)."""
        self.cancel_event.set()

    def claim(self) -> bool:
        """True for the first caller only: the worker taking the job to run it, or a cancel ending it while it
        waits. Whoever claims it finishes it."""
        with self._lock:
            first, self._claimed = not self._claimed, True
            return first

    def progress(self) -> Progress:
        """A consistent copy of the progress snapshot."""
        with self._lock:
            p = self._progress
            return dataclasses.replace(
                p, losses=list(p.losses), eval_history=[dict(e) for e in p.eval_history]
            )

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; False on timeout."""
        return self._done.wait(timeout)


class JobQueue:
    """A job queue with one worker thread per device, its turns shared between owners; see the module docstring.

    Args:
        store: where the jobs' runs are registered (status updates); None skips that.
        inline: run each job synchronously inside ``submit`` (tests, AppTest).
        processes: run each device's jobs in a child process of that device (see the module docstring);
            ``fn``, its arguments and its result must then pickle.
        torch_threads: CPU threads for torch in those processes (None: torch's default).
        preload: modules those processes import as soon as they start (e.g. ``clm_explore.training``).
    """

    def __init__(self, store: RunStore | None = None, inline: bool = False, processes: bool = False,
                 torch_threads: int | None = None, preload: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.store = store
        self.inline = inline
        self.processes = processes and not inline
        self.torch_threads = torch_threads
        self.preload = preload
        self._processes: dict[str, WorkerProcess] = {}
        self._jobs: dict[str, Job] = {}
        self._waiting: dict[str, list[Job]] = {}
        """Per device, the jobs not yet taken by its worker, in submission order."""
        self._served: dict[str, dict[str | None, int]] = {}
        """Per device, the turn at which each owner's last job was taken (``order_turns``)."""
        self._workers: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ids = itertools.count(1)
        self._turns = itertools.count()
        self._exiting = False
        self._stopping = False
        if self.processes:
            server_logger()  # the server's mode: its jobs' lines must reach its log (serverlog)
            # Registered after multiprocessing's own exit handler, so run before it terminates the workers; by a weak
            # reference, so that a queue a test dropped is not kept alive until the interpreter exits.
            atexit.register(_at_exit, weakref.ref(self))

    def submit(
        self, fn: Callable[..., Any], kwargs: dict[str, Any], run_id: str | None = None, device: str = "cpu",
        owner: str | None = None,
    ) -> Job:
        """Queue ``fn(**kwargs, on_step=job.on_step, should_stop=job.should_stop)`` on ``device`` for ``owner``."""
        device = normalise_device(device)
        with self._lock:
            job = Job(f"job-{next(self._ids)}", fn, dict(kwargs), run_id, device, owner)
            self._jobs[job.id] = job
            self._forget_old_jobs()
            if not self.inline:
                self._waiting_on(device).append(job)
                self._wake.notify_all()
            # Under the lock: its worker cannot take it, and log it started, before this line.
            _log.info("%s queued: %s, %d ahead", job.id, _about(job), self._ahead(job))
        if self.inline:
            self._run(job)
        return job

    def _forget_old_jobs(self) -> None:
        # Called under self._lock; jobs are in submission order.
        finished = [job_id for job_id, job in self._jobs.items() if job.done]
        for job_id in finished[: max(0, len(finished) - FINISHED_JOBS_KEPT)]:
            del self._jobs[job_id]

    def _ahead(self, job: Job) -> int:
        # Called under self._lock: the jobs that start before ``job`` on its device, the running one included.
        waiting = [j for j in self._waiting.get(job.device, []) if not j.done]
        order = order_turns(waiting, self._served.get(job.device, {}))
        running = sum(1 for j in self._jobs.values() if j.device == job.device and j.status is RunStatus.RUNNING)
        return running + (order.index(job) if job in order else 0)

    def _waiting_on(self, device: str) -> list[Job]:
        # Called under self._lock: the worker is created once per device, lazily.
        if device not in self._waiting:
            self._waiting[device], self._served[device] = [], {}
            if self.processes:
                self._processes[device] = WorkerProcess(device, self.torch_threads, self.preload)
            worker = threading.Thread(
                target=self._work, args=(device,), name=f"clm-jobs-{device}", daemon=True
            )
            self._workers[device] = worker
            worker.start()
        return self._waiting[device]

    def _work(self, device: str) -> None:
        if device in self._processes:
            self._processes[device].start()  # its imports run now, while the user is still choosing
        while True:
            with self._wake:
                while not self._stopping and not self._waiting[device]:
                    self._wake.wait()
                if self._stopping:
                    return
                job = order_turns(self._waiting[device], self._served[device])[0]
                self._waiting[device].remove(job)
                if not job.cancel_event.is_set():  # one cancelled while it waited takes no turn
                    self._note_served(device, job.owner)
            self._run(job)

    SERVED_KEPT = 1000
    """Owners whose last turn a device remembers: a server that runs for months meets a new session token a visit."""

    def _note_served(self, device: str, owner: str | None) -> None:
        # Called under self._lock. Forgetting an owner with nothing waiting only puts its next job first, as a new
        # session's would be.
        served = self._served[device]
        served[owner] = next(self._turns)
        if len(served) > self.SERVED_KEPT:
            waiting = {job.owner for job in self._waiting[device]}
            for gone in sorted((o for o in served if o not in waiting), key=served.__getitem__)[: len(served) // 2]:
                del served[gone]

    def turn_order(self, device: str) -> list[Job]:
        """The jobs waiting on ``device`` in the order they will start (cancelled ones left out)."""
        with self._lock:
            waiting = [job for job in self._waiting.get(normalise_device(device), []) if not job.done]
            return order_turns(waiting, self._served.get(normalise_device(device), {}))

    def _run(self, job: Job) -> None:
        if self._exiting or not job.claim():  # the server is going (``_server_exiting`` ends it), or cancelled
            return
        try:
            self._run_claimed(job)
        except Exception:  # noqa: BLE001 - a fault outside the job itself: fail it, keep serving the queue
            job.error = traceback.format_exc()
            self._finish(job, RunStatus.FAILED)

    def _run_claimed(self, job: Job) -> None:
        if job.cancel_event.is_set():
            self._finish(job, RunStatus.CANCELLED)
            return
        # Under the queue's lock, as ``_server_exiting`` reads the jobs: a job either starts (job and run running)
        # before the server's exit looks, and is ended interrupted by it, or sees the exit and never starts.
        with self._lock:
            exiting = self._exiting
            if not exiting:
                job.started = time.time()
                # The row first: a running job implies a running run. A registry that cannot record it fails the
                # job (its run would otherwise stay "pending" while it trains).
                if self.store is not None and job.run_id:
                    with contextlib.suppress(RunNotFoundError):  # the run may have been deleted meanwhile
                        self.store.set_status(job.run_id, RunStatus.RUNNING)
                job.status = RunStatus.RUNNING
        if exiting:  # claimed as the server began to go: ``_server_exiting`` passed it by
            job.error = NEVER_STARTED
            self._finish(job, RunStatus.INTERRUPTED)
            return
        _log.info("%s started: %s, after %s in the queue", job.id, _about(job), _took(job.started - job.submitted))
        try:
            with self._device_turn(job) as turn:
                job.result = self._call(job) if turn else None  # None: cancelled, or the server went, meanwhile
        except BaseException as exc:  # noqa: BLE001 - any failure of the job is reported, the worker lives on
            if self._exiting:  # its worker was ended with the server: already recorded interrupted
                return
            job.error = str(exc) if isinstance(exc, JobFailed) else traceback.format_exc()
            # A worker stopped by SIGTERM: the server's whole process group was (`timeout`, systemd), the worker
            # first; the job did not fail (the operations review: "failed: worker died (SIGTERM)")
            stopped = isinstance(exc, JobFailed) and exc.stopped
            self._finish(job, RunStatus.INTERRUPTED if stopped else RunStatus.FAILED)
            return
        if not self._exiting:
            self._finish(job, _result_status(job))

    @contextlib.contextmanager
    def _device_turn(self, job: Job) -> Iterator[bool]:
        """Hold the device across every server on this runs folder while ``job`` runs (a lock file in it, held with
        ``fcntl.flock``, which the kernel lets go when the server dies): a restart overlapping the old server, or a
        second server on the same folder, ran two trainings on one GPU at once (the crash review). While another
        server's job holds it, the job says so and waits; yields False when it was cancelled, or this server began to
        go, meanwhile. Without a store, inline, or without ``fcntl`` (Windows): this server's own queue alone."""
        try:
            import fcntl
        except ImportError:
            fcntl = None  # type: ignore[assignment]
        if self.store is None or self.inline or fcntl is None:
            yield True
            return
        path = Path(self.store.root) / f".device-{re.sub(r'[^A-Za-z0-9_-]', '-', job.device)}.lock"
        with open(path, "a+b") as handle:
            said = False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if job.cancel_event.is_set() or self._exiting:
                        yield False
                        return
                    if not said:
                        job.on_phase(OTHER_SERVER_PHASE, 0, 1)
                        said = True
                    time.sleep(DEVICE_POLL_SECONDS)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _call(self, job: Job) -> Any:
        process = self._processes.get(job.device)
        if process is None:
            phase = {"on_phase": job.on_phase} if takes_phases(job.fn) else {}
            return job.fn(**job.kwargs, on_step=job.on_step, should_stop=job.should_stop, **phase)
        return process.run(job.fn, job.kwargs, job.on_step, job.cancel_event)

    def _finish(self, job: Job, status: RunStatus) -> None:
        """End the job: its run's metrics and status in the store (a store fault is logged, never raised: the
        job must end), then the job's own state. Once per job: the server's exit and the job's own end may race."""
        with self._lock:
            if job.finished is not None:
                return
            job.finished = time.time()
        kept = _keep_error(job) if status is RunStatus.FAILED else ""
        metrics = getattr(job.result, "metrics", None)
        if self.store is not None and job.run_id and isinstance(metrics, dict) and metrics:
            self._store_call(job, self.store.update_metrics, job.run_id, metrics)
        if isinstance(metrics, dict):  # kept with the job for FINISHED_JOBS_KEPT jobs: not the figures that grow with
            # the labels, which the run's metrics.json holds (the scale review: 815 MB for 100 jobs of 1,000 labels)
            with contextlib.suppress(AttributeError):
                job.result.metrics = {k: v for k, v in metrics.items() if k not in PER_LABEL_METRICS}
        self._set_run_status(job, status, last_line(job.error))
        job.status = status
        job.kwargs = {}  # the job's data set (an upload can be 200 MB) is not kept for the server's lifetime
        _log_end(job, status, kept)  # before it is done: whoever waits for it finds the line written
        job._done.set()

    def _set_run_status(self, job: Job, status: RunStatus, error: str | None = None) -> None:
        """Move the job's run to ``status``; a store fault (a locked or full database) is logged, not raised."""
        if self.store is not None and job.run_id:
            self._store_call(job, self.store.set_status, job.run_id, status, error=error)

    @staticmethod
    def _store_call(job: Job, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except RunNotFoundError:  # the run was deleted meanwhile; a registry that cannot answer is logged below
            pass
        except Exception as exc:  # noqa: BLE001 - the registry failed; the job's own state still ends
            print(f"clm-explore: could not record {job.id} ({job.run_id}) in the run registry: {exc}",
                  file=sys.stderr, flush=True)

    # -- reading and control ---------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """All jobs, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def for_run(self, run_id: str) -> Job | None:
        """The latest job of a run, if this queue has one."""
        found = [j for j in self.jobs() if j.run_id == run_id]
        return found[-1] if found else None

    def active(self) -> list[Job]:
        """Jobs pending or running, oldest first."""
        return [j for j in self.jobs() if not j.done]

    def cancel(self, job_id: str, by: str | None = None) -> None:
        """Ask the job to stop. One still waiting ends now, cancelled (its card and its run say so, and the run
        can be deleted), rather than when its turn comes. ``by``: who asked (kept as ``job.cancelled_by``)."""
        job = self.get(job_id)
        if job is None or job.done:  # a click that came after the job ended (another session's, say) changes nothing
            return
        if not job.cancel_event.is_set():
            job.cancelled_by = by
        job.cancel()
        if job.claim():
            self._finish(job, RunStatus.CANCELLED)

    def devices(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def warm(self, device: str | None = None) -> None:
        """Start the worker of ``device`` now (with ``processes``, its child and imports) rather than at the
        first job."""
        if not self.inline:
            with self._lock:
                self._waiting_on(normalise_device(device))

    def _server_exiting(self) -> None:
        """At the server's exit (Ctrl+C, SIGTERM), before multiprocessing terminates the worker processes: a running
        job ends interrupted, as a restarted server would mark its run, not failed by its worker's death; a job
        still waiting its turn is not started, and ends interrupted too, saying so."""
        with self._lock:  # see ``_run_claimed``: no job starts after this
            self._exiting = True
            jobs = list(self._jobs.values())
        ran, waited = [], []
        for job in jobs:
            if job.status is RunStatus.RUNNING:
                job.error = "the server stopped while the job ran"
                self._finish(job, RunStatus.INTERRUPTED)
                ran.append(job)
            elif job.claim():  # still waiting: the worker will not take it now
                job.error = NEVER_STARTED
                self._finish(job, RunStatus.INTERRUPTED)
                waited.append(job)
        _log_exit([j for j in ran if j.status is RunStatus.INTERRUPTED], waited)  # not one that ended meanwhile

    def shutdown(self, timeout: float | None = 5.0) -> None:
        """Cancel everything (a waiting job ends cancelled at once) and stop the workers (tests)."""
        for job in self.jobs():
            self.cancel(job.id)
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
            workers = list(self._workers.values())
        for worker in workers:
            worker.join(timeout)
        for process in list(self._processes.values()):
            process.close(timeout)


def _at_exit(jobs_ref: weakref.ref[JobQueue]) -> None:
    jobs = jobs_ref()
    if jobs is not None:
        jobs._server_exiting()


def _about(job: Job) -> str:
    """What the log says of a job: its run, method and device (ids and names only, never its data or owner)."""
    return f"run {job.run_id or '-'}, method {job.method}, on {job.device}"


def _took(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


REASON_CHARS = 300
"""The most of a failure's reason one log line carries (a line of the traceback can be long)."""


def _log_end(job: Job, status: RunStatus, kept: str) -> None:
    """One line for the job's end: how, after how long, and for a failure or an interruption why (``kept``: where
    its traceback is)."""
    finished = job.finished or time.time()
    if job.started is None:
        took = f"never started, after {_took(finished - job.submitted)} in the queue"
    else:
        took = f"after {_took(finished - job.started)}"
    stopped = status in (RunStatus.FAILED, RunStatus.INTERRUPTED)
    why = f": {(last_line(job.error) or 'no reason given')[:REASON_CHARS]}" if stopped else ""
    _log.log(logging.WARNING if stopped else logging.INFO, "%s %s: %s, %s%s%s", job.id, status.value, _about(job),
             took, why, f" ({kept})" if kept else "")


def _keep_error(job: Job) -> str:
    """Write a failed job's traceback into its run folder (``ERROR_FILE``), so that it outlives the server; what the
    log line says of it. Only into the folder the job wrote its run into (its ``out_dir``, holding the run's
    clm_run.json): a stray file in a folder that is no run folder makes ``--overwrite`` refuse it. Never raises:
    the job's bookkeeping goes on whatever the disk says."""
    folder = Path(job.kwargs["out_dir"]) if job.kwargs.get("out_dir") and job.error else None
    try:
        if folder is None or folder.is_symlink() or not (folder / "clm_run.json").is_file():
            return "no run folder to keep its traceback in"
        write_text_atomic(folder / ERROR_FILE, job.error or "")
    except OSError as exc:  # a full disk, say: the reason is in the line already
        return f"its traceback could not be written into {folder}: {exc.strerror or exc}"
    return f"traceback in {folder / ERROR_FILE}"


def _log_exit(interrupted: list[Job], never_started: list[Job]) -> None:
    """The server's last word on its jobs: which runs it interrupted, which queued jobs never started."""
    def named(jobs: list[Job]) -> str:
        return ", ".join(f"{job.id} (run {job.run_id or '-'})" for job in jobs) or "none"

    _log.log(logging.WARNING if interrupted or never_started else logging.INFO,
             "server exiting: interrupted while running: %s; queued, never started: %s",
             named(interrupted), named(never_started))


def order_turns(waiting: list[Job], served: dict[str | None, int]) -> list[Job]:
    """``waiting`` (in submission order) in the order the jobs take their turns: each turn goes to the owner served
    least recently (never served first; between those, the one whose oldest job waits longest), to that owner's
    oldest job. ``served``: the turn at which each owner was last served."""
    served, left, order = dict(served), list(waiting), []
    turn = max(served.values(), default=-1)
    while left:
        first_job: dict[str | None, int] = {}
        for position, job in enumerate(left):
            first_job.setdefault(job.owner, position)
        owner = min(first_job, key=lambda o: (served.get(o, -1), first_job[o]))
        order.append(left.pop(first_job[owner]))
        turn += 1
        served[owner] = turn
    return order


def normalise_device(device: str | None) -> str:
    """'cuda' -> 'cuda:0'; 'auto' and None -> 'cuda:0' when CUDA is present, else 'cpu'."""
    device = (device or "auto").strip().lower()
    if device == "auto":
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:  # pragma: no cover - torch is a core dependency
            device = "cpu"
    return "cuda:0" if device == "cuda" else device


OTHER_SERVER_PHASE = "waiting for another server's job on this device (a server sharing this runs folder)"
"""What a job says while a job of another server on the same runs folder holds its device (``_device_turn``)."""
DEVICE_POLL_SECONDS = 1.0


def _result_status(job: Job) -> RunStatus:
    """The job's end state: the result's own ``status`` when it has one, else from the cancel flag."""
    reported = getattr(job.result, "status", None)
    if reported is not None:
        try:
            return RunStatus(str(getattr(reported, "value", reported)))
        except ValueError:
            pass
    return RunStatus.CANCELLED if job.cancel_event.is_set() else RunStatus.SUCCEEDED


def last_line(text: str | None) -> str | None:
    """The last non-blank line of a traceback (the exception and its message), or None; a full disk said in plain
    words before it (its line read "SafetensorError: Error while serializing: I/O error: ... (os error 28)")."""
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    if DISK_FULL.search(lines[-1]):
        return (f"A disk the run writes to is full (its runs folder's, the model cache's or the temporary "
                f"folder's): free some room there, then launch it again. ({lines[-1].strip()})")
    return lines[-1]


DISK_FULL = re.compile(r"No space left on device|\[Errno 28\]|os error 28|ENOSPC")
"""How a full disk reads in an error: Python's OSError, a Rust library's (safetensors, tokenizers), the C name."""


# ---------------------------------------------------------------------------------------- keyed tasks


ABANDONED_SECONDS = 180.0
"""A keyed task no caller has watched for this long is stopped when another task, which a caller has watched that
recently, waits behind it (long: a browser slows a background tab's timers, down to one a minute)."""


class TaskStopped(Exception):
    """A keyed task ended at a caller's asking (``KeyedTasks.stop``)."""


@dataclass
class KeyedTask:
    """One piece of work run once for its key; ``progress`` is (phase, done, total) as the work last reported it."""

    key: Any
    progress: tuple[str, int, int] = ("starting", 0, 1)
    result: Any = None
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    stop_asked: threading.Event = field(default_factory=threading.Event)
    label: str = ""
    """What the work is, in a few words, for those waiting behind it ("the label check of trec6")."""
    watched: float = field(default_factory=time.monotonic)
    """When a caller last looked at it (``watch``; ``time.monotonic``)."""
    stop_reason: str = ""
    """Why it was stopped when no caller asked (``KeyedTasks``: nobody watched it while another waited)."""
    phase_started: tuple[float, int] = field(default_factory=lambda: (time.monotonic(), 0))
    """When its current phase was first reported (``time.monotonic``) and its count then: its pace since."""

    def watch(self) -> None:
        """Say that a caller is following it (a page polling its progress): a task nobody follows is stopped when
        another waits behind it (``ABANDONED_SECONDS``)."""
        self.watched = time.monotonic()

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    @property
    def stopped(self) -> bool:
        """Ended by ``KeyedTasks.stop`` (its ``error`` is a ``TaskStopped``)."""
        return self.done and isinstance(self.error, TaskStopped)

    def report(self, phase: str, done: int, total: int) -> None:
        """Where the work says how far it got, and where a stop asked for ends it (the work's next report)."""
        if self.stop_asked.is_set():
            raise TaskStopped(f"Stopped while {phase}.")
        if phase != self.progress[0]:
            self.phase_started = (time.monotonic(), done)
        self.progress = (phase, done, total)

    def seconds_left(self) -> float | None:
        """The current phase's time left at its pace since it was first reported (its counts say how far it is),
        once it has counted a step more and run a second; None before, or for a phase without counts."""
        _, done, total = self.progress
        started, done_then = self.phase_started
        took, steps = time.monotonic() - started, done - done_then
        if total <= 1 or steps < 1 or took < 1.0:
            return None
        return took / steps * max(total - done, 0)


class KeyedTasks:
    """Work shared by every caller that asks for the same key (the app's browser sessions): started once, on a
    thread of its own, so that a caller may come and go (a page rerun, another click) without stopping it or
    starting it twice. The newest ``kept`` finished tasks are kept for their results; a failed one until
    ``forget``. At most ``at_once`` run at a time (each may hold a model on the server's device); the others wait,
    their phase "waiting for another to end". ``stop`` ends one at its next report (a waiting one at once); it is
    then kept like a failed one, so that every caller following it reads that it stopped."""

    def __init__(self, kept: int = 8, at_once: int = 1) -> None:
        self._tasks: dict[Any, KeyedTask] = {}
        self._lock = threading.Lock()
        self._kept = kept
        self._gate = threading.Semaphore(at_once)
        self._holder: KeyedTask | None = None  # the task running now (at_once 1), for those waiting behind it

    def get_or_start(self, key: Any, work: Callable[[Callable[[str, int, int], None]], Any],
                     inline: bool = False, label: str = "") -> KeyedTask:
        """The task of ``key``, started now as ``work(report)`` when there is none (``inline``: in this thread, done
        on return, as tests want it); watched now either way (``KeyedTask.watch``). ``label``: what it is, for
        those that wait behind it."""
        with self._lock:
            task = self._tasks.get(key)
            if task is not None:
                self._tasks[key] = self._tasks.pop(key)  # the newest asked for is the last to go
                task.watch()
                return task
            task = self._tasks[key] = KeyedTask(key, label=label)
            self._trim()
        if inline:
            self._run(task, work)
        else:
            threading.Thread(target=self._run, args=(task, work), name=f"task-{key!r:.40}", daemon=True).start()
        return task

    def known(self, key: Any) -> KeyedTask | None:
        """The task of ``key`` when there is one (running, waiting or kept), watched now; None starts nothing."""
        with self._lock:
            task = self._tasks.get(key)
        if task is not None:
            task.watch()
        return task

    def forget(self, task: KeyedTask) -> None:
        """Drop ``task`` (a failed one, to be tried again), not a newer task of its key that another caller started."""
        with self._lock:
            if self._tasks.get(task.key) is task:
                del self._tasks[task.key]

    @staticmethod
    def stop(task: KeyedTask) -> None:
        """Ask ``task`` to end: its work raises ``TaskStopped`` at its next report. It is shared, so it stops for
        every caller (the app says so); one already done is left as it is."""
        task.stop_asked.set()

    def failed(self, key: Any) -> KeyedTask | None:
        """The task of ``key`` when it ended in an error (a stop too) or is stopping, else None: a caller that asks
        again is not answered by one that will not give a result."""
        with self._lock:
            task = self._tasks.get(key)
        gone = task is not None and (task.stop_asked.is_set() or (task.done and task.error is not None))
        return task if gone else None

    def _run(self, task: KeyedTask, work: Callable[[Callable[[str, int, int], None]], Any]) -> None:
        try:
            self._enter(task)
        except TaskStopped as exc:  # stopped while it waited: it never held the gate
            task.error = exc
            task.finished.set()
            return
        with self._lock:
            self._holder = task
        try:
            result = work(task.report)
            with self._lock:  # a result came: a stop asked after its last report is moot (and must not discard it)
                task.result, self._holder = result, None
                task.stop_asked.clear()
                task.stop_reason = ""
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the task, in their thread
            traceback.clear_frames(exc.__traceback__)  # the lines stay; the frames' locals (a model, say) are let go
            task.error = exc
        finally:
            with self._lock:
                self._holder = None
            self._gate.release()
            task.finished.set()

    def _enter(self, task: KeyedTask) -> None:
        """Wait for the gate, hearing a stop meanwhile (a task stopped while it waits ends without running), saying
        what it waits for; the task holding the gate is stopped when no caller has watched it for
        ``ABANDONED_SECONDS`` (a session that went on to other data left it running, and everyone waited)."""
        if self._gate.acquire(blocking=False):
            return
        while not self._gate.acquire(timeout=0.2):
            if task.stop_asked.is_set():
                raise TaskStopped("Stopped before it started (it was waiting for another to end).")
            with self._lock:
                holder = self._holder
                now = time.monotonic()
                # Only for a waiter someone follows, and only the holder still running (under the lock, which the
                # holder takes to hand in its result): a waiter left behind too stops nobody.
                if (holder is not None and now - holder.watched > ABANDONED_SECONDS
                        and now - task.watched <= ABANDONED_SECONDS):
                    holder.stop_reason = "no page followed it while another waited behind it"
                    holder.stop_asked.set()
            ahead = f"waiting for {holder.label} to end" if holder is not None and holder.label else (
                "waiting for another to end")
            task.report(ahead, 0, 1)

    def _trim(self) -> None:
        finished = [k for k, t in self._tasks.items() if t.done]
        for key in finished[: max(0, len(finished) - self._kept)]:
            del self._tasks[key]
