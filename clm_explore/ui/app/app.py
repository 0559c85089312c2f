"""clm-explore app: `clm-explore app` runs it (`streamlit run` on this file, with .streamlit/config.toml's settings).
Navigation and the shared sidebar; pages live in app_pages/ (not `pages/`, which Streamlit would also serve as pages
of their own, bypassing this file, on a deep link). It ships inside the package, so that an installed clm-explore
serves the app of its own version."""

import streamlit as st


def pages() -> list:
    return [
        st.Page("app_pages/1_data.py", title="Data", icon=":material/table_view:", default=True),
        st.Page("app_pages/2_tokens.py", title="Tokens", icon=":material/token:"),
        st.Page("app_pages/3_sensitivity.py", title="Sensitivity", icon=":material/grid_on:"),
        st.Page("app_pages/4_budget.py", title="Budget", icon=":material/tune:"),
        st.Page("app_pages/5_finetune.py", title="Finetune", icon=":material/model_training:"),
        st.Page("app_pages/6_compare.py", title="Compare", icon=":material/compare_arrows:"),
        st.Page("app_pages/7_runs.py", title="Runs", icon=":material/folder_open:"),
    ]


def main() -> None:
    st.set_page_config(page_title="clm-explore", page_icon=":material/hub:", layout="wide")
    # The first visit after a start imports torch and transformers (7-16 s): said, not a blank page (the demo review).
    loading = st.empty()
    loading.caption("Loading the model libraries (the first visit after the server starts only)…")
    # Imported here, not above: a job worker runs this file again (see the guard below), and the UI modules' caches
    # would each log "No runtime found" there.
    from clm_explore.config import ConfigError
    from clm_explore.data import DataError
    from clm_explore.modeling import ModelSourceError
    from clm_explore.runs import RunStoreError
    from clm_explore.ui import cache, forms, jobs, saved_session, state
    from clm_explore.ui.views import data_error_text, escape_markdown

    cache.configure_torch()
    loading.empty()
    cache.pruned_uploads(str(state.uploads_root()))
    saved_session.resume()  # a reload takes up the session its address names
    page = st.navigation(pages())
    try:
        try:
            jobs.job_queue()  # first use per server: runs a previous server left running are marked interrupted
        except RunStoreError as exc:  # a read-only or damaged registry: the data pages still work (the app review)
            st.warning(escape_markdown(f"{exc} Until then the Data, Tokens, Sensitivity and Budget pages work; runs "
                                       "cannot be launched or listed."))
        forms.sidebar()
        page.run()
    except (ConfigError, DataError, ModelSourceError, RunStoreError) as exc:  # a bad model folder, unusable data
        # or option, a damaged run registry: one paragraph, no traceback
        message = str(exc)
        if isinstance(exc, DataError):  # in the app's words: the Data page's column boxes, not command-line options
            current = state.data_choice()
            message = data_error_text(message, upload=current is not None and current.kind == "upload")
        st.error(escape_markdown(message))
    finally:
        # Also after st.rerun(), which raises. A page that stops saves first (state.stop): after st.stop() the
        # session state refuses every read, and this save would fail quietly.
        saved_session.persist()


# The job workers start with multiprocessing's "spawn", which runs the parent's __main__ again in the child, as
# __mp_main__: during a script run Streamlit makes this file __main__, so without the guard every worker would run
# the whole app (set up a page, start a job queue of its own) before its first job.
if __name__ == "__main__":
    main()
