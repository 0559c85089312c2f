"""Annotated data intake: read a file or a folder of splits, check it, and describe it.

Contract (other modules rely on it):
- ``load_data(path, cfg) -> AnnotatedData`` and ``load_upload(raw, filename, cfg)`` (the app);
  ``AnnotatedData.train/.validation/.test`` are DataFrames with exactly the columns ``text`` (str) and
  ``label`` (str), index 0..n-1 (the row id);
- ``AnnotatedData.labels`` lists the train labels, sorted; ``label_ids(split)`` maps to ints;
- ``DataError`` carries a one-paragraph message for the user: the file, the row, what is wrong, what to do;
- ``data_report(data) -> DataReport``: sizes, label counts, lengths, duplicates, leakage and problems.

Formats: CSV, TSV, JSONL, JSON (a list of records) and Parquet, or a folder holding ``train``,
``validation`` (or ``dev``) and ``test`` files in any of them. Missing splits are carved out of train
with a seeded stratified split. Nothing is ever dropped silently: bad rows are errors that name them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from clm_explore.config import DataConfig

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test"}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".parquet": "parquet", ".pq": "parquet"}
TEXT_NAMES = ("text", "sentence", "utterance", "query", "question", "content")
LABEL_NAMES = ("label", "intent", "category", "class", "target", "labels")
_MAX_LISTED = 10
_FIELD_LIMIT = 10_000_000  # csv's default 128 KiB field limit rejects long documents


class DataError(ValueError):
    """The data cannot be used; the message names the file, the row and what is wrong."""


@dataclass
class AnnotatedData:
    """Three splits of labelled texts; every frame has str columns ``text`` and ``label``."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    """Sorted labels of the train split (the model's output order)."""
    source: str = ""
    """Where the data came from (a path or an uploaded file name)."""
    notes: list[str] = field(default_factory=list)
    """Plain-English remarks on how the data was read (encoding fallback, carved splits)."""

    def split(self, name: str) -> pd.DataFrame:
        """The frame of split ``name`` (train, validation or test)."""
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    def label_ids(self, name: str) -> np.ndarray:
        """(rows,) int64 label ids of a split; labels unseen in train map to -1."""
        index = {label: i for i, label in enumerate(self.labels)}
        return np.array([index.get(x, -1) for x in self.split(name)["label"]], dtype=np.int64)


@dataclass
class _Table:
    """One parsed file before column selection: all columns as read, and where each row came from."""

    name: str
    frame: pd.DataFrame
    positions: list[int]
    """1-based line (CSV, TSV, JSONL), record (JSON) or row (Parquet) number of each row."""
    unit: str


# ----------------------------------------------------------------------------------------- loading


def load_data(path: str | Path, cfg: DataConfig | None = None) -> AnnotatedData:
    """Read and check a data file or a folder of split files.

    Args:
        path: a CSV/TSV/JSONL/JSON/Parquet file, or a folder with ``train`` (required), ``validation``
            (or ``dev``) and ``test`` files in any of those formats.
        cfg: column names, size cap and split fractions; defaults to ``DataConfig()``.

    Returns:
        The three splits; missing ones are carved out of train (see ``AnnotatedData.notes``).

    Raises:
        DataError: the data cannot be used; the message says where and what to do.
    """
    cfg = cfg or DataConfig()
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist. Pass a data file (CSV, TSV, JSONL, JSON, Parquet) or a folder "
                        "with train/validation/test files.")
    notes: list[str] = []
    files = _split_files(path) if path.is_dir() else {"all": path}
    frames = {split: _read_file(f, f.read_bytes, f.stat().st_size, cfg, notes) for split, f in files.items()}
    return _assemble(frames, cfg, str(path), str(files.get("train", path)), notes)


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
    return _assemble({"all": frame}, cfg, filename, filename, notes)


def _split_files(folder: Path) -> dict[str, Path]:
    found: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        split = SPLIT_ALIASES.get(f.stem.lower())
        if f.is_file() and split and f.suffix.lower() in FORMATS:
            found.setdefault(split, []).append(f)
    for split, files in found.items():
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            raise DataError(f"{folder} holds several {split} files ({names}). Keep one file per split.")
    if "train" not in found:
        listed = ", ".join(sorted(f.name for f in folder.iterdir())[:20]) or "nothing"
        raise DataError(f"{folder} has no train file (found: {listed}). Name the files train, validation (or dev) "
                        "and test with a .csv, .tsv, .jsonl, .json or .parquet extension, or pass a single file.")
    return {split: files[0] for split, files in found.items()}


