"""The case study: word attributions across a data set, and two runs compared on the same rows.

- ``attribute_split(run_dir, split)``: Integrated-Gradients word attributions of every row of a split (the
  run's ``predictions.csv`` or a DataFrame with ``text``/``label``), cached per row in
  ``<run>/attributions/<split>-<key>.json`` (key = attribution config + weights), so each row is computed
  once and later calls only fill in rows not seen before.
- ``top_words``: per label, the words with the highest mean attribution (with counts);
- ``compare_runs``: agreement rate, the disagreement rows (which run is right), per-row attribution
  difference and the Spearman rank correlation of word attributions between the two models (also apart for
  the rows where the runs agree and where they disagree);
- ``select_rows``: which rows to attribute when not all are: disagreements first, then the rest spread
  round-robin over the labels, so that a cut covers as many labels as it can;
- ``group_overlap``: share of each label's top-k words that are mined token groups (``task_tokens.json``);
- ``stability``: the same rank correlation for two seeds of one method.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import MISSING, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clm_explore.attribution import (
    AttributionConfig,
    TokenAttribution,
    explain,
    load_run_model,
    unsettled_floor,
)
from clm_explore.batches import predict_proba
from clm_explore.config import MAX_ATTRIBUTION_STEPS, config_from
from clm_explore.data import DataError
from clm_explore.mining import pieces_surface
from clm_explore.modeling import ModelSourceError, finished_run
from clm_explore.progress_bar import phase_bar
from clm_explore.runs import trained_max_length, write_json_atomic

CACHE_DIR = "attributions"


@dataclass
class RunAttributions:
    """Word attributions of the rows of one split under one run's model."""

    run_dir: Path
    split: str
    rows: pd.DataFrame
    """One row per attributed example: row, text, label, pred, target_label, probability, delta."""
    items: dict[int, TokenAttribution]
    """Row id -> its attribution."""
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Every row of the split (row, text, label and pred when the run's predictions.csv has it)."""

    def __repr__(self) -> str:  # every attribution would fill a notebook cell
        return (f"RunAttributions({run_name(self.run_dir)}: {len(self.items)} of {len(self.predictions)} {self.split} "
                "rows attributed; .rows, .items, .words())")

    def unsettled_note(self) -> str:
        """A sentence when some rows' word scores miss their output's change by more than the integral's error allows
        (``TokenAttribution.unsettled``: all-mpnet-base-v2 and SmolLM2 at the default steps), '' otherwise: the
        report's mean scores then rank words, and do not measure them (the models review: ``explain`` said so of
        each text, the report of none)."""
        off = [item for item in self.items.values() if item.unsettled]
        if not off:
            return ""
        output = off[0].output
        return (f"{len(off)} of {len(self.items)} rows' word scores miss their {output} change by more than a tenth "
                f"of it or {unsettled_floor(output)}, whichever is more (up to "
                f"{max(abs(item.delta) for item in off):.2f}): read them as a ranking, not amounts; "
                f"more integration steps (`clm-explore report --steps`, up to {MAX_ATTRIBUTION_STEPS}) close the gap")

    def words(self) -> pd.DataFrame:
        """Long table: row, label (gold), target_label, position, word (lower-cased), score."""
        labels = dict(zip(self.rows["row"], self.rows["label"], strict=True))
        records = [
            (row, labels.get(row, ""), item.target_label, pos, word.lower(), score)
            for row, item in self.items.items()
            for pos, (word, score) in enumerate(zip(item.words, item.scores, strict=True))
        ]
        return pd.DataFrame(records, columns=["row", "label", "target_label", "position", "word", "score"])


@dataclass
class Comparison:
    """Two runs on the same rows."""

    agreement: float
    """Share of rows where both runs predict the same label."""
    n_rows: int
    disagreements: pd.DataFrame
    """row, text, label, pred_a, pred_b, right ('a', 'b' or 'neither')."""
    row_difference: pd.DataFrame
    """Per attributed row: row, same_pred, mean_abs_diff (word scores), spearman (word scores)."""
    rank_correlation: float
    """Spearman correlation of all word scores pooled over the rows both runs attributed."""
    mean_row_correlation: float
    """Mean of the per-row Spearman correlations (rows with at least 3 words)."""
    n_attributed: int = 0
    """Rows both runs attributed with the same words: the rows every correlation uses (``row_difference``).
    They are the rows ``select_rows`` chose, disagreements first, so not a random sample of the ``n_rows``."""
    rank_correlation_agree: float = math.nan
    """``rank_correlation`` over the attributed rows where both runs predict the same label."""
    rank_correlation_disagree: float = math.nan
    """``rank_correlation`` over the attributed rows where the runs predict different labels."""

    def __repr__(self) -> str:
        return (f"Comparison(agreement {self.agreement:.1%} of {self.n_rows} rows, {len(self.disagreements)} "
                f"disagreements; word-score rank correlation {self.rank_correlation:.2f} over {self.n_attributed} rows)")


@dataclass
class CaseStudy:
    """Everything the report shows about one run, or two runs side by side."""

    a: RunAttributions
    top_a: pd.DataFrame
    groups_a: list[str] | None
    b: RunAttributions | None = None
    top_b: pd.DataFrame | None = None
    groups_b: list[str] | None = None
    comparison: Comparison | None = None
    overlap: pd.DataFrame = field(default_factory=pd.DataFrame)
    """label, run ('a'/'b'), k, in_groups, share: top-k words that are mined groups."""
    from_data: bool = False
    """The rows came from ``data``, not from the runs' predictions.csv: the runs' metrics.json figures (their own
    test split) are then figures of other rows."""
    target: str = "predicted"
    """The label each row's scores explain (``AttributionConfig.target``): each run's own prediction, or the gold
    label (then both runs of a disagreement row explain the same label)."""

    def __repr__(self) -> str:  # the default repr printed every table and attribution (143 KB on 80 rows)
        runs = run_name(self.a.run_dir) + (f" vs {run_name(self.b.run_dir)}" if self.b is not None else "")
        return (f"CaseStudy({runs}: {self.coverage_text()}; .top_a, .comparison, .overlap; "
                "write_report(study, path) draws it)")

    @property
    def output(self) -> str:
        """What the attributions measure (``AttributionConfig.output``): 'logit' where any row's are logits, else
        'probability'."""
        runs = [attributed for attributed in (self.a, self.b) if attributed is not None]
        logit = any(item.output == "logit" for attributed in runs for item in attributed.items.values())
        return "logit" if logit else "probability"

    def coverage(self) -> tuple[int, int]:
        """(rows attributed, rows of the split): the top words and the correlations use the first only."""
        return len(self.a.rows), len(self.a.predictions)

    def coverage_text(self) -> str:
        """The coverage in words, e.g. '300 of 800 rows attributed (disagreements first, then ...)'."""
        done, total = self.coverage()
        if done >= total:
            return f"all {total} rows attributed"
        disagree = self.comparison is not None and not self.comparison.disagreements.empty
        first = "the rows where the runs disagree first, then " if disagree else ""
        return f"{done} of {total} rows attributed ({first}rows taken from each label in turn)"


def run_name(run_dir: str | Path) -> str:
    """The run folder's name, also for '.' or '..' (whose ``Path.name`` is '' or '..'): the name of the folder meant."""
    path = Path(run_dir)
    return path.resolve().name if path.name in ("", "..") else path.name


PREDICTION_COLUMNS = ("text", "label")
"""The columns of a run's predictions.csv that a case study needs (finetune writes them, with row, pred and prob)."""


def rows_of(data: Any, split: str = "test") -> pd.DataFrame | None:
    """The rows a case study reads from ``data``: a DataFrame (text, label) as it is, an ``AnnotatedData``'s
    ``split``, or a data path's (``load_data``); None stays None (the runs' predictions.csv)."""
    if data is None or isinstance(data, pd.DataFrame):
        return data
    if not isinstance(data, str | Path) and hasattr(data, "split"):
        return data.split(split)
    from clm_explore.data import load_data

    return load_data(data).split(split)


def split_frame(run_dir: str | Path, split: str = "test", data: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows to attribute: ``data`` (columns text, label; row = index) or the run's predictions.csv."""
    if data is not None:
        missing = {"text", "label"} - set(data.columns)
        if missing:
            raise ValueError(f"The data needs columns text and label; missing: {', '.join(sorted(missing))}.")
        frame = (
            data.reset_index(drop=True) if "row" in data.columns else data.rename_axis("row").reset_index()
        )
        return frame.assign(text=frame["text"].astype(str), label=frame["label"].astype(str))
    path = Path(run_dir) / "predictions.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: give the rows to explain instead (clm-explore report --data DATA; in Python, "
            "data=DataFrame with columns text and label)."
        )
    if split != "test":
        raise ValueError(f"predictions.csv holds the test split only; pass data= for split {split!r}.")
    return read_predictions(path)


OTHER_ROWS_HINT = "give the rows to explain instead (clm-explore report --data DATA)"
"""What a reader of a damaged predictions.csv can do instead, in a case study's words (``read_predictions``)."""


def read_predictions(path: Path, needed: Sequence[str] = PREDICTION_COLUMNS, instead: str = OTHER_ROWS_HINT
                     ) -> pd.DataFrame:
    """A run's predictions.csv, refused with the file named when it cannot be read or lacks one of the ``needed``
    columns: a damaged file would otherwise stop the case study (or the app's Compare page) with a bare KeyError.
    ``instead``: the message's other way, in the caller's words."""
    try:
        frame = pd.read_csv(path, dtype={"text": str, "label": str, "pred": str}, keep_default_na=False)
    except ValueError as exc:  # pandas' ParserError and EmptyDataError, a file that is not UTF-8
        raise DataError(f"{path} cannot be read as a CSV file ({exc}); restore the run's predictions.csv, or "
                        f"{instead}.") from exc
    missing = [col for col in needed if col not in frame.columns]
    if missing:
        raise DataError(f"{path} has no {' or '.join(missing)} column (it needs {' and '.join(needed)}, "
                        f"as finetune writes it); restore the run's predictions.csv, or {instead}.")
    # finetune numbers the rows in file order; a file without the column is numbered the same way
    return frame if "row" in frame.columns else frame.rename_axis("row").reset_index()


def attribute_split(
    run_dir: str | Path,
    split: str = "test",
    data: pd.DataFrame | None = None,
    cfg: AttributionConfig | None = None,
    rows: Sequence[int] | None = None,
    loaded: Any = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RunAttributions:
    """Attributions of a split's rows under a run's model, computed once and cached in the run folder.

    Args:
        run_dir: the run folder (a transformers model folder).
        split: split name (part of the cache file name); 'test' reads predictions.csv when data is None.
        data: rows to attribute (columns text, label); None = the run's predictions.csv.
        cfg: attribution settings (part of the cache key). ``max_length`` None reads the texts at the run's
            trained length (``runs.trained_max_length``), as its predictions.csv did. With ``target='gold'``,
            a row whose gold label the model does not have (an out-of-scope test label that train never had)
            explains the model's prediction instead; its ``target_label`` then shows the predicted label.
        rows: restrict to these row ids (in this order); None = all rows.
        loaded: an already loaded ``LoadedModel`` of the run (else loaded when rows are missing).
        on_progress: called with (rows attributed, rows to attribute) as the rows not in the cache are done.
    """
    run_dir = Path(run_dir)
    cfg = config_from(cfg, AttributionConfig, "attribute_split")
    if cfg.max_length is None:  # before the cache key: the key names the length the rows were read at
        cfg = replace(cfg, max_length=trained_max_length(run_dir))
    frame = full = split_frame(run_dir, split, data)
    if rows is not None:
        frame = frame.set_index("row").loc[list(rows)].reset_index()
    # The rows of predictions.csv and of given data are cached apart: row ids of the two name other texts, and one
    # would evict the other's rows at every switch (the report review).
    rows_from = "" if data is None else "data-"
    cache_path = run_dir / CACHE_DIR / f"{split}-{rows_from}{_cache_key(run_dir, cfg)}.json"
    cache = _read_cache(cache_path)
    items: dict[int, TokenAttribution] = {}
    todo = []
    keys = {int(row): _row_key(text, label, cfg.target)
            for row, text, label in zip(frame["row"], frame["text"], frame["label"], strict=True)}
    for row, key in keys.items():
        hit = cache.get(str(row))
        if hit is not None and all(hit.get(name) == value for name, value in key.items()):
            items[row] = TokenAttribution.from_dict(hit)
        else:
            todo.append(row)
    if todo:
        loaded = loaded or load_run_model(run_dir)
        sub = frame.set_index("row").loc[todo]
        target = _gold_targets(loaded, sub["label"]) if cfg.target == "gold" else None
        for row, item in zip(
            todo,
            explain(loaded.model, loaded.tokenizer, list(sub["text"]), cfg, target, on_progress),
            strict=True,
        ):
            items[row] = item
            cache[str(row)] = {**keys[row], **item.to_dict()}
        _write_cache(cache_path, cache, cfg)
    return RunAttributions(run_dir, split, _rows_table(frame, items, run_dir), items, full)


def _row_key(text: str, label: Any, target: str) -> dict[str, str]:
    """What a cached row must match to be reused: its text, and when the gold label is explained, that label too (a
    label corrected after an audit explained the old one, and top words went to the wrong label)."""
    return {"text_hash": _text_hash(text)} | ({"gold_label": str(label)} if target == "gold" else {})


def _gold_targets(loaded: Any, gold: pd.Series) -> list[str | None]:
    """The gold labels as targets; None (the prediction) for a label the model lacks, which would otherwise stop
    the whole split (e.g. hint3's test-only NO_NODES_DETECTED rows)."""
    known = {str(name) for name in loaded.model.config.id2label.values()}
    return [label if label in known else None for label in gold.astype(str)]


def _rows_table(frame: pd.DataFrame, items: dict[int, TokenAttribution], run_dir: Path) -> pd.DataFrame:
    out = frame[["row", "text", "label"] + (["pred"] if "pred" in frame.columns else [])].copy()
    out["row"] = out["row"].astype(int)
    labels = _run_labels(run_dir)
    if "pred" not in out.columns:
        out["pred"] = [labels.get(items[r].predicted, str(items[r].predicted)) for r in out["row"]]
    out["target_label"] = [items[r].target_label for r in out["row"]]
    out["probability"] = [items[r].probability for r in out["row"]]
    out["delta"] = [items[r].delta for r in out["row"]]
    return out.reset_index(drop=True)


def _run_labels(run_dir: Path) -> dict[int, str]:
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {int(k): str(v) for k, v in config.get("id2label", {}).items()}


WORDS_VERSION = 3
"""How ``attribution.merge_words`` cuts words (2: also at whitespace, no empty words; 3: "hasn't" and "top-up" one
word each); cached rows cut otherwise are not mixed with new ones (``compare_runs`` pairs rows by their word lists)."""


def _cache_key(run_dir: Path, cfg: AttributionConfig) -> str:
    # Retraining into the same folder changes the weights file, hence the key.
    weights = sorted(run_dir.glob("*.safetensors")) + sorted(run_dir.glob("*.bin"))
    stamp = [
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights if p.name != "masks.safetensors"
    ]
    raw = json.dumps({"cfg": cfg.to_dict(), "weights": stamp, "words": WORDS_VERSION}, sort_keys=True)
    return hashlib.sha1(raw.encode()).hexdigest()[:12]


def _text_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """The cached rows that can be read back; a damaged file or entry is computed again, not a TypeError."""
    try:
        items = json.loads(path.read_text())["items"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    needed = {"text_hash"} | {name for name, f in TokenAttribution.__dataclass_fields__.items()
                              if f.default is MISSING and f.default_factory is MISSING}
    return {row: item for row, item in items.items() if isinstance(item, dict) and needed <= item.keys()
            } if isinstance(items, dict) else {}


def _write_cache(path: Path, items: dict[str, dict[str, Any]], cfg: AttributionConfig) -> bool:
    """Save the rows attributed; False, writing nothing, where the run folder cannot be written (read-only, a full
    disk): the cache only saves time, so the attributions go on without it and are computed again next time."""
    made = not path.parent.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"config": cfg.to_dict(), "items": items}, indent=None)
    except OSError:  # write_json_atomic has removed its temporary file; an attributions folder made here goes too
        if made:
            with suppress(OSError):
                path.parent.rmdir()
        return False
    return True


def top_words(
    attrs: RunAttributions, k: int = 10, min_count: int = 2, by: str = "target_label"
) -> pd.DataFrame:
    """Per label, the k words with the highest mean attribution, above 0: a word whose mean pushes away from the label
    is no evidence for it, however few words rank above it (the report review: 'not' at -0.065 was 7th).

    Args:
        attrs: a split's attributions.
        k: words kept per label.
        min_count: a word must occur at least this many times under the label.
        by: 'target_label' (the label each row's scores explain) or 'label' (gold).

    Returns:
        DataFrame [label, rank, word, mean_score, count], rank 1 = highest mean.
    """
    words = attrs.words()
    if words.empty:
        return pd.DataFrame(columns=["label", "rank", "word", "mean_score", "count"])
    stats = words.groupby([by, "word"])["score"].agg(mean_score="mean", count="size").reset_index()
    stats = stats[(stats["count"] >= min_count) & (stats["mean_score"] > 0)].rename(columns={by: "label"})
    stats = stats.sort_values(["label", "mean_score", "word"], ascending=[True, False, True])
    stats["rank"] = stats.groupby("label").cumcount() + 1
    top = stats[stats["rank"] <= k]
    return top[["label", "rank", "word", "mean_score", "count"]].reset_index(drop=True)


def load_task_tokens(run_dir: str | Path) -> list[str] | None:
    """Mined group texts of a run (``task_tokens.json``: {"groups": [{"text": ...}]} or a list), or None.

    Raises:
        ModelSourceError: the file is not JSON, or not groups each with a text (a damaged run file, named).
    """
    path = Path(run_dir) / "task_tokens.json"
    if not path.is_file():
        return None
    fix = "restore it, or delete it (the report then marks no mined groups)"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path} cannot be read as JSON ({exc}); {fix}.") from exc
    groups = raw.get("groups", []) if isinstance(raw, dict) else raw
    if not isinstance(groups, list):
        raise ModelSourceError(f"{path} holds no list of groups ({'groups is' if isinstance(raw, dict) else 'it is'} "
                               f"a {type(groups).__name__}); {fix}.")
    texts = []
    for i, group in enumerate(groups):
        if isinstance(group, dict) and "text" not in group:
            fields = ", ".join(map(str, group)) or "no field"
            raise ModelSourceError(f"{path}: group {i} has no 'text' field (it has {fields}); {fix}.")
        texts.append(str(group["text"] if isinstance(group, dict) else group))
    return texts


