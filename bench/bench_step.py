"""What each part of the sparse step buys: time of one training step, interleaved, as ratios to full.

Variants on the same batches (default model, batch 32, real banking77 texts):
- full: every parameter trains;
- dense-masked: full backward, gradients outside the selected rows zeroed (what the method avoids);
- deltas-all-layers: row deltas (no weight gradients for frozen rows), rows in every layer, so the
  input-gradient backward runs down to layer 0;
- deltas-upper-half: row deltas with rows only in the upper half (backward stops at the middle);
- head-only: forward plus a head-only backward (the floor).

    python bench/bench_step.py [--steps 12] [--budget 0.01]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clm_explore.batches import collate, encode
from clm_explore.config import MaskConfig, SensitivityConfig
from clm_explore.data import load_data
from clm_explore.masks import select_mask
from clm_explore.mining import mine_task_tokens
from clm_explore.modeling import head_parameter_names, load_model
from clm_explore.sensitivity import compute_sensitivity
from clm_explore.sparse import attach_deltas


def build_variants(loaded, report, budget: float) -> dict[str, tuple[torch.nn.Module, list, dict | None]]:
    variants = {}
    base = loaded.model
    head = set(head_parameter_names(base))

    def clone():
        m = copy.deepcopy(base)
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    full = clone()
    for p in full.parameters():
        p.requires_grad_(True)
    variants["full"] = (full, list(full.parameters()), None)
    all_layers = select_mask(report, MaskConfig(budget=budget, min_layer=0))
    dense = clone()
    for p in dense.parameters():
        p.requires_grad_(True)
    variants["dense-masked"] = (dense, list(dense.parameters()), all_layers.masks)
    for name, sel in (("deltas-all-layers", all_layers),
                      ("deltas-upper-half", select_mask(report, MaskConfig(budget=budget)))):
        m = clone()
        wrappers = attach_deltas(m, sel.masks)
        params = [p for w in wrappers.values() for p in (w.delta_w, getattr(w, "delta_b", None)) if p is not None]
        params += [p for n, p in m.named_parameters() if n in head]
        for p in params:
            p.requires_grad_(True)
        variants[name] = (m, params, None)
    probe = clone()
    params = [p for n, p in probe.named_parameters() if n in head]
    for p in params:
        p.requires_grad_(True)
    variants["head-only"] = (probe, params, None)
    return variants


def step(model, params, masks, opt, input_ids, mask, labels) -> None:
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    loss = torch.nn.functional.cross_entropy(logits, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if masks:  # the naive way: a dense gradient, then zero what is outside the rows
        named = dict(model.named_parameters())
        for name, m in masks.items():
            named[name].grad[~m] = 0
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/banking77"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--budget", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.data)
    loaded = load_model("default", data.labels)
    task_tokens = mine_task_tokens(data.train["text"].tolist(), data.train["label"].tolist(), loaded.tokenizer)
    report = compute_sensitivity(loaded, data, task_tokens, SensitivityConfig(calibration_rows=256, warmup_epochs=1))
    variants = build_variants(loaded, report, args.budget)
    opts = {k: torch.optim.AdamW(p, lr=1e-4) for k, (_, p, _) in variants.items()}
    ids = encode(loaded, data.train["text"].tolist()[: 32 * args.steps], 64)
    labels = torch.as_tensor(data.label_ids("train")[: 32 * args.steps])
    times = {k: [] for k in variants}
    for i in range(args.steps):
        idx = np.arange(i * 32, (i + 1) * 32)
        input_ids, mask = collate(ids, idx, loaded.tokenizer.pad_token_id)
        for name, (model, params, masks) in variants.items():  # interleaved: same machine state for all
            model.train()
            started = time.perf_counter()
            step(model, params, masks, opts[name], input_ids, mask, labels[idx])
            times[name].append(time.perf_counter() - started)
    rows = [{"variant": k, "ms_per_step": 1000 * float(np.median(v[2:])),
             "trainable": sum(p.numel() for p in variants[k][1])} for k, v in times.items()]
    df = pd.DataFrame(rows)
    df["ratio_to_full"] = df["ms_per_step"] / df.loc[df.variant == "full", "ms_per_step"].iloc[0]
    print(f"budget {args.budget:g}, batch 32, max 64 tokens, {args.steps} interleaved steps (median of the last "
          f"{args.steps - 2}), {args.threads} threads")
    print(df.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
