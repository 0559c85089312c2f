"""The ``clm-explore`` command line: one sub-command module per capability.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its sub-commands and
sets ``func`` on each; ``func(args) -> int`` returns the exit code. Errors that users can fix are
raised as ``UserError`` (or a library error listed in ``USER_ERRORS``) and printed as one paragraph,
without a traceback, with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import importlib
import json
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clm_explore.config import TRUNCATION_SIDES, DataConfig
from clm_explore.provenance import running_command

if TYPE_CHECKING:
    from clm_explore.data import AnnotatedData

COMMAND_MODULES = (
    "clm_explore.cli.data_cmds",  # validate
    "clm_explore.cli.method_cmds",  # mine, sensitivity, finetune, predict
    "clm_explore.cli.evaluate_cmds",  # evaluate
    "clm_explore.cli.bench_cmds",  # bench
    "clm_explore.cli.explain_cmds",  # explain, report, changes, card
    "clm_explore.cli.layer_cmds",  # layers, heads
    "clm_explore.cli.runs_cmds",  # runs, doctor
    "clm_explore.cli.app_cmds",  # app
)


class UserError(Exception):
    """A problem the user can fix (bad input, bad option); printed without a traceback, exit 2."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Library exceptions that carry a user-facing message: those of the modules loaded so far (a command that raised
    one loaded its module), so that a command that needs neither data nor models does not import them (the scale
    review: `runs` took 5.7 s, all but 0.2 of it importing torch, transformers and sklearn)."""
    from clm_explore.config import ConfigError
    from clm_explore.exports import ExportError
    from clm_explore.runs import RunFolderError, RunStoreError

    loaded = [getattr(sys.modules[module], name) for module, name in (("clm_explore.data", "DataError"),
                                                                      ("clm_explore.model_names", "ModelSourceError"))
              if module in sys.modules]
    return (UserError, ConfigError, RunFolderError, RunStoreError, ExportError, *loaded)


LINE_BREAK_ESCAPES = {ord(c): ascii(c)[1:-1] for c in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
"""A tab and every character ``str.splitlines`` breaks at, each to its escape (\\t, \\n, \\x0c, \\u2028, ...): text
printed on one line of a command's output."""


def print_json(obj: Any) -> None:
    """Print ``obj`` as strict JSON on stdout: numpy values and paths turned into plain ones, NaN and infinities
    into null (a method without a budget has a NaN budget in a grid's tables; NaN is not JSON)."""
    # Labels and texts as written where the output takes them ("退款", not "\u9000\u6b3e"); escaped where it would
    # not (a Windows pipe's cp1252): the same JSON either way.
    readable = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "") in ("utf8", "utf8sig")
    print(json.dumps(_plain(obj), indent=2, default=_json_default, allow_nan=False, ensure_ascii=not readable))


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


def checked_texts(texts: list[str], flag: str = "--text", purpose: str = "classify", has_file: bool = True) -> list[str]:
    """Texts given on the command line (to ``purpose``), refused when blank or not UTF-8 (a shell in another
    encoding); ``has_file``: the command also reads texts from a file (--file), which the message then offers."""
    for text in texts:
        if not text.strip():
            raise UserError(f"{flag} is empty: give the text to {purpose}.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{flag} {text!r} is not UTF-8 text; set your terminal to UTF-8"
                            + (", or put the texts in a file (--file)" if has_file else "")) from None
    return texts


def add_run_length_arg(parser: argparse.ArgumentParser) -> None:
    """``--max-length`` of a command that reads a finished run (``checked_max_length`` checks it)."""
    parser.add_argument("--max-length", type=int, default=None,
                        help="sub-tokens read per text, 8-512 (default: the run's own, from clm_run.json; else 64)")


def checked_max_length(value: int | None, run_dir: Path) -> int | None:
    """``--max-length``: None (the run's own), or 8..512 and within the model's positions."""
    if value is None:
        return None
    from clm_explore.modeling import length_problem, usable_positions

    try:
        positions = usable_positions(json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError, AttributeError):
        positions = None
    # a prefix run's prefix takes positions before the text's
    if problem := length_problem(value, positions, _virtual_tokens(run_dir), "this run's model"):
        raise UserError(f"--max-length {problem}.")
    from clm_explore.runs import trained_max_length

    if value != (trained := trained_max_length(run_dir)):  # the long-text review: 0.7167 read at 256, 1.0 at 512
        print(f"note: --max-length {value}: the run was trained reading {trained} sub-tokens per text, so these "
              "figures are not those its own were measured at", file=sys.stderr)
    return value


