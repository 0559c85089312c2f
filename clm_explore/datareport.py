"""The data report: sizes, label counts, text lengths, duplicates, leakage and plain-English problems."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from clm_explore.data import ENCODING_GUESSED, SPLIT_COLUMN_UNUSED, SPLITS, AnnotatedData, text_key

RARE_LABEL_ROWS = 5
"""Labels with fewer train rows than this are reported as very rare."""
MISSING_MARKERS = frozenset({"na", "n/a", "#n/a", "#n/a n/a", "#na", "nan", "-nan", "null", "none", "<na>", "nat",
                             "-1.#ind", "1.#ind", "-1.#qnan", "1.#qnan"})
"""Labels (any case) that pandas and spreadsheets read as an empty cell: pandas' default na_values, and NaT."""

@dataclass
class DataReport:
    """What the data holds and what may be wrong with it (``to_dict`` is JSON-ready)."""

    source: str
    rows: int
    """Rows in all splits together."""
    labels: list[str]
    """Train labels, sorted."""
    splits: dict[str, int]
    """Split name -> rows."""
    label_counts: dict[str, dict[str, int]]
    """Label -> split -> rows (labels of every split, train labels first)."""
    lengths: dict[str, dict[str, dict[str, float]]]
    """'all' or split -> 'chars' / 'words' -> min, median, p95, max."""
    duplicates: dict[str, int]
    """Split -> rows whose text repeats an earlier row of the same split."""
    conflicting: dict[str, int]
    """Split -> texts that occur with more than one label in that split."""
    leakage: dict[str, Any]
    """'count' (distinct texts in more than one split), 'pairs' ('train/test' -> texts), 'examples'."""
    unseen_labels: dict[str, list[str]]
    """Split -> labels that occur there but never in train."""
    rare_labels: dict[str, int]
    """Labels with fewer than ``RARE_LABEL_ROWS`` train rows -> their train rows."""
    notes: list[str]
    problems: list[str]
    """Plain-English warnings; the data is still usable."""
    serious: list[str] = field(default_factory=list)
    validation_left_out: bool = False
    """No validation split, as asked (``DataConfig.validation_fraction`` 0): not a problem (``validate --strict``
    exited 1 on the empty split its own option asked for; the review of the new features)."""
    """The problems that make a run's figures misleading (texts with two labels, leakage, labels never trained,
    label variants, a split column not used, missing-value markers as labels, a file's encoding guessed in doubt):
    the commands that train or score print them."""

    def __repr__(self) -> str:  # the default printed every label's counts: thousands of characters in a cell
        splits = ", ".join(f"{name} {rows:,}" for name, rows in self.splits.items())
        return (f"DataReport({self.source}: {self.rows:,} rows ({splits}), {len(self.labels)} labels, "
                f"{len(self.problems)} problem(s); .problems, .to_dict())")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


def data_report(data: AnnotatedData) -> DataReport:
    """Describe ``data``: sizes, label counts, text lengths, duplicates, leakage and problems."""
    if not isinstance(data, AnnotatedData):  # a path: "'str' object has no attribute 'labels'"
        raise TypeError(f"data_report takes what load_data returns (load_data(path)); got {type(data).__name__}")
    frames = {name: data.split(name) for name in SPLITS}
    train_labels = set(data.labels)
    report = DataReport(
        source=data.source,
        rows=sum(len(f) for f in frames.values()),
        labels=list(data.labels),
        splits={name: len(f) for name, f in frames.items()},
        label_counts=_label_counts(frames, data.labels),
        lengths={"all": _lengths(pd.concat(frames.values())["text"]),
                 **{name: _lengths(f["text"]) for name, f in frames.items()}},
        duplicates={name: int(f["text"].duplicated().sum()) for name, f in frames.items()},
        conflicting={name: int((f.groupby("text")["label"].nunique() > 1).sum()) for name, f in frames.items()},
        leakage=_leakage(frames),
        unseen_labels={name: sorted(set(f["label"]) - train_labels) for name, f in frames.items() if name != "train"},
        rare_labels={k: int(v) for k, v in frames["train"]["label"].value_counts().items() if v < RARE_LABEL_ROWS},
        notes=list(data.notes),
        problems=[],
        validation_left_out=bool(data.config is not None and data.config.validation_fraction == 0),
    )
    report.notes += _small_test_notes(report)
    found = _problems(report)
    report.problems = [text for text, _ in found]
    report.serious = [text for text, serious in found if serious]
    return report


