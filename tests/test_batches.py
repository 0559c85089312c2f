"""Tokenizing bounded: a text is cut to what its first sub-tokens can span, and texts go to the tokenizer in chunks."""

from __future__ import annotations

import numpy as np

from clm_explore.batches import CHARS_PER_TOKEN_BOUND, TOKENIZE_CHUNK, encode
from clm_explore.modeling import load_model


class _Recording:
    """A tokenizer that records the longest text and the most texts of each call."""

    def __init__(self, tokenizer):
        self.inner, self.calls = tokenizer, []

    def __getattr__(self, name):  # pad_token_id and the rest: the tokenizer's
        return getattr(self.inner, name)

    def __call__(self, texts, **kwargs):
        self.calls.append((len(texts), max(map(len, texts))))
        return self.inner(texts, **kwargs)


def test_a_huge_text_is_cut_before_the_tokenizer_reads_it_and_its_ids_are_unchanged():
    loaded = load_model("tiny-random", ["a", "b"])
    huge = "my card has not arrived " * 40_000  # 960,000 characters: a fast tokenizer encodes it all
    texts = [huge] * (TOKENIZE_CHUNK + 3) + ["short"]
    expected = loaded.tokenizer([huge, "short"], truncation=True, max_length=64)["input_ids"]
    recording = _Recording(loaded.tokenizer)
    loaded.tokenizer = recording
    ids = encode(loaded, texts, 64)
    assert ids[0] == ids[TOKENIZE_CHUNK + 2] == expected[0] and ids[-1] == expected[1] and len(ids) == len(texts)
    assert [n for n, _ in recording.calls] == [TOKENIZE_CHUNK, 4]
    assert max(longest for _, longest in recording.calls) == 64 * CHARS_PER_TOKEN_BOUND


def test_mining_and_scoring_read_a_huge_text_through_the_same_bound():
    from clm_explore.mining import mine_task_tokens
    from clm_explore.sensitivity import make_batches

    loaded = load_model("tiny-random", ["a", "b"])
    recording = _Recording(loaded.tokenizer)
    texts, labels = ["my card has not arrived " * 40_000, "a fee on my transfer"] * 3, ["a", "b"] * 3
    cut = mine_task_tokens([t[: 64 * CHARS_PER_TOKEN_BOUND] for t in texts], labels, loaded.tokenizer, {"max_tokens": 64})
    assert mine_task_tokens(texts, labels, recording, {"max_tokens": 64}).to_frame().equals(cut.to_frame())
    assert max(longest for _, longest in recording.calls) == 64 * CHARS_PER_TOKEN_BOUND
    recording.calls.clear()
    loaded.tokenizer = recording
    batches = make_batches(loaded, texts, np.array([0, 1] * 3), None, batch_size=4, max_length=32)
    assert max(longest for _, longest in recording.calls) == 32 * CHARS_PER_TOKEN_BOUND
    assert max(batch.input_ids.shape[1] for batch in batches) == 32


def test_leading_whitespace_does_not_count_against_a_texts_cut():
    from clm_explore.batches import bounded_texts

    padded = " " * 5000 + "my card has not arrived " * 200  # 5,000 spaces: cut to them alone, read as [CLS][SEP]
    [cut] = bounded_texts([padded], 64)
    assert cut.strip().startswith("my card has not arrived") and len(cut) == 5000 + 64 * CHARS_PER_TOKEN_BOUND
    assert bounded_texts(["  short  "], 64) == ["  short  "]  # within the cap: as it was


