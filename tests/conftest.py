"""Shared fixtures: a tiny random BERT (built from a config, no download), small data, a run root."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE_DATA = ROOT / "sample_data"


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, every: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds (monotonic) have passed; whether it came true.

    A generous deadline costs nothing when the test passes, and a busy 2-core CI machine needs it: assert the result
    (``assert wait_until(...), "what never happened"``) rather than sleeping a fixed time and hoping."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(every)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _runs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own run root and cache, so nothing leaks into ./runs."""
    root = tmp_path / "runs"
    monkeypatch.setenv("CLM_EXPLORE_RUNS", str(root))
    monkeypatch.setenv("CLM_EXPLORE_CACHE", str(tmp_path / "cache"))
    return root


def banking77_slice():
    """A small 4-label slice of banking77 (train 160, validation 40, test 40 rows)."""
    from clm_explore.data import AnnotatedData

    df = pd.read_csv(SHARED_DATA / "banking77" / "train.csv", dtype=str)
    keep = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"]
    df = df[df["label"].isin(keep)]
    parts = [g.head(60) for _, g in df.groupby("label")]
    train = pd.concat([p.iloc[:40] for p in parts]).reset_index(drop=True)
    val = pd.concat([p.iloc[40:50] for p in parts]).reset_index(drop=True)
    test = pd.concat([p.iloc[50:60] for p in parts]).reset_index(drop=True)
    return AnnotatedData(train, val, test, sorted(keep), source="banking77-slice")


@pytest.fixture
def tiny_data():
    return banking77_slice()


@pytest.fixture(scope="module")
def tiny_data_module():
    """``tiny_data`` shared by a module whose tests read one expensive run."""
    return banking77_slice()


@pytest.fixture
def tiny(tiny_data):
    """A fresh tiny random BERT + tokenizer with a head for tiny_data's labels."""
    from clm_explore.modeling import load_model

    return load_model("tiny-random", tiny_data.labels, seed=0)


@pytest.fixture
def data_dir(tiny_data, tmp_path: Path) -> Path:
    """tiny_data written as a folder of train/validation/test CSV files (what the CLI reads)."""
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        tiny_data.split(split).to_csv(folder / f"{split}.csv", index=False)
    return folder


@contextmanager
def held_by_another_process(lock: str, path: Path) -> Iterator[int]:
    """The lock ``lock`` of clm_explore (``module:function``, a context manager taking a folder) held on ``path`` by a
    process of its own, as another run or bench would hold it; yields that process's pid, and ends it after."""
    module, function = lock.split(":")
    code = (f"import sys, time; from pathlib import Path; from {module} import {function}\n"
            f"with {function}(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
