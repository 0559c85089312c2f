"""Data: the bundled sample, a server-side data set or an upload; column mapping; the data report."""

import dataclasses
from pathlib import Path

import streamlit as st

from clm_explore.config import LabelAuditConfig
from clm_explore.data import SPLITS, DataError, IncompleteRowsError, is_draw_note
from clm_explore.jobs import ABANDONED_SECONDS
from clm_explore.label_issues import TooFewRowsError, relabelled, splits_csv, splits_zip
from clm_explore.modeling import ModelSourceError
from clm_explore.ui import cache, forms, state, views

st.title("Data", anchor=False)
st.markdown(
    "This app adapts a small language model to your labels by training about 1% of its weights, the ones your task "
    "needs most, and shows why. The pages, in order: **Data** (check your annotated rows), **Tokens** (the words "
    "that mark each label), **Sensitivity** (where in the model the task lives), **Budget** (how many weights to "
    "train, and which), **Finetune** (train a sparse model, and full finetuning to compare), **Compare** (what each "
    "gets right, and which words it relies on), **Runs** (every run, to download or delete)."
)
st.write("Pick the annotated data every page works on. It stays selected while you move between pages.")

choice = forms.data_picker(state.data_choice(), key="data")
if choice is None:
    views.still_using(state.data_choice())
    state.stop()
if choice.kind == "upload":
    choice = forms.column_mapping(choice, cache.columns(choice.digest, choice.path, choice.name), key="data")
choice = forms.row_draw(choice, state.data_choice(), key="data")

try:
    annotated = cache.data(choice)
    if annotated.carved:  # the shares of the splits carved out of train, chosen here too
        carved_as = forms.carve_shares(choice, state.data_choice(), annotated.carved, key="data")
        if carved_as != choice:
            choice, annotated = carved_as, cache.data(carved_as)
except DataError as exc:  # in the app's words: its column boxes, not the command line's options
    st.error(views.escape_markdown(views.data_error_text(str(exc), upload=choice.kind == "upload")))
    if isinstance(exc, IncompleteRowsError) and choice.kind == "upload":
        forms.leave_out_incomplete_rows(choice, key="data")
    if state.data_choice() != choice:
        views.still_using(state.data_choice())
    state.stop()
if state.set_data_choice(choice):
    st.rerun()  # the sidebar, drawn before this page, shows the new data set

st.header(f"Data set: {views.escape_markdown(choice.shown)}", anchor=False)
if choice.kind == "sample":  # its one warning read as the tool's own bug (the demo review)
    st.caption("The bundled sample keeps BANKING77's texts as published, repeats included: the texts in two splits "
               "that the report below counts as leakage come from those repeats of the original data.")
# The report and the label check read every row, not the few-shot draw: under a draw the data's problems (the
# sample's leakage) vanished from the report (the diff review); what the draw keeps is said beside it.
checked = dataclasses.replace(choice, shots=0, shots_seed=0)
whole = cache.data(checked)
views.render_data_report(cache.report(checked), key="data")
for note in annotated.notes:
    if is_draw_note(note):
        st.info(views.escape_markdown(views.app_data_note(note)))
try:
    if unreadable := cache.unreadable_note(state.model_source(), checked):
        st.warning(views.escape_markdown(unreadable[:1].upper() + unreadable[1:]))  # "[UNK]" is the tokenizer's text
    views.long_text_note(cache.text_lengths(state.model_source(), checked), forms.read_length(),
                         sum(len(whole.split(s)) for s in SPLITS), cache.LENGTH_COUNTED,
                         cache.model_positions(state.model_source()), forms.read_side())
except ModelSourceError as exc:  # the sidebar's model cannot be loaded: the data report stands without the note
    st.caption(views.escape_markdown(f"Texts' lengths in sub-tokens not counted: {exc}"))
drawn = " of the few-shot draw" if choice.shots else ""
with st.expander(f"Preview (first 50 training rows{drawn})"):
    views.dataframe(annotated.train.head(50), key="data_preview", alt=f"First 50 training rows{drawn}")

st.header("Labels the data disputes", anchor=False)
st.write(
    "Rows whose label the rest of the data disputes: a quick model, trained on the other rows, is confidently sure "
    "the row belongs to another label. Most disputed first; a flagged row is worth a second look, not necessarily "
    "wrong. Tick accept where the suggested label is right."
)
st.caption(
    "How: a linear probe on the model's features, trained on the other rows in 5 folds, and cleanlab's confident "
    "learning rule. One pass of the model, no finetuning."
)
if choice.shots:
    st.caption("The check reads every row, not the few-shot draw: a label's wrong rows are found among all its own, "
               "and the data downloaded with labels changed keeps them all.")
