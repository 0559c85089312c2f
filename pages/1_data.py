"""Data: the bundled sample, a server-side data set or an upload; column mapping; the data report."""

import dataclasses
from pathlib import Path

import streamlit as st

from clm_explore.config import DataConfig
from clm_explore.data import DataError
from clm_explore.ui import cache, state, views

st.title("Data")
st.write("Pick the annotated data every page works on. It stays selected while you move between pages.")

current = state.data_choice()
SOURCES = {"sample": "Bundled sample", "shared": "Server data set", "upload": "Upload a file"}
kind = st.radio(
    "Source",
    list(SOURCES),
    format_func=SOURCES.get,
    horizontal=True,
    key="data_kind",
    index=list(SOURCES).index(current.kind) if current else 0,
)

choice = current if current and current.kind == kind else None
if kind == "sample":
    choice = state.sample_choice()
    if choice is None:
        st.info("The bundled sample (sample_data/banking77_20) is not present in this installation.")
elif kind == "shared":
    sets = {c.name: c for c in state.shared_choices()}
    if not sets:
        st.info("No server-side data sets (../shared/data/*) on this server.")
    else:
        names = list(sets)
        name = st.selectbox(
            "Data set",
            names,
            key="data_shared",
            index=names.index(current.name) if current and current.name in sets else 0,
        )
        choice = sets[name] if not choice or choice.name != name else choice
else:
    cap = DataConfig().max_file_mb
    upload = st.file_uploader(
        f"CSV, TSV, JSONL, JSON or Parquet; one file, up to {cap:.0f} MB. "
        "A single file is split into train, validation and test (stratified by label).",
        type=["csv", "tsv", "jsonl", "ndjson", "json", "parquet"],
        key="data_upload",
    )
    if upload is not None:
        raw = upload.getvalue()
        if len(raw) > cap * 2**20:
            st.error(f"{upload.name} is {len(raw) / 2**20:.0f} MB; the limit is {cap:.0f} MB.")
            st.stop()
        choice = state.upload_choice(raw, upload.name, choice)

if choice is None:
    st.stop()

if choice.kind == "upload":
    raw = Path(choice.path).read_bytes()
    cols = ["(detect)", *cache.columns(choice.digest, raw, choice.name)]
    c1, c2 = st.columns(2)
    text_col = c1.selectbox(
        "Text column",
        cols,
        key="data_text_col",
        index=cols.index(choice.text_col) if choice.text_col in cols else 0,
    )
    label_col = c2.selectbox(
        "Label column",
        cols,
        key="data_label_col",
        index=cols.index(choice.label_col) if choice.label_col in cols else 0,
    )
    choice = dataclasses.replace(
        choice,
        text_col=None if text_col == "(detect)" else text_col,
        label_col=None if label_col == "(detect)" else label_col,
    )

try:
    annotated = cache.data(choice)
except DataError as exc:
    st.error(str(exc))
    st.stop()
if state.set_data_choice(choice):
    st.rerun()  # the sidebar, drawn before this page, shows the new data set

st.subheader(f"Data set: {choice.name}")
views.render_data_report(cache.report(choice), key="data")
with st.expander("Preview (first 50 training rows)"):
    st.dataframe(annotated.train.head(50), key="data_preview")
