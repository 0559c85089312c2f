"""Mine task-specific token groups from annotated training text (method.md section 1).

A *group* is a whole word (however many pieces the tokenizer splits it into), a span of up to
``max_words`` words, or a word fragment (a sub-token n-gram) that recurs inside several different
words. Each is scored by label relevance R (how much knowing the group is present shifts the label
distribution) times domain specificity A (how much more frequent it is here than in the general language:
wordfreq's list for the language of the texts, detected from them unless given).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from clm_explore.config import ConfigError, MiningConfig, config_from

if TYPE_CHECKING:
    from tokenizers import Encoding
    from transformers import PreTrainedTokenizerBase

    from clm_explore.modeling import LoadedModel

FRAGMENT = "fragment"
WORDS = "words"


@dataclass
class TokenGroup:
    """One mined group: what users inspect as a 'semantic token'."""

    text: str
    pieces: list[str]
    kind: str
    """'words' (a word or a multi-word span) or 'fragment' (sub-token n-gram inside words)."""
    count: int
    """Training rows that contain the group."""
    relevance: float
    specificity: float
    score: float
    label: str
    """The label most associated with the group: the highest lift, smoothed (see ``associated_labels``).
    Not the most frequent label among the group's rows: on imbalanced data that can be the majority label
    with a lift below 1."""
    lift: float
    """P(label | group) / P(label) for that label (at least 1: the lifts average to 1 under P(label))."""
    example_ids: list[int] = field(default_factory=list)
    """Training rows that hold the group (at most ``examples_per_group``): rows of its ``label`` first."""
    variants: list[list[str]] = field(default_factory=list)
    """Every split of the group seen in the rows, most rows first (``pieces`` is the first): byte-level and
    cased tokenizers split one word several ways ('card', 'Ġcard', 'Card'). Empty: ``pieces`` alone."""
    merged_token: str | None = None
    """Adaptive tokenization: the vocabulary entry this word now is (the tokenizer's normalised form of
    ``pieces``); ``pieces`` stays the split the original tokenizer makes."""
    merged_slot: str | None = None
    """The unused slot that ``merged_token`` replaced ('[unused0]')."""
    label_rows: int | None = None
    """Rows of the group that hold its ``label``: of ``count``, a few where the group is spread over many labels
    ('my' -> a label in 18 of its 134 rows). None in groups saved before it was recorded."""

    @property
    def surface(self) -> str:
        """How the group reads in a text: a word group's text, a fragment's pieces without their tokenizer's markers
        (WordPiece '##', byte-level 'Ġ', SentencePiece '▁'), joined: ('##r', '##ing') -> 'ring'."""
        if self.kind == WORDS:
            return self.text
        return pieces_surface(self.pieces)


def pieces_surface(pieces: Sequence[str]) -> str:
    """Sub-token pieces as they read in a text: without their tokenizer's markers, joined ('##r', '##ing') -> 'ring'."""
    return "".join(re.sub(r"^(##|Ġ|▁)", "", piece) for piece in pieces)


