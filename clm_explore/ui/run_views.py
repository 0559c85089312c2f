"""Render functions for runs: the run table, run pickers and the side-by-side comparison of two runs.

Same rules as ``views``: user text only through dataframes or escaped Markdown, never raw HTML.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from clm_explore.bench_results import COMPARISON_LEVEL, compare_run_groups
from clm_explore.cards import CARD_FILE, ModelCardError, model_card
from clm_explore.config import ATTRIBUTION_OUTPUTS, BUDGET_METHODS, FEW_VALIDATION_ROWS
from clm_explore.data import csv_text
from clm_explore.datareport import plural, row_points
from clm_explore.metrics import (
    CONFUSION_COUNTED_LABELS,
    CONFUSION_ROW_PX,
    SIDE_BY_SIDE_LABELS,
    confusion_table,
)
from clm_explore.modeling import recorded_source
from clm_explore.runs import RunRecord, RunStatus, RunStore, RunStoreError, data_key_name, read_json_object
from clm_explore.ui import cache, state, views
from clm_explore.ui.views import escape_markdown, plot_text, spreadsheet_csv, spreadsheet_frame


def _budget_percent(budget: Any, backbone_params: Any) -> float | None:
    """A budget in percent of the backbone: a fraction as it is, a parameter count over the backbone's parameters
    (the metrics review: a count of 20,000 read 20000.0 under "budget %"); None where neither is known."""
    if not isinstance(budget, int | float):
        return None
    if budget <= 1:
        return budget * 100
    return budget / backbone_params * 100 if isinstance(backbone_params, int | float) and backbone_params else None


def runs_frame(records: list[RunRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        m = r.metrics
        gone = r.is_terminal and not r.path.is_dir()  # deleted or moved outside the app: said, not "succeeded"
        budget = r.config.get("mask", {}).get("budget") if r.method in BUDGET_METHODS else None
        rows.append(
            {
                # The figures first: at a laptop's width the table showed "accu" at its edge (the UX review).
                "run": r.id,
                "method": r.method,
                "status": f"{r.status.value}, folder gone" if gone else r.status.value,
                "accuracy": m.get("accuracy"),
                "macro_f1": m.get("macro_f1"),
                "budget %": _budget_percent(budget, m.get("backbone_params")),
                "epochs": r.config.get("epochs"),
                "stopped after": m.get("stopped_after"),  # an early stop: the epochs set were not all trained
                "seed": r.config.get("seed"),  # a long name's id can lose it (the scale review)
                "train s": round(m["train_seconds"], 1) if m.get("train_seconds") is not None else None,
                "data": data_key_name(str(r.config["data"])) if r.config.get("data") else None,
                "model": model_name(r.config.get("source")) or None,
                "created": r.created,
                "launched here": state.launched_here(r.id),
                "error": FOLDER_GONE if gone and not r.error else r.error,
            }
        )
    return pd.DataFrame(rows)


def folder_said(path: Path, root: Path) -> str:
    """A run's folder as a page shows it: its place under the runs folder, not the server's path to it, which tells
    every user of a shared server how its disk is laid out (the UX review)."""
    try:
        return f"{path.relative_to(root)} in the server's runs folder"
    except ValueError:
        return f"{path.name} (a folder outside the server's runs folder, registered from the command line)"


def unread_files_note(run: RunRecord) -> str:
    """Why a finished run's own files cannot be read ('' when they can): its folder gone, or its metrics.json
    damaged; the pages that read them would otherwise say the run has no confusion matrix or F1s."""
    if not run.path.is_dir():
        return f"{FOLDER_GONE}."
    metrics = run.path / "metrics.json"
    try:
        readable = not metrics.exists() or isinstance(json.loads(metrics.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        readable = False
    if not readable:
        return ("its metrics.json cannot be read (damaged or cut short): its confusion matrix and per-label F1 are "
                "not shown.")
    return ""


FOLDER_GONE = ("its folder is gone from the server (deleted or moved outside the app), and its files with it; Delete "
               "on the Runs page removes it from the list")
"""What the runs table and the Runs page say of a finished run whose folder is no longer there."""


def render_runs_table(records: list[RunRecord], key: str) -> None:
    views.dataframe(  # a cell a run has no figure for reads "–" (``views.MISSING``), not "None"
        runs_frame(records),
        key=f"{key}_runs",
        alt="Runs",
        hide_index=True,
        column_config={
            "accuracy": st.column_config.NumberColumn(format="%.3f"),
            "macro_f1": st.column_config.NumberColumn(format="%.3f"),
            "launched here": st.column_config.CheckboxColumn(help="launched from this browser session"),
            "error": st.column_config.TextColumn(width="large"),  # "the server stopped…" was cut to "the serve…"
        },
    )


METRIC_ROWS = (
    "accuracy",
    "macro_f1",
    "train_seconds",
    "prep_seconds",
    "examples_per_second",
    "peak_memory_mb",
    "trainable_params",
    "selected_params",
    "total_params",
    "budget",
    "lowest_layer",
    "prefix_cache",
    "epochs",
    "seed",
)


OUT_OF_SCOPE_ROWS = ("accuracy", "macro_f1", "auroc", "threshold", "oos_recall", "in_scope_rejected")
"""metrics.json's ``out_of_scope`` parts shown when a run's test split had labels unseen in train."""


METRIC_LABELS = {"macro_f1": "macro-F1", "train_seconds": "training time, s (with preparation)",
                 "prep_seconds": "preparation time, s", "examples_per_second": "examples per second",
                 "peak_memory_mb": "training memory, MiB",
                 "trainable_params": "trainable parameters",
                 "selected_params": "selected parameters (the budget's rows)", "total_params": "total parameters",
                 "budget": "budget %", "lowest_layer": "lowest trained layer", "prefix_cache": "frozen layers cached"}
"""Row names in words (metrics.json's keys in the runs' files and the CLI): the budget in percent as on every other
page, the memory training took above the model as loaded in MiB (2**20 bytes; the model's own weights are not in it,
the metrics review), the training time holding the preparation's, and the trainable parameters the budget's rows plus
the head (and LayerNorms), which a two-layer head makes far more."""
OUT_OF_SCOPE_LABELS = {"accuracy": "with abstention: accuracy", "macro_f1": "with abstention: macro-F1",
                       "auroc": "out of scope: AUROC (top probability)", "threshold": "abstention threshold",
                       "oos_recall": "out-of-scope rows turned away", "in_scope_rejected": "in-scope rows turned away"}
"""The abstention rows' names: their accuracy and macro-F1 are of every test row when a run abstains, not of the
out-of-scope rows (the metrics review: "out of scope: accuracy" read as the latter)."""


def metrics_side_by_side(a: RunRecord, b: RunRecord) -> pd.DataFrame:
    """A row per metric, a column per run (formatted text)."""
    rows = {METRIC_LABELS.get(name, name): [_fmt(_shown_metric(name, r.metrics.get(name), r.metrics))
                                            for r in (a, b)]
            for name in METRIC_ROWS}
    scopes = [r.metrics.get("out_of_scope") or {} for r in (a, b)]
    if any(scopes):  # abstention on the test rows of unseen labels (threshold from validation)
        rows.update({OUT_OF_SCOPE_LABELS[name]: [_fmt(s.get(name)) for s in scopes] for name in OUT_OF_SCOPE_ROWS})
    # Headed by method, the ids in a row of their own: two run ids cut each other off at a projector's width (the
    # demo review).
    rows = {"run": [a.id, b.id], **rows}
    return pd.DataFrame(rows, index=[f"A: {a.method}", f"B: {b.method}"]).T.rename_axis("metric")


def _shown_metric(name: str, value: Any, metrics: dict[str, Any] | None = None) -> Any:
    if name == "budget" and isinstance(value, (int, float)):
        # A fraction in percent, as the row says; a budget given as a parameter count (above 1) says it is one.
        return value * 100 if value <= 1 else f"{int(value):,} parameters"
    if name == "epochs" and metrics:
        return epochs_shown(metrics)
    if name == "lowest_layer" and value == -1:  # as the Budget page names it, not "-1" (the budget review)
        return "embeddings"
    return value


def epochs_shown(metrics: dict[str, Any]) -> Any:
    """The epochs a run was set, with where an early stop ended it and the epoch it saved where that is not the last
    trained: "30 (stopped after 5)" (the few-shot review: a run stopped after 5 of 30 epochs read as 30)."""
    epochs, stopped, saved = metrics.get("epochs"), metrics.get("stopped_after"), metrics.get("saved_epoch")
    said = [f"stopped after {stopped}"] if stopped else []
    if saved is not None and saved != (stopped or epochs):
        said.append(f"saved epoch {saved}")
    return f"{_fmt(epochs)} ({', '.join(said)})" if said else epochs


RUN_FIGURES = ("accuracy", "macro_f1", "train_seconds", "trainable_params", "budget")
"""The figures the Runs page shows of one run before its JSON, named as Compare's table names them."""


