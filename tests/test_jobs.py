"""JobQueue with trivial functions: status transitions, turns per device shared between owners, cancel, failures."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clm_explore.jobs import JobQueue, normalise_device
from clm_explore.runs import RunStatus, RunStore
from tests.conftest import wait_until


@dataclass
class FakeResult:
    status: str
    metrics: dict[str, Any]


def count_steps(
    n: int,
    log: list[int] | None = None,
    tag: int = 0,
    gate: threading.Event | None = None,
    on_step=None,
    should_stop=None,
) -> FakeResult:
    if gate is not None:
        gate.wait(30)
    if log is not None:
        log.append(tag)
    for step in range(1, n + 1):
        if should_stop():
            return FakeResult("cancelled", {})
        on_step(
            {
                "step": step,
                "total_steps": n,
                "epoch": step / n,
                "loss": 1.0 / step,
                "eval": {"accuracy": 0.5} if step == n else None,
            }
        )
    return FakeResult("succeeded", {"accuracy": 0.75})


def boom(on_step=None, should_stop=None) -> None:
    raise ValueError("bad input")


@pytest.fixture
def store() -> RunStore:
    return RunStore()


@pytest.fixture
def jobs(store: RunStore):
    q = JobQueue(store)
    yield q
    q.shutdown()


def test_success_updates_run_and_progress(jobs: JobQueue, store: RunStore) -> None:
    run = store.create("ok", "sparse", {})
    job = jobs.submit(count_steps, {"n": 4}, run_id=run.id, device="cpu")
    assert job.wait(30)
    assert job.status is RunStatus.SUCCEEDED
    progress = job.progress()
    assert (progress.step, progress.total_steps, progress.fraction) == (4, 4, 1.0)
    assert [s for s, _ in progress.losses] == [1, 2, 3, 4]
    assert progress.eval_history == [{"step": 4, "epoch": 1.0, "accuracy": 0.5}]
    job.on_step({"step": 4, "loss": float("nan"), "eval": None})
    assert job.progress().loss == 0.25 and len(job.progress().losses) == 4  # NaN loss ignored
    record = store.get(run.id)
    assert record.status is RunStatus.SUCCEEDED and record.metrics == {"accuracy": 0.75}
    assert job.kwargs == {}  # the job's arguments (a whole data set in the app) are not kept once it ends


def with_a_confusion_matrix(on_step=None, should_stop=None) -> FakeResult:
    labels = [f"l{i}" for i in range(300)]
    return FakeResult("succeeded", {"accuracy": 0.5, "labels": labels, "per_label_f1": dict.fromkeys(labels, 0.5),
                                    "confusion": [[1] * 300 for _ in range(300)]})


def test_a_finished_job_keeps_its_figures_but_not_those_that_grow_with_the_labels(jobs: JobQueue,
                                                                                   store: RunStore) -> None:
    """The scale review: the queue kept each of its last 100 jobs' confusion matrix (815 MB at 1,000 labels); the
    run's metrics.json holds it."""
    run = store.create("wide", "head", {})
    job = jobs.submit(with_a_confusion_matrix, {}, run_id=run.id, device="cpu")
    assert job.wait(30) and job.status is RunStatus.SUCCEEDED
    assert job.result.metrics == {"accuracy": 0.5}
    assert store.get(run.id).metrics == {"accuracy": 0.5}


def test_running_status_seen_while_it_runs(jobs: JobQueue, store: RunStore) -> None:
    gate = threading.Event()
    run = store.create("slow", "full", {})
    job = jobs.submit(count_steps, {"n": 2, "gate": gate}, run_id=run.id)
    assert wait_until(lambda: job.status is RunStatus.RUNNING, every=0.01)
    assert store.get(run.id).status is RunStatus.RUNNING
    gate.set()
    assert job.wait(30) and store.get(run.id).status is RunStatus.SUCCEEDED


def test_fifo_per_device(jobs: JobQueue) -> None:
    log: list[int] = []
    gate = threading.Event()
    first = jobs.submit(count_steps, {"n": 1, "log": log, "tag": 0, "gate": gate})
    rest = [jobs.submit(count_steps, {"n": 1, "log": log, "tag": i}) for i in range(1, 5)]
    assert all(j.status is RunStatus.PENDING for j in rest)
    gate.set()
    for job in [first, *rest]:
        assert job.wait(30)
    assert log == [0, 1, 2, 3, 4]
    assert [j.id for j in jobs.jobs()] == [first.id, *(j.id for j in rest)]
    assert jobs.devices() == ["cpu"]


def test_turns_go_round_the_owners(jobs: JobQueue) -> None:
    """One session's ten queued runs must not hold another session's one run back behind all ten (the two-user
    review: a 1-epoch head job waited behind 17 of another user's); each owner's own jobs keep their order."""
    log: list[int] = []
    gate = threading.Event()
    first = jobs.submit(count_steps, {"n": 1, "log": log, "tag": 0, "gate": gate}, owner="a")
    _running(first)  # a is served, then the rest queue
    a_jobs = [jobs.submit(count_steps, {"n": 1, "log": log, "tag": i}, owner="a") for i in (1, 2, 3)]
    b_job = jobs.submit(count_steps, {"n": 1, "log": log, "tag": 10}, owner="b")
    c_job = jobs.submit(count_steps, {"n": 1, "log": log, "tag": 20}, owner="c")
    b_again = jobs.submit(count_steps, {"n": 1, "log": log, "tag": 11}, owner="b")
    assert [j.id for j in jobs.turn_order("cpu")] == [j.id for j in (b_job, c_job, a_jobs[0], b_again, *a_jobs[1:])]
    jobs.cancel(c_job.id)  # a cancelled job takes no turn and is not shown waiting
    assert c_job.id not in [j.id for j in jobs.turn_order("cpu")]
    gate.set()
    for job in [first, *a_jobs, b_job, b_again]:
        assert job.wait(30)
    assert log == [0, 10, 1, 11, 2, 3]


