"""A browser session's choices kept on the server, so that a page reload picks up where the user was.

A reload (or a tab reopened from history) is a new Streamlit session: without this, an upload, its column mapping,
the model, the budget and every kept setting fell back to the defaults. Each session gets a random token, shown in
the page's address as ``?s=<token>`` (Streamlit clears query parameters on a page switch, so ``resume`` puts it back
on every run); after each run its choices are written to ``<uploads root>/<token>.session.json``, beside the
session's upload folder. A session opened with a token whose file exists starts from a copy of it under a new token
(its uploaded file linked into the new folder: ``take_over``), so a link someone else made opens a copy for whoever
follows it, never a session its maker goes on to watch; any other token starts a fresh session. Whoever has an
address gets a copy of that session's upload, as anyone on the server already sees every run.

Everything read back is checked as if a user had typed it: an unknown model folder, a data file outside the session's
own folder, a budget outside (0, 1], a config that no longer validates are dropped (the default stands). Files live
as long as the uploads (``state.prune_uploads``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import streamlit as st

from clm_explore import config
from clm_explore.config import ConfigError, MaskConfig, MiningConfig, SensitivityConfig
from clm_explore.ui import score_cache, state

TOKEN_PARAM = "s"
"""The query parameter holding the session's token."""
VERSION = 1
CONFIGS = {state.MINING_CFG: MiningConfig, state.SENS_CFG: SensitivityConfig, state.MASK_OPTIONS: MaskConfig}
SAVED_KEYS = (state.MODEL_SOURCE, state.DATA_CHOICE, state.BUDGET, *CONFIGS, state.KEPT_WIDGETS, state.LAUNCHED)


def session_file(root: Path, token: str) -> Path | None:
    """Where the session ``token`` is kept under the uploads ``root``; None for anything that is not a token."""
    return root / f"{token}{state.SESSION_SUFFIX}" if state.TOKEN_PATTERN.fullmatch(token or "") else None


def to_record(values: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready record of a session's values (by session key); values that cannot be kept are left out."""
    record: dict[str, Any] = {"version": VERSION}
    if isinstance(values.get(state.MODEL_SOURCE), str):
        record["model_source"] = values[state.MODEL_SOURCE]
    choice = values.get(state.DATA_CHOICE)
    if isinstance(choice, state.DataChoice):
        record["data_choice"] = {
            "kind": choice.kind, "path": choice.path, "name": choice.name, "text_col": choice.text_col,
            "label_col": choice.label_col, "digest": choice.digest, "shots": choice.shots,
            "shots_seed": choice.shots_seed, "validation_fraction": choice.validation_fraction,
            "test_fraction": choice.test_fraction,
        }
    if isinstance(values.get(state.BUDGET), int | float):
        record["budget"] = float(values[state.BUDGET])
    for key, cls in CONFIGS.items():
        if isinstance(values.get(key), cls):
            record[key] = config.to_dict(values[key])
    kept = values.get(state.KEPT_WIDGETS) or {}
    record["kept_widgets"] = {k: v for k, v in kept.items() if isinstance(k, str) and _plain(v)}
    record["launched_runs"] = sorted(r for r in values.get(state.LAUNCHED) or () if isinstance(r, str))
    return record


def _plain(value: Any) -> bool:
    """A value JSON keeps as it is: a scalar, or a list of scalars (a multiselect's)."""
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))


def from_record(record: Any, upload_folder: Path) -> dict[str, Any]:
    """The session values (by session key) in a saved ``record`` that still hold; ``upload_folder`` is the
    session's own, the only place an uploaded data file may be."""
    if not isinstance(record, dict) or record.get("version") != VERSION:
        return {}
    values: dict[str, Any] = {}
    source = record.get("model_source")
    if isinstance(source, str) and _usable_model_source(source):
        values[state.MODEL_SOURCE] = source
    choice = _data_choice(record.get("data_choice"), upload_folder)
    if choice is not None:
        values[state.DATA_CHOICE] = choice
    budget = record.get("budget")
    if isinstance(budget, int | float) and 0 < budget <= 1:
        values[state.BUDGET] = float(budget)
    for key, cls in CONFIGS.items():
        with contextlib.suppress(TypeError, ValueError):  # an option renamed or tightened since: its default stands
            if isinstance(record.get(key), dict):
                values[key] = config.from_dict(cls, record[key])
    kept = record.get("kept_widgets")
    if isinstance(kept, dict):
        values[state.KEPT_WIDGETS] = {k: v for k, v in kept.items() if isinstance(k, str) and _plain(v)}
    launched = record.get("launched_runs")
    if isinstance(launched, list):
        values[state.LAUNCHED] = {r for r in launched if isinstance(r, str)}
    return values


def _usable_model_source(source: str) -> bool:
    """A source this server still allows, and, unless it is a name, still has (a path the system cannot even look
    up, '~nosuchuser/m.gguf' or a name too long, is not)."""
    try:
        if state.refused_model_source(source):
            return False
        return source in state.NAMED_MODEL_SOURCES or Path(source).expanduser().exists()
    except (OSError, RuntimeError, ValueError):
        return False


