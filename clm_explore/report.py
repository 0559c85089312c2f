"""A self-contained HTML report of one run, or of two runs side by side.

``build_report(run_a, run_b, data, out_path)`` writes one HTML file with no network needs (plotly.js is
inlined once): the runs' metrics, confusion matrices, per-label F1 and its difference, each label's top
attributed words with mined groups marked, the mask heatmap (share of selected rows per layer and
module) and disagreement rows with word attributions coloured. Every piece of user text (data rows,
labels, words, paths) goes through ``html.escape``: ``esc`` for the page, ``plot_text`` for plotly's labels.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from clm_explore.attribution import AttributionConfig, TokenAttribution
from clm_explore.casestudy import (
    CaseStudy,
    Comparison,
    case_study,
    known_label_accuracy,
    marked,
    run_name,
    spread_over_labels,
)
from clm_explore.masks import mask_table
from clm_explore.metrics import (
    CONFUSION_COUNTED_LABELS,
    CONFUSION_ROW_PX,
    SIDE_BY_SIDE_LABELS,
    confusion_table,
)
from clm_explore.modeling import ModelSourceError
from clm_explore.runs import read_json_object
from clm_explore.sensitivity import MODULE_ORDER

METRIC_KEYS = (
    "method", "accuracy", "macro_f1", "seed", "epochs", "train_seconds", "examples_per_second",
    "peak_memory_mb", "trainable_params", "total_params", "budget",
)  # fmt: skip

METRIC_NAMES = {"peak_memory_mb": "training memory, MiB (peak above the loaded model)"}
"""Rows named in words where metrics.json's key would mislead: the memory is the training loop's, not the process's
(the metrics review)."""

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.group { font-weight: bold; }
.group::after { content: " \\2605"; color: #b8860b; }
.row-text span { padding: 1px 2px; border-radius: 3px; }
.side { display: flex; gap: 2em; flex-wrap: wrap; }
.note { color: #666; font-size: 0.9em; }
.warn { background: #fff4e5; border-left: 4px solid #e08a00; padding: 4px 8px; }
th, td, .row-text span, bdi { unicode-bidi: isolate; }
.scroll { overflow-x: auto; position: relative; }  /* relative: it clips the .sr text inside it too */
.against { text-decoration: underline dotted; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
.key span { padding: 1px 4px; border-radius: 3px; }
@media (max-width: 700px) { body { margin: 0.6em; } }
"""
# isolate: a text's right-to-left override (U+202E) stays inside its own cell, word or label, and cannot flip the
# figures that follow it on the page.


def esc(value: Any) -> str:
    """Any value as escaped HTML text (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def plot_text(value: Any) -> str:
    """Any value as text for a plotly label, title or legend: plotly renders a few HTML tags there, so < > &
    are escaped; quotes are not, as plotly decodes no &quot; and would show it as typed."""
    return html.escape(str(value), quote=False)


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's metrics.json; {} when missing, unreadable or not a JSON object (a report must not fail on it)."""
    return read_json_object(run_dir / "metrics.json")


class ReportPathError(ValueError):
    """The report may not be written at this path; the message says why and what to give instead."""


RUN_FOLDER_MARKERS = ("clm_run.json", "config.json")
"""Files that make a folder a run folder (finetune's record, a model's config): a report is not written inside one."""


def check_out_path(out_path: str | Path) -> Path:
    """The report's path, refused where writing it would destroy something or cannot work: it must end in .html; an
    existing file is replaced only when it is an HTML page (an earlier report), never a data file or a run's file;
    not inside a run folder; its folder must be a folder (or creatable) that can be written. Touches nothing.

    Raises:
        ReportPathError: what stands in the way, and what to do.
    """
    out = Path(out_path).expanduser()
    if out.is_dir():
        raise ReportPathError(f"{out} is a folder; give the HTML file to write, e.g. {out / 'report.html'}.")
    if out.suffix.lower() != ".html":
        raise ReportPathError(f"{out} does not end in .html; the report is one HTML file: give a name ending in "
                              ".html, e.g. report.html.")
    _check_out_folder(out)
    if out.exists() or out.is_symlink():
        _check_replaceable(out)
    run = _enclosing_run_folder(out)
    if run is not None:
        raise ReportPathError(f"{out} is inside the run folder {run}; write the report outside it, e.g. "
                              f"{run.parent / (run.name + '-report.html')}.")
    return out