def is_group_word(word: str, groups: Sequence[str], split: Callable[[str], list[str]] | None = None) -> bool:
    """A word counts as mined when it is a group, one word of a multi-word group, or holds a mined fragment.

    With ``split`` (the run's tokenizer on one word, ``word_splitter``) a fragment counts where its pieces are
    among the word's own: '##ed' marks 'unblocked' (un ##block ##ed in MiniLM's vocabulary), not 'received', one
    token there (the report review: 'received', 'ordered' and 'denied' were marked, which the fragment never
    touched). Without it, by the text: a WordPiece ##-fragment ('##r ##ing' reads 'ring')
    inside the word after its first letter, a word-initial byte-level or SentencePiece one ('Ġcon' reads 'con') at
    its start."""
    word = word.lower()
    for group in groups:
        pieces = group.strip().split()  # the markers before lower(): 'Ġ'.lower() is another letter
        g = group.lower().strip()
        if word == g or word in g.split():
            return True
        if not pieces or not pieces[0].startswith(("##", "Ġ", "▁")):
            continue
        if split is not None:
            if _splits_into(word, pieces, split):
                return True
            continue
        surface = pieces_surface(pieces).lower()
        inside = pieces[0].startswith("##")
        if len(surface) > 1 and (surface in word[1:] if inside else word.startswith(surface)):
            return True
    return False


