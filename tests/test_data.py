"""Data intake: every bad file fails with a clear message, every good file loads with the contract's shape."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from clm_explore.cli import main
from clm_explore.config import DataConfig
from clm_explore.data import (
    AnnotatedData,
    DataError,
    column_names,
    data_report,
    label_order,
    load_data,
    load_upload,
    read_texts,
)

CORPUS = Path(__file__).parent / "data"
_spec = importlib.util.spec_from_file_location("make_bad_corpus", CORPUS / "make_bad_corpus.py")
corpus = importlib.util.module_from_spec(_spec)
sys.modules["make_bad_corpus"] = corpus  # dataclasses look their module up there
_spec.loader.exec_module(corpus)
BAD = {case.name: case for case in corpus.BAD}
GOOD = {case.name: case for case in corpus.GOOD}
_FLAGS = {"max_file_mb": "--max-file-mb", "text_col": "--text-col", "label_col": "--label-col"}


def _cli_args(case) -> list[str]:
    return [arg for key, value in case.cfg.items() for arg in (_FLAGS[key], str(value))]


def _check_contract(data: AnnotatedData) -> None:
    for name in ("train", "validation", "test"):
        frame = data.split(name)
        assert list(frame.columns) == ["text", "label"]
        assert list(frame.index) == list(range(len(frame)))
        assert all(isinstance(v, str) for v in frame["text"]) and all(isinstance(v, str) for v in frame["label"])
    assert data.labels == sorted(set(data.train["label"]))
    assert (data.label_ids("train") >= 0).all()


def test_corpus_is_big_enough():
    assert len(BAD) >= 20
    assert {Path(n).suffix for n in GOOD} >= {".csv", ".tsv", ".jsonl", ".json", ".parquet"}


@pytest.mark.parametrize("name", sorted(n for n in BAD if not n.endswith(".parquet")))
def test_bad_corpus_matches_generator(name):
    case = BAD[name]
    path = CORPUS / "bad" / name
    if isinstance(case.content, dict):
        assert {f.name: f.read_bytes() for f in path.iterdir()} == case.content
    else:
        assert path.read_bytes() == case.content, "run python tests/data/make_bad_corpus.py"


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_raises_clear_error(name):
    case = BAD[name]
    with pytest.raises(DataError) as info:
        load_data(CORPUS / "bad" / name, DataConfig(**case.cfg))
    message = str(info.value)
    assert name in message
    assert case.phrase in message
    assert "\n" not in message, "one paragraph"


@pytest.mark.parametrize("name", sorted(n for n, c in BAD.items() if isinstance(c.content, bytes)))
def test_bad_upload_raises_same_error(name):
    case = BAD[name]
    with pytest.raises(DataError) as info:
        load_upload(case.content, name, DataConfig(**case.cfg))
    assert name in str(info.value)
    assert case.phrase in str(info.value)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_via_cli_exits_2_without_traceback(name, capsys):
    code = main(["validate", str(CORPUS / "bad" / name), *_cli_args(BAD[name])])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    assert captured.err.startswith("error: ") and name in captured.err


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_file_loads(name):
    case = GOOD[name]
    data = load_data(CORPUS / "good" / name, DataConfig(**case.cfg))
    _check_contract(data)
    rows = len(data.train) + len(data.validation) + len(data.test)
    assert rows == 30 if name != "split_folder" else rows == 30 + 9 + 12
    assert len(data.labels) == 3
    if case.phrase:
        assert any(case.phrase in note for note in data.notes)


@pytest.mark.parametrize("name", sorted(n for n, c in GOOD.items() if isinstance(c.content, bytes)))
def test_good_upload_loads(name):
    case = GOOD[name]
    data = load_upload(case.content, name, DataConfig(**case.cfg))
    _check_contract(data)
    assert data.source == name


def test_texts_are_kept_verbatim():
    data = load_data(CORPUS / "good" / "intents.csv")
    texts = set(pd.concat([data.train, data.validation, data.test])["text"])
    assert 'my "available" balance' in texts
    assert "check my balance, now" in texts
    assert "pay someone\nnew line inside" in texts


def test_cp1252_text_is_decoded():
    data = load_data(CORPUS / "good" / "cp1252.csv")
    assert data.train["text"].str.endswith("caf\u00e9 \u2019").all()


def test_numeric_labels_become_strings():
    assert load_data(CORPUS / "good" / "intents.json").labels == ["0", "1", "2"]


def test_utf16_with_bom_loads(tmp_path):
    path = tmp_path / "utf16.csv"
    path.write_bytes(corpus.csv_bytes(corpus.frame()).decode().encode("utf-16"))
    data = load_data(path)
    assert len(data.labels) == 3
    assert any("UTF-16" in note for note in data.notes)


def test_split_folder_keeps_given_splits_and_dev_alias():
    data = load_data(CORPUS / "good" / "split_folder")
    assert (len(data.train), len(data.validation), len(data.test)) == (30, 9, 12)
    assert data.notes == []


def test_carved_splits_are_seeded_stratified_and_lose_nothing():
    first = load_data(CORPUS / "good" / "intents.csv", DataConfig(seed=3))
    again = load_data(CORPUS / "good" / "intents.csv", DataConfig(seed=3))
    other = load_data(CORPUS / "good" / "intents.csv", DataConfig(seed=4))
    assert first.test.equals(again.test)
    assert not first.test.equals(other.test)
    assert first.test["label"].value_counts().tolist() == [2, 2, 2]
    assert first.validation["label"].value_counts().tolist() == [1, 1, 1]
    everything = pd.concat([first.train, first.validation, first.test])
    assert sorted(everything["text"]) == sorted(corpus.frame()["text"])
    assert any("stratified by label (seed 3)" in note for note in first.notes)


def test_validation_fraction_zero_gives_empty_validation():
    data = load_data(CORPUS / "good" / "intents.csv", DataConfig(validation_fraction=0.0))
    assert len(data.validation) == 0 and list(data.validation.columns) == ["text", "label"]
    # asked for: not a problem (the new-features review: validate --strict exited 1 on it)
    assert "The validation split is empty." not in data_report(data).problems


def test_labels_with_one_row_stay_in_train_and_are_noted(tmp_path):
    rows = corpus.records() + [{"text": "a lonely intent", "label": "lonely"}]
    path = tmp_path / "lonely.jsonl"
    path.write_bytes(corpus.jsonl_bytes(rows))
    data = load_data(path)
    assert "lonely" in data.labels
    assert any("1 label(s) with a single row stay in train" in note for note in data.notes)


def test_too_few_rows_to_stratify_falls_back_to_random(tmp_path):
    rows = [{"text": f"text {i}", "label": f"l{i % 8}"} for i in range(16)]
    path = tmp_path / "small.jsonl"
    path.write_bytes(corpus.jsonl_bytes(rows))
    data = load_data(path)
    assert len(data.train) + len(data.validation) + len(data.test) == 16
    assert any("at random, not stratified" in note for note in data.notes)


def test_size_is_checked_before_reading(monkeypatch):
    def refuse(self):
        raise AssertionError("read before the size check")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DataError, match="above the 0.001 MB limit"):
        load_data(CORPUS / "bad" / "too_big.csv", DataConfig(max_file_mb=0.001))


def test_missing_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(tmp_path / "nope.csv")


def test_label_ids_map_unseen_labels_to_minus_one():
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "y", "x"]})
    data = AnnotatedData(frame, frame, pd.DataFrame({"text": ["d"], "label": ["z"]}), ["x", "y"])
    assert data.label_ids("train").tolist() == [0, 1, 0]
    assert data.label_ids("test").tolist() == [-1]


def test_integer_labels_keep_their_numeric_order():
    # A table labelled 0..11: as text '10' would sort before '2', and the model's id 2 would mean label 10.
    frame = pd.DataFrame({"text": [f"text number {i}" for i in range(48)], "label": [i % 12 for i in range(48)]})
    data = load_data(frame)
    assert data.labels == [str(i) for i in range(12)]
    assert data.label_ids("train").tolist() == data.train["label"].astype(int).tolist()
    assert label_order(["b", "10", "a"]) == ["10", "a", "b"]  # mixed: as text
    assert label_order(["-1", "10", "2"]) == ["-1", "2", "10"]


def test_labels_written_as_decimals_keep_their_numeric_order(tmp_path):
    # A float column (a spreadsheet, or pandas with a missing value once) writes 0..11 as '0.0'..'11.0': as text
    # '10.0' sorted before '2.0' and the model's id 2 meant label 10.
    path = tmp_path / "floats.csv"
    path.write_text("text,label\n" + "".join(f"text number {i},{i % 12}.0\n" for i in range(48)))
    data = load_data(path)
    assert data.labels == [str(i) for i in range(12)]  # read as whole numbers ('0.0' before the data review)
    assert data.label_ids("train").tolist() == data.train["label"].astype(float).astype(int).tolist()
    assert label_order(["2.5e1", "-0.5", "3", ".5"]) == ["-0.5", ".5", "3", "2.5e1"]
    big = ["100000000000000000001", "99999999999999999999"]  # past a float's precision (floats order them wrongly)
    assert label_order(big) == ["99999999999999999999", "100000000000000000001"]
    assert label_order(["10.0", "nan", "2.0"]) == ["10.0", "2.0", "nan"]  # not every label a number: as text
    assert label_order(["1e99999999999999999999", "2"]) == ["1e99999999999999999999", "2"]  # no exponent that large


def test_hand_built_data_gets_text_columns_and_refuses_missing_values():
    train = pd.DataFrame({"text": ["a", "b", 3], "label": [0, 1, 0]})
    data = AnnotatedData(train, train.iloc[:1], train.iloc[:1], [0, 1])
    assert data.labels == ["0", "1"] and data.train["label"].tolist() == ["0", "1", "0"]
    assert data.train["text"].tolist() == ["a", "b", "3"]
    json.dumps(data.labels)  # the saved config names them; an int64 label failed there, after training
    with pytest.raises(DataError, match="1 row.* without a text or label .*index 1"):
        AnnotatedData(pd.DataFrame({"text": ["a", None], "label": ["x", "y"]}), train, train, ["x", "y"])


def _frame(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "label"])


def test_report_counts_duplicates_leakage_unseen_and_rare_labels():
    train = _frame([("a", "x"), ("a", "x"), ("b", "x"), ("c", "y"), ("c", "z")] + [(f"x{i}", "x") for i in range(7)])
    validation = _frame([("b", "x"), ("v", "y")])
    test = _frame([("c", "y"), ("t", "new"), ("u", "x")])
    data = AnnotatedData(train, validation, test, ["x", "y", "z"], source="hand", notes=["a note"])
    report = data_report(data)
    assert report.rows == 17 and report.splits == {"train": 12, "validation": 2, "test": 3}
    assert report.duplicates == {"train": 2, "validation": 0, "test": 0}
    assert report.conflicting["train"] == 1
    assert report.leakage["pairs"] == {"train/validation": 1, "train/test": 1, "validation/test": 0}
    assert report.leakage["count"] == 2 and report.leakage["examples"] == ["b", "c"]
    assert report.unseen_labels == {"validation": [], "test": ["new"]}
    assert report.rare_labels == {"y": 1, "z": 1}
    assert report.label_counts["new"] == {"train": 0, "validation": 0, "test": 1}
    assert report.label_counts["x"]["train"] == 10
    # the loader's notes, then what 3 test rows are worth and the trained label test lacks (the few-shot review)
    assert report.notes == ["a note", "The test split holds 3 rows: one row is 33.3 points of accuracy, so runs' "
                            "figures on it move in large steps; compare runs over several seeds.",
                            "1 trained label(s) have no test row (z): accuracy and macro-F1 say nothing of them."]
    problems = " ".join(report.problems)
    for phrase in ("repeat a text", "more than one label", "leakage", "never in train", "fewer than 5 train rows",
                   "imbalanced", "abstains below a confidence threshold chosen on validation"):
        assert phrase in problems


def test_report_lengths_and_json():
    data = AnnotatedData(_frame([("one two", "x"), ("three", "y")]), _frame([("a b c d", "x")]),
                         _frame([("e", "y")]), ["x", "y"])
    report = data_report(data).to_dict()
    json.dumps(report)
    assert report["lengths"]["all"]["words"] == {"min": 1, "median": 1.5, "p95": 4, "max": 4}
    assert report["lengths"]["train"]["chars"]["max"] == 7
    assert report["labels"] == ["x", "y"]
    assert report["problems"] == ["2 label(s) have fewer than 5 train rows: x (1), y (1)."]
    spaceless = AnnotatedData(_frame([("我想退款", "x"), ("iPhone的电池", "y")]), _frame([("返金してください", "x")]),
                              _frame([("hello world", "y")]), ["x", "y"])
    words = data_report(spaceless).to_dict()["lengths"]
    # Chinese and Japanese characters count one word each, as the tokenizer reads them (each text read "1 word")
    assert words["train"]["words"]["max"] == 4 and words["validation"]["words"]["max"] == 8


def test_read_texts_finds_the_text_column_like_load_data_in_every_format(tmp_path):
    csv_file = tmp_path / "q.csv"
    csv_file.write_text('Question,id\n"where is my card, please",1\nhow do I top up,2\n')
    assert read_texts(csv_file) == ["where is my card, please", "how do I top up"]  # any case, no label
    json_file = tmp_path / "q.json"
    json_file.write_text('[{"content": "lost card"}, {"content": "refund"}]')
    assert read_texts(json_file) == ["lost card", "refund"]
    txt = tmp_path / "q.txt"
    txt.write_text("one\n\ntwo\n")
    assert read_texts(txt) == ["one", "two"]
    txt.write_text("first text\x0cstill first\nsecond \u2028 same line\r\nthird\n")  # a PDF's form feed, U+2028
    assert read_texts(txt) == ["first text\x0cstill first", "second \u2028 same line", "third"]  # 5 before
    assert read_texts(csv_file, text_col="id") == ["1", "2"]


@pytest.mark.parametrize(("content", "phrase"), [
    ("body,id\nx,1\n", "no text column found"),
    ("text,id\n,1\nok,2\n", r"have empty text \(line 2\)"),
])
def test_read_texts_refuses_with_a_message(tmp_path, content, phrase):
    file = tmp_path / "q.csv"
    file.write_text(content)
    with pytest.raises(DataError, match=phrase):
        read_texts(file)
    with pytest.raises(DataError, match="does not exist"):
        read_texts(tmp_path / "missing.csv")


def _rows(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row number {i}" for i in range(n)], "label": ["a", "b"] * (n // 2)})


def test_a_small_parquet_file_with_too_many_rows_is_refused_before_its_columns_are_read(tmp_path):
    file = tmp_path / "bomb.parquet"
    pd.DataFrame({"text": ["the same text"] * 5000, "label": ["a", "b"] * 2500}).to_parquet(file)
    assert file.stat().st_size < 10_000  # dictionary-encoded: small on disk, 5,000 rows in memory
    with pytest.raises(DataError, match="5,000 rows, above the 1,000 row limit"):
        load_data(file, DataConfig(max_rows=1000))
    with pytest.raises(DataError, match=r"bomb.parquet \(decoded\) is .* MB, above the 0.05 MB limit"):
        load_data(file, DataConfig(max_file_mb=0.05))  # 65 KB of text once decoded
    assert len(load_data(file).train) > 0  # within the defaults it loads


def test_too_many_rows_labels_or_record_keys_are_refused(tmp_path):
    csv_file = tmp_path / "many.csv"
    _rows(200).to_csv(csv_file, index=False)
    with pytest.raises(DataError, match=r"more rows than the 100 row limit \(reading stopped at line 102\)"):
        load_data(csv_file, DataConfig(max_rows=100))  # parsing stops there: the total is not known
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": [f"l{i // 2}" for i in range(40)]}).to_csv(labels, index=False)
    with pytest.raises(DataError, match="20 different labels, above the 10 label limit"):
        load_data(labels, DataConfig(max_labels=10))
    keys = tmp_path / "keys.jsonl"
    keys.write_text("\n".join(json.dumps({"text": "t", "label": "ab"[i % 2], f"k{i}": 1}) for i in range(200)))
    with pytest.raises(DataError, match="more than 100 different keys"):
        load_data(keys)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="nested too deeply"):
        load_data(deep)


def test_column_names_come_from_the_schema_or_header_without_the_rows(tmp_path):
    from clm_explore.data import column_names

    _rows(10).to_parquet(tmp_path / "d.parquet")
    _rows(10).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "d.json").write_text(json.dumps([{"utterance": "x", "intent": "a"}, {"utterance": "y", "extra": 1}]))
    assert column_names(tmp_path / "d.parquet") == ["text", "label"]
    assert column_names(tmp_path / "d.csv") == ["text", "label"]
    assert column_names(tmp_path / "d.json") == ["utterance", "intent", "extra"]
    assert column_names(tmp_path / "d.csv", ".parquet") == []  # unreadable as said: load_data explains


def _parquet_calls(monkeypatch) -> list[str]:
    """Record every ParquetFile method call that decodes rows."""
    import pyarrow.parquet as pq

    calls: list[str] = []
    for method in ("read", "read_row_group", "read_row_groups", "iter_batches"):
        real = getattr(pq.ParquetFile, method)

        def spy(self, *args, _real=real, _method=method, **kwargs):
            calls.append(_method)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(pq.ParquetFile, method, spy)
    return calls


def test_a_parquet_file_too_big_once_decompressed_is_refused_from_its_footer_alone(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = tmp_path / "plain.parquet"
    texts = [("a" * 10_000) + str(i) for i in range(30)]  # distinct values: no dictionary, 300 KB decoded
    table = pa.table({"text": texts, "label": ["ab"[i % 2] for i in range(30)]})
    pq.write_table(table, file, compression="zstd", use_dictionary=False)
    assert file.stat().st_size < 5_000
    calls = _parquet_calls(monkeypatch)
    with pytest.raises(DataError, match=r"plain.parquet \(uncompressed\) is 0.29 MB, above the 0.1 MB limit"):
        load_data(file, DataConfig(max_file_mb=0.1))
    assert calls == []  # refused from the footer's sizes: no row was decoded


def test_a_dictionary_encoded_parquet_file_is_measured_batch_by_batch_not_decoded_whole(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    file = tmp_path / "dict.parquet"
    pd.DataFrame({"text": ["the same text"] * 20_000, "label": ["a", "b"] * 10_000}).to_parquet(file)
    calls = _parquet_calls(monkeypatch)
    batches: list[int] = []
    spy = pq.ParquetFile.iter_batches

    def counting(self, *args, **kwargs):
        for batch in spy(self, *args, **kwargs):
            batches.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    with pytest.raises(DataError, match=r"dict.parquet \(decoded\) is at least .* MB, above the 0.05 MB limit"):
        load_data(file, DataConfig(max_file_mb=0.05))
    assert "read" not in calls
    assert 0 < sum(batches) < 20_000  # stopped once past the cap


def test_a_delta_encoded_parquet_text_column_loads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = tmp_path / "delta.parquet"
    table = pa.table({"text": [f"a text number {i}" for i in range(60)], "label": ["ab"[i % 2] for i in range(60)]})
    pq.write_table(table, file, use_dictionary=["label"], column_encoding={"text": "DELTA_BYTE_ARRAY"})
    assert len(load_data(file).labels) == 2  # pyarrow cannot read such a column as a dictionary


def test_the_row_cap_stops_parsing_at_the_first_row_past_it(tmp_path, monkeypatch):
    import csv

    rows = [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(5_000)]
    (tmp_path / "many.csv").write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    (tmp_path / "many.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "many.json").write_text(json.dumps(rows[:200]))
    parsed: list[object] = []
    real_reader, real_loads = csv.reader, json.loads

    class CountingReader:
        def __init__(self, *args, **kwargs):
            self._reader = real_reader(*args, **kwargs)

        def __iter__(self):
            return self

        def __next__(self):
            parsed.append(row := next(self._reader))
            return row

        @property
        def line_num(self):
            return self._reader.line_num

    monkeypatch.setattr(csv, "reader", CountingReader)
    monkeypatch.setattr(json, "loads", lambda text, **kw: parsed.append(text) or real_loads(text, **kw))
    for name in ("many.csv", "many.jsonl"):
        parsed.clear()
        with pytest.raises(DataError, match=rf"{name} has more rows than the 100 row limit \(reading stopped"):
            load_data(tmp_path / name, DataConfig(max_rows=100))
        assert len(parsed) <= 102  # the header and 101 rows, not 5,000
    monkeypatch.setattr(pd.DataFrame, "from_records", lambda *a, **k: pytest.fail("table built before the row cap"))
    with pytest.raises(DataError, match="many.json has 200 rows, above the 100 row limit"):
        load_data(tmp_path / "many.json", DataConfig(max_rows=100))


@pytest.mark.parametrize(("name", "cell"), [("long.csv", '"{}"'), ("bare.csv", "{}"), ("long.tsv", "{}")])
def test_a_cell_over_128_kib_loads(tmp_path, name, cell):
    sep = "\t" if name.endswith(".tsv") else ","
    long_text = ("word, " if cell.startswith('"') else "word ") * 40_000  # 200-240 KB; csv's default limit: 128 KiB
    rows = [cell.format(long_text) + f"{sep}a"] + [f"short {i}{sep}{'ab'[i % 2]}" for i in range(30)]
    (tmp_path / name).write_text(f"text{sep}label\n" + "\n".join(rows) + "\n")
    data = load_data(tmp_path / name)
    texts = pd.concat([data.train, data.validation, data.test])["text"]
    assert texts.str.len().max() == len(long_text)


def test_carving_keeps_every_label_in_train_when_it_cannot_stratify(tmp_path):
    rows = [{"text": f"text {i}", "label": f"l{i % 200}"} for i in range(400)]  # 200 labels x 2 rows
    path = tmp_path / "rare.jsonl"
    path.write_bytes(corpus.jsonl_bytes(rows))
    data = load_data(path)
    again = load_data(path)
    assert data.labels == sorted({r["label"] for r in rows})  # a plain random split lost some
    assert data.test.equals(again.test) and data.validation.equals(again.validation)
    assert len(data.train) + len(data.validation) + len(data.test) == 400 and len(data.test) > 0
    assert any("at random, not stratified" in n and "went back to train so that every label keeps a row there" in n
               for n in data.notes)


def test_carving_keeps_copies_of_a_text_in_one_split(tmp_path):
    texts = [f"text {i % 100}" for i in range(300)]  # every text three times
    path = tmp_path / "copies.csv"
    _frame([(t, "ab"[int(t.split()[1]) % 2]) for t in texts]).to_csv(path, index=False)
    data = load_data(path)
    report = data_report(data)
    # Copies spread over train and test would be leakage the carving made; the validation carve draws rows as the
    # published benchmarks did, and its note counts the texts it spread.
    assert report.leakage["pairs"]["train/test"] == report.leakage["pairs"]["validation/test"] == 0
    assert len(data.train) + len(data.validation) + len(data.test) == 300
    assert data.test["label"].value_counts().tolist() == [30, 30]  # still stratified: 10 texts per label
    assert any("200 row(s) repeat an earlier text; all copies of a text went to the same split" in n
               for n in data.notes)
    spread = report.leakage["pairs"]["train/validation"]
    assert spread > 0 and any(f"{spread} text(s) have copies in both train and validation" in n for n in data.notes)


def test_column_names_are_the_names_the_loader_accepts(tmp_path):
    from clm_explore.data import column_names

    rows = "\n".join(f"caf\u00e9 {i},{'ab'[i % 2]}" for i in range(30)) + "\n"
    files = {
        "semi.csv": ("review_txt;sentiment\n" + rows.replace(",", ";")).encode(),
        "cp.csv": ("review_txt,sentiment\n" + rows).encode("cp1252"),
        "utf16.csv": ("review_txt,sentiment\n" + rows).encode("utf-16"),
        "spaced.csv": (" review_txt , sentiment \n" + rows).encode(),
        "tab.tsv": ("review_txt\tsentiment\n" + rows.replace(",", "\t")).encode(),
        "lines.jsonl": "".join(json.dumps({"review_txt": f"t{i}", "sentiment": "ab"[i % 2]}) + "\n"
                               for i in range(30)).encode(),
    }
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
        columns = column_names(tmp_path / name)
        assert columns == ["review_txt", "sentiment"], name
        data = load_data(tmp_path / name, DataConfig(text_col=columns[0], label_col=columns[1]))
        assert data.labels == ["a", "b"], name
    (tmp_path / "dupe.csv").write_text("text,Text,label\na,a,x\n")
    assert column_names(tmp_path / "dupe.csv") == []  # the loader refuses the header: it explains why


def test_column_names_read_only_the_first_lines(tmp_path, monkeypatch):
    from clm_explore import data as data_module
    from clm_explore.data import column_names

    monkeypatch.setattr(data_module, "_HEAD_BYTES", 100)  # two JSONL records
    body = "".join(f"some text number {i},{'ab'[i % 2]}\n" for i in range(50))
    (tmp_path / "d.csv").write_text("review,sentiment\n" + body)
    (tmp_path / "u16.csv").write_bytes(("review,sentiment\n" + body).encode("utf-16"))
    lines = [json.dumps({"review": f"text {i}", "sentiment": "a"}) for i in range(50)]
    (tmp_path / "d.jsonl").write_text("\n".join([*lines[:1], json.dumps({"review": "x", "extra": 1}), *lines[1:]]))
    (tmp_path / "one.jsonl").write_text(json.dumps({"review": "x" * 200, "sentiment": "a"}))  # longer than the head
    assert column_names(tmp_path / "d.csv") == ["review", "sentiment"]
    assert column_names(tmp_path / "u16.csv") == ["review", "sentiment"]
    assert column_names(tmp_path / "d.jsonl") == ["review", "sentiment", "extra"]
    assert column_names(tmp_path / "one.jsonl") == ["review", "sentiment"]


def test_one_bad_byte_decodes_only_its_line_as_cp1252(tmp_path):
    path = tmp_path / "mixed.csv"
    body = "".join(f"caf\u00e9 {i},{'ab'[i % 2]}\n" for i in range(30)).encode()
    path.write_bytes(b"text,label\n" + body[:100] + b"na\xefve,a\n" + body[100:])
    data = load_data(path)
    texts = set(pd.concat([data.train, data.validation, data.test])["text"])
    assert "na\u00efve" in texts and "caf\u00e9 0" in texts and "caf\u00e9 29" in texts  # no 'cafÃ©'
    bad_line = body[:100].count(b"\n") + 2
    assert any(f"not valid UTF-8 on 1 line(s) (line {bad_line}); their bytes that are not UTF-8 were read as "
               "Windows-1252" in note
               for note in data.notes)


def test_report_names_labels_that_differ_only_in_case_or_spacing():
    train = _frame([(f"t{i}", ["Pos", "pos", "POS", "neg", "very  bad", "Very bad"][i % 6]) for i in range(36)])
    data = AnnotatedData(train, train.iloc[:0], train.iloc[:0], sorted(set(train["label"])))
    problems = " ".join(data_report(data).problems)
    assert "2 group(s) of labels differ only in upper/lower case, spacing, invisible characters or the way a number" \
        in problems
    assert "'POS' / 'Pos' / 'pos'" in problems and "'Very bad' / 'very  bad'" in problems
    assert data.labels == ["POS", "Pos", "Very bad", "neg", "pos", "very  bad"]  # not merged: the user decides


def test_report_names_labels_that_look_alike_across_formats_and_unicode_forms():
    labels = ["1", "1.0", "caf\u00e9", "cafe\u0301", "age_limit", "age_limit\u200b", "2", "10"]
    train = _frame([(f"t{i}", labels[i % len(labels)]) for i in range(48)])
    test = _frame([("u0", "2.0"), ("u1", "10")])  # a JSON file's 2.0 reads "2", a CSV's "2.0" stays so
    data = AnnotatedData(train, train.iloc[:0], test, sorted(set(train["label"])))
    problems = " ".join(data_report(data).problems)
    for group in ("'1' / '1.0'", "'cafe\u0301' / 'caf\u00e9'", "'age_limit' / 'age_limit\\u200b'", "'2' / '2.0'"):
        assert group in problems, group  # each read "Problems: none" (the last: a label "never in train" alone)
    assert "'10'" not in problems  # one spelling: nothing to say
    distinct = ["1.1", "1.10", "1_1", "11", "1e3", "1000", "\u0663", "3", "12345678901234567890",
                "12345678901234567891", "\U0001F468\u200d\U0001F469", "\U0001F468\U0001F469"]
    train = _frame([(f"t{i}", distinct[i % len(distinct)]) for i in range(48)])
    data = AnnotatedData(train, train.iloc[:0], train.iloc[:0], sorted(set(train["label"])))
    assert not any("differ only" in problem for problem in data_report(data).problems)  # codes, ids, emoji differ


@pytest.mark.parametrize(("name", "sizes", "digest"), [
    ("banking77", (9002, 1001), "5e162580ff"), ("trec6", (4906, 546), "f1084452d3"),
    ("hint3_sofmattress", (295, 33), "3df65a3939"), ("hint3_curekart", (539, 60), "573380d9e1"),
    ("hint3_powerplay11", (424, 47), "2e9942d8f9")])
def test_the_benchmark_sets_load_to_the_rows_their_published_figures_used(name, sizes, digest):
    import hashlib

    from tests.conftest import SHARED_DATA

    data = load_data(SHARED_DATA / name)
    rows = "".join(data.train["text"] + "|" + data.train["label"]) + "".join(data.validation["text"])
    rows += "".join(data.test["text"])
    # The digests are those of the code every earlier session benchmarked with (e760547): a carve that draws other
    # rows would move every published figure.
    assert (len(data.train), len(data.validation)) == sizes
    assert hashlib.md5(rows.encode()).hexdigest()[:10] == digest


def test_a_random_carve_keeps_every_label_in_train_and_a_label_of_a_shared_text_too(tmp_path):
    texts = [(f"t{i}-{j}", f"L{i}") for i in range(3) for j in range(20)] + [("t0-0", "RARE")]
    path = tmp_path / "shared.csv"
    _frame(texts).to_csv(path, index=False)
    for seed in range(5):  # RARE's one text is also an L0 row: it stays in train with RARE
        assert "RARE" in load_data(path, DataConfig(seed=seed)).labels
    # A label whose texts other labels' rows stand for in the grouped draw rides out with them unless returned.
    rows = [(f"t{i}", "M") for i in range(10)] + [(f"u{i}", "N") for i in range(10)] + [("t1", "L"), ("u1", "L")]
    shared = tmp_path / "rides.csv"
    _frame(rows).to_csv(shared, index=False)
    for seed in range(60):
        assert load_data(shared, DataConfig(seed=seed, test_fraction=0.45)).labels == ["L", "M", "N"], seed


def _parquet_bytes(table, **options) -> bytes:
    import io

    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
    return buffer.getvalue()


def test_only_the_columns_that_may_be_picked_are_read(tmp_path):
    import pyarrow as pa

    from clm_explore.data import _parse_table

    texts, labels = ["good card", "bad rate", "card ok", "rate up"] * 3, ["a", "b"] * 6
    # An unused column holding a list of ten million nulls: a 1 KB file (with 100 million, 2.3 GB once converted).
    nulls = pa.ListArray.from_arrays(pa.array([0] * 12 + [10_000_000], pa.int32()), pa.nulls(10_000_000))
    raw = _parquet_bytes(pa.table({"text": texts, "label": labels, "extra": nulls}))
    assert len(raw) < 10_000 and len(load_upload(raw, "x.parquet").labels) == 2
    (tmp_path / "x.parquet").write_bytes(raw)
    pairs = list(enumerate(zip(texts, labels, strict=True)))
    rows = [{"text": t, "label": x, "meta": {"deep": [1, 2, 3]}, "n": i} for i, (t, x) in pairs]
    files = {"x.jsonl": "\n".join(json.dumps(r) for r in rows), "x.json": json.dumps(rows),
             "x.parquet": None, "x.csv": "id,text,label,note\n" + "".join(f"{i},{t},{x},n\n" for i, (t, x) in pairs)}
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_text(content)
        table = _parse_table(tmp_path / name, (tmp_path / name).read_bytes, 1, DataConfig(), [])
        assert list(table.frame.columns) == ["text", "label"], name  # the file's other columns are not held
        assert table.columns[-1] in {"n", "note", "extra"} and len(table.positions) == 12
    named = DataConfig(text_col="NOTE")  # a column asked for by name (any case) is kept
    assert "note" in _parse_table(tmp_path / "x.csv", (tmp_path / "x.csv").read_bytes, 1, named, []).frame


def test_a_nested_parquet_text_column_and_repeated_names_are_refused_in_plain_words(tmp_path):
    import pyarrow as pa

    from clm_explore.data import column_names

    nested = pa.table({"text": pa.array([[None] * 3] * 4, type=pa.list_(pa.null())), "label": ["a", "b"] * 2})
    with pytest.raises(DataError, match=r"the text column 'text' holds list<.*null> values, not one text per row"):
        load_upload(_parquet_bytes(nested), "x.parquet")
    twice = pa.Table.from_arrays([pa.array(["x", "y"] * 3), pa.array(["a", "b"] * 3), pa.array(["z"] * 6)],
                                 names=["text", "label", "text"])
    (tmp_path / "dup.parquet").write_bytes(_parquet_bytes(twice))
    with pytest.raises(DataError, match="names column\\(s\\) 'text' more than once"):
        load_data(tmp_path / "dup.parquet")
    assert column_names(tmp_path / "dup.parquet") == []  # the app's picker offers none; the loader says why


def test_a_json_file_of_too_many_values_is_refused_before_it_is_parsed(monkeypatch):
    import clm_explore.data as data_module

    monkeypatch.setattr(data_module, "_MAX_JSON_VALUES", 100)
    rows = [{"text": f"card {i}", "label": "ab"[i % 2]} for i in range(20)]
    many = json.dumps(rows + [{"text": "x", "label": "a", "extra": [{}] * 200}]).encode()
    for name, raw in {"x.json": many, "x.jsonl": b'{"text": "x", "label": "a", "extra": [' + b"{}," * 200 + b"{}]}"}.items():
        with pytest.raises(DataError, match="JSON values, above the 100 the loader reads"):
            load_upload(raw, name)
    # Commas and brackets inside the texts are not structure: 20 rows of 30 commas each still load.
    commas = [{"text": "a, b, [c], {d}" * 10, "label": "ab"[i % 2]} for i in range(20)]
    assert len(load_upload(json.dumps(commas).encode(), "x.json").labels) == 2


def test_the_json_string_pattern_cannot_be_made_quadratic():
    from clm_explore.data import _JSON_STRING

    # An unclosed string followed by escaped quotes: a pattern that can fail rescans to the end from every quote.
    hostile = '"' + '\\"' * 200_000 + "\\"
    assert _JSON_STRING.sub("", hostile) == "" and _JSON_STRING.sub("", '["a,b", 1, "c]"]') == "[, 1, ]"


def test_a_message_lists_at_most_thirty_column_names():
    header = ",".join(f"c{i}" for i in range(40_000))
    with pytest.raises(DataError, match=r"'c29' and 39,970 more\)") as err:
        load_upload(f"{header}\n{','.join(['x'] * 40_000)}\n".encode(), "wide.csv")
    assert len(str(err.value)) < 1_000


def test_a_label_longer_than_a_class_name_is_refused():
    rows = "".join(f"text {i},{'ab'[i % 2] * (1 if i % 2 else 300)}\n" for i in range(10))
    with pytest.raises(DataError, match="a label is 300 characters long .* above the 200-character limit"):
        load_upload(f"text,label\n{rows}".encode(), "x.csv")
    assert len(load_upload(f"text,label\n{rows}".encode(), "x.csv", DataConfig(max_label_chars=300)).labels) == 2


def test_columns_that_are_not_read_cannot_stop_a_parquet_file():
    import pyarrow as pa


    texts, labels = ["good card", "bad rate"] * 6, ["a", "b"] * 6
    multi = pa.array([["a", "b"], ["c"]] * 6)  # a multi-label export's column: never read when not picked
    raw = _parquet_bytes(pa.table({"text": texts, "label": labels, "labels": multi, "id": range(12), "ID": range(12)}))
    picked = DataConfig(text_col="text", label_col="label")  # before: refused for 'labels', and for 'id'/'ID'
    assert len(load_upload(raw, "x.parquet", picked).labels) == 2
    with pytest.raises(DataError, match="ambiguous"):  # without the names, label or labels could be it
        load_upload(raw, "x.parquet")
    frame = pd.DataFrame({"text": texts, "label": labels, "id": range(12), "ID": range(12)})
    assert len(load_data(frame).labels) == 2  # names differing in case are two columns of a DataFrame
    two_texts = frame.rename(columns={"id": "Text"}).assign(Text=texts)
    with pytest.raises(DataError, match="the text column 'TEXT' is ambiguous: 'text', 'Text' differ from it only"):
        load_data(two_texts, DataConfig(text_col="TEXT"))
    blob = _parquet_bytes(pa.table({"text": texts, "label": labels, "blob": [b"x" * 700_000] * 12}),
                          use_dictionary=False)  # 8.4 MB uncompressed (a dictionary would hold one value)
    assert len(load_upload(blob, "x.parquet", DataConfig(max_file_mb=2)).labels) == 2  # the 8 MB column is not read


def test_texts_to_predict_ignore_label_columns(tmp_path):
    import pyarrow as pa

    file = tmp_path / "to_predict.parquet"
    file.write_bytes(_parquet_bytes(pa.table({"text": ["my card", "rate up"], "labels": [["a", "b"], ["c"]]})))
    assert read_texts(file) == ["my card", "rate up"]


@pytest.mark.parametrize("dtype", ["string", "Int64"])
def test_pandas_missing_values_are_missing_not_the_label_na(dtype):
    labels = pd.array((["1", "2", None, "2"] if dtype == "string" else [1, 2, None, 2]) * 30, dtype=dtype)
    frame = pd.DataFrame({"text": [f"text number {i}" for i in range(120)], "label": labels})
    with pytest.raises(DataError, match=r"30 row\(s\) have no label"):  # it became a class called "<NA>"
        load_data(frame)


def test_a_bytes_text_column_is_read_as_utf8_text():
    frame = pd.DataFrame({"text": [f"héllo number {i}".encode() for i in range(120)], "label": ["a", "b"] * 60})
    texts = pd.concat([load_data(frame).train, load_data(frame).test])["text"]
    assert texts.str.startswith("héllo number").all()  # it read "b'h\\xc3\\xa9llo number 0'"
    frame.loc[5, "text"] = b"\xff\xfe broken"
    with pytest.raises(DataError, match="bytes that are not UTF-8"):
        load_data(frame)


def test_rows_of_empty_fields_are_skipped_and_said(tmp_path):
    lines = ["text,label", *[f"text number {i},{'ab'[i % 2]}" for i in range(60)]]
    lines[5:5] = ["   ,   ", ",", ""]  # fields of spaces, empty fields, an empty line
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    data = load_data(tmp_path / "d.csv")
    assert sum(len(f) for f in (data.train, data.validation, data.test)) == 60
    assert any("2 row(s) with only empty fields were skipped (line(s) 6, 7)" in note for note in data.notes)  # silent


def test_a_folder_split_in_a_format_not_read_is_refused_not_carved_over(tmp_path):
    rows = "text,label\n" + "\n".join(f"text number {i},{'ab'[i % 2]}" for i in range(40)) + "\n"
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "test.csv.gz").write_bytes(b"\x1f\x8b not read")  # the test split was carved from train, unnamed
    with pytest.raises(DataError, match=r"in a format the loader does not read: test\.csv\.gz"):
        load_data(tmp_path)
    (tmp_path / "test.csv.gz").unlink()
    for other in ("train.csv.bak", "train.csv.dvc", "dev.ipynb", "test.txt"):  # beside the data, not the data
        (tmp_path / other).write_text("not a split")
    assert len(load_data(tmp_path).train) > 0


def test_a_folder_named_like_a_split_file_is_listed_as_a_folder(tmp_path):
    (tmp_path / "train.csv").mkdir()  # "no train file (found: test.csv, train.csv)" read as a contradiction
    (tmp_path / "test.csv").write_text("text,label\na,b\n")
    with pytest.raises(DataError, match=r"has no train file \(found: test\.csv, train\.csv/\)"):
        load_data(tmp_path)


def test_a_dict_giving_one_split_twice_and_hand_built_labels_that_miss_train_are_refused():
    frame = pd.DataFrame({"text": [f"text number {i}" for i in range(40)], "label": ["a", "b"] * 20})
    with pytest.raises(DataError, match="gives the validation split twice"):  # 'dev' replaced 'validation'
        load_data({"train": frame, "validation": frame.iloc[:10], "dev": frame.iloc[10:20]})
    with pytest.raises(DataError, match=r"leaves out train's 'b'"):  # failed in training: "Target -1 is out of bounds"
        AnnotatedData(frame, frame.iloc[:0], frame.iloc[:0], ["a"])
    with pytest.raises(DataError, match=r"names 'a' more than once"):
        AnnotatedData(frame, frame.iloc[:0], frame.iloc[:0], ["a", "a", "b"])


def test_paths_and_headers_from_the_wild(tmp_path):
    import os

    rows = [f"text number {i}\t{'ab'[i % 2]}" for i in range(40)]
    (tmp_path / "tabs.csv").write_text("text\tlabel\n" + "\n".join(rows) + "\n")  # tab-separated, named .csv
    assert len(load_data(tmp_path / "tabs.csv").train) > 0  # "expected 1 fields ... quote texts that contain commas"
    excel = "text,label,,\n" + "\n".join(f"text number {i},{'ab'[i % 2]},," for i in range(40)) + "\n"
    (tmp_path / "excel.csv").write_text(excel)  # unnamed trailing columns, as spreadsheets export
    assert set(load_data(tmp_path / "excel.csv").labels) == {"a", "b"}  # "names column(s) '' more than once"
    with pytest.raises(DataError, match="The data path is empty"):  # it read the working directory
        load_data("")
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(DataError, match="not a regular file"):  # validate waited on the pipe until killed
        load_data(tmp_path / "pipe.csv")


def test_a_csv_written_with_a_space_after_each_comma_reads_its_quoted_names_and_labels(tmp_path):
    from clm_explore.data import column_names

    rows = [f'"text number {i}, said", "{"ab"[i % 2]}"' for i in range(40)]
    (tmp_path / "spaced.csv").write_text('"text", "label"\n' + "\n".join(rows) + "\n")
    data = load_data(tmp_path / "spaced.csv")  # the label column was named '"label"', its labels '"a"' and '"b"'
    assert data.labels == ["a", "b"]
    assert column_names(tmp_path / "spaced.csv") == ["text", "label"]
    plain = [f'text number {i},  "quoted" start {i},{"ab"[i % 2]}' for i in range(40)]  # no spaced quotes in the header
    (tmp_path / "plain.csv").write_text("id,text,label\n" + "\n".join(plain) + "\n")
    assert load_data(tmp_path / "plain.csv").train.text.str.contains('"quoted"').all()  # a text's own spaces and quotes


def test_a_test_label_is_held_to_the_label_length_limit_too():
    frame = pd.DataFrame({"text": [f"text number {i}" for i in range(40)], "label": ["a", "b"] * 20})
    test = pd.DataFrame({"text": ["x", "y"], "label": ["a", "y" * 5000]})
    with pytest.raises(DataError, match="the test split: a label is 5,000 characters long"):  # train's alone before
        load_data({"train": frame, "test": test})


def test_a_tsv_text_that_swallows_rows_through_a_quote_is_said(tmp_path):
    rows = [f"text number {i}\t{'ab'[i % 2]}" for i in range(40)]
    rows[3] = '"Hello, she said\ta'  # unquoted TSV: this quote runs to the next one, three rows on
    rows[6] = 'it is 5"\tb'
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    data = load_data(tmp_path / "d.tsv")
    assert sum(len(f) for f in (data.train, data.validation, data.test)) == 37  # three rows went into one, silently
    assert any("1 text(s) span several lines (from line(s) 5)" in note for note in data.notes)
    pd.DataFrame({"text": ["one line", "two\nlines"] * 20, "label": ["a", "b"] * 20}).to_csv(
        tmp_path / "quoted.tsv", sep="\t", index=False)  # a text of two lines, quoted as pandas writes it
    assert not any("span several lines" in note for note in load_data(tmp_path / "quoted.tsv").notes)


def test_utf32_with_its_mark_is_read_and_wide_text_without_one_is_named(tmp_path):
    text = "text,label\n" + "\n".join(f"caf\u00e9 number {i},{'ab'[i % 2]}" for i in range(40)) + "\n"
    (tmp_path / "wide.csv").write_bytes(text.encode("utf-32"))  # with its byte-order mark
    data = load_data(tmp_path / "wide.csv")  # it read as UTF-16: "control characters ... a binary file"
    assert "caf\u00e9 number 0" in set(pd.concat([data.train, data.validation, data.test])["text"])
    assert any("is UTF-32" in note for note in data.notes)
    (tmp_path / "bare.csv").write_bytes(text.replace("\u00e9", "e").encode("utf-16-le"))  # no mark
    with pytest.raises(DataError, match="UTF-16 or UTF-32 without a byte-order mark"):  # it said "a binary file"
        load_data(tmp_path / "bare.csv")


def test_a_label_over_two_lines_and_a_json_list_of_rows_are_refused_plainly(tmp_path):
    rows = [f"text number {i},{'ab'[i % 2]}" for i in range(40)]
    rows[4] = 'text number 4,"a\nb"'
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"1 label\(s\) hold a line break \(line\(s\) 6\)"):  # it broke validate's table
        load_data(tmp_path / "d.csv")
    rows[4] = "text number 4,a\u2028b"  # a Unicode line separator breaks a table as well
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match="hold a line break"):
        load_data(tmp_path / "d.csv")
    (tmp_path / "rows.json").write_text(json.dumps([[f"text number {i}", "ab"[i % 2]] for i in range(40)]))
    with pytest.raises(DataError, match="found a list holding a list"):  # "found a list"
        load_data(tmp_path / "rows.json")


def _with_split_column(values: list[str]) -> pd.DataFrame:
    """Rows of two labels, each row's split given by ``values`` (cycled)."""
    rows = [{"text": f"row {i} about {'cards' if i % 2 else 'cash'}", "label": "card" if i % 2 else "cash"}
            for i in range(60)]
    return pd.DataFrame(rows).assign(Split=[values[i % len(values)] for i in range(60)])


