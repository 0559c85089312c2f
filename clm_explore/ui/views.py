"""Render functions: each takes a computed object and a key prefix, and draws it.

User text (data rows, labels, words) is only ever shown through dataframes or through
``st.markdown`` after ``escape_markdown``; never with ``unsafe_allow_html``.
"""

from __future__ import annotations

import codecs
import itertools
import re
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from clm_explore.data import csv_text
from clm_explore.vocabulary import a_word_of_its_own

if TYPE_CHECKING:  # type names only: the pages import this module before any model code is needed
    from clm_explore.masks import MaskSelection
    from clm_explore.mining import MergeReport

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")
MODULE_ORDER = ["embeddings", "q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out", "pooler"]


_AUTOLINK = re.compile(r"\\:(?=//)|@|(?i:ww(?=w\\\.))")
"""Where GitHub-flavoured Markdown would make a link of plain text (escaped or not): a scheme's colon
(http://...), an e-mail's @ and a leading www. A zero-width space after each keeps the text as it reads."""


def escape_markdown(text: str) -> str:
    """Backslash-escape every character Markdown, LaTeX ($) or Streamlit directives (:) could act on, and keep URLs,
    e-mail addresses and www. names in user text from becoming links (a row of uploaded data is not to be
    clicked through to wherever it points)."""
    escaped = " ".join(_MD_SPECIAL.sub(r"\\\1", str(text)).splitlines())  # \r, \n and Unicode breaks alike
    return _AUTOLINK.sub(lambda match: match.group(0) + "\u200b", escaped)


_LABEL_SPECIAL = re.compile(r"([\\`*_\[\]!~$:<>&])")
_LABEL_LEAD = re.compile(r"^(\s*)(?:([#>+\-])|(\d+)([.)]))")


def label_text(text: str) -> str:
    """User text (a run's name) for a widget's label: escaped where a label's Markdown acts (emphasis, code, links,
    images, icons and colours, LaTeX, and a leading heading, quote or list marker), not before every - and . as
    ``escape_markdown`` does: a label as written is also its name for a screen reader, which read each backslash
    out ("Curves of 20261206\\-221335\\-full")."""
    escaped = " ".join(_LABEL_SPECIAL.sub(r"\\\1", str(text)).splitlines())
    escaped = _LABEL_LEAD.sub(lambda m: m.group(1) + (f"\\{m.group(2)}" if m.group(2) else f"{m.group(3)}\\{m.group(4)}"),
                              escaped)
    return _AUTOLINK.sub(lambda match: match.group(0) + "\u200b", escaped)


def plot_text(text: str) -> str:
    """Text for plotly labels: plotly reads a few HTML-like tags (<b>, <a>), so angle brackets are replaced."""
    return str(text).replace("<", "‹").replace(">", "›")


def highlight_markdown(text: str, needle: str) -> str:
    """``text`` escaped, with every occurrence of ``needle`` in **bold**, found as an uncased tokenizer reads: case
    and accents aside ("fur" is "für"), and without the spaces it puts around Chinese and Japanese characters ("发 票"
    is "发票"): such groups were never found in their rows (the language review)."""
    folded, origin = _folded(text)
    pattern = _needle_pattern(_folded(needle.replace("##", ""))[0].strip())
    if pattern is None:
        return escape_markdown(text)
    parts, last = [], 0
    for match in pattern.finditer(folded):
        start, end = origin[match.start()], origin[match.end() - 1] + 1
        if start < last:
            continue
        parts.append(escape_markdown(text[last:start]))
        parts.append(f"**{escape_markdown(text[start:end])}**")
        last = end
    parts.append(escape_markdown(text[last:]))
    return "".join(parts)


def _folded(text: str) -> tuple[str, list[int]]:
    """``text`` lower-cased without accents (combining marks), and the position in ``text`` of each of its
    characters."""
    chars, origin = [], []
    for i, char in enumerate(text):
        for part in unicodedata.normalize("NFKD", char).lower():
            if not unicodedata.combining(part):
                chars.append(part)
                origin.append(i)
    return "".join(chars), origin


