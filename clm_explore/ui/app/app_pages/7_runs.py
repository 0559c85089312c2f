"""Runs: every run on this server with its config and metrics; groups of runs (seeds) compared with an interval;
delete; download a finished run as a zip."""

import streamlit as st

from clm_explore.runs import PER_LABEL_METRICS, RunStatus, RunStoreError, unknown_method_note
from clm_explore.ui import cache, jobs, labelling, run_views, state, views
from clm_explore.ui.views import escape_markdown

st.title("Runs", anchor=False)
st.write("Every run in the registry, whoever launched it. Runs live in folders on the server.")

store = jobs.store()
if st.button("Refresh", key="runs_refresh"):
    st.rerun()
records = store.list()
if not records:
    st.info("No runs yet; launch one on the Finetune page.")
    st.page_link("app_pages/5_finetune.py", label="Go to Finetune", icon=":material/model_training:")
    state.stop()
run_views.render_runs_table(records, key="runs")
used, free = cache.runs_disk(str(store.root))
st.caption(f"{len(records):,} run(s) take {views.byte_size(used)} on the server"
           + (f"; {views.byte_size(free)} free on its disk" if free >= 0 else "")
           + ". Runs stay until deleted: below, one at a time, or on the server with `clm-explore runs --prune DAYS`.")

with st.expander("Compare groups of runs (seeds)", expanded=False):
    run_views.render_group_comparison(records, key="runs_groups")

st.header("One run", anchor=False)
run = run_views.run_picker(records, "Run", records[0], key="runs_pick")
st.caption(
    f"Folder: {escape_markdown(run_views.folder_said(run.path, store.root))} · status **{run.status.value}** · created "
    f"{run.created} · updated {run.updated}"  # a folder's name is anyone's text: a backtick in it ended a code span
)
if run.error:
    st.error(escape_markdown(run.error))
if run.metrics.get("collapse_note"):  # it "succeeded", yet predicts one label for every row
    st.warning(escape_markdown(run_views.app_words(str(run.metrics["collapse_note"]))))
if run.status is RunStatus.SUCCEEDED and (said := unknown_method_note(  # a newer version's run
        run.path, f"This run ({run_views.folder_said(run.path, store.root)})")):
    st.warning(escape_markdown(said))
folder_gone = run.is_terminal and not run.path.is_dir()
if folder_gone:
    st.warning(escape_markdown(f"This run's {run_views.FOLDER_GONE}."))
run_views.render_run_figures(run)  # the figures a reader wants first; the files' JSON folded below
c1, c2 = st.columns(2)
with c1, st.expander("Config (clm_run.json)"):
    st.json(run_views.folder_config(run), expanded=1)
with c2, st.expander("Metrics (metrics.json)"):
    # Rows written before the registry left the per-label figures out may still hold them.
    st.json({k: v for k, v in run.metrics.items() if k not in PER_LABEL_METRICS}, expanded=1)

jobs.relaunch_control(run, key="runs")
jobs.more_seeds_control(run, records, key="runs")

if run.status is RunStatus.SUCCEEDED and not folder_gone:  # both read the folder's files
    st.subheader("What training changed", anchor=False)
    run_views.weight_changes_toggle([run], key="runs_changes")
    run_views.render_model_card(run, key="runs")
    st.subheader("Put it to work", anchor=False)
    labelling.label_file_panel(run, key="runs")

c1, c2 = st.columns(2)
if not folder_gone:
    if (run.path / "predictions.csv").is_file():  # an annotator wants 5 KB, not the zip's model too (the UX review)
        c1.download_button(
            "Download its test predictions (CSV)",
            data=lambda: run_views.predictions_csv(run.path),
            file_name=f"{run.id}-predictions.csv",
            mime="text/csv",
            key="runs_predictions",
            on_click="ignore",
        )
    if run.is_terminal:  # a queued or running run's folder is half written: its zip would hold no model yet
        c1.download_button(
            "Download folder (zip: model, predictions, metrics)",
            data=lambda: run_views.run_zip(store, run.id),
            file_name=f"{run.id}.zip",
            mime="application/zip",
            key="runs_zip",
            on_click="ignore",
        )
    else:
        c1.caption("Its folder can be downloaded once the run ends.")
with c2:
    job = jobs.job_queue().for_run(run.id)
    if not run.is_terminal and job is not None and not job.done:
        jobs.cancel_control(job, key="runs")  # two clicks: the job may be another user's
    # Keyed by run: after a delete (or another pick) the box starts unticked for the run now shown.
    if not state.launched_here(run.id):  # every session sees every run; deleting one deletes it for all
        st.warning("This browser session did not launch this run: it may be another user's.")
    confirm = st.checkbox("Yes, delete this run and its folder", key=f"runs_confirm_{run.id}")
    if st.button("Delete run", key="runs_delete", disabled=not confirm):
        try:
            store.delete(run.id)
        except RunStoreError as exc:
            st.error(escape_markdown(str(exc)))
        else:
            st.toast(f"Deleted {run.id}")
            state.forget("runs_pick")  # the next pick is the newest run, without a notice that this one is gone
            st.rerun()
