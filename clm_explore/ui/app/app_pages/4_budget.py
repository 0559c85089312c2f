"""Budget: how many weight rows to train, and what that costs, recomputed on every move."""

import streamlit as st

from clm_explore.config import BUDGET_METHODS, FEW_SHOT_EPOCHS, METHODS, ConfigError
from clm_explore.data import DataError
from clm_explore.masks import MaskSelection
from clm_explore.modeling import ModelSourceError
from clm_explore.ui import cache, forms, jobs, state, views
from clm_explore.ui.views import escape_markdown, refusal_text

st.title("Budget", anchor=False)
st.write(
    "Choose how much of the model a sparse run trains (the budget, a share of its parameters), and see which "
    "weight rows that buys: the highest-scoring ones on the Sensitivity page, until the budget is spent. Runs "
    "launched here or on the Finetune page use this budget and these options."
)
with st.expander("Which runs train exactly these rows"):
    st.write(
        "The mask is re-selected from the cached scores on every move, under Row choice's options. It is the "
        "seed-0 mask: a seed-0 sparse run launched here or on the Finetune page, at this budget, reading as many "
        "sub-tokens per text as the scores did and without the frozen-layer cache, trains these rows, from these "
        "scores (not scored again). A run with another seed or length scores its own rows (another seed warms its "
        "own head before scoring and draws its random-share rows with that seed), so its rows differ: three seeds "
        "of snips at 10 rows per label shared about half their rows (Jaccard 0.52-0.54), their test accuracy "
        "within 0.71 point of each other."
    )

choice, source = state.require_data()

mining_cfg, sens_cfg = state.mining_cfg(), forms.scoring_cfg()
forms.await_scores(source, choice, mining_cfg, sens_cfg)  # the page stops here, with their progress, until ready
report = cache.sensitivity(source, choice, mining_cfg, sens_cfg)
budget = forms.budget_input(key="budget", backbone_params=report.backbone_params)
if report.no_tokens_note:  # sparse would quietly read the pooled position alone
    st.warning(escape_markdown(report.no_tokens_note[0].upper() + report.no_tokens_note[1:]) + ".")
mask_cfg = forms.mask_options(report.n_layers, key="budget")
selection: MaskSelection | None
try:
    selection, seconds = cache.timed_mask(source, choice, mining_cfg, sens_cfg, mask_cfg)
except ConfigError as exc:  # e.g. a budget below the cheapest row: the controls above stay to change it
    st.warning(escape_markdown(str(exc)))
    selection = None  # the page goes on: a widget a run does not draw loses its value (the methods picked below)
if selection is not None:
    st.caption(f"Mask selected from the cached scores in {seconds * 1000:.0f} ms.")
    views.render_mask_summary(selection, report.backbone_params, key="budget")
    views.heatmap(views.selected_percent(selection.table), "percent_selected",
                  "Rows selected per layer and module, % of each map's rows", key="budget", number=views.PERCENT_CELLS)
    st.caption(views.SELECTED_BLANKS)

st.header("Launch at this budget", anchor=False)
st.write(
    f"Methods that use the budget ({budget * 100:.3g}%): "
    + ", ".join(BUDGET_METHODS)
    + ". The others (" + ", ".join(m for m in METHODS if m not in BUDGET_METHODS)
    + ") train what they train whatever the budget; 'full' and 'head' give the reference points."
)
state.restore("budget_methods", ["sparse", "full"])
picked = st.multiselect("Methods", METHODS, key="budget_methods")
state.keep("budget_methods")
options = forms.launch_options()  # the Finetune form's epochs and seed, as last submitted there
forms.rates_note()
seeds = (f"with seed {options['seed']}" if options["seeds"] == 1
         else f"with each of the seeds {options['seed']}-{options['seed'] + options['seeds'] - 1}")
where = ("as set on the Finetune page" if forms.form_used()
         else "the defaults, few-shot data's epochs; the Finetune page's once set there"
         if options["epochs"] == FEW_SHOT_EPOCHS else "the defaults; the Finetune page's once set there")
kept = ", the end of a longer one" if options["truncation_side"] == "left" else ""
st.caption(f"Each method trains {options['epochs']} epoch(s) {seeds}, reading {options['max_length']} sub-tokens per "
           f"text{kept} ({where}); its other options take their defaults.")
if few := forms.data_steps_note(options["epochs"]):
    st.info(escape_markdown(f"{few[0].upper()}{few[1:]}: set Epochs to {FEW_SHOT_EPOCHS} on the Finetune page."))
if selection is None:
    st.caption("Launching waits for a budget that selects rows (above).")
if st.button("Launch runs", type="primary", key="budget_launch", disabled=not picked or selection is None):
    try:
        launched = jobs.launch_many(
            picked, mask_cfg, choice, source, forms.recorded_device(), scores=report, **options
        )
    except (ConfigError, DataError, ModelSourceError) as exc:  # checked before each run is queued
        st.error(escape_markdown(refusal_text(str(exc))))
    else:
        st.success(f"Queued {len(launched)} run(s); follow them on the Finetune page.")
        st.page_link("app_pages/5_finetune.py", label="Go to Finetune", icon=":material/model_training:")