def _needle_pattern(needle: str) -> re.Pattern[str] | None:
    words = needle.split()
    if not words:
        return None
    pattern = re.escape(words[0])
    for before, after in itertools.pairwise(words):
        pattern += r"\s*" if a_word_of_its_own(before[-1]) or a_word_of_its_own(after[0]) else r"\s+"
        pattern += re.escape(after)
    return re.compile(pattern)



CHART_CONFIG = {
    "displaylogo": False,
    "modeBarButtonsToRemove": ["zoom2d", "pan2d", "select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d"],
}
"""Plotly's toolbar kept to 'Download plot as a png' and 'Reset axes': every button is a Tab stop for a keyboard
(eight a chart before), and a drag still zooms, a double-click still resets."""


def chart(fig: go.Figure, key: str, numbers: pd.DataFrame | None = None, title: str = "") -> None:
    """A plotly figure, and beneath it, folded, the numbers it draws: a screen reader, a keyboard or a reader who
    cannot tell its colours apart gets the values the figure shows only by colour, length or on hover."""
    if fig.layout.title.text:  # titles name runs and labels: plotly reads <a href> in them as a link
        fig.update_layout(title_text=plot_text(fig.layout.title.text))
    st.plotly_chart(fig, key=key, config=CHART_CONFIG, alt=title or None)
    if numbers is not None:
        name = f"Numbers: {title}" if title else "Numbers behind the chart"
        with st.expander(escape_markdown(name)):
            dataframe(numbers, key=f"{key}_numbers", alt=name)


def metric_row() -> Any:
    """A row for st.metric boxes that wraps on a narrow window (columns would cut their labels and values)."""
    return st.container(horizontal=True, gap="medium")


# -- data -----------------------------------------------------------------------------------------
_APP_CONTROLS = (  # the library's data errors name command-line options; the app has its own controls for them
    (" (text_col=)", ""),  # the Python keyword beside the flag
    (" (label_col=)", ""),
    (" (split_col=)", ""),
    ("Pass one of them with", "Pick one of them with"),
    ("pass the column with", "pick the column with"),
    ("Pass different columns with", "Pick different columns with"),
    ("with --text-col and --label-col", "in the Text column and Label column boxes on the Data page"),
    ("with --text-col", "in the Text column box on the Data page"),
    ("with --label-col", "in the Label column box on the Data page"),
    ("(--label-col)", "(the Label column box on the Data page)"),
    ("(--text-col)", "(the Text column box on the Data page)"),
)
_FILE_LIMIT = re.compile(r" or raise the limit with --max-file-mb \(DataConfig\.max_file_mb\)")
_CONFIG_LIMIT = re.compile(r"(,? or)? raise the limit( on a machine with the memory for it)? \(in the Python API: "
                           r"DataConfig\((max_rows|max_labels|max_label_chars)=\.\.\.\); the command line has no option "
                           r"for it\)")


_METHOD_FLAG = re.compile(r"--method (\w+)")


def refusal_text(message: str) -> str:
    """A refusal of a run in the app's words (plain text: escape it to show it): the library's ``--method M``
    becomes the Method box's choice."""
    return _METHOD_FLAG.sub(r"the method '\1' (the Method box)", message)


def data_error_text(message: str, upload: bool) -> str:
    """A data error in the app's words (plain text: escape it to show it): the command-line options the library
    names (--text-col, --label-col, --max-file-mb) become the Data page's controls, and the limits a browser user
    cannot raise are stated as limits. ``upload``: the data set is an uploaded file, the only kind whose columns
    the Data page lets the user pick; for another the message says the data set's files must change."""
    message = app_data_note(message)  # a draw too small: the Few-shot box's name
    for flag, control in _APP_CONTROLS:
        message = message.replace(flag, control)
    message = _FILE_LIMIT.sub("", message)  # the message states the limit; a browser user cannot raise it
    message = _CONFIG_LIMIT.sub("", message)
    if not upload and "column box" in message:
        message += (" The Data page offers those boxes for uploaded files only: for this data set, upload its "
                    "file, or ask the server's administrator to fix it.")
    return message


