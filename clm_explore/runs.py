"""Run registry: one folder per run plus a small SQLite table that lists them all.

Layout::

    <root>/registry.sqlite                 # the table below (WAL, short transactions)
    <root>/outside_runs.txt                # the folders registered from elsewhere, a path a line (-path: off)
    <root>/<YYYYmmdd-HHMMSS>-<slug>/       # one run folder (what ``finetune`` writes)

``root`` is ``$CLM_EXPLORE_RUNS`` or ``./runs``. A folder written elsewhere (``finetune --out DIR``)
can be added with ``register_folder``; it is then listed by its absolute path, and found again from
``outside_runs.txt`` by a registry made anew (the old one deleted, or moved aside when damaged). Registering a folder again
re-reads its method, config and metrics, unless a live process owns its run (pending or running).

Every call opens its own short-lived connection, so one ``RunStore`` may be shared by threads, and
several processes (the app and the CLI) may use the same root at once. The owning process of a run
(host, pid and the pid's start time) is stored so that, after a restart, runs whose process is gone
can be marked ``interrupted`` (``mark_interrupted``).
"""

from __future__ import annotations

import builtins  # RunStore.list shadows list in the class's annotations
import contextlib
import io
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clm_explore.config import (
    BUDGET_METHODS,
    METHODS,
    FinetuneConfig,
    carve_words,
    data_options_words,
    draw_words,
)

if TYPE_CHECKING:
    import pandas as pd

REGISTRY_NAME = "registry.sqlite"
REGISTRY_VERSION = 2
"""The registry's format (its PRAGMA user_version): ``RunStore._migrate`` brings an older one up to it."""
UPLOADS_NAME = "_uploads"
"""The app's uploads folder under the runs root (``ui.state.uploads_root``'s default): never a run."""
BESIDE_CONFIG = ("source", "data", "data_digest")
"""What the registry keeps beside a run's FinetuneConfig in its config (the model, the data and its rows)."""
OUTSIDE_NAME = "outside_runs.txt"
"""The runs root's list of the run folders registered from outside it, a path a line: a registry made anew finds the
root's own folders by looking, and these from here (the scale review: a rebuilt registry listed none of them)."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    method TEXT NOT NULL,
    status TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    host TEXT,
    pid INTEGER,
    pid_start TEXT
)
"""


class RunStatus(StrEnum):
    """Life cycle of a run: pending -> running -> one of the terminal states."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def is_terminal(self) -> bool:
        return self not in (RunStatus.PENDING, RunStatus.RUNNING)


INTERRUPTED_ERROR = "The process running this run stopped (it was killed, or the server restarted)."
"""Why ``mark_interrupted`` marked a run: its registry row's error and its folder's metrics.json say it."""
STOPPED_STATUSES = (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INTERRUPTED)
"""The ends of a run that began and did not succeed: what a stopped run's metrics.json records as its status."""


class RunStoreError(RuntimeError):
    """A run cannot be found, created or removed; the message says why."""


class RunNotFoundError(RunStoreError):
    """No run has the id asked for (deleted meanwhile, or never there); the registry itself answered."""


class RegistryError(RunStoreError):
    """The registry file itself cannot be used (held past the timeout, read-only, damaged, its disk full): every call
    would meet it, not one run's."""


class PruneError(RunStoreError):
    """``RunStore.prune`` deleted some runs and not others: ``deleted`` holds the records it did delete, the message
    says why the others stayed."""

    def __init__(self, message: str, deleted: list[RunRecord]) -> None:
        super().__init__(message)
        self.deleted = deleted


@dataclass
class RunRecord:
    """One row of the registry."""

    id: str
    name: str
    method: str
    status: RunStatus
    path: Path
    created: str
    updated: str
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    host: str | None = None
    pid: int | None = None

    def __repr__(self) -> str:  # the config alone is a few KB
        accuracy = self.metrics.get("accuracy")
        score = f", accuracy {accuracy:.4f}" if isinstance(accuracy, float) else ""
        return f"RunRecord({self.id}: {self.method}, {self.status.value}{score}, {self.path})"

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def summary(self) -> dict[str, Any]:
        """The run as ``clm-explore runs`` lists it: its registry fields and headline figures (None where it has
        none)."""
        listed = {name: self.metrics.get(name) for name in LISTED_METRICS}
        if listed["budget"] is None and self.method in BUDGET_METHODS:  # a run still training: its config's
            listed["budget"] = (self.config.get("mask") or {}).get("budget")
        data = self.config.get("data")  # a notebook's table told draws, data sets and models apart by name alone
        return {"id": self.id, "name": self.name, "method": self.method, "status": self.status.value,
                "created": self.created, "updated": self.updated, "path": str(self.path),
                "data": data_key_name(data) if isinstance(data, str) else None, "model": self.config.get("source"),
                **listed, "error": self.error}

    def listed(self) -> dict[str, Any]:
        """The run as ``clm-explore runs`` and ``RunStore.table`` list it: its ``summary``, the bytes its folder takes,
        and where a waiting or running run's training is (its last step; None before the first, or once it ended).
        The operations review: no size, and no sign whether a run listed "running" for an hour moved at all."""
        last = None if self.status.is_terminal else last_step(self.path)
        progress = None if last is None else {key: last.get(key) for key in ("step", "total_steps", "epoch", "eta")}
        return {**self.summary(), "size_bytes": folder_bytes(self.path), "progress": progress}

    def full_metrics(self) -> dict[str, Any]:
        """``metrics`` with the per-label figures the registry leaves out (``PER_LABEL_METRICS``), from the run
        folder's metrics.json."""
        return {**self.metrics, **read_json_object(self.path / "metrics.json")}


LISTED_METRICS = ("accuracy", "macro_f1", "trainable_params", "budget", "seed")
"""The figures each run is listed with (the registry's copy of its metrics.json)."""


DRAW_MARK = "-per-label-draw-"
"""Between a ``DataChoice.key``'s shots and draw seed: ``sample:banking77_20:None:None::10-per-label-draw-0``."""
CARVE_MARK = "carve-"
"""Before a ``DataChoice.key``'s validation and test shares where they are not the defaults: ``...::carve-0-0.3``."""
_KEY_OPTIONS = re.compile(rf"(.*?)(?::{CARVE_MARK}([\d.]+)-([\d.]+))?(?::(\d+){DRAW_MARK}(\d+))?")


def data_key_name(key: str, columns: bool = False) -> str:
    """The data set's name in a ``DataChoice.key`` (what a run's config records), or the key itself when it is
    not one. An upload's name has the start of its digest after it: two users' different ``train.csv`` files are
    told apart on a shared server. With ``columns``, the text and label columns chosen, where any was."""
    kind, _, rest = key.partition(":")
    base, validation, test, shots, seed = _KEY_OPTIONS.fullmatch(rest).groups()  # type: ignore[union-attr]
    parts = base.rsplit(":", 3)
    if kind not in ("sample", "shared", "upload") or len(parts) != 4:
        return key
    name, text_col, label_col, digest = parts
    shown = f"{name} ({digest[:6]})" if kind == "upload" and digest else name
    mapped = [f"{what} column {col}" for what, col in (("text", text_col), ("label", label_col)) if col != "None"]
    shown = f"{shown}, {' and '.join(mapped)}" if columns and mapped else shown
    try:  # a key no DataChoice writes (edited by hand): named as it stands, never an error on every page
        carve = carve_words(float(validation), float(test)) if validation is not None else ""
    except ValueError:
        return key
    return shown + carve + (draw_words(int(shots), int(seed)) if shots is not None else "")


def same_data_set(key_a: str, key_b: str) -> bool:
    """Whether two ``DataChoice.key`` name one data set (file and columns), whatever their carve and draw."""
    def base(key: str) -> str:
        kind, _, rest = key.partition(":")
        return f"{kind}:{_KEY_OPTIONS.fullmatch(rest).group(1)}"  # type: ignore[union-attr]

    return base(key_a) == base(key_b)


def default_root() -> Path:
    """``$CLM_EXPLORE_RUNS`` or ``./runs``."""
    return Path(os.environ.get("CLM_EXPLORE_RUNS") or "runs")


def slugify(name: str, max_len: int = 40) -> str:
    """A safe folder-name fragment: lower-case ASCII letters, digits and single dashes only.

    No dots or separators survive, so a slug can never name a parent folder or an absolute path. Accented letters
    keep their letter ("Überweisung" gives "uberweisung", not "berweisung": the language review). A name too long
    keeps its last word (when it has at most 12 characters) after its start: a seed's ``-s2`` was cut off, and the id's collision
    counter then read as the seed (the scale review: seeds 0, 1, 2 as "...-head", "-head-2", "-head-3").
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")
    if len(slug) > max_len:
        tail = slug.rsplit("-", 1)[-1]
        short = "-" in slug and len(tail) <= 12  # a long last word is cut as the rest is, not split in two
        slug = f"{slug[: max_len - len(tail) - 1].strip('-')}-{tail}" if short else slug[:max_len]
    return slug.strip("-") or "run"


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _process_start(pid: int) -> str | None:
    """The kernel start time of ``pid`` (Linux), so that a reused pid is not taken for the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after the last ')' are fixed. starttime is field 22.
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    current = _process_start(pid)
    return start is None or current is None or current == start