def test_turn_order_of_owners_never_served_is_by_their_oldest_job() -> None:
    from types import SimpleNamespace

    from clm_explore.jobs import order_turns

    waiting = [SimpleNamespace(owner=o, tag=i) for i, o in enumerate(["x", "x", "y", None, "y", None])]
    assert [j.tag for j in order_turns(waiting, {})] == [0, 2, 3, 1, 4, 5]
    assert [j.tag for j in order_turns(waiting, {"x": 5, "y": 3})] == [3, 2, 0, 5, 4, 1]


def _running(job) -> None:
    assert wait_until(lambda: job.status is RunStatus.RUNNING, every=0.01), "the job never started"


def test_a_job_cancelled_while_it_waits_takes_no_turn_from_its_owner(jobs: JobQueue) -> None:
    log: list[int] = []
    gate = threading.Event()
    first = jobs.submit(count_steps, {"n": 1, "log": log, "tag": 0, "gate": gate}, owner="a")
    _running(first)
    c1 = jobs.submit(count_steps, {"n": 1, "log": log, "tag": 1}, owner="c")
    a1 = jobs.submit(count_steps, {"n": 1, "log": log, "tag": 2}, owner="a")
    c2 = jobs.submit(count_steps, {"n": 1, "log": log, "tag": 3}, owner="c")
    jobs.cancel(c1.id)
    gate.set()
    for job in (first, a1, c2):
        assert job.wait(30)
    assert log == [0, 3, 2]  # c still never served: its second job goes before a's next (a turn for c1: 0, 2, 3)


def test_shutdown_ends_a_waiting_job_cancelled(store: RunStore) -> None:
    queue = JobQueue(store)
    gate = threading.Event()
    running = queue.submit(count_steps, {"n": 2, "gate": gate})
    _running(running)
    run = store.create("waiting", "sparse", {})
    waiting = queue.submit(count_steps, {"n": 2}, run_id=run.id)
    gate.set()
    queue.shutdown(30)
    assert waiting.wait(30) and waiting.status is RunStatus.CANCELLED  # the diff review: it stayed pending for ever
    assert store.get(run.id).status is RunStatus.CANCELLED


def test_cancel_running_and_pending(jobs: JobQueue, store: RunStore) -> None:
    gate = threading.Event()
    running_run = store.create("running", "sparse", {})
    waiting_run = store.create("waiting", "sparse", {})
    running = jobs.submit(count_steps, {"n": 3, "gate": gate}, run_id=running_run.id)
    waiting = jobs.submit(count_steps, {"n": 3}, run_id=waiting_run.id)
    running.cancel()
    jobs.cancel(waiting.id)
    gate.set()
    assert running.wait(30) and waiting.wait(30)
    assert running.status is RunStatus.CANCELLED and waiting.status is RunStatus.CANCELLED
    assert waiting.started is None  # never began
    assert store.get(running_run.id).status is RunStatus.CANCELLED
    assert store.get(waiting_run.id).status is RunStatus.CANCELLED


def test_a_waiting_job_cancelled_ends_at_once(jobs: JobQueue, store: RunStore) -> None:
    gate = threading.Event()
    ahead = jobs.submit(count_steps, {"n": 1, "gate": gate})
    run = store.create("waiting", "sparse", {})
    waiting = jobs.submit(count_steps, {"n": 3}, run_id=run.id)
    jobs.cancel(waiting.id)
    # Not when the job ahead ends (hours, behind a real finetune): now, so that its run can be deleted.
    assert waiting.done and waiting.status is RunStatus.CANCELLED and waiting.started is None
    assert store.get(run.id).status is RunStatus.CANCELLED
    store.delete(run.id)
    gate.set()
    after = jobs.submit(count_steps, {"n": 1})
    assert ahead.wait(30) and after.wait(30)  # the worker skips the cancelled job and goes on
    assert ahead.status is RunStatus.SUCCEEDED and after.status is RunStatus.SUCCEEDED
    assert waiting.progress().step == 0  # it never ran