def _check_out_folder(out: Path) -> None:
    """The nearest existing folder above ``out`` is a folder that can be written (the missing ones are made then),
    or ``out`` itself can be (an existing file is written in place)."""
    folder = out.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ReportPathError(f"{out}: {folder} is a file, not a folder; choose another place for the report.")
    if out.is_file() and not os.access(out, os.W_OK):
        raise ReportPathError(f"{out} cannot be written (permission denied); choose another file.")
    if not out.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise ReportPathError(f"{out}: the folder {folder} cannot be written (permission denied); choose a folder "
                              "you can write to.")


def _check_replaceable(out: Path) -> None:
    """An existing ``out`` is replaced only when it is an HTML page or empty: a mistyped --out must not destroy
    a data file or a run's file."""
    if not out.is_file():
        raise ReportPathError(f"{out} exists and is not a plain file; choose another name for the report.")
    try:
        with out.open("rb") as f:
            head = f.read(1024)
    except OSError as exc:
        raise ReportPathError(f"{out} exists and cannot be read ({exc.strerror or exc}); choose another name for "
                              "the report.") from exc
    if head and not looks_like_html(head):
        raise ReportPathError(f"{out} exists and is not an HTML page (it does not start with <!DOCTYPE html> or "
                              "<html>); the report replaces only an earlier HTML file: choose another name, or move "
                              "that file away.")


def looks_like_html(head: bytes) -> bool:
    """Whether a file's first bytes open an HTML page (<!DOCTYPE html or <html, any case, after whitespace)."""
    text = head.decode("utf-8", errors="ignore").lstrip("\ufeff").lstrip().lower()
    return text.startswith(("<!doctype html", "<html"))


def _enclosing_run_folder(out: Path) -> Path | None:
    """The run folder ``out`` would be written into (at any depth), or None. A config.json counts only when it is a
    model's (model_type or id2label): another project's settings file above the report is no run."""
    try:
        path = out.resolve()
    except (OSError, RuntimeError):  # a link loop: the folders as written
        path = out.absolute()
    for folder in path.parents:
        if (folder / RUN_FOLDER_MARKERS[0]).is_file():
            return folder
        config = read_json_object(folder / RUN_FOLDER_MARKERS[1])
        if "model_type" in config or "id2label" in config:
            return folder
    return None


class _Figures:
    """Turns figures into HTML divs; plotly.js is inlined with the first one only."""

    def __init__(self) -> None:
        self.included = False

    def __call__(self, fig: go.Figure) -> str:
        fig.update_layout(margin={"l": 40, "r": 20, "t": 50, "b": 40}, template="plotly_white")
        out = fig.to_html(full_html=False, include_plotlyjs=not self.included, config={"displaylogo": False})
        self.included = True
        return out


def _confusion_figure(metrics: dict[str, Any], title: str) -> go.Figure | None:
    table = confusion_table(metrics)
    if table is None:
        return None
    counts, predicted, gold = table
    fig = go.Figure(go.Heatmap(z=counts, x=[plot_text(x) for x in predicted], y=[plot_text(x) for x in gold],
                               colorscale="Blues", showscale=False,
                               texttemplate="%{z}" if len(gold) <= CONFUSION_COUNTED_LABELS else None))
    # A row per label tall enough for its name, and every label named (the report review: at 20 labels a fixed
    # 420 px named 7 of them, in rows 5 px tall), as the app's confusion matrices are.
    fig.update_layout(title=plot_text(title), xaxis_title="predicted", yaxis_title="gold",
                      height=max(420, CONFUSION_ROW_PX * len(gold) + 160), xaxis_dtick=1, yaxis_dtick=1,
                      xaxis_type="category", yaxis_type="category")  # coded labels (1, 10, 1000) are names
    fig.update_yaxes(autorange="reversed")
    return fig


