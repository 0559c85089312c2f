"""The benchmark grid: planning, data slicing, results/report content, failures, LR sweep and resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clm_explore.bench import (
    BenchConfig,
    BenchError,
    Cell,
    cell_environments,
    few_shot,
    finetune_command,
    plan_cells,
    run_grid,
    stale_settings,
    stratified_cap,
)
from clm_explore.bench_results import (
    compare_methods,
    compare_run_groups,
    difference_interval,
    read_metrics,
    std_ratio_interval,
)
from clm_explore.cli.bench_cmds import comparison_lines, sweep_lines
from clm_explore.data import DataError
from tests.conftest import held_by_another_process, wait_until


def in_process(cfg: BenchConfig, fail: str | None = None, **process_options):
    """A runner that trains the cell here (no subprocess): fast enough for the suite. The cell's config is read
    from its ``clm-explore finetune`` command line, so the options the grid passes are the ones tested.
    ``process_options`` (``subprocess_runner``'s pass_fds) have no process here to go to."""
    from clm_explore.cli import build_parser
    from clm_explore.cli.method_cmds import finetune_config
    from clm_explore.data import load_data
    from clm_explore.training import finetune

    def run(cell: Cell, data_dir: Path, cell_dir: Path, log: Path, report) -> None:
        if cell.method == fail:
            raise RuntimeError("boom")
        ft = finetune_config(build_parser().parse_args(finetune_command(cell, cfg, data_dir, cell_dir)[3:]))
        ft = replace(ft, device="cpu", sensitivity=replace(ft.sensitivity, calibration_rows=80, warmup_epochs=1))
        finetune(load_data(data_dir), ft, cell_dir, source="tiny-random", overwrite=True)

    return run


def _cfg(**kw) -> BenchConfig:
    base = {"methods": ("head", "sparse", "random"), "budgets": (0.05,), "seeds": 1, "epochs": 1,
            "batch_size": 80, "model": "tiny-random"}
    return BenchConfig(**{**base, **kw})


def test_plan_has_one_cell_per_budget_only_for_budgeted_methods():
    cells = plan_cells(BenchConfig(methods=("full", "sparse"), budgets=(0.01, 0.05), seeds=2), {"full": 3e-4})
    assert [c.name for c in cells] == ["full-s0", "full-s1", "sparse-b0.01-s0", "sparse-b0.01-s1",
                                      "sparse-b0.05-s0", "sparse-b0.05-s1"]
    assert cells[0].lr == 3e-4 and cells[2].lr == 0.0


def test_bad_grid_options_are_refused():
    with pytest.raises(BenchError, match="methods"):
        BenchConfig(methods=("nope",))
    with pytest.raises(BenchError, match="budgets .*; got 0.01, 1.5$"):  # as typed, not a Python tuple
        BenchConfig(budgets=(0.01, 1.5))
    with pytest.raises(BenchError, match="not both"):
        BenchConfig(lr={"sparse": 1e-3}, tune_lr=True)
    with pytest.raises(BenchError, match="learning rates"):
        BenchConfig(methods=("sparse",), lr={"full": 1e-4})
    with pytest.raises(BenchError, match="needs tune_lr"):
        BenchConfig(methods=("sparse",), tune_score=True)
    with pytest.raises(BenchError, match="row scores"):
        BenchConfig(methods=("sparse", "random"), score={"random": "taylor"})  # random rows have no score
    with pytest.raises(BenchError, match="row scores"):
        BenchConfig(methods=("sparse",), score={"sparse": "entropy"})
    with pytest.raises(BenchError, match="row scores"):
        BenchConfig(methods=("sparse",), score={"sparse": "entropy+spread"})
    with pytest.raises(BenchError, match="needs tune_lr"):
        BenchConfig(methods=("sparse",), tune_spread=True)
    with pytest.raises(BenchError, match="spread_heads already"):
        BenchConfig(methods=("sparse",), tune_lr=True, tune_spread=True, spread_heads=True)
    with pytest.raises(BenchError, match="spread_heads already"):
        BenchConfig(methods=("sparse",), score={"sparse": "taylor+spread"}, spread_heads=True)
    with pytest.raises(BenchError, match="not both"):
        BenchConfig(methods=("sparse",), score={"sparse": "taylor"}, tune_lr=True, tune_spread=True)
    assert BenchConfig(methods=("sparse",), score={"sparse": "taylor+spread"}).score == {"sparse": "taylor+spread"}
    with pytest.raises(BenchError, match="each method and budget once"):  # one cell would count as two seeds
        BenchConfig(methods=("head", "full", "head"))
    with pytest.raises(BenchError, match="each method and budget once"):
        BenchConfig(budgets=(0.01, 1e-2))
    with pytest.raises(BenchError, match="each method and budget once"):  # one cell folder, sparse-b0.01-s0, for both
        BenchConfig(budgets=(0.01, 0.01000001))
    with pytest.raises(BenchError, match="batch_size must be >= 1"):  # before any cell, not by every cell
        BenchConfig(batch_size=0)


def test_fixed_learning_rates_reach_the_cells(data_dir, tmp_path):
    cfg = _cfg(methods=("head", "bitfit"), lr={"head": 0.02})
    result = run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    used = dict(zip(result.results["method"], result.results["lr"], strict=True))
    assert used == {"head": 0.02, "bitfit": 1e-3}  # bitfit keeps its default
    assert repr(result) == (f"BenchResult(2 of 2 cells succeeded, 2 summary rows, out_dir={str(tmp_path / 'out')!r}; "
                            "see .summary, .comparison, .files)")  # three DataFrames' reprs nested before
    with pytest.raises(BenchError, match="lr"):  # other rates would make the finished cells wrong
        run_grid(data_dir, _cfg(methods=("head", "bitfit"), lr={"head": 0.05}), tmp_path / "out",
                 runner=in_process(cfg), progress=False)
    # A rerun with a subset of the methods needs only the rates of the methods it keeps.
    subset = _cfg(methods=("bitfit",))
    again = run_grid(data_dir, subset, tmp_path / "out", runner=in_process(subset), progress=False)
    assert list(again.results["method"]) == ["bitfit"] and again.results["lr"].iloc[0] == 1e-3
    with pytest.raises(BenchError, match="lr"):  # bitfit's finished cell ran at its default rate
        run_grid(data_dir, _cfg(methods=("bitfit",), lr={"bitfit": 5e-3}), tmp_path / "out",
                 runner=in_process(subset), progress=False)


def test_cli_parses_method_learning_rates():
    from clm_explore.cli import UserError
    from clm_explore.cli.bench_cmds import parse_method_lrs, parse_method_scores

    assert parse_method_lrs("sparse=5e-3, full=6.7e-5") == {"sparse": 5e-3, "full": 6.7e-5}
    with pytest.raises(UserError, match="METHOD=LR"):
        parse_method_lrs("sparse:5e-3")
    with pytest.raises(UserError, match="METHOD=LR"):
        parse_method_lrs("sparse=fast")
    assert parse_method_scores("sparse=taylor") == {"sparse": "taylor"}
    with pytest.raises(UserError, match="METHOD=SCORE"):
        parse_method_scores("taylor")


def test_the_data_seed_chooses_the_few_shot_draw_and_the_grid_says_the_seeds_share_one(data_dir, tmp_path, capsys):
    """The bench review: every seed trains on one draw of --shots rows, so the seeds' spread leaves out the draw's,
    said nowhere, and the draw could not be changed from the command line."""
    from clm_explore.cli import build_parser
    from clm_explore.cli.bench_cmds import bench_config

    parsed = bench_config(build_parser().parse_args(["bench", "--data", str(data_dir), "--shots", "4",
                                                      "--data-seed", "3"]))
    assert (parsed.shots, parsed.data_seed) == (4, 3)
    cfg = replace(_cfg(methods=("head",)), shots=parsed.shots, data_seed=parsed.data_seed)
    run_grid(data_dir, cfg, tmp_path / "three", runner=in_process(cfg), progress=True)
    assert "every seed trains on the same 4 rows per label (--data-seed 3); the spread over seeds leaves out" in \
        capsys.readouterr().err
    zero = replace(cfg, data_seed=0)
    run_grid(data_dir, zero, tmp_path / "zero", runner=in_process(zero), progress=False)
    drawn = [set(pd.read_csv(tmp_path / out / "data" / "train.csv")["text"]) for out in ("three", "zero")]
    assert drawn[0] != drawn[1]  # another draw


def test_finetune_command_passes_the_cell():
    cmd = finetune_command(Cell("sparse", 0.01, 2, 5e-4), _cfg(), Path("d"), Path("c"))
    text = " ".join(cmd)
    assert "--method sparse" in text and "--budget 0.01" in text and "--seed 2" in text and "--lr 0.0005" in text
    assert "--score" not in cmd  # the default row score: the command (and folder name) of older grids
    taylor = finetune_command(Cell("sparse", 0.01, 2, 5e-4, "taylor"), _cfg(), Path("d"), Path("c"))
    assert taylor[taylor.index("--score") + 1] == "taylor"
    assert "--json" in cmd and "--overwrite" in cmd and cmd[cmd.index("--out") + 1] == "c"
    assert "--budget" not in finetune_command(Cell("full", None, 0), _cfg(), Path("d"), Path("c"))
    assert "--cold-head" not in cmd
    assert "--cold-head" in finetune_command(Cell("full", None, 0), _cfg(cold_head=True), Path("d"), Path("c"))
    assert "--spread-heads" not in cmd
    spread = _cfg(methods=("sparse", "fisher", "random", "full"), spread_heads=True)
    assert [m for m in ("sparse", "fisher", "random", "full")
            if "--spread-heads" in finetune_command(Cell(m, 0.01, 0), spread, Path("d"), Path("c"))] == ["sparse", "fisher"]
    spread_taylor = finetune_command(Cell("sparse", 0.01, 0, 0.0, "taylor+spread"), _cfg(), Path("d"), Path("c"))
    assert spread_taylor[spread_taylor.index("--score") + 1] == "taylor" and "--spread-heads" in spread_taylor
    assert "--schedule" not in cmd and "--average-last" not in cmd  # the defaults: older grids' commands
    swa = finetune_command(Cell("full", None, 0), _cfg(schedule="constant", average_last=0.5), Path("d"), Path("c"))
    assert swa[swa.index("--schedule") + 1] == "constant" and swa[swa.index("--average-last") + 1] == "0.5"
    assert "--keep-best" not in cmd and "--early-stop" not in cmd
    best = finetune_command(Cell("full", None, 0), _cfg(keep_best=True, early_stop=3), Path("d"), Path("c"))
    assert "--keep-best" in best and best[best.index("--early-stop") + 1] == "3"


def test_prefix_init_reaches_the_prefix_cells_and_only_their_grids_resume_on_it(data_dir, tmp_path):
    zero = _cfg(methods=("prefix", "head"), prefix_init="zero")
    cmd = finetune_command(Cell("prefix", None, 0), zero, Path("d"), Path("c"))
    assert cmd[cmd.index("--prefix-init") + 1] == "zero"
    assert "--prefix-init" not in finetune_command(Cell("head", None, 0), zero, Path("d"), Path("c"))
    assert "--prefix-init" not in finetune_command(Cell("prefix", None, 0), _cfg(), Path("d"), Path("c"))  # older grids'
    heads = _cfg(methods=("head",))
    run_grid(data_dir, heads, tmp_path / "heads", runner=in_process(heads), progress=False)
    other = _cfg(methods=("head",), prefix_init="zero")  # no prefix cell: nothing it changes
    assert len(run_grid(data_dir, other, tmp_path / "heads", runner=in_process(other), progress=False).results) == 1
    prefix = _cfg(methods=("prefix",), prefix_init="zero")
    results = run_grid(data_dir, prefix, tmp_path / "prefix", runner=in_process(prefix), progress=False).results
    assert json.loads((tmp_path / "prefix" / "cells" / "prefix-s0" / "metrics.json").read_text())["prefix_init"] == "zero"
    assert len(results) == 1
    with pytest.raises(BenchError, match="`prefix_init` zero there, random now"):
        run_grid(data_dir, _cfg(methods=("prefix",)), tmp_path / "prefix", runner=in_process(prefix), progress=False)


def test_bad_training_recipe_is_refused():
    with pytest.raises(BenchError, match="schedule must be one of"):
        _cfg(schedule="step")
    with pytest.raises(BenchError, match="average_last must be in"):
        _cfg(average_last=1.5)
    with pytest.raises(BenchError, match="keep_best does not combine with average_last"):
        _cfg(keep_best=True, average_last=0.5)


@pytest.mark.parametrize(("budgets", "phrase"), [((0.01, 99_999_999), "the backbone has"), ((10,), "buys no row")])
def test_a_budget_the_model_cannot_run_is_refused_before_any_cell(data_dir, tmp_path, budgets, phrase):
    cfg = _cfg(methods=("head", "sparse"), budgets=budgets)
    with pytest.raises(BenchError, match=phrase) as caught:
        run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    assert f"{budgets[-1]:g} cannot run sparse" in str(caught.value)
    assert not (tmp_path / "out").exists()  # not even the head's cell ran, nor bench.json was written


def test_few_shot_and_limit_are_seeded_and_stratified():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": ["a"] * 70 + ["b"] * 25 + ["c"] * 5})
    shots = few_shot(frame, 3, seed=0)
    assert shots["label"].value_counts().to_dict() == {"a": 3, "b": 3, "c": 3}
    assert shots.equals(few_shot(frame, 3, seed=0)) and not shots.equals(few_shot(frame, 3, seed=1))
    capped = stratified_cap(frame, 20, seed=0)
    assert capped["label"].value_counts().to_dict() == {"a": 14, "b": 5, "c": 1}
    assert len(stratified_cap(frame, 500, seed=0)) == 100


def test_grid_writes_results_statistics_and_report(data_dir, tmp_path):
    cfg = _cfg()
    result = run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    out = tmp_path / "out"
    results = pd.read_csv(out / "results.csv")
    assert list(results["method"]) == ["head", "sparse", "random"]
    assert (results["status"] == "succeeded").all()
    for column in ("accuracy", "macro_f1", "trainable_params", "train_seconds", "peak_memory_mb",
                   "examples_per_second", "lowest_layer", "lr", "val_curve"):
        assert column in results
    assert results["budget"].isna().tolist() == [True, False, False]
    assert json.loads(results["val_curve"][0])[0]["epoch"] == 1
    assert (results["device"] == "cpu").all() and (results["labels_predicted"] >= 1).all()
    assert (results["threads"] >= 1).all()  # clm_run.json's provenance: what a cell's time was computed with
    assert results.loc[0, "trainable_params"] < results.loc[1, "trainable_params"]
    masks = pd.read_csv(out / "masks.csv")
    assert set(masks["method"]) == {"sparse", "random"}
    for _, g in masks.groupby("method"):
        assert g["selected_rows"].sum() > 0 and (g["share_selected"].dropna() <= 1).all()
        below = g["layer"] < 1  # the tiny model's row floor (-1: the upper half of its 2 layers) is layer 1
        assert g.loc[below, "share_selected"].isna().all() and (g.loc[below, "rows"] == 0).all()  # not "0 picked"
        assert g.loc[~below, "share_selected"].notna().all()
    overlap = pd.read_csv(out / "overlap.csv")
    assert overlap[["method_a", "method_b"]].values.tolist() == [["sparse", "random"]]
    assert 0 <= overlap["jaccard"][0] <= 1
    page = (out / "report.html").read_text()
    assert page.count("plotly.js v") == 1  # plotly.js inlined once, then shared by every figure
    for title in ("Accuracy vs trainable share", "(sample std; std = stability)", "Cost per method", "Row-mask overlap"):
        assert title in page
    assert "&lt;NA&gt;" not in page and "<td>nan</td>" not in page  # the head's budget and lowest layer: blank
    # The grid in a sentence, its settings folded (the page opened on a line of raw JSON)
    assert "<p>head, sparse, random on " in page and "1 seed(s), 1 epoch(s)</p>" in page
    assert "<details><summary>Grid settings (bench.json)</summary><pre>{\n" in page
    assert set(result.summary["method"]) == {"head", "sparse", "random"}
    comparison = pd.read_csv(out / "comparison.csv")  # no full finetuning here: sparse against the others only
    assert comparison[["method", "versus"]].values.tolist() == [["sparse", "head"], ["sparse", "random"]]
    assert (comparison["verdict"] == "one seed").all() and comparison["accuracy_low"].isna().all()
    sparse, random_rows = (results.loc[results["method"] == m, "accuracy"].item() for m in ("sparse", "random"))
    assert comparison.loc[1, "accuracy_diff"] == pytest.approx(sparse - random_rows)
    assert "Differences (method − versus" in page and "Test accuracy difference in points" in page
    assert results["oos_accuracy"].isna().all()  # every test label is a train label
    assert "oos_accuracy_mean" not in result.summary


def test_difference_interval_is_welchs():
    from scipy import stats

    a, b = [0.93, 0.935, 0.928, 0.931], [0.925, 0.927, 0.921]
    diff, low, high = difference_interval(a, b)
    expected = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(sum(a) / 4 - sum(b) / 3)
    assert (low, high) == pytest.approx((expected.low, expected.high))
    assert difference_interval(a, b, level=0.5)[1] > low  # a lower level, a narrower interval
    one = difference_interval([0.9], b)
    assert one[0] == pytest.approx(0.9 - sum(b) / 3) and all(v != v for v in one[1:])  # NaN: no spread
    alike = difference_interval([0.9, 0.9], [0.8, 0.8])  # seeds that all agree give no interval, not a certain one
    assert alike[0] == pytest.approx(0.1) and all(math.isnan(v) for v in alike[1:])


def test_runs_without_spread_on_either_side_are_not_called_ahead_or_behind():
    rows = [("full", None, s, 0.9) for s in range(3)] + [("head", None, s, 0.7) for s in range(2)]
    results = pd.DataFrame([{"method": m, "budget": b, "seed": s, "accuracy": a, "macro_f1": a, "oos_accuracy": None,
                             "status": "succeeded"} for m, b, s, a in rows])
    c = compare_methods(results).iloc[0]
    assert c["verdict"] == "no spread" and math.isnan(c["accuracy_low"]) and c["accuracy_diff"] == pytest.approx(-0.2)
    assert comparison_lines(compare_methods(results))[1] == "  head - full: -20.00 no spread (2 vs 3 seeds)"
    groups = compare_run_groups([{"accuracy": 0.7, "macro_f1": 0.7}] * 2, [{"accuracy": 0.9, "macro_f1": 0.9}] * 3)
    assert list(groups["verdict"]) == ["no spread", "no spread"] and groups["low_points"].isna().all()


def test_std_ratio_interval_covers_the_true_ratio_as_often_as_its_level_says():
    rng = np.random.default_rng(0)
    draws = [std_ratio_interval(rng.normal(0.9, 0.005, 5), rng.normal(0.9, 0.01, 5)) for _ in range(2000)]
    coverage = np.mean([low <= 0.5 <= high for low, high in draws])
    assert 0.935 < coverage < 0.965  # 95% over 2000 draws: +-1.5 points is about 3 standard errors
    low, high = std_ratio_interval([0.91, 0.92, 0.93], [0.90, 0.92, 0.94])  # ratio 0.5, 2 dof a side
    assert (low, high) == pytest.approx((0.5 / 39**0.5, 0.5 * 39**0.5))  # F(0.975; 2, 2) = 39
    assert all(math.isnan(v) for v in std_ratio_interval([0.9, 0.9], [0.8, 0.9]))  # no spread: nothing to say
    assert all(math.isnan(v) for v in std_ratio_interval([0.9], [0.8, 0.9]))


def test_methods_are_compared_with_full_and_sparse_with_the_cheap_ones():
    rows = [("full", None, s, a) for s, a in enumerate((0.90, 0.91, 0.92))]
    rows += [("sparse", 0.01, s, a) for s, a in enumerate((0.95, 0.955, 0.96))]
    rows += [("random", 0.01, s, a) for s, a in enumerate((0.949, 0.956, 0.961))]
    rows += [("random", 0.05, 0, 0.5), ("head", None, 0, 0.7)]
    results = pd.DataFrame([{"method": m, "budget": b, "seed": s, "accuracy": a, "macro_f1": a - 0.01,
                             "oos_accuracy": None, "status": "succeeded"} for m, b, s, a in rows])
    results.loc[len(results)] = {"method": "lora", "budget": None, "seed": 0, "accuracy": None, "status": "failed"}
    c = compare_methods(results)
    pairs = [(m if pd.isna(b) else f"{m}@{b:g}", v) for m, b, v in c[["method", "budget", "versus"]].itertuples(index=False)]
    assert pairs == [("sparse@0.01", "full"), ("random@0.01", "full"), ("random@0.05", "full"), ("head", "full"),
                     ("sparse@0.01", "random"), ("sparse@0.01", "head")]  # random@0.05: another budget
    sparse_full = c.iloc[0]
    assert sparse_full["accuracy_diff"] == pytest.approx(0.045) and sparse_full["verdict"] == "ahead"
    assert sparse_full["macro_f1_diff"] == pytest.approx(0.045) and sparse_full["accuracy_low"] > 0
    assert sparse_full["std_ratio"] == pytest.approx(0.5)
    assert (sparse_full["std_ratio_low"], sparse_full["std_ratio_high"]) == pytest.approx(std_ratio_interval([0.95, 0.955, 0.96], [0.90, 0.91, 0.92]))
    assert c.iloc[4]["verdict"] == "level" and c.iloc[4]["accuracy_low"] < 0 < c.iloc[4]["accuracy_high"]
    assert c.iloc[3]["verdict"] == "one seed" and c.iloc[3]["accuracy_diff"] == pytest.approx(-0.21)
    assert "oos_accuracy_diff" not in c  # no out-of-scope rows in this grid's test split
    lines = comparison_lines(c)  # what `clm-explore bench` prints under its summary
    assert lines[1].startswith("  sparse@0.01 - full: +4.50 [+") and lines[1].endswith("ahead (3 vs 3 seeds, std ratio 0.50 [0.08, 3.12])")
    assert lines[4] == "  head - full: -21.00 one seed (1 vs 3 seeds)"
    scored = compare_methods(results.assign(oos_accuracy=results["accuracy"] - 0.2))
    assert scored.iloc[0]["oos_accuracy_diff"] == pytest.approx(0.045)
    assert comparison_lines(scored)[1].endswith("; with abstention +4.50 [" + lines[1].split("[")[1].split("]")[0] + "]")
    behind = compare_methods(results.assign(accuracy=lambda f: f["accuracy"].where(f["method"] != "sparse", 0.5)))
    assert behind.iloc[0]["verdict"] == "behind"


def test_groups_of_runs_are_compared_per_metric():
    sparse = [{"accuracy": a, "macro_f1": a - 0.02, "out_of_scope": {"accuracy": a - 0.1, "auroc": 0.8}}
              for a in (0.95, 0.955, 0.96)]
    full = [{"accuracy": a, "macro_f1": a - 0.02} for a in (0.90, 0.91, 0.92)]
    table = compare_run_groups(sparse, full).set_index("metric")
    assert list(table.index) == ["accuracy", "macro-F1"]  # the full runs have no out-of-scope scores
    row = table.loc["accuracy"]
    assert (row["a_runs"], row["b_runs"]) == (3, 3) and row["a_mean"] == pytest.approx(0.955)
    assert row["difference_points"] == pytest.approx(4.5) and row["verdict"] == "ahead"
    assert row["low_points"] == pytest.approx(difference_interval([0.95, 0.955, 0.96], [0.90, 0.91, 0.92])[1] * 100)
    assert row["std_ratio"] == pytest.approx(0.5) and row["std_ratio_low"] < 0.5 < row["std_ratio_high"]
    with_scope = compare_run_groups(sparse, sparse[:1]).set_index("metric")
    assert with_scope.loc["accuracy with abstention", "verdict"] == "one seed"
    assert with_scope.loc["out-of-scope AUROC", "difference_points"] == pytest.approx(0.0)


def test_out_of_scope_test_rows_get_their_own_columns(tiny_data, tmp_path):
    test = tiny_data.test.copy()
    test.loc[test.index[:8], "label"] = "something_else"  # a label train never had
    folder = tmp_path / "data"
    folder.mkdir()
    for split, frame in (("train", tiny_data.train), ("validation", tiny_data.validation), ("test", test)):
        frame.to_csv(folder / f"{split}.csv", index=False)
    cfg = _cfg(methods=("head",), seeds=2)
    result = run_grid(folder, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    for seed, row in results.set_index("seed").iterrows():
        scope = json.loads((tmp_path / "out" / row["cell"] / "metrics.json").read_text())["out_of_scope"]
        assert scope["rows"] == 8
        assert (row["oos_accuracy"], row["oos_macro_f1"], row["oos_auroc"]) == pytest.approx(
            (scope["accuracy"], scope["macro_f1"], scope["auroc"])), seed
    summary = result.summary.iloc[0]
    assert summary["oos_accuracy_mean"] == pytest.approx(results["oos_accuracy"].mean())


def test_the_printed_table_shows_the_out_of_scope_accuracy_where_test_has_unseen_labels(tiny_data, tmp_path,
                                                                                       monkeypatch, capsys):
    """The bench review: plain accuracy counts the unseen labels' rows wrong (0.003 on hint3_curekart, half its test
    rows), and their accuracy with abstention was in results.csv alone."""
    import clm_explore.bench as bench
    from clm_explore.cli import main

    test = tiny_data.test.copy()
    test.loc[test.index[:8], "label"] = "something_else"
    folder = tmp_path / "data"
    folder.mkdir()
    for split, frame in (("train", tiny_data.train), ("validation", tiny_data.validation), ("test", test)):
        frame.to_csv(folder / f"{split}.csv", index=False)
    monkeypatch.setattr(bench, "subprocess_runner", in_process)
    assert main(["bench", "--data", str(folder), "--model", "tiny-random", "--methods", "head", "--seeds", "1",
                 "--epochs", "1", "--out", str(tmp_path / "out")]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["method"])
    assert "macro_f1_mean oos_accuracy_mean" in " ".join(header.split())


def test_a_mistyped_data_path_leaves_the_out_folder_free(data_dir, tmp_path):
    cfg = _cfg(methods=("head",))
    with pytest.raises(DataError, match="no-such-data does not exist"):
        run_grid(tmp_path / "no-such-data", cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    assert not (tmp_path / "out" / "bench.json").exists()
    result = run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)  # the right data runs
    assert result.results["status"].eq("succeeded").all()


def test_a_second_bench_on_a_grid_being_run_is_refused(data_dir, tmp_path):
    """The concurrency review: two benches on one --out (or a resume while the first still ran) both ran every cell,
    each refusing and marking failed the cells the other wrote, and retraining cells the other had finished."""
    out = tmp_path / "out"
    out.mkdir()
    cfg, calls = _cfg(methods=("head",)), []
    with held_by_another_process("clm_explore.bench:grid_lock", out) as pid:
        with pytest.raises(BenchError, match=rf"Another bench is running the grid in .*out \(.* pid {pid}\)"):
            run_grid(data_dir, cfg, out, runner=lambda *args: calls.append(args), progress=False)
        assert calls == [] and not (out / "bench.json").exists()
    result = run_grid(data_dir, cfg, out, runner=in_process(cfg), progress=False)  # the lock went with its process
    assert result.results["status"].eq("succeeded").all() and not (out / ".bench.lock").exists()


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(data_dir, tmp_path):
    cfg = _cfg(methods=("sparse", "head"))
    result = run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg, fail="sparse"), progress=False)
    rows = result.results.set_index("method")
    assert rows.loc["sparse", "status"] == "failed" and "boom" in rows.loc["sparse", "error"]
    assert rows.loc["head", "status"] == "succeeded"
    assert "did not finish" in (tmp_path / "out" / "report.html").read_text()