def _read_file(path: Path, read: Callable[[], bytes], size: int, cfg: DataConfig, notes: list[str]) -> pd.DataFrame:
    """Read one file into a checked ``[text, label]`` frame; ``read()`` is only called after the size check."""
    return _select_columns(_parse_table(path, read, size, cfg, notes), cfg)


def column_names(path: str | Path, suffix: str | None = None) -> list[str]:
    """The column names of a data file for a column mapping, read without loading its rows where the format
    allows (a Parquet file's schema, a CSV/TSV header and first rows, a JSON file's first records); [] when it
    cannot be read (``load_data`` then says why). ``suffix`` overrides the file's own extension."""
    import pyarrow.parquet as pq

    file = Path(path)
    fmt = FORMATS.get((suffix or file.suffix).lower())
    try:
        if fmt == "parquet":
            return [n for n in pq.read_schema(file).names if not n.startswith("__index_level_")]
        if fmt == "json":
            records = json.loads(file.read_text(encoding="utf-8-sig"))[:20]
            return [str(k) for k in dict.fromkeys(k for r in records if isinstance(r, dict) for k in r)]
        if fmt == "jsonl":
            frame = pd.read_json(file, lines=True, nrows=20)
        else:
            frame = pd.read_csv(file, sep="\t" if fmt == "tsv" else ",", nrows=20, dtype=str)
    except Exception:  # noqa: BLE001 - the loader reports the real problem in plain words
        return []
    return [str(c) for c in frame.columns]


def read_texts(path: str | Path, text_col: str | None = None, cfg: DataConfig | None = None) -> list[str]:
    """The texts of a file to predict on: any format ``load_data`` reads (no label column needed; the text
    column is found by the same names, or ``text_col``), or a .txt file with one text per line.

    Raises:
        DataError: a missing, oversized, unreadable or unsupported file, no text column, or empty texts.
    """
    cfg = cfg or DataConfig()
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{path} does not exist or is not a file.")
    if file.suffix.lower() == ".txt":
        _check_size(str(file), file.stat().st_size, cfg)
        text = _decode(str(file), file.read_bytes(), [])
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise DataError(f"{path} holds no text to predict (it is empty or blank).")
        return lines
    table = _parse_table(file, file.read_bytes, file.stat().st_size, cfg, [])
    columns = [str(c) for c in table.frame.columns]
    if table.frame.empty:
        raise DataError(f"{table.name} has a header ({', '.join(columns)}) but no rows to predict.")
    column = _find_column(table.name, columns, text_col, TEXT_NAMES, "text", "--text-col")
    texts = pd.Series(_as_str(table, table.frame.set_axis(columns, axis=1)[column], "text"))
    _require_filled(table, texts, "empty text", "text")
    return texts.tolist()


def _check_size(name: str, size: int, cfg: DataConfig) -> None:
    if size > cfg.max_file_mb * 1024 * 1024:
        mb = f"{size / 2**20:,.1f}" if size >= 2**20 else f"{size / 2**20:.2g}"
        raise DataError(f"{name} is {mb} MB, above the {cfg.max_file_mb:g} MB limit. Use a smaller sample "
                        "or raise the limit with --max-file-mb (DataConfig.max_file_mb).")


def _parse_table(path: Path, read: Callable[[], bytes], size: int, cfg: DataConfig, notes: list[str]) -> _Table:
    """Parse one file of a supported format, every column kept; ``read()`` is only called after the size check."""
    name = str(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{name} has an unsupported extension {path.suffix or '(none)'!r}. Save it as .csv, .tsv, "
                        ".jsonl, .json or .parquet (spreadsheets: export as CSV, UTF-8).")
    _check_size(name, size, cfg)
    raw: bytes = read()
    if not raw.strip():
        raise DataError(f"{name} is empty. Put a header row (e.g. text,label) and at least a few rows per label in it.")
    if fmt == "parquet":
        return _parse_parquet(name, raw, cfg)
    table = _PARSERS[fmt](name, _decode(name, raw, notes))
    _check_rows(name, len(table.frame), cfg)
    return table


