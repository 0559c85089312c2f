"""PeakMemory on CPU: RSS growth measured from a trimmed heap; abstention scores for out-of-scope test rows."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from clm_explore.metrics import PeakMemory, out_of_scope_metrics
from tests.conftest import wait_until

BLOCK = 16 * 1024  # float32 values: 64 KB, small enough to come from malloc's heap rather than mmap


def test_peak_memory_counts_what_is_allocated_inside():
    with PeakMemory(torch.device("cpu")) as memory:
        held = torch.ones(16 * 2**20)  # 64 MB, written, so resident
        # The sampler runs every 5 ms, when a busy machine lets it: wait for its sample rather than a fixed time.
        assert wait_until(lambda: memory.mb >= 60, every=0.005), f"{memory.mb:.1f} MB seen of the 64 MB held"
    assert 60 <= memory.mb < 256
    del held


def test_memory_freed_before_the_measurement_is_not_reused_unseen():
    # Freed heap blocks kept by the allocator would be handed to the measured phase without any RSS
    # growth (a preparation phase's leftovers made training look nearly free); interleaved small blocks
    # that stay alive keep the heap from shrinking by itself.
    kept, freed = [], []
    for _ in range(3000):
        freed.append(torch.ones(BLOCK))
        kept.append(torch.ones(16))
    del freed
    with PeakMemory(torch.device("cpu")) as memory:
        again = [torch.ones(BLOCK) for _ in range(1500)]  # 94 MB
        # Reused unseen, RSS never grows and this times out (no fixed sleep that a starved sampler could miss).
        assert wait_until(lambda: memory.mb >= 80, every=0.005), f"{memory.mb:.1f} MB seen of the 94 MB made"
    assert memory.mb >= 80
    del again, kept


def test_out_of_scope_rows_count_right_only_when_the_prediction_abstains():
    gold = np.array([0, 1, -1, -1])
    pred = np.array([0, 0, 1, 0])
    top = np.array([0.9, 0.8, 0.3, 0.6])
    validation = np.array([0.5, 0.7, 0.9, 0.95, 1.0])  # 0.2-quantile: 0.5 + 0.8 * 0.2 = 0.66
    m = out_of_scope_metrics(gold, pred, top, validation, quantile=0.2, n_labels=2)
    assert m["threshold"] == pytest.approx(0.66)
    assert m["rows"] == 2 and m["quantile"] == 0.2
    # both unseen rows abstain (0.3, 0.6 < 0.66): right; row 0 right, row 1 wrong
    assert m["accuracy"] == pytest.approx(0.75)
    assert (m["oos_recall"], m["oos_precision"], m["in_scope_rejected"]) == (1.0, 1.0, 0.0)
    assert m["in_scope_accuracy"] == pytest.approx(0.5)
    assert m["auroc"] == pytest.approx(1.0)  # every unseen row is less confident than every seen one
    # F1 per label: 0 -> 2/3 (one right, one wrongly predicted), 1 -> 0, out of scope -> 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0 + 1) / 3)


def test_a_confident_out_of_scope_row_is_wrong_and_a_rejected_in_scope_row_is_wrong():
    gold = np.array([0, 1, -1])
    pred = np.array([0, 1, 1])
    top = np.array([0.2, 0.9, 0.95])
    m = out_of_scope_metrics(gold, pred, top, np.array([0.5, 0.5]), quantile=0.5, n_labels=2)
    assert m["accuracy"] == pytest.approx(1 / 3)  # row 0 rejected, row 2 accepted: only row 1 right
    assert (m["oos_recall"], m["oos_precision"], m["in_scope_rejected"]) == (0.0, 0.0, 0.5)
    assert m["auroc"] == pytest.approx(0.0)  # the unseen row is more confident than both seen ones


def test_out_of_scope_scores_need_unseen_rows_and_the_threshold_needs_validation():
    gold, pred, top = np.array([0, 1]), np.array([0, 0]), np.array([0.9, 0.4])
    assert out_of_scope_metrics(gold, pred, top, np.array([0.5]), 0.1, 2) is None
    m = out_of_scope_metrics(np.array([0, -1]), pred, top, np.zeros(0), 0.1, 2)
    assert m["threshold"] is None and "accuracy" not in m and m["auroc"] == pytest.approx(1.0)


def test_a_label_the_test_split_lacks_and_no_row_predicts_has_no_f1():
    from clm_explore.metrics import classification_metrics

    # Three train labels; test holds only a and b, every row right: macro-F1 1, not 2/3 with c counted as 0.
    m = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 1]), ["a", "b", "c"])
    assert m["macro_f1"] == 1.0 and m["per_label_f1"] == {"a": 1.0, "b": 1.0}
    # A row wrongly predicted as c: c gets its F1 of 0 in the per-label list, and b pays in the average, over the
    # test split's labels a and b; c is not averaged in (the metrics review: one such row read 0.950 beside 0.995).
    m = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 2]), ["a", "b", "c"])
    assert m["per_label_f1"] == pytest.approx({"a": 1.0, "b": 2 / 3, "c": 0.0})
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3) / 2) and m["macro_f1_labels"] == 2
    from sklearn.metrics import f1_score

    gold, stray = np.repeat(np.arange(20), 10), np.repeat(np.arange(20), 10)
    stray[0] = 25  # one row of 200 predicted as a train label the test split lacks
    macro = classification_metrics(gold, stray, [f"l{i}" for i in range(28)])["macro_f1"]
    assert macro == pytest.approx(f1_score(gold, stray, labels=list(range(20)), average="macro"))  # 0.9974
    assert macro > 0.99
    # No test row of a train label: nothing to average (CONTRACTS: the test split's train labels)
    none = classification_metrics(np.array([-1, -1, -1]), np.array([0, 1, 2]), ["a", "b", "c"])
    assert (none["macro_f1"], none["macro_f1_labels"]) == (0.0, 0)
    # With abstention: the out-of-scope label and the seen labels, not the absent third one.
    oos = out_of_scope_metrics(np.array([0, 1, -1]), np.array([0, 1, 0]), np.array([0.9, 0.9, 0.1]),
                               np.array([0.5, 0.5]), quantile=0.5, n_labels=3)
    assert oos["accuracy"] == 1.0 and oos["macro_f1"] == 1.0


class _CountedStop(threading.Event):
    """PeakMemory's stop event, counting the sampler's waits on it: one a turn of its loop (wait, then a sample)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


