"""Integrated-Gradients attributions on the tiny random BERT: completeness, word merging, determinism."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from clm_explore.attribution import (
    DEFAULT_MAX_LENGTH,
    AttributionConfig,
    AttributionError,
    TokenAttribution,
    explain,
    merge_words,
    reference_token_id,
    resolve_target,
)
from clm_explore.config import ConfigError
from clm_explore.modeling import TINY_VOCAB, LoadedModel, load_model, tiny_bert_config

LABELS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed"]
MULTI_PIECE = "Why was my cardless top-up declined?"  # cardless -> card ##less


def tiny_loaded(labels: list[str] = LABELS, seed: int = 0, scale: float = 0.3) -> LoadedModel:
    """The tiny random BERT, with weights drawn wider than BERT's init so that outputs are not uniform."""
    loaded = load_model("tiny-random", labels, seed=seed)
    if len(loaded.tokenizer) < 100:
        # transformers 5's BertTokenizerFast ignores vocab_file= (needs vocab=); rebuild so words split.
        from transformers import BertForSequenceClassification, BertTokenizerFast

        tokenizer = BertTokenizerFast(vocab=str(TINY_VOCAB), do_lower_case=True)
        config = tiny_bert_config(len(tokenizer), len(labels))
        config.id2label, config.label2id = dict(enumerate(labels)), {x: i for i, x in enumerate(labels)}
        torch.manual_seed(seed)
        loaded = LoadedModel(BertForSequenceClassification(config), tokenizer, "tiny-random", False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in loaded.model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return loaded


@pytest.fixture
def loaded() -> LoadedModel:
    return tiny_loaded()


def test_completeness_delta_small(loaded: LoadedModel) -> None:
    texts = [MULTI_PIECE, "my card has not arrived", "exchange rate for euros please", "top up failed again"]
    results = explain(loaded.model, loaded.tokenizer, texts, AttributionConfig(n_steps=32))
    assert len(results) == 4
    for res in results:
        total = sum(res.token_scores)
        assert abs(total) > 1e-3  # non-trivial attributions
        assert abs(res.delta) < 0.01 * max(1.0, abs(total))
        assert len(res.words) == len(res.scores)
        assert 0.0 < res.probability < 1.0


def test_delta_shrinks_with_steps(loaded: LoadedModel) -> None:
    text = [MULTI_PIECE]
    coarse = explain(
        loaded.model, loaded.tokenizer, text, AttributionConfig(n_steps=2, method="riemann_trapezoid")
    )
    fine = explain(
        loaded.model, loaded.tokenizer, text, AttributionConfig(n_steps=64, method="riemann_trapezoid")
    )
    assert abs(fine[0].delta) <= abs(coarse[0].delta) + 1e-6


def test_words_merge_pieces(loaded: LoadedModel) -> None:
    (res,) = explain(loaded.model, loaded.tokenizer, MULTI_PIECE)
    assert "##less" in res.tokens
    assert res.words == ["Why", "was", "my", "cardless", "top-up", "declined", "?"]  # a hyphenated word is one
    card = res.tokens.index("card")
    pieces = res.token_scores[card] + res.token_scores[card + 1]
    assert res.scores[3] == pytest.approx(pieces, abs=1e-6)
    # special tokens are kept in the reference, so they get no attribution
    assert res.tokens[0] == "[CLS]" and res.token_scores[0] == pytest.approx(0.0, abs=1e-7)
    assert sum(res.scores) == pytest.approx(sum(res.token_scores), abs=1e-5)


def test_merge_words_by_hand() -> None:
    words, scores, truncated = merge_words(
        "ab cd",
        [None, 0, 0, 1, None],
        [[0, 0], [0, 1], [1, 2], [3, 5], [0, 0]],
        torch.tensor([9.0, 1, 2, 3, 9]),
    )
    assert words == ["ab", "cd"] and scores == [3.0, 3.0] and not truncated


def test_merge_words_splits_at_whitespace_when_word_ids_do_not() -> None:
    # Llama-2/Mistral style (Metaspace split=False): every sub-token of the text has word id 0.
    text = "My card  arrived"
    words, scores, truncated = merge_words(
        text,
        [None, 0, 0, 0, 0, 0],
        [[0, 0], [0, 2], [2, 7], [7, 8], [8, 12], [12, 16]],  # My | ▁card | ▁ (2nd space) | ▁arr | ived
        torch.tensor([9.0, 1, 2, 4, 8, 16]),
    )
    assert words == ["My", "card", "arrived"] and scores == [1.0, 2.0, 28.0] and not truncated


def test_a_contraction_or_hyphenated_word_is_one_word() -> None:
    """The report review: BERT's pre-tokenizer makes three words of "hasn't" and "top-up"; the report read
    "hasn ' t", with "'" and "t" among a label's top words. Other punctuation stays a word of its own."""
    from clm_explore.modeling import load_tokenizer

    tok = load_tokenizer("tiny-random")
    text = "it hasn't arrived, my top-up (card) 'x' - ok"
    enc = tok(text, return_offsets_mapping=True)
    scores = torch.arange(len(enc["input_ids"]), dtype=torch.float)
    words, summed, _ = merge_words(text, enc.word_ids(), enc["offset_mapping"], scores)
    assert words == ["it", "hasn't", "arrived", ",", "my", "top-up", "(", "card", ")", "'", "x", "'", "-", "ok"]
    specials = [i for i, wid in enumerate(enc.word_ids()) if wid is None]
    assert sum(summed) == pytest.approx(float(scores.sum()) - sum(float(scores[i]) for i in specials))


def test_whitespace_only_pieces_go_to_a_neighbour_word() -> None:
    # Byte-level BPE: "a  b " -> 'a', 'Ġ' (the second space alone), 'Ġb', 'Ġ' (trailing): no empty word.
    words, scores, _ = merge_words(
        "a  b ", [0, 1, 2, 3], [[0, 1], [1, 2], [2, 4], [4, 5]], torch.tensor([1.0, 2, 4, 8])
    )
    assert words == ["a", "b"] and scores == [1.0, 14.0]
    words, scores, _ = merge_words("x", [0, 1], [[0, 1], [1, 1]], torch.tensor([1.0, 2]))  # empty span at the end
    assert words == ["x"] and scores == [3.0]


def _sentencepiece_like_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer as Llama-2's converts: pieces learnt per word, encoded with Metaspace(split=False)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    corpus = ["my card has not arrived yet", "why was my top up declined", "exchange rate please"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")  # fmt: skip


def test_words_of_a_sentencepiece_tokenizer_without_word_ids() -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = _sentencepiece_like_tokenizer()
    text = "my card has  not arrived"
    enc = tok(text)
    assert set(enc.word_ids()) == {0}  # the tokenizer alone makes the whole text one word
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=2, pad_token_id=tok.pad_token_id, max_position_embeddings=64,
    )  # fmt: skip
    (res,) = explain(LlamaForSequenceClassification(config), tok, [text], AttributionConfig(n_steps=8))
    assert res.words == ["my", "card", "has", "not", "arrived"]
    assert sum(res.scores) == pytest.approx(sum(res.token_scores), abs=1e-6)


