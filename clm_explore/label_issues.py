"""Likely label errors: rows whose annotated label their own text disputes.

Confident learning (Northcutt, Jiang and Chuang, 2021), the rule cleanlab's ``find_label_issues`` applies with
``filter_by='confident_learning'`` (its default, 'prune_by_noise_rate', removes a calibrated count per pair of
labels instead; ``confident_other_label`` names the one difference). Every row gets out-of-fold class
probabilities from a linear probe on the frozen model's features (mean of the last layer's token states,
standardised; scikit-learn's logistic regression), with the copies of a text kept in one fold, so no row is judged
by a probe that saw it or its copy. A label's threshold is the mean probability its own rows give it; a row's
guess is the one label that reaches its threshold, or its most probable label when several do. A row is flagged
when its guess is another label and its most probable label is not its own either: the probe is confidently sure
of another label. Rows are ranked by the probability of their own label (self-confidence), lowest first.

- ``find_label_issues(loaded, data, cfg) -> LabelIssues``: ``.issues`` (a row per flagged row: split, row, text,
  label, suggested, label_prob, suggested_prob), ``.checked`` rows, ``.notes``, ``.probe_accuracy``.
- ``relabelled(data, accepted_issues) -> AnnotatedData``: the suggestions a person accepted, applied;
  ``splits_zip(data)``: the splits as one zip of CSV files, to download and train on.

It needs no finetuning (one forward pass over the audited rows), so it runs before any training: on the data an
annotator uploaded, before it teaches a model its mistakes.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clm_explore.batches import collate, cut_texts_note, cutting, encode, longer_read_advice
from clm_explore.config import ConfigError, LabelAuditConfig, config_from
from clm_explore.data import AnnotatedData, DataError, csv_text, load_data
from clm_explore.modeling import LoadedModel, autocast_dtype, resolve_device, usable_positions
from clm_explore.progress_bar import phase_bar

Progress = Callable[[str, int, int], None]
"""A progress callback: (phase, done, total)."""

ISSUE_COLUMNS = ["split", "row", "text", "label", "suggested", "label_prob", "suggested_prob"]


@dataclass
class LabelIssues:
    """The audit's answer: the flagged rows, most disputed first, and what was checked."""

    issues: pd.DataFrame
    """A row per flagged row: split, row (its position in that split), text, label (as annotated), suggested (the
    label the probe is confident of), label_prob and suggested_prob (out-of-fold probabilities)."""
    checked: int
    """Rows audited (those of labels with at least ``folds`` different texts in the audited splits)."""
    probe_accuracy: float
    """Out-of-fold accuracy of the probe over the audited rows: how far its disagreement can be trusted."""
    seconds: float
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"LabelIssues({len(self.issues)} of {self.checked:,} rows flagged, probe accuracy "
                f"{self.probe_accuracy:.3f}, {self.seconds:.1f} s)")

    def to_records(self) -> list[dict]:
        return self.issues.to_dict(orient="records")


def find_label_issues(loaded: LoadedModel, data: AnnotatedData, cfg: LabelAuditConfig | dict | None = None,
                      device: str | None = None, on_progress: Progress | None = None,
                      progress: bool | None = None) -> LabelIssues:
    """Rows of ``data`` (the splits ``cfg.splits``) whose label is likely wrong, by confident learning over
    out-of-fold probabilities of a linear probe on ``loaded``'s frozen features (see the module's docstring).

    Args:
        loaded: any model ``load_model`` gives (its head is not used).
        data: the annotated splits.
        cfg: folds, length, the probe's regularization, the splits audited.
        device: where the forward pass runs ('auto': CUDA when present; the model is moved back afterwards);
            None: where the model is.
        on_progress: called as (phase, done, total): "reading the texts" (rows), then "probing the folds" (folds).
        progress: a progress bar per phase (as ``finetune``'s); None shows one when no ``on_progress`` listens.

    Raises:
        TooFewRowsError: (a ``DataError``) fewer than two labels with a text per fold in the audited splits, or
            folds that cannot spread them.
    """
    if not isinstance(loaded, LoadedModel) or not isinstance(data, AnnotatedData):
        raise TypeError(f"find_label_issues(loaded, data): a LoadedModel (load_model) and an AnnotatedData "
                        f"(load_data); got {type(loaded).__name__} and {type(data).__name__}")
    cfg = config_from(cfg, LabelAuditConfig, "find_label_issues")
    # texts cut as the runs it serves cut them; the caller's model as it was after
    with phase_bar(progress, on_progress) as report, cutting(loaded.tokenizer, cfg.truncation_side):
        return _find_label_issues(loaded, data, cfg, device, report)