def app_data_note(note: str) -> str:
    """A data note in the Data page's words: the few-shot draw's options are its boxes there, not ``--shots`` and
    ``--data-seed``."""
    note = re.sub(r"--shots (\d+) \(shots=\d+\)", r"Training rows of each label \1", note)
    return re.sub(r"drawn with --data-seed (\d+) \(shots_seed=\d+\)", r"drawn at random (Draw \1)", note)


UPRIGHT_LABEL_BARS = 30
"""Labels drawn as upright bars at most; more as one horizontal bar each, ``LABEL_BAR_PX`` tall."""
LABEL_BAR_PX = 18


def render_data_report(report: Any, key: str) -> None:
    """Sizes, a per-label bar chart, lengths, duplicates and leakage; problems in plain words."""
    with metric_row():
        st.metric("Rows", report.rows, width="content")
        st.metric("Labels", len(report.labels), width="content")
        # Named for what each counts: "Duplicates 0" sat above "1 row(s) repeat an earlier text", a copy across
        # splits, which the second counts (the UX review).
        st.metric("Duplicates within a split", sum(report.duplicates.values()), width="content")
        st.metric("Texts in two splits", report.leakage.get("count", 0), width="content",
                  help="Texts that occur in more than one split (leakage), copies that differ only in case or spacing "
                  "not counted here (the problems below count them).")
    st.caption(" · ".join(f"{name}: {n:,} row{'' if n == 1 else 's'}" for name, n in report.splits.items()))
    for note in report.notes:
        st.caption(escape_markdown(note))
    if report.problems:
        st.warning("\n".join(f"- {escape_markdown(p)}" for p in report.problems))
    else:
        st.success("No problems found.")
    table = pd.DataFrame(report.label_counts).T.rename_axis("label")
    counts = table.reset_index()
    counts["label"] = counts["label"].map(plot_text)
    long = counts.melt(id_vars="label", var_name="split", value_name="rows")
    if len(counts) <= UPRIGHT_LABEL_BARS:
        fig = px.bar(long, x="label", y="rows", color="split", title="Rows per label")
        # Category axis: coded labels (1, 10, 1000) drew bars at positions on a numeric scale, thin slivers far apart.
        fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10), xaxis_tickangle=-45, xaxis_type="category")
    else:  # one row per label, every name shown: upright bars of 77 labels squashed and named every other one
        fig = px.bar(long, y="label", x="rows", color="split", title="Rows per label", orientation="h")
        fig.update_layout(height=LABEL_BAR_PX * len(counts) + 120, margin=dict(l=10, r=10, t=40, b=10),
                          yaxis_type="category", yaxis_dtick=1, yaxis_autorange="reversed")
    chart(fig, f"{key}_labels", table.fillna(0).astype(int), "rows per label and split")
    lengths = pd.DataFrame(
        {(split, unit): v for split, units in report.lengths.items() for unit, v in units.items()}
    )
    st.subheader("Text lengths", anchor=False)
    st.caption("Characters and words per text: min, median, 95th percentile (p95), max.")
    dataframe(lengths.T.rename_axis(["split", "unit"]), key=f"{key}_lengths", alt="Text lengths")


def long_text_note(lengths: pd.Series, max_length: int, total: int, counted: int, positions: int | None = None,
                   side: str = "right") -> None:
    """How many texts are longer than a run reads (``max_length`` sub-tokens): their end is never seen (their start,
    where ``side`` is 'left'), in training, predictions or attributions. ``lengths`` may be a sample of the ``total``
    texts, each counted up to ``counted`` (a longer one is "more than" that); ``positions``: the most the model reads,
    where known. A caption when every text fits."""
    longer = int((lengths > max_length).sum())
    sample = f" (counted on a sample of {len(lengths):,})" if len(lengths) < total else ""
    longest = f"{int(lengths.max()):,}" if lengths.max() <= counted else f"more than {counted:,}"
    if not longer:
        st.caption(f"Every text fits in the {max_length} sub-tokens a run reads (the longest has {longest})"
                   f"{sample}.")
        return
    most = min(counted, positions or counted)  # counted: the form's top; a model may read fewer
    end = "end" if side == "left" else "start"
    more = ("The Finetune form's **Sub-tokens read per text** reads more, at a cost in time and memory."
            if max_length < most else
            f"{max_length} is the most a run of this model reads: shorten the texts (quoted replies, signatures) or put "
            f"what decides the label {'last' if side == 'left' else 'first'}.")
    if side != "left":
        more += (f" Where texts ask last (tickets, e-mails), its **{LONG_TEXTS_KEEP}** set to **end** keeps their "
                 "ends instead.")
    st.info(f"{longer:,} of {len(lengths):,} texts{sample} ({longer / len(lengths):.1%}) are longer than the {max_length} "
            f"sub-tokens a run reads (the longest has {longest}): only their {end} is used, in training, "
            f"predictions and attributions. {more}")