def test_a_split_column_puts_rows_in_their_splits_and_only_missing_ones_are_carved(tmp_path: Path) -> None:
    frame = _with_split_column(["train", "train", "train", "dev", "TEST "])
    frame.to_csv(tmp_path / "all.csv", index=False)
    for data in (load_data(tmp_path / "all.csv"), load_data(frame), load_upload((tmp_path / "all.csv").read_bytes(),
                                                                                 "all.csv")):
        assert (len(data.train), len(data.validation), len(data.test)) == (36, 12, 12)
        assert data.test["text"].tolist() == frame["text"].iloc[4::5].tolist()  # in the file's order
        assert list(data.train.columns) == ["text", "label"]
        assert any("by its split column (train 36, validation 12, test 12); nothing was carved" in n for n in data.notes)
    frame[frame["Split"] != "dev"].to_csv(tmp_path / "no-dev.csv", index=False)
    data = load_data(tmp_path / "no-dev.csv")
    assert len(data.test) == 12 and len(data.train) + len(data.validation) == 36 and len(data.validation) > 0


def test_a_split_column_by_another_name_is_read_when_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    frame = _with_split_column(["train", "train", "test"]).rename(columns={"Split": "part"})
    frame.to_parquet(tmp_path / "all.parquet")
    assert len(load_data(tmp_path / "all.parquet").test) == 12  # not a split column by its name: carved (20%)
    assert len(load_data(tmp_path / "all.parquet", DataConfig(split_col="Part")).test) == 20
    assert main(["validate", str(tmp_path / "all.parquet"), "--split-col", "part"]) == 0
    assert "by its split column (train 40, test 20)" in capsys.readouterr().out


