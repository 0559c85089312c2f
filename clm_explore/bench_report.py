"""The benchmark's self-contained HTML page: the summary and comparison tables and plotly figures (Pareto,
stability, differences with their intervals, cost, time-to-accuracy curves, mask overlap, mask placement)."""

from __future__ import annotations

import html
import json
import math

import numpy as np
import pandas as pd

from clm_explore.bench_results import (
    COMPARISON_LEVEL,
    OVERLAP_METHODS,
    collapsed_note,
    devices_note,
    timing_note,
)


def _label(method: str, budget: float | None) -> str:
    return method if budget is None or (isinstance(budget, float) and math.isnan(budget)) else f"{method}@{budget:g}"


def figures(results: pd.DataFrame, summary: pd.DataFrame, masks: pd.DataFrame, overlap: pd.DataFrame,
            comparison: pd.DataFrame | None = None) -> list:
    """The report's plotly figures (an empty list when no cell succeeded)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if summary.empty:
        return []
    s = summary.assign(label=[_label(m, b) for m, b in zip(summary["method"], summary["budget"], strict=True)])
    pareto = go.Figure()
    for n, (method, g) in enumerate(s.groupby("method", sort=False)):
        g = g.sort_values("trainable_share_mean")  # a line along the share, whatever order --budgets gave
        # A marker shape per method: random, fisher, gradient and sparse sit at one share, and in one shape the
        # last drawn hid the others (the bench review).
        pareto.add_trace(go.Scatter(x=g["trainable_share_mean"], y=g["accuracy_mean"], mode="markers+lines",
                                    name=method, text=g["label"], error_y=_spread(g["accuracy_std"]),
                                    marker={"symbol": MARKER_SYMBOLS[n % len(MARKER_SYMBOLS)], "size": 9}))
    front = _pareto_front(s)
    pareto.add_trace(go.Scatter(x=front["trainable_share_mean"], y=front["accuracy_mean"], mode="lines",
                                name="Pareto front", line={"dash": "dot", "color": "grey"}))
    pareto.update_layout(title="Accuracy vs trainable share (mean ± std over seeds)",
                         xaxis={"type": "log", "title": "trainable parameters / model parameters"},
                         yaxis={"title": "test accuracy"})
    stability = go.Figure(go.Bar(x=s["label"], y=s["accuracy_mean"], error_y=_spread(s["accuracy_std"]),
                                 text=[f"{a:.3f}" if math.isnan(d) else f"{a:.3f} ± {d:.3f}" for a, d in
                                       zip(s["accuracy_mean"], s["accuracy_std"], strict=True)]))  # one seed: no ±
    stability.update_layout(title="Accuracy per method: mean ± std over seeds (sample std; std = stability)",
                            yaxis={"title": "test accuracy"})
    cost = make_subplots(rows=1, cols=3, subplot_titles=("train seconds: preparation + epochs",
                                                         "training memory (MiB above the loaded model)",
                                                         "examples / second"))
    # The preparation (mining and scoring rows, the head warm-up) stacked under the epochs: inside one bar, a row
    # method's 0.5 s of scoring read as slower training than full finetuning's (the bench review).
    prep = s["prep_seconds_mean"].fillna(0) if "prep_seconds_mean" in s else 0 * s["train_seconds_mean"]
    cost.add_trace(go.Bar(x=s["label"], y=prep, name="preparation", marker_color="#9aa5b1"), row=1, col=1)
    cost.add_trace(go.Bar(x=s["label"], y=s["train_seconds_mean"] - prep, name="epochs", marker_color="#1f77b4",
                          error_y=_spread(s["train_seconds_std"])), row=1, col=1)
    for col, key in enumerate(("peak_memory_mb", "examples_per_second"), start=2):
        cost.add_trace(go.Bar(x=s["label"], y=s[f"{key}_mean"], error_y=_spread(s[f"{key}_std"]),
                              showlegend=False, marker_color="#1f77b4"), row=1, col=col)
    cost.update_layout(title="Cost per method", barmode="stack")
    figs = [pareto, stability]
    if comparison is not None and not comparison.empty:
        figs.append(_difference_figure(comparison))
    figs += [cost, _curves_figure(results)]
    if not overlap.empty:
        figs.append(_overlap_figure(overlap))
    if not masks.empty:
        figs.append(_mask_figure(masks))
    return figs


MARKER_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "cross", "star", "triangle-down", "pentagon",
                  "hexagon", "star-square", "hourglass")


def _spread(std: pd.Series) -> dict:
    """Error bars of a std over seeds, drawn only where there is one: a single seed's missing std drew a flat
    whisker that read as no spread at all (the bench review)."""
    return {"array": std.fillna(0), "visible": bool(std.notna().any())}


def _pareto_front(s: pd.DataFrame) -> pd.DataFrame:
    """Points no other point beats on both accuracy (higher) and trainable share (lower)."""
    ordered = s.sort_values(["trainable_share_mean", "accuracy_mean"], ascending=[True, False])
    best, keep = -np.inf, []
    for i, acc in zip(ordered.index, ordered["accuracy_mean"], strict=True):
        if acc > best:
            keep.append(i)
            best = acc
    return ordered.loc[keep]


def _difference_figure(comparison: pd.DataFrame):
    """Accuracy difference of each pair in points, with its interval: a bar whose whiskers cross 0 is a tie."""
    import plotly.graph_objects as go

    c = comparison.fillna({"accuracy_low": comparison["accuracy_diff"], "accuracy_high": comparison["accuracy_diff"]})
    labels = [f"{_label(m, b)} − {_label(v, vb)}" for m, b, v, vb in
              zip(c["method"], c["budget"], c["versus"], c["versus_budget"], strict=True)]
    points = c["accuracy_diff"] * 100
    fig = go.Figure(go.Bar(x=labels, y=points, text=[f"{p:+.2f}" for p in points],
                           error_y={"type": "data", "symmetric": False,
                                    "array": (c["accuracy_high"] - c["accuracy_diff"]) * 100,
                                    "arrayminus": (c["accuracy_diff"] - c["accuracy_low"]) * 100}))
    fig.update_layout(title=f"Test accuracy difference in points, mean over seeds with its {COMPARISON_LEVEL:.0%} "
                            "interval (Welch; none with one seed a side or no spread)", yaxis={"title": "points"})
    return fig


CURVE_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
"""The line style of each seed's validation curve (its method's colour)."""


def _curves_figure(results: pd.DataFrame):
    import plotly.colors
    import plotly.graph_objects as go

    fig = go.Figure()
    done = results[results["status"] == "succeeded"]
    # A colour per method (and budget), a dash per seed: plotly's ten colours cycled over every cell, and "full s0"
    # and "gradient@0.01 s0" came out the same blue (the bench review).
    palette = plotly.colors.qualitative.Dark24
    labels = list(dict.fromkeys(_label(m, b) for m, b in zip(done["method"], done["budget"], strict=True)))
    seeds = sorted(done["seed"].unique())
    curves = [(_label(r["method"], r["budget"]), r["seed"], json.loads(r["val_curve"] or "[]"))
              for _, r in done.iterrows()]
    curves = [(label, seed, curve) for label, seed, curve in curves if curve]
    averaged = len(curves) > MAX_CURVES
    if averaged:  # one mean curve per method and budget: 350 cells drew 350 curves and a legend of 350 (scale review)
        curves = [(label, None, _mean_curve([c for name, _, c in curves if name == label])) for label in labels
                  if any(name == label for name, _, _ in curves)]
    shown: set[str] = set()
    for label, seed, curve in curves:
        fig.add_trace(go.Scatter(
            x=[p["seconds"] for p in curve], y=[p["accuracy"] for p in curve], mode="lines+markers",
            # a legend entry per method and budget (its first seed's), which shows or hides all its seeds
            name=label if averaged else f"{label} s{seed}", legendgroup=label, showlegend=averaged or label not in shown,
            line={"color": palette[labels.index(label) % len(palette)],
                  "dash": "solid" if seed is None else CURVE_DASHES[seeds.index(seed) % len(CURVE_DASHES)]}))
        shown.add(label)
    title = "Validation accuracy after each epoch vs training seconds" + (
        f" (mean over seeds: {len(done)} cells)" if averaged else "")
    fig.update_layout(title=title, xaxis={"title": "seconds"}, yaxis={"title": "validation accuracy"},
                      legend={"groupclick": "togglegroup"})
    return fig


MAX_CURVES = 60
"""The most cells the curves chart draws one by one; a larger grid draws each method and budget's mean over seeds."""