REGISTRY_TIMEOUT = 30.0  # seconds a registry call waits for another process's write before it gives up
WAIT_NOTE_AFTER = 2.0  # seconds of that wait before it is said: the calls themselves take milliseconds
_log = logging.getLogger(__name__)


@contextmanager
def _note_a_long_wait(db_path: Path) -> Iterator[None]:
    """Log a warning (printed on stderr where logging is not set up) when a registry call takes longer than
    ``WAIT_NOTE_AFTER``: sqlite waits for another process's write lock in silence, and the CLI sat for up to 30 s
    without a word (the concurrency review). One watcher thread looks at the calls in flight: a timer thread per
    call cost 0.44 ms a call, more than ``list(limit=10)``'s own 0.28 ms, on the app's once-a-second redraws."""
    call = [time.monotonic(), db_path, False]  # started, registry, said
    with _WATCH_LOCK:
        _IN_FLIGHT[id(call)] = call
        _start_watcher()
    try:
        yield
    finally:
        with _WATCH_LOCK:
            _IN_FLIGHT.pop(id(call), None)


_IN_FLIGHT: dict[int, list] = {}
_WATCH_LOCK = threading.Lock()
_WATCHER: list[threading.Thread] = []


def _start_watcher() -> None:
    if not _WATCHER or not _WATCHER[0].is_alive():  # once per process (a forked worker starts its own)
        _WATCHER[:] = [threading.Thread(target=_watch_calls, name="registry-wait-note", daemon=True)]
        _WATCHER[0].start()


def _watch_calls() -> None:
    while True:
        time.sleep(min(0.5, WAIT_NOTE_AFTER / 2))
        now = time.monotonic()
        with _WATCH_LOCK:
            due = [call for call in _IN_FLIGHT.values() if not call[2] and now - call[0] >= WAIT_NOTE_AFTER]
            for call in due:
                call[2] = True
        for _, db_path, _ in due:
            _log.warning(f"waiting for the run registry {db_path}: another process may be writing to it (giving up "
                         f"after {REGISTRY_TIMEOUT:.0f} s)")


_IO_WORDS = ("unable to open", "disk I/O", "full", "readonly")
"""What sqlite says when the file or the folder cannot be written (not "locked", nor "not a database")."""
LOW_DISK_SPACE = 16 * 2**20
"""Free bytes under which a registry that fails to write is said to be on a full disk: sqlite needs room for its
write-ahead log and a page or more, and a disk a few KB short of full refuses it as surely as a full one."""


def _place_trouble(root: Path) -> str | None:
    """Why the runs folder itself refuses the registry's files, in words: read-only, or its disk full; None when it is
    neither (the file itself is then the trouble)."""
    if not os.access(root, os.W_OK):  # also False on a file system mounted read-only
        return (f"the runs folder {root} is read-only (for this user, or on a read-only disk): keep runs in a folder "
                "of your own (set CLM_EXPLORE_RUNS), or ask its owner for write access")
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return None
    if free < LOW_DISK_SPACE:
        return f"the disk holding {root} is full ({free // 2**20} MiB free): free some space, then try again"
    return None


_RUN_ID = re.compile(r"\d{8}-\d{6}-[a-z0-9-]+")
"""A run id as ``create`` makes it: ``<YYYYmmdd-HHMMSS>-<slug>``, a number after it when taken."""