def _splits_into(word: str, pieces: list[str], split: Callable[[str], list[str]]) -> bool:
    """Whether the tokenizer splits ``word`` (lower-cased, as the top words are), or the word capitalised, into
    ``pieces`` among its own, compared without case: a cased tokenizer's mined 'ĠCon' (from "Contactless") is not
    among the pieces of "contactless" as written (the diff review)."""
    wanted = [_uncased(piece) for piece in pieces]
    for form in dict.fromkeys((word, word.capitalize())):
        own = [_uncased(piece) for piece in split(form)]
        if any(own[i:i + len(wanted)] == wanted for i in range(len(own) - len(wanted) + 1)):
            return True
    return False


def _uncased(piece: str) -> str:
    """A piece lower-cased after its tokenizer's marker ('Ġ'.lower() is another letter)."""
    marker = next((m for m in ("##", "Ġ", "▁") if piece.startswith(m)), "")
    return marker + piece[len(marker):].lower()


def word_splitter(run_dir: str | Path) -> Callable[[str], list[str]] | None:
    """The run's tokenizer on one word as it stands in a text (after a space: a byte-level tokenizer marks that),
    remembered per word; None where the run's tokenizer cannot be loaded (``is_group_word`` then reads the text)."""
    from functools import lru_cache

    from clm_explore.modeling import load_tokenizer

    try:
        tokenizer = load_tokenizer(str(run_dir))
    except (ModelSourceError, OSError, ValueError):
        return None

    @lru_cache(maxsize=4096)
    def split(word: str) -> list[str]:
        return tokenizer.tokenize(" " + word)

    return split


