"""A run trained again from its own record (``clm-explore rerun``, ``clm_explore.rerun``), and what a run records of
what made it (``provenance``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from clm_explore.cli import main
from clm_explore.config import ConfigError
from clm_explore.data import DataError
from clm_explore.provenance import code_version
from clm_explore.reruns import rerun, rerun_plan

TINY = ["--model", "tiny-random"]
FAST = ["--epochs", "1", "--batch-size", "32", "--max-length", "32", "--device", "cpu"]


def _same_files(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "masks.safetensors", "delta.safetensors"):
        if (a / name).exists():
            one, other = load_file(a / name), load_file(b / name)
            assert one.keys() == other.keys() and all((one[k] == other[k]).all() for k in one), name
    assert (a / "predictions.csv").read_bytes() == (b / "predictions.csv").read_bytes()


@pytest.fixture
def topic_data(tiny_data, tmp_path: Path) -> Path:
    """One file with the label under another name and a second candidate column: only --label-col says which."""
    frame = pd.concat([tiny_data.train, tiny_data.test]).rename(columns={"label": "intent"})
    frame["topic"] = ["card" if "card" in label else "money" for label in frame["intent"]]
    path = tmp_path / "tickets.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_rerun_reads_the_data_as_the_run_did_and_gives_the_same_weights(capsys, topic_data, tmp_path):
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(topic_data), "--label-col", "intent", *TINY, *FAST, "--method", "sparse",
                 "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    record = json.loads((run / "clm_run.json").read_text())
    assert record["data_config"]["label_col"] == "intent" and record["data_path"] == str(topic_data.resolve())
    made = record["provenance"]
    assert made["code"] == code_version() and made["packages"]["torch"] and made["threads"] >= 1
    assert made["command"].startswith("clm-explore finetune --data") and "--label-col intent" in made["command"]
    assert main(["rerun", "--run", str(run), "--out", str(tmp_path / "again"), "--json"]) == 0
    said = capsys.readouterr()
    shown = json.loads(said.out)
    assert shown["rerun_of"] == str(run) and shown["rerun_of_metrics"]["accuracy"] == shown["accuracy"]
    assert shown["labels"] == json.loads((run / "metrics.json").read_text())["labels"]  # intent's, not topic's
    _same_files(run, tmp_path / "again")
    assert "note: this run was made by other code" not in said.err
    again = json.loads((tmp_path / "again" / "clm_run.json").read_text())
    assert again["provenance"]["command"].startswith("clm-explore rerun --run")


def test_a_rerun_refuses_other_rows_and_finds_data_given_where_the_recorded_is_gone(capsys, data_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--out", str(run)]) == 0
    moved = tmp_path / "moved"
    data_dir.rename(moved)
    capsys.readouterr()
    assert main(["rerun", "--run", str(run)]) == 2
    assert "is not a file or folder here (an upload in the app, a DataFrame, or moved): pass it (--data PATH" in capsys.readouterr().err
    train = pd.read_csv(moved / "train.csv")
    train.loc[0, "text"] = "an edited text"
    train.to_csv(moved / "train.csv", index=False)
    assert main(["rerun", "--run", str(run), "--data", str(moved)]) == 2
    assert "does not hold the rows run was trained on (data digest" in capsys.readouterr().err


def test_the_python_rerun_takes_changes_and_says_what_may_make_it_differ(tiny_data, data_dir, tmp_path):
    from clm_explore.config import FinetuneConfig
    from clm_explore.data import load_data
    from clm_explore.training import finetune

    first = finetune(load_data(data_dir), FinetuneConfig(method="head", epochs=1, device="cpu", max_length=32),
                     tmp_path / "run", source="tiny-random")
    other_seed = rerun(first, tmp_path / "seed1", seed=1, progress=False)
    assert json.loads((other_seed.out_dir / "clm_run.json").read_text())["config"]["seed"] == 1
    assert other_seed.metrics["seed"] == 1
    record_path = first.out_dir / "clm_run.json"
    record = json.loads(record_path.read_text())
    older = {k: v for k, v in record.items() if k not in ("provenance", "data_config")}  # a run of an older version
    record_path.write_text(json.dumps(older))
    with pytest.warns(UserWarning) as said:
        again = rerun(first, tmp_path / "again", progress=False)
    assert [str(w.message).split(" (")[0] for w in said] == [
        "the run does not record the code that made it", "the run does not record the options its data was read with"]
    _same_files(first.out_dir, again.out_dir)
    newer = {**record, "config": {**record["config"], "future_option": 3, "mask": {**record["config"]["mask"],
                                                                                   "new_rule": True}}}
    record_path.write_text(json.dumps(newer))
    with pytest.raises(ConfigError, match=r"written by a newer clm-explore: its settings mask\.new_rule, future_option"):
        rerun_plan(first)
    record_path.write_text(json.dumps({**record, "provenance": {**record["provenance"], "code": "0123456789abcdef"}}))
    assert any("made by other code or packages (clm-explore code 0123456789abcdef there" in note
               for note in rerun_plan(first).notes)


def test_a_run_trained_from_given_scores_reruns_from_its_copy_of_them(capsys, data_dir, tmp_path):
    scores = tmp_path / "scores"
    assert main(["sensitivity", str(data_dir), *TINY, "--out", str(scores), "--json"]) == 0  # read at 64 sub-tokens
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--scores", str(scores), "--out", str(run)]) == 0
    plan = rerun_plan(run)
    assert plan.scores == run / "sensitivity"
    capsys.readouterr()
    assert main(["rerun", "--run", str(run), "--out", str(tmp_path / "again")]) == 0
    _same_files(run, tmp_path / "again")  # scored again at the run's 32 sub-tokens, its masks differed


def test_rerun_refuses_a_folder_that_is_no_run(capsys, tmp_path):
    assert main(["rerun", "--run", str(tmp_path)]) == 2
    assert "is neither a run folder (with clm_run.json) nor a known run id" in capsys.readouterr().err
    (tmp_path / "clm_run.json").write_text("{}")
    with pytest.raises(Exception, match="holds no clm_run.json with a run's config"):
        rerun_plan(tmp_path)
    (tmp_path / "clm_run.json").write_text(json.dumps({"method": "head", "config": {"method": "head"},
                                                       "data": str(tmp_path / "gone.csv")}))
    with pytest.raises(DataError, match="gone.csv.* is not a file or folder here"):
        rerun_plan(tmp_path)


def test_a_rerun_at_another_seed_draws_other_rows_as_finetune_at_that_seed_does(data_dir, tmp_path, capsys):
    """The diff review: the record's mask seed (settled from the run's) stayed 0, so a rerun at seed 1 drew seed 0's
    random rows."""
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "random", "--out", str(run)]) == 0
    assert main(["rerun", "--run", str(run), "--seed", "1", "--out", str(tmp_path / "seed1")]) == 0
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "random", "--seed", "1",
                 "--out", str(tmp_path / "direct1")]) == 0
    capsys.readouterr()
    masks = {name: load_file(tmp_path / name / "masks.safetensors") for name in ("run", "seed1", "direct1")}
    assert any(not (masks["run"][k] == masks["seed1"][k]).all() for k in masks["run"])
    _same_files(tmp_path / "direct1", tmp_path / "seed1")


def test_uploads_record_no_path_and_files_their_absolute_one(data_dir, tmp_path):
    from clm_explore.data import load_data, load_upload

    assert load_data(data_dir).path == str(data_dir.resolve())
    raw = (data_dir / "train.csv").read_bytes()
    (tmp_path / "train.csv").write_bytes(b"text,label\nan unrelated file,x\n")  # the server's folder holds one so named
    assert load_upload(raw, "train.csv").path is None