def render_run_figures(run: RunRecord) -> None:
    """One run's method and headline figures in words (rounded, '–' for one it lacks), before its files' JSON."""
    with views.metric_row():
        st.metric("Method", run.method, width="content")
        for name in RUN_FIGURES:
            value = run.metrics.get(name)
            st.metric(METRIC_LABELS.get(name, name), _fmt(_shown_metric(name, value)) if value is not None else "–",
                      width="content")
    if said := scored_on_note(run.full_metrics() if run.path.is_dir() else run.metrics):
        st.caption(escape_markdown(said))


SEEDED_NAME = re.compile(r"^(?P<base>.+)-s(?P<seed>\d+)$")
"""A run name the Finetune form gives each seed of one launch (``jobs.launch_seeds``: ``NAME-sSEED``)."""


def seed_group_lines(records: list[RunRecord]) -> list[str]:
    """Per launch of several seeds among ``records`` with two finished or more: their test accuracy's mean and
    sample std, so a spread reads on the Finetune page where the cards give one figure each (the few-shot review:
    the mean and spread lay folded on the Runs page)."""
    groups: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        found = SEEDED_NAME.match(record.name)
        accuracy = record.metrics.get("accuracy")
        if found and record.status is RunStatus.SUCCEEDED and isinstance(accuracy, int | float):
            groups.setdefault(found["base"], []).append((int(found["seed"]), float(accuracy)))
    lines = []
    for base, runs in groups.items():
        if len(runs) >= 2:
            seeds, accuracies = sorted(s for s, _ in runs), [a for _, a in runs]
            lines.append(f"{base}: {len(runs)} seeds ({', '.join(map(str, seeds))}) finished, test accuracy "
                         f"{np.mean(accuracies):.4f} ± {np.std(accuracies, ddof=1):.4f} (mean ± std over seeds)")
    return lines


def app_words(note: str) -> str:
    """A run's note in the app's words: the collapse note's advice names the Finetune form's boxes, not the CLI's
    flags (the few-shot review: browser users were told to try `--lr`)."""
    from clm_explore.training import COLLAPSE_REMEDY, SWITCH_SIDE

    return (note.replace(COLLAPSE_REMEDY, "try a lower Learning rate or more Epochs in the Finetune form")
            .replace("--max-length (up to", "a larger Sub-tokens read per text in the Finetune form (up to")
            .replace(SWITCH_SIDE, f"the Finetune form's '{views.LONG_TEXTS_KEEP}' set to 'end'"))


def scored_on_note(metrics: dict[str, Any]) -> str:
    """The rows a run's test figures stand on, and the labels its macro-F1 averages where test lacks some: a card
    read "accuracy 0.6667" of 9 test rows, and macro-F1 over 5 of 7 labels, with neither said (the few-shot
    review). '' for a run that recorded neither."""
    rows = metrics.get("test_rows")
    if not isinstance(rows, int) or rows <= 0:
        return ""
    said = _scored_on(rows)
    averaged, labels = metrics.get("macro_f1_labels"), metrics.get("labels")
    if isinstance(averaged, int) and isinstance(labels, list) and averaged < len(labels):
        said += (f"; macro-F1 averages the {averaged} of its {len(labels)} labels that test holds (the others have no "
                 "test row to be scored on)")
    return said + "."