def test_a_registry_fault_fails_one_job_and_the_queue_goes_on(jobs: JobQueue, store: RunStore, monkeypatch,
                                                                capsys) -> None:
    import sqlite3

    real = store.set_status
    faults = iter([True])

    def flaky(*args, **kwargs):
        if next(faults, False):
            raise sqlite3.OperationalError("database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "set_status", flaky)
    run = store.create("locked", "sparse", {})
    first = jobs.submit(count_steps, {"n": 1}, run_id=run.id)
    second = jobs.submit(count_steps, {"n": 1}, run_id=store.create("next", "sparse", {}).id)
    assert first.wait(30) and second.wait(30)
    assert first.status is RunStatus.FAILED and "database is locked" in first.error
    assert store.get(run.id).status is RunStatus.FAILED  # the fault passed; its failure is recorded
    assert second.status is RunStatus.SUCCEEDED


def test_failure_keeps_traceback_and_worker_lives(jobs: JobQueue, store: RunStore) -> None:
    run = store.create("bad", "sparse", {})
    failed = jobs.submit(boom, {}, run_id=run.id)
    after = jobs.submit(count_steps, {"n": 1})
    assert failed.wait(30) and after.wait(30)
    assert failed.status is RunStatus.FAILED and "ValueError: bad input" in failed.error
    assert store.get(run.id).error == "ValueError: bad input"
    assert after.status is RunStatus.SUCCEEDED


# -- the server's log (the operations review: it held Streamlit's start-up lines alone) -------------------------
def fail_in_run_folder(out_dir: str, on_step=None, should_stop=None) -> None:
    Path(out_dir, "clm_run.json").write_text("{}")  # as finetune begins its run folder
    raise FloatingPointError("the loss diverged at lr 1.0")


def _lines(caplog: pytest.LogCaptureFixture, job) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "clm_explore.jobs" and r.getMessage().startswith(
        f"{job.id} ")]


def test_a_failed_job_keeps_its_traceback_in_its_run_folder_and_logs_why(
        jobs: JobQueue, store: RunStore, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    from clm_explore import jobs as jobs_module

    caplog.set_level(logging.INFO, logger="clm_explore.jobs")
    run = store.create("diverged", "lora", {})
    job = jobs.submit(fail_in_run_folder, {"out_dir": str(run.path)}, run_id=run.id)
    assert job.wait(30) and job.status is RunStatus.FAILED
    kept = run.path / "error.txt"
    assert kept.read_text() == job.error and "Traceback" in job.error  # the whole traceback, after a restart too
    failed = _lines(caplog, job)[-1]
    assert failed.startswith(f"{job.id} failed: run {run.id}, method fail_in_run_folder, on cpu, after ")
    assert f"FloatingPointError: the loss diverged at lr 1.0 (traceback in {kept})" in failed
    assert [r.levelno for r in caplog.records if r.getMessage() == failed] == [logging.WARNING]
    # A folder the job never made a run folder gets no stray file; a disk that refuses the write fails nothing more.
    empty = store.create("early", "sparse", {})
    assert jobs.submit(boom, {"out_dir": str(empty.path)}, run_id=empty.id).wait(30)
    assert list(empty.path.iterdir()) == []

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jobs_module, "write_text_atomic", full)
    disk = store.create("full", "sparse", {})
    job = jobs.submit(fail_in_run_folder, {"out_dir": str(disk.path)}, run_id=disk.id)
    assert job.wait(30) and job.status is RunStatus.FAILED and store.get(disk.id).status is RunStatus.FAILED
    assert _lines(caplog, job)[-1].endswith(f"(its traceback could not be written into {disk.path}: No space left "
                                            "on device)")


def train_quietly(cfg, data, on_step=None, should_stop=None) -> FakeResult:
    return FakeResult("succeeded", {"accuracy": 0.75})