@st.fragment(run_every=2.0)  # each redraw takes server CPU from the task itself: a bar needs no more often
def task_progress(task: Any) -> None:
    """A progress bar that follows a background task (``jobs.KeyedTask``) and reruns the page once it is done."""
    if task.done:
        st.rerun()  # the whole page: it draws the result
    task.watch()  # followed: a task no page follows is stopped when another waits behind it
    phase, done, total = task.progress
    counted = f": {done:,} of {total:,}" if total > 1 else "…"
    left = task.seconds_left()
    if left is not None and done < total:  # a wait of a minute reads better with its end in sight (the UX review)
        counted += f", about {duration(left)} left"
    # The phase may name a data set (an upload's file name): user text, escaped.
    st.progress(min(done / max(total, 1), 1.0), text=escape_markdown(f"{phase[:1].upper()}{phase[1:]}{counted}"))


LONG_TEXTS_KEEP = "Long texts keep their"
"""The Finetune form's choice of the end of a long text a run reads (``FinetuneConfig.truncation_side``)."""
KEEP_SIDES = {"start": "right", "end": "left"}
"""That choice's options, as the form says them, and the tokenizers' names for the end they cut."""
KEEP_START = "start"


def audit_read(cfg: Any) -> str:
    """How a label check (``LabelAuditConfig``) reads texts, in the Data page's words."""
    kept = ", keeping a longer text's end" if cfg.truncation_side == "left" else ""
    return f"{cfg.max_length} sub-tokens per text{kept}"


MISSING = "–"
"""What a table shows for a cell without a value (a pending run's accuracy, a std of one run): Streamlit wrote
"None", in grey, which a reader took for a value or a fault (the UX review)."""


def dataframe(data: Any, **kwargs: Any) -> Any:
    """``st.dataframe`` with the app's placeholder for a missing value (``MISSING``)."""
    return st.dataframe(data, placeholder=MISSING, **kwargs)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""How a cell that a spreadsheet reads as a formula begins (OWASP's "CSV injection")."""


def spreadsheet_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each text cell a spreadsheet would run as a formula (``=HYPERLINK(...)``, ``+cmd|...``) led by
    an apostrophe, which Excel and LibreOffice show as text and hide; numbers (-0.5) stay as they are. The texts of a
    shared server's data sets and runs are anyone's (the diff review)."""
    def safe(value: object) -> object:
        if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
            return value
        try:
            float(value)
        except ValueError:
            return "'" + value
        return value

    return frame.map(safe)


def spreadsheet_csv(data: bytes) -> bytes:
    """UTF-8 CSV bytes as a download gives them: led by the UTF-8 byte order mark, without which Excel reads the file
    in the machine's code page and an accented or non-Latin text (a label, a user's text) comes out garbled. pandas,
    Python's csv with utf-8-sig and ``load_data`` read it as before; the files in the run folder stay without it."""
    return data if data.startswith(codecs.BOM_UTF8) else codecs.BOM_UTF8 + data


def byte_size(size: float) -> str:
    """A size as the app writes it: "340 KB", "3.0 MB", "1.25 GB"."""
    if size < 2**20:
        return f"{size / 2**10:.0f} KB"
    return f"{size / 2**20:.1f} MB" if size < 2**30 else f"{size / 2**30:.2f} GB"


def duration(seconds: float | None) -> str:
    """A time as the app writes it: "42s", "3m 05s"; "–" for none."""
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


ISSUES_SHOWN_FIRST = ("label", "suggested", "text")
"""The label check's columns shown first, after the accept box: the text beside its labels."""