class RunStore:
    """The run registry over ``root``; see the module docstring."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()
        self.db_path = self.root / REGISTRY_NAME
        self._next_sweep = float("-inf")  # the first mark_interrupted sweeps (sweep_leftovers)
        new = not self.db_path.is_file()
        self._make_table()
        if new:  # a registry made where run folders are (the old one deleted, or moved aside): they are listed again
            self.register_found()
        else:
            self._follow_a_moved_root()

    def _follow_a_moved_root(self) -> None:
        """Point the rows whose folder is gone to the folder of their id under root, where there is one: a runs folder
        moved to a bigger disk, or reached by another mount path, kept its registry's old paths, and every run read
        "folder gone" and could not be deleted (the scale review). A stat a run, at each opening."""
        try:
            with self._connect() as conn:
                for row in conn.execute("SELECT id, path FROM runs").fetchall():
                    here, there = self.root / row["id"], Path(row["path"])
                    if there != here and not there.exists() and here.is_dir():
                        conn.execute("UPDATE runs SET path = ? WHERE id = ?", (str(here), row["id"]))
        except RunStoreError:  # read-only, or held past the timeout: the next opening tries again
            return

    def _make_table(self) -> None:
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a registry an older version wrote up to this one's (PRAGMA user_version), once. Version 1: rows
        without a method or config (registered before their run wrote clm_run.json, by versions that never filled
        them in) take both from the folder, as ``set_status`` does now: the Runs page showed their settings empty,
        their method '?', and the Compare page missed that two of them trained on different data (the upgrade
        review). Version 2: every row's config is the one its clm_run.json records (the CLI and the app registered the
        config as given, before training settled it: a seed of an older run and a newer one's read as two settings,
        the diff review), and the rows outside the root are listed in ``outside_runs.txt``. A registry this process
        may not write is read as it is."""
        try:
            with self._connect() as conn:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version >= REGISTRY_VERSION:
                    return
                query = "SELECT id, path, config FROM runs" + (
                    "" if version < 2 else " WHERE method = '?' OR config IN ('{}', '')")
                for row in conn.execute(query).fetchall():
                    meta = read_json_object(Path(row["path"]) / "clm_run.json")
                    if recorded := _registry_config(meta):
                        given = _loads_object(row["config"])  # what the app named the data as, kept
                        kept = {k: given[k] for k in BESIDE_CONFIG if k in given}
                        conn.execute("UPDATE runs SET method = ?, config = ? WHERE id = ?",
                                     (method_name(meta.get("method", "?")), _dumps({**recorded, **kept}), row["id"]))
                    if Path(row["path"]).parent != self.root:
                        self._note_outside(Path(row["path"]))
                conn.execute(f"PRAGMA user_version = {REGISTRY_VERSION}")
        except RunStoreError:  # read-only, or held by another process past the timeout: the next open migrates
            return

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per call: sqlite3 connections must not cross threads, and short
        # transactions keep the WAL writer lock brief for other processes.
        try:
            conn = sqlite3.connect(self.db_path, timeout=REGISTRY_TIMEOUT)
        except sqlite3.Error as exc:
            raise self._unusable(exc) from exc
        conn.row_factory = sqlite3.Row
        try:
            with _note_a_long_wait(self.db_path), conn:  # commits (inside the wait's watch), or rolls back on error
                yield conn
        except sqlite3.IntegrityError:  # a caller's to handle (two processes registering one folder)
            raise
        except sqlite3.DatabaseError as exc:  # locked past the timeout, damaged, read-only: named, not a traceback
            raise self._unusable(exc) from exc
        finally:
            conn.close()

    def _unusable(self, exc: sqlite3.Error) -> RegistryError:
        if "no such table" in str(exc):  # the file was deleted (sqlite made an empty one) or replaced while in use
            return self._remade(exc)
        # Before the advice below: a read-only runs folder ("unable to open database file") or a full disk ("disk
        # I/O error") was told to move a healthy file aside (the crash review).
        cause = _place_trouble(self.root) if any(word in str(exc) for word in _IO_WORDS) else None
        if cause is not None:
            return RegistryError(f"The run registry {self.db_path} cannot be used ({exc}): {cause}.")
        if "readonly" in str(exc):  # moving a read-only file aside (the advice below) is not this user's to do
            return RegistryError(
                f"The run registry {self.db_path} is read-only for this user ({exc}): keep runs in a folder of your "
                "own (set CLM_EXPLORE_RUNS), or ask its owner for write access.")
        return RegistryError(
            f"The run registry {self.db_path} cannot be used ({exc}). If another program holds it, try again when it "
            "is done; if the file is damaged, move it aside and a new one is made (the run folders stay as they are "
            "and can be registered again: RunStore().register_folder).")

    def _remade(self, exc: sqlite3.Error) -> RegistryError:
        """The registry's table made again and the run folders under root registered again, for a registry that
        lost its table while this process used it (the app review: a registry deleted under a live server stayed
        broken, every run gone from the app, until the server restarted). The error says so: the call that met it
        failed, the next one works."""
        try:
            self._make_table()
            found = self.register_found()
        except (RunStoreError, OSError) as again:
            return RegistryError(f"The run registry {self.db_path} lost its table ({exc}) and cannot be made again "
                                 f"({again}). Move the file aside, and a new one is made.")
        return RegistryError(f"The run registry {self.db_path} had lost its table (deleted or replaced while in use); "
                             f"a new one was made and the {len(found)} finished run folder(s) in {self.root} listed "
                             "again. Try again.")

    def check_writable(self) -> None:
        """Take the registry's write lock once and let it go, so that a registry that cannot take a write (held by
        another program past the timeout, read-only, damaged) is said before a run folder is replaced.

        Raises:
            RunStoreError: what stands in the way.
        """
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # the write lock: a lock held elsewhere past the timeout fails here
            # A read-only file takes the lock (sqlite opens it read-only) and refuses the first write: one that
            # changes nothing, rolled back. (The concurrency review: a bench then ran every cell into the refusal.)
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version = {version}")
            conn.rollback()

    # -- creating -------------------------------------------------------------------------------
    def create(self, name: str, method: str, config: dict[str, Any] | None = None) -> RunRecord:
        """Make a new run folder ``<root>/<YYYYmmdd-HHMMSS>-<slug>`` and its row (status pending)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = f"{stamp}-{slugify(name)}"
        for n in range(1, 1000):
            run_id = base if n == 1 else f"{base}-{n}"
            folder = self.root / run_id
            try:
                folder.mkdir()  # atomic: two processes cannot both get the same folder
            except FileExistsError:
                continue
            except OSError as exc:  # a runs folder made read-only (or full) after the registry opened: the app's
                # Launch showed a redacted OSError (the operations review)
                trouble = _place_trouble(self.root) or f"{exc.strerror}: {folder}"
                raise RunStoreError(f"A run folder cannot be made: {trouble}.") from exc
            break
        else:  # pragma: no cover - a thousand runs in one second with one name
            raise RunStoreError(f"Could not find a free folder name for run {name!r}.")
        if folder.resolve().parent != self.root:  # defence in depth; slugify already prevents it
            raise RunStoreError(f"Run name {name!r} would escape the run root.")
        try:
            self._insert(run_id, name, method, folder, config or {}, {}, RunStatus.PENDING)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self.get(run_id)

    def register_folder(self, path: str | Path, name: str | None = None, method: str | None = None,
                        config: dict[str, Any] | None = None) -> RunRecord:
        """Register a run folder written anywhere (``finetune --out DIR``), by absolute path.

        The method and config come from ``clm_run.json`` (else from ``method`` and ``config``: a run about to
        be written) and the metrics from ``metrics.json`` when present. Status: succeeded when ``metrics.json``
        exists, else pending (owned by this process, so a crash later shows as interrupted). Registering the
        same folder again returns its record, read again from the folder unless a process is running it: a run
        trained again into the folder (overwrite) must not keep the earlier run's method, config and metrics.
        """
        folder = Path(path).expanduser().resolve()
        if not folder.is_dir():
            raise RunStoreError(f"Run folder {folder} does not exist.")
        root = self.root.resolve()
        if folder == root or folder in root.parents or folder == root / UPLOADS_NAME:
            # listed, it would be zipped for any user and deleted whole by "Delete run" (the security review)
            raise RunStoreError(f"{folder} holds the run registry or the app's uploads; it is not a run folder.")
        meta = read_json_object(folder / "clm_run.json")
        metrics = read_json_object(folder / "metrics.json")
        status, error = _folder_status(folder, metrics)
        method = method_name(meta.get("method", metrics.get("method", method or "?")))
        config = _registry_config(meta) or config or {}
        existing = self._find_by_path(folder)
        if existing is not None and folder.parent != root:
            self._note_outside(folder)  # registered by a version that kept no list
        if existing is not None and name and existing.name != name:  # trained again under another name
            self._update(existing.id, {"name": name})
            existing = self.get(existing.id)
        if existing is not None:
            if existing.status in (RunStatus.PENDING, RunStatus.RUNNING) and self._owner_alive(existing):
                return existing
            record = self._reread(existing, method, config, metrics, status)
            return self._with_error(record, error)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(folder.stat().st_mtime))
        # A folder of the root named as its runs are keeps its name as its id (found again after a registry was lost).
        own = [folder.name] if folder.parent == self.root and _RUN_ID.fullmatch(folder.name) and not name else []
        name = name or folder_run_name(folder)
        slug = slugify(name)
        for run_id in [*own, *(f"{stamp}-{slug}" if n == 1 else f"{stamp}-{slug}-{n}" for n in range(1, 1000))]:
            try:
                self._insert(run_id, name, method, folder, config, metrics, status,
                             _folder_dates(folder, meta) if status.is_terminal else None)
            except sqlite3.IntegrityError:
                found = self._find_by_path(folder)
                if found is not None:  # another process registered it meanwhile
                    return found
                continue
            if folder.parent != root:
                self._note_outside(folder)
            return self._with_error(self.get(run_id), error)
        raise RunStoreError(f"Could not register {folder}.")  # pragma: no cover

    def register_found(self) -> list[RunRecord]:
        """Register the run folders directly under ``root``, and those ``outside_runs.txt`` names, that the registry
        does not list and whose run ended (the folder says so: metrics.json, or a model saved without it): what a
        registry deleted, or moved aside when damaged, had listed. Returns the records made."""
        listed = {record.path for record in self.list()}
        own = [folder for folder in sorted(self.root.iterdir())
               if folder.is_dir() and not folder.name.startswith(".") and folder.name != UPLOADS_NAME]
        found = []
        for folder in [*own, *self._outside_folders()]:
            if (folder not in listed and (folder / "clm_run.json").is_file()
                    and _folder_status(folder, read_json_object(folder / "metrics.json"))[0].is_terminal):
                found.append(self.register_folder(folder))
                listed.add(folder)
        return found

    def _outside_listed(self) -> builtins.list[Path]:
        """The folders ``outside_runs.txt`` lists, in order: a line ``/path`` lists one, a line ``-/path`` takes it
        off. Only appended to, never rewritten: a line one process appends while another takes a run off is kept
        (the diff review: a rewrite dropped it)."""
        try:
            lines = (self.root / OUTSIDE_NAME).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):  # none yet, or unreadable: the root's own folders are still found
            return []
        listed: dict[str, None] = {}
        for line in lines:
            if line.startswith("-/"):
                listed.pop(line[1:], None)
            elif line.startswith("/"):
                listed[line] = None
        return [Path(line) for line in listed]

    def _outside_folders(self) -> builtins.list[Path]:
        """The folders ``outside_runs.txt`` lists that are still folders."""
        return [folder for folder in self._outside_listed() if folder.is_dir()]

    def _note_outside(self, folder: Path, off: bool = False) -> None:
        """List a folder registered from outside the root in ``outside_runs.txt`` (``off``: take it off), one short
        append (lines written by several processes at once stay whole)."""
        if "\n" in str(folder) or (folder in self._outside_listed()) != off:  # a line a path; listed as wanted
            return
        # A root this process may not write: the run is listed, only not found after a rebuild.
        with suppress(OSError), open(self.root / OUTSIDE_NAME, "a", encoding="utf-8") as handle:
            handle.write(f"{'-' if off else ''}{folder}\n")

    def _with_error(self, record: RunRecord, error: str | None) -> RunRecord:
        if error is None or record.error == error:
            return record
        self._update(record.id, {"error": error})
        return self.get(record.id)

    def _owner_alive(self, record: RunRecord, row: sqlite3.Row | None = None) -> bool:
        """Whether the process that owns a pending or running run may still be at work (another host's: assumed).
        ``row``: the run's registry row where the caller read it already (its ``pid_start``), else it is read."""
        if record.pid is None or record.host != socket.gethostname():
            return record.pid is not None
        if row is None:
            with self._connect() as conn:
                row = conn.execute("SELECT pid_start FROM runs WHERE id = ?", (record.id,)).fetchone()
        return _pid_alive(record.pid, row["pid_start"] if row else None)

    def _reread(self, record: RunRecord, method: str, config: dict[str, Any], metrics: dict[str, Any],
                status: RunStatus) -> RunRecord:
        """A registered folder's record replaced by what the folder holds now; a pending one owned by this process."""
        pid = os.getpid()
        self._update(record.id, {"method": method, "config": _dumps(config), "metrics": _dumps(_summary(metrics)),
                                 "status": status.value, "error": None, "updated": _now(),
                                 "host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid)})
        return self.get(record.id)

    def _insert(
        self,
        run_id: str,
        name: str,
        method: str,
        folder: Path,
        config: dict[str, Any],
        metrics: dict[str, Any],
        status: RunStatus,
        dates: tuple[str, str] | None = None,
    ) -> None:
        """``dates``: (created, updated) an ended run's folder says, else now for both."""
        created, updated = dates or (_now(), _now())
        pid = os.getpid()
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO runs (id, name, method, status, path, created, updated, config, metrics, host, pid,"
                " pid_start) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    name,
                    method,
                    status.value,
                    str(folder),
                    created,
                    updated,
                    _dumps(config),
                    _dumps(_summary(metrics)),
                    socket.gethostname(),
                    pid,
                    _process_start(pid),
                ),
            )

    # -- updating -------------------------------------------------------------------------------
    def set_status(self, run_id: str, status: RunStatus | str, error: str | None = None) -> RunRecord:
        """Move a run to ``status``. The caller sets succeeded only once the run's files are complete.

        Running claims the run for this process (host, pid). Succeeded also loads ``metrics.json``
        from the folder into the row, when the file exists. Failed, cancelled and interrupted write the status (and
        error) to a run folder (one with ``clm_run.json``: the run had begun) without ``metrics.json``, or with one that
        records another way of stopping (``finetune`` writes failed for any exception), so that the folder registered
        again reads as it ended, not as pending.
        """
        status = RunStatus(status)
        record = self.get(run_id)
        sets = {"status": status.value, "error": error, "updated": _now()}
        if status is RunStatus.RUNNING:
            pid = os.getpid()
            sets.update(host=socket.gethostname(), pid=pid, pid_start=_process_start(pid))
        if status is RunStatus.SUCCEEDED:
            on_disk = read_json_object(record.path / "metrics.json")
            if on_disk:
                sets["metrics"] = _dumps(_summary({**record.metrics, **on_disk}))
            meta = read_json_object(record.path / "clm_run.json")
            if meta and (record.method == "?" or not record.config):  # registered before its run wrote this
                sets.update(method=method_name(meta.get("method", record.method)), config=_dumps(_registry_config(meta)))
            _keep_name(record.path, meta, record.name)
        if (status in STOPPED_STATUSES and (record.path / "clm_run.json").is_file()
                and _stopped_otherwise_on_disk(record.path / "metrics.json", status)):
            # Only in a run folder (clm_run.json): a folder stopped before it would hold the marker alone, which
            # --overwrite refuses to replace (not a run folder), so the run could never be trained there again.
            # A stopped run's own record (``finetune`` writes failed or cancelled) gives way to the caller's.
            write_json_atomic(record.path / "metrics.json", {"status": status.value, "error": error})
        self._update(run_id, sets)
        return self.get(run_id)

    def update_metrics(self, run_id: str, metrics: dict[str, Any]) -> RunRecord:
        """Merge ``metrics`` into the run's stored metrics."""
        with self._connect() as conn:
            row = conn.execute("SELECT metrics FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"No run with id {run_id!r}.")
            merged = {**json.loads(row["metrics"]), **metrics}
            conn.execute(
                "UPDATE runs SET metrics = ?, updated = ? WHERE id = ?", (_dumps(_summary(merged)), _now(), run_id)
            )
        return self.get(run_id)

    def _update(self, run_id: str, sets: dict[str, Any]) -> None:
        columns = ", ".join(f"{k} = ?" for k in sets)  # keys come from this module only
        with self._connect() as conn:
            cur = conn.execute(f"UPDATE runs SET {columns} WHERE id = ?", (*sets.values(), run_id))
            if cur.rowcount == 0:
                raise RunNotFoundError(f"No run with id {run_id!r}.")

    def mark_interrupted(self) -> list[str]:
        """Mark pending/running runs whose owning process (on this host) is gone as interrupted.

        Call at app or server start, and whenever runs are shown: a CLI run killed (``kill -9``) would otherwise stay
        "running" for good, and could not be deleted. Cheap: it reads the unfinished rows only. Runs owned by another
        host are left alone (their process cannot be checked from here). Returns the ids that were marked. The first
        call, and one every ``SWEEP_EVERY_S`` after, also deletes the hidden folders killed processes left under root
        (``sweep_leftovers``).
        """
        self._sweep_when_due()
        host = socket.gethostname()
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM runs WHERE status IN (?, ?)",
                                (RunStatus.PENDING.value, RunStatus.RUNNING.value)).fetchall()
        marked = []
        for row in rows:
            record = _record(row)
            # The row's own pid_start: a query per queued run cost 14.5 ms a call with 48 queued (the scale review),
            # and the app calls this on every redraw of every tab that shows runs
            if record.host != host or record.pid is None or self._owner_alive(record, row):
                continue
            if _folder_states_an_end(record.path):  # it ended, then the registry could not record it (held, say):
                self.register_folder(record.path)  # read again from the folder, its reason with it
            elif self._interrupt(record):
                marked.append(record.id)
        return marked

    def _interrupt(self, record: RunRecord) -> bool:
        """Mark ``record`` interrupted unless it changed since it was read (finished, or claimed by another
        process): its owner may have recorded success and exited between the read and this write. The folder says
        so too (``_record_interrupted``), as ``set_status`` writes a stopped run's."""
        with self._connect() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, updated = ?, error = ? WHERE id = ? AND status = ? AND pid IS ?",
                (RunStatus.INTERRUPTED.value, _now(), INTERRUPTED_ERROR, record.id, record.status.value, record.pid))
            marked = cur.rowcount == 1
        if marked:  # after the commit: the row is the record; the folder's copy is for a registry made again
            _record_interrupted(record.path)
        return marked

    def _sweep_when_due(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:  # the app calls mark_interrupted on every redraw: a look at root now and then
            return
        self._next_sweep = now + SWEEP_EVERY_S
        self.sweep_leftovers()

    def sweep_leftovers(self) -> list[Path]:
        """Delete the hidden folders directly under root that no process will come back to; returns those deleted.

        ``.deleting-*``: a run ``delete`` moved aside, its deletion killed half way or refused some files. Deleted
        once the process that made it, named in it, is gone; one whose process cannot be checked (another host's, or
        made before the name was written) once older than ``DELETING_GRACE_S``.

        ``.replaced-*``: the run an overwrite set aside (``claimed_run_dir``), left when that process was killed
        outright. One holding a finished run is never swept: it is the user's work, which ``left_behind_note`` tells
        them to move back (the diff review: a sweep after 7 days deleted it with no warning). Any other is deleted once
        older than ``REPLACED_KEEP_DAYS`` and no process holds the run folder it came from (a live claim holds that
        folder's lock until it has put the run back or deleted it); not sooner, as a set-aside killed half way splits a
        finished run between the two folders. A later overwrite of that folder that succeeds deletes them all at once
        (``RunDirClaim.keep``).

        Cheap (root's entries, a few stats for each hidden one), and never raises: a folder that will not go stays for
        the next sweep. Hidden folders beside runs written outside root (``--out``) are left to ``keep``.
        """
        removed = []
        with suppress(OSError):
            for hidden in self.root.iterdir():
                if _abandoned(hidden):
                    shutil.rmtree(hidden, ignore_errors=True)
                    if not hidden.exists():
                        removed.append(hidden)
        return removed

    # -- reading --------------------------------------------------------------------------------
    def list(self, limit: int | None = None) -> list[RunRecord]:
        """All runs (the newest ``limit`` ones), newest first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM runs ORDER BY created DESC, id DESC LIMIT ?",
                                (-1 if limit is None else limit,)).fetchall()
        return [_record(r) for r in rows]

    def table(self, limit: int | None = None) -> pd.DataFrame:
        """The runs newest first, a row each (``RunRecord.listed``), as ``clm-explore runs --json`` lists them."""
        import pandas as pd

        columns = ["id", "name", "method", "status", "created", "updated", "path", "data", "model", *LISTED_METRICS,
                   "error", "size_bytes", "progress"]
        return pd.DataFrame([record.listed() for record in self.list(limit)], columns=columns)

    def known(self, run_ids: Iterable[str]) -> set[str]:
        """Which of ``run_ids`` the registry holds (one query, however many ids)."""
        ids = list(run_ids)
        if not ids:
            return set()
        with self._connect() as conn:
            rows = conn.execute(f"SELECT id FROM runs WHERE id IN ({', '.join('?' * len(ids))})", ids).fetchall()
        return {row[0] for row in rows}

    def get(self, run_id: str) -> RunRecord:
        """The run ``run_id``; ``RunStoreError`` when there is none."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"No run with id {run_id!r}.")
        return _record(row)

    def path(self, run_id: str) -> Path:
        """The run's folder (inside ``root``, or the absolute path it was registered with)."""
        return self.get(run_id).path

    def latest(
        self, method: str | None = None, status: RunStatus | None = RunStatus.SUCCEEDED
    ) -> RunRecord | None:
        """The newest run with this method (any when None) and status (any when None)."""
        for record in self.list():
            if (method is None or record.method == method) and (status is None or record.status is status):
                return record
        return None

    def _find_by_path(self, folder: Path) -> RunRecord | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE path = ?", (str(folder),)).fetchone()
        return _record(row) if row is not None else None

    # -- removing and exporting -----------------------------------------------------------------
    def delete(self, run_id: str, force: bool = False) -> None:
        """Remove the run's row and its folder.

        A folder outside ``root`` (registered with ``register_folder``) is only unregistered, never
        deleted: it belongs to whoever wrote it there. A pending or running run is refused unless
        ``force`` (cancel its job first), or unless the process that owned it is gone.
        """
        record = self.get(run_id)
        if not record.is_terminal and not force and self._owner_alive(record):
            raise RunStoreError(f"Run {run_id} is {record.status.value}; cancel it before deleting.")
        hidden = None
        if self.holds_folder(record) and record.path.is_dir():
            try:  # moved aside first: a folder that cannot go keeps its row (the app said "Deleted" and kept it)
                hidden = _move_aside(record.path)
            except OSError as exc:
                raise RunStoreError(f"Run {run_id} cannot be deleted: its folder {record.path} cannot be moved "
                                    f"({exc.strerror or exc}); it stays listed. Its files may belong to another "
                                    "account: ask its owner, or delete it there.") from exc
        try:
            with self._connect() as conn:
                conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        except BaseException:  # the row stays (a registry held or read-only): so does its folder, where it was
            if hidden is not None:
                _put_back_aside(hidden, record.path)
            raise
        if not self.holds_folder(record):  # a registry made anew must not list it again
            self._note_outside(record.path, off=True)
        if hidden is not None:
            shutil.rmtree(hidden / "run", ignore_errors=True)
            if not (hidden / "run").exists():  # else its owner file stays: a sweep tries again once this process is gone
                shutil.rmtree(hidden, ignore_errors=True)
            if hidden.exists():
                raise RunStoreError(f"Run {run_id} is no longer listed, but some of its files could not be deleted: "
                                    f"they wait in {hidden}.")

    def holds_folder(self, record: RunRecord) -> bool:
        """Whether the run's folder is one of the runs folder's own, which ``delete`` deletes (a folder registered from
        elsewhere, a bench cell's say, is only unregistered)."""
        return record.path.resolve().parent == self.root

    def prune(self, older_than_days: float, statuses: set[RunStatus] | None = None,
              dry_run: bool = False) -> builtins.list[RunRecord]:
        """Delete the runs that ended more than ``older_than_days`` days ago (their registry row last changed then:
        when they ended, or were read again from their folder), only those with one of ``statuses`` when given;
        never a pending or running one. Each goes through ``delete``: a folder under root is deleted with its row, one
        registered from elsewhere only unregistered. Returns the records deleted, oldest first (with ``dry_run``,
        those it would delete, nothing touched). A run deleted meanwhile by another process is left out.

        Raises:
            ValueError: a negative age, or ``statuses`` naming pending or running (runs that have not ended).
            PruneError: some runs could not be deleted (their folder would not move, or the registry failed part
                way); ``deleted`` holds those that were.
        """
        due = self._prunable(older_than_days, statuses)
        if dry_run:
            return due
        deleted: builtins.list[RunRecord] = []
        refused: builtins.list[str] = []
        for record in due:
            try:
                self.delete(record.id)
            except RunNotFoundError:
                continue  # deleted meanwhile: gone, as asked, but not by this call
            except RegistryError as exc:  # every other run would wait for it in turn (30 s each)
                raise PruneError(f"{len(deleted)} run(s) deleted, then the registry failed: {exc}", deleted) from exc
            except RunStoreError as exc:
                refused.append(f"{record.id} ({exc})")
                if record.id not in self.known([record.id]):  # unlisted, some of its files waiting to go
                    deleted.append(record)
                continue
            deleted.append(record)
        if refused:
            raise PruneError(f"{len(deleted)} run(s) deleted; not all went: {'; '.join(refused)}", deleted)
        return deleted

    def _prunable(self, older_than_days: float, statuses: set[RunStatus] | None) -> builtins.list[RunRecord]:
        """The runs ``prune`` deletes, oldest first."""
        if older_than_days < 0:
            raise ValueError(f"older_than_days is {older_than_days}; runs that ended 0 or more days ago are pruned.")
        wanted = set(RunStatus) if statuses is None else {RunStatus(status) for status in statuses}
        unended = sorted(status.value for status in wanted if not status.is_terminal)
        if statuses is not None and unended:
            raise ValueError(f"prune deletes runs that ended; {' and '.join(unended)} runs have not: cancel them, "
                             "or leave those statuses out.")
        cutoff = datetime.now() - timedelta(days=older_than_days)
        due = [record for record in self.list() if record.is_terminal and record.status in wanted
               and _ended_before(record, cutoff)]
        return due[::-1]

    def zip_run(self, run_id: str) -> bytes:
        """The run folder as a zip archive (entries under ``<run_id>/``), without the other processes' copies of a
        run trained by several (``ranks/``: kept for checks, they doubled a download), its lock and a failed job's
        traceback (``ERROR_FILE``).

        Raises:
            RunStoreError: no such run, or its folder is not there."""
        folder = self.path(run_id)
        if folder.is_symlink():  # a folder replaced by a link would send whatever the link reaches
            raise RunStoreError(f"Run {run_id}'s folder {folder} is now a link to another folder: not zipped.")
        if not folder.is_dir():  # a registered folder moved or deleted outside the tool: an empty zip said nothing
            raise RunStoreError(f"Run {run_id}'s folder {folder} is not there: it was moved or deleted outside the "
                                "tool.")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.rglob("*")):
                if file.relative_to(folder).parts[0] == RANK_COPIES:
                    continue
                if (file.is_file() and not file.is_symlink() and not _half_written(file)
                        and file.name not in (RUN_LOCK, ERROR_FILE)):
                    archive.write(file, f"{run_id}/{file.relative_to(folder).as_posix()}")
        return buffer.getvalue()


ERROR_FILE = "error.txt"
"""A failed app job's full traceback, in its run folder (``jobs``): for the server's administrator, never in the zip
any session downloads (its paths and code lines are not every user's business; the job's own card shows it to the
session that launched it)."""
RANK_COPIES = "ranks"
"""The folder where the other processes of a launch save their copies of the run (``training.finetune``)."""


def method_name(value: object) -> str:
    """A run folder's method as the registry keeps it: a method's name (letters, digits, ``_.+-``, at most 40), else
    '?'. A folder is anyone's files: its clm_run.json could name a "method" of Markdown or HTML that every page
    listing the run would show."""
    text = str(value)
    return text if re.fullmatch(r"[\w.+-]{1,40}", text, flags=re.ASCII) else "?"


def unknown_method_note(run_dir: Path, shown: str | None = None) -> str:
    """What to know of a run folder whose clm_run.json names a method this version does not know (a newer one's),
    or ''. It is loaded as a plain transformers model, which is right for every row method and wrong for one that
    keeps trained parts elsewhere (as prefix tuning keeps its adapter/): before, such a folder was read without a
    word (the upgrade review). ``shown``: the folder as the message names it (the app's short name), else its path."""
    method = read_json_object(run_dir / "clm_run.json").get("method")
    if method is None or method in METHODS:
        return ""
    return (f"{shown or run_dir} was trained with the method {method_name(method)!r}, which this version of clm-explore does "
            "not know (a newer version's): it is read as a plain model, and if that method keeps trained parts "
            "outside it, its predictions here are not the run's. Upgrade clm-explore to read it as it was saved.")


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under ``folder`` (0 when it is gone); links are not followed."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


PROGRESS_LOG = "progress.jsonl"
"""A run folder's log of its training steps, a JSON line a step (``training.read_history`` reads it)."""


def last_step(folder: Path) -> dict[str, Any] | None:
    """The last training step a run folder's progress log holds (``step``, ``total_steps``, ``eta``, ...), or None
    (no step yet). Read from the file's end: the log grows a line a step."""
    try:
        with (folder / PROGRESS_LOG).open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 16384))
            tail = log.read()
    except OSError:
        return None
    for line in reversed(tail.splitlines()):  # the first may be cut by the seek, the last by a writer mid-line
        try:
            step = json.loads(line)
        except ValueError:
            continue
        if isinstance(step, dict) and isinstance(step.get("step"), int) and isinstance(step.get("total_steps"), int):
            return step
    return None


