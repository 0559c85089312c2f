"""Probe of the head that finetuning starts from (issue #4), not product code: how well each starting head
classifies a 10-shot grid's development rows on the model's frozen pooled features.

Heads: as loaded (seed 0), the linear-probe warm-up of `compute_sensitivity` after 1, 5, 20 and 100 epochs,
and the centroid head (`SensitivityConfig.head_init="centroid"`) at two logit scales. Each line gives the
development accuracy, and the training loss as a share of ln(labels) (1.0 = a uniform guess). Development
rows are `probe_fewshot.py`'s (never test); the shots are the calibration rows, as in a 10-shot run.

    python bench/probe_head_start.py bench/out/trec6-10shot-e30-auto21 bench/out/snips-10shot-e30-auto21
"""

import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))  # probe_fewshot beside it, also under python -P
from probe_fewshot import dev_folder  # noqa: E402

from clm_explore.config import SensitivityConfig
from clm_explore.data import load_data
from clm_explore.modeling import head_parameter_names, load_model
from clm_explore.sensitivity import _head_inputs, calibration_rows, centroid_head, make_batches, warm_up_head

WARMUP_EPOCHS = (1, 5, 20, 100)
CENTROID_SCALES = (0.05, 0.5)


@torch.no_grad()
def scored(name: str, head: nn.Module, train, dev, n_labels: int) -> str:
    loss = nn.functional.cross_entropy(head(train[0]), train[1]).item() / float(torch.log(torch.tensor(n_labels)))
    accuracy = (head(dev[0]).argmax(1) == dev[1]).float().mean().item()
    return f"{name:<22} dev acc {accuracy:.3f}  train loss/ln(K) {loss:.2f}"


def main(grid: str) -> None:
    data = load_data(dev_folder(Path(grid)))
    loaded = load_model("default", data.labels, seed=0)
    cfg = SensitivityConfig()
    head = loaded.model.get_submodule(head_parameter_names(loaded.model)[0].rsplit(".", 1)[0])
    shots = make_batches(loaded, *calibration_rows(data, cfg), None, cfg.batch_size, cfg.max_length)
    train = _head_inputs(loaded, head, shots, torch.device("cpu"))
    dev_batches = make_batches(loaded, data.test["text"].tolist(), data.label_ids("test"), None, cfg.batch_size,
                               cfg.max_length)
    dev = _head_inputs(loaded, head, dev_batches, torch.device("cpu"))
    loaded_state = {k: v.clone() for k, v in head.state_dict().items()}
    lines = [scored("as loaded", head, train, dev, len(data.labels))]
    for epochs in WARMUP_EPOCHS:  # the library's warm-up itself, from the loaded head each time
        head.load_state_dict(loaded_state)
        warm_up_head(loaded, shots, replace(cfg, warmup_epochs=epochs), torch.device("cpu"))
        lines.append(scored(f"warm-up {epochs} epochs", head, train, dev, len(data.labels)))
    for scale in CENTROID_SCALES:
        centroid_head(head, *train, scale)
        lines.append(scored(f"centroid x {scale}", head, train, dev, len(data.labels)))
    print(f"{grid}: {len(data.labels)} labels, {len(train[0])} rows, {len(dev[0])} development rows\n  "
          + "\n  ".join(lines), flush=True)


if __name__ == "__main__":
    for grid_dir in sys.argv[1:]:
        main(grid_dir)