def test_a_split_column_that_does_not_name_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = _with_split_column(["train", "train", "test"])
    frame.loc[7, "Split"] = "holdout"
    frame.to_csv(tmp_path / "all.csv", index=False)
    data = load_data(tmp_path / "all.csv")  # found by its name only: not used, and the note says why
    assert len(data.test) == 12
    assert any("column 'Split' was not used to split the rows: 1 value(s) do not name a split (line(s) 9; "
               "e.g. 'holdout')" in n for n in data.notes)
    # A problem of the report, not a note alone (the app review: a caption hid that the rows were split afresh)
    assert any(p.endswith("Its rows were split afresh: fix those values to keep the splits it gives.")
               for p in data_report(data).problems)
    with pytest.raises(DataError, match=r"1 row\(s\) have a split that is not train.*line\(s\) 9; e.g. 'holdout'"):
        load_data(tmp_path / "all.csv", DataConfig(split_col="split"))
    assert main(["validate", str(tmp_path / "all.csv"), "--split-col", "split"]) == 2
    assert "'holdout'" in capsys.readouterr().err


@pytest.mark.parametrize(("values", "cfg", "message"), [
    (["test"], {}, "no row's split is train"),
    (["train", "test"], {"split_col": "label"}, "also the text or the label column"),
    (["train", "test"], {"split_col": "fold"}, "no column 'fold' \\(asked for as the split column\\)"),
])
def test_split_columns_refused(tmp_path: Path, values: list[str], cfg: dict, message: str) -> None:
    _with_split_column(values).to_csv(tmp_path / "all.csv", index=False)
    with pytest.raises(DataError, match=message):
        load_data(tmp_path / "all.csv", DataConfig(**cfg))


