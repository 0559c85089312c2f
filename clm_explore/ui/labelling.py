"""A finished run put to work: a file of new texts labelled by it in the app, the table shown and downloaded.

Why: a domain expert who trained a model wants it on this week's tickets; the app answered one typed text at a time
(Compare's "Try a text"), and a file needed the command line (``clm-explore predict --file``).
"""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from clm_explore.config import DataConfig
from clm_explore.data import DataError, csv_text
from clm_explore.jobs import KeyedTask
from clm_explore.modeling import ModelSourceError
from clm_explore.runs import RunFolderError, RunRecord
from clm_explore.ui import cache, state, views
from clm_explore.ui.views import escape_markdown

LABEL_FILE_TYPES = ["csv", "tsv", "jsonl", "ndjson", "json", "parquet", "txt"]
FOUND_BY_NAME = "(found by its name)"
"""The text column box's first choice: the reader finds a column named text, sentence, utterance and the like."""


def label_file_panel(run: RunRecord, key: str) -> None:
    """For a succeeded run: upload a file of texts, label them with the run in a task of their own (progress, stop),
    then read the labels, their counts and the texts the run hesitated on, and download them as CSV."""
    cap = DataConfig().max_file_mb
    mtime = cache.file_mtime(run.path / "model.safetensors") or cache.file_mtime(run.path / "config.json")
    with st.expander("Label a file of new texts with this run"):
        st.caption(f"A CSV, TSV, JSONL, JSON or Parquet file with a text column (labels not needed), or a .txt file "
                   f"of one text per line; up to {cap:.0f} MB and {cache.MAX_LABEL_TEXTS:,} texts (for more: "
                   "`clm-explore predict --run RUN --file FILE`). The file stays on this server only while it is "
                   "labelled.")
        upload = st.file_uploader("Texts to label", type=LABEL_FILE_TYPES, key=f"{key}_label_upload")
        if upload is None:
            return
        raw = upload.getvalue()
        if len(raw) > cap * 2**20:
            st.error(f"{escape_markdown(upload.name)} is {len(raw) / 2**20:.0f} MB; the limit is {cap:.0f} MB.")
            return
        digest = hashlib.sha256(raw).hexdigest()
        columns = [] if upload.name.lower().endswith(".txt") else _columns(digest, raw, upload.name)
        text_col = None
        if columns:
            picked = st.selectbox("Text column", [FOUND_BY_NAME, *columns], key=f"{key}_label_col")
            text_col = None if picked == FOUND_BY_NAME else picked
        task_key = cache.labelling_key(str(run.path), mtime, digest, upload.name, text_col)
        task = cache.known_labelling(task_key)
        if task is None:
            if state.get(f"{key}_label_stopped") == task_key:
                st.info("Labelling stopped; nothing was kept.")
            if st.button("Label the texts", key=f"{key}_label_go", type="primary"):
                task = cache.label_upload(task_key, raw, inline=state.inline_jobs())
            else:
                return
        _follow(task, key, box=bool(columns))


def _follow(task: KeyedTask, key: str, box: bool) -> None:
    """The task's progress while it runs, why it failed or stopped, or its result. ``box``: the page shows the Text
    column box (not for a .txt file)."""
    if not task.done:
        views.task_progress(task)
        if st.button("Stop labelling", key=f"{key}_label_stop",
                     help="Stops it for every session labelling this file with this run (it is shared)."):
            cache.stop_labelling(task)
            state.put(f"{key}_label_stopped", task.key)  # said on the next look, once the task is gone
        return
    if task.error is not None:
        cache.forget_labelling(task)  # said once; the next click tries again
        error = task.error
        if isinstance(error, DataError):  # the file: its user's to fix, said of it as uploaded
            st.error(escape_markdown(_in_app_words(str(error), box)))
        elif isinstance(error, ModelSourceError | RunFolderError | OSError):  # its messages name server folders
            st.error("The run's folder is gone or damaged (deleted by another user of this server, perhaps): it "
                     "cannot label texts. Pick another run.")
        else:
            raise error  # unexpected: shown as the app shows errors, its type only
        return
    table, notes = task.result
    for note in notes:
        st.caption(escape_markdown(note))
    _render_labels(table, key)


def _render_labels(table: pd.DataFrame, key: str) -> None:
    counts = table["label"].value_counts()
    said = f"{len(table):,} text(s) labelled: " + ", ".join(f"{label} {n:,}" for label, n in counts.head(8).items())
    said += f" and {len(counts) - 8} more label(s)" if len(counts) > 8 else ""
    if "out_of_scope" in table:  # the run chose a threshold on validation rows holding unseen labels
        said += f"; {int(table['out_of_scope'].sum()):,} below the run's out-of-scope threshold"
    st.caption(escape_markdown(said))
    close = table.get("runner_up_probability")
    if close is not None:
        hesitant = int(((table["probability"] - close) < 0.1).sum())
        st.caption(f"{hesitant:,} text(s) with a runner-up label within 0.1 of the top one: sort by probability to "
                   "read the texts the run hesitates on first.")
    views.dataframe(table, hide_index=True, width="stretch", column_config={
        "probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.3f"),
        "runner_up_probability": st.column_config.NumberColumn("runner-up probability", format="%.3f"),
    })
    st.download_button("Download the labels (CSV)",
                       views.spreadsheet_csv(csv_text(views.spreadsheet_frame(table)).encode("utf-8")),
                       file_name="labelled.csv", mime="text/csv", key=f"{key}_label_csv", on_click="ignore")


@st.cache_data(show_spinner=False, max_entries=16)
def _columns(digest: str, _raw: bytes, name: str) -> list[str]:
    """The column names of an uploaded file (``data.column_names``, read from a private temporary copy); [] when it
    cannot be read (the labelling then says why). ``_raw`` is keyed by its ``digest``."""
    from clm_explore.data import column_names

    with cache.private_copy(_raw, name) as path:
        return column_names(path)


def _in_app_words(message: str, box: bool) -> str:
    """A reader's error with the Text column box where it names the command line's option (``box``: the page shows
    it; for a .txt file, which has none, the option's mention goes)."""
    if not box:
        return message.replace(" (--text-col picks another column)", "").replace(" (text_col=)", "")
    for flag, control in ((" (text_col=)", ""), ("pass the column with --text-col", "pick it in the Text column box above"),
                          ("with --text-col", "in the Text column box above"),
                          ("(--text-col)", "(the Text column box above)"), ("--text-col", "the Text column box")):
        message = message.replace(flag, control)
    return message
