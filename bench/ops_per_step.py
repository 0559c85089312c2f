"""Operators dispatched per training step, full finetuning against the row-delta methods (CPU, default model).

On a GPU a small model's step is bound by how many kernels it launches, not by arithmetic: on an H200 in the
thirtieth session sparse's later epochs took 0.89 of full's time, though it computes far fewer weight gradients.
This counts what each step dispatches (every aten operator, through a dispatch mode, during the training loop
only: no preparation, no evaluation), split into the optimizer's share and the rest, and the "compute" operators
(those that are not views or metadata, a proxy for kernel launches). On CUDA AdamW runs multi-tensor (foreach),
a few launches for all parameters, while on CPU it runs one parameter at a time: so compare the "not optimizer"
columns across devices.

    python bench/ops_per_step.py --data ../shared/data/banking77 --methods full,sparse,sparse-cached
"""

from __future__ import annotations

import argparse
from collections import Counter

import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from clm_explore import training
from clm_explore.config import FinetuneConfig, MaskConfig
from clm_explore.data import load_data

# Operators that only make a new view or read metadata: no kernel runs on a GPU for them.
VIEW_OPS = {"view", "_unsafe_view", "t", "transpose", "permute", "detach", "alias", "select", "slice", "expand",
            "unsqueeze", "squeeze", "reshape", "as_strided", "lift_fresh", "split", "unbind", "_reshape_alias"}
VARIANTS = {"full": {"method": "full"}, "sparse": {"method": "sparse"},
            "sparse-cached": {"method": "sparse", "cache_frozen_layers": True},
            "fisher": {"method": "fisher"}, "layers": {"method": "layers"}, "lora": {"method": "lora"}}


class OpCounter(TorchDispatchMode):
    """Counts operators while ``on``; ``in_optimizer`` files them under the optimizer."""

    def __init__(self):
        super().__init__()
        self.on = self.in_optimizer = False
        self.ops: Counter[tuple[bool, str]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on:
            self.ops[(self.in_optimizer, func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def count_in_training_loop(counter: OpCounter) -> None:
    """Counting on inside ``_TrainLoop.run`` only, off while an epoch ends (evaluation), and the optimizer's
    steps marked."""
    run, end_epoch, adam_step = training._TrainLoop.run, training._TrainLoop._end_epoch, torch.optim.AdamW.step

    def counted_run(self):
        with counter:
            counter.on = True
            try:
                return run(self)
            finally:
                counter.on = False

    def uncounted_end(self, epoch):
        counter.on = False
        try:
            return end_epoch(self, epoch)
        finally:
            counter.on = True

    def marked_step(self, *args, **kwargs):
        counter.in_optimizer = True
        try:
            return adam_step(self, *args, **kwargs)
        finally:
            counter.in_optimizer = False

    training._TrainLoop.run, training._TrainLoop._end_epoch = counted_run, uncounted_end
    torch.optim.AdamW.step = marked_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/banking77")
    ap.add_argument("--methods", default="full,sparse,sparse-cached", help=f"among {', '.join(VARIANTS)}")
    ap.add_argument("--rows-per-label", type=int, default=3, help="training rows per label (a few steps suffice)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget", type=float, default=0.01)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_data(args.data)
    data.train = data.train.groupby("label").head(args.rows_per_label).reset_index(drop=True)
    counter = OpCounter()
    count_in_training_loop(counter)
    rows = []
    for name in args.methods.split(","):
        counter.ops.clear()
        cfg = FinetuneConfig(epochs=1, batch_size=args.batch_size, seed=0, device="cpu",
                             mask=MaskConfig(budget=args.budget), **VARIANTS[name])
        training.finetune(data, cfg, f"/tmp/ops_per_step/{name}", source="default", overwrite=True)
        steps = -(-len(data.train) // args.batch_size)
        per_step = {key: n / steps for key, n in counter.ops.items()}
        rest = {op: n for (opt, op), n in per_step.items() if not opt}
        rows.append({"method": name, "steps": steps, "ops": sum(per_step.values()),
                     "optimizer": sum(n for (opt, _), n in per_step.items() if opt),
                     "not_optimizer": sum(rest.values()),
                     "not_optimizer_compute": sum(n for op, n in rest.items() if op not in VIEW_OPS)})
    table = pd.DataFrame(rows).set_index("method")
    if "full" in table.index:
        for col in ("not_optimizer", "not_optimizer_compute"):
            table[f"{col}_ratio"] = table[col] / table.loc["full", col]
    print(table.round(2).to_string())


if __name__ == "__main__":
    main()
