"""bench/bench_core.py's resume: a cell folder is reused only when it succeeded with the settings asked for."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_core", Path(__file__).parents[1] / "bench" / "bench_core.py")
bench_core = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_core)

PLANNED = {"lr": 5e-3, "epochs": 3, "limit": 0, "curve_split": "test"}


def finished_cell(root: Path, *, status: str = "succeeded", lr: float = 5e-3, epochs: int = 3, limit: int | None = 0,
                  curve_split: str = "test") -> Path:
    """A cell folder as bench_core leaves it: finetune's metrics.json and clm_run.json, and its own record."""
    out = root / "sparse-s0"
    out.mkdir(parents=True)
    metrics = {"status": status, "lr": lr, "epochs": epochs, "val_curve": [{"split": curve_split, "accuracy": 0.5}]}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "clm_run.json").write_text(json.dumps({"method": "sparse", "config": {"curve_split": curve_split}}))
    if limit is not None:
        (out / bench_core.RECORD).write_text(json.dumps({"limit": limit, "curve_split": curve_split}))
    return out


def test_a_cell_that_succeeded_with_the_same_settings_is_reused(tmp_path):
    assert bench_core.reuse_problem(finished_cell(tmp_path, lr=0.005000000001), PLANNED) == ""


@pytest.mark.parametrize(("changed", "why"), [
    ({"status": "cancelled"}, "did not succeed (status cancelled)"),
    ({"lr": 2.5e-3}, "lr 0.0025, now 0.005"),
    ({"epochs": 6}, "epochs 6, now 3"),
    ({"limit": 500}, "limit 500, now 0"),
    ({"curve_split": "validation"}, "curve_split validation, now test"),
])
def test_a_cell_with_other_settings_runs_again_and_says_why(tmp_path, changed, why):
    assert why in bench_core.reuse_problem(finished_cell(tmp_path, **changed), PLANNED)


def test_a_cell_from_before_the_record_is_judged_on_what_it_records(tmp_path):
    assert bench_core.reuse_problem(finished_cell(tmp_path, limit=None), PLANNED) == ""  # the published cells


def test_a_cell_run_again_is_set_aside_not_deleted(tmp_path, monkeypatch):
    out = finished_cell(tmp_path, lr=2.5e-3)
    monkeypatch.setattr(bench_core.subprocess, "run", lambda *a, **k: (out.mkdir(), (out / "metrics.json").write_text("{}")))
    bench_core.run_spec(out, {"limit": 0, "threads": 1})
    assert json.loads((tmp_path / "sparse-s0.replaced-1" / "metrics.json").read_text())["lr"] == 2.5e-3
    assert json.loads((out / bench_core.RECORD).read_text()) == {"limit": 0}


def test_a_missing_cell_runs_and_lr_zero_plans_the_methods_default(tmp_path):
    assert bench_core.reuse_problem(tmp_path / "sparse-s0", PLANNED) == "not run yet"
    planned = bench_core.planned_settings("full", 3, 0.0, 200, "validation")
    assert planned == {"lr": 2e-4, "epochs": 3, "limit": 200, "curve_split": "validation"}  # full's default rate
    assert bench_core.planned_settings("sparse-top2", 3, 1e-3, 0, "test")["lr"] == 1e-3