def cell_process(*lines: str):
    """A runner whose cell is a small Python process (through ``_run_process``, as ``subprocess_runner``'s cells):
    it prints the data's warnings to stderr, as finetune does first, then runs ``lines`` (the cell's name is ``cell``)."""
    from clm_explore.bench import _run_process

    warned = ("import os, signal, sys; print('warning: 1 text(s) occur in both train and validation (leakage)', "
              "file=sys.stderr); print('warning: label variants', file=sys.stderr)")

    def run(cell: Cell, data_dir: Path, cell_dir: Path, log: Path, report) -> int:
        code = "; ".join([warned, f"cell = {cell.name!r}", *lines])
        return _run_process([sys.executable, "-c", code], {}, cell_dir, log, report)

    return run


def test_a_cell_killed_by_a_signal_is_named_not_its_data_warnings(data_dir, tmp_path):
    """The operations review: a cell killed for memory (SIGKILL) read "warning: ... (leakage) | warning: ..." as its
    error, in results.csv and --json's first_error, and its log held only those warnings."""
    from clm_explore.cli.bench_cmds import _first_error

    killed = cell_process("os.kill(os.getpid(), signal.SIGKILL)")
    result = run_grid(data_dir, _cfg(methods=("head",)), tmp_path / "out", runner=killed, progress=False)
    said = "cell killed by signal SIGKILL (9): out of memory, or killed by someone"
    assert list(result.results["status"]) == ["failed"]
    assert list(result.results["error"]) == [said] == [_first_error(result.results)]
    assert (tmp_path / "out" / "logs" / "cells-head-s0.log").read_text().splitlines()[-1] == said


