"""What training changed: how far a finished run moved each backbone weight matrix from its base model.

The view that answers "which layers changed" from the weights' side, for any method: a sparse run moves only its
selected rows (the rest stay bit-identical), full finetuning moves every matrix, LoRA (saved merged) every matrix it
adapted, BitFit only biases, prefix tuning none (its prefix is outside the backbone). Per (layer, module), as the
sensitivity table is laid out: rows and parameters changed, and the change's size relative to the base weights
(Frobenius norms, the bias counted with its row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from clm_explore.modeling import LoadedModel, ModelSourceError, head_parameter_names, load_model
from clm_explore.runs import read_json_object, run_folder
from clm_explore.sensitivity import scored_linears


class ChangesError(ModelSourceError):
    """The run and its base model cannot be compared; the message says why."""


@dataclass
class WeightChanges:
    """How far a run's backbone weights moved from its base model's."""

    table: pd.DataFrame
    """One row per weight matrix of the sensitivity map (the linear maps and the word embeddings, layer -1):
    name (the weight's parameter name), layer, module, rows, rows_changed, share_rows_changed, params, params_changed, relative_change
    (||W_run - W_base|| / ||W_base||, biases included), change_norm (||W_run - W_base||)."""
    run: str
    source: str
    """The base model the run was compared with."""
    backbone_params: int
    backbone_params_changed: int
    """Every backbone parameter that differs from the base, LayerNorms and position embeddings included."""
    other_params_changed: int
    """Of those, the ones outside the table's matrices (LayerNorms, position and type embeddings, ...)."""

    @property
    def share_changed(self) -> float:
        return self.backbone_params_changed / max(self.backbone_params, 1)

    def summary(self) -> str:
        moved = self.table[self.table["rows_changed"] > 0]
        lowest = "none" if moved.empty else ("emb" if moved["layer"].min() < 0 else f"{int(moved['layer'].min())}")
        return (f"{self.backbone_params_changed:,} of {self.backbone_params:,} backbone parameters changed "
                f"({self.share_changed:.3%}); {int(self.table['rows_changed'].sum()):,} rows of "
                f"{int(self.table['rows'].sum()):,} in the scored matrices; lowest layer changed: {lowest}; "
                f"{self.other_params_changed:,} changed outside them (LayerNorms, position embeddings, ...)")

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict (``changes --json``)."""
        return {"run": self.run, "source": self.source, "backbone_params": self.backbone_params,
                "backbone_params_changed": self.backbone_params_changed,
                "other_params_changed": self.other_params_changed,
                "matrices": self.table.to_dict(orient="records")}


def weight_changes(run: Any, source: str | None = None, base: LoadedModel | None = None) -> WeightChanges:
    """How far a finished run's backbone weights moved from its base model's.

    Args:
        run: a run folder (or the ``FinetuneResult`` or registry record naming it).
        source: the base model; default: the one the run was trained from (its ``clm_run.json``).
        base: the base model already loaded (read only), instead of loading ``source``.

    Raises:
        ChangesError: the run names no base model, or the two do not have the same weights' shapes.
        ModelSourceError: the run or the base model cannot be loaded.
    """
    folder = run_folder(run)
    if not (folder / "clm_run.json").is_file():
        raise ChangesError(f"{folder} is not a run folder (it has no clm_run.json).")
    source = source or _run_source(folder)
    tuned = load_model(str(folder), labels=None).model  # the folder's plain model (a prefix run's adapter/ aside)
    base_model = base.model if base is not None else load_model(source, labels=None).model
    base_params = _backbone(base_model)
    tuned_all = dict(tuned.named_parameters())
    differ = [n for n, p in base_params.items() if n not in tuned_all or tuned_all[n].shape != p.shape]
    if differ:
        raise ChangesError(f"{folder} and {source} do not have the same weights ({len(differ)} of {len(base_params)} "
                           f"differ in name or shape, e.g. {differ[0]}): is {source} the model the run was trained "
                           "from?")
    tuned_params = {n: tuned_all[n].detach().float().cpu() for n in base_params}
    rows, covered = _matrix_rows(base_model, tuned_params, base_params)
    changed = {name: int((tuned_params[name] != base_params[name]).sum()) for name in base_params}
    return WeightChanges(
        table=pd.DataFrame(rows), run=str(folder), source=source,
        backbone_params=sum(p.numel() for p in base_params.values()),
        backbone_params_changed=sum(changed.values()),
        other_params_changed=sum(n for name, n in changed.items() if name not in covered),
    )


def _run_source(folder: Path) -> str:
    source = read_json_object(folder / "clm_run.json").get("source")
    if not source:
        raise ChangesError(f"{folder} does not record the model it was trained from: pass the base model "
                           "(--base SRC, source=...).")
    return str(source)


def _backbone(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter outside the classification head, as float32 on the CPU."""
    head = set(head_parameter_names(model))
    return {n: p.detach().float().cpu() for n, p in model.named_parameters() if n not in head}


def _matrix_rows(model: nn.Module, tuned: dict[str, torch.Tensor], base: dict[str, torch.Tensor]
                 ) -> tuple[list[dict[str, Any]], set[str]]:
    """The table's rows (the word embeddings, then the linear maps) and the parameter names they cover."""
    maps = [(f"{name}.weight", layer, kind) for name, (_, layer, kind) in scored_linears(model).items()]
    emb = model.get_input_embeddings().weight
    emb_name = next((n for n, p in model.named_parameters() if p is emb), None)
    rows, covered = [], set()
    for weight, layer, kind in ([(emb_name, -1, "embeddings")] if emb_name in base else []) + maps:
        bias = weight.removesuffix("weight") + "bias" if kind != "embeddings" else None
        parts = [weight] + ([bias] if bias in base else [])
        covered.update(parts)
        rows.append({"name": weight} | _matrix_change(layer, kind, [tuned[p] for p in parts], [base[p] for p in parts]))
    return rows, covered


def _matrix_change(layer: int, kind: str, tuned: list[torch.Tensor], base: list[torch.Tensor]) -> dict[str, Any]:
    """One matrix's figures; a bias is a column of its rows (a row changed if its weights or its bias did)."""
    as_rows = [t.reshape(t.shape[0], -1) for t in tuned], [b.reshape(b.shape[0], -1) for b in base]
    new, old = (torch.cat(parts, dim=1) for parts in as_rows)
    delta = new - old
    rows_changed = int((delta != 0).any(dim=1).sum())
    base_norm = float(old.norm())
    return {"layer": layer, "module": kind, "rows": old.shape[0], "rows_changed": rows_changed,
            "share_rows_changed": rows_changed / old.shape[0], "params": old.numel(),
            "params_changed": int((delta != 0).sum()), "change_norm": float(delta.norm()),
            "relative_change": float(delta.norm()) / base_norm if base_norm > 0 else 0.0}