def _data_choice(raw: Any, upload_folder: Path) -> state.DataChoice | None:
    """The saved data set when it is still the sample, a server data set or a file in the session's folder (an
    upload saved in another folder: the name alone is looked for there)."""
    if not isinstance(raw, dict):
        return None
    text_col, label_col = raw.get("text_col"), raw.get("label_col")
    if not all(c is None or isinstance(c, str) for c in (text_col, label_col)):
        return None
    kind, name = raw.get("kind"), raw.get("name")
    if kind == "sample":
        found = state.sample_choice()
    elif kind == "shared":
        found = next((c for c in state.shared_choices() if c.name == name), None)
    elif kind == "upload" and isinstance(raw.get("path"), str) and isinstance(name, str):
        path = upload_folder.resolve() / Path(raw["path"]).name  # a copy's file is linked into its own folder (take_over)
        inside = path.parent == upload_folder.resolve() and path.is_file()
        found = state.DataChoice("upload", str(path), name, digest=str(raw.get("digest", ""))) if inside else None
    else:
        found = None
    if found is None:
        return None
    # a session saved before these options (or with values that no longer hold): the defaults
    options = {name: raw[name] for name in ("shots", "shots_seed", "validation_fraction", "test_fraction")
               if isinstance(raw.get(name), int | float) and not isinstance(raw.get(name), bool)}
    try:
        read = dataclasses.replace(found, text_col=text_col, label_col=label_col, **options)
        read.data_config()  # DataConfig's checks: a share out of range, a count below 0, a float count
    except (ConfigError, TypeError, ValueError):
        read = dataclasses.replace(found, text_col=text_col, label_col=label_col)
    return read


def take_over(root: Path, token: str) -> tuple[str, dict[str, Any]] | None:
    """A copy of session ``token``'s saved values under a new token (None when it has no readable file), its
    uploaded data file linked into the new token's folder (no second copy on disk).

    A new token on every take-over: a link with a token someone else made (or saw) opens a copy of that session for
    whoever follows it, never one that the link's author goes on to see (their uploads, their choices). The old
    session stays as it was: a duplicated tab, or the first tab still open, keeps its file.
    """
    path = session_file(root, token)
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        path.touch()  # used: a bookmarked address is not pruned while it is opened
    except (OSError, ValueError):
        return None
    new = secrets.token_hex(16)
    _share_upload(record, root / token, root / new)
    try:
        return new, from_record(record, root / new)
    except (OSError, RuntimeError, ValueError, TypeError):  # a value the system cannot look up: start afresh
        return new, {}


def _share_upload(record: Any, old: Path, new: Path) -> None:
    """The record's uploaded file, from the old session's folder into the new one: a hard link (the same bytes,
    no room taken), else moved (a file system without links: the old session loses it, as after pruning)."""
    choice = record.get("data_choice") if isinstance(record, dict) else None
    if not isinstance(choice, dict) or choice.get("kind") != "upload" or not isinstance(choice.get("path"), str):
        return
    source = old / Path(choice["path"]).name
    if source.is_symlink() or not source.is_file():
        return
    with contextlib.suppress(OSError):  # pruned meanwhile, or a full disk: the session starts on the sample
        state.private_folder(new)
        try:
            os.link(source, new / source.name)
        except OSError:
            source.rename(new / source.name)


def end_session(root: Path, token: str) -> None:
    """Delete session ``token``'s saved choices and upload folder, and the scores kept for its uploads: its address
    then opens a fresh session. Copies that others already opened from the address keep theirs (their own folders;
    their scores are made again when they ask)."""
    path = session_file(root, token)
    if path is None:
        return
    path.unlink(missing_ok=True)
    folder = root / token
    if folder.is_dir() and not folder.is_symlink():
        uploads = {_file_digest(f)[:16] for f in folder.iterdir() if f.is_file() and not f.is_symlink()}
        score_cache.forget(root, uploads - {""})
        shutil.rmtree(folder, ignore_errors=True)


def _file_digest(path: Path) -> str:
    with contextlib.suppress(OSError):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return ""


def end_this_session() -> None:
    """A button's callback: end the browser's session (``end_session``) and start it afresh, on the sample; the runs it
    launched stay marked as its own (their cards, tracebacks and cap)."""
    launched = set(state.launched_runs())
    end_session(state.uploads_root(), state.session_id())
    st.session_state.clear()  # the next run starts a new token; the old one in the address finds no file
    st.session_state[state.LAUNCHED] = launched
    # Said plainly (the multi-session review): an address the session had before a reload still opens its copy of
    # the upload until it goes unused for the days set; the server cannot tell a reload from a colleague's visit, so
    # it deletes no other address's copy (the diff review: that deleted the followed session too).
    st.toast("Session ended: its upload, saved choices and the scores made from its upload are deleted from the server. Addresses it had before a "
             "reload keep their own copy until unused for the days the server keeps sessions.")


def save(root: Path, token: str, text: str) -> None:
    """Write a session's record atomically (two tabs of one session may save at once)."""
    path = session_file(root, token)
    if path is None:
        return
    state.private_folder(root)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    state.write_private(tmp, text.encode("utf-8"))
    os.replace(tmp, path)


def resume() -> None:
    """At the start of every script run: on a session's first, take up the saved session the address names (or
    start a new token); on every run, keep the token in the address."""
    if not st.session_state.get(state.SESSION_RESUMED):
        st.session_state[state.SESSION_RESUMED] = True
        token = st.query_params.get(TOKEN_PARAM, "")
        taken = take_over(state.uploads_root(), token) if state.SESSION_ID not in st.session_state else None
        if taken is not None:  # persist() writes it under the new token at the end of this run
            st.session_state[state.SESSION_ID], values = taken
            for key, value in values.items():
                st.session_state[key] = value
    token = state.session_id()
    if st.query_params.get(TOKEN_PARAM) != token:
        st.query_params[TOKEN_PARAM] = token


def persist() -> None:
    """At the end of every script run: write the session's record when it changed."""
    values = {key: st.session_state[key] for key in SAVED_KEYS if key in st.session_state}
    text = json.dumps(to_record(values), sort_keys=True)
    if text != st.session_state.get(state.SESSION_SAVED):
        with contextlib.suppress(OSError):  # a full or read-only disk loses the reload, not the page
            save(state.uploads_root(), state.session_id(), text)
            st.session_state[state.SESSION_SAVED] = text