def render_metrics_side_by_side(a: RunRecord, b: RunRecord, key: str) -> None:
    # every row in view: at the default ten rows' height the last figures were cut off behind a scroll
    views.dataframe(metrics_side_by_side(a, b), key=f"{key}_metrics", height="content", alt="Metrics of runs A and B")
    st.caption("Selected parameters count the budget's rows; trainable parameters add what trains beside them (the "
               "head, and LayerNorms where the run trains them). Training memory is the training loop's peak above "
               "the model as loaded, not the whole process's.")
    scale = accuracy_scale_note(a.full_metrics().get("test_rows"))
    if scale:
        st.caption(scale)
    for side, run in (("A", a), ("B", b)):
        if said := scope_rows_note(run.metrics.get("out_of_scope") or {}):
            st.caption(escape_markdown(f"{side}: {said}"))


def scope_rows_note(scope: dict[str, Any]) -> str:
    """How many rows a run's out-of-scope figures stand on ('' without them): the in-scope validation rows its
    threshold is a quantile of (rough below FEW_VALIDATION_ROWS, as ``evaluate`` says) and the out-of-scope test rows
    (the few-shot review: thresholds from 10 rows turned away 4.5% to 35.6% of in-scope rows between seeds, and
    0.2222 of the out-of-scope rows was 2 of 9, said nowhere)."""
    said = []
    rows, quantile = scope.get("validation_rows"), scope.get("quantile")
    if isinstance(rows, int) and rows > 0 and quantile is not None and scope.get("threshold") is not None:
        said.append(f"the threshold is the {quantile:.0%} quantile of its {plural(rows, 'in-scope validation row')}'"
                    " top probabilities"
                    + ("; so few rows make a rough quantile, which moves a lot between seeds"
                       if rows < FEW_VALIDATION_ROWS else ""))
    if isinstance(oos := scope.get("rows"), int) and oos > 0:
        said.append(f"{plural(oos, 'out-of-scope test row')} (one is {row_points(oos)} points of the share turned "
                    "away)")
    return "; ".join(said)


def _colour_end(values: pd.Series) -> float:
    """The end of a colour scale symmetric around 0 for ``values``: their largest size (0.01 at least, so that ties
    everywhere draw no scale of zero width)."""
    largest = values.abs().max()
    return max(float(largest) if pd.notna(largest) else 0.0, 0.01)


def accuracy_scale_note(test_rows: Any) -> str:
    """How much one test row moves the accuracy, and what tells a difference from chance: "0.8929 vs 0.8750" read as
    a gap where it was one row of 56 (the UX review)."""
    if not isinstance(test_rows, int) or test_rows <= 0:
        return ""
    return (f"{_scored_on(test_rows)}. Whether a gap is more than chance shows over seeds: launch a few seeds of each "
            "(Finetune's \"Runs (seeds)\") and open \"Compare groups of runs (seeds)\" on the Runs page.")


def _scored_on(rows: int) -> str:
    """The test rows a run's figures stand on, and what one of them is worth."""
    return f"Scored on {plural(rows, 'test row')}: one row is {row_points(rows)} points of accuracy"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, dict):  # e.g. prefix_cache: {"from_layer": 3, "seconds": 5.2, "mb": 71.0} or {"off": why}
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float) and 0.001 <= abs(value) < 1:  # shares and scores: 4 decimals in both columns
        return f"{value:.4f}"  # (a smaller budget keeps its significant digits below)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def confusion_pair(a: dict[str, Any], b: dict[str, Any], titles: tuple[str, str], key: str) -> None:
    """Both runs' confusion matrices, side by side when they are small."""
    labels = max(len(m.get("labels") or []) for m in (a, b))
    places = st.columns(2) if labels <= SIDE_BY_SIDE_LABELS else (st.container(), st.container())
    for place, metrics, title, side in zip(places, (a, b), titles, "ab", strict=True):
        with place:
            confusion(metrics, title, key=f"{key}_{side}")


def confusion(metrics: dict[str, Any], title: str, key: str) -> None:
    table = confusion_table(metrics)
    if table is None:
        st.info("This run has no confusion matrix.")
        return
    counts, predicted, gold = table
    fig = go.Figure(
        go.Heatmap(
            z=np.asarray(counts),
            x=[plot_text(x) for x in predicted],
            y=[plot_text(x) for x in gold],
            colorscale="Blues",
            hovertemplate="true %{y} → pred %{x}: %{z}<extra></extra>",
            # counts in the cells where they fit: by colour alone they were unreadable to a demo's audience
            texttemplate="%{z}" if len(gold) <= CONFUSION_COUNTED_LABELS else None,
        )
    )
    fig.update_layout(
        title=title,
        height=max(420, CONFUSION_ROW_PX * len(gold) + 160),  # a row per label tall enough for its name
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis_autorange="reversed",
        xaxis_dtick=1,  # every label named: plotly's automatic ticks named half of them
        yaxis_dtick=1,
        xaxis_type="category",  # labels are names: codes such as 1, 10, 1000 drew a numeric axis of 1000 ticks
        yaxis_type="category",
    )
    numbers = pd.DataFrame(np.asarray(counts), index=list(gold), columns=list(predicted))
    views.chart(fig, f"{key}_confusion", numbers.rename_axis(index="true", columns="predicted"), title)


F1_DIFFERENCE = "F1 A − B"
"""The F1 difference's column, axis and legend name (the title's minus sign, not a hyphen)."""