# ------------------------------------------------------------------------------------------ parsing


def _decode(name: str, raw: bytes, notes: list[str]) -> str:
    """Bytes to text: UTF-8 (BOM allowed), UTF-16 with a BOM, else cp1252/latin-1 with a note."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        notes.append(f"{name} is UTF-16; it was decoded as such.")
        return _check_text(name, raw.decode("utf-16", errors="replace"))
    nul = raw.find(b"\x00")
    if nul >= 0:
        _binary_error(name, raw, f"it contains NUL bytes (first at byte {nul})")
    try:
        return _check_text(name, raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
    for encoding, label in (("cp1252", "Windows-1252 (cp1252)"), ("latin-1", "Latin-1")):
        try:
            text = _check_text(name, raw.decode(encoding))
        except UnicodeDecodeError:
            continue
        notes.append(f"{name} is not valid UTF-8 (first bad byte on line {line}); it was read as {label}. "
                     "Check accented characters, or save the file as UTF-8.")
        return text
    raise AssertionError("latin-1 decodes every byte string")  # pragma: no cover


def _check_text(name: str, text: str) -> str:
    # Control characters (other than tab and line breaks) are rare in real text and common in binary files.
    sample = text[:100_000]
    control = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\t\n\r")
    if control > max(3, len(sample) // 100):
        _binary_error(name, b"", f"it holds {control} control characters")
    return text


def _binary_error(name: str, head: bytes, why: str) -> None:
    kind = "a ZIP archive or an Excel/ODS spreadsheet" if head.startswith(b"PK") else "a binary file"
    raise DataError(f"{name} does not look like text: {why}; it looks like {kind}. Export the data as CSV "
                    "(UTF-8) or JSONL with one text and one label per row.")


def _parse_delimited(name: str, text: str, delimiter: str) -> _Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[list[str]] = []
    positions: list[int] = []
    header: list[str] | None = None
    start = 1
    try:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                if header is None:
                    header = [c.strip() for c in row]
                elif len(row) != len(header):
                    raise DataError(f"{name}, line {start}: expected {len(header)} fields like the header "
                                    f"({', '.join(header)}) but found {len(row)}. Quote texts that contain "
                                    f"{'tabs' if delimiter == chr(9) else 'commas'} (\"...\"), or fix the row.")
                else:
                    rows.append(row)
                    positions.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{name}, row starting at line {start}: cannot be parsed ({exc}). Usually a stray or "
                        "unclosed quote; double quotes inside a quoted text must be written as \"\".") from exc
    assert header is not None  # the file is not blank (checked before)
    _check_header(name, header)
    return _Table(name, pd.DataFrame(rows, columns=header, dtype=str), positions, "line")


def _check_header(name: str, header: list[str]) -> None:
    seen = [c.lower() for c in header]
    dupes = sorted({c for c in header if seen.count(c.lower()) > 1})
    if dupes:
        raise DataError(f"{name}: the header names column(s) {', '.join(map(repr, dupes))} more than once. "
                        "Give every column a distinct name.")


def _parse_jsonl(name: str, text: str) -> _Table:
    records: list[dict[str, Any]] = []
    positions: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
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
        records.append(record)
        positions.append(number)
    return _records_table(name, records, positions, "line")


def _parse_json(name: str, text: str) -> _Table:
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise DataError(f"{name}: JSON nested too deeply to read. A .json file must hold a flat list of records "
                        "like [{\"text\": \"...\", \"label\": \"...\"}].") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{name}, line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}). "
                        "A .json file must hold a list of records; for one record per line use .jsonl.") from exc
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{name}: expected a JSON list of records like [{{\"text\": \"...\", \"label\": \"...\"}}], "
                        f"found a {type(data).__name__}. Convert it to that shape, or to JSONL.")
    return _records_table(name, data, list(range(1, len(data) + 1)), "record")


_MAX_RECORD_KEYS = 100
"""Distinct keys over all records of a JSON/JSONL file: every key becomes a column for every row."""


def _records_table(name: str, records: list[dict[str, Any]], positions: list[int], unit: str) -> _Table:
    if not records:
        raise DataError(f"{name} holds no records. Add rows with a text and a label.")
    keys: set[str] = set()
    for record in records:
        keys.update(record)
        if len(keys) > _MAX_RECORD_KEYS:  # the table would grow as records x keys
            raise DataError(f"{name}: its records hold more than {_MAX_RECORD_KEYS} different keys. Keep the text and "
                            "label keys (and a few more) in every record.")
    return _Table(name, pd.DataFrame.from_records(records), positions, unit)


def _parse_parquet(name: str, raw: bytes, cfg: DataConfig) -> _Table:
    import pyarrow.parquet as pq

    if not raw.startswith(b"PAR1"):
        raise DataError(f"{name} is not a Parquet file (no PAR1 signature). Check the extension matches the format.")
    try:
        file = pq.ParquetFile(io.BytesIO(raw))
        # Both checked before the rows are decoded: a few KB of dictionary-encoded Parquet can hold gigabytes.
        _check_rows(name, file.metadata.num_rows, cfg)
        _check_size(f"{name} (decoded)", _decoded_bytes(raw, file.schema_arrow), cfg)
        frame = file.read().to_pandas()
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{name} could not be read as Parquet ({exc}). Re-export the file.") from exc
    return _Table(name, frame.reset_index(drop=True), list(range(1, len(frame) + 1)), "row")


def _decoded_bytes(raw: bytes, schema: Any) -> int:
    """Bytes a Parquet file's columns take once decoded, measured with its text columns still
    dictionary-encoded (each distinct value held once, sized per row through the indices)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    texts = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
             or pa.types.is_binary(f.type)]
    total = 0
    for column in pq.ParquetFile(io.BytesIO(raw), read_dictionary=texts).read().columns:
        for chunk in column.chunks:
            if pa.types.is_dictionary(chunk.type):
                total += pc.sum(pc.take(pc.binary_length(chunk.dictionary), chunk.indices)).as_py() or 0
            else:
                total += chunk.nbytes
    return total


