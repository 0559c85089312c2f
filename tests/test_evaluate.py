"""``clm-explore evaluate``: a finished run scored on labelled rows, as finetune scored its own test split."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from clm_explore.cli import main

FAST = ["--epochs", "1", "--batch-size", "32", "--max-length", "32", "--device", "cpu"]


def _head_run(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(data_dir), "--model", "tiny-random", "--method", "head", "--out", str(run),
                 "--json", *FAST]) == 0
    metrics = json.loads(capsys.readouterr().out)
    return run, metrics


def test_evaluate_prints_the_runs_own_figures_on_its_test_file_and_writes_the_rows(data_dir, tmp_path, capsys):
    run, metrics = _head_run(data_dir, tmp_path, capsys)
    rows = tmp_path / "rows.csv"
    assert main(["evaluate", "--run", str(run), "--data", str(data_dir), "--json", "--predictions", str(rows)]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["accuracy"] == metrics["accuracy"] and said["macro_f1"] == metrics["macro_f1"]
    assert said["rows"] == len(pd.read_csv(data_dir / "test.csv")) and said["unseen_labels"] == []
    written = pd.read_csv(rows, keep_default_na=False)
    assert list(written.columns) == ["row", "text", "label", "pred", "prob", "correct"]
    assert written["correct"].mean() == metrics["accuracy"]
    assert main(["evaluate", "--run", str(run), "--data", str(data_dir / "test.csv"), "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}" in out
    assert "the 2 labels with the lowest F1 (of " in out


def test_evaluate_names_labels_the_run_never_saw_and_refuses_what_it_cannot_score(data_dir, tmp_path, capsys):
    run, _ = _head_run(data_dir, tmp_path, capsys)
    new = pd.read_csv(data_dir / "test.csv").head(5).rename(columns={"text": "utterance", "label": "intent"})
    new.loc[0, "intent"] = "refund_request"
    new.to_csv(tmp_path / "new.csv", index=False)
    argv = ["evaluate", "--run", str(run), "--data", str(tmp_path / "new.csv")]
    assert main(argv) == 0  # the columns found by their usual names
    out = capsys.readouterr().out
    assert "rows: 5 (1 with a label the run was not trained on, counted wrong: refund_request)" in out
    new.assign(intent="nothing the run knows").to_csv(tmp_path / "other.csv", index=False)
    assert main(["evaluate", "--run", str(run), "--data", str(tmp_path / "other.csv")]) == 2
    assert "None of the data's labels (nothing the run knows) is one of the run's" in capsys.readouterr().err
    assert main([*argv, "--predictions", str(tmp_path)]) == 2  # a folder
    assert "not a file in an existing folder" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path / "nothing"), "--data", str(data_dir)]) == 2
    assert "no such run folder or run id" in capsys.readouterr().err


def test_evaluate_scores_the_test_rows_a_split_column_names(data_dir, tmp_path, capsys):
    """The diff review: a file with a split column (as splits_csv writes one) had every row scored, training rows
    too, without a word."""
    run, metrics = _head_run(data_dir, tmp_path, capsys)
    splits = pd.concat([pd.read_csv(data_dir / f"{name}.csv").assign(split=name) for name in ("train", "test")])
    splits.to_csv(tmp_path / "splits.csv", index=False)
    assert main(["evaluate", "--run", str(run), "--data", str(tmp_path / "splits.csv"), "--json"]) == 0
    captured = capsys.readouterr()
    test_rows = len(pd.read_csv(data_dir / "test.csv"))
    assert json.loads(captured.out)["rows"] == test_rows and json.loads(captured.out)["accuracy"] == metrics["accuracy"]
    assert f"names {test_rows:,} of its {len(splits):,} rows test: those are scored" in captured.err
    splits.assign(split="train").to_csv(tmp_path / "train_only.csv", index=False)
    assert main(["evaluate", "--run", str(run), "--data", str(tmp_path / "train_only.csv")]) == 2
    assert "split column names no test row" in capsys.readouterr().err


def test_predictions_never_replace_the_data_the_run_or_a_file_evaluate_did_not_write(data_dir, tmp_path, capsys):
    """The CLI review: --predictions replaced the test data, and the run's metrics.json, without a word."""
    run, _ = _head_run(data_dir, tmp_path, capsys)
    argv = ["evaluate", "--run", str(run), "--data", str(data_dir)]
    (tmp_path / "notes.csv").write_text("my,own\n1,2\n")
    for target, said in ((data_dir / "test.csv", "is inside the data"), (run / "metrics.json", "inside the run's"),
                         (tmp_path / "notes.csv", "exists and is not a file evaluate wrote")):
        before = target.read_bytes()
        assert main([*argv, "--predictions", str(target)]) == 2
        assert said in capsys.readouterr().err and target.read_bytes() == before
    assert main([*argv, "--predictions", str(tmp_path / "p.csv")]) == 0
    assert main([*argv, "--predictions", str(tmp_path / "p.csv")]) == 0  # an earlier predictions file is replaced


