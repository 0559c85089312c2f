"""Probe of the head warm-up (issue #4), not product code: how far the linear-probe warm-up takes the head.

For each grid, the warm-up of `compute_sensitivity` (AdamW at SensitivityConfig.warmup_lr on cached pooled
features of the calibration rows) runs for 5 epochs; before each epoch it prints the head's training loss as
a share of ln(labels) (1.0 = a uniform guess), its training accuracy and its mean top probability.

    python bench/probe_head_warmup.py bench/out/trec6-10shot-e30 bench/out/banking77-10shot-e15
"""

import sys

import torch
from torch import nn

from clm_explore.config import SensitivityConfig
from clm_explore.data import load_data
from clm_explore.modeling import head_parameter_names, load_model
from clm_explore.sensitivity import _head_inputs, calibration_rows, make_batches

EPOCHS = 5


def head_state_line(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, n_labels: int) -> str:
    with torch.no_grad():
        logits = head(feats)
        loss = nn.functional.cross_entropy(logits, labels).item() / float(torch.log(torch.tensor(n_labels)))
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        top = logits.softmax(1).max(1).values.mean().item()
    return f"loss/ln(K) {loss:.2f} acc {accuracy:.2f} top p {top:.2f}"


def main(grid: str) -> None:
    data = load_data(f"{grid}/data")
    loaded = load_model("default", data.labels, seed=0)
    cfg = SensitivityConfig()
    texts, label_ids = calibration_rows(data, cfg)
    batches = make_batches(loaded, texts, label_ids, None, cfg.batch_size, cfg.max_length)
    head = loaded.model.get_submodule(head_parameter_names(loaded.model)[0].rsplit(".", 1)[0])
    feats, labels = _head_inputs(loaded, head, batches, torch.device("cpu"))
    generator = torch.Generator().manual_seed(cfg.rng_seed)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.warmup_lr, weight_decay=0.0)
    states = []
    for epoch in range(EPOCHS + 1):
        states.append(f"epoch {epoch}: {head_state_line(head, feats, labels, len(data.labels))}")
        if epoch == EPOCHS:
            break
        for idx in torch.randperm(len(feats), generator=generator).split(cfg.batch_size):
            loss = nn.functional.cross_entropy(head(feats[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    print(f"{grid}: {len(data.labels)} labels, {len(feats)} rows\n  " + "\n  ".join(states), flush=True)


if __name__ == "__main__":
    for grid_dir in sys.argv[1:]:
        main(grid_dir)
