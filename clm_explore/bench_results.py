"""The benchmark's tables, read back from the cell folders: results, summary, comparison, mask statistics, overlap.

``clm_explore.bench`` runs the grid; this module turns its cell folders into the CSV tables that
``clm_explore.bench_report`` draws.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from clm_explore.runs import read_json_object, run_folder

if TYPE_CHECKING:
    from clm_explore.bench import Cell

INTERRUPTED_LINE = "interrupted: the grid was stopped while this cell ran; a rerun runs it again"
"""The last line of the log of a cell the grid's interrupt stopped (results.csv: status 'interrupted')."""

OVERLAP_METHODS = ("sparse", "fisher", "gradient", "random")
"""Row-mask methods whose masks are compared pairwise (Jaccard)."""


RESULT_COLUMNS = ["method", "budget", "seed", "status", "accuracy", "macro_f1", "trainable_params", "trainable_share",
                  "selected_params", "train_seconds", "prep_seconds", "peak_memory_mb", "examples_per_second",
                  "lowest_layer", "lr", "score", "epochs", "total_params", "base_params", "val_curve", "cell", "error",
                  "oos_accuracy", "oos_macro_f1", "oos_auroc", "over_budget", "labels_predicted", "device", "threads",
                  "cells_at_once"]
"""``oos_*``: metrics.json's ``out_of_scope`` (test rows with labels unseen in train, scored with abstention);
``over_budget``: whole layers (``layers``) that took more than the budget, as no layer fitted it;
``labels_predicted``: how many labels the cell predicted on test (1: it collapsed onto one label); ``device``: where
the cell trained (metrics.json's); ``threads``: the threads torch computed with there, ``cells_at_once``: the cells its
grid ran at once (--jobs; both clm_run.json's provenance, blank for a cell run otherwise)."""

OUT_OF_SCOPE_KEYS = {"oos_accuracy": "accuracy", "oos_macro_f1": "macro_f1", "oos_auroc": "auroc"}


def read_metrics(cell_dir: Path) -> dict:
    """A cell's metrics.json; {} when missing, unreadable or not a JSON object."""
    return read_json_object(cell_dir / "metrics.json")


def collect_results(out_dir: Path, cells: list[Cell]) -> pd.DataFrame:
    """One row per cell (RESULT_COLUMNS); failed or missing cells keep their row, with the error text."""
    rows = []
    for cell in cells:
        cell_dir = out_dir / "cells" / cell.name
        m = read_metrics(cell_dir)
        ok = m.get("status") == "succeeded"
        row = {k: m.get(k) for k in RESULT_COLUMNS} if ok else {}
        log = out_dir / "logs" / f"cells-{cell.name}.log"
        # A cell with no metrics.json failed if it started (its log exists), unless the grid's interrupt stopped it;
        # a grid stopped before it left it not run.
        status = "succeeded" if ok else m.get("status") or _unfinished_status(log)
        row.update(method=cell.method, budget=cell.budget, seed=cell.seed, cell=str(cell_dir.relative_to(out_dir)),
                   score=cell.row_score, status=status)
        if ok:
            row["trainable_share"] = m["trainable_params"] / max(m.get("base_params") or m["total_params"], 1)
            row["val_curve"] = json.dumps(m.get("val_curve", []))
            row["prep_seconds"] = m.get("prep_seconds", 0.0)
            row["error"] = ""
            scope = m.get("out_of_scope") or {}
            row.update({column: scope.get(key) for column, key in OUT_OF_SCOPE_KEYS.items()})
            row["labels_predicted"] = labels_predicted(m)
            made = read_json_object(cell_dir / "clm_run.json").get("provenance") or {}
            row["threads"], row["cells_at_once"] = made.get("threads"), made.get("cells_at_once")
        else:
            row["error"] = _log_error(log)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return frame.astype({"seed": int, "lowest_layer": "Int64", "trainable_params": "Int64", "selected_params": "Int64",
                         "threads": "Int64", "cells_at_once": "Int64"})


def labels_predicted(metrics: dict) -> int | None:
    """How many labels a run predicted on its test rows (its confusion matrix's non-empty columns, the rows of labels
    unseen in train included, as ``metrics.confusion_table`` reads them); None without one."""
    matrix = metrics.get("confusion")
    if not matrix:
        return None
    rows = [*matrix, *([metrics["confusion_unseen"]] if metrics.get("confusion_unseen") else [])]
    return sum(1 for column in zip(*rows, strict=True) if sum(column))


