"""How much of a data set a model's vocabulary can read: the share of sub-tokens that are its unknown token.

The default model's vocabulary is English (uncased WordPiece): Chinese text is about 70% ``[UNK]``, Thai all of it,
and an emoji-only text is one ``[UNK]``. Those texts look alike to the model, so mining, scoring and training on
them go through without an error and give a model near chance, with nothing said (the language review: 0.63 on a
Chinese set, 0.967 on a German one). The commands that read data with a model, the app's Data page and ``predict``
say it, and name the way out: a model whose vocabulary covers the data's script.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

UNKNOWN_WARN_SHARE = 0.02
"""An unknown-token share above which the data is said to be partly unreadable to the model (German and Russian
text read by the default model: 0%; mixed text with emoji: 9%; Japanese 20%; Chinese 72%)."""
LETTER_WARN_SHARE = 0.4
"""A share of one-letter sub-tokens above which the data is said to be read letter by letter (English: 5-9%; Arabic read by the default model: 96%)."""
LETTER_RULE_VOCABULARY = 5_000
"""Vocabularies smaller than this are not held to the letter rule: the tests' tiny model (725 pieces) spells English
words too; real models' vocabularies hold tens of thousands."""
MOSTLY_UNKNOWN = 0.5
"""A text at least this share unknown sub-tokens is "mostly unreadable": its prediction says little."""
COUNTED_TEXTS = 5_000
"""Texts counted at most (a seeded sample of a larger set): a second or two."""
COUNTED_TOKENS = 256
"""Sub-tokens counted per text at most."""
MULTILINGUAL_HINT = ("A model whose vocabulary covers the data's script reads it: a multilingual one, for example a "
                     "local copy of paraphrase-multilingual-MiniLM-L12-v2 or multilingual-e5-small (--model DIR; "
                     "the app's sidebar: a local folder).")


@dataclass(frozen=True)
class UnknownTokens:
    """How many of the counted texts' sub-tokens (the model's markers left out) are its unknown token."""

    token: str
    unknown: int
    sub_tokens: int
    texts: int
    mostly_unknown: int
    """Texts at least ``MOSTLY_UNKNOWN`` unknown."""
    single_letters: int = 0
    """Sub-tokens that are one letter: a vocabulary without the script's words splits them letter by letter
    (Arabic and Russian text read by the default model: about 0.85 sub-tokens a character)."""

    @property
    def share(self) -> float:
        return self.unknown / max(self.sub_tokens, 1)

    @property
    def letter_share(self) -> float:
        return self.single_letters / max(self.sub_tokens, 1)

    def warning(self, what: str = "the texts") -> str:
        """A paragraph saying how much the model cannot read, or that it reads letter by letter ('' when neither)."""
        if self.share <= UNKNOWN_WARN_SHARE:
            if self.letter_share <= LETTER_WARN_SHARE:
                return ""
            return (f"{self.letter_share:.0%} of {what}' sub-tokens are single letters: this model's vocabulary "
                    "lacks the words of their script and reads them letter by letter, which it was hardly trained "
                    f"to make sense of. {MULTILINGUAL_HINT}")
        return (f"{self.share:.0%} of {what}' sub-tokens are {self.token} to this model's vocabulary ({self.mostly_unknown:,} "
                f"of {self.texts:,} texts counted are mostly {self.token}): it reads each as the same unknown symbol, "
                f"so the words behind them cannot tell labels apart, and the mined groups and scores skip them. "
                f"{MULTILINGUAL_HINT}")


def count_unknown(tokenizer: Any, texts: Sequence[str], seed: int = 0) -> UnknownTokens | None:
    """The unknown-token count of ``texts`` (a seeded sample of ``COUNTED_TEXTS`` above that); None for a tokenizer
    without an unknown token (a byte-level one reads every character)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return None
    texts = list(texts)
    if len(texts) > COUNTED_TEXTS:
        texts = random.Random(seed).sample(texts, COUNTED_TEXTS)
    unknown = total = mostly = letters = 0
    # A vocabulary of a few hundred pieces (the tests' tiny model) splits any text into letters: no word on it
    spells = len(tokenizer) >= LETTER_RULE_VOCABULARY
    for ids in _ids(tokenizer, texts):
        missing = sum(1 for i in ids if i == unk)
        unknown, total = unknown + missing, total + len(ids)
        mostly += bool(ids) and missing >= MOSTLY_UNKNOWN * len(ids)
        letters += sum(1 for piece in tokenizer.convert_ids_to_tokens(ids) if _one_letter(piece)) if spells else 0
    return UnknownTokens(str(tokenizer.unk_token), unknown, total, len(texts), mostly, letters)


def _one_letter(piece: str) -> bool:
    """A piece that is one letter of an alphabet: a Chinese or Japanese character, or a Hangul syllable, is a word of
    its own to BERT-style vocabularies, which read those scripts character by character by design (the diff review:
    a Chinese BERT was told to use a multilingual model)."""
    # WordPiece marks a word's inner pieces "##", SentencePiece a word's start "▁", byte-level BPE "Ġ"
    core = piece.removeprefix("##").lstrip("▁Ġ")
    return len(core) == 1 and core.isalpha() and not a_word_of_its_own(core)


def a_word_of_its_own(char: str) -> bool:
    """A character that BERT-style tokenizers make a word of its own: a Chinese or Japanese ideograph, kana or Hangul
    (scripts written without spaces between words)."""
    return unicodedata.name(char, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))


def unreadable_note(tokenizer: Any, texts: Sequence[str]) -> str:
    """``count_unknown``'s warning for training texts ('' when the vocabulary reads them)."""
    counted = count_unknown(tokenizer, texts)
    return counted.warning("the training texts") if counted is not None else ""


def mostly_unknown_texts(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """The positions of the texts at least ``MOSTLY_UNKNOWN`` unknown sub-tokens (none for a tokenizer without one)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    return [i for i, ids in enumerate(_ids(tokenizer, texts))
            if ids and sum(1 for t in ids if t == unk) >= MOSTLY_UNKNOWN * len(ids)]


def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    # torch comes with it: imported here, not with the module (the app's pages import this module early)
    from clm_explore.batches import tokenized

    chunks = tokenized(tokenizer, texts, COUNTED_TOKENS, add_special_tokens=False, truncation=True,
                       max_length=COUNTED_TOKENS)
    return [list(ids) for chunk in chunks for ids in chunk["input_ids"]]