def _confusion_section(runs: list[tuple[str, dict[str, Any]]], fig: Callable[[go.Figure], str]) -> str:
    """Each run's confusion matrix with its counts as a table; side by side while they are small, else each the
    page's width (as the app draws them)."""
    parts = []
    for name, metrics in runs:
        title = f"Confusion {name}"
        figure = _confusion_figure(metrics, title)
        if figure is None:
            continue
        counts, predicted, gold = confusion_table(metrics)
        numbers = pd.DataFrame([list(r) for r in counts], index=pd.Index(list(gold), name="gold \\ predicted"),
                               columns=list(predicted))
        parts.append(f"<div>{_figure(fig, figure, title, numbers)}</div>")
    labels = max((len(m.get("labels") or []) for _, m in runs), default=0)
    return f"<div class='side'>{''.join(parts)}</div>" if labels <= SIDE_BY_SIDE_LABELS else "".join(parts)


def _f1_figure(ma: dict[str, Any], mb: dict[str, Any] | None, names: tuple[str, str]) -> go.Figure | None:
    f1a = ma.get("per_label_f1") or {}
    if not f1a:
        return None
    f1b = (mb or {}).get("per_label_f1") or {}
    # The runs' own label order (metrics.json keeps it; sorted as text, "10" came before "2"), a label either run
    # scored; a label a run has no F1 for (neither in its test rows nor predicted) is a gap, not a bar at 0.
    labels = list(f1a) + [x for x in f1b if x not in f1a]
    fig = go.Figure(
        go.Bar(x=[plot_text(x) for x in labels], y=[f1a.get(x) for x in labels], name=plot_text(names[0]))
    )
    if f1b:
        fig.add_bar(x=[plot_text(x) for x in labels], y=[f1b.get(x) for x in labels], name=plot_text(names[1]))
        diff = [f1a[x] - f1b[x] if x in f1a and x in f1b else None for x in labels]
        fig.add_scatter(x=[plot_text(x) for x in labels], y=diff, name="difference (a - b)", mode="markers",
                        marker={"symbol": "diamond", "size": 9, "color": "black"})  # fmt: skip
    fig.update_layout(title="Per-label F1", barmode="group", height=420, yaxis_title="F1", xaxis_type="category")
    return fig


def _share_grid(table: pd.DataFrame) -> pd.DataFrame:
    """A (module x layer) grid of the table's ``share``, the layers in order (emb first)."""
    pivot = table.pivot_table(index="module", columns="layer", values="share", aggfunc="mean", sort=False)
    modules = sorted(pivot.index, key=lambda m: (MODULE_ORDER.index(m) if m in MODULE_ORDER else len(MODULE_ORDER), m))
    return pivot.loc[modules, sorted(pivot.columns, key=lambda x: -1 if x == "emb" else int(x))]


def _mask_figure(table: pd.DataFrame, title: str, zmax: float | None = None) -> go.Figure | None:
    """The share heatmap of ``table``; ``zmax``: the top of a colour scale shared with the map beside it."""
    if table.empty:
        return None
    pivot = _share_grid(table)
    fig = go.Figure(
        go.Heatmap(z=pivot.values, x=[f"layer {plot_text(x)}" for x in pivot.columns],
                   y=[plot_text(m) for m in pivot.index], colorscale="Viridis", colorbar={"title": "share"},
                   zmin=0 if zmax else None, zmax=zmax or None,
                   hovertemplate="%{y} %{x}: %{z:.3%}<extra></extra>")
    )  # fmt: skip
    fig.update_layout(title=plot_text(title), height=160 + 28 * len(pivot.index))
    return fig


def _shared_top(tables: list[pd.DataFrame]) -> float | None:
    """The top of one colour scale for maps drawn together (the report review: a sparse run's 10% and full
    finetuning's 100% were both the brightest colour of their own scale); None for a single map."""
    shares = [float(t["share"].max()) for t in tables if not t.empty]
    return max(shares) if len(shares) > 1 and max(shares) > 0 else None


def _scale_note(top: float | None) -> str:
    return f"<p class='note'>The maps share one colour scale, 0 to {top:.3g}.</p>" if top else ""


