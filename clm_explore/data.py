"""Annotated data intake: read a file or a folder of splits, check it, and describe it.

Contract (other modules rely on it):
- ``load_data(path, cfg) -> AnnotatedData`` (``path``: a file, a folder of splits, a DataFrame or a dict of
  DataFrames by split) and ``load_upload(raw, filename, cfg)`` (the app);
  ``AnnotatedData.train/.validation/.test`` are DataFrames with exactly the columns ``text`` (str) and
  ``label`` (str), index 0..n-1 (the row id);
- ``AnnotatedData.labels`` lists the train labels, sorted; ``label_ids(split)`` maps to ints;
- ``DataError`` carries a one-paragraph message for the user: the file, the row, what is wrong, what to do;
- ``data_report(data) -> DataReport``: sizes, label counts, lengths, duplicates, leakage and problems.

Formats: CSV, TSV, JSONL, JSON (a list of records) and Parquet, or a folder holding ``train``,
``validation`` (or ``dev``) and ``test`` files in any of them. Missing splits are carved out of train: seeded,
stratified by label (at random, keeping a row of every label in train, when the labels have too few rows). The
test carve keeps every copy of a text on one side; the validation carve draws rows as the published benchmarks
did, and its note counts texts found on both sides. Labels that differ only in case or spacing are kept apart
(``data_report`` flags them). Nothing is ever dropped silently: bad rows are errors that name them.
"""

from __future__ import annotations

import codecs
import collections
import csv
import hashlib
import io
import json
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from clm_explore.config import SAMPLE_NAME, DataConfig, config_from, draw_words

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test"}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".parquet": "parquet", ".pq": "parquet"}
SPLIT_NAMES = ("split",)
"""The split column's name when ``DataConfig.split_col`` does not give one."""
TEXT_NAMES = ("text", "sentence", "utterance", "query", "question", "content")
LABEL_NAMES = ("label", "intent", "category", "class", "target", "labels")
_MAX_LISTED = 10
_FIELD_LIMIT = 10_000_000  # csv's default 128 KiB field limit rejects long documents


class DataError(ValueError):
    """The data cannot be used; the message names the file, the row and what is wrong."""


class TooManyRowsError(DataError):
    """A file holds more rows than ``DataConfig.max_rows``: said before the rest of it is read."""


class IncompleteRowsError(DataError):
    """Rows without a text or a label: ``without_incomplete_rows`` writes the file without them, for a user who
    chooses to leave them out (the app offers it; the loader never drops rows itself)."""


@dataclass
class AnnotatedData:
    """Three splits of labelled texts; every frame has str columns ``text`` and ``label``."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    """Labels of the train split in the model's output order: sorted (numerically when all are numbers)."""
    source: str = ""
    """Where the data came from (a path or an uploaded file name)."""
    notes: list[str] = field(default_factory=list)
    """Plain-English remarks on how the data was read (encoding fallback, carved splits)."""
    config: DataConfig | None = field(default=None, repr=False, compare=False)
    """The DataConfig ``load_data`` read it with (its columns, encoding, carve): a run records it, so that it can be
    read the same way again; None for data built by hand."""
    path: str | None = field(default=None, repr=False, compare=False)
    """The absolute path of the file or folder ``load_data`` read; None for an upload or DataFrames (an upload's
    ``source`` is its name, which the server's working folder may hold another file of; the diff review)."""
    carved: tuple[str, ...] = field(default=(), repr=False, compare=False)
    """The splits ``load_data`` carved out of train ('test', 'validation'), the data giving none of its own: their
    shares are ``DataConfig.test_fraction`` and ``validation_fraction`` (the app offers them only then)."""

    def __post_init__(self) -> None:
        """Built by hand (``load_data`` checks far more): the shape every consumer relies on, said plainly."""
        for name in SPLITS:
            frame = self.split(name)
            if not isinstance(frame, pd.DataFrame) or not {"text", "label"} <= set(frame.columns):
                raise DataError(f"AnnotatedData's {name} split must be a DataFrame with 'text' and 'label' columns; "
                                "load_data(frame) finds and checks the columns of any table.")
        if self.train.empty or not len(self.labels):  # one label loads (the report says why it cannot train)
            raise DataError(f"AnnotatedData needs training rows and their labels; got {len(self.train)} rows and "
                            f"labels {list(self.labels)[:5]}.")
        for name in SPLITS:  # int labels (a DataFrame's own) would reach the saved config and fail there, after training
            setattr(self, name, _as_text_columns(name, self.split(name)))
        self.labels = [str(label) for label in self.labels]
        repeated = sorted(label for label, n in Counter(self.labels).items() if n > 1)
        missing = sorted(set(self.train["label"]) - set(self.labels))
        if repeated or missing:  # a train row without an id failed deep in training (torch: "Target -1 is out of bounds")
            said = (f"names {', '.join(map(repr, repeated[:5]))} more than once" if repeated
                    else f"leaves out train's {', '.join(map(repr, missing[:5]))}")
            raise DataError(f"AnnotatedData's labels {said}: it is every train label once, in the model's output "
                            "order (label_order(train labels)).")

    def __repr__(self) -> str:
        drawn = draw_words(self.config.shots, self.config.shots_seed) if self.config else ""  # two draws told apart
        return (f"AnnotatedData({self.source or 'in memory'}: {len(self.train):,} train, {len(self.validation):,} "
                f"validation, {len(self.test):,} test rows, {len(self.labels)} labels{drawn})")

    def split(self, name: str) -> pd.DataFrame:
        """The frame of split ``name`` (train, validation or test)."""
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    def label_ids(self, name: str) -> np.ndarray:
        """(rows,) int64 label ids of a split; labels unseen in train map to -1."""
        index = {label: i for i, label in enumerate(self.labels)}
        return np.array([index.get(x, -1) for x in self.split(name)["label"]], dtype=np.int64)


def _as_text_columns(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with str ``text`` and ``label`` columns (the same frame when they are already): numbers become their
    text; a missing value is refused, since str() would make it the word 'nan'."""
    columns = ["text", "label"]
    if all(isinstance(value, str) for c in columns for value in frame[c].tolist()):
        return frame
    missing = frame[columns].isna().any(axis=1)
    if missing.any():
        rows = ", ".join(str(i) for i in frame.index[missing][:5])
        raise DataError(f"AnnotatedData's {name} split has {int(missing.sum())} row(s) without a text or label "
                        f"(index {rows}); drop or fill them, or let load_data(frame) check the table.")
    return frame.astype({c: str for c in columns})


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,4})?")
"""A label written as a decimal number: '2', '-1', '1.0' (a float column's labels), '2.5e1'."""


def label_order(labels: Iterable[object]) -> list[str]:
    """The model's output order of ``labels``: sorted as text, or as numbers when every label is one ('2' before
    '10', '2.5' before '10.5'), so that a data set labelled 0..N-1 keeps its ids (a file's 0.0..N-1.0 are read as
    0..N-1 before: ``_whole_numbers``). Exact (Decimal): long integer ids keep their order too."""
    labels = [str(label) for label in labels]
    if all(_NUMBER.fullmatch(label) for label in labels):
        return sorted(labels, key=lambda label: (Decimal(label), label))
    return sorted(labels)


@dataclass
class _Table:
    """One parsed file before column selection: its columns, the values of those that may be chosen, and where
    each row came from."""

    name: str
    frame: pd.DataFrame
    """The columns that may be the text or the label column (``_Wanted``), named as ``columns`` names them. A
    file's other columns are never read into it: a shared server must not hold what it will not use."""
    positions: list[Any]
    """1-based line (CSV, TSV, JSONL), record (JSON) or row (Parquet) number of each row; a DataFrame's index
    label (unit "index")."""
    unit: str
    columns: list[str]
    """Every column name of the file, in order (for messages and the column picker)."""
    unread: dict[str, str] = field(default_factory=dict)
    """Columns that may be picked but hold lists or records (Parquet): never decoded; refused if picked."""
    notes: list[str] = field(default_factory=list)
    """What the parser saw fit to tell (rows of empty fields skipped, a TSV text spanning lines), for the data's notes."""


@dataclass(frozen=True)
class _Wanted:
    """Which columns a parser keeps: those ``_find_column`` could pick for each role read. A role given by name keeps
    that column only (any case); otherwise every column of a known name (text, sentence, ...) is kept."""

    text_col: str | None = None
    label_col: str | None = None
    label: bool = True
    """False when no label is read (texts to predict on)."""
    split: bool = False
    """True for a single file: its split column (``DataConfig.split_col``, else one named ``split``) is kept."""
    split_col: str | None = None

    @classmethod
    def of(cls, cfg: DataConfig, split: bool = False) -> _Wanted:
        return cls(cfg.text_col, cfg.label_col, split=split, split_col=cfg.split_col)

    def keeps(self, column: str) -> bool:
        roles = [(self.text_col, TEXT_NAMES)] + ([(self.label_col, LABEL_NAMES)] if self.label else [])
        roles += [(self.split_col, SPLIT_NAMES)] if self.split else []
        # Both sides stripped, as _find_column matches them: a CSV header's names are stripped, a typed name may not
        # be (the data review: --label-col " label " found no column).
        return any(column.strip().lower() == given.strip().lower() if given is not None
                   else column.strip().lower() in known for given, known in roles)


# ----------------------------------------------------------------------------------------- loading


def split_digest(frame: pd.DataFrame) -> str:
    """A fingerprint of a split's rows (texts and labels, in order): two splits with it are the same rows."""
    digest = hashlib.sha256()
    for text, label in zip(frame["text"], frame["label"], strict=True):
        digest.update(json.dumps([str(text), str(label)]).encode())
    return digest.hexdigest()[:16]


def data_digest(data: AnnotatedData) -> str:
    """A fingerprint of the three splits (``split_digest`` of each): two runs with it trained and tested on the same
    rows, whatever their data was called (a path typed on the command line, the app's name for it)."""
    parts = [split_digest(data.split(name)) for name in ("train", "validation", "test")]
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]


SAMPLE_DATA = Path(__file__).resolve().parent / "sample_data" / "banking77_20"
"""A 20-intent slice of BANKING77 (CC BY 4.0; its SOURCE.md): 1,200 train and 800 test rows, for demos, the app's
first visit and quick tests. The checkout's ``sample_data/banking77_20`` is a link to it."""


def named_data(path: str | os.PathLike) -> Path:
    """``path`` as a data path: ``SAMPLE_NAME`` is the shipped sample unless a file or folder of that name is here,
    and a leading ``~`` is the home folder."""
    given = Path(path).expanduser()
    return SAMPLE_DATA if str(path) == SAMPLE_NAME and not given.exists() else given


def load_data(path: str | Path | pd.DataFrame | dict[str, pd.DataFrame], cfg: DataConfig | None = None,
              **options: Any) -> AnnotatedData:
    """Read and check a data file or a folder of split files (or DataFrames, with the same checks).

    Args:
        path: a CSV/TSV/JSONL/JSON/Parquet file, or a folder with ``train`` (required), ``validation``
            (or ``dev``) and ``test`` files in any of those formats; or a DataFrame (one table, as a single
            file), or a dict of them by split name (``{"train": ..., "test": ...}``).
        cfg: column names, size cap and split fractions; defaults to ``DataConfig()``.
        options: ``DataConfig`` fields by name, over ``cfg``'s: ``load_data(path, text_col="utterance",
            label_col="intent")`` (the messages name the command line's flag and the keyword: ``--label-col
            (label_col=)``); ``shots=10, shots_seed=0`` keeps 10 training and 10 validation rows of each label,
            drawn at random (the few-shot setting; the test split whole).

    Returns:
        The three splits; missing ones are carved out of train (see ``AnnotatedData.notes``).

    Raises:
        DataError: the data cannot be used; the message says where and what to do.
    """
    cfg = _with_options(config_from(cfg, DataConfig, "load_data"), options)
    if isinstance(path, pd.DataFrame | dict):
        return _load_frames(path, cfg)
    if not isinstance(path, str | os.PathLike):  # a Series or a list of rows: say what is taken, not what Path says
        raise DataError(f"load_data takes a file or folder path, a DataFrame or a dict of DataFrames by split; got "
                        f"{type(path).__name__}. A list of rows: load_data(pd.DataFrame(rows)).")
    if not str(path).strip():  # Path("") is the working directory: its files would be read as the data
        raise DataError("The data path is empty. Pass a data file (CSV, TSV, JSONL, JSON, Parquet) or a folder with "
                        "train/validation/test files.")
    path = named_data(path)
    if not path.exists():
        raise DataError(f"{path} does not exist. Pass a data file (CSV, TSV, JSONL, JSON, Parquet) or a folder "
                        f"with train/validation/test files (or {SAMPLE_NAME!r}, the sample that ships with "
                        "clm-explore).")
    if not path.is_dir() and not path.is_file():  # a pipe or a device: reading it could wait forever
        raise DataError(f"{path} is not a regular file or a folder. Save the data to a file and pass that.")
    notes: list[str] = []
    if path.is_dir() and cfg.split_col is not None:
        raise DataError(f"{path} is a folder: its train, validation and test files are its splits, so a split column "
                        f"({cfg.split_col!r}, --split-col) is not read there. Pass a single file, or drop the option.")
    files = _split_files(path) if path.is_dir() else {"all": path}
    frames = {split: _read_file(f, f.read_bytes, f.stat().st_size, cfg, notes, part=split)
              for split, f in files.items()}
    data = _assemble(_by_split_column(frames, str(path), notes), cfg, str(path), str(files.get("train", path)), notes)
    data.path = str(path.resolve())
    return data


def _load_frames(given: pd.DataFrame | dict[str, pd.DataFrame], cfg: DataConfig) -> AnnotatedData:
    """``load_data`` of DataFrames: the columns found and checked as a file's are, missing splits carved."""
    by_split = {"all": given} if isinstance(given, pd.DataFrame) else {}
    if isinstance(given, dict):
        for key, frame in given.items():
            split = SPLIT_ALIASES.get(str(key).lower())
            if split is None or not isinstance(frame, pd.DataFrame):
                raise DataError(f"load_data takes a dict of DataFrames keyed train, validation (or dev) and test; "
                                f"got {key!r}: {type(frame).__name__}.")
            if split in by_split:  # 'validation' and 'dev', or 'train' and 'Train': one would replace the other
                raise DataError(f"load_data's dict of DataFrames gives the {split} split twice (as {key!r} and "
                                "another key). Keep one DataFrame per split.")
            by_split[split] = frame
        if "train" not in by_split:
            raise DataError("load_data's dict of DataFrames needs a 'train' one.")
    notes: list[str] = []
    frames = {}
    for split, frame in by_split.items():
        name = "the DataFrame" if split == "all" else f"the {split} DataFrame"
        frames[split] = _frame_rows(frame, cfg, notes, name, part=split)
    if "all" not in frames and cfg.split_col is not None:
        raise DataError(f"A dict of DataFrames by split is split already: the split column {cfg.split_col!r} is "
                        "not read there. Pass one DataFrame, or drop DataConfig.split_col.")
    frames = _by_split_column(frames, "the DataFrame", notes)
    return _assemble(frames, cfg, "DataFrame", "the train DataFrame" if "train" in frames else "the DataFrame", notes)


def _with_options(cfg: DataConfig, options: dict[str, Any], caller: str = "load_data") -> DataConfig:
    unknown = sorted(set(options) - {f.name for f in fields(DataConfig)})
    if unknown:
        raise TypeError(f"{caller} got {', '.join(unknown)}, which DataConfig does not have; its fields: "
                        f"{', '.join(f.name for f in fields(DataConfig))}.")
    return replace(cfg, **options) if options else cfg


def load_upload(raw: bytes, filename: str, cfg: DataConfig | None = None) -> AnnotatedData:
    """Read and check one uploaded file (the app's file uploader); same checks as ``load_data``.

    Args:
        raw: the file's bytes.
        filename: its name; the extension picks the format.
        cfg: column names, size cap and split fractions.
    """
    cfg = cfg or DataConfig()
    notes: list[str] = []
    frame = _read_file(Path(filename), lambda: raw, len(raw), cfg, notes)
    return _assemble(_by_split_column({"all": frame}, filename, notes), cfg, filename, filename, notes)


UNREAD_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".xlsx", ".xls", ".ods")
"""Compressed and spreadsheet files: named as a split, they are the data in a form the loader does not read."""


