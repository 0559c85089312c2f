"""``clm-explore mine | sensitivity | finetune | predict`` in-process on the tiny random BERT."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from clm_explore.cli import main
from tests.conftest import held_by_another_process

TINY = ["--model", "tiny-random"]
FAST = ["--epochs", "1", "--batch-size", "32", "--max-length", "32", "--device", "cpu"]


def run_json(capsys, argv: list[str]):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def run_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_commands_that_read_data_with_a_model_say_when_its_vocabulary_cannot_read_the_texts(capsys, tmp_path,
                                                                                               data_dir):
    """The language review: Chinese text is 72% [UNK] to the default model; mined, scored and trained with no word,
    it gave 0.63 accuracy. The tiny model's vocabulary has no Chinese either."""
    rows = [f"我想{'退款' if i % 2 else '开发票'}第{i}次" for i in range(40)]
    pd.DataFrame({"text": rows, "label": ["退款" if i % 2 else "发票" for i in range(40)]}).to_csv(
        tmp_path / "zh.csv", index=False)
    assert main(["mine", str(tmp_path / "zh.csv"), *TINY, "--json"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "of the training texts' sub-tokens are [UNK] to this model's vocabulary" in err
    assert "multilingual" in err
    assert main(["mine", str(data_dir), *TINY, "--json"]) == 0
    assert "[UNK]" not in capsys.readouterr().err  # English data: nothing said


def test_mine_takes_the_background_language_and_refuses_one_without_a_list(capsys, data_dir):
    groups = run_json(capsys, ["mine", str(data_dir), *TINY, "--json", "--background-lang", "en"])
    assert groups
    err = run_error(capsys, ["mine", str(data_dir), *TINY, "--background-lang", "xx"])
    assert "--background-lang must be auto or a language wordfreq has a word list for" in err and "de, " in err
    assert main(["mine", str(data_dir), *TINY, "--show", "1"]) == 0
    assert "background: wordfreq (English, detected)" in capsys.readouterr().out


def test_a_full_disk_said_by_a_library_that_raises_no_oserror_is_one_message_not_a_traceback(capsys, data_dir,
                                                                                              monkeypatch):
    """The crash review: `finetune --out` on a full tmpfs ended in safetensors' SafetensorError traceback (exit 1)."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("clm_explore.data.load_data", full)
    err = run_error(capsys, ["mine", str(data_dir), *TINY])
    assert "a disk the command writes to is full" in err and "free some space there" in err and "os error 28" in err
    monkeypatch.setattr("clm_explore.data.load_data", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # any other error stays a traceback: a bug to report, not to hide
        main(["mine", str(data_dir), *TINY])


def test_mine_json(capsys, data_dir):
    groups = run_json(capsys, ["mine", str(data_dir), *TINY, "--json", "--top", "20"])
    assert 0 < len(groups) <= 20
    for g in groups:
        assert {"text", "pieces", "count", "score", "label", "lift"} <= set(g)
        assert isinstance(g["pieces"], list) and g["pieces"]
        assert g["count"] >= 5 and g["score"] > 0 and g["lift"] >= 1
        assert g["label"] in {"card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed"}
    scores = [g["score"] for g in groups]
    assert scores == sorted(scores, reverse=True)
    merged = run_json(capsys, ["mine", str(data_dir), *TINY, "--json", "--top", "20", "--merge", "3"])
    assert [g["text"] for g in merged] == [g["text"] for g in groups]  # the same list, one shape
    assert all(isinstance(g["pieces"], list) and "merged_slot" in g for g in merged)
    assert all(0 < g["label_rows"] <= g["count"] for g in groups)
    assert main(["mine", str(data_dir), *TINY, "--top", "20"]) == 0
    header, first = capsys.readouterr().out.splitlines()[1:3]  # the score's parts and the label's rows are shown
    assert header.split() == ["text", "pieces", "count", "relevance", "specificity", "score", "label", "label", "rows",
                              "lift"]
    top = groups[0]
    assert f"{top['label_rows']}/{top['count']}" in first.split() and top["label"] in first.split()
    few = run_json(capsys, ["mine", str(data_dir), *TINY, "--json", "--shots", "5", "--min-count", "2"])
    assert few and all(g["count"] <= 20 for g in few)  # mined from 5 rows per label, 4 labels: bench's draw
    from clm_explore.bench import few_shot
    from clm_explore.data import load_data

    drawn = few_shot(load_data(data_dir).train, 5, 0)
    group = few[0]["text"]
    assert few[0]["count"] == int(drawn["text"].str.lower().str.contains(rf"\b{re.escape(group)}\b").sum())
    assert main(["mine", str(data_dir), *TINY, "--shots", "5", "--min-count", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"{len(few)} groups from 20 training rows")
    assert "--fragment-min-chars must be >= 1, got 0" in run_error(capsys, ["mine", str(data_dir), *TINY,
                                                                           "--fragment-min-chars", "0"])
    assert "--min-score-share must be in [0, 1), got 1.0" in run_error(capsys, ["mine", str(data_dir), *TINY,
                                                                              "--min-score-share", "1"])
    every = run_json(capsys, ["mine", str(data_dir), *TINY, "--json"])
    best = max(g["score"] for g in every)
    kept = run_json(capsys, ["mine", str(data_dir), *TINY, "--json", "--min-score-share", "0.5"])
    assert 0 < len(kept) < len(every) and min(g["score"] for g in kept) >= 0.5 * best


def test_mine_json_names_the_slot_of_each_merged_word(capsys, tmp_path):
    rows = [("refunding my money please", "refund"), ("card has not arrived", "card")] * 8
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(tmp_path / "data.csv", index=False)
    groups = run_json(capsys, ["mine", str(tmp_path / "data.csv"), *TINY, "--json", "--merge", "3"])
    by_text = {g["text"]: g for g in groups}
    assert by_text["refunding"]["merged_slot"] == "[unused0]"  # refund ##ing: the one multi-piece word
    assert by_text["refunding"]["pieces"] == ["refund", "##ing"]  # the split, not the merged token
    assert by_text["card"]["merged_slot"] is None


def test_sensitivity_json(capsys, data_dir, tmp_path):
    rows = run_json(capsys, ["sensitivity", str(data_dir), *TINY, "--json", "--calibration-rows", "32",
                             "--device", "cpu", "--head-init", "centroid", "--fisher-labels", "model",
                             "--label-draws", "2", "--out", str(tmp_path / "sens")])
    assert len(rows) == 2 * 6 + 2  # q k v o ffn_in ffn_out per layer, pooler, embeddings
    for r in rows:
        assert {"layer", "module", "score", "norm_score", "rows", "params"} <= set(r)
        assert r["score"] >= 0 and r["rows"] >= 0
    q0 = next(r for r in rows if r["layer"] == 0 and r["module"] == "q")
    assert (q0["rows"], q0["params"]) == (32, 32 * 33)
    assert (tmp_path / "sens" / "row_scores.safetensors").is_file()
    assert (tmp_path / "sens" / "task_tokens.json").is_file()
    saved = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert saved["config"]["head_init"] == "centroid"
    assert (saved["config"]["fisher_labels"], saved["config"]["label_draws"]) == ("model", 2)


def test_finetune_out_overwrite_and_predict(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["finetune", "--data", str(data_dir), *TINY, *FAST, "--out", str(out), "--json"]
    first = run_json(capsys, args)
    assert Path(first["out_dir"]) == out
    assert {"accuracy", "macro_f1", "trainable_params", "total_params", "run"} <= set(first)
    assert first["method"] == "sparse" and first["budget"] == 0.01
    for name in ("config.json", "model.safetensors", "metrics.json", "predictions.csv", "masks.safetensors"):
        assert (out / name).is_file(), name
    from clm_explore.runs import RunStore

    listed = RunStore().get(first["run"])  # as the app lists its own runs: method, config, model and data
    assert listed.method == "sparse" and listed.config["epochs"] == 1 and listed.config["mask"]["budget"] == 0.01
    assert listed.config["source"] == "tiny-random" and listed.config["data"]

    err = run_error(capsys, args)  # the folder exists: refuse without --overwrite
    assert "--overwrite" in err and str(out) in err
    assert (out / "model.safetensors").is_file()  # nothing was deleted

    second = run_json(capsys, [*args, "--overwrite"])
    assert Path(second["out_dir"]) == out and second["run"]

    texts = ["my card has not arrived", "what is the exchange rate"]
    assert main(["predict", "--run", str(out), "--text", texts[0], "--text", texts[1], "--json"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [r["text"] for r in results] == texts
    assert "unknown sub-tokens" not in captured.err
    (tmp_path / "gbk.txt").write_bytes("我想退款\n发票在哪里\n".encode("gb18030"))
    assert main(["predict", "--run", str(out), "--file", str(tmp_path / "gbk.txt"), "--encoding", "gb18030",
                 "--json"]) == 0
    said = capsys.readouterr()
    assert [r["text"] for r in json.loads(said.out)] == ["我想退款", "发票在哪里"] and "as given" in said.err
    assert main(["predict", "--run", str(out), "--text", "我想退款", "--text", texts[0], "--text", "😀😀"]) == 0
    # the language review: such texts got one label whatever they said, with no word
    assert "note: 2 text(s) (number 1, 3, counted from 1) are mostly unknown sub-tokens" in capsys.readouterr().err
    labels = json.loads((out / "metrics.json").read_text())["labels"]
    for r in results:
        assert r["label"] in labels and 0 < r["probability"] <= 1
        assert r["top"][0] == {"label": r["label"], "probability": r["probability"]}
        assert len(r["top"]) == 3


def test_predict_abstains_below_a_probability_or_the_runs_own_threshold(capsys, data_dir, tmp_path):
    from clm_explore.batches import label_file

    test = pd.read_csv(data_dir / "test.csv")
    test.loc[:9, "label"] = "unsupported_request"  # test rows whose label train never had
    test.to_csv(data_dir / "test.csv", index=False)
    out = tmp_path / "run"
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head",
                 "--out-of-scope-quantile", "0.3", "--out", str(out)]) == 0
    scope = json.loads((out / "metrics.json").read_text())["out_of_scope"]
    assert scope["quantile"] == 0.3 and scope["rows"] == 10
    # The real-model review: the run's closing lines gave the plain accuracy alone, every unseen label's row wrong.
    said = capsys.readouterr().out
    assert f"out of scope (10 rows): AUROC of the top probability at telling them apart {scope['auroc']:.3f}" in said
    assert (f"(the threshold turns away 30% of the {scope['validation_rows']} in-scope validation rows: few rows make a "
            "rough quantile)") in said
    texts = test["text"].head(20).tolist()
    given = sum([["--text", t] for t in texts], [])
    plain = run_json(capsys, ["predict", "--run", str(out), *given, "--abstain-below", "none", "--json"])
    assert all("out_of_scope" not in r for r in plain)
    ruled = run_json(capsys, ["predict", "--run", str(out), *given, "--abstain-below", "run", "--json"])
    assert [r["out_of_scope"] for r in ruled] == [r["probability"] < scope["threshold"] for r in plain]
    # The faces review: the app and label_file abstain at the run's threshold by themselves; predict did not.
    assert run_json(capsys, ["predict", "--run", str(out), *given, "--json"]) == ruled
    below = [t for t, r in zip(texts, ruled, strict=True) if r["out_of_scope"]]
    assert below, "the threshold is the 0.3 quantile of validation's top probabilities: some test rows fall under it"
    assert main(["predict", "--run", str(out), "--text", below[0]]) == 0
    said = capsys.readouterr()
    assert said.out.startswith("(out of scope)\t") and "1 text(s) scored below the out-of-scope threshold" in said.err
    csv = tmp_path / "labels.csv"
    assert main(["predict", "--run", str(out), *given, "--out", str(csv)]) == 0
    assert f"{len(below)} text(s) scored below the out-of-scope threshold" in capsys.readouterr().err
    assert pd.read_csv(csv)["out_of_scope"].tolist() == [r["out_of_scope"] for r in ruled]
    assert label_file(out, csv)["out_of_scope"].tolist() == [r["out_of_scope"] for r in ruled]
    everything = run_json(capsys, ["predict", "--run", str(out), "--text", texts[0], "--abstain-below", "0.999",
                                   "--json"])
    assert everything[0]["out_of_scope"] is True
    assert main(["predict", "--run", str(out), "--text", texts[0], "--abstain-below", "0.999"]) == 0
    assert capsys.readouterr().out.startswith("(out of scope)\t")


def test_predict_writes_a_csv_of_labels_and_replaces_only_its_own(capsys, data_dir, tmp_path):
    """Scripted labelling of a file: a CSV a row per text (the app's "Label a file" table), not lines to parse."""
    out = tmp_path / "run"
    run_json(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--out", str(out),
                      "--json"])
    texts = pd.read_csv(data_dir / "test.csv")["text"].head(5).tolist()
    (tmp_path / "new.txt").write_text("\n".join(texts) + "\n")
    csv = tmp_path / "labels.csv"
    assert main(["predict", "--run", str(out), "--file", str(tmp_path / "new.txt"), "--out", str(csv),
                 "--abstain-below", "0.999"]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"5 text(s) labelled into {csv}: ")
    written = pd.read_csv(csv)
    plain = run_json(capsys, ["predict", "--run", str(out), "--file", str(tmp_path / "new.txt"), "--json"])
    assert written["text"].tolist() == texts and written["label"].tolist() == [r["label"] for r in plain]
    assert list(written.columns) == ["row", "text", "label", "probability", "runner_up", "runner_up_probability",
                                     "out_of_scope"] and written["out_of_scope"].all()
    assert main(["predict", "--run", str(out), "--text", "hello", "--out", str(csv)]) == 0  # its own: replaced
    assert pd.read_csv(csv)["text"].tolist() == ["hello"]
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())  # as the app's download has it: its own too
    assert main(["predict", "--run", str(out), "--text", "hi", "--out", str(csv)]) == 0
    capsys.readouterr()
    for other, phrase in ((data_dir / "test.csv", "exists and is not an earlier predict CSV"),
                          (tmp_path / "labels.txt", "must name a .csv file"),
                          (tmp_path / "nowhere" / "x.csv", "does not exist")):
        before = other.read_bytes() if other.exists() else None
        assert phrase in run_error(capsys, ["predict", "--run", str(out), "--text", "hi", "--out", str(other)])
        assert (other.read_bytes() if other.exists() else None) == before  # a data file typed by mistake: kept
    assert "choose one" in run_error(capsys, ["predict", "--run", str(out), "--text", "hi", "--out", str(csv),
                                              "--json"])


@pytest.mark.parametrize(("value", "phrase"), [("1.5", "probability in (0, 1)"), ("often", "(0, 1) or 'run' or 'none'"),
                                               ("run", "chose no out-of-scope threshold")])
def test_a_bad_abstention_threshold_exits_2(capsys, data_dir, tmp_path, value, phrase):
    out = tmp_path / "run"
    run_json(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--out", str(out),
                      "--json"])
    err = run_error(capsys, ["predict", "--run", str(out), "--text", "hello", "--abstain-below", value])
    assert phrase in err


