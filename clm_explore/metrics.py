"""Classification metrics of a run (method.md section 6)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading

import numpy as np
import psutil
import torch
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
            self.peak = max(self.peak, self.process.memory_info().rss - self.start)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self._stop.set()
            if self._thread:
                self._thread.join()

    @property
    def mb(self) -> float:
        return self.peak / 2**20