def mark_mined(top: pd.DataFrame, groups: Sequence[str] | None,
               split: Callable[[str], list[str]] | None = None) -> pd.DataFrame:
    """``top`` with a ``mined`` column: whether each word is a mined group or holds one (``is_group_word``)."""
    return top.assign(mined=[bool(groups) and is_group_word(str(w), groups, split) for w in top["word"]])


def marked(top: pd.DataFrame, groups: Sequence[str] | None) -> pd.DataFrame:
    """``top`` as ``case_study`` marked it (with the run's tokenizer), else marked here by the words' text."""
    return top if "mined" in top.columns else mark_mined(top, groups)


def group_overlap(top: pd.DataFrame, groups: Sequence[str] | None, k: int = 10) -> pd.DataFrame:
    """Share of each label's top-k attributed words that are mined groups.

    Returns:
        DataFrame [label, k, in_groups, share, words] (words: the top words that are groups).
    """
    cols = ["label", "k", "in_groups", "share", "words"]
    if groups is None or top.empty:
        return pd.DataFrame(columns=cols)
    records = []
    top = marked(top, groups)
    for label, part in top[top["rank"] <= k].groupby("label"):
        hits = part.loc[part["mined"], "word"].tolist()
        records.append((label, len(part), len(hits), len(hits) / len(part), hits))
    return pd.DataFrame(records, columns=cols)