@pytest.mark.parametrize("budget", ["0", "-1", "1.5"])
def test_bad_budget_exits_2(capsys, data_dir, tmp_path, budget):
    with pytest.raises(SystemExit) as stopped:  # argparse's refusal, as the options are read
        main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--budget", budget, "--out", str(tmp_path / "run")])
    assert stopped.value.code == 2 and f"argument --budget: {budget} must be a fraction" in capsys.readouterr().err


def test_budget_above_the_parameter_count_exits_2(capsys, data_dir, tmp_path):
    err = run_error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--budget", "100000000",
                             "--out", str(tmp_path / "run")])
    assert "a budget of 100,000,000 parameters is more than the backbone has" in err


def test_unknown_method_exits_2(capsys, data_dir):
    err = run_error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "magic"])
    assert "magic" in err and "sparse" in err


def test_one_label_data_exits_2(capsys, tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"text": [f"my card number {i} is lost" for i in range(30)], "label": ["lost"] * 30}).to_csv(
        path, index=False)
    err = run_error(capsys, ["finetune", "--data", str(path), *TINY, *FAST])
    assert "lost" in err and "label" in err


def test_finetune_schedule_options_reach_the_run_config(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    run_json(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--schedule", "constant",
                      "--warmup-ratio", "0", "--head-lr", "0.02", "--norm-lr", "0.03", "--dropout", "0",
                      "--score", "gradient", "--head-warmup-epochs", "2", "--head-init", "centroid",
                      "--cache-frozen-layers", "--cold-head", "--label-smoothing", "0.1", "--average-last", "0.5",
                      "--sample-temperature", "0.5", "--random-share", "0.25", "--out", str(out), "--json"])
    saved = json.loads((out / "clm_run.json").read_text())["config"]
    assert saved["cache_frozen_layers"] is True and saved["head_warmup"] is False
    assert json.loads((out / "metrics.json").read_text())["prefix_cache"]["from_layer"] >= 1  # it ran cached
    assert (saved["schedule"], saved["warmup_ratio"], saved["head_lr"]) == ("constant", 0.0, 0.02)
    assert (saved["norm_lr"], saved["dropout"]) == (0.03, 0.0)
    assert (saved["mask"]["strategy"], saved["mask"]["sample_temperature"]) == ("sampled", 0.5)
    assert saved["mask"]["random_share"] == 0.25
    assert (saved["label_smoothing"], saved["average_last"]) == (0.1, 0.5)
    assert saved["sensitivity"]["score"] == "gradient"
    scored = json.loads((out / "sensitivity" / "sensitivity.json").read_text())["config"]
    assert scored["score"] == "gradient"  # the rows were scored that way, not just recorded
    assert saved["sensitivity"]["warmup_epochs"] == scored["warmup_epochs"] == 2
    assert saved["sensitivity"]["head_init"] == scored["head_init"] == "centroid"


