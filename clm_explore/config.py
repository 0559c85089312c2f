"""Config dataclasses: every option of the method is a field here, with its default.

Each field carries a docstring under it (litgpt style). ``to_dict``/``from_dict`` round-trip through
JSON so that a run folder's ``clm_run.json`` rebuilds the exact configuration.
"""

from __future__ import annotations

import ast
import codecs
import dataclasses
import difflib
import functools
import inspect
import numbers
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config field holds a value it cannot take; the message names the field."""


@functools.cache
def _module_tree(path: str) -> ast.Module | None:
    """A module's syntax tree, parsed once for all its config classes (20 ms a parse: the CLI's --help waits)."""
    if not path.endswith(".py"):  # only compiled files installed (a .pyc): no field docs to read
        return None
    try:
        return ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None


def documented(cls: type[T]) -> type[T]:
    """``cls`` with its fields' docstrings (the string under each field, which Python drops) in its ``__doc__``,
    so that ``help(FinetuneConfig)`` and an editor's hover say what each option does, not just its default."""
    tree = _module_tree(sys.modules[cls.__module__].__file__ or "")
    if tree is None:  # no source shipped (a frozen app): the plain dataclass doc stays
        return cls
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__), None)
    body = node.body if node is not None else []
    docs = {a.target.id: " ".join(b.value.value.split()) for a, b in zip(body, body[1:], strict=False)
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
            and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)}
    lines = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        default = f.default if f.default is not dataclasses.MISSING else (
            f"{f.default_factory.__name__}()" if f.default_factory is not dataclasses.MISSING else "required")
        lines.append(f"    {f.name} ({f.type}, default {default!r})")
        lines.extend(textwrap.wrap(docs.get(f.name, ""), 100, initial_indent=" " * 8, subsequent_indent=" " * 8))
    head = inspect.cleandoc(ast.get_docstring(node) or "") if node is not None else ""
    cls.__doc__ = (head + "\n\n" if head else "") + "Fields:\n" + "\n".join(lines)
    return cls


def keywords_checked(cls: type[T]) -> type[T]:
    """``cls`` whose constructor names a keyword it does not take, and where it belongs: ``FinetuneConfig(budget=
    0.01)`` said only "unexpected keyword argument 'budget'" (the budget is the mask's), a typo not what was meant."""
    init = cls.__init__
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @functools.wraps(init)
    def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        unknown = next((name for name in kwargs if name not in names), None)
        if unknown is not None:
            raise TypeError(unknown_keyword_message(cls, unknown))
        init(self, *args, **kwargs)

    cls.__init__ = checked_init  # type: ignore[method-assign]
    return cls


def config_from(value: Any, cls: type[T], where: str) -> T:
    """``value`` as a ``cls``: None is the defaults, a dict its fields (a notebook's ``{"budget": 0.02}``), an
    instance itself; anything else a TypeError naming ``where`` it was given."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**value)
    raise TypeError(f"{where} takes a {cls.__name__} (or a dict of its fields); got {type(value).__name__}")


def unknown_keyword_message(cls: type, name: str) -> str:
    """What ``cls(name=...)`` should have been: the nested config that has the field, or the field of the closest
    name, or the fields there are."""
    fields = dataclasses.fields(cls)
    said = f"{cls.__name__} has no field {name!r}"
    for f in fields:
        nested = f.default_factory
        if dataclasses.is_dataclass(nested) and name in {g.name for g in dataclasses.fields(nested)}:
            kind = nested.__name__  # type: ignore[union-attr]
            return f"{said}: it is {kind}'s, given as {cls.__name__}({f.name}={kind}({name}=...))."
    close = difflib.get_close_matches(name, [f.name for f in fields], n=1)
    return said + (f"; did you mean {close[0]!r}?" if close else f"; its fields: {', '.join(f.name for f in fields)}.")


def _known_encoding(name: str) -> bool:
    try:
        return codecs.lookup(name)._is_text_encoding
    except LookupError:
        return False


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


TRUNCATION_SIDES = ("right", "left")
"""Which end of a long text is cut (``FinetuneConfig.truncation_side``): 'right' keeps its start, 'left' its end; the
names are the tokenizers' own (``tokenizer.truncation_side``)."""


def check_truncation_side(side: str) -> None:
    _check(side in TRUNCATION_SIDES, f"truncation_side must be right (keep a text's start) or left (keep its end), "
                                     f"got {side!r}")


_PLAIN_TYPES: dict[str, tuple[type, ...]] = {"int": (numbers.Integral,), "float": (numbers.Real,), "str": (str,),
                                              "bool": (bool,), "None": (type(None),)}


def check_field_types(cfg: Any) -> None:
    """Each field of a plain type (int, float, str, bool, None, or a union of them) holds one: ``epochs=2.5`` or
    ``lr="1e-4"`` from a notebook failed deep in training, or in a comparison, with a message about neither. A
    float field takes an int; no number field takes a bool. A NumPy number becomes Python's (``to_dict`` writes
    JSON)."""
    for f in dataclasses.fields(cfg):
        names = [n.strip() for n in str(f.type).split("|")]
        if not all(n in _PLAIN_TYPES for n in names):  # a nested config, a tuple: checked where it is used
            continue
        value = getattr(cfg, f.name)
        if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):  # a DataFrame cell's
            value = bool(value)  # NumPy's values are not JSON: Python's in their place (numpy not imported here)
            object.__setattr__(cfg, f.name, value)
        allowed = tuple(t for n in names for t in _PLAIN_TYPES[n])
        _check(isinstance(value, allowed) and not (isinstance(value, bool) and "bool" not in names),
               f"{type(cfg).__name__}.{f.name} is {f.type}; got {type(value).__name__} {value!r}")
        if isinstance(value, numbers.Number) and type(value) not in (int, float, bool):
            object.__setattr__(cfg, f.name, int(value) if isinstance(value, numbers.Integral) else float(value))
    seed = getattr(cfg, "seed", None)  # every config's seed seeds NumPy somewhere, which takes 0..2**32-1 only
    optional = " or None (the run's)" if "None" in str(getattr(type(cfg), "__annotations__", {}).get("seed")) else ""
    _check(not isinstance(seed, int) or 0 <= seed <= MAX_SEED, f"seed must be in 0..{MAX_SEED}{optional}, got {seed}")