def render_label_issues(result: Any, key: str) -> pd.DataFrame:
    """The label audit: how many rows were flagged and how far the probe can be trusted, then the flagged rows
    (texts in a table: never rendered as markdown), each with a box to accept its suggestion, and a CSV of them.
    Returns the rows whose suggestion was accepted."""
    if not result.issues.empty:  # an alert is announced by screen readers; the figures below are not
        st.info(f"The quick model disputes the labels of {len(result.issues):,} of {result.checked:,} rows: check them "
                "in the table below, and tick accept where the suggested label is right.")
    with metric_row():
        st.metric("Rows flagged", len(result.issues), width="content")
        st.metric("Rows checked", result.checked, width="content")
        st.metric("Quick model's accuracy", f"{result.probe_accuracy:.1%}", width="content",
                  help="How often the quick model (a linear probe) names the annotated label of a row it did not "
                  "see: its disagreement means more when this is high.")
    for note in result.notes:
        st.caption(escape_markdown(note))
    if result.issues.empty:
        st.success("No row's label is disputed by the others.")
        return result.issues
    # The text beside its labels and wide: last, it sat off a 1280-pixel screen, and out of the screen reader's
    # table, which holds the columns in view. Probabilities rounded: that table reads the values, not the format.
    shown = result.issues.assign(accept=False).round({"label_prob": 3, "suggested_prob": 3})
    edited = st.data_editor(
        shown[["accept", *ISSUES_SHOWN_FIRST, *(c for c in result.issues.columns if c not in ISSUES_SHOWN_FIRST)]],
        key=f"{key}_issues",
        alt="Rows whose label is disputed",
        hide_index=True,
        height=320,
        disabled=list(result.issues.columns),  # only the boxes: the rows are the audit's
        column_config={
            "accept": st.column_config.CheckboxColumn("accept", help="Take the suggested label for this row"),
            "text": st.column_config.TextColumn("text", width="large"),
            "row": st.column_config.NumberColumn("row", help="Position in its split, as loaded (a carved "
                                                 "validation or test split is drawn from train)"),
            "label_prob": st.column_config.ProgressColumn(
                "confidence in its label", min_value=0.0, max_value=1.0, format="%.3f",
                help="The quick model's probability of the annotated label"),
            "suggested_prob": st.column_config.ProgressColumn(
                "confidence in the suggestion", min_value=0.0, max_value=1.0, format="%.3f",
                help="The quick model's probability of the suggested label"),
        },
    )
    st.download_button("Download the flagged rows (CSV)",
                       spreadsheet_csv(csv_text(spreadsheet_frame(result.issues)).encode()),
                       file_name="label_issues.csv", mime="text/csv", key=f"{key}_issues_csv")
    return result.issues[edited["accept"].to_numpy(dtype=bool)]