def _changes_section(runs: list[tuple[str, Path]], fig: Callable[[go.Figure], str]) -> str:
    """Each run's weight-change map (``changes.weight_changes``) on one colour scale, with its summary; a note for a
    run whose map cannot be made."""
    from clm_explore.changes import layer_names, weight_changes

    made, parts = [], []
    for name, run in runs:
        try:
            changes = weight_changes(run)
        except ModelSourceError as exc:  # not a run folder, its base model gone or not the one it was trained from
            parts.append(f"<p class='note'>{esc(name)}: no weight-change map ({esc(exc)})</p>")
            continue
        table = changes.table.assign(layer=layer_names(changes.table["layer"]),
                                     share=changes.table["share_params_changed"])
        made.append((name, table, changes.summary()))
    top = _shared_top([table for _, table, _ in made])
    for name, table, summary in made:
        title = f"Share of parameters changed, {name}"
        figure = _mask_figure(table, title, top)
        parts.append((_figure(fig, figure, title, _share_grid(table)) if figure else "")
                     + f"<p class='note'>{esc(name)}: {esc(summary)}</p>")
    return _scale_note(top) + "".join(parts)


def _figure(fig: Callable[[go.Figure], str], figure: go.Figure, title: str, numbers: pd.DataFrame) -> str:
    """A figure with a text alternative: its title as the region's name, and its numbers in a table a screen
    reader (or anyone) can open (the report review: the charts' figures were in hover text only)."""
    table = _table(numbers.reset_index(), digits=3)
    return (f'<div role="figure" aria-label="{esc(title)}">{fig(figure)}</div>'
            f"<details><summary>{esc(title)}: the numbers</summary>{table}</details>")


REPORT_CKA_ROWS = 256
"""Rows whose representations the report's CKA compares (a seeded sample of the study's split)."""


def _similarity_part(study: CaseStudy, names: tuple[str, str], fig: Callable[[go.Figure], str]) -> str:
    """Linear CKA per layer (``layer_views.layer_similarity``) on the study's rows: each run against its base model,
    and A against B; a note for what cannot be made."""
    from clm_explore.changes import layer_axis_labels
    from clm_explore.layer_views import layer_similarity

    texts = study.a.predictions["text"].astype(str).tolist() if "text" in study.a.predictions else None
    run_a, run_b = study.a.run_dir, study.b.run_dir if study.b is not None else None
    pairs = [(f"{names[0]} vs its base model", run_a, None)]
    if run_b is not None:
        pairs += [(f"{names[1]} vs its base model", run_b, None), (f"{names[0]} vs {names[1]}", run_a, run_b)]
    traces, notes = [], []
    for label, run, other in pairs:
        try:
            result = layer_similarity(run, other, texts=texts, max_rows=REPORT_CKA_ROWS)
        except ModelSourceError as exc:  # a base model gone, runs of two depths, too few rows
            notes.append(f"<p class='note'>{esc(label)}: no CKA ({esc(exc)})</p>")
            continue
        traces.append(go.Scatter(x=layer_axis_labels(result.table["layer"]), y=result.table["cka"],
                                 mode="lines+markers", name=plot_text(label)))
        notes.append(f"<p class='note'>{esc(label)}: {esc(result.summary())}"
                     + "".join(f"; {esc(note)}" for note in result.notes) + "</p>")
    figure = go.Figure(traces) if traces else None
    if figure is not None:
        figure.update_layout(title="CKA per layer", height=360, yaxis_title="CKA (debiased)",
                             xaxis_title="the output of (emb = the embeddings)", xaxis_type="category")
    return (fig(figure) if figure else "") + "".join(notes)


TOWARDS_RGB, AGAINST_RGB = "42,157,143", "231,111,81"
"""The app's teal and orange (told apart with the common colour-vision deficiencies, unlike green and red)."""

ATTRIBUTION_KEY = (
    "<p class='note key'>Each word's background is its Integrated-Gradients attribution towards the label explained: "
    f"<span style='background-color: rgba({TOWARDS_RGB},0.6)'>teal</span> pushed the model towards it, "
    f"<span class='against' style='background-color: rgba({AGAINST_RGB},0.6)'>orange, dotted</span> away from it, "
    "stronger colour = larger score, on one scale for the runs of a row (hover or read out: the score). p is the "
    "label's probability; &delta; the integral's convergence error (the scores sum to p &minus; p(reference) up to "
    "it).</p>"
)
LOGIT_KEY_SUM = "the scores sum to the label's logit &minus; its logit at the reference up to it"
"""The key's last clause where the scores explain logits (``AttributionConfig.output``)."""


