"""``clm-explore validate``: the report of a real data set, JSON output, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from clm_explore.cli import main

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

GOOD = Path(__file__).parent / "data" / "good"
BAD = Path(__file__).parent / "data" / "bad"


def test_banking77_json_report(capsys):
    assert main(["validate", str(SHARED_DATA / "banking77"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 13083
    assert len(report["labels"]) == 77
    assert report["splits"]["test"] == 3080
    assert report["splits"]["train"] + report["splits"]["validation"] == 10003
    # SOURCE.md: 4 duplicate texts inside train (some may move to the carved validation), 1 inside test,
    # 6 test texts also in train.
    assert report["duplicates"]["test"] == 1
    assert report["leakage"]["pairs"]["train/test"] + report["leakage"]["pairs"]["validation/test"] == 6
    assert any("carved out as validation" in note for note in report["notes"])


def test_banking77_human_report(capsys):
    assert main(["validate", str(SHARED_DATA / "banking77")]) == 0
    out = capsys.readouterr().out
    assert "13,083 rows, 77 labels" in out
    assert "card_arrival" in out
    assert "Problems:" in out and "leakage" in out
    assert "... and 47 more labels" in out


def test_column_options(capsys):
    args = ["validate", str(GOOD / "custom_columns.csv"), "--text-col", "review", "--label-col", "stars", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 30


def test_bad_option_value_exits_2(capsys):
    assert main(["validate", str(GOOD / "intents.csv"), "--max-file-mb", "0"]) == 2
    assert "--max-file-mb must be > 0" in capsys.readouterr().err


def test_subprocess_entry_point():
    # One real process (imports are slow): the error reaches stderr as one paragraph, exit 2, no traceback.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad = subprocess.run([sys.executable, "-m", "clm_explore.cli", "validate", str(BAD / "empty_text.csv")],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: ") and "empty_text.csv" in bad.stderr and "lines 3, 5" in bad.stderr
    assert bad.stdout == ""


def test_output_in_an_encoding_without_the_labels_characters_escapes_them_instead_of_crashing(tmp_path):
    """The language review: redirected on Windows, stdout is cp1252, and a Chinese label ended validate with a
    UnicodeEncodeError. One real process: the output's encoding is the process's."""
    rows = "".join(f"第{i}个问题,{'退款' if i % 2 else '发票'}\n" for i in range(24))
    (tmp_path / "zh.csv").write_text("text,label\n" + rows, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "cp1252"}
    for extra in ([], ["--json"]):
        out = subprocess.run([sys.executable, "-m", "clm_explore.cli", "validate", str(tmp_path / "zh.csv"), *extra],
                             capture_output=True, cwd=ROOT, env=env, timeout=120)
        assert out.returncode == 0 and b"Traceback" not in out.stderr, out.stderr.decode("cp1252")
        text = out.stdout.decode("cp1252")
        assert "\\u9000\\u6b3e" in text  # 退款, as its escape (JSON's own escape in --json)
        if extra:
            assert set(json.loads(text)["labels"]) == {"退款", "发票"}


def test_json_output_writes_labels_as_they_are_where_the_output_takes_them(capsys, tmp_path):
    rows = "".join(f"第{i}个问题,{'退款' if i % 2 else '发票'}\n" for i in range(24))
    (tmp_path / "zh.csv").write_text("text,label\n" + rows, encoding="utf-8")
    assert main(["validate", str(tmp_path / "zh.csv"), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"退款"' in out and "\\u9000" not in out  # before: every label escaped, unreadable to a person


def test_the_label_table_lines_up_labels_that_take_two_columns_a_character(capsys, tmp_path):
    """The language review: padded by len(), the counts after Chinese labels went out of line in a terminal."""
    from clm_explore.cli.data_cmds import display_width

    rows = "".join(f"第{i}个问题,{['退款', '产品质量', 'ok'][i % 3]}\n" for i in range(30))
    (tmp_path / "zh.csv").write_text("text,label\n" + rows, encoding="utf-8")
    assert main(["validate", str(tmp_path / "zh.csv")]) == 0
    out = capsys.readouterr().out.splitlines()
    table = out[out.index(next(line for line in out if line.startswith("label "))):][:4]
    ends = {display_width(line) for line in table}
    assert len(ends) == 1, table  # every row as wide on screen as the header
    assert display_width("产品质量") == 8 and display_width("e\u0301") == 1


def test_an_encoding_given_reads_the_file_so_and_a_byte_it_cannot_read_is_refused_by_its_line(capsys, tmp_path):
    rows = "".join(f"第{i}个问题,{'退款' if i % 2 else '发票'}\n" for i in range(24))
    (tmp_path / "gbk.csv").write_bytes(("text,label\n" + rows).encode("gb18030"))
    assert main(["validate", str(tmp_path / "gbk.csv"), "--encoding", "gb18030", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["labels"]) == {"退款", "发票"} and any("read as gb18030, as given" in n for n in report["notes"])
    assert main(["validate", str(tmp_path / "gbk.csv"), "--encoding", "ascii"]) == 2
    assert "is not valid ascii on line 2" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "gbk.csv"), "--encoding", "klingon"]) == 2
    assert "--encoding must be a text encoding Python knows" in capsys.readouterr().err
    (tmp_path / "utf8.csv").write_text("text,label\n" + rows, encoding="utf-8")  # UTF-8 stays UTF-8
    assert main(["validate", str(tmp_path / "utf8.csv"), "--encoding", "cp1251", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["labels"]) == {"退款", "发票"}


def test_cp1252_note_in_json(capsys):
    assert main(["validate", str(GOOD / "cp1252.csv"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 30 and report["labels"] == ["balance", "card_lost", "transfer"]
    assert any("Windows-1252" in note for note in report["notes"])


def test_sample_data_is_usable(capsys):
    sample = ROOT / "sample_data" / "banking77_20"
    assert main(["validate", str(sample), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 2000 and len(report["labels"]) == 20
    assert report["splits"]["test"] == 800
    assert all(counts["test"] == 40 for counts in report["label_counts"].values())


def test_strict_exits_1_on_problems_only(capsys):
    banking = str(SHARED_DATA / "banking77")  # duplicates and train/test leakage: problems listed
    assert main(["validate", banking, "--strict"]) == 1 and "leakage" in capsys.readouterr().out
    assert main(["validate", banking, "--strict", "--json"]) == 1 and json.loads(capsys.readouterr().out)["problems"]
    assert main(["validate", str(GOOD / "custom_columns.csv"), "--text-col", "review", "--label-col", "stars",
                 "--strict", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == []


def test_a_label_with_a_tab_keeps_the_report_table_in_columns(tmp_path: Path, capsys) -> None:
    """The data review: a label's raw tab broke the table's alignment; a label cut at the column's width looked
    like the whole label."""
    rows = [f"text number {i} here,\"a\tb\"" for i in range(6)] + [f"text number {i} there,{'x' * 50}" for i in range(6)]
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    assert main(["validate", str(tmp_path / "d.csv")]) == 0
    out = capsys.readouterr().out
    assert "\t" not in out and "a\\tb" in out
    assert any(line.startswith("x" * 39 + "…") for line in out.splitlines())


def test_a_spaced_label_option_and_labels_that_mark_a_missing_value(tmp_path: Path, capsys) -> None:
    """The data review: --label-col " label " on the header ' label ' found no column (the header is stripped, the
    option was not), and labels 'NA' were trained as a class with no word but 'rare'."""
    rows = [f"text number {i},{'pos' if i % 2 else 'neg'}" for i in range(40)] + [f"unsure {i},NA" for i in range(3)]
    (tmp_path / "d.csv").write_text("text, label \n" + "\n".join(rows) + "\n")
    assert main(["validate", str(tmp_path / "d.csv"), "--label-col", " label ", "--strict", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert any("look like a missing value, not a class: 'NA' (3 rows)" in problem for problem in report["serious"])


def test_validate_imports_neither_torch_nor_transformers() -> None:
    """The real-model review: `validate` loads no model, yet paid 4.4 s of its 8 s importing torch and transformers
    (a data check in CI or a pre-commit hook paid it every call)."""
    script = ("import sys; from clm_explore.cli import main; code = main(['validate', 'sample', '--json']); "
              "print(code, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "0 []", done.stderr[-2000:]


def test_validate_counts_sub_tokens_and_the_texts_a_run_cuts_with_a_model(capsys, tmp_path) -> None:
    """The long-text review: validate, finetune and evaluate never said how many texts a run would cut; only the
    app's Data page counted them."""
    rows = [f"text number {i} about {'cards and more cards' * (i % 3)},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    assert main(["validate", str(tmp_path / "d.csv"), "--model", "tiny-random", "--max-length", "16", "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)["sub_tokens"]
    assert counted["model"] == "tiny-random" and counted["texts"] == 40 and counted["max_length"] == 16
    assert 0 < counted["longer"] < 40 and counted["min"] <= counted["median"] <= counted["p95"] <= counted["max"]
    assert main(["validate", str(tmp_path / "d.csv"), "--model", "tiny-random", "--max-length", "16"]) == 0
    said = capsys.readouterr().out
    assert f"{counted['longer']} of 40 texts" in said and "are longer than the 16 sub-tokens a run reads" in said
    assert main(["validate", str(tmp_path / "d.csv"), "--model", "tiny-random", "--max-length", "4"]) == 2
    assert "--max-length 4 must be in 8..512" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "d.csv"), "--json"]) == 0
    assert "sub_tokens" not in json.loads(capsys.readouterr().out)  # no model named: no count, no tokenizer loaded


