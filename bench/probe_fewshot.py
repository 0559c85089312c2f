"""Probe of the few-shot targets (issue #4), not product code: variants of the row methods on a 10-shot grid,
scored on a development split that never holds a test row.

A 10-shot grid's own validation carve (10 rows per label, 59-70 rows on trec6 and snips) is too small to tell
variants apart. The development split here is every labelled row that is neither a training shot nor test:
the data set's validation split (carved from train with `load_data`'s defaults when it has none) plus the
training rows the shots left out, capped at DEV_ROWS (stratified). Each variant trains on the grid's shots
with the grid's epochs, one run per seed, and prints its development accuracy; test stays out of it, so a
variant is chosen here and then run on the grid's data (with test) once: `--test` as the first argument
trains on the same shots and scores the grid's test split instead (results to GRID/probes/test.tsv).

    python bench/probe_fewshot.py [--test] GRID NAME METHOD LR SEEDS [key=value ...]
    e.g. python bench/probe_fewshot.py bench/out/trec6-10shot-e30 rank sparse 5e-3 0,1,2,3,4 sensitivity.normalise=rank

Keys are FinetuneConfig fields, dotted for its parts (mask., sensitivity., mining.); values are parsed as
the field's current type. Results append to GRID/probes/dev.tsv.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from clm_explore.bench import stratified_cap
from clm_explore.config import DataConfig, FinetuneConfig
from clm_explore.data import load_data, write_csv
from clm_explore.training import finetune

DEV_ROWS = 600


def dev_folder(grid: Path) -> Path:
    """GRID/probes/data: train = the grid's shots, test = the development rows (built once)."""
    folder = grid / "probes" / "data"
    if (folder / "test.csv").exists():
        return folder
    bench = json.loads((grid / "bench.json").read_text())
    full = load_data(bench["data"], DataConfig())
    shots = pd.read_csv(grid / "data" / "train.csv")
    left = full.train[~full.train["text"].isin(set(shots["text"]))]
    dev = pd.concat([full.validation, left])[["text", "label"]]
    dev = stratified_cap(dev[~dev["text"].isin(set(full.test["text"]))], DEV_ROWS, 0)  # snips repeats texts
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(shots, folder / "train.csv")  # a text's lone carriage return quoted (data.csv_text)
    write_csv(pd.read_csv(grid / "data" / "validation.csv", keep_default_na=False), folder / "validation.csv")
    write_csv(dev, folder / "test.csv")
    return folder


def with_overrides(cfg: FinetuneConfig, pairs: list[str]) -> FinetuneConfig:
    """cfg with each key=value set; a dotted key sets a field of mask, sensitivity or mining."""
    for pair in pairs:
        key, value = pair.split("=", 1)
        part, _, name = key.rpartition(".")
        owner = getattr(cfg, part) if part else cfg
        current = getattr(owner, name)
        if value == "none":  # e.g. sensitivity.seed=none: the run's seed
            typed = None
        else:
            # A field off by default (dropout=None, mask.seed=None) takes a number: whole ones as int.
            kind = (lambda v: int(v) if v.lstrip("-").isdigit() else float(v)) if current is None else type(current)
            typed = value if isinstance(current, str) else (value == "true" if isinstance(current, bool) else kind(value))
        owner = dataclasses.replace(owner, **{name: typed})
        cfg = dataclasses.replace(cfg, **{part: owner}) if part else owner
    return cfg


def main(grid: str, name: str, method: str, lr: str, seeds: str, *pairs: str, split: str = "dev") -> None:
    grid_dir = Path(grid)
    data = load_data(dev_folder(grid_dir) if split == "dev" else grid_dir / "data")
    epochs = json.loads((grid_dir / "bench.json").read_text())["epochs"]
    accuracies = []
    for seed in map(int, seeds.split(",")):
        cfg = FinetuneConfig(method=method, lr=float(lr), epochs=epochs, seed=seed, device="cpu", eval_every_epoch=False)
        cfg = with_overrides(dataclasses.replace(cfg, mask=dataclasses.replace(cfg.mask, seed=seed)), list(pairs))
        result = finetune(data, cfg, grid_dir / "probes" / f"{'' if split == 'dev' else 'test-'}{name}-s{seed}",
                          overwrite=True, progress=False)  # a probe run again replaces its folder, as it always has
        accuracies.append(result.metrics["accuracy"])
    line = (f"{name}\t{method}\t{lr}\t{' '.join(pairs) or '-'}\t{split} {np.mean(accuracies):.4f} ± {np.std(accuracies, ddof=1):.4f}"
            f"\t{' / '.join(f'{a:.3f}' for a in accuracies)}\t{len(data.test)} rows")
    with open(grid_dir / "probes" / f"{split}.tsv", "a") as out:
        out.write(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--test":
        main(*sys.argv[2:], split="test")
    else:
        main(*sys.argv[1:])