@dataclass
class TaskTokens:
    """The mined groups, best first, plus how they were made."""

    groups: list[TokenGroup]
    background: str
    """Where the general-language background came from and in which language ('wordfreq (German, detected)'), or
    why there was none."""
    n_rows: int
    config: dict

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[TokenGroup]:
        return iter(self.groups)

    def __getitem__(self, index: int) -> TokenGroup:
        return self.groups[index]

    def __repr__(self) -> str:  # every group and its example rows would fill a notebook cell
        top = ", ".join(g.text for g in self.groups[:5]) + (", ..." if len(self.groups) > 5 else "")
        return f"TaskTokens({len(self.groups)} groups from {self.n_rows:,} rows: {top}; to_frame() lists them)"

    def ungrouped_labels_note(self, labels: Iterable[str]) -> str:
        """'' when every one of ``labels`` (the training split's) is the most associated label of a mined group that
        lifts it (lift above 1), else
        which are not and what that means (the few-shot review: at 8 rows per label 5 of 7 labels had no group at the
        default minimum count, and the page listed the other two's words alone). The caller says how to lower the
        minimum count and keep more groups (flags, boxes)."""
        labels = sorted(set(map(str, labels)))
        # a group as common in every label (lift 1, relevance 0) is credited to one of them by the argmax alone: it
        # marks none (a leftover of the sixty-fourth session's note)
        marked = {g.label for g in self.groups if g.lift > 1}
        without = [label for label in labels if label not in marked]
        if not without or not self.groups:  # none at all is said where the groups are read
            return ""
        shown = ", ".join(without[:8]) + (f" and {len(without) - 8} more" if len(without) > 8 else "")
        return (f"{len(without)} of {len(labels)} labels have no mined group ({shown}): no word marks them, the "
                "token-restricted scores read their rows at the pooled position alone, and their words take no "
                "embedding row. A lower minimum count (rows a group must occur in) finds words for labels with few "
                "rows, more groups kept for labels whose words score below the others'")

    def to_frame(self) -> pd.DataFrame:
        """A row per group; ``reads`` is how it reads in a text (``surface``: a fragment's pieces without their
        tokenizer's markers, 'Ġcon' -> 'con')."""
        rows = [asdict(g) | {"pieces": " ".join(g.pieces), "reads": g.surface} for g in self.groups]
        cols = ["text", "reads", "pieces", "kind", "count", "score", "relevance", "specificity", "label", "label_rows",
                "lift", "example_ids"]
        return pd.DataFrame(rows, columns=cols)

    def save(self, path: str | Path) -> None:
        """Write the groups as JSON to the file ``path`` (a run's task_tokens.json)."""
        if Path(path).is_dir():
            raise IsADirectoryError(f"{path} is a folder; TaskTokens.save writes one JSON file (e.g. "
                                    f"{Path(path) / 'task_tokens.json'}).")
        data = {"background": self.background, "n_rows": self.n_rows, "config": self.config,
                "groups": [asdict(g) for g in self.groups]}
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> TaskTokens:
        """Groups saved by ``save`` (a run's task_tokens.json).

        Raises:
            ValueError: the file is not a saved list of groups (named, with what it is instead).
        """
        try:
            data = json.loads(Path(path).read_text())
            groups = [TokenGroup(**g) for g in data["groups"]]
        except (ValueError, KeyError, TypeError) as exc:  # a data file, a damaged or foreign JSON file
            raise ValueError(f"{path} is not a file of mined groups (TaskTokens.save and runs' task_tokens.json "
                             f"write one): {type(exc).__name__}: {exc}") from exc
        return cls(groups, data.get("background", ""), data.get("n_rows", 0), data.get("config", {}))

    def word_keys(self) -> set[tuple[str, ...]]:
        """Word spans (lower-cased word tuples) of the 'words' groups, for position matching."""
        return {tuple(g.text.split()) for g in self.groups if g.kind == WORDS}

    def fragment_keys(self) -> set[tuple[str, ...]]:
        return {tuple(g.pieces) for g in self.groups if g.kind == FRAGMENT}

    def token_ids(self, tokenizer: PreTrainedTokenizerBase) -> set[int]:
        """Vocabulary ids of every piece of every split of any group (the eligible embedding rows). A merged
        word's split (``pieces``) is replaced by its merged token: the tokenizer no longer produces it there."""
        pieces = {p for g in self.groups for split in _current_splits(g) for p in split}
        ids = tokenizer.convert_tokens_to_ids(sorted(pieces))
        return {i for i in ids if i is not None and i != tokenizer.unk_token_id}


def _current_splits(group: TokenGroup) -> list[list[str]]:
    splits = group.variants or [group.pieces]
    if group.merged_token is None:
        return splits
    return [s for s in splits if s != group.pieces] + [[group.merged_token]]


@dataclass
class _Word:
    text: str
    pieces: list[str]
    token_positions: list[int]


def split_words(encoding: Encoding, text: str) -> list[_Word]:
    """Group a fast-tokenizer encoding's pieces into words (lower-cased text, pieces, positions): one text's
    ``tokenizers.Encoding`` (``batch.encodings[i]``), whose word ids, tokens and offsets are attributes."""
    words: list[_Word] = []
    spans: list[list[int]] = []
    last = None
    prev_end = 0
    for pos, (word_id, token, (start, end)) in enumerate(zip(encoding.word_ids, encoding.tokens, encoding.offsets, strict=True)):
        if word_id is None:
            last = None
            continue
        if word_id != last or _opens_word(token, text, prev_end, start):
            words.append(_Word("", [], []))
            spans.append([start, end])
            last = word_id
        spans[-1][1] = max(spans[-1][1], end)
        words[-1].pieces.append(token)
        words[-1].token_positions.append(pos)
        prev_end = end
    for word, (start, end) in zip(words, spans, strict=True):
        # Byte-level BPE (GPT-2, Llama via GGUF) keeps the leading space in its offsets (trim_offsets=False):
        # stripped, " card" and "card" are one word and word_keys() finds the mined text again.
        word.text = text[start:end].strip().lower()
    return words


def _opens_word(token: str, text: str, prev_end: int, start: int) -> bool:
    """Whether a piece starts a new word although it has the previous piece's word id. SentencePiece
    tokenizers without a word pre-tokenizer (Llama-2 / Mistral as transformers v5 and the GGUF converter
    build them: none, or Metaspace(split=False)) give the whole text word id 0: there the '▁' marker, or
    whitespace in the text before or at the piece, is the only word boundary. Elsewhere the pieces of one
    word id are contiguous and carry no marker after the first, so this never fires."""
    return token.startswith("▁") or any(c.isspace() for c in text[prev_end : start + 1])


