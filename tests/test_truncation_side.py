"""Keeping a long text's end (``truncation_side='left'``): tickets and e-mails that greet first and ask last (the
long-text review left it open: every face read a text's start alone)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from clm_explore import finetune, predict
from clm_explore.attribution import AttributionConfig, explain
from clm_explore.batches import bounded_texts, cut_texts_note, cutting, encode, longer_read_advice
from clm_explore.cards import model_card
from clm_explore.cli import main
from clm_explore.config import ConfigError, FinetuneConfig, LabelAuditConfig, SensitivityConfig
from clm_explore.mining import mine_task_tokens
from clm_explore.modeling import load_model, load_run
from clm_explore.reruns import same_setting
from clm_explore.sensitivity import compute_sensitivity
from clm_explore.training import scores_alike
from tests.test_attribution import tiny_loaded

ASK = " my card has not arrived yet and i have been waiting for two whole weeks now so please help me"
"""A question longer than 16 sub-tokens: read from the end, nothing before it is read."""


@pytest.mark.parametrize("kind", [FinetuneConfig, SensitivityConfig, LabelAuditConfig])
def test_a_side_other_than_right_or_left_is_refused_plainly(kind) -> None:
    with pytest.raises(ConfigError, match="truncation_side must be right .* or left .*got 'end'"):
        kind(truncation_side="end")


def test_a_long_text_cut_for_its_end_keeps_its_last_characters() -> None:
    text = "hello " * 2000 + "the question"
    [kept] = bounded_texts([text + "  \n"], 4, "left")
    assert kept.endswith("the question  \n") and len(kept) < len(text) and kept.rstrip().endswith("question")
    [start] = bounded_texts([text], 4)
    assert start.startswith("hello") and not start.endswith("question")
    # a short text with long trailing whitespace keeps its words (a negative slice kept the spaces alone)
    [short] = bounded_texts(["what is it?" + " " * 600], 4, "left")
    assert short.startswith("what is it?")


def test_encoding_with_the_end_kept_reads_the_last_sub_tokens(tiny) -> None:
    text = "exchange rate " * 400 + ASK  # far past the characters a start's cut keeps
    with cutting(tiny.tokenizer, "left") as tokenizer:
        [ids] = encode(tiny, [text], 16)
        assert tokenizer.convert_ids_to_tokens(ids)[-3:-1] == ["help", "me"]
    assert tiny.tokenizer.truncation_side == "right"  # put back
    [ids] = encode(tiny, [text], 16)
    assert tiny.tokenizer.convert_ids_to_tokens(ids)[1:3] == ["exchange", "rate"]


def test_the_cut_note_and_advice_name_the_end_kept(tiny) -> None:
    texts = ["greetings " * 40 + ASK, "short"]
    with cutting(tiny.tokenizer, "left"):
        said = cut_texts_note(tiny.tokenizer, texts, 16, "this run", "more")
    assert "their end alone is read" in said
    assert "their start alone is read" in cut_texts_note(tiny.tokenizer, texts, 16, "this run", "more")
    assert longer_read_advice(64, 512, "--max-length", "right", "--truncation-side left").endswith(
        "at a cost in time; --truncation-side left keeps their ends instead")
    assert longer_read_advice(512, 512, "--max-length", "left", "--truncation-side left").endswith(
        "put what decides the label last")


@pytest.fixture(scope="module")
def left_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import banking77_slice

    out = tmp_path_factory.mktemp("left") / "run"
    cfg = FinetuneConfig(method="sparse", epochs=1, max_length=16, truncation_side="left", device="cpu")
    assert finetune(banking77_slice(), cfg, out, source="tiny-random", progress=False).status == "succeeded"
    return out


def test_a_run_that_keeps_the_end_records_it_and_reads_texts_so_everywhere(left_run: Path) -> None:
    config = json.loads((left_run / "clm_run.json").read_text())["config"]
    assert config["truncation_side"] == config["sensitivity"]["truncation_side"] == "left"  # trained and scored
    assert json.loads((left_run / "tokenizer_config.json").read_text())["truncation_side"] == "left"
    assert json.loads((left_run / "tokenizer.json").read_text())["truncation"]["direction"] == "Left"
    assert load_run(left_run).tokenizer.truncation_side == "left"
    assert AutoTokenizer.from_pretrained(str(left_run)).truncation_side == "left"  # a plain pipeline's too
    # what a text says before its last 16 sub-tokens changes nothing: its start is never read
    greeted = predict(left_run, ["card " * 300 + ASK, "exchange rate " * 300 + ASK])
    assert greeted.iloc[0].tolist() == greeted.iloc[1].tolist()
    card = model_card(left_run)  # its reader is told, where the card says how to use it
    assert ("texts cut to 16 sub-tokens (its tokenizer's `model_max_length`), keeping a longer text's end (its "
            "tokenizer's `truncation_side` is left);") in card
    assert "| of a longer text | its end is read (`--truncation-side left`) |" in card


def test_an_attribution_of_a_run_that_keeps_the_end_shows_the_end(left_run: Path) -> None:
    text = "hello there " * 30 + ASK
    (res,) = explain(left_run, [text], cfg=AttributionConfig(n_steps=4))
    read = int(re.search(rf"text truncated to 16 sub-tokens \(its last (\d+) of {len(text)} characters\)",
                         res.note).group(1))
    assert res.words == text[-read:].split() and res.words[-2:] == ["help", "me"]  # the part read, whole words


def test_a_cut_note_gives_the_whole_texts_length_not_the_part_kept_for_the_tokenizer(left_run: Path) -> None:
    """A text longer than the 32 characters a sub-token the tokenizer is given (16 here: 512): its note read "of 512
    characters" of a text of thousands (the real-model check of this session)."""
    text = "hello there " * 400 + ASK
    (res,) = explain(left_run, [text], cfg=AttributionConfig(n_steps=4))
    assert f"of {len(text):,} characters)" in res.note and res.words[-2:] == ["help", "me"]
    loaded = tiny_loaded()
    (start,) = explain(loaded.model, loaded.tokenizer, "card " * 2000, AttributionConfig(max_length=10, n_steps=4))
    assert "(its first 39 of 10,000 characters)" in start.note