def _half_written(file: Path) -> bool:
    """A temporary file of ``write_json_atomic`` that a killed writer left behind."""
    return file.name.startswith(".") and file.name.endswith(".tmp")


class RunFolderError(ValueError):
    """A run folder cannot be written: a file stands there, or it holds another run (or other files) and may
    not be replaced; the message says what to do."""


RUN_LOCK = ".clm_running"
"""The file a process holds locked (``fcntl.flock``) while it writes a run into the folder. The kernel drops the
lock when the process ends, however it ends, so a file left by a killed run locks nothing."""


_HELD_LOCKS: dict[Path, int] = {}
"""Run folders whose lock this process holds, and how many times over: the CLI holds its folder from the claim on
and ``finetune`` takes it again inside (a second flock of the same file from this process would be refused)."""
_HELD_GUARD = threading.Lock()


@contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s run lock while inside: another process's ``check_run_dir`` (its --overwrite, or a second
    run into the same --out) then refuses the folder instead of deleting a run being written, or mixing two runs'
    files in one folder. Re-entrant within a process. A no-op where ``fcntl`` is missing (Windows).

    Raises:
        RunFolderError: another process holds it.
    """
    key = folder.resolve()
    with _HELD_GUARD:
        first = key not in _HELD_LOCKS
        _HELD_LOCKS[key] = _HELD_LOCKS.get(key, 0) + 1
    try:
        with _flocked(folder) if first else nullcontext():
            yield
    finally:
        with _HELD_GUARD:
            _HELD_LOCKS[key] -= 1
            if not _HELD_LOCKS[key]:
                del _HELD_LOCKS[key]


@contextmanager
def _flocked(folder: Path) -> Iterator[None]:
    """The kernel lock on ``folder``'s RUN_LOCK file, its owner written in it; removed when let go."""
    with owner_lock(folder / RUN_LOCK, lambda: RunFolderError(_busy_message(folder))):
        yield