def test_a_word_cut_by_truncation_is_kept_as_a_fragment(loaded: LoadedModel) -> None:
    (cut,) = explain(loaded.model, loaded.tokenizer, "a b c d e f cardless", AttributionConfig(max_length=9, n_steps=4))
    assert cut.tokens[-2:] == ["card", "[SEP]"]  # [CLS] a b c d e f card [SEP]: ##less cut
    assert cut.words[-1] == "card" and "truncated" in cut.note  # the fragment stays, as the docstring says
    assert "its last word shown, 'card', is the start of a longer word" in cut.note  # and is said to be one
    (whole,) = explain(loaded.model, loaded.tokenizer, "a b c d e f card less", AttributionConfig(max_length=9,
                                                                                              n_steps=4))
    assert "truncated" in whole.note and "longer word" not in whole.note  # cut between words: nothing more to say
    (joined,) = explain(loaded.model, loaded.tokenizer, "a b c d e hasn't", AttributionConfig(max_length=8, n_steps=4))
    assert joined.words[-1] == "hasn" and "'hasn', is the start of a longer word" in joined.note  # as words join
    (chinese,) = explain(loaded.model, loaded.tokenizer, "我的卡还没有到达这里", AttributionConfig(max_length=8,
                                                                                             n_steps=4))
    assert "truncated" in chinese.note and "longer word" not in chinese.note  # a character is a word of its own