def _check_rows(name: str, rows: int, cfg: DataConfig) -> None:
    if rows > cfg.max_rows:
        raise DataError(f"{name} has {rows:,} rows, above the {cfg.max_rows:,} row limit. Use a sample, or raise the "
                        "limit (DataConfig.max_rows) on a machine with the memory for it.")


def _parse_csv(name: str, text: str) -> _Table:
    # Spreadsheets in many European locales export "CSV" with semicolons; a header without commas tells.
    header = text.lstrip("\ufeff\r\n").split("\n", 1)[0]
    return _parse_delimited(name, text, ";" if ";" in header and "," not in header else ",")


_PARSERS: dict[str, Callable[[str, str], _Table]] = {
    "csv": _parse_csv,
    "tsv": lambda name, text: _parse_delimited(name, text, "\t"),
    "jsonl": _parse_jsonl,
    "json": _parse_json,
}


# ---------------------------------------------------------------------------------- column checks


def _select_columns(table: _Table, cfg: DataConfig) -> pd.DataFrame:
    """Pick the text and label columns and check every row has both; returns ``[text, label]`` as str."""
    columns = [str(c) for c in table.frame.columns]
    if table.frame.empty:
        raise DataError(f"{table.name} has a header ({', '.join(columns)}) but no data rows. Add rows below it.")
    text_col = _find_column(table.name, columns, cfg.text_col, TEXT_NAMES, "text", "--text-col")
    label_col = _find_column(table.name, columns, cfg.label_col, LABEL_NAMES, "label", "--label-col")
    if text_col == label_col:
        raise DataError(f"{table.name}: the text and the label column are both {text_col!r}. "
                        "Pass different columns with --text-col and --label-col.")
    frame = table.frame.set_axis(columns, axis=1)
    out = pd.DataFrame({
        "text": _as_str(table, frame[text_col], "text"),
        "label": [s.strip() for s in _as_str(table, frame[label_col], "label")],
    })
    _require_filled(table, out["text"], "empty text", "text")
    _require_filled(table, out["label"], "no label", "label")
    return out


def _find_column(name: str, columns: list[str], given: str | None, known: tuple[str, ...], role: str,
                 option: str) -> str:
    listed = ", ".join(repr(c) for c in columns)
    if given is not None:
        matches = [c for c in columns if c == given] or [c for c in columns if c.lower() == given.lower()]
        if not matches:
            raise DataError(f"{name} has no column {given!r} (asked for as the {role} column); "
                            f"columns found: {listed}. Pass one of them with {option}.")
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