def compare_runs(a: RunAttributions, b: RunAttributions) -> Comparison:
    """Agreement, disagreements and attribution similarity of two runs on the same rows.

    Agreement and disagreements use every row of the split when both runs have predictions for it
    (predictions.csv, or ``case_study``'s predictions of data rows), else the attributed rows; the attribution
    figures use the rows both attributed (``n_attributed``), pooled and apart by agreement.
    """
    has_preds = "pred" in a.predictions.columns and "pred" in b.predictions.columns
    pa, pb = (a.predictions, b.predictions) if has_preds else (a.rows, b.rows)
    both = pa[["row", "text", "label", "pred"]].merge(  # by id and text: never one run's text beside another's answer
        pb[["row", "text", "label", "pred"]], on=["row", "text"], suffixes=("_a", "_b")
    )
    both = both.assign(label=both["label_a"])
    same = both["pred_a"] == both["pred_b"]
    dis = both[~same].copy()
    dis["right"] = np.where(
        dis["pred_a"] == dis["label"], "a", np.where(dis["pred_b"] == dis["label"], "b", "neither")
    )
    diffs, pairs = [], []
    for row, same_pred in zip(both["row"], same, strict=True):
        ia, ib = a.items.get(row), b.items.get(row)
        if ia is None or ib is None or [w.lower() for w in ia.words] != [w.lower() for w in ib.words]:
            continue  # different tokenizers split differently: no word-by-word comparison
        sa, sb = np.asarray(ia.scores), np.asarray(ib.scores)
        pairs.append((bool(same_pred), sa, sb))
        diff = float(np.abs(sa - sb).mean()) if len(sa) else math.nan
        diffs.append((row, bool(same_pred), diff, spearman(sa, sb) if len(sa) >= 3 else math.nan))
    row_diff = pd.DataFrame(diffs, columns=["row", "same_pred", "mean_abs_diff", "spearman"])
    return Comparison(
        agreement=float(same.mean()) if len(both) else math.nan,
        n_rows=len(both),
        disagreements=dis[["row", "text", "label", "pred_a", "pred_b", "right"]].reset_index(drop=True),
        row_difference=row_diff,
        rank_correlation=_pooled_spearman(pairs),
        mean_row_correlation=float(row_diff["spearman"].mean())
        if row_diff["spearman"].notna().any()
        else math.nan,
        n_attributed=len(row_diff),
        rank_correlation_agree=_pooled_spearman([p for p in pairs if p[0]]),
        rank_correlation_disagree=_pooled_spearman([p for p in pairs if not p[0]]),
    )