def test_deterministic_and_order_independent(loaded: LoadedModel) -> None:
    texts = ["top up failed", MULTI_PIECE, "card"]
    cfg = AttributionConfig(n_steps=8, batch_size=2, internal_batch_size=4)
    first = explain(loaded.model, loaded.tokenizer, texts, cfg)
    again = explain(loaded.model, loaded.tokenizer, texts, cfg)
    alone = explain(loaded.model, loaded.tokenizer, [texts[1]], cfg)
    assert [r.scores for r in first] == [r.scores for r in again]
    assert first[1].words == alone[0].words
    assert first[1].scores == pytest.approx(alone[0].scores, abs=1e-5)  # padding in a batch does not matter


def test_a_left_padding_tokenizer_pads_on_the_right_as_training_does(loaded: LoadedModel) -> None:
    # BERT's positions (as GPT-2's) are absolute: a left-padded text in a batch read other positions than alone.
    loaded.tokenizer.padding_side = "left"
    cfg = AttributionConfig(n_steps=8)
    together = explain(loaded.model, loaded.tokenizer, ["card", MULTI_PIECE], cfg)
    alone = explain(loaded.model, loaded.tokenizer, ["card"], cfg)
    assert together[0].scores == pytest.approx(alone[0].scores, abs=1e-5)
    assert together[0].probability == pytest.approx(alone[0].probability, abs=1e-6)


def test_target_by_name_and_model_untouched(loaded: LoadedModel) -> None:
    model = loaded.model
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    (res,) = explain(model, loaded.tokenizer, "card", target="exchange_rate")
    assert res.target == 1 and res.target_label == "exchange_rate"
    (by_id,) = explain(model, loaded.tokenizer, "card", target=1)
    assert by_id.scores == pytest.approx(res.scores)
    assert model.training  # mode restored
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_predicted_target_and_gold(loaded: LoadedModel) -> None:
    (res,) = explain(loaded.model, loaded.tokenizer, ["card"])
    assert res.target == res.predicted
    gold = explain(
        loaded.model,
        loaded.tokenizer,
        ["card", "rate"],
        AttributionConfig(target="gold"),
        ["top_up_failed", 0],
    )
    assert [g.target for g in gold] == [3, 0]
    with pytest.raises(AttributionError, match="gold"):
        explain(loaded.model, loaded.tokenizer, ["card"], AttributionConfig(target="gold"))


def test_unknown_target_label(loaded: LoadedModel) -> None:
    with pytest.raises(AttributionError, match="nope"):
        explain(loaded.model, loaded.tokenizer, ["card"], target="nope")
    with pytest.raises(AttributionError, match="out of range"):
        explain(loaded.model, loaded.tokenizer, ["card"], target=7)


def test_numeric_label_names_are_names_before_ids() -> None:
    numeric = tiny_loaded(["0", "1", "10", "11", "2"])  # data labels: strings, sorted as strings
    assert resolve_target(numeric.model, "2") == 4  # the label "2", not id 2 (= label "10")
    assert resolve_target(numeric.model, "10") == 2
    assert resolve_target(numeric.model, 2) == 2  # an int is an id
    assert resolve_target(numeric.model, "4") == 4  # names no label, all digits: an id
    with pytest.raises(AttributionError, match="out of range"):
        resolve_target(numeric.model, "7")
    with pytest.raises(AttributionError, match="Unknown target label 'x'"):
        resolve_target(numeric.model, "x")
    gold = explain(numeric.model, numeric.tokenizer, ["card", "rate"], AttributionConfig(target="gold"), ["2", "0"])
    assert [(g.target, g.target_label) for g in gold] == [(4, "2"), (0, "0")]


