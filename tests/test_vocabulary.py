"""``vocabulary``: how much of the data a model's vocabulary reads."""

from __future__ import annotations

from types import SimpleNamespace

from clm_explore.modeling import tiny_tokenizer
from clm_explore.vocabulary import count_unknown, mostly_unknown_texts


def test_the_unknown_share_counts_sub_tokens_without_the_models_markers() -> None:
    tokenizer = tiny_tokenizer()
    english = count_unknown(tokenizer, ["my card has not arrived", "what is the exchange rate"])
    assert english is not None and english.unknown == 0 and english.warning() == ""
    chinese = count_unknown(tokenizer, ["我想退款", "my card has 退款"])
    assert chinese.token == "[UNK]" and chinese.texts == 2 and chinese.mostly_unknown == 1
    assert chinese.unknown == 6 and chinese.sub_tokens == 9  # 6 characters, each [UNK]; "my", "card", "has"
    assert chinese.warning("the training texts").startswith("67% of the training texts' sub-tokens are [UNK]")


def test_text_read_letter_by_letter_is_said_too_by_a_real_sized_vocabulary() -> None:
    from transformers import BertTokenizer

    from clm_explore.vocabulary import LETTER_RULE_VOCABULARY

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"абвгд", *"ابت", "card"]
    pieces += [f"word{i}" for i in range(LETTER_RULE_VOCABULARY)]
    sized = BertTokenizer(vocab={token: i for i, token in enumerate(pieces)})
    spelled = count_unknown(sized, ["а б в г", "ا ب ت card"])  # as Arabic reads to the default model
    assert spelled.unknown == 0 and spelled.letter_share == 7 / 8
    assert "reads them letter by letter" in spelled.warning()
    # The tests' tiny model (726 pieces) spells English words too: not held to the rule
    assert count_unknown(tiny_tokenizer(), ["q z x v k j"]).letter_share == 0.0


def test_mostly_unknown_texts_are_named_and_a_tokenizer_without_an_unknown_token_reads_all() -> None:
    assert mostly_unknown_texts(tiny_tokenizer(), ["hello card", "😀😀", "card 退款退款"]) == [1, 2]
    byte_level = SimpleNamespace(unk_token_id=None)
    assert count_unknown(byte_level, ["anything"]) is None and mostly_unknown_texts(byte_level, ["x"]) == []


def test_a_vocabulary_that_reads_chinese_character_by_character_is_not_said_to_read_letter_by_letter() -> None:
    """The diff review: BERT-style Chinese vocabularies split Han text a character a token by design; the letter rule
    told a user of one to use a multilingual model."""
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"我想退款发票开"]
    chinese = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    counted = count_unknown(chinese, ["我想退款", "开发票"])
    assert counted.unknown == 0 and counted.letter_share == 0.0 and counted.warning() == ""
