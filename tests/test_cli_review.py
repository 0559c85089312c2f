"""What a review of the command line found (fifty-first session): each case as a script would meet it."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from test_bench import in_process

from clm_explore.bench import BenchConfig, BenchError, run_grid
from clm_explore.cli import main
from clm_explore.runs import process_umask

TINY = ["--model", "tiny-random"]
FAST = ["--epochs", "1", "--batch-size", "32", "--max-length", "32", "--device", "cpu"]


def _error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def run_dir(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--budget", "0.05", "--out", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_seed_numpy_cannot_take_is_refused_before_anything_is_made(capsys, data_dir, tmp_path, seed):
    assert "--seed must be in 0..4294967295" in _error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST,
                                                                "--seed", seed, "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


@pytest.fixture
def umask_022():
    import os

    before = os.umask(0o022)  # a shared server's usual umask; safetensors itself writes 0600 whatever it is
    yield
    os.umask(before)


def test_the_weights_a_run_saves_are_readable_as_the_umask_says(umask_022, run_dir, tmp_path, capsys, data_dir):
    expected = 0o666 & ~process_umask()
    assert expected == 0o644
    tensors = sorted(run_dir.rglob("*.safetensors"))
    assert {"model.safetensors", "delta.safetensors", "masks.safetensors", "row_scores.safetensors"} <= {
        f.name for f in tensors}
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in tensors} == {f.name: expected for f in tensors}
    assert main(["sensitivity", str(data_dir), *TINY, "--device", "cpu", "--out", str(tmp_path / "scores")]) == 0
    assert "saved the scores to" in capsys.readouterr().err
    assert stat.S_IMODE((tmp_path / "scores" / "row_scores.safetensors").stat().st_mode) == expected
    private = tmp_path / "mine"  # a folder of the user's own, given to save (the CLI refuses it): others left alone
    (private / "deep").mkdir(parents=True)
    (private / "deep" / "keys.safetensors").write_bytes(b"x")
    (private / "deep" / "keys.safetensors").chmod(0o600)
    from clm_explore.sensitivity import SensitivityReport

    SensitivityReport.load(tmp_path / "scores").save(private)
    assert stat.S_IMODE((private / "deep" / "keys.safetensors").stat().st_mode) == 0o600
    assert stat.S_IMODE((private / "row_scores.safetensors").stat().st_mode) == expected


def test_a_bench_out_folder_holding_other_files_is_refused(data_dir, tmp_path):
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(BenchError, match="holds other files and no grid"):
        run_grid(data_dir, BenchConfig(methods=("head",), seeds=1, epochs=1, model="tiny-random", device="cpu"),
                 stranger, progress=False)
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]


def test_mine_refuses_a_negative_show_and_says_when_no_group_is_left(capsys, data_dir):
    assert "--show -1 must be 0 or more" in _error(capsys, ["mine", str(data_dir), *TINY, "--show", "-1"])
    assert main(["mine", str(data_dir), *TINY, "--min-count", "100000"]) == 0
    out = capsys.readouterr().out
    assert "No group occurs at least --min-count 100000 times" in out and "Empty DataFrame" not in out


def test_predict_prints_one_line_per_text(run_dir, capsys):
    assert main(["predict", "--run", str(run_dir), "--text", "line one\nline two\tx", "--text", "back\\slash"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and [len(line.split("\t")) for line in lines] == [3, 3]
    assert lines[0].endswith("\tline one\\nline two\\tx") and lines[1].endswith("\tback\\\\slash")
    assert main(["predict", "--run", str(run_dir), "--text", "page one\x0cpage two\u2028end"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("\tpage one\\x0cpage two\\u2028end")  # one line


def test_no_command_is_a_usage_error_and_the_version_is_printed(capsys):
    assert main([]) == 2 and "COMMAND" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ended:
        main(["--version"])
    assert ended.value.code == 0 and capsys.readouterr().out.startswith("clm-explore ")


def test_a_base_model_typed_wrong_is_named_as_the_users(run_dir, capsys):
    err = _error(capsys, ["changes", "--run", str(run_dir), "--base", "no-such-model"])
    assert "The base model no-such-model cannot be loaded" in err and "was trained from" not in err


def test_a_damaged_run_gets_no_card(run_dir, capsys):
    (run_dir / "model.safetensors").unlink()
    assert "its weights are missing" in _error(capsys, ["card", "--run", str(run_dir)])


def test_audit_says_where_it_wrote(capsys, tmp_path):
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "banking77_20"
    out = tmp_path / "flags.csv"
    assert main(["audit", str(sample), *TINY, "--device", "cpu", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"flagged row(s) to {out}" in captured.err and out.is_file()
    assert "flagged row(s) to" not in captured.out  # stdout keeps the table alone


def test_options_a_method_does_not_read_are_said(capsys, data_dir, tmp_path):
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--budget", "0.5",
                 "--score", "taylor", "--calibration-rows", "40", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "note: --budget is not read by head" in err and "note: --score is not read by head" in err
    assert "--calibration-rows" not in err  # every method's head warms up on the calibration rows (the diff review)
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--out",
                 str(tmp_path / "plain")]) == 0
    assert "is not read by" not in capsys.readouterr().err  # the defaults, not typed: nothing to say


def test_data_given_with_the_wrong_flag_is_said_plainly_and_predict_prints_the_files_notes(capsys, run_dir, tmp_path):
    assert "validate takes the data without --data: clm-explore validate DATA" in _error(
        capsys, ["validate", "--data", str(tmp_path)])
    texts = tmp_path / "texts.csv"
    texts.write_bytes(b"text\ncaf\xe9 au lait\n,\nmy card\n")  # a cp1252 line and a row of empty fields
    assert main(["predict", "--run", str(run_dir), "--file", str(texts)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and "read as Windows-1252" in captured.err
    assert "row(s) with only empty fields were skipped" in captured.err


def test_report_and_bench_print_the_datas_load_notes(capsys, run_dir, data_dir, tmp_path):
    import pandas as pd

    one = tmp_path / "one.csv"  # a single file: its test split is carved, and the report explains only that part
    pd.concat([pd.read_csv(data_dir / f"{split}.csv") for split in ("train", "test")]).to_csv(one, index=False)
    assert main(["report", "--run", str(run_dir), "--data", str(one), "--steps", "2", "--max-rows", "2",
                 "--out", str(tmp_path / "r.html")]) == 0
    assert "note: No test split was given" in capsys.readouterr().err
    cfg = BenchConfig(methods=("head",), seeds=1, epochs=1, model="tiny-random", max_length=32, device="cpu")
    run_grid(one, cfg, tmp_path / "grid", runner=in_process(cfg), progress=True)
    assert "note: No test split was given" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "said"), [
    (["finetune", "--data", "d", "--epoch", "1"], "clm-explore finetune: error: unrecognized arguments: --epoch "
     "(did you mean --epochs?)"),
    (["runs", "--jsn"], "clm-explore runs: error: unrecognized arguments: --jsn (did you mean --json?)"),
    (["mine", "d", "extra"], "clm-explore mine: error: unrecognized arguments: extra\n"),
    (["predict", "--rnu", "r", "--text", "hi"], "clm-explore predict: error: unrecognized arguments: --rnu (did you "
     "mean --run?)"),  # before argparse's "--run is required" (the diff review)
])
def test_options_are_not_abbreviated_and_a_mistyped_one_is_named_by_its_command(capsys, argv, said):
    """The CLI review: --epoch was taken as --epochs, so a script would break the day an --epoch-... option came;
    an unknown option was said under the top-level usage, which names no option of the command."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and said in err and err.startswith(f"usage: clm-explore {argv[0]} ")


def test_finetune_scores_rows_on_the_calibration_rows_it_is_given(capsys, data_dir, tmp_path):
    """The faces review: the app's Sensitivity page sets the calibration rows its runs score on; `finetune` had no
    flag for it, so such a run could not be made again from the command line."""
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "sparse", "--calibration-rows", "40",
                 "--out", str(tmp_path / "r")]) == 0
    assert "is not read by" not in capsys.readouterr().err
    recorded = json.loads((tmp_path / "r" / "clm_run.json").read_text())["config"]["sensitivity"]
    scored = json.loads((tmp_path / "r" / "sensitivity" / "sensitivity.json").read_text())
    assert recorded["calibration_rows"] == 40 and scored["config"]["calibration_rows"] == 40
