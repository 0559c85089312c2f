"""Probe of the few-shot targets (issue #4), not product code: is the top rows' 10-shot gap to random rows in
how the budget is shared between the maps, or in which rows of a map are chosen?

The default mask and random rows differ in both. This probe keeps the default mask's row count in every map
and draws the rows inside each map uniformly among its eligible rows (``shuffle``), or it takes the random
mask's row count in every map (same seed) and fills each with the map's top-scored rows (``quota``). A third
mode keeps the default count per map and asks where ``shuffle``'s change matters: uniform rows only in the
attention query, key and value maps (``shuffle-attn``), the top rows in the others. (The
thirty-eighth session's ``heads`` mode became ``MaskConfig.spread_heads``: run it as
``probe_fewshot.py GRID within-heads sparse 5e-3 SEEDS mask.spread_heads=true``.) Everything
else is `probe_fewshot.py`'s: the grid's shots and epochs, development rows that never hold a test row, one run per seed, results appended to GRID/probes/dev.tsv (with ``--test``, the grid's shots scored on its test split, to GRID/probes/test.tsv).

    python bench/probe_within.py [--test] MODE GRID NAME METHOD LR SEEDS [key=value ...]
    e.g. python bench/probe_within.py shuffle bench/out/snips-10shot-oracle within-shuffle sparse 5e-3 0,1,2,3,4
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import probe_fewshot  # noqa: E402

from clm_explore import (
    masks as masks_module,  # noqa: E402
    training,  # noqa: E402
)
from clm_explore.config import MaskConfig  # noqa: E402
from clm_explore.sensitivity import SensitivityReport  # noqa: E402

MODES = ("shuffle", "quota", "shuffle-attn")
ATTENTION_MODULES = ("q", "k", "v")


def redrawn(mode: str, module: str) -> bool:
    """Whether ``mode`` draws the rows of a map of this module kind uniformly (else they are the default
    selection's)."""
    return mode == "shuffle" or (mode == "shuffle-attn" and module in ATTENTION_MODULES)


def repicked(report: SensitivityReport, cfg: MaskConfig, mode: str) -> masks_module.MaskSelection:
    """``shuffle``: the default selection's count per map (and so its cost), uniform rows inside each map;
    ``quota``: the random selection's count per map, filled with each map's top-scored rows; ``shuffle-attn``:
    ``shuffle`` in the attention query, key and value maps only."""
    selection = masks_module.select_mask(report, dataclasses.replace(cfg, strategy="random") if mode == "quota" else cfg)
    rng = np.random.default_rng([0 if cfg.seed is None else cfg.seed, 1])
    normalised = report.normalised()
    chosen = {}
    for name, mask in selection.masks.items():
        info = report.matrices[name]
        eligible = np.asarray(info.eligible_rows if info.eligible_rows is not None else range(info.rows), dtype=np.int64)
        count = int(mask.sum())
        if redrawn(mode, info.module):
            rows = rng.choice(eligible, count, replace=False)
        elif mode == "quota":
            rows = eligible[np.argsort(-normalised[name].numpy()[eligible], kind="stable")[:count]]
        else:
            rows = mask.nonzero().flatten().numpy()
        new = torch.zeros_like(mask)
        new[torch.from_numpy(rows)] = True
        chosen[name] = new
    print(f"{mode}: {sum(int(m.sum()) for m in chosen.values())} rows in {len(chosen)} maps, "
          f"Jaccard with the {'random' if mode == 'quota' else 'default'} mask {masks_module.masks_jaccard(chosen, selection.masks):.3f}", flush=True)
    return dataclasses.replace(selection, masks=chosen, table=masks_module._selection_table(report, chosen))


def main(mode: str, *args: str, split: str = "dev") -> None:
    if mode not in MODES:
        raise SystemExit(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    # prepare_sparse (and sparse_merged) look select_mask up in training's namespace at call time.
    training.select_mask = lambda report, cfg=None: repicked(report, cfg or MaskConfig(), mode)
    probe_fewshot.main(*args, split=split)


if __name__ == "__main__":
    if sys.argv[1] == "--test":
        main(*sys.argv[2:], split="test")
    else:
        main(*sys.argv[1:])
