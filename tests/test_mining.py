"""Token-group mining and adaptive tokenization on hand-made corpora over the tiny tokenizer.

The tiny vocabulary (clm_explore/assets/tiny_vocab.txt) holds whole words such as "card", "refund",
"transfer", "unblock" and the suffixes "##less", "##ing", so "cardless" -> card ##less,
"refunding" -> refund ##ing, "transferring" -> transfer ##r ##ing and "topups" -> top ##u ##p ##s.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from clm_explore.config import ConfigError, MiningConfig
from clm_explore.mining import (
    TaskTokens,
    TokenGroup,
    adaptive_tokenization,
    background_language,
    covered_positions,
    mine_task_tokens,
)
from clm_explore.modeling import count_parameters, load_model

PLAIN = MiningConfig(min_count=5, specificity="none")


@pytest.fixture
def tok():
    return load_model("tiny-random", ["a", "b"]).tokenizer


def by_text(tt: TaskTokens, kind: str = "words") -> dict[str, TokenGroup]:
    return {g.text: g for g in tt.groups if g.kind == kind}


def group(text: str, pieces: list[str], kind: str = "words") -> TokenGroup:
    return TokenGroup(text, pieces, kind, count=5, relevance=1.0, specificity=1.0, score=1.0, label="a", lift=2.0)


def test_tiny_tokenizer_splits_words_into_pieces(tok):
    # Every test below relies on the bundled vocabulary being loaded (726 entries, not 5 specials).
    assert len(tok) > 700
    assert tok.tokenize("cardless") == ["card", "##less"]
    assert tok.tokenize("refunding") == ["refund", "##ing"]


def test_multi_piece_word_is_a_candidate_with_its_pieces(tok):
    texts = ["cardless payment"] * 5 + ["money please"] * 5
    labels = ["a"] * 5 + ["b"] * 5
    groups = by_text(mine_task_tokens(texts, labels, tok, PLAIN))
    assert "cardless" in groups
    g = groups["cardless"]
    assert g.pieces == ["card", "##less"]
    assert g.count == 5
    assert g.label == "a"
    assert g.example_ids == [0, 1, 2, 3, 4]


def test_word_of_many_pieces_is_still_a_candidate(tok):
    # method.md section 1: "a word that the tokenizer splits into several pieces is always a candidate",
    # however many pieces (max_ngram bounds sub-token n-grams, not whole words).
    assert tok.tokenize("topups") == ["top", "##u", "##p", "##s"]
    texts = ["topups failed"] * 5 + ["money please"] * 5
    labels = ["a"] * 5 + ["b"] * 5
    groups = by_text(mine_task_tokens(texts, labels, tok, PLAIN))
    assert "topups" in groups
    assert groups["topups"].pieces == ["top", "##u", "##p", "##s"]


def test_min_count_counts_rows_not_occurrences(tok):
    # "cardless" occurs 8 times but in 4 rows only.
    texts = ["cardless cardless payment"] * 4 + ["payment"] + ["money please"] * 5
    labels = ["a"] * 5 + ["b"] * 5
    assert "cardless" not in by_text(mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5, specificity="none")))
    found = by_text(mine_task_tokens(texts, labels, tok, MiningConfig(min_count=4, specificity="none")))
    assert found["cardless"].count == 4
    assert found["payment"].count == 5


def test_label_and_lift_of_a_word_seen_in_one_label(tok):
    # 10 rows of "a", 30 of "b": prior P(b) = 0.75. "refund" occurs only in 6 "b" rows:
    # P(b | refund) = 1, lift = 1 / 0.75. "transfer" only in "a" rows: lift = 1 / 0.25 = 4.
    texts = ["transfer money"] * 6 + ["money"] * 4 + ["refund please"] * 6 + ["please"] * 24
    labels = ["a"] * 10 + ["b"] * 30
    groups = by_text(mine_task_tokens(texts, labels, tok, PLAIN))
    assert groups["refund"].label == "b"
    assert groups["refund"].lift == pytest.approx(4 / 3)
    assert groups["refund"].count == 6
    assert groups["transfer"].label == "a"
    assert groups["transfer"].lift == pytest.approx(4.0)
    assert groups["transfer"].example_ids == [0, 1, 2, 3, 4]  # examples_per_group = 5


@pytest.mark.parametrize("relevance", ["kl", "mi", "chi2"])
def test_relevance_ranks_label_specific_word_above_uniform_ones(tok, relevance):
    # "refund": 6 rows, all label a. "money": 4 a rows and 3 b rows (near the 50/50 prior).
    # "please": every row, exactly the prior, so it carries no label information.
    texts = ([f"refund please {w}" for w in ["money"] * 4 + ["x"] * 2] + ["please"] * 4
             + ["money please"] * 3 + ["please"] * 7)
    labels = ["a"] * 10 + ["b"] * 10
    tt = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5, relevance=relevance, specificity="none"))
    order = [g.text for g in tt.groups]
    groups = by_text(tt)
    assert order[0] in ("refund", "refund please")
    assert "money" in groups and groups["refund"].relevance > groups["money"].relevance > 0
    assert order.index("refund") < order.index("money")
    assert "please" not in groups or groups["please"].relevance == pytest.approx(0.0, abs=1e-12)
    scores = [g.score for g in tt.groups]
    assert scores == sorted(scores, reverse=True)
    assert all(math.isfinite(s) and s > 0 for s in scores)
    if relevance in ("kl", "mi"):  # both are bounded by the label entropy, log 2 here
        assert groups["refund"].relevance <= math.log(2) + 1e-9


def test_specificity_none_scores_by_relevance_alone(tok):
    texts = ["refund please"] * 6 + ["money please"] * 6
    labels = ["a"] * 6 + ["b"] * 6
    tt = mine_task_tokens(texts, labels, tok, PLAIN)
    assert tt.groups
    assert "none" in tt.background
    for g in tt.groups:
        assert g.specificity == 1.0
        assert g.score == pytest.approx(g.relevance)


def test_wordfreq_specificity_runs_and_is_non_negative(tok):
    texts = ["refund please"] * 6 + ["money please"] * 6
    labels = ["a"] * 6 + ["b"] * 6
    tt = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5))
    assert tt.groups
    assert all(g.specificity >= 0 and math.isfinite(g.score) for g in tt.groups)


def _ing_corpus() -> tuple[list[str], list[str]]:
    # "##ing" recurs inside three different words (2 rows each); "##less" only inside "cardless".
    a = ["refunding now"] * 2 + ["transferring now"] * 2 + ["unblocking now"] * 2 + ["cardless card"] * 6
    return a + ["money please"] * 12, ["a"] * 12 + ["b"] * 12


def test_fragment_kept_only_when_it_recurs_across_enough_words(tok):
    texts, labels = _ing_corpus()
    kept = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5, specificity="none", fragment_min_words=3))
    fragments = by_text(kept, "fragment")
    assert "##ing" in fragments
    assert fragments["##ing"].pieces == ["##ing"]
    assert fragments["##ing"].count == 6
    assert "##less" not in fragments  # one word only: "cardless" is the group, not its suffix
    assert "cardless" in by_text(kept)
    assert "##r" not in by_text(kept, "fragment")  # only inside "transferring"

    strict = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5, specificity="none", fragment_min_words=4))
    assert "##ing" not in by_text(strict, "fragment")
    # The mining review: "##s", "##o", "mc" passed the rule above on snips and trec6; a length floor drops them.
    short = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5, specificity="none", fragment_min_chars=4))
    assert "##ing" not in by_text(short, "fragment") and "cardless" in by_text(short)
    assert "##ing" in by_text(mine_task_tokens(texts, labels, tok, MiningConfig(
        min_count=5, specificity="none", fragment_min_chars=3)), "fragment")  # 'ing' reads 3 characters


def test_groups_scoring_below_a_share_of_the_best_are_left_out(tok):
    texts, labels = _ing_corpus()
    every = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5, specificity="none"))
    scores = sorted({g.score for g in every.groups})
    share = (scores[0] + scores[1]) / 2 / scores[-1]  # between the two lowest scores, as a share of the best
    kept = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5, specificity="none", min_score_share=share))
    lowest = sum(g.score == scores[0] for g in every.groups)
    assert len(kept.groups) == len(every.groups) - lowest > 0  # the lowest left out, whatever top_k's floor keeps
    assert min(g.score for g in kept.groups) >= share * scores[-1]
    with pytest.raises(ConfigError, match=r"min_score_share must be in \[0, 1\)"):
        MiningConfig(min_score_share=1.0)


def test_task_tokens_save_load_round_trip(tok, tmp_path):
    texts, labels = _ing_corpus()
    tt = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5, specificity="none"))
    assert tt.groups
    tt.save(tmp_path / "tt.json")
    back = TaskTokens.load(tmp_path / "tt.json")
    assert back.groups == tt.groups
    assert (back.background, back.n_rows, back.config) == (tt.background, tt.n_rows, tt.config)
    assert back.to_frame().equals(tt.to_frame())


def test_covered_positions_marks_the_pieces_of_mined_words_and_fragments(tok):
    tt = TaskTokens([group("refunding", ["refund", "##ing"])], "", 0, {})
    texts = ["i want refunding now", "i want a refund now"]
    enc = tok(texts).encodings  # [CLS] i want refund ##ing now [SEP]
    assert enc[0].tokens[3:5] == ["refund", "##ing"]
    assert covered_positions(enc, texts, tt) == [[3, 4], []]  # the bare word "refund" is another word

    frag = TaskTokens([group("##ing", ["##ing"], "fragment")], "", 0, {})
    texts = ["transferring money", "refunding"]  # [CLS] transfer ##r ##ing money [SEP]; [CLS] refund ##ing [SEP]
    assert covered_positions(tok(texts).encodings, texts, frag) == [[3], [2]]

    span = TaskTokens([group("card details", ["card", "details"])], "", 0, {})
    texts = ["my card details please", "card please details"]
    assert covered_positions(tok(texts).encodings, texts, span) == [[2, 3], []]

    three = TaskTokens([group("card has not", ["card", "has", "not"])], "", 0, {})  # max_words=3 mines these
    texts = ["my card has not arrived"]
    assert covered_positions(tok(texts).encodings, texts, three) == [[2, 3, 4]]


def test_byte_level_tokenizers_mine_words_without_their_leading_space():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    texts = ["my card has not arrived", "where is my card", "card payment failed", "the card was declined",
             "exchange rate is bad", "what exchange rate", "rate for exchange today", "exchange money rate"] * 3
    labels = ["card"] * 12 + ["rate"] * 12
    bpe = ByteLevelBPETokenizer()  # GPT-2's scheme: offsets keep the leading space (trim_offsets=False)
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    tt = mine_task_tokens(texts, labels, tok, MiningConfig(specificity="none", min_count=3))
    words = {g.text for g in tt.groups if g.kind == "words"}
    assert {"card", "exchange", "exchange rate"} <= words
    assert not any(w != w.strip() or "  " in w for w in words)
    enc = tok(["my card has not arrived"], add_special_tokens=False).encodings
    card = enc[0].tokens.index("Ġcard")
    assert card in covered_positions(enc, ["my card has not arrived"], tt)[0]


def test_adaptive_tokenization_merges_a_word_into_an_unused_slot():
    loaded = load_model("tiny-random", ["a", "b"])
    tok = loaded.tokenizer
    emb = loaded.model.get_input_embeddings().weight
    piece_ids = tok.convert_tokens_to_ids(["refund", "##ing"])
    expected_row = emb[piece_ids].detach().clone().mean(0)
    n_params = count_parameters(loaded.model)
    tt = TaskTokens([group("refunding", ["refund", "##ing"]), group("money", ["money"])], "", 0, {})
    texts = ["refunding please", "refunding"]  # 3 and 2 pieces before, 2 and 1 after

    report = adaptive_tokenization(loaded, tt, texts)

    assert [m["text"] for m in report.merged] == ["refunding"]  # "money" is one piece already
    slot = report.merged[0]
    assert slot["slot"] == "[unused0]" and slot["id"] == tok.convert_tokens_to_ids("[unused0]")
    new = loaded.tokenizer
    assert new.tokenize("refunding") == ["refunding"]
    assert new.tokenize("Refunding") == ["refunding"]  # lower-casing survives the reload
    assert new.convert_tokens_to_ids("refunding") == slot["id"]
    assert new.tokenize("refund please") == ["refund", "please"]  # other words unchanged
    assert torch.allclose(loaded.model.get_input_embeddings().weight[slot["id"]], expected_row)
    assert count_parameters(loaded.model) == n_params
    assert len(new) == len(tok)
    assert report.mean_length_before == pytest.approx(2.5)
    assert report.mean_length_after == pytest.approx(1.5)
    assert report.shortening == pytest.approx(0.4)
    # pieces stay the original split; the merge is recorded beside them and its slot's row becomes eligible
    assert tt.groups[0].pieces == ["refund", "##ing"]
    assert (tt.groups[0].merged_token, tt.groups[0].merged_slot) == ("refunding", "[unused0]")
    assert tt.token_ids(new) == {slot["id"], new.convert_tokens_to_ids("money")}


def test_adaptive_tokenization_says_when_the_unused_slots_run_out():
    loaded = load_model("tiny-random", ["a", "b"])
    n_slots = sum(t.startswith("[unused") for t in loaded.tokenizer.get_vocab())
    words = [f"refunding{'x' * i}" for i in range(n_slots + 2)]  # each at least two pieces
    tt = TaskTokens([group(w, loaded.tokenizer.tokenize(w)) for w in words], "", 0, {})
    assert all(len(g.pieces) > 1 for g in tt.groups)

    report = adaptive_tokenization(loaded, tt, words, apply=False)

    assert len(report.merged) == n_slots
    assert report.note == f"only {n_slots} unused slots for {n_slots + 2} words"


def test_adaptive_tokenization_without_apply_changes_nothing():
    loaded = load_model("tiny-random", ["a", "b"])
    tok = loaded.tokenizer
    before = loaded.model.get_input_embeddings().weight.detach().clone()
    tt = TaskTokens([group("refunding", ["refund", "##ing"])], "", 0, {})
    report = adaptive_tokenization(loaded, tt, ["refunding please"], apply=False)
    assert report.mean_length_after < report.mean_length_before
    assert loaded.tokenizer is tok
    assert torch.equal(loaded.model.get_input_embeddings().weight, before)
    assert tt.groups[0].pieces == ["refund", "##ing"]


def test_groups_come_in_the_same_order_whatever_the_string_hashing():
    """Groups of equal score were ordered by a set's iteration order, which changes with PYTHONHASHSEED
    from one process to the next (trec6's first 1,000 rows had such a tie); now every process agrees."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent  # not `from conftest import`: tests/app has its own conftest

    script = (
        "import json, sys\n"
        "from clm_explore.data import load_data\n"
        "from clm_explore.mining import mine_task_tokens\n"
        "from clm_explore.modeling import load_model\n"
        f"data = load_data({str(root.parent / 'shared' / 'data' / 'trec6')!r})\n"
        "train = data.train.head(1000)\n"
        "tokens = mine_task_tokens(train['text'].tolist(), train['label'].tolist(), load_model('tiny-random').tokenizer)\n"
        "print(json.dumps([[g.text, g.pieces] for g in tokens.groups]))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": hash_seed})
             for hash_seed in ("1", "2")]  # side by side: each spends most of its time importing
    orders = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        orders.append(out)
    assert len(orders[0]) > 1000 and orders[0] == orders[1]