def attribution_key(output: str = "probability") -> str:
    """The rows' colour key, its sum in the unit the scores explain."""
    if output != "logit":
        return ATTRIBUTION_KEY
    return ATTRIBUTION_KEY.replace("the scores sum to p &minus; p(reference) up to it", LOGIT_KEY_SUM)


def colored_words(item: TokenAttribution | None, top: float | None = None) -> str:
    """The words of one row as spans, background teal (towards the target) or orange and dotted (against), each
    with its score as a tooltip and as text for screen readers; ``top``: the largest |score| of the row's runs (one
    scale for both: a run's 0.022 and the other's 0.0024 drew equally strong on each its own)."""
    if item is None:
        return '<span class="note">not attributed</span>'
    top = top or max((abs(s) for s in item.scores), default=0.0) or 1.0
    spans = []
    for word, score in zip(item.words, item.scores, strict=True):
        alpha = 0.6 * min(abs(score) / top, 1.0)  # at most 0.6: dark text keeps its contrast on the strongest colour
        rgb, kind = (TOWARDS_RGB, "") if score >= 0 else (AGAINST_RGB, ' class="against"')
        spans.append(f'<span{kind} style="background-color: rgba({rgb},{alpha:.2f})" title="{score:+.4f}">'
                     f'{esc(word)}<span class="sr"> ({score:+.3f})</span></span>')
    head = f"<bdi>{esc(item.target_label)}</bdi> (p={item.probability:.2f}, &delta;={item.delta:+.3f})"
    cut = f"; {esc(item.note)}" if item.note else ""  # a text cut at the run's length says so, as in the app
    return f'<div class="row-text" dir="auto">{" ".join(spans)}</div><div class="note">explains {head}{cut}</div>'


def row_scale(*items: TokenAttribution | None) -> float | None:
    """The largest |score| over the row's attributions: the one colour scale of its cells."""
    scores = [abs(s) for item in items if item is not None for s in item.scores]
    return max(scores) if scores and max(scores) > 0 else None