def test_a_split_column_is_not_read_in_a_folder_of_splits(tmp_path: Path) -> None:
    _with_split_column(["test"]).to_csv(tmp_path / "train.csv", index=False)
    assert len(load_data(tmp_path).test) == 12  # train.csv is train whatever its column says; test is carved
    with pytest.raises(DataError, match="is a folder: its train, validation and test files are its splits"):
        load_data(tmp_path, DataConfig(split_col="Split"))
    with pytest.raises(DataError, match="split already"):
        load_data({"train": _with_split_column(["train"])}, DataConfig(split_col="Split"))


def test_a_column_named_split_that_holds_records_or_is_doubled_is_let_be(tmp_path: Path) -> None:
    frame = _with_split_column(["train", "test"])
    records = frame.assign(split=[{"name": v} for v in frame.pop("Split")])
    records.to_json(tmp_path / "all.jsonl", orient="records", lines=True)
    data = load_data(tmp_path / "all.jsonl")  # found by its name only: carved, with a note
    assert len(data.test) == 12 and any("holds lists, records or bytes" in n for n in data.notes)
    with pytest.raises(DataError, match="several labels|a list or object"):
        load_data(tmp_path / "all.jsonl", DataConfig(split_col="split"))
    doubled = _with_split_column(["train", "test"]).assign(split="test")
    data = load_data(doubled)
    assert len(data.test) == 12 and any("could each be the split column" in n for n in data.notes)