def test_a_paused_stretch_is_left_out_of_the_peak():
    memory = PeakMemory(torch.device("cpu"))
    memory._stop = turns = _CountedStop()

    def two_turns_of_the_sampler() -> None:
        # Two waits begun after now: a sample begun before now has ended, and a whole turn has run since.
        now = turns.waits
        assert wait_until(lambda: turns.waits >= now + 2, every=0.005), "the sampler stopped turning"

    with memory:
        with memory.paused():  # as an epoch's validation pass
            two_turns_of_the_sampler()  # no sample read before the pause lands after the 200 MB below
            big = torch.ones(50_000_000)  # 200 MB
            two_turns_of_the_sampler()  # had the pause been ignored, a sample would have held the 200 MB
            del big
        small = torch.ones(12_500_000)  # 50 MB, while training
        assert wait_until(lambda: memory.mb > 40, every=0.005), f"{memory.mb:.1f} MB seen of the 50 MB held"
        del small
    assert 40 < memory.mb < 150


def test_test_rows_of_labels_unseen_in_train_form_the_confusion_matrix_last_row():
    from clm_explore.metrics import UNSEEN_LABEL_ROW, classification_metrics, confusion_table
    from clm_explore.report import _confusion_figure

    # Two rows whose label train never had (-1), predicted as b and b: before, the matrix dropped them.
    m = classification_metrics(np.array([0, 1, -1, -1]), np.array([0, 1, 1, 1]), ["a", "b"])
    assert m["confusion_unseen"] == [0, 2]
    counts, predicted, gold = confusion_table(m)
    assert gold == ["a", "b", UNSEEN_LABEL_ROW] and predicted == ["a", "b"]
    assert sum(map(sum, counts)) == m["test_rows"] == 4
    assert list(_confusion_figure(m, "A").data[0].y) == gold
    plain = classification_metrics(np.array([0, 1]), np.array([0, 1]), ["a", "b"])
    assert "confusion_unseen" not in plain and confusion_table(plain)[2] == ["a", "b"]


def test_the_confusion_matrix_counts_as_scikit_learn_and_survives_a_test_split_train_never_labelled():
    from sklearn.metrics import confusion_matrix

    from clm_explore.metrics import classification_metrics

    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    gold[:20] = -1  # rows of labels train never had
    got = classification_metrics(gold, pred, ["a", "b", "c", "d"])
    assert got["confusion"] == confusion_matrix(gold, pred, labels=[0, 1, 2, 3]).tolist()
    unseen = classification_metrics(np.full(10, -1), np.array([0, 1] * 5), ["a", "b"])  # it raised ValueError
    assert unseen["accuracy"] == 0.0 and unseen["confusion"] == [[0, 0], [0, 0]]
    assert unseen["confusion_unseen"] == [5, 5]