def _table(frame: pd.DataFrame, marked: list[bool] | None = None, word_col: str = "word", digits: int = 4) -> str:
    """An HTML table of ``frame`` (in a box that scrolls sideways on a narrow screen); ``marked``: per row, whether
    its ``word_col`` cell is a mined group (bold)."""
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    body = []
    for i, (_, row) in enumerate(frame.iterrows()):
        cells = []
        for col, value in row.items():
            text = f"{value:.{digits}g}" if isinstance(value, float) else value
            mark = col == word_col and marked is not None and bool(marked[i])
            cells.append(f'<td class="group">{esc(text)}</td>' if mark else f"<td>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _metrics_section(runs: list[tuple[str, dict[str, Any]]], note: str = "") -> str:
    keys = [k for k in METRIC_KEYS if any(k in m for _, m in runs)]
    frame = pd.DataFrame({name: [_metric_text(k, m.get(k)) for k in keys] for name, m in runs},
                         index=[METRIC_NAMES.get(k, k) for k in keys])
    return "<h2>Metrics</h2>" + note + _table(frame.rename_axis("metric").reset_index())


def _metric_text(key: str, value: Any) -> Any:
    """A metric as the report's table shows it: a budget share as the app's percent ("1%", where the report said
    0.01 and the app 1: the UX review), an absolute budget as its count."""
    if value is None:
        return ""
    if key == "budget" and isinstance(value, int | float) and 0 < value <= 1:
        return f"{value * 100:.4g}% of the backbone"
    return value


def _unread_metrics_note(runs: list[tuple[str, Path, dict[str, Any] | None]]) -> str:
    """A note naming the runs whose metrics.json gave nothing (missing or damaged): their columns stay empty, and
    an empty table alone read as a run with no figures."""
    unread = [esc(name) for name, folder, metrics in runs if not metrics]  # names, not the server's paths
    if not unread:
        return ""
    return f"<p class='note'>No figures could be read from the metrics.json of {', '.join(unread)}: missing or damaged.</p>"


def training_split_note(study: CaseStudy) -> str:
    """With rows given (--data), a note that the metrics, confusion matrices and per-label F1 are each run's own
    test-split figures from training (its metrics.json), not figures of those rows; '' otherwise."""
    if not study.from_data:
        return ""
    where = " Each run's accuracy on the --data rows is given below, beside the agreement." if _accuracies(study) else ""
    return ("<p class='note'>These are each run's own test-split figures from training (its metrics.json), not "
            f"figures of the --data rows this page explains.{where}</p>")


def _accuracies(study: CaseStudy) -> list[tuple[float, int]] | None:
    """Both runs' (accuracy, rows counted) on the rows given, where each predicted every row (--data with a second
    run: ``case_study``); None otherwise: without --data, metrics.json has them for these very rows."""
    if not study.from_data or study.b is None:
        return None
    figures = [known_label_accuracy(run) for run in (study.a, study.b)]
    return None if figures[0] is None or figures[1] is None else [figures[0], figures[1]]


def accuracy_text(study: CaseStudy, names: tuple[str, str]) -> str:
    """Each run's accuracy on the rows given (--data), over the rows whose label it classifies; '' where the study
    has no predictions of every one of those rows (``_accuracies``)."""
    figures = _accuracies(study)
    if figures is None:
        return ""
    parts = [f"{name} {acc:.1%} over {n} rows" if n else f"{name} n/a (no row with a label it classifies)"
             for name, (acc, n) in zip(names, figures, strict=True)]
    return (f"Accuracy on these rows: {', '.join(parts)} (the rows whose gold label the run classifies; the runs' "
            "own test-split figures are under Metrics).")


def _top_words_section(study: CaseStudy, names: tuple[str, str]) -> str:
    unit = (" (in logit: each label's score before the softmax, unbounded and in each run's own units, so the two "
            "runs' means compare by rank)" if study.output == "logit" else " (in probability)")
    parts = ["<h2>Top attributed words per label</h2>",
             f'<p class="note">Mean attribution{unit} towards the label each row is explained for, over the rows '
             f"attributed: {esc(study.coverage_text())}. <span class=\"group\">Bold</span> words are mined token "
             "groups.</p>"]  # fmt: skip
    for name, attributed in ((names[0], study.a), (names[1], study.b)):
        unsettled = attributed.unsettled_note() if attributed is not None else ""
        if unsettled:
            # A note, not a warning box: a ranking is what this section reads, and an audience read an orange box
            # as an error (the demo review).
            parts.append(f'<p class="note">{esc(name)}: {esc(unsettled)}.</p>')
    runs = [(names[0], marked(study.top_a, study.groups_a))]
    if study.top_b is not None:
        runs.append((names[1], marked(study.top_b, study.groups_a or study.groups_b)))
    labels = sorted(
        set(study.top_a["label"]) | (set(study.top_b["label"]) if study.top_b is not None else set())
    )
    for label in labels:
        parts.append(f"<h3>{esc(label)}</h3><div class='side'>")
        for name, top in runs:
            part = top[top["label"] == label]
            shown = part[["rank", "word", "mean_score", "count"]]
            parts.append(f"<div><h4>{esc(name)}</h4>{_table(shown, marked=part['mined'].tolist())}</div>")
        parts.append("</div>")
    if not study.overlap.empty:
        overlap = study.overlap.assign(run=study.overlap["run"].map({"a": names[0], "b": names[1]}))
        overlap = overlap.assign(words=overlap["words"].map(", ".join))
        parts.append(
            "<h3>Overlap with mined groups</h3><p class='note'>Each label's top words that are mined groups, of any "
            "label: the token restriction reads every group's positions.</p>"
            + _table(overlap[["run", "label", "k", "in_groups", "share", "words"]])
        )
    return "".join(parts)


def _rows_section(study: CaseStudy, names: tuple[str, str], n: int = 10) -> str:
    a, b = study.a, study.b
    if study.comparison is not None and not study.comparison.disagreements.empty:
        title, frame = "Disagreement rows", study.comparison.disagreements
    else:
        rows = a.rows
        title, frame = (
            "Rows (errors first)",
            pd.concat([rows[rows["pred"] != rows["label"]], rows[rows["pred"] == rows["label"]]]),
        )
    attributed = frame[frame["row"].isin(a.items)]
    # Taken from each label in turn (the report review: a test file sorted by label showed 5 rows of one label)
    labels = dict(zip(attributed["row"].astype(int), attributed["label"].astype(str), strict=True))
    # one run: its errors first; two: every row here is a disagreement
    first = attributed["pred"] != attributed["label"] if "pred" in attributed else attributed["row"].notna()
    order = (spread_over_labels(attributed.loc[first, "row"].astype(int).tolist(), labels)
             + spread_over_labels(attributed.loc[~first, "row"].astype(int).tolist(), labels))[:n]
    frame = attributed.set_index(attributed["row"].astype(int)).loc[order].reset_index(drop=True)
    output = next((item.output for item in a.items.values()), "probability")
    parts = [f"<h2>{title}</h2>", attribution_key(output)]
    if len(attributed) > n:  # the page would otherwise read as if these were all
        parts.append(f"<p class='note'>{n} of {len(attributed)} attributed rows, taken from each label in turn "
                     "(the command line's report --show-rows N, or show_rows=, draws more).</p>")
    if study.comparison is not None:
        parts.append(f"<p>{esc(agreement_text(study.comparison, study.target))}</p>")
    accuracy = accuracy_text(study, names)
    if accuracy:
        parts.append(f"<p>{esc(accuracy)}</p>")
    head = "<th>row</th><th>gold</th>" + "".join(f"<th>{esc(x)}</th>" for x in names[: 2 if b else 1])
    body = []
    for _, row in frame.iterrows():
        r = int(row["row"])
        gold = f'<td title="{esc(row["text"])}">{r}</td><td><bdi>{esc(row["label"])}</bdi>{_right(row)}</td>'
        items = [run.items.get(r) for run in ([a, b] if b else [a])]
        top = row_scale(*items)
        cells = [f"<td>{colored_words(item, top)}</td>" for item in items]
        body.append(f"<tr>{gold}{''.join(cells)}</tr>")
    return "".join(parts) + (f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
                             "</tbody></table></div>")


def agreement_text(c: Comparison, target: str = "predicted") -> str:
    """The agreement and the attribution correlations, each with the rows it counts: the agreement covers every
    row with both runs' predictions, the correlations only the attributed rows (disagreements picked first)."""

    def fig(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x:.3f}"

    same = c.row_difference["same_pred"].astype(bool)
    n_agree, n_disagree = int(same.sum()), int((~same).sum())
    text = (
        f"Agreement {c.agreement:.1%} over {c.n_rows} rows. Spearman rank correlation of word attributions over "
        f"the {c.n_attributed} rows both runs attributed: {fig(c.rank_correlation)} pooled, "
        f"{fig(c.mean_row_correlation)} mean per row"
    )
    if n_agree and n_disagree:  # with one group only, its figure is the one above
        text += (
            f"; {fig(c.rank_correlation_agree)} pooled over the {n_agree} of them where the runs agree, "
            f"{fig(c.rank_correlation_disagree)} over the {n_disagree} where they disagree"
        )
    text += "."
    if n_disagree and target == "predicted":  # the report review: read as the models' disagreement in attributions
        text += (" Where the runs disagree, each run's scores explain its own prediction, two different labels, so "
                 "a low correlation there is expected: explaining the gold label in both (the command line's report "
                 "--target gold, or target='gold') compares the same label.")
    if n_disagree and c.n_attributed < c.n_rows:
        text += " The attributed rows put disagreements first, so they are not a random sample of the rows."
    return text


RIGHT_WORDS = {"a": "only A is right", "b": "only B is right", "neither": "neither is right"}
"""A disagreement row's ``right`` in the Compare page's words."""


def _right(row: pd.Series) -> str:
    if "right" not in row:
        return ""
    return f"<br><span class='note'>{esc(RIGHT_WORDS.get(str(row['right']), row['right']))}</span>"


def build_report(
    run_a: str | Path,
    run_b: str | Path | None = None,
    data: Any = None,
    out_path: str | Path = "report.html",
    cfg: AttributionConfig | None = None,
    k: int = 10,
    min_count: int = 2,
    max_rows: int | None = 300,
    on_progress: Callable[[str, int, int], None] | None = None,
    progress: bool | None = None,
    show_rows: int = 10,
) -> Path:
    """Write the HTML report of run_a (and run_b side by side) and return its path.

    Args:
        run_a: a run (e.g. the sparse run): its folder or run id, ``FinetuneResult`` or registry record.
        run_b: an optional second run, in the same forms (e.g. full finetuning).
        data: test rows to explain instead of the runs' predictions.csv: a DataFrame (text, label),
            an ``AnnotatedData`` or a data path (its test split).
        out_path: the HTML file written.
        cfg: attribution settings; k, min_count: top words per label; max_rows: rows attributed.
        on_progress, progress: the attributions' progress, as ``case_study`` takes them.
        show_rows: rows drawn word by word at the end (disagreements first, taken from each label in turn).
    """
    check_out_path(out_path)  # before the attributions, which take minutes on a real model
    study = case_study(run_a, run_b, data, cfg=cfg, k=k, min_count=min_count, max_rows=max_rows,
                       on_progress=on_progress, progress=progress)
    return write_report(study, out_path, show_rows)


def write_report(study: CaseStudy, out_path: str | Path = "report.html", show_rows: int = 10) -> Path:
    """Write the HTML report of a case study (``case_study``) and return its path; ``show_rows``: rows drawn word
    by word at the end (disagreements first, taken from each label in turn).

    Raises:
        ReportPathError: ``out_path`` may not be written (``check_out_path``), checked before anything is drawn.
    """
    if show_rows < 1:
        raise ValueError(f"show_rows must be >= 1, got {show_rows}")
    out = check_out_path(out_path)
    run_a, run_b = study.a.run_dir, study.b.run_dir if study.b is not None else None
    names = (f"A: {run_name(run_a)}", f"B: {run_name(run_b)}" if run_b else "")
    ma, mb = read_metrics(run_a), read_metrics(run_b) if run_b else None
    note = training_split_note(study) + _unread_metrics_note([(names[0], run_a, ma)] + ([(names[1], run_b, mb)]
                                                                                            if run_b else []))
    fig = _Figures()
    # The runs by name: a report is passed on, and the server's paths to them told its readers nothing else (the
    # UX review).
    body = [f"<h1>clm-explore report</h1><p class='note'>{esc(names[0])}" + (f" vs {esc(names[1])}" if run_b else "")
            + f" &middot; {datetime.now():%Y-%m-%d %H:%M} &middot; {esc(study.coverage_text())}</p>"]  # fmt: skip
    body.append(_metrics_section([(names[0], ma)] + ([(names[1], mb or {})] if run_b else []), note))
    runs = [(names[0], run_a)] + ([(names[1], run_b)] if run_b else [])
    body.append("<h2>Confusion matrices</h2>" + note + _confusion_section([(names[0], ma)] + (
        [(names[1], mb or {})] if run_b else []), fig))
    f1 = _f1_figure(ma, mb, names)
    if f1 is not None:
        f1_numbers = pd.DataFrame({name: pd.Series(m.get("per_label_f1") or {}, dtype=float)
                                   for name, m in [(names[0], ma)] + ([(names[1], mb or {})] if run_b else [])})
        body.append("<h2>Per-label F1</h2>" + note + _figure(fig, f1, "Per-label F1", f1_numbers.rename_axis("label")))
    body.append(_top_words_section(study, names))
    body.append("<h2>Selected rows (masks)</h2>")
    masks = [(name, mask_table(run)) for name, run in runs]
    top = _shared_top([table for _, table in masks])
    body.append(_scale_note(top))
    for name, table in masks:
        title = f"Share of selected rows, {name}"
        mask_fig = _mask_figure(table, title, top)
        body.append(_figure(fig, mask_fig, title, _share_grid(table)) if mask_fig
                    else f"<p class='note'>{esc(name)}: no masks.safetensors</p>")
    body.append("<h2>What training changed</h2><p class='note'>The share of each weight matrix's parameters (its bias "
                "included) that differ from the base model's (the classification head left out).</p>")
    body.append(_changes_section(runs, fig))
    body.append("<h2>Layer by layer</h2><p class='note'>Debiased linear CKA between two models' mean-pooled token "
                "states after each layer, on these rows: 1 = the same representation up to rotation and scale, about "
                "0 = unrelated; lower = training changed what that layer computes.</p>")
    body.append(_similarity_part(study, names, fig))
    body.append(_rows_section(study, names, show_rows))
    # lang and viewport: a phone lays the page out at its own width (it drew 981 px scaled to 38% at 375 px)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>clm-explore report</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