def test_a_header_that_looks_like_a_row_of_data_is_noted(tmp_path) -> None:
    # A file without a header row, its columns picked by hand: its first row became the names (app review).
    rows = [f"how do I top up card number {i} today ?,{'ab'[i % 2]}" for i in range(40)]
    (tmp_path / "nohdr.csv").write_text("\n".join(rows) + "\n")
    data = load_data(tmp_path / "nohdr.csv", DataConfig(text_col="how do I top up card number 0 today ?", label_col="a"))
    assert sum(len(data.split(s)) for s in ("train", "validation", "test")) == 39  # the first row is the header
    assert any("its header looks like a row of data (the label column's name 'a' is also one of its labels" in n
               for n in data.notes)
    (tmp_path / "codes.csv").write_text("utterance,NUM\n" + "\n".join(f"row {i},{'NUM' if i % 2 else 'LOC'}"
                                                                    for i in range(40)) + "\n")
    picked = load_data(tmp_path / "codes.csv", DataConfig(label_col="NUM"))
    assert any("the label column's name 'NUM' is also one of its labels" in n for n in picked.notes)
    plain = tmp_path / "plain.csv"
    plain.write_text("text,label\n" + "\n".join(rows) + "\n")
    assert not any("header looks like" in n for n in load_data(plain).notes)
    spoken = tmp_path / "spoken.csv"  # a header of sentences is a header; a label named like its column is chance
    spoken.write_text("What the customer wrote,Is it urgent\n" + "\n".join(rows) + "\n")
    assert not any("header looks like" in n for n in load_data(spoken, DataConfig(
        text_col="What the customer wrote", label_col="Is it urgent")).notes)
    named = tmp_path / "named.csv"
    named.write_text("text,label\n" + "\n".join(f"row {i},{'label' if i % 2 else 'other'}" for i in range(40)) + "\n")
    assert not any("header looks like" in n for n in load_data(named).notes)