def _split_files(folder: Path) -> dict[str, Path]:
    found: dict[str, list[Path]] = {}
    unread: list[str] = []
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        split = SPLIT_ALIASES.get(f.stem.lower())
        if split and f.suffix.lower() in FORMATS:
            found.setdefault(split, []).append(f)
        elif SPLIT_ALIASES.get(f.name.split(".", 1)[0].lower()) and f.suffix.lower() in UNREAD_SUFFIXES:
            unread.append(f.name)  # test.csv.gz, validation.xlsx: a split not read (train.csv.bak, dev.ipynb are let be)
    if unread:
        raise DataError(f"{folder} holds split file(s) in a format the loader does not read: {', '.join(unread)}. "
                        "Save them as .csv, .tsv, .jsonl, .json or .parquet (uncompressed), or move them out of the "
                        "folder.")
    for split, files in found.items():
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            raise DataError(f"{folder} holds several {split} files ({names}). Keep one file per split.")
    if "train" not in found:
        # A folder is listed with a slash: "found: train.csv" beside "no train file" read as a contradiction
        listed = ", ".join(sorted(f.name + ("/" if f.is_dir() else "") for f in folder.iterdir())[:20]) or "nothing"
        raise DataError(f"{folder} has no train file (found: {listed}). Name the files train, validation (or dev) "
                        "and test with a .csv, .tsv, .jsonl, .json or .parquet extension, or pass a single file.")
    return {split: files[0] for split, files in found.items()}


def _read_file(path: Path, read: Callable[[], bytes], size: int, cfg: DataConfig, notes: list[str],
               part: str = "all") -> pd.DataFrame:
    """Read one file into a checked ``[text, label]`` frame, plus ``split`` when the file is the whole data
    (``part`` "all", not one split of a folder) and has a split column; ``read()`` is only called after the size
    check."""
    table = _parse_table(path, read, size, cfg, notes, _Wanted.of(cfg, split=part == "all"))
    return _select_columns(table, cfg, notes, part)


def column_names(path: str | Path, suffix: str | None = None) -> list[str]:
    """The column names of a data file for a column mapping: exactly the names ``load_data`` accepts, found by
    the loader's own decoding and parsing (encoding fallback, CSV separator, stripped header) over the start of
    the file: a CSV/TSV header, a JSONL file's first records, a Parquet file's schema (a JSON list is read
    whole). [] when the file cannot be read (``load_data`` then says why). ``suffix`` overrides the file's own
    extension."""
    file = Path(path)
    fmt = FORMATS.get((suffix or file.suffix).lower())
    try:
        if fmt == "parquet":
            return _parquet_names(file)
        if fmt is None:
            return []
        text = _decode(str(file), file.read_bytes() if fmt == "json" else _head(file), [])
        return _names_in(fmt, str(file), text)
    except Exception:  # noqa: BLE001 - the loader reports the real problem in plain words
        return []


_HEAD_BYTES = 1 << 20
"""How much of a CSV/TSV/JSONL file ``column_names`` reads: plenty for a header or the first records."""
_HEAD_RECORDS = 20
"""JSONL records whose keys ``column_names`` offers."""


def _head(file: Path) -> bytes:
    """The complete lines in the first ``_HEAD_BYTES`` of ``file``; all of it when shorter or a single line."""
    with file.open("rb") as stream:
        head = stream.read(_HEAD_BYTES)
        if len(head) < _HEAD_BYTES:
            return head
        # UTF-16 (with its BOM) is the one encoding where a line break is not the byte \n.
        newline = {b"\xff\xfe": b"\n\x00", b"\xfe\xff": b"\x00\n"}.get(head[:2], b"\n")
        cut = head.rfind(newline)
        while cut > 0 and len(newline) == 2 and cut % 2:  # a UTF-16 character starts at an even byte
            cut = head.rfind(newline, 0, cut)
        return head[: cut + len(newline)] if cut > 0 else head + stream.read()


def _names_in(fmt: str, name: str, text: str) -> list[str]:
    """The column names the loader finds in ``text`` (the start of the file for CSV, TSV and JSONL)."""
    if fmt == "json":
        return _record_keys(name, _json_records(name, text))
    if fmt == "jsonl":
        return _record_keys(name, [record for _, record in islice(_jsonl_records(name, text), _HEAD_RECORDS)])
    text, delimiter = (text, "\t") if fmt == "tsv" else _csv_parts(text)
    for _, row in _delimited_rows(name, text, delimiter):
        return _header(name, row)
    return []


def _parquet_names(file: Path) -> list[str]:
    import pyarrow.parquet as pq

    return _parquet_columns(str(file), pq.read_schema(file))


def _parquet_columns(name: str, schema: Any) -> list[str]:
    """A Parquet schema's column names, less the pandas index columns the loader drops; each distinct."""
    index = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
    columns = [n for n in schema.names if n not in index and not n.startswith("__index_level_")]
    _check_header(name, columns, any_case=False)
    return columns


def read_texts(path: str | Path, text_col: str | None = None, cfg: DataConfig | None = None,
               notes: list[str] | None = None) -> list[str]:
    """The texts of a file to predict on: any format ``load_data`` reads (no label column needed; the text
    column is found by the same names, or ``text_col``), or a .txt file with one text per line. ``notes``, when
    given, receives the reader's remarks (an encoding guessed, rows of empty fields skipped), as ``load_data``'s.

    Raises:
        DataError: a missing, oversized, unreadable or unsupported file, no text column, or empty texts.
    """
    cfg = cfg or DataConfig()
    notes = [] if notes is None else notes
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{path} does not exist or is not a file.")
    if file.suffix.lower() == ".txt":
        _check_size(str(file), file.stat().st_size, cfg)
        raw = file.read_bytes()
        if raw.count(b"\n") > 2 * cfg.max_rows:  # far too many lines: refused before they are decoded and split
            raise _row_cap_error(file.name, cfg.max_rows, 2 * cfg.max_rows)
        lines = text_lines(file.name, raw, notes, cfg.encoding)
        _check_rows(file.name, len(lines), cfg.max_rows)
        _refuse_table_of_lines(file.name, lines, text_col, "rename it {suffix}")
        return lines
    wanted = _Wanted(text_col=text_col, label=False)
    table = _parse_table(file, file.read_bytes, file.stat().st_size, cfg, notes, wanted)
    notes.extend(table.notes)
    if not table.positions:
        raise DataError(f"{table.name} has a header ({_listed(table.columns)}) but no rows to predict.")
    column = _find_column(table.name, table.columns, text_col, TEXT_NAMES, "text", "--text-col (text_col=)")
    _require_flat(table, column, "text")
    texts = pd.Series(_as_str(table, table.frame[column], "text"))
    _require_filled(table, texts, "empty text", "text")
    return texts.tolist()


def _refuse_table_of_lines(name: str, lines: list[str], text_col: str | None, fix: str) -> None:
    """Refuse lines that are a table, not one text per line: every line holds the same number of tabs and the
    first names a text column, or the first is a CSV header naming one. Read as lines, its header was predicted as
    a text and every text carried its label (the data review: Excel's 'Unicode Text' export, UTF-16 with tabs; a
    CSV piped to ``predict --file -``, its header naming a text and a label column). ``fix`` says how to read it as
    a table, ``{suffix}`` its file type."""
    names = {text_col.strip().lower()} if text_col is not None else set(TEXT_NAMES)
    tabs = lines[0].count("\t")
    if tabs and all(line.count("\t") == tabs for line in lines) and not names.isdisjoint(_header_cells(lines[0], "\t")):
        raise DataError(f"{name} looks like a tab-separated table, not one text per line: each of its {len(lines):,} "
                        f"line(s) holds {tabs} tab(s) and the first names the columns ({lines[0][:80]!r}), as Excel's "
                        f"'Unicode Text' export writes them. To predict on its text column, {fix.format(suffix='.tsv')} "
                        "(--text-col picks another column); else save one text per line, without a header.")
    for delimiter in ",;":
        header = _header_cells(lines[0], delimiter)
        if (all(_COLUMN_NAME.fullmatch(cell) for cell in header) and not names.isdisjoint(header)
                and not set(LABEL_NAMES).isdisjoint(header)):  # "text, please" is a text; "text,label" a header
            raise DataError(f"{name} starts with a CSV header ({lines[0][:80]!r}): it looks like a table, not one "
                            f"text per line, and its header and labels would be predicted as texts. To predict on "
                            f"its text column, {fix.format(suffix='.csv')}; else send one text per line, without a "
                            "header.")


_COLUMN_NAME = re.compile(r"[a-z_][a-z0-9_ ]{0,39}")
"""A header cell as data files name columns (``text``, ``label``, ``intent_id``): a sentence is not one."""


def _header_cells(line: str, delimiter: str) -> list[str]:
    return [cell.strip().strip('"').strip().lower() for cell in line.split(delimiter)]


def read_text_stream(stream: BinaryIO, name: str = "standard input", cfg: DataConfig | None = None,
                     notes: list[str] | None = None) -> list[str]:
    """One text per line of ``stream`` (a pipe: ``predict --file -``), read as a .txt file is: decoded as files are,
    blank lines skipped and said, at most ``cfg.max_file_mb``."""
    cfg = cfg or DataConfig()
    cap = int(cfg.max_file_mb * 1024 * 1024)
    raw = stream.read(cap + 1)  # one byte past the cap tells an oversized stream without reading it all
    _check_size(name, len(raw), cfg, at_least=len(raw) > cap)
    lines = text_lines(name, raw, [] if notes is None else notes, cfg.encoding)
    _refuse_table_of_lines(name, lines, None, "save it as a {suffix} file and pass its path (--file data{suffix})")
    return lines


def text_lines(name: str, raw: bytes, notes: list[str], encoding: str | None = None) -> list[str]:
    """The non-blank lines of ``raw`` (a .txt file or a pipe), one text each; skipped blank lines are noted."""
    every = list(_lines(_decode(name, raw, notes, labelled=False, encoding=encoding)))  # a form feed (PDF text) or U+2028 breaks no line
    lines = [line for line in every if not _blank(line)]
    if not lines:
        raise DataError(f"{name} holds no text (it is empty or blank).")
    blank = [i + 1 for i, line in enumerate(every) if _blank(line)]
    if blank and blank != [len(every)]:  # said: a script pairing outputs with input lines would be off by them
        notes.append(f"{name}: {len(blank)} blank line(s) skipped (line(s) {_listed_lines(blank)}): one "
                     "result per text line, in order")
    return lines