def _find_label_issues(loaded: LoadedModel, data: AnnotatedData, cfg: LabelAuditConfig, device: str | None,
                       on_progress: Progress | None) -> LabelIssues:
    positions = usable_positions(loaded.model.config)
    if isinstance(positions, int) and cfg.max_length > positions:  # torch's "expanded size" error, said plainly
        raise ConfigError(f"max_length {cfg.max_length} is above the {positions} positions a text may take in this "
                          f"model: read at most {positions} sub-tokens per text.")
    started = time.perf_counter()
    rows, notes = audited_rows(data, cfg)
    features = text_features(loaded, rows["text"].tolist(), cfg, device, on_progress)
    probs, classes = out_of_fold_probabilities(features, rows["label"].to_numpy(), rows["text"].to_numpy(), cfg,
                                               on_progress)
    given = np.searchsorted(classes, rows["label"].to_numpy())
    suggested = confident_other_label(probs, given)
    flagged = np.flatnonzero(suggested >= 0)
    issues = rows.iloc[flagged][["split", "row", "text", "label"]].assign(
        suggested=classes[suggested[flagged]],
        label_prob=probs[flagged, given[flagged]],
        suggested_prob=probs[flagged, suggested[flagged]],
    )
    issues = issues.sort_values("label_prob", kind="stable").reset_index(drop=True)[ISSUE_COLUMNS]
    accuracy = float((probs.argmax(1) == given).mean())
    longer = longer_read_advice(cfg.max_length, positions, "a longer max_length", cfg.truncation_side,
                                "truncation_side 'left'")
    # where to set them, in each face's words
    longer = (longer.replace("at a cost in time", "at a cost in time (audit --max-length; the app's label check reads "
                             "the Finetune form's Sub-tokens read per text)")
              .replace("their ends instead", "their ends instead (audit --truncation-side left; in the app, the "
                       "Finetune form's 'Long texts keep their' set to end)"))
    if cut := cut_texts_note(loaded.tokenizer, rows["text"].tolist(), cfg.max_length, "the probe", longer):
        notes.append(cut)
    return LabelIssues(issues, len(rows), accuracy, time.perf_counter() - started, notes)


class TooFewRowsError(DataError):
    """The audited splits hold fewer than two labels with a different text per fold: nothing to cross-validate."""


def audited_rows(data: AnnotatedData, cfg: LabelAuditConfig) -> tuple[pd.DataFrame, list[str]]:
    """The rows audited (split, row, text, label), pooled over ``cfg.splits``: at most ``cfg.max_rows`` of them (a
    seeded sample above it), those of train's labels with a different text per fold, and notes on what was left out.
    A label train never has (HINT3's NO_NODES_DETECTED) names out-of-scope queries that runs score by abstaining: as
    one more class the probe suggested it for in-scope training rows, and accepting one moved the out-of-scope label
    into training (the real-model review: 13 train and validation rows on hint3_sofmattress).

    Raises:
        TooFewRowsError: fewer than two labels with a different text per fold.
    """
    rows = pd.concat([data.split(s).assign(split=s, row=np.arange(len(data.split(s)))) for s in cfg.splits],
                     ignore_index=True)
    notes = []
    if len(rows) > cfg.max_rows:
        notes.append(f"{cfg.max_rows:,} of {len(rows):,} rows audited (a seeded sample; LabelAuditConfig.max_rows)")
        rows = rows.sample(cfg.max_rows, random_state=cfg.seed).sort_index()
    outside = sorted(set(rows["label"]) - set(data.train["label"]))
    if outside:
        notes.append(f"{int(rows['label'].isin(outside).sum()):,} row(s) of {len(outside)} label(s) train never has "
                     f"were not audited, nor are they suggested (out-of-scope queries, which runs answer by abstaining): "
                     f"{', '.join(outside[:5])}{', ...' if len(outside) > 5 else ''}")
        rows = rows[~rows["label"].isin(outside)]
    texts = rows.groupby("label")["text"].nunique()  # the folds keep a text's copies together: count texts
    rare = sorted(texts[texts < cfg.folds].index)
    if rare:
        left = int(rows["label"].isin(rare).sum())
        notes.append(f"{left:,} row(s) of {len(rare)} label(s) with fewer than {cfg.folds} different texts were not "
                     f"audited: {', '.join(rare[:5])}{', ...' if len(rare) > 5 else ''}")
    rows = rows[~rows["label"].isin(rare)]
    if rows["label"].nunique() < 2:
        splits = " and ".join([", ".join(cfg.splits[:-1]), cfg.splits[-1]] if len(cfg.splits) > 1 else cfg.splits)
        raise TooFewRowsError(f"The label audit needs two labels with at least {cfg.folds} different texts each (one "
                              f"per fold); the {splits} rows have {rows['label'].nunique()} such label(s).")
    return rows.reset_index(drop=True), notes