def test_a_cell_that_exits_with_an_error_says_its_code_and_an_interrupted_one_no_kill(data_dir, tmp_path):
    ends = cell_process("print('Traceback (most recent call last):', file=sys.stderr)",
                        "print('RuntimeError: boom', file=sys.stderr)",
                        "print('note: a note after the traceback', file=sys.stderr)",
                        "sys.exit(3 if cell == 'head-s0' else 130)")  # 130: Ctrl+C reached the cell first
    result = run_grid(data_dir, _cfg(methods=("head",), seeds=2), tmp_path / "out", runner=ends, progress=False)
    assert list(result.results["status"]) == ["failed", "interrupted"]
    assert result.results["error"][0] == "Traceback (most recent call last): | RuntimeError: boom | cell exited with code 3"
    interrupted = (tmp_path / "out" / "logs" / "cells-head-s1.log").read_text()
    assert "cell exited" not in interrupted and "killed" not in interrupted  # its interrupt is no failure


def test_cli_says_why_when_no_cell_finished_and_exits_1(data_dir, tmp_path, monkeypatch, capsys):
    import clm_explore.bench as bench
    from clm_explore.cli import main

    monkeypatch.setattr(bench, "subprocess_runner", lambda cfg, **_: in_process(cfg, fail="head"))
    code = main(["bench", "--data", str(data_dir), "--model", "tiny-random", "--methods", "head", "--seeds", "1",
                 "--epochs", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "no cell finished (1 failed)" in err and "boom" in err


def test_cli_exits_1_when_some_cells_did_not_finish(data_dir, tmp_path, monkeypatch, capsys):
    """The bench review: a grid with a failed cell exited 0, so a script could not tell it from a whole grid."""
    import clm_explore.bench as bench
    from clm_explore.cli import main

    monkeypatch.setattr(bench, "subprocess_runner", lambda cfg, **_: in_process(cfg, fail="sparse"))
    argv = ["bench", "--data", str(data_dir), "--model", "tiny-random", "--methods", "head,sparse", "--seeds", "1",
            "--epochs", "1", "--out", str(tmp_path / "out")]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "head" in out and "1 cell(s) did not finish" in err
    assert main([*argv, "--json"]) == 1  # the resume retries the failed cell, which fails again
    assert json.loads(capsys.readouterr().out)["failed"] == 1
    monkeypatch.setattr(bench, "subprocess_runner", lambda cfg, **_: in_process(cfg))
    assert main(argv) == 0  # the retry finishes it


def test_lr_sweep_scores_on_validation_never_test(data_dir, tmp_path):
    cfg = _cfg(methods=("head",), tune_lr=True, tune_widen=0)
    result = run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    out = tmp_path / "out"
    tuning = pd.read_csv(out / "tuning.csv")
    assert list(tuning["lr"]) == [0.00333, 0.01, 0.03] and tuning["chosen"].sum() == 1
    chosen = float(tuning.loc[tuning["chosen"], "lr"].iloc[0])
    assert result.lrs["head"] == chosen == result.results.loc[0, "lr"]
    tune_test = pd.read_csv(out / "data_tune" / "test.csv")
    assert tune_test.equals(pd.read_csv(out / "data" / "validation.csv"))
    assert not set(tune_test["text"]) & set(pd.read_csv(out / "data" / "test.csv")["text"])


def scored_by_rate(accuracy_of_lr, calls: list[str]):
    """A runner that trains nothing: each cell "scores" accuracy_of_lr(its rate) (rates are what the widening
    of the sweep decides on), and records its name in ``calls``."""

    def run(cell: Cell, data_dir: Path, cell_dir: Path, log: Path, report) -> None:
        calls.append(cell.name)
        _write_metrics(cell_dir, accuracy_of_lr(cell.lr or 1e-2), cell.lr or 1e-2)

    return run


def _write_metrics(cell_dir: Path, accuracy: float, lr: float) -> None:
    cell_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"status": "succeeded", "accuracy": accuracy, "macro_f1": accuracy, "lr": lr,
               "trainable_params": 10, "total_params": 1000}
    (cell_dir / "metrics.json").write_text(json.dumps(metrics))


def _sweep(tuning: pd.DataFrame) -> list[tuple[float, bool, str]]:
    return [(r.lr, bool(r.chosen), r.edge if isinstance(r.edge, str) else "") for r in tuning.itertuples()]


def test_the_sweep_widens_past_its_edge_until_the_score_falls(data_dir, tmp_path):
    calls: list[str] = []
    peak = scored_by_rate(lambda lr: 0.9 - abs(math.log(lr / 0.09)) / 10, calls)  # best at 9x the default 1e-2
    result = run_grid(data_dir, _cfg(methods=("head",), tune_lr=True), tmp_path / "out", runner=peak, progress=False)
    assert _sweep(result.tuning) == [(0.00333, False, ""), (0.01, False, ""), (0.03, False, ""), (0.09, True, ""),
                                     (0.27, False, "")]
    assert result.lrs == {"head": 0.09} and result.results["lr"].tolist() == [0.09]
    assert pd.read_csv(tmp_path / "out" / "tuning.csv")["lr"].tolist() == [0.00333, 0.01, 0.03, 0.09, 0.27]
    calls.clear()  # a resumed grid makes the same choices from the finished cells and runs nothing again
    again = run_grid(data_dir, _cfg(methods=("head",), tune_lr=True), tmp_path / "out", runner=peak, progress=False)
    assert calls == [] and again.lrs == {"head": 0.09}


def test_a_rate_a_tie_or_an_unfinished_sweep_chose_is_marked_so(data_dir, tmp_path, capsys):
    """The bench review: tuning.csv marked chosen=True, and bench printed "chosen on validation", a rate every rate
    tied with, or the one rate of three a stopped sweep had finished."""
    from clm_explore.cli.bench_cmds import _chosen_by, sweep_lines

    cfg = _cfg(methods=("head",), tune_lr=True, tune_widen=0)
    tied = run_grid(data_dir, cfg, tmp_path / "tied", runner=scored_by_rate(lambda lr: 0.5, []), progress=False)
    assert tied.tuning.loc[tied.tuning["chosen"], "chosen_by"].tolist() == ["tie"]
    assert "head=0.01 (every rate tied: the default by the tie)" in sweep_lines(tied.tuning)[0]
    assert _chosen_by(tied.tuning) == {"head": "tie"}

    def stops_after_the_default(cell, data_dir, cell_dir, log, report):
        if cell.lr != 1e-2:
            raise RuntimeError("stopped")
        _write_metrics(cell_dir, 0.5, cell.lr)

    part = run_grid(data_dir, cfg, tmp_path / "part", runner=stops_after_the_default, progress=False)
    assert part.tuning.loc[part.tuning["chosen"], "chosen_by"].tolist() == ["part"]
    assert pd.read_csv(tmp_path / "part" / "tuning.csv")["chosen_by"].fillna("").tolist() == ["", "part", ""]
    fine = run_grid(data_dir, cfg, tmp_path / "fine", runner=scored_by_rate(lambda lr: lr, []), progress=False)
    assert fine.tuning["chosen_by"].fillna("").tolist() == ["", "", ""] and _chosen_by(fine.tuning) == {}


def test_a_sweep_that_runs_out_of_widening_says_its_choice_is_at_the_edge(data_dir, tmp_path):
    falling = scored_by_rate(lambda lr: 1 - lr, [])  # the lower the better: the sweep goes down
    result = run_grid(data_dir, _cfg(methods=("head",), tune_lr=True, tune_widen=1), tmp_path / "out",
                      runner=falling, progress=False)
    assert _sweep(result.tuning)[:2] == [(0.00111, True, "lowest"), (0.00333, False, "")]
    assert len(result.tuning) == 4
    lines = sweep_lines(result.tuning)
    assert lines[0] == "learning rates chosen on validation: head=0.00111"
    assert "head: 0.00111 is the lowest rate tried" in lines[1]
    narrow = run_grid(data_dir, _cfg(methods=("head",), tune_lr=True, tune_widen=0), tmp_path / "narrow",
                      runner=falling, progress=False)
    assert _sweep(narrow.tuning) == [(0.00333, True, "lowest"), (0.01, False, ""), (0.03, False, "")]
    with pytest.raises(BenchError, match="tune_widen"):  # its sweep might choose another rate now
        run_grid(data_dir, _cfg(methods=("head",), tune_lr=True), tmp_path / "narrow", runner=falling,
                 progress=False)
    with pytest.raises(BenchError, match="tune_widen"):
        BenchConfig(tune_widen=-1)


def test_a_grid_swept_before_the_sweep_widened_resumes_only_unwidened(data_dir, tmp_path):
    falling = scored_by_rate(lambda lr: 1 - lr, [])
    run_grid(data_dir, _cfg(methods=("head",), tune_lr=True, tune_widen=0), tmp_path / "out", runner=falling,
             progress=False)
    saved = tmp_path / "out" / "bench.json"
    saved.write_text(json.dumps({k: v for k, v in json.loads(saved.read_text()).items() if k != "tune_widen"}))
    with pytest.raises(BenchError, match="tune_widen"):
        run_grid(data_dir, _cfg(methods=("head",), tune_lr=True), tmp_path / "out", runner=falling, progress=False)
    old = run_grid(data_dir, _cfg(methods=("head",), tune_lr=True, tune_widen=0), tmp_path / "out", runner=falling,
                   progress=False)
    assert old.lrs == {"head": 0.00333}
    # Without a sweep the width means nothing, so it does not stop a grid from resuming.
    run_grid(data_dir, _cfg(methods=("head",)), tmp_path / "plain", runner=falling, progress=False)
    run_grid(data_dir, _cfg(methods=("head",), tune_widen=0), tmp_path / "plain", runner=falling, progress=False)


def test_each_budget_can_get_its_own_rate(data_dir, tmp_path):
    def runner(cell: Cell, data_dir: Path, cell_dir: Path, log: Path, report) -> None:
        lr = cell.lr or 5e-3  # the best rate falls as the budget grows: 1.5e-2 at 1%, nearest 5e-3 at 5%
        _write_metrics(cell_dir, 0.9 - abs(math.log(lr * cell.budget / 0.01 / 1.5e-2)) / 10, lr)

    shared = run_grid(data_dir, _cfg(methods=("sparse",), budgets=(0.01, 0.05), tune_lr=True), tmp_path / "shared",
                      runner=runner, progress=False)
    assert len(shared.tuning) == 3 and set(shared.tuning["budget"]) == {0.05}  # the middle budget's sweep
    assert shared.lrs == {"sparse": 5e-3}
    cfg = _cfg(methods=("sparse",), budgets=(0.01, 0.05), tune_lr=True, tune_each_budget=True)
    each = run_grid(data_dir, cfg, tmp_path / "each", runner=runner, progress=False)
    chosen = each.tuning[each.tuning["chosen"]]
    assert dict(zip(chosen["budget"], chosen["lr"], strict=True)) == {0.01: 0.015, 0.05: 0.005}
    assert len(each.tuning) == 7  # 3 rates a budget, and 1% went on upwards once until its score fell
    assert each.lrs == {"sparse@0.01": 0.015, "sparse@0.05": 0.005}
    assert dict(zip(each.results["budget"], each.results["lr"], strict=True)) == {0.01: 0.015, 0.05: 0.005}
    assert sweep_lines(each.tuning) == [
        "learning rates chosen on validation: sparse@0.01=0.015 (fisher), sparse@0.05=0.005 (fisher)"]
    with pytest.raises(BenchError, match="tune_each_budget"):  # the shared grid's cells ran at one rate
        run_grid(data_dir, cfg, tmp_path / "shared", runner=runner, progress=False)
    with pytest.raises(BenchError, match="needs tune_lr"):
        BenchConfig(tune_each_budget=True)


def failing_where(names: set[str], runner):
    """``runner``, but the cells named in ``names`` fail (as a cell that ran out of memory would)."""

    def run(cell: Cell, data_dir: Path, cell_dir: Path, log: Path, report) -> None:
        if cell.name in names:
            raise RuntimeError("out of memory")
        runner(cell, data_dir, cell_dir, log, report)

    return run


def test_a_resumed_grid_trains_again_the_cells_whose_rate_the_sweep_changed(data_dir, tmp_path, capsys):
    calls: list[str] = []
    best_at_3x = scored_by_rate(lambda lr: 0.9 - abs(math.log(lr / 0.03)) / 10, calls)  # head's default: 1e-2
    cfg = _cfg(methods=("head",), tune_lr=True, tune_widen=0)
    first = run_grid(data_dir, cfg, tmp_path / "out", runner=failing_where({"head-s0-lr0.03"}, best_at_3x),
                     progress=False)
    assert first.lrs == {"head": 0.01} and first.results["lr"].tolist() == [0.01]
    calls.clear()
    capsys.readouterr()
    again = run_grid(data_dir, cfg, tmp_path / "out", runner=best_at_3x, progress=False)
    assert calls == ["head-s0-lr0.03", "head-s0"]  # the failed sweep cell, then the main cell at its new rate
    assert again.lrs == {"head": 0.03} and again.results["lr"].tolist() == [0.03]
    assert ("cells/head-s0 finished with lr=0.01; the grid now gives it lr=0.03: training it again (the old run "
            "is kept in head-s0.replaced-1)") in capsys.readouterr().err
    assert read_metrics(tmp_path / "out" / "cells" / "head-s0.replaced-1")["lr"] == 0.01  # nothing finished is lost
    calls.clear()
    run_grid(data_dir, cfg, tmp_path / "out", runner=best_at_3x, progress=False)
    assert calls == []  # every finished cell matches its plan now


def test_a_finished_cell_is_judged_on_what_its_metrics_record():
    cell = Cell("head", None, 1)
    same = {"lr": 0.010000000001, "seed": 1, "method": "head", "epochs": 3}  # head's default, after a JSON trip
    assert stale_settings(cell, same, epochs=3) == []
    assert stale_settings(cell, {**same, "seed": 0, "epochs": 2}, epochs=3) == [("seed", 0, 1), ("epochs", 2, 3)]
    assert stale_settings(Cell("head", None, 1, lr=0.03), same) == [("lr", 0.010000000001, 0.03)]
    assert stale_settings(cell, {"lr": 0.01}, epochs=3) == []  # what a metrics.json does not record is not judged


def test_a_sweep_with_no_finished_cell_warns_that_its_method_takes_the_default_rate(data_dir, tmp_path, capsys):
    cfg = _cfg(methods=("head",), tune_lr=True, tune_widen=0)
    sweep = {"head-s0-lr0.00333", "head-s0-lr0.01", "head-s0-lr0.03"}
    result = run_grid(data_dir, cfg, tmp_path / "out", runner=failing_where(sweep, scored_by_rate(lambda lr: 0.5, [])),
                      progress=False)
    assert result.results["lr"].tolist() == [0.01]  # head's default
    assert "warning: no learning-rate sweep cell of head finished" in capsys.readouterr().err


def test_bench_json_is_written_whole_and_an_unreadable_one_says_what_to_do(data_dir, tmp_path, monkeypatch):
    cfg, out = _cfg(methods=("head",)), tmp_path / "out"
    runner = scored_by_rate(lambda lr: 0.5, [])
    run_grid(data_dir, cfg, out, runner=runner, progress=False)
    saved = (out / "bench.json").read_text()
    import builtins

    from clm_explore import runs

    class DiesHalfway:  # a file whose writes stop half way: the disk filled up
        def __init__(self, *args, **kwargs) -> None:
            self.file = builtins.open(*args, **kwargs)  # noqa: SIM115 - closed by __exit__, as open's own

        def __enter__(self) -> DiesHalfway:
            return self

        def __exit__(self, *exc) -> None:
            self.file.close()

        def write(self, text: str) -> None:
            self.file.write(text[: len(text) // 2])
            raise OSError("No space left on device")

    with monkeypatch.context() as patch, pytest.raises(OSError, match="No space"):
        patch.setattr(runs, "open", DiesHalfway, raising=False)  # every file the grid writes whole goes through it
        run_grid(data_dir, cfg, out, runner=runner, progress=False)
    assert (out / "bench.json").read_text() == saved  # the old config, whole
    for broken in (saved[:40], "[1, 2]"):
        (out / "bench.json").write_text(broken)
        with pytest.raises(BenchError, match="bench.json cannot be read .*Choose another --out"):
            run_grid(data_dir, cfg, out, runner=runner, progress=False)


def test_cells_run_side_by_side_with_jobs(data_dir, tmp_path):
    running, most, lock = [0], [0], threading.Lock()
    # Each cell goes on only once another cell is running beside it: cells run one at a time, the barrier breaks
    # after 30 s (BrokenBarrierError fails the cell) rather than two short sleeps happening not to overlap.
    side_by_side = threading.Barrier(2, timeout=30)

    def runner(cell: Cell, data_dir: Path, cell_dir: Path, log: Path, report) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            side_by_side.wait()
        finally:
            with lock:
                running[0] -= 1
        _write_metrics(cell_dir, 0.5, cell.lr or 1e-2)

    result = run_grid(data_dir, _cfg(methods=("head", "bitfit"), seeds=3, jobs=2), tmp_path / "out", runner=runner,
                      progress=False)
    assert most[0] == 2 and (result.results["status"] == "succeeded").all() and len(result.results) == 6
    with pytest.raises(BenchError, match="jobs"):
        BenchConfig(jobs=0)


def test_an_interrupt_stops_the_cells_running_side_by_side(data_dir, tmp_path):
    stopped, started = [], threading.Event()

    def runner(cell: Cell, data_dir: Path, cell_dir: Path, log: Path, report) -> None:
        if cell.seed == 0:  # an interrupt while the other cell runs (escaping this cell, as Ctrl+C would)
            started.wait(30)
            raise KeyboardInterrupt
        started.set()
        try:
            for _ in range(200):  # a cell's process being watched, as subprocess_runner does
                report("step")
                time.sleep(0.05)
        except BaseException:
            stopped.append(cell.name)
            raise
        _write_metrics(cell_dir, 0.5, 1e-2)

    with pytest.raises(KeyboardInterrupt):
        run_grid(data_dir, _cfg(methods=("head",), seeds=2, jobs=2), tmp_path / "out", runner=runner, progress=False)
    assert stopped == ["head-s1"] and not (tmp_path / "out" / "cells" / "head-s1" / "metrics.json").exists()
    assert (tmp_path / "out" / "results.csv").is_file()  # what finished so far is written on the way out


def test_each_running_cell_gets_its_own_gpu_or_share_of_the_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cell_environments(3, "auto", gpus=["0", "1"]) == [{"CUDA_VISIBLE_DEVICES": g} for g in ("0", "1", "0")]
    assert cell_environments(2, "cuda:1", gpus=["0", "1"]) == [{}, {}]  # one device named: every cell on it
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert cell_environments(2, "cpu") == [{"OMP_NUM_THREADS": "4"}] * 2
    assert cell_environments(1, "cpu") == [{}]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's thread count is kept
    assert cell_environments(2, "auto", gpus=["0"]) == [{}, {}]


def test_row_score_sweep_picks_the_best_pair_on_validation(data_dir, tmp_path):
    cfg = _cfg(methods=("head", "sparse"), tune_lr=True, tune_score=True, tune_widen=0)
    result = run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    tuning = pd.read_csv(tmp_path / "out" / "tuning.csv", keep_default_na=False)
    sweep = tuning[tuning["method"] == "sparse"]
    assert sorted(sweep["score"]) == ["fisher"] * 3 + ["taylor"] * 3 and len(tuning) == 9  # head: 3 rates, no score
    assert (tuning.groupby("method")["chosen"].sum() == 1).all()
    best = sweep.loc[sweep["chosen"]].iloc[0]
    assert best["val_accuracy"] == sweep["val_accuracy"].max()
    assert result.scores == {"sparse": best["score"]} and result.lrs["sparse"] == best["lr"]
    row = result.results.set_index("method").loc["sparse"]
    assert row["score"] == best["score"] and row["lr"] == best["lr"]
    assert (tmp_path / "out" / "tune" / "sparse-taylor-b0.05-s0-lr0.005").is_dir()


def test_spread_sweep_tries_every_score_both_ways_and_trains_the_choice(data_dir, tmp_path):
    from clm_explore.bench import tune_cells

    cfg = _cfg(methods=("sparse",), tune_lr=True, tune_score=True, tune_spread=True, tune_widen=0)
    random_sweep = [c for c in tune_cells(replace(cfg, methods=("sparse", "random"))) if c.method == "random"]
    assert {c.row_score for c in random_sweep} == {""} and len(random_sweep) == 3  # random rows: no score to spread
    result = run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    tuning = pd.read_csv(tmp_path / "out" / "tuning.csv", keep_default_na=False)
    sweep = tuning[tuning["method"] == "sparse"]
    assert sorted(set(sweep["score"])) == ["fisher", "fisher+spread", "taylor", "taylor+spread"] and len(sweep) == 12
    best = sweep.loc[sweep["chosen"]].iloc[0]
    assert best["val_accuracy"] == sweep["val_accuracy"].max() and result.scores == {"sparse": best["score"]}
    for variant in ("fisher", "taylor+spread"):  # each variant's sweep cell trained as its name says
        name = f"sparse{'' if variant == 'fisher' else '-' + variant}-b0.05-s0-lr0.005"
        run = json.loads((tmp_path / "out" / "tune" / name / "clm_run.json").read_text())["config"]
        assert (run["sensitivity"]["score"], run["mask"]["spread_heads"]) == (variant.split("+")[0], "+" in variant)
    cell = result.results.set_index("method").loc["sparse", "cell"]
    run = json.loads((tmp_path / "out" / cell / "clm_run.json").read_text())["config"]
    assert run["mask"]["spread_heads"] == best["score"].endswith("+spread")


def test_fixed_row_scores_reach_the_cells(data_dir, tmp_path):
    cfg = _cfg(methods=("sparse",), score={"sparse": "taylor"})
    result = run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    assert list(result.results["cell"]) == ["cells/sparse-taylor-b0.05-s0"] and result.scores == {"sparse": "taylor"}
    run = json.loads((tmp_path / "out" / "cells" / "sparse-taylor-b0.05-s0" / "clm_run.json").read_text())
    assert run["config"]["sensitivity"]["score"] == "taylor"
    with pytest.raises(BenchError, match="score"):  # its finished cell was chosen by Taylor rows
        run_grid(data_dir, _cfg(methods=("sparse",)), tmp_path / "out", runner=in_process(cfg), progress=False)


def test_resuming_with_other_training_settings_is_refused(data_dir, tmp_path):
    cfg = _cfg(methods=("head",))
    run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    with pytest.raises(BenchError, match="epochs"):
        run_grid(data_dir, _cfg(methods=("head",), epochs=2), tmp_path / "out", runner=in_process(cfg),
                 progress=False)
    with pytest.raises(BenchError, match="cold_head"):
        run_grid(data_dir, _cfg(methods=("head",), cold_head=True), tmp_path / "out", runner=in_process(cfg),
                 progress=False)
    with pytest.raises(BenchError, match="spread_heads"):
        run_grid(data_dir, _cfg(methods=("head",), spread_heads=True), tmp_path / "out", runner=in_process(cfg),
                 progress=False)
    with pytest.raises(BenchError, match="average_last"):
        run_grid(data_dir, _cfg(methods=("head",), average_last=0.5), tmp_path / "out", runner=in_process(cfg),
                 progress=False)
    with pytest.raises(BenchError, match="`keep_best` False there, True now"):
        run_grid(data_dir, _cfg(methods=("head",), keep_best=True), tmp_path / "out", runner=in_process(cfg),
                 progress=False)


def test_resuming_on_other_rows_is_refused(data_dir, tmp_path):
    import shutil

    data = tmp_path / "edited"
    shutil.copytree(data_dir, data)
    cfg = _cfg(methods=("head",))
    run_grid(data, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    assert len(json.loads((tmp_path / "out" / "bench.json").read_text())["data_sha256"]) == 64
    train = pd.read_csv(data / "train.csv")
    train.iloc[: len(train) - 5].to_csv(data / "train.csv", index=False)  # the file edited in place
    with pytest.raises(BenchError, match="trained on other rows .*the data file changed since, or clm-explore reads it otherwise now"):
        run_grid(data, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    assert len(pd.read_csv(tmp_path / "out" / "data" / "train.csv")) == len(train)  # the grid's rows left as they were
    with pytest.raises(BenchError, match=r"trained on other rows \(--limit 0 there, 150 now\)"):  # named where known
        run_grid(data, replace(cfg, limit=150), tmp_path / "out", runner=in_process(cfg), progress=False)


def test_a_rate_or_score_given_as_its_default_resumes_and_another_names_both(data_dir, tmp_path):
    from clm_explore.training import DEFAULT_LR

    cfg = _cfg(methods=("head", "sparse"))
    run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    same = _cfg(methods=("head", "sparse"), lr={"sparse": DEFAULT_LR["sparse"]}, score={"sparse": "fisher"})
    assert len(run_grid(data_dir, same, tmp_path / "out", runner=in_process(same), progress=False).results) == 2
    other = _cfg(methods=("head", "sparse"), lr={"sparse": 1e-3})
    with pytest.raises(BenchError, match=r"other settings \(`lr` \{'head': .*'sparse': 0.005\} there, .*'sparse': 0.001\} now"):
        run_grid(data_dir, other, tmp_path / "out", runner=in_process(other), progress=False)


def test_cells_that_never_ran_are_not_run_not_failed(tmp_path):
    from clm_explore.bench_results import collect_results

    cells = plan_cells(_cfg(methods=("head", "full", "bitfit")))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "cells-full-s0.log").write_text("Traceback ...\nRuntimeError: boom\n")
    (tmp_path / "cells" / "bitfit-s0").mkdir(parents=True)
    (tmp_path / "cells" / "bitfit-s0" / "metrics.json").write_text('{"status": "cancelled"}')
    (tmp_path / "logs" / "cells-bitfit-s0.log").write_text("interrupted\n")
    results = collect_results(tmp_path, cells)
    assert list(results["status"]) == ["not run", "failed", "cancelled"]
    assert list(results["error"])[:2] == ["not run", "Traceback ... | RuntimeError: boom"]


def test_a_grid_from_before_a_setting_existed_resumes_at_its_default(data_dir, tmp_path):
    cfg = _cfg(methods=("head",))
    run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    saved = tmp_path / "out" / "bench.json"
    older = {k: v for k, v in json.loads(saved.read_text()).items() if k not in ("schedule", "average_last")}
    saved.write_text(json.dumps(older))
    assert len(run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False).results) == 1
    saved.write_text(json.dumps(older))
    with pytest.raises(BenchError, match="schedule"):
        run_grid(data_dir, _cfg(methods=("head",), schedule="constant"), tmp_path / "out", runner=in_process(cfg),
                 progress=False)


def test_cli_grid_resumes_after_being_killed(data_dir, tmp_path):
    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "clm_explore.cli", "bench", "--data", str(data_dir), "--model", "tiny-random",
           "--methods", "head,bitfit", "--seeds", "1", "--epochs", "1", "--batch-size", "80", "--cold-head",
           "--schedule", "constant", "--average-last", "0.5", "--spread-heads", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = out / "cells" / "head-s0" / "metrics.json"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert first.exists(), (tmp_path / "first.log").read_text()
            proc.send_signal(signal.SIGTERM)  # bench stops its running cell and exits
            assert proc.wait(60) == 143  # 128 + SIGTERM, as a shell reports a kill
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    partial = pd.read_csv(out / "results.csv")  # written on the way out, before the rerun
    # The stopped cell: cancelled where it had begun its run, failed where it had only started, else not run.
    assert partial["status"][0] == "succeeded" and partial["status"][1] in ("cancelled", "failed", "not run")
    assert "run the same command again to resume" in (tmp_path / "first.log").read_text()
    stamp = first.stat().st_mtime_ns
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert first.stat().st_mtime_ns == stamp  # the finished cell was kept, not recomputed
    results = pd.read_csv(out / "results.csv")
    assert list(results["method"]) == ["head", "bitfit"] and (results["status"] == "succeeded").all()
    assert (results["cells_at_once"] == 1).all()  # each cell's record of its grid's --jobs, for the timing note
    assert (out / "report.html").is_file()
    saved = json.loads((out / "bench.json").read_text())
    assert saved["cold_head"] is True and saved["spread_heads"] is True
    cell_config = json.loads((out / "cells" / "bitfit-s0" / "clm_run.json").read_text())["config"]
    assert cell_config["head_warmup"] is False
    assert cell_config["schedule"] == "constant" and cell_config["average_last"] == 0.5


def test_an_output_that_is_a_file_is_refused(data_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BenchError, match="is a file"):
        run_grid(data_dir, _cfg(methods=("head",)), tmp_path / "afile", progress=False)


def test_the_first_failed_cells_error_is_named():
    from clm_explore.cli.bench_cmds import _first_error

    results = pd.DataFrame({"status": ["succeeded", "failed", "failed"], "error": ["", "OOM | killed", "boom"]})
    assert _first_error(results) == "OOM | killed"
    assert _first_error(results.iloc[:1]) is None


def test_the_summary_gives_the_seeds_mean_cost_and_their_lowest_layer():
    from clm_explore.bench_results import summarise

    seeds = pd.DataFrame({"method": ["random"] * 2, "budget": [0.01] * 2, "seed": [0, 1], "status": ["succeeded"] * 2,
                          "accuracy": [0.5, 0.6], "macro_f1": [0.4, 0.5], "trainable_share": [0.01] * 2,
                          "train_seconds": [1.0] * 2, "peak_memory_mb": [1.0] * 2, "examples_per_second": [1.0] * 2,
                          "trainable_params": pd.array([1194, 1200], dtype="Int64"), "lr": [1e-3] * 2,
                          "score": [""] * 2, "lowest_layer": pd.array([1, 0], dtype="Int64")})
    for column in ("oos_accuracy", "oos_macro_f1", "oos_auroc", "over_budget"):
        seeds[column] = None
    (row,) = summarise(seeds).to_dict(orient="records")  # before: the first seed's 1194 and layer 1
    assert (row["trainable_params"], row["lowest_layer"], row["seeds"]) == (1197, 0, 2)
    assert row["over_budget"] is False  # not NaN: a row method never takes more than its budget
    layers = seeds.assign(method="layers", over_budget=[True, None])
    assert summarise(layers).to_dict(orient="records")[0]["over_budget"] is True


def test_report_tables_keep_small_rates_and_blank_what_does_not_apply():
    from clm_explore.bench_report import _html_table

    page = _html_table(pd.DataFrame({"method": ["full", "sparse"], "lr": [2e-5, 5e-3], "accuracy": [0.93456, 0.9],
                                     "lowest_layer": pd.array([None, 3], dtype="Int64"),
                                     "peak_memory_mb": [15234.56, 980.0]}))
    assert "<td>2e-05</td>" in page and "<td>0.9346</td>" in page and "<td>3</td>" in page  # rounding gave 0.0
    assert "<td>15234.56</td>" in page  # not 1.523e+04
    assert "NA" not in page and "nan" not in page


def test_shots_above_a_labels_rows_are_said():
    from clm_explore.bench import shots_note

    train = pd.DataFrame({"text": list("abcdefg"), "label": ["x"] * 4 + ["y"] * 2 + ["z"]})
    assert shots_note(train, 2) == "--shots 2: 1 of 3 labels have fewer training rows and keep all theirs: z (1)"
    assert shots_note(train, 1) == "" and shots_note(train, 0) == ""
    assert shots_note(train, 10).startswith("--shots 10: 3 of 3 labels")


def test_report_figures_follow_the_share_show_no_spread_of_one_seed_and_share_one_mask_scale():
    from clm_explore.bench_report import figures

    cost = {f"{k}_{s}": 1.0 for k in ("train_seconds", "peak_memory_mb", "examples_per_second") for s in ("mean", "std")}
    summary = pd.DataFrame([  # --budgets 0.05,0.01 in that order, one seed each
        {"method": "sparse", "budget": 0.05, "trainable_share_mean": 0.05, "accuracy_mean": 0.8,
         "accuracy_std": np.nan, **cost},
        {"method": "sparse", "budget": 0.01, "trainable_share_mean": 0.01, "accuracy_mean": 0.7,
         "accuracy_std": np.nan, **cost},
    ])
    results = pd.DataFrame({"status": ["succeeded"], "val_curve": ["[]"], "method": ["sparse"], "budget": [0.01],
                            "seed": [0]})
    masks = pd.DataFrame([{"seed": 0, "method": "sparse", "budget": b, "module": "q", "layer": layer,
                           "share_selected": share} for b, layer, share in
                          ((0.01, 0, 0.02), (0.01, 1, 0.1), (0.05, 0, 0.1), (0.05, 1, 0.6))])
    pareto, stability, *_, mask_fig = figures(results, summary, masks, pd.DataFrame())
    assert list(pareto.data[0].x) == [0.01, 0.05]  # a line along the share, not zigzagging in --budgets order
    assert list(stability.data[0].text) == ["0.800", "0.700"]  # no "± 0.000" claimed of a single seed
    assert pareto.data[0].error_y.visible is stability.data[0].error_y.visible is False  # no flat whiskers
    assert {(t.zmin, t.zmax) for t in mask_fig.data} == {(0, 0.6)}  # one colour bar, one scale


def test_methods_at_one_share_are_told_apart_in_the_pareto_figure():
    """The bench review: random, fisher, gradient and sparse at 1% sat on one point in one marker shape."""
    from clm_explore.bench_report import figures

    cost = {f"{k}_{s}": 1.0 for k in ("train_seconds", "peak_memory_mb", "examples_per_second") for s in ("mean", "std")}
    summary = pd.DataFrame([{"method": m, "budget": 0.01, "trainable_share_mean": 0.0101, "accuracy_mean": 0.8,
                             "accuracy_std": 0.01, **cost} for m in ("sparse", "random", "fisher", "gradient")])
    results = pd.DataFrame({"status": ["succeeded"], "val_curve": ["[]"], "method": ["sparse"], "budget": [0.01],
                            "seed": [0]})
    pareto = figures(results, summary, pd.DataFrame(), pd.DataFrame())[0]
    methods = [t for t in pareto.data if t.name != "Pareto front"]
    assert len({t.marker.symbol for t in methods}) == 4
    assert all(t.error_y.visible for t in methods)  # three seeds' std: whiskers drawn


def _stopping_runner(cfg: BenchConfig, stop_at: str):
    """Trains cells in process until the cell named ``stop_at``, which is interrupted (Ctrl+C) as it runs."""
    train = in_process(cfg)

    def run(cell: Cell, data_dir: Path, cell_dir: Path, log: Path, report) -> None:
        if cell.name == stop_at:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("loading the model\n")
            raise KeyboardInterrupt
        train(cell, data_dir, cell_dir, log, report)

    return run


def test_a_cell_stopped_by_the_interrupt_reads_interrupted_not_failed(data_dir, tmp_path):
    cfg = _cfg(methods=("head", "full", "bitfit"))
    with pytest.raises(KeyboardInterrupt):
        run_grid(data_dir, cfg, tmp_path / "out", runner=_stopping_runner(cfg, "full-s0"), progress=False)
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(results["status"]) == ["succeeded", "interrupted", "not run"]  # before: "failed", a blank error
    assert "a rerun runs it again" in results["error"][1]


def test_a_grid_stopped_in_its_sweep_shows_the_sweep_cells_that_finished(data_dir, tmp_path):
    from clm_explore.bench import tune_cells

    cfg = _cfg(methods=("head",), tune_lr=True, tune_widen=0)
    sweep = tune_cells(cfg)
    with pytest.raises(KeyboardInterrupt):
        run_grid(data_dir, cfg, tmp_path / "out", runner=_stopping_runner(cfg, sweep[-1].name), progress=False)
    tuning = pd.read_csv(tmp_path / "out" / "tuning.csv")  # before: no tuning.csv, the report said "not run" only
    assert len(tuning) == len(sweep) and tuning["val_accuracy"].notna().sum() == len(sweep) - 1


def test_too_few_rows_and_a_limit_under_the_shots_are_said_before_any_cell(data_dir, tmp_path, capsys):
    with pytest.raises(BenchError, match=r"--shots 1 leaves \d+ training rows for \d+ labels; every cell needs at "
                                         r"least 2 per label"):
        run_grid(data_dir, _cfg(methods=("head",), shots=1), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    from clm_explore.bench import limit_note

    train = pd.DataFrame({"text": list("abcdefgh"), "label": ["x", "y"] * 4})
    assert limit_note(train, _cfg(shots=10, limit=8)) == ("--limit 8 keeps 8 of the few-shot rows: about 4.0 per "
                                                          "label, not --shots 10")
    assert limit_note(train, _cfg(shots=4, limit=8)) == ""
    from clm_explore.bench import budgets_note

    assert budgets_note(_cfg(methods=("head", "full"), budgets=(0.05,))).startswith(
        "--budgets 0.05 is unused: none of head, full takes a budget")
    assert budgets_note(_cfg(methods=("head", "sparse"), budgets=(0.05,))) == ""


def test_a_grid_with_no_finished_cell_resumes_with_other_settings(data_dir, tmp_path):
    cfg = _cfg(methods=("head",))
    run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg, fail="head"), progress=False)  # every cell fails
    other = _cfg(methods=("head",), epochs=2)  # before: refused, "its finished cells would not match" (none did)
    result = run_grid(data_dir, other, tmp_path / "out", runner=in_process(other), progress=False)
    assert list(result.results["status"]) == ["succeeded"]
    with pytest.raises(BenchError, match="`epochs` 2 there, 1 now"):  # now one finished: the check applies
        run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)


def test_a_grid_refuses_a_run_folder_the_data_or_a_missing_model_as_out_before_writing(data_dir, tmp_path):
    from clm_explore.modeling import ModelSourceError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "clm_run.json").write_text("{}")
    with pytest.raises(BenchError, match="is a run folder"):
        run_grid(data_dir, _cfg(methods=("head",)), run_dir, progress=False)
    with pytest.raises(BenchError, match="holds the data"):
        run_grid(data_dir, _cfg(methods=("head",)), data_dir, progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == ["clm_run.json"] and not (data_dir / "bench.json").exists()
    with pytest.raises(ModelSourceError, match="no-such-model"):
        run_grid(data_dir, _cfg(methods=("head",), model=str(tmp_path / "no-such-model")), tmp_path / "out",
                 progress=False)
    assert not (tmp_path / "out").exists()


def test_a_sweep_whose_rates_all_tie_says_the_default_stands_by_the_tie(data_dir, tmp_path, capsys):
    cfg = _cfg(methods=("head",), tune_lr=True, tune_widen=0)
    run_grid(data_dir, cfg, tmp_path / "tied", runner=scored_by_rate(lambda lr: 0.5, []), progress=False)
    assert "scored the same validation accuracy; the default rate stands by the tie" in capsys.readouterr().err
    run_grid(data_dir, cfg, tmp_path / "apart", runner=scored_by_rate(lambda lr: lr, []), progress=False)
    assert "same validation accuracy" not in capsys.readouterr().err
    tied = scored_by_rate(lambda lr: 0.5, [])

    def default_fails(cell, data_dir, cell_dir, log, report):
        if cell.lr == 1e-2:  # the head's default rate: another rate is chosen, not the default by a tie
            raise RuntimeError("boom")
        tied(cell, data_dir, cell_dir, log, report)

    run_grid(data_dir, cfg, tmp_path / "default-failed", runner=default_fails, progress=False)
    assert "same validation accuracy" not in capsys.readouterr().err


def test_a_cell_whose_process_the_interrupt_ended_first_reads_interrupted(data_dir, tmp_path):
    # Ctrl+C reaches every cell's process; with --jobs 2 one may end before its grid hears of the interrupt, and its
    # runner returned normally: the cell read "failed".
    cfg = _cfg(methods=("head", "full"))
    train = in_process(cfg)

    def run(cell: Cell, data_dir: Path, cell_dir: Path, log: Path, report) -> int:
        if cell.method == "full":
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("KeyboardInterrupt\n")
            return -signal.SIGINT
        train(cell, data_dir, cell_dir, log, report)
        return 0

    result = run_grid(data_dir, cfg, tmp_path / "out", runner=run, progress=False)
    assert list(result.results["status"]) == ["succeeded", "interrupted"]


def test_a_finished_cell_with_damaged_masks_is_left_out_of_the_mask_tables_with_a_warning(tmp_path):
    from clm_explore.bench_results import mask_overlap, mask_statistics

    results = pd.DataFrame({"status": ["succeeded"] * 2, "method": ["sparse", "random"], "cell": ["a", "b"],
                            "budget": [0.01] * 2, "seed": [0] * 2, "lowest_layer": [3] * 2})
    for cell in ("a", "b"):
        (tmp_path / cell / "sensitivity").mkdir(parents=True)
        (tmp_path / cell / "masks.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    # A SafetensorError traceback stopped the summary, and every rerun, before report.html (failure review).
    with pytest.warns(UserWarning, match=r"/masks.safetensors cannot be read .* delete the cell's folder and rerun"):
        assert mask_statistics(tmp_path, results).empty
    with pytest.warns(UserWarning, match="cannot be read"):
        assert mask_overlap(tmp_path, results).empty


def test_a_methods_weight_decay_reaches_its_cells_and_a_changed_one_is_refused_on_resume(data_dir, tmp_path):
    from clm_explore.cli import UserError, build_parser
    from clm_explore.cli.bench_cmds import bench_config, parse_method_lrs
    from clm_explore.cli.method_cmds import finetune_config
    from clm_explore.config import ConfigError, FinetuneConfig

    decayed = _cfg(methods=("sparse", "full"), weight_decay={"sparse": 1.0})
    for method, expected in (("sparse", 1.0), ("full", 0.0)):  # the decay on the deltas, for sparse alone
        cmd = finetune_command(Cell(method, 0.01 if method == "sparse" else None, 0), decayed, Path("d"), Path("c"))
        assert finetune_config(build_parser().parse_args(cmd[3:])).weight_decay == expected
    args = build_parser().parse_args(["bench", "--data", str(data_dir), "--methods", "sparse,full",
                                      "--weight-decay", "sparse=1.0"])
    assert bench_config(args).weight_decay == {"sparse": 1.0}
    with pytest.raises(UserError, match="--weight-decay takes METHOD=WEIGHT-DECAY pairs"):
        parse_method_lrs("sparse=much", "--weight-decay", "sparse=1.0")
    with pytest.raises(BenchError, match="weight decays must be >= 0 and for methods of the grid"):
        _cfg(methods=("sparse",), weight_decay={"full": 0.1})
    with pytest.raises(ConfigError, match="weight_decay must be >= 0"):
        FinetuneConfig(weight_decay=-0.1)
    grid = _cfg(methods=("head", "sparse"), weight_decay={"sparse": 1.0})
    run_grid(data_dir, grid, tmp_path / "out", runner=in_process(grid), progress=False)
    other = _cfg(methods=("head", "sparse"), weight_decay={"sparse": 0.5})
    with pytest.raises(BenchError, match="`weight_decay`"):  # its finished cells trained at 1.0
        run_grid(data_dir, other, tmp_path / "out", runner=in_process(other), progress=False)
    head_only = _cfg(methods=("head",))  # a rerun of the other methods alone needs no decay of sparse's
    assert len(run_grid(data_dir, head_only, tmp_path / "out", runner=in_process(head_only), progress=False).results)


def test_run_grid_takes_its_config_as_a_dict_and_its_error_is_exported(data_dir, tmp_path):
    """The docs review: every other config argument took a dict; run_grid raised AttributeError ('dict' has no
    'data'), and clm_explore.BenchError, which its docstring says it raises, was not exported."""
    import clm_explore

    heads = _cfg(methods=("head",))
    fields = {"methods": ["head"], "budgets": [0.05], "seeds": 1, "epochs": 1, "batch_size": 80, "model": "tiny-random"}
    result = run_grid(data_dir, fields, tmp_path / "g", data_cfg={}, runner=in_process(heads), progress=False)
    assert result.results["method"].tolist() == ["head"]
    assert clm_explore.BenchError is BenchError
    with pytest.raises(TypeError, match="run_grid's cfg takes a BenchConfig .or a dict of its fields.; got str"):
        run_grid(data_dir, "head", tmp_path / "h", progress=False)


def test_validation_curves_take_a_colour_per_method_and_a_dash_per_seed():
    """The bench review: plotly's ten colours cycled over every cell, and "full s0" and "gradient@0.01 s0" were the
    same blue."""
    from clm_explore.bench_report import _curves_figure

    curve = json.dumps([{"seconds": 1.0, "accuracy": 0.5}])
    methods = [f"method{i}" for i in range(12)]
    rows = [{"status": "succeeded", "val_curve": curve, "method": m, "budget": float("nan"), "seed": seed}
            for m in methods for seed in (0, 1)]
    traces = {t.name: t.line for t in _curves_figure(pd.DataFrame(rows)).data}
    colours = {m: traces[f"{m} s0"].color for m in methods}
    assert len(set(colours.values())) == 12  # one each, however many methods a grid holds
    assert all(traces[f"{m} s1"].color == colours[m] and traces[f"{m} s1"].dash != traces[f"{m} s0"].dash
               for m in methods)



def test_a_large_grid_draws_a_mean_curve_per_method_and_its_mask_panels_in_rows():
    """The scale review: 350 cells drew 350 curves with a legend of 350, and 30 mask panels sat in one row, 30 px
    each at a laptop's width."""
    from clm_explore.bench_report import MASK_PANELS_PER_ROW, MAX_CURVES, _curves_figure, _mask_figure

    rows = [{"status": "succeeded", "method": f"m{i}", "budget": float("nan"), "seed": seed,
             "val_curve": json.dumps([{"seconds": 1.0 + seed, "accuracy": 0.5 + seed / 100},
                                      {"seconds": 2.0 + seed, "accuracy": 0.6}])}
            for i in range(7) for seed in range(10)]
    assert len(rows) > MAX_CURVES
    traces = _curves_figure(pd.DataFrame(rows)).data
    assert len(traces) == 7 and traces[0].name == "m0"
    assert list(traces[0].x) == [5.5, 6.5] and list(traces[0].y) == pytest.approx([0.545, 0.6])  # the seeds' mean
    few = _curves_figure(pd.DataFrame(rows[:20])).data  # 2 methods x 10 seeds: each drawn, one legend entry each
    assert len(few) == 20 and sum(t.showlegend is not False for t in few) == 2
    masks = pd.DataFrame([{"method": f"m{i}", "budget": 0.01, "seed": 0, "module": "q", "layer": layer,
                           "share_selected": 0.1} for i in range(10) for layer in range(2)])
    layout = _mask_figure(masks).layout  # 10 panels: rows of MASK_PANELS_PER_ROW, the fifth first in the second row
    assert layout[f"xaxis{MASK_PANELS_PER_ROW + 1}"].domain[0] == 0 and layout.yaxis5.domain[1] < layout.yaxis.domain[0]
    assert layout.height >= 900


def test_a_smaller_rerun_into_a_grid_says_which_finished_cells_its_tables_leave_out(data_dir, tmp_path, capsys):
    """The bench review: a rerun with fewer seeds rewrote results.csv from 14 rows to 4 without a word."""
    cfg = _cfg(methods=("head",), seeds=2)
    run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    fewer = replace(cfg, seeds=1)
    result = run_grid(data_dir, fewer, tmp_path / "out", runner=in_process(fewer), progress=True)
    assert len(result.results) == 1
    assert "note: 1 finished cell(s) in" in capsys.readouterr().err


def test_cells_that_predicted_one_label_for_every_test_row_are_said_so():
    """The bench review: a grid where every cell collapsed onto one label printed "+0.00 no spread" and a std ratio
    of 0, read as "sparse matches full" and "sparse is perfectly stable"."""
    from clm_explore.bench_results import collapsed_note, labels_predicted

    assert labels_predicted({"confusion": [[3, 0], [2, 0]]}) == 1  # every row predicted as the first label
    assert labels_predicted({"confusion": [[3, 0], [0, 2]], "confusion_unseen": [1, 0]}) == 2
    assert labels_predicted({}) is None
    results = pd.DataFrame({"status": ["succeeded", "succeeded", "failed"], "labels_predicted": [1, 2, None],
                            "cell": ["cells/full-s0", "cells/sparse-0.01-s0", "cells/head-s0"]})
    assert collapsed_note(results).startswith("1 of 2 finished cells predicted one label for every test row (full-s0)")
    assert collapsed_note(results.assign(labels_predicted=[2, 2, None])) == ""
    from clm_explore.bench_report import render_report

    page = render_report(results.assign(device="cpu", method="full", budget=None, seed=0, error=""),
                         pd.DataFrame(columns=["method", "budget", "seeds"]), pd.DataFrame(), pd.DataFrame(), None, {})
    assert "<b>Note:</b> 1 of 2 finished cells predicted one label for every test row (full-s0)" in page  # the report


def test_cells_trained_on_several_devices_are_said_not_comparable():
    """The bench review: a grid resumed with another --device mixed GPU and CPU timings in one mean, unsaid, and
    results.csv had no device column."""
    from clm_explore.bench_results import devices_note

    results = pd.DataFrame({"status": ["succeeded", "succeeded", "failed"], "device": ["cuda:0", "cpu", None]})
    assert devices_note(results).startswith("the finished cells trained on cpu, cuda:0")
    assert devices_note(results.assign(device=["cpu", "cpu", None])) == ""


def test_cells_timed_at_other_thread_counts_or_side_by_side_on_the_cpu_are_said_not_comparable():
    """The metrics review: a grid resumed with another --jobs averaged cells timed alone with cells timed side by
    side (each with cores / jobs threads), and --jobs above 1 said nowhere that its times were contended."""
    from clm_explore.bench_results import timing_note

    results = pd.DataFrame({"status": ["succeeded", "succeeded", "failed"], "device": ["cpu", "cpu", None],
                            "threads": pd.array([2, 1, None], dtype="Int64"),
                            "cells_at_once": pd.array([None, None, None], dtype="Int64")})
    assert timing_note(results).startswith("the finished cells computed with 1, 2 threads")
    alike = results.assign(threads=pd.array([1, 1, None], dtype="Int64"))
    assert timing_note(alike) == ""  # this command's --jobs says nothing of how the cells ran (the diff review)
    shared = alike.assign(cells_at_once=pd.array([2, 1, None], dtype="Int64"))
    assert timing_note(shared).startswith("1 of 2 finished cells ran up to 2 at once on the CPU")
    assert "do not compare with the 1 run alone" in timing_note(shared)
    assert timing_note(shared.assign(device="cuda:0")) == ""  # a GPU each: no contention to speak of



def test_grid_table_claims_no_spread_of_a_single_seed():
    import importlib.util

    spec = importlib.util.spec_from_file_location("grid_table", Path(__file__).parents[1] / "bench" / "grid_table.py")
    grid_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid_table)
    assert grid_table._pm(0.8, float("nan")) == "0.800" and grid_table._pm(0.8, 0.01) == "0.800 ± 0.010"


def test_the_cost_figure_stacks_the_preparation_under_the_epochs():
    """The bench review: sparse's 0.55 s against full's 0.15 s was 0.5 s of scoring rows, inside one bar."""
    from clm_explore.bench_report import figures

    cost = {f"{k}_{stat}": v for k, v in (("train_seconds", 2.0), ("peak_memory_mb", 1.0),
                                          ("examples_per_second", 1.0)) for stat, v in (("mean", v), ("std", 0.0))}
    summary = pd.DataFrame([{"method": "sparse", "budget": 0.01, "trainable_share_mean": 0.01, "accuracy_mean": 0.8,
                             "accuracy_std": 0.0, "prep_seconds_mean": 0.5, **cost}])
    results = pd.DataFrame({"status": ["succeeded"], "val_curve": ["[]"], "method": ["sparse"], "budget": [0.01],
                            "seed": [0]})
    cost_fig = next(f for f in figures(results, summary, pd.DataFrame(), pd.DataFrame())
                    if f.layout.title.text == "Cost per method")
    prep, epochs = cost_fig.data[:2]
    assert (prep.name, list(prep.y), epochs.name, list(epochs.y)) == ("preparation", [0.5], "epochs", [1.5])
    assert cost_fig.layout.barmode == "stack"


def test_a_grid_that_did_not_sweep_names_tune_lr_alone_when_one_that_sweeps_resumes_it(data_dir, tmp_path):
    """The bench review: the refusal named `tune_widen` 0 there, 4 now, an option the user never changed."""
    cfg = _cfg(methods=("head",))
    run_grid(data_dir, cfg, tmp_path / "out", runner=in_process(cfg), progress=False)
    with pytest.raises(BenchError, match="other settings") as refused:
        run_grid(data_dir, replace(cfg, tune_lr=True), tmp_path / "out", runner=in_process(cfg), progress=False)
    assert "`tune_lr` False there, True now" in str(refused.value) and "tune_widen" not in str(refused.value)



def test_progress_in_a_log_file_says_how_a_running_cell_gets_on(monkeypatch):
    """The bench review: without a terminal only finished cells were printed, so a log said nothing for the
    minutes a cell ran; now a line at most every LOG_EVERY_SECONDS, when the cell's step moved on."""
    import io

    import clm_explore.bench as bench

    log = io.StringIO()  # not a terminal
    bar = bench.ProgressBar(2, stream=log)
    bar.show("sparse-b0.01-s0")  # the cell starts: a line
    bar.show("sparse-b0.01-s0", "step 1/9")  # too soon after it
    monkeypatch.setattr(bench, "LOG_EVERY_SECONDS", 0.0)
    bar.show("sparse-b0.01-s0", "step 5/9")
    bar.show("sparse-b0.01-s0", "step 5/9")  # no step since: not repeated
    bar.advance(3.0)
    bar.show("sparse-b0.01-s0", "done", final=True)
    monkeypatch.setattr(bench, "LOG_EVERY_SECONDS", 60.0)
    bar.show("full-s0")  # the next cell starts right after: a line (the diff review: none came for a minute)
    bar.show("full-s0", "step 1/9")  # too soon after it
    lines = log.getvalue().splitlines()
    assert [line.split("] ")[1].split(" (")[0] for line in lines] == [
        "0/2 sparse-b0.01-s0 ", "0/2 sparse-b0.01-s0 step 5/9", "1/2 sparse-b0.01-s0 done", "1/2 full-s0 "]


# ------------------------------------------------------------------------------------------------ the bench review
# (second round): identical seeds, NaN metrics, orphan cells, model paths, sweeps of nothing, validation under a limit


def test_runs_that_all_agree_have_no_spread_not_a_zero_width_interval():
    """numpy's std of [0.7, 0.7, 0.7] is 1.4e-16: the interval was (-0.1, -0.1), "behind", and the std ratio
    1.0 [0.16, 6.24], while summary.csv said std 0.0."""
    from clm_explore.bench_results import interval_verdict, std_ratio, summarise

    _, low, high = difference_interval([0.7] * 3, [0.8] * 3)
    assert math.isnan(low) and math.isnan(high) and interval_verdict(low, high, 3) == "no spread"
    assert math.isnan(std_ratio([0.7] * 3, [0.8] * 3)) and std_ratio([0.7] * 3, [0.8, 0.9]) == 0.0
    assert all(math.isnan(v) for v in std_ratio_interval([0.7] * 3, [0.8] * 3))
    results = _results({"sparse": [0.7] * 3, "full": [0.8] * 3})
    row = compare_methods(results).iloc[0]
    assert row["verdict"] == "no spread" and math.isnan(row["std_ratio"])
    assert summarise(results).set_index("method").loc["sparse", "accuracy_std"] == 0.0  # the same std as compared


def test_a_finished_cell_without_an_accuracy_is_no_seed_of_the_comparison():
    """The bench review: a NaN accuracy counted as a seed and made the std ratio NaN, while the difference left it
    out; summary.csv and comparison.csv now count the seeds that scored, alike."""
    from clm_explore.bench_results import std_ratio, summarise

    results = _results({"sparse": [0.7, 0.72, math.nan], "full": [0.8, 0.82, 0.85]})
    row = compare_methods(results).iloc[0]
    assert (row["seeds"], row["versus_seeds"]) == (2, 3) and row["verdict"] == "behind"
    assert row["std_ratio"] == pytest.approx(std_ratio([0.7, 0.72], [0.8, 0.82, 0.85]))
    assert summarise(results).set_index("method").loc["sparse", "seeds"] == 2


def _results(accuracies: dict[str, list[float]]) -> pd.DataFrame:
    """results.csv rows of finished cells with these accuracies per method (sparse at budget 0.01)."""
    rows = [{"method": method, "budget": 0.01 if method == "sparse" else None, "seed": seed, "status": "succeeded",
             "accuracy": accuracy, "macro_f1": accuracy, "trainable_share": 0.01, "train_seconds": 1.0,
             "peak_memory_mb": 1.0, "examples_per_second": 1.0, "oos_accuracy": None, "oos_macro_f1": None,
             "oos_auroc": None, "trainable_params": 10, "lr": 1e-3, "score": "", "lowest_layer": 0,
             "over_budget": False}
            for method, values in accuracies.items() for seed, accuracy in enumerate(values)]
    return pd.DataFrame(rows)


def test_sweeping_row_scores_without_a_method_that_has_them_is_refused():
    """The bench review: --tune-score and --tune-spread were accepted, and did nothing, for a grid of full and lora."""
    for option in ("tune_score", "tune_spread"):
        with pytest.raises(BenchError, match=rf"{option} only affect sparse and sparse_merged, which this grid does not run"):
            BenchConfig(methods=("full", "lora"), tune_lr=True, **{option: True})
    assert BenchConfig(methods=("full", "sparse_merged"), tune_lr=True, tune_score=True).tune_score


def test_a_limit_keeps_a_validation_row_per_label(tiny_data):
    """The bench review: --limit 12 kept 12 // 4 = 3 validation rows of 4 labels, so the sweep chose its rates on
    rows that left a label out."""
    from clm_explore.bench import grid_splits

    train, val, _ = grid_splits(tiny_data, BenchConfig(methods=("head",), limit=12))
    assert len(train) == 12 and sorted(val["label"].unique()) == sorted(tiny_data.labels) and len(val) == 4
    assert len(grid_splits(tiny_data, BenchConfig(methods=("head",), limit=40))[1]) == 10  # a quarter, as before


def test_cells_set_aside_are_not_reported_as_another_grids(tmp_path):
    """The bench review: every rerun said the ``<cell>.replaced-1`` folders were finished cells of another grid, to
    be listed by rerunning "with the seeds, budgets and methods that made them"."""
    from clm_explore.bench import left_out_note

    for name in ("head-s0", "head-s0.replaced-1", "head-s1"):
        _write_metrics(tmp_path / "cells" / name, 0.5, 1e-2)
    note = left_out_note(tmp_path / "cells", [Cell("head", None, 0)])
    assert "1 finished cell(s)" in note and "head-s1" in note and "replaced" not in note


def _recording_runner(max_length: int, calls: list[str]):
    """A runner that trains nothing and records, as finetune's clm_run.json does, that it read ``max_length``."""

    def run(cell: Cell, data_dir: Path, cell_dir: Path, log: Path, report) -> None:
        calls.append(cell.name)
        _write_metrics(cell_dir, 0.5, cell.lr or 1e-2)
        (cell_dir / "clm_run.json").write_text(json.dumps({"config": {"max_length": max_length, "batch_size": 80}}))

    return run


def test_a_cell_that_recorded_other_settings_than_the_grids_is_trained_again(data_dir, tmp_path, capsys):
    """The bench review: a cell process that outlived its killed bench finished at --max-length 32 after a rerun had
    recorded 48 in bench.json (nothing had finished, so nothing was checked); the next rerun kept it."""
    out, calls = tmp_path / "out", []
    run_grid(data_dir, _cfg(methods=("head",), max_length=32), out, runner=_recording_runner(32, calls),
             progress=False)
    saved = json.loads((out / "bench.json").read_text())
    (out / "bench.json").write_text(json.dumps({**saved, "max_length": 48}))  # as the rerun before it left it
    calls.clear()
    run_grid(data_dir, _cfg(methods=("head",), max_length=48), out, runner=_recording_runner(48, calls),
             progress=False)
    assert calls == ["head-s0"] and "finished with max_length=32; the grid now gives it max_length=48" in \
        capsys.readouterr().err
    assert (out / "cells" / "head-s0.replaced-1" / "clm_run.json").is_file()  # the old run kept, set aside


def test_the_planned_config_is_what_the_cells_command_gives_finetune():
    """``planned_config`` restates ``finetune_command``: it must read as finetune reads the command, or finished
    cells would be trained again (or kept) wrongly."""
    from dataclasses import asdict

    from clm_explore.bench import config_differences
    from clm_explore.cli import build_parser
    from clm_explore.cli.method_cmds import finetune_config
    from clm_explore.training import recorded_config

    grid = BenchConfig(methods=("sparse", "prefix", "lora", "fisher"), budgets=(0.05, 200), cold_head=True,
                       score={"sparse": "taylor+spread"}, schedule="constant", average_last=0.5, prefix_init="zero",
                       weight_decay={"lora": 0.1}, max_length=48, batch_size=8)
    for cfg in (grid, replace(grid, average_last=0.0, keep_best=True, early_stop=2, spread_heads=True, score={})):
        for cell in plan_cells(cfg):
            command = finetune_command(cell, cfg, Path("data"), Path("cells") / cell.name)
            recorded = asdict(recorded_config(finetune_config(build_parser().parse_args(command[3:]))))
            assert config_differences(cell, cfg, recorded) == [], cell.name
            assert config_differences(cell, replace(cfg, max_length=64), recorded) == [
                ("max_length", 48, 64), ("sensitivity.max_length", 48, 64)]  # the scoring reads training's length


def test_a_cell_an_older_version_trained_at_another_default_is_trained_again_and_other_code_is_said(
        data_dir, tmp_path, capsys):
    """The upgrade review: a grid resumed by a newer version kept the cells an older one had scored at 64 sub-tokens
    (the scoring's default then) beside its own at 32, and said nothing of the other code."""
    from clm_explore.cli import main

    def in_process(cell: Cell, data: Path, cell_dir: Path, log: Path, report) -> None:
        calls.append(cell.name)  # the cell's real command, as finetune runs it: its real clm_run.json
        assert main(finetune_command(cell, cfg, data, cell_dir)[3:]) == 0

    cfg, out, calls = _cfg(methods=("random",), budgets=(0.05,), max_length=32), tmp_path / "g", []
    run_grid(data_dir, cfg, out, runner=in_process, progress=False)
    calls.clear()
    run_grid(data_dir, cfg, out, runner=in_process, progress=False)
    assert calls == []  # a cell this version trained is what this version plans, every setting of it
    record_path = out / "cells" / "random-b0.05-s0" / "clm_run.json"
    record = json.loads(record_path.read_text())
    record["provenance"]["code"] = "0123456789abcdef"
    record_path.write_text(json.dumps(record))
    capsys.readouterr()
    run_grid(data_dir, cfg, out, runner=in_process, progress=False)
    assert calls == [] and ("1 finished cell(s) in g/cells kept for their settings were made by other code or packages "
                            "(clm-explore code 0123456789abcdef there") in capsys.readouterr().err
    record_path.write_text(json.dumps({k: v for k, v in record.items() if k != "provenance"}))  # before the record
    run_grid(data_dir, cfg, out, runner=in_process, progress=False)
    assert calls == [] and "(made before clm-explore recorded the code that made a run)" in capsys.readouterr().err
    record["config"]["sensitivity"]["max_length"] = 64  # as an older version recorded its default
    record_path.write_text(json.dumps(record))
    run_grid(data_dir, cfg, out, runner=in_process, progress=False)
    assert calls == ["random-b0.05-s0"]
    assert "finished with sensitivity.max_length=64; the grid now gives it sensitivity.max_length=32" in \
        capsys.readouterr().err


def test_a_grid_a_newer_version_wrote_is_refused(data_dir, tmp_path):
    runner, out = scored_by_rate(lambda lr: 0.5, []), tmp_path / "out"
    run_grid(data_dir, _cfg(methods=("head",)), out, runner=runner, progress=False)
    saved = json.loads((out / "bench.json").read_text())
    assert saved["format"] == 1 and saved["code"]["code"] and saved["code"]["packages"]["torch"]
    (out / "bench.json").write_text(json.dumps({**saved, "format": 2}))
    with pytest.raises(BenchError, match="written by a newer clm-explore .*format 2, this version's 1"):
        run_grid(data_dir, _cfg(methods=("head",)), out, runner=runner, progress=False)


def test_a_model_folder_is_the_same_by_any_path_and_changed_weights_are_noticed(data_dir, tmp_path, monkeypatch):
    """The bench review: ``--model g1/cells/full-s0`` then its absolute path was refused as another model, while
    new weights in that folder were not noticed."""
    model = tmp_path / "g1" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"old weights")
    monkeypatch.chdir(tmp_path)
    runner, out = scored_by_rate(lambda lr: 0.5, []), tmp_path / "out"
    run_grid(data_dir, _cfg(methods=("head",), model="g1/model"), out, runner=runner, progress=False)
    assert json.loads((out / "bench.json").read_text())["model"] == str(model)
    run_grid(data_dir, _cfg(methods=("head",), model=str(model)), out, runner=runner, progress=False)
    (model / "model.safetensors").write_bytes(b"new weights!")
    with pytest.raises(BenchError, match=r"model files in .*model changed .*Choose another --out"):
        run_grid(data_dir, _cfg(methods=("head",), model="g1/model"), out, runner=runner, progress=False)
    from clm_explore.bench import MODEL_NAMES
    from clm_explore.modeling import NAMED_SOURCES

    assert set(MODEL_NAMES) == set(NAMED_SOURCES)  # the names the fingerprint leaves alone are load_model's


