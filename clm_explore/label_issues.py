"""Likely label errors: rows whose annotated label their own text disputes.

Confident learning (Northcutt, Jiang and Chuang, 2021; cleanlab's ``find_label_issues`` default): every row gets
out-of-fold class probabilities from a linear probe on the frozen model's features (mean of the last layer's token
states, standardised; scikit-learn's logistic regression), so no row is judged by a probe that saw it. A label's
threshold is the mean probability its own rows give it. A row is flagged when the most probable of the labels
whose probability reaches their threshold is not its own: the probe is confidently sure of another label. Rows
are ranked by the probability of their own label (self-confidence), lowest first.

- ``find_label_issues(loaded, data, cfg) -> LabelIssues``: ``.issues`` (a row per flagged row: split, row, text,
  label, suggested, label_prob, suggested_prob), ``.checked`` rows, ``.notes``, ``.probe_accuracy``.

It needs no finetuning (one forward pass over the audited rows), so it runs before any training: on the data an
annotator uploaded, before it teaches a model its mistakes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clm_explore.batches import collate, encode
from clm_explore.config import LabelAuditConfig
from clm_explore.data import AnnotatedData
from clm_explore.modeling import LoadedModel, autocast_dtype, resolve_device

ISSUE_COLUMNS = ["split", "row", "text", "label", "suggested", "label_prob", "suggested_prob"]


@dataclass
class LabelIssues:
    """The audit's answer: the flagged rows, most disputed first, and what was checked."""

    issues: pd.DataFrame
    """A row per flagged row: split, row (its position in that split), text, label (as annotated), suggested (the
    label the probe is confident of), label_prob and suggested_prob (out-of-fold probabilities)."""
    checked: int
    """Rows audited (those of labels with at least ``folds`` rows in the audited splits)."""
    probe_accuracy: float
    """Out-of-fold accuracy of the probe over the audited rows: how far its disagreement can be trusted."""
    seconds: float
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"LabelIssues({len(self.issues)} of {self.checked:,} rows flagged, probe accuracy "
                f"{self.probe_accuracy:.3f}, {self.seconds:.1f} s)")

    def to_records(self) -> list[dict]:
        return self.issues.to_dict(orient="records")


def find_label_issues(loaded: LoadedModel, data: AnnotatedData, cfg: LabelAuditConfig | None = None,
                      device: str | None = None) -> LabelIssues:
    """Rows of ``data`` (the splits ``cfg.splits``) whose label is likely wrong, by confident learning over
    out-of-fold probabilities of a linear probe on ``loaded``'s frozen features (see the module's docstring).

    Args:
        loaded: any model ``load_model`` gives (its head is not used).
        data: the annotated splits.
        cfg: folds, length, the probe's regularization, the splits audited.
        device: where the forward pass runs ('auto': CUDA when present); None: where the model is (a model shared
            with other callers, the app's, is never moved).
    """
    if not isinstance(loaded, LoadedModel) or not isinstance(data, AnnotatedData):
        raise TypeError(f"find_label_issues(loaded, data): a LoadedModel (load_model) and an AnnotatedData "
                        f"(load_data); got {type(loaded).__name__} and {type(data).__name__}")
    cfg = cfg or LabelAuditConfig()
    started = time.perf_counter()
    rows = pd.concat([data.split(s).assign(split=s, row=np.arange(len(data.split(s)))) for s in cfg.splits],
                     ignore_index=True)
    counts = rows["label"].value_counts()
    audited = rows["label"].map(counts).to_numpy() >= cfg.folds
    notes = []
    if not audited.all():
        rare = sorted(counts[counts < cfg.folds].index)
        notes.append(f"{(~audited).sum():,} row(s) of {len(rare)} label(s) with fewer than {cfg.folds} rows were not "
                     f"audited: {', '.join(rare[:5])}{', ...' if len(rare) > 5 else ''}")
    if len(set(rows.loc[audited, "label"])) < 2:
        raise ValueError(f"the label audit needs two labels with at least {cfg.folds} rows each (the folds); "
                         f"{len(rows):,} rows in {', '.join(cfg.splits)} have {int((counts >= cfg.folds).sum())}")
    features = text_features(loaded, rows["text"].tolist(), cfg, device)
    kept = rows[audited].reset_index(drop=True)
    probs, classes = out_of_fold_probabilities(features[audited], kept["label"].to_numpy(), cfg)
    given = np.searchsorted(classes, kept["label"].to_numpy())
    suggested = confident_other_label(probs, given)
    flagged = np.flatnonzero(suggested >= 0)
    issues = kept.iloc[flagged][["split", "row", "text", "label"]].assign(
        suggested=classes[suggested[flagged]],
        label_prob=probs[flagged, given[flagged]],
        suggested_prob=probs[flagged, suggested[flagged]],
    )
    issues = issues.sort_values("label_prob", kind="stable").reset_index(drop=True)[ISSUE_COLUMNS]
    accuracy = float((probs.argmax(1) == given).mean())
    return LabelIssues(issues, len(kept), accuracy, time.perf_counter() - started, notes)


@torch.no_grad()
def text_features(loaded: LoadedModel, texts: list[str], cfg: LabelAuditConfig,
                  device: str | None = None) -> np.ndarray:
    """(texts, hidden) float32: the mean of the last layer's token states of each text (padding left out), as
    sentence encoders pool them. The backbone alone runs: the head plays no part. ``device`` None: the model's."""
    backbone = loaded.model.base_model
    dev = next(backbone.parameters()).device if device is None else resolve_device(device)
    backbone.to(dev)
    was_training = backbone.training
    backbone.eval()
    ids = encode(loaded, texts, cfg.max_length)
    order = np.argsort([len(x) for x in ids], kind="stable")
    dtype = autocast_dtype(dev)
    out = np.zeros((len(texts), loaded.model.config.hidden_size), dtype=np.float32)
    try:
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            input_ids, mask = collate(ids, idx, loaded.tokenizer.pad_token_id)
            input_ids, mask = input_ids.to(dev), mask.to(dev)
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                states = backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
            weights = mask.unsqueeze(-1).float()
            out[idx] = ((states * weights).sum(1) / weights.sum(1).clamp_min(1)).cpu().numpy()
    finally:
        backbone.train(was_training)
    return out


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray,
                              cfg: LabelAuditConfig) -> tuple[np.ndarray, np.ndarray]:
    """(rows, classes) probabilities, each row's from the probe of the fold that left it out, and the classes
    (sorted) that index the columns."""
    classes = np.unique(labels)
    probs = np.zeros((len(labels), len(classes)))
    folds = StratifiedKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
    for fit, held in folds.split(features, labels):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.regularization, max_iter=1000))
        probe.fit(features[fit], labels[fit])
        columns = np.searchsorted(classes, probe.classes_)  # every label is in every fit: >= folds rows each
        probs[np.ix_(held, columns)] = probe.predict_proba(features[held])
    return probs, classes


def confident_other_label(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Per row, the label the probabilities are confidently sure of when it is not the given one, else -1.

    A label's threshold is the mean probability its own rows give it; a row's confident labels are those whose
    probability reaches their threshold, and the most probable of them is its confident label (cleanlab's
    confident joint). A row with none, or whose confident label is its own, is not flagged.
    """
    n_classes = probs.shape[1]
    thresholds = np.array([probs[given == k, k].mean() if (given == k).any() else np.inf for k in range(n_classes)])
    confident = np.where(probs >= thresholds - 1e-12, probs, -np.inf)
    best = confident.argmax(1)
    has_one = np.isfinite(confident.max(1))
    return np.where(has_one & (best != given), best, -1)