def _pooled_spearman(pairs: list[tuple[bool, np.ndarray, np.ndarray]]) -> float:
    """Spearman correlation of the word scores of several rows, pooled: (same_pred, scores_a, scores_b) each."""
    if not pairs:
        return math.nan
    return spearman(np.concatenate([p[1] for p in pairs]), np.concatenate([p[2] for p in pairs]))


def stability(seed_a: RunAttributions, seed_b: RunAttributions) -> dict[str, float]:
    """Attribution stability of one method across two seeds: rank correlations and prediction agreement."""
    cmp = compare_runs(seed_a, seed_b)
    return {
        "rank_correlation": cmp.rank_correlation,
        "mean_row_correlation": cmp.mean_row_correlation,
        "agreement": cmp.agreement,
    }


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan when undefined (constant or < 2 values)."""
    if len(x) < 2 or len(x) != len(y):
        return math.nan
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def word_difference(a: RunAttributions, b: RunAttributions, row: int) -> pd.DataFrame:
    """One row's words with both runs' scores: word, score_a, score_b, diff (a - b); empty if they differ."""
    ia, ib = a.items.get(row), b.items.get(row)
    if ia is None or ib is None or len(ia.words) != len(ib.words):
        return pd.DataFrame(columns=["word", "score_a", "score_b", "diff"])
    frame = pd.DataFrame({"word": ia.words, "score_a": ia.scores, "score_b": ib.scores})
    return frame.assign(diff=frame["score_a"] - frame["score_b"])


def check_same_rows(frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> None:
    """Refuse two runs' rows that do not pair by row id: a case study compares A's and B's answers row by row. The
    attributions review: the same 800 test rows in another order read as 4.9% agreement for one model twice.

    Raises:
        DataError: a row id holds another text under each run, or a run lacks the other's rows.
    """
    if said := rows_mismatch(frame_a, frame_b):
        raise DataError(f"{said}: a case study pairs their answers row by row. Compare two runs of the same data set, "
                        "or give both the rows to attribute (data= in Python, --data on the command line).")


def rows_mismatch(frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> str:
    """How two runs' rows (row, text) fail to pair by id and text ("The two runs were tested on different rows
    (...)"), or ''."""
    texts_a = dict(zip(frame_a["row"].astype(int), frame_a["text"].astype(str), strict=True))
    texts_b = dict(zip(frame_b["row"].astype(int), frame_b["text"].astype(str), strict=True))
    other = next((row for row, text in texts_a.items() if row in texts_b and texts_b[row] != text), None)
    if other is None and texts_a.keys() == texts_b.keys():
        return ""
    said = (f"row {other} is {texts_a[other][:60]!r} under run A and {texts_b[other][:60]!r} under run B"
            if other is not None else f"run A has {len(texts_a):,} rows and run B {len(texts_b):,}, "
            f"{len(texts_a.keys() & texts_b.keys()):,} of them the same ids")
    return f"The two runs were tested on different rows ({said})"


