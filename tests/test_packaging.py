"""The package as pip installs it: what the code reads at run time is in the wheel, and the app starts from it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from clm_explore.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_the_app_the_sample_and_the_files_the_code_reads(tmp_path: Path) -> None:
    """The packaging review: the wheel held only .py files, so tiny-random failed (its vocabulary missing), there was
    no app to start and no sample to start it on."""
    source = tmp_path / "source"  # a copy: building in the checkout leaves build/ and egg-info there
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "clm_explore", source / "clm_explore", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("clm_explore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("clm_explore/assets/tiny_vocab.txt", "clm_explore/py.typed", "clm_explore/__main__.py",
                   "clm_explore/ui/app/app.py", "clm_explore/ui/app/.streamlit/config.toml",
                   "clm_explore/sample_data/banking77_20/train.csv", "clm_explore/sample_data/banking77_20/test.csv",
                   "clm_explore/sample_data/banking77_20/SOURCE.md"):
        assert needed in names, needed
    pages = {Path(n).name for n in names if n.startswith("clm_explore/ui/app/app_pages/")}
    assert pages == {p.name for p in (ROOT / "clm_explore" / "ui" / "app" / "app_pages").glob("*.py")}
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_sample_names_the_shipped_data_unless_the_working_folder_has_its_own(tmp_path, monkeypatch) -> None:
    from clm_explore.data import DataError, load_data, read_labelled

    monkeypatch.chdir(tmp_path)
    data = load_data("sample")  # wherever the user is: a pip install has no sample_data/ folder beside it
    assert len(data.train) + len(data.validation) == 1200 and len(data.test) == 800 and len(data.labels) == 20
    assert len(read_labelled("sample")) == 800  # its test split, for evaluate
    (tmp_path / "sample").mkdir()  # a folder of that name here is the user's: read, not the shipped one
    with pytest.raises(DataError, match="has no train file"):
        load_data("sample")


def test_the_app_command_starts_the_packages_app_with_its_settings(capsys) -> None:
    from clm_explore.cli.app_cmds import APP_SCRIPT, app_command

    command = app_command(8600, "127.0.0.1")
    assert command[:5] == [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT)] and APP_SCRIPT.is_file()
    for flag in ("--client.showErrorDetails=type", "--client.toolbarMode=viewer", "--browser.gatherUsageStats=false",
                 "--logger.enableRich=false", "--server.fileWatcherType=none", "--server.port=8600",
                 "--server.address=127.0.0.1", "--server.headless=true"):
        assert flag in command, flag
    assert main(["app", "--port", "70000"]) == 2 and "must be from 1 to 65535" in capsys.readouterr().err
    assert "--browser.serverAddress=192.168.1.5" in app_command(8600, "192.168.1.5")  # the address a browser opens


def test_a_streamlit_variable_an_operator_sets_is_not_overridden_by_the_apps_flag(monkeypatch) -> None:
    """The diff review: the README's STREAMLIT_CLIENT_SHOW_ERROR_DETAILS=full had no effect, a flag winning over it."""
    from clm_explore.cli.app_cmds import app_command

    assert "--client.showErrorDetails=type" in app_command(8600)
    monkeypatch.setenv("STREAMLIT_CLIENT_SHOW_ERROR_DETAILS", "full")
    command = app_command(8600)
    assert not any(flag.startswith("--client.showErrorDetails") for flag in command)
    assert "--client.toolbarMode=viewer" in command  # the others stay


def test_python_m_clm_explore_is_the_cli_and_its_version_names_the_code() -> None:
    from clm_explore.provenance import code_version

    done = subprocess.run([sys.executable, "-m", "clm_explore", "--version"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.startswith("clm-explore ")
    assert done.stdout.rstrip().endswith(f"(code {code_version()})"), done.stdout


def test_every_command_reads_sample_as_the_shipped_folder(tmp_path, monkeypatch, capsys) -> None:
    """The diff review: `report --data sample` said "no such file or folder", bench recorded ./sample, and the
    guards that keep a data folder from --overwrite saw ./sample, not the shipped folder."""
    from clm_explore.data import SAMPLE_DATA

    monkeypatch.chdir(tmp_path)
    out = SAMPLE_DATA.parent  # a folder holding the sample: replacing it would delete the data
    assert main(["finetune", "--data", "sample", "--model", "tiny-random", "--out", str(out), "--overwrite"]) == 2
    assert f"would delete {SAMPLE_DATA}, which it holds" in capsys.readouterr().err
    assert SAMPLE_DATA.is_dir()
    assert main(["finetune", "--data", "sample", "--model", "tiny-random", "--method", "head", "--epochs", "1",
                 "--max-length", "16", "--out", "run"]) == 0
    assert main(["report", "--run", "run", "--data", "sample", "--max-rows", "2", "--out", "r.html"]) == 0
    assert (tmp_path / "r.html").stat().st_size > 0
