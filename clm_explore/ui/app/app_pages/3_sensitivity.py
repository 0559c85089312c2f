"""Sensitivity: where the task lives in the network, as a layers × modules heatmap."""

import dataclasses

import streamlit as st

from clm_explore.config import ConfigError
from clm_explore.ui import cache, forms, state, views

st.title("Sensitivity", anchor=False)
st.write(
    "How much each part of the model matters for your labels: every weight row gets a score, here per layer and "
    "module (brighter: more). A sparse run trains the rows that stand out most within their own matrix (a row's "
    "score over its matrix's mean), so the cells brightest in total score are not always where the budget goes: "
    "**Share selected** shows where it goes."
)
with st.expander("How the rows are scored"):
    st.write(
        "Row scores of every weight matrix (empirical Fisher by default; in the options the true Fisher, at "
        "labels drawn from the model, Taylor or gradient magnitude), with gradients taken only at mined "
        "task-token positions (restricted) or at every position (unrestricted), summed per layer and module."
    )

choice, source = state.require_data()

cfg = forms.sensitivity_form(key="sens")
forms.await_scores(source, choice, state.mining_cfg(), cfg)  # the page stops here, with their progress, until ready
report = cache.sensitivity(source, choice, state.mining_cfg(), cfg)
table = report.table.copy()
if report.no_tokens_note:  # sparse would quietly read the pooled position alone
    st.warning(views.escape_markdown(report.no_tokens_note[0].upper() + report.no_tokens_note[1:]) + ".")
st.caption(
    f"{report.n_layers} layers · {report.backbone_params:,} backbone parameters · "
    f"computed in {report.seconds:.1f}s · " + " · ".join(report.notes)
)

VIEWS = {  # what a run trains first (the UX review: the total score's brightest cell is never selected)
    "share_selected": f"% of rows selected at the current budget ({state.budget() * 100:.3g}%)",
    "score": "Total score",
    "norm_score": "Normalised (score per parameter)",
}
state.restore("sens_view", "share_selected", options=list(VIEWS))  # the view and the toggle below outlive page switches
view = st.radio("Heatmap shows", list(VIEWS), format_func=VIEWS.get, horizontal=True, key="sens_view")
state.keep("sens_view")
try:
    if view == "share_selected":
        selection = cache.mask(source, choice, state.mining_cfg(), cfg, state.mask_cfg())
        table = views.selected_percent(selection.table)
        if selection.min_layer > 0:
            st.caption(f"Rows below layer {selection.min_layer} do not compete (\"Lowest eligible layer\" under the Budget "
                       "page's Row choice): blank in the map.")
except ConfigError as exc:  # e.g. a budget below the cheapest row, as on the Budget page: the rest of the page stays
    st.warning(views.escape_markdown(str(exc)))
else:
    zrange, capped = views.capped_scale(table, view) if view != "share_selected" else (None, "")
    shown = "percent_selected" if view == "share_selected" else view
    views.heatmap(table, shown, VIEWS[view], key="sens_main", zrange=zrange,
                  number=views.PERCENT_CELLS if view == "share_selected" else ".2g")
    if capped:
        st.caption(capped)

st.header("Restricted vs unrestricted", anchor=False)
st.write("The same score with gradients from every position: how much the token restriction moves the mass.")
# A toggle, not a button: the comparison costs a second scoring pass on every change of the options, so the
# user can turn it off again.
WHERE = {"tokens": "task-token positions only", "none": "every position"}  # what "tokens"/"none" mean (UX review)
state.restore(state.SENS_COMPARE, False)
compare = st.toggle("Compare with the other restriction (a second scoring pass)", key=state.SENS_COMPARE)
state.keep(state.SENS_COMPARE)
if compare:
    other_cfg = dataclasses.replace(cfg, restriction="none" if cfg.restriction == "tokens" else "tokens")
    forms.await_scores(source, choice, state.mining_cfg(), other_cfg)
    other = cache.sensitivity(source, choice, state.mining_cfg(), other_cfg)
    shares = (views.share_of_total(report.table), views.share_of_total(other.table))
    zrange, capped = views.shared_capped_scale(shares, "share")  # the pooler's 0.6-0.7 darkened the rest (demo review)
    left, right = st.columns(2)
    with left:
        views.heatmap(shares[0], "share", f"{WHERE[cfg.restriction]}: share of score", "sens_a", zrange=zrange)
    with right:
        views.heatmap(shares[1], "share", f"{WHERE[other_cfg.restriction]}: share of score", "sens_b", zrange=zrange)
    if capped:
        st.caption(capped)
    diff = views.share_of_total(report.table).merge(views.share_of_total(other.table), on=["layer", "module"])
    diff["share"] = diff["share_x"] - diff["share_y"]
    views.heatmap(
        diff, "share", f"Difference ({WHERE[cfg.restriction]} − {WHERE[other_cfg.restriction]})", "sens_diff", "RdBu",
        diverging=True,
    )

st.page_link("app_pages/4_budget.py", label="Next: Budget, how many of these rows to train",
             icon=":material/tune:")
