"""Classification metrics of a run (method.md section 6)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
from collections.abc import Iterator

import numpy as np
import psutil
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def classification_metrics(gold: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-label F1 and the confusion matrix (rows gold, columns predicted).

    Macro-F1 averages the F1 of the labels the test split holds (of train's labels), so every run scored on one
    test split averages the same labels: a row predicted as a label the split lacks costs its own label's F1, not
    a whole label's F1 of 0 more in the average (the metrics review: one such row read 0.950 where a run as
    accurate read 0.995). A label the test split lacks has no F1 to average (8 of hint3_curekart's 28 are not in
    its test split). Per-label F1 lists the labels in the gold labels or the predictions.

    Args:
        gold: (rows,) int label ids; -1 marks a label unseen in train (always counted wrong).
        pred: (rows,) int predicted ids.
        labels: label names in id order.
    """
    present = _labels_present(gold, pred)
    per_label = f1_score(gold, pred, labels=present, average=None, zero_division=0)
    averaged = _labels_averaged(gold)  # none: no test row has a train label, every row counts wrong
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=averaged, average="macro", zero_division=0)) if averaged else 0.0,
        "macro_f1_labels": len(averaged),
        "per_label_f1": {labels[i]: float(f) for i, f in zip(present, per_label, strict=True)},
        "confusion": _confusion(gold, pred, len(labels)),
        "labels": list(labels),
        "test_rows": len(gold),
        **_unseen_row(gold, pred, len(labels)),
    }


def _confusion(gold: np.ndarray, pred: np.ndarray, n_labels: int) -> list[list[int]]:
    """Counts of (gold, predicted) over the rows whose gold label train had. Counted here: scikit-learn's
    ``confusion_matrix`` refuses a test split none of whose labels train had (a run then failed after training)."""
    gold, pred = np.asarray(gold), np.asarray(pred)
    known = gold >= 0
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (gold[known], pred[known]), 1)
    return matrix.tolist()


UNSEEN_LABEL_ROW = "(label not in train)"
"""The confusion matrix's last row, where the test split holds labels that train never had."""


def _unseen_row(gold: np.ndarray, pred: np.ndarray, n_labels: int) -> dict:
    """``confusion_unseen``: what the test rows of labels unseen in train were predicted as (counts per label id);
    nothing when there are none. The square matrix has no row for them."""
    unseen = np.asarray(gold) == -1
    if not unseen.any():
        return {}
    return {"confusion_unseen": np.bincount(np.asarray(pred)[unseen], minlength=n_labels).tolist()}


CONFUSION_ROW_PX = 22
"""Height of a confusion matrix's row, tall enough for its label's name (the app's and the report's)."""
SIDE_BY_SIDE_LABELS = 12
"""Two confusion matrices of at most this many labels stand side by side; larger ones one above the other, each
the page's width (side by side, 20 labels' names were cut and the matrices shrank to slivers at 800 px)."""
CONFUSION_COUNTED_LABELS = 20
"""Drawn confusion matrices of at most this many labels print each cell's count in it (the app's and the report's):
by colour alone the counts were unreadable to a demo's audience; more labels leave no room for them."""


def confusion_table(metrics: dict) -> tuple[list[list[int]], list[str], list[str]] | None:
    """A run's confusion matrix as ``(counts, predicted labels, gold labels)``, rows gold; the test rows of labels
    unseen in train (``confusion_unseen``) form a last row, so the counts add up to ``test_rows``. None when the
    metrics hold no matrix."""
    matrix, labels = metrics.get("confusion"), metrics.get("labels")
    if not matrix or not labels:
        return None
    gold = [str(x) for x in labels]
    unseen = metrics.get("confusion_unseen")
    if unseen:
        return [*matrix, list(unseen)], list(gold), [*gold, UNSEEN_LABEL_ROW]
    return list(matrix), list(gold), gold


def _labels_present(gold: np.ndarray, pred: np.ndarray) -> list[int]:
    """Label ids in the gold labels (not -1, unseen in train) or the predictions, sorted."""
    return sorted({int(g) for g in gold if g >= 0} | {int(p) for p in pred})