def test_validate_asked_for_no_validation_split_does_not_list_it_as_a_problem(capsys, tmp_path) -> None:
    """The review of the new features: --validation-fraction 0 --strict exited 1 on the empty split it asked for; and
    --model with a length past the model's positions is refused as finetune refuses it."""
    rows = [f"text number {i} about {'cards' if i % 2 else 'cash'},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    main(["validate", str(tmp_path / "d.csv"), "--validation-fraction", "0", "--json"])
    assert "The validation split is empty." not in json.loads(capsys.readouterr().out)["problems"]
    assert main(["validate", str(tmp_path / "d.csv"), "--model", "tiny-random", "--max-length", "256"]) == 2
    assert "--max-length 256 is above the 128 positions a text may take in tiny-random" in capsys.readouterr().err


def test_unseen_test_labels_without_a_validation_split_say_no_threshold_is_chosen(capsys, tmp_path) -> None:
    """The review of the new features: the problem said a threshold is chosen on validation where none was given."""
    rows = [f"text number {i} about {'cards' if i % 2 else 'cash'},{'pos' if i % 2 else 'neg'},train" for i in range(40)]
    rows += [f"something else {i},other,test" for i in range(5)] + [f"text {i} cards,pos,test" for i in range(5)]
    (tmp_path / "d.csv").write_text("text,label,split\n" + "\n".join(rows) + "\n")
    main(["validate", str(tmp_path / "d.csv"), "--validation-fraction", "0", "--json"])
    said = [p for p in json.loads(capsys.readouterr().out)["problems"] if "out-of-scope" in p]
    assert len(said) == 1 and said[0].endswith("; with no validation split, none is chosen.")
    main(["validate", str(tmp_path / "d.csv"), "--json"])
    said = [p for p in json.loads(capsys.readouterr().out)["problems"] if "out-of-scope" in p]
    assert len(said) == 1 and said[0].endswith("(metrics.json's out_of_scope).")