MAX_SEED = 2**32 - 1
"""The largest seed NumPy's ``random.seed`` takes (torch's would take more)."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (nested dataclasses included)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild ``cls`` from ``to_dict`` output, ignoring keys it does not know (a newer version's fields: see
    ``unknown_keys``); a field the dict lacks (an older version's) takes its default."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    return cls(**kwargs)


def unknown_keys(cls: type, data: dict[str, Any]) -> list[str]:
    """The keys of a ``to_dict`` dict of ``cls`` (nested: 'mask.new_option') that ``cls`` does not have: settings a
    newer version wrote, which ``from_dict`` would drop."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = []
    for key, value in data.items():
        if key not in known:
            unknown.append(key)
            continue
        inner = _dataclass_type(cls, known[key])
        if inner is not None and isinstance(value, dict):
            unknown += [f"{key}.{name}" for name in unknown_keys(inner, value)]
    return unknown


def _dataclass_type(cls: type, f: dataclasses.Field) -> type | None:
    """The dataclass a field of ``cls`` holds (FinetuneConfig.mask: MaskConfig), or None."""
    import typing

    hint = typing.get_type_hints(cls).get(f.name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


@keywords_checked
@documented
@dataclass(frozen=True)
class DataConfig:
    text_col: str | None = None
    """Column holding the text; detected when None (text, sentence, utterance, ...)."""
    label_col: str | None = None
    """Column holding the label; detected when None (label, intent, category, ...)."""
    max_file_mb: float = 200.0
    """Files above this size are refused before reading (a Parquet file also when the columns it reads, the text
    and label candidates, are, uncompressed or decoded)."""
    max_rows: int = 500_000
    """Files with more rows are refused (a Parquet file's row count is read before its columns): a shared server
    must not let one small, highly compressed upload fill its memory."""
    max_labels: int = 1_000
    """Data with more distinct train labels is refused: mining, the metrics and the confusion matrix grow with
    labels x labels and groups x labels."""
    max_label_chars: int = 200
    """Longer train labels are refused: a label names a class, and one of thousands of characters is most often a
    text column taken for the label (each is stored in every run's metrics and drawn on every chart)."""
    validation_fraction: float = 0.1
    """Share of train carved out as validation when the data has no validation split."""
    test_fraction: float = 0.2
    """Share of train held out as test when the data has no test split (a single file, or a folder without one);
    every copy of a text goes to the same side."""
    seed: int = 0
    """Seed of the carved splits."""
    split_col: str | None = None
    """Column of a single file (or DataFrame) that puts each row in train, validation (or dev, val) or test; when
    None, a column named ``split`` is used if every value names a split (an export of a hub data set's splits).
    Splits it leaves empty are carved as usual. A folder's files are its splits: not read there."""
    encoding: str | None = None
    """The encoding of a file that is not UTF-8 (``gb18030``, ``cp932``, ``cp1251``, ...): read so, with no guess.
    None: UTF-8, or UTF-16/32 with a byte-order mark, else the legacy encoding that reads the file best, named in
    a note (a guess that may be wrong is listed as a problem)."""

    shots: int = 0
    """Train on at most this many rows per label, drawn at random (seeded by ``shots_seed``) from the train split,
    and validate on as many per label of the validation split: the few-shot setting, the rows ``bench --shots``
    draws. The test split is kept whole. 0: every row."""
    shots_seed: int = 0
    """Seed of the ``shots`` draw (the command line's ``--data-seed``, a grid's ``BenchConfig.data_seed``): another
    seed draws other rows."""

    def __post_init__(self) -> None:
        check_field_types(self)
        _check(self.max_file_mb > 0, f"max_file_mb must be > 0, got {self.max_file_mb}")
        _check(self.shots >= 0, f"shots must be 0 (every row) or more, got {self.shots}")
        _check(self.shots_seed >= 0, f"shots_seed must be 0 or more, got {self.shots_seed}")
        _check(self.encoding is None or _known_encoding(self.encoding),
               f"encoding must be a text encoding Python knows (gb18030, cp932, cp1251, ...), got {self.encoding!r}")
        _check(self.max_rows >= 1, f"max_rows must be >= 1, got {self.max_rows}")
        _check(self.max_labels >= 2, f"max_labels must be >= 2, got {self.max_labels}")
        _check(self.max_label_chars >= 1, f"max_label_chars must be >= 1, got {self.max_label_chars}")
        _check(0 <= self.validation_fraction < 0.5, f"validation_fraction must be in [0, 0.5), got {self.validation_fraction}")
        _check(0 < self.test_fraction < 0.5, f"test_fraction must be in (0, 0.5), got {self.test_fraction}")


def draw_words(shots: int, seed: int) -> str:
    """', 10 rows of each label (draw 0)' for a few-shot draw (``DataConfig.shots``), as the app and the run registry
    name data; '' for every row."""
    return f", {shots} row{'s' if shots != 1 else ''} of each label (draw {seed})" if shots else ""


def carve_words(validation: float, test: float, carved: Iterable[str] = ("validation", "test")) -> str:
    """', validation 0% of train' for the ``carved`` splits whose shares are not ``DataConfig``'s defaults (a data
    set's own split carves nothing, so its share is not named); '' where none is."""
    shares = [(split, share) for split, share, default in (("validation", validation, DataConfig.validation_fraction),
                                                           ("test", test, DataConfig.test_fraction))
              if split in carved and share != default]
    return "".join(f", {split} {share * 100:.3g}% of train" for split, share in shares)


def data_options_words(options: Any, carved: Iterable[str]) -> str:
    """``carve_words`` and ``draw_words`` of a run's recorded ``data_config`` (a dict; '' for anything else)."""
    if not isinstance(options, dict):
        return ""
    defaults = DataConfig()

    def number(name: str, default: float) -> float:
        value = options.get(name, default)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else default

    return (carve_words(number("validation_fraction", defaults.validation_fraction),
                        number("test_fraction", defaults.test_fraction), tuple(carved))
            + draw_words(int(number("shots", 0)), int(number("shots_seed", 0))))


def eligible_floor(min_layer: int, n_layers: int) -> int:
    """The lowest layer whose rows may be selected: ``min_layer`` (``MaskConfig.min_layer``), or the upper half of
    the ``n_layers`` layers when it is -1. Torch-free: the model card reads it from a run's files."""
    return n_layers // 2 if min_layer == -1 else min_layer


def budget_words(budget: float) -> str:
    """A budget as the app and the CLI say it: a share in percent ("1%"), a count as a count ("50,000 parameters")."""
    return f"{budget * 100:.3g}%" if budget <= 1 else f"{int(budget):,} parameters"


RELEVANCES = ("kl", "mi", "chi2")
"""Label relevance measures of a mined group (MiningConfig.relevance)."""
SPECIFICITIES = ("wordfreq", "none")
"""Domain specificity measures of a mined group (MiningConfig.specificity)."""


@keywords_checked
@documented
@dataclass(frozen=True)
class MiningConfig:
    max_ngram: int = 3
    """Longest word fragment (sub-token n-gram inside a word) considered as a group; a single word is a candidate
    however many pieces it has, and a span of n words at most max_ngram * n pieces."""
    max_words: int = 2
    """A candidate spans at most this many words."""
    min_count: int = 5
    """A candidate must occur in at least this many training rows."""
    relevance: str = "kl"
    """Label relevance R(g): 'kl' (KL of label distribution given g vs prior), 'mi' or 'chi2'."""
    specificity: str = "wordfreq"
    """Domain specificity A(g): 'wordfreq' (background from the wordfreq package, in the data's language) or 'none'
    (R alone)."""
    background_lang: str = "auto"
    """Language of the background word frequencies (domain specificity) and of the function-word filter: 'auto'
    detects it from the training texts (by script, then for Latin, Cyrillic and Arabic script by which wordfreq
    list's commonest words cover most of their words), or a wordfreq code ('en', 'de', 'fr', ...). Chinese needs
    the jieba package, Japanese and Korean MeCab: without them the score is label relevance alone. Before this option
    every data set was compared with English (the language review: German groups led by 'für', 'ist', 'meine')."""
    combine: str = "product"
    """How R and A combine into the score: 'product' (R*A) or 'rank' (rank average)."""
    top_k: int = 0
    """Groups kept; 0 scales with data: min(1024, max(64, rows // 8))."""
    min_score_share: float = 0.0
    """A group is kept only if its score is at least this share of the best group's (0 = any score above 0). With
    few rows the top_k floor of 64 keeps every candidate, common words too (the UX review): on 201 snips rows 0.03
    leaves out 20 of 60 groups, "in", "me", "on", "from" and "by" among them, all under 3% of the best group's
    score; "at", "my" and "for" score 6-8% of it and stay."""
    fragment_min_words: int = 3
    """A word fragment is kept only if it recurs inside at least this many different words."""
    fragment_min_chars: int = 3
    """A word fragment is kept only if it reads at least this many characters (without its tokenizer's markers): 3
    drops inflections and letters of names ('##s', '##ed', 'mc'), which passed the rule above on snips (149 of its
    228 fragments) and trec6 (119 of 150) and made up 7-8% of their kept positions (the mining review); 1 keeps
    them (the default before the fifty-seventh session). On trec6 (sparse, 3 epochs, 3 seeds) 3 against 1: test
    accuracy 0.962 vs 0.958, macro-F1 0.950 vs 0.949, level within the noise of 500 test rows. It counts
    characters, so in a script whose characters are words (Chinese, Japanese) lower it to 1."""
    examples_per_group: int = 5
    """Example row ids reported per group."""
    merge_tokens: int = 0
    """Adaptive tokenization: merge at most N of the top multi-piece words into unused vocabulary slots (0 = off),
    each kept only where the tokenizer then produces it as one token (a rejected word's slot goes to the next)."""
    max_tokens: int = 512
    """Sub-tokens of each row mined, from its start (no model here reads more); bounds the work a very long
    row can cost. Runs read ``FinetuneConfig.max_length`` (64): on texts longer than that, groups mined further on
    are words no run reads, and the scores say so (``mine --mining-length`` and the other commands' option set
    this). Not settled to the run's length: short texts mine alike either way, and a grid's finished cells would all
    read as stale."""

    def __post_init__(self) -> None:
        check_field_types(self)
        _check(1 <= self.max_ngram <= 5, f"max_ngram must be in 1..5, got {self.max_ngram}")
        _check(self.max_words >= 1, f"max_words must be >= 1, got {self.max_words}")
        _check(self.min_count >= 1, f"min_count must be >= 1, got {self.min_count}")
        _check(self.relevance in RELEVANCES, f"relevance must be kl, mi or chi2, got {self.relevance!r}")
        _check(self.specificity in SPECIFICITIES, f"specificity must be wordfreq or none, got {self.specificity!r}")
        _check(self.combine in ("product", "rank"), f"combine must be product or rank, got {self.combine!r}")
        _check(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        _check(0 <= self.min_score_share < 1, f"min_score_share must be in [0, 1), got {self.min_score_share}")
        _check(self.fragment_min_chars >= 1, f"fragment_min_chars must be >= 1, got {self.fragment_min_chars}")
        _check(self.examples_per_group >= 0, f"examples_per_group must be >= 0, got {self.examples_per_group}")
        _check(self.merge_tokens >= 0, f"merge_tokens must be >= 0 (0 = off), got {self.merge_tokens}")
        _check(self.max_tokens >= 8, f"max_tokens must be >= 8, got {self.max_tokens}")


FEW_SHOT_ROWS_PER_LABEL = 20
"""Below this many calibration rows per label the automatic head warm-up is 1 epoch instead of 5."""

FEW_VALIDATION_ROWS = 100
"""Below this many validation rows, what is chosen on them is said to be rough: the abstention threshold's quantile
(the real-model review: 10% asked of 33 rows turned away 23.7% of hint3's in-scope test rows; the few-shot review:
of 10 rows, 4.5% to 35.6% between seeds), the best epoch and an early stop (7 rows move its accuracy 14 points a
row: a 30-epoch run stopped after epoch 5 at 0.794 test accuracy, 0.910 without the stop)."""

FEW_SHOT_EPOCHS = 30
"""Epochs suggested where train holds fewer than FEW_SHOT_ROWS_PER_LABEL rows per label: the benchmarks' 10-shot
grids train 30 (banking77's 770 rows 15; BENCHMARKS.md), and on snips 10-shot (default model) the default 3 epochs, 6 steps, scored
0.75-0.78 test accuracy and 30 epochs 0.90-0.92, sparse and full alike (the few-shot review)."""


def few_steps_note(train_rows: int, labels: int, epochs: int, batch_size: int) -> str | None:
    """Why ``epochs`` is likely too few for a few-shot training split (fewer than FEW_SHOT_ROWS_PER_LABEL rows per
    label): the steps it makes, and the epochs the benchmarks train such data; None where it is not few-shot or
    trains FEW_SHOT_EPOCHS already. The caller says how to change the epochs (a flag, a box)."""
    if labels < 1 or train_rows >= FEW_SHOT_ROWS_PER_LABEL * labels or epochs >= FEW_SHOT_EPOCHS:
        return None
    per_epoch = -(-train_rows // batch_size)
    return (f"train holds {train_rows:,} rows ({train_rows / labels:.3g} per label): {per_epoch} step(s) per epoch "
            f"at batch {batch_size}, {per_epoch * epochs:,} in all over {epochs} epoch(s). Few-shot data needs more "
            f"steps: on snips 10-shot, 3 epochs scored 0.75-0.78 test accuracy and {FEW_SHOT_EPOCHS} epochs 0.90-0.92, "
            f"sparse and full finetuning alike; the benchmarks train such data {FEW_SHOT_EPOCHS} epochs")

HEAD_INITS = ("loaded", "centroid")
"""Where the head warm-up starts (SensitivityConfig.head_init)."""

SCORES = ("fisher", "taylor", "gradient")
"""Row scores of the sensitivity pass (SensitivityConfig.score)."""
NORMALISATIONS = ("mean", "zscore", "rank", "none")
"""How row scores are made comparable across matrices (``SensitivityConfig.normalise``)."""

FISHER_LABELS = ("data", "model")
"""Which labels the Fisher score's gradients are taken for (SensitivityConfig.fisher_labels)."""


@keywords_checked
@documented
@dataclass(frozen=True)
class SensitivityConfig:
    restriction: str = "tokens"
    """'tokens': weight gradients only from mined-group positions plus the pooling position; 'none': from every
    position (the unrestricted ablation). Either way the word-embedding rows eligible are those of the mined groups'
    pieces (method.md section 2) where groups are given; without groups (``compute_sensitivity(..., None)``, and
    the ``gradient`` baseline) every non-special token of the calibration rows is. That matters only where the
    mask reaches the embeddings (``min_layer`` 0)."""
    score: str = "fisher"
    """'fisher' (mean squared per-example gradient), 'taylor' (|w * dL/dw|) or 'gradient' (summed |batch
    gradient|, the gradient-magnitude score of sparse-finetuning studies; depends on how rows are batched)."""
    fisher_labels: str = "data"
    """The labels of the Fisher score's per-example gradients: 'data' (the annotated ones: the empirical
    Fisher) or 'model' (drawn from the warmed-up model's predicted distribution, ``label_draws`` per row,
    seeded: the true Fisher, which does not vanish on rows the head already fits). 'fisher' score only: with
    model labels the Taylor and gradient scores' summed gradients average to zero. On four 10-shot sets'
    development rows it changed half the mask and no accuracy outside noise but hint3's (-1.4), and did not
    close random rows' lead (BENCHMARKS.md), so 'data' stays."""
    label_draws: int = 1
    """Model-label draws per calibration row ('model' labels): one scoring pass each."""
    normalise: str = "mean"
    """Per-matrix normalisation of row scores: 'mean', 'zscore', 'rank' (percentile within the matrix, so
    every matrix gives about the same share of its rows) or 'none'."""
    calibration_rows: int = 4096
    """Training rows used for the scores (min(N, this))."""
    warmup_epochs: int = -1
    """Head warm-up epochs on cached pooled features (backbone frozen) before scoring; -1 = auto: 5, or 1 when
    the training split holds fewer than FEW_SHOT_ROWS_PER_LABEL rows per label (few-shot: on four 10-shot sets the
    row methods finetuned as well or better after 1 epoch, full finetuning worse on three; BENCHMARKS.md);
    0 = none. Every method starts from this head, so a comparison shares it."""
    warmup_lr: float = 1e-2
    """Learning rate of the head warm-up."""
    head_init: str = "loaded"
    """Where the warm-up starts: 'loaded' (the head as loaded: seeded random for a new head) or 'centroid'
    (each label's weights point from the calibration rows' mean head input to that label's mean, a
    nearest-centroid classifier, the same for every seed; the warm-up epochs, 0 allowed, then train it; a
    two-layer head's output layer is set so on its dense layer's outputs, which follow the seed where that layer is
    new to the checkpoint). In
    10-shot without a warm-up it finetuned no better than the loaded head (test: level on banking77 and snips,
    -5.4 points on trec6) and did not lower the seed std on test (BENCHMARKS.md), so 'loaded' stays."""
    centroid_scale: float = 0.05
    """Logit scale of the 'centroid' head: the rows' projections on the label directions, in units of their
    standard deviation, times this. Small, so the head starts near a uniform guess and training's first steps
    still carry gradient: at 0.5 (a loss like 5-20 warm-up epochs) 10-shot finetuning lost 0.6-10 points."""
    min_layer: int = 0
    """Score only the rows of layers >= this one, so the scoring backward stops there (rows below and the
    word embeddings score 0 and cannot be selected); 0 = every layer and the embeddings (the heatmap).
    ``finetune`` sets it to the mask's lowest eligible layer: rows below it could not be chosen anyway."""
    batch_size: int = 32
    """Calibration rows per scoring pass (forward and backward)."""
    max_length: int = 64
    """Sub-tokens read per row by a sensitivity pass of its own; ``finetune`` scores at its own max_length, so
    that the head warm-up and the mask see what training reads."""
    truncation_side: str = "right"
    """Which end of a row longer than ``max_length`` is cut (``FinetuneConfig.truncation_side``); ``finetune`` scores
    with its own."""
    seed: int | None = 0
    """Seeds the calibration subset (above ``calibration_rows`` training rows), the head warm-up's shuffle and
    the model-label draws. 0: every run seed scores alike (the loaded head still follows the run's seed), so
    the row methods' seed spread leaves out the scoring's; every published figure used 0. None: the run's
    seed (``FinetuneConfig.seed``)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        _check(self.min_layer >= 0, f"min_layer must be >= 0, got {self.min_layer}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(8 <= self.max_length <= 512, f"max_length must be in 8..512, got {self.max_length}")
        check_truncation_side(self.truncation_side)
        _check(self.warmup_lr > 0, f"warmup_lr must be > 0, got {self.warmup_lr}")
        _check(self.restriction in ("tokens", "none"), f"restriction must be tokens or none, got {self.restriction!r}")
        _check(self.score in SCORES, f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        _check(self.fisher_labels in FISHER_LABELS,
               f"fisher_labels must be one of {', '.join(FISHER_LABELS)}, got {self.fisher_labels!r}")
        _check(self.fisher_labels == "data" or self.score == "fisher",
               f"fisher_labels 'model' needs score 'fisher', got score {self.score!r}")
        _check(self.label_draws >= 1, f"label_draws must be >= 1, got {self.label_draws}")
        _check(self.normalise in NORMALISATIONS, f"normalise must be mean, zscore, rank or none, got {self.normalise!r}")
        _check(self.calibration_rows >= 1, f"calibration_rows must be >= 1, got {self.calibration_rows}")
        _check(self.warmup_epochs >= -1, f"warmup_epochs must be >= 0 or -1 (auto), got {self.warmup_epochs}")
        _check(self.head_init in HEAD_INITS, f"head_init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}")
        _check(self.centroid_scale > 0, f"centroid_scale must be > 0, got {self.centroid_scale}")

    @property
    def rng_seed(self) -> int:
        """The seed in use: ``finetune`` puts the run's seed in place of None; a pass of its own uses 0."""
        return 0 if self.seed is None else self.seed

    @property
    def prepares_head(self) -> bool:
        """Whether scoring starts by preparing the head (a warm-up, or a centroid head with none)."""
        return self.warmup_epochs != 0 or self.head_init != "loaded"

    def warmup_epochs_for(self, rows: int, labels: int) -> int:
        """The head warm-up epochs for a training split of ``rows`` rows over ``labels`` labels (resolves auto). The
        split's, not the calibration sample's: a smaller sample (``calibration_rows``, to score faster) turned a full
        data set's warm-up into the few-shot one, as did more than 204 labels at the default 4,096 (the real-model
        review)."""
        if self.warmup_epochs >= 0:
            return self.warmup_epochs
        return 1 if rows < FEW_SHOT_ROWS_PER_LABEL * labels else 5


MASK_STRATEGIES = ("topk_global", "random", "sampled")
"""How a row mask is chosen (MaskConfig.strategy)."""


@keywords_checked
@documented
@dataclass(frozen=True)
class MaskConfig:
    budget: float = 0.01
    """Fraction of backbone parameters in (0, 1], or an absolute count when > 1."""
    strategy: str = "topk_global"
    """'topk_global' (global top rows by normalised score), 'random' (same budget, random rows) or 'sampled'
    (rows drawn without replacement with probability proportional to score ** (1 / sample_temperature))."""
    include_embeddings: bool = True
    """Let word-embedding rows of mined-group tokens compete for the budget."""
    train_layernorm: bool = True
    """Train LayerNorm gains and biases at and above the lowest selected layer (tiny)."""
    train_biases: bool = False
    """Also train every linear map's bias at and above the lowest selected layer (BitFit inside the method:
    about 0.05% of the backbone, outside the budget like the LayerNorms, at FinetuneConfig.norm_lr). A model whose
    linear maps have no biases (Llama-style decoders) gets a ``biases_note`` in its metrics."""
    cost_aware: float = 0.0
    """Bonus per layer height: score * (1 + cost_aware * (layer + 1) / (n_layers + 1)), where score is the
    normalised score, shifted up to start at 0 where it goes below (z-scores), the word embeddings are layer -1
    and a pooler layer n_layers; 0 = plain scores."""
    min_layer: int = -1
    """Rows below this layer are not eligible, so backward stops there; -1 = auto (the upper half of
    the layers: n_layers // 2), 0 = every layer and the word embeddings compete."""
    sample_temperature: float = 1.0
    """Temperature of the 'sampled' strategy, whose weights read the normalised score shifted up to start
    at 0 where it goes below (with cost_aware's bonus): towards 0 it becomes top-k, large it becomes random rows. On
    10-shot development rows T = 1 matched random rows on snips but cost trec6 9.6 points (BENCHMARKS.md)."""
    random_share: float = 0.0
    """Share of the budget spent on random rows: the top (or drawn) rows fill the rest first, then rows drawn
    uniformly from the remaining candidates; 0 = none, 1 = the 'random' strategy. A middle ground between
    the scored rows (which led on trec6 and hint3 10-shot) and random rows (which led on banking77 and snips);
    on their 10-shot development rows 0.5 landed halfway on each and best on none (BENCHMARKS.md)."""
    spread_heads: bool = False
    """Once the budget is shared out between the maps, take each query, key and value map's rows round-robin
    over its attention heads (every head's best row, then every head's second, ...) instead of its top rows,
    which tend to crowd into one to three heads. Same count per map, so the same cost; top rows only
    ('topk_global', no random_share). On 10-shot test splits it lifted trec6's Fisher rows by 8 points, was
    level with the top rows on banking77, snips and hint3 (+0.1 to +0.5) and 2.7 points behind trec6's
    Taylor rows; on full data level (snips +0.24, banking77 -0.01). Off until the method grids have run
    with it (BENCHMARKS.md)."""
    seed: int | None = None
    """Seed of the random and sampled strategies and of random_share's rows; None = the run's seed
    (``FinetuneConfig.seed``), and 0 when a mask is selected outside a run."""

    @property
    def small_kinds(self) -> tuple[str, ...]:
        """The kinds of ``modeling.small_parameters`` a row method trains beside its rows ('norm', 'bias')."""
        return tuple(k for k, on in (("norm", self.train_layernorm), ("bias", self.train_biases)) if on)

    def __post_init__(self) -> None:
        check_field_types(self)
        _check(self.budget > 0, f"budget must be in (0, 1] or a parameter count > 1, got {self.budget}")
        _check(self.budget <= 1 or float(self.budget).is_integer(), f"budget above 1 must be a whole parameter count, got {self.budget}")
        _check(self.strategy in MASK_STRATEGIES, f"strategy must be one of {', '.join(MASK_STRATEGIES)}, got {self.strategy!r}")
        _check(self.sample_temperature > 0, f"sample_temperature must be > 0, got {self.sample_temperature}")
        _check(0 <= self.random_share <= 1, f"random_share must be in [0, 1], got {self.random_share}")
        _check(not self.spread_heads or self.strategy == "topk_global",
               f"spread_heads re-picks the top rows: not with strategy {self.strategy!r} (rows drawn"
               f"{' by score; on the command line, --sample-temperature' if self.strategy == 'sampled' else ' at random'})")
        _check(not self.spread_heads or not self.random_share,
               "spread_heads re-picks the top rows: not with a random_share above 0")
        _check(self.cost_aware >= 0, f"cost_aware must be >= 0, got {self.cost_aware}")
        _check(self.min_layer >= -1, f"min_layer must be >= -1 (auto), got {self.min_layer}")


METHODS = ("sparse", "sparse_merged", "full", "head", "bitfit", "lora", "prefix", "layers", "random", "fisher", "gradient")
BUDGET_METHODS = ("sparse", "sparse_merged", "layers", "random", "fisher", "gradient")
"""Methods whose trainable set the budget (``MaskConfig.budget``) sizes; full, head, bitfit, lora and prefix
train what they train whatever the budget."""
MINING_METHODS = ("sparse", "sparse_merged", "layers", "random", "fisher")
"""Methods that mine task-token groups (``FinetuneConfig.mining``) for their scores or their eligible rows."""
SCHEDULES = ("linear", "cosine", "constant")
"""Learning-rate schedules after the warm-up (FinetuneConfig.schedule)."""
PREFIX_INITS = ("random", "zero")
"""Where prefix tuning's keys and values start (FinetuneConfig.prefix_init)."""
CACHE_DTYPES = ("float32", "float16", "bfloat16")
"""How the frozen-layer cache stores its states (FinetuneConfig.cache_dtype)."""
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
"""How the training step is compiled (FinetuneConfig.compile): off, or a ``torch.compile`` mode."""
TUNE_WIDEN = 4
"""How many rates a learning-rate sweep may add past its edge per method (``bench.BenchConfig.tune_widen``)."""


@keywords_checked
@documented
@dataclass(frozen=True)
class FinetuneConfig:
    method: str = "sparse"
    """One of METHODS; 'sparse' is ours (token-restricted Fisher rows)."""
    epochs: int = 3
    """Passes over the training split (the head warm-up's are apart: SensitivityConfig.warmup_epochs)."""
    lr: float = 0.0
    """Learning rate; 0 picks the method's default (row deltas 5e-3, full 2e-4, head 1e-2, ...: DEFAULT_LR)."""
    head_lr: float = 0.0
    """Learning rate of the classification head of the row methods (sparse, sparse_merged, random, fisher,
    gradient); 0 = the method's own lr. The other methods train their head at lr."""
    norm_lr: float = 0.0
    """Learning rate of the LayerNorm gains and biases (and with MaskConfig.train_biases, the linear biases)
    that the row methods train; 0 = the method's own lr."""
    dropout: float | None = None
    """Dropout probability of every dropout layer while training (attention, hidden, LoRA; a Llama-style decoder's
    attention dropout, which it holds as a number); None keeps the checkpoint's (0.1 for BERT, 0 for SmolLM2).
    Evaluation never uses dropout. A model with no dropout at all gets a ``dropout_note`` in its metrics."""
    batch_size: int = 32
    """Training rows per step (per process under accelerate launch)."""
    max_length: int = 64
    """Sub-tokens read per text, in training and evaluation; the run records it, and predict and explain read
    texts at the same length."""
    truncation_side: str = "right"
    """Which end of a text longer than ``max_length`` is cut: 'right' keeps its start (the tokenizers' default),
    'left' keeps its end (support tickets and e-mails that greet first and ask last). The run's tokenizer keeps it
    (tokenizer_config.json), so predict, evaluate, explain and a plain ``transformers`` pipeline read texts as the
    run trained on them."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay. The row methods apply it to their deltas only (weight and bias rows), never to
    frozen rows or their head, so it pulls the trained rows back towards the checkpoint's; full, layers and LoRA to
    every weight matrix they train, the head's included, and to no bias or norm (towards 0, as transformers' Trainer
    does). A per-method setting (``bench --weight-decay sparse=1.0``), so the two rules are never mixed in one run. On banking77 10-shot, 1.0 lifted sparse (Taylor rows spread over the heads, 1.5e-2) by 0.7 point; on snips
    10-shot it changed nothing measurable (BENCHMARKS.md, forty-eighth session)."""
    warmup_ratio: float = 0.06
    """Share of steps with linear learning-rate warm-up, then the schedule. The count is rounded down, so a run of
    fewer than 1 / ratio steps (17 at 0.06: short few-shot runs) has none; a warm-up's first step is at rate 0."""
    schedule: str = "linear"
    """After the warm-up: 'linear' decay to 0 (the method's design), 'cosine' decay to 0, or 'constant'."""
    label_smoothing: float = 0.0
    """Label smoothing of the training loss (``torch.nn.functional.cross_entropy``'s; 0 = off). The head
    warm-up and the sensitivity scores use the plain loss. 0.1 cost sparse 0.5 point on snips and 2.8 on
    trec6 10-shot development rows (BENCHMARKS.md), so it is off."""
    average_last: float = 0.0
    """Share of the last training steps whose weights are averaged uniformly (tail averaging, as in SWA;
    0 = off, 1 = every step): the per-epoch curve, the evaluation and the saved model use the average.
    Only the trained parameters are averaged (for the row methods the deltas, head and norms). After a
    linear decay it changes nothing measurable; with ``schedule="constant"`` (SWA's recipe) it recovers the
    decay's accuracy and +0.1-0.2 point on banking77, inside the seed std, and the cached top-2 sparse run
    came within 0.5 point of full finetuning sooner (epoch 4 of 6 on five seeds, 0.32-0.41 of its time
    against 0.40-0.56) and ended 0.05 above it (BENCHMARKS.md). Off by default: one run per seed so far.
    LoRA's A and B are averaged apart, so its merged change is avg(B)·avg(A), not the average of B·A."""
    seed: int = 0
    """Seeds the run: the head's start and warm-up, the batches' order, dropout, and random rows (unless the mask has
    a seed of its own); the mask's scores follow ``sensitivity.seed``."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    eval_every_epoch: bool = True
    """Evaluate after each epoch (time-to-accuracy curves, ``val_curve`` in metrics.json)."""
    curve_split: str = "validation"
    """Split of the per-epoch curve: 'validation', or 'test' for benchmark time-to-accuracy (never for tuning)."""
    keep_best: bool = False
    """Save (and score on test) the trained weights of the epoch with the best validation accuracy, not the last
    epoch's, as transformers' ``load_best_model_at_end``. The trained parameters are copied at each new best (the
    deltas, head and norms for the row methods; a copy of the whole model for full finetuning, counted in its peak
    memory). Needs the per-epoch curve on validation; not with ``average_last`` (the average is what is saved). Meant
    for validation splits large enough to choose on: on snips 10-shot (70 validation rows) it cost sparse and full
    finetuning 0.7-0.8 point and widened their seed spread (BENCHMARKS.md, fifty-first session)."""
    early_stop: int = 0
    """Stop after this many epochs in a row without a better validation accuracy (0 = train every epoch), as
    transformers' ``EarlyStoppingCallback``'s patience. The rate schedule stays the whole run's, so a run stopped
    early ends before its rate has decayed; metrics.json says after which epoch (``stopped_after``). Not with
    ``average_last``."""
    out_of_scope_quantile: float = 0.1
    """When the test split holds labels train never had (out-of-scope queries, e.g. HINT3's
    NO_NODES_DETECTED), metrics.json's ``out_of_scope`` scores abstention: a prediction counts as "out of
    scope" when its top probability is below this quantile of the validation rows' top probabilities (about
    this share of in-scope queries turned away; chosen without test rows). Its AUROC needs no threshold."""
    head_warmup: bool = True
    """Every method starts training from the same warmed-up head (trained alone on cached features, see
    SensitivityConfig.warmup_*; its time counts as preparation). Row methods warm up inside their
    sensitivity pass. False: every method trains from the head as loaded (seeded random, plain
    finetuning); full/head/bitfit/lora/prefix skip the warm-up, and the row methods still warm a head for
    their scores (a random head scores noise) but do not train from it (``finetune --cold-head``). In 10-shot
    it moved sparse by +0.4 to +2.6 points on trec6 and snips and -0.6 to -1.8 on hint3 (development rows,
    BENCHMARKS.md), so the default stays."""
    cache_frozen_layers: bool = False
    """Row methods (and 'layers'; other methods train without it and say so in metrics.json): compute the frozen layers below the lowest trained one once per training
    row, then run only the layers above each step, skipping the lower layers' forward pass every epoch. When
    the mask's rows may only sit from a floor layer up (``MaskConfig.min_layer``), the cache is built at the
    floor before scoring, and the head warm-up and the scoring run on it too. The frozen layers then run
    without dropout; the cache holds (tokens, hidden) values per training row in memory. Off, with the reason
    in metrics.json's ``prefix_cache``, where the architecture is not supported, several processes train or
    the cache would exceed ``cache_max_mb``. Measured on banking77 (rows in layers 4-5, 6 epochs, 3 seeds):
    epochs at 0.19-0.22 of full finetuning's, 0.3 point lower accuracy than uncached (the lost dropout), so
    it is off by default (BENCHMARKS.md)."""
    cache_input_dropout: float = 0.0
    """With the cache: dropout on the cached states fed to the lowest trained layer, a stand-in for the lower
    layers' lost dropout noise (0.1 did not recover the accuracy the cache costs on banking77: BENCHMARKS.md)."""
    cache_dtype: str = "float16"
    """How the cache stores the states: 'float16' (half the memory of 'float32'; each batch is cast back to
    the model's dtype; on banking77 the same accuracy as float32 over 3 seeds, 0.9304 vs 0.9302), 'bfloat16'
    (float32's range, fewer digits) or 'float32'. States out of the dtype's range are refused, and the cache
    is then off with that reason."""
    cache_max_mb: float = 1024.0
    """The cache's memory cap: when the training rows' states would need more, training runs the whole model
    (the reason goes to metrics.json)."""
    compile: str = "off"
    """``torch.compile`` the model for training (forward and backward; evaluation stays eager): 'off', or a
    mode: 'default', 'reduce-overhead' (CUDA graphs on a GPU, where a batch-32 step of the default model is
    bound by kernel launches, not arithmetic: BENCHMARKS.md) or 'max-autotune' (tuned kernels, CUDA graphs too).
    With CUDA graphs (on a GPU), batches are padded to a multiple of 8 tokens (``training.GRAPHS_PAD_MULTIPLE``),
    so that a few shapes (graph recordings) cover every batch; elsewhere to their longest row. The first steps pay for the compilation (in training time, in the first
    epoch). Seeded, but dropout then draws from the compiler's random stream, so a run's numbers differ from
    the eager run's. On these CPUs it bought no time (banking77, 2,000 rows: later epochs 1.28x eager's for
    full finetuning, 1.00x for sparse, after 45-50 s of compiling) and lowered peak memory to 0.71 of eager's
    (BENCHMARKS.md), so it is off; untried on a GPU. Not with ``cache_frozen_layers``, whose per-batch module
    swap would recompile every step."""
    mask: MaskConfig = field(default_factory=MaskConfig)
    """Which rows the row methods train: the budget, the strategy and their options (``MaskConfig``)."""
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    """How the rows are scored before they are chosen (``SensitivityConfig``)."""
    mining: MiningConfig = field(default_factory=MiningConfig)
    """How the task tokens are mined, which the token-restricted score reads (``MiningConfig``)."""
    lora_r: int = 8
    """LoRA rank (method 'lora')."""
    prefix_tokens: int = 16
    """Virtual tokens (method 'prefix')."""
    prefix_init: str = "random"
    """Where the prefix starts (method 'prefix'): 'random' (peft's default, normal draws) or 'zero' (peft's
    ``init_weights="zero"``: keys and values 0, so the prefix adds nothing to an attention output and only
    dilutes it). A random prefix changes what the warmed head reads before any step: on snips (700 rows, the
    default model) a linear probe on the pooled state reached 0.85 without a prefix, 0.78 with a random one and
    0.82 with a zero one. After training the two starts were level (3 seeds each: banking77 10-shot +1.0 point for
    zero, snips 10-shot -1.7; BENCHMARKS.md), so peft's default stays."""

    def __post_init__(self) -> None:
        check_field_types(self)
        for key, sub in (("mask", MaskConfig), ("sensitivity", SensitivityConfig), ("mining", MiningConfig)):
            value = getattr(self, key)
            if isinstance(value, dict):  # a notebook's mask={"budget": 0.02}: its keys checked as the class's
                object.__setattr__(self, key, sub(**value))
            _check(isinstance(getattr(self, key), sub), f"{key} must be a {sub.__name__} (or a dict of its fields); "
                   f"got {type(value).__name__}")
        _check(self.method in METHODS, f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.lr >= 0, f"lr must be >= 0, got {self.lr}")
        _check(self.norm_lr >= 0, f"norm_lr must be >= 0, got {self.norm_lr}")
        _check(self.head_lr >= 0, f"head_lr must be >= 0, got {self.head_lr}")
        _check(self.dropout is None or 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(0 <= self.cache_input_dropout < 1,
               f"cache_input_dropout must be in [0, 1), got {self.cache_input_dropout}")
        _check(self.cache_frozen_layers or not self.cache_input_dropout,
               f"cache_input_dropout={self.cache_input_dropout} acts on the frozen-layer cache: it needs "
               "cache_frozen_layers")
        _check(self.cache_dtype in CACHE_DTYPES, f"cache_dtype must be one of {', '.join(CACHE_DTYPES)}, got {self.cache_dtype!r}")
        _check(self.cache_max_mb > 0, f"cache_max_mb must be > 0, got {self.cache_max_mb}")
        _check(self.compile in COMPILE_MODES, f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        _check(self.compile == "off" or not self.cache_frozen_layers,
               "compile does not combine with cache_frozen_layers: the cache swaps modules every batch, which "
               "would recompile every step")
        _check(8 <= self.max_length <= 512, f"max_length must be in 8..512, got {self.max_length}")
        check_truncation_side(self.truncation_side)
        _check(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(0 <= self.average_last <= 1, f"average_last must be in [0, 1], got {self.average_last}")
        _check(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        _check(0 < self.out_of_scope_quantile < 1,
               f"out_of_scope_quantile must be in (0, 1), got {self.out_of_scope_quantile}")
        _check(self.curve_split in ("validation", "test"), f"curve_split must be validation or test, got {self.curve_split!r}")
        _check(self.early_stop >= 0, f"early_stop must be >= 0 epochs (0 = off), got {self.early_stop}")
        if self.keep_best or self.early_stop:
            chooses = "keep_best" if self.keep_best else f"early_stop={self.early_stop}"
            _check(self.eval_every_epoch and self.curve_split == "validation",
                   f"{chooses} reads the validation accuracy after every epoch: it needs eval_every_epoch and "
                   "curve_split='validation' (an epoch chosen on test would be scored on the rows that chose it)")
        _check(not ((self.keep_best or self.early_stop) and self.average_last),
               f"{'keep_best' if self.keep_best else 'early_stop'} does not combine with average_last: the averaged "
               "weights are what a run saves, over a window of the planned steps")
        _check(self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}")
        _check(self.prefix_tokens >= 1, f"prefix_tokens must be >= 1, got {self.prefix_tokens}")
        _check(self.prefix_init in PREFIX_INITS,
               f"prefix_init must be one of {', '.join(PREFIX_INITS)}; got {self.prefix_init!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        data = dict(data)
        for key, sub in (("mask", MaskConfig), ("sensitivity", SensitivityConfig), ("mining", MiningConfig)):
            if isinstance(data.get(key), dict):
                data[key] = from_dict(sub, data[key])
        return from_dict(cls, data)


SAMPLE_NAME = "sample"
"""The data path that names the sample shipped in the package (``data.SAMPLE_DATA``), where no file or folder of that
name is in the working directory."""
MAX_ATTRIBUTION_STEPS = 1024
"""Integrated Gradients' most interpolation steps (``AttributionConfig.n_steps``, --steps)."""
ATTRIBUTION_OUTPUTS = ("probability", "logit")
"""What attributions explain (``AttributionConfig.output``, --output)."""


@keywords_checked
@documented
@dataclass(frozen=True)
class AttributionConfig:
    """Integrated-Gradients attributions (``attribution.explain``, the case study, ``clm-explore explain``); here,
    not in attribution.py, so that the CLI reads its defaults without importing torch."""

    n_steps: int = 32
    """Interpolation steps between the reference and the input (decoders use twice as many)."""
    internal_batch_size: int = 128
    """Rows (examples x steps) per forward/backward pass, at most; fewer for long texts, so that a pass holds at most
    ``attribution.TOKENS_PER_PASS`` sub-tokens. Bounds memory (on the default model 1.6 GB of peak memory at 128,
    4.3 GB at 512, at the same speed on the CPU: BENCHMARKS.md, attributions)."""
    target: str = "predicted"
    """Label explained: 'predicted' (the model's argmax) or 'gold' (the row's annotated label)."""
    batch_size: int = 4
    """Texts attributed together; texts are grouped by length so padding stays small."""
    max_length: int | None = None
    """Texts are truncated to this many sub-tokens (specials included). None: the run's trained length where the
    run is known (attribute_split, compare_runs, CLI explain/report), else DEFAULT_MAX_LENGTH (64). Reading
    fewer or more sub-tokens than training did can change the prediction, and the "predicted" label explained
    would then not be the one in the run's predictions.csv."""
    method: str = "gausslegendre"
    """Captum's integral approximation: 'gausslegendre' (converges fastest) or 'riemann_trapezoid'."""
    output: str = "probability"
    """What the scores explain: 'probability' (the target label's softmax probability: a text's scores sum to its
    change from the reference, at most 1 either way) or 'logit' (the target's pre-softmax score, as Captum's
    tutorials attribute it: unbounded, in the model's own units, its scale the run's own; the softmax's ceiling
    does not bound it where a run is sure). Integrated Gradients' scores add up to the change either way."""

    def __post_init__(self) -> None:
        check_field_types(self)
        checks = [
            (self.output in ATTRIBUTION_OUTPUTS, f"output must be 'probability' or 'logit', got {self.output!r}"),
            (  # the cap stops a typo from asking for petabytes of interpolated inputs
                2 <= self.n_steps <= MAX_ATTRIBUTION_STEPS,
                f"n_steps must be in 2..{MAX_ATTRIBUTION_STEPS} (the default 32 converges on the default model), "
                f"got {self.n_steps}",
            ),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (
                self.internal_batch_size >= self.batch_size,
                f"internal_batch_size must be >= batch_size ({self.batch_size}), got {self.internal_batch_size}",
            ),
            (
                self.target in ("predicted", "gold"),
                f"target must be 'predicted' or 'gold', got {self.target!r}",
            ),
            (
                self.max_length is None or 8 <= self.max_length <= 512,
                f"max_length must be None or in 8..512, got {self.max_length}",
            ),
            (
                self.method
                in ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"),
                f"method must be gausslegendre or a riemann_* rule, got {self.method!r}",
            ),
        ]
        for ok, message in checks:
            _check(ok, message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@keywords_checked
@documented
@dataclass(frozen=True)
class LabelAuditConfig:
    """The label audit (``label_issues.find_label_issues``, ``clm-explore audit``, the Data page): rows whose label
    their own text disputes, found by confident learning (Northcutt et al., 2021: the confident joint's off-diagonal
    rows, cleanlab's ``filter_by='confident_learning'``) over out-of-fold probabilities of a linear probe on the
    frozen model's features. No finetuning: one forward pass."""

    folds: int = 5
    """Cross-validation folds: every row is judged by a probe that never saw it, nor a copy of its text. A label
    with fewer different texts than this is not audited and takes no part (it is never suggested either)."""
    max_length: int = 64
    """Sub-tokens read per text (as training reads them)."""
    truncation_side: str = "right"
    """Which end of a longer text is cut (as training cuts it: ``FinetuneConfig.truncation_side``)."""
    batch_size: int = 64
    """Texts per forward pass."""
    regularization: float = 1.0
    """The probe's inverse L2 strength (scikit-learn's ``C``) on standardised features."""
    seed: int = 0
    """Seed of the folds."""
    splits: tuple[str, ...] = ("train", "validation", "test")
    """Splits audited, pooled: an error in test misleads the evaluation as one in train misleads training."""
    max_rows: int = 100_000
    """Rows audited at most: above it, a seeded sample of this many (a note says so), so that one large upload
    cannot hold a server for an hour (about 4 ms a row on one CPU thread with the default model)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        if isinstance(self.splits, str):  # one split named alone: ("train",) meant, not its letters
            object.__setattr__(self, "splits", (self.splits,))
        if isinstance(self.splits, list):  # a notebook's list: kept hashable, as the app's cache keys need
            object.__setattr__(self, "splits", tuple(self.splits))
        _check(2 <= self.folds <= 20, f"folds must be in 2..20, got {self.folds}")
        _check(8 <= self.max_length <= 512, f"max_length must be in 8..512, got {self.max_length}")
        check_truncation_side(self.truncation_side)
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.regularization > 0, f"regularization must be > 0, got {self.regularization}")
        _check(bool(self.splits) and all(s in ("train", "validation", "test") for s in self.splits)
               and len(set(self.splits)) == len(self.splits),
               f"splits must name some of train, validation and test, each once; got {self.splits!r}")
        _check(self.max_rows >= 2 * self.folds, f"max_rows must be >= 2 x folds ({2 * self.folds}), got {self.max_rows}")