def _labels_averaged(gold: np.ndarray) -> list[int]:
    """The label ids macro-F1 averages: those of the gold labels (not -1, unseen in train), sorted."""
    return sorted({int(g) for g in gold if g >= 0})


def out_of_scope_metrics(gold: np.ndarray, pred: np.ndarray, test_prob: np.ndarray, validation_prob: np.ndarray,
                         quantile: float | None, n_labels: int, threshold: float | None = None) -> dict | None:
    """Scores of abstention when the test split holds rows whose label train never had (out-of-scope queries,
    such as HINT3's ``NO_NODES_DETECTED``); None when it holds none.

    A prediction abstains ("out of scope") when its top probability is below the threshold: the ``quantile``
    of the validation rows' top probabilities (rows of train's labels: the caller leaves the others out), so about
    that share of in-scope queries would be turned away.
    The threshold is chosen without test rows, and without any out-of-scope example (train has none).

    Args:
        gold: (rows,) test label ids, -1 for a label unseen in train.
        pred: (rows,) predicted ids (argmax).
        test_prob: (rows,) top probability per test row.
        validation_prob: (validation rows,) top probability per validation row; empty = no threshold.
        quantile: share of validation rows below the threshold, in (0, 1).
        n_labels: labels of train; "out of scope" is label id ``n_labels`` in the macro-F1.
        threshold: a threshold chosen before (``evaluate``: the run's own); then ``validation_prob`` is not read.

    Returns:
        ``auroc`` (top probability ranking out-of-scope rows below in-scope ones; needs no threshold),
        ``in_scope_accuracy`` (in-scope rows, no abstention), and with a threshold ``accuracy`` and
        ``macro_f1`` over the test split's labels, "out of scope" among them (as ``classification_metrics``),
        ``oos_recall``, ``oos_precision``, ``in_scope_rejected``.
    """
    unseen = gold == -1
    if not unseen.any():
        return None
    out: dict = {"rows": int(unseen.sum()), "quantile": quantile, "threshold": None,
                 "auroc": float(roc_auc_score(unseen, -test_prob)) if not unseen.all() else None,
                 "in_scope_accuracy": float((pred == gold)[~unseen].mean()) if not unseen.all() else None}
    if threshold is None:
        if validation_prob.size == 0 or quantile is None:
            return out
        threshold = float(np.quantile(validation_prob, quantile))
        out["validation_rows"] = int(validation_prob.size)  # a quantile of 33 rows is rough: said with it
    abstain = test_prob < threshold
    gold_open, pred_open = np.where(unseen, n_labels, gold), np.where(abstain, n_labels, pred)
    averaged = _labels_averaged(gold_open)
    out.update(threshold=threshold, accuracy=float((gold_open == pred_open).mean()),
               macro_f1=float(f1_score(gold_open, pred_open, labels=averaged, average="macro", zero_division=0)),
               oos_recall=float(abstain[unseen].mean()),
               oos_precision=float(unseen[abstain].mean()) if abstain.any() else 0.0,
               in_scope_rejected=float(abstain[~unseen].mean()) if not unseen.all() else 0.0)
    return out


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's ``malloc_trim``).

    On CPU the peak is the growth of the process's RSS; without this, what an earlier phase (the scoring
    pass, the head warm-up) freed but the allocator kept would be reused silently and not counted, so the
    figure would depend on the preparation rather than on what training needs.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS keeps what the allocator holds
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak extra memory while training: CUDA's allocator peak, or sampled process RSS on CPU (measured
    from a trimmed heap, see ``release_free_memory``)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            release_free_memory()
            self.process = psutil.Process(os.getpid())
            self.start = self.process.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            if not self._paused.is_set():
                self.peak = max(self.peak, self.process.memory_info().rss - self.start)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave what runs inside out of the peak (an epoch's validation pass, at its own batch size: training's
        memory is what methods are compared on). Its freed memory is returned before measuring resumes."""
        if self.device.type == "cuda":
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) - self.start)
        self._paused.set()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            else:
                release_free_memory()
            self._paused.clear()

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) - self.start)
        else:
            self._stop.set()
            if self._thread:
                self._thread.join()

    @property
    def mb(self) -> float:
        return self.peak / 2**20