def collapsed_note(results: pd.DataFrame) -> str:
    """A sentence when finished cells predicted one label for every test row: their accuracy is that label's share
    of test, and methods that all collapse read as a tie, "no spread" and a std ratio of 0 (the bench review, where
    every tiny-model cell did); '' when none did."""
    ok = results[results["status"] == "succeeded"]
    collapsed = ok[ok["labels_predicted"] == 1]
    if collapsed.empty:
        return ""
    return (f"{len(collapsed)} of {len(ok)} finished cells predicted one label for every test row ("
            f"{', '.join(collapsed['cell'].str.rsplit('/', n=1).str[-1].head(3))}{', ...' if len(collapsed) > 3 else ''}"
            "): their accuracy is that label's share of test, and comparisons between such cells tell nothing")


def devices_note(results: pd.DataFrame) -> str:
    """A sentence when the finished cells trained on more than one device (a grid resumed with another --device, or
    on another machine): their times and memory are then not comparable, and a mean mixes them (the bench review);
    '' otherwise."""
    devices = sorted({str(d) for d in results.loc[results["status"] == "succeeded", "device"].dropna()})
    if len(devices) < 2:
        return ""
    return (f"the finished cells trained on {', '.join(devices)} (results.csv's device column): their train seconds "
            "and peak memory are not comparable across devices")


def timing_note(results: pd.DataFrame) -> str:
    """A sentence when the finished cells' times do not compare as a grid's should (the metrics review): cells that
    computed with different thread counts (a grid resumed with another --jobs, whose cells get cores / jobs threads
    each), or cells that ran side by side on the CPU (their recorded ``cells_at_once`` above 1), whose times are
    contended; '' otherwise. Read from the cells' own records, not this command's --jobs: a resume that trains
    nothing says nothing of how the cells ran (the diff review)."""
    ok = results[results["status"] == "succeeded"]
    threads = sorted({int(t) for t in ok["threads"].dropna()}) if "threads" in ok else []
    if len(threads) > 1:
        return (f"the finished cells computed with {', '.join(map(str, threads))} threads (results.csv's threads "
                "column; a grid resumed with another --jobs): their train seconds are not comparable across them")
    at_once = ok["cells_at_once"] if "cells_at_once" in ok else pd.Series(dtype="Int64")
    shared = ok[(at_once.fillna(1) > 1) & (ok["device"].astype(str) == "cpu")]
    if shared.empty:
        return ""
    alone = int((at_once.fillna(1) <= 1).sum())
    return (f"{len(shared)} of {len(ok)} finished cells ran up to {int(at_once.max())} at once on the CPU (--jobs; "
            "results.csv's cells_at_once): their train seconds are contended"
            + (f", and do not compare with the {alone} run alone" if alone else ", comparable with each other's only"))


def _unfinished_status(log: Path) -> str:
    if not log.exists():
        return "not run"
    return "interrupted" if _log_tail(log, 1) == INTERRUPTED_LINE else "failed"


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "not run"


NOISE_PREFIXES = ("warning:", "note:")
"""Log lines that are never a failed cell's error where another line is there: the data's warnings and notes, which
every cell prints first (a cell killed for memory read as "warning: ... leakage", the operations review)."""


