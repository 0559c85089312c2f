"""The library never imports Streamlit: only clm_explore/ui/ (the app in ui/app/ too) may."""

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
        if info.name.split(".")[1] == "ui":  # the UI layer, the app's scripts in it
            continue
        if info.name.endswith(".__main__"):
            continue  # running it would execute the CLI
        found.append(info.name)
    return sorted(found)


def test_library_modules_are_found():
    modules = library_modules()
    assert {"clm_explore.config", "clm_explore.data", "clm_explore.modeling", "clm_explore.cli"} <= set(modules)
    assert not any(name.startswith("clm_explore.ui") for name in modules)


def modules_loaded_by(script: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules named by ``prefixes`` (or inside them) that ``script`` loads, in a fresh interpreter."""
    report = f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {prefixes!r})))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", "import json, sys\n" + script + report], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_streamlit_import():
    script = f"import importlib\nfor name in {library_modules()!r}:\n    importlib.import_module(name)\n"
    assert modules_loaded_by(script, ("streamlit",)) == []


def test_cli_commands_load_without_captum_or_plotly():
    """Every command but `explain` and `report` must run where captum and plotly are absent (a GPU image
    without them, thirtieth session): building the parser imports neither."""
    assert modules_loaded_by("import clm_explore.cli as cli\ncli.build_parser()\n", ("captum", "plotly")) == []


def test_cli_help_loads_no_heavy_library():
    """`clm-explore --help` (building the parser) must stay fast: torch, transformers, pandas and scikit-learn load
    only when a command runs."""
    heavy = ("torch", "transformers", "pandas", "sklearn", "captum", "plotly")
    assert modules_loaded_by("import clm_explore.cli as cli\ncli.build_parser()\n", heavy) == []