@contextmanager
def owner_lock(path: Path, busy: Callable[[], Exception]) -> Iterator[None]:
    """An exclusive kernel lock (``fcntl.flock``) on the file ``path``, this process's host and pid written in it for
    the one refused, the file removed when let go; ``busy()`` is raised when another process holds it. The kernel
    drops the lock when the process ends, however it ends. A no-op where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield
        return
    while True:
        handle = path.open("a+")
        if not _flock_within(fcntl, handle, LOCK_PATIENCE):
            handle.close()
            raise busy() from None
        # The holder before removes the file as it lets go: a lock taken on the file it removed is nobody's (a third
        # process locks the new file meanwhile), so the lock counts only on the file the path still names.
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{socket.gethostname()} pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        with suppress(OSError):
            path.unlink()
        handle.close()  # releases the lock


LOCK_PATIENCE = (0.05, 0.05, 0.1)
"""Pauses (s) before a lock held elsewhere is taken as held: a reader (``_locked_by_another``) holds it shared for
an instant, and a run starting then refused its folder as written by the dead process a stale lock file names."""


def _lock_held(folder: Path) -> bool:
    """Whether a live process holds ``folder``'s run lock, this one included (``_locked_by_another`` leaves out this
    process's own, which a sweep or a cleanup must not touch either)."""
    with _HELD_GUARD:
        if folder.resolve() in _HELD_LOCKS:
            return True
    return _locked_by_another(folder)