def _log_error(path: Path, lines: int = 3) -> str:
    """A failed cell's error text: its log's last ``lines`` lines but the warnings and notes (all of them when the log
    has nothing else), so the traceback's last line and how the process ended (``bench.exit_line``) are kept."""
    try:
        logged = [line for line in path.read_text(errors="replace").strip().splitlines() if line.strip()]
    except OSError:
        return "not run"
    said = [line for line in logged if not line.lstrip().lower().startswith(NOISE_PREFIXES)]
    return " | ".join((said or logged)[-lines:])


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (method, budget): accuracy, macro-F1 (std = stability), share, cost; the
    trainable parameters' mean (random rows cost differently per seed) and the lowest layer any seed trained."""
    ok = results[results["status"] == "succeeded"].copy()
    if ok.empty:
        return pd.DataFrame(columns=["method", "budget", "seeds"])
    ok["budget"] = ok["budget"].astype(float)
    cols = ["accuracy", "macro_f1", "trainable_share", "train_seconds", "peak_memory_mb", "examples_per_second"]
    cols += [c for c in ("prep_seconds",) if c in ok]  # the report stacks it under the epochs' time
    cols += [c for c in OUT_OF_SCOPE_KEYS if ok[c].notna().any()]  # only where test has out-of-scope rows
    ok[cols] = ok[cols].astype(float)
    grouped = ok.groupby(["method", "budget"], dropna=False, sort=False)
    # The std is ``_std``'s, as comparison.csv's: pandas' said 0.0 where numpy's said 1.4e-16 (the bench review).
    out = grouped[cols].agg(["mean", _std])
    out.columns = [f"{a}_{b.lstrip('_')}" for a, b in out.columns]
    # Seeds that scored, as comparison.csv counts them: a finished cell whose accuracy is NaN is no seed of the mean.
    out.insert(0, "seeds", grouped["accuracy"].count())
    out["trainable_params"] = grouped["trainable_params"].mean().round().astype("Int64")
    out["lr"] = grouped["lr"].first()
    out["score"] = grouped["score"].first()
    out["lowest_layer"] = grouped["lowest_layer"].min()
    # Whole layers that took more than the budget (no layer fitted it): said beside their share, not in results only.
    out["over_budget"] = grouped["over_budget"].agg(lambda flags: bool(flags.fillna(False).astype(bool).any()))
    return out.reset_index()


REFERENCE_METHOD = "full"
"""Every other method of a grid is compared with this one (the issue's targets are stated against it)."""
OURS = "sparse"
"""The method that is also compared with every other cheap method at its budget (random, fisher, lora, ...)."""
COMPARED_METRICS = ("accuracy", "macro_f1", "oos_accuracy")
COMPARISON_LEVEL = 0.95