def _as_str(table: _Table, column: pd.Series, role: str) -> list[str]:
    values: list[str] = []
    for i, value in enumerate(column.tolist()):
        if isinstance(value, (list, dict, tuple, np.ndarray)):
            kind = "several labels" if role == "label" else "a list or object"
            raise DataError(f"{table.name}, {table.unit} {table.positions[i]}: the {role} holds {kind} ({value!r:.60}). "
                            f"Only one plain {role} per row is supported; multi-label data is not.")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            values.append("")
        elif isinstance(value, float) and value.is_integer():
            values.append(str(int(value)))  # 3.0 from a numeric column with gaps is the label "3"
        else:
            values.append(str(value))
    return values


def _require_filled(table: _Table, values: pd.Series, what: str, role: str) -> None:
    bad = [table.positions[i] for i, v in enumerate(values) if not v.strip()]
    if bad:
        shown = ", ".join(map(str, bad[:_MAX_LISTED])) + (", ..." if len(bad) > _MAX_LISTED else "")
        units = table.unit + ("s" if len(bad) > 1 else "")
        raise DataError(f"{table.name}: {len(bad)} row(s) have {what} ({units} {shown}). Fill in the {role} or "
                        "delete these rows; rows are never dropped silently, so nothing goes missing unnoticed.")


# -------------------------------------------------------------------------------- splits and labels


def _assemble(frames: dict[str, pd.DataFrame], cfg: DataConfig, source: str, train_name: str,
              notes: list[str]) -> AnnotatedData:
    """Check the train labels, carve the missing splits and build ``AnnotatedData``."""
    train = frames.get("train", frames.get("all"))
    assert train is not None
    _check_labels(train_name, train, cfg.max_labels)
    test = frames.get("test")
    if test is None:
        train, test = _carve(train, cfg.test_fraction, cfg.seed, "test", notes)
    validation = frames.get("validation")
    if validation is None:
        train, validation = _carve(train, cfg.validation_fraction, cfg.seed, "validation", notes)
    parts = [f.reset_index(drop=True).astype(str) for f in (train, validation, test)]
    return AnnotatedData(*parts, labels=sorted(parts[0]["label"].unique()), source=source, notes=notes)


def _check_labels(name: str, frame: pd.DataFrame, max_labels: int) -> None:
    counts = frame["label"].value_counts()
    if len(counts) > max_labels:
        raise DataError(f"{name}: {len(counts):,} different labels, above the {max_labels:,} label limit. Is the label "
                        "column right (--label-col)? Otherwise merge rare labels, or raise DataConfig.max_labels.")
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


def _carve(frame: pd.DataFrame, fraction: float, seed: int, what: str,
           notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``fraction`` of ``frame`` off as ``what``, stratified by label when the labels allow it."""
    if fraction <= 0:
        notes.append(f"No {what} split was given and the {what} fraction is 0, so {what} is empty.")
        return frame, frame.iloc[:0]
    counts = frame["label"].map(frame["label"].value_counts())
    # A label with one row cannot be in both parts; it stays in train, where it can at least be learned.
    lonely = frame[counts < 2]
    rest = frame[counts >= 2]
    try:
        kept, carved = train_test_split(rest, test_size=fraction, random_state=seed, stratify=rest["label"])
        how = "stratified by label"
    except ValueError:
        # sklearn also refuses to stratify when fewer rows are carved than there are labels.
        kept, carved = train_test_split(rest, test_size=fraction, random_state=seed)
        how = "at random, not stratified, because the labels have too few rows for a stratified split"
    if len(lonely):
        how += f"; {len(lonely)} label(s) with a single row stay in train"
    notes.append(f"No {what} split was given: {fraction:.0%} of train ({len(carved):,} rows) was carved out as "
                 f"{what}, {how} (seed {seed}).")
    # Keep the file's row order inside each split; it makes row ids easy to trace back.
    return pd.concat([kept, lonely]).sort_index(), carved.sort_index()


# The report lives in its own module; re-exported here so `from clm_explore.data import data_report` works.
from clm_explore.datareport import DataReport, data_report  # noqa: E402

__all__ = ["SPLITS", "AnnotatedData", "DataError", "DataReport", "data_report", "load_data", "load_upload"]