def _virtual_tokens(run_dir: Path) -> int:
    """A prefix run's virtual tokens (``adapter/adapter_config.json``'s ``num_virtual_tokens``); 0 for any other."""
    try:
        found = json.loads((run_dir / "adapter" / "adapter_config.json").read_text()).get("num_virtual_tokens")
    except (OSError, ValueError, AttributeError):
        return 0
    return found if isinstance(found, int) else 0


def refuse_untrained_head(run: Path, flag: str) -> Path:
    """``run``, unless it is a base model whose head was never trained (``modeling.has_untrained_head``)."""
    from clm_explore.model_names import UNTRAINED_HEAD, has_untrained_head

    if has_untrained_head(run):
        raise UserError(f"{flag} {run}: not a finetuned run. {UNTRAINED_HEAD[0].upper()}{UNTRAINED_HEAD[1:]}")
    return run


def truncation_side_arg(parser: Any, where: str) -> None:
    """``--truncation-side``: the end of a long text that is cut (``FinetuneConfig.truncation_side``), ``where``."""
    parser.add_argument("--truncation-side", choices=TRUNCATION_SIDES, default=TRUNCATION_SIDES[0],
                        help=f"which end of a text longer than --max-length is cut, {where}: right keeps its start, "
                        "left keeps its end (tickets and e-mails that greet first and ask last)")


def add_data_args(parser: argparse.ArgumentParser, positional: bool = True, data_help: str = "",
                  split_help: str = "", carve: bool = False, draw: bool = False) -> None:
    """DATA (a file or a folder of train/validation/test files) and the column options; ``data_help`` and
    ``split_help`` say what a command reads of them where it reads otherwise (``evaluate``: the test rows).
    ``carve``: the shares of train carved as validation and test where the data has no such split. ``draw``: the
    few-shot draw (--shots, --data-seed; not for ``audit``, whose relabelled data must keep every row)."""
    if positional:
        parser.add_argument("data", metavar="DATA",
                            help=data_help or "a CSV/TSV/JSONL/JSON/Parquet file or a folder of splits")
    else:
        parser.add_argument("--data", required=True, metavar="DATA",
                            help=data_help or "a data file or a folder of splits")
    parser.add_argument("--text-col", default=None, help="text column (detected when omitted)")
    parser.add_argument("--label-col", default=None, help="label column (detected when omitted)")
    parser.add_argument("--split-col", default=None, help=split_help or SPLIT_COL_HELP)
    parser.add_argument("--encoding", default=None, metavar="NAME", help=ENCODING_HELP)
    parser.add_argument("--max-file-mb", type=float, default=200.0,
                        help="refuse files above this size (a Parquet file's text and label candidates are also "
                             "measured uncompressed and decoded)")
    if carve:  # the few-shot review: 10% of 70 rows carved as validation, 1 a label, and no way to keep them
        defaults = DataConfig()
        parser.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction, metavar="F",
                            help="share of train carved as validation where the data has no validation split, 0 "
                            "to 0.5 (0: none; then no per-epoch curve, best epoch, early stop or out-of-scope "
                            "threshold)")
        parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction, metavar="F",
                            help="share of train held out as test where the data has no test split, above 0 and "
                            "below 0.5")
    if draw:
        defaults = DataConfig()
        parser.add_argument("--shots", type=whole_count, default=defaults.shots, metavar="K",
                            help="train on K rows per label, drawn at random, and validate on K per label (the "
                            "few-shot setting: the rows `bench --shots K` draws; a label with fewer keeps all its "
                            "own; the test split is kept whole; 0 = every row)")
        parser.add_argument("--data-seed", dest="shots_seed", type=whole_count, default=defaults.shots_seed,
                            metavar="S", help="seeds which rows --shots draws, as bench's --data-seed")
        parser.set_defaults(data_draw=True)


