"""Compare: two runs on the same test split: metrics, confusions, F1 per label, disagreements, attributions."""

import streamlit as st

from clm_explore.casestudy import rows_mismatch
from clm_explore.runs import RunStatus
from clm_explore.ui import cache, jobs, layer_charts, run_views, state, views
from clm_explore.ui.views import escape_markdown

st.title("Compare runs", anchor=False)
st.write("Two finished runs side by side: what each gets right, and which words each model relies on.")

done = [
    r for r in jobs.store().list() if r.status is RunStatus.SUCCEEDED and (r.path / "metrics.json").is_file()
]
if len(done) < 2:
    st.info("Two finished runs are needed; launch some on the Finetune page (a sparse run and full finetuning, say).")
    st.page_link("app_pages/5_finetune.py", label="Go to Finetune", icon=":material/model_training:")
    state.stop()
current = state.data_choice()  # the session's data and model come first: other sessions' runs share the list
data_key = current.key if current else None
if state.get("cmp_data", data_key) != data_key:  # another data set: its own pair, not the last one's picks
    state.forget("cmp_a", "cmp_b")
state.put("cmp_data", data_key)
default_a = run_views.default_pick(done, data_key, state.model_source())
c1, c2 = st.columns(2)
with c1:
    a = run_views.run_picker(done, "Run A", default_a, key="cmp_a")
if state.get("cmp_a_seen", a.id) != a.id:  # another A: B follows it to a run of the same rows
    state.forget("cmp_b")
state.put("cmp_a_seen", a.id)
with c2:
    others = [r for r in done if r.id != a.id]  # B is never A: a run compared with itself agrees everywhere
    b = run_views.run_picker(others, "Run B", run_views.other_run(done, a, prefer="full"), key="cmp_b")
mismatch = run_views.data_mismatch(a, b)
if mismatch:
    st.warning(mismatch)
    state.stop()
relabelled = run_views.label_difference_note(a, b)
if relabelled:
    st.info(relabelled)
st.header("Scores", anchor=False)
run_views.render_metrics_side_by_side(a, b, key="cmp")
full_a, full_b = a.full_metrics(), b.full_metrics()  # the registry keeps no per-label figures
for name, run in (("A", a), ("B", b)):
    unread = run_views.unread_files_note(run)
    if unread:  # said, not shown as a run without a confusion matrix or F1s (the app review)
        st.warning(escape_markdown(f"Run {name} ({run.id}): {unread}"))
run_views.confusion_pair(full_a, full_b, (f"A: {a.method}", f"B: {b.method}"), key="cmp")
run_views.f1_difference(full_a, full_b, key="cmp")

st.header("What training changed", anchor=False)
st.write("Where each run moved its base model's weights: a sparse run only its selected rows, full finetuning every "
         "matrix. Per layer and module; the head is left out, LayerNorms are counted below each map.")
run_views.weight_changes_toggle([a, b], key="cmp_changes")
layer_charts.layer_similarity_toggle(a, b, key="cmp_cka")

st.header("Where they disagree", anchor=False)
mtime = {r.id: cache.file_mtime(r.path / "predictions.csv") for r in (a, b)}
if not mtime[a.id] or not mtime[b.id]:
    st.info("A run has no predictions.csv.")
    state.stop()
# Rows that do not pair by id and text (a file re-sorted between two runs) read as agreement below (the diff review)
if unpaired := rows_mismatch(cache.predictions(str(a.path), mtime[a.id]), cache.predictions(str(b.path), mtime[b.id])):
    st.error(escape_markdown(f"{unpaired}: their answers cannot be compared row by row. Pick two runs of the same "
                             "data set."))
    state.stop()
diff = run_views.disagreements(
    cache.predictions(str(a.path), mtime[a.id]), cache.predictions(str(b.path), mtime[b.id])
)
shown = run_views.filter_disagreements(diff, key="cmp")
test_rows = len(cache.predictions(str(a.path), mtime[a.id]))
right = diff["right"].value_counts()  # who is right where they disagree, in numbers (the demo review)
st.caption(f"{len(diff)} disagreements in {test_rows} test rows: A ({a.method}) right on {right.get('only A', 0)}, "
           f"B ({b.method}) on {right.get('only B', 0)}, neither on {right.get('neither', 0)}.")

output = run_views.attribution_output_choice("cmp_output")  # the pairs', the top words' and the report's
if not shown.empty:
    pick = st.selectbox(
        "Explain row",
        shown.index,
        key="cmp_row",
        format_func=lambda i: f"{shown.at[i, 'row']}: {shown.at[i, 'text'][:80]}",
    )
    run_views.explain_pair(shown.at[pick, "text"], a, b, key="cmp_row", gold=str(shown.at[pick, "label"]),
                           output=output)
    layer_charts.head_attention_pair(shown.at[pick, "text"], a, b, key="cmp_row_heads")

st.header("Try a text", anchor=False)
own = run_views.try_text(key="cmp")
if own:
    run_views.explain_pair(own, a, b, key="cmp_try", output=output)
    layer_charts.head_attention_pair(own, a, b, key="cmp_try_heads")

st.header("Top words per label", anchor=False)
state.restore("cmp_max_rows", min(100, max(10, test_rows)))  # 100 of 56 test rows read as a mistake (UX review)
state.restore("cmp_top", False)
max_rows = st.number_input("Test rows to attribute (disagreements first)", 10, 5000, key="cmp_max_rows",
                           help=f"The test split has {test_rows} rows; more than that attributes them all.")
top = st.toggle("Compute top words", key="cmp_top")
state.keep("cmp_max_rows", "cmp_top")
key = (str(a.path), mtime[a.id], str(b.path), mtime[b.id], int(max_rows), output)
if top:  # a task of its own, shared: the page stays live, and says how far it is
    study = cache.case_study(*key, inline=state.inline_jobs())
    if not study.done:
        views.task_progress(study)
    elif study.error is not None:
        cache.forget_study(study)  # said once; the next look tries again
        raise study.error  # a run's damaged file, say: shown as the app shows errors
    else:
        run_views.render_top_words_pair(study.result, a, b, key="cmp")
if st.button("Build case-study report", key="cmp_report"):
    state.put("cmp_report_for", key)
if state.get("cmp_report_for") == key:  # kept: the next click elsewhere on the page does not take the download away
    study = cache.case_study(*key, inline=state.inline_jobs())  # the top words' own attributions, shared
    if not study.done:
        views.task_progress(study)
        state.stop()
    report = cache.report_html(*key)
    st.success("The case-study report is ready.")
    st.download_button(
        "Download report.html",
        report,
        file_name=f"report-{a.id}-vs-{b.id}.html",
        mime="text/html",
        key="cmp_download",
        on_click="ignore",
    )