@torch.no_grad()
def text_features(loaded: LoadedModel, texts: list[str], cfg: LabelAuditConfig,
                  device: str | None = None, on_progress: Progress | None = None) -> np.ndarray:
    """(texts, hidden) float32: the mean of the last layer's token states of each text (padding left out), as
    sentence encoders pool them. The backbone alone runs: the head plays no part. ``device`` None: the model's."""
    backbone = loaded.model.base_model
    home = next(backbone.parameters()).device
    dev = home if device is None else resolve_device(device)
    was_training = backbone.training
    ids = encode(loaded, texts, cfg.max_length)
    order = np.argsort([len(x) for x in ids], kind="stable")
    dtype = autocast_dtype(dev)
    out: np.ndarray | None = None
    try:
        backbone.to(dev).eval()
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            input_ids, mask = collate(ids, idx, loaded.tokenizer.pad_token_id)
            input_ids, mask = input_ids.to(dev), mask.to(dev)
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                states = backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
            if out is None:  # the states' width: not always config.hidden_size (OPT projects its embeddings)
                out = np.zeros((len(texts), states.shape[-1]), dtype=np.float32)
            weights = mask.unsqueeze(-1).float()
            out[idx] = ((states * weights).sum(1) / weights.sum(1).clamp_min(1)).cpu().numpy()
            if on_progress is not None:
                on_progress("reading the texts", min(start + cfg.batch_size, len(order)), len(order))
    finally:
        backbone.to(home).train(was_training)  # a caller's model comes back where and as it was
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, texts: np.ndarray,
                              cfg: LabelAuditConfig, on_progress: Progress | None = None
                              ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, classes) probabilities, each row's from the probe of the fold that left it out (and every copy of its
    text: a copy would vouch for its own label), and the classes (sorted) that index the columns."""
    classes = np.unique(labels)
    probs = np.zeros((len(labels), len(classes)))
    folds = StratifiedGroupKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
    for fold, (fit, held) in enumerate(folds.split(features, labels, groups=pd.factorize(texts)[0])):
        if on_progress is not None:
            on_progress("probing the folds", fold, cfg.folds)
        if len(np.unique(labels[fit])) < 2:  # the folds could not spread the labels' texts (few, unevenly copied)
            raise TooFewRowsError("The label audit could not spread the texts over its folds with two labels in each "
                                  "probe's rows; fewer folds (LabelAuditConfig.folds, --folds) may.")
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.regularization, max_iter=1000))
        probe.fit(features[fit], labels[fit])
        columns = np.searchsorted(classes, probe.classes_)  # a label whose rows all fell in one fold has no column
        probs[np.ix_(held, columns)] = probe.predict_proba(features[held])
    if on_progress is not None:
        on_progress("probing the folds", cfg.folds, cfg.folds)
    return probs, classes


def confident_other_label(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Per row, the label the probabilities are confidently sure of when it is not the given one, else -1.

    As cleanlab's ``compute_confident_joint`` and its confident_learning filter: a label's threshold is the mean
    probability its own rows give it; a row's confident labels are those whose probability reaches their threshold
    (within 1e-6); its label guess is its one confident label, or its most probable label when several are
    confident. A row is flagged when the guess is another label and its most probable label is not its own either.
    One difference: a label its own rows give no probability is never confident (cleanlab's threshold of 0 would make
    every row confident of it, and suggest it at probability 0).
    """
    n_classes = probs.shape[1]
    thresholds = np.array([probs[given == k, k].mean() if (given == k).any() else np.inf for k in range(n_classes)])
    thresholds = np.where(thresholds > 0, thresholds, np.inf)
    confident = probs >= thresholds - 1e-6
    count = confident.sum(1)
    top = probs.argmax(1)
    guess = np.where(count > 1, top, confident.argmax(1))
    return np.where((count > 0) & (guess != given) & (top != given), guess, -1)


def relabelled(data: AnnotatedData, accepted: pd.DataFrame) -> AnnotatedData:
    """``data`` with the suggested label of every ``accepted`` row (rows of ``LabelIssues.issues``: split, row,
    suggested) in place of its own, checked again as ``load_data`` checks a dict of splits (the label list may
    change: a label only test held may now be a train label, one no row holds any more is gone)."""
    splits = {name: data.split(name).copy() for name in ("train", "validation", "test")}
    for split, row, label in zip(accepted["split"], accepted["row"], accepted["suggested"], strict=True):
        frame = splits[split]
        frame.iloc[int(row), frame.columns.get_loc("label")] = label
    fixed = load_data(splits)
    fixed.source = f"{data.source} ({len(accepted)} label(s) changed by the audit)"
    return fixed


def splits_csv(data: AnnotatedData) -> bytes:
    """The three splits as one CSV file (text, label, split), which ``load_data`` and the app's upload read back
    with the same splits (``DataConfig.split_col``)."""
    parts = [data.split(name)[["text", "label"]].assign(split=name) for name in ("train", "validation", "test")]
    return csv_text(pd.concat(parts, ignore_index=True)).encode("utf-8")


def splits_zip(data: AnnotatedData) -> bytes:
    """The three splits as train.csv, validation.csv and test.csv (text, label) in one zip: a folder
    ``load_data`` reads as it is, splits and all."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("train", "validation", "test"):
            archive.writestr(f"{name}.csv", csv_text(data.split(name)[["text", "label"]]))
    return buffer.getvalue()