def test_finetune_spread_heads_reaches_the_mask(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    run_json(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--spread-heads", "--out", str(out), "--json"])
    assert json.loads((out / "clm_run.json").read_text())["config"]["mask"]["spread_heads"] is True
    err = run_error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--spread-heads",
                             "--random-share", "0.5", "--out", str(tmp_path / "other")])
    assert "--spread-heads" in err and not (tmp_path / "other").exists()
    random = tmp_path / "random"  # random rows have no top rows to spread: the option is dropped, not an error
    run_json(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "random", "--spread-heads",
                      "--out", str(random), "--json"])
    assert (random / "metrics.json").is_file()


def test_finetune_fisher_of_model_labels_reaches_the_scores(capsys, data_dir, tmp_path):
    out = tmp_path / "run"
    run_json(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--fisher-labels", "model",
                      "--label-draws", "3", "--out", str(out), "--json"])
    scored = json.loads((out / "sensitivity" / "sensitivity.json").read_text())
    assert (scored["config"]["fisher_labels"], scored["config"]["label_draws"]) == ("model", 3)
    assert any("drawn from the model, 3 per row" in note for note in scored["notes"])


def test_finetune_trains_from_scores_saved_by_sensitivity(capsys, data_dir, tmp_path):
    from clm_explore.runs import RunStore

    scores = tmp_path / "scores"
    run_json(capsys, ["sensitivity", str(data_dir), *TINY, "--score", "taylor", "--out", str(scores), "--json"])
    out = tmp_path / "run"
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--scores", str(scores), "--out", str(out),
                 "--json"]) == 0
    captured = capsys.readouterr()
    shown = json.loads(captured.out)
    assert shown["scores_from"] == str(scores.resolve())
    assert (f"note: the scores in {scores} were made reading 64 sub-tokens per text where this run reads 32"
            in captured.err)  # the faces review: it trained the 64-length rows without a word
    assert (out / "task_tokens.json").read_text() == (scores / "task_tokens.json").read_text()
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--scores", str(scores), "--max-length", "64",
                 "--out", str(tmp_path / "same"), "--json"]) == 0
    assert "were made reading" not in capsys.readouterr().err  # the same length: nothing to say
    run_json(capsys, ["sensitivity", str(data_dir), *TINY, "--max-length", "32", "--out", str(tmp_path / "s32"),
                      "--json"])  # the review: sensitivity scored at 64 alone, so this note could not be answered
    assert json.loads((tmp_path / "s32" / "sensitivity.json").read_text())["config"]["max_length"] == 32
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--scores", str(tmp_path / "s32"), "--out",
                 str(tmp_path / "at32"), "--json"]) == 0
    assert "were made reading" not in capsys.readouterr().err
    # scores of texts' starts for a run that reads their ends: said too, and kept in its metrics (the diff review)
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--scores", str(tmp_path / "s32"), "--out",
                 str(tmp_path / "ends"), "--truncation-side", "left", "--json"]) == 0
    said = "were made reading long texts' starts where this run reads their ends"
    assert said in capsys.readouterr().err
    assert said in json.loads((tmp_path / "ends" / "metrics.json").read_text())["scores_read_note"]
    recorded = RunStore().get(shown["run"]).config["sensitivity"]  # the registry names what the folder names
    assert recorded["score"] == "taylor" == json.loads((out / "clm_run.json").read_text())["config"]["sensitivity"]["score"]
    for argv, message in (([str(tmp_path / "nowhere")], "is not a readable scores folder"),
                          ([str(scores), "--method", "full"], "error: Row scores made beforehand (--scores) serve"),
                          ([str(scores), "--method", "fisher"], "made with restriction 'tokens'")):
        err = run_error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--scores", *argv,
                                 "--out", str(tmp_path / "refused")])
        assert message in err and not (tmp_path / "refused").exists()
    # Scores inside the run folder that --overwrite replaces: refused before it is emptied (it deleted them, then
    # failed to read them).
    err = run_error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--scores", str(out / "sensitivity"),
                             "--out", str(out), "--overwrite"])
    assert "lie inside the run folder" in err and (out / "metrics.json").is_file()


def test_model_labels_with_the_taylor_score_exits_2(capsys, data_dir):
    err = run_error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--score", "taylor",
                             "--fisher-labels", "model"])
    assert "needs score 'fisher'" in err


def test_bad_head_warmup_epochs_exits_2(capsys, data_dir):
    err = run_error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--head-warmup-epochs", "-3"])
    assert "--head-warmup-epochs" in err and "-3" in err  # the option typed, not the field


@pytest.mark.parametrize(("flag", "value"), [("--label-smoothing", "1"), ("--average-last", "-0.5")])
def test_bad_smoothing_or_average_exits_2(capsys, data_dir, flag, value):
    err = run_error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, flag, value])
    assert flag in err and value in err  # the option the user typed, not the config's field


def test_bad_sample_temperature_exits_2(capsys, data_dir):
    err = run_error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--sample-temperature", "0"])
    assert "--sample-temperature" in err


@pytest.mark.parametrize(("flags", "phrase"), [(["--sample-temperature", "0.5"], "--sample-temperature"),
                                              (["--random-share", "0.5"], "a --random-share above 0")])
def test_spread_heads_with_drawn_rows_names_the_flag_at_fault(capsys, data_dir, flags, phrase):
    err = run_error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--spread-heads", *flags])
    assert "--spread-heads re-picks the top rows" in err and phrase in err
    assert "topk_global" not in err  # a field the command line has no option for