def select_rows(frame_a: pd.DataFrame, frame_b: pd.DataFrame | None, max_rows: int | None) -> list[int]:
    """Rows to attribute, at most max_rows: the rows where the runs predict different labels first, then the
    others; each group spread round-robin over the gold labels (``spread_over_labels``).

    Args:
        frame_a, frame_b: the split's rows (row, label and, for the disagreements, pred) under each run;
            frame_b None for one run.
        max_rows: how many rows to keep; None = all.
    """
    rows = frame_a["row"].astype(int).tolist()
    labels = dict(zip(rows, frame_a["label"].astype(str), strict=True))
    differ = _disagreeing_rows(frame_a, frame_b)
    first = spread_over_labels([r for r in rows if r in differ], labels)
    rest = spread_over_labels([r for r in rows if r not in differ], labels)
    ordered = first + rest
    return ordered if max_rows is None else ordered[:max_rows]


def _disagreeing_rows(frame_a: pd.DataFrame, frame_b: pd.DataFrame | None) -> set[int]:
    if frame_b is None or "pred" not in frame_a.columns or "pred" not in frame_b.columns:
        return set()
    pred_b = dict(zip(frame_b["row"].astype(int), frame_b["pred"].astype(str), strict=True))
    return {
        row
        for row, pred in zip(frame_a["row"].astype(int), frame_a["pred"].astype(str), strict=True)
        if row in pred_b and pred_b[row] != pred
    }


def spread_over_labels(rows: Sequence[int], labels: dict[int, str]) -> list[int]:
    """Rows interleaved over their labels: each label's first row (labels sorted), then each label's second, ...

    A data set sorted by label (a test file often is) would otherwise give its first few labels every one of
    the first max_rows rows; any cut of this order covers as many labels as it can. Deterministic: within a
    label, rows keep their order.
    """
    by_label: dict[str, list[int]] = {}
    for row in rows:
        by_label.setdefault(labels[row], []).append(row)
    queues = [by_label[label] for label in sorted(by_label)]
    depth = max((len(q) for q in queues), default=0)
    return [q[i] for i in range(depth) for q in queues if i < len(q)]


def known_label_accuracy(attrs: RunAttributions) -> tuple[float, int] | None:
    """The run's accuracy over the rows of its split whose gold label it classifies (a label it lacks it can never
    predict), and how many rows those are; None without its predictions of every row (``predictions``)."""
    frame = attrs.predictions
    if "pred" not in frame.columns:
        return None
    labels = set(_run_labels(attrs.run_dir).values())
    known = frame[frame["label"].astype(str).isin(labels)] if labels else frame
    if known.empty:
        return math.nan, 0
    return float((known["pred"].astype(str) == known["label"].astype(str)).mean()), len(known)


def _with_predictions(run_dir: Path, frame: pd.DataFrame, cfg: AttributionConfig) -> tuple[pd.DataFrame, Any]:
    """The rows with the run's predicted label (column pred), read at the length the attributions read; and the
    loaded model, to attribute with."""
    loaded = load_run_model(run_dir)
    length = cfg.max_length or trained_max_length(run_dir)
    probs = predict_proba(loaded.model, loaded, frame["text"].astype(str).tolist(), max_length=length)
    names = {int(k): str(v) for k, v in loaded.model.config.id2label.items()}
    return frame.assign(pred=[names[i] for i in probs.argmax(-1).tolist()]), loaded


