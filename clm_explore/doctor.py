"""Whether this machine can serve clm-explore as configured: the environment's settings read as the app reads them,
the runs and uploads folders writable, the registry usable, the model and device there (``clm-explore doctor``; the
app logs the problems once when it starts).

Why: Streamlit's ``/_stcore/health`` answers "ok" while no run can be launched (a read-only runs folder, a damaged
registry), and a setting written wrong was ignored without a word or raised on every page (``CLM_EXPLORE_TORCH_THREADS
=four``; the operations review).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

LOW_FREE_BYTES = 2 * 2**30
"""Less free disk than this under the runs folder is a problem: a run of the default model writes about 90 MB, a
bench grid hundreds."""


MAX_JOBS = 48
"""Jobs the whole server may have waiting or running at once (``$CLM_EXPLORE_MAX_JOBS`` sets another number): a new
tab is a new session, with a room of its own, and each waiting job keeps its data set in the server's memory."""
UPLOAD_DAYS = 7.0
"""Default age (days since a session was last used: an upload, a saved choice, its address opened) after which its
upload folder and saved choices are deleted (checked when a server starts, then hourly)."""
UPLOADS_TOTAL_MB = 2_000.0
"""Default cap on all sessions' uploads together: every session opened without a token (a new tab, a script) has
room for five files, so without it a long-running server's disk fills from one browser."""
MOST_THREADS = 4096
SETTINGS = (("CLM_EXPLORE_TORCH_THREADS", 0, True, True, "torch's own number of threads", MOST_THREADS),
            ("CLM_EXPLORE_MAX_JOBS", MAX_JOBS, True, True, "", 100_000),
            ("CLM_EXPLORE_UPLOADS_MB", UPLOADS_TOTAL_MB, False, False, "", 1e9),
            ("CLM_EXPLORE_UPLOAD_DAYS", UPLOAD_DAYS, False, False, "", 36_500))
"""The numeric settings the app reads: name, default, whole, above 0, how a problem names the default, most."""


@dataclass(frozen=True)
class Check:
    """One thing ``checks`` looked at."""

    name: str
    ok: bool
    said: str
    """What was found, and for a problem what to do."""

    def to_dict(self) -> dict:
        return asdict(self)


def env_number(name: str, default: float, whole: bool = False, positive: bool = False, default_said: str = "",
               most: float = 1e9) -> tuple[float, str]:
    """The environment variable ``name`` as a number (``default`` when unset), and why it was not read ('' when it
    was): not a number, not whole where it must be, below 0 (or not above it where ``positive``), above ``most``
    (infinity too: torch's threads overflowed at 3e9, and every page raised; the diff review). ``default_said``: how
    the problem names the default ('torch's default'; else its value)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default, ""
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    bad = (not value <= most or (whole and not value.is_integer()) or value < 0 or (positive and value == 0))
    if bad:
        kind = ("a whole number above 0" if whole and positive else "a whole number" if whole
                else "a number above 0" if positive else "a number of 0 or more")
        return default, (f"{name}={raw!r} is not {kind}, at most {most:g}: {default_said or f'{default:g}'} is used "
                         "instead")
    return value, ""


def setting(name: str) -> float:
    """One of SETTINGS as the app reads it: its value, or its default where it is unset or written wrong."""
    row = next(row for row in SETTINGS if row[0] == name)
    return env_number(*row)[0]


def device_setting() -> tuple[str | None, str]:
    """``CLM_EXPLORE_DEVICE`` when it names a device this machine has (None when unset), and why it was not read."""
    raw = os.environ.get("CLM_EXPLORE_DEVICE", "").strip()
    if not raw:
        return None, ""
    from clm_explore.modeling import ModelSourceError, resolve_device

    try:
        resolve_device(raw)
    except (ModelSourceError, RuntimeError, ValueError) as exc:
        return None, f"CLM_EXPLORE_DEVICE={raw!r} cannot be used here ({exc}): jobs run where they would without it"
    return raw, ""


def checks() -> list[Check]:
    """Every check, in the order a reader fixes them."""
    found = [_setting_check(row[0], *env_number(*row)) for row in SETTINGS]
    device, problem = device_setting()
    found.append(Check("CLM_EXPLORE_DEVICE", not problem, problem or f"jobs run on {job_device()}"))
    from clm_explore.runs import default_root

    root = default_root().absolute()  # an administrator reads where, not "runs"
    found += [_writable("runs folder", root), _registry(root), _disk(root)]
    from clm_explore.runs import UPLOADS_NAME

    found.append(_writable("uploads folder", Path(os.environ.get("CLM_EXPLORE_UPLOADS") or root / UPLOADS_NAME)))
    folder, problem = shared_data()
    found.append(Check("CLM_EXPLORE_SHARED_DATA", not problem, problem or (
        f"{len([p for p in folder.iterdir() if p.is_dir()])} data set(s) in {folder}" if folder else "none")))
    found.append(_model())
    return found


CHECKOUT = Path(__file__).resolve().parents[1]
CHECKOUT_SHARED_DATA = CHECKOUT.parent / "shared" / "data"
"""The project's shared data sets beside a checkout (../shared/data); read only from a checkout (its pyproject.toml
beside the package), not from wherever a wheel was installed (the diff review: /opt/shared/data for --target
/opt/x)."""


def shared_data() -> tuple[Path | None, str]:
    """The folder of server-side data sets (a folder of split files each) that the app's Data page offers:
    ``CLM_EXPLORE_SHARED_DATA``, else a checkout's ../shared/data where there is one (None: none), and why the
    setting was not read."""
    raw = os.environ.get("CLM_EXPLORE_SHARED_DATA", "").strip()
    if raw:
        folder = Path(raw).expanduser()
        if folder.is_dir():
            return folder, ""
        return None, f"CLM_EXPLORE_SHARED_DATA={raw!r} is not a folder: the Data page offers no server-side data sets"
    in_checkout = (CHECKOUT / "pyproject.toml").is_file()
    return (CHECKOUT_SHARED_DATA if in_checkout and CHECKOUT_SHARED_DATA.is_dir() else None), ""


def problems() -> list[str]:
    """What ``checks`` found wrong, a sentence each (the app logs them when it starts)."""
    return [f"{check.name}: {check.said}" for check in checks() if not check.ok]


def _setting_check(name: str, value: float, problem: str) -> Check:
    shown = "unset" if name not in os.environ else f"{value:g}"
    return Check(name, not problem, problem or shown)


def job_device() -> str:
    """Where the app's jobs run: ``CLM_EXPLORE_DEVICE`` where this machine has it, else the first GPU, else the CPU."""
    import torch

    return device_setting()[0] or ("cuda:0" if torch.cuda.is_available() else "cpu")


