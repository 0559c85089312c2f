"""The library never imports Streamlit: only app.py, pages/ and clm_explore/ui/ may."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import clm_explore

ROOT = Path(__file__).resolve().parent.parent


def library_modules() -> list[str]:
    """Every module under clm_explore except the UI layer, found on disk (so new modules are included)."""
    found = ["clm_explore"]
    for info in pkgutil.walk_packages(clm_explore.__path__, prefix="clm_explore."):
        if info.name == "clm_explore.ui" or info.name.startswith("clm_explore.ui."):
            continue
        if info.name.endswith(".__main__"):
            continue  # running it would execute the CLI
        found.append(info.name)
    return sorted(found)


def test_library_modules_are_found():
    modules = library_modules()
    assert {"clm_explore.config", "clm_explore.data", "clm_explore.modeling", "clm_explore.cli"} <= set(modules)
    assert not any(name.startswith("clm_explore.ui") for name in modules)


def test_no_streamlit_import():
    script = (
        "import importlib, json, sys\n"
        f"for name in {library_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'streamlit' or m.startswith('streamlit.'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_cli_commands_load_without_captum_or_plotly():
    """Every command but `explain` and `report` must run where captum and plotly are absent (a GPU image
    without them, thirtieth session): building the parser imports neither."""
    script = (
        "import json, sys\n"
        "import clm_explore.cli as cli\n"
        "cli.build_parser()\n"
        "print(json.dumps(sorted(m for m in ('captum', 'plotly') if m in sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