def f1_difference(a: dict[str, Any], b: dict[str, Any], key: str) -> None:
    fa, fb = a.get("per_label_f1") or {}, b.get("per_label_f1") or {}
    labels = [x for x in fa if x in fb]  # a label one run has no F1 for (not in its test rows, never predicted)
    # is no difference of its F1 from 0: it is named below the chart instead
    one_sided = [f"{name} has no F1 for {', '.join(map(str, only[:10]))}{' …' if len(only) > 10 else ''}"
                 for name, only in (("A", [x for x in fb if x not in fa]), ("B", [x for x in fa if x not in fb]))
                 if only]
    if not labels:
        st.info("No per-label F1 in these runs." if not one_sided else "No label has an F1 in both runs.")
        return
    diff = pd.DataFrame(
        {"label": [plot_text(x) for x in labels], F1_DIFFERENCE: [fa[x] - fb[x] for x in labels]}
    )
    diff = diff.sort_values(F1_DIFFERENCE)
    fig = px.bar(
        diff,
        x=F1_DIFFERENCE,
        y="label",
        orientation="h",
        title="Per-label F1 difference (A − B)",
        color=F1_DIFFERENCE,
        color_continuous_scale="RdBu",
        # Symmetric around 0 at the largest difference: at [-1, 1] differences of a few points were all near white
        # (the UX review).
        range_color=[-_colour_end(diff[F1_DIFFERENCE]), _colour_end(diff[F1_DIFFERENCE])],
    )
    fig.update_traces(marker_line_color="#555", marker_line_width=1)  # a bar near 0 is near white: outline it
    fig.update_layout(height=max(300, 18 * len(labels) + 80), margin=dict(l=10, r=10, t=40, b=10), yaxis_dtick=1,
                      yaxis_type="category")  # coded labels (1, 10, 1000) are names, not positions on a scale
    views.chart(fig, f"{key}_f1diff", diff.set_index("label"), "per-label F1 difference")
    if one_sided:
        st.caption(views.escape_markdown("; ".join(one_sided) + " (neither in its test rows nor predicted)."))


def other_run(records: list[RunRecord], picked: RunRecord, prefer: str) -> RunRecord | None:
    """The default partner of ``picked``: the newest other run that can be paired with it row by row (same data
    set, or one of the two without a data key), on the same data and model (``config["source"]``) where there is
    one, and of method ``prefer`` where there is one; else the newest other run (``records`` are newest first).
    Another session's run on other data must not become the partner when a run on ``picked``'s data exists."""
    others = [r for r in records if r.id != picked.id]
    if not others:
        return None
    data, source = picked.config.get("data"), picked.config.get("source")

    def rank(r: RunRecord) -> tuple[bool, bool, bool, bool]:
        return (_pairable(picked, r), data is not None and same_data(picked, r),
                r.config.get("source") == source, r.method == prefer)

    return max(others, key=rank)  # the first of the best, so the newest of them


def default_pick(records: list[RunRecord], data: str | None, source: str | None, prefer: str = "sparse",
                 partner: str = "full") -> RunRecord | None:
    """The default run A of a comparison: the newest run of method ``prefer`` on the session's data set (key
    ``data``) and model ``source``, falling back to the session's data on another model, then to any method, then
    to other data; among those, the first that ``other_run`` can pair with a run on its own data, so the page
    does not open on two runs of different data sets while a valid pair exists."""
    if not records:
        return None
    source = recorded_source(source) if source else source  # as runs record it: a folder as an absolute path
    ranked = sorted(records, key=lambda r: (data is not None and r.config.get("data") == data,
                                           r.config.get("source") == source, r.method == prefer), reverse=True)
    partners = _partner_counts(records)
    for run in ranked:
        if partners(run) > 0:
            return run
    return ranked[0]


def _partner_counts(records: list[RunRecord]) -> Callable[[RunRecord], int]:
    """How many other runs of ``records`` a run can be paired with (``_pairable``), counted once (each redraw reads
    every run of the registry: no pair-by-pair loop)."""
    keys = Counter(r.config.get("data") for r in records)
    digests = Counter(r.config.get("data_digest") for r in records if r.config.get("data_digest"))
    undigested = Counter(r.config.get("data") for r in records if not r.config.get("data_digest"))

    def count(run: RunRecord) -> int:
        key, digest = run.config.get("data"), run.config.get("data_digest")
        if key is None:
            return len(records) - 1
        same = digests[digest] - 1 + undigested[key] if digest else keys[key] - 1
        return same + keys[None]

    return count


def folder_config(run: RunRecord) -> dict[str, Any]:
    """The config the run's folder records (clm_run.json's, what it trained with), else the registry's (a run that
    has not begun, a folder gone): a run registered before it settled its config kept the one it was given."""
    recorded = read_json_object(run.path / "clm_run.json").get("config")
    return recorded if isinstance(recorded, dict) else run.config


def same_data(a: RunRecord, b: RunRecord) -> bool:
    """Whether two runs trained on the same data as far as their records tell (``reruns.same_data``)."""
    from clm_explore.reruns import same_data as same_recorded_data

    return same_recorded_data(a.config, b.config)


def _pairable(a: RunRecord, b: RunRecord) -> bool:
    return a.config.get("data") is None or b.config.get("data") is None or same_data(a, b)


_SOURCE_WORDS = {"sample": "the bundled sample", "shared": "the server's data set", "upload": "the upload"}


def data_mismatch(a: RunRecord, b: RunRecord) -> str:
    """Why two runs cannot be paired row by row ('' when they can): they were launched on different data sets
    whose test texts differ. Runs registered without a data key (e.g. from the CLI) are not refused; their rows are
    paired by row id and text, and so are two data sets of the same test texts (a relabelled copy and its
    original: ``label_difference_note`` says how many labels differ)."""
    if _pairable(a, b) or _test_frames(a, b) is not None:
        return ""
    data_a, data_b = a.config.get("data"), b.config.get("data")
    name_a, name_b = data_key_name(str(data_a)), data_key_name(str(data_b))
    if name_a == name_b:  # one file, other columns
        name_a, name_b = data_key_name(str(data_a), columns=True), data_key_name(str(data_b), columns=True)
    if name_a == name_b:  # one name, two sources: the bundled sample and a server data set, say
        name_a, name_b = (f"{_SOURCE_WORDS.get(str(key).partition(':')[0], 'data')} {name}"
                          for key, name in ((data_a, name_a), (data_b, name_b)))
    name_a, name_b = escape_markdown(name_a), escape_markdown(name_b)  # an upload's name is user text
    return (f"Run A was trained and tested on {name_a}, run B on {name_b}: their test rows differ, so "
            "they cannot be compared row by row. Pick two runs on one data set (the Runs page compares the "
            "metrics of any runs).")