def _record_interrupted(folder: Path) -> None:
    """Write the interrupted status into the folder of a run whose process is gone, and remove the lock file it left.

    The crash review: a run whose server was killed (``kill -9``) had its status in the registry row alone; once the
    registry was deleted and made again, its folder read as pending, ``register_found`` skipped it, and it could be
    neither listed nor deleted from the app. Written only into a run folder (clm_run.json: ``set_status`` says why)
    without metrics.json (``mark_interrupted`` reads a folder that states its end instead), and never into one a live
    process holds: the folder's lock is taken for the write, so a run starting there meanwhile is not overwritten."""
    began = (folder / "clm_run.json").is_file() and not (folder / "metrics.json").exists()
    if (not began and not (folder / RUN_LOCK).is_file()) or _lock_held(folder):
        return  # nothing to write nor to remove, or a live run's
    try:
        with run_folder_lock(folder):  # let go, it removes the lock file, the stale one with it
            if (folder / "clm_run.json").is_file() and not (folder / "metrics.json").exists():
                write_json_atomic(folder / "metrics.json", {"status": RunStatus.INTERRUPTED.value,
                                                            "error": INTERRUPTED_ERROR})
    except (RunFolderError, OSError):
        pass  # a run took the folder meanwhile, or it cannot be written: the registry row still says it


def _flock_within(fcntl: Any, handle: Any, pauses: tuple[float, ...]) -> bool:
    """Take ``handle``'s exclusive lock, trying again after each pause; False when it stays held."""
    for pause in (*pauses, None):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if pause is None:
                return False
            time.sleep(pause)
    return False


def lock_owner(path: Path) -> str:
    """Who holds the lock file ``path`` (``owner_lock`` wrote it), in brackets, or '' when it cannot be read."""
    with suppress(OSError):
        return f" ({path.read_text().strip()[:80]})"
    return ""


def holds_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything but its run lock (a lock file alone, one a run killed as it began left, say,
    leaves the folder as empty as before; a held one is ``check_run_dir``'s to refuse)."""
    return any(entry.name != RUN_LOCK for entry in folder.iterdir())


def _busy_message(folder: Path) -> str:
    owner = lock_owner(folder / RUN_LOCK)
    return (f"Another process is writing a run into {folder}{owner}: wait for it to end, stop it, or choose "
            "another folder.")


def _locked_by_another(folder: Path) -> bool:
    """Whether another process holds ``folder``'s run lock (a lock file left by a killed run is not held)."""
    path = folder / RUN_LOCK
    with _HELD_GUARD:
        if folder.resolve() in _HELD_LOCKS:  # this process's own
            return False
    try:
        import fcntl

        handle = path.open("r")
    except (ImportError, OSError):  # no lock file (or no fcntl): nobody writes there
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _lock_left(folder: Path) -> bool:
    """Whether ``folder`` holds a run lock file that no process holds (its run's process was killed); False where
    locks are not kept (Windows), or the file is not there (a run made before them)."""
    try:
        import fcntl  # noqa: F401 - only whether locks are kept here
    except ImportError:
        return False
    return (folder / RUN_LOCK).is_file() and not _lock_held(folder)


@dataclass
class RunDirClaim:
    """A run folder claimed by ``claimed_run_dir``: ``keep()`` once the new run has succeeded; ``earlier`` is where the
    run it replaces waits meanwhile (None: it replaced none), ``restored`` whether that run was put back."""

    path: Path
    earlier: Path | None = None
    kept: bool = False
    restored: bool = False

    def keep(self) -> None:
        """The new run is the folder's: the earlier one is deleted when the claim ends, and with it every earlier run
        of this folder that an overwrite killed outright left waiting beside it (``.replaced-*``)."""
        self.kept = True


@contextmanager
def claimed_run_dir(out: str | Path, overwrite: bool = False, protected: tuple[Path, ...] = ()) -> Iterator[RunDirClaim]:
    """The run folder ``out``, made if needed, for a new run; a non-empty one is refused unless ``overwrite``, and
    even then replaced only when it is a run folder (it holds clm_run.json) that holds none of ``protected`` (the run
    registry, the data), the working folder or the home folder: a mistyped folder must not be emptied.

    The run it replaces is kept until the new one has succeeded, the folder's run lock held throughout. The earlier
    run's files wait in a hidden folder beside it (``.replaced-*``); they are deleted when
    the body called ``keep()``, else put back in place of the new run's files (a failure, a cancel, Ctrl-C, SIGTERM:
    the earlier, finished run was lost with the new one's start). The lock is taken before a file moves and let go
    after the last: another process's run into the folder is refused all along (a lock taken after the claim let
    one in between, whose files the put-back would have deleted). A process killed outright leaves the earlier run
    in the hidden folder; ``left_behind_note`` names the one that holds a finished run (a second killed overwrite
    sets the first one's half run aside too: the crash review).

    Raises:
        RunFolderError: what stands in the way (another process's run holds the folder, say), and what to do.
    """
    path = check_run_dir(out, overwrite, protected)
    path.mkdir(parents=True, exist_ok=True)
    with run_folder_lock(path):
        claim = RunDirClaim(path)
        if holds_files(path):  # every earlier run, finished or not, and whatever else the folder holds: put back
            claim.earlier = _set_aside(path)  # if the new run fails (the diff review: deleting a stopped one lost files)
        try:
            yield claim
        finally:
            if claim.kept:
                _drop_replaced(path, claim.earlier)
            elif claim.earlier is not None:
                claim.restored = _put_back(path, claim.earlier)


def _set_aside(path: Path) -> Path:
    """``path``'s entries (its run lock held by the caller) moved into a new hidden folder beside it, whose origin file
    names ``path``; the folder's ``run`` returned."""
    earlier = Path(tempfile.mkdtemp(prefix=".replaced-", dir=path.parent)) / "run"
    try:
        # whose run waits there, should this process be killed before it puts it back (left_behind_note)
        (earlier.parent / REPLACED_ORIGIN).write_text(str(path.resolve()))
        _move_entries(path, earlier)
    except BaseException:  # Ctrl-C or a refusal half-way: the entries moved so far go back, the run whole
        _move_entries(earlier, path, make=False)
        shutil.rmtree(earlier.parent, ignore_errors=True)
        raise
    return earlier


def _drop_replaced(path: Path, earlier: Path | None) -> None:
    """Delete the run a kept claim replaced, and every other one of ``path``'s waiting beside it (an overwrite killed
    outright left it): the new run is the folder's now, and they leaked, unnamed, for good (the crash review). None
    is another process's: a claim on ``path`` holds its lock, which this process holds."""
    for hidden in {*([earlier.parent] if earlier is not None else []), *_replaced_of(path)}:
        shutil.rmtree(hidden, ignore_errors=True)


def _move_aside(folder: Path) -> Path:
    """``folder`` renamed into a new hidden ``.deleting-*`` folder beside it, returned for deletion: a reader
    (predict, the app) meanwhile finds no run there, not half of one (the concurrency review: "Repo id must be in
    the form 'repo_name'" from a folder half deleted).

    Raises:
        OSError: the folder cannot be moved (nothing is changed then).
    """
    hidden = Path(tempfile.mkdtemp(prefix=".deleting-", dir=folder.parent))
    try:
        # who deletes it: a sweep (``RunStore.sweep_leftovers``) removes it once that process is gone
        (hidden / DELETING_OWNER).write_text(json.dumps(_this_process()))
        folder.rename(hidden / "run")
    except OSError:
        shutil.rmtree(hidden, ignore_errors=True)
        raise
    return hidden


DELETING_OWNER = "owner"
"""The file in ``_move_aside``'s hidden folder (``.deleting-*``) that names the process deleting it."""


def _this_process() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid)}


def _put_back_aside(hidden: Path, folder: Path) -> None:
    """The run ``_move_aside`` moved into ``hidden`` back to ``folder``, and ``hidden`` gone."""
    (hidden / "run").rename(folder)
    (hidden / DELETING_OWNER).unlink(missing_ok=True)
    hidden.rmdir()


def _move_entries(source: Path, target: Path, make: bool = True) -> None:
    """Every entry of ``source`` but its run lock into ``target`` (made when ``make``), each a rename (the same file
    system), clm_run.json last: a launch's other processes, checking the folder meanwhile (``check_run_dir``), see a
    run folder until the last file has gone."""
    if make:
        target.mkdir()
    entries = [entry for entry in source.iterdir() if entry.name != RUN_LOCK]
    for entry in sorted(entries, key=lambda entry: entry.name == "clm_run.json"):
        entry.rename(target / entry.name)


