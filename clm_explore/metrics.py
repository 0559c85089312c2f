"""Classification metrics of a run (method.md section 6)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def classification_metrics(gold: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-label F1 and the confusion matrix (rows gold, columns predicted).

    Args:
        gold: (rows,) int label ids; -1 marks a label unseen in train (always counted wrong).
        pred: (rows,) int predicted ids.
        labels: label names in id order.
    """
    ids = list(range(len(labels)))
    per_label = f1_score(gold, pred, labels=ids, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=ids, average="macro", zero_division=0)),
        "per_label_f1": {name: float(f) for name, f in zip(labels, per_label, strict=True)},
        "confusion": confusion_matrix(gold, pred, labels=ids).tolist(),
        "labels": list(labels),
        "test_rows": len(gold),
    }