def _test_frames(a: RunRecord, b: RunRecord) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Both runs' predictions when they hold the same test rows (row ids and texts, in order); None otherwise, or
    when either cannot be read."""
    from clm_explore.data import DataError

    try:
        frames = [cache.predictions(str(r.path), cache.file_mtime(r.path / "predictions.csv")) for r in (a, b)]
    except (DataError, OSError):
        return None
    rows_a, rows_b = (f[["row", "text"]].reset_index(drop=True) for f in frames)
    return (frames[0], frames[1]) if len(rows_a) and rows_a.equals(rows_b) else None


def label_difference_note(a: RunRecord, b: RunRecord) -> str:
    """For two runs on different data sets of the same test texts (a relabelled copy and its original): how many
    test labels differ, and whose labels the page judges by; '' otherwise."""
    if _pairable(a, b):
        return ""
    frames = _test_frames(a, b)
    if frames is None:
        return ""
    differ = int((frames[0]["label"].astype(str) != frames[1]["label"].astype(str)).sum())
    if not differ:
        return "A and B were launched on different data sets with the same test rows and labels."
    return (f"A and B were launched on different data sets with the same test texts, {differ} of {len(frames[0])} "
            "of them labelled differently (a relabelled copy, say): each run's metrics are against its own labels; "
            "below, who is right is judged by A's.")


def disagreements(pred_a: pd.DataFrame, pred_b: pd.DataFrame) -> pd.DataFrame:
    """Test rows where the two runs predict differently, with which one is right (rows paired by id and text,
    so that two different test splits pair nothing)."""
    both = pred_a[["row", "text", "label", "pred", "prob"]].merge(
        pred_b[["row", "text", "pred", "prob"]], on=["row", "text"], suffixes=("_a", "_b")
    )
    both = both[both["pred_a"] != both["pred_b"]].copy()
    both["right"] = np.select(
        [both["pred_a"] == both["label"], both["pred_b"] == both["label"]], ["only A", "only B"], "neither"
    )
    return both.reset_index(drop=True)


def render_attribution(result: Any, title: str, key: str, span: float | None = None) -> None:
    """Words with their attribution: a bar chart (dataframe-safe, no HTML), what the bars add up to, and the
    result's note (a text cut at the run's max_length, a decoder's reference). ``span``: the largest |score| the
    axis shows on either side (two runs' charts side by side share it), else the chart's own."""
    st.markdown(
        f"**{escape_markdown(title)}** → {escape_markdown(result.target_label)} "
        f"(p = {result.probability:.2f})"
    )
    label = escape_markdown(result.target_label)
    logit = getattr(result, "output", "probability") == "logit"
    st.caption(f"Teal bars: words that pushed the model towards {label}; orange bars: words that pushed it away.")
    with st.expander("How the bars are computed"):  # the maths folded: an annotator reads the sentence above (UX review)
        summed = (f"logit({label}) − its logit at the reference" if logit else f"p({label}) − p(reference)")
        st.caption(f"Integrated Gradients toward {label}, the label explained: the bars sum to {summed} = "
                   f"{result.change:+.3g}, up to delta = {result.delta:+.2g}, the integral's convergence error.")
    if result.note:
        st.caption(f"Note: {escape_markdown(result.note)}.")
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
        height=max(200, 24 * len(frame) + 70),
        margin=dict(l=10, r=10, t=30, b=10),  # the top margin keeps plotly's toolbar off the first bar
        yaxis_autorange="reversed",
        yaxis_dtick=1,  # every word labelled: plotly's automatic ticks labelled every other one of a short text
        # the unit: probability (or logit), not "importance"
        xaxis_title=f"change in {'logit' if logit else 'p'}({plot_text(result.target_label)})",
        xaxis_exponentformat="e",  # 2e-06, not plotly's "2μ"
    )
    if span:
        fig.update_layout(xaxis_range=[-1.05 * span, 1.05 * span])
    views.chart(fig, f"{key}_attr", frame.set_index("pos"), f"{title}, per word")


def attribution_output_choice(key: str) -> str:
    """What the page's attributions measure (``AttributionConfig.output``), chosen once for its charts, top words and
    report: the change in the label's probability (the default) or in its logit."""
    state.restore(key, ATTRIBUTION_OUTPUTS[0])
    output = st.radio("Attributions measure", ATTRIBUTION_OUTPUTS, horizontal=True, key=key,
                      format_func=lambda name: "the change in probability" if name == "probability" else "the change "
                      "in logit", help="Probability: a text's bars add up to the label's probability change from "
                      "the reference, at most 1. Logit: the score before the softmax, which the bars add up to "
                      "instead: unbounded, in each run's own units, so two runs' bars compare by their ranking more "
                      "than their lengths.")
    state.keep(key)
    return str(output)


def explain_pair(text: str, a: RunRecord, b: RunRecord, key: str, gold: str | None = None,
                 output: str = "probability") -> None:
    """Both runs' answer on ``text`` and its word attributions, side by side. ``gold``: the row's annotated label,
    offered as the label both explain (each run's own answer by default): on a row where they disagree, the paper's
    case study asks what each relies on for the same label. ``output``: what the bars measure
    (``attribution_output_choice``)."""
    from clm_explore.attribution import AttributionError

    target = None
    if gold is not None:
        choice = st.radio("Label explained", ["each run's answer", f"the annotated label ({gold})"], horizontal=True,
                          key=f"{key}_target", help="Toward each run's own prediction, or toward the row's annotated "
                          "label for both runs: the same question asked of both.")
        target = gold if choice.startswith("the annotated") else None
    results = []
    for run in (a, b):
        try:
            results.append(cache.attributions(str(run.path), cache.file_mtime(run.path / "config.json"), (text,),
                                              target, output)[0])
        except AttributionError as exc:  # a text of invisible characters alone: said, not a failed page
            st.warning(escape_markdown(str(exc).replace("texts[0]", "The text")))
            return
    if results[0].target_label != results[1].target_label:
        st.caption(f"The runs answer differently ({escape_markdown(results[0].target_label)} and "
                   f"{escape_markdown(results[1].target_label)}): each chart explains its own run's answer, so the "
                   "two sets of bars answer different questions.")
    # One scale for both: each chart on its own axis drew a run's 0.24 as long as the other's 0.93 (the review)
    span = max((abs(score) for result in results for score in result.scores), default=0.0)
    for col, run, name, result in zip(st.columns(2), (a, b), "AB", results, strict=True):
        with col:
            render_attribution(result, f"{name}: {run.method}", key=f"{key}_{name.lower()}", span=span)


TRY_TEXT_CHARS = 1000
"""Longest text the Compare page's "Try a text" box takes (a run reads at most its trained sub-tokens anyway)."""


def try_text(key: str) -> str:
    """A box for a text of the user's own: the text last submitted ('' before any), kept across pages."""
    widget = f"{key}_try_text"
    state.restore(widget, "")
    with st.form(f"{key}_try"):  # in a form the box's value changes on submit only, not on every keystroke
        st.text_area(
            "Text", key=widget, max_chars=TRY_TEXT_CHARS, height=80,
            placeholder="Type a text as your data would hold it",
            help="Both runs classify it and attribute their answer to its words (Integrated Gradients).",
        )
        st.form_submit_button("Explain with both runs")
    state.keep(widget)
    return str(state.kept(widget, "")).strip()


def run_label(run: RunRecord) -> str:
    """A run as pickers list it: id, method, the data set it was trained on and the model (plain text, not
    Markdown)."""
    about = [run.method, data_key_name(str(run.config["data"])) if run.config.get("data") else "",
             model_name(run.config.get("source"))]
    return f"{run.id} ({', '.join(a for a in about if a)})"


def model_name(source: object) -> str:
    """A model source as a list shows it: a named source as it is, a folder or file by its last part."""
    if not source:
        return ""
    text = str(source).rstrip("/")
    return text.rsplit("/", 1)[-1] if "/" in text else text


def run_zip(store: RunStore, run_id: str) -> bytes:
    """The run folder as a zip; a run deleted since the page was drawn (by another user, say) gives a zip that says
    so. The zip is made after the click, where an error reaches no one: Streamlit logs it and the browser shows
    nothing."""
    try:
        return store.zip_run(run_id)
    except RunStoreError as exc:
        known = store.known([run_id])  # a registry entry whose folder went, or no entry at all
        why = str(exc) if known else (f"Run {run_id} was deleted from the server before this download began "
                                      "(perhaps by another user of the server).")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(f"{run_id}/{'MISSING' if known else 'DELETED'}.txt", why + "\n")
        return buffer.getvalue()


def predictions_csv(run_path: Path) -> bytes:
    """A run's predictions.csv, read after the click; where it went (the run deleted by another user since the page
    was drawn) or is a link (it sends whatever file it reaches, as the zip and the model card refuse), a one-cell CSV
    that says so: an error here reaches no one (Streamlit logs it, the browser shows nothing: the multi-session
    review)."""
    file = Path(run_path) / "predictions.csv"
    if file.is_symlink():
        why = f"{file.name} of this run is a link, not the run's own file: it is not sent."
    else:
        try:
            frame = pd.read_csv(io.BytesIO(file.read_bytes()), dtype=str, keep_default_na=False)
            return spreadsheet_csv(csv_text(spreadsheet_frame(frame)).encode("utf-8"))
        except OSError:
            why = ("This run's predictions.csv is no longer on the server (the run deleted or moved, perhaps by "
                   "another user of the server).")
        except ValueError:  # pandas' parser errors are ValueErrors
            why = "This run's predictions.csv cannot be read as a CSV file (it was damaged or replaced)."
    return spreadsheet_csv(csv_text(pd.DataFrame({"note": [why]})).encode("utf-8"))


def render_model_card(run: RunRecord, key: str) -> None:
    """The run's model card: its README.md, or one made now for a run saved before runs wrote cards; shown as the
    file's text (not rendered) and to download."""
    folder, file = Path(run.path), Path(run.path) / CARD_FILE
    if file.is_symlink():  # the zip leaves links out too: a link shows whatever file it reaches
        st.caption(f"No model card: {escape_markdown(str(file))} is a link, not the run's own file.")
        return
    try:
        card = file.read_text(encoding="utf-8") if file.is_file() else model_card(folder)
    except (ModelCardError, OSError, UnicodeDecodeError) as exc:  # a folder moved or damaged since it was listed
        st.caption(f"No model card: {escape_markdown(str(exc))}")
        return
    with st.expander("Model card (README.md: the Hugging Face Hub's page of the model)"):
        st.download_button("Download the model card", card, file_name=CARD_FILE, mime="text/markdown",
                           key=f"{key}_card", on_click="ignore")
        st.code(card, language="markdown", wrap_lines=True)


def run_picker(records: list[RunRecord], label: str, default: RunRecord | None, key: str) -> RunRecord:
    """A run select box whose pick outlives page switches (``state.restore``). A picked run that is gone (deleted,
    perhaps by another user of the server) is said so and replaced by ``default``: Streamlit alone would take the
    list's first run in silence, which on the Compare page could be the other side's run."""
    by_id = {r.id: r for r in records}
    ids = list(by_id)
    fallback = default.id if default is not None and default.id in by_id else ids[0]
    previous = st.session_state.get(key, state.kept(key))  # the live widget's pick, else the one kept across pages
    gone = previous if previous is not None and previous not in by_id else None
    if gone is not None:
        state.put(key, fallback)
        st.warning(f"{label}, {escape_markdown(str(gone))}, is no longer on this server (deleted, perhaps by another "
                   f"user): showing {escape_markdown(run_label(by_id[fallback]))} instead.")
    state.restore(key, fallback, options=ids)
    picked = st.selectbox(label, ids, key=key, format_func=lambda i: run_label(by_id[i]))
    state.keep(key)
    return by_id[picked]


def render_top_words(top: pd.DataFrame, groups: list[str] | None, title: str, key: str) -> None:
    """Per-label top attributed words; a column marks the ones that are mined groups (``case_study`` marks them with
    the run's tokenizer)."""
    from clm_explore.casestudy import marked

    st.subheader(escape_markdown(title), anchor=False)
    if top.empty:
        st.caption("No words passed the minimum count.")
        return
    shown = marked(top, groups)
    views.dataframe(
        shown,
        key=f"{key}_top",
        alt="Top words per label",
        hide_index=True,
        height=300,
        column_config={  # the words' label is the one each row's attribution explained: the predicted one
            "label": st.column_config.TextColumn("predicted label"),
            "target_label": st.column_config.TextColumn("predicted label"),
            "mined": st.column_config.CheckboxColumn("mined group"),
            "mean_score": st.column_config.NumberColumn(format="%.4f"),
        },
    )


RIGHT = {"all": "All", "only A": "Only A right", "only B": "Only B right", "neither": "Neither right"}


def filter_disagreements(diff: pd.DataFrame, key: str) -> pd.DataFrame:
    """A filter (all / only A right / only B right / neither) and the filtered disagreement table."""
    state.restore(f"{key}_filter", "all", options=list(RIGHT))
    which = st.radio("Show the disagreements where", list(RIGHT), format_func=RIGHT.get, horizontal=True, key=f"{key}_filter")
    state.keep(f"{key}_filter")
    shown = diff if which == "all" else diff[diff["right"] == which]
    # Sized to its rows (3 disagreements sat above 7 empty ones), the text wide: reading it is the point (the UX
    # review); it stays last so that the predictions beside it stay on a laptop's screen.
    views.dataframe(views.text_last(shown), key=f"{key}_disagree", hide_index=True, height=min(260, 35 * len(shown) + 38),
                 alt="Test rows the runs disagree on", column_config=DISAGREEMENT_COLUMNS)
    return shown


DISAGREEMENT_COLUMNS = {
    "label": st.column_config.TextColumn("gold label"),
    "pred_a": st.column_config.TextColumn("A says"),
    "prob_a": st.column_config.NumberColumn("A's p", format="%.2f", help="A's probability of what it says"),
    "pred_b": st.column_config.TextColumn("B says"),
    "prob_b": st.column_config.NumberColumn("B's p", format="%.2f", help="B's probability of what it says"),
    "text": st.column_config.TextColumn(width="large"),
}


def render_top_words_pair(study: Any, a: RunRecord, b: RunRecord, key: str) -> None:
    """Both runs' per-label top words; run A's mined groups mark both (B's own when A has none)."""
    if study.output == "logit":
        st.caption("Mean attributions in logit (each label's score before the softmax): unbounded and in each run's "
                   "own units, so the two runs' words compare by rank.")
    c1, c2 = st.columns(2)
    with c1:
        render_top_words(study.top_a, study.groups_a, f"A: {a.method}", key=f"{key}_a")
    with c2:
        render_top_words(study.top_b, study.groups_a or study.groups_b, f"B: {b.method}", key=f"{key}_b")
    if not study.overlap.empty:
        # Groups of any label count: the token restriction reads them all; a group's label is the Tokens page's
        # (the UX review read "in" among AddToPlaylist's words as a mistake: it was mined with BookRestaurant's).
        st.caption("Share of each label's top words that are mined groups (of any label: the token restriction "
                   "reads every group's positions)")
        # Runs as the columns above name them, and words as a list to read (it showed a and b, and "['my', 'card']")
        shown = study.overlap.assign(run=study.overlap["run"].map({"a": f"A: {a.method}", "b": f"B: {b.method}"}),
                                     words=study.overlap["words"].map(", ".join))
        views.dataframe(shown, key=f"{key}_overlap", hide_index=True, height=200, alt="Top words the runs share per label",
                     column_config={"share": st.column_config.NumberColumn(format="percent"),
                                    "in_groups": st.column_config.NumberColumn("mined groups"),
                                    "k": st.column_config.NumberColumn("top words")})


CHANGE_VIEWS = {"share_params_changed": "Share of parameters changed", "share_rows_changed": "Share of weight rows changed",
                "relative_change": "Change relative to the base weights"}


def weight_changes_toggle(runs: list[RunRecord], key: str) -> None:
    """A toggle that draws how far each run moved its base model's weights, per layer and module (heatmaps side by
    side), with the option of the share of rows changed or the change relative to the base weights."""
    from clm_explore.modeling import ModelSourceError

    state.restore(key, False)
    shown = st.toggle("Compare the weights with the base model's", key=key)
    state.keep(key)
    if not shown:
        return
    try:
        with cache.turn_note():  # keyed by the run's saved model and its base model's files: either saved again is
            changes = [cache.weight_changes(str(r.path), cache.file_mtime(r.path / "config.json"),  # compared again
                                            state.model_version(str(read_json_object(r.path / "clm_run.json").get(
                                                "source") or ""))) for r in runs]
    except ModelSourceError as exc:  # the base model is gone, or is not the one trained from
        st.warning(escape_markdown(str(exc)))
        return
    state.restore(f"{key}_view", "share_params_changed", options=list(CHANGE_VIEWS))
    view = st.radio("Weight changes shown as", list(CHANGE_VIEWS), format_func=CHANGE_VIEWS.get, horizontal=True, key=f"{key}_view")
    state.keep(f"{key}_view")
    sides = ("A", "B") if len(runs) == 2 else ("",) * len(runs)
    # One colour scale for the maps side by side: each on its own range drew B's 0.79 near white beside A's 0.15.
    top = max((float(views.layer_module_grid(change.table, view).max().max()) for change in changes
               if not change.table.empty), default=0.0)
    zrange = (0.0, top) if len(runs) > 1 and top > 0 else None
    if zrange:
        st.caption(f"The maps share one colour scale, 0 to {top:.3g}.")
    for column, change, run, side in zip(st.columns(len(runs)), changes, runs, sides, strict=True):
        with column:
            title = f"{side}: {run.method}" if side else f"{run.method}: {CHANGE_VIEWS[view].lower()}"
            views.heatmap(change.table, view, title, key=f"{key}_{side or run.id}", colorscale="Reds", zrange=zrange)
            st.caption(escape_markdown(change.summary()))


def default_groups(records: list[RunRecord], data: str | None = None, source: str | None = None
                   ) -> tuple[list[str], list[str]]:
    """Group A = the newest sparse run's seeds, group B = the newest full-finetuning run's, both on the data and model
    of the run ``default_pick`` opens Compare on: the session's own where it has runs (the multi-session review: the
    newest run's, another user's on other data, left this session's group A empty). ``records``: newest first.

    A group is one setting's seeds (``reruns.same_setting``), at most ``DEFAULT_GROUP_RUNS`` of them: every sparse
    run against every full one pooled budgets, epochs and rates into one verdict (the scale review: 100 against 90
    runs pre-selected on a server of 500)."""
    from clm_explore.reruns import same_setting

    anchor = default_pick(records, data, source)
    if anchor is None:
        return [], []
    same = [r for r in records if same_data(r, anchor) and r.config.get("source") == anchor.config.get("source")]

    def seeds_of_newest(method: str) -> list[str]:
        runs = [r for r in same if r.method == method]
        if not runs:
            return []
        return [r.id for r in runs if same_setting(r.config, runs[0].config)][:DEFAULT_GROUP_RUNS]

    return seeds_of_newest("sparse"), seeds_of_newest("full")


DEFAULT_GROUP_RUNS = 10
"""The most runs a default group of the Runs page's comparison holds (the newest of one setting's seeds)."""


def render_group_comparison(records: list[RunRecord], key: str) -> None:
    """Two groups of finished runs (seeds, say) side by side: means, stds, and the difference with its interval."""
    done = [r for r in records if r.status is RunStatus.SUCCEEDED and r.metrics.get("accuracy") is not None]
    if len(done) < 2:
        st.caption("Needs two finished runs or more: launch the same method with a few seeds on the Finetune page.")
        return
    by_id = {r.id: r for r in done}
    # The data named too: the groups may open on another data set than the session's (the few-shot review).
    label = {r.id: f"{r.id} · {r.method} · seed {r.config.get('seed', '?')}"
                   + (f" · {data_key_name(str(r.config['data']))}" if r.config.get("data") else "") for r in done}
    current = state.data_choice()
    a_default, b_default = default_groups(done, current.key if current else None, state.model_source())
    opened_on = by_id[a_default[0]].config.get("data") if a_default else None
    if current is not None and opened_on and opened_on != current.key:
        st.caption(escape_markdown(f"No two of this session's runs on {current.shown} make groups yet: the groups "
                                   f"below are runs on {data_key_name(str(opened_on))}."))
    c1, c2 = st.columns(2)
    a_ids = c1.multiselect("Group A", list(by_id), default=a_default, format_func=label.get, key=f"{key}_a")
    b_ids = c2.multiselect("Group B", list(by_id), default=b_default, format_func=label.get, key=f"{key}_b")
    if not a_ids or not b_ids:
        st.caption("Pick at least one run for each group.")
        return
    if set(a_ids) & set(b_ids):
        st.warning("A run is in both groups: the difference then compares a group with itself in part.")
    picked = [by_id[i] for i in a_ids + b_ids]
    if any(not same_data(r, picked[0]) or r.config.get("source") != picked[0].config.get("source") for r in picked):
        st.warning("These runs were trained on different data or models: their difference says little.")
    table = compare_run_groups([by_id[i].metrics for i in a_ids], [by_id[i].metrics for i in b_ids])
    level = f"{COMPARISON_LEVEL:.0%}"
    formats = {"a_mean": "{:.4f}", "a_std": "{:.4f}", "b_mean": "{:.4f}", "b_std": "{:.4f}",
               "difference_points": "{:+.2f}", "low_points": "{:+.2f}", "high_points": "{:+.2f}",
               "std_ratio": "{:.2f}", "std_ratio_low": "{:.2f}", "std_ratio_high": "{:.2f}"}
    names = {"a_mean": "A mean", "a_std": "A std", "a_runs": "A runs", "b_mean": "B mean", "b_std": "B std",
             "b_runs": "B runs", "difference_points": "A − B (points)", "low_points": f"{level} low",
             "high_points": f"{level} high", "std_ratio": "std A / B", "std_ratio_low": f"std ratio {level} low",
             "std_ratio_high": f"std ratio {level} high"}
    # A figure a group cannot have (a std of one run, its interval) is "–": the table showed "None".
    views.dataframe(table.style.format(formats, na_rep="–"), key=f"{key}_table", hide_index=True,
                    alt="Figures of the two groups of runs",
                 column_config={column: st.column_config.Column(name) for column, name in names.items()})
    st.caption(f"A − B: the difference of the means, in points; low..high: its {level} Welch interval (it needs "
               "two runs or more per group). **ahead** / **behind**: the interval excludes 0; **level**: it spans "
               "0, so these runs cannot tell the two apart; **one seed**: a group has one run; **no spread**: every "
               "run of both groups scored alike, so there is no interval. std A / B: stability, lower is steadier; its interval (F "
               "distribution) is wide with few runs: about 0.3x to 3x the ratio with 5 runs a group.")
