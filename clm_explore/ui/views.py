"""Render functions: each takes a computed object and a key prefix, and draws it.

User text (data rows, labels, words) is only ever shown through dataframes or through
``st.markdown`` after ``escape_markdown``; never with ``unsafe_allow_html``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from clm_explore.runs import RunRecord

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")
MODULE_ORDER = ["embeddings", "q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out", "pooler"]


def escape_markdown(text: str) -> str:
    """Backslash-escape every character Markdown, LaTeX ($) or Streamlit directives (:) could act on."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def plot_text(text: str) -> str:
    """Text for plotly labels: plotly reads a few HTML-like tags (<b>, <a>), so angle brackets are replaced."""
    return str(text).replace("<", "‹").replace(">", "›")


def highlight_markdown(text: str, needle: str) -> str:
    """``text`` escaped, with every case-insensitive occurrence of ``needle`` in **bold**."""
    needle = needle.replace("##", "").strip()
    if not needle:
        return escape_markdown(text)
    parts, last = [], 0
    for match in re.finditer(re.escape(needle), text, flags=re.IGNORECASE):
        parts.append(escape_markdown(text[last : match.start()]))
        parts.append(f"**{escape_markdown(match.group(0))}**")
        last = match.end()
    parts.append(escape_markdown(text[last:]))
    return "".join(parts)


# -- data -----------------------------------------------------------------------------------------
def render_data_report(report: Any, key: str) -> None:
    """Sizes, a per-label bar chart, lengths, duplicates and leakage; problems in plain words."""
    c = st.columns(4)
    c[0].metric("Rows", report.rows)
    c[1].metric("Labels", len(report.labels))
    c[2].metric("Duplicates", sum(report.duplicates.values()))
    c[3].metric("Leaked texts", report.leakage.get("count", 0))
    st.caption(" · ".join(f"{name}: {n} rows" for name, n in report.splits.items()))
    for note in report.notes:
        st.caption(escape_markdown(note))
    if report.problems:
        st.warning("\n".join(f"- {escape_markdown(p)}" for p in report.problems))
    else:
        st.success("No problems found.")
    counts = pd.DataFrame(report.label_counts).T.rename_axis("label").reset_index()
    counts["label"] = counts["label"].map(plot_text)
    long = counts.melt(id_vars="label", var_name="split", value_name="rows")
    fig = px.bar(long, x="label", y="rows", color="split", title="Rows per label")
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10), xaxis_tickangle=-45)
    st.plotly_chart(fig, key=f"{key}_labels")
    lengths = pd.DataFrame(
        {(split, unit): v for split, units in report.lengths.items() for unit, v in units.items()}
    )
    st.markdown("**Text lengths** (characters and words: min, median, 95th percentile, max)")
    st.dataframe(lengths.T, key=f"{key}_lengths")


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
    cols = ["text", "label", "score", "count", "pieces", "kind", "relevance", "specificity", "lift"]
    st.dataframe(
        frame[[c for c in cols if c in frame.columns]],
        key=f"{key}_table",
        hide_index=True,
        height=320,
        column_config={
            "score": st.column_config.NumberColumn(format="%.4f"),
            "lift": st.column_config.NumberColumn(format="%.2f"),
        },
    )


def render_group_examples(group: Any, train: pd.DataFrame, key: str, limit: int = 8) -> None:
    """Example training rows that contain ``group``, the group in bold (escaped Markdown)."""
    ids = [i for i in group.example_ids if 0 <= i < len(train)]
    if not ids:
        needle = group.text.lower()
        ids = train.index[train["text"].str.lower().str.contains(needle, regex=False)].tolist()
    st.markdown(
        f"**{escape_markdown(group.text)}** → label `{group.label}` · in {group.count} rows · "
        f"lift {group.lift:.2f}"
    )
    for i in ids[:limit]:
        row = train.loc[i]
        st.markdown(f"- {highlight_markdown(row['text'], group.text)}  ·  _{escape_markdown(row['label'])}_")


