"""The benchmark grid: methods x budgets x seeds on one data set, with results, mask statistics and a report.

Each cell is one ``clm-explore finetune ... --json --out <cell>`` subprocess, so peak memory is measured
per cell and a crash costs one cell, not the grid. A cell whose ``metrics.json`` says it succeeded is
never run again, so an interrupted grid resumes where it stopped. ``run_grid`` writes into ``out_dir``:

- ``data/`` (the train/validation/test files every cell reads, after ``shots``/``limit``), ``cells/``,
  ``logs/`` (each cell's stderr), ``bench.json`` (the config);
- ``results.csv`` (one row per method, budget and seed), ``summary.csv`` (mean and std over seeds),
  ``masks.csv`` (share of selected rows per (layer, module) for every row-mask run), ``overlap.csv``
  (Jaccard of the row masks of sparse, fisher, gradient and random), ``tuning.csv`` with ``tune_lr``;
- ``report.html``: self-contained plotly figures (Pareto, stability, cost, curves, mask overlap).
"""

from __future__ import annotations

import html
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clm_explore.config import METHODS, ConfigError, DataConfig
from clm_explore.data import AnnotatedData, load_data

BUDGET_METHODS = ("sparse", "layers", "random", "fisher", "gradient")
"""Methods whose trainable set is sized by the budget; the others get one cell per seed."""
OVERLAP_METHODS = ("sparse", "fisher", "gradient", "random")
LR_FACTORS = (1.0, 1 / 3, 3.0)
"""The LR sweep: the method's default times these (the default first, so it wins ties)."""
SAME_CELLS = ("data", "model", "epochs", "shots", "limit", "batch_size", "max_length", "data_seed", "tune_lr")
"""Config fields that change what a finished cell means; a resumed grid must match them."""


class BenchError(ConfigError):
    """A grid that cannot run as asked (bad option, or an output folder from a different grid)."""


@dataclass(frozen=True)
class BenchConfig:
    methods: tuple[str, ...] = ("full", "sparse", "lora")
    budgets: tuple[float, ...] = (0.01,)
    """Budgets of the budgeted methods (fractions of the backbone, or counts > 1)."""
    seeds: int = 3
    """Seeds 0..seeds-1 per (method, budget)."""
    epochs: int = 3
    shots: int = 0
    """Training rows per label (few-shot, seeded by ``data_seed``); 0 = all."""
    limit: int = 0
    """Cap on training rows, stratified by label (validation is capped at a quarter of it); 0 = none."""
    tune_lr: bool = False
    """Per method, pick the LR among default x LR_FACTORS by validation accuracy (1 seed), then use it."""
    model: str = "default"
    batch_size: int = 32
    max_length: int = 64
    device: str = "auto"
    data_seed: int = 0
    data: str = ""
    """Where the data came from (recorded, and checked when a grid resumes)."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise BenchError(f"methods must be among {', '.join(METHODS)}; got {', '.join(unknown) or 'none'}")
        if any(not (0 < b <= 1 or (b > 1 and float(b).is_integer())) for b in self.budgets) or not self.budgets:
            raise BenchError(f"budgets must be fractions in (0, 1] or whole counts > 1; got {self.budgets}")
        for name in ("seeds", "epochs"):
            if getattr(self, name) < 1:
                raise BenchError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.shots < 0 or self.limit < 0:
            raise BenchError(f"shots and limit must be >= 0, got {self.shots} and {self.limit}")


@dataclass(frozen=True)
class Cell:
    """One finetuning run of the grid."""

    method: str
    budget: float | None
    seed: int
    lr: float = 0.0
    """0 = the method's default learning rate."""

    @property
    def name(self) -> str:
        budget = f"-b{self.budget:g}" if self.budget is not None else ""
        return f"{self.method}{budget}-s{self.seed}"