def _writable(what: str, folder: Path) -> Check:
    """Whether a file can be made in ``folder``, or where it is missing in the nearest folder above it that exists
    (the app makes it, with its own permissions: a check makes nothing; the diff review)."""
    there = folder
    while not there.exists() and there.parent != there:
        there = there.parent
    try:
        with tempfile.NamedTemporaryFile(dir=there, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(what, False, f"{there} cannot be written ({exc.strerror or exc}): runs cannot be launched; "
                                  "give this user write access, or set another folder")
    return Check(what, True, f"{folder} can be written" if there == folder else
                 f"{folder} is made when first needed ({there} can be written)")


def _registry(root: Path) -> Check:
    from clm_explore.runs import REGISTRY_NAME

    if not (root / REGISTRY_NAME).is_file():  # a check makes none: the first run does
        return Check("run registry", True, f"none yet in {root}: the first run makes it")
    db = root / REGISTRY_NAME
    try:  # read-only: a check neither migrates nor writes the registry
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            count = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.Error as exc:
        return Check("run registry", False, f"{db} cannot be read ({exc}): move it aside, and the app makes a new "
                                            "one listing the run folders it finds")
    if not (os.access(db, os.W_OK) and os.access(root, os.W_OK)):
        return Check("run registry", False, f"{db} is read-only for this user: runs cannot be launched")
    return Check("run registry", True, f"{count:,} run(s) listed")


def _disk(root: Path) -> Check:
    while not root.exists() and root.parent != root:  # not made yet: the disk it will be made on
        root = root.parent
    try:
        free = shutil.disk_usage(root).free
    except OSError as exc:
        return Check("free disk", False, f"{root}: {exc}")
    said = f"{free / 2**30:.1f} GiB free under {root}"
    return Check("free disk", free >= LOW_FREE_BYTES, said if free >= LOW_FREE_BYTES else
                 f"only {said}: a run of the default model writes about 90 MB; free some space")


def _model() -> Check:
    """Whether the model new sessions start with (``CLM_EXPLORE_MODEL``, else the default) can be found."""
    from clm_explore.modeling import DEFAULT_SOURCE, ModelSourceError, resolve_source

    source = os.environ.get("CLM_EXPLORE_MODEL") or DEFAULT_SOURCE
    try:
        resolve_source(source)
    except ModelSourceError as exc:
        return Check("model", False, f"{source}: {exc}")
    return Check("model", True, f"{source} is installed")
