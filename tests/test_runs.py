"""RunStore: folders, registry rows, status life cycle, safety of names, interrupted runs."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from clm_explore.runs import RunStatus, RunStore, RunStoreError, slugify, trained_max_length

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(_runs_root: Path) -> RunStore:
    return RunStore()


def test_root_from_env(_runs_root: Path) -> None:
    store = RunStore()
    assert store.root == _runs_root.resolve()
    assert (store.root / "registry.sqlite").is_file()


def test_create_makes_folder_and_pending_row(store: RunStore) -> None:
    run = store.create("My first run", "sparse", {"epochs": 1})
    assert run.status is RunStatus.PENDING
    assert run.path.is_dir() and run.path.parent == store.root
    assert run.id.endswith("-my-first-run")
    assert store.get(run.id).config == {"epochs": 1}
    assert store.path(run.id) == run.path


@pytest.mark.parametrize("name", ["../../etc", "/abs/path", "..", "a/../../b", "\\..\\x", "", "ü ñ"])
def test_names_never_escape_root(store: RunStore, name: str) -> None:
    run = store.create(name, "full", {})
    assert run.path.resolve().parent == store.root
    assert "/" not in run.id and ".." not in run.id


def test_slugify() -> None:
    assert slugify("Sparse 1% budget!") == "sparse-1-budget"
    assert slugify("...") == "run"
    assert slugify("Kundenanfragen_Überweisung_数据") == "kundenanfragen-uberweisung"  # was "...-berweisung"
    assert slugify("Ｆｕｌｌ　ｗｉｄｔｈ") == "full-width"  # NFKD folds compatibility forms too
    # A long name keeps its last word (a seed's suffix), where it lost it (the scale review)
    seeds = [slugify(f"banking77 sparse 1pct lr sweep, cold head v2-s{seed}") for seed in range(3)]
    assert [s[-3:] for s in seeds] == ["-s0", "-s1", "-s2"] and all(len(s) <= 40 for s in seeds)
    assert seeds[0] == "banking77-sparse-1pct-lr-sweep-cold-h-s0"
    assert slugify("x" * 50) == "x" * 40 and slugify("x-" + "y" * 45) == "x-" + "y" * 38  # a long word not split


def test_same_name_same_second_gets_distinct_ids(store: RunStore) -> None:
    ids = {store.create("x", "sparse", {}).id for _ in range(3)}
    assert len(ids) == 3


def test_status_life_cycle_and_metrics(store: RunStore) -> None:
    run = store.create("r", "sparse", {})
    store.set_status(run.id, RunStatus.RUNNING)
    (run.path / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "macro_f1": 0.4}))
    store.update_metrics(run.id, {"note": "x"})
    done = store.set_status(run.id, "succeeded")
    assert done.status is RunStatus.SUCCEEDED and done.is_terminal
    assert done.metrics == {"note": "x", "accuracy": 0.5, "macro_f1": 0.4}
    failed = store.set_status(store.create("f", "full", {}).id, RunStatus.FAILED, error="boom")
    assert failed.error == "boom"


def test_list_newest_first_and_latest(store: RunStore) -> None:
    a = store.create("a", "sparse", {})
    b = store.create("b", "full", {})
    assert [r.id for r in store.list()][:2] in ([b.id, a.id], [a.id, b.id])  # same second: id order
    store.set_status(a.id, RunStatus.SUCCEEDED)
    assert store.latest("sparse").id == a.id
    assert store.latest("full") is None
    assert store.latest("full", status=None).id == b.id


def test_unknown_run(store: RunStore) -> None:
    with pytest.raises(RunStoreError):
        store.get("nope")
    with pytest.raises(RunStoreError):
        store.set_status("nope", RunStatus.FAILED)


def test_delete_removes_folder_and_row(store: RunStore, monkeypatch) -> None:
    run = store.create("gone", "sparse", {})
    with pytest.raises(RunStoreError, match="cancel"):
        store.delete(run.id)
    store.set_status(run.id, RunStatus.CANCELLED)
    (run.path / "model.safetensors").write_text("weights")
    rmtree, seen = shutil.rmtree, []

    def watched(path, *args, **kwargs):  # a reader during the deletion finds no run there, not half of one
        seen.append(run.path.exists())
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", watched)
    store.delete(run.id)
    assert seen and not any(seen) and not run.path.exists() and not list(store.root.glob(".deleting-*"))
    assert all(r.id != run.id for r in store.list())


def test_a_run_whose_folder_cannot_go_stays_listed_and_says_why(store: RunStore, monkeypatch) -> None:
    """The app review: the row went first and the folder's deletion ignored errors, so the Runs page said "Deleted"
    of a folder another account owned, which stayed on disk out of the app's reach."""
    import sqlite3

    import clm_explore.runs as runs

    run = store.create("theirs", "sparse", {})
    store.set_status(run.id, RunStatus.SUCCEEDED)

    def refused(source, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "rename", refused)
    with pytest.raises(RunStoreError, match=r"cannot be deleted: its folder .* cannot be moved \(Permission denied\)"):
        store.delete(run.id)
    assert store.get(run.id).status is RunStatus.SUCCEEDED and run.path.is_dir()
    assert not list(store.root.glob(".deleting-*"))
    monkeypatch.undo()
    # The diff review: a registry held by another writer refused the row's deletion after the folder had moved
    monkeypatch.setattr(runs, "REGISTRY_TIMEOUT", 0.1)
    monkeypatch.setattr(runs, "WAIT_NOTE_AFTER", 5.0)
    holder = sqlite3.connect(store.db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(RunStoreError, match="cannot be used"):
        store.delete(run.id)
    holder.rollback()
    holder.close()
    assert run.path.is_dir() and not list(store.root.glob(".deleting-*"))  # put back where it was
    assert store.get(run.id).status is RunStatus.SUCCEEDED
    monkeypatch.setattr(shutil, "rmtree", lambda path, ignore_errors=False: None)  # files that will not go
    with pytest.raises(RunStoreError, match=r"is no longer listed, but some of its files could not be deleted"):
        store.delete(run.id)
    assert run.id not in store.known([run.id])


def test_register_folder_outside_root(store: RunStore, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "my-run"
    out.mkdir(parents=True)
    (out / "clm_run.json").write_text(json.dumps({"method": "lora", "config": {"epochs": 2}}))
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    run = store.register_folder(out)
    assert run.path == out.resolve() and run.method == "lora"
    assert run.status is RunStatus.SUCCEEDED and run.metrics["accuracy"] == 0.9
    assert store.register_folder(out).id == run.id  # idempotent
    store.delete(run.id)
    assert out.is_dir()  # external folders are only unregistered


def test_the_registrys_root_its_parents_and_the_uploads_are_never_runs(store: RunStore) -> None:
    """The security review: the uploads folder registered as a run was zipped, every session's upload and saved
    session in it, for any user, and "Delete run" would have removed it whole."""
    from clm_explore.runs import UPLOADS_NAME

    (store.root / UPLOADS_NAME).mkdir()
    for folder in (store.root, store.root.parent, store.root / UPLOADS_NAME):
        with pytest.raises(RunStoreError, match="holds the run registry or the app's uploads; it is not a run folder"):
            store.register_folder(folder)
    assert store.list() == []



def test_a_folder_trained_again_is_read_again_when_registered_again(store: RunStore, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "clm_run.json").write_text(json.dumps({"method": "full", "config": {"seed": 0}}))
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    first = store.register_folder(out)
    # Trained again into the folder (overwrite): another method, seed and score.
    (out / "clm_run.json").write_text(json.dumps({"method": "sparse", "config": {"seed": 7}}))
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    again = store.register_folder(out)
    assert again.id == first.id
    assert (again.method, again.config, again.metrics, again.status) == (
        "sparse", {"seed": 7}, {"accuracy": 0.9}, RunStatus.SUCCEEDED)
    # As the CLI's --overwrite does: the folder emptied and registered for the run about to be written.
    for f in out.iterdir():
        f.unlink()
    pending = store.register_folder(out, method="lora", config={"seed": 1})
    assert (pending.method, pending.config, pending.metrics, pending.status) == (
        "lora", {"seed": 1}, {}, RunStatus.PENDING)
    store.set_status(pending.id, RunStatus.RUNNING)  # this process is at work: the record stays as it is
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.1}))
    assert store.register_folder(out).status is RunStatus.RUNNING


def test_zip_run(store: RunStore) -> None:
    run = store.create("z", "sparse", {})
    (run.path / "sub").mkdir()
    (run.path / "sub" / "a.txt").write_text("hello")
    (run.path / "metrics.json").write_text("{}")
    (run.path / "ranks" / "1").mkdir(parents=True)  # another process's copy of a run trained by two
    (run.path / "ranks" / "1" / "model.safetensors").write_text("copy")
    (run.path / ".clm_running").write_text("host pid 1")  # a run's lock file: not the run's
    (run.path / "error.txt").write_text('File "/srv/app/clm_explore/x.py"')  # the admin's, not every session's
    names = zipfile.ZipFile(io.BytesIO(store.zip_run(run.id))).namelist()
    assert sorted(names) == [f"{run.id}/metrics.json", f"{run.id}/sub/a.txt"]