def test_bad_warmup_ratio_exits_2(capsys, data_dir):
    err = run_error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--warmup-ratio", "1.5"])
    assert "--warmup-ratio" in err and "1.5" in err


def test_compile_with_the_frozen_layer_cache_exits_2(capsys, data_dir):
    err = run_error(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--compile", "default",
                             "--cache-frozen-layers"])
    assert "--compile" in err and "--cache-frozen-layers" in err and "--no-" not in err


def test_an_unknown_compile_mode_exits_2(capsys, data_dir):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own choices check
        main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--compile", "fast"])
    assert exit_info.value.code == 2
    assert "reduce-overhead" in capsys.readouterr().err


def test_overwrite_replaces_run_folders_only(capsys, data_dir, tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.txt").write_text("keep")
    args = ["finetune", "--data", str(data_dir), *TINY, *FAST, "--overwrite", "--out"]
    assert "not a run folder" in run_error(capsys, [*args, str(precious)])
    assert (precious / "chapter1.txt").read_text() == "keep"
    (precious / "clm_run.json").write_text("{}")  # even a run folder is kept when it holds the data
    (data_dir / "clm_run.json").write_text("{}")
    assert "which it holds" in run_error(capsys, [*args, str(data_dir)])
    assert (data_dir / "train.csv").is_file()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    assert "is a file" in run_error(capsys, [*args, str(a_file)])
    assert "Unknown device 'nonsense'" in run_error(capsys, [*args[:-2], "--device", "nonsense", "--out",
                                                             str(precious), "--overwrite"])
    assert (precious / "chapter1.txt").read_text() == "keep"  # checked before the folder is touched


def test_predict_reads_what_training_read_and_checks_its_options(capsys, data_dir, tmp_path, monkeypatch):
    from clm_explore.runs import trained_max_length

    out = tmp_path / "run"
    run_json(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--out", str(out),
                      "--json"])
    assert trained_max_length(out) == 32  # FAST's --max-length
    assert trained_max_length(tmp_path) == 64  # no clm_run.json: the default
    test = pd.read_csv(out / "predictions.csv").head(4)
    results = run_json(capsys, ["predict", "--run", str(out), *sum([["--text", t] for t in test["text"]], []),
                                "--json"])
    assert [r["label"] for r in results] == test["pred"].tolist()
    assert [r["probability"] for r in results] == pytest.approx(test["prob"].tolist(), abs=1e-5)
    import clm_explore as clm

    frame = clm.predict(out, test["text"].tolist())  # the notebook's way reads the same length
    assert frame.idxmax(axis=1).tolist() == test["pred"].tolist()
    assert frame.max(axis=1).tolist() == pytest.approx(test["prob"].tolist(), abs=1e-5)
    run = clm.load_run(out)  # and its attributions: the saved config says the trained length (they read 64)
    assert run.model.config.clm_max_length == 32
    (long,) = clm.explain(run.model, run.tokenizer, " ".join(["card"] * 80), clm.AttributionConfig(n_steps=4))
    assert len(long.tokens) == 32 and "truncated to 32" in long.note
    saved = json.loads((out / "config.json").read_text())
    saved.pop("clm_max_length")  # a run saved before the config recorded it: its clm_run.json says it
    (out / "config.json").write_text(json.dumps(saved))
    assert clm.load_run(out).model.config.clm_max_length == 32
    questions = tmp_path / "questions.csv"
    pd.DataFrame({"Question": test["text"]}).to_csv(questions, index=False)  # load_data's column names, any case
    from_file = run_json(capsys, ["predict", "--run", str(out), "--file", str(questions), "--json"])
    assert [r["label"] for r in from_file] == test["pred"].tolist()
    piped = "\n".join(test["text"][:3]).encode()  # predict --file -: a pipe, one text per line
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(piped)))
    from_pipe = run_json(capsys, ["predict", "--run", str(out), "--file", "-", "--json"])
    assert [r["label"] for r in from_pipe] == test["pred"].tolist()[:3]
    # another length than training read is said (the long-text review: 0.7167 read at 256, 1.0 at 512, no word)
    assert main(["predict", "--run", str(out), "--text", "hi", "--max-length", "64"]) == 0
    assert "note: --max-length 64: the run was trained reading 32 sub-tokens" in capsys.readouterr().err
    assert main(["predict", "--run", str(out), "--text", "hi", "--max-length", "32"]) == 0
    assert "was trained reading" not in capsys.readouterr().err
    assert "--top 0" in run_error(capsys, ["predict", "--run", str(out), "--text", "hi", "--top", "0"])
    monkeypatch.setenv("CLM_EXPLORE_RUNS", str(tmp_path / "no-registry"))
    assert "--run typo: no such run folder or run id" in run_error(capsys, ["predict", "--run", "typo", "--text", "hi"])
    assert not (tmp_path / "no-registry").exists()  # a failed lookup makes no registry


def test_sensitivity_budget_in_json_and_checked_before_scoring(capsys, data_dir):
    rows = run_json(capsys, ["sensitivity", str(data_dir), *TINY, "--json", "--calibration-rows", "32",
                             "--device", "cpu", "--budget", "0.05"])
    assert all(r["selected_rows"] <= r["rows"] for r in rows)
    assert sum(r["selected_rows"] for r in rows) > 0
    err = run_error(capsys, ["sensitivity", str(data_dir), *TINY, "--device", "cpu", "--budget", "99999999"])
    assert "budget" in err and "scoring" not in err  # refused before the scoring pass printed progress
    err = run_error(capsys, ["sensitivity", str(data_dir), *TINY, "--device", "cpu", "--budget", "0.05",
                             "--min-layer", "40"])
    assert "--min-layer 40 is above the model's layers (0-1, and 2 for its pooler)" in err and "scoring" not in err
    assert "--max-length must be in 8..512, got 4" in run_error(capsys, ["sensitivity", str(data_dir), *TINY,
                                                                         "--max-length", "4"])
    err = run_error(capsys, ["sensitivity", str(data_dir), *TINY, "--device", "cpu", "--max-length", "200"])
    assert "--max-length 200 is above the 128 positions a text may take in BertForSequenceClassification" in err


def test_sensitivity_budget_says_what_a_sparse_run_trains_as_finetune_counts_it(capsys, data_dir, tmp_path):
    """The faces review: it printed the selected rows' parameters alone (401), which a user read against finetune's
    and the Budget page's trainable count (1,189) as a disagreement."""
    import re

    assert main(["sensitivity", str(data_dir), *TINY, "--device", "cpu", "--budget", "0.05"]) == 0
    said = capsys.readouterr().out
    trains = re.search(r"parameters selected \([\d.]+%\); a sparse run trains ([\d,]+) with its head", said)
    assert trains, said
    # The real-model review: where the budget went was in --json only.
    header = next(line for line in said.splitlines() if "norm_score" in line and "module" in line)
    assert header.split()[-1] == "selected_rows" and "a map low here may still hold selected rows" in said
    run_json(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--max-length", "64", "--budget", "0.05",
                      "--out", str(tmp_path / "run"), "--json"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert int(trains.group(1).replace(",", "")) == metrics["trainable_params"]


def test_a_budget_above_every_eligible_row_is_noted(capsys, data_dir, tmp_path):
    # The tiny model's upper half (the default min_layer) holds under 90% of its backbone.
    assert main(["sensitivity", str(data_dir), *TINY, "--calibration-rows", "32", "--device", "cpu",
                 "--budget", "0.9"]) == 0
    assert "note: the budget asks for" in capsys.readouterr().err  # notes on stderr (the CLI review)
    rows = run_json(capsys, ["sensitivity", str(data_dir), *TINY, "--calibration-rows", "32", "--device", "cpu",
                             "--budget", "0.9", "--min-layer", "0", "--json"])
    assert any(r["selected_rows"] for r in rows if r["layer"] < 1)  # the lower layers compete too
    metrics = run_json(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--budget", "0.9", "--json",
                                "--out", str(tmp_path / "run")])
    assert "all of them are selected" in metrics["budget_note"]
    assert metrics["selected_params"] < 0.9 * metrics["total_params"]