def _row_candidates(words: list[_Word], cfg: MiningConfig) -> set[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(kind, key, pieces) candidates of one row; the key of a words-group is its word tuple."""
    found = set()
    for i in range(len(words)):
        for n in range(1, cfg.max_words + 1):
            span = words[i : i + n]
            # A single word is always a candidate, however many pieces; spans are bounded by max_ngram.
            if len(span) < n or (n > 1 and sum(len(w.pieces) for w in span) > cfg.max_ngram * n):
                break
            key = tuple(w.text for w in span)
            if not all(any(c.isalnum() for c in k) for k in key):
                break
            found.add((WORDS, key, tuple(p for w in span for p in w.pieces)))
        pieces = words[i].pieces
        if len(pieces) > 1:
            for n in range(1, min(cfg.max_ngram, len(pieces) - 1) + 1):
                for j in range(len(pieces) - n + 1):
                    frag = tuple(pieces[j : j + n])
                    found.add((FRAGMENT, frag, frag))
    return found


AUTO_LANGUAGE = "auto"
"""MiningConfig.background_lang that detects the language of the training texts."""

LANGUAGE_NAMES = {
    "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "fa": "Persian", "fi": "Finnish",
    "fil": "Filipino", "fr": "French", "he": "Hebrew", "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian",
    "is": "Icelandic", "it": "Italian", "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian",
    "mk": "Macedonian", "ms": "Malay", "nb": "Norwegian Bokmål", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese",
    "ro": "Romanian", "ru": "Russian", "sh": "Serbo-Croatian", "sk": "Slovak", "sl": "Slovenian", "sv": "Swedish",
    "ta": "Tamil", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese", "zh": "Chinese",
}
"""wordfreq 3's languages by name (langcodes names them only with the language_data package, not installed)."""

_SCRIPT_LANGUAGES = {
    "ARABIC": ("ar", "fa", "ur"), "CYRILLIC": ("bg", "mk", "ru", "uk"), "GREEK": ("el",), "HEBREW": ("he",),
    "DEVANAGARI": ("hi",), "BENGALI": ("bn",), "TAMIL": ("ta",), "HANGUL": ("ko",),
}
"""wordfreq's languages by the Unicode script they are written in (its first word in a letter's Unicode name);
Latin is every other one, Han and kana are told apart by ``_han_language``."""

DETECTION_ROWS = 1000
"""Rows read to detect the language, spread evenly over the data (files are often sorted by label)."""

DETECTION_CHARS = 300
"""Characters of each of those rows read: long documents would otherwise make detection cost more than mining."""

DETECTION_TOP_WORDS = 1000
"""A language's commonest words whose share of the sample's words measures how well its list covers the data: the
commonest words are the function words, which tell related languages apart (English 'the', German 'die')."""

FUNCTION_WORD_ZIPF = 6.0
"""A word at least this frequent in the background is a function word: Zipf 6, once in a thousand words ('the',
'my', 'for'; German 'für', 'ist', 'eine', 'ich', though not 'mein' or 'meine', at 5.9)."""


@dataclass(frozen=True)
class Background:
    """The general-language word frequencies that domain specificity and the function-word filter compare with."""

    lang: str | None
    """wordfreq's code of the language; None: no list (wordfreq not installed, or none for the data's script)."""
    detected: bool
    """True: detected from the texts (background_lang 'auto'); False: given."""
    note: str
    """What TaskTokens.background says when specificity is on."""
    lookups: bool = True
    """Whether wordfreq can look words up in ``lang``: its Chinese, Japanese and Korean lookups segment the word
    first, with jieba or MeCab (optional packages)."""
    installed: bool = True
    """Whether the wordfreq package is installed."""

    @property
    def name(self) -> str:
        return LANGUAGE_NAMES.get(self.lang, self.lang) if self.lang else "none"

    def frequencies(self, words: Sequence[str]) -> np.ndarray | None:
        """P_B of each word (or span), None where there is no usable list."""
        if self.lang is None or not self.lookups:
            return None
        from wordfreq import word_frequency

        # Unseen words get a floor so that log(P_D / P_B) stays finite and rare domain words rank high.
        return np.array([max(word_frequency(w, self.lang), 1e-8) for w in words])

    def is_function_word(self, word: str) -> bool:
        if not self.installed:
            return len(word) <= 3
        if self.lang is None:  # no list for the script: a length rule would drop most words of a Chinese-like one
            return False
        if not self.lookups:  # the list itself holds whole words; only the lookup of an arbitrary word segments
            return word in _commonest_words(self.lang)
        from wordfreq import zipf_frequency

        return zipf_frequency(word, self.lang) >= FUNCTION_WORD_ZIPF


def background_languages() -> list[str]:
    """The codes ``MiningConfig.background_lang`` takes besides 'auto' (none without wordfreq)."""
    try:
        from wordfreq import available_languages
    except ImportError:
        return []
    return sorted(available_languages())


def background_language(texts: Sequence[str], lang: str = AUTO_LANGUAGE) -> Background:
    """The wordfreq list that mining compares the texts' words with: ``lang``, or with 'auto' the one detected
    from the texts (their script, then for Latin, Cyrillic and Arabic script the list whose commonest words cover
    most of their words).

    Raises:
        ConfigError: ``lang`` is neither 'auto' nor a language wordfreq has a list for (the message names them).
    """
    available = background_languages()
    if not available:
        return Background(None, False, "none: the wordfreq package is not installed, so the score is label relevance "
                                       "alone", installed=False)
    if lang != AUTO_LANGUAGE and lang not in available:
        raise ConfigError(f"background_lang must be auto or a language wordfreq has a word list for "
                          f"({', '.join(available)}); got {lang!r}")
    detected = lang == AUTO_LANGUAGE
    if detected:
        lang, script = _detect_language(texts, available)
        if lang is None:
            return Background(None, True, f"none: wordfreq has no word list in the texts' script ({script.title()}), "
                                          f"so the score is label relevance alone")
    how = "detected" if detected else "given"
    name = LANGUAGE_NAMES.get(lang, lang)
    missing = _missing_segmenter(lang)
    if missing:
        return Background(lang, detected, f"none: wordfreq looks {name} words up with the {missing} package, which "
                                          f"is not installed, so the score is label relevance alone ({name}, {how}; "
                                          f"function words from its list)", lookups=False)
    return Background(lang, detected, f"wordfreq ({name}, {how})")


def _detect_language(texts: Sequence[str], available: list[str]) -> tuple[str | None, str]:
    """The language of an even sample of the texts and its script; None where wordfreq has no list in the script."""
    sample = [text[:DETECTION_CHARS] for text in texts[:: max(1, len(texts) // DETECTION_ROWS)][:DETECTION_ROWS]]
    scripts = Counter(_script(c) for text in sample for c in text if c.isalpha())
    script = scripts.most_common(1)[0][0] if scripts else "LATIN"
    if script in ("CJK", "KANA"):
        return _han_language(scripts, available), script
    other = {lang for langs in _SCRIPT_LANGUAGES.values() for lang in langs} | {"zh", "ja"}
    candidates = list(_SCRIPT_LANGUAGES.get(script, ())) if script != "LATIN" else [
        lang for lang in available if lang not in other]
    candidates = [lang for lang in candidates if lang in available]
    if len(candidates) <= 1:
        return (candidates[0] if candidates else None), script
    words = Counter(w for text in sample for w in re.findall(r"[^\W\d_]+", text.lower()))
    total = max(sum(words.values()), 1)
    coverage = {lang: sum(n for w, n in words.items() if w in _top_words(lang)) / total for lang in candidates}
    # English first among equals (text without words, such as codes), then the first code: the same every time.
    return max(candidates, key=lambda lang: (coverage[lang], lang == "en")), script


def _script(char: str) -> str:
    """A letter's Unicode script, as the first word of its name ('LATIN', 'CYRILLIC', 'CJK'; 'KANA' for both kanas)."""
    first = unicodedata.name(char, "").split(" ")[0]
    return "KANA" if first.startswith(("HIRAGANA", "KATAKANA")) else first


def _han_language(scripts: Counter, available: list[str]) -> str | None:
    """Japanese where kana make a tenth of the Han and kana letters (Japanese writes its particles in kana),
    Chinese otherwise."""
    lang = "ja" if scripts["KANA"] >= 0.1 * (scripts["KANA"] + scripts["CJK"]) else "zh"
    return lang if lang in available else None


@cache
def _top_words(lang: str) -> frozenset[str]:
    from wordfreq import top_n_list

    return frozenset(top_n_list(lang, DETECTION_TOP_WORDS, wordlist="small"))  # the small lists load in ~10 ms


@cache
def _commonest_words(lang: str) -> frozenset[str]:
    """The list's words at the function-word line, read from the list itself (no lookup, so no segmenter)."""
    from wordfreq import get_frequency_dict

    least = 10 ** (FUNCTION_WORD_ZIPF - 9)  # Zipf is log10 of the frequency per billion words
    return frozenset(w for w, f in get_frequency_dict(lang, wordlist="small").items() if f >= least)


@cache
def _missing_segmenter(lang: str) -> str | None:
    """The package wordfreq lacks to look a word up in ``lang`` (jieba for Chinese, MeCab for Japanese and
    Korean), or None where lookups work."""
    from wordfreq import word_frequency

    try:
        word_frequency("a", lang)
    except ImportError as exc:  # ModuleNotFoundError names the module
        return exc.name or str(exc)
    return None


def _relevance(counts: np.ndarray, prior: np.ndarray, n_rows: int, kind: str) -> np.ndarray:
    """R(g) for every candidate. counts: (groups, labels) rows with g per label; prior: (labels,)."""
    present = counts.sum(1, keepdims=True)
    cond = (counts + 0.1) / (present + 0.1 * counts.shape[1])  # additive smoothing keeps KL finite
    kl = (cond * np.log(cond / prior)).sum(1)
    if kind == "kl":
        return kl
    p_g = present[:, 0] / n_rows
    if kind == "mi":
        absent = prior * n_rows - counts
        cond_absent = (absent + 0.1) / (absent.sum(1, keepdims=True) + 0.1 * counts.shape[1])
        return p_g * kl + (1 - p_g) * (cond_absent * np.log(cond_absent / prior)).sum(1)
    # The 2 x L table: rows with g and rows without it. The absent row's deviations mirror the present
    # row's, weighted by 1 / its expectation; without it a rare group's chi2 was inflated against a common one.
    expected = present * prior
    expected_absent = (n_rows - present) * prior
    deviation = (counts - expected) ** 2
    chi2 = deviation / np.maximum(expected, 1e-9) + deviation / np.maximum(expected_absent, 1e-9)
    return chi2.sum(1) / n_rows  # chi2 per row (phi squared)


def mine_task_tokens(
    texts: Sequence[str], labels: Sequence[str], tokenizer: PreTrainedTokenizerBase, cfg: MiningConfig | None = None
) -> TaskTokens:
    """Mine and score token groups from the training split.

    Args:
        texts: training texts (never the test split).
        labels: one label per text.
        tokenizer: the chosen model's tokenizer (pieces are its sub-tokens), or the ``LoadedModel`` holding it.
        cfg: mining options.

    Returns:
        TaskTokens with the top groups, best first.

    Raises:
        ValueError: no texts, or not one label per text.
        ConfigError: ``cfg.background_lang`` is not a language wordfreq has a list for.
    """
    from clm_explore.batches import text_list, tokenized  # torch only when mining runs

    cfg = config_from(cfg, MiningConfig, "mine_task_tokens")
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a LoadedModel, as compute_sensitivity takes: its own
    if not callable(tokenizer):
        raise TypeError(f"tokenizer is the model's tokenizer (loaded.tokenizer); got {type(tokenizer).__name__}")
    if isinstance(texts, str) or isinstance(labels, str):  # a string's characters would be read as rows
        raise TypeError("mine_task_tokens takes the training texts and their labels as two lists of the same "
                        "length; got a single string")
    texts = text_list(texts)
    labels = [str(x) for x in labels]  # numpy ints would not save as JSON, and mixed types do not sort
    if not texts or len(texts) != len(labels):
        raise ValueError(f"mining needs training texts with one label each; got {len(texts)} texts and "
                         f"{len(labels)} labels.")
    background = background_language(texts, cfg.background_lang)
    label_names = sorted(set(labels))
    label_index = {name: i for i, name in enumerate(label_names)}
    encodings = [encoding for chunk in tokenized(tokenizer, texts, cfg.max_tokens, add_special_tokens=False,
                                                  truncation=True, max_length=cfg.max_tokens)
                 for encoding in chunk.encodings]
    rows_with: dict[tuple, list[int]] = defaultdict(list)
    split_rows: Counter = Counter()  # (kind, key, pieces): rows with that split of the group
    fragment_words: dict[tuple, Counter] = defaultdict(Counter)
    word_total = 0
    for row, (enc, text) in enumerate(zip(encodings, texts, strict=True)):
        words = split_words(enc, text)
        word_total += len(words)
        for kind, key, pieces in sorted(_row_candidates(words, cfg)):  # sorted: a set's order varies by process
            rows_with[(kind, key)].append(row)
            split_rows[(kind, key, pieces)] += 1
        for w in words:
            if len(w.pieces) > 1:
                for kind, key, _ in _row_candidates([w], MiningConfig(max_words=1, max_ngram=cfg.max_ngram)):
                    if kind == FRAGMENT:
                        fragment_words[key][w.text] += 1
    # Sorted, so that groups of equal score come in the same order (and the top_k cut keeps the same ones)
    # whatever the process's string hashing: the order of rows_with follows the candidates' set order.
    keys = sorted(k for k, rows in rows_with.items() if len(set(rows)) >= cfg.min_count
                  and _keep(k, fragment_words, cfg, background))
    if not keys:
        return TaskTokens([], "", len(texts), asdict(cfg))
    label_ids = np.array([label_index[x] for x in labels])
    counts = np.zeros((len(keys), len(label_names)))
    for i, key in enumerate(keys):
        np.add.at(counts[i], label_ids[sorted(set(rows_with[key]))], 1)
    prior = np.bincount(label_ids, minlength=len(label_names)) / len(labels)
    relevance = _relevance(counts, prior, len(texts), cfg.relevance)
    specificity, note = _specificity(keys, rows_with, fragment_words, word_total, cfg, background)
    score = _combine(relevance, specificity, cfg.combine)
    top_k = cfg.top_k or min(1024, max(64, len(texts) // 8))
    floor = cfg.min_score_share * float(score.max())
    order = [i for i in np.argsort(-score, kind="stable") if score[i] > 0 and score[i] >= floor][:top_k]
    lifts = (counts / counts.sum(1, keepdims=True)) / prior
    best = associated_labels(counts, prior)
    splits = _splits_of({keys[i] for i in order}, split_rows)
    groups = [_group(keys[i], splits[keys[i]], relevance[i], specificity[i], score[i], label_names[best[i]],
                     lifts[i, best[i]], int(counts[i, best[i]]), rows_with[keys[i]], labels, tokenizer, cfg)
              for i in order]
    return TaskTokens(groups, note, len(texts), asdict(cfg))


def _splits_of(keys: set[tuple], split_rows: Counter) -> dict[tuple, list[tuple[str, ...]]]:
    """Every split of each kept group, most rows first (ties: first seen, so the order is reproducible)."""
    found: dict[tuple, list[tuple[tuple[str, ...], int]]] = defaultdict(list)
    for (kind, key, pieces), n in split_rows.items():  # insertion order: rows in order, candidates sorted
        if (kind, key) in keys:
            found[(kind, key)].append((pieces, n))
    return {k: [p for p, _ in sorted(v, key=lambda pn: -pn[1])] for k, v in found.items()}


def _keep(key: tuple, fragment_words: dict[tuple, Counter], cfg: MiningConfig, background: Background) -> bool:
    kind, inner = key
    if kind == FRAGMENT:
        if len(pieces_surface(inner).strip()) < max(cfg.fragment_min_chars, 1):
            return False  # a marker alone ('Ġ', the piece a byte-level tokenizer puts before a digit) reads nothing
        # "##gur" from "configure" alone is noise; a fragment that recurs across words is a real stem,
        # unless one word accounts for most of its uses (then that word is the group).
        words = fragment_words.get(inner, Counter())
        total = sum(words.values())
        return len(words) >= cfg.fragment_min_words and words.most_common(1)[0][1] <= 0.5 * total
    if len(inner) == 1:
        return len(inner[0]) > 1 or inner[0].isdigit()
    # A span that starts or ends with a function word ("my card", "the atm", "für die") repeats its content word.
    return not (background.is_function_word(inner[0]) or background.is_function_word(inner[-1]))


def _specificity(keys: list[tuple], rows_with: dict, fragment_words: dict, word_total: int, cfg: MiningConfig,
                 background: Background) -> tuple[np.ndarray, str]:
    """A(g) of every key and what TaskTokens.background says about it."""
    ones = np.ones(len(keys))
    if cfg.specificity == "none":  # the function-word filter still used the list: say which
        how = "detected" if background.detected else "given"
        words = f"; function words from wordfreq's {background.name} list, {how}" if background.lang else ""
        return ones, f"none (specificity off by option{words})"
    frequencies = background.frequencies([" ".join(inner) for kind, inner in keys if kind == WORDS])
    if frequencies is None:
        return ones, background.note
    # A fragment's background is that of the words it occurs in (a stem is as common as its words).
    per_key = iter(frequencies)
    frequencies = np.array([next(per_key) if kind == WORDS else _words_background(fragment_words[inner], background)
                            for kind, inner in keys])
    p_domain = np.array([len(rows_with[k]) for k in keys]) / max(word_total, 1)
    return np.maximum(p_domain * np.log(p_domain / frequencies), 0.0), background.note


def _words_background(words: Counter, background: Background) -> float:
    found = background.frequencies(list(words))
    return float(found.sum()) if found is not None else 1.0


def _combine(relevance: np.ndarray, specificity: np.ndarray, how: str) -> np.ndarray:
    if how == "product":
        return relevance * specificity
    ranks = (pd.Series(relevance).rank(pct=True) + pd.Series(specificity).rank(pct=True)) / 2
    return ranks.to_numpy() * (specificity > 0)


def associated_labels(counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Per group, the index of the label it lifts most: the highest observed / expected ratio of rows,
    shrunk by 0.5 rows (Noren et al. 2013, "shrinkage observed-to-expected ratios"), so that one row
    of a rare label (expected 0.1 rows: raw lift 10) does not outrank a label seen in half the group's rows.
    Its raw lift is above 1 unless every label's is 1. counts: (groups, labels); prior: (labels,)."""
    expected = counts.sum(1, keepdims=True) * prior
    return np.argmax((counts + 0.5) / (expected + 0.5), axis=1)


def _group(key, splits, relevance, specificity, score, label, lift, label_rows, rows, row_labels, tokenizer,
           cfg) -> TokenGroup:
    kind, inner = key
    text = " ".join(inner) if kind == WORDS else tokenizer.convert_tokens_to_string(list(inner)).strip()
    unique_rows = sorted(set(rows))
    # Its label's rows first: the first rows alone showed "pin -> change_pin" beside five pin_blocked rows.
    examples = sorted(unique_rows, key=lambda row: (row_labels[row] != label, row))[: cfg.examples_per_group]
    return TokenGroup(text if kind == WORDS else " ".join(inner), list(splits[0]), kind, len(unique_rows),
                      float(relevance), float(specificity), float(score), label, float(lift),
                      examples,
                      variants=[list(s) for s in splits] if len(splits) > 1 else [], label_rows=label_rows)


def covered_positions(encodings: Iterable[Encoding], texts: Sequence[str], task_tokens: TaskTokens) -> list[list[int]]:
    """Token positions (in each encoding) covered by a mined group: words, spans (of any length mined, up to
    MiningConfig.max_words) or fragments."""
    word_keys, fragment_keys = task_tokens.word_keys(), task_tokens.fragment_keys()
    max_words = max((len(k) for k in word_keys), default=0)
    longest_fragment = max((len(k) for k in fragment_keys), default=0)
    covered: list[list[int]] = []
    for enc, text in zip(encodings, texts, strict=True):
        positions: set[int] = set()
        words = split_words(enc, text)
        for i in range(len(words)):
            for n in range(1, max_words + 1):
                span = words[i : i + n]
                if len(span) == n and tuple(w.text for w in span) in word_keys:
                    positions.update(p for w in span for p in w.token_positions)
            pieces = words[i].pieces
            for n in range(1, min(longest_fragment, len(pieces)) + 1):
                for j in range(len(pieces) - n + 1):
                    if tuple(pieces[j : j + n]) in fragment_keys:
                        positions.update(words[i].token_positions[j : j + n])
        covered.append(sorted(positions))
    return covered


def unused_slots(vocab: dict[str, int]) -> list[str]:
    """The vocabulary's unused entries (BERT's ``[unused0]`` ...), in id order: where adaptive tokenization merges
    words without adding a parameter. Byte-level and SentencePiece vocabularies have none."""
    return sorted((t for t in vocab if t.startswith("[unused")), key=lambda t: vocab[t])


@dataclass
class MergeReport:
    """What adaptive tokenization merged into the tokenizer's unused slots, and what it bought."""

    merged: list[dict]
    """One entry per merged word: text, pieces (its split before), token (the new vocabulary entry, the
    tokenizer's normalised form of the word), slot (the replaced token), id."""
    mean_length_before: float
    mean_length_after: float
    note: str = ""

    @property
    def shortening(self) -> float:
        """Relative reduction of the mean input length (0.05 = 5% shorter)."""
        return 1 - self.mean_length_after / max(self.mean_length_before, 1e-9)

    def to_dict(self) -> dict:
        return asdict(self) | {"shortening": self.shortening}

    @classmethod
    def from_dict(cls, data: dict) -> MergeReport:
        """A ``to_dict`` dict (a run's merge.json) read back."""
        return cls(list(data.get("merged", [])), float(data.get("mean_length_before", 0.0)),
                   float(data.get("mean_length_after", 0.0)), str(data.get("note", "")))

    def summary(self) -> str:
        return (f"merged {len(self.merged)} words into unused slots; mean input length "
                f"{self.mean_length_before:.2f} -> {self.mean_length_after:.2f} tokens ({self.shortening:.1%} shorter)"
                + (f"; {self.note}" if self.note else ""))


def adaptive_tokenization(loaded: LoadedModel, task_tokens: TaskTokens, texts: Sequence[str], n_merge: int = 64,
                          apply: bool = True) -> MergeReport:
    """Merge the top multi-piece single-word groups into the tokenizer's unused slots (BERT ``[unusedN]``).

    The slot's embedding row becomes the mean of the pieces' rows, so no parameter is added. Multi-word
    spans are not merged: the pre-tokenizer splits on spaces before the vocabulary is consulted. The entry
    is the word as the tokenizer's normaliser leaves it, and a merge is kept only where the new tokenizer
    turns the word into that one token; a rejected word frees its slot for the next one (said in the note).

    Args:
        loaded: a LoadedModel; with ``apply`` its tokenizer and embedding rows are changed in place, and each
            merged group gets ``merged_token`` and ``merged_slot`` (its ``pieces`` stay the original split).
        task_tokens: the mined groups (``mine_task_tokens``); its top multi-piece single words are merged.
        texts: the texts whose mean length in sub-tokens is measured before and after (the training split's).
        n_merge: at most this many words are merged.
        apply: False only measures the shortening (nothing is changed).
    """
    tok = loaded.tokenizer
    vocab = tok.get_vocab()
    slots = unused_slots(vocab)
    candidates = _merge_candidates(tok, task_tokens, vocab)
    before = _mean_length(tok, texts)
    if not slots:
        return MergeReport([], before, before, "the tokenizer has no unused slots; nothing merged")
    if not candidates:  # "merged 0 words" said no more (the models review)
        return MergeReport([], before, before, "no mined group is a single word the tokenizer splits into several "
                                               "pieces; nothing merged")
    wanted = min(n_merge, len(candidates))
    notes = [f"only {len(slots)} unused slots for {wanted} words"] if wanted > len(slots) else []
    plan, new_tok, rejected = _verified_merges(tok, vocab, candidates, slots, min(wanted, len(slots)))
    if rejected:
        notes.append(f"{len(rejected)} words not merged: the tokenizer would still split them "
                     f"({', '.join(m.group.text for m in rejected[:5])}{', ...' if len(rejected) > 5 else ''})")
    merged = [{"text": m.group.text, "pieces": m.group.pieces, "token": m.token, "slot": slot, "id": vocab[slot]}
              for m, slot in plan]
    after = _mean_length(new_tok, texts)
    if apply:
        _apply_merges(loaded, plan, vocab)
        loaded.tokenizer = new_tok
    return MergeReport(merged, before, after, "; ".join(notes))


@dataclass
class _Merge:
    group: TokenGroup
    word: str
    """The word as its pieces spell it (the cased form a cased tokenizer sees in the rows)."""
    token: str
    """The vocabulary entry: ``word`` after the tokenizer's normaliser ('español' -> 'espanol' for MiniLM)."""


def _merge_candidates(tok, task_tokens: TaskTokens, vocab: dict[str, int]) -> list[_Merge]:
    """Single-word multi-piece groups, best first, each with the entry the tokenizer can look up. The raw
    lower-cased text is not that entry: a normaliser that strips accents never sees 'español', a cased
    one never sees 'contactless' where the rows say 'Contactless'."""
    backend = getattr(tok, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    found: list[_Merge] = []
    seen: set[str] = set()
    for g in task_tokens.groups:
        if g.kind != WORDS or " " in g.text or len(g.pieces) < 2 or g.merged_token is not None:
            continue
        word = tok.convert_tokens_to_string(list(g.pieces)).strip()
        token = (normalizer.normalize_str(word) if normalizer is not None else word).strip()
        if token and token not in vocab and token not in seen:
            seen.add(token)
            found.append(_Merge(g, word, token))
    return found


def _verified_merges(tok, vocab: dict[str, int], candidates: list[_Merge], slots: list[str],
                     n: int) -> tuple[list[tuple[_Merge, str]], Any, list[_Merge]]:
    """Put up to ``n`` candidates into slots, keeping only the merges the new tokenizer produces (a word that
    still splits would waste its slot and drop its real pieces from the eligible rows); each rejected word's
    slot goes to the next candidate. Returns (merge, slot) pairs, the tokenizer that has them, the rejected."""
    pending = iter(candidates)
    kept: list[_Merge] = []
    rejected: list[_Merge] = []
    while True:  # every round that does not return rejects a candidate for good, so this ends
        trial = kept + list(islice(pending, n - len(kept)))
        if not trial:  # nothing to merge: the tokenizer as it is
            return [], tok, rejected
        plan = list(zip(trial, slots, strict=False))
        new_tok = _renamed_tokenizer(tok, {slot: m.token for m, slot in plan})
        ids = new_tok([m.word for m in trial], add_special_tokens=False)["input_ids"]
        ok = [found == [vocab[slot]] for found, (_, slot) in zip(ids, plan, strict=True)]
        if all(ok):
            return plan, new_tok, rejected
        rejected += [m for m, good in zip(trial, ok, strict=True) if not good]
        kept = [m for m, good in zip(trial, ok, strict=True) if good]


def _renamed_tokenizer(tok, renames: dict[str, str]):
    """A copy of ``tok`` with vocabulary entries renamed (same ids), reloaded so its model sees them."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        _rename_vocab(Path(tmp), renames)
        return AutoTokenizer.from_pretrained(tmp)


MEASURED_TOKENS = 512
"""Sub-tokens a text is counted up to when merged tokens' shortening is measured: the most a run reads."""


def _mean_length(tok, texts: Sequence[str]) -> float:
    from clm_explore.batches import tokenized

    chunks = tokenized(tok, texts, MEASURED_TOKENS, add_special_tokens=False, truncation=True,
                       max_length=MEASURED_TOKENS)
    return float(np.mean([len(ids) for chunk in chunks for ids in chunk["input_ids"]]))


def _apply_merges(loaded, plan: list[tuple[_Merge, str]], vocab: dict[str, int]) -> None:
    """Each slot's embedding row becomes the mean of its word's pieces' rows; the groups record the merge
    (``pieces`` stays the original split; TaskTokens.token_ids makes the slot's row eligible instead)."""
    import torch

    emb = loaded.model.get_input_embeddings().weight
    with torch.no_grad():
        for m, slot in plan:
            emb[vocab[slot]] = emb[loaded.tokenizer.convert_tokens_to_ids(m.group.pieces)].mean(0)
            m.group.merged_token, m.group.merged_slot = m.token, slot


def _rename_vocab(folder: Path, renames: dict[str, str]) -> None:
    """Rename vocabulary entries in a saved tokenizer (tokenizer.json and vocab.txt) keeping their ids."""
    tj = folder / "tokenizer.json"
    if tj.is_file():
        data = json.loads(tj.read_text())
        model_vocab = data["model"]["vocab"]
        for old, new in renames.items():
            model_vocab[new] = model_vocab.pop(old)
        tj.write_text(json.dumps(data))
    vt = folder / "vocab.txt"
    if vt.is_file():
        lines = vt.read_text(encoding="utf-8").split("\n")
        vt.write_text("\n".join(renames.get(line, line) for line in lines), encoding="utf-8")
