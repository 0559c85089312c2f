"""Probe of the core method (issue #3), not product code: is the selection what keeps sparse behind?

Ranks rows by how far a finished full finetune moved them (the squared change of the row and its bias,
full run's weights minus the base model's) instead of by their sensitivity score, then runs the
``clm-explore`` command line unchanged: the same budget, eligible layers, training and evaluation. It is an
oracle (it needs the full run first, so it buys no time); if even these rows leave sparse behind full
finetuning at the same epochs, a better row score is unlikely to close the gap: the budget is the limit.

    ORACLE_RUN=bench/out/b77-probe/full-s0 [ORACLE_NORM=mean|none] \
        CLI="python -P bench/probe_oracle.py" bash bench/probe_sparse.sh oracle 0

``{seed}`` in ORACLE_RUN stands for the run's seed (the mask's), so one process can run several seeds, e.g. on
a 10-shot grid's development rows: ``python bench/probe_oracle.py --fewshot [--test] GRID NAME sparse 5e-3 0,1,2``
with ``ORACLE_RUN=GRID/full-s{seed}`` (the arguments of ``bench/probe_fewshot.py``). The base model is the default.
"""

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import clm_explore.masks as masks
from clm_explore.modeling import load_model

_candidate_rows = masks._candidate_rows


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return {k.removeprefix("bert."): v.float() for k, v in tensors.items()}


def _row_change(report, seed: int) -> dict[str, torch.Tensor]:
    tuned = _weights(Path(os.environ["ORACLE_RUN"].format(seed=seed)))
    base_model = load_model("default", labels=["a", "b"]).model  # the backbone's weights; the head is unused
    base = {k.removeprefix("bert."): v.float() for k, v in base_model.state_dict().items()}
    scores = {}
    for name in report.row_scores:
        key = name.removeprefix("bert.")
        change = (tuned[key] - base[key]).pow(2).sum(dim=1)
        bias = key.removesuffix("weight") + "bias"
        if bias in tuned and report.matrices[name].module != "embeddings":
            change = change + (tuned[bias] - base[bias]).pow(2)
        scores[name] = change
    return scores


def _oracle_rows(report, cfg):
    report.row_scores = _row_change(report, cfg.seed)
    report.config["normalise"] = os.environ.get("ORACLE_NORM", "mean")
    return _candidate_rows(report, cfg)


if __name__ == "__main__":
    masks._candidate_rows = _oracle_rows  # before the command runs, so its selection goes through the oracle
    if sys.argv[1:2] == ["--fewshot"]:
        sys.path.insert(0, str(Path(__file__).parent))
        import probe_fewshot

        test = sys.argv[2:3] == ["--test"]  # as probe_fewshot.py: the grid's test split instead of development rows
        probe_fewshot.main(*sys.argv[2 + test :], split="test" if test else "dev")
    else:
        from clm_explore.cli import main

        sys.exit(main(sys.argv[1:]))
