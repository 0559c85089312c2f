"""Annotated data intake. MINIMAL PLACEHOLDER: the data helper replaces the loading internals.

Contract (other modules rely on it):
- ``load_data(path, cfg) -> AnnotatedData``; ``AnnotatedData.train/.validation/.test`` are DataFrames
  with exactly the columns ``text`` (str) and ``label`` (str), index 0..n-1 (the row id);
- ``AnnotatedData.labels`` lists the train labels, sorted; ``label_ids(split)`` maps to ints;
- ``DataError`` carries a one-paragraph message for the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from clm_explore.config import DataConfig

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """The data cannot be used; the message names the file, the row and what is wrong."""


@dataclass
class AnnotatedData:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> pd.DataFrame:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    def label_ids(self, name: str) -> np.ndarray:
        """(rows,) int64 label ids of a split; labels unseen in train map to -1."""
        index = {label: i for i, label in enumerate(self.labels)}
        return np.array([index.get(x, -1) for x in self.split(name)["label"]], dtype=np.int64)


def load_data(path: str | Path, cfg: DataConfig | None = None) -> AnnotatedData:
    cfg = cfg or DataConfig()
    path = Path(path)
    frames = {}
    for split in SPLITS:
        f = path / f"{split}.csv"
        if f.is_file():
            frames[split] = pd.read_csv(f, dtype=str, keep_default_na=False)[["text", "label"]]
    train = frames["train"]
    if "validation" not in frames:
        train, val = train_test_split(train, test_size=cfg.validation_fraction, random_state=cfg.seed, stratify=train["label"])
        frames["validation"] = val
    frames["train"] = train
    frames = {k: v.reset_index(drop=True) for k, v in frames.items()}
    return AnnotatedData(frames["train"], frames["validation"], frames["test"], sorted(frames["train"]["label"].unique()), str(path))