def test_a_registered_folder_moved_away_downloads_as_a_zip_that_says_so(store: RunStore, tmp_path: Path) -> None:
    from clm_explore.ui.run_views import run_zip

    (tmp_path / "elsewhere").mkdir()
    run = store.register_folder(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").rename(tmp_path / "moved")
    with pytest.raises(RunStoreError, match="folder .*elsewhere is not there: it was moved or deleted"):
        store.zip_run(run.id)  # an empty zip before
    archive = zipfile.ZipFile(io.BytesIO(run_zip(store, run.id)))
    assert "is not there" in archive.read(f"{run.id}/MISSING.txt").decode()


def _run_of_a_process_gone() -> str:
    """The id of a running run created (in the registry of $CLM_EXPLORE_RUNS) by a process that has exited since."""
    code = (
        "from clm_explore.runs import RunStore, RunStatus; s = RunStore(); "
        "r = s.create('dead', 'full', {}); s.set_status(r.id, RunStatus.RUNNING); print(r.id)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
                          ).stdout.strip()


def test_mark_interrupted_only_dead_owners(store: RunStore) -> None:
    mine = store.create("alive", "sparse", {})
    store.set_status(mine.id, RunStatus.RUNNING)
    dead_id = _run_of_a_process_gone()
    assert store.mark_interrupted() == [dead_id]
    assert store.get(dead_id).status is RunStatus.INTERRUPTED
    assert store.get(mine.id).status is RunStatus.RUNNING


def in_threads(work, count: int) -> list[BaseException]:
    """Run ``work(i)`` for i < count in as many threads at once; what they raised."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - collected for the caller to assert on
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_threads(store: RunStore) -> None:
    def work(i: int) -> None:
        for j in range(5):
            run = store.create(f"t{i}", "sparse", {"j": j})
            store.set_status(run.id, RunStatus.RUNNING)
            store.update_metrics(run.id, {"j": j})
            store.set_status(run.id, RunStatus.SUCCEEDED)

    assert not in_threads(work, 4)
    assert len(store.list()) == 20
    assert all(r.status is RunStatus.SUCCEEDED for r in store.list())


def test_trained_max_length_reads_the_run_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert trained_max_length(run) == 64  # no clm_run.json: FinetuneConfig's default
    (run / "clm_run.json").write_text(json.dumps({"method": "head", "config": {"max_length": 128}}))
    assert trained_max_length(run) == 128
    (run / "clm_run.json").write_text("{half")
    assert trained_max_length(run) == 64


def test_threads_writing_one_json_file_never_collide(tmp_path: Path) -> None:
    from clm_explore.runs import read_json_object, write_json_atomic

    path = tmp_path / "cache.json"

    def write(n: int) -> None:
        for i in range(50):
            write_json_atomic(path, {"writer": n, "i": i, "pad": "x" * 5000})

    assert not in_threads(write, 4)  # a temporary file shared by the threads failed one of them
    assert read_json_object(path)["i"] == 49
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]  # no temporary file left behind


def test_list_reads_the_newest_runs_only_when_asked(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    made = [store.create(f"run{i}", "sparse", {}) for i in range(4)]
    assert [r.id for r in store.list(limit=2)] == [r.id for r in store.list()][:2]
    assert len(store.list()) == len(made) == 4


def test_a_run_registered_before_its_files_gets_its_method_and_config_when_it_succeeds(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    folder = tmp_path / "out"
    folder.mkdir()
    record = store.register_folder(folder)  # as an older CLI did, before clm_run.json existed
    assert (record.method, record.config) == ("?", {})
    (folder / "clm_run.json").write_text(json.dumps({"method": "lora", "source": "tiny-random", "data": "d.csv",
                                                     "config": {"epochs": 2}}))
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    done = store.set_status(record.id, RunStatus.SUCCEEDED)
    assert done.method == "lora" and done.config == {"epochs": 2, "source": "tiny-random", "data": "d.csv"}


def test_the_zip_leaves_out_a_killed_writers_temporary_file(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    run = store.create("r", "sparse", {})
    (run.path / "metrics.json").write_text("{}")
    (run.path / ".metrics.json.123.456.789.tmp").write_text("{half")
    names = zipfile.ZipFile(io.BytesIO(store.zip_run(run.id))).namelist()
    assert names == [f"{run.id}/metrics.json"]


def test_a_run_whose_process_died_can_be_deleted_a_live_one_cannot(store: RunStore) -> None:
    mine = store.create("alive", "sparse", {})
    store.set_status(mine.id, RunStatus.RUNNING)
    dead_id = _run_of_a_process_gone()
    with pytest.raises(RunStoreError, match="is running; cancel it"):
        store.delete(mine.id)
    store.delete(dead_id)  # a killed CLI run stayed "running" and could not be removed
    assert [r.id for r in store.list()] == [mine.id]


def test_a_finetune_stopped_with_sigterm_is_recorded_interrupted(tmp_path: Path) -> None:
    """A SIGTERM is `kill`, `timeout` or a scheduler, not the user's Ctrl+C: interrupted, as the app records a server
    stopped under a run (the operations review: a cron job ended by `timeout` read as cancelled by its user)."""
    import signal
    import time

    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"card {i} arrived,a\nrate {i} up,b\n" for i in range(40)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CLM_EXPLORE_RUNS": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "clm_explore.cli", "finetune", "--data", str(data), "--model", "tiny-random",
           "--method", "head", "--epochs", "100000", "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not (any(
                r.status is RunStatus.RUNNING for r in RunStore(tmp_path / "runs").list())
                and (tmp_path / "run" / "progress.jsonl").exists()):  # training has begun
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # what `kill`, `timeout` and batch schedulers send
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err, err  # 128 + 15, as a shell reports a kill
    (record,) = RunStore(tmp_path / "runs").list()
    assert record.status is RunStatus.INTERRUPTED and "stopped by SIGTERM (a kill, `timeout`" in record.error
    # The folder says so too: registered again (another registry, the app opening it) it is not pending.
    assert RunStore(tmp_path / "other").register_folder(tmp_path / "run").status is RunStatus.INTERRUPTED


def test_a_stopped_run_marks_its_folder_only_when_it_is_a_run_folder(store: RunStore, tmp_path: Path) -> None:
    from clm_explore.runs import claimed_run_dir

    (tmp_path / "began").mkdir()
    (tmp_path / "began" / "clm_run.json").write_text("{}")
    began = store.register_folder(tmp_path / "began")
    store.set_status(began.id, RunStatus.FAILED, error="boom")
    assert json.loads((tmp_path / "began" / "metrics.json").read_text()) == {"status": "failed", "error": "boom"}
    with claimed_run_dir(tmp_path / "early") as claim:
        early = store.register_folder(claim.path)  # stopped while its model loaded
    store.set_status(early.id, RunStatus.CANCELLED)
    assert not any((tmp_path / "early").iterdir())  # a marker alone would make the folder one --overwrite refuses
    with claimed_run_dir(tmp_path / "early") as claim:
        assert claim.path == tmp_path / "early" and claim.earlier is None


def test_overwrite_refuses_a_link_and_replaces_a_folder_of_a_long_name(tmp_path: Path) -> None:
    from clm_explore.runs import RunFolderError, claimed_run_dir

    for name in ("real", "r" * 245):
        (tmp_path / name).mkdir()
        (tmp_path / name / "clm_run.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(RunFolderError, match="is a link to .*real; give that folder"), claimed_run_dir(
            tmp_path / "link", overwrite=True):
        pass
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "clm_run.json").is_file()  # nothing moved
    with claimed_run_dir(tmp_path / ("r" * 245), overwrite=True) as claim:  # its files moved aside: a long name
        assert [entry.name for entry in claim.path.iterdir()] == [".clm_running"]  # the lock alone, held
        claim.keep()
    assert not any((tmp_path / ("r" * 245)).iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["real", "link", "r" * 245])  # nothing left aside


def test_a_sigterm_under_a_launch_of_several_processes_is_recorded_interrupted(tmp_path, monkeypatch) -> None:
    from clm_explore import training
    from clm_explore.cli import Terminated, main

    def stopped(data, cfg, out_dir, **kwargs):  # the launcher's SIGTERM (a process failed elsewhere, or the
        (out_dir / "clm_run.json").write_text("{}")  # launcher was stopped) once the run had begun
        raise Terminated

    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"card {i} arrived,a\nrate {i} up,b\n" for i in range(40)))
    monkeypatch.setattr(training, "finetune", stopped)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("CLM_EXPLORE_RUNS", str(tmp_path / "runs"))
    assert main(["finetune", "--data", str(data), "--model", "tiny-random", "--out", str(tmp_path / "run")]) == 143
    (record,) = RunStore(tmp_path / "runs").list()
    assert record.status is RunStatus.INTERRUPTED and "fails" in record.error
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "interrupted"
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["finetune", "--data", str(data), "--model", "tiny-random", "--out", str(tmp_path / "run2")]) == 143
    alone = RunStore(tmp_path / "runs").list()[0]  # one process: a kill, `timeout` or a scheduler
    assert alone.status is RunStatus.INTERRUPTED and "a kill, `timeout`, a scheduler" in alone.error


def test_the_registry_keeps_no_per_label_figures_and_the_folder_gives_them(store: RunStore) -> None:
    run = store.create("wide", "sparse", {})
    metrics = {"accuracy": 0.5, "labels": ["a", "b"], "confusion": [[1, 0], [1, 0]], "per_label_f1": {"a": 0.67}}
    (run.path / "metrics.json").write_text(json.dumps(metrics))
    store.set_status(run.id, RunStatus.SUCCEEDED)  # loads metrics.json, as a finished job does
    record = store.get(run.id)
    assert record.metrics == {"accuracy": 0.5}  # a 1,000-label run put a million counts in every registry read
    assert record.full_metrics() == metrics
    store.update_metrics(run.id, {"confusion": [[2]], "lr": 0.1})
    assert store.get(run.id).metrics == {"accuracy": 0.5, "lr": 0.1}
    assert store.register_folder(run.path).metrics == {"accuracy": 0.5}


def test_a_run_that_finished_after_it_was_read_is_not_marked_interrupted(store: RunStore, monkeypatch) -> None:
    dead_id = _run_of_a_process_gone()

    def finished_meanwhile(record, row=None) -> bool:  # the owner records success and exits between read and write
        store.set_status(record.id, RunStatus.SUCCEEDED)
        return False

    monkeypatch.setattr(store, "_owner_alive", finished_meanwhile)
    assert store.mark_interrupted() == []
    assert store.get(dead_id).status is RunStatus.SUCCEEDED


def test_a_folder_another_process_writes_a_run_into_is_never_replaced_or_shared(tmp_path: Path) -> None:
    import signal

    from clm_explore.runs import RUN_LOCK, RunFolderError, check_run_dir, claimed_run_dir

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "clm_run.json").write_text("{}")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from clm_explore.runs import run_folder_lock\n"
         f"with run_folder_lock(Path({str(folder)!r})):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        # A second finetune --overwrite into it moved the live run aside and deleted it (the failure review).
        with pytest.raises(RunFolderError, match=r"Another process is writing a run into .*run \(.* pid \d+\)"), \
                claimed_run_dir(folder, overwrite=True):
            pass
        with pytest.raises(RunFolderError, match="Another process is writing a run into"):
            check_run_dir(folder)
        assert (folder / "clm_run.json").is_file()
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed writer leaves its lock file, which then locks nothing
        holder.wait()
    assert (folder / RUN_LOCK).is_file()
    with claimed_run_dir(folder, overwrite=True) as claim:
        claim.keep()
    assert not any(folder.iterdir())
    (folder / RUN_LOCK).write_text("a run killed as it began")  # its lock file alone: the folder is as empty as it was
    with claimed_run_dir(folder) as claim:  # "not a run folder (it has no clm_run.json)" (diff review)
        assert claim.path == folder and claim.earlier is None


def test_a_damaged_registry_is_named_and_a_run_it_would_replace_is_kept(tmp_path: Path, monkeypatch, capsys) -> None:
    from clm_explore.cli import main

    root = tmp_path / "runs"
    RunStore(root)
    (root / "registry.sqlite").write_bytes(os.urandom(4096))  # "file is not a database", as a traceback
    for extra in ("-wal", "-shm"):
        (root / f"registry.sqlite{extra}").unlink(missing_ok=True)
    with pytest.raises(RunStoreError, match=r"The run registry .*registry.sqlite cannot be used \(file is not a "
                       r"database\).*move it aside"):
        RunStore(root)
    old = tmp_path / "old"
    old.mkdir()
    (old / "clm_run.json").write_text("{}")
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"card {i} arrived,a\nrate {i} up,b\n" for i in range(40)))
    monkeypatch.setenv("CLM_EXPLORE_RUNS", str(root))
    assert main(["finetune", "--data", str(data), "--model", "tiny-random", "--out", str(old), "--overwrite"]) == 2
    assert "cannot be used" in capsys.readouterr().err and (old / "clm_run.json").is_file()  # it was deleted
    assert main(["predict", "--run", "20261206-000000-x", "--text", "hi"]) == 2  # not "not a known run id"
    assert "registry" in capsys.readouterr().err
    bench = tmp_path / "bench"  # every cell ran and failed on it in turn, then exit 1
    assert main(["bench", "--data", str(data), "--model", "tiny-random", "--methods", "head", "--out", str(bench)]) == 2
    assert "cannot be used" in capsys.readouterr().err and not bench.exists()


def test_a_folder_whose_metrics_cannot_be_read_registers_as_failed_not_as_a_run_that_was_killed(tmp_path):
    store = RunStore(tmp_path / "runs")
    for name, metrics in (("cut", '{"accuracy": 0.9'), ("list", "[1, 2]"), ("odd", '{"status": ["x"]}'),
                          ("saved", None)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "clm_run.json").write_text('{"method": "sparse"}')
        (folder / "config.json").write_text("{}")
        if metrics is not None:
            (folder / "metrics.json").write_text(metrics)
    for name in ("cut", "list"):  # pending before, then "interrupted: the process ... was killed" at the next look
        record = store.register_folder(tmp_path / name)
        assert record.status is RunStatus.FAILED and "metrics.json cannot be read" in record.error
    saved = store.register_folder(tmp_path / "saved")
    assert saved.status is RunStatus.FAILED and "before writing metrics.json" in saved.error
    assert store.register_folder(tmp_path / "odd").status is RunStatus.SUCCEEDED  # TypeError: unhashable 'list'
    store.mark_interrupted()
    assert store.get(saved.id).status is RunStatus.FAILED
    (tmp_path / "empty").mkdir()
    assert store.register_folder(tmp_path / "empty").status is RunStatus.PENDING  # a run about to be written


def test_a_place_that_cannot_be_written_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys) -> None:
    import errno

    from clm_explore import training
    from clm_explore.cli import main

    def read_only(data, cfg, out_dir, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(out_dir))

    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"card {i} arrived,a\nrate {i} up,b\n" for i in range(40)))
    monkeypatch.setattr(training, "finetune", read_only)
    assert main(["finetune", "--data", str(data), "--model", "tiny-random", "--out", str(tmp_path / "run")]) == 2
    assert f"error: Read-only file system: {tmp_path / 'run'}. Check that this user may read or write it" in (
        capsys.readouterr().err)


def test_a_run_refused_its_folder_after_the_claim_leaves_the_live_runs_record_alone(tmp_path, monkeypatch,
                                                                                      capsys) -> None:
    import signal

    from clm_explore import runs, training  # noqa: F401  (imported first: its own name for the check stays real)
    from clm_explore.cli import main

    root, folder = tmp_path / "runs", tmp_path / "out"
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"card {i} arrived,a\nrate {i} up,b\n" for i in range(40)))
    holder: list[subprocess.Popen] = []
    real_check = runs.check_run_dir

    def check_then_another_run_starts(*args, **kwargs):  # run A gets in between this check and this run's lock
        path = real_check(*args, **kwargs)
        path.mkdir(parents=True, exist_ok=True)
        holder.append(subprocess.Popen(
            [sys.executable, "-c", "import sys; from pathlib import Path; from clm_explore.runs import RunStatus, "
             "RunStore, run_folder_lock\n"
             f"store = RunStore({str(root)!r}); record = store.register_folder({str(path)!r})\n"
             f"store.set_status(record.id, RunStatus.RUNNING)\nwith run_folder_lock(Path({str(path)!r})):\n"
             "    print('held', flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        assert holder[0].stdout.readline().strip() == "held"
        return path

    monkeypatch.setattr(runs, "check_run_dir", check_then_another_run_starts)
    monkeypatch.setenv("CLM_EXPLORE_RUNS", str(root))
    try:
        assert main(["finetune", "--data", str(data), "--model", "tiny-random", "--out", str(folder)]) == 2
        assert "Another process is writing a run into" in capsys.readouterr().err
        [record] = RunStore(root).list()  # before: taken over, then marked failed (diff review)
        assert record.status is RunStatus.RUNNING and record.pid == holder[0].pid
        assert not (folder / "metrics.json").exists()
    finally:
        for process in holder:
            process.send_signal(signal.SIGKILL)
            process.wait()


def test_a_folders_method_that_is_no_methods_name_is_kept_as_a_question_mark(store: RunStore, tmp_path: Path) -> None:
    out = tmp_path / "odd"
    out.mkdir()
    (out / "clm_run.json").write_text(json.dumps({"method": "full<a href='https://e.example'>[x](https://e.example)"}))
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    assert store.register_folder(out).method == "?"  # every page that lists the run showed it as Markdown or HTML
    (out / "clm_run.json").write_text(json.dumps({"method": "sparse_merged"}))
    assert store.register_folder(out).method == "sparse_merged"
    early = tmp_path / "early"  # registered before its run wrote clm_run.json, read again when it succeeds
    early.mkdir()
    record = store.register_folder(early)
    (early / "clm_run.json").write_text(json.dumps({"method": "<b>x</b>"}))
    assert store.set_status(record.id, RunStatus.SUCCEEDED).method == "?"


def test_a_run_folder_replaced_by_a_link_is_not_zipped(store: RunStore, tmp_path: Path) -> None:
    run = store.create("linked", "head")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.txt").write_text("not the run's")
    shutil.rmtree(run.path)
    run.path.symlink_to(tmp_path / "elsewhere")  # another account's link in the shared runs folder
    with pytest.raises(RunStoreError, match="is now a link to another folder: not zipped"):
        store.zip_run(run.id)


def test_an_overwrite_stopped_while_it_moves_the_earlier_run_aside_leaves_that_run_whole(tmp_path, monkeypatch):
    from clm_explore.runs import claimed_run_dir

    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("clm_run.json", "config.json", "metrics.json", "model.safetensors"):
        (folder / name).write_text(name)
    real_rename, moved, stopped = Path.rename, [], []

    def rename(self, target):
        if len(moved) == 2 and not stopped:
            stopped.append(self.name)
            raise KeyboardInterrupt  # Ctrl-C between two files: half the run aside, and no claim yet to put it back
        moved.append(self.name)
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt), claimed_run_dir(folder, overwrite=True):
        pass
    monkeypatch.setattr(Path, "rename", real_rename)
    assert sorted(p.name for p in folder.iterdir()) == ["clm_run.json", "config.json", "metrics.json",
                                                          "model.safetensors"]
    assert "clm_run.json" not in moved[:2] and not list(tmp_path.glob(".replaced-*"))  # the two moved came back
    order = []
    monkeypatch.setattr(Path, "rename", lambda self, target: order.append(self.name) or real_rename(self, target))
    with claimed_run_dir(folder, overwrite=True) as claim:
        claim.keep()
    assert order[-1] == "clm_run.json"  # last: a launch's other processes see a run folder until the others are aside


def test_a_run_saved_before_the_registry_could_record_it_is_read_again_not_marked_interrupted(store: RunStore) -> None:
    """The concurrency review: the registry held at a run's end left it "running"; once its process was gone the
    next look marked the saved run interrupted."""
    dead_id = _run_of_a_process_gone()
    folder = store.path(dead_id)
    (folder / "clm_run.json").write_text(json.dumps({"method": "full", "config": {}}))
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "macro_f1": 0.4}))
    failed_id = _run_of_a_process_gone()  # ended failing, its reason in its folder: kept, not "process stopped"
    (store.path(failed_id) / "metrics.json").write_text(json.dumps({"status": "failed", "error": "CUDA out of memory"}))
    assert store.mark_interrupted() == []
    assert store.get(dead_id).status is RunStatus.SUCCEEDED and store.get(dead_id).metrics["accuracy"] == 0.5
    assert (store.get(failed_id).status, store.get(failed_id).error) == (RunStatus.FAILED, "CUDA out of memory")


def test_a_readers_glance_at_a_run_lock_does_not_refuse_a_run(tmp_path: Path) -> None:
    """The diff review: a reader holds the lock file shared for an instant (``_locked_by_another``); a run taking the
    folder then was refused as written by whatever process a stale lock file named."""
    import fcntl

    from clm_explore.runs import RUN_LOCK, run_folder_lock

    (tmp_path / RUN_LOCK).write_text("host pid 999999\n")  # left by a killed run
    reader = (tmp_path / RUN_LOCK).open()
    fcntl.flock(reader, fcntl.LOCK_SH)
    threading.Timer(0.03, reader.close).start()  # the reader's glance ends
    with run_folder_lock(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / RUN_LOCK).read_text()


def test_a_read_only_registry_is_said_before_any_write(store: RunStore, monkeypatch) -> None:
    """A read-only file takes sqlite's write lock (it opens read-only) and refuses the first write: the check passed
    and a bench then ran every cell into the refusal (the concurrency review; as another user, chmod 444)."""
    import sqlite3

    store.list()  # the registry made
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda path, **kw: connect(f"file:{path}?mode=ro", uri=True, **kw))
    with pytest.raises(RunStoreError, match="is read-only for this user .*CLM_EXPLORE_RUNS"):
        store.check_writable()


def test_the_run_a_killed_overwrite_was_replacing_is_named_where_it_waits(tmp_path: Path) -> None:
    """The concurrency review: a run killed outright (SIGKILL) while it replaced a finished run left that run in an
    unnamed hidden folder; the folder itself then held half a run and said nothing of it."""
    import signal

    from clm_explore.runs import RunFolderError, check_run_dir, unfinished_reason

    out = tmp_path / "run"
    out.mkdir()
    for name, text in (("clm_run.json", '{"method": "head"}'), ("config.json", "{}"), ("metrics.json", "{}")):
        (out / name).write_text(text)
    code = ("import sys, time; from pathlib import Path; from clm_explore.runs import claimed_run_dir\n"
            "out = Path(sys.argv[1])\n"
            "with claimed_run_dir(out, overwrite=True):\n"
            " (out / 'clm_run.json').write_text('{}'); (out / 'config.json').write_text('{}')\n"
            " print('saving', flush=True); time.sleep(60)")
    killed = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "saving"
    assert unfinished_reason(out).startswith("another process is writing it")  # not yet: it is alive
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed.stdout.close()
    waiting = next(tmp_path.glob(".replaced-*")) / "run"
    assert json.loads((waiting / "clm_run.json").read_text()) == {"method": "head"}  # the finished run, whole
    other = tmp_path / ".replaced-zzzzzzzz"  # another folder's (run-2's) run waiting: never named for this one
    (other / "run").mkdir(parents=True)
    (other / "origin").write_text(str((tmp_path / "run-2").resolve()))
    said = unfinished_reason(out)
    assert said.startswith("stopped while it saved its model: no metrics.json; the finished run this folder held "
                           f"before waits in {waiting} (a run replacing it was killed): move its files back")
    with pytest.raises(RunFolderError, match=f"already exists; .* The finished run this folder held before waits in "
                                             f"{waiting} "):
        check_run_dir(out)
    (out / "metrics.json").write_text("{}")  # a later run finished there: the old one is no longer offered back
    with pytest.raises(RunFolderError) as refused:
        check_run_dir(out)
    assert "waits in" not in str(refused.value) and unfinished_reason(out) is None


def test_cli_runs_lists_the_registry_newest_first_and_marks_killed_runs(store: RunStore, capsys) -> None:
    """The concurrency review: the CLI had no listing, and a CLI run killed outright stayed "running" until the app
    next looked."""
    from clm_explore.cli import main

    done = store.create("done", "sparse", {})
    (done.path / "metrics.json").write_text(json.dumps({"accuracy": 0.875, "macro_f1": 0.5, "trainable_params": 1234,
                                                        "budget": 0.002}))
    store.set_status(done.id, RunStatus.SUCCEEDED)  # reads its metrics.json
    failed = store.create("broke", "full", {})
    store.set_status(failed.id, RunStatus.FAILED, error="CUDA out of memory\nTried to allocate")
    killed = _run_of_a_process_gone()
    (done.path / "model.safetensors").write_bytes(b"0" * 3 * 2**20)
    assert main(["runs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"3 run(s) in {store.root}, taking 3.0 MiB:" and out[1].split() == [
        "id", "method", "budget", "status", "accuracy", "macro_f1", "trainable", "MiB", "created"]
    assert [line.split()[0] for line in out[2:]] == [r.id for r in store.list()]  # the registry's order, newest first
    line = {row.split()[0]: row for row in out[2:]}
    assert line[killed].split()[3] == "interrupted"  # its process was gone: marked, as the app marks it
    assert line[done.id].split()[2] == "0.2%" and line[failed.id].split()[2] == "–"  # full reads no budget
    assert line[failed.id].endswith("(CUDA out of memory\\nTried to allocate)")
    full = store.create("full-disk", "head", {})
    store.set_status(full.id, RunStatus.FAILED, error="A disk the run writes to is full (its runs folder's, the model "
                     "cache's or the temporary folder's): free some room there, then launch it again. (safetensors."
                     "SafetensorError: Error while serializing: I/O error: No space left on device (os error 28))")
    assert main(["runs", "--limit", "1"]) == 0  # the operations review: cut at 120 characters, the cause was lost
    shown = capsys.readouterr().out.splitlines()[-1]
    assert "(A disk the run writes to is full" in shown and shown.endswith("(os error 28)))") and " ... " in shown
    assert "0.8750" in line[done.id] and "1,234" in line[done.id] and " 3.0 " in line[done.id]
    assert main(["runs", "--status", "succeeded", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["accuracy"], r["trainable_params"]) for r in listed] == [(done.id, 0.875, 1234)]
    assert listed[0]["size_bytes"] >= 3 * 2**20 and listed[0]["progress"] is None
    assert main(["runs", "--method", "full", "--json"]) == 0
    full = [r["id"] for r in json.loads(capsys.readouterr().out)]
    assert sorted(full) == sorted([failed.id, killed])
    assert main(["runs", "--method", "full", "--limit", "1", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == full[:1]


def test_cli_runs_says_where_a_running_run_is_from_its_progress_log(store: RunStore, capsys) -> None:
    """The operations review: a run listed "running" for an hour gave no sign whether it moved at all."""
    from clm_explore.cli import main

    running = store.create("busy", "sparse", {"mask": {"budget": 0.01}})
    store.set_status(running.id, RunStatus.RUNNING)  # this process's: alive
    assert main(["runs"]) == 0
    # no step yet: nothing said; its budget from its config, before its metrics hold one
    assert capsys.readouterr().out.splitlines()[-1].split()[2:4] == ["1%", "running"]
    steps = [{"step": step, "total_steps": 40, "epoch": 1, "loss": 1.0, "examples_per_second": 9.0, "elapsed": 1.0,
              "eta": 150.0 - step, "eval": None, "lr": 1e-3} for step in (1, 2, 3)]
    (running.path / "progress.jsonl").write_text("".join(json.dumps(step) + "\n" for step in steps) + '{"step": 4, "to')
    assert main(["runs"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("(step 3 of 40 (8%), epoch 1, about 2 min left)")
    assert main(["runs", "--json"]) == 0  # the last whole line: a writer mid-line is not read
    assert json.loads(capsys.readouterr().out)[0]["progress"] == {"step": 3, "total_steps": 40, "epoch": 1,
                                                                    "eta": 147.0}
    from clm_explore.cli.runs_cmds import progress_said

    assert progress_said({"step": 39, "total_steps": 40, "epoch": 3, "eta": 3.2}).endswith("about 3 s left")
    assert progress_said({"step": 40, "total_steps": 40, "epoch": 3, "eta": 0}).endswith("evaluating and saving")
    store.set_status(running.id, RunStatus.SUCCEEDED)
    assert main(["runs", "--json"]) == 0  # an ended run has no progress to tell
    assert json.loads(capsys.readouterr().out)[0]["progress"] is None


def test_cli_runs_prune_deletes_the_runs_that_ended_long_ago_and_lists_them(store: RunStore, capsys) -> None:
    """The crash review: a run folder is ~90 MB and nothing deleted them but the Runs page, one at a time."""
    from clm_explore.cli import main

    old, recent = store.create("old", "head"), store.create("recent", "head")
    for record in (old, recent):
        store.set_status(record.id, RunStatus.FAILED)
    store._update(old.id, {"updated": "2020-01-02T03:04:05"})
    assert main(["runs", "--prune", "30", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would delete 1 run(s) (0.0 MiB) that ended more than 30 day(s) ago:") and old.id in out
    assert old.path.is_dir()
    assert main(["runs", "--prune", "30", "--status", "failed", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [old.id] and not old.path.exists()
    assert [r.id for r in store.list()] == [recent.id]
    assert main(["runs", "--prune", "1", "--status", "running"]) == 2
    assert "runs have not (cancel them first)" in capsys.readouterr().err
    for days in ("nan", "inf", "1e9", "-1"):  # timedelta's errors were tracebacks
        assert main(["runs", "--prune", days]) == 2
        assert "must be a number of days from 0 to 36,500" in capsys.readouterr().err
    assert main(["runs", "--prune", "1", "--method", "head"]) == 2
    assert "--method and --limit are not read with --prune" in capsys.readouterr().err


def test_a_prune_says_apart_the_runs_it_deletes_and_those_registered_from_elsewhere_it_only_unlists(
        store: RunStore, tmp_path: Path, capsys) -> None:
    """The scale review: a dry run said it would free 11.9 MB where a bench grid's cells (registered from their own
    folders) would only be unlisted, and 7.0 MB freed."""
    from clm_explore.cli import main

    own = store.create("own", "head")
    store.set_status(own.id, RunStatus.FAILED)
    (own.path / "model.safetensors").write_bytes(b"0" * 2**20)
    (tmp_path / "cell").mkdir()
    (tmp_path / "cell" / "model.safetensors").write_bytes(b"0" * 3 * 2**20)
    (tmp_path / "cell" / "metrics.json").write_text('{"accuracy": 0.5}')
    cell = store.register_folder(tmp_path / "cell")
    for record in (own, cell):
        store._update(record.id, {"updated": "2020-01-02T03:04:05"})
    assert main(["runs", "--prune", "30", "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("would delete 1 run(s) (1.0 MiB) that ended more than 30 day(s) ago; "
                           "would unlist 1 registered from elsewhere, their folders kept:")
    lines = {line.split()[0]: line for line in said.splitlines()[2:]}  # the table's rows, by id
    assert lines[cell.id].endswith("(registered from elsewhere: its folder is kept)") and "kept" not in lines[own.id]
    assert main(["runs", "--prune", "30", "--json"]) == 0
    said = {row["id"]: row["folder_deleted"] for row in json.loads(capsys.readouterr().out)}
    assert said == {own.id: True, cell.id: False}
    assert not own.path.exists() and (tmp_path / "cell" / "model.safetensors").is_file()


def test_a_run_folder_whose_process_is_gone_says_it_stopped_not_that_it_may_still_train(tmp_path: Path) -> None:
    """The crash review: report, evaluate and predict on a killed CLI run said "still training, or stopped"."""
    from clm_explore.runs import RUN_LOCK, unfinished_reason

    (tmp_path / "clm_run.json").write_text('{"method": "head"}')
    assert unfinished_reason(tmp_path).startswith("still training, or stopped before it saved its model")  # no lock
    (tmp_path / RUN_LOCK).write_text("host 123")  # the lock file a killed process left, held by none
    assert unfinished_reason(tmp_path) == ("stopped before it saved its model (the process that ran it is gone): no "
                                           "config.json yet")


def test_cli_runs_makes_no_registry_where_there_is_none(tmp_path: Path, monkeypatch, capsys) -> None:
    from clm_explore.cli import main

    monkeypatch.setenv("CLM_EXPLORE_RUNS", str(tmp_path / "none"))
    assert main(["runs"]) == 0 and capsys.readouterr().out.startswith(f"No run registry in {tmp_path / 'none'}")
    assert main(["runs", "--json"]) == 0 and json.loads(capsys.readouterr().out) == []
    assert not (tmp_path / "none").exists()  # a listing made the folder and an empty registry


def test_a_registry_held_by_another_writer_is_said_while_it_waits(store: RunStore, monkeypatch, caplog) -> None:
    """The concurrency review: a CLI command sat silent for up to 30 s while another process held the registry's
    write lock; a wait longer than WAIT_NOTE_AFTER is said (a logged warning: stderr where logging is not set up)."""
    import logging
    import sqlite3

    import clm_explore.runs as runs

    said = f"waiting for the run registry {store.db_path}: another process may be writing to it (giving up after 30 s)"
    heard = threading.Event()

    class Listener(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == said:
                heard.set()

    def let_go() -> None:  # the holder ends its write once the wait was said: no fixed time to outlast on a busy CI
        heard.wait(20)  # well inside REGISTRY_TIMEOUT (30 s): never said, the call still ends and the assert says so
        holder.rollback()

    monkeypatch.setattr(runs, "WAIT_NOTE_AFTER", 0.1)
    holder = sqlite3.connect(store.db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's write, in progress
    listener, logger = Listener(logging.WARNING), logging.getLogger("clm_explore.runs")
    logger.addHandler(listener)
    releaser = threading.Thread(target=let_go, daemon=True)
    try:
        with caplog.at_level("WARNING", logger="clm_explore.runs"):
            releaser.start()
            store.create("waited", "sparse")  # takes the write lock once the holder lets it go
    finally:
        logger.removeHandler(listener)
        heard.set()  # a failed call: the releaser need not wait on
        releaser.join(30)
        holder.close()
    assert [r.getMessage() for r in caplog.records] == [said]
    caplog.clear()
    monkeypatch.setattr(runs, "WAIT_NOTE_AFTER", 30.0)  # however busy the machine, this call cannot last that long
    with caplog.at_level("WARNING", logger="clm_explore.runs"):
        store.create("free", "sparse")
    assert caplog.records == []  # an uncontended call says nothing


def test_a_registry_lost_under_a_live_process_is_made_again_with_the_finished_runs(store: RunStore) -> None:
    """The app review: a registry deleted while the server ran left every page saying "no such table: runs" (moving
    the file aside, as advised, did not help) and every run gone from the app until a restart, and after it."""
    done = store.create("done", "sparse", {})
    (done.path / "clm_run.json").write_text(json.dumps({"method": "sparse", "config": {"epochs": 1}}))
    (done.path / "metrics.json").write_text(json.dumps({"accuracy": 0.75}))
    store.set_status(done.id, RunStatus.SUCCEEDED)
    unfinished = store.create("unfinished", "full", {})  # a run folder with nothing that says its run ended
    (unfinished.path / "clm_run.json").write_text(json.dumps({"method": "full", "config": {}}))
    for file in store.root.glob("registry.sqlite*"):
        file.unlink()
    with pytest.raises(RunStoreError, match=r"had lost its table .* the 1 finished run folder\(s\) in .* listed again"):
        store.list()
    [again] = store.list()  # the next call works
    assert (again.id, again.status, again.metrics["accuracy"]) == (done.id, RunStatus.SUCCEEDED, 0.75)
    for file in store.root.glob("registry.sqlite*"):  # gone while no process used it: a new registry finds them
        file.unlink()
    assert [r.id for r in RunStore(store.root).list()] == [done.id] and unfinished.path.is_dir()


def test_a_registry_made_again_finds_the_runs_registered_from_outside_its_root(store: RunStore, tmp_path) -> None:
    """The scale review: a registry made again found the root's own run folders only; `finetune --out DIR` runs and
    bench cells, listed before, were gone from it. One taken off the list stays off."""
    folders = []
    for name in ("kept", "unlisted", "removed"):
        folder = tmp_path / "elsewhere" / name
        folder.mkdir(parents=True)
        (folder / "clm_run.json").write_text(json.dumps({"method": "full", "config": {"epochs": 1}}))
        (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
        folders.append(folder)
    records = [store.register_folder(folder) for folder in folders]
    store.register_folder(folders[0])  # registered again: listed once
    store.delete(records[1].id)  # unlisted (an outside folder is never deleted): not to come back
    shutil.rmtree(folders[2])  # deleted by hand: nothing to find
    assert (tmp_path / "elsewhere" / "unlisted").is_dir()
    for file in store.root.glob("registry.sqlite*"):
        file.unlink()
    again = RunStore(store.root).list()
    assert [(r.path, r.status, r.metrics["accuracy"]) for r in again] == [(folders[0], RunStatus.SUCCEEDED, 0.5)]
    # Appended to only (the diff review: a rewrite taking one off lost a line another process appended meanwhile).
    assert (store.root / "outside_runs.txt").read_text().splitlines() == [*map(str, folders), f"-{folders[1]}"]
    assert RunStore(store.root)._outside_listed() == [folders[0], folders[2]]


def test_an_older_registry_takes_its_configs_from_the_folders_and_lists_its_outside_runs(tmp_path: Path) -> None:
    """The diff review: rows older versions registered with the config as given (the rows scored at 64 sub-tokens,
    the mask unseeded) never matched a newer seed of the same setting, and their outside runs were in no list."""
    import sqlite3

    from clm_explore.reruns import same_setting

    store = RunStore(tmp_path / "runs")
    settled = {"method": "random", "seed": 0, "max_length": 32, "sensitivity": {"max_length": 32},
               "mask": {"seed": 0}}
    given = {**settled, "sensitivity": {"max_length": 64}, "mask": {"seed": None}}
    beside = {"source": "tiny-random", "data": "sample:banking77_20:None:None:", "data_digest": "ab" * 8}
    old = store.create("old", "random", {**given, **beside})
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for folder in (old.path, outside):
        (folder / "clm_run.json").write_text(json.dumps({"method": "random", "source": "tiny-random", "data": "x.csv",
                                                         "data_digest": "ab" * 8, "config": settled}))
        (folder / "metrics.json").write_text('{"accuracy": 0.5}')
    elsewhere = store.register_folder(outside)
    (store.root / "outside_runs.txt").unlink()  # as an older version left it: no list
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("UPDATE runs SET config = ? WHERE id = ?", (json.dumps({**given, **beside}), old.id))
        conn.execute("PRAGMA user_version = 1")
    migrated = RunStore(store.root)
    assert migrated.get(old.id).config == {**settled, **beside}  # the app's name for its data kept
    newer = {**settled, "seed": 1, "mask": {"seed": 1}, **beside}
    assert same_setting(migrated.get(old.id).config, newer)
    assert migrated._outside_listed() == [outside] and migrated.get(elsewhere.id).config["data"] == "x.csv"


def test_a_registry_made_again_dates_the_runs_it_finds_by_their_folders(store: RunStore) -> None:
    """The scale review: a registry made again stamped every run it found with that day, so a prune of runs older than
    30 days found none of them (196 before), and every date on the Runs page was the same."""
    old = store.create("old", "sparse", {})
    (old.path / "clm_run.json").write_text(json.dumps({"method": "sparse", "config": {},
                                                       "created": "2020-01-02T03:04:05+00:00"}))
    (old.path / "metrics.json").write_text(json.dumps({"accuracy": 0.75}))
    store.set_status(old.id, RunStatus.SUCCEEDED)
    ended = datetime(2020, 1, 3, 12, 0).timestamp()
    os.utime(old.path / "metrics.json", (ended, ended))
    for file in store.root.glob("registry.sqlite*"):
        file.unlink()
    [found] = RunStore(store.root).list()
    assert found.created.startswith("2020-01-0") and found.updated == "2020-01-03T12:00:00"
    assert [r.id for r in RunStore(store.root).prune(30, dry_run=True)] == [old.id]
    from clm_explore.runs import _folder_dates  # odd dates in a hand-edited clm_run.json: the folder's times

    for odd in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "garbage", None, [1], "2999-01-01T00:00"):
        created, updated = _folder_dates(old.path, {"created": odd})
        assert created <= updated == "2020-01-03T12:00:00", odd


def test_the_registry_as_a_table_is_what_the_cli_lists(store: RunStore, capsys) -> None:
    """The API review: RunStore().list() gave records alone, while the CLI printed a table."""
    from clm_explore.cli import main

    done = store.create("done", "sparse", {})
    store.update_metrics(done.id, {"accuracy": 0.8, "macro_f1": 0.7, "trainable_params": 12})
    store.set_status(done.id, RunStatus.SUCCEEDED)
    table = store.table()
    assert table.loc[0, ["id", "status", "accuracy", "trainable_params"]].tolist() == [done.id, "succeeded", 0.8, 12]
    assert main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == table.astype(object).where(table.notna(), None).to_dict("records")
    assert list(RunStore(store.root / "empty").table().columns) == list(table.columns)  # no runs: the columns still


def _killed_overwrite(out: Path) -> None:
    """A ``finetune --overwrite`` into ``out`` killed outright (SIGKILL) once its run has begun to save."""
    import signal

    code = ("import sys, time; from pathlib import Path; from clm_explore.runs import claimed_run_dir\n"
            "out = Path(sys.argv[1])\n"
            "with claimed_run_dir(out, overwrite=True):\n"
            " (out / 'clm_run.json').write_text('{}'); (out / 'config.json').write_text('{}')\n"
            " print('saving', flush=True); time.sleep(60)")
    killed = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert killed.stdout.readline().strip() == "saving"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed.stdout.close()


def _set_aside_run(beside: Path, origin: Path | None, files: dict[str, str], days_old: float = 0.0) -> Path:
    """A hidden ``.replaced-*`` folder beside ``origin`` as ``claimed_run_dir`` leaves it, holding ``files``."""
    import tempfile
    import time

    hidden = Path(tempfile.mkdtemp(prefix=".replaced-", dir=beside))
    if origin is not None:  # none: a claim killed before it wrote the file
        (hidden / "origin").write_text(str(origin.resolve()))
    (hidden / "run").mkdir()
    for name, text in files.items():
        (hidden / "run" / name).write_text(text)
    when = time.time() - days_old * 86400
    os.utime(hidden, (when, when))
    return hidden


FINISHED = {"clm_run.json": '{"method": "head"}', "config.json": "{}", "metrics.json": '{"accuracy": 0.9}',
            "model.safetensors": "weights"}


def test_an_overwrite_killed_twice_names_the_finished_run_and_one_that_succeeds_leaves_nothing(tmp_path) -> None:
    """The crash review: a second killed overwrite set the first one's half run aside too; the folder then named that
    hidden folder (the newest), not the one holding the finished run, and a later overwrite left both for good."""
    from clm_explore.runs import RunFolderError, check_run_dir, claimed_run_dir, left_behind_note

    out = tmp_path / "run"
    out.mkdir()
    for name, text in FINISHED.items():
        (out / name).write_text(text)
    _killed_overwrite(out)
    [first] = tmp_path.glob(".replaced-*")
    _killed_overwrite(out)  # the first one's half run in the folder: set aside too (put back had this one failed)
    assert len(list(tmp_path.glob(".replaced-*"))) == 2
    assert json.loads((first / "run" / "metrics.json").read_text()) == {"accuracy": 0.9}
    with pytest.raises(RunFolderError, match=f"The finished run this folder held before waits in {first / 'run'} "):
        check_run_dir(out)
    # One an earlier version set aside, newer than the finished run's: never named for it
    half = _set_aside_run(tmp_path, out, {"clm_run.json": "{}", "config.json": "{}"}, days_old=-1)
    other = _set_aside_run(tmp_path, tmp_path / "run-2", FINISHED)  # another folder's
    assert f"waits in {first / 'run'} " in left_behind_note(out)
    with claimed_run_dir(out, overwrite=True) as claim:
        (out / "clm_run.json").write_text("{}")
        (out / "metrics.json").write_text("{}")
        claim.keep()
    assert not first.exists() and not half.exists() and other.is_dir()  # both leaked, unmentioned
    assert sorted(p.name for p in out.iterdir()) == ["clm_run.json", "metrics.json"]


def test_an_overwrite_keeps_aside_a_run_whose_set_aside_was_killed_half_way(tmp_path: Path) -> None:
    from clm_explore.runs import claimed_run_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "clm_run.json").write_text('{"method": "head"}')  # moved last: still here
    (out / "model.safetensors").write_text("weights")
    half = _set_aside_run(tmp_path, out, {"metrics.json": '{"accuracy": 0.9}', "config.json": "{}"})
    with claimed_run_dir(out, overwrite=True) as claim:  # no metrics.json here: not to be deleted as unfinished
        assert claim.earlier is not None and (claim.earlier / "model.safetensors").is_file()
    assert claim.restored and (out / "model.safetensors").is_file() and half.is_dir()
    (out / "metrics.json").write_text('{"status": "failed", "error": "boom"}')  # a failed run, a note of the user's
    (out / "notes.txt").write_text("why it failed")
    half.rename(tmp_path / "elsewhere")
    with pytest.raises(RuntimeError), claimed_run_dir(out, overwrite=True) as claim:  # the new run fails too
        assert claim.earlier is not None and [p.name for p in out.iterdir()] == [".clm_running"]
        raise RuntimeError("the new run failed")
    # The diff review: the stopped run and the user's file were deleted before the new run began, and lost with it
    assert claim.restored and (out / "notes.txt").read_text() == "why it failed"
    assert not list(tmp_path.glob(".replaced-*"))


def test_a_run_whose_process_was_killed_says_so_in_its_folder_and_is_listed_again(store: RunStore) -> None:
    """The crash review: a run whose server was killed was interrupted in the registry row alone; with the registry
    deleted and made again, its folder read as pending and the run was gone from the app, and could not be deleted."""
    from clm_explore.runs import INTERRUPTED_ERROR, RUN_LOCK, run_folder_lock

    dead_id, held_id = _run_of_a_process_gone(), _run_of_a_process_gone()
    for run_id in (dead_id, held_id):
        (store.path(run_id) / "clm_run.json").write_text(json.dumps({"method": "full", "config": {}}))
    (store.path(dead_id) / RUN_LOCK).write_text("host pid 999999\n")  # the killed process's lock file
    with run_folder_lock(store.path(held_id)):  # a live process (this one) writes a run into it now
        assert sorted(store.mark_interrupted()) == sorted([dead_id, held_id])
        assert not (store.path(held_id) / "metrics.json").exists() and (store.path(held_id) / RUN_LOCK).is_file()
    assert json.loads((store.path(dead_id) / "metrics.json").read_text()) == {
        "status": "interrupted", "error": INTERRUPTED_ERROR}
    assert not (store.path(dead_id) / RUN_LOCK).exists()
    for file in store.root.glob("registry.sqlite*"):
        file.unlink()
    [again] = RunStore(store.root).list()
    assert (again.id, again.status, again.error) == (dead_id, RunStatus.INTERRUPTED, INTERRUPTED_ERROR)
    folder = again.path
    RunStore(store.root).delete(dead_id)  # it could not be, unlisted
    assert not folder.exists()


def test_a_sweep_deletes_the_hidden_folders_no_process_will_come_back_to(store: RunStore, monkeypatch) -> None:
    """The crash review: ``.deleting-*`` (a delete killed, or refused some files) and ``.replaced-*`` folders stayed
    for good."""
    import socket
    import time

    import clm_explore.runs as runs

    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()

    def deleting(name: str, owner: dict | None, hours_old: float = 0.0) -> Path:
        hidden = store.root / f".deleting-{name}"
        (hidden / "run").mkdir(parents=True)
        (hidden / "run" / "model.safetensors").write_text("weights")
        if owner is not None:
            (hidden / "owner").write_text(json.dumps(owner))
        when = time.time() - hours_old * 3600
        os.utime(hidden, (when, when))
        return hidden

    host = socket.gethostname()
    dead = deleting("dead", {"host": host, "pid": gone.pid, "pid_start": None})
    mine = deleting("mine", {"host": host, "pid": os.getpid(), "pid_start": None})
    unnamed_old, unnamed_new = deleting("old", None, hours_old=2), deleting("new", None)
    elsewhere = deleting("elsewhere", {"host": "another-host", "pid": 1, "pid_start": None})
    run = store.create("kept", "head")
    old_finished = _set_aside_run(store.root, run.path, FINISHED, days_old=8)  # the user's work: never swept
    old_unfinished = _set_aside_run(store.root, run.path, {"clm_run.json": "{}"}, days_old=8)
    young_unfinished = _set_aside_run(store.root, run.path, {"clm_run.json": "{}"}, days_old=6)
    held = _set_aside_run(store.root, store.root / "held", {"clm_run.json": "{}"}, days_old=30)
    no_origin = _set_aside_run(store.root, None, {}, days_old=8)
    (store.root / "held").mkdir()
    with runs.run_folder_lock(store.root / "held"):  # a live claim's: it puts its run back or deletes it
        store.mark_interrupted()  # the first call sweeps
    left = {p.name for p in store.root.iterdir() if not p.name.startswith("registry.sqlite")}
    assert left == {run.id, "held", mine.name, unnamed_new.name, elsewhere.name, old_finished.name,
                    young_unfinished.name, held.name}
    assert not any(p.exists() for p in (dead, unnamed_old, old_unfinished, no_origin))
    # delete() names its process in the folder of files it could not remove: kept while it lives
    store.set_status(run.id, RunStatus.SUCCEEDED)
    monkeypatch.setattr(shutil, "rmtree", lambda path, ignore_errors=False: None)
    with pytest.raises(RunStoreError, match="could not be deleted"):
        store.delete(run.id)
    monkeypatch.undo()
    [waiting] = set(store.root.glob(".deleting-*")) - {mine, unnamed_new, elsewhere}
    assert json.loads((waiting / "owner").read_text())["pid"] == os.getpid()
    store.mark_interrupted()  # not again so soon (every page the app draws calls it)
    assert store.sweep_leftovers() == [held] and waiting.is_dir()  # its claim has let go of "held" since
    (waiting / "owner").write_text(json.dumps({"host": host, "pid": gone.pid, "pid_start": None}))  # gone now
    assert store.sweep_leftovers() == [waiting] and not waiting.exists()


def test_prune_deletes_the_runs_that_ended_long_ago(store: RunStore, tmp_path: Path, monkeypatch) -> None:
    import clm_explore.runs as runs
    from clm_explore.runs import PruneError

    long_ago = "2020-01-02T03:04:05"

    def run(name: str, status: RunStatus, updated: str = long_ago):
        record = store.create(name, "head")
        store.set_status(record.id, status)
        store._update(record.id, {"updated": updated})
        return record

    done, failed, running = run("done", RunStatus.SUCCEEDED), run("failed", RunStatus.FAILED), run(
        "running", RunStatus.RUNNING)  # this process's: alive, never pruned, however old
    recent = run("recent", RunStatus.CANCELLED, updated=runs._now())
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "metrics.json").write_text('{"accuracy": 0.5}')
    outside = store.register_folder(tmp_path / "elsewhere")
    store._update(outside.id, {"updated": long_ago})
    assert {r.id for r in store.prune(5, dry_run=True)} == {done.id, failed.id, outside.id}
    assert len(store.list()) == 5 and done.path.is_dir()
    assert [r.id for r in store.prune(5, {RunStatus.FAILED})] == [failed.id] and not failed.path.exists()
    with pytest.raises(ValueError, match="prune deletes runs that ended; running runs have not"):
        store.prune(5, {RunStatus.SUCCEEDED, RunStatus.RUNNING})
    with pytest.raises(ValueError, match="older_than_days is -1"):
        store.prune(-1)
    stuck = run("stuck", RunStatus.SUCCEEDED)
    move_aside = runs._move_aside

    def refused(folder: Path) -> Path:
        if folder == stuck.path:
            raise PermissionError(13, "Permission denied")
        return move_aside(folder)

    monkeypatch.setattr(runs, "_move_aside", refused)
    with pytest.raises(PruneError, match=f"2 run\\(s\\) deleted; not all went: {stuck.id} \\(Run {stuck.id} cannot be "
                                         "deleted") as partly:
        store.prune(5)
    assert {r.id for r in partly.value.deleted} == {done.id, outside.id}
    assert not done.path.exists() and (tmp_path / "elsewhere").is_dir()  # a folder from elsewhere: unregistered only
    assert {r.id for r in store.list()} == {running.id, recent.id, stuck.id}


def test_a_registry_in_a_read_only_folder_or_on_a_full_disk_names_the_cause(store: RunStore, monkeypatch) -> None:
    """The crash review: both were "cannot be used (...) ... if the file is damaged, move it aside"."""
    import sqlite3
    from collections import namedtuple

    def failing(message: str):
        def connect(*args, **kwargs):
            raise sqlite3.OperationalError(message)
        return connect

    monkeypatch.setattr(sqlite3, "connect", failing("unable to open database file"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as root, chmod 555 refuses nothing
    with pytest.raises(RunStoreError) as refused:
        store.list()
    assert f"(unable to open database file): the runs folder {store.root} is read-only" in str(refused.value)
    assert "move it aside" not in str(refused.value)
    monkeypatch.undo()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sqlite3, "connect", failing("disk I/O error"))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - 2**19, 2**19))
    with pytest.raises(RunStoreError, match=r"\(disk I/O error\): the disk holding .* is full \(0 MiB free\): free "
                                            "some space") as full:
        store.list()
    assert "move it aside" not in str(full.value)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 2**30, 9 * 2**30))
    with pytest.raises(RunStoreError, match="move it aside"):  # room and write access: the file may be damaged
        store.list()


def test_an_older_registrys_rows_without_method_or_config_take_them_from_their_folders(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """The upgrade review: rows older versions registered before their run wrote clm_run.json kept method '?' and
    config {} (the Runs page showed no settings; the Compare page missed other data); a read-only registry is read
    as it is."""
    import sqlite3

    from clm_explore.runs import REGISTRY_VERSION

    store = RunStore(tmp_path)
    record = store.create("old", "sparse")
    (record.path / "clm_run.json").write_text(json.dumps({"method": "sparse", "source": "default", "data": "d.csv",
                                                         "config": {"method": "sparse", "epochs": 3}}))
    with sqlite3.connect(store.db_path) as conn:  # as an older version left it
        conn.execute("UPDATE runs SET method = '?', config = '{}'")
        conn.execute("PRAGMA user_version = 0")
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda path, **kw: connect(f"file:{path}?mode=ro", uri=True, **kw))
    assert RunStore(tmp_path).get(record.id).method == "?"  # read-only: read as it is, no error
    monkeypatch.setattr(sqlite3, "connect", connect)
    migrated = RunStore(tmp_path).get(record.id)
    assert migrated.method == "sparse" and migrated.config == {"method": "sparse", "epochs": 3, "source": "default",
                                                               "data": "d.csv"}
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == REGISTRY_VERSION


def test_a_runs_folder_that_refuses_a_new_run_folder_is_said_not_raised_as_oserror(store: RunStore,
                                                                                    monkeypatch) -> None:
    """The operations review: the runs folder remounted read-only while the app ran made Launch show a redacted
    OSError from ``folder.mkdir()``."""
    import errno

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    monkeypatch.setattr("clm_explore.runs.os.access", lambda path, mode: False)
    with pytest.raises(RunStoreError, match=r"A run folder cannot be made: the runs folder .* is read-only"):
        store.create("ro", "head")


def test_the_runs_folder_is_named_in_full_and_a_failure_there_says_how_to_choose_another(tmp_path: Path, monkeypatch,
                                                                                       capsys) -> None:
    """The packaging review: installed, ./runs follows the working folder; the CLI said "runs" alone, and a
    read-only working folder's error named neither --out nor CLM_EXPLORE_RUNS."""
    import errno

    from clm_explore.cli import _runs_folder_hint, main

    monkeypatch.delenv("CLM_EXPLORE_RUNS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["runs"]) == 0
    assert capsys.readouterr().out.startswith(f"No run registry in {tmp_path / 'runs'} (./runs of the folder you are in")
    hint = _runs_folder_hint(OSError(errno.EROFS, "Read-only file system", "runs"))
    assert hint == (f" It is the runs folder ({tmp_path / 'runs'}, ./runs of the folder you started in): set "
                    "CLM_EXPLORE_RUNS to a folder this user may write, or pass the run's own --out DIR.")
    assert _runs_folder_hint(OSError(errno.EROFS, "Read-only file system", str(tmp_path / "elsewhere"))) == ""


def test_listing_runs_imports_neither_torch_nor_transformers(tmp_path: Path) -> None:
    """The scale review: `clm-explore runs` took 5.7 s whatever the runs, all but 0.2 s of it importing torch,
    transformers and sklearn that listing never uses (a monitor polling `runs --json` paid it every time)."""
    import subprocess
    import sys

    store = RunStore(tmp_path / "runs")  # a registry with a finished run: listed, its folder sized
    run = store.create("listed", "head")
    (run.path / "metrics.json").write_text('{"accuracy": 0.5}')
    store.set_status(run.id, RunStatus.SUCCEEDED)
    for args in (["runs"], ["runs", "--json"], ["runs", "--prune", "0", "--dry-run"]):
        script = (f"import sys; from clm_explore.cli import main; code = main({args!r}); "
                  "print(code, sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "CLM_EXPLORE_RUNS": str(tmp_path / "runs")})
        assert run.id in done.stdout and done.stdout.splitlines()[-1] == "0 []", (args, done.stderr[-2000:])


def test_a_runs_folder_moved_with_its_registry_finds_its_runs_where_they_are_now(tmp_path: Path) -> None:
    """The scale review: after a move (a bigger disk), every run pointed at the old folder, read "folder gone", and
    Delete left its files."""
    old_root = tmp_path / "old"
    store = RunStore(old_root)
    run = store.create("moved", "head")
    store.set_status(run.id, RunStatus.FAILED)
    shutil.move(str(old_root), str(tmp_path / "new"))
    [moved] = RunStore(tmp_path / "new").list()
    assert moved.path == (tmp_path / "new" / run.id).resolve() and moved.path.is_dir()
    RunStore(tmp_path / "new").delete(run.id)
    assert not moved.path.exists()


def test_the_cli_and_the_api_record_a_run_as_its_folder_does_and_as_one_setting(tmp_path, monkeypatch) -> None:
    """The faces review: the CLI registered the config as given (the rows scored at 64 sub-tokens, the mask unseeded),
    clm_run.json the one the run settled (32, its seed); a run registered from its folder (the Python API's way) had
    no data digest. The same setting from the two faces read as two, and a path typed two ways as other data."""
    from clm_explore import finetune
    from clm_explore.cli import main
    from clm_explore.config import FinetuneConfig
    from clm_explore.reruns import same_setting

    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"card {i} arrived,a\nrate {i} up,b\n" for i in range(40)))
    monkeypatch.setenv("CLM_EXPLORE_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    args = ["finetune", "--model", "tiny-random", "--method", "random", "--epochs", "1", "--max-length", "32"]
    assert main([*args, "--data", "d.csv", "--out", "cli0", "--name", "first probe"]) == 0
    assert main([*args, "--data", str(data), "--seed", "1", "--out", "cli1"]) == 0  # the path typed another way
    finetune(str(data), FinetuneConfig(method="random", epochs=1, max_length=32, seed=2), tmp_path / "api2",
             source="tiny-random", progress=False)
    store = RunStore(tmp_path / "runs")
    api = store.register_folder(tmp_path / "api2")
    cli0, cli1 = sorted((r for r in store.list() if r.id != api.id), key=lambda r: r.config["seed"])
    for record in (cli0, cli1, api):
        recorded = json.loads((record.path / "clm_run.json").read_text())
        assert {k: v for k, v in record.config.items() if k not in ("source", "data", "data_digest")} == \
            recorded["config"], record.name
        assert record.config["sensitivity"]["max_length"] == 32 and record.config["data_digest"] == \
            recorded["data_digest"]
    assert same_setting(cli0.config, cli1.config) and same_setting(cli0.config, api.config)
    assert (cli0.name, cli1.name) == ("first probe", "cli1")  # --name, else the folder's (a bench names its cells)
    assert not same_setting(cli0.config, {**api.config, "data_digest": "0" * 16})


def test_a_bench_cell_is_named_by_its_grid_and_a_name_given_again_is_kept(store: RunStore, tmp_path) -> None:
    """The scale review: every grid's cells were listed by their own folders' names, the same in each grid; the diff
    review: a name given when a folder was trained again was dropped, and a registry made anew lost the grid's."""
    grid = tmp_path / "banking-grid"
    cells = [grid / "cells" / "sparse-b0.01-s2", grid / "tune" / "sparse-b0.01-s0-lr0.001", tmp_path / "plain" / "cells"
             / "head-s0"]
    (grid / "cells").mkdir(parents=True)
    (grid / "bench.json").write_text("{}")
    for folder in cells:
        folder.mkdir(parents=True)
        (folder / "clm_run.json").write_text(json.dumps({"method": "sparse", "config": {}}))
        (folder / "metrics.json").write_text('{"accuracy": 0.5}')
    names = [store.register_folder(folder).name for folder in cells]
    assert names == ["banking-grid/sparse-b0.01-s2", "banking-grid/tune/sparse-b0.01-s0-lr0.001", "head-s0"]
    for file in store.root.glob("registry.sqlite*"):
        file.unlink()
    assert sorted(r.name for r in RunStore(store.root).list()) == sorted(names)  # found again, named alike
    again = RunStore(store.root).register_folder(cells[2], name="my probe")  # --out DIR --overwrite --name
    assert again.name == "my probe" and RunStore(store.root).get(again.id).name == "my probe"


def test_a_registry_made_again_lists_each_run_under_the_name_it_was_given(store: RunStore, tmp_path) -> None:
    """A leftover of the sixty-fourth session: `finetune --name` and the app's run names lived in the registry alone,
    so a registry made anew listed every run under its folder's name."""
    outside = tmp_path / "elsewhere" / "run7"
    outside.mkdir(parents=True)
    (outside / "clm_run.json").write_text(json.dumps({"method": "full", "config": {"epochs": 1}}))
    (outside / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    named = store.register_folder(outside, name="my experiment")
    store.set_status(named.id, RunStatus.SUCCEEDED)
    own = store.create("sparse at 1%", "sparse", {})
    (own.path / "clm_run.json").write_text(json.dumps({"method": "sparse", "config": {"epochs": 1}}))
    (own.path / "metrics.json").write_text(json.dumps({"accuracy": 0.75}))
    store.set_status(own.id, RunStatus.SUCCEEDED)
    plain = store.register_folder(tmp_path / "elsewhere" / "run7")  # registered again without a name: as it was
    assert plain.name == "my experiment"
    for file in store.root.glob("registry.sqlite*"):
        file.unlink()
    again = {record.path: record for record in RunStore(store.root).list()}
    assert again[outside.resolve()].name == "my experiment" and again[own.path].name == "sparse at 1%"
    assert again[own.path].id == own.id  # the root's own folder keeps its id