def read_labelled(source: str | Path | pd.DataFrame | AnnotatedData, cfg: DataConfig | None = None,
                  notes: list[str] | None = None, **options: Any) -> pd.DataFrame:
    """Every row of labelled data to score a finished run on (``evaluate``), none carved off: a data file in any
    format ``load_data`` reads (its test rows where a split column names them), a folder of splits (its test file),
    a DataFrame (as a file), or ``AnnotatedData`` (its test split). Returns a ``[text, label]`` frame of str with ``load_data``'s checks; ``options`` are ``DataConfig``
    fields (``text_col``, ``label_col``, ``max_file_mb``, ...); ``notes`` receives the reader's remarks.

    Raises:
        DataError: the data cannot be read, or a folder has no test file.
    """
    cfg = _with_options(config_from(cfg, DataConfig, "read_labelled"), options, "read_labelled")
    notes = [] if notes is None else notes
    if isinstance(source, AnnotatedData):
        return source.test[["text", "label"]].reset_index(drop=True)
    if isinstance(source, pd.DataFrame):
        return _test_rows(_frame_rows(source, cfg, notes), "the DataFrame", notes)
    if not isinstance(source, str | os.PathLike) or not str(source).strip():
        raise DataError(f"The data to evaluate on is a data file, a folder of splits, a DataFrame or AnnotatedData; "
                        f"got {type(source).__name__} {str(source)[:40]!r}.")
    path = named_data(source)
    if path.is_dir():
        split_files = _split_files(path)
        if "test" not in split_files:
            raise DataError(f"{path} has no test file to evaluate on. Pass the file of labelled rows itself.")
        path = split_files["test"]
    elif not path.is_file():
        raise DataError(f"{path} does not exist or is not a regular file. Pass a data file (CSV, TSV, JSONL, JSON, "
                        "Parquet) or a folder with a test file.")
    return _test_rows(_read_file(path, path.read_bytes, path.stat().st_size, cfg, notes), path.name,
                      notes)


def _test_rows(frame: pd.DataFrame, name: str, notes: list[str]) -> pd.DataFrame:
    """A whole file's rows to evaluate on: its test rows where its split column names them (the rest trained the
    run, as ``splits_csv`` writes them; the diff review: every row was scored, training rows too), else all."""
    if "split" not in frame.columns:
        return frame
    test = frame[frame["split"] == "test"]
    if test.empty:
        raise DataError(f"{name}'s split column names no test row: pass the rows to evaluate on (or drop the column "
                        "to score every row).")
    notes.append(f"{name}: its split column names {len(test):,} of its {len(frame):,} rows test: those are scored")
    return test[["text", "label"]].reset_index(drop=True)


def _frame_rows(frame: pd.DataFrame, cfg: DataConfig, notes: list[str], name: str = "the DataFrame",
                part: str = "all") -> pd.DataFrame:
    """A DataFrame's rows as a checked ``[text, label]`` frame, its columns found as a file's are (``part`` "all":
    and its split column, as ``_select_columns`` reads it)."""
    _check_rows(name, len(frame), cfg.max_rows)
    columns = [str(c) for c in frame.columns]
    _check_header(name, columns, any_case=False)
    # Rows are named by their index labels, as AnnotatedData names them: the data review had "row 4" for index 28.
    table = _Table(name, frame.set_axis(columns, axis=1).reset_index(drop=True), frame.index.tolist(), "index",
                   columns)
    return _select_columns(table, cfg, notes, part)


def _check_size(name: str, size: int, cfg: DataConfig, at_least: bool = False) -> None:
    """Refuse ``size`` bytes above the cap; ``at_least`` when measuring stopped there (the full size is more)."""
    if size > cfg.max_file_mb * 1024 * 1024:
        mb = f"{size / 2**20:,.1f}" if size >= 2**20 else f"{size / 2**20:.2g}"
        raise DataError(f"{name} is {'at least ' if at_least else ''}{mb} MB, above the {cfg.max_file_mb:g} MB limit. "
                        "Use a smaller sample or raise the limit with --max-file-mb (DataConfig.max_file_mb).")