def test_a_cell_process_that_outlived_its_bench_keeps_the_grid_from_a_rerun(data_dir, tmp_path):
    """The bench review: a bench killed with SIGKILL let go of its grid lock but left its cell process training; a
    rerun with other settings then ran beside it, and it finished its cell with the old ones. Each cell process
    holds the grid's cells lock (inherited) for as long as it lives."""
    out = tmp_path / "out"
    (out / "cells").mkdir(parents=True)  # as the killed bench left its grid
    code = ("import sys, time; from pathlib import Path; from clm_explore.bench import _run_process, cells_lock\n"
            "out = Path(sys.argv[1])\n"
            "with cells_lock(out) as fd:\n"
            " _run_process([sys.executable, '-c', 'import time; time.sleep(60)'], {}, out / 'cells' / 'head-s0',"
            " out / 'logs' / 'head-s0.log', lambda detail: None, (fd,))")
    bench = subprocess.Popen([sys.executable, "-c", code, str(out)])
    cell_pid = None
    lock = out / ".bench.cells.lock"
    try:
        # Until the bench has started its cell: a fresh interpreter's start and import, slow on a busy machine.
        assert wait_until(lambda: lock.exists() and lock.read_text().split(), timeout=60), "the cell never started"
        cell_pid = int(lock.read_text().split()[0])
        bench.kill()  # SIGKILL: no cleanup, the cell process goes on
        bench.wait()
        cfg = _cfg(methods=("head",))
        with pytest.raises(BenchError, match=rf"still running \(pid {cell_pid} \(head-s0\)\).*kill {cell_pid}"):
            run_grid(data_dir, cfg, out, runner=scored_by_rate(lambda lr: 0.5, []), progress=False)
    finally:
        bench.kill()
        if cell_pid:
            with suppress(ProcessLookupError):
                os.kill(cell_pid, signal.SIGKILL)
    _wait_until_free(out / ".bench.cells.lock")  # the killed cell's lock goes with it
    result = run_grid(data_dir, cfg, out, runner=scored_by_rate(lambda lr: 0.5, []), progress=False)
    assert result.results["status"].eq("succeeded").all() and not (out / ".bench.cells.lock").exists()


def _wait_until_free(lock: Path) -> None:
    """Until nobody holds ``lock``'s flock (a process killed a moment ago may not have let go yet)."""
    import fcntl

    def taken(handle) -> bool:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    with lock.open("a") as handle:
        assert wait_until(lambda: taken(handle), timeout=60), f"{lock} still held 60 s after its holder was killed"