def difference_interval(a: Sequence[float], b: Sequence[float],
                        level: float = COMPARISON_LEVEL) -> tuple[float, float, float]:
    """mean(a) - mean(b) and Welch's t-interval for it at ``level``.

    Welch, not a paired test: a seed fixes each method's own random draws (head, mask, data order), which two
    methods consume differently, so runs at the same seed are independent draws, not pairs. The bounds are NaN
    with fewer than two values on a side, and with no spread on either side: seeds that all agree say nothing
    about how far another draw might land, so an interval of width 0 would claim a certainty they do not give.
    ``interval_verdict`` tells the two apart by the number of runs.
    """
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return diff, math.nan, math.nan
    var_x, var_y = _std(x) ** 2 / len(x), _std(y) ** 2 / len(y)  # exactly 0 where a side's runs all agree
    se = math.sqrt(var_x + var_y)
    if se == 0:  # identical runs on both sides: no spread to judge by (see above), not an exact difference
        return diff, math.nan, math.nan
    dof = (var_x + var_y) ** 2 / (var_x**2 / (len(x) - 1) + var_y**2 / (len(y) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return diff, diff - half, diff + half


def comparison_pairs(keys: Sequence[tuple[str, float]]) -> list[tuple[tuple[str, float], tuple[str, float]]]:
    """(subject, versus) pairs of (method, budget) keys: every method against REFERENCE_METHOD, and OURS at
    each budget against every other method at that budget or without one (budget NaN)."""
    pairs = []
    for ref in (k for k in keys if k[0] == REFERENCE_METHOD):
        pairs += [(k, ref) for k in keys if k[0] != REFERENCE_METHOD]
    for ours in (k for k in keys if k[0] == OURS):
        pairs += [(ours, k) for k in keys if k[0] not in (OURS, REFERENCE_METHOD)
                  and (math.isnan(k[1]) or k[1] == ours[1])]
    return pairs


COMPARISON_COLUMNS = ["method", "budget", "versus", "versus_budget", "seeds", "versus_seeds",
                      *(f"{m}_{part}" for m in COMPARED_METRICS for part in ("diff", "low", "high")),
                      "std_ratio", "std_ratio_low", "std_ratio_high", "verdict"]


def compare_methods(results: pd.DataFrame, level: float = COMPARISON_LEVEL) -> pd.DataFrame:
    """Differences of mean test metrics between methods (comparison_pairs), with Welch intervals at ``level``.

    ``std_ratio`` is the subject's accuracy std over the versus method's (the stability target: <= 0.5 against
    full finetuning), ``std_ratio_low``..``std_ratio_high`` its interval at ``level`` (std_ratio_interval).
    ``verdict``: 'ahead' or 'behind' when the accuracy interval excludes 0, 'level' when it spans 0, 'one seed'
    when a side has a single run, 'no spread' when both sides' runs all scored alike.
    """
    ok = results[results["status"] == "succeeded"].copy()
    ok["budget"] = ok["budget"].astype(float)
    runs = {(m, b): g for (m, b), g in ok.groupby(["method", "budget"], dropna=False, sort=False)}
    rows = []
    for subject, versus in comparison_pairs(list(runs)):
        a, b = runs[subject], runs[versus]
        # Seeds, verdict and std ratio count the runs that scored (the bench review: a NaN accuracy counted as a
        # seed, made the ratio NaN and the verdict "no spread", while the difference left it out).
        accuracies = _scored(a["accuracy"]), _scored(b["accuracy"])
        row = {"method": subject[0], "budget": subject[1], "versus": versus[0], "versus_budget": versus[1],
               "seeds": len(accuracies[0]), "versus_seeds": len(accuracies[1])}
        for metric in COMPARED_METRICS:
            x, y = _scored(a[metric]), _scored(b[metric])
            found = difference_interval(x, y, level) if len(x) and len(y) else (math.nan,) * 3
            row.update(zip((f"{metric}_diff", f"{metric}_low", f"{metric}_high"), found, strict=True))
        row["std_ratio"] = std_ratio(*accuracies)
        row["std_ratio_low"], row["std_ratio_high"] = std_ratio_interval(*accuracies, level)
        row["verdict"] = interval_verdict(row["accuracy_low"], row["accuracy_high"], min(map(len, accuracies)))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    unscored = [c for c in frame if c.startswith("oos_") and frame[c].isna().all()]
    return frame.drop(columns=unscored)  # out-of-scope columns only where test has out-of-scope rows


def _scored(values: pd.Series) -> list[float]:
    """The values of a metric column that are numbers (a finished cell may lack one: NaN)."""
    return values.dropna().astype(float).tolist()


def std_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """a's seed std over b's (the stability figure); NaN when either has one value or b has no spread."""
    spread_b = _std(b)
    return _std(a) / spread_b if spread_b > 0 else math.nan


def std_ratio_interval(a: Sequence[float], b: Sequence[float], level: float = COMPARISON_LEVEL) -> tuple[float, float]:
    """The ``level`` interval of the ratio of true stds, a's over b's, from the F distribution of the variance
    ratio (seeds' accuracies taken as normal); NaN without two values a side or spread on both.

    Why: the stability target (sparse's std <= half of full's) is judged on 3-10 seeds, where a sample std ratio
    is itself very uncertain: with 5 seeds a side the interval spans a factor of about 10 (0.32x to 3.1x the
    ratio), so "std <= half" is shown only where the high end is under 0.5.
    """
    from scipy import stats

    ratio = std_ratio(a, b)
    if math.isnan(ratio) or ratio == 0:
        return math.nan, math.nan
    upper_tail = 0.5 + level / 2
    low = ratio / math.sqrt(stats.f.ppf(upper_tail, len(a) - 1, len(b) - 1))
    high = ratio * math.sqrt(stats.f.ppf(upper_tail, len(b) - 1, len(a) - 1))
    return low, high


def interval_verdict(low: float, high: float, fewest_runs: int) -> str:
    """'ahead' or 'behind' when the interval (low, high) of a difference excludes 0, 'level' when it spans 0;
    without an interval (NaN bounds) 'one seed' when a side has fewer than two runs (``fewest_runs``), else
    'no spread' (every run of both sides scored alike: ``difference_interval``)."""
    if math.isnan(low):
        return "one seed" if fewest_runs < 2 else "no spread"
    return "ahead" if low > 0 else "behind" if high < 0 else "level"


GROUP_METRICS = {"accuracy": ("accuracy",), "macro-F1": ("macro_f1",),
                 "accuracy with abstention": ("out_of_scope", "accuracy"), "out-of-scope AUROC": ("out_of_scope", "auroc")}
"""Metrics compared between groups of runs, as paths into metrics.json; out-of-scope ones only where every run
has them (test splits with labels unseen in train)."""


def compare_run_groups(a: Sequence[Any], b: Sequence[Any], level: float = COMPARISON_LEVEL) -> pd.DataFrame:
    """Two groups of runs (e.g. seeds of two methods), per metric: each group's mean, std and size, mean(a) - mean(b)
    in points with its Welch interval at ``level``, the verdict, and the ratio of the stds (a's over b's) with its
    interval. A run is its metrics.json dict, a ``FinetuneResult`` or registry record (their ``metrics``), or its
    folder.

    Raises:
        ValueError: a run that has no metrics (a folder without metrics.json, a cancelled run), an empty group, or
            a ``level`` outside (0, 1).
    """
    for group in (a, b):  # one folder or result given as a group: its characters or fields would be read as runs
        if isinstance(group, str | Path | dict) or not isinstance(group, Iterable) or hasattr(group, "metrics"):
            raise TypeError(f"compare_run_groups(a, b) takes two lists of runs (e.g. seeds of two methods); got "
                            f"{type(group).__name__}: wrap a single run in a list, [run].")
    if not 0 < level < 1:
        raise ValueError(f"level is the intervals' coverage, a fraction in (0, 1) (0.95 for 95%); got {level}.")
    a, b = list(a), list(b)
    if not a or not b:
        raise ValueError(f"compare_run_groups needs at least one run a group; got {len(a)} and {len(b)}.")
    a, b = [_run_metrics(run) for run in a], [_run_metrics(run) for run in b]
    rows = []
    for name, path in GROUP_METRICS.items():
        x, y = [metric_at(m, path) for m in a], [metric_at(m, path) for m in b]
        if not x or not y or any(v is None for v in x + y):
            continue
        diff, low, high = difference_interval(x, y, level)
        ratio_low, ratio_high = std_ratio_interval(x, y, level)
        rows.append({"metric": name, "a_mean": float(np.mean(x)), "a_std": _std(x), "a_runs": len(x),
                     "b_mean": float(np.mean(y)), "b_std": _std(y), "b_runs": len(y), "difference_points": diff * 100,
                     "low_points": low * 100, "high_points": high * 100, "verdict": interval_verdict(low, high, min(len(x), len(y))),
                     "std_ratio": std_ratio(x, y), "std_ratio_low": ratio_low, "std_ratio_high": ratio_high})
    return pd.DataFrame(rows, columns=["metric", "a_mean", "a_std", "a_runs", "b_mean", "b_std", "b_runs",
                                       "difference_points", "low_points", "high_points", "verdict", "std_ratio",
                                       "std_ratio_low", "std_ratio_high"])


def _run_metrics(run: Any) -> dict:
    named = run
    if isinstance(run, str | Path):
        folder = run_folder(run)  # a run id of the registry too
        if not folder.is_dir():
            raise ValueError(f"{run} is neither a run folder nor a run id of the registry.")
        run = read_json_object(folder / "metrics.json")
    metrics = run if isinstance(run, dict) else getattr(run, "metrics", None)
    if not isinstance(metrics, dict) or "accuracy" not in metrics:
        raise ValueError(f"{named!r} has no finished run's metrics (metrics.json with an accuracy): pass metrics "
                         "dicts, FinetuneResults, registry records, run folders or run ids of finished runs.")
    return metrics


def metric_at(metrics: dict, path: Sequence[str]) -> float | None:
    """The number at ``path`` in a metrics.json dict (``("out_of_scope", "accuracy")``), or None."""
    value: object = metrics
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


STD_DECIMALS = 12
"""Values equal to this many decimals count as equal in ``_std``: scores are fractions of test rows, far coarser."""


def _std(values: Sequence[float]) -> float:
    """The sample std (ddof 1) of the values that are numbers; NaN with fewer than two, exactly 0 where all agree.

    Why exactly 0: numpy's std of [0.7, 0.7, 0.7] is 1.4e-16, so seeds that all agree got a zero-width "ahead" or
    "behind" and std ratios like 1.0 [0.16, 6.24] where ``difference_interval`` promises "no spread" (the bench
    review). Every table's std goes through here, so summary.csv and comparison.csv agree.
    """
    numbers = np.asarray(values, dtype=float)
    numbers = numbers[~np.isnan(numbers)]
    if len(numbers) < 2:
        return math.nan
    if np.ptp(np.round(numbers, STD_DECIMALS)) == 0:
        return 0.0
    return float(np.std(numbers, ddof=1))


def mask_statistics(out_dir: Path, results: pd.DataFrame) -> pd.DataFrame:
    """Per row-mask run and (layer, module): selected rows, eligible rows, share selected, lowest layer."""
    frames = []
    for _, r in results[results["status"] == "succeeded"].iterrows():
        cell_dir = out_dir / r["cell"]
        masks = _cell_masks(cell_dir)
        report = _cell_report(cell_dir) if masks is not None else None
        if masks is None or report is None:
            continue
        eligible = _eligible(cell_dir, report, r["method"])
        recs = []
        for name, info in report.matrices.items():
            rows = len(info.eligible_rows) if info.eligible_rows is not None else info.rows
            rows = rows if eligible is None or name in eligible else 0  # below the floor: not a candidate at all
            picked = int(masks[name].sum()) if name in masks else 0
            recs.append({"layer": info.layer, "module": info.module, "selected_rows": picked, "rows": rows,
                         "share_selected": picked / max(rows, 1)})
        frame = pd.DataFrame(recs).groupby(["layer", "module"], as_index=False).sum()
        # blank where no row could be chosen (a gap in the report's heatmap), 0 where none of those that could was
        frame["share_selected"] = (frame["selected_rows"] / frame["rows"]).where(frame["rows"] > 0)
        frames.append(frame.assign(method=r["method"], budget=r["budget"], seed=r["seed"],
                                   lowest_layer=r["lowest_layer"]))
    cols = ["method", "budget", "seed", "layer", "module", "selected_rows", "rows", "share_selected", "lowest_layer"]
    return pd.concat(frames)[cols] if frames else pd.DataFrame(columns=cols)


def _cell_masks(cell_dir: Path) -> dict[str, Any] | None:
    """A finished cell's row masks; None when it has none, or a damaged file (said in a warning: the cell is trusted
    as finished, and a traceback here stopped every rerun before the report)."""
    path = cell_dir / "masks.safetensors"
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file  # torch only when there are masks to read

    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        warnings.warn(f"{path} cannot be read ({exc}): the cell is left out of the mask statistics and overlaps; "
                      "delete the cell's folder and rerun to train it again.", stacklevel=2)
        return None


def _cell_report(cell_dir: Path) -> Any:
    """A finished cell's saved sensitivity scores (as ``_cell_masks``: None when absent or damaged)."""
    path = cell_dir / "sensitivity"
    if not path.is_dir():
        return None
    from clm_explore.config import ConfigError
    from clm_explore.sensitivity import SensitivityReport

    try:
        return SensitivityReport.load(path)
    except (ConfigError, OSError, ValueError) as exc:
        warnings.warn(f"{path} cannot be read ({exc}): the cell is left out of the mask statistics; delete the "
                      "cell's folder and rerun to train it again.", stacklevel=2)
        return None


def _eligible(cell_dir: Path, report: Any, method: str) -> set[str] | None:
    """The matrices the cell's row choice could pick from (its MaskConfig in clm_run.json); None (every matrix)
    for whole layers, which ignore the row floor, or a run whose config cannot be read."""
    from clm_explore.config import ConfigError, MaskConfig, from_dict
    from clm_explore.masks import eligible_matrices

    if method == "layers":
        return None
    try:
        mask = read_json_object(cell_dir / "clm_run.json")["config"]["mask"]
        return eligible_matrices(report, from_dict(MaskConfig, mask))
    except (KeyError, TypeError, ValueError, ConfigError):
        return None


def mask_overlap(out_dir: Path, results: pd.DataFrame) -> pd.DataFrame:
    """Jaccard of row masks between OVERLAP_METHODS, per budget and seed (pairs a < b, each once)."""
    ok = results[(results["status"] == "succeeded") & results["method"].isin(OVERLAP_METHODS)]
    if ok["method"].nunique() < 2:
        return pd.DataFrame(columns=["budget", "seed", "method_a", "method_b", "jaccard"])
    from clm_explore.masks import masks_jaccard

    recs = []
    for (budget, seed), group in ok.groupby(["budget", "seed"]):
        read = {r["method"]: _cell_masks(out_dir / r["cell"]) for _, r in group.iterrows()}
        masks = {method: cell for method, cell in read.items() if cell is not None}
        names = [m for m in OVERLAP_METHODS if m in masks]
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                recs.append({"budget": budget, "seed": seed, "method_a": a, "method_b": b,
                             "jaccard": masks_jaccard(masks[a], masks[b])})
    return pd.DataFrame(recs, columns=["budget", "seed", "method_a", "method_b", "jaccard"])
