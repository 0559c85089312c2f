"""PeakMemory on CPU: RSS growth measured from a trimmed heap."""

from __future__ import annotations

import time

import torch

from clm_explore.metrics import PeakMemory

BLOCK = 16 * 1024  # float32 values: 64 KB, small enough to come from malloc's heap rather than mmap


def test_peak_memory_counts_what_is_allocated_inside():
    with PeakMemory(torch.device("cpu")) as memory:
        held = torch.ones(16 * 2**20)  # 64 MB, written, so resident
        time.sleep(0.05)  # the sampler runs every 5 ms
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
        time.sleep(0.05)
    assert memory.mb >= 80
    del again, kept