@pytest.mark.parametrize(("argv", "phrase"), [
    (["mine", "{data}", *TINY, "--merge", "-1"], "--merge -1"),
    (["finetune", "--data", "{data}", *TINY, *FAST, "--head-lr", "-1"], "--head-lr must be >= 0"),
    (["finetune", "--data", "{data}", *TINY, *FAST, "--budget", "10", "--out", "{data}/../run"], "buys no row"),
])
def test_negative_counts_and_rates_exit_2(capsys, data_dir, argv, phrase):
    assert phrase in run_error(capsys, [a.replace("{data}", str(data_dir)) for a in argv])
    assert not (data_dir.parent / "run").exists()  # refused before any run folder


def test_json_output_is_strict_json(capsys):
    import numpy as np

    from clm_explore.cli import print_json

    print_json({"budget": float("nan"), "share": np.float32("nan"), "rows": np.array([1.0, np.inf]),
                "n": np.int64(3), "runs": [{"seconds": float("-inf")}]})
    text = capsys.readouterr().out
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON")) == {
        "budget": None, "share": None, "rows": [1.0, None], "n": 3, "runs": [{"seconds": None}]}


def _fake_run(folder: Path, labels: list[str], texts: list[str]) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"id2label": dict(enumerate(labels)), "max_position_embeddings": 128}))
    pd.DataFrame({"text": texts, "label": labels[0], "pred": labels[0], "prob": 0.5}).to_csv(
        folder / "predictions.csv", index=False)
    return folder


@pytest.mark.parametrize(("extra", "phrase"), [
    (["--text", ""], "--text is empty"),
    (["--text", "caf\udce9"], "not UTF-8"),  # what Python makes of a non-UTF-8 argument
    (["--text", "hi", "--max-length", "4"], "must be in 8..512"),
    (["--text", "hi", "--max-length", "256"], "above the 128 positions"),
])
def test_predict_refuses_texts_and_lengths_it_cannot_read(capsys, tmp_path, extra, phrase):
    run = _fake_run(tmp_path / "run", ["a", "b"], ["x"])
    assert phrase in run_error(capsys, ["predict", "--run", str(run), *extra])


def test_predict_refuses_an_empty_text_file(capsys, tmp_path, monkeypatch):
    run = _fake_run(tmp_path / "run", ["a", "b"], ["x"])
    (tmp_path / "blank.txt").write_text("\n  \n")
    assert "holds no text (it is empty or blank)" in run_error(capsys, ["predict", "--run", str(run), "--file",
                                                                         str(tmp_path / "blank.txt")])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\n")))
    assert "standard input holds no text" in run_error(capsys, ["predict", "--run", str(run), "--file", "-"])
    monkeypatch.setattr(sys, "stdin", None)  # started with standard input closed (the diff review: a traceback)
    assert "standard input is closed" in run_error(capsys, ["predict", "--run", str(run), "--file", "-"])


def test_report_refuses_runs_of_other_data_and_bad_counts(capsys, tmp_path):
    a = _fake_run(tmp_path / "a", ["a", "b"], ["x", "y"])
    other_labels = _fake_run(tmp_path / "b", ["c", "d"], ["x", "y"])
    other_rows = _fake_run(tmp_path / "c", ["a", "b"], ["x", "z"])
    out = str(tmp_path / "r.html")
    assert "different labels" in run_error(capsys, ["report", "--run", str(a), "--vs", str(other_labels), "--out", out])
    assert "different rows" in run_error(capsys, ["report", "--run", str(a), "--vs", str(other_rows), "--out", out])
    assert "--max-rows" in run_error(capsys, ["report", "--run", str(a), "--max-rows", "-1", "--out", out])
    assert not Path(out).exists()


def test_sensitivity_out_never_writes_into_a_data_folder_or_a_file(capsys, data_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert "holds other files" in run_error(capsys, ["sensitivity", str(data_dir), *TINY, "--out", str(data_dir)])
    assert "is a file" in run_error(capsys, ["sensitivity", str(data_dir), *TINY, "--out", str(tmp_path / "afile")])
    assert sorted(p.name for p in Path(data_dir).iterdir()) == ["test.csv", "train.csv", "validation.csv"]


def test_a_folder_without_a_usable_model_is_a_message(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    argv = ["predict", "--run", str(tmp_path / "run"), "--text", "hi"]
    assert "not a finetuned run" in run_error(capsys, argv)  # no label names, no clm_run.json
    (tmp_path / "run" / "clm_run.json").write_text("{}")
    assert "stopped while it saved its model: no metrics.json" in run_error(capsys, argv)  # killed between the two
    (tmp_path / "run" / "metrics.json").write_text("{}")
    assert "Could not load" in run_error(capsys, argv)


def test_a_run_another_process_is_writing_is_said_so_not_read_half_saved(capsys, data_dir, tmp_path):
    """The concurrency review: predict read a folder being saved again (--overwrite) and said "no model.safetensors",
    "Should have a model_type key" or "its tokenizer knows 5 tokens", by what it found at that moment."""
    import socket

    out = tmp_path / "run"
    run_json(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--out", str(out),
                      "--json"])
    with held_by_another_process("clm_explore.runs:run_folder_lock", out) as pid:
        err = run_error(capsys, ["predict", "--run", str(out), "--text", "my card"])
        assert f"another process is writing it ({socket.gethostname()} pid {pid})" in err


def test_config_errors_name_options_but_leave_paths_alone():
    from clm_explore.cli import build_parser, in_flags
    from clm_explore.config import ConfigError

    parser = build_parser()
    assert in_flags(ConfigError("batch_size must be >= 1, got 0"), parser, "finetune") == "--batch-size must be >= 1, got 0"
    for path in ("out/grid", "/srv/max_length/g1", "model/grid"):
        assert in_flags(ConfigError(f"{path} is a file"), parser, "bench") == f"{path} is a file"
    said = in_flags(ConfigError("g/out holds a grid with other settings (`epochs` 1 there, 2 now; `shots` 5 there, 0 "
                                "now)"), parser, "bench")  # a plain word marked as a field in the message
    assert said == "g/out holds a grid with other settings (`--epochs` 1 there, 2 now; `--shots` 5 there, 0 now)"
    assert in_flags(ConfigError("jobs must be >= 1, got 0"), parser, "bench") == "--jobs must be >= 1, got 0"


def test_the_printed_time_splits_the_preparation_from_the_epochs():
    from clm_explore.cli.method_cmds import _time_text

    # A sparse run's total held 22 s of mining and scoring: it read slower than full finetuning's 35 s.
    assert _time_text({"train_seconds": 40.5, "prep_seconds": 21.8, "epoch_seconds": [18.7]}) == (
        "train 40.5 s (preparation 21.8 s, then 18.7 s per epoch)")
    assert _time_text({"train_seconds": 35.3, "epoch_seconds": [27.7]}) == "train 35.3 s"


def test_abstaining_at_the_runs_threshold_reads_metrics_that_are_no_object_as_missing(tmp_path):
    from clm_explore.cli import UserError
    from clm_explore.cli.method_cmds import abstention_threshold

    (tmp_path / "metrics.json").write_text("[1, 2]")  # before: AttributeError, a traceback
    with pytest.raises(UserError, match="no readable metrics.json"):
        abstention_threshold("run", tmp_path)
    (tmp_path / "metrics.json").write_text('{"out_of_scope": {"threshold": 0.4}}')
    assert abstention_threshold("run", tmp_path) == 0.4


def test_progress_in_a_log_is_a_line_per_report_not_one_rewritten_line(capsys):
    from types import SimpleNamespace

    from clm_explore.cli import phase_printer
    from clm_explore.cli.method_cmds import _step_printer

    phases, steps = phase_printer(), _step_printer()  # stderr is captured: not a terminal
    for done in range(1, 35):
        phases("scoring rows", done, 34)
    for step in range(1, 101):
        steps(SimpleNamespace(eval=None, step=step, total_steps=100, loss=1.0, examples_per_second=10.0, eta=0.0))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0] == "scoring rows 34/34" and len(lines) == 11 and lines[-1].startswith("step 100/100 loss")


