"""The ``clm-explore`` command line: one sub-command module per capability.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its sub-commands and
sets ``func`` on each; ``func(args) -> int`` returns the exit code. Errors that users can fix are
raised as ``UserError`` (or a library error listed in ``USER_ERRORS``) and printed as one paragraph,
without a traceback, with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

COMMAND_MODULES = (
    "clm_explore.cli.data_cmds",  # validate
    "clm_explore.cli.method_cmds",  # mine, sensitivity, finetune, predict
    "clm_explore.cli.bench_cmds",  # bench
    "clm_explore.cli.explain_cmds",  # explain, report
)


class UserError(Exception):
    """A problem the user can fix (bad input, bad option); printed without a traceback, exit 2."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Library exceptions that carry a user-facing message."""
    from clm_explore.config import ConfigError
    from clm_explore.data import DataError
    from clm_explore.modeling import ModelSourceError
    from clm_explore.runs import RunFolderError

    return (UserError, ConfigError, DataError, ModelSourceError, RunFolderError)


def print_json(obj: Any) -> None:
    """Print ``obj`` as strict JSON on stdout: numpy values and paths turned into plain ones, NaN and infinities
    into null (a method without a budget has a NaN budget in a grid's tables; NaN is not JSON)."""
    print(json.dumps(_plain(obj), indent=2, default=_json_default, allow_nan=False))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {key: _plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(value) for value in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy scalars and arrays, pandas series
        value = obj.tolist()
        return _plain(value) if isinstance(value, (list, tuple, dict, float)) else value
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def add_data_args(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    """DATA (a file or a folder of train/validation/test files) and the column options."""
    if positional:
        parser.add_argument("data", metavar="DATA", help="a CSV/TSV/JSONL/JSON/Parquet file or a folder of splits")
    else:
        parser.add_argument("--data", required=True, metavar="DATA", help="a data file or a folder of splits")
    parser.add_argument("--text-col", default=None, help="text column (detected when omitted)")
    parser.add_argument("--label-col", default=None, help="label column (detected when omitted)")
    parser.add_argument("--max-file-mb", type=float, default=200.0, help="refuse files above this size")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clm-explore",
        description="Token-driven sparse finetuning of small language models for text classification.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a capability that has not landed yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except user_error_types() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `clm-explore ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
