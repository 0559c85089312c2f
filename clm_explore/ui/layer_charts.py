"""The Compare page's layer views: how alike the two runs' representations are per layer (linear CKA), and what
each attention head reads in a text beside the share of its rows each run's mask selected.

Same rules as ``views``: user text only through plotly labels escaped with ``plot_text`` or through dataframes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from clm_explore.changes import layer_axis_labels
from clm_explore.data import DataError
from clm_explore.layer_views import LayerSimilarity
from clm_explore.modeling import ModelSourceError
from clm_explore.runs import RunRecord, read_json_object
from clm_explore.ui import cache, state, views
from clm_explore.ui.views import escape_markdown, plot_text


def layer_similarity_toggle(a: RunRecord, b: RunRecord, key: str) -> None:
    """A toggle that draws linear CKA per layer: A vs B, and each run vs the base model it was trained from."""
    state.restore(key, False)
    shown = st.toggle("Compare the layers' representations (CKA)", key=key,
                      help="Linear CKA between two models' mean-pooled token states after each layer, on the test "
                      "rows: 1 = the same representation up to rotation and scale; lower = training changed what "
                      "that layer computes.")
    state.keep(key)
    if not shown:
        return
    stamp = {r.id: cache.file_mtime(r.path / "config.json") for r in (a, b)}
    asked = {
        "A vs B": (str(a.path), stamp[a.id], str(b.path), stamp[b.id], ""),
        "A vs its base model": (str(a.path), stamp[a.id], "", 0.0, _base_version(a)),
        "B vs its base model": (str(b.path), stamp[b.id], "", 0.0, _base_version(b)),
    }
    pairs = {}
    for name, key_parts in asked.items():  # each pair on its own: one that cannot be made leaves the others
        try:
            with cache.turn_note():
                pairs[name] = cache.layer_similarity(*key_parts)
        except (ModelSourceError, DataError) as exc:  # a base model gone, two depths, a damaged predictions.csv
            st.warning(escape_markdown(f"{name}: {exc}"))
    if not pairs:
        return
    fig = go.Figure([go.Scatter(x=layer_axis_labels(r.table["layer"]), y=r.table["cka"], mode="lines+markers", name=name,
                                line_dash=dash, marker_symbol=symbol)  # told apart without their colours
                     for (name, r), dash, symbol in zip(pairs.items(), ("solid", "dash", "dot"),
                                                        ("circle", "square", "diamond"), strict=False)])
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), title="CKA per layer",
                      xaxis_title="the output of (emb = the embeddings)", yaxis_title="CKA (debiased)",
                      xaxis_type="category")
    numbers = pd.DataFrame({name: r.table.assign(layer=layer_axis_labels(r.table["layer"])).set_index("layer")["cka"]
                            for name, r in pairs.items()})
    views.chart(fig, f"{key}_cka", numbers, "CKA per layer")
    counts = sorted({r.rows for r in pairs.values()})  # each pair's own count (the layer review: A's said for all)
    notes = sorted({note for r in pairs.values() for note in r.notes})
    st.caption(escape_markdown(f"Over {' or '.join(f'{n:,}' for n in counts)} test rows. " + " ".join(
        f"{name}: {_lowest_text(r)}." for name, r in pairs.items()) + "".join(f" Note: {note}." for note in notes)))


def _lowest_text(result: LayerSimilarity) -> str:
    layer, cka = result.lowest()
    if layer is None:
        return "no CKA (the texts' states do not vary)"
    return f"lowest {cka:.3f} at {'the embeddings' if layer < 0 else f'layer {layer}'}"



def _base_version(run: RunRecord) -> str:
    source = read_json_object(run.path / "clm_run.json").get("source")
    return state.model_version(str(source or ""))


def head_attention_pair(text: str, a: RunRecord, b: RunRecord, key: str) -> None:
    """A toggle that draws, for both runs, each head's attention to the mined task tokens of ``text`` (the share
    of the head's rows each run's mask selected in every cell), then one chosen head's attention map."""
    state.restore(key, False)
    shown = st.toggle("Attention heads", key=key, help="Per layer and head: the attention the text's tokens give "
                      "the run's mined task tokens, and the share of the head's query, key and value rows the run's "
                      "mask selected (row methods). Then one head's attention, token by token.")
    state.keep(key)
    if not shown:
        return
    try:
        # A run that mined no task tokens (full finetuning, LoRA) is read with the other run's: the same data.
        results = [cache.head_attention(str(r.path), cache.file_mtime(r.path / "config.json"), text, str(other.path))
                   for r, other in ((a, b), (b, a))]
    except ModelSourceError as exc:
        st.warning(escape_markdown(str(exc)))
        return
    for column, result, run, side in zip(st.columns(2), results, (a, b), "AB", strict=True):
        with column:
            _task_attention_heatmap(result, f"{side}: {run.method}", key=f"{key}_{side.lower()}")
    layers, heads = results[0].task_attention.shape
    c1, c2 = st.columns(2)
    layer = int(c1.number_input("Layer", 0, layers - 1, layers - 1, key=f"{key}_layer"))
    head = int(c2.number_input("Head", 0, heads - 1, 0, key=f"{key}_head"))
    for column, result, run, side in zip(st.columns(2), results, (a, b), "AB", strict=True):
        with column:
            if layer < result.attention.shape[0] and head < result.attention.shape[1]:
                _attention_map(result, layer, head, f"{side}: {run.method}, layer {layer}, head {head}",
                               key=f"{key}_{side.lower()}_map")