def test_every_option_of_every_command_has_help_and_its_default_shown(capsys) -> None:
    import argparse

    from clm_explore.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    silent = [f"{name} {action.option_strings[0]}" for name, command in commands.items() for action in command._actions
              if action.option_strings and not action.help]
    assert not silent  # --epochs, --batch-size, --max-length, --seed, --json ... had none
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "passes over the training split (default: 3)" in shown and "rows per step (default: 32)" in shown
    assert "drawn rows (default: 0)" in shown  # --seed: a default of 0 is said (0 == False hid it)
    assert "'smollm2' (default: default)" in shown  # --model: a help that names a source 'default' hid it
    assert "--json print JSON instead of a table (default" not in shown  # a switch's False is not said


def test_commands_that_read_data_pass_on_its_notes(capsys, tmp_path):
    rows = [f"text number {i} about {'ab'[i % 2]},{'ab'[i % 2]}" for i in range(60)]
    (tmp_path / "one.csv").write_text("text,label\n" + "\n".join(rows) + "\n")  # one file: the splits are carved
    groups = run_json(capsys, ["mine", str(tmp_path / "one.csv"), *TINY, "--json"])  # stdout stays JSON
    assert isinstance(groups, list) and groups and {g["label"] for g in groups} <= {"a", "b"}
    assert {("about a", "a"), ("about b", "b")} <= {(g["text"], g["label"]) for g in groups}  # each label's words
    assert main(["mine", str(tmp_path / "one.csv"), *TINY]) == 0
    assert "note: No validation split was given" in capsys.readouterr().err  # said by validate only, before


def test_commands_that_read_data_warn_of_its_serious_problems(capsys, tmp_path):
    texts = [f"text number {i} about {'abc'[i % 3]}" for i in range(60)]
    pd.DataFrame({"text": texts, "label": ["ab"[i % 2] for i in range(60)]}).to_csv(tmp_path / "train.csv",
                                                                                      index=False)
    test = pd.DataFrame({"text": [t.upper() for t in texts[:8]], "label": ["a", "b", "A", "b"] * 2})
    test.to_csv(tmp_path / "test.csv", index=False)  # near-copies of train texts; 'A' beside 'a'
    assert main(["mine", str(tmp_path), *TINY]) == 0
    err = capsys.readouterr().err  # before: only the notes (the data review: a 0% run said nothing)
    assert re.search(r"warning: [78] text\(s\) of test equal one of train but for case, spacing or Unicode form "
                     r"\(leakage\)", err)  # 7 where the validation carve drew one of the 8 from train
    assert "warning: 1 label(s) occur in test but never in train (A)" in err
    assert "'A' / 'a'" in err and "(`clm-explore validate` lists every problem with examples)" in err
    assert "repeat a text" not in err  # the report's other problems are validate's


def test_an_overwrite_stopped_short_puts_the_earlier_run_back_and_says_so(capsys, data_dir, tmp_path, monkeypatch):
    from clm_explore import training
    from clm_explore.runs import RunStatus, RunStore

    out = tmp_path / "run"
    args = ["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--out", str(out), "--json"]
    first = run_json(capsys, args)
    model = (out / "model.safetensors").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the new run trains

    monkeypatch.setattr(training, "_train_and_save", interrupted)
    assert main([*args, "--overwrite"]) == 130  # "interrupted"
    assert (out / "model.safetensors").read_bytes() == model  # deleted before the new run began
    assert "the earlier run in" in capsys.readouterr().err
    record = RunStore().get(first["run"])  # the new run's cancel, recorded under the folder, read again from it
    assert record.status is RunStatus.SUCCEEDED and record.metrics["accuracy"] == first["accuracy"]
    assert not list(tmp_path.glob(".replaced-*"))


def test_a_registry_held_at_the_end_keeps_the_new_run_it_saved(capsys, data_dir, tmp_path, monkeypatch):
    """The concurrency review: another process held the registry when a finished --overwrite run recorded its
    success; the earlier run was put back in place of the new one, which was deleted."""
    from clm_explore.runs import RunStatus, RunStore, RunStoreError

    out = tmp_path / "run"
    args = ["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--out", str(out), "--json"]
    first = run_json(capsys, args)
    set_status = RunStore.set_status

    def held_at_the_end(self, run_id, status, **kwargs):
        if status is RunStatus.SUCCEEDED:
            raise RunStoreError("The run registry cannot be used (database is locked).")
        return set_status(self, run_id, status, **kwargs)

    monkeypatch.setattr(RunStore, "set_status", held_at_the_end)
    assert main([*args, "--overwrite", "--seed", "3"]) == 0
    said = capsys.readouterr()
    assert json.loads(said.out)["seed"] == 3 and json.loads((out / "metrics.json").read_text())["seed"] == 3
    assert f"note: the run is saved in {out}, but the registry could not record it as finished" in said.err
    assert not list(tmp_path.glob(".replaced-*")) and json.loads(said.out)["run"] == first["run"]


def test_ctrl_c_before_a_command_starts_is_said_in_a_word(capsys, monkeypatch):
    import clm_explore.cli as cli

    def interrupted():
        raise KeyboardInterrupt  # the first seconds: the parser built, torch imported

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["predict", "--run", "x", "--text", "hi"]) == 130
    assert capsys.readouterr().err == "interrupted\n"  # a 50-line traceback before


def test_a_path_that_is_not_utf8_is_refused_before_any_folder_is_made(capsys, data_dir, tmp_path):
    out = str(tmp_path) + "/\udcffbad"  # what Python makes of a Latin-1 shell's byte 0xff
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--out", out]) == 2
    assert "--out" in capsys.readouterr().err and [p.name for p in tmp_path.iterdir()] == ["data"]  # an empty folder was left
    assert main(["predict", "--run", out, "--text", "hi"]) == 2
    assert "is not UTF-8; set your terminal to UTF-8" in capsys.readouterr().err  # a traceback from the registry


def test_the_apps_mining_options_reach_mine_sensitivity_and_finetune(capsys, data_dir, tmp_path):
    """The faces review: the Tokens page mines with relevance, specificity, min rows, max words and groups kept; the
    CLI took three of these in mine alone, so a run the app made with others could not be repeated from it."""
    options = ["--max-words", "1", "--specificity", "none", "--min-count", "3", "--top", "12"]
    default = run_json(capsys, ["mine", str(data_dir), *TINY, "--json"])
    assert any(" " in g["text"] for g in default if g["kind"] == "words")  # two-word groups by default
    groups = run_json(capsys, ["mine", str(data_dir), *TINY, "--json", *options])
    assert 0 < len(groups) <= 12
    assert all(" " not in g["text"] for g in groups if g["kind"] == "words")
    assert all(g["specificity"] == 1 and g["score"] == g["relevance"] for g in groups)

    sens = tmp_path / "sens"
    run_json(capsys, ["sensitivity", str(data_dir), *TINY, "--json", "--calibration-rows", "32", "--device", "cpu",
                      "--out", str(sens), *options])
    mining = json.loads((sens / "sensitivity.json").read_text())["mining"]
    assert (mining["max_words"], mining["specificity"], mining["min_count"], mining["top_k"]) == (1, "none", 3, 12)
    assert [g["text"] for g in json.loads((sens / "task_tokens.json").read_text())["groups"]] == \
        [g["text"] for g in groups]

    run_json(capsys, ["finetune", "--data", str(data_dir), *TINY, *FAST, "--out", str(tmp_path / "run"), "--json",
                      *options, "--relevance", "chi2"])
    config = json.loads((tmp_path / "run" / "clm_run.json").read_text())["config"]["mining"]
    assert (config["max_words"], config["specificity"], config["min_count"], config["top_k"],
            config["relevance"]) == (1, "none", 3, 12, "chi2")
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--min-count", "3",
                 "--out", str(tmp_path / "head")]) == 0
    assert "note: the mining options are not read by head, which mines no groups" in capsys.readouterr().err
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--scores", str(sens), "--min-count", "4",
                 "--out", str(tmp_path / "scored")]) == 0  # the groups come with the scores
    assert "note: the mining options are not read with --scores" in capsys.readouterr().err
    assert json.loads((tmp_path / "scored" / "clm_run.json").read_text())["config"]["mining"]["min_count"] == 3
    err = run_error(capsys, ["mine", str(data_dir), *TINY, "--max-words", "0"])
    assert "--max-words must be >= 1" in err