def test_truncation_noted(loaded: LoadedModel) -> None:
    (res,) = explain(
        loaded.model, loaded.tokenizer, " ".join(["card"] * 40), AttributionConfig(max_length=10)
    )
    assert len(res.words) == 8 and "truncated" in res.note
    # how much of it was read (the long-text review: "truncated to 256" of a text whose question sat past it)
    assert "text truncated to 10 sub-tokens (its first 39 of 199 characters)" in res.note
    (unset,) = explain(loaded.model, loaded.tokenizer, " ".join(["card"] * 80))  # no run known: 64 sub-tokens
    assert AttributionConfig().max_length is None and len(res.tokens) == 10
    assert len(unset.tokens) == DEFAULT_MAX_LENGTH == 64 and "truncated to 64" in unset.note
    for text in ("hello card\u200f", "hello card\ufeff", "zero\u200bwidth\u200b", "hello card \u2764\ufe0f",
                 "hello cafe\u0301", "hello card \ufffd"):  # marks a tokenizer drops, an emoji's variation selector
        (short,) = explain(loaded.model, loaded.tokenizer, text, AttributionConfig(max_length=10))
        assert "truncated" not in short.note, text  # before: "text truncated to 10 sub-tokens" (the data review)


def test_decoder_reference_is_not_pad(loaded: LoadedModel) -> None:
    tok = loaded.tokenizer
    assert reference_token_id(tok, decoder=False) == tok.pad_token_id
    assert reference_token_id(tok, decoder=True) == tok.unk_token_id


def test_decoder_model_notes_reference() -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tiny_loaded().tokenizer
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=2, pad_token_id=tok.pad_token_id, max_position_embeddings=64,
    )  # fmt: skip
    config.is_decoder = True
    model = LlamaForSequenceClassification(config)
    (res,) = explain(model, tok, [MULTI_PIECE], AttributionConfig(n_steps=16))
    assert "decoder" in res.note and "32 integration steps (twice the 16 asked)" in res.note
    assert abs(res.delta) < 0.01


def test_round_trip_dict(loaded: LoadedModel) -> None:
    (res,) = explain(loaded.model, loaded.tokenizer, ["card"])
    assert TokenAttribution.from_dict(res.to_dict()) == res
    (logit,) = explain(loaded.model, loaded.tokenizer, ["card"], AttributionConfig(output="logit"))
    assert TokenAttribution.from_dict(logit.to_record()).output == "logit"


