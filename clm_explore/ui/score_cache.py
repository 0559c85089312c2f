"""Sensitivity scores the app made, kept on the server's disk: a restart (a deploy, a crash) or an evicted cache
entry used to cost every user the scoring again (20-50 s on the sample, minutes on a large upload) before the
Sensitivity, Budget or Finetune page could show anything.

One folder per (model, data, settings, scoring code) under ``<uploads root>/_scores``, readable by the server's
account alone like the uploads; written by ``SensitivityReport.save`` (safetensors and JSON, nothing pickled) and
read back with its checks. A folder's name starts with whose data it scored (an upload's digest, or ``sample`` /
``shared``), so that ending a session deletes its uploads' scores with them; folders unused for the days the server
keeps sessions are pruned with them. No Streamlit here: ``cache`` calls it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from functools import cache
from pathlib import Path

from clm_explore.config import ConfigError
from clm_explore.sensitivity import SensitivityReport
from clm_explore.ui import state

SCORES_NAME = "_scores"
"""The scores folder's name under the uploads root (a session token is hex digits only: never this)."""

NOT_SCORING = ("ui", "cli")
"""The package's folders whose code makes no score: every other Python file of the library is read into the scores'
key, so a server upgraded with other code scores afresh, never reading scores an older version made under the same
settings (a list of the scoring files by hand missed prefix_cache.py, the reproducibility review)."""
SCORING_PACKAGES = ("torch", "transformers", "tokenizers", "wordfreq")
"""The packages whose versions key the scores too: their kernels and word lists make them."""


def scores_root() -> Path:
    return state.uploads_root() / SCORES_NAME


@cache
def code_version() -> str:
    """A digest of the library's scoring code (every Python file outside NOT_SCORING) and SCORING_PACKAGES' versions."""
    from clm_explore.provenance import code_digest, package_versions

    digest = code_digest(NOT_SCORING)
    versions = package_versions()
    digest.update("\0".join(f"{name}={versions.get(name)}" for name in SCORING_PACKAGES).encode())
    return digest.hexdigest()[:16]


def owner_prefix(kind: str, digest: str) -> str:
    """Whose data a folder scored: an upload's first 16 hex digits of its file's digest, else the data's kind."""
    return digest[:16] if kind == "upload" and digest else kind


def folder_for(prefix: str, key_parts: tuple[str, ...]) -> Path:
    key = hashlib.sha256("\0".join((code_version(), *key_parts)).encode()).hexdigest()[:24]
    return scores_root() / f"{prefix}-{key}"


def load(folder: Path) -> SensitivityReport | None:
    """The report kept in ``folder``, marked used now; None when there is none or it cannot be read (a folder cut
    short by a crash is then scored and written afresh)."""
    if folder.is_symlink() or not (folder / "sensitivity.json").is_file():
        return None
    try:
        report = SensitivityReport.load(folder)
    except ConfigError:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    with contextlib.suppress(OSError):
        os.utime(folder)  # pruning goes by the folder's time: a report read daily is kept
    return report


def save(report: SensitivityReport, folder: Path) -> None:
    """Keep ``report`` in ``folder``: written beside it, then renamed, so a reader never meets half a report. A full
    disk or an unwritable folder keeps nothing and says nothing: the page has its report in memory."""
    part = folder.with_name(f".{folder.name}.{os.getpid()}-{time.monotonic_ns()}.part")
    try:
        state.private_folder(folder.parent)
        report.save(part)
        os.replace(part, folder)  # another server's same report already there: either one is right
    except OSError:
        pass
    finally:
        shutil.rmtree(part, ignore_errors=True)


def forget(uploads: Path, prefixes: set[str]) -> None:
    """Delete the kept scores under the uploads root ``uploads`` of the data whose prefixes are given (a session's
    uploads, as it ends)."""
    root = uploads / SCORES_NAME
    if not prefixes or not root.is_dir():
        return
    for entry in root.iterdir():
        if entry.name.split("-", 1)[0] in prefixes and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def prune(uploads: Path, max_days: float, now: float | None = None) -> list[str]:
    """Delete the kept scores under the uploads root ``uploads`` unused for over ``max_days`` days (0 = none), as
    ``state.prune_uploads`` does the sessions; folders a crash left half-written (``.part``) go once an hour old."""
    root = uploads / SCORES_NAME
    if max_days <= 0 or not root.is_dir():
        return []
    now = time.time() if now is None else now
    deleted = []
    for entry in root.iterdir():
        with contextlib.suppress(OSError):
            age = now - entry.lstat().st_mtime
            if entry.is_symlink() or age > (3600 if entry.name.endswith(".part") else max_days * 86400):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
                deleted.append(entry.name)
    return sorted(deleted)