def test_sensitivity_budget_takes_finetunes_mask_options(capsys, data_dir, tmp_path):
    """The faces review: sensitivity --budget took --min-layer alone, so it could not show what a run with random
    rows, spread heads or cost-aware selection trains from the same scores."""
    from clm_explore.config import MaskConfig
    from clm_explore.masks import select_mask
    from clm_explore.sensitivity import SensitivityReport

    sens = tmp_path / "sens"
    rows = run_json(capsys, ["sensitivity", str(data_dir), *TINY, "--json", "--calibration-rows", "32", "--device",
                             "cpu", "--out", str(sens), "--budget", "0.05", "--random-share", "0.5", "--seed", "3"])
    shown = {(r["layer"], r["module"]): r["selected_rows"] for r in rows}
    report = SensitivityReport.load(sens)

    def selected(**mask) -> dict:
        table = select_mask(report, MaskConfig(budget=0.05, **mask)).table
        return {(layer, module): int(n) for layer, module, n in zip(table["layer"], table["module"],
                                                                    table["selected_rows"], strict=True)}

    drawn = selected(random_share=0.5, seed=3)
    assert all(shown[k] == drawn.get(k, 0) for k in shown)
    assert selected(random_share=0.5, seed=4) != drawn and selected() != drawn  # the options changed the rows
    err = run_error(capsys, ["sensitivity", str(data_dir), *TINY, "--device", "cpu", "--budget", "0.05",
                             "--random-share", "0.5", "--spread-heads"])
    assert "--spread-heads" in err and "--random-share" in err
    assert main(["sensitivity", str(data_dir), *TINY, "--calibration-rows", "32", "--device", "cpu",
                 "--random-share", "0.5"]) == 0  # no --budget: nothing selected, and said so
    assert "note: the mask options (--min-layer, --random-share and the like) are read with --budget only" in \
        capsys.readouterr().err


def test_finetune_with_merged_tokens_says_what_the_merge_bought(data_dir, tmp_path, capsys):
    """The models review: only merge.json said what --merge merged (or that it merged nothing)."""
    code = main(["finetune", "--data", str(data_dir), *TINY, "--method", "sparse", "--merge", "3", "--out",
                 str(tmp_path / "run"), *FAST])
    out = capsys.readouterr().out
    assert code == 0
    merged = json.loads((tmp_path / "run" / "merge.json").read_text())
    assert f"merge: merged {len(merged['merged'])} words into unused slots; mean input length" in out


def test_a_device_it_cannot_run_on_and_an_impossible_out_are_plain_errors(data_dir, tmp_path, capsys):
    """The CLI review: --device mps (or meta) and --out under a file ended in tracebacks with exit 1."""
    base = ["finetune", "--data", str(data_dir), *TINY, "--method", "head", *FAST[:-2]]
    assert main([*base, "--device", "mps", "--out", str(tmp_path / "a")]) == 2
    assert "is not one clm-explore runs on; use auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert main([*base, "--device", "cpu", "--out", str(data_dir / "train.csv" / "x")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")


def test_a_run_that_collapsed_onto_one_label_says_so_as_a_warning(capsys, data_dir, tmp_path):
    """The operations review: full finetuning at rate 1e3 "succeeded" at chance, every row on one label, with no
    word; a scripted run could not be told from a good one."""
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "full", "--lr", "1e3",
                 "--out", str(run)]) == 0
    err = capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    predicted = pd.read_csv(run / "predictions.csv")["pred"]
    assert metrics["labels_predicted"] == predicted.nunique() == 1
    assert f"warning: every test row was predicted as {predicted[0]!r}: the training collapsed" in err
    assert "the rate 1000" in metrics["collapse_note"]
    assert "## Notes" in (run / "README.md").read_text()  # the model card says it too


def test_scores_saved_before_the_bias_flag_still_train_every_rows_bias_but_the_keys(capsys, data_dir, tmp_path):
    """The diff review: a report without MatrixInfo.bias (saved before it) read False for every map, so its rows
    trained no bias at all once the key maps' bias went by that flag."""
    from safetensors.torch import load_file

    scores = tmp_path / "scores"
    run_json(capsys, ["sensitivity", str(data_dir), *TINY, "--max-length", "32", "--out", str(scores), "--json"])
    saved = json.loads((scores / "sensitivity.json").read_text())
    for info in saved["matrices"].values():
        info.pop("bias", None)  # as an older version wrote it
    (scores / "sensitivity.json").write_text(json.dumps(saved))
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--scores", str(scores), "--out", str(run)]) == 0
    capsys.readouterr()
    deltas = load_file(run / "delta.safetensors")
    assert any(k.endswith(".delta_b") for k in deltas) and not any(k.endswith("key.delta_b") for k in deltas)


def test_finetune_says_when_few_shot_data_gets_few_steps(capsys, tmp_path, data_dir):
    """The few-shot review: 10 rows per label at the default 3 epochs made 6 steps and scored 13 points below 30
    epochs; the app now starts such data at 30 epochs, and finetune says why."""
    rows = [f"text number {i} about {('cards', 'cash', 'fees', 'pins')[i % 4]}" for i in range(40)]
    pd.DataFrame({"text": rows, "label": [("card", "cash", "fee", "pin")[i % 4] for i in range(40)]}).to_csv(
        tmp_path / "few.csv", index=False)
    assert main(["finetune", "--data", str(tmp_path / "few.csv"), *TINY, *FAST, "--method", "head",
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "note: train holds " in err and "per label): 1 step(s) per epoch at batch 32, 1 in all over 1 epoch" in err
    from clm_explore.config import few_steps_note

    assert "(19.9 per label)" in few_steps_note(199, 10, 3, 32)  # not "(20 per label)" below 20 (the diff review)
    assert "(--epochs 30)" in err
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head",
                 "--out", str(tmp_path / "run2")]) == 0
    assert "per label" not in capsys.readouterr().err  # 40 training rows per label: not few-shot


def test_finetune_says_how_many_texts_it_cuts_and_a_collapse_names_the_cut(capsys, tmp_path):
    """The long-text review: with the question past the 64 sub-tokens read, a run at chance was blamed on its
    learning rate alone, and no command said the texts were cut."""
    words = ("card", "cash", "fee", "pin")
    filler = ("please", "help", "still", "what", "why", "when", "where")
    rows = [f"{' '.join(filler[(i + k) % 7] for k in range(7))} {filler[i % 5]} {words[i % 4]} {words[i % 4]}"
            for i in range(80)]
    pd.DataFrame({"text": rows, "label": [words[i % 4] for i in range(80)]}).to_csv(tmp_path / "long.csv", index=False)
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(tmp_path / "long.csv"), *TINY, *FAST[:-4], "--max-length", "8",
                 "--device", "cpu", "--method", "full", "--lr", "1e3", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "note: 57 of 57 training texts (100%) are longer than the 8 sub-tokens this run reads" in err
    assert "--max-length (up to 128) reads more" in err  # the tiny model reads 128 (the diff review)
    note = json.loads((run / "metrics.json").read_text())["collapse_note"]
    assert "the training collapsed" in note and "Also: 57 of 57 training texts (100%) are longer than the 8 sub-tokens" in note


