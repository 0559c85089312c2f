"""clm-explore app: `streamlit run app.py`. Navigation and the shared sidebar; pages live in pages/."""

import streamlit as st

from clm_explore.config import ConfigError
from clm_explore.data import DataError
from clm_explore.modeling import ModelSourceError
from clm_explore.ui import cache, forms, jobs, state
from clm_explore.ui.views import data_error_text, escape_markdown

USER_ERRORS = (ConfigError, DataError, ModelSourceError)

st.set_page_config(page_title="clm-explore", page_icon=":material/hub:", layout="wide")

PAGES = [
    st.Page("pages/1_data.py", title="Data", icon=":material/table_view:", default=True),
    st.Page("pages/2_tokens.py", title="Tokens", icon=":material/token:"),
    st.Page("pages/3_sensitivity.py", title="Sensitivity", icon=":material/grid_on:"),
    st.Page("pages/4_budget.py", title="Budget", icon=":material/tune:"),
    st.Page("pages/5_finetune.py", title="Finetune", icon=":material/model_training:"),
    st.Page("pages/6_compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/7_runs.py", title="Runs", icon=":material/folder_open:"),
]

cache.configure_torch()
cache.pruned_uploads(str(state.uploads_root()))
jobs.job_queue()  # first use per server: runs a previous server left running are marked interrupted
page = st.navigation(PAGES)
forms.sidebar()
try:
    page.run()
except USER_ERRORS as exc:  # a bad model folder, unusable data or option: one paragraph, no traceback
    message = str(exc)
    if isinstance(exc, DataError):  # in the app's words: the Data page's column boxes, not command-line options
        current = state.data_choice()
        message = data_error_text(message, upload=current is not None and current.kind == "upload")
    st.error(escape_markdown(message))