def _task_attention_heatmap(result: object, title: str, key: str) -> None:
    table = result.table()  # type: ignore[attr-defined]
    grid = table.pivot(index="layer", columns="head", values="task_attention")
    picked = table.pivot(index="layer", columns="head", values="selected")
    masked = bool(picked.notna().any().any())
    marks = np.where(picked.fillna(0).to_numpy() > 0, "●", "")  # a dot: the mask took rows of this head
    hover = "layer %{y} · head %{x}: %{z:.1%} of the attention to task tokens"
    fig = go.Figure(go.Heatmap(
        z=grid.values, x=[f"h{h}" for h in grid.columns], y=[f"L{i}" for i in grid.index], colorscale="Blues",
        zmin=0, zmax=1, text=marks, texttemplate="%{text}", customdata=picked.fillna(0).values,
        hovertemplate=hover + ("; %{customdata:.0%} of its q/k/v rows selected" if masked else "") + "<extra></extra>",
    ))
    share = result.task_share  # type: ignore[attr-defined]
    # A short title, the rest beneath: a long one was cut at a half-width chart, and a note above one map alone
    # set the two maps side by side at different heights.
    fig.update_layout(title=f"{title}: attention to task tokens", height=340, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis_type="category", xaxis_type="category")
    numbers = table.set_index(["layer", "head"])
    views.chart(fig, f"{key}_heads", numbers, f"{title}: attention to task tokens per head")
    even = (f"A head spreading its attention evenly gives the task tokens {share:.0%}." if share
            else "No task token in this text.")
    st.caption(even + (" ● = the mask selected rows of this head." if masked else ""))
    for note in result.notes:  # type: ignore[attr-defined]
        st.caption(f"Note: {escape_markdown(note)}.")


def _attention_map(result: object, layer: int, head: int, title: str, key: str) -> None:
    tokens = [f"{i}: {plot_text(t)}" for i, t in enumerate(result.tokens)]  # type: ignore[attr-defined]
    matrix = result.attention[layer, head]  # type: ignore[attr-defined]
    fig = go.Figure(go.Heatmap(z=matrix, x=tokens, y=tokens, colorscale="Purples", zmin=0,
                               hovertemplate="%{y} → %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=max(300, 18 * len(tokens) + 120), margin=dict(l=10, r=10, t=40, b=10),
                      yaxis_autorange="reversed", yaxis_title="query token", xaxis_title="key token",
                      yaxis_type="category", xaxis_type="category")
    numbers = pd.DataFrame(matrix, index=tokens, columns=tokens)
    views.chart(fig, f"{key}_map", numbers, title)