def test_a_succeeded_job_logs_queued_started_and_succeeded(jobs: JobQueue, store: RunStore,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    caplog.set_level(logging.INFO, logger="clm_explore.jobs")
    gate = threading.Event()
    ahead = jobs.submit(count_steps, {"n": 1, "gate": gate})
    _running(ahead)
    run = store.create("ok", "sparse", {})
    job = jobs.submit(train_quietly, {"cfg": SimpleNamespace(method="sparse"), "data": "a user's secret text"},
                      run_id=run.id, owner="session-token")
    gate.set()
    assert job.wait(30) and job.status is RunStatus.SUCCEEDED
    about = f"run {run.id}, method sparse, on cpu"
    queued, started, succeeded = _lines(caplog, job)
    assert queued == f"{job.id} queued: {about}, 1 ahead"  # the running job
    assert started.startswith(f"{job.id} started: {about}, after ") and started.endswith(" s in the queue")
    assert succeeded.startswith(f"{job.id} succeeded: {about}, after ") and succeeded.endswith(" s")
    logged = caplog.text
    assert "secret" not in logged and "session-token" not in logged  # neither the data nor the owner's token


def test_the_servers_exit_logs_the_runs_it_interrupted_and_the_jobs_that_never_started(
        store: RunStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clm_explore.jobs")
    queue, gate = JobQueue(store), threading.Event()
    running_run, waiting_run = store.create("running", "sparse", {}), store.create("waiting", "full", {})
    running = queue.submit(count_steps, {"n": 1, "gate": gate}, run_id=running_run.id)
    _running(running)
    waiting = queue.submit(count_steps, {"n": 1}, run_id=waiting_run.id)
    try:
        queue._server_exiting()
    finally:
        gate.set()
        queue.shutdown(30)
    assert (f"server exiting: interrupted while running: {running.id} (run {running_run.id}); queued, never "
            f"started: {waiting.id} (run {waiting_run.id})") in caplog.messages
    assert _lines(caplog, waiting)[-1].startswith(f"{waiting.id} interrupted: run {waiting_run.id}, method "
                                                  "count_steps, on cpu, never started, after ")


def test_inline_runs_in_submit(store: RunStore) -> None:
    q = JobQueue(store, inline=True)
    job = q.submit(count_steps, {"n": 2})
    assert job.done and job.status is RunStatus.SUCCEEDED
    assert q.active() == [] and q.for_run("x") is None


def test_normalise_device() -> None:
    assert normalise_device("cuda") == "cuda:0"
    assert normalise_device("CPU") == "cpu"
    assert normalise_device("auto") in ("cpu", "cuda:0")


# -- jobs in a worker process (the app's mode) ---------------------------------------------------------
def report_pid(steps: int = 2, on_step=None, should_stop=None) -> FakeResult:
    for step in range(1, steps + 1):
        on_step({"step": step, "total_steps": steps, "loss": 1.0 / step})
    return FakeResult("succeeded", {"pid": os.getpid()})


def run_until_stopped(on_step=None, should_stop=None) -> FakeResult:
    deadline = time.monotonic() + 120
    step = 0
    while not should_stop() and time.monotonic() < deadline:
        step += 1
        on_step({"step": step, "total_steps": 10**6, "loss": 1.0})
        time.sleep(0.01)
    return FakeResult("cancelled" if should_stop() else "succeeded", {})


def prepare_then_wait(on_step=None, should_stop=None, on_phase=None) -> FakeResult:
    on_phase("scoring rows", 3, 8)  # as finetune reports its preparation before training's first step
    deadline = time.monotonic() + 120
    while not should_stop() and time.monotonic() < deadline:
        time.sleep(0.01)
    return FakeResult("cancelled", {})


def terminate_self(**kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)


def die(on_step=None, should_stop=None) -> None:
    os._exit(3)


@pytest.fixture(scope="module")
def process_jobs(tmp_path_factory: pytest.TempPathFactory):
    # Its own root: a module fixture is set up before the per-test run root of conftest applies,
    # so RunStore() here would write into ./runs.
    q = JobQueue(RunStore(tmp_path_factory.mktemp("process-jobs") / "runs"), processes=True)
    q.warm("cpu")
    yield q
    q.shutdown()


def test_process_jobs_run_in_one_reused_child(process_jobs: JobQueue) -> None:
    first, second = (process_jobs.submit(report_pid, {"steps": 3}) for _ in range(2))
    assert first.wait(60) and second.wait(60)
    assert first.status is RunStatus.SUCCEEDED and second.status is RunStatus.SUCCEEDED
    assert [s for s, _ in first.progress().losses] == [1, 2, 3]
    child = first.result.metrics["pid"]
    assert child != os.getpid() and second.result.metrics["pid"] == child


def test_process_job_failures_are_reported_and_the_worker_recovers(process_jobs: JobQueue) -> None:
    store = process_jobs.store
    run = store.create("bad", "sparse", {})
    ok = process_jobs.submit(report_pid, {})
    failed = process_jobs.submit(boom, {}, run_id=run.id)
    unpicklable = process_jobs.submit(report_pid, {"steps": threading.Event()})
    crashed = process_jobs.submit(die, {})
    terminated = process_jobs.submit(terminate_self, {})  # as a SIGTERM to the server's process group reaches it
    after = process_jobs.submit(report_pid, {})
    for job in (ok, failed, unpicklable, crashed, terminated, after):
        assert job.wait(60)
    assert failed.status is RunStatus.FAILED and "ValueError: bad input" in failed.error
    assert store.get(run.id).error == "ValueError: bad input"
    assert unpicklable.status is RunStatus.FAILED and "could not be handed" in unpicklable.error
    assert crashed.status is RunStatus.FAILED and "died (exit code 3)" in crashed.error
    # the operations review: `timeout` or systemd stopping the server's group recorded its job "failed: worker died"
    assert terminated.status is RunStatus.INTERRUPTED and "SIGTERM" in terminated.error
    assert after.status is RunStatus.SUCCEEDED
    assert after.result.metrics["pid"] != ok.result.metrics["pid"]  # a new child took over


def test_process_job_cancel_reaches_the_child(process_jobs: JobQueue) -> None:
    job = process_jobs.submit(run_until_stopped, {})
    assert wait_until(lambda: job.progress().step >= 3, timeout=60), "the job never reported its steps"
    assert job.status is RunStatus.RUNNING
    job.cancel()
    assert job.wait(30) and job.status is RunStatus.CANCELLED


def _ended(pid: int) -> bool:
    """Whether process ``pid`` has exited: gone from /proc, or a zombie not yet reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # FileNotFoundError, or ProcessLookupError as it vanishes
        return True
    return any(line.startswith("State:") and "Z" in line.split()[1] for line in status.splitlines())


ORPHAN_JOB = """
import os, time
from dataclasses import dataclass

def sleep_then_write(path, seconds, on_step=None, should_stop=None):
    # Like finetune's loading and scoring: a long stretch that never asks should_stop.
    with open(path + ".pid", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    with open(path, "w") as f:
        f.write("written after the server was gone")
"""

ORPHAN_SERVER = """
import sys, time
from clm_explore.jobs import JobQueue
from orphan_job import sleep_then_write
if __name__ == "__main__":
    JobQueue(processes=True).submit(sleep_then_write, {"path": sys.argv[1], "seconds": 60})
    time.sleep(60)
"""


def test_a_killed_server_takes_its_worker_process_with_it(tmp_path) -> None:
    marker = tmp_path / "written"
    # The job sleeps 60 s: only the child's end, which the test waits for, keeps it from writing its file.
    _kill_a_server_mid_job(tmp_path, {"orphan_job.py": ORPHAN_JOB, "server.py": ORPHAN_SERVER}, marker)
    assert not marker.exists()


def _kill_a_server_mid_job(tmp_path, files: dict[str, str], marker, heard: float = 0.0) -> None:
    """Start ``server.py`` (of ``files``, written into ``tmp_path``) with ``marker``, wait for its job to write its
    pid (``marker``.pid), let it run ``heard`` seconds more, kill the server outright (no exit handlers run), and
    assert the job's worker process ends with it."""
    import signal
    import subprocess
    import sys

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    server = subprocess.Popen([sys.executable, str(tmp_path / "server.py"), str(marker)], env=env)
    pid_file = marker.with_name(marker.name + ".pid")
    try:
        assert wait_until(pid_file.exists, timeout=60), "the job never started in its worker process"
        time.sleep(heard)
        server.send_signal(signal.SIGKILL)  # the daemon flag alone would leave the child going
        server.wait(30)
        child = int(pid_file.read_text())
        assert wait_until(lambda: _ended(child)), f"the worker process {child} outlived its server by 30 s"
    finally:
        server.kill()


REPORTING_JOB = """
import os, time

def report_steps(path, on_step=None, should_stop=None):
    # Like finetune: a report each step, and an error raised inside it recorded as the run's failure.
    with open(path + ".pid", "w") as f:
        f.write(str(os.getpid()))
    try:
        for step in range(6000):
            on_step({"step": step})
            time.sleep(0.01)
    except BaseException as exc:
        with open(path, "w") as f:
            f.write(f"failed: {exc}")
        raise
"""

REPORTING_SERVER = """
import sys, time
from clm_explore.jobs import JobQueue
from reporting_job import report_steps
if __name__ == "__main__":
    JobQueue(processes=True).submit(report_steps, {"path": sys.argv[1]})
    time.sleep(60)
"""


def test_a_server_killed_while_its_job_reports_steps_leaves_no_failure_of_the_job_recorded(tmp_path) -> None:
    """The crash review: a job's next report raised a broken pipe inside finetune, which recorded its run 'failed:
    [Errno 32] Broken pipe' before the parent watcher ended the process; the restart then could not say
    'interrupted'."""
    marker = tmp_path / "recorded"
    # Its 6000 steps take 60 s or more: the child ends within the wait only because its server went.
    _kill_a_server_mid_job(tmp_path, {"reporting_job.py": REPORTING_JOB, "server.py": REPORTING_SERVER}, marker,
                           heard=0.5)  # a few reports heard first
    assert not marker.exists(), marker.read_text()  # read once the child can no longer write it


STOPPED_SERVER = """
import signal, sys, time
from clm_explore.jobs import JobQueue
from clm_explore.runs import RunStore
from orphan_job import sleep_then_write
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as Streamlit stops on SIGTERM: exit handlers run
    store = RunStore(sys.argv[2])
    run, waiting = store.create("stopped", "sparse"), store.create("waiting", "full")
    JobQueue(store, processes=True)  # a second queue in one server adds no second copy of each log line
    jobs = JobQueue(store, processes=True)
    jobs.submit(sleep_then_write, {"path": sys.argv[1], "seconds": 60}, run_id=run.id)
    jobs.submit(sleep_then_write, {"path": sys.argv[1] + "-2", "seconds": 60}, run_id=waiting.id)
    time.sleep(120)
"""


def test_a_server_stopped_mid_job_records_its_run_interrupted(tmp_path) -> None:
    import signal
    import subprocess
    import sys

    (tmp_path / "orphan_job.py").write_text(ORPHAN_JOB)
    (tmp_path / "server.py").write_text(STOPPED_SERVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    server = subprocess.Popen([sys.executable, str(tmp_path / "server.py"), str(tmp_path / "written"),
                               str(tmp_path / "runs")], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "written.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "written.pid").exists(), "the job never started in its worker process"
        server.send_signal(signal.SIGTERM)
        log = server.communicate(timeout=30)[1]
        assert server.returncode == 0, log
    finally:
        server.kill()
    runs = {run.name: run for run in RunStore(tmp_path / "runs").list()}
    # No logging set up, as under `streamlit run`: the queue's lines still reach stderr, time-stamped, once each.
    exiting = (f"clm_explore.jobs: server exiting: interrupted while running: job-1 (run {runs['stopped'].id}); "
               f"queued, never started: job-2 (run {runs['waiting'].id})")
    assert log.count(exiting) == 1 and log.count("job-1 started: ") == 1, log
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO clm_explore.jobs: job-1 queued: ", log, re.M), log
    run = runs["stopped"]
    assert run.status is RunStatus.INTERRUPTED, (run.status, run.error)  # was failed: "the worker ... died"
    # The job waiting its turn never starts: its run says so (it was marked running as the server went, for good).
    waiting = runs["waiting"]
    assert waiting.status is RunStatus.INTERRUPTED and "before its turn" in waiting.error, (waiting.status, waiting.error)
    assert not (tmp_path / "written-2.pid").exists()


def sleep_ignoring_stop(seconds: float = 30.0, on_step=None, should_stop=None) -> FakeResult:
    time.sleep(seconds)  # never asks should_stop, like a hung step
    return FakeResult("succeeded", {"pid": os.getpid()})


def test_a_job_that_ignores_its_cancel_is_ended_after_the_grace(process_jobs: JobQueue, monkeypatch) -> None:
    from clm_explore import job_process

    monkeypatch.setattr(job_process, "CANCEL_GRACE_SECONDS", 0.5)
    before = process_jobs.submit(report_pid, {})
    hung = process_jobs.submit(sleep_ignoring_stop, {"seconds": 120.0})
    after = process_jobs.submit(report_pid, {})
    assert wait_until(lambda: hung.status is RunStatus.RUNNING, timeout=60), "the hung job never started"
    process_jobs.cancel(hung.id)
    assert hung.wait(30) and hung.status is RunStatus.CANCELLED  # not 120 s later, and not failed
    assert after.wait(60) and after.status is RunStatus.SUCCEEDED  # the device's queue goes on
    assert after.result.metrics["pid"] != before.result.metrics["pid"]  # in a new child


def test_two_servers_on_one_runs_folder_take_turns_on_a_device(store: RunStore, monkeypatch) -> None:
    """The crash review: two servers on the same runs folder (a restart overlapping the old one) each ran a job on the
    same device at once; the queues' one-at-a-time rule was per process."""
    from clm_explore import jobs as jobs_module
    from clm_explore.jobs import OTHER_SERVER_PHASE

    monkeypatch.setattr(jobs_module, "DEVICE_POLL_SECONDS", 0.05)
    first, second = JobQueue(store), JobQueue(RunStore(store.root))  # two servers: two opens of the lock file
    gate, log = threading.Event(), []

    def hold(entered: threading.Event, on_step=None, should_stop=None) -> FakeResult:
        entered.set()  # inside the job: the device's lock is held
        gate.wait(60)
        log.append("held")
        return FakeResult("succeeded", {})

    def held_by_first() -> None:
        entered = threading.Event()
        first.submit(hold, {"entered": entered}, device="cpu")
        assert entered.wait(30), "the first server's job never started"

    def waits(job) -> None:
        deadline = time.monotonic() + 30
        while job.progress().phase != OTHER_SERVER_PHASE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert job.progress().phase == OTHER_SERVER_PHASE and not job.done

    try:
        held_by_first()
        waiting = second.submit(count_steps, {"n": 2, "log": log, "tag": 2},
                                run_id=store.create("b", "sparse", {}).id, device="cpu")
        waits(waiting)
        assert log == []  # said, and not started
        gate.set()
        assert waiting.wait(30) and log == ["held", 2] and waiting.status is RunStatus.SUCCEEDED
        gate.clear()
        held_by_first()
        cancelled = second.submit(count_steps, {"n": 1, "log": log, "tag": 3}, device="cpu")
        waits(cancelled)
        cancelled.cancel()
        assert cancelled.wait(30) and cancelled.status is RunStatus.CANCELLED and 3 not in log  # never ran
    finally:
        gate.set()
        first.shutdown()
        second.shutdown()


def test_a_queue_remembers_only_its_newest_finished_jobs(store: RunStore, monkeypatch) -> None:
    from clm_explore import jobs as jobs_module

    monkeypatch.setattr(jobs_module, "FINISHED_JOBS_KEPT", 3)
    q = JobQueue(store, inline=True)
    done = [q.submit(count_steps, {"n": 1}) for _ in range(6)]
    assert [j.id for j in q.jobs()] == [j.id for j in done[2:]]  # 3 finished kept, plus the one just submitted
    assert q.get(done[0].id) is None and q.get(done[-1].id) is done[-1]


def test_an_inline_registry_fault_fails_the_job_too(store: RunStore, monkeypatch) -> None:
    import sqlite3

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    q = JobQueue(store, inline=True)  # the app's test mode: the job runs inside submit
    run = store.create("locked", "sparse", {})
    monkeypatch.setattr(store, "set_status", locked)
    job = q.submit(count_steps, {"n": 1}, run_id=run.id)
    assert job.done and job.status is RunStatus.FAILED and "database is locked" in job.error
    assert q.active() == []  # no dead card left with a Cancel button that does nothing


@pytest.mark.parametrize("in_process", [False, True])
def test_a_jobs_preparation_phase_reaches_its_progress_and_bar(store, process_jobs, in_process) -> None:
    from clm_explore.ui.jobs import progress_bar

    q = process_jobs if in_process else JobQueue(store)
    job = q.submit(prepare_then_wait, {})
    deadline = time.monotonic() + 60
    while job.progress().phase != "scoring rows" and time.monotonic() < deadline:
        time.sleep(0.05)
    p = job.progress()
    assert (p.phase, p.phase_done, p.phase_total) == ("scoring rows", 3, 8)
    assert progress_bar(p) == (3 / 8, "preparing: scoring rows 3/8")
    q.cancel(job.id)
    assert job.wait(60)
    if not in_process:
        q.shutdown()
    p.step, p.total_steps, p.epoch = 5, 10, 1  # once training steps come, the bar shows them
    assert progress_bar(p) == (0.5, "step 5/10 · epoch 1")  # the epoch under way (it read 'epoch 1.00' at step 5)


def test_a_registry_that_cannot_answer_is_logged_and_a_deleted_run_is_not(capsys) -> None:
    from clm_explore.jobs import Job, JobQueue
    from clm_explore.runs import RunNotFoundError, RunStoreError

    def fails(error: Exception):
        def call(*args, **kwargs):
            raise error
        return call

    job = Job("job1", print, {}, "run1", "cpu")
    JobQueue._store_call(job, fails(RunNotFoundError("No run with id 'run1'.")))  # deleted meanwhile: nothing to say
    assert capsys.readouterr().err == ""
    JobQueue._store_call(job, fails(RunStoreError("The run registry x cannot be used (file is not a database)")))
    assert "could not record job1 (run1) in the run registry: The run registry x" in capsys.readouterr().err


def test_keyed_tasks_run_once_per_key_for_every_caller_and_keep_the_newest_finished() -> None:
    from clm_explore.jobs import KeyedTasks

    tasks, calls, release = KeyedTasks(kept=2), [], threading.Event()

    def work(report):
        calls.append(1)
        report("reading", 1, 2)
        release.wait(30)
        return "issues"

    first = tasks.get_or_start("a", work)
    again = tasks.get_or_start("a", work)  # another session, or a rerun, while it runs: the same task
    assert again is first and not first.done
    release.set()
    assert first.finished.wait(30) and first.result == "issues" and calls == [1]
    assert first.progress == ("reading", 1, 2)
    for key in ("b", "c"):  # two more finished: only the newest two are kept
        tasks.get_or_start(key, lambda report, key=key: key, inline=True)
    assert tasks.get_or_start("d", lambda report: "d", inline=True).result == "d"
    restarted = tasks.get_or_start("a", work)  # "a" went: started again
    assert restarted is not first and restarted.finished.wait(30) and calls == [1, 1]


def test_a_keyed_task_says_its_phase_time_left_at_its_pace_since_the_phase_began(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from clm_explore import jobs as jobs_module
    from clm_explore.jobs import KeyedTask

    now = [100.0]
    monkeypatch.setattr(jobs_module.time, "monotonic", lambda: now[0])
    task = KeyedTask("k")
    task.report("loading the model", 0, 1)
    now[0] += 30  # a long load is no step of the scoring
    task.report("scoring rows", 1, 11)  # first heard of after its first batch: that batch's time is unknown
    assert task.seconds_left() is None
    now[0] += 4
    task.report("scoring rows", 3, 11)
    assert task.seconds_left() == pytest.approx(2.0 * 8)  # 2 s a batch since the phase began, 8 batches to go
    task.report("writing", 0, 1)
    assert task.seconds_left() is None  # a phase without counts


def test_a_keyed_task_that_fails_hands_its_error_to_the_caller_until_forgotten() -> None:
    from clm_explore.jobs import KeyedTasks

    tasks = KeyedTasks()

    def fail(report):
        raise ValueError("too few rows")

    task = tasks.get_or_start("k", fail, inline=True)
    assert task.done and isinstance(task.error, ValueError) and task.result is None
    assert tasks.get_or_start("k", lambda report: "ok", inline=True) is task  # kept until forgotten
    assert tasks.failed("k") is task and tasks.failed("other") is None
    tasks.forget(task)
    retried = tasks.get_or_start("k", lambda report: "ok", inline=True)
    assert retried.result == "ok" and tasks.failed("k") is None
    tasks.forget(task)  # a late forget of the failed task leaves the newer one of its key alone
    assert tasks.get_or_start("k", fail, inline=True) is retried


def test_a_failed_keyed_task_lets_go_of_what_its_work_held() -> None:
    import gc
    import weakref

    from clm_explore.jobs import KeyedTasks

    class Model:  # stands for a loaded model the work held when it failed
        pass

    def fail(report):
        model = Model()
        held.append(weakref.ref(model))
        raise RuntimeError("out of memory")

    held: list = []
    task = KeyedTasks().get_or_start("k", fail, inline=True)
    gc.collect()
    assert isinstance(task.error, RuntimeError) and held[0]() is None  # the traceback keeps no frame's locals


def test_keyed_tasks_run_one_at_a_time_and_the_others_say_they_wait() -> None:
    from clm_explore.jobs import KeyedTasks

    tasks, release = KeyedTasks(at_once=1), threading.Event()
    first = tasks.get_or_start("a", lambda report: release.wait(30))
    deadline = time.monotonic() + 30
    second = tasks.get_or_start("b", lambda report: "b")
    while second.progress[0] != "waiting for another to end" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert second.progress[0] == "waiting for another to end" and not second.done
    release.set()
    assert first.finished.wait(30) and second.finished.wait(30) and second.result == "b"


def test_a_stopped_keyed_task_ends_at_its_next_report_and_is_kept_for_its_readers() -> None:
    from clm_explore.jobs import KeyedTasks, TaskStopped

    tasks, reports = KeyedTasks(at_once=1), []

    def endless(report):
        while True:
            report("reading", len(reports), 10**6)
            reports.append(1)
            time.sleep(0.005)

    running = tasks.get_or_start("a", endless)
    waiting = tasks.get_or_start("b", lambda report: "b")  # behind the first, one at a time
    deadline = time.monotonic() + 30
    while (not reports or waiting.progress[0] != "waiting for another to end") and time.monotonic() < deadline:
        time.sleep(0.01)
    tasks.stop(waiting)  # one still waiting ends without running
    assert waiting.finished.wait(30) and waiting.stopped and waiting.result is None
    assert not running.done and tasks.failed("a") is None
    tasks.stop(running)
    assert tasks.failed("a") is running  # stopping already: a caller asking again is not answered by it
    assert running.finished.wait(30) and running.stopped and isinstance(running.error, TaskStopped)
    assert "Stopped while reading" in str(running.error)
    assert tasks.failed("a") is running  # every caller following it reads that it stopped ...
    tasks.forget(running)  # ... until one tries again
    assert tasks.get_or_start("a", lambda report: "again", inline=True).result == "again"
    third = tasks.get_or_start("c", lambda report: "c")  # the gate was let go by the stopped task
    assert third.finished.wait(30) and third.result == "c" and not third.stopped


def test_a_keyed_task_nobody_follows_is_stopped_when_a_followed_one_waits_and_a_followed_one_is_not(
        monkeypatch) -> None:
    # A session that went on to other data left its label check running, and every other check waited (app review).
    from clm_explore import jobs

    monkeypatch.setattr(jobs, "ABANDONED_SECONDS", 0.5)
    tasks, release = jobs.KeyedTasks(at_once=1), threading.Event()

    def endless(report):
        while not release.is_set():
            report("reading", 0, 1)
            time.sleep(0.01)
        return "done"

    def follow(*followed: jobs.KeyedTask, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # a page polls them
            for task in followed:
                task.watch()
            time.sleep(0.05)

    holder = tasks.get_or_start("a", endless, label="the label check of a.csv")
    waiting = tasks.get_or_start("b", lambda report: "b")
    follow(holder, waiting, seconds=1.5)  # both followed: the holder runs on
    assert not holder.done and waiting.progress[0] == "waiting for the label check of a.csv to end"
    time.sleep(1.5)  # nobody follows either: a waiter left behind stops nobody
    assert not holder.done and not holder.stop_asked.is_set()
    follow(waiting, seconds=1.5)  # the waiter is followed again, the holder not: the holder is stopped
    assert holder.finished.wait(30) and holder.stopped and "no page followed it" in holder.stop_reason
    assert waiting.finished.wait(30) and waiting.result == "b" and not waiting.stopped
    alone = tasks.get_or_start("c", endless)  # nobody waits behind it: never stopped for want of a watcher
    time.sleep(1.0)
    assert not alone.done
    release.set()
    assert alone.finished.wait(30) and alone.result == "done"


def test_a_stop_that_comes_after_the_last_report_keeps_the_result() -> None:
    from clm_explore import jobs

    tasks, go = jobs.KeyedTasks(at_once=1), threading.Event()

    def work(report):
        report("reading", 0, 1)
        go.wait(30)
        return "result"

    task = tasks.get_or_start("a", work)
    deadline = time.monotonic() + 30
    while task.progress[0] != "reading" and time.monotonic() < deadline:
        time.sleep(0.01)
    tasks.stop(task)  # asked after its last report: the work hands in its result all the same
    go.set()
    assert task.finished.wait(30) and task.result == "result" and not task.stopped
    assert tasks.failed("a") is None  # not thrown away as a stopped task


def test_a_cancel_that_comes_after_the_job_ended_changes_nothing(jobs: JobQueue) -> None:
    # Another session's confirm click landing after the job succeeded told its owner it was cancelled (review).
    done = jobs.submit(count_steps, {"n": 1})
    assert done.wait(30) and done.status is RunStatus.SUCCEEDED
    jobs.cancel(done.id, by="another session")
    assert not done.cancel_event.is_set() and done.cancelled_by is None and done.status is RunStatus.SUCCEEDED
    gate = threading.Event()
    running = jobs.submit(count_steps, {"n": 3, "gate": gate})
    jobs.cancel(running.id, by="another session")
    jobs.cancel(running.id, by="a third")  # the first to ask is the one named
    gate.set()
    assert running.wait(30) and running.status is RunStatus.CANCELLED and running.cancelled_by == "another session"


def test_a_device_forgets_the_turns_of_owners_long_gone(jobs: JobQueue) -> None:
    jobs.SERVED_KEPT = 4  # a server that runs for months meets a new session token a visit
    for owner in range(9):
        assert jobs.submit(count_steps, {"n": 1}, owner=f"session-{owner}").wait(30)
    served = jobs._served["cpu"]
    assert len(served) <= 4 and "session-8" in served  # the oldest forgotten first


def test_a_full_disk_is_said_in_plain_words_before_its_error():
    """The app review: a job that ran out of disk read "SafetensorError: Error while serializing: I/O error: No space
    left on device (os error 28)"."""
    from clm_explore.jobs import last_line

    error = ("Traceback (most recent call last):\n  File ...\nSafetensorError: Error while serializing: I/O error: "
             "No space left on device (os error 28)\n")
    said = last_line(error)
    assert said.startswith("A disk the run writes to is full (its runs folder's, the model cache's or the temporary")
    assert said.endswith("(SafetensorError: Error while serializing: I/O error: No space left on device (os error 28))")
    assert last_line("Traceback ...\nValueError: bad budget\n") == "ValueError: bad budget"
    assert last_line("") is None and last_line("  \n") is None
