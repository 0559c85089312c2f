"""Write the data-intake test corpus: ``bad/`` (each file fails one check) and ``good/`` (each loads).

Run ``python tests/data/make_bad_corpus.py`` after changing a case; the files are committed so that a
reader can open them. ``BAD`` and ``GOOD`` are imported by ``tests/test_data.py``: every bad case names
the phrase its ``DataError`` must contain and, where needed, the ``DataConfig`` fields to load it with.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

HERE = Path(__file__).resolve().parent
LABELS = ("balance", "card_lost", "transfer")
TEMPLATES = {
    "balance": ["what is my balance", "how much money do I have", "show my account balance",
                "balance please", "check my balance, now", "is my balance low?", "what's left on my account",
                "current balance", "tell me my balance", "my \"available\" balance"],
    "card_lost": ["I lost my card", "my card was stolen", "block my card please", "card missing",
                  "cannot find my card", "someone took my card", "freeze my card", "lost card, help",
                  "where is my card", "report a stolen card"],
    "transfer": ["send money to John", "transfer 20 euros", "make a payment", "wire money abroad",
                 "pay my rent", "move money to savings", "transfer to my friend", "send cash",
                 "how do I transfer", "pay someone\nnew line inside"],
}


@dataclass
class Case:
    """One corpus entry: a file (or folder) name, its content and what loading it must show."""

    name: str
    content: bytes | dict[str, bytes]
    """File bytes, or file name -> bytes for a folder."""
    phrase: str = ""
    """Bad cases: text the DataError message must contain. Good cases: text a note must contain."""
    cfg: dict[str, Any] = field(default_factory=dict)


def records(n_per_label: int = 10) -> list[dict[str, str]]:
    """Rows interleaved by label, so that any prefix has every label."""
    return [{"text": TEMPLATES[label][i], "label": label} for i in range(n_per_label) for label in LABELS]


def frame() -> pd.DataFrame:
    return pd.DataFrame(records())


def csv_bytes(df: pd.DataFrame, sep: str = ",") -> bytes:
    return df.to_csv(index=False, sep=sep, lineterminator="\n").encode()


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _lines(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _labelled(texts: list[str], labels: list[str], header: str = "text,label") -> bytes:
    return _lines(header, *(f"{t},{lab}" for t, lab in zip(texts, labels, strict=True)))


def bad_cases() -> list[Case]:
    good = csv_bytes(frame())
    six = ["a b", "c d", "e f", "g h", "i j", "k l"]
    ab = ["x", "y", "x", "y", "x", "y"]
    return [
        Case("empty.csv", b"", "is empty"),
        Case("blank_lines.csv", b"\n \n\t\n", "is empty"),
        Case("header_only.csv", b"text,label\n", "but no data rows"),
        Case("nul_bytes.csv", b"text,label\nhello\x00\x00\x01,a\n", "contains NUL bytes"),
        Case("excel_renamed.csv", b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 4, "ZIP archive"),
        Case("control_chars.tsv", bytes((i * 7 + 1) % 31 + 1 for i in range(3000)), "control characters"),
        Case("spreadsheet.xlsx", b"PK\x03\x04 not really", "unsupported extension '.xlsx'"),
        Case("notes.txt", good, "unsupported extension '.txt'"),
        Case("wrong_field_count.csv", _lines("text,label", "hi there,a", "hello,b", "one,two,a", "ok,b"),
             "line 4: expected 2 fields"),
        Case("wrong_field_count.tsv", _lines("text\tlabel", "hi\ta", "hello", "ok\tb"), "line 3: expected 2 fields"),
        Case("unclosed_quote.csv", _lines("text,label", "fine,a", '"never closed,b', "more,a"),
             "row starting at line 3: cannot be parsed"),
        Case("stray_quote.csv", _lines("text,label", "fine,a", '"quoted"tail,b'), "line 3: cannot be parsed"),
        Case("no_text_column.csv", _labelled(six, ab, "id,label"), "no text column found"),
        Case("no_label_column.csv", _labelled(six, ab, "text,score"), "no label column found"),
        Case("no_header.csv", _labelled(six[1:], ab[1:], "a b,x"), "Does the file have a header row"),
        Case("ambiguous_text.csv", _lines("text,sentence,label", *(f"{t},{t},{lab}" for t, lab in zip(six, ab, strict=True))),
             "text column is ambiguous"),
        Case("ambiguous_label.csv", _lines("text,label,intent", *(f"{t},{lab},{lab}" for t, lab in zip(six, ab, strict=True))),
             "label column is ambiguous"),
        Case("duplicate_header.csv", _lines("text,label,Label", "a,x,x", "b,y,y"), "more than once"),
        Case("empty_text.csv", _lines("text,label", "one,a", ",b", "three,a", "  ,b", "five,a"),
             "2 row(s) have empty text (lines 3, 5)"),
        Case("missing_label.csv", _lines("text,label", "one,a", "two,", "three,a", "four,b"),
             "have no label (line 3)"),
        Case("single_label.csv", _labelled(six, ["x"] * 6), "every row has the same label 'x'"),
        Case("too_many_labels.csv", _labelled(six[:5], ["p", "q", "r", "s", "p"]), "4 labels but only 5 rows"),
        Case("single_row_labels.csv", _labelled([f"t{i}" for i in range(20)], ["big"] * 6 + ["other"] * 6
                                                + [f"u{i}" for i in range(8)]), "8 of 10 labels occur in a single row"),
        Case("bad_syntax.json", b'[\n {"text": "a", "label": "x"},\n {"text": "b" "label": "y"}\n]\n',
             "line 3: not valid JSON"),
        Case("columns_dict.json", json.dumps({"text": ["a", "b"], "label": ["x", "y"]}).encode(),
             "expected a JSON list of records"),
        Case("bad_line.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", label}\n',
             "line 3: not valid JSON"),
        Case("array_line.jsonl", b'{"text": "a", "label": "x"}\n["b", "y"]\n', "line 2: expected a JSON object"),
        Case("multi_label.jsonl", jsonl_bytes([{"text": "a", "label": "x"}, {"text": "b", "label": ["x", "y"]}]),
             "line 2: the label holds several labels"),
        Case("null_label.jsonl", jsonl_bytes([{"text": "a", "label": "x"}, {"text": "b", "label": None}]),
             "have no label (line 2)"),
        Case("missing_key.json", json.dumps([{"text": "a", "label": "x"}, {"label": "y"}]).encode(),
             "have empty text (record 2)"),
        Case("truncated.parquet", parquet_bytes(frame())[:200], "could not be read as Parquet"),
        Case("csv_named.parquet", good, "no PAR1 signature"),
        Case("too_big.csv", good * 3, "above the 0.001 MB limit", {"max_file_mb": 0.001}),
        Case("wrong_label_col.csv", good, "has no column 'intent'", {"label_col": "intent"}),
        Case("same_columns.csv", good, "are both 'text'", {"label_col": "text"}),
        Case("folder_no_train", {"data.csv": good, "test.csv": good}, "has no train file"),
        Case("folder_two_trains", {"train.csv": good, "train.jsonl": jsonl_bytes(records())},
             "several train files"),
        Case("folder_bad_test", {"train.csv": good, "test.csv": _lines("text,label", "ok,balance", ",transfer")},
             "have empty text (line 3)"),
    ]


def good_cases() -> list[Case]:
    df = frame()
    cp1252 = df.assign(text=df["text"] + " caf\u00e9 \u2019").to_csv(index=False, lineterminator="\n")
    renamed = [{"utterance": r["text"], "intent": r["label"]} for r in records()]
    numeric = [{"sentence": r["text"], "category": LABELS.index(r["label"])} for r in records()]
    return [
        Case("intents.csv", csv_bytes(df)),
        Case("intents.tsv", csv_bytes(df, sep="\t")),
        Case("intents.jsonl", jsonl_bytes(renamed)),
        Case("intents.json", json.dumps(numeric, indent=1).encode()),
        Case("intents.parquet", parquet_bytes(df)),
        Case("bom.csv", b"\xef\xbb\xbf" + csv_bytes(df)),
        Case("semicolons.csv", csv_bytes(df, sep=";")),
        Case("cp1252.csv", cp1252.encode("cp1252"), "read as Windows-1252"),
        Case("custom_columns.csv", csv_bytes(df.rename(columns={"text": "review", "label": "stars"})), "",
             {"text_col": "review", "label_col": "stars"}),
        Case("split_folder", {"train.csv": csv_bytes(df), "dev.jsonl": jsonl_bytes(records(3)),
                              "test.tsv": csv_bytes(pd.DataFrame(records(4)), sep="\t")}),
    ]


def write(cases: list[Case], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        if isinstance(case.content, dict):
            for name, content in case.content.items():
                (folder / case.name).mkdir(exist_ok=True)
                (folder / case.name / name).write_bytes(content)
        else:
            (folder / case.name).write_bytes(case.content)


BAD = bad_cases()
GOOD = good_cases()

if __name__ == "__main__":
    write(BAD, HERE / "bad")
    write(GOOD, HERE / "good")
    print(f"wrote {len(BAD)} bad and {len(GOOD)} good cases under {HERE}")
