"""``clm-explore doctor`` and the settings the app reads from the environment (the operations review)."""

from __future__ import annotations

import json
import logging

import pytest

from clm_explore.cli import main
from clm_explore.doctor import checks, device_setting, env_number, problems


def test_a_setting_written_wrong_is_named_and_its_default_used(monkeypatch):
    monkeypatch.setenv("CLM_EXPLORE_MAX_JOBS", "abc")
    assert env_number("CLM_EXPLORE_MAX_JOBS", 48, whole=True, positive=True) == (
        48, "CLM_EXPLORE_MAX_JOBS='abc' is not a whole number above 0, at most 1e+09: 48 is used instead")
    for raw, read in (("3", 3.0), (" 12 ", 12.0)):
        monkeypatch.setenv("CLM_EXPLORE_MAX_JOBS", raw)
        assert env_number("CLM_EXPLORE_MAX_JOBS", 48, whole=True, positive=True) == (read, "")
    for raw in ("0", "2.5", "-1", "nan"):
        monkeypatch.setenv("CLM_EXPLORE_MAX_JOBS", raw)
        assert env_number("CLM_EXPLORE_MAX_JOBS", 48, whole=True, positive=True)[1], raw
    monkeypatch.setenv("CLM_EXPLORE_UPLOAD_DAYS", "0")  # 0 keeps sessions for good: taken
    assert env_number("CLM_EXPLORE_UPLOAD_DAYS", 7) == (0.0, "")
    monkeypatch.setenv("CLM_EXPLORE_DEVICE", "cuda:7")
    device, said = device_setting()
    assert device is None and said.startswith("CLM_EXPLORE_DEVICE='cuda:7' cannot be used here")
    monkeypatch.setenv("CLM_EXPLORE_DEVICE", "cpu")
    assert device_setting() == ("cpu", "")


def test_doctor_names_each_problem_and_exits_1(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CLM_EXPLORE_MODEL", "tiny-random")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "PROBLEM" not in out and "run registry" in out and "none yet" in out  # a check makes no registry
    monkeypatch.setenv("CLM_EXPLORE_TORCH_THREADS", "four")
    monkeypatch.setenv("CLM_EXPLORE_MODEL", str(tmp_path / "no-such-model"))
    assert main(["doctor", "--json"]) == 1
    found = {check["name"]: check for check in json.loads(capsys.readouterr().out)}
    assert not found["CLM_EXPLORE_TORCH_THREADS"]["ok"] and "torch's own number of threads is used" in \
        found["CLM_EXPLORE_TORCH_THREADS"]["said"]
    assert not found["model"]["ok"] and found["runs folder"]["ok"]
    assert [p.split(":")[0] for p in problems()] == ["CLM_EXPLORE_TORCH_THREADS", "model"]


def test_a_runs_folder_that_cannot_be_written_is_a_problem(monkeypatch):
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refused)
    by_name = {check.name: check for check in checks()}
    assert not by_name["runs folder"].ok and "cannot be written (Permission denied): runs cannot be launched" in \
        by_name["runs folder"].said


def test_the_app_logs_a_setting_written_wrong_and_runs_with_the_default(monkeypatch, caplog):
    import torch

    from clm_explore.ui import cache

    before = torch.get_num_threads()
    monkeypatch.setenv("CLM_EXPLORE_TORCH_THREADS", "four")  # raised ValueError on every page
    cache.configure_torch.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="clm_explore"):
            assert cache.configure_torch() == before
        assert any("CLM_EXPLORE_TORCH_THREADS='four'" in r.getMessage() for r in caplog.records)
    finally:
        cache.configure_torch.clear()


@pytest.mark.parametrize("name", ["CLM_EXPLORE_MAX_JOBS", "CLM_EXPLORE_UPLOADS_MB"])
def test_the_apps_readings_of_its_settings_are_the_doctors(monkeypatch, name):
    from clm_explore.ui import jobs, state

    monkeypatch.setenv(name, "lots")
    read = jobs.max_active_on_server() if name == "CLM_EXPLORE_MAX_JOBS" else state.uploads_total_mb()
    assert read == {"CLM_EXPLORE_MAX_JOBS": 48, "CLM_EXPLORE_UPLOADS_MB": 2000}[name]


def test_a_huge_or_infinite_setting_is_refused_and_the_app_keeps_working(monkeypatch):
    """The diff review: CLM_EXPLORE_TORCH_THREADS=3000000000 passed the check and overflowed torch on every page."""
    import torch

    from clm_explore.ui import cache

    for raw in ("3000000000", "1e20", "inf"):
        monkeypatch.setenv("CLM_EXPLORE_TORCH_THREADS", raw)
        assert "at most 4096" in env_number("CLM_EXPLORE_TORCH_THREADS", 0, whole=True, positive=True, most=4096)[1]
    before = torch.get_num_threads()
    cache.configure_torch.clear()
    try:
        assert cache.configure_torch() == before
    finally:
        cache.configure_torch.clear()
    monkeypatch.setenv("CLM_EXPLORE_UPLOADS_MB", "inf")
    assert not {c.name: c for c in checks()}["CLM_EXPLORE_UPLOADS_MB"].ok


def test_doctor_makes_nothing_it_checks(monkeypatch, tmp_path):
    """The diff review: the check made the uploads folder with the process's umask (world-readable until the first
    upload) and migrated the registry."""
    import sqlite3

    from clm_explore.runs import RunStore

    monkeypatch.setenv("CLM_EXPLORE_RUNS", str(tmp_path / "fresh" / "runs"))
    by_name = {check.name: check for check in checks()}
    assert by_name["runs folder"].ok and "is made when first needed" in by_name["uploads folder"].said
    assert not (tmp_path / "fresh").exists()
    store = RunStore(tmp_path / "fresh" / "runs")
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("PRAGMA user_version = 0")  # as an older version left it
    assert {check.name: check for check in checks()}["run registry"].ok
    with sqlite3.connect(store.db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0  # checked, not migrated


def test_the_data_pages_server_side_sets_come_from_a_setting_where_no_checkout_is_beside(monkeypatch, tmp_path):
    """The packaging review: an installed app looked for ../shared/data beside site-packages, a folder nobody sets."""
    from clm_explore import doctor
    from clm_explore.ui import state

    (tmp_path / "tickets").mkdir()
    (tmp_path / "tickets" / "train.csv").write_text("text,label\na,x\n")
    monkeypatch.setenv("CLM_EXPLORE_SHARED_DATA", str(tmp_path))
    assert doctor.shared_data() == (tmp_path, "")
    assert [choice.name for choice in state.shared_choices()] == ["tickets"]
    check = next(c for c in checks() if c.name == "CLM_EXPLORE_SHARED_DATA")
    assert check.ok and check.said == f"1 data set(s) in {tmp_path}"
    monkeypatch.setenv("CLM_EXPLORE_SHARED_DATA", str(tmp_path / "gone"))
    assert state.shared_choices() == [] and any(p.startswith("CLM_EXPLORE_SHARED_DATA: CLM_EXPLORE_SHARED_DATA=")
                                                 and "is not a folder" in p for p in problems())
    monkeypatch.delenv("CLM_EXPLORE_SHARED_DATA")  # a checkout: its ../shared/data, where there is one
    assert doctor.shared_data()[0] == (doctor.CHECKOUT_SHARED_DATA if doctor.CHECKOUT_SHARED_DATA.is_dir() else None)