# -- sensitivity and masks ------------------------------------------------------------------------
def heatmap(table: pd.DataFrame, value: str, title: str, key: str, colorscale: str = "Viridis") -> None:
    """A layers x modules heatmap of ``table[value]`` (embeddings shown as layer 'emb')."""
    if table.empty:
        st.info("Nothing to show.")
        return
    grid = table.pivot_table(index="layer", columns="module", values=value, aggfunc="sum")
    grid = grid[
        [m for m in MODULE_ORDER if m in grid.columns] + [m for m in grid.columns if m not in MODULE_ORDER]
    ]
    # Category labels: plain digits would make plotly use a numeric axis and misplace 'emb'.
    grid.index = ["emb" if i < 0 else f"L{i}" for i in grid.index]
    fig = go.Figure(
        go.Heatmap(
            z=grid.values,
            x=list(grid.columns),
            y=list(grid.index),
            colorscale=colorscale,
            hovertemplate="layer %{y} · %{x}: %{z:.4g}<extra></extra>",
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
    st.plotly_chart(fig, key=f"{key}_heat")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"  # pragma: no cover


def render_mask_summary(selection: Any, full_params: int | None, key: str) -> None:
    # The contract named it trainable_params; masks.py calls it selected_params.
    trainable = getattr(selection, "trainable_params", None) or selection.selected_params
    lowest = selection.lowest_layer
    c = st.columns(5)
    c[0].metric("Trainable params", f"{trainable:,}")
    c[1].metric("Share of backbone", f"{selection.share * 100:.3g}%")
    c[2].metric(
        "Optimizer memory", human_bytes(selection.optimizer_bytes), help="AdamW: value, gradient, 2 moments"
    )
    c[3].metric("Lowest selected layer", "–" if lowest is None else ("emb" if lowest < 0 else str(lowest)))
    ratio = getattr(selection, "time_ratio_estimate", None)
    c[4].metric(
        "Time per epoch vs full",
        f"{ratio:.2f}×" if ratio is not None else "–",
        help="Estimate: backward stops at the lowest selected layer; optimizer touches selected rows only.",
    )
    if full_params:
        st.caption(f"Full finetuning would train {full_params:,} backbone parameters.")


# -- runs and comparison --------------------------------------------------------------------------
NO_BUDGET = ("full", "head")
"""Methods that ignore the mask budget."""


def runs_frame(records: list[RunRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        m = r.metrics
        budget = r.config.get("mask", {}).get("budget") if r.method not in NO_BUDGET else None
        rows.append(
            {
                "run": r.id,
                "method": r.method,
                "status": r.status.value,
                "created": r.created,
                "accuracy": m.get("accuracy"),
                "macro_f1": m.get("macro_f1"),
                "budget %": budget * 100 if isinstance(budget, (int, float)) and budget <= 1 else budget,
                "epochs": r.config.get("epochs"),
                "train s": round(m["train_seconds"], 1) if m.get("train_seconds") is not None else None,
                "error": r.error,
            }
        )
    return pd.DataFrame(rows)


def render_runs_table(records: list[RunRecord], key: str) -> None:
    st.dataframe(
        runs_frame(records),
        key=f"{key}_runs",
        hide_index=True,
        column_config={
            "accuracy": st.column_config.NumberColumn(format="%.3f"),
            "macro_f1": st.column_config.NumberColumn(format="%.3f"),
        },
    )


METRIC_ROWS = (
    "accuracy",
    "macro_f1",
    "train_seconds",
    "examples_per_second",
    "peak_memory_mb",
    "trainable_params",
    "total_params",
    "budget",
    "epochs",
    "seed",
)


def render_metrics_side_by_side(a: RunRecord, b: RunRecord, key: str) -> None:
    rows = {name: [_fmt(a.metrics.get(name)), _fmt(b.metrics.get(name))] for name in METRIC_ROWS}
    frame = pd.DataFrame(rows, index=[f"A: {a.id}", f"B: {b.id}"]).T
    st.dataframe(frame, key=f"{key}_metrics")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def confusion(metrics: dict[str, Any], title: str, key: str) -> None:
    matrix, labels = metrics.get("confusion"), metrics.get("labels")
    if not matrix or not labels:
        st.info("This run has no confusion matrix.")
        return
    labels = [plot_text(x) for x in labels]
    fig = go.Figure(
        go.Heatmap(
            z=np.asarray(matrix),
            x=labels,
            y=labels,
            colorscale="Blues",
            hovertemplate="true %{y} → pred %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        height=420,
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis_autorange="reversed",
    )
    st.plotly_chart(fig, key=f"{key}_confusion")


def f1_difference(a: dict[str, Any], b: dict[str, Any], key: str) -> None:
    fa, fb = a.get("per_label_f1") or {}, b.get("per_label_f1") or {}
    labels = sorted(set(fa) | set(fb))
    if not labels:
        st.info("No per-label F1 in these runs.")
        return
    diff = pd.DataFrame(
        {"label": [plot_text(x) for x in labels], "A - B": [fa.get(x, 0.0) - fb.get(x, 0.0) for x in labels]}
    )
    diff = diff.sort_values("A - B")
    fig = px.bar(
        diff,
        x="A - B",
        y="label",
        orientation="h",
        title="Per-label F1 difference (A − B)",
        color="A - B",
        color_continuous_scale="RdBu",
        range_color=[-1, 1],
    )
    fig.update_layout(height=max(300, 18 * len(labels)), margin=dict(l=10, r=10, t=40, b=10))
    st.plotly_chart(fig, key=f"{key}_f1diff")


def disagreements(pred_a: pd.DataFrame, pred_b: pd.DataFrame) -> pd.DataFrame:
    """Test rows where the two runs predict differently, with which one is right."""
    both = pred_a[["row", "text", "label", "pred", "prob"]].merge(
        pred_b[["row", "pred", "prob"]], on="row", suffixes=("_a", "_b")
    )
    both = both[both["pred_a"] != both["pred_b"]].copy()
    both["right"] = np.select(
        [both["pred_a"] == both["label"], both["pred_b"] == both["label"]], ["only A", "only B"], "neither"
    )
    return both.reset_index(drop=True)


def render_attribution(result: Any, title: str) -> None:
    """Words with their attribution: a bar chart (dataframe-safe, no HTML)."""
    st.markdown(
        f"**{escape_markdown(title)}** → {escape_markdown(result.target_label)} "
        f"(p = {result.probability:.2f})"
    )
    frame = pd.DataFrame({"pos": range(len(result.words)), "word": result.words, "score": result.scores})
    fig = go.Figure(
        go.Bar(
            x=frame["score"],
            y=[f"{i}: {plot_text(w)}" for i, w in zip(frame["pos"], frame["word"], strict=True)],
            orientation="h",
            marker_color=np.where(frame["score"] >= 0, "#2a9d8f", "#e76f51"),
        )
    )
    fig.update_layout(
        height=max(200, 22 * len(frame)),
        margin=dict(l=10, r=10, t=10, b=10),
        yaxis_autorange="reversed",
        xaxis_title="attribution",
    )
    st.plotly_chart(fig, key=f"attr_{title}_{hash(tuple(result.words))}")


def render_merge_report(report: Any, key: str) -> None:
    """Mean input length before/after merging groups into single tokens, and the merged groups."""
    fields = vars(report) if hasattr(report, "__dict__") else {}
    before = next((fields[k] for k in ("mean_length_before", "mean_before", "before") if k in fields), None)
    after = next((fields[k] for k in ("mean_length_after", "mean_after", "after") if k in fields), None)
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
        c = st.columns(3)
        c[0].metric("Mean sub-tokens before", f"{before:.2f}")
        c[1].metric("After merging", f"{after:.2f}")
        c[2].metric("Shorter by", f"{(1 - after / before) * 100:.1f}%")
    merged = next((fields[k] for k in ("merged", "merged_groups", "groups", "added") if k in fields), None)
    if merged:
        items = [
            vars(m) if hasattr(m, "__dict__") else ({"group": m} if not isinstance(m, dict) else m)
            for m in merged
        ]
        st.dataframe(pd.DataFrame(items).astype(str), key=f"{key}_merged", hide_index=True)
    note = fields.get("note")
    if note:
        st.caption(escape_markdown(str(note)))


def share_of_total(table: pd.DataFrame) -> pd.DataFrame:
    """(layer, module, share): each cell's share of the summed score (comparable across reports)."""
    out = table[["layer", "module", "score"]].copy()
    out["share"] = out["score"] / max(float(out["score"].sum()), 1e-30)
    return out[["layer", "module", "share"]]


def run_picker(records: list[RunRecord], label: str, default: RunRecord | None, key: str) -> RunRecord:
    ids = [r.id for r in records]
    index = ids.index(default.id) if default is not None and default.id in ids else 0
    picked = st.selectbox(
        label,
        ids,
        index=index,
        key=key,
        format_func=lambda i: f"{i} ({next(r.method for r in records if r.id == i)})",
    )
    return next(r for r in records if r.id == picked)


def render_top_words(top: pd.DataFrame, groups: list[str] | None, title: str, key: str) -> None:
    """Per-label top attributed words; a column marks the ones that are mined groups."""
    from clm_explore.casestudy import is_group_word

    st.markdown(f"**{escape_markdown(title)}**")
    if top.empty:
        st.caption("No words passed the minimum count.")
        return
    shown = top.assign(mined=[bool(groups) and is_group_word(w, groups) for w in top["word"]])
    st.dataframe(
        shown,
        key=f"{key}_top",
        hide_index=True,
        height=300,
        column_config={
            "mined": st.column_config.CheckboxColumn("mined group"),
            "mean_score": st.column_config.NumberColumn(format="%.4f"),
        },
    )


RIGHT = {"all": "All", "only A": "Only A right", "only B": "Only B right", "neither": "Neither right"}


def filter_disagreements(diff: pd.DataFrame, key: str) -> pd.DataFrame:
    """A filter (all / only A right / only B right / neither) and the filtered disagreement table."""
    which = st.radio("Show", list(RIGHT), format_func=RIGHT.get, horizontal=True, key=f"{key}_filter")
    shown = diff if which == "all" else diff[diff["right"] == which]
    st.dataframe(shown, key=f"{key}_disagree", hide_index=True, height=260)
    return shown


def render_top_words_pair(study: Any, a: RunRecord, b: RunRecord, key: str) -> None:
    """Both runs' per-label top words; run A's mined groups mark both (B's own when A has none)."""
    c1, c2 = st.columns(2)
    with c1:
        render_top_words(study.top_a, study.groups_a, f"A: {a.method}", key=f"{key}_a")
    with c2:
        render_top_words(study.top_b, study.groups_a or study.groups_b, f"B: {b.method}", key=f"{key}_b")
    if not study.overlap.empty:
        st.caption("Share of each label's top words that are mined groups")
        st.dataframe(study.overlap.astype({"words": str}), key=f"{key}_overlap", hide_index=True, height=200)