def _mean_curve(curves: list[list[dict]]) -> list[dict]:
    """The epoch-by-epoch mean (seconds, accuracy) of seeds' curves, over the epochs every one of them reached."""
    epochs = min(len(curve) for curve in curves)
    return [{"seconds": float(np.mean([c[i]["seconds"] for c in curves])),
             "accuracy": float(np.mean([c[i]["accuracy"] for c in curves]))} for i in range(epochs)]


def _overlap_figure(overlap: pd.DataFrame):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    budgets = sorted(overlap["budget"].unique())
    fig = make_subplots(rows=1, cols=len(budgets), subplot_titles=[f"budget {b:g}" for b in budgets])
    for col, budget in enumerate(budgets, start=1):
        mean = overlap[overlap["budget"] == budget].groupby(["method_a", "method_b"])["jaccard"].mean()
        names = [m for m in OVERLAP_METHODS if m in set(mean.index.get_level_values(0)) | set(mean.index.get_level_values(1))]
        z = [[1.0 if a == b else mean.get((a, b), mean.get((b, a), np.nan)) for b in names] for a in names]
        fig.add_trace(go.Heatmap(z=z, x=names, y=names, zmin=0, zmax=1, colorscale="Blues", showscale=col == 1,
                                 text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}"),
                      row=1, col=col)
    fig.update_layout(title="Row-mask overlap (Jaccard, mean over seeds)")
    return fig