def test_a_file_of_texts_is_labelled_by_a_run_in_its_order_with_the_runner_up(tiny_data, tmp_path, monkeypatch):
    """The app's "Label a file" and ``clm.label_file``: a file of new texts, a row each, read as predict reads them."""
    import json

    import pytest

    import clm_explore
    from clm_explore.data import DataError

    clm_explore.finetune(tiny_data, clm_explore.FinetuneConfig(method="head", epochs=1), tmp_path / "run",
                         source="tiny-random", progress=False)
    texts = ["my card has not arrived", "how do I top up", "Überweisung storniert", "a"]
    (tmp_path / "new.csv").write_text("id,utterance\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    heard: list[tuple[int, int]] = []
    table = clm_explore.label_file(tmp_path / "run", tmp_path / "new.csv", on_progress=lambda *p: heard.append(p))
    probs = clm_explore.predict(tmp_path / "run", texts)
    assert list(table.columns) == ["row", "text", "label", "probability", "runner_up", "runner_up_probability"]
    assert table["row"].tolist() == [1, 2, 3, 4] and table["text"].tolist() == texts
    assert table["label"].tolist() == probs.idxmax(axis=1).tolist()
    assert np.allclose(table["probability"], probs.max(axis=1)) and (table["runner_up"] != table["label"]).all()
    assert (table["runner_up_probability"] <= table["probability"]).all()
    assert heard[0] == (0, 4) and heard[-1] == (4, 4)
    (tmp_path / "new.txt").write_text("\n".join(texts) + "\n")  # one text a line
    assert clm_explore.label_file(tmp_path / "run", tmp_path / "new.txt")["label"].tolist() == table["label"].tolist()
    for name in ("new.csv", "new.txt"):
        with pytest.raises(DataError, match=f"{name} holds more than 3 texts, the most labelled here at once"):
            clm_explore.label_file(tmp_path / "run", tmp_path / name, max_texts=3)
    (tmp_path / "huge.txt").write_text("a line\n" * 2_000_000)  # 14 MB: refused before it is decoded and split
    with monkeypatch.context() as patched:  # reading it whole took 5.9 s and 420 MB to refuse it (the diff review)
        patched.setattr("clm_explore.data.text_lines", lambda *a, **k: pytest.fail("the lines were decoded"))
        with pytest.raises(DataError, match="huge.txt holds more than 20,000 texts"):
            clm_explore.label_file(tmp_path / "run", tmp_path / "huge.txt", max_texts=20_000)
    metrics_path = tmp_path / "run" / "metrics.json"  # a run that chose where to abstain: said per text
    metrics = json.loads(metrics_path.read_text())
    metrics_path.write_text(json.dumps({**metrics, "out_of_scope": {"threshold": 0.99}}))
    abstained = clm_explore.label_file(tmp_path / "run", tmp_path / "new.csv")
    assert abstained["out_of_scope"].tolist() == (abstained["probability"] < 0.99).tolist() == [True] * 4


def test_a_text_of_long_words_is_read_past_the_cut_as_a_plain_tokenizer_reads_it(tiny_data):
    """The interop review: a cut prefix of very long words (each one [UNK]) left out the words after them."""
    from clm_explore.batches import CHARS_PER_TOKEN_BOUND, encode
    from clm_explore.modeling import load_model

    loaded = load_model("tiny-random", tiny_data.labels)
    text = "x" * (16 * CHARS_PER_TOKEN_BOUND + 100) + " my card has not arrived"
    [ids] = encode(loaded, [text], 16)
    assert ids == loaded.tokenizer(text, truncation=True, max_length=16)["input_ids"]
    assert len(ids) > 3  # [CLS] [UNK] my card ... [SEP], not [CLS] [UNK] [SEP]


def test_a_hand_built_model_whose_tokenizer_has_no_pad_token_still_predicts(tiny_data):
    """The typing review: ``collate`` took the tokenizer's pad id as given, and None failed inside torch.full (a
    ``LoadedModel`` built by hand around a decoder's tokenizer has none; ``load_model`` always sets one)."""
    from clm_explore.batches import predict_proba

    loaded = load_model("tiny-random", tiny_data.labels)
    texts = ["my card has not arrived", "top up"]
    padded = predict_proba(loaded.model, loaded, texts)
    loaded.tokenizer.pad_token = None
    assert loaded.tokenizer.pad_token_id is None
    np.testing.assert_allclose(predict_proba(loaded.model, loaded, texts), padded, atol=1e-6)


def test_the_advice_on_cut_texts_reads_no_further_than_the_model():
    """The diff review: "--max-length (up to 512) reads more" said of a model of 128 positions, and at 512."""
    from clm_explore.batches import longer_read_advice

    assert longer_read_advice(64, 512, "--max-length") == "--max-length (up to 512) reads more, at a cost in time"
    assert longer_read_advice(64, 128, "--max-length") == "--max-length (up to 128) reads more, at a cost in time"
    assert longer_read_advice(128, 128, "--max-length").startswith("this model reads at most 128: shorten the texts")
    assert longer_read_advice(512, 2048, "--max-length").startswith("this model reads at most 512")


def test_a_few_cut_texts_are_not_said_to_be_none():
    """The diff review: one cut text in 300 read "(0%)"."""
    from clm_explore.batches import cut_texts_note
    from clm_explore.modeling import load_tokenizer

    texts = ["card"] * 299 + [" ".join(["card"] * 40)]
    said = cut_texts_note(load_tokenizer("tiny-random"), texts, 16, "this run", "more")
    assert said.startswith("1 of 300 texts (0.3%) are longer than the 16 sub-tokens this run reads")
