"""Trainable row deltas over frozen weights (method.md section 4).

``attach_deltas`` swaps each masked ``nn.Linear`` / word ``nn.Embedding`` for a wrapper that keeps the
frozen base module and adds a small trainable delta for the selected rows only. The base weight has
``requires_grad=False``, so autograd computes no weight gradient for it, only the input gradient that
lower layers need; the delta's gradient is (k, in) for k selected rows. Below the lowest selected layer
nothing requires a gradient, so backward stops there by itself. ``merge_deltas`` writes the deltas into
the base weights and puts the plain modules back: the result is the base architecture, same size.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn
from torch.nn import functional as F


class DeltaLinear(nn.Module):
    """y = base(x), plus x @ delta_w^T + delta_b added at the selected output rows."""

    def __init__(self, base: nn.Linear, rows: torch.Tensor, bias: bool = True):
        super().__init__()
        self.base = base
        self.register_buffer("rows", rows.to(torch.long), persistent=False)
        weight = base.weight
        self.delta_w = nn.Parameter(torch.zeros(len(rows), base.in_features, dtype=weight.dtype, device=weight.device))
        self.delta_b = (nn.Parameter(torch.zeros(len(rows), dtype=weight.dtype, device=weight.device))
                        if base.bias is not None and bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y.index_add(-1, self.rows, F.linear(x, self.delta_w, self.delta_b).to(y.dtype))

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        self.base.weight[self.rows] += self.delta_w.to(self.base.weight.dtype)
        if self.delta_b is not None:
            self.base.bias[self.rows] += self.delta_b.to(self.base.bias.dtype)
        return self.base


class DeltaEmbedding(nn.Module):
    """Word embeddings with a trainable delta for the selected vocabulary rows."""

    def __init__(self, base: nn.Embedding, rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.register_buffer("rows", rows.to(torch.long), persistent=False)
        # slot[token] = index of its delta, or k (a fixed zero row) for tokens that are not selected.
        slot = torch.full((base.num_embeddings,), len(rows), dtype=torch.long, device=base.weight.device)
        slot[self.rows] = torch.arange(len(rows), device=base.weight.device)
        self.register_buffer("slot", slot, persistent=False)
        self.delta_w = nn.Parameter(torch.zeros(len(rows), base.embedding_dim, dtype=base.weight.dtype,
                                                device=base.weight.device))

    @property
    def weight(self) -> torch.Tensor:  # some callers (tied heads, resize) read .weight
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([self.delta_w, self.delta_w.new_zeros(1, self.delta_w.shape[1])])
        return self.base(ids) + padded[self.slot[ids]]

    @torch.no_grad()
    def merge(self) -> nn.Embedding:
        self.base.weight[self.rows] += self.delta_w.to(self.base.weight.dtype)
        return self.base


def attach_deltas(model: nn.Module, masks: dict[str, torch.Tensor],
                  without_bias: Collection[str] = ()) -> dict[str, nn.Module]:
    """Wrap every masked matrix of ``model`` in place. Returns module name -> wrapper.

    Args:
        masks: weight parameter name (``...query.weight``) -> (rows,) bool mask.
        without_bias: weight names whose rows train no bias entry (the attention key maps': ``MatrixInfo.bias``).
    """
    wrappers = {}
    for weight_name, mask in masks.items():
        module_name = weight_name.removesuffix(".weight")
        try:
            base = model.get_submodule(module_name)
        except AttributeError as exc:
            raise ValueError(f"the masks name {weight_name}, which this model does not have: were they selected "
                             "for another model?") from exc
        if not isinstance(base, nn.Linear | nn.Embedding):
            raise TypeError(f"{weight_name}: row deltas support Linear and Embedding, not {type(base).__name__}")
        if tuple(mask.shape) != (base.weight.shape[0],):
            raise ValueError(f"the mask of {weight_name} has {tuple(mask.shape)} rows; the model's matrix has "
                             f"{base.weight.shape[0]}: were the masks selected for another model?")
        rows = torch.nonzero(mask.to(base.weight.device)).flatten()
        wrapper: nn.Module = (DeltaLinear(base, rows, bias=weight_name not in without_bias)
                              if isinstance(base, nn.Linear) else DeltaEmbedding(base, rows))
        _set_submodule(model, module_name, wrapper)
        wrappers[module_name] = wrapper
    return wrappers


def merge_deltas(model: nn.Module, wrappers: dict[str, nn.Module]) -> None:
    """Fold deltas into the base weights and restore the plain modules (in place)."""
    for module_name, wrapper in wrappers.items():
        _set_submodule(model, module_name, wrapper.merge())


def delta_state(wrappers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The changed rows only: ``<module>.rows`` (int64) and ``<module>.delta_w`` / ``.delta_b``."""
    out = {}
    for name, w in wrappers.items():
        out[f"{name}.rows"] = w.rows.detach().cpu()
        out[f"{name}.delta_w"] = w.delta_w.detach().float().cpu()
        if getattr(w, "delta_b", None) is not None:
            out[f"{name}.delta_b"] = w.delta_b.detach().float().cpu()
    return out


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