@dataclass
class BenchResult:
    out_dir: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    lrs: dict[str, float] = field(default_factory=dict)
    """Learning rate used per method (chosen by the sweep with tune_lr, else the default)."""
    files: dict[str, Path] = field(default_factory=dict)


Runner = Callable[[Cell, Path, Path, Path, Callable[[str], None]], None]
"""runner(cell, data_dir, cell_dir, log_path, report) trains one cell into cell_dir (report: status text)."""


# ------------------------------------------------------------------------------------------------ data


def few_shot(frame: pd.DataFrame, shots: int, seed: int) -> pd.DataFrame:
    """At most ``shots`` rows per label, chosen at random (seeded); file order kept."""
    key = np.random.default_rng(seed).random(len(frame))
    rank = pd.Series(key).groupby(frame["label"].to_numpy()).rank(method="first").to_numpy()
    return frame[rank <= shots].reset_index(drop=True)


def stratified_cap(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """At most ``n`` rows, each label in proportion to its count and every label kept once when n allows."""
    if n <= 0 or len(frame) <= n:
        return frame.reset_index(drop=True)
    key = np.random.default_rng(seed).random(len(frame))
    labels = frame["label"].to_numpy()
    rank = pd.Series(key).groupby(labels).rank(method="first").to_numpy() - 1
    size = pd.Series(labels).map(pd.Series(labels).value_counts()).to_numpy()
    position = (rank + 0.5) / size  # a row's place inside its label: taking the lowest keeps proportions
    if n >= len(np.unique(labels)):
        position[rank == 0] = -1.0
    keep = np.sort(np.lexsort((key, position))[:n])
    return frame.iloc[keep].reset_index(drop=True)


def prepare_data(data: AnnotatedData, cfg: BenchConfig, out_dir: Path) -> tuple[Path, Path]:
    """Write the grid's data folder (after shots/limit) and the LR-tuning folder (test = validation).

    Returns:
        (data folder, tuning folder). The tuning folder never holds a test row: its "test" file is the
        validation split, which is carved from train when the data has none.
    """
    train, val = data.train, data.validation
    if cfg.shots:
        train, val = few_shot(train, cfg.shots, cfg.data_seed), few_shot(val, cfg.shots, cfg.data_seed)
    if cfg.limit:
        train = stratified_cap(train, cfg.limit, cfg.data_seed)
        val = stratified_cap(val, max(cfg.limit // 4, 1), cfg.data_seed)
    folders = out_dir / "data", out_dir / "data_tune"
    _write_splits(folders[0], train, val, data.test)
    _write_splits(folders[1], train, few_shot(val, 1, cfg.data_seed), val)  # one row per label for epoch curves
    return folders


def _write_splits(folder: Path, train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in (("train", train), ("validation", val), ("test", test)):
        frame[["text", "label"]].to_csv(folder / f"{name}.csv", index=False)


# ------------------------------------------------------------------------------------------------ grid


def plan_cells(cfg: BenchConfig, lrs: dict[str, float] | None = None) -> list[Cell]:
    """Every cell of the grid, method by method (budget None for methods without one)."""
    lrs = lrs or {}
    cells = []
    for method in cfg.methods:
        budgets: tuple[float | None, ...] = cfg.budgets if method in BUDGET_METHODS else (None,)
        cells += [Cell(method, b, s, lrs.get(method, 0.0)) for b in budgets for s in range(cfg.seeds)]
    return cells


def finished(cell_dir: Path) -> bool:
    """True when the cell's metrics.json exists and says it succeeded."""
    try:
        return json.loads((cell_dir / "metrics.json").read_text()).get("status") == "succeeded"
    except (OSError, ValueError):
        return False


def finetune_command(cell: Cell, cfg: BenchConfig, data_dir: Path, cell_dir: Path) -> list[str]:
    """The ``clm-explore finetune`` command line of one cell."""
    cmd = [sys.executable, "-m", "clm_explore.cli", "finetune", "--data", str(data_dir), "--model", cfg.model,
           "--method", cell.method, "--epochs", str(cfg.epochs), "--seed", str(cell.seed),
           "--batch-size", str(cfg.batch_size), "--max-length", str(cfg.max_length), "--device", cfg.device,
           "--out", str(cell_dir), "--overwrite", "--json"]
    if cell.budget is not None:
        cmd += ["--budget", repr(cell.budget)]
    if cell.lr:
        cmd += ["--lr", repr(cell.lr)]
    return cmd


def subprocess_runner(cfg: BenchConfig) -> Runner:
    """Run each cell as a subprocess; stderr goes to the log, progress is read from progress.jsonl."""

    def run(cell: Cell, data_dir: Path, cell_dir: Path, log_path: Path, report: Callable[[str], None]) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(finetune_command(cell, cfg, data_dir, cell_dir), stdout=subprocess.DEVNULL,
                                    stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                while proc.poll() is None:
                    report(_cell_progress(cell_dir))
                    time.sleep(0.5)
            except BaseException:  # interrupted: stop the cell we started, leave it unfinished
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise

    return run


def _cell_progress(cell_dir: Path) -> str:
    try:
        with open(cell_dir / "progress.jsonl", "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 2048))
            last = json.loads(f.read().decode(errors="ignore").strip().splitlines()[-1])
        return f"step {last['step']}/{last['total_steps']}"
    except (OSError, ValueError, IndexError, KeyError):
        return "preparing"


class ProgressBar:
    """One status line on stderr: cells done, the running cell, elapsed time and an estimate of the rest.

    On a terminal the line is redrawn in place (at most once a second); elsewhere (a log file, CI) only
    finished cells are printed, one line each.
    """

    def __init__(self, total: int, stream=None, width: int = 24):
        self.total, self.done, self.width = total, 0, width
        self.stream = stream or sys.stderr
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self.ran: list[float] = []
        self._last = (0.0, "")

    def show(self, label: str, detail: str = "", final: bool = False) -> None:
        now = time.perf_counter()
        if not (final or (self.is_tty and (now - self._last[0] >= 1 or detail != self._last[1]))):
            return
        self._last = (now, detail)
        filled = int(self.width * self.done / max(self.total, 1))
        left = f", ~{_clock(np.mean(self.ran) * (self.total - self.done))} left" if self.ran else ""
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label} {detail}"
        line = f"{line} ({_clock(now - self.started)}{left})"
        self.stream.write(f"\r{line:<100}" if self.is_tty else line + "\n")
        self.stream.flush()

    def advance(self, seconds: float | None) -> None:
        self.done += 1
        if seconds is not None:
            self.ran.append(seconds)

    def close(self) -> None:
        if self.is_tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def _run_cells(cells: list[Cell], root: Path, data_dir: Path, runner: Runner, bar: ProgressBar | None) -> None:
    for cell in cells:
        cell_dir, log = root / cell.name, root.parent / "logs" / f"{root.name}-{cell.name}.log"
        label = f"{cell.name}" + (f" lr={cell.lr:.3g}" if cell.lr else "")
        if finished(cell_dir):
            if bar:
                bar.advance(None)
            continue
        started = time.perf_counter()
        if bar:
            bar.show(label)
        try:
            runner(cell, data_dir, cell_dir, log, lambda detail, label=label: bar.show(label, detail) if bar else None)
        except Exception as exc:  # one broken cell must not stop the grid; its row says why
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"{type(exc).__name__}: {exc}\n")
        if bar:
            bar.advance(time.perf_counter() - started)
            bar.show(label, "done" if finished(cell_dir) else "FAILED (see logs/)", final=True)


def tune_learning_rates(cfg: BenchConfig, out_dir: Path, tune_dir: Path, runner: Runner,
                        bar: ProgressBar | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """Per method, seed 0 at the middle budget, LR = default x LR_FACTORS; best validation accuracy wins."""
    from clm_explore.finetune import DEFAULT_LR

    budget = sorted(cfg.budgets)[len(cfg.budgets) // 2]
    cells = [Cell(m, budget if m in BUDGET_METHODS else None, 0, float(f"{DEFAULT_LR[m] * f:.3g}"))
             for m in cfg.methods for f in LR_FACTORS]
    cells = [_TunedCell(**asdict(c)) for c in cells]  # folder names that include the LR
    root = out_dir / "tune"
    _run_cells(cells, root, tune_dir, runner, bar)
    rows = [{"method": c.method, "budget": c.budget, "lr": c.lr,
             "val_accuracy": _read_metrics(root / c.name).get("accuracy")} for c in cells]
    table = pd.DataFrame(rows)
    chosen = {}
    for method, group in table.groupby("method", sort=False):
        scores = group["val_accuracy"].astype(float)
        chosen[method] = float(group["lr"].iloc[int(np.nanargmax(scores))]) if scores.notna().any() else 0.0
    table["chosen"] = [chosen[m] == lr for m, lr in zip(table["method"], table["lr"], strict=True)]
    return chosen, table


@dataclass(frozen=True)
class _TunedCell(Cell):
    @property
    def name(self) -> str:
        return f"{super().name}-lr{self.lr:.3g}"


def run_grid(data_path: str | Path, cfg: BenchConfig, out_dir: str | Path, data_cfg: DataConfig | None = None,
             runner: Runner | None = None, progress: bool = True) -> BenchResult:
    """Run (or resume) the grid and write results, statistics and the report into ``out_dir``.

    Args:
        data_path: a data file or folder (``load_data``); splits are carved the usual way.
        cfg: the grid; ``cfg.data`` is filled with ``data_path`` when empty.
        runner: trains one cell; defaults to a ``clm-explore finetune`` subprocess.
        progress: show a progress line on stderr.

    Raises:
        BenchError: ``out_dir`` holds a grid made with different data, model or training settings.
    """
    out_dir = Path(out_dir)
    if not cfg.data:
        cfg = BenchConfig(**{**asdict(cfg), "data": str(Path(data_path).resolve())})
    _check_resume(out_dir, cfg)
    data = load_data(data_path, data_cfg or DataConfig())
    data_dir, tune_dir = prepare_data(data, cfg, out_dir)
    runner = runner or subprocess_runner(cfg)
    lrs: dict[str, float] = {}
    tuning = None
    n_tune = len(cfg.methods) * len(LR_FACTORS) if cfg.tune_lr else 0
    bar = ProgressBar(n_tune + len(plan_cells(cfg))) if progress else None
    cells = plan_cells(cfg)
    try:
        if cfg.tune_lr:
            lrs, tuning = tune_learning_rates(cfg, out_dir, tune_dir, runner, bar)
            cells = plan_cells(cfg, lrs)
        _run_cells(cells, out_dir / "cells", data_dir, runner, bar)
    except KeyboardInterrupt:
        write_outputs(out_dir, cells, lrs, tuning)  # what finished so far; a rerun resumes
        raise
    finally:
        if bar:
            bar.close()
    return write_outputs(out_dir, cells, lrs, tuning)


def _check_resume(out_dir: Path, cfg: BenchConfig) -> None:
    path = out_dir / "bench.json"
    if path.is_file():
        before = json.loads(path.read_text())
        changed = [k for k in SAME_CELLS if k in before and before[k] != asdict(cfg)[k]]
        if changed:
            raise BenchError(f"{out_dir} holds a grid with different {', '.join(changed)}; its finished cells would "
                             "not match. Choose another --out, or delete that folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(cfg), indent=2))


# --------------------------------------------------------------------------------------------- results


RESULT_COLUMNS = ["method", "budget", "seed", "status", "accuracy", "macro_f1", "trainable_params", "trainable_share",
                  "selected_params", "train_seconds", "prep_seconds", "peak_memory_mb", "examples_per_second",
                  "lowest_layer", "lr", "epochs", "total_params", "base_params", "val_curve", "cell", "error"]


def _read_metrics(cell_dir: Path) -> dict:
    try:
        return json.loads((cell_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def collect_results(out_dir: Path, cells: list[Cell]) -> pd.DataFrame:
    """One row per cell (RESULT_COLUMNS); failed or missing cells keep their row, with the error text."""
    rows = []
    for cell in cells:
        cell_dir = out_dir / "cells" / cell.name
        m = _read_metrics(cell_dir)
        ok = m.get("status") == "succeeded"
        row = {k: m.get(k) for k in RESULT_COLUMNS} if ok else {}
        row.update(method=cell.method, budget=cell.budget, seed=cell.seed, cell=str(cell_dir.relative_to(out_dir)),
                   status=m.get("status", "failed") if not ok else "succeeded")
        if ok:
            row["trainable_share"] = m["trainable_params"] / max(m.get("base_params") or m["total_params"], 1)
            row["val_curve"] = json.dumps(m.get("val_curve", []))
            row["prep_seconds"] = m.get("prep_seconds", 0.0)
            row["error"] = ""
        else:
            row["error"] = _log_tail(out_dir / "logs" / f"cells-{cell.name}.log")
        rows.append(row)
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return frame.astype({"seed": int, "lowest_layer": "Int64", "trainable_params": "Int64", "selected_params": "Int64"})


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "not run"


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (method, budget): accuracy, macro-F1 (std = stability), share, cost."""
    ok = results[results["status"] == "succeeded"].copy()
    if ok.empty:
        return pd.DataFrame(columns=["method", "budget", "seeds"])
    ok["budget"] = ok["budget"].astype(float)
    cols = ["accuracy", "macro_f1", "trainable_share", "train_seconds", "peak_memory_mb", "examples_per_second"]
    ok[cols] = ok[cols].astype(float)
    grouped = ok.groupby(["method", "budget"], dropna=False, sort=False)
    out = grouped[cols].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out.insert(0, "seeds", grouped.size())
    out["trainable_params"] = grouped["trainable_params"].first()
    out["lr"] = grouped["lr"].first()
    out["lowest_layer"] = grouped["lowest_layer"].first()
    return out.reset_index()


def mask_statistics(out_dir: Path, results: pd.DataFrame) -> pd.DataFrame:
    """Per row-mask run and (layer, module): selected rows, eligible rows, share selected, lowest layer."""
    frames = []
    for _, r in results[results["status"] == "succeeded"].iterrows():
        cell_dir = out_dir / r["cell"]
        if not (cell_dir / "masks.safetensors").is_file() or not (cell_dir / "sensitivity").is_dir():
            continue
        from safetensors.torch import load_file  # torch only when there are masks to read

        from clm_explore.sensitivity import SensitivityReport

        masks = load_file(cell_dir / "masks.safetensors")
        recs = []
        for name, info in SensitivityReport.load(cell_dir / "sensitivity").matrices.items():
            rows = len(info.eligible_rows) if info.eligible_rows is not None else info.rows
            picked = int(masks[name].sum()) if name in masks else 0
            recs.append({"layer": info.layer, "module": info.module, "selected_rows": picked, "rows": rows,
                         "share_selected": picked / max(rows, 1)})
        frame = pd.DataFrame(recs).groupby(["layer", "module"], as_index=False).sum()
        frame["share_selected"] = frame["selected_rows"] / frame["rows"].clip(lower=1)
        frames.append(frame.assign(method=r["method"], budget=r["budget"], seed=r["seed"],
                                   lowest_layer=r["lowest_layer"]))
    cols = ["method", "budget", "seed", "layer", "module", "selected_rows", "rows", "share_selected", "lowest_layer"]
    return pd.concat(frames)[cols] if frames else pd.DataFrame(columns=cols)


def mask_overlap(out_dir: Path, results: pd.DataFrame) -> pd.DataFrame:
    """Jaccard of row masks between OVERLAP_METHODS, per budget and seed (pairs a < b, each once)."""
    ok = results[(results["status"] == "succeeded") & results["method"].isin(OVERLAP_METHODS)]
    if ok["method"].nunique() < 2:
        return pd.DataFrame(columns=["budget", "seed", "method_a", "method_b", "jaccard"])
    from safetensors.torch import load_file

    from clm_explore.masks import masks_jaccard

    recs = []
    for (budget, seed), group in ok.groupby(["budget", "seed"]):
        masks = {r["method"]: load_file(out_dir / r["cell"] / "masks.safetensors") for _, r in group.iterrows()
                 if (out_dir / r["cell"] / "masks.safetensors").is_file()}
        names = [m for m in OVERLAP_METHODS if m in masks]
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                recs.append({"budget": budget, "seed": seed, "method_a": a, "method_b": b,
                             "jaccard": masks_jaccard(masks[a], masks[b])})
    return pd.DataFrame(recs, columns=["budget", "seed", "method_a", "method_b", "jaccard"])


def write_outputs(out_dir: Path, cells: list[Cell], lrs: dict[str, float],
                  tuning: pd.DataFrame | None = None) -> BenchResult:
    """results.csv, summary.csv, masks.csv, overlap.csv (+ tuning.csv) and report.html from the cell folders."""
    results = collect_results(out_dir, cells)
    summary = summarise(results)
    masks, overlap = mask_statistics(out_dir, results), mask_overlap(out_dir, results)
    files = {name: out_dir / f"{name}.csv" for name in ("results", "summary", "masks", "overlap")}
    for name, frame in (("results", results), ("summary", summary), ("masks", masks), ("overlap", overlap)):
        frame.to_csv(files[name], index=False)
    if tuning is not None:
        files["tuning"] = out_dir / "tuning.csv"
        tuning.to_csv(files["tuning"], index=False)
    files["report"] = out_dir / "report.html"
    files["report"].write_text(render_report(results, summary, masks, overlap, tuning,
                                             json.loads((out_dir / "bench.json").read_text())))
    used = {m: float(g["lr"].dropna().iloc[0]) for m, g in results.groupby("method") if g["lr"].notna().any()}
    return BenchResult(out_dir, results, summary, {**lrs, **used}, files)


# ---------------------------------------------------------------------------------------------- report


def _label(method: str, budget: float | None) -> str:
    return method if budget is None or (isinstance(budget, float) and math.isnan(budget)) else f"{method}@{budget:g}"


def figures(results: pd.DataFrame, summary: pd.DataFrame, masks: pd.DataFrame, overlap: pd.DataFrame) -> list:
    """The report's plotly figures (an empty list when no cell succeeded)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if summary.empty:
        return []
    s = summary.assign(label=[_label(m, b) for m, b in zip(summary["method"], summary["budget"], strict=True)])
    pareto = go.Figure()
    for method, g in s.groupby("method", sort=False):
        pareto.add_trace(go.Scatter(x=g["trainable_share_mean"], y=g["accuracy_mean"], mode="markers+lines",
                                    name=method, text=g["label"], error_y={"array": g["accuracy_std"].fillna(0)}))
    front = _pareto_front(s)
    pareto.add_trace(go.Scatter(x=front["trainable_share_mean"], y=front["accuracy_mean"], mode="lines",
                                name="Pareto front", line={"dash": "dot", "color": "grey"}))
    pareto.update_layout(title="Accuracy vs trainable share (mean ± std over seeds)",
                         xaxis={"type": "log", "title": "trainable parameters / model parameters"},
                         yaxis={"title": "test accuracy"})
    stability = go.Figure(go.Bar(x=s["label"], y=s["accuracy_mean"], error_y={"array": s["accuracy_std"].fillna(0)},
                                 text=[f"{a:.3f} ± {0 if math.isnan(d) else d:.3f}" for a, d in
                                       zip(s["accuracy_mean"], s["accuracy_std"], strict=True)]))
    stability.update_layout(title="Accuracy per method: mean ± std over seeds (std = stability)",
                            yaxis={"title": "test accuracy"})
    cost = make_subplots(rows=1, cols=3, subplot_titles=("train seconds (incl. preparation)", "peak memory (MB)",
                                                         "examples / second"))
    for col, key in enumerate(("train_seconds", "peak_memory_mb", "examples_per_second"), start=1):
        cost.add_trace(go.Bar(x=s["label"], y=s[f"{key}_mean"], error_y={"array": s[f"{key}_std"].fillna(0)},
                              showlegend=False), row=1, col=col)
    cost.update_layout(title="Cost per method")
    figs = [pareto, stability, cost, _curves_figure(results)]
    if not overlap.empty:
        figs.append(_overlap_figure(overlap))
    if not masks.empty:
        figs.append(_mask_figure(masks))
    return figs


def _pareto_front(s: pd.DataFrame) -> pd.DataFrame:
    """Points no other point beats on both accuracy (higher) and trainable share (lower)."""
    ordered = s.sort_values(["trainable_share_mean", "accuracy_mean"], ascending=[True, False])
    best, keep = -np.inf, []
    for i, acc in zip(ordered.index, ordered["accuracy_mean"], strict=True):
        if acc > best:
            keep.append(i)
            best = acc
    return ordered.loc[keep]


def _curves_figure(results: pd.DataFrame):
    import plotly.graph_objects as go

    fig = go.Figure()
    for _, r in results[results["status"] == "succeeded"].iterrows():
        curve = json.loads(r["val_curve"] or "[]")
        if curve:
            fig.add_trace(go.Scatter(x=[p["seconds"] for p in curve], y=[p["accuracy"] for p in curve],
                                     mode="lines+markers", name=f"{_label(r['method'], r['budget'])} s{r['seed']}"))
    fig.update_layout(title="Validation accuracy after each epoch vs training seconds",
                      xaxis={"title": "seconds"}, yaxis={"title": "validation accuracy"})
    return fig


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
    fig = make_subplots(rows=1, cols=len(runs), subplot_titles=[_label(m, b) for (m, b), _ in runs])
    for col, (_, g) in enumerate(runs, start=1):
        table = g.pivot_table(index="module", columns="layer", values="share_selected", aggfunc="sum")
        fig.add_trace(go.Heatmap(z=table.to_numpy(), x=[str(c) for c in table.columns], y=list(table.index),
                                 colorscale="Viridis", showscale=col == 1), row=1, col=col)
    fig.update_layout(title="Share of rows selected per (layer, module), first seed (-1 = embeddings)")
    return fig


def render_report(results: pd.DataFrame, summary: pd.DataFrame, masks: pd.DataFrame, overlap: pd.DataFrame,
                  tuning: pd.DataFrame | None, config: dict) -> str:
    """A self-contained HTML page: the summary table, the figures (plotly.js inlined once), notes."""
    figs = figures(results, summary, masks, overlap)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs)]
    failed = results[results["status"] != "succeeded"]
    esc = html.escape
    body = [f"<h1>clm-explore benchmark</h1><p>{esc(json.dumps(config))}</p>",
            "<h2>Summary (mean and std over seeds)</h2>", summary.round(4).to_html(index=False, na_rep="")]
    if tuning is not None:
        body += ["<h2>Learning-rate sweep (validation accuracy, seed 0)</h2>", tuning.to_html(index=False)]
    if len(failed):
        body += [f"<h2>Cells that did not finish ({len(failed)})</h2>",
                 failed[["method", "budget", "seed", "status", "error"]].to_html(index=False)]
    body += ["<h2>Figures</h2>", *parts] if parts else ["<p>No cell finished, so there is nothing to plot.</p>"]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>clm-explore benchmark</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:90%}"
            "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>" + "\n".join(body) + "</body></html>")