source = state.model_source()
# As long a read as the runs': at 64 sub-tokens an audit of texts whose question sat further on flagged 298 of 360
# correct rows, whatever the Finetune form said (the long-text review).
audit_cfg = LabelAuditConfig(max_length=forms.read_length(), truncation_side=forms.read_side())
if st.button("Check the labels", key="data_audit",
             help=f"Reads {views.audit_read(audit_cfg)}, as the Finetune form's Sub-tokens read per text and Long texts "
             "keep their say."):
    # shown again on later reruns (from the cache) until the data, the model or the length read changes: a length
    # changed on the Finetune form started a new check on its own, and hid the finished one (the diff review)
    state.put("audited", (checked, source, audit_cfg))
    cache.retry_failed_audit(source, checked, audit_cfg)
audited = state.get("audited")
if audited and audited[:2] == (checked, source) and audited[2:] != (audit_cfg,):
    earlier = views.audit_read(audited[2]) if len(audited) > 2 else "another number of sub-tokens per text"
    st.caption(f"The last check read {earlier}; runs now read {views.audit_read(audit_cfg)}: **Check the labels** "
               "checks them again that way.")
if audited == (checked, source, audit_cfg):
    # A task of its own, shared by every session: a click or a page change while it runs does not restart it.
    task = cache.label_audit(source, checked, audit_cfg, inline=state.inline_jobs())
    if not task.done:
        views.task_progress(task)
        if task.progress[0].startswith("waiting for"):
            st.caption(f"Checks run one at a time on this server. One that no page follows any more (its session went "
                       f"on to other data or another page) is stopped after {ABANDONED_SECONDS:.0f} s with a check "
                       "waiting behind it.")
        stopping = task.stop_asked.is_set()
        st.button("Stopping…" if stopping else "Stop the check", key="data_audit_stop", disabled=stopping,
                  on_click=cache.stop_audit, args=(task,),
                  help="Ends it at its next step (a batch of texts, or a fold of the probe), for every session that asked "
                  "for it (it is shared).")
    elif task.error is not None:
        state.put("audited", None)  # shown once; the next click tries again
        if task.stopped and task.stop_reason:
            st.info(f"The label check was stopped: {task.stop_reason} (another check waited for it, and a page "
                    "left for other data or another page no longer followed it). **Check the labels** starts it "
                    "again.")
        elif task.stopped:
            st.info("The label check was stopped (here or in another session checking the same data). "
                    "**Check the labels** starts it again.")
        elif isinstance(task.error, TooFewRowsError):
            st.warning(views.escape_markdown(str(task.error)))
        else:
            raise task.error  # shown as the app shows any unexpected error
    else:
        accepted = views.render_label_issues(task.result, key="data")
        if len(accepted):
            fixed = relabelled(whole, accepted)
            stem = Path(choice.name).stem
            c1, c2 = st.columns(2)
            c1.download_button(
                f"Download the data with {len(accepted)} label(s) changed",  # a shorter label: it was cut (UX review)
                splits_zip(fixed), file_name=f"{stem}-relabelled.zip", mime="application/zip", key="data_relabelled",
                help="A zip of three CSV files: train, validation and test, as the app splits the data now.",
            )
            c2.button(
                f"Work on the data with {len(accepted)} label(s) changed", key="data_use_relabelled",
                on_click=forms.switch_to_upload,
                args=(lambda: splits_csv(fixed), f"{stem}-relabelled.csv", sum(len(fixed.split(s)) for s in SPLITS)),
                help="Selects it on every page as an upload of this session (one CSV file with a split column: the "
                "same train, validation and test rows; accepted labels of validation or test rows change what runs are "
                "scored against too), so that its runs can be set beside the original's.",
            )
            if message := state.get("data_switch_error"):
                state.put("data_switch_error", None)
                st.error(message)
            st.caption(
                "Unzipped, a folder the command line reads as it is (clm-explore finetune --data FOLDER), splits "
                "and all; or fix the labels at their source and load the data again."
            )

st.divider()
st.header("Next", anchor=False)
st.caption("Tokens, Sensitivity and Budget show what a sparse run will train, and are optional: Finetune trains with "
           "their defaults. Compare sets two finished runs side by side.")
c1, c2 = st.columns(2)
c1.page_link("app_pages/2_tokens.py", label="Tokens: the words that mark each label", icon=":material/token:")
c2.page_link("app_pages/5_finetune.py", label="Finetune: train a model on this data", icon=":material/model_training:")