def test_rows_are_mined_up_to_max_tokens(tok):
    texts = ["my card " * 10 + "refunding"] * 6 + ["exchange rate please"] * 6
    labels = ["card"] * 6 + ["rate"] * 6
    short = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5, specificity="none", max_tokens=8))
    full = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5, specificity="none"))
    assert "refunding" in {g.text for g in full.groups}
    assert "refunding" not in {g.text for g in short.groups}  # past the first 8 sub-tokens of its rows


# -- word boundaries, every split, chi2, the associated label, label types, verified merges --------------


def _metaspace_tokenizer():
    """A Llama-2 / Mistral style tokenizer as transformers v5 and the GGUF converter build it: SentencePiece
    pieces with the '▁' word marker and Metaspace(split=False), so every piece of a text has word id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "▁", "▁ref", "und", "ing", "▁please", "▁now", "▁money", "▁trans", "fer", *"abcdefghijklmnopqrstuvwxyz"]
    backend = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=0, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def test_sentencepiece_without_a_word_pre_tokenizer_still_mines_words():
    tok = _metaspace_tokenizer()
    enc = tok(["refunding please now"], add_special_tokens=False).encodings
    assert enc[0].tokens == ["▁ref", "und", "ing", "▁please", "▁now"] and set(enc[0].word_ids) == {0}
    texts = ["refunding please now"] * 5 + ["money transfer"] * 5
    tt = mine_task_tokens(texts, ["a"] * 5 + ["b"] * 5, tok, MiningConfig(min_count=3, specificity="none"))
    groups = by_text(tt)
    assert {"refunding", "please", "now", "money", "transfer"} <= set(groups)  # not whole sentences
    assert groups["refunding"].pieces == ["▁ref", "und", "ing"]
    assert covered_positions(enc, texts[:1], TaskTokens([groups["refunding"]], "", 0, {})) == [[0, 1, 2]]


def test_every_split_of_a_word_makes_its_rows_eligible():
    # Byte-level BPE splits "card" as 'Card' at the start of a row and 'Ġcard' after a space: both occur.
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    texts = ["Card never arrived", "my card has not arrived", "where is my card", "Card payment failed",
             "exchange rate is bad", "what exchange rate", "Exchange rate today", "bad exchange money"] * 3
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    tt = mine_task_tokens(texts, (["card"] * 4 + ["rate"] * 4) * 3, tok, MiningConfig(specificity="none", min_count=3))
    card = by_text(tt)["card"]
    assert sorted(card.variants) == [["Card"], ["Ġcard"]]
    assert card.pieces == card.variants[0]  # the split shown is the most frequent one (here a tie: first seen)
    assert set(tok.convert_tokens_to_ids(["Card", "Ġcard"])) <= tt.token_ids(tok)


def test_chi2_relevance_uses_the_whole_contingency_table(tok):
    # 50 "a" and 50 "b" rows. refund: 45 a, 15 b; money: 20 a, 0 b. The 2 x 2 tables give chi2 37.5 and 25
    # (per row 0.375 and 0.25); the "present" row alone gave 15 and 20 and ranked money first.
    texts = ["refund money"] * 20 + ["refund"] * 25 + ["please"] * 5 + ["refund please"] * 15 + ["please"] * 35
    labels = ["a"] * 50 + ["b"] * 50
    groups = by_text(mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5, relevance="chi2", specificity="none")))
    assert groups["refund"].relevance == pytest.approx(0.375)
    assert groups["money"].relevance == pytest.approx(0.25)


def test_label_is_the_one_the_group_lifts_most_not_the_most_frequent(tok):
    # 200 rows: r 2, a 20, b 178. "refund" in 10 rows: 1 r, 4 a, 5 b. Most frequent: b (lift 0.56 < 1);
    # raw lift: r (10, one row); smoothed (O + 0.5) / (E + 0.5): r 2.5, a 3.0, b 0.59 -> a, lift 4.
    texts = ["refund"] + ["please"] + ["refund now"] * 4 + ["now"] * 16 + ["refund money"] * 5 + ["money"] * 173
    labels = ["r"] * 2 + ["a"] * 20 + ["b"] * 178
    g = by_text(mine_task_tokens(texts, labels, tok, MiningConfig(min_count=5, specificity="none")))["refund"]
    assert (g.label, g.lift) == ("a", pytest.approx(4.0))
    assert (g.label_rows, g.count) == (4, 10)  # the mining review: "what -> ABBR" read as firm, from 77 of 3,038 rows


def test_numpy_and_mixed_type_labels_are_read_as_text(tok, tmp_path):
    import numpy as np

    texts = ["refunding please now"] * 5 + ["money transfer"] * 5
    tt = mine_task_tokens(texts, np.array([1] * 5 + [2] * 5), tok, MiningConfig(min_count=3, specificity="none"))
    tt.save(tmp_path / "tt.json")  # numpy int64 labels used to break the JSON writer
    assert {g.label for g in TaskTokens.load(tmp_path / "tt.json").groups} == {"1", "2"}
    mixed = mine_task_tokens(texts, [1] * 5 + ["b"] * 5, tok, MiningConfig(min_count=3, specificity="none"))
    assert {g.label for g in mixed.groups} == {"1", "b"}


def test_a_merge_without_a_candidate_says_why_nothing_was_merged():
    """The models review: "merged 0 words" on trec with MPNet, without a reason."""
    loaded = load_model("tiny-random", ["a", "b"])
    tt = TaskTokens([group("money", ["money"])], "", 0, {})  # one piece already
    report = adaptive_tokenization(loaded, tt, ["money please"])
    assert report.merged == [] and report.note.startswith("no mined group is a single word the tokenizer splits")
    assert report.summary().endswith("; no mined group is a single word the tokenizer splits into several pieces; "
                                     "nothing merged")


def test_merge_enters_the_normalised_word_and_keeps_only_merges_that_happen():
    loaded = load_model("tiny-random", ["a", "b"])
    tok = loaded.tokenizer
    assert tok.tokenize("refundíng") == ["refund", "##ing"]  # the normaliser strips the accent
    too_long = "refund" + "ing" * 32  # WordPiece turns a word over 100 characters into [UNK], whatever the vocabulary
    tt = TaskTokens([group(too_long, ["refund"] + ["##ing"] * 32), group("refundíng", ["refund", "##ing"])], "", 0, {})

    report = adaptive_tokenization(loaded, tt, ["refundíng please"], n_merge=1)

    assert [(m["text"], m["token"], m["slot"]) for m in report.merged] == [("refundíng", "refunding", "[unused0]")]
    assert "1 words not merged" in report.note and too_long in report.note
    assert loaded.tokenizer.tokenize("Refundíng") == ["refunding"]
    assert tt.groups[0].merged_token is None and tt.groups[1].merged_slot == "[unused0]"
    assert report.mean_length_after == 2


def test_merge_of_a_cased_tokenizer_enters_the_word_as_the_rows_spell_it(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from clm_explore.modeling import LoadedModel

    vocab = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Contact", "contact", "##less",
             "please", "card", "pay", "now"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tok = BertTokenizerFast(str(tmp_path / "vocab.txt"), do_lower_case=False)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=8))
    texts = ["Contactless card please"] * 6 + ["pay now"] * 6  # sentence-initial capital, as in real rows
    tt = mine_task_tokens(texts, ["a"] * 6 + ["b"] * 6, tok, MiningConfig(min_count=3, specificity="none"))
    assert by_text(tt)["contactless"].pieces == ["Contact", "##less"]
    loaded = LoadedModel(model, tok, "in-test", False)

    report = adaptive_tokenization(loaded, tt, texts)

    assert [m["token"] for m in report.merged] == ["Contactless"]  # not the lower-cased text
    assert loaded.tokenizer.tokenize("Contactless card please") == ["Contactless", "card", "please"]
    assert report.mean_length_after < report.mean_length_before


def test_mining_refuses_no_texts_and_labels_that_do_not_pair_with_the_texts():
    from clm_explore.modeling import load_model

    tok = load_model("tiny-random").tokenizer
    with pytest.raises(ValueError, match="got 0 texts and 0 labels"):
        mine_task_tokens([], [], tok)
    with pytest.raises(ValueError, match="got 3 texts and 2 labels"):
        mine_task_tokens(["a b", "c d", "e f"], ["x", "y"], tok)


def test_a_fragment_reads_in_a_text_without_its_tokenizers_markers():
    from clm_explore.mining import FRAGMENT, WORDS, TokenGroup
    from clm_explore.ui.views import highlight_markdown

    def group(text, pieces, kind=FRAGMENT):
        return TokenGroup(text, pieces, kind, 1, 1.0, 1.0, 1.0, "a", 1.0)

    assert group("##r ##ing", ["##r", "##ing"]).surface == "ring"  # WordPiece
    assert group("Ġcon", ["Ġcon"]).surface == "con" and group("o le", ["o", "le"]).surface == "ole"  # byte-level BPE
    assert group("▁re", ["▁re"]).surface == "re"  # SentencePiece
    assert group("top up", ["top", "up"], WORDS).surface == "top up"
    # The example rows bold the fragment: its text with '##' and spaces matched nothing inside "transferring".
    assert highlight_markdown("transferring", group("##r ##ing", ["##r", "##ing"]).surface) == "transfer**ring**"
    from clm_explore.mining import TaskTokens  # the tables list it too: 'Ġcon' alone read as a raw piece

    frame = TaskTokens([group("Ġcon", ["Ġcon"]), group("top up", ["top", "up"], WORDS)], "", 2, {}).to_frame()
    assert frame["reads"].tolist() == ["con", "top up"] and frame["text"].tolist() == ["Ġcon", "top up"]


def test_a_marker_alone_is_never_a_group():
    # SmolLM2's tokenizer has no merge of 'Ġ' with a digit (" 10" -> 'Ġ', '1', '0', one word): the marker, in every
    # number, was mined as a fragment that reads nothing, and its embedding row competed for the budget.
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    texts = [f"rate this book {n} stars" for n in ("one", "two", "three", "four", "five", "six")] * 2 + \
        [f"book a table for {n} people" for n in (20, 21, 32, 33, 44, 45)] * 2  # numbers in one label only
    labels = ["rate"] * 12 + ["table"] * 12
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([re.sub(r" \d+", "", t) for t in texts], vocab_size=300, min_frequency=1)  # no digit merges
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    assert tok.tokenize(" 10") == ["Ġ", "1", "0"]  # as SmolLM2 splits a number
    tt = mine_task_tokens(texts, labels, tok, MiningConfig(specificity="none", min_count=3, top_k=500))
    assert tt.groups and all(g.surface for g in tt.groups), [g.text for g in tt.groups if not g.surface]


def test_a_groups_examples_are_rows_of_its_own_label_first(tok):
    # "pin" in 2 rows of a and 8 of b, where b has 8 times a's rows: its lift is highest for a, whose rows were
    # after the first five b rows and so never shown beside "pin -> a".
    texts = ["my pin please"] * 6 + ["money"] * 4 + ["pin money"] * 2 + ["please"] * 78
    labels = ["b"] * 10 + ["a"] * 2 + ["b"] * 78
    group = by_text(mine_task_tokens(texts, labels, tok, PLAIN))["pin"]
    assert group.label == "a" and group.example_ids == [10, 11, 0, 1, 2]


# -- the background's language: detected from the texts, or given ---------------------------------------------

GERMAN = {
    "karte_verloren": [
        "Ich habe meine Karte verloren, bitte sperren Sie sie sofort.",
        "Meine Karte ist gestohlen worden, was soll ich tun?",
        "Wie kann ich meine verlorene Karte sperren lassen?",
        "Ist es möglich, eine neue Karte für mein Konto zu bestellen? Meine alte Karte ist weg.",
        "Bitte bestätigen Sie, dass meine Karte gesperrt ist.",
        "Ich finde meine Karte nicht mehr, bekomme ich eine Ersatzkarte?",
        "Mein Portemonnaie mit der Karte wurde gestohlen.",
        "Die Karte ist verloren, wann bekomme ich eine neue?",
        "Kann ich die Sperrung meiner Karte wieder aufheben, ich habe sie gefunden?",
        "Jemand hat meine Karte gestohlen und damit bezahlt.",
    ],
    "auslandsgebuehr": [
        "Warum wurde mir eine Gebühr für die Zahlung im Ausland berechnet?",
        "Ist die Auslandszahlung für mein Konto kostenlos?",
        "Ich sehe eine Fremdwährungsgebühr auf meinem Kontoauszug, was ist das?",
        "Wie hoch ist die Gebühr für Auslandszahlungen?",
        "Bitte bestätigen Sie, ob für Zahlungen in Dollar eine Gebühr anfällt.",
        "Meine Kartenzahlung im Urlaub hatte eine zusätzliche Gebühr.",
        "Bekomme ich die Fremdwährungsgebühr zurück?",
        "Für meine Zahlung in Pfund wurde eine Gebühr abgebucht.",
        "Welche Gebühr fällt für eine Auslandszahlung an?",
        "Die Gebühr für die Zahlung im Ausland ist zu hoch.",
    ],
    "ueberweisung": [
        "Meine Überweisung ist noch nicht angekommen.",
        "Wann kommt die Überweisung auf dem Konto des Empfängers an?",
        "Ich habe eine Überweisung gemacht, aber sie ist noch ausstehend.",
        "Bitte bestätigen Sie, dass meine Überweisung ausgeführt wurde.",
        "Warum dauert die Überweisung für mein Konto so lange?",
        "Die Überweisung an meine Vermieterin ist seit drei Tagen ausstehend.",
        "Wann bekomme ich eine Gutschrift für die Überweisung?",
        "Ist meine Überweisung schon gebucht?",
        "Mein Geld ist nicht auf dem Konto, obwohl die Überweisung ausgeführt ist.",
        "Kann ich eine ausstehende Überweisung stornieren?",
    ],
}
GERMAN_FUNCTION_WORDS = {"für", "ist", "eine", "ich", "die", "sie"}
"""At Zipf 6.8 or more in wordfreq's German list ('mein' and 'meine', 5.9, are under the function-word line of 6)."""


