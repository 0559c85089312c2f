"""Probe of the core method (issue #3), not product code: single weights instead of whole rows.

The row masks spend 1% of the backbone on whole output rows (a row of a query map is 385 parameters).
Sparse-finetuning studies that match full finetuning at 0.5-1% (FISH masks, Sung et al. 2021) pick
single weights by their empirical Fisher. This probe keeps everything else of `finetune --method sparse`
(mined tokens, the token-restricted calibration pass, head warm-up, the upper-half floor, LayerNorms,
the schedule) and swaps the unit: the same pass also sums each weight's per-example squared gradient,
the scores are normalised by their matrix's mean (as the rows' are), and the global top weights up to the
budget get a trainable delta. The delta is scattered into a dense weight each step, so autograd computes
the dense weight gradient of every masked matrix: this costs time, it answers only the accuracy question.

    CLI="python bench/probe_elements.py" bash bench/probe_sparse.sh elements 0
"""

import sys

import torch
from torch import nn
from torch.nn import functional as F

import clm_explore.sensitivity as sens
import clm_explore.training as ft
from clm_explore.masks import budget_to_params
from clm_explore.sparse import _set_submodule

ELEMENT_FISHER: dict[str, torch.Tensor] = {}
_row_accumulate = sens._RowScorer._accumulate


@torch.no_grad()
def _accumulate_elements(self, name, lin, grad):
    x = self.inputs[name].float()
    if grad.dim() == 2:
        g, x = grad.float().unsqueeze(1), x.unsqueeze(1)
    else:
        g = grad.float() * self.positions.unsqueeze(-1)
    per_example = torch.einsum("bpo,bpi->boi", g, x)
    total = ELEMENT_FISHER.setdefault(name, torch.zeros(lin.weight.shape))
    total += per_example.square().sum(0).cpu()
    _row_accumulate(self, name, lin, grad)


sens._RowScorer._accumulate = _accumulate_elements


class DeltaElements(nn.Module):
    """base weight + a trainable delta at the selected (flattened) positions."""

    def __init__(self, base: nn.Linear, mask: torch.Tensor):
        super().__init__()
        self.base = base
        self.register_buffer("flat_index", torch.nonzero(mask.flatten()).flatten(), persistent=False)
        self.delta_w = nn.Parameter(torch.zeros(len(self.flat_index), dtype=base.weight.dtype))

    def forward(self, x):
        weight = self.base.weight.flatten().index_add(0, self.flat_index, self.delta_w).view_as(self.base.weight)
        return F.linear(x, weight, self.base.bias)

    @torch.no_grad()
    def merge(self):
        self.base.weight.view(-1)[self.flat_index] += self.delta_w
        return self.base


def _element_masks(report, budget: float) -> dict[str, torch.Tensor]:
    """Weight name -> bool mask of the weight's shape, for the top ``budget`` normalised element scores."""
    names = list(ELEMENT_FISHER)  # module names of the scored maps (the floor's layers and up)
    normalised = [ELEMENT_FISHER[n].flatten() / ELEMENT_FISHER[n].mean().clamp_min(1e-30) for n in names]
    k = budget_to_params(budget, report.backbone_params)
    threshold = torch.cat(normalised).topk(k).values[-1]
    return {f"{n}.weight": (s >= threshold).view_as(ELEMENT_FISHER[n]) for n, s in zip(names, normalised, strict=True)}


def prepare_elements(ctx):
    _, report, seconds = ft.mine_and_score(ctx, "tokens")
    masks = _element_masks(report, ctx.cfg.mask.budget)
    model = ctx.loaded.model
    ft.freeze_all(model)
    if report.head_state:
        model.load_state_dict(report.head_state, strict=False)
    wrappers = {}
    for name, mask in masks.items():
        if mask.any():
            module_name = name.removesuffix(".weight")
            wrappers[module_name] = DeltaElements(model.get_submodule(module_name), mask)
            _set_submodule(model, module_name, wrappers[module_name])
    layers = [report.matrices[n].layer for n, m in masks.items() if m.any()]
    lowest = min(layers)
    deltas = [w.delta_w for w in wrappers.values()]
    head = ft.head_parameters(model)
    small = ft._small_params(model, lowest, ctx.cfg.mask)  # the head has its own group
    lr = ctx.cfg.lr or ft.DEFAULT_LR[ctx.cfg.method]
    groups = [{"params": deltas, "weight_decay": ctx.cfg.weight_decay},
              {"params": small, "weight_decay": 0.0, "lr": ctx.cfg.norm_lr or lr},
              {"params": head, "weight_decay": 0.0, "lr": ctx.cfg.head_lr or lr}]
    selected = sum(len(d) for d in deltas)
    per_matrix = {n: int(m.sum()) for n, m in masks.items() if m.any()}
    print(f"elements: {selected} weights in {len(per_matrix)} matrices, lowest layer {lowest}; "
          f"rows touched {sum(int(m.any(1).sum()) for m in masks.values())}", file=sys.stderr)

    def finalize():
        for module_name, w in wrappers.items():
            _set_submodule(model, module_name, w.merge())
        return model

    info = {"lowest_layer": lowest, "prep_seconds": seconds, "budget": ctx.cfg.mask.budget,
            "selected_params": selected, "budget_share": selected / report.backbone_params,
            "elements_per_matrix": per_matrix}
    return ft.Prepared(model, [g for g in groups if g["params"]], finalize, {}, info)


ft.PREPARERS["sparse"] = prepare_elements
from clm_explore.cli import main  # noqa: E402  (after the patch, so the CLI trains with it)

sys.exit(main(sys.argv[1:]))