def test_mine_reads_as_many_sub_tokens_as_mining_length_says(capsys, tmp_path):
    """The long-text review: mining read 512 sub-tokens where runs read 64, so the groups came from text no run
    reads, and `mine` had no way to read less."""
    words = ("card", "cash", "fee", "pin")
    filler = ("please", "help", "still", "what", "why", "when", "where")
    rows = [f"{' '.join(filler[(i + k) % 7] for k in range(10))} {words[i % 4]}" for i in range(80)]
    pd.DataFrame({"text": rows, "label": [words[i % 4] for i in range(80)]}).to_csv(tmp_path / "late.csv", index=False)
    whole = {g["text"] for g in run_json(capsys, ["mine", str(tmp_path / "late.csv"), *TINY, "--json"])}
    start = {g["text"] for g in run_json(capsys, ["mine", str(tmp_path / "late.csv"), *TINY, "--json",
                                                  "--mining-length", "8"])}
    assert set(words) <= whole and not set(words) & start  # the label words sit past the first 8 sub-tokens
    assert main(["mine", str(tmp_path / "late.csv"), *TINY, "--mining-length", "4"]) == 2
    assert "error: --mining-length must be >= 8, got 4" in capsys.readouterr().err


def test_the_validation_carve_can_be_set_or_left_out(capsys, tmp_path):
    """The few-shot review: 10% of a 10-per-label training set (1 row a label) went to a validation split no option
    could keep in train."""
    words = ("card", "cash", "fee", "pin")
    rows = [f"text number {i} about {words[i % 4]}" for i in range(80)]
    pd.DataFrame({"text": rows, "label": [words[i % 4] for i in range(80)]}).to_csv(tmp_path / "few.csv", index=False)
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(tmp_path / "few.csv"), *TINY, *FAST, "--method", "head",
                 "--validation-fraction", "0", "--out", str(run)]) == 0
    assert "train holds 64 rows" in capsys.readouterr().err  # 80 less the 16 carved as test, none as validation
    assert json.loads((run / "clm_run.json").read_text())["data_config"]["validation_fraction"] == 0
    assert main(["evaluate", "--run", str(run), "--data", str(tmp_path / "few.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 16  # the run's own test rows, carved as it carved them
    assert main(["validate", str(tmp_path / "few.csv"), "--validation-fraction", "0.6"]) == 2
    assert "--validation-fraction must be in [0, 0.5), got 0.6" in capsys.readouterr().err


def test_an_exported_run_reads_the_length_it_trained_at(capsys, data_dir, tmp_path):
    """The diff review: an export copies no clm_run.json, and its predictions read 64 sub-tokens where it trained
    at 32 (and the new note said it was trained at 64)."""
    from clm_explore.runs import trained_max_length

    run = tmp_path / "run"
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--out", str(run)]) == 0
    capsys.readouterr()
    (run / "clm_run.json").unlink()  # as an exported folder holds it
    assert trained_max_length(run) == 32


def test_a_run_without_validation_rows_says_why_it_has_no_threshold(capsys, tmp_path):
    """The review of the new features: with --validation-fraction 0 and unseen test labels, --abstain-below run said
    the test split had no label unseen in train."""
    from clm_explore.cli import UserError
    from clm_explore.cli.method_cmds import abstention_threshold

    (tmp_path / "metrics.json").write_text(json.dumps({"out_of_scope": {"rows": 12, "threshold": None}}))
    with pytest.raises(UserError, match="it had no validation rows to choose one on"):
        abstention_threshold("run", tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(UserError, match="its test split had no label unseen in train"):
        abstention_threshold("run", tmp_path)


def test_a_sparse_run_on_cut_texts_says_its_token_restriction_reads_little(capsys, tmp_path):
    """The review of the new features: the note went to the run's sensitivity.json alone, not to what it printed."""
    words = ("card", "cash", "fee", "pin")
    filler = ("please", "help", "still", "what", "why", "when", "where")
    rows = [f"{' '.join(filler[(i + k) % 7] for k in range(10))} {words[i % 4]}" for i in range(80)]
    pd.DataFrame({"text": rows, "label": [words[i % 4] for i in range(80)]}).to_csv(tmp_path / "late.csv", index=False)
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(tmp_path / "late.csv"), *TINY, *FAST[:-4], "--max-length", "8",
                 "--device", "cpu", "--budget", "0.05", "--min-score-share", "0.5", "--out", str(run)]) == 0
    note = json.loads((run / "metrics.json").read_text())["restriction_note"]  # the label words alone are mined
    assert "calibration rows hold a mined group within the 8 sub-tokens read" in note
    assert f"note: {note}" in capsys.readouterr().err


def test_select_says_what_budgets_buy_from_saved_scores_without_scoring(data_dir, tmp_path, capsys):
    """The budget review: each `sensitivity --budget B` scored again (50 s on trec6), where a selection from the saved
    scores takes milliseconds, and its --json left out the totals (selected, trainable, lowest layer, memory)."""
    from clm_explore.masks import select_mask

    scores = tmp_path / "scores"
    assert main(["sensitivity", str(data_dir), *TINY, "--max-length", "16", "--restriction", "none",
                 "--calibration-rows", "32", "--out", str(scores), "--json"]) == 0
    capsys.readouterr()
    picked = run_json(capsys, ["select", str(scores), "--budget", "0.01,0.05", "--json"])
    assert [p["budget"] for p in picked] == [0.01, 0.05]
    for record in picked:
        sel = select_mask(scores, record["budget"])
        assert (record["selected_params"], record["trainable_params"], record["lowest_layer"]) == (
            sel.selected_params, sel.trainable_params, sel.lowest_layer)
        assert record["optimizer_bytes"] == sel.optimizer_bytes and record["selected_params"] <= record["budget_params"]
        assert sum(r["selected_rows"] for r in record["rows"]) == sum(int(m.sum()) for m in sel.masks.values())
        assert {r["eligible"] for r in record["rows"]} == {True, False}  # the lower half does not compete
    assert main(["select", str(scores), "--budget", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "step time vs full" in out and f"{picked[0]['selected_params']:,}" in out
    # a run folder: its own mask options, said so
    run = tmp_path / "run"
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "sparse", "--min-layer", "0",
                 "--budget", "0.02", "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    assert main(["select", str(run), "--json"]) == 0  # its own budget, as select_mask(run) takes it
    captured = capsys.readouterr()
    trained = json.loads((run / "metrics.json").read_text())
    assert [(p["budget"], p["selected_params"]) for p in json.loads(captured.out)] == [
        (0.02, trained["selected_params"])]
    assert main(["select", str(run), "--budget", "0.02", "--random-share", "0.5"]) == 0
    # an option given is laid over the run's own, which stay (the diff review: one given dropped them all)
    assert ("note: the run's own mask options (--min-layer 0), with --random-share 0.5 given here"
            in capsys.readouterr().err)
    drawn = tmp_path / "random"
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "random", "--out", str(drawn),
                 "--json"]) == 0
    capsys.readouterr()
    assert main(["select", str(drawn)]) == 0
    assert "the run's method, random, chose its rows otherwise" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["sensitivity", "sample"], ["select", "x"]])
def test_an_impossible_budget_is_refused_as_the_options_are_read(command, capsys):
    """The budget review: --budget 0 was refused after 6-11 s of loading the data and the model."""
    with pytest.raises(SystemExit):
        main([*command, "--budget", "0"])
    assert "--budget: 0 must be a fraction in (0, 1] or a whole parameter count above 1" in capsys.readouterr().err
