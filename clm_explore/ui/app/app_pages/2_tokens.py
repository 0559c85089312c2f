"""Tokens: the mined task-token groups, per label, with example rows, and adaptive tokenization."""

import streamlit as st

from clm_explore.data import DataError
from clm_explore.modeling import ModelSourceError
from clm_explore.ui import cache, forms, state, views

st.title("Task tokens", anchor=False)
st.write(
    "Words, short spans and recurring word pieces whose presence shifts the label distribution, "
    "scored by label relevance × domain specificity."
)

choice, source = state.require_data()

cfg = forms.mining_form(key="tok")
try:
    mined = cache.task_tokens(source, choice, cfg)
except (DataError, ModelSourceError) as exc:
    message = str(exc)
    if isinstance(exc, DataError):  # in the app's words: the Data page's column boxes, not command-line options
        message = views.data_error_text(message, upload=choice.kind == "upload")
    st.error(views.escape_markdown(message))
    state.stop()
if not mined.groups:
    st.warning("No group passed the thresholds; lower 'Min rows' in the mining options.")
    state.stop()
frame = mined.to_frame()
st.caption(f"{len(mined.groups)} groups from {mined.n_rows} training rows · background: {mined.background}")
if ungrouped := mined.ungrouped_labels_note(cache.data(choice).train["label"]):
    st.info(views.escape_markdown(f"{ungrouped} (the mining options' Min rows and Groups kept)."))

tab_all, tab_label, tab_merge = st.tabs(["All groups", "Per label", "Adaptive tokenization"])
with tab_all:
    shown = views.filter_groups(frame, key="tok_all")
    views.render_group_table(shown, key="tok_all")
    if not shown.empty:
        pick = st.selectbox(
            "Show example rows for",
            shown.index,
            key="tok_pick",
            format_func=lambda i: f"{frame.at[i, 'text']} ({frame.at[i, 'label']})",
        )
        views.render_group_examples(mined.groups[pick], cache.data(choice).train, key="tok_examples")
with tab_label:
    labels = sorted(frame["label"].unique())
    label = st.selectbox("Label", labels, key="tok_label")
    views.render_group_table(frame[frame["label"] == label], key="tok_label")
with tab_merge:
    st.write(
        "Adaptive tokenization adds the top multi-piece groups to the vocabulary as single tokens, "
        "so inputs get shorter."
    )
    if st.toggle("Measure adaptive tokenization", key="tok_merge"):
        with cache.turn_note():
            merged = cache.merge_report(source, choice, cfg)
        views.render_merge_report(merged, key="tok_merge")

st.page_link("app_pages/3_sensitivity.py", label="Next: Sensitivity, where in the model these tokens matter",
             icon=":material/grid_on:")