def test_a_tsv_whose_quotes_cannot_be_quoting_is_read_with_quotes_as_text(tmp_path) -> None:
    rows = [f'"{i} opens a quote it never closes\t{"ab"[i % 2]}' if i % 5 == 0 else f'text {i} says "hi"\t{"ab"[i % 2]}'
            for i in range(40)]
    (tmp_path / "q.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    data = load_data(tmp_path / "q.tsv")
    texts = set(pd.concat([data.split(s) for s in ("train", "validation", "test")])["text"])
    assert len(texts) == 40 and '"0 opens a quote it never closes' in texts and 'text 1 says "hi"' in texts
    assert any("its quotes were read as plain characters of the texts (read as quoting, the row starting at line 2"
               in n for n in data.notes)
    (tmp_path / "q.csv").write_text("text,label\n" + "\n".join(r.replace("\t", ",") for r in rows) + "\n")
    with pytest.raises(DataError, match="row starting at line 2: cannot be parsed"):  # a CSV quotes: still refused
        load_data(tmp_path / "q.csv")


def test_texts_with_a_lone_carriage_return_survive_the_csv_files_the_tool_writes(tmp_path: Path) -> None:
    """The data review: a text holding a lone \\r loaded and trained, but predictions.csv, a bench grid's data and
    the audit's files wrote it bare, and reading them back split the row (report: "invalid literal for int()")."""
    from clm_explore.casestudy import read_predictions
    from clm_explore.data import write_csv
    from clm_explore.label_issues import splits_csv

    texts = ["refund please\rthanks", "card deposit\r case", "a plain text", "loan\r\rlate"] * 5
    data = load_data(pd.DataFrame({"text": texts, "label": ["a", "b", "a", "b"] * 5}))
    (tmp_path / "all.csv").write_bytes(splits_csv(data))
    back = load_data(tmp_path / "all.csv")
    for split in ("train", "validation", "test"):
        assert back.split(split)["text"].tolist() == data.split(split)["text"].tolist(), split
    rows = pd.DataFrame({"row": range(4), "text": texts[:4], "label": ["a", "b", "a", "b"], "pred": ["a"] * 4,
                         "prob": [0.5] * 4})
    write_csv(rows, tmp_path / "predictions.csv")
    assert read_predictions(tmp_path / "predictions.csv")["text"].tolist() == texts[:4]


def test_a_nul_character_in_a_text_or_label_is_refused_where_it_is() -> None:
    frame = pd.DataFrame({"text": ["fine text", "bad\x00text", "more text", "last text"], "label": ["a", "b"] * 2})
    with pytest.raises(DataError, match=r"index 1: the text holds a NUL character \(U\+0000\)"):  # its index label
        load_data(frame)  # before: loaded and trained, then no CSV file the tool wrote of it could be read back


def test_float32_labels_read_as_their_shortest_form() -> None:
    labels = pd.Series([0.1, 0.2, 0.7, 1.0] * 3, dtype="float32")
    data = load_data(pd.DataFrame({"text": [f"text number {i}" for i in range(12)], "label": labels}))
    assert sorted(data.labels) == ["0.1", "0.2", "0.7", "1"]  # before: '0.10000000149011612', ...


def test_a_row_repeating_the_header_is_refused_where_it_is(tmp_path: Path) -> None:
    part = "Text,Label\nwhere is my card,card\nmy card is lost,card\nloan rate up,loan\nloan is late,loan\n"
    (tmp_path / "joined.csv").write_text(part + part)  # two exports joined, each with its header
    with pytest.raises(DataError, match=r"1 row\(s\) repeat the header \('Text', 'Label'\) at line\(s\) 6: files "
                                        r"joined with their header lines\?"):
        load_data(tmp_path / "joined.csv")  # before: a label 'Label' trained from the text 'Text', one row


def test_a_quoted_comma_in_a_semicolon_header_does_not_make_it_comma_separated(tmp_path: Path) -> None:
    rows = "".join(f"card text {i};card;x\nloan text {i};loan;y\n" for i in range(6))
    (tmp_path / "semi.csv").write_text('text;label;"note, extra"\n' + rows)
    data = load_data(tmp_path / "semi.csv")  # before: "expected 2 fields like the header ... found 1"
    assert sorted(data.labels) == ["card", "loan"] and len(data.train) + len(data.validation) + len(data.test) == 12


def test_a_file_without_a_header_repeating_its_first_row_is_read_with_a_note(tmp_path: Path) -> None:
    """The diff review: the repeated-header refusal must not catch a headerless file whose first row recurs."""
    rows = "where is my card,card\nloan rate went up,loan\nmy card is lost,card\nloan is late,loan\n" * 4
    (tmp_path / "plain.csv").write_text(rows)
    data = load_data(tmp_path / "plain.csv", DataConfig(text_col="where is my card", label_col="card"))
    assert any("its header looks like a row of data" in note for note in data.notes)


def test_a_cell_past_the_field_limit_is_named_as_such(tmp_path: Path, monkeypatch) -> None:
    """The app review: a 30 MB cell was blamed on "a stray or unclosed quote"."""
    import clm_explore.data as data_module

    monkeypatch.setattr(data_module, "_FIELD_LIMIT", 50)
    rows = [f"short text {i},{'a' if i % 2 else 'b'}" for i in range(6)]
    (tmp_path / "long.csv").write_text("text,label\n" + "\n".join(rows) + "\n" + "x" * 80 + ",a\n")
    with pytest.raises(DataError, match=r"line 8: a field runs past 50 characters, the most a cell may hold"):
        load_data(tmp_path / "long.csv")


def test_blank_lines_of_a_text_file_to_predict_are_said(tmp_path: Path) -> None:
    """The CLI review: predict --file x.txt dropped blank lines without a word, so a script pairing its output lines
    with the input's was off from the first blank on."""
    from clm_explore.data import read_texts

    (tmp_path / "t.txt").write_text("first\n\nthird\n  \nfifth\n")
    notes: list[str] = []
    assert read_texts(tmp_path / "t.txt", notes=notes) == ["first", "third", "fifth"]
    assert notes == ["t.txt: 2 blank line(s) skipped (line(s) 2, 4): one result per text line, in order"]
    (tmp_path / "plain.txt").write_text("a\nb\n")
    notes.clear()
    assert read_texts(tmp_path / "plain.txt", notes=notes) == ["a", "b"] and notes == []


def test_texts_piped_in_are_read_as_a_text_file_and_size_capped() -> None:
    """predict --file - (the CLI review: a pipe was refused): lines as a .txt file's, the upload cap applies."""
    import io

    from clm_explore.config import DataConfig
    from clm_explore.data import read_text_stream

    notes: list[str] = []
    assert read_text_stream(io.BytesIO("caf\u00e9\n\nsecond\n".encode()), notes=notes) == ["caf\u00e9", "second"]
    assert notes == ["standard input: 1 blank line(s) skipped (line(s) 2): one result per text line, in order"]
    big = io.BytesIO(b"x\n" * 600_000)  # 1.2 MB, past a 1 MB cap: refused without reading it all
    with pytest.raises(DataError, match=r"standard input is at least 1.0 MB, above the 1 MB limit"):
        read_text_stream(big, cfg=DataConfig(max_file_mb=1))
    assert big.tell() == 1024 * 1024 + 1


def test_text_control_characters_load_and_a_binary_refusal_names_its_character(tmp_path):
    rows = [f"first part\x0bsecond part {i}\x0c\x1b[1mbold\x1b[0m,{'ab'[i % 2]}" for i in range(40)]
    (tmp_path / "word.csv").write_text("text,label\n" + "\n".join(rows) + "\n")  # Word, PDF and terminal exports
    data = load_data(tmp_path / "word.csv")  # refused before: "301 control characters ... a binary file"
    assert "first part\x0bsecond part 0\x0c\x1b[1mbold\x1b[0m" in set(data.split("train")["text"]) | set(
        data.split("validation")["text"]) | set(data.split("test")["text"])
    (tmp_path / "bin.csv").write_text("text,label\nfine,a\n" + "x\x01\x02\x01\x01,b\n" * 20)
    with pytest.raises(DataError, match=r"control characters \(the commonest U\+0001, first on line 3\)"):
        load_data(tmp_path / "bin.csv")


def test_a_stray_nul_byte_in_a_file_is_refused_by_its_line(tmp_path):
    rows = [f"text number {i},{'ab'[i % 2]}" for i in range(400)]
    rows[6] = "text\x00 seven,a"
    (tmp_path / "one.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"1 NUL character\(s\) \(byte 0; the first on line 8\): remove them"):
        load_data(tmp_path / "one.csv")  # before: "contains NUL bytes (first at byte 102); it looks like a binary file"
    (tmp_path / "many.csv").write_bytes(b"text,label\n" + b"\x00\x01\x02" * 200)
    with pytest.raises(DataError, match="a binary file"):
        load_data(tmp_path / "many.csv")


def test_excel_sep_line_names_the_delimiter(tmp_path):
    rows = [f"text number {i}, with a comma;{'ab'[i % 2]}" for i in range(40)]
    (tmp_path / "excel.csv").write_bytes(("sep=;\r\ntext;label\r\n" + "\r\n".join(rows) + "\r\n").encode())
    assert column_names(tmp_path / "excel.csv") == ["text", "label"]  # before: 'sep=', ''
    data = load_data(tmp_path / "excel.csv")
    assert sorted(data.labels) == ["a", "b"]
    assert "text number 0, with a comma" in set(pd.concat([data.train, data.validation, data.test])["text"])


def test_whole_float_labels_of_a_csv_read_as_a_number_columns(tmp_path):
    texts = [f"text number {i}" for i in range(40)]
    pd.DataFrame({"text": texts, "label": [i % 3 for i in range(40)]}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"text": texts[:9], "label": [float(i % 3) for i in range(9)]}).to_csv(tmp_path / "test.csv",
                                                                                        index=False)
    data = load_data(tmp_path)  # before: test labels '0.0', '1.0', '2.0', none of them train's
    assert sorted(set(data.test["label"])) == ["0", "1", "2"] == sorted(data.labels)
    assert any("whole numbers written with a decimal point" in note for note in data.notes)
    pd.DataFrame({"text": texts, "label": ["1.5", "2.0"] * 20}).to_csv(tmp_path / "mixed.csv", index=False)
    assert set(load_data(tmp_path / "mixed.csv").labels) == {"1.5", "2.0"}  # not all whole: as written
    pd.DataFrame({"text": texts, "label": ["1", "1.0", "02", "02.00"] * 10}).to_csv(tmp_path / "both.csv", index=False)
    assert set(load_data(tmp_path / "both.csv").labels) == {"1", "02"}  # two spellings of each were two labels


def test_the_test_carve_keeps_near_copies_together_and_the_report_counts_them(tmp_path):
    texts = [f"Text number {i} about {'ab'[i % 2]}" for i in range(100)]
    copies = [t.upper() for t in texts[:30]] + [" ".join(t.lower().split()) + "  " for t in texts[30:40]]
    pd.DataFrame({"text": texts + copies, "label": ["ab"[i % 2] for i in range(100)] + ["ab"[i % 2] for i in range(40)]}
                 ).to_csv(tmp_path / "one.csv", index=False)
    data = load_data(tmp_path / "one.csv")
    from clm_explore.data import text_key

    train, test = ({text_key(t) for t in data.split(name)["text"]} for name in ("train", "test"))
    assert not train & test  # before: near-copies drawn apart, train/test leakage made by the carve
    assert any("(40 more but for case, spacing or Unicode form); all copies" in note for note in data.notes)
    given = {"train": pd.DataFrame({"text": texts, "label": ["ab"[i % 2] for i in range(100)]}),
             "test": pd.DataFrame({"text": copies, "label": ["ab"[i % 2] for i in range(40)]}),
             "validation": pd.DataFrame({"text": ["other a", "other b"], "label": ["a", "b"]})}
    report = data_report(load_data(given))
    assert report.leakage["near_pairs"]["train/test"] == 40  # unreported before
    both = {"train": pd.DataFrame({"text": ["Hi there", "hi there", "other a", "other b"], "label": ["a", "a", "a", "b"]}),
            "test": pd.DataFrame({"text": ["Hi there", "hi there", "HI THERE", "x"], "label": ["a", "a", "a", "b"]}),
            "validation": pd.DataFrame({"text": ["HI  there", "y"], "label": ["a", "b"]})}
    near = data_report(load_data(both)).leakage["near_pairs"]  # exact copies sharing a key: it read -1 (diff review)
    assert near == {"train/validation": 1, "train/test": 1, "validation/test": 3}
    assert any("40 text(s) of test equal one of train but for case" in p for p in report.serious)


def _all_texts(data: AnnotatedData) -> set[str]:
    return set(pd.concat([data.train, data.validation, data.test])["text"])


def test_a_txt_table_to_predict_is_refused_as_a_tsv(tmp_path: Path) -> None:
    """The data review: predict --file on Excel's 'Unicode Text' export (.txt, UTF-16, tab-separated, a header)
    predicted the header as a text and every text carried its label."""
    rows = "text\tlabel\r\n" + "".join(f"text number {i}\t{'ab'[i % 2]}\r\n" for i in range(6))
    (tmp_path / "export.txt").write_bytes(rows.encode("utf-16"))
    with pytest.raises(DataError, match=r"looks like a tab-separated table.*rename it \.tsv"):
        read_texts(tmp_path / "export.txt")
    (tmp_path / "export.tsv").write_bytes(rows.encode("utf-16"))
    assert read_texts(tmp_path / "export.tsv") == [f"text number {i}" for i in range(6)]  # as the message promises
    (tmp_path / "named.txt").write_text("review\tstars\ngood one\t5\n")
    with pytest.raises(DataError, match="looks like a tab-separated table"):
        read_texts(tmp_path / "named.txt", text_col="Review")
    (tmp_path / "tabs.txt").write_text("a\tb\nc\td\n")  # tabs inside texts, no header: one text per line still
    assert read_texts(tmp_path / "tabs.txt") == ["a\tb", "c\td"]
    with pytest.raises(DataError, match=r"unsupported extension '\.txt'.*'Unicode Text'.*rename it \.tsv"):
        load_data(tmp_path / "export.txt")


def test_a_table_piped_or_saved_as_lines_to_predict_is_refused_with_how_to_read_it(tmp_path: Path) -> None:
    """The last note's leftover: ``predict --file -`` took a piped CSV or TSV as lines, so its header and every
    row's label were predicted as texts."""
    import io

    from clm_explore.data import read_text_stream

    csv_rows = b"text,label\nmy card is lost,lost_card\nwhere is my refund,refund\n"
    with pytest.raises(DataError, match=r"standard input starts with a CSV header.*save it as a \.csv file"):
        read_text_stream(io.BytesIO(csv_rows))
    with pytest.raises(DataError, match=r"standard input looks like a tab-separated table.*save it as a \.tsv"):
        read_text_stream(io.BytesIO(b"utterance\tintent\nhi there\tgreet\nbye now\tbye\n"))
    (tmp_path / "rows.txt").write_bytes(b'"Text";"Label"\nhello;a\n')
    with pytest.raises(DataError, match=r"rows\.txt starts with a CSV header.*rename it \.csv"):
        read_texts(tmp_path / "rows.txt")
    # Texts that merely start with a column's name stay texts, one per line.
    assert read_text_stream(io.BytesIO(b"text, please\nquery, question\n")) == ["text, please", "query, question"]
    assert read_text_stream(io.BytesIO(b"text,label are words\nsecond\n")) == ["text,label are words", "second"]


def test_labels_whose_accents_are_encoded_two_ways_are_one_label(tmp_path: Path) -> None:
    """The language review: 'Überweisung' decomposed (macOS) and composed (Windows) looked alike and trained as two
    labels; the report's variant warning did not say why."""
    import unicodedata

    composed, decomposed = "Überweisung", unicodedata.normalize("NFD", "Überweisung")
    rows = [(f"Bitte Geld senden {i}", composed if i % 2 else decomposed) for i in range(20)]
    rows += [(f"Karte gesperrt {i}", "Karte") for i in range(20)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(tmp_path / "de.csv", index=False)
    data = load_data(tmp_path / "de.csv")
    assert data.labels == ["Karte", composed]
    assert any("how their accents are encoded" in note for note in data.notes)


def test_a_split_column_in_a_file_of_a_folder_of_splits_is_said_not_to_be_read(tmp_path: Path) -> None:
    """The data review: a folder's train.csv with a split column had it ignored without a word."""
    _with_split_column(["train", "train", "test"]).to_csv(tmp_path / "train.csv", index=False)
    data = load_data(tmp_path)
    assert any("its column 'Split' does not split its rows: it is the train split already" in note
               and "pass " + str(tmp_path / "train.csv") + " alone" in note for note in data.notes)
    data = load_data({"train": _with_split_column(["train", "train", "test"])})
    assert any("the train DataFrame: its column 'Split' does not split its rows" in note for note in data.notes)
    assert not any("does not split its rows" in note for note in load_data(tmp_path / "train.csv").notes)


def test_a_stray_byte_beside_utf8_on_one_line_leaves_the_utf8_as_it_is(tmp_path: Path) -> None:
    """The data review: the line 'caf\\xc3\\xa9 costs 5\\x80' read 'cafÃ© costs 5€', its valid UTF-8 garbled too."""
    rows = "".join(f"plain text {i},{'ab'[i % 2]}\n" for i in range(20)).encode()
    (tmp_path / "mixed.csv").write_bytes(b"text,label\ncaf\xc3\xa9 costs 5\x80,a\n" + rows)
    data = load_data(tmp_path / "mixed.csv")
    assert "caf\u00e9 costs 5\u20ac" in _all_texts(data)
    assert any("on 1 line(s) (line 2); their bytes that are not UTF-8 were read as Windows-1252" in note
               for note in data.notes)
    # A file written in cp1252 reads its lines whole as before, also where two of its bytes happen to be UTF-8
    # ('É’' is U+0252 read so).
    texts = [f"CAF\u00c9\u2019s cr\u00e8me br\u00fbl\u00e9e {i}" for i in range(20)]
    (tmp_path / "ansi.csv").write_bytes(("text,label\n" + "".join(f"{t},{'ab'[i % 2]}\n" for i, t in enumerate(texts))
                                         ).encode("cp1252"))
    data = load_data(tmp_path / "ansi.csv")
    assert _all_texts(data) == set(texts)
    assert any("those lines were read as Windows-1252" in note for note in data.notes)


def test_a_dataframes_rows_are_named_by_its_index(tmp_path: Path) -> None:
    """The data review: a row at index 28 was named 'row 4'; AnnotatedData names rows by their index."""
    frame = pd.DataFrame({"text": [f"text number {i}" for i in range(40)], "label": ["ab"[i % 2] for i in range(40)]},
                         index=range(25, 65))
    frame.loc[frame.index[3], "label"] = None
    with pytest.raises(DataError, match=r"^the DataFrame: 1 row\(s\) have no label \(index 28\)"):
        load_data(frame)
    frame.loc[28, "label"] = "a"
    frame.loc[[30, 31], "text"] = " "
    with pytest.raises(DataError, match=r"^the train DataFrame: 2 row\(s\) have empty text \(index 30, 31\)"):
        load_data({"train": frame})


def test_labels_that_mark_a_missing_value_are_a_serious_problem(tmp_path: Path) -> None:
    """The data review: labels 'NA', 'null', 'nan' were trained as classes (pandas reads them as missing) and validate
    listed them only as rare."""
    labels = ["pos", "neg"] * 20 + ["N/A"] * 3 + ["null"] * 2
    pd.DataFrame({"text": [f"text number {i}" for i in range(len(labels))], "label": labels}).to_csv(
        tmp_path / "d.csv", index=False, na_rep="")
    report = data_report(load_data(tmp_path / "d.csv"))
    assert "N/A" in report.labels  # read as written: the report says what it is
    assert any("2 label(s) look like a missing value, not a class: 'N/A' (3 rows), 'null' (2 rows)" in problem
               for problem in report.serious)
    clean = pd.DataFrame({"text": [f"text number {i}" for i in range(40)], "label": ["pos", "neg"] * 20})
    assert not any("missing value" in problem for problem in data_report(load_data(clean)).problems)


def test_limits_only_the_python_api_sets_say_so(tmp_path: Path) -> None:
    """The data review: 'raise the limit (DataConfig.max_rows)' read as if the command line had an option for it."""
    _rows(200).to_csv(tmp_path / "many.csv", index=False)
    with pytest.raises(DataError, match=r"in the Python API: DataConfig\(max_rows=\.\.\.\); the command line has no"):
        load_data(tmp_path / "many.csv", DataConfig(max_rows=100))
    with pytest.raises(DataError, match=r"in the Python API: DataConfig\(max_labels=\.\.\.\); the command line has"):
        load_data(_rows(40).assign(label=[f"l{i // 2}" for i in range(40)]), DataConfig(max_labels=10))


def test_a_column_name_given_with_spaces_finds_the_stripped_header(tmp_path: Path) -> None:
    """The data review: --label-col " label " found no column, as the header's names are stripped and the option
    was not."""
    (tmp_path / "d.csv").write_text("text , label ,split\n" + "".join(
        f"text number {i},{'ab'[i % 2]},{'train' if i < 30 else 'test'}\n" for i in range(40)))
    data = load_data(tmp_path / "d.csv", text_col=" text ", label_col=" label ", split_col=" split ")
    assert sorted(data.labels) == ["a", "b"] and len(data.test) == 10
    assert read_texts(tmp_path / "d.csv", text_col=" Text ")[:1] == ["text number 0"]


def test_an_empty_or_binary_file_to_predict_asks_for_texts_not_labels(tmp_path: Path) -> None:
    """The data review: predict's refusals asked for 'a few rows per label' and 'one label per row'."""
    import io

    from clm_explore.data import read_text_stream

    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(DataError, match="a row per text to predict") as empty:
        read_texts(tmp_path / "empty.csv")
    (tmp_path / "bin.csv").write_bytes(b"\x00\x01\x02" * 200)
    with pytest.raises(DataError, match="Save the texts to predict as a .txt file") as binary:
        read_texts(tmp_path / "bin.csv")
    with pytest.raises(DataError, match="Save the texts to predict as a .txt file") as piped:
        read_text_stream(io.BytesIO(b"\x00\x01\x02" * 200))
    assert not any("label" in str(info.value) for info in (empty, binary, piped))
    with pytest.raises(DataError, match="at least a few rows per label"):
        load_data(tmp_path / "empty.csv")  # a data file still asks for labels
    with pytest.raises(DataError, match="one text and one label per row"):
        load_data(tmp_path / "bin.csv")


def test_a_text_or_label_of_invisible_characters_only_is_empty(tmp_path: Path) -> None:
    """The data review: a text of only U+200B (a zero-width space) counted as filled."""
    rows = [f"text number {i},{'ab'[i % 2]}" for i in range(20)]
    (tmp_path / "t.csv").write_text("text,label\n" + "\n".join([*rows[:2], "\u200b\u00a0,a", *rows[2:]]) + "\n")
    with pytest.raises(DataError, match=r"1 row\(s\) have empty text \(line 4; some hold only invisible characters, "
                                        r"e\.g\. U\+200B, U\+00A0\)"):
        load_data(tmp_path / "t.csv")
    (tmp_path / "l.csv").write_text("text,label\n" + "\n".join([*rows, "one more,\ufeff"]) + "\n")
    with pytest.raises(DataError, match=r"1 row\(s\) have no label \(line 22; some hold only invisible"):
        load_data(tmp_path / "l.csv")
    (tmp_path / "p.txt").write_text("first\n\u200b\nthird\n")
    notes: list[str] = []
    assert read_texts(tmp_path / "p.txt", notes=notes) == ["first", "third"]
    assert notes == ["p.txt: 1 blank line(s) skipped (line(s) 2): one result per text line, in order"]


def test_without_incomplete_rows_writes_the_file_without_them_as_csv():
    from clm_explore.data import IncompleteRowsError, without_incomplete_rows

    records = [{"utterance": f"text number {i}", "intent": ("ab"[i % 2] if i % 5 else None), "note": "x"}
               for i in range(40)]
    records[3]["utterance"] = "\u200b"  # invisible only: as empty as a missing text
    raw = "\n".join(json.dumps(r) for r in records).encode()
    with pytest.raises(IncompleteRowsError):
        load_upload(raw, "rows.jsonl")
    written, kept, dropped = without_incomplete_rows(raw, "rows.jsonl")
    assert (kept, dropped) == (31, 9)  # 8 without a label, 1 without a text
    data = load_upload(written, "rows-complete.csv")
    assert sum(len(data.split(s)) for s in ("train", "validation", "test")) == 31
    assert b"note" not in written.split(b"\r\n")[0]  # only the columns the data can use
    with pytest.raises(DataError, match="no column 'txt'"):
        without_incomplete_rows(raw, "rows.jsonl", DataConfig(text_col="txt"))


# Excel's default "CSV" in a Chinese, Japanese, Russian, Arabic or German Windows locale (the encoding review: GBK
# and Shift-JIS files were read as cp1252 or Latin-1 and trained on mojibake labels).
_LEGACY_FILES = {
    "gb18030": ("Chinese (GBK/GB18030)", "their Chinese characters", {
        "退款": ["我想申请退款", "订单取消了，钱什么时候退回来", "退款还没有到账", "商品有质量问题要退钱"],
        "发票": ["请帮我开一张发票", "发票抬头写错了怎么办", "能开增值税专用发票吗", "电子发票在哪里下载"]}),
    "cp932": ("Japanese (Shift-JIS)", "their Japanese text", {
        "アカウント": ["パスワードを忘れました", "ログインできません", "メールアドレスを変更したい", "アカウントを削除してください"],
        "返金": ["返金をお願いします", "注文をキャンセルしたので返金してほしい", "返金はいつ届きますか", "二重に請求されました"]}),
    "cp1251": ("Cyrillic (Windows-1251)", "their Cyrillic letters", {
        "возврат": ["Хочу вернуть деньги за заказ", "Когда придёт возврат?", "Товар бракованный — верните оплату",
                    "Деньги до сих пор не вернули"],
        "доставка": ["Где моя посылка?", "Доставка задерживается уже неделю", "Курьер не приехал",
                     "Можно изменить адрес доставки?"]}),
    "cp1256": ("Arabic (Windows-1256)", "their Arabic letters", {
        "استرداد": ["أريد استرداد أموالي", "متى يصل المبلغ المسترد؟", "المنتج معيب وأريد المال",
                    "لم يتم رد المبلغ بعد"],
        "شحن": ["أين طلبي؟", "تأخر الشحن أسبوعا", "لم يصل المندوب", "هل يمكن تغيير عنوان الشحن؟"]}),
    # Latin code pages read one another as plausible letters: the words' lists tell them apart ('èekám' for 'čekám';
    # the Hungarian was read as cp1252 with no doubt, the Spanish as cp1250 with one, the Czech as cp1252 with one).
    "cp1250-cs": ("Central European (Windows-1250)", "their accented characters", {
        "vrácení": ["Chci vrátit peníze", "Peníze mi ještě nepřišly", "Zboží je poškozené", "Zrušil jsem objednávku"],
        "doručení": ["Kde je moje zásilka? Už týden čekám", "Kurýr nepřišel", "Balík se ztratil",
                     "Mohu změnit adresu doručení?"]}),
    "cp1250-hu": ("Central European (Windows-1250)", "their accented characters", {
        "visszatérítés": ["Szeretném visszakapni a pénzemet", "Hibás a termék kérem a pénzt",
                          "Még nem kaptam vissza az összeget", "Kétszer vonták le az árát"],
        "szállítás": ["Mikor érkezik meg a csomagom?", "A futár nem jött el", "Módosíthatom a szállítási címet?",
                      "Egy hete várok a csomagra"]}),
    "cp1252-es": ("Windows-1252 (cp1252)", "their accented characters", {
        "devolución": ["Quiero que me devuelvan el dinero", "El producto llegó dañado", "¿Cuándo recibiré el reembolso?",
                       "Me cobraron dos veces"],
        "envío": ["¿Dónde está mi paquete?", "Llevo una semana esperando", "El mensajero no vino",
                  "¿Puedo cambiar la dirección de envío?"]}),
}


def _legacy_csv(path: Path, codec: str, texts: dict[str, list[str]], extra: bytes = b"") -> dict[str, str]:
    """Write 20 rows (the texts, numbered) to ``path`` in ``codec``; returns text -> label."""
    rows = {f"{text} {i}": label for i in range(3) for label, some in texts.items() for text in some}
    rows = dict(list(rows.items())[:20])
    body = "".join(f"{text},{label}\n" for text, label in rows.items())
    path.write_bytes(b"text,label\n" + body.encode(codec) + extra)
    return rows


@pytest.mark.parametrize("codec", sorted(_LEGACY_FILES))
def test_a_legacy_encoded_file_loads_with_its_exact_texts_and_labels_and_a_note_naming_the_encoding(
        tmp_path: Path, codec: str) -> None:
    words, check, texts = _LEGACY_FILES[codec]
    rows = _legacy_csv(tmp_path / "data.csv", codec.split("-")[0], texts)
    data = load_data(tmp_path / "data.csv")
    frame = pd.concat([data.train, data.validation, data.test])
    assert dict(zip(frame["text"], frame["label"], strict=True)) == rows
    assert data.labels == sorted(texts)
    note = next(note for note in data.notes if "not valid UTF-8" in note)
    assert f"those lines were read as {words}, the rest as UTF-8. Check {check}, or save the file as UTF-8." in note
    assert "The encoding is a guess" not in note and not data_report(data).serious


def test_texts_to_predict_in_gbk_are_read_as_chinese(tmp_path: Path) -> None:
    lines = ["我想申请退款", "发票抬头写错了怎么办", "请帮我开一张发票"]
    (tmp_path / "texts.txt").write_bytes("\n".join(lines).encode("gbk"))
    notes: list[str] = []
    assert read_texts(tmp_path / "texts.txt", notes=notes) == lines
    assert "read as Chinese (GBK/GB18030)" in notes[0]


def test_english_cp1252_with_currency_and_degree_signs_stays_cp1252_and_certain(tmp_path: Path) -> None:
    """The diff review: banking77 saved as cp1252 (its '£' and '€') was read as Windows-1250, '£1' as 'Ł1', with no
    doubt; '¥500' read 'Ą500'; '20°C' was flagged as a guess."""
    rows = ["I paid £20 and it didn’t arrive", "why a £1 fee", "convert ¥500 please", "the £ sign", "it is 20°C outside",
            "charged 5€ twice", "where is my card"]
    text = "text,label\n" + "".join(f"{row},{'ab'[i % 2]}\n" for i, row in enumerate(rows * 3))
    (tmp_path / "en.csv").write_bytes(text.encode("cp1252"))
    data = load_data(tmp_path / "en.csv")
    read = set(pd.concat([data.train, data.validation, data.test])["text"])
    assert read == set(rows)
    assert any("read as Windows-1252" in note for note in data.notes)
    assert not any("The encoding is a guess" in note for note in data.notes)


def test_a_cp1252_file_stays_certain_and_bytes_read_as_c1_controls_are_never_silent(tmp_path: Path) -> None:
    german = {"Rückerstattung": ["Ich möchte mein Geld zurück", "Die Größe passt nicht – bitte erstatten",
                                 "Rückzahlung für die Bestellung", "Der Betrag wurde doppelt abgebucht"],
              "Lieferung": ["Wo bleibt meine Lieferung?", "Das Paket ist überfällig", "Der Bote kam nicht",
                            "Kann ich die Lieferadresse ändern?"]}
    _legacy_csv(tmp_path / "de.csv", "cp1252", german)
    data = load_data(tmp_path / "de.csv")
    assert "Ich m\u00f6chte mein Geld zur\u00fcck 0" in _all_texts(data)
    assert data.labels == ["Lieferung", "R\u00fcckerstattung"]
    assert any("those lines were read as Windows-1252 (cp1252)" in note for note in data.notes)
    assert not data_report(data).serious and main(["validate", str(tmp_path / "de.csv"), "--strict"]) == 0
    # 0x81 is no cp1252 character: its line is read as Latin-1, which makes it the invisible control U+0081.
    _legacy_csv(tmp_path / "c1.csv", "cp1252", german, extra=b"Kosten \x81 doppelt,Lieferung\n")
    data = load_data(tmp_path / "c1.csv")
    note = next(note for note in data.notes if "not valid UTF-8" in note)
    assert ("The encoding is a guess" in note and "(line 22) now hold invisible control characters (U+0080 to U+009F)"
            in note)
    assert data_report(data).problems == data_report(data).serious == [note]
    assert main(["validate", str(tmp_path / "c1.csv"), "--strict"]) == 1


def test_an_uncertain_encoding_guess_is_a_serious_problem(tmp_path: Path) -> None:
    """Product codes in cp1250 read about as well in other code pages ('ØX-èì2' for 'ŘX-čě2') and are in no word
    list: the note says the guess is unsure and how to make it sure, and ``validate --strict`` fails."""
    codes = {"bad": ["kód ŘX-čě2 neplatí", "série ŤĎ-ěř4", "šarže ŽÝ-ňů9"], "missing": ["kód ČŘ-ďť7", "série ŇŮ-řč1", "šarže ĚŠ-ýž5"]}
    _legacy_csv(tmp_path / "cs.csv", "cp1250", codes)
    data = load_data(tmp_path / "cs.csv")
    note = next(note for note in data.notes if "not valid UTF-8" in note)
    assert "The encoding is a guess: those lines read almost as well as" in note
    assert "save the file as UTF-8 (in Excel: Save As, 'CSV UTF-8')" in note
    assert data_report(data).problems == data_report(data).serious == [note]
    assert main(["validate", str(tmp_path / "cs.csv"), "--strict"]) == 1