def whole_count(text: str) -> int:
    """A whole number of 0 or more, refused as argparse refuses a word."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


ENCODING_HELP = ("the data file's encoding where it is not UTF-8 (gb18030, cp932, cp1251, ...; default: guessed, "
                 "and named in a note)")
SPLIT_COL_HELP = ("column of a single file that puts each row in train, validation (dev) or test (default: a column "
                  "named 'split', when every value names a split; splits it leaves empty are carved)")


def data_config(args: argparse.Namespace) -> DataConfig:
    """The ``DataConfig`` of ``add_data_args``'s options."""
    defaults = DataConfig()
    if getattr(args, "data_draw", False) and args.shots_seed and not args.shots:
        raise UserError(f"--data-seed {args.shots_seed} seeds the rows --shots draws; without --shots K every row is "
                        "read. Give --shots K too, or drop --data-seed.")
    return DataConfig(text_col=args.text_col, label_col=args.label_col, split_col=args.split_col,
                      max_file_mb=args.max_file_mb, encoding=args.encoding,
                      validation_fraction=getattr(args, "validation_fraction", defaults.validation_fraction),
                      test_fraction=getattr(args, "test_fraction", defaults.test_fraction),
                      # a command that draws the data's rows (bench draws its own, after its own --shots and --limit)
                      **({"shots": args.shots, "shots_seed": args.shots_seed} if getattr(args, "data_draw", False)
                         else {}))


def load_noted_data(args: argparse.Namespace) -> AnnotatedData:
    """``load_data`` of ``add_data_args``'s options, its notes on stderr (as ``validate`` lists them: an encoding
    guessed, splits carved, rows skipped) and the data report's serious problems as warnings (texts with two labels,
    leakage, labels never trained, label variants): a command that trains on or explains the data must not keep them
    from its user (the data review: test labels written 3.0 against train's 3 trained to 0% with no word). Printed
    once under a launch of several processes (by rank 0)."""
    import os

    from clm_explore.data import load_data

    data = load_data(args.data, data_config(args))
    if int(os.environ.get("RANK", "0")) == 0:
        say_data_notes(data)
    return data


def say_data_notes(data: AnnotatedData) -> None:
    """The data's notes and its report's serious problems, on stderr."""
    from clm_explore.datareport import data_report

    for note in data.notes:
        print(f"note: {note}", file=sys.stderr)
    for problem in data_report(data).serious:
        print(f"warning: {problem} (`clm-explore validate` lists every problem with examples)", file=sys.stderr)


