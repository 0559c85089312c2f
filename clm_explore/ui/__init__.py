"""The Streamlit layer: the only code in the package that imports Streamlit.

- ``state``: session-state keys and typed getters/setters;
- ``cache``: every ``st.cache_*`` wrapper around library calls;
- ``forms``: widgets -> config dataclasses, and the shared sidebar;
- ``views``: render functions for computed objects (data, tokens, sensitivity, masks);
- ``run_views``: the run table, run pickers and the comparison of two runs;
- ``jobs``: the shared job queue and the live progress fragment.
"""