def test_evaluate_takes_a_split_column_by_name(data_dir, tmp_path, capsys):
    """The CLI review: a run trained with --split-col fold had every row of the file scored, training rows too."""
    run, metrics = _head_run(data_dir, tmp_path, capsys)
    folds = pd.concat([pd.read_csv(data_dir / f"{name}.csv").assign(fold=name) for name in ("train", "test")])
    folds.to_csv(tmp_path / "folds.csv", index=False)
    assert main(["evaluate", "--run", str(run), "--data", str(tmp_path / "folds.csv"), "--split-col", "fold",
                 "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["rows"] == len(pd.read_csv(data_dir / "test.csv")) and said["accuracy"] == metrics["accuracy"]


def test_evaluate_scores_out_of_scope_rows_with_the_runs_threshold_as_the_run_scored_them(data_dir, tmp_path, capsys):
    """The CLI review: evaluate --json left out the out-of-scope figures finetune writes for such rows (HINT3's
    NO_NODES_DETECTED). On the run's own test split they are the run's figures."""
    test = pd.read_csv(data_dir / "test.csv")
    pd.concat([test, test.head(6).assign(label="NO_NODES_DETECTED")]).to_csv(data_dir / "test.csv", index=False)
    run, metrics = _head_run(data_dir, tmp_path, capsys)
    assert metrics["out_of_scope"]["threshold"] is not None
    rows = tmp_path / "rows.csv"
    assert main(["evaluate", "--run", str(run), "--data", str(data_dir), "--json", "--predictions", str(rows)]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["out_of_scope"] == pytest.approx(metrics["out_of_scope"])
    # The rows the abstention figures count as answered "out of scope", as the run's predictions.csv marks them
    written, own = pd.read_csv(rows, keep_default_na=False), pd.read_csv(run / "predictions.csv", keep_default_na=False)
    assert list(written.columns) == ["row", "text", "label", "pred", "prob", "out_of_scope", "correct"]
    assert written["out_of_scope"].tolist() == own["out_of_scope"].tolist() and written["out_of_scope"].any()
    assert main(["evaluate", "--run", str(run), "--data", str(data_dir), "--predictions", str(rows)]) == 0  # its own
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(data_dir), "--json", "--abstain-below", "0.999"]) == 0
    strict = json.loads(capsys.readouterr().out)["out_of_scope"]
    assert strict["threshold"] == 0.999 and strict["oos_recall"] == 1.0 and strict["quantile"] is None
    assert main(["evaluate", "--run", str(run), "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"out of scope (6 rows): AUROC of the top probability at telling them apart {said['out_of_scope']['auroc']:.3f}" in out
    assert f"answering out of scope below {metrics['out_of_scope']['threshold']:.3f}: accuracy" in out
    test.to_csv(tmp_path / "in_scope.csv", index=False)
    assert main(["evaluate", "--run", str(run), "--data", str(tmp_path / "in_scope.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out_of_scope"] is None
    assert main(["evaluate", "--run", str(run), "--data", str(data_dir), "--abstain-below", "2"]) == 2
    assert "--abstain-below takes a probability in (0, 1)" in capsys.readouterr().err


def test_evaluate_on_the_file_a_run_carved_its_splits_from_scores_its_test_split(data_dir, tmp_path, capsys):
    one = tmp_path / "one.csv"
    pd.read_csv(data_dir / "train.csv").to_csv(one, index=False)  # a single file: the run carves its splits
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(one), "--model", "tiny-random", "--method", "head", "--out", str(run),
                 "--json", *FAST]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--run", str(run), "--data", str(one), "--json"]) == 0
    said = capsys.readouterr()
    scored = json.loads(said.out)  # before: every row of the file, those it trained on too, without a word
    assert scored["rows"] == metrics["test_rows"] < len(pd.read_csv(one))
    assert scored["accuracy"] == metrics["accuracy"]
    assert "this is the data the run was trained on: its test split" in said.err
    other = tmp_path / "other.csv"
    pd.read_csv(one).head(40).to_csv(other, index=False)  # other rows (a part of it): scored whole
    assert main(["evaluate", "--run", str(run), "--data", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 40
    record = json.loads((run / "clm_run.json").read_text())
    older = {k: v for k, v in record.items() if k not in ("data_digest", "data_path")}  # the upgrade review
    (run / "clm_run.json").write_text(json.dumps(older))
    assert main(["evaluate", "--run", str(run), "--data", str(one), "--json"]) == 0
    said = capsys.readouterr()
    assert json.loads(said.out)["rows"] == metrics["test_rows"]  # known by its predictions.csv
    assert "Known by its predictions.csv: the run is older than its record of its data" in said.err
    (run / "clm_run.json").write_text(json.dumps(record))
    edited = pd.read_csv(one)
    edited.loc[0, "text"] = "an edited text"
    edited.to_csv(one, index=False)  # the run's own file, changed since it trained
    assert main(["evaluate", "--run", str(run), "--data", str(one), "--json"]) == 0
    said = capsys.readouterr()
    assert json.loads(said.out)["rows"] == len(edited)
    assert f"{one} is the run's data file, but not the rows it was trained on any more" in said.err


def test_a_run_whose_labels_were_decomposed_accents_scores_a_file_read_in_the_composed_form(data_dir, tmp_path,
                                                                                              capsys):
    """Labels are read in one Unicode form now (NFC): a run trained before on macOS's decomposed 'é' must still find
    them."""
    run, metrics = _head_run(data_dir, tmp_path, capsys)
    config = json.loads((run / "config.json").read_text())
    config["id2label"] = {i: f"{label}\u0301" for i, label in config["id2label"].items()}  # 'xé', decomposed
    config["label2id"] = {label: int(i) for i, label in config["id2label"].items()}
    (run / "config.json").write_text(json.dumps(config))
    accented = tmp_path / "accented.csv"
    frame = pd.read_csv(data_dir / "test.csv")
    frame.assign(label=frame["label"] + "\u0301").to_csv(accented, index=False)  # read back composed: 'é'
    assert main(["evaluate", "--run", str(run), "--data", str(accented), "--json"]) == 0
    said = capsys.readouterr()
    assert json.loads(said.out)["accuracy"] == metrics["accuracy"] and "the same accents encoded otherwise" in said.err


def test_evaluate_reads_the_data_in_the_encoding_given(data_dir, tmp_path, capsys):
    """The diff review: evaluate took --encoding and read the file with a guess all the same."""
    run, metrics = _head_run(data_dir, tmp_path, capsys)
    frame = pd.read_csv(data_dir / "test.csv")
    legacy = tmp_path / "test-cp1250.csv"
    legacy.write_bytes(frame.assign(text=frame["text"] + " – číslo").to_csv(index=False).encode("cp1250"))
    assert main(["evaluate", "--run", str(run), "--data", str(legacy), "--encoding", "cp1250", "--json"]) == 0
    said = capsys.readouterr()
    assert "read as cp1250, as given" in said.err and "guess" not in said.err


def test_a_run_that_spelled_whole_number_labels_as_decimals_scores_them(data_dir, tmp_path, capsys):
    """The diff review: a file's labels "3.0" now read as "3", so a run trained before (its labels "3.0") scored 0 on
    its own file."""
    numbered = tmp_path / "numbered"
    numbered.mkdir()
    names = sorted(set(pd.read_csv(data_dir / "train.csv")["label"]))
    for split in ("train", "test"):
        frame = pd.read_csv(data_dir / f"{split}.csv")
        frame.assign(label=frame["label"].map(names.index)).to_csv(numbered / f"{split}.csv", index=False)
    run, metrics = _head_run(numbered, tmp_path, capsys)
    config = json.loads((run / "config.json").read_text())
    config["id2label"] = {i: f"{label}.0" for i, label in config["id2label"].items()}  # as such a run has them
    config["label2id"] = {label: int(i) for i, label in config["id2label"].items()}
    (run / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", "--run", str(run), "--data", str(numbered / "test.csv"), "--json"]) == 0
    said = capsys.readouterr()
    assert json.loads(said.out)["accuracy"] == metrics["accuracy"] and "labels read as the run writes" in said.err


def test_evaluate_on_the_file_a_python_run_carved_at_its_own_seed_scores_that_test_split(data_dir, tmp_path) -> None:
    """The metrics review: evaluate carved the run's file at the default seed, so a run carved at another one had
    its training rows scored too (144 of 200), and the file was said to have changed."""
    import clm_explore as clm

    one = tmp_path / "one.csv"
    pd.read_csv(data_dir / "train.csv").to_csv(one, index=False)
    data = clm.load_data(one, seed=1, test_fraction=0.3)
    result = clm.finetune(data, clm.FinetuneConfig(method="head", epochs=1, max_length=16), tmp_path / "run",
                          source="tiny-random", progress=False)
    notes: list[str] = []
    scored = clm.evaluate(result, one, notes=notes)
    assert len(scored.predictions) == len(data.test) < len(pd.read_csv(one))
    assert set(scored.predictions["text"]) == set(data.test["text"])
    assert scored.metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert any("this is the data the run was trained on" in note for note in notes)
    assert not any("changed since" in note for note in notes)


def test_evaluate_on_the_file_a_run_split_by_a_column_scores_its_test_rows_without_the_flag(data_dir, tmp_path,
                                                                                            capsys) -> None:
    """The diff review: the CLI passed split_col=None over the run's recorded split column, so its own file was
    scored whole (225 training rows of 300) and said to have changed."""
    parted = tmp_path / "parted.csv"
    rows = pd.read_csv(data_dir / "train.csv")
    rows.assign(part=["test" if i % 4 == 0 else "train" for i in range(len(rows))]).to_csv(parted, index=False)
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(parted), "--split-col", "part", "--model", "tiny-random", "--method",
                 "head", "--out", str(run), "--json", *FAST]) == 0
    tested = json.loads(capsys.readouterr().out)["test_rows"]
    assert main(["evaluate", "--run", str(run), "--data", str(parted), "--json"]) == 0
    said = capsys.readouterr()
    assert json.loads(said.out)["rows"] == tested < len(rows) and "changed since" not in said.err