def warn_unreadable(tokenizer: Any, texts: list[str]) -> None:
    """Say on stderr when the model's vocabulary cannot read much of the training texts (``vocabulary``: Chinese
    text is 72% [UNK] to the default model, Arabic read letter by letter), with the way out; once under a launch of
    several processes."""
    import os

    from clm_explore.vocabulary import unreadable_note

    if os.environ.get("RANK", "0") == "0" and (said := unreadable_note(tokenizer, texts)):
        print(f"warning: {said}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clm-explore",
        description="Token-driven sparse finetuning of small language models for text classification.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and the code's digest, and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for command in sub.choices.values():
        command.formatter_class = DefaultsShown
        command.allow_abbrev = False  # a script's --epoch would break the day an --epoch-... option is added
    return parser


class _VersionAction(argparse.Action):
    """``--version``, its digest read only when asked (every command builds the parser)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _runs_folder_hint(exc: OSError) -> str:
    """Where the failing path is in the runs folder, how to choose another (the packaging review: a read-only
    working folder said "runs" alone, naming neither --out nor CLM_EXPLORE_RUNS)."""
    from clm_explore.runs import default_root

    if not exc.filename:
        return ""
    root, path = default_root().absolute(), Path(str(exc.filename)).absolute()
    if path != root and root not in path.parents:
        return ""
    where = "$CLM_EXPLORE_RUNS" if os.environ.get("CLM_EXPLORE_RUNS") else "./runs of the folder you started in"
    return (f" It is the runs folder ({root}, {where}): set CLM_EXPLORE_RUNS to a folder this user may write, or "
            "pass the run's own --out DIR.")


def _version() -> str:
    """The package's version and its code's digest (``provenance.code_version``): the version string alone does not
    tell two builds apart, and a run's clm_run.json records the digest."""
    from importlib.metadata import PackageNotFoundError, version

    from clm_explore.provenance import code_version

    try:
        number = version("clm-explore")
    except PackageNotFoundError:  # run from a source tree that was not installed
        number = "(not installed)"
    return f"{number} (code {code_version()})"


class DefaultsShown(argparse.HelpFormatter):
    """``--help`` gives each option's default after its help, where it has one worth saying (not off, none or
    empty) and the help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        # By identity: 0 == False, and a default of 0 (--seed, --lr) is worth saying where a switch's False is not.
        quiet = any(action.default is off for off in (None, False, argparse.SUPPRESS)) or action.default == ""
        if quiet or not action.option_strings or "(default" in text or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"


FIELD_FLAGS = {"warmup_epochs": "head_warmup_epochs", "n_steps": "steps", "top_k": "top", "merge_tokens": "merge",
               "max_tokens": "mining_length"}
"""Config fields whose command-line option has another name (where the command has no option of the field's)."""


def in_flags(exc: BaseException, parser: argparse.ArgumentParser, command: str) -> str:
    """A config error's message with the config's field names as the command's options (``batch_size`` ->
    ``--batch-size``): the user typed options, not fields. Other errors name their options already."""
    from clm_explore.config import ConfigError

    text = str(exc)
    if not isinstance(exc, ConfigError):
        return text
    commands = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    sub = commands.choices.get(command) if commands else None
    if sub is None:
        return text
    flags = {a.dest: max([o for o in a.option_strings if not o.startswith("--no-")] or a.option_strings, key=len)
             for a in sub._actions if a.option_strings}  # --cache-frozen-layers, not its --no- twin

    def flag(match: re.Match) -> str:
        word = match.group(0)
        dest = word if word in flags else FIELD_FLAGS.get(word)
        # a plain word only where it leads the message or a library message marks it as a field (`epochs`)
        named = dest in flags and ("_" in word or match.start() == 0 or text[match.start() - 1:match.start()] == "`")
        return flags[dest] if named else word

    # Words inside paths (out/grid, /srv/max_length/g1, report.html) are not options: they stay as they are.
    return re.sub(r"(?<![\w/.\-])[a-z][a-z0-9_]*(?![\w/.\-])", flag, text)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A plain ``kill`` (or a scheduler's, or ``timeout``'s SIGTERM) stops a command as Ctrl+C does: a finetune
    marks its run cancelled, a bench keeps its finished cells. Only the main thread may set a signal handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopping a command as Ctrl+C does; told apart where it means more (a launch of several processes)."""


def _interrupt(signum: int, frame: object) -> None:
    raise Terminated


DATA_FIRST = ("validate", "audit", "mine", "sensitivity")
"""Commands that take the data as their first argument, not as ``--data`` (finetune and bench do)."""


def _not_utf8(argv: list[str]) -> str:
    """What names an argument that is not UTF-8 (a path or value typed in a shell of another encoding), '' when
    none: a folder so named failed deep in the run registry with a traceback, after its folder was made. Texts
    (--text) are the commands' own to check (``checked_texts``), with a word on --file."""
    for i, arg in enumerate(argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            flag = argv[i - 1] if i and argv[i - 1].startswith("-") else "an argument"
            if flag == "--text":
                continue
            return (f"{flag} {arg!r} is not UTF-8; set your terminal to UTF-8, or give a name in UTF-8 (rename the file "
                    "or folder)")
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    _escape_unwritable_characters()
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:  # Ctrl-C while the parser is built or torch imports (the first seconds)
        return _stopped(exc)


def _escape_unwritable_characters() -> None:
    """A character the output's encoding lacks is printed as its escape (\u9000), not a crash: redirected on Windows,
    stdout is cp1252, and a Chinese label ended ``validate`` and ``predict`` with a UnicodeEncodeError (the language
    review)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):  # replaced by a caller (a StringIO), or closed
            stream.reconfigure(errors="backslashreplace")


def _stopped(exc: KeyboardInterrupt) -> int:
    """The shell's exit status of a command stopped by a signal, 128 + its number (a script or scheduler tells
    Ctrl+C, 130, from a kill, 143), after a word on stderr instead of a traceback."""
    if isinstance(exc, Terminated):
        print("terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    print("interrupted", file=sys.stderr)
    return 128 + signal.SIGINT


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with running_command(argv):  # a run records the command line that made it
        return _run_command(argv)


def _run_command(argv: list[str]) -> int:
    if said := _not_utf8(argv):
        print(f"error: {said}", file=sys.stderr)
        return 2
    if argv and argv[0] in DATA_FIRST and any(a == "--data" or a.startswith("--data=") for a in argv[1:]):
        # argparse's answer is the top-level usage and "unrecognized arguments: --data"
        print(f"error: {argv[0]} takes the data without --data: clm-explore {argv[0]} DATA [options] "
              f"(finetune and bench take --data DATA).", file=sys.stderr)
        return 2
    parser = build_parser()
    _refuse_unknown_options(parser, argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own usage, with the option meant where one is close (abbreviations are off)
        command = _command_parser(parser, getattr(args, "command", None)) or parser
        command.error(unrecognized(unknown, command))
    if not getattr(args, "func", None):  # no command: the help, on stderr, as a usage error (a script's typo)
        parser.print_help(sys.stderr)
        return 2
    from clm_explore.config import SAMPLE_NAME

    if getattr(args, "data", None) == SAMPLE_NAME:  # the shipped sample: every check and record sees its folder
        from clm_explore.data import named_data

        args.data = str(named_data(SAMPLE_NAME))
    if not getattr(args, "light", False):  # commands that load no model mark themselves light: no transformers import
        from clm_explore.modeling import quiet_transformers

        quiet_transformers()  # the command owns the process: transformers' reports would bury its output
    import pandas as pd  # imported by every command's work anyway (transformers pulls it in)

    # Tables padded by the width a terminal gives a character: Chinese labels and emoji take two columns, and the
    # columns after them went out of line (the language review).
    pd.set_option("display.unicode.east_asian_width", True)
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except user_error_types() as exc:
        print(f"error: {in_flags(exc, parser, args.command)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return _stopped(exc)
    except BrokenPipeError:  # `clm-explore ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except OSError as exc:
        if exc.errno not in _PLACE_ERRNOS:
            raise
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        advice = ("free some space there" if full else "choose a place in a folder that exists" if exc.errno in (
            errno.ENOTDIR, errno.ENOENT) else "check that this user may read or write it, or choose another place")
        print(f"error: {exc.strerror}: {exc.filename}. {advice[0].upper()}{advice[1:]}.{_runs_folder_hint(exc)}",
              file=sys.stderr)
        return 2
    except Exception as exc:
        from clm_explore.jobs import DISK_FULL

        if not DISK_FULL.search(str(exc)):
            raise
        # safetensors' and tokenizers' own errors are no OSError: a full disk while saving printed a traceback
        print(f"error: a disk the command writes to is full (the run folder's, the model cache's or the temporary "
              f"folder's): free some space there, then run it again ({type(exc).__name__}: {exc}).", file=sys.stderr)
        return 2


def _refuse_unknown_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """An option the command does not have, said with the nearest one before anything else: argparse says a missing
    required option first, so `predict --rnu R` said only that --run is required (the diff review)."""
    command = _command_parser(parser, argv[0]) if argv else None
    if command is None:
        return
    known = {option for action in command._actions for option in action.option_strings}
    options = argv[1:argv.index("--")] if "--" in argv else argv[1:]  # after "--" every word is a value
    unknown = [arg for arg in options if arg.startswith("--") and arg.split("=", 1)[0] not in known]
    if unknown:
        command.error(unrecognized(unknown, command))


def _command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    commands = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return commands.choices.get(command) if commands and command else None


def unrecognized(unknown: list[str], parser: argparse.ArgumentParser) -> str:
    """argparse's "unrecognized arguments" with the nearest option of each mistyped one (``--epoch`` -> ``--epochs``)."""
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    meant = []
    for arg in unknown:
        if arg.startswith("--"):
            meant += [m for m in difflib.get_close_matches(arg.split("=", 1)[0], options, n=1) if m not in meant]
    hint = f" (did you mean {', '.join(meant)}?)" if meant else ""
    return f"unrecognized arguments: {' '.join(unknown)}{hint}"


_PLACE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.ENOENT}
"""Failures of the place given, not of the tool (a read-only or full disk, a file or folder of another user's): a
message, not a traceback."""


if __name__ == "__main__":
    sys.exit(main())


def phase_printer() -> Callable[[str, int, int], None]:
    """A run's phases on stderr (finetune's preparation, a report's attributions), one line each ("scoring rows" counts its batches on its line; where stderr
    is not a terminal, a log, only its last count)."""
    shown: list[str] = []
    live = sys.stderr.isatty()

    def show(phase: str, done: int, total: int) -> None:
        if phase == "training":
            return
        if shown and shown[-1] == phase:
            if total > 1 and (live or done == total):
                print(f"\r{phase} {done}/{total}" if live else f"{phase} {done}/{total}",
                      end="" if done < total else "\n", file=sys.stderr, flush=True)
            return
        shown.append(phase)
        if total <= 1:
            print(f"{phase} ...", file=sys.stderr, flush=True)
        elif live:
            print(f"\r{phase} {done}/{total}", end="", file=sys.stderr, flush=True)
    return show
