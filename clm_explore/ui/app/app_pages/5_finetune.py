"""Finetune: launch sparse and baseline runs; the shared queue with live progress; cancel."""

import streamlit as st

from clm_explore.config import ConfigError
from clm_explore.data import DataError
from clm_explore.modeling import ModelSourceError
from clm_explore.ui import cache, forms, jobs, state
from clm_explore.ui.views import escape_markdown, refusal_text

st.title("Finetune", anchor=False)
st.write(
    "Launch a run with our sparse method or a baseline. Jobs queue per device and are visible "
    "to every user of this server; runs survive reloads and restarts."
)

choice, source = state.require_data()
st.caption(
    f"Data: **{escape_markdown(choice.shown)}** · model: **{escape_markdown(source)}** · "
    f"device: **{forms.device_label()}**"
)

active = sum(1 for job in jobs.job_queue().jobs() if not job.done)
if active:  # the cards sit below the form, off a 1280x720 screen (the demo review)
    st.markdown(f"{active} job(s) waiting or running: [see the queue](#queue).")

unseen = cache.report(choice).unseen_labels.get("test", [])  # out-of-scope queries in test
try:
    submitted = forms.finetune_form(key="ft", out_of_scope_labels=unseen)
except ConfigError as exc:
    st.error(escape_markdown(str(exc)))
    submitted = None
if submitted is not None:
    name, cfg, seeds = submitted
    try:
        queued = jobs.launch_seeds(name, cfg, choice, source, seeds)
    except (ConfigError, DataError, ModelSourceError) as exc:  # e.g. a budget below one row: nothing is queued
        st.error(escape_markdown(refusal_text(str(exc))))
    else:
        st.toast(f"Queued {queued[0].run_id}" if len(queued) == 1 else f"Queued {len(queued)} runs (seeds "
                 f"{cfg.seed}-{cfg.seed + len(queued) - 1})")

st.header("Queue", anchor="queue")
jobs.progress_panel(key="ft")  # the queue's cards and, below them, the recent runs