def _mask_figure(masks: pd.DataFrame):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    first = masks[masks["seed"] == masks["seed"].min()]
    runs = list(first.groupby(["method", "budget"], sort=False))
    # Rows of MASK_PANELS_PER_ROW: 30 panels in one row were 30 px each at a laptop's width (the scale review)
    cols = min(len(runs), MASK_PANELS_PER_ROW)
    rows = -(-len(runs) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[_label(m, b) for (m, b), _ in runs],
                        vertical_spacing=min(0.3 / rows, 0.12))
    shares = first["share_selected"].dropna()  # blank: a layer below the row floor, drawn as a gap
    top = max(float(shares.max()), 1e-12) if len(shares) else 1.0  # one colour scale for every panel, as the bar says
    for i, (_, g) in enumerate(runs):
        # one value per cell; "max" keeps a blank blank (a sum would draw it as 0), dropna=False keeps its column
        table = g.pivot_table(index="module", columns="layer", values="share_selected", aggfunc="max", dropna=False)
        fig.add_trace(go.Heatmap(z=table.to_numpy(), x=[str(c) for c in table.columns], y=list(table.index),
                                 colorscale="Viridis", zmin=0, zmax=top, showscale=i == 0),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(title="Share of rows selected per (layer, module), first seed (-1 = embeddings)",
                      height=max(450, 300 * rows))
    return fig


MASK_PANELS_PER_ROW = 4
"""The mask figure's panels a row (one per method and budget)."""


def render_report(results: pd.DataFrame, summary: pd.DataFrame, masks: pd.DataFrame, overlap: pd.DataFrame,
                  tuning: pd.DataFrame | None, config: dict, comparison: pd.DataFrame | None = None) -> str:
    """A self-contained HTML page: the summary and comparison tables, the figures (plotly.js inlined once), notes."""
    figs = figures(results, summary, masks, overlap, comparison)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs)]
    failed = results[results["status"] != "succeeded"]
    esc = html.escape
    shots = (f"; {config['shots']} training rows per label, one draw for every seed (data seed "
             f"{config.get('data_seed', 0)})" if config.get("shots") else "")
    grid = (f"{', '.join(config.get('methods', ()))} on {config.get('data', '?')} with {config.get('model', '?')}: "
            f"{config.get('seeds', '?')} seed(s), {config.get('epochs', '?')} epoch(s){shots}")
    notes = [note for note in (collapsed_note(results), devices_note(results),
                               timing_note(results)) if note]
    # The settings folded: the page opened on a line of raw JSON (the bench review).
    body = [f"<h1>clm-explore benchmark</h1><p>{esc(grid)}</p>",
            f"<details><summary>Grid settings (bench.json)</summary><pre>{esc(json.dumps(config, indent=2))}</pre>"
            "</details>", *(f"<p><b>Note:</b> {esc(note)}.</p>" for note in notes),
            "<h2>Summary (mean and sample std, ddof 1, over seeds)</h2>", _html_table(summary)]
    if comparison is not None and not comparison.empty:
        body += [f"<h2>Differences (method − versus: mean over seeds, {COMPARISON_LEVEL:.0%} Welch interval "
                 "low..high; std_ratio = the method's accuracy std / the versus method's)</h2>",
                 _html_table(comparison)]
    if tuning is not None:
        body += ["<h2>Learning-rate sweep (with the row score under tune_score and tune_spread; validation accuracy, seed 0; "
                 "edge: the chosen rate is still the lowest or highest tried)</h2>", _html_table(tuning)]
    if len(failed):
        body += [f"<h2>Cells that did not finish ({len(failed)})</h2>",
                 _html_table(failed[["method", "budget", "seed", "status", "error"]])]
    body += ["<h2>Figures</h2>", *parts] if parts else ["<p>No cell finished, so there is nothing to plot.</p>"]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>clm-explore benchmark</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:90%}"
            "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>" + "\n".join(body) + "</body></html>")


def _html_table(frame: pd.DataFrame) -> str:
    """A table with figures to 4 significant digits (learning rates of 2e-05 too) and a blank where a figure does not
    apply (a full finetune's budget and lowest layer): pandas' nullable columns print ``<NA>`` whatever ``na_rep``
    says."""
    return frame.astype(object).map(_cell).to_html(index=False)


def _cell(value: object) -> object:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, float):
        return value
    return f"{value:.4g}" if abs(value) < 1 else str(round(value, 4))  # 2e-05, 0.9123; 15234.56, not 1.523e+04