def _label_counts(frames: dict[str, pd.DataFrame], labels: list[str]) -> dict[str, dict[str, int]]:
    counts = {name: f["label"].value_counts() for name, f in frames.items()}
    extra = sorted({lab for name, c in counts.items() for lab in c.index} - set(labels))
    return {lab: {name: int(c.get(lab, 0)) for name, c in counts.items()} for lab in [*labels, *extra]}


_SPACELESS = "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
"""Kana and the CJK ideographs: scripts written without spaces between words."""


def _lengths(texts: pd.Series) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    # A Chinese or Japanese character counts as a word, as a BERT-style tokenizer reads it: their texts have no spaces,
    # so every one read "1 word" (the language review).
    words = texts.str.replace(_SPACELESS, r" \g<0> ", regex=True).str.split().str.len()
    for unit, values in (("chars", texts.str.len()), ("words", words)):
        if values.empty:
            out[unit] = {"min": 0, "median": 0, "p95": 0, "max": 0}
            continue
        out[unit] = {"min": int(values.min()), "median": float(values.median()),
                     "p95": round(float(values.quantile(0.95))), "max": int(values.max())}  # whole: 1650.65 read as precise
    return out


def _leakage(frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    sets = {name: set(f["text"]) for name, f in frames.items()}
    pairs = {f"{a}/{b}": len(sets[a] & sets[b]) for a, b in (("train", "validation"), ("train", "test"),
                                                              ("validation", "test"))}
    shared = sorted((sets["train"] & sets["test"]) | (sets["train"] & sets["validation"])
                    | (sets["validation"] & sets["test"]))
    # Texts of b that are no copy of a text of a but equal one but for case, spacing or Unicode form (the diff
    # review: a difference of two key sets' sizes went negative where exact copies shared a key).
    keys = {name: {text_key(text) for text in texts} for name, texts in sets.items()}
    near = {f"{a}/{b}": sum(text_key(text) in keys[a] for text in sets[b] - sets[a])
            for a, b in (("train", "validation"), ("train", "test"), ("validation", "test"))}
    return {"count": len(shared), "pairs": pairs, "examples": shared[:5], "near_pairs": near}


def _problems(r: DataReport) -> list[tuple[str, bool]]:
    """(problem, serious) pairs; serious where a run's figures would mislead (``DataReport.serious``)."""
    problems = []
    for name, n in r.duplicates.items():
        if n:
            problems.append((f"{n} row(s) in {name} repeat a text that occurs earlier in {name}.", False))
    for name, n in r.conflicting.items():
        if n:
            problems.append((f"{n} text(s) in {name} occur with more than one label; the model cannot get them all "
                             "right.", True))
    for pair, n in r.leakage["pairs"].items():
        if n:
            a, b = pair.split("/")
            problems.append((f"{n} text(s) occur in both {a} and {b} (leakage); {b} scores may look better than they "
                             "are.", True))
    for pair, n in r.leakage.get("near_pairs", {}).items():
        if n:
            a, b = pair.split("/")
            problems.append((f"{n} text(s) of {b} equal one of {a} but for case, spacing or Unicode form (leakage); "
                             f"{b} scores may look better than they are.", True))
    for name, labels in r.unseen_labels.items():
        if labels:
            problems.append((f"{len(labels)} label(s) occur in {name} but never in train ({_some(labels)}); "
                             "the model can never predict them."
                             + (" Runs score those test rows as out-of-scope queries too: a prediction abstains "
                                "below a confidence threshold chosen on validation (metrics.json's out_of_scope)"
                                + ("; with no validation split, none is chosen." if r.validation_left_out else ".")
                                if name == "test" else ""), True))
    variants = _case_variants(sorted({*r.label_counts, *(label for labels in r.unseen_labels.values() for label in labels)}))
    if variants:
        shown = _some([" / ".join(map(repr, group)) for group in variants])
        problems.append((f"{len(variants)} group(s) of labels differ only in upper/lower case, spacing, invisible "
                         f"characters or the way a number is written: {shown}. They "
                         "are kept as separate labels; if they mean the same, write them the same way in the data.",
                         True))
    markers = _missing_markers(r.label_counts)
    if markers:
        problems.append(markers)
    if r.rare_labels:
        shown = _some([f"{k} ({v})" for k, v in sorted(r.rare_labels.items(), key=lambda kv: kv[1])])
        problems.append((f"{len(r.rare_labels)} label(s) have fewer than {RARE_LABEL_ROWS} train rows: {shown}.",
                         False))
    train_counts = [c["train"] for c in r.label_counts.values() if c["train"]]
    if train_counts and max(train_counts) >= 10 * min(train_counts):
        problems.append((f"Labels are imbalanced: train rows per label range from {min(train_counts)} to "
                         f"{max(train_counts)}; look at macro F1, not only accuracy.", False))
    for name in ("validation", "test"):
        if not r.splits[name] and not (name == "validation" and r.validation_left_out):
            problems.append((f"The {name} split is empty.", False))
    for note in r.notes:
        if SPLIT_COLUMN_UNUSED in note and "value(s) do not name a split" in note:
            problems.append((f"{note} Its rows were split afresh: fix those values to keep the splits it gives.", True))
        if ENCODING_GUESSED in note:  # texts and labels may be mojibake: a model would learn them as written
            problems.append((note, True))
    return problems


def plural(count: int, noun: str) -> str:
    """'1 row', '9 rows'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def row_points(rows: int) -> str:
    """What one of ``rows`` rows is worth in points of a share (accuracy, recall): '100', '33.3', '0.125'."""
    return f"{100 / rows:.3g}"


SMALL_TEST_ROWS = 50
"""Below this many test rows a report says what one row is worth: a run's figures on them move in large steps."""


def _small_test_notes(r: DataReport) -> list[str]:
    """Notes, not problems (``validate --strict`` takes the data): a small test split (one row many points of
    accuracy) and trained labels it has no row of (accuracy and macro-F1 say nothing of them): the few-shot review's
    43-row upload scored 0.6667 on 9 test rows, 2 of its 7 labels never tested, said nowhere."""
    rows = r.splits["test"]
    said = []
    if 0 < rows < SMALL_TEST_ROWS:
        said.append(f"The test split holds {plural(rows, 'row')}: one row is {row_points(rows)} points of accuracy, so runs' "
                    "figures on it move in large steps; compare runs over several seeds.")
    untested = [label for label, counts in r.label_counts.items() if counts.get("train") and not counts.get("test")]
    if rows and untested:
        said.append(f"{len(untested)} trained label(s) have no test row ({_some(untested)}): accuracy and macro-F1 "
                    "say nothing of them.")
    return said


def _missing_markers(label_counts: dict[str, dict[str, int]]) -> tuple[str, bool] | None:
    """A serious problem naming the labels that mark a missing value ('NA', 'null', 'nan', ...), or None. The loader
    reads them as written and trains them as classes, while pandas reads the same file's cells as missing (the data
    review: validate listed them only as rare labels)."""
    found = {label: sum(counts.values()) for label, counts in label_counts.items()
             if label.strip().lower() in MISSING_MARKERS}
    if not found:
        return None
    shown = _some([f"{label!r} ({rows:,} row{'s' if rows > 1 else ''})" for label, rows in found.items()])
    return (f"{len(found)} label(s) look like a missing value, not a class: {shown}. They are trained as classes; "
            "fill in the real labels or delete those rows (if one is a real class, such as 'none' for no topic, "
            "give it a clearer name).", True)


def _case_variants(labels: list[str]) -> list[list[str]]:
    """Groups of labels that are equal once case, runs of whitespace, Unicode's forms, invisible characters and the
    way a whole number is written are ignored ('Pos', 'pos', 'POS'; 'café' composed and decomposed; '1' and '1.0',
    which a CSV keeps apart and a JSON or Parquet file does not): most likely one label typed differently, which the
    model would learn as rivals."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(_label_key(label), []).append(label)
    return [sorted(group) for group in groups.values() if len(group) > 1]


_JOINERS = {"\u200d", *map(chr, range(0xE0020, 0xE0080))}
"""Format characters that make a different emoji (a family, a flag), not invisible noise."""
_WHOLE_NUMBER = re.compile(r"\s*([+-]?[0-9]+)(?:\.0+)?\s*")
"""A whole number, with or without a zero fraction: '1', '1.0', '1.00' (not '1.1' and '1.10', codes that differ)."""


def _label_key(label: str) -> str:
    visible = "".join(c for c in unicodedata.normalize("NFKC", label)
                      if unicodedata.category(c) != "Cf" or c in _JOINERS)
    number = _WHOLE_NUMBER.fullmatch(visible)
    return f"#{int(number.group(1))}" if number else " ".join(visible.split()).casefold()


def _some(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