def test_logit_scores_add_up_to_the_logits_change_from_the_reference_unbounded_by_the_softmax() -> None:
    """The attributions review's leftover: scores were of the probability alone (bounded by 1, the softmax's units),
    where Captum's tutorials attribute the logit."""
    sure = tiny_loaded(seed=1, scale=0.5)  # p 0.97 and 0.96 on these texts
    texts = ["my card has not arrived", "exchange rate for euros please"]
    probs = explain(sure.model, sure.tokenizer, texts, AttributionConfig(n_steps=64))
    logits = explain(sure.model, sure.tokenizer, texts, AttributionConfig(n_steps=64, output="logit"))
    enc = sure.tokenizer(texts, padding=True, return_tensors="pt")
    special = torch.tensor(sure.tokenizer.all_special_ids)
    reference = torch.where(torch.isin(enc["input_ids"], special), enc["input_ids"], sure.tokenizer.pad_token_id)
    with torch.no_grad():
        out = sure.model(**enc).logits
        at_reference = sure.model(input_ids=reference, attention_mask=enc["attention_mask"]).logits
    for p, lg, row, ref in zip(probs, logits, out, at_reference, strict=True):
        assert lg.output == "logit" and p.output == "probability"
        assert lg.target == p.target and lg.probability == pytest.approx(p.probability, abs=1e-6)  # still p
        assert lg.probability == pytest.approx(float(row.softmax(-1)[lg.target]), abs=1e-5)
        assert lg.change == pytest.approx(float(row[lg.target] - ref[lg.target]), abs=1e-4)  # the logit's change
        assert p.change == pytest.approx(float(row.softmax(-1)[p.target] - ref.softmax(-1)[p.target]), abs=1e-4)
        assert not lg.unsettled  # the scores add up to it: |delta| within a tenth of the change
    assert max(p.probability for p in probs) > 0.9
    assert max(abs(lg.change) for lg in logits) > 1.0 > max(abs(p.change) for p in probs)  # past the softmax's 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_steps": 1}, "n_steps"),
        ({"n_steps": 1025}, "n_steps"),  # a typo such as 100000000 would ask for petabytes
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 16, "internal_batch_size": 8}, "internal_batch_size"),
        ({"target": "true"}, "target"),
        ({"max_length": 4}, "max_length"),
        ({"max_length": 513}, "max_length"),
        ({"method": "simpson"}, "method"),
        ({"output": "odds"}, "output"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        AttributionConfig(**kwargs)


def test_two_threads_explaining_with_one_model_take_turns(loaded: LoadedModel) -> None:
    import threading

    # Two app sessions share a cached run model; Captum's hook on its embeddings made the other call fail on its
    # shapes ("The size of tensor a (8) must match the size of tensor b (9)").
    texts = {"short": ["card arrived"], "long": ["exchange rate card refund " * 4]}
    cfg = AttributionConfig(n_steps=8)
    expected = {k: explain(loaded.model, loaded.tokenizer, v, cfg)[0].scores for k, v in texts.items()}
    errors: list[str] = []
    wrong: list[str] = []

    def work(key: str) -> None:
        for _ in range(15):
            try:
                if explain(loaded.model, loaded.tokenizer, texts[key], cfg)[0].scores != pytest.approx(expected[key]):
                    wrong.append(key)
            except Exception as exc:  # noqa: BLE001 - any failure of the other thread's call counts
                errors.append(repr(exc)[:120])

    threads = [threading.Thread(target=work, args=(key,)) for key in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and wrong == []


def test_a_result_whose_bars_miss_the_probability_change_says_so(loaded: LoadedModel, monkeypatch) -> None:
    import clm_explore.attribution as attribution

    (settled,) = explain(loaded.model, loaded.tokenizer, ["card arrived"], AttributionConfig(n_steps=64))
    assert "do not add up" not in settled.note and "miss the probability" not in settled.note
    # as if it missed by twice the gap allowed
    monkeypatch.setattr(attribution, "UNSETTLED_SHARE", 0.0)
    monkeypatch.setattr(attribution, "UNSETTLED_FLOOR", {"probability": abs(settled.delta) / 2})
    (flagged,) = explain(loaded.model, loaded.tokenizer, ["card arrived"], AttributionConfig(n_steps=64))
    assert f"miss the probability change by {flagged.delta:+.2f}" in flagged.note
    assert "more than 64 steps (--steps, up to 1024) may help" in flagged.note  # the steps asked for
    assert "may help" not in attribution._unsettled_note(0.5, 1024)  # no advice the CLI would refuse


def test_the_gap_allowed_is_a_tenth_of_the_change_so_a_small_change_is_not_drowned_by_its_miss() -> None:
    """The attributions review: a fixed 0.1 in probability let a delta of 0.09 pass on a change of 0.05."""
    from clm_explore.attribution import is_unsettled

    assert is_unsettled(0.09, 0.05) and not is_unsettled(0.015, 0.05)  # the floor, 0.02, under a tiny change
    assert not is_unsettled(0.09, 0.95) and is_unsettled(0.1, 0.95)  # a tenth of a large one
    assert not is_unsettled(0.09, 0.5, "logit") and is_unsettled(0.6, 5.0, "logit")  # logits: floor 0.1


def test_the_bars_add_up_on_a_model_that_numbers_positions_from_the_ids(tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification, RobertaConfig

    tok = tiny_loaded().tokenizer
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                           num_labels=len(LABELS), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():  # positions and logits that matter, as in a trained model (random ones barely move)
        model.roberta.embeddings.position_embeddings.weight.mul_(5.0)
        model.classifier.out_proj.weight.mul_(300.0)
    texts = ["my card has not arrived", "exchange rate for a refund of my card"]
    results = explain(model, tok, texts, AttributionConfig(n_steps=256))
    # RoBERTa gives pad ids the padding position: a pass over the reference ids moved every position, and the
    # bars (which add up to the change along the path) missed that pass's probability by 0.003 here, by 0.3 on
    # a finetuned all-mpnet-base-v2.
    assert max(abs(r.delta) for r in results) < 1e-3, [r.delta for r in results]


def test_a_pass_holds_a_bounded_number_of_sub_tokens_with_the_same_scores(loaded: LoadedModel, monkeypatch) -> None:
    """The attributions review: the cap counted rows alone, and 4 texts of 512 sub-tokens took 10.4 GB."""
    import clm_explore.attribution as attribution
    from clm_explore.attribution import TOKENS_PER_PASS, rows_per_pass

    assert rows_per_pass(128, 4, 64) == 128 and TOKENS_PER_PASS == 128 * 64  # the default length: as before
    assert rows_per_pass(128, 4, 512) == 16 and rows_per_pass(128, 4, 4096) == 4  # never fewer rows than texts
    texts = [MULTI_PIECE, "my card", "the exchange rate was wrong on my card payment yesterday"]
    whole = explain(loaded.model, loaded.tokenizer, texts, AttributionConfig(n_steps=16))
    asked: list[int] = []
    original = attribution.rows_per_pass
    monkeypatch.setattr(attribution, "rows_per_pass", lambda *a: asked.append(original(*a)) or asked[-1])
    monkeypatch.setattr(attribution, "TOKENS_PER_PASS", 40)  # a few sub-tokens a pass: many passes
    split = explain(loaded.model, loaded.tokenizer, texts, AttributionConfig(n_steps=16))
    assert asked and all(rows < 16 for rows in asked)
    for a, b in zip(whole, split, strict=True):
        assert a.words == b.words and torch.allclose(torch.tensor(a.scores), torch.tensor(b.scores), atol=1e-5)


def test_a_text_the_tokenizer_reads_nothing_of_is_refused_not_explained(loaded: LoadedModel) -> None:
    """The attributions review: a zero-width space or control characters passed the empty-text check, and the
    model's answer on an empty input was shown as the text's explanation."""
    for text in ("\u200b", "\x00\x01", "\u200b\u200d"):
        with pytest.raises(AttributionError, match=r"texts\[1\] has no character the model reads"):
            explain(loaded.model, loaded.tokenizer, ["my card", text])
    [kept] = explain(loaded.model, loaded.tokenizer, ["\u200bmy card"])  # with words beside: explained
    assert kept.words == ["my", "card"]


def test_parts_the_model_reads_as_its_unknown_token_are_named_in_the_note(loaded: LoadedModel) -> None:
    """The attributions review: an emoji read as [UNK] got a bar under the emoji, as if the model had read it."""
    odd, plain = explain(loaded.model, loaded.tokenizer, ["my card 💳 is lost 😡", "my card"])
    assert odd.words[2] == "💳" and "2 part(s) of the text are unknown to the model ([UNK]): 💳, 😡" in odd.note
    assert "unknown" not in plain.note


def test_a_decoders_reference_without_unk_or_a_spare_special_is_a_space_not_token_zero() -> None:
    """The attributions review: a byte-level tokenizer whose EOS is its pad and that has no UNK took id 0, "!"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(["my card has not arrived", "top up failed again"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token_id is None
    assert tokenizer.convert_ids_to_tokens(1) == "!"  # the last resort's id, where pad is 0
    assert tokenizer.convert_ids_to_tokens(reference_token_id(tokenizer, decoder=True)) == "Ġ"  # the space
