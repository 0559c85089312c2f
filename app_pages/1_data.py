"""Data: the bundled sample, a server-side data set or an upload; column mapping; the data report."""

import streamlit as st

from clm_explore.data import DataError
from clm_explore.ui import cache, forms, state, views

st.title("Data")
st.write("Pick the annotated data every page works on. It stays selected while you move between pages.")

choice = forms.data_picker(state.data_choice(), key="data")
if choice is None:
    state.stop()
if choice.kind == "upload":
    choice = forms.column_mapping(choice, cache.columns(choice.digest, choice.path, choice.name), key="data")

try:
    annotated = cache.data(choice)
except DataError as exc:  # in the app's words: its column boxes, not the command line's options
    st.error(views.escape_markdown(views.data_error_text(str(exc), upload=choice.kind == "upload")))
    state.stop()
if state.set_data_choice(choice):
    st.rerun()  # the sidebar, drawn before this page, shows the new data set

st.header(f"Data set: {views.escape_markdown(choice.name)}")
views.render_data_report(cache.report(choice), key="data")
with st.expander("Preview (first 50 training rows)"):
    st.dataframe(annotated.train.head(50), key="data_preview")