# -- tokens ---------------------------------------------------------------------------------------
def filter_groups(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Text filter, label and kind pickers over the mined groups table."""
    c1, c2, c3 = st.columns([2, 2, 1])
    query = c1.text_input("Filter (text or pieces)", key=f"{key}_query")
    labels = c2.multiselect("Labels", sorted(frame["label"].unique()), key=f"{key}_labels")
    kinds = c3.multiselect("Kind", sorted(frame["kind"].unique()), key=f"{key}_kinds")
    out = frame
    if query:
        hit = out["text"].str.contains(query, case=False, regex=False) | out["pieces"].str.contains(
            query, case=False, regex=False
        )
        out = out[hit]
    if labels:
        out = out[out["label"].isin(labels)]
    if kinds:
        out = out[out["kind"].isin(kinds)]
    return out


def render_group_table(frame: pd.DataFrame, key: str) -> None:
    # What a reader weighs first, first: at 1280 px the table was cut at "relevance", and at 125% "score" was off it
    # (the demo review); the score's parts and the pieces follow.
    cols = ["text", "label", "label_rows", "count", "lift", "score", "reads", "kind", "pieces", "relevance",
            "specificity"]
    dataframe(
        frame[[c for c in cols if c in frame.columns]],
        key=f"{key}_table",
        alt="Mined task-token groups",
        hide_index=True,
        height=320,
        column_config={
            "text": st.column_config.TextColumn(help="The group as mined: a word, words, or a fragment (##, Ġ, ▁)."),
            "reads": st.column_config.TextColumn(help="How the group reads in a text ('Ġcon' reads 'con')."),
            "label": st.column_config.TextColumn(help="The label the group points to most."),
            "label_rows": st.column_config.NumberColumn(
                "label rows", help="Rows of the group that hold its label, of its count: few where the group is "
                "spread over many labels and points weakly to any."),
            "score": st.column_config.NumberColumn(format="%.4f", help="Relevance combined with specificity."),
            "count": st.column_config.NumberColumn(help="Training rows that hold the group."),
            "pieces": st.column_config.TextColumn(help="The model tokenizer's sub-tokens of the group."),
            "kind": st.column_config.TextColumn(help="words (one or more whole words) or fragment (a piece that "
                                                "recurs inside several words)."),
            "relevance": st.column_config.NumberColumn(help="How strongly the group points to labels (Mining "
                                                       "options: kl, mi or chi2)."),
            "specificity": st.column_config.NumberColumn(help="How over-represented the group is here against "
                                                         "everyday text of its language (0: no more common; 1 for "
                                                         "every group when not measured)."),
            "lift": st.column_config.NumberColumn(format="%.2f", help="How many times more often the label occurs "
                                                  "in rows with the group than overall."),
        },
    )
    # The columns in one sentence: their tooltips alone left an annotator guessing (the UX review).
    st.caption("How to read it: a group marks its label firmly when most of its rows hold that label (label rows "
               "near count) and lift is high. Score ranks the groups: how strongly a group points to a label "
               "(relevance) times how much more common it is here than in everyday text of its language (specificity). Point at a "
               "column's name for more.")


def render_group_examples(group: Any, train: pd.DataFrame, key: str, limit: int = 8) -> None:
    """Example training rows that contain ``group``, the group in bold (escaped Markdown)."""
    ids = [i for i in group.example_ids if 0 <= i < len(train)]
    if not ids:
        needle = group.surface.lower()
        ids = train.index[train["text"].str.lower().str.contains(needle, regex=False)].tolist()
    st.markdown(
        f"**{escape_markdown(group.text)}** → label _{escape_markdown(group.label)}_ · in {group.count} rows"
        f"{'' if group.label_rows is None else f', {group.label_rows} of them of this label'} · lift {group.lift:.2f}"
    )
    for i in ids[:limit]:
        row = train.loc[i]
        st.markdown(f"- {highlight_markdown(row['text'], group.surface)}  ·  _{escape_markdown(row['label'])}_")


# -- sensitivity and masks ------------------------------------------------------------------------
HEATMAP_LABELLED_CELLS = 80
"""Heatmaps of at most this many cells print each cell's value in it (more would not fit: a 30-layer model)."""


def still_using(previous: Any) -> None:
    """Under a data pick that cannot be used (yet): which data set the sidebar and the other pages keep."""
    if previous is not None:
        st.caption(f"The other pages still use {escape_markdown(previous.name)}.")


def text_last(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``text`` column moved to the end: a long text first pushed the labels, predictions and
    probabilities beside it off a 1280-pixel screen."""
    return frame[[c for c in frame.columns if c != "text"] + (["text"] if "text" in frame.columns else [])]


def layer_module_grid(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """``table[value]`` as a layers x modules grid (summed per cell), the modules in the model's order; a cell of
    missing values alone stays missing (blank), not 0."""
    grid = table.groupby(["layer", "module"])[value].sum(min_count=1).unstack("module")
    return grid[[m for m in MODULE_ORDER if m in grid.columns] + [m for m in grid.columns if m not in MODULE_ORDER]]


def heatmap(table: pd.DataFrame, value: str, title: str, key: str, colorscale: str = "Viridis",
            diverging: bool = False, zrange: tuple[float, float] | None = None, number: str = ".2g") -> None:
    """A layers x modules heatmap of ``table[value]`` (embeddings shown as layer 'emb'), its numbers in a table
    beneath. ``diverging``: values of either sign, the colour scale's middle at 0 (not at the data's middle);
    ``zrange``: the colour scale's ends (maps drawn side by side share one), else the data's own; ``number``: the
    cells' d3 format (percentages: ``PERCENT_CELLS``, where ".2g" wrote 100 as "1.0e+2")."""
    if table.empty:
        st.info("Nothing to show.")
        return
    grid = layer_module_grid(table, value)
    # Category labels: plain digits would make plotly use a numeric axis and misplace 'emb'.
    grid.index = ["emb" if i < 0 else f"L{i}" for i in grid.index]
    fig = go.Figure(
        go.Heatmap(
            z=grid.values,
            x=list(grid.columns),
            y=list(grid.index),
            colorscale=colorscale,
            zmid=0 if diverging else None,
            zmin=zrange[0] if zrange else None,
            zmax=zrange[1] if zrange else None,
            texttemplate=f"%{{z:{number}}}" if grid.size <= HEATMAP_LABELLED_CELLS else None,
            hovertemplate="layer %{y} · %{x}: %{z:.4g}<extra></extra>",
            colorbar=dict(exponentformat="e", title=dict(text=value.replace("_", " "), side="right")),
        )
    )
    fig.update_layout(
        title=title,
        height=360,
        margin=dict(l=10, r=10, t=40, b=10),
        yaxis_title="layer",
        yaxis_type="category",
        xaxis_type="category",
    )
    chart(fig, f"{key}_heat", grid.rename_axis(index="layer", columns="module"), title)


def selected_percent(table: pd.DataFrame) -> pd.DataFrame:
    """A selection's table (``MaskSelection.table``) with ``percent_selected``: each map's share of rows selected in
    percent, as every budget figure is, and blank (NaN) where its rows could not compete, not 0 as if none won (the
    budget review)."""
    return table.assign(percent_selected=table["share_selected"].where(table["eligible"]) * 100)


PERCENT_CELLS = ".3~g"
"""A percentage map's cell format: 100, 3.13, 0.0123."""
SELECTED_BLANKS = ("Blank: below the lowest eligible layer, where no row competes. The embeddings' share is of the "
                   "mined words' rows, the only embedding rows that may be selected.")


OUTLIER_FACTOR = 3.0
"""A heatmap cell this many times the next largest gets a colour scale of its own (``capped_scale``)."""


def capped_scale(table: pd.DataFrame, value: str) -> tuple[tuple[float, float] | None, str]:
    """(colour range, note) for a heatmap of ``table[value]`` whose largest cell dwarfs the rest: the range ends at
    the second largest, and the note names the cell left brighter than the scale (the pooler's score made every
    other cell of the Sensitivity map one dark colour, the UX review); (None, '') otherwise."""
    return shared_capped_scale([table], value)


def shared_capped_scale(tables: Sequence[pd.DataFrame], value: str) -> tuple[tuple[float, float] | None, str]:
    """``capped_scale`` for maps drawn side by side on one colour scale: where a cell of either dwarfs its map's
    others, the scale ends at the largest of the maps' own ends (a capped map's second-largest cell, another's
    largest), and the note names the cells drawn above it (the demo review: the restriction's two maps)."""
    grids = [layer_module_grid(table, value).stack().sort_values(ascending=False) for table in tables]
    outliers = [_dwarfing(cells) for cells in grids]
    if not any(outliers):
        return None, ""
    ends = [float(cells.iloc[1]) if found else float(cells.max()) for cells, found in zip(grids, outliers,
                                                                                         strict=True)]
    end = max(ends)
    above = [f"{where} ({top:.3g}, {top / end:.0f} times that)" for where, top in filter(None, outliers) if top > end]
    low = min(0.0, *(float(cells.min()) for cells in grids))
    return (low, end), (f"The colours end at {end:.3g}, the largest cell but for {', '.join(above)}, drawn at the top "
                        "colour, so that the other cells can be told apart.")


def _dwarfing(cells: pd.Series) -> tuple[str, float] | None:
    """(cell, value) of the largest of ``cells`` (a map's values, largest first) where it is ``OUTLIER_FACTOR``
    times the next or more; None otherwise."""
    if len(cells) < 3 or cells.iloc[1] <= 0 or cells.iloc[0] < OUTLIER_FACTOR * cells.iloc[1]:
        return None
    layer, module = cells.index[0]
    return f"{'emb' if layer < 0 else f'L{layer}'} · {module}", float(cells.iloc[0])


def render_mask_summary(selection: MaskSelection, full_params: int | None, key: str) -> None:
    # torch is loaded by now: a selection holds tensors
    from clm_explore.masks import ADAM_BYTES_PER_PARAM, human_bytes

    lowest = selection.lowest_layer
    total = selection.trainable_params
    with metric_row():  # the names Compare's metrics table uses: selected parameters, trainable parameters
        st.metric("Selected parameters", f"{selection.selected_params:,}", width="content",
                  help="The parameters of the weight rows the budget buys (what the budget counts).")
        st.metric("Share of backbone", f"{selection.share * 100:.3g}%", help="The selected parameters' share.",
                  width="content")
        st.metric("Trainable parameters", f"{total if total is not None else selection.selected_params:,}",
                  help="The selected parameters and what trains with them: the head, and the LayerNorms from the "
                  "lowest selected layer up.", width="content")
        st.metric("Optimizer memory", human_bytes(selection.optimizer_bytes),
                  help="AdamW, for everything trained: value, gradient, 2 moments. A run's peak memory is mostly "
                  "activations, which follow the lowest selected layer more than the budget: on trec6 with the "
                  "default model, about 0.24 GB from layer 4, 0.35 GB from layer 3 and 0.66 GB from the "
                  "embeddings, where full finetuning took 0.81 GB (a review's runs, one each).", width="content")
        st.metric("Lowest selected layer", "–" if lowest is None else ("embeddings" if lowest < 0 else str(lowest)),
                  width="content")
        st.metric("Time per epoch vs full (estimate)", f"about {selection.time_ratio_estimate:.1f}×",
                  width="content",
                  help="Estimated from the work skipped: backward stops at the lowest selected layer, and weight "
                  "gradients are taken for the selected rows only. A rough guide that runs high: measured epochs "
                  "on trec6 came in 0.1-0.2 below it (a review's runs). A run's measured time per epoch is its "
                  "epoch_seconds (its metrics on the Runs page); its train seconds add the preparation (mining, "
                  "scoring, the head warm-up), which the estimate leaves out, and no evaluation.")
    if total is not None:
        st.caption(f"{selection.selected_params:,} selected parameters ({selection.share * 100:.3g}% of the backbone) "
                   f"+ {selection.beside_params:,} trained with them (head, LayerNorms) = {total:,} trainable.")
    if full_params:  # what the budget saves in optimizer state, on the same reckoning
        st.caption(f"Full finetuning would train {full_params:,} backbone parameters (optimizer memory "
                   f"{human_bytes(full_params * ADAM_BYTES_PER_PARAM)} without its head).")
    if selection.budget_note:
        st.caption(selection.budget_note[0].upper() + selection.budget_note[1:])


def render_merge_report(report: MergeReport, key: str) -> None:
    """Mean input length before/after merging groups into single tokens, and the merged groups."""
    if report.mean_length_before:
        with metric_row():
            st.metric("Mean sub-tokens before", f"{report.mean_length_before:.2f}", width="content")
            st.metric("After merging", f"{report.mean_length_after:.2f}", width="content")
            st.metric("Shorter by", f"{report.shortening * 100:.1f}%", width="content")
    if report.merged:
        dataframe(pd.DataFrame(report.merged).astype(str), key=f"{key}_merged", hide_index=True,
                     alt="Merged words")
        # What to do with it (the UX review: "slot [unused0], id 1" and no next step).
        st.caption("Each merged word takes an unused vocabulary slot of the model (its row of the embedding table, "
                   "started as the mean of its pieces'), so the parameter count is unchanged. To train with them, "
                   "launch the method sparse_merged on the Finetune page.")
    if report.note:
        st.caption(escape_markdown(report.note))


def share_of_total(table: pd.DataFrame) -> pd.DataFrame:
    """(layer, module, share): each cell's share of the summed score (comparable across reports)."""
    out = table[["layer", "module", "score"]].copy()
    out["share"] = out["score"] / max(float(out["score"].sum()), 1e-30)
    return out[["layer", "module", "share"]]