def case_study(
    run_a: str | Path,
    run_b: str | Path | None = None,
    data: Any = None,
    split: str = "test",
    cfg: AttributionConfig | dict | None = None,
    k: int = 10,
    min_count: int = 2,
    max_rows: int | None = 300,
    on_progress: Callable[[str, int, int], None] | None = None,
    progress: bool | None = None,
) -> CaseStudy:
    """Attributions, top words, group overlap and (with run_b) the comparison, for the report.

    Args:
        run_a: the run studied (e.g. the sparse run): its folder, ``FinetuneResult`` or registry record.
        run_b: an optional second run on the same rows (e.g. full finetuning, or another seed).
        data: rows to use instead of the runs' predictions.csv (a DataFrame with columns text and label, an
            ``AnnotatedData`` or a data path, whose ``split`` is read). With run_b, both runs first predict every row
            (a forward pass each, far cheaper than attributing), so that disagreements come first and the
            agreement covers every row, as with predictions.csv.
        split: which split of ``data`` is read (an ``AnnotatedData`` or a path), and the attribution cache's name.
        cfg: the attribution settings (an ``AttributionConfig`` or a dict of its fields): steps, target, length.
        k: top words kept per label.
        min_count: a word counts among a label's top words when it occurs at least this many times under it.
        max_rows: attribute at most this many rows (``select_rows``: disagreements first, then spread over the
            labels); None = all.
        on_progress: called with (phase, rows done, rows) while each run's rows are attributed ("attributing
            run A (sparse-b0.01-s0)"), the rows its cache lacks (0.4 s a row on the default model's CPU).
        progress: a progress bar (tqdm) over the same; None (default): shown when no ``on_progress`` is given.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 (or None for every row), got {max_rows}.")
    cfg = config_from(cfg, AttributionConfig, "case_study")
    data = rows_of(data, split)
    run_a, run_b = finished_run(run_a), finished_run(run_b) if run_b not in (None, "") else None  # "": no run B
    with phase_bar(progress, on_progress) as report:
        return _study(run_a, run_b, data, split, cfg, k, min_count, max_rows, report)


def _study(run_a: Path, run_b: Path | None, data: pd.DataFrame | None, split: str, cfg: AttributionConfig, k: int,
           min_count: int, max_rows: int | None, report: Callable[[str, int, int], None]) -> CaseStudy:
    """``case_study`` once its arguments are checked; ``report`` hears each run's attribution progress."""
    data_a = data_b = data
    loaded_a = None
    if run_b is not None and data is not None:
        frame = split_frame(run_a, split, data)
        data_b = _with_predictions(run_b, frame, cfg)[0]  # B's model is freed before A's loads (reloaded later)
        data_a, loaded_a = _with_predictions(run_a, frame, cfg)
    frame_b = split_frame(run_b, split, data_b) if run_b is not None else None
    frame_a = split_frame(run_a, split, data_a)
    if frame_b is not None:
        check_same_rows(frame_a, frame_b)
    rows = select_rows(frame_a, frame_b, max_rows)
    a = attribute_split(run_a, split, data_a, cfg, rows, loaded=loaded_a,
                        on_progress=lambda done, total: report(f"attributing run A ({run_a.name})", done, total))
    loaded_a = None  # one model in memory at a time
    groups_a = load_task_tokens(run_a)
    split_a = word_splitter(run_a) if groups_a else None  # the groups' pieces are run A's tokenizer's
    top_a = mark_mined(top_words(a, k, min_count), groups_a, split_a)
    study = CaseStudy(a=a, top_a=top_a, groups_a=groups_a, from_data=data is not None, target=cfg.target)
    overlaps = [group_overlap(top_a, groups_a, k).assign(run="a")]
    if run_b is not None:
        b = attribute_split(run_b, split, data_b, cfg, rows,
                            on_progress=lambda done, total: report(f"attributing run B ({run_b.name})", done, total))
        study.b, study.groups_b = b, load_task_tokens(run_b)
        # The sparse run's groups are the reference for both models; fall back on run b's own groups.
        reference, splitter = (groups_a, split_a) if groups_a else (study.groups_b, word_splitter(run_b))
        study.top_b = mark_mined(top_words(b, k, min_count), reference, splitter if reference else None)
        study.comparison = compare_runs(a, b)
        overlaps.append(group_overlap(study.top_b, reference, k).assign(run="b"))
    study.overlap = pd.concat(overlaps, ignore_index=True)
    return study