def _remove_entries(folder: Path) -> None:
    """Delete every entry of ``folder`` but its run lock (held by the caller), clm_run.json last: a launch's other
    processes see a run folder until the rest has gone, as ``_move_entries`` does.

    Raises:
        OSError: an entry that cannot be deleted (those before it are gone).
    """
    entries = [entry for entry in folder.iterdir() if entry.name != RUN_LOCK]
    for entry in sorted(entries, key=lambda entry: entry.name == "clm_run.json"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _put_back(path: Path, earlier: Path) -> bool:
    """The earlier run's files (in ``earlier``) in ``path`` again, the new run's deleted (the run lock stays, held by
    the caller); False, the earlier run left where it waits, when the file system refuses."""
    try:
        _remove_entries(path)
        _move_entries(earlier, path, make=False)
    except OSError:
        return False
    shutil.rmtree(earlier.parent, ignore_errors=True)  # empty now: a failure here leaves an empty hidden folder
    return True


def check_run_dir(out: str | Path, overwrite: bool = False, protected: tuple[Path, ...] = (),
                  launch_peer: bool = False) -> Path:
    """What ``claimed_run_dir`` checks, touching nothing: the other processes of a launch run it while rank 0
    claims the folder, so that a refusal stops every process, not rank 0 alone (the rest waited for it). They pass
    ``launch_peer``: the folder's lock is then rank 0's, not another run's.

    Raises:
        RunFolderError: what stands in the way, and what to do.
    """
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path} is a file; a run folder is a folder.")
    if not launch_peer and path.is_dir() and _locked_by_another(path):  # a run being written there
        raise RunFolderError(_busy_message(path))
    if path.exists() and holds_files(path):
        _check_replaceable(path, (*protected, Path.cwd(), Path.home()))  # first: say --overwrite only where it works
        if not overwrite:
            raise RunFolderError(f"Run folder {path} already exists; replace it with --overwrite (overwrite=True "
                                 "in Python) or choose another folder." + _sentence(
                                     "" if (path / "metrics.json").is_file() else left_behind_note(path)))
        if path.is_symlink():  # replacing it would replace the link, not the run it points to
            raise RunFolderError(f"{path} is a link to {path.resolve()}; give that folder to replace the run in it.")
    return path


def _check_replaceable(path: Path, protected: tuple[Path, ...]) -> None:
    here = path.resolve()
    for keep in protected:
        keep = keep.expanduser().resolve()
        if here == keep or here in keep.parents:
            raise RunFolderError(f"Replacing {path} would delete {keep}, which it holds (or is); choose another folder.")
    if not (path / "clm_run.json").is_file():
        raise RunFolderError(f"{path} is not a run folder (it has no clm_run.json); overwrite replaces run folders "
                             "only: choose another folder, or empty it yourself.")


TRAINED_LENGTH_KEY = "clm_max_length"
"""The model config's record of the sub-tokens its run trained with (``finetune`` saves it in config.json, where
``attribution.explain`` of a loaded run finds it)."""


def run_folder(run: Any) -> Path:
    """The folder of a run given as its path, a run id of the registry (as the CLI's ``--run`` takes), the
    ``FinetuneResult`` that ``finetune`` returned (``out_dir``) or a registry record (``RunRecord.path``).

    Raises:
        TypeError: anything else (a loaded model, say), named.
    """
    if isinstance(run, str | os.PathLike):
        path = Path(run).expanduser()  # a folder first, as the CLI's --run (a file of that name is no run)
        return path if path.is_dir() or not isinstance(run, str) else _registered_folder(run) or path
    for attribute in ("out_dir", "path"):
        folder = getattr(run, attribute, None)
        if isinstance(folder, str | os.PathLike):
            return Path(folder)
    raise TypeError(f"a run is its folder, a run id of the registry, the FinetuneResult that finetune returned, or a "
                    f"RunStore record; got {type(run).__name__}")


def _registered_folder(run_id: str) -> Path | None:
    """The folder of ``run_id`` in the registry of the runs root, None when it is not there (no registry is created
    for the asking; an unreadable one answers None: the caller then says the path does not exist)."""
    if not (default_root() / REGISTRY_NAME).is_file():
        return None
    try:
        store = RunStore()
        return store.path(run_id) if store.known([run_id]) else None
    except RunStoreError:
        return None


def unfinished_reason(folder: Path) -> str | None:
    """Why a run folder holds no finished run, in words, or None when it holds one (or is no run folder at all: the
    caller says what it needs): another process holds its run lock (training, or saving: the concurrency review read
    a folder half saved, "no model.safetensors", "its tokenizer knows 5 tokens"), or finetune wrote clm_run.json
    first, the model (config.json) next and metrics.json last, and a stopped run's status there."""
    if _locked_by_another(folder):  # its files come and go meanwhile: what a reader found said nothing true
        return f"another process is writing it{lock_owner(folder / RUN_LOCK)}; wait for it to end"
    metrics = read_json_object(folder / "metrics.json")
    if metrics.get("status") in STOPPED_STATUSES:  # StrEnum members equal their strings
        return f"status {metrics['status']}" + (f": {metrics['error']}" if metrics.get("error") else "")
    if (folder / "clm_run.json").is_file() and (folder / "config.json").is_file() and \
            not (folder / "metrics.json").is_file():
        # the model is saved before the figures: a run killed in between has a model that may be cut short
        return "stopped while it saved its model: no metrics.json" + _clause(left_behind_note(folder))
    if (folder / "clm_run.json").is_file() and not (folder / "config.json").is_file():
        # A lock file no process holds: its process is gone (killed), not "still training" (the crash review)
        how = ("stopped before it saved its model (the process that ran it is gone)" if _lock_left(folder)
               else "still training, or stopped before it saved its model")
        return f"{how}: no config.json yet" + _clause(left_behind_note(folder))
    return None


REPLACED_ORIGIN = "origin"
"""The file in ``claimed_run_dir``'s hidden folder (``.replaced-*``) that names the run folder whose run waits there."""


def left_behind_note(folder: Path) -> str:
    """Where the finished run that a run into ``folder`` was replacing waits, when that run was killed outright
    (SIGKILL, a power cut) and no process holds the folder: said, or the earlier run sat unnamed in a hidden folder
    (the concurrency review); the newest such run when there are several; '' when there is none. Only a hidden
    folder whose run finished is named: one holding a killed run's clm_run.json alone was named, newer than the
    finished one (the crash review)."""
    if _locked_by_another(folder):  # a live claim's own: its run goes on and puts it back or deletes it
        return ""
    waiting = []
    for hidden in _replaced_of(folder):
        with suppress(OSError):
            if _holds_finished_run(hidden / "run"):
                waiting.append((hidden.stat().st_mtime, hidden / "run"))
    if not waiting:
        return ""
    return (f"the finished run this folder held before waits in {max(waiting)[1]} (a run replacing it was "
            f"killed): move its files back into {folder} to keep it")


def _replaced_of(folder: Path) -> list[Path]:
    """The hidden folders (``.replaced-*``) beside ``folder`` whose run was set aside from it (their origin file names
    it)."""
    target, found = str(folder.resolve()), []
    for hidden in folder.parent.glob(".replaced-*"):
        with suppress(OSError):
            if (hidden / REPLACED_ORIGIN).read_text() == target:
                found.append(hidden)
    return found


def _holds_finished_run(folder: Path) -> bool:
    """Whether ``folder`` holds a finished run: its metrics.json written (the last file a run writes), and not with
    a stopped run's status (as ``unfinished_reason`` tells them; one that cannot be read is kept, not judged)."""
    if not (folder / "metrics.json").is_file():
        return False
    return read_json_object(folder / "metrics.json").get("status") not in STOPPED_STATUSES


REPLACED_KEEP_DAYS = 7.0
"""Days a set-aside unfinished run (``.replaced-*``) that no process holds waits under the runs root before a sweep
deletes it (``RunStore.sweep_leftovers`` says why no sooner, and why a finished one is never swept)."""
DELETING_GRACE_S = 3600.0
"""Seconds a ``.deleting-*`` folder whose process cannot be checked (another host's, or one made without its owner
file) is left before a sweep deletes it: a deletion takes seconds."""
SWEEP_EVERY_S = 3600.0
"""Seconds between two sweeps of one ``RunStore`` (``mark_interrupted`` runs on every page the app draws)."""


def _abandoned(entry: Path) -> bool:
    """Whether ``entry``, of the runs root, is a hidden folder that no process will come back to
    (``RunStore.sweep_leftovers``)."""
    deleting = entry.name.startswith(".deleting-")
    if not (deleting or entry.name.startswith(".replaced-")) or entry.is_symlink() or not entry.is_dir():
        return False
    try:
        age = time.time() - entry.stat().st_mtime
    except OSError:
        return False
    return _deletion_abandoned(entry, age) if deleting else _set_aside_abandoned(entry, age)


def _deletion_abandoned(hidden: Path, age: float) -> bool:
    owner = read_json_object(hidden / DELETING_OWNER)
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not _pid_alive(owner["pid"], owner.get("pid_start"))
    return age > DELETING_GRACE_S