def german_corpus() -> tuple[list[str], list[str]]:
    return [t for rows in GERMAN.values() for t in rows], [label for label, rows in GERMAN.items() for _ in rows]


def word_level_tokenizer(texts: list[str]):
    """A tokenizer with every word of ``texts`` whole in its vocabulary: German words stay one piece, so spans
    such as 'bestätigen sie' are candidates (the tiny vocabulary would split them past max_ngram)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def lang_config(lang: str, **fields) -> MiningConfig:
    return MiningConfig(background_lang=lang, **fields)


def test_german_texts_are_mined_against_the_german_list():
    # The review: against the English list 'für', 'ist', 'eine', 'mein' looked domain-specific (English hardly
    # uses them) and ranked among the top groups; against German's they are what they are, common words.
    pytest.importorskip("wordfreq")
    texts, labels = german_corpus()
    tok = word_level_tokenizer(texts)
    auto = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=3))
    english = mine_task_tokens(texts, labels, tok, lang_config("en", min_count=3))  # as mining was before
    assert auto.background == "wordfreq (German, detected)"
    assert english.background == "wordfreq (English, given)"

    def has_function_word(texts: list[str]) -> list[str]:
        return [t for t in texts if {t.split()[0], t.split()[-1]} & GERMAN_FUNCTION_WORDS]

    top_auto = [g.text for g in auto.groups[:10]]
    assert has_function_word([g.text for g in english.groups[:10]])  # 'die überweisung', 'gebühr für'
    assert not has_function_word(top_auto), top_auto
    assert {"überweisung", "karte", "gebühr"} <= set(top_auto)
    # Each one's score, as a share of the best group's, falls (ranks shift with the spans that come and go).
    share = {g.text: g.score / auto.groups[0].score for g in auto.groups}
    share_english = {g.text: g.score / english.groups[0].score for g in english.groups}
    for word in GERMAN_FUNCTION_WORDS | {"mein", "meine"}:
        assert share.get(word, 0.0) < share_english[word], word


def test_spans_ending_in_a_german_function_word_are_left_out():
    # 'bestätigen sie' and 'bekomme ich' repeat their content word, as 'my card' does in English.
    pytest.importorskip("wordfreq")
    texts, labels = german_corpus()
    tok = word_level_tokenizer(texts)
    spans = {g.text for g in mine_task_tokens(texts, labels, tok, MiningConfig(min_count=3)) if " " in g.text}
    english = {g.text for g in mine_task_tokens(texts, labels, tok, lang_config("en", min_count=3)) if " " in g.text}
    assert {"bestätigen sie", "bekomme ich", "für die"} <= english
    assert not any(set(s.split()) & GERMAN_FUNCTION_WORDS for s in spans), spans


def test_english_texts_are_detected_as_english_and_mine_as_before(tok):
    pytest.importorskip("wordfreq")
    texts = (["my card has not arrived yet", "where is my new card", "the card was declined at the shop"] * 3
             + ["what is the exchange rate today", "why is the exchange rate so bad", "rate for my transfer"] * 3)
    labels = ["card"] * 9 + ["rate"] * 9
    auto = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=3))
    given = mine_task_tokens(texts, labels, tok, lang_config("en", min_count=3))
    assert auto.background == "wordfreq (English, detected)"
    assert auto.groups == given.groups and auto.groups


def test_chinese_texts_without_jieba_fall_back_to_relevance_alone(tok):
    # wordfreq segments a Chinese word with jieba before it looks it up; without jieba the lookup raises.
    pytest.importorskip("wordfreq")
    if importlib.util.find_spec("jieba") is not None:
        pytest.skip("jieba is installed: wordfreq's Chinese lookups work")
    texts = ["我的银行卡丢了怎么办", "我的卡被偷了", "请帮我冻结银行卡", "银行卡不见了",
             "为什么转账还没有到账", "我的转账失败了", "转账什么时候到", "转账到账太慢了"] * 3
    labels = (["card"] * 4 + ["transfer"] * 4) * 3
    tt = mine_task_tokens(texts, labels, tok, MiningConfig(min_count=3, fragment_min_chars=1))
    assert tt.groups
    assert "jieba" in tt.background and "relevance alone" in tt.background and "Chinese, detected" in tt.background
    assert all(g.specificity == 1.0 for g in tt.groups)
    # The function-word filter still reads the list's commonest words: no span starts with 我 (I) or ends in 的.
    spans = [g.text.split() for g in tt.groups if " " in g.text]
    assert not any(s[0] in ("我", "的") or s[-1] in ("我", "的") for s in spans), spans


def test_an_unknown_background_language_is_refused_naming_the_lists(tok):
    pytest.importorskip("wordfreq")
    with pytest.raises(ConfigError, match=r"background_lang .*\bde\b.*\ben\b.*; got 'xx'"):
        background_language(["some text"], "xx")
    with pytest.raises(ConfigError, match="background_lang"):
        mine_task_tokens(["refund please"] * 6, ["a"] * 6, tok, lang_config("klingon"))


def test_without_wordfreq_the_score_is_relevance_alone(tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "wordfreq", None)  # import wordfreq now raises ImportError
    texts = ["refund please"] * 6 + ["money please"] * 6
    tt = mine_task_tokens(texts, ["a"] * 6 + ["b"] * 6, tok, MiningConfig(min_count=5))
    assert tt.background.startswith("none: the wordfreq package is not installed")
    assert tt.groups and all(g.specificity == 1.0 for g in tt.groups)


def test_labels_without_a_mined_group_are_named():
    """The few-shot review: at 8 rows per label 5 of 7 labels had no group at the default minimum count, and the
    Tokens page listed the other two's words without a word about the rest."""
    from clm_explore.mining import TaskTokens, TokenGroup

    tokens = TaskTokens([TokenGroup("refund", ["refund"], "words", 5, 1.0, 1.0, 1.0, "money", 2.0)], "", 20, {})
    said = tokens.ungrouped_labels_note(["money", "card", "card", "atm"])
    assert said.startswith("2 of 3 labels have no mined group (atm, card): no word marks them")
    assert tokens.ungrouped_labels_note(["money"]) == ""
    assert TaskTokens([], "", 20, {}).ungrouped_labels_note(["money", "card"]) == ""  # none at all: said elsewhere
    even = TaskTokens([TokenGroup("refund", ["refund"], "words", 5, 1.0, 1.0, 1.0, "money", 2.0),
                       TokenGroup("please", ["please"], "words", 9, 0.0, 1.0, 0.5, "atm", 1.0)], "", 20, {})
    assert even.ungrouped_labels_note(["money", "atm"]).startswith("1 of 2 labels have no mined group (atm)")