def test_a_word_cut_at_the_start_of_the_part_read_is_said_to_be_the_end_of_a_longer_one() -> None:
    loaded = tiny_loaded()
    with cutting(loaded.tokenizer, "left"):
        (cut,) = explain(loaded.model, loaded.tokenizer, "cardless a b c d e f", AttributionConfig(max_length=9,
                                                                                               n_steps=4))
        (whole,) = explain(loaded.model, loaded.tokenizer, "card less a b c d e f", AttributionConfig(max_length=9,
                                                                                                  n_steps=4))
    assert cut.tokens[:2] == ["[CLS]", "##less"] and cut.words[0] == "less"
    assert "its first word shown, 'less', is the end of a longer word" in cut.note
    assert "truncated" in whole.note and "longer word" not in whole.note


def test_scores_made_at_another_end_are_not_a_runs_own(tiny_data) -> None:
    loaded = load_model("tiny-random", tiny_data.labels, seed=0)
    groups = mine_task_tokens(tiny_data.train["text"].tolist(), tiny_data.train["label"].tolist(), loaded.tokenizer)
    cfg = SensitivityConfig(calibration_rows=32, max_length=16, truncation_side="left", warmup_epochs=1)
    report = compute_sensitivity(loaded, tiny_data, groups, cfg, device="cpu")
    assert "reading 16 sub-tokens per text, the end of a longer one" in report.notes
    assert loaded.tokenizer.truncation_side == "right"  # the caller's model as it was
    run = FinetuneConfig(method="sparse", max_length=16, truncation_side="left",
                         sensitivity=SensitivityConfig(warmup_epochs=1, calibration_rows=32))
    assert scores_alike(report, run) and not scores_alike(report, replace(run, truncation_side="right"))
    # a report saved before the side was recorded read texts' starts
    older = replace(report, config={k: v for k, v in report.config.items() if k != "truncation_side"})
    assert scores_alike(older, replace(run, truncation_side="right")) and not scores_alike(older, run)


def test_a_run_recorded_before_the_side_existed_is_a_seed_of_the_same_setting() -> None:
    now = {"method": "sparse", "seed": 1, "truncation_side": "right", "data": "d",
           "sensitivity": {"max_length": 64, "truncation_side": "right"}}
    before = {"method": "sparse", "seed": 0, "data": "d", "sensitivity": {"max_length": 64}}
    assert same_setting(now, before)
    assert not same_setting({**now, "truncation_side": "left"}, before)


def test_the_cli_trains_audits_and_scores_keeping_the_end(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["finetune", "--data", str(data_dir), "--model", "tiny-random", "--method", "head", "--epochs", "1",
            "--max-length", "16", "--device", "cpu", "--truncation-side", "left", "--out", str(out), "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert json.loads((out / "clm_run.json").read_text())["config"]["truncation_side"] == "left"
    assert "their end alone is read" in captured.err and "keeps their ends instead" not in captured.err
    assert main(["audit", str(data_dir), "--model", "tiny-random", "--max-length", "16", "--folds", "2",
                 "--truncation-side", "left", "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any("their end alone is read" in note for note in notes), notes
    assert main(["sensitivity", str(data_dir), "--model", "tiny-random", "--max-length", "16", "--restriction",
                 "none", "--calibration-rows", "32", "--truncation-side", "left", "--out", str(tmp_path / "s")]) == 0
    scored = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert scored["config"]["truncation_side"] == "left"
    with pytest.raises(SystemExit):
        main(["finetune", "--data", str(data_dir), "--model", "tiny-random", "--truncation-side", "end"])
    assert "invalid choice: 'end'" in capsys.readouterr().err


def test_layer_similarity_reads_the_same_part_of_a_long_text_in_both_models(left_run: Path) -> None:
    """The diff review: a run keeping texts' ends against its base (which keeps their starts) read other words, and
    CKA was 0.02 at layers the run never changed."""
    from clm_explore.layer_views import layer_similarity

    texts = [f"{'card ' * (i % 7 + 20)}number {i} " + ASK + f" and {'rate ' * (i % 5 + 3)}" for i in range(24)]
    texts = [("exchange " * (i % 4 + 1)) + text for i, text in enumerate(texts)]
    similar = layer_similarity(left_run, texts=texts, source="tiny-random")
    assert similar.table["cka"].iloc[0] > 0.99  # the word embeddings, untrained below the mask's floor
    assert any("keeps long texts' ends, tiny-random their starts" in note for note in similar.notes)