def _parse_table(path: Path, read: Callable[[], bytes], size: int, cfg: DataConfig, notes: list[str],
                 wanted: _Wanted | None = None) -> _Table:
    """Parse one file of a supported format, keeping the columns ``wanted`` (default: those ``cfg`` may pick) and
    every column's name; ``read()`` is only called after the size check."""
    wanted = wanted or _Wanted.of(cfg)
    name = str(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        txt = (" A .txt file of tab-separated columns (Excel's 'Unicode Text' export) is a TSV table: rename it .tsv."
               if path.suffix.lower() == ".txt" else "")  # the data review
        raise DataError(f"{name} has an unsupported extension {path.suffix or '(none)'!r}. Save it as .csv, .tsv, "
                        f".jsonl, .json or .parquet (spreadsheets: export as CSV, UTF-8).{txt}")
    _check_size(name, size, cfg)
    raw: bytes = read()
    if not raw.strip():
        wanted_rows = ("at least a few rows per label" if wanted.label  # predict's texts have no label (the data review)
                       else "a row per text to predict (or use a .txt file, one text per line)")
        raise DataError(f"{name} is empty. Put a header row (e.g. {'text,label' if wanted.label else 'text'}) and "
                        f"{wanted_rows} in it.")
    if fmt == "parquet":
        return _parse_parquet(name, raw, cfg, wanted)
    # Each parser stops at row max_rows + 1: parsing millions of rows only to refuse them costs minutes and GBs.
    return _PARSERS[fmt](name, _decode(name, raw, notes, wanted.label, cfg.encoding), cfg.max_rows, wanted)


# ------------------------------------------------------------------------------------------ parsing


def _decode(name: str, raw: bytes, notes: list[str], labelled: bool = True, encoding: str | None = None) -> str:
    """Bytes to text: UTF-8 (BOM allowed), UTF-16 or UTF-32 with a BOM; lines that are not valid UTF-8 are read in
    the legacy encoding that reads them best (``_guess_legacy``), with a note naming it. ``labelled``: the file holds
    labelled rows (not texts to predict), for the advice of a refusal as binary. ``encoding``: the file's, as its
    user says (``DataConfig.encoding``), where it is not UTF-8: no guess."""
    if encoding is not None and not _is_utf8(raw):
        return _check_text(name, _decode_as(name, raw, encoding, notes), labelled)
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16: the LE marks share a start
        notes.append(f"{name} is UTF-32; it was decoded as such.")
        return _check_text(name, raw.decode("utf-32", errors="replace"), labelled)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        notes.append(f"{name} is UTF-16; it was decoded as such.")
        return _check_text(name, raw.decode("utf-16", errors="replace"), labelled)
    nul = raw.find(b"\x00")
    if nul >= 0:
        _nul_error(name, raw, nul, labelled)
    try:
        return _check_text(name, raw.decode("utf-8-sig"), labelled)
    except UnicodeDecodeError:
        pass
    text, legacy, guess = _decode_by_line(raw.removeprefix(codecs.BOM_UTF8))
    notes.append(_legacy_note(name, text, legacy, guess))
    return _check_text(name, text, labelled)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode_as(name: str, raw: bytes, encoding: str, notes: list[str]) -> str:
    """``raw`` in the encoding its user gave; a byte it cannot read is refused by its line, not replaced."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{name} is not valid {encoding} on line {line:,} (byte {raw[exc.start]:#04x}): check "
                        "--encoding (encoding=), or leave it out to have the encoding guessed.") from exc
    notes.append(f"{name} was read as {encoding}, as given.")
    return text.removeprefix("\ufeff")


_LEGACY = (("cp1252", "Windows-1252 (cp1252)"), ("latin-1", "Latin-1"))
"""The fallback for a line the guessed encoding cannot read, in order; latin-1 decodes any byte (to C1 controls
where cp1252 defines none, which the note then reports)."""
ENCODING_GUESSED = "The encoding is a guess"
"""Begins the part of a decoding note that says the guess may be wrong; ``data_report`` lists such notes as serious
problems."""


@dataclass(frozen=True)
class _Legacy:
    """A legacy encoding a file that is not UTF-8 may be in: Excel's default in some Windows locale."""

    codec: str
    words: str
    """How notes name it: the language and the encoding."""
    check: str
    """What the note asks the user to check: 'their accented characters'."""
    scripts: frozenset[str]
    """The scripts its languages write, as a character's Unicode name begins ('CYRILLIC', 'CJK', 'HIRAGANA')."""
    common: str
    """The commonest non-ASCII letters of those languages, lower case (for the non-Latin scripts, the top of
    wordfreq's word lists), and the punctuation they write."""
    other: float
    """The score of any other letter of those scripts."""
    first_level: tuple[int, int] = (0, 0)
    """Lead bytes of a CJK encoding's first level: its frequent characters (GB2312's level 1, Big5's frequent
    characters, JIS level 1 kanji, KS X 1001 Hangul) score above its rare ones."""
    prior: float = 0.0
    """Added to the score: cp1252 is the commonest legacy encoding, and a Western file must not lose to another
    Latin code page on a tie."""
    languages: tuple[str, ...] = ()
    """wordfreq's codes of the languages it is written in, whose word lists ``_by_known_words`` looks the accented
    words of its reading up in (the Latin code pages', where a wrong one still reads as plausible letters)."""


_KANA = "".join(map(chr, [*range(0x3041, 0x3097), *range(0x30A1, 0x30FB)])) + "ー々。、「」"
_CJK_PUNCTUATION = "，。、：；？！（）“”《》「」"
_LATIN = frozenset({"LATIN"})
_HAN = frozenset({"CJK", "IDEOGRAPHIC"})  # the latter: '々', the iteration mark
_CANDIDATES = (
    _Legacy("cp1252", _LEGACY[0][1], "their accented characters", _LATIN,
            "éàèêçôâîùûœïëüáöíñóäãúøæåßõìò£¥€°©®™§", 0.25, prior=0.15,  # signs English text writes: '£20', '20°C'
            languages=("en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "nb", "fi", "is", "ca")),
    _Legacy("cp1250", "Central European (Windows-1250)", "their accented characters", _LATIN,
            "łężąóśćńźíáěžřéčšýůúňďťüöäľôőűŕĺ", 0.25, languages=("cs", "pl", "hu", "sk", "sl", "sh", "ro")),
    _Legacy("cp1254", "Turkish (Windows-1254)", "their accented characters", _LATIN, "ıüşçğöâîû", 0.25,
            languages=("tr",)),
    _Legacy("cp1251", "Cyrillic (Windows-1251)", "their Cyrillic letters", frozenset({"CYRILLIC"}), "оеаинтсрвлкм",
            0.5),
    _Legacy("cp1253", "Greek (Windows-1253)", "their Greek letters", frozenset({"GREEK"}), "ατοσιενρπκμηυλίάόέ", 0.5),
    _Legacy("cp1256", "Arabic (Windows-1256)", "their Arabic letters", frozenset({"ARABIC"}), "اليمنورتعبدةهف", 0.5),
    _Legacy("gb18030", "Chinese (GBK/GB18030)", "their Chinese characters", _HAN,
            "的是一在不人有了我国这为中个大会们他来和年上以要到时对么能你就发可地生家出也说" + _CJK_PUNCTUATION, 0.5,
            (0xB0, 0xD7)),
    _Legacy("big5", "Traditional Chinese (Big5)", "their Chinese characters", _HAN,
            "的是一在不人有了我國這為中個大會們他來和年上以要到時對麼能你就發可地生家出也說" + _CJK_PUNCTUATION, 0.5,
            (0xA4, 0xC6)),
    _Legacy("cp932", "Japanese (Shift-JIS)", "their Japanese text",
            _HAN | {"HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA"},  # the last: 'ー', the long vowel mark
            _KANA + "人日大" + _CJK_PUNCTUATION, 0.5, (0x88, 0x98)),
    _Legacy("cp949", "Korean (EUC-KR/CP949)", "their Korean text", frozenset({"HANGUL"}),
            "이다는에하고가을지의로서은아한어도기사니있를나해리시그요인들자일게대라으스수만보제", 0.4, (0xB0, 0xC8)),
)
"""The legacy encodings tried, in the order that breaks a tie."""
_CLOSE = 0.1
"""Readings whose scores differ by less are too close to call."""
_PLAUSIBLE = 0.45
"""A best reading that scores less reads badly: the guess is reported as uncertain."""
_SAMPLE_CHARS = 1 << 15
"""The bad lines scored: enough for a stable guess, few enough to score each encoding fast."""
_PUNCTUATION = "’‘“”„–—…€«»°·•§©®™£¥¢¡¿±×÷²³½¼¾\u00a0"
_INSIDE_WORDS = "’·–—"
"""Punctuation that may stand between two letters ('don’t', Catalan 'l·l', 'word—word'); other symbols do not."""


@dataclass(frozen=True)
class _Guess:
    """The encoding chosen for a file's lines that are not UTF-8, and why it may be wrong."""

    encoding: _Legacy | None
    """None where ``by_byte``."""
    doubt: str = ""
    """Why the guess may be wrong ('' where it is clear)."""
    by_byte: bool = False
    """The file is UTF-8 with stray legacy bytes (``_stray_bytes``): each was read as cp1252, not its line whole."""


def _decode_by_line(raw: bytes) -> tuple[str, list[tuple[int, str]], _Guess]:
    """Decode ``raw`` as UTF-8 except the lines holding an invalid byte, read in the guessed legacy encoding.

    One stray byte must not turn every correct accented character of the file into mojibake. Returns the text,
    (line number, encoding) of each line not read wholly as UTF-8, and the guess (``by_byte`` where only those
    lines' invalid bytes were read, as cp1252: ``_stray_bytes``). Lines end at \\n, a char boundary in
    every encoding tried, whose multi-byte characters hold no byte below 0x30 (a file with bare \\r line ends is then
    one line)."""
    text = raw.decode("utf-8", "surrogateescape")  # never fails: each invalid byte becomes one U+DC80..U+DCFF
    guess = _Guess(None, by_byte=True) if _stray_bytes(raw, text) else _guess_legacy(_bad_lines_sample(text))
    decode = (_decode_stray_bytes if guess.by_byte
              else partial(_decode_legacy, order=_fallback_order(guess.encoding)))
    parts: list[str] = []
    legacy: list[tuple[int, str]] = []
    pos, line = 0, 1
    while pos < len(text):  # blocks of whole lines: only those holding an invalid byte are split into lines
        end = text.find("\n", pos + _DECODE_BLOCK) + 1 or len(text)
        block = text[pos:end]
        if _ESCAPED.search(block):
            line = _decode_lines(block, line, parts, legacy, decode)
        else:
            parts.append(block)
            line += block.count("\n")
        pos = end
    return "".join(parts), legacy, guess


def _fallback_order(encoding: _Legacy | None) -> tuple[tuple[str, str], ...]:
    """The encodings a bad line is read in, in order: the guessed one, then cp1252, then latin-1."""
    first = () if encoding is None or encoding.codec == _LEGACY[0][0] else ((encoding.codec, encoding.words),)
    return (*first, *_LEGACY)


def _bad_lines_sample(text: str) -> bytes:
    """The file's bytes of its first lines holding an invalid byte, up to ``_SAMPLE_CHARS``: what the guess reads.
    Its lines that are valid UTF-8 (ASCII, mostly) would only dilute the score."""
    lines: list[str] = []
    size, found = 0, _ESCAPED.search(text)
    while found and size < _SAMPLE_CHARS:
        start, end = text.rfind("\n", 0, found.start()) + 1, text.find("\n", found.end())
        end = len(text) if end < 0 else end
        lines.append(text[start:end])
        size += end - start
        found = _ESCAPED.search(text, end)
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def _guess_legacy(sample: bytes) -> _Guess:
    """The encoding of ``sample`` (bytes that are not UTF-8): the one whose reading scores best (``_plausibility``);
    in doubt where another reads it differently and scores close, or none reads it well. A byte an encoding leaves
    undefined costs its reading a point, no more: one 0x81 must not hand a cp1252 file to cp1251."""
    readings = [(_plausibility(text, encoding) + encoding.prior, text, encoding)
                for encoding in _CANDIDATES for text in [sample.decode(encoding.codec, "replace")]]
    readings.sort(key=lambda reading: -reading[0])  # stable: _CANDIDATES' order breaks a tie
    known = _by_known_words([(text, encoding) for score, text, encoding in readings if score >= _PLAUSIBLE])
    if known is not None:
        return _Guess(known)
    best, text, encoding = readings[0]
    rival = next((other for score, reading, other in readings[1:] if reading != text and best - score < _CLOSE), None)
    if rival:
        return _Guess(encoding, f"those lines read almost as well as {rival.words}, differently.")
    if best < _PLAUSIBLE:
        return _Guess(encoding, "no encoding tried reads those lines well.")
    return _Guess(encoding)


_KNOWN_ENOUGH = 0.5
"""The share of a reading's accented words its languages' word lists must know for the words to decide."""
_KNOWN_MARGIN = 0.3
"""...and by how much more than any other reading's share."""
_KNOWN_MIN_WORDS = 3
"""Fewer accented words than this decide nothing: one name in a list is luck."""
_KNOWN_MAX_WORDS = 300
"""The distinct accented words looked up, at most: enough to decide, few enough to decide in a fraction of a second."""


def _by_known_words(readings: list[tuple[str, _Legacy]]) -> _Legacy | None:
    """Of the plausible readings, the one whose accented words its languages' word lists know, where one clearly
    does; None where none does (or wordfreq is not installed). A Latin code page read as another still gives plausible letters:
    Czech 'čekám' as cp1252 'èekám', Hungarian 'pénzemet' right but 'érkezik' with 'õ' for 'ő' read as cp1252 with no
    doubt, Spanish '¿Dónde está' as cp1250 'żDónde está' (the language review's Czech; 6 sentences each, tried here)."""
    shares: list[tuple[float, str, _Legacy]] = []
    for text, encoding in readings:
        share = _known_share(text, encoding.languages) if encoding.languages else None
        if share is not None:
            shares.append((share, text, encoding))
    if not shares:
        return None
    top, text, encoding = max(shares, key=lambda found: found[0])  # the first of a tie: the more plausible
    if top < _KNOWN_ENOUGH or any(other != text and top - share < _KNOWN_MARGIN for share, other, _ in shares):
        return None
    return encoding


def _known_share(text: str, languages: tuple[str, ...]) -> float | None:
    """The share of ``text``'s distinct words holding a non-ASCII letter that wordfreq's small list of one of
    ``languages`` knows; None for too few such words or without wordfreq."""
    try:
        from wordfreq import zipf_frequency
    except ImportError:
        return None
    words = list(dict.fromkeys(w.lower() for w in _WORDS.findall(text) if not w.isascii()))[:_KNOWN_MAX_WORDS]
    if len(words) < _KNOWN_MIN_WORDS:
        return None
    known = sum(any(_zipf(zipf_frequency, word, lang) > 0 for lang in languages) for word in words)
    return known / len(words)


def _zipf(zipf_frequency: Callable[..., float], word: str, lang: str) -> float:
    try:
        return zipf_frequency(word, lang, wordlist="small")
    except LookupError:  # a wordfreq without that language's list
        return 0.0


_WORDS = re.compile(r"[^\W\d_]+")
_TOKENS = re.compile(r"[^\W\d_]+|[^\x00-\x7f]")
"""A word (a run of letters) or one non-ASCII character outside words."""
_LONG_NON_ASCII = re.compile(r"[^\x00-\x7f]{3,}")


def _plausibility(text: str, encoding: _Legacy) -> float:
    """How well ``text`` reads as a language ``encoding`` is for: the mean score of its non-ASCII characters, 1 for
    a common letter down to 0 for a letter in an unlikely place and below 0 for a control character. A wrong code
    page still decodes most bytes, but to letters of another script, to runs of accented capitals ('²úÆ·ÖÊÁ¿' for
    GBK's '产品质量'), to a Cyrillic letter inside a Latin word ('cafй'), or to rare characters."""
    scores: list[float] = []
    for match in _TOKENS.finditer(text):
        token, start, end = match.group(), match.start(), match.end()
        if token.isascii():
            continue
        if (len(token) == 1 and _script(token) == "LATIN" and token.isalpha()
                and (text[start - 1:start].isdigit() or text[end:end + 1].isdigit())):
            scores.append(0.0)  # a lone Latin letter stuck to a number is a sign read wrong: cp1250's 'Ł20' for '£20'
        elif token.isalpha() or len(token) > 1:
            scores.extend(_token_scores(token, encoding))
        elif (text[start - 1:start].isalpha() and text[end:end + 1].isalpha() and token not in _INSIDE_WORDS
              and "CJK" not in encoding.scripts):  # 'ÍË¿î', GBK's '退款' read as cp1252; Chinese has no spaces
            scores.append(min(0.0, _symbol_score(token, encoding)))
        else:
            scores.append(_symbol_score(token, encoding))
    return sum(scores) / len(scores) if scores else 0.0


def _token_scores(token: str, encoding: _Legacy) -> list[float]:
    """The scores of the non-ASCII characters of a word read as ``encoding``: 0 for a letter where real text does
    not put one."""
    cjk, latin = "CJK" in encoding.scripts, encoding.scripts == _LATIN
    scripts = {_script(ch) for ch in token}
    one_script = (scripts <= encoding.scripts | _LATIN if cjk  # CJK text runs into ASCII words: 'iPhone的'
                  else len(scripts) == 1 and scripts <= encoding.scripts)  # 'cafй': cp1251 read a French word
    # Latin words are mostly ASCII: three accented letters in a row ('ÖÊÁ') or none ASCII ('ÍË') are mojibake.
    unlikely = [m.span() for m in _LONG_NON_ASCII.finditer(token)] if latin else []
    if latin and len(token) > 1 and not any(ch.isascii() for ch in token):
        unlikely.append((0, len(token)))
    scores = []
    for i, ch in enumerate(token):
        if ch.isascii():
            continue
        if not ch.isalpha():  # a number that is no digit: 'm²' ends a word, '³¹ka' (Polish 'łąka' in cp1252) does not
            score = _symbol_score(ch, encoding)
            scores.append(score if i == len(token) - 1 else min(0.0, score))
            continue
        odd = (not one_script
               or (ch.isupper() and i > 0 and token[i - 1].islower())  # a capital inside a word
               or any(start <= i < end for start, end in unlikely)
               or cjk and len(token) > 1 and token[i - 1:i].isascii()
               and token[i + 1:i + 2].isascii())  # one CJK character stuck to ASCII letters: 'don' + cp932's '\x92t'
        scores.append(0.0 if odd else _letter_score(ch, encoding, i == 0))
    return scores


def _letter_score(ch: str, encoding: _Legacy, first: bool) -> float:
    """``first``: the letter begins its word. A capital inside one scores as a rare letter at best: real text is
    mostly lower case, while a wrong code page reads many bytes as capitals (Arabic's as Greek's)."""
    if ch.lower() in encoding.common and (first or not ch.isupper()):
        return 1.0
    if _script(ch) not in encoding.scripts:
        return 0.0
    low, high = encoding.first_level
    if high and low <= ch.encode(encoding.codec, "replace")[0] <= high:
        return 0.6
    return encoding.other


def _symbol_score(ch: str, encoding: _Legacy) -> float:
    """A non-ASCII character that is no letter: ordinary punctuation, a rare symbol ('¹', '³': Polish read as
    cp1252), or a control, unassigned or replacement character, which real text does not hold."""
    if unicodedata.category(ch) in ("Cc", "Co", "Cn", "Cs"):
        return -1.0
    if ch == "\ufffd":  # a byte the encoding leaves undefined: a stray one must not outweigh the rest
        return -0.5
    if ch in encoding.common:
        return 1.0
    if ch in _PUNCTUATION or unicodedata.name(ch, "").startswith("FULLWIDTH"):
        return 0.5
    return 0.0


def _script(ch: str) -> str:
    """The script of a letter as its Unicode name begins: 'LATIN', 'CYRILLIC', 'CJK', 'HANGUL', 'HIRAGANA'."""
    return "LATIN" if ch.isascii() else unicodedata.name(ch, "?").split(" ", 1)[0]


_DECODE_BLOCK = 1 << 16
_ESCAPED = re.compile("[\udc80-\udcff]")
"""What an invalid byte becomes under errors="surrogateescape"; valid UTF-8 never decodes to it."""


def _stray_bytes(raw: bytes, text: str) -> bool:
    """Whether ``raw`` (decoded with surrogateescape as ``text``) is UTF-8 with stray legacy bytes, not a legacy file:
    it holds at least as many valid multi-byte UTF-8 characters as invalid bytes. Then a bad line's invalid bytes
    alone are read as cp1252 (the data review: 'café costs 5\\x80' read 'cafÃ© costs 5€'). A file written in cp1252
    holds few byte pairs that happen to be valid UTF-8 ('É’'), so its bad lines are still read whole, as before."""
    multibyte = len(raw) - len(text)  # at least one per multi-byte character; an invalid byte is one character
    if not multibyte:
        return False
    invalid = sum(1 for _ in islice(_ESCAPED.finditer(text), multibyte + 1))  # counted only as far as needed
    return invalid <= multibyte


def _decode_lines(block: str, line: int, parts: list[str], legacy: list[tuple[int, str]],
                  decode: Callable[[list[str]], list[tuple[str, str]]]) -> int:
    """Decode the invalid bytes of ``block`` (first line number ``line``, decoded with surrogateescape) into
    ``parts``: ``decode`` reads the lines holding one (whole, or their invalid bytes only); returns the next line
    number. Each is one call for every bad line of the block: a file written in cp1252 can have a bad byte on every
    line."""
    texts = block.split("\n")
    bad = [i for i, text in enumerate(texts) if _ESCAPED.search(text)]
    for i, (text, label) in zip(bad, decode([texts[i] for i in bad]), strict=True):
        texts[i] = text
        legacy.append((line + i, label))
    parts.append("\n".join(texts))
    return line + len(texts) - 1


def _decode_legacy(escaped_lines: list[str], order: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """(text, encoding) of each line read whole, in the first encoding of ``order`` that reads it; all in one call
    where the first reads them all, as it mostly does."""
    raw_lines = [text.encode("utf-8", "surrogateescape") for text in escaped_lines]  # the file's bytes, exactly
    try:
        return [(text, order[0][1]) for text in b"\n".join(raw_lines).decode(order[0][0]).split("\n")]
    except UnicodeDecodeError:
        return [_decode_legacy_line(raw_line, order) for raw_line in raw_lines]


def _decode_legacy_line(raw_line: bytes, order: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    for encoding, label in order:
        try:
            return raw_line.decode(encoding), label
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte string")  # pragma: no cover


def _legacy_char(byte: int) -> str:
    try:
        return bytes([byte]).decode(_LEGACY[0][0])
    except UnicodeDecodeError:  # the 5 bytes cp1252 leaves undefined
        return bytes([byte]).decode(_LEGACY[1][0])


_STRAY_CHARS = {0xDC00 + byte: _legacy_char(byte) for byte in range(0x80, 0x100)}
"""An escaped invalid byte -> its cp1252 character (latin-1 where cp1252 defines none)."""
_NOT_CP1252 = re.compile("[\udc81\udc8d\udc8f\udc90\udc9d]")
"""The escaped bytes cp1252 leaves undefined: a line holding one was read as latin-1."""


def _decode_stray_bytes(escaped_lines: list[str]) -> list[tuple[str, str]]:
    """(text, encoding) of each line, its valid UTF-8 kept and each invalid byte read as cp1252 (else latin-1); one
    translation for all the lines."""
    texts = "\n".join(escaped_lines).translate(_STRAY_CHARS).split("\n")
    return [(text, _LEGACY[1][1] if _NOT_CP1252.search(escaped) else _LEGACY[0][1])
            for text, escaped in zip(texts, escaped_lines, strict=True)]


def _legacy_note(name: str, text: str, legacy: list[tuple[int, str]], guess: _Guess) -> str:
    found = Counter(label for _, label in legacy).most_common()
    used = " or ".join(label for label, _ in found)
    read = ("their bytes that are not UTF-8 were read as" if guess.by_byte else "those lines were read as")
    check = next((encoding.check for encoding in _CANDIDATES if encoding.words == found[0][0]),
                 "their accented characters")
    note = (f"{name} is not valid UTF-8 on {len(legacy):,} line(s) ({_some_lines([n for n, _ in legacy])}); "
            f"{read} {used}, the rest as UTF-8. Check {check}, or save the file as UTF-8.")
    doubt = _doubt(text, legacy, guess)
    return (note if not doubt else f"{note} {ENCODING_GUESSED}: {doubt} Check the texts and labels, or make it "
            "certain: save the file as UTF-8 (in Excel: Save As, 'CSV UTF-8').")


def _some_lines(numbers: list[int]) -> str:
    more = f" and {len(numbers) - 5:,} more" if len(numbers) > 5 else ""
    return ("line " if len(numbers) == 1 else "lines ") + ", ".join(map(str, numbers[:5])) + more


def _doubt(text: str, legacy: list[tuple[int, str]], guess: _Guess) -> str:
    """Why the lines may be read wrong: the guess's doubt, lines its encoding could not read, and lines holding
    invisible C1 control characters (Latin-1's reading of a byte cp1252 leaves undefined, or cp932's of 0x80)."""
    doubts = [guess.doubt] if guess.doubt else []
    if guess.encoding and guess.encoding.codec != _LEGACY[0][0]:
        other = [number for number, label in legacy if label != guess.encoding.words]
        if other:
            doubts.append(f"{len(other):,} line(s) are not valid {guess.encoding.words} ({_some_lines(other)}) and "
                          "were read as Windows-1252 or Latin-1.")
    control = _control_lines(text, {number for number, _ in legacy})
    if control:
        doubts.append(f"{len(control):,} line(s) ({_some_lines(control)}) now hold invisible control characters "
                      "(U+0080 to U+009F): bytes that no encoding tried reads as text.")
    return " ".join(doubts)


def _control_lines(text: str, lines: set[int]) -> list[int]:
    """The numbers of ``lines`` (of ``text``) that hold a C1 control character, U+0080 to U+009F."""
    found: list[int] = []
    line, pos = 1, 0
    for match in _C1.finditer(text):
        line, pos = line + text.count("\n", pos, match.start()), match.start()
        if line in lines and (not found or found[-1] != line):
            found.append(line)
    return found


_C1 = re.compile("[\x80-\x9f]")
_TEXT_CONTROLS = "\t\n\r\x0b\x0c\x1b"
"""Control characters real text holds: tab, line breaks, vertical tab (Word's Shift+Enter), form feed (a PDF's page
break) and escape (terminal colours); the data review had valid files with one per row refused as binary."""


def _check_text(name: str, text: str, labelled: bool = True) -> str:
    # The other control characters are rare in real text and common in binary files.
    sample = text[:100_000]
    control = collections.Counter(ch for ch in sample if ord(ch) < 32 and ch not in _TEXT_CONTROLS)
    if control.total() > max(3, len(sample) // 100):
        char = control.most_common(1)[0][0]
        line = sample.count("\n", 0, sample.index(char)) + 1
        _binary_error(name, b"", f"it holds {control.total()} control characters (the commonest U+{ord(char):04X}, "
                      f"first on line {line})", labelled)
    return text


def _nul_error(name: str, raw: bytes, nul: int, labelled: bool = True) -> None:
    """Refuse ``raw``, which holds a NUL byte at ``nul``: as binary where NULs are common, else naming the line of a
    stray one, which a text file can carry (the data review: one in banking77's 10,003 rows refused it whole)."""
    count = raw.count(b"\x00")
    if count * 1000 < len(raw) and not _wide_text(raw[:4096]):
        line = raw.count(b"\n", 0, nul) + 1
        raise DataError(f"{name} holds {count} NUL character(s) (byte 0; the first on line {line}): remove them and "
                        "load the file again.")
    _binary_error(name, raw, f"it contains NUL bytes (first at byte {nul})", labelled)


def _binary_error(name: str, head: bytes, why: str, labelled: bool = True) -> None:
    kind = ("a ZIP archive or an Excel/ODS spreadsheet" if head.startswith(b"PK")
            else "text in UTF-16 or UTF-32 without a byte-order mark" if _wide_text(head[:4096])
            else "a binary file")
    advice = ("Export the data as CSV (UTF-8) or JSONL with one text and one label per row." if labelled
              else "Save the texts to predict as a .txt file (UTF-8, one text per line) or a CSV (UTF-8) with a text "
              "column.")  # predict needs no labels (the data review)
    raise DataError(f"{name} does not look like text: {why}; it looks like {kind}. {advice}")


def _wide_text(head: bytes) -> bool:
    """Whether ``head`` reads as ASCII text stored 2 or 4 bytes a character: NUL at every other (or 3 of 4) byte,
    printable bytes between."""
    if len(head) < 8:
        return False
    nul_share = head.count(0) / len(head)
    return 0.45 < nul_share < 0.8 and all(32 <= b < 127 or b in (9, 10, 13) for b in head if b)


def _parse_delimited(name: str, text: str, delimiter: str, max_rows: int, wanted: _Wanted) -> _Table:
    """A CSV or TSV table. A TSV whose quotes cannot be read as quoting (a text that starts with a quote it never
    closes) is read again with quotes as plain characters, as the TSV format has them, and a note says so."""
    try:
        return _parse_rows(name, text, delimiter, max_rows, wanted, csv.QUOTE_MINIMAL)
    except _QuoteError as exc:
        if delimiter != "\t":
            raise DataError(str(exc)) from None
        table = _parse_rows(name, text, delimiter, max_rows, wanted, csv.QUOTE_NONE)
        table.notes.append(f"{name}: its quotes were read as plain characters of the texts (read as quoting, {exc.where} "
                           "could not be parsed); a TSV file quotes nothing.")
        return table


class _QuoteError(DataError):
    """A delimited file's quotes that cannot be read as quoting; ``where`` names the row."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


def _parse_rows(name: str, text: str, delimiter: str, max_rows: int, wanted: _Wanted, quoting: int) -> _Table:
    rows: list[list[str]] = []
    positions: list[int] = []
    header: list[str] | None = None
    kept: list[int] = []
    blank: list[int] = []
    for line, row in _delimited_rows(name, text, delimiter, blank, quoting):
        if header is None:
            header = _header(name, row)
            kept = [i for i, column in enumerate(header) if wanted.keeps(column)]
        elif len(row) != len(header):
            raise DataError(f"{name}, line {line}: expected {len(header)} fields like the header "
                            f"({', '.join(header)}) but found {len(row)}. Quote texts that contain "
                            f"{'tabs' if delimiter == chr(9) else 'commas'} (\"...\"), or fix the row.")
        elif len(rows) == max_rows:
            raise _row_cap_error(name, max_rows, line)
        else:
            rows.append([row[i] for i in kept])
            positions.append(line)
    if header is None:  # not blank (checked before), yet every row is empty cells: ",,,"
        raise DataError(f"{name} holds no header row, only empty fields. Put a header (e.g. text,label) and rows in it.")
    frame = pd.DataFrame(rows, columns=[header[i] for i in kept], dtype=str)
    notes = [f"{name}: {len(blank)} row(s) with only empty fields were skipped (line(s) {_listed_lines(blank)})."
             ] if blank else []
    # A TSV is seldom quoted: a text that starts with a quote reads on to the next closing one, rows and all.
    spanning = [line for line, row in zip(positions, rows, strict=True)  # a tab inside too: rows swallowed, not a
                if delimiter == "\t" and any("\n" in cell and "\t" in cell for cell in row)]  # text of several lines
    if spanning:
        notes.append(f"{name}: {len(spanning)} text(s) span several lines (from line(s) {_listed_lines(spanning)}): "
                     "a quote opens a text that runs to the next quote. If those rows were meant apart, save the "
                     "file as CSV, or double the quotes inside texts (\"\").")
    return _Table(name, frame, positions, "line", header, notes=notes)


def _units(table: _Table, count: int | None = None) -> str:
    """The unit of ``table``'s positions for ``count`` of them ("lines"), or for a count not said ("line(s)"); a
    DataFrame's positions are its index labels, listed as AnnotatedData lists them ("index 3, 28")."""
    if table.unit == "index":
        return "index"
    if count is None:
        return f"{table.unit}(s)"
    return table.unit + ("s" if count > 1 else "")


def _listed_lines(lines: list[Any]) -> str:
    return ", ".join(map(str, lines[:_MAX_LISTED])) + (", ..." if len(lines) > _MAX_LISTED else "")


def _delimited_rows(name: str, text: str, delimiter: str, blank: list[int] | None = None,
                    quoting: int = csv.QUOTE_MINIMAL) -> Iterator[tuple[int, list[str]]]:
    """(first line, cells) of each non-blank row, parsed lazily so that a caller can stop early; the lines of rows
    whose fields are all empty or spaces go to ``blank`` (empty lines are skipped without a word). A row whose
    quotes cannot be parsed raises ``_QuoteError``."""
    csv.field_size_limit(_FIELD_LIMIT)  # process-wide; csv's own 128 KiB limit rejects long documents
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True, quoting=quoting,
                        skipinitialspace=_quotes_after_spaces(text, delimiter))
    start = 1
    try:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                yield start, row
            elif row and blank is not None:
                blank.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):  # a cell of over 10 million characters, or a quote left open
            raise _QuoteError(f"{name}, row starting at line {start}: a field runs past {_FIELD_LIMIT:,} characters, "
                              "the most a cell may hold. Either a text is that long (cut it or leave it out: a run "
                              "reads its first few hundred sub-tokens anyway), or a quote is left open and the rest of "
                              "the file reads as one cell (double quotes inside a quoted text are written as \"\").",
                              f"the row starting at line {start}") from exc
        raise _QuoteError(f"{name}, row starting at line {start}: cannot be parsed ({exc}). Usually a stray or "
                          "unclosed quote; double quotes inside a quoted text must be written as \"\".",
                          f"the row starting at line {start}") from exc


def _quotes_after_spaces(text: str, delimiter: str) -> bool:
    """Whether the header quotes its names after a delimiter and spaces (``"text", "label"``, as people write CSV
    by hand): then every field's leading spaces are skipped, or a quote after them would be read as text and
    stay in the name and the labels. Only then: in other files a text may well start with spaces and a quote."""
    match = _HEADER_LINE.match(text)
    return bool(match) and re.search(re.escape(delimiter) + r' +"', match.group(1)) is not None


def _header(name: str, row: list[str]) -> list[str]:
    """The column names of a header row as the loader uses them: stripped, each distinct."""
    header = [c.strip() for c in row]
    _check_header(name, header)
    return header


def _check_header(name: str, header: list[str], any_case: bool = True) -> None:
    """Refuse a name given twice (``any_case``: in any case, as a CSV header always was; Parquet files and
    DataFrames only exact repeats, which would make a column ambiguous)."""
    fold = str.lower if any_case else str
    counts = Counter(map(fold, header))  # not list.count per column: quadratic in a 40,000-column header
    # Unnamed columns may repeat ("text,label,," from a spreadsheet): no name can pick them.
    dupes = sorted({c for c in header if c and counts[fold(c)] > 1})[:_MAX_LISTED]
    if dupes:
        raise DataError(f"{name}: the header names column(s) {', '.join(map(repr, dupes))} more than once. "
                        "Give every column a distinct name.")


def _parse_jsonl(name: str, text: str, max_rows: int, wanted: _Wanted) -> _Table:
    _check_json_values(name, text)
    return _records_table(name, _jsonl_records(name, text), max_rows, wanted, "line")


def _jsonl_records(name: str, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each non-blank line, parsed lazily so that a caller can stop early."""
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except RecursionError as exc:
            raise DataError(f"{name}, line {number}: JSON nested too deeply to read. Each line must be one flat "
                            "object such as {\"text\": \"...\", \"label\": \"...\"}.") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}, line {number}: not valid JSON ({exc.msg} at column {exc.colno}). Each line "
                            "must be one JSON object such as {\"text\": \"...\", \"label\": \"...\"}.") from exc
        if not isinstance(record, dict):
            raise DataError(f"{name}, line {number}: expected a JSON object per line, found "
                            f"{type(record).__name__}. Write one {{\"text\": ..., \"label\": ...}} object per line.")
        yield number, record


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` one at a time (no list of millions of lines). Only \\r and \\n break a line:
    U+2028 and the like may stand unescaped inside a JSON string."""
    start = 0
    for brk in _LINE_BREAK.finditer(text):
        yield text[start:brk.start()]
        start = brk.end()
    if start < len(text):
        yield text[start:]


def _parse_json(name: str, text: str, max_rows: int, wanted: _Wanted) -> _Table:
    records = _json_records(name, text)
    _check_rows(name, len(records), max_rows)  # before the table, which costs far more than the parsed list
    return _records_table(name, enumerate(records, start=1), max_rows, wanted, "record")


_JSON_STRING = re.compile(r'"(?:[^"\\]+|\\[\s\S]?)*(?:"|\Z)')
"""A JSON string. It also ends at the end of the text (an unclosed string, or a lone backslash): a match that can
fail would make every later quote a new start, a scan to the end each, quadratic in a hostile file."""
_MAX_JSON_VALUES = 6_000_000
"""Values (about: objects, lists and the items separated by commas) a JSON or JSONL file may hold. Parsed, each
is a Python object of 30-200 bytes, 15-25 times the file's bytes for small ones, before any row or unused field
can be dropped: 80 MB of ``[{},{},...]`` took 2 GB. 500,000 records of ten fields count 5.5 million."""


def _check_json_values(name: str, text: str) -> None:
    """Refuse a JSON text holding more values than ``_MAX_JSON_VALUES``, counted without parsing it."""
    values = _structure_count(text)
    if values > _MAX_JSON_VALUES:  # maybe commas inside texts: count again without the strings (1.6 s for 43 MB)
        values = _structure_count(_JSON_STRING.sub("", text))
    if values > _MAX_JSON_VALUES:
        raise DataError(f"{name} holds about {values:,} JSON values, above the {_MAX_JSON_VALUES:,} the loader reads "
                        "(each becomes an object in memory before any is dropped). Keep the text and the label in "
                        "each record and drop nested fields, or use a smaller sample.")


def _structure_count(text: str) -> int:
    return text.count(",") + text.count("[") + text.count("{")


def _json_records(name: str, text: str) -> list[dict[str, Any]]:
    """The records of a .json file holding a list of objects."""
    _check_json_values(name, text)
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise DataError(f"{name}: JSON nested too deeply to read. A .json file must hold a flat list of records "
                        "like [{\"text\": \"...\", \"label\": \"...\"}].") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{name}, line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}). "
                        "A .json file must hold a list of records; for one record per line use .jsonl.") from exc
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        stray = data if not isinstance(data, list) else next(r for r in data if not isinstance(r, dict))
        found = (f"a {type(data).__name__}" if not isinstance(data, list)
                 else f"a list holding a {type(stray).__name__} ({json.dumps(stray)[:40]}) where a record belongs")
        raise DataError(f"{name}: expected a JSON list of records like [{{\"text\": \"...\", \"label\": \"...\"}}], "
                        f"found {found}. Convert it to that shape (rows without column names cannot say which "
                        "value is the text), or to JSONL.")
    return data


_MAX_RECORD_KEYS = 100
"""Distinct keys over all records of a JSON/JSONL file: every key becomes a column for every row."""


def _records_table(name: str, records: Iterable[tuple[int, dict[str, Any]]], max_rows: int, wanted: _Wanted,
                   unit: str) -> _Table:
    """The table of numbered records, each keeping only the keys that may be picked; stops at the row cap."""
    keys: dict[str, None] = {}
    kept: list[dict[str, Any]] = []
    positions: list[int] = []
    for position, record in records:
        if len(kept) == max_rows:
            raise _row_cap_error(name, max_rows, position, unit)
        _add_keys(name, keys, record)
        kept.append({k: v for k, v in record.items() if wanted.keeps(k)})
        positions.append(position)
    if not kept:
        raise DataError(f"{name} holds no records. Add rows with a text and a label.")
    frame = pd.DataFrame.from_records(kept, columns=[k for k in keys if wanted.keeps(k)])
    return _Table(name, frame, positions, unit, list(keys))


def _record_keys(name: str, records: Iterable[dict[str, Any]]) -> list[str]:
    """The keys of ``records`` in order of first appearance: the columns of the loader's table."""
    keys: dict[str, None] = {}
    for record in records:
        _add_keys(name, keys, record)
    return list(keys)


def _add_keys(name: str, keys: dict[str, None], record: dict[str, Any]) -> None:
    keys.update(dict.fromkeys(record))  # JSON object keys are always strings
    if len(keys) > _MAX_RECORD_KEYS:
        raise DataError(f"{name}: its records hold more than {_MAX_RECORD_KEYS} different keys. Keep the text and "
                        "label keys (and a few more) in every record.")


def _parse_parquet(name: str, raw: bytes, cfg: DataConfig, wanted: _Wanted) -> _Table:
    import pyarrow.parquet as pq

    if not raw.startswith(b"PAR1"):
        raise DataError(f"{name} is not a Parquet file (no PAR1 signature). Check the extension matches the format.")
    try:
        file = pq.ParquetFile(io.BytesIO(raw))
        columns = _parquet_columns(name, file.schema_arrow)
        unread = _nested(file.schema_arrow, [c for c in columns if wanted.keeps(c)])
        kept = [c for c in columns if wanted.keeps(c) and c not in unread]  # only these are decoded
        # All checked before the rows are decoded: a few KB of compressed Parquet can hold gigabytes.
        _check_rows(name, file.metadata.num_rows, cfg.max_rows)
        _check_size(f"{name} (uncompressed)", _uncompressed_bytes(file.metadata, kept), cfg)
        _check_decoded(name, raw, file, cfg, kept)
        rows = file.metadata.num_rows
        frame = file.read(columns=kept).to_pandas().reset_index(drop=True) if kept else pd.DataFrame(index=range(rows))
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{name} could not be read as Parquet ({exc}). Re-export the file.") from exc
    return _Table(name, frame, list(range(1, rows + 1)), "row", columns, unread)


def _nested(schema: Any, columns: list[str]) -> dict[str, str]:
    """Column -> its type, for the ``columns`` that hold lists, maps or records. They are never decoded (a list of a
    hundred million nulls takes no bytes in Parquet and gigabytes once converted); picking one is refused."""
    import pyarrow as pa

    out = {}
    for column in columns:
        kind = schema.field(column).type
        inner = kind.value_type if pa.types.is_dictionary(kind) else kind
        if pa.types.is_nested(inner):
            out[column] = str(inner)
    return out


def _require_flat(table: _Table, column: str, role: str) -> None:
    if column in table.unread:
        raise DataError(f"{table.name}: the {role} column {column!r} holds {table.unread[column]} values, not one {role} "
                        "per row. Only one plain text and one label per row are supported (multi-label data is not); "
                        f"pick another column with --{role}-col.")


def _uncompressed_bytes(metadata: Any, columns: list[str]) -> int:
    """The ``columns``' pages' size once decompressed, from the file's footer (nothing is decoded). It bounds what
    plain and delta-length encoded columns decode to, though not dictionary-encoded ones (see ``_check_decoded``).
    The columns are flat, so each chunk's path is its column's name."""
    wanted = set(columns)
    return sum(chunk.total_uncompressed_size for g in range(metadata.num_row_groups)
               for chunk in map(metadata.row_group(g).column, range(metadata.num_columns))
               if chunk.path_in_schema in wanted)


_PARQUET_BATCH_ROWS = 1024
"""Rows decoded at a time by ``_check_decoded``: at most one such batch is decoded past the size cap."""


def _check_decoded(name: str, raw: bytes, file: Any, cfg: DataConfig, columns: list[str]) -> None:
    """Refuse a Parquet file whose ``columns`` take more than the size cap once decoded, decoding one batch of rows
    at a time and stopping as soon as the cap is passed. Text columns are read dictionary-encoded: a value that
    a dictionary repeats on many rows is held once and sized per row through the indices."""
    import pyarrow.parquet as pq

    if not columns:
        return
    texts = [f.name for f in file.schema_arrow if _is_text_type(f.type) and f.name in columns]
    delta = _delta_chunk_bytes(file.metadata)
    # pyarrow cannot read DELTA_BYTE_ARRAY text as a dictionary: those columns are decoded batch by batch.
    reader = pq.ParquetFile(io.BytesIO(raw), read_dictionary=[t for t in texts if t not in delta])
    total = 0
    for batch in reader.iter_batches(batch_size=_batch_rows(delta, cfg), columns=columns):
        total += sum(_decoded_bytes(column) for column in batch.columns)
        _check_size(f"{name} (decoded)", total, cfg, at_least=True)


def _batch_rows(delta: dict[str, int], cfg: DataConfig) -> int:
    """Rows per batch for ``_check_decoded``. DELTA_BYTE_ARRAY stores a prefix shared with the previous value
    once, so a value can be as long as its whole column chunk: batches get fewer rows, to hold about a quarter
    of the cap; not under 8 rows, as one-row batches take ~45 us each (20 s for 500,000 rows)."""
    if not delta:
        return _PARQUET_BATCH_ROWS
    return max(8, min(_PARQUET_BATCH_ROWS, int(cfg.max_file_mb * 2**20 / 4 // max(delta.values()))))


def _delta_chunk_bytes(metadata: Any) -> dict[str, int]:
    """Column -> its largest uncompressed column chunk, for the columns with DELTA_BYTE_ARRAY pages."""
    out: dict[str, int] = {}
    for g in range(metadata.num_row_groups):
        for c in range(metadata.num_columns):
            chunk = metadata.row_group(g).column(c)
            if "DELTA_BYTE_ARRAY" in chunk.encodings:  # a top-level column's path is its name
                out[chunk.path_in_schema] = max(out.get(chunk.path_in_schema, 0), chunk.total_uncompressed_size)
    return out


def _decoded_bytes(array: Any) -> int:
    """Bytes an Arrow array takes decoded; a dictionary array is measured without decoding its text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_dictionary(array.type):
        return int(array.nbytes)
    values = array.dictionary
    if _is_text_type(values.type):
        return int(pc.sum(pc.take(pc.binary_length(values), array.indices)).as_py() or 0)
    return int(pc.take(values, array.indices).nbytes)  # numbers and the like: one batch is small


def _is_text_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
                or pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type))


def _check_rows(name: str, rows: int, max_rows: int) -> None:
    if rows > max_rows:
        raise TooManyRowsError(f"{name} has {rows:,} rows, above the {max_rows:,} row limit. Use a sample, or raise the "
                        f"limit on a machine with the memory for it {_python_only('max_rows')}.")


def _row_cap_error(name: str, max_rows: int, position: int, unit: str = "line") -> DataError:
    """The row cap passed while parsing: reading stopped there, so the full count is unknown."""
    return TooManyRowsError(f"{name} has more rows than the {max_rows:,} row limit (reading stopped at {unit} {position:,}). "
                     f"Use a sample, or raise the limit on a machine with the memory for it {_python_only('max_rows')}.")


def _python_only(option: str) -> str:
    """How to raise a limit that only the Python API sets: a message naming DataConfig.max_rows read as if the command
    line had an option for it (the data review)."""
    return f"(in the Python API: DataConfig({option}=...); the command line has no option for it)"


_HEADER_LINE = re.compile(r"[\ufeff\r\n]*([^\r\n]*)")


def _csv_delimiter(text: str) -> str:
    # Spreadsheets in many European locales export "CSV" with semicolons, and tab-separated files are often named
    # .csv: a header with one of them and no comma tells.
    match = _HEADER_LINE.match(text)
    header = re.sub(r'"[^"]*"', "", match.group(1)) if match else ""  # a quoted name's comma ("note, extra") tells not
    if "," in header:
        return ","
    return next((sep for sep in ("\t", ";") if sep in header), ",")


_EXCEL_SEP = re.compile(r"\ufeff?sep=([^\r\n])(\r\n|\n|\r)", re.IGNORECASE)
"""The first line Excel writes (and reads) to name a CSV file's delimiter, e.g. "sep=;"."""


def _csv_parts(text: str) -> tuple[str, str]:
    """(text, delimiter) of a CSV file. Excel's "sep=;" first line names the delimiter; it is left out (an empty line
    in its place keeps the line numbers), where it was read as the header (the data review: columns 'sep=', '')."""
    if match := _EXCEL_SEP.match(text):
        return match.group(2) + text[match.end():], match.group(1)
    return text, _csv_delimiter(text)


_PARSERS: dict[str, Callable[[str, str, int, _Wanted], _Table]] = {
    "csv": lambda name, text, max_rows, wanted: _parse_delimited(name, *_csv_parts(text), max_rows, wanted),
    "tsv": lambda name, text, max_rows, wanted: _parse_delimited(name, text, "\t", max_rows, wanted),
    "jsonl": _parse_jsonl,
    "json": _parse_json,
}


# ---------------------------------------------------------------------------------- column checks


def _select_columns(table: _Table, cfg: DataConfig, notes: list[str], part: str = "all") -> pd.DataFrame:
    """Pick the text and label columns and check every row has both; returns ``[text, label]`` as str, the labels
    without surrounding spaces (a note says when that made two spellings one label), plus ``split`` (train,
    validation or test) when the table is the whole data (``part`` "all") and has a split column (``_split_column``).
    A table that is one ``part`` of the splits (a folder's file) has its split column noted as not read."""
    columns = table.columns
    notes.extend(table.notes)
    if not table.positions:
        raise DataError(f"{table.name} has a header ({_listed(columns)}) but no data rows. Add rows below it.")
    text_col = _find_column(table.name, columns, cfg.text_col, TEXT_NAMES, "text", "--text-col (text_col=)")
    label_col = _find_column(table.name, columns, cfg.label_col, LABEL_NAMES, "label", "--label-col (label_col=)")
    if text_col == label_col:
        raise DataError(f"{table.name}: the text and the label column are both {text_col!r}. "
                        "Pass different columns with --text-col and --label-col.")
    _require_flat(table, text_col, "text")
    _require_flat(table, label_col, "label")
    raw_labels = _as_str(table, table.frame[label_col], "label")
    # One label whatever its surrounding spaces, and whatever the form of its accents: macOS writes them decomposed
    # ('U' + U+0308), Windows composed ('Ü'); the two looked the same and trained as two labels (the language review).
    out = pd.DataFrame({"text": _as_str(table, table.frame[text_col], "text"),
                        "label": [unicodedata.normalize("NFC", s.strip()) for s in raw_labels]})
    spellings = pd.Series(raw_labels).groupby(out["label"].to_numpy()).nunique()
    if (spellings > 1).any():
        merged = ", ".join(repr(label) for label in spellings[spellings > 1].index[:5])
        notes.append(f"{table.name}: labels that differ only in surrounding spaces, or in how their accents are "
                     f"encoded (composed or decomposed, as macOS writes them), were read as one: {merged}")
    if (whole := _whole_numbers(out["label"])) is not None:
        out["label"] = whole
        notes.append(f"{table.name}: its labels are whole numbers written with a decimal point (e.g. '1.0', as pandas "
                     "saves a number column with empty cells); they were read as whole numbers ('1'), as they are "
                     "from a number column of Parquet, JSON or a DataFrame.")
    _require_filled(table, out["text"], "empty text", "text")
    _require_filled(table, out["label"], "no label", "label")
    broken = [table.positions[i] for i, label in enumerate(out["label"]) if len(label.splitlines()) > 1]
    if broken:  # a class name over two lines: most likely a quote left open in the label column
        raise DataError(f"{table.name}: {len(broken)} label(s) hold a line break ({_units(table)} "
                        f"{_listed_lines(broken)}). A label is one line; check the quotes around it.")
    _refuse_repeated_header(table, text_col, label_col, out)
    header_note = _header_looks_like_data(table.name, text_col, label_col, out["label"])
    if header_note:
        notes.append(header_note)
    if part != "all":
        notes.extend(_split_column_unread(table, part, (text_col, label_col)))
        return out
    splits = _split_column(table, cfg.split_col, (text_col, label_col), notes)
    return out if splits is None else out.assign(split=splits)


def _split_column_unread(table: _Table, part: str, taken: tuple[str, str]) -> list[str]:
    """A note for each split column of ``table``, the ``part`` split of a folder (or a dict of DataFrames): the files
    are the splits there, so the column is not read, which went unsaid (the data review)."""
    return [f"{table.name}: its column {column!r} does not split its rows: it is the {part} split already (a folder's "
            f"files, or a dict's DataFrames, are the splits). To put rows in splits by that column, pass {table.name} "
            "alone." for column in table.columns if column.strip().lower() in SPLIT_NAMES and column not in taken]


WHOLE_NUMBER = re.compile(r"([+-]?\d+)(\.0+)?")
"""A whole number, perhaps written as a float ("3.0"): the same label as "3" where every label of a file is a whole
number (the data review: a test split saved from a column with gaps scored 0% against the train split's "3", and a
file of both spellings trained "1" and "1.0" as two labels)."""


def _whole_numbers(labels: pd.Series) -> list[str] | None:
    """``labels`` without their decimal points where all are whole numbers and some were written "3.0"; else None."""
    matches = [match for label in labels if (match := WHOLE_NUMBER.fullmatch(label))]
    if len(matches) < len(labels) or not any(match.group(2) for match in matches):
        return None
    return [match.group(1) for match in matches]


def _refuse_repeated_header(table: _Table, text_col: str, label_col: str, out: pd.DataFrame) -> None:
    """Refuse rows that repeat the header (text and label the columns' names): files joined with their headers, whose
    second header would train a label named after the label column (the data review: 'Label', one row). Only where a
    column has a column's name (text, label, intent, ...): a file without a header row, its columns picked by what
    its first row holds, repeats that row as data (``_header_looks_like_data`` says so)."""
    text_name, label_name = text_col.strip().lower(), label_col.strip().lower()
    if text_name not in TEXT_NAMES and label_name not in LABEL_NAMES:
        return
    repeated = [table.positions[i] for i, (text, label) in enumerate(zip(out["text"], out["label"], strict=True))
                if label.lower() == label_name and text.strip().lower() == text_name]
    if repeated:
        raise DataError(f"{table.name}: {len(repeated)} row(s) repeat the header ({text_col!r}, {label_col!r}) at "
                        f"{_units(table)} {_listed_lines(repeated)}: files joined with their header lines? Delete "
                        "these rows.")


def _header_looks_like_data(name: str, text_col: str, label_col: str, labels: pd.Series) -> str:
    """A note when the label column's name is one of its own labels: a file without a header row, its columns picked
    by hand, whose first row became the names and is missing from the rows; '' otherwise. (A sentence as the text
    column's name is no sign: "What the customer wrote" is a header.)"""
    if label_col.strip() not in set(labels) or label_col.strip().lower() in LABEL_NAMES:
        return ""
    return (f"{name}: its header looks like a row of data (the label column's name {label_col[:60]!r} is also one of "
            f"its labels, and the text column is named {text_col[:60]!r}). If the file has no header row, its first "
            "line was read as the column names and is not among the rows; add a header line (e.g. text,label) to "
            "keep it.")


SPLIT_COLUMN_UNUSED = "was not used to split the rows"
"""The note of a column named as a split column whose values are not all split names: the data report counts it a
problem (a caption alone hid that the rows were carved afresh, the test rows the user chose among them)."""


def _split_column(table: _Table, given: str | None, taken: tuple[str, str], notes: list[str]) -> list[str] | None:
    """Each row's split from the table's split column (``given``, else the one column named ``split``), as train,
    validation or test; None when there is none. A column found by its name whose values are not all split names
    is not used (a note says so); a given one is refused then."""
    if given is None:
        found = [c for c in table.columns if c.strip().lower() in SPLIT_NAMES and c not in taken]
        if len(found) > 1:
            notes.append(f"{table.name}: the columns {', '.join(map(repr, found))} could each be the split column, so "
                         "neither was used to split the rows; name one with --split-col (DataConfig.split_col).")
        if len(found) != 1:
            return None
        column = found[0]
    else:
        column = _find_column(table.name, table.columns, given, SPLIT_NAMES, "split", "--split-col (split_col=)")
        if column in taken:
            raise DataError(f"{table.name}: the split column {column!r} is also the text or the label column. Pass "
                            "another column with --split-col.")
    try:
        _require_flat(table, column, "split")
        raw = [value.strip() for value in _as_str(table, table.frame[column], "split")]
    except DataError:  # lists, records or undecodable bytes: a column found by its name is let be
        if given is not None:
            raise
        notes.append(f"{table.name}: its column {column!r} {SPLIT_COLUMN_UNUSED}: it holds lists, records "
                     "or bytes, not one split name per row.")
        return None
    splits = [SPLIT_ALIASES.get(value.lower()) for value in raw]
    bad = [i for i, value in enumerate(splits) if value is None]
    if not bad:
        return [str(value) for value in splits]
    lines, example = _listed_lines([table.positions[i] for i in bad]), raw[bad[0]]
    if given is not None:
        raise DataError(f"{table.name}: {len(bad)} row(s) have a split that is not train, validation (dev, val) or "
                        f"test in column {column!r} ({_units(table)} {lines}; e.g. {example!r}). Fix them, or pass "
                        "another column with --split-col.")
    notes.append(f"{table.name}: its column {column!r} {SPLIT_COLUMN_UNUSED}: {len(bad):,} value(s) do not "
                 f"name a split ({_units(table)} {lines}; e.g. {example!r}).")
    return None


def _by_split_column(frames: dict[str, pd.DataFrame], name: str, notes: list[str]) -> dict[str, pd.DataFrame]:
    """A single table with a ``split`` column (``_split_column``) as the splits it names; other frames as given."""
    whole = frames.get("all")
    if whole is None or "split" not in whole.columns:
        return frames
    parts = {split: rows.drop(columns="split") for split in ("train", "validation", "test")
             if len(rows := whole[whole["split"] == split])}
    counts = ", ".join(f"{split} {len(rows):,}" for split, rows in parts.items())
    if "train" not in parts:
        raise DataError(f"{name}: no row's split is train ({counts}). Mark the rows to train on as train in the split "
                        "column, or drop the column to have the splits carved.")
    notes.append(f"{name}: rows were put in splits by its split column ({counts}); "
                 + ("missing splits were carved from train." if len(parts) < 3 else "nothing was carved."))
    return parts


def _find_column(name: str, columns: list[str], given: str | None, known: tuple[str, ...], role: str,
                 option: str) -> str:
    """The ``role`` column of ``columns``: ``given`` (exactly, else in any case and without surrounding spaces) or the
    one named as ``known`` has it.
    ``option`` names the choice as the command line and Python spell it ("--text-col (text_col=)": a notebook's
    message named only the flag; the API review); the app puts its own box in their place."""
    listed = _listed(columns)
    if given is not None:
        # A CSV header's names are stripped: the option " label " found no column (the data review).
        matches = [c for c in columns if c == given] or [c for c in columns
                                                         if c.strip().lower() == given.strip().lower()]
        if not matches:
            raise DataError(f"{name} has no column {given!r} (asked for as the {role} column); "
                            f"columns found: {listed}. Pass one of them with {option}.")
        if len(matches) > 1:  # no exact match, several in other cases (a Parquet file or DataFrame may hold them)
            raise DataError(f"{name}: the {role} column {given!r} is ambiguous: {', '.join(map(repr, matches))} "
                            f"differ from it only in case. Choose one, exactly as written, with {option}.")
        return matches[0]
    candidates = [c for c in columns if c.strip().lower() in known]
    if len(candidates) > 1:
        raise DataError(f"{name}: the {role} column is ambiguous: {', '.join(map(repr, candidates))} could all be "
                        f"it (columns found: {listed}). Choose one with {option}.")
    if not candidates:
        hint = " Does the file have a header row naming the columns?" if role == "text" else ""
        raise DataError(f"{name}: no {role} column found (columns found: {listed}); expected one named "
                        f"{', '.join(known)}. Rename it, or pass the column with {option}.{hint}")
    return candidates[0]


def _listed(columns: list[str], most: int = 30) -> str:
    """Column names for a message: the first ``most`` of them, and how many more."""
    shown = ", ".join(repr(c) for c in columns[:most])
    return shown + (f" and {len(columns) - most:,} more" if len(columns) > most else "")


def csv_text(frame: pd.DataFrame) -> str:
    """``frame`` (without its index) as CSV that ``load_data`` reads back cell for cell. Rows end in CRLF, as RFC
    4180 has them: Python's csv quotes a cell only for the characters of the row ending, so with pandas' "\\n" a
    text holding a lone carriage return was written bare and read back as two rows (a run's predictions.csv, a
    bench grid's data, the label audit's files)."""
    return frame.to_csv(index=False, lineterminator="\r\n")


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """``csv_text(frame)`` written to ``path`` in UTF-8."""
    Path(path).write_bytes(csv_text(frame).encode("utf-8"))


def _as_str(table: _Table, column: pd.Series, role: str) -> list[str]:
    values: list[str] = []
    narrow = column.dtype if column.dtype in (np.float16, np.float32) else None
    for i, value in enumerate(column.tolist()):
        if isinstance(value, (list, dict, tuple, np.ndarray)):
            kind = "several labels" if role == "label" else "a list or object"
            raise DataError(f"{table.name}, {table.unit} {table.positions[i]}: the {role} holds {kind} ({value!r:.60}). "
                            f"Only one plain {role} per row is supported; multi-label data is not.")
        if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
            values.append("")  # pandas' own missing values too: str(pd.NA) made the label "<NA>"
        elif isinstance(value, float) and value.is_integer():
            values.append(str(int(value)))  # 3.0 from a numeric column with gaps is the label "3"
        elif isinstance(value, float) and narrow is not None:  # tolist() widened 0.1 to 0.10000000149011612
            values.append(str(narrow.type(value)))
        elif isinstance(value, bytes):  # a binary Parquet column: str() would read "b'...'"
            values.append(_decoded(table, value, i, role))
        else:
            values.append(str(value))
        if "\x00" in values[-1]:  # from JSON's \u0000, say: no CSV file the tool writes could carry it back
            raise DataError(f"{table.name}, {table.unit} {table.positions[i]}: the {role} holds a NUL character "
                            "(U+0000), which is not text. Remove it.")
    return values


def _decoded(table: _Table, value: bytes, i: int, role: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{table.name}, {table.unit} {table.positions[i]}: the {role} holds bytes that are not UTF-8 "
                        f"text ({value!r:.60}).") from None


def _require_filled(table: _Table, values: pd.Series, what: str, role: str) -> None:
    bad = [i for i, v in enumerate(values) if _blank(v)]
    if bad:
        unseen = next((values.iloc[i] for i in bad if values.iloc[i].strip()), "")
        said = (f"; some hold only invisible characters, e.g. {', '.join(f'U+{ord(c):04X}' for c in unseen[:3])}"
                if unseen else "")
        raise IncompleteRowsError(f"{table.name}: {len(bad)} row(s) have {what} ({_units(table, len(bad))} "
                        f"{_listed_lines([table.positions[i] for i in bad])}{said}). Fill in the {role} or delete "
                        "these rows; rows are never dropped silently, so nothing goes missing unnoticed.")


def without_incomplete_rows(raw: bytes, filename: str, cfg: DataConfig | None = None) -> tuple[bytes, int, int]:
    """A data file (its bytes, named ``filename``) as CSV without the rows that lack a text or a label, for a user
    who chose to leave them out: (the CSV's bytes, rows kept, rows left out). Only the columns that can be the text,
    the label or the split are kept, found and decoded as ``load_data`` finds them (the UX review: an upload with
    5 unlabelled rows could only be fixed outside the app).

    Raises:
        DataError: the file cannot be read, or its text and label columns cannot be found.
    """
    cfg = cfg or DataConfig()
    table = _parse_table(Path(filename), lambda: raw, len(raw), cfg, [], _Wanted.of(cfg, split=True))
    text_col = _find_column(table.name, table.columns, cfg.text_col, TEXT_NAMES, "text", "--text-col (text_col=)")
    label_col = _find_column(table.name, table.columns, cfg.label_col, LABEL_NAMES, "label", "--label-col (label_col=)")
    texts, labels = _as_str(table, table.frame[text_col], "text"), _as_str(table, table.frame[label_col], "label")
    keep = [not _blank(text) and not _blank(label) for text, label in zip(texts, labels, strict=True)]
    kept = table.frame[keep]
    return csv_text(kept).encode("utf-8"), len(kept), len(keep) - len(kept)


def _blank(value: str) -> bool:
    """Whether ``value`` holds nothing to read: only spaces and invisible format characters (zero-width space, BOM,
    soft hyphen). The data review: a text of only U+200B counted as filled. Stops at the first visible character."""
    return all(char.isspace() or unicodedata.category(char) == "Cf" for char in value)


# -------------------------------------------------------------------------------- splits and labels


def _assemble(frames: dict[str, pd.DataFrame], cfg: DataConfig, source: str, train_name: str,
              notes: list[str]) -> AnnotatedData:
    """Check the train labels, carve the missing splits and build ``AnnotatedData``."""
    train = frames.get("train", frames.get("all"))
    assert train is not None
    _check_labels(train_name, train, cfg.max_labels, cfg.max_label_chars)
    for split in ("validation", "test"):  # their labels reach reports and metrics as train's do
        if split in frames:
            _check_label_length(f"the {split} split", frames[split]["label"].unique(), cfg.max_label_chars)
    test = frames.get("test")
    if test is None:
        train, test = _carve(train, cfg.test_fraction, cfg.seed, "test", notes)
    validation = frames.get("validation")
    if validation is None:
        train, validation = _carve(train, cfg.validation_fraction, cfg.seed, "validation", notes, group_copies=False)
    parts = [f.reset_index(drop=True).astype(str) for f in (train, validation, test)]
    if cfg.shots:  # after the carve, as bench draws: a run at --shots K trains on a bench cell's rows
        drawn = [few_shot(frame, cfg.shots, cfg.shots_seed) for frame in parts[:2]]
        labels = drawn[0]["label"].nunique()
        if len(drawn[0]) < 2 * labels:  # the rule train_name's rows met before the draw, as a bench grid's cells do
            raise DataError(f"--shots {cfg.shots} (shots={cfg.shots}) leaves {len(drawn[0])} training rows for "
                            f"{labels} labels, fewer than 2 per label on average: too few to train. Draw 2 or more.")
        notes += draw_notes(parts[:2], drawn, cfg.shots, cfg.shots_seed)
        parts[:2] = drawn
    carved = tuple(split for split in ("test", "validation") if frames.get(split) is None)
    return AnnotatedData(*parts, labels=label_order(parts[0]["label"].unique()), source=source, notes=notes,
                         config=cfg, carved=carved)


def few_shot(frame: pd.DataFrame, shots: int, seed: int) -> pd.DataFrame:
    """At most ``shots`` rows per label, chosen at random (seeded); file order kept."""
    key = np.random.default_rng(seed).random(len(frame))
    rank = pd.Series(key).groupby(frame["label"].to_numpy()).rank(method="first").to_numpy()
    return frame[rank <= shots].reset_index(drop=True)


def shots_note(train: pd.DataFrame, shots: int) -> str:
    """A sentence when some label has fewer than ``shots`` training rows (it keeps all of its own), else ''."""
    counts = train["label"].value_counts()
    short = counts[counts < shots] if shots else counts.iloc[:0]
    if short.empty:
        return ""
    named = ", ".join(f"{label} ({n})" for label, n in short.sort_values().head(5).items())
    return (f"--shots {shots}: {len(short)} of {len(counts)} labels have fewer training rows and keep all theirs: "
            f"{named}{', ...' if len(short) > 5 else ''}")


def is_draw_note(note: str) -> bool:
    """Whether ``note`` is one of ``draw_notes``'s (what a few-shot draw kept), not a note on the data as read."""
    return note.startswith("--shots ")


def draw_notes(before: list[pd.DataFrame], drawn: list[pd.DataFrame], shots: int, seed: int) -> list[str]:
    """What a ``shots`` draw kept of the train and validation rows (``before``, ``drawn``: those two), and the labels
    with fewer training rows than it."""
    said = [f"--shots {shots} (shots={shots}): trains on {len(drawn[0]):,} of the {len(before[0]):,} training rows and "
            f"validates on {len(drawn[1]):,} of the {len(before[1]):,} validation rows, at most {shots} per label, "
            f"drawn with --data-seed {seed} (shots_seed={seed}); the test split is kept whole"]
    note = shots_note(before[0], shots).replace(f"--shots {shots}:", f"--shots {shots} (shots={shots}):", 1)
    return said + [note] if note else said


def _check_label_length(name: str, labels: Iterable[str], max_chars: int) -> None:
    longest = max(labels, key=len, default="")
    if len(longest) > max_chars:
        raise DataError(f"{name}: a label is {len(longest):,} characters long ({longest[:40]!r}...), above the "
                        f"{max_chars:,}-character limit for a class name. Is the label column right (--label-col)? "
                        f"Otherwise shorten the labels, or raise the limit {_python_only('max_label_chars')}.")


def _check_labels(name: str, frame: pd.DataFrame, max_labels: int, max_chars: int) -> None:
    counts = frame["label"].value_counts()
    if len(counts) > max_labels:
        raise DataError(f"{name}: {len(counts):,} different labels, above the {max_labels:,} label limit. Is the label "
                        f"column right (--label-col)? Otherwise merge rare labels, or raise the limit {_python_only('max_labels')}.")
    _check_label_length(name, counts.index, max_chars)
    if len(counts) < 2:
        raise DataError(f"{name}: every row has the same label {counts.index[0]!r} ({len(frame)} rows). A classifier "
                        "needs at least two labels; check the label column (--label-col).")
    if len(frame) < 2 * len(counts):
        raise DataError(f"{name}: {len(counts)} labels but only {len(frame)} rows, fewer than 2 rows per label on "
                        "average; too few to train or split. Check the label column (--label-col) or add rows.")
    singles = counts[counts == 1]
    if len(singles) * 2 > len(counts):
        example = ", ".join(map(repr, singles.index[:3]))
        raise DataError(f"{name}: {len(singles)} of {len(counts)} labels occur in a single row (e.g. {example}), so "
                        "a stratified split is impossible and most labels cannot be learned. Is the label column "
                        "right (--label-col)? Otherwise merge rare labels or add rows.")


def text_key(text: str) -> str:
    """``text`` without the differences a copy picks up (case, runs of spaces, Unicode's forms): the test carve keeps
    such copies on one side and the data report counts them as leakage (the data review: a test text that equals a
    train text but for them leaks as surely as an exact copy)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _carve(frame: pd.DataFrame, fraction: float, seed: int, what: str, notes: list[str],
           group_copies: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``fraction`` of ``frame`` off as ``what``, stratified by label when the labels allow it.

    With ``group_copies`` the split is drawn over distinct texts and every copy of a text follows it: copies spread
    over train and test would be leakage made by the carving itself. Without it (the validation carve) rows are
    drawn as they always were, so the splits every published benchmark used stay the same; copies it spreads over
    both parts are counted in the note. Either way no label leaves train entirely."""
    if fraction <= 0:
        notes.append(f"No {what} split was given and the {what} fraction is 0, so {what} is empty.")
        return frame, frame.iloc[:0]
    group = frame["text"].map(text_key) if group_copies else None
    lonely, rest = _carve_units(frame, group)
    try:
        if len(rest) < 2:  # (nearly) every text carries a label that has no other: none can be spared
            carved, how = rest.iloc[:0], "nothing, as too few texts can be spared without taking a label out of train"
        else:
            carved = train_test_split(rest, test_size=fraction, random_state=seed, stratify=rest["label"])[1]
            how = "stratified by label"
    except ValueError:
        # sklearn also refuses to stratify when fewer rows are carved than there are labels.
        carved = train_test_split(rest, test_size=fraction, random_state=seed)[1]
        how = "at random, not stratified, because the labels have too few rows for a stratified split"
    taken = group.isin(group[carved.index]) if group is not None else frame.index.isin(carved.index)
    taken, returned = _return_lost_labels(frame, np.asarray(taken, dtype=bool),
                                          group if group is not None else frame["text"])
    if returned:
        how += f"; {returned} text(s) went back to train so that every label keeps a row there"
    if lonely:
        how += f"; {lonely} label(s) with a single {'text' if group_copies else 'row'} stay in train"
    notes.append(f"No {what} split was given: {fraction:.0%} of train ({int(taken.sum()):,} rows) was carved out as "
                 f"{what}, {how} (seed {seed}).{_copies_note(frame, taken, what, group_copies)}")
    # Boolean masks keep the file's row order inside each split; it makes row ids easy to trace back.
    return frame[~taken], frame[taken]


def _carve_units(frame: pd.DataFrame, group: pd.Series | None) -> tuple[int, pd.DataFrame]:
    """(labels that must stay in train, the rows the carve draws from): rows, or one row per ``group`` (a text's
    ``text_key``). A label with one row (one text) cannot be in both parts; it stays in train, where it can at least
    be learned. Grouped, that holds for every text carrying such a label, whichever label its first row names."""
    if group is None:
        counts = frame["label"].map(frame["label"].value_counts())
        return int((counts < 2).sum()), frame[counts >= 2]
    texts_per_label = group.groupby(frame["label"]).nunique()
    single = texts_per_label[texts_per_label < 2].index
    pinned = set(group[frame["label"].isin(single)])
    units = frame[~group.duplicated().to_numpy()]
    return len(single), units[~group[~group.duplicated()].isin(pinned).to_numpy()]


def _return_lost_labels(frame: pd.DataFrame, taken: np.ndarray, group: pd.Series) -> tuple[np.ndarray, int]:
    """``taken`` less the first carved text (every copy of it, by ``group``) of each label the carve took out of train
    entirely: a random split can take every row of a rare label, and grouped by text, a label can ride out with
    texts that other labels' rows stand for. Returns the mask and the number of texts returned."""
    kept_labels = set(frame.loc[~taken, "label"])
    lost = ~frame["label"].isin(kept_labels).to_numpy() & taken
    keys = group[lost].groupby(frame.loc[lost, "label"]).first() if lost.any() else group.iloc[:0]
    return taken & ~group.isin(keys).to_numpy(), len(keys)


def _copies_note(frame: pd.DataFrame, taken: Any, what: str, grouped: bool) -> str:
    repeated = int(frame["text"].duplicated().sum())
    near = int(frame["text"].map(text_key).duplicated().sum()) - repeated if grouped else 0
    if not repeated and not near:
        return ""
    if grouped:
        near_said = f" ({near:,} more but for case, spacing or Unicode form)" if near else ""
        return (f" {repeated:,} row(s) repeat an earlier text{near_said}; all copies of a text went to the same "
                f"split, so the carving put no text in both train and {what}.")
    both = len(set(frame.loc[taken, "text"]) & set(frame.loc[~taken, "text"]))
    return (f" {repeated:,} row(s) repeat an earlier text; {both:,} text(s) have copies in both train and {what} (rows "
            "are drawn as the published benchmarks drew them).") if both else ""


# The report lives in its own module; re-exported here so `from clm_explore.data import data_report` works.
from clm_explore.datareport import DataReport, data_report  # noqa: E402

__all__ = ["SPLITS", "AnnotatedData", "DataError", "DataReport", "data_report", "load_data", "load_upload"]