def _set_aside_abandoned(hidden: Path, age: float) -> bool:
    if age <= REPLACED_KEEP_DAYS * 86400 or _holds_finished_run(hidden / "run"):
        return False  # a finished run is the user's work, which left_behind_note tells them to move back: kept
    try:
        origin = Path((hidden / REPLACED_ORIGIN).read_text())
    except OSError:  # a claim killed before it wrote the origin file: nobody's
        return True
    return not _lock_held(origin)


def _clause(note: str) -> str:
    return f"; {note}" if note else ""


def _sentence(note: str) -> str:
    return f" {note[:1].upper()}{note[1:]}." if note else ""


def trained_max_length(run_dir: Path) -> int:
    """The sub-token length the run trained with (its clm_run.json, else its config.json's ``clm_max_length``: an
    exported folder has no clm_run.json, and read 64 where it trained at 32, the diff review), so that predictions
    and attributions read what training read; FinetuneConfig's default (64) for a folder with neither."""
    try:
        return int(json.loads((Path(run_dir) / "clm_run.json").read_text())["config"]["max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    saved = read_json_object(Path(run_dir) / "config.json").get(TRAINED_LENGTH_KEY)
    return saved if isinstance(saved, int) and saved > 0 else FinetuneConfig.max_length


PER_LABEL_METRICS = ("confusion", "confusion_unseen", "per_label_f1", "labels")
"""Figures of metrics.json that grow with the labels (a confusion matrix of 1,000 labels is a million counts). The
registry leaves them out: every open page lists the runs, up to once a second; ``RunRecord.full_metrics`` reads
them from the folder."""


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in PER_LABEL_METRICS}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o))


GRID_PARTS = ("cells", "tune")
"""A bench grid's folders of cells (its grid's, and the learning-rate sweep's), beside its bench.json."""


def _keep_name(folder: Path, meta: dict[str, Any], name: str) -> None:
    """Record in a finished run's clm_run.json the name it is listed under, where that is not the folder's own
    (``finetune --name``, the app's run name): a registry made anew lists it so, where it listed the folder's name
    (a leftover of the sixty-fourth session's note). A folder this user may not write keeps its record."""
    if not meta or meta.get("name") == name or name == folder_run_name(folder, named=False):
        return
    with contextlib.suppress(OSError):
        write_json_atomic(folder / "clm_run.json", {**meta, "name": name})


def folder_run_name(folder: Path, named: bool = True) -> str:
    """The name a folder registered without one is listed under: the name its run was listed under (its
    clm_run.json's, ``named``), else its own, or ``GRID/CELL`` (``GRID/tune/CELL``) for a bench cell, so that the same
    cell of two grids reads apart on the Runs page (the scale review), also in a registry made anew."""
    kept = read_json_object(folder / "clm_run.json").get("name") if named else None
    if isinstance(kept, str) and kept.strip():
        return kept
    part = folder.parent
    if part.name in GRID_PARTS and (part.parent / "bench.json").is_file():
        inside = folder.name if part.name == "cells" else f"{part.name}/{folder.name}"
        return f"{part.parent.name}/{inside}"
    return folder.name


def _loads_object(text: str | None) -> dict[str, Any]:
    """A registry column's JSON object, or {} where it holds none (empty, or not an object)."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _stopped_otherwise_on_disk(metrics_path: Path, status: RunStatus) -> bool:
    """No metrics.json yet, or one that records the run stopped another way than ``status`` (never a finished run's;
    a cancel's own record, with its steps, stays)."""
    if not metrics_path.exists():
        return True
    recorded = read_json_object(metrics_path).get("status")
    return recorded in {s.value for s in STOPPED_STATUSES} and recorded != status.value


def process_umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it to read it, which is not safe while the
    app server's other threads create files); 0o022 where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def share_tensor_files(files: Iterable[Path]) -> None:
    """Give ``files`` (safetensors files the tool just wrote) the permissions the umask gives any new file:
    safetensors writes them owner-only (0600), so a colleague on a shared server could read a run's metrics but not
    load its model. Only the files named: a folder a user chose may hold private files of theirs."""
    mode = 0o666 & ~process_umask()
    for file in files:
        if file.is_file() and not file.is_symlink() and file.stat().st_mode & 0o777 != mode:
            with contextlib.suppress(OSError):  # another user's file in a shared folder: left as it is
                os.chmod(file, mode)


def write_json_atomic(path: Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON through a temporary file of this call and a rename (``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file of this call and a rename: a reader never sees half a file, and a
    writer killed half way leaves the old one."""
    # A file of its own (not one per process): the app's sessions are threads of one process, and two of them
    # may write the same cache file at once. Opened exclusively, with the umask's permissions like any file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def _registry_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The registry's config of a run from its ``clm_run.json``: the finetune config with the model ``source``, the
    ``data`` and its rows' ``data_digest`` beside it, as the app and the CLI record them (the Runs and Compare pages
    group runs by model and data; a run registered from its folder lacked the digest, and its data read as other)."""
    if not isinstance(meta.get("config"), dict):
        return {}
    listed = {**meta["config"], **{k: meta[k] for k in BESIDE_CONFIG if k in meta}}
    if isinstance(listed.get("data"), str):  # named with its carve and draw, as finetune lists it (the diff review)
        carved = meta.get("data_carved") if isinstance(meta.get("data_carved"), list) else ()
        listed["data"] += data_options_words(meta.get("data_config"), carved)
    return listed


def _folder_states_an_end(folder: Path) -> bool:
    """Whether ``folder``'s metrics.json says how its run ended: succeeded (its figures), or the status and reason a
    stopped run wrote there."""
    if not folder.is_dir() or not (folder / "metrics.json").is_file():
        return False
    return _folder_status(folder, read_json_object(folder / "metrics.json"))[0].is_terminal


def _folder_status(folder: Path, metrics: dict[str, Any]) -> tuple[RunStatus, str | None]:
    """What a folder being registered says of its run, and why it failed where the folder tells: succeeded with
    metrics.json, the status a stopped run wrote there, else pending (a run about to be written, or being written
    by its owner). A metrics.json that cannot be read, or a model saved without one (a run killed in between),
    is a failed run, not a pending one that the next look marks killed."""
    stated = metrics.get("status")
    if isinstance(stated, str) and stated in {s.value for s in RunStatus}:  # e.g. a cancelled run's metrics.json
        error = metrics.get("error")
        return RunStatus(stated), error if isinstance(error, str) else None
    if metrics:
        return RunStatus.SUCCEEDED, None
    if _locked_by_another(folder):
        return RunStatus.PENDING, None
    if (folder / "metrics.json").exists():
        return RunStatus.FAILED, ("metrics.json cannot be read (damaged or cut short): the run's figures are lost; "
                                  "its model files, if any, are as they were")
    if (folder / "config.json").is_file() and (folder / "clm_run.json").is_file():
        return RunStatus.FAILED, "the run stopped after saving its model, before writing metrics.json"
    return RunStatus.PENDING, None


def recorded_data_paths(record: dict[str, Any]) -> list[Path]:
    """Where a run's clm_run.json says its data is, best first: the absolute path it recorded (``data_path``), then
    the path as it was given (``data``: older runs', relative to the folder they ran from)."""
    found = [record.get(key) for key in ("data_path", "data")]
    return [Path(value).expanduser() for value in found if isinstance(value, str) and value]


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _folder_dates(folder: Path, meta: dict[str, Any]) -> tuple[str, str]:
    """(created, updated) of an ended run found in its folder, in the registry's local time: when its clm_run.json says
    it began (else the file's time) and when its metrics.json (else its folder) was last written. A registry made
    again stamped every run it found with the day it was made, so none was old enough to prune, and every date on the
    Runs page was that day (the scale review)."""
    ended = next((p.stat().st_mtime for p in (folder / "metrics.json", folder) if p.exists()), time.time())
    updated = datetime.fromtimestamp(ended).isoformat(timespec="seconds")
    try:
        began = datetime.fromisoformat(str(meta["created"]))
        created = (began.astimezone().replace(tzinfo=None) if began.tzinfo else began).isoformat(timespec="seconds")
    except (KeyError, TypeError, ValueError, OverflowError):  # a hand-edited date past the calendar's ends too
        began_at = (folder / "clm_run.json").stat().st_mtime if (folder / "clm_run.json").exists() else ended
        created = datetime.fromtimestamp(began_at).isoformat(timespec="seconds")
    # Never begun after it ended: a date in the future would keep the run from every prune
    return min(created, updated), updated


def _ended_before(record: RunRecord, cutoff: datetime) -> bool:
    """Whether ``record``'s row last changed before ``cutoff``; False when its time cannot be read (its age unknown,
    it is kept)."""
    try:
        return datetime.fromisoformat(record.updated) < cutoff
    except (TypeError, ValueError):
        return False


def _record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        name=row["name"],
        method=method_name(row["method"]),  # a row an earlier version wrote may hold any text
        status=RunStatus(row["status"]),
        path=Path(row["path"]),
        created=row["created"],
        updated=row["updated"],
        config=json.loads(row["config"]),
        metrics=json.loads(row["metrics"]),
        error=row["error"],
        host=row["host"],
        pid=row["pid"],
    )
