"""What training changed: how far a finished run moved each backbone weight matrix from its base model.

The view that answers "which layers changed" from the weights' side, for any method: a sparse run moves only its
selected rows (the rest stay bit-identical), full finetuning moves every matrix, LoRA (saved merged) every matrix it
adapted, BitFit only biases, prefix tuning none (its prefix is outside the backbone). Per (layer, module), as the
sensitivity table is laid out: weight rows, bias entries and parameters changed, and the change's size relative to
the base weights (Frobenius norms over a map's weight and bias together).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from clm_explore.modeling import (
    NAMED_SOURCES,
    LoadedModel,
    ModelSourceError,
    finished_run,
    head_parameter_names,
    load_model,
)
from clm_explore.runs import read_json_object
from clm_explore.sensitivity import scored_linears


class ChangesError(ModelSourceError):
    """The run and its base model cannot be compared; the message says why."""


@dataclass
class WeightChanges:
    """How far a run's backbone weights moved from its base model's."""

    table: pd.DataFrame
    """One row per weight matrix of the sensitivity map (the linear maps and the word embeddings, layer -1):
    name (the weight's parameter name), layer, module, rows, rows_changed (rows of the weight whose values
    changed), share_rows_changed, biases_changed (entries of the map's bias), params (weight and bias),
    params_changed, share_params_changed, relative_change (||W_run - W_base|| / ||W_base||, the bias with its
    rows), change_norm (||W_run - W_base||)."""
    run: str
    source: str
    """The base model the run was compared with."""
    backbone_params: int
    backbone_params_changed: int
    """Every backbone parameter that differs from the base, LayerNorms and position embeddings included."""
    other_params_changed: int
    """Of those, the ones outside the table's matrices (LayerNorms, position and type embeddings, ...)."""
    merged_rows: int = 0
    """Word-embedding rows of merged adaptive tokens (``merge.json``): set from their pieces' rows before training,
    so the base is compared with them set; only what training then did to them counts."""
    stored: str = "float32"
    """How the run's weights file stores them; below float32 its rounding reads as change in every matrix."""

    @property
    def share_changed(self) -> float:
        return self.backbone_params_changed / max(self.backbone_params, 1)

    def __repr__(self) -> str:  # one line, as the other results print in a notebook (the table is .table)
        return (f"WeightChanges({Path(self.run).name}: {self.backbone_params_changed:,} of {self.backbone_params:,} "
                f"backbone parameters changed ({self.share_changed:.3%}), {len(self.table)} matrices in .table)")

    def summary(self) -> str:
        moved = self.table[self.table["params_changed"] > 0]
        merged = f"; {self.merged_rows} merged-token rows set from their pieces first" if self.merged_rows else ""
        return (f"{self.backbone_params_changed:,} of {self.backbone_params:,} backbone parameters changed "
                f"({self.share_changed:.3%}); {int(self.table['rows_changed'].sum()):,} weight rows of "
                f"{int(self.table['rows'].sum()):,} in the scored matrices and {int(self.table['biases_changed'].sum()):,} "
                f"bias entries; lowest changed: {_lowest(moved)}; {self.other_params_changed:,} changed outside them "
                f"(LayerNorms, position embeddings, ...){merged}{self.stored_note()}")

    def stored_note(self) -> str:
        """'' for float32 weights; else why nearly every parameter reads as changed (the layer review: a run re-saved
        in float16 read 98% changed, by at most 2e-4 relative)."""
        if self.stored == "float32":
            return ""
        return (f"; the run's weights are stored as {self.stored}, whose rounding counts as change here: compare a "
                "float32 save")

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict (``changes --json``)."""
        return {"run": self.run, "source": self.source, "backbone_params": self.backbone_params,
                "backbone_params_changed": self.backbone_params_changed,
                "other_params_changed": self.other_params_changed, "merged_rows": self.merged_rows,
                "stored": self.stored, "matrices": self.table.to_dict(orient="records")}


def layer_names(layers: pd.Series) -> pd.Series:
    """Layer numbers as the tables show them: 'emb' for the word embeddings (-1), the number otherwise."""
    return layers.map(lambda i: "emb" if i < 0 else str(i))


def layer_axis_labels(layers: Iterable[int]) -> list[str]:
    """Layer numbers as the charts' category axes name them: 'emb' for the embeddings (-1), L0, L1, ... (plain
    digits would make plotly draw a numeric axis and misplace 'emb')."""
    return ["emb" if int(i) < 0 else f"L{int(i)}" for i in layers]


def _lowest(moved: pd.DataFrame) -> str:
    """The lowest place with a change: 'the embeddings', 'layer N' or 'the pooler'; 'none'."""
    if moved.empty:
        return "none"
    lowest = moved[moved["layer"] == moved["layer"].min()]
    if int(lowest["layer"].iloc[0]) < 0:
        return "the embeddings"
    return "the pooler" if set(lowest["module"]) == {"pooler"} else f"layer {int(lowest['layer'].iloc[0])}"


def weight_changes(run: Any, source: str | None = None, base: LoadedModel | None = None) -> WeightChanges:
    """How far a finished run's backbone weights moved from its base model's.

    Args:
        run: a run folder or run id (or the ``FinetuneResult`` or registry record naming it).
        source: the base model; default: the one the run was trained from (its ``clm_run.json``), built with the
            run's seed (weights a checkpoint lacks, such as a pooler, are drawn from it as training drew them).
        base: the base model already loaded (read only; loaded with the run's seed), instead of loading one.

    Raises:
        ChangesError: not a run folder, no base model named, or a base of other weights' names or shapes.
        ModelSourceError: the run or the base model cannot be loaded.
    """
    folder = finished_run(run)
    if not (folder / "clm_run.json").is_file():
        raise ChangesError(f"{folder} is not a run folder (it has no clm_run.json).")
    meta = read_json_object(folder / "clm_run.json")
    tuned = load_model(str(folder), labels=None).model  # the folder's plain model (a prefix run's adapter/ aside)
    if base is None:
        given = source is not None
        source = source or _run_source(folder, meta)
        base = _load_base(folder, source, meta, given=given)
    source = source or base.source
    base_params = _backbone(base.model)
    tuned_all = dict(tuned.named_parameters())
    differ = [n for n, p in base_params.items() if n not in tuned_all or tuned_all[n].shape != p.shape]
    if differ:
        raise ChangesError(f"{folder} and {source} do not have the same weights ({len(differ)} of {len(base_params)} "
                           f"differ in name or shape, e.g. {differ[0]}): is {source} the model the run was trained "
                           "from?")
    merged = _merged_rows(folder, base, base_params)
    tuned_params = {n: tuned_all[n].detach().float().cpu() for n in base_params}
    rows, covered = _matrix_rows(base.model, tuned_params, base_params)
    changed = {name: int((tuned_params[name] != base_params[name]).sum()) for name in base_params}
    return WeightChanges(
        table=pd.DataFrame(rows), run=str(folder), source=source,
        backbone_params=sum(p.numel() for p in base_params.values()),
        backbone_params_changed=sum(changed.values()),
        other_params_changed=sum(n for name, n in changed.items() if name not in covered), merged_rows=merged,
        stored=_stored_dtype(folder),
    )


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _stored_dtype(folder: Path) -> str:
    """The dtype of the run's weights file's floating tensors (read from its header alone), 'float32' when none is
    read."""
    from safetensors import safe_open

    path = folder / "model.safetensors"
    if not path.is_file():
        return "float32"
    with safe_open(str(path), framework="pt") as weights:
        kinds = {weights.get_slice(name).get_dtype() for name in weights.keys()}  # noqa: SIM118 (no __iter__)
    lower = sorted(_SAFETENSORS_DTYPES[k] for k in kinds if k in ("F16", "BF16"))
    return lower[0] if lower else "float32"


def base_model(run: Any, source: str | None = None) -> LoadedModel:
    """The model a finished run was trained from (``source`` when given), loaded at the run's seed.

    Raises:
        ChangesError: the run does not record its base model and none is given.
        ModelSourceError: the run or the base model cannot be loaded.
    """
    folder = finished_run(run)
    meta = read_json_object(folder / "clm_run.json")
    return _load_base(folder, source or _run_source(folder, meta), meta, given=source is not None)


def _run_source(folder: Path, meta: dict[str, Any]) -> str:
    source = meta.get("source")
    if not source:
        unread = "" if meta else " (its clm_run.json cannot be read)"
        raise ChangesError(f"{folder} does not record the model it was trained from{unread}: pass the base model "
                           "(--base SRC, source=...).")
    return str(source)


def _load_base(folder: Path, source: str, meta: dict[str, Any], given: bool = False) -> LoadedModel:
    """The base model at the run's seed (a checkpoint's missing weights, a pooler say, are drawn from it)."""
    config = meta.get("config")
    seed = config.get("seed", 0) if isinstance(config, dict) else 0
    try:
        return load_model(source, labels=None, seed=seed if isinstance(seed, int) else 0)
    except ModelSourceError as exc:
        if given:  # the user's own --base: their typo, not the run's record
            raise ModelSourceError(f"The base model {source} cannot be loaded ({exc}).") from exc
        relative = "" if Path(source).is_absolute() or source in NAMED_SOURCES else (
            ", a path relative to where it was trained (older versions recorded a model folder as typed)")
        raise ModelSourceError(f"{folder} was trained from {source}{relative}, which cannot be loaded here ({exc}). "
                               "Pass the base model (--base SRC, source=...).") from exc


def _merged_rows(folder: Path, base: LoadedModel, params: dict[str, torch.Tensor]) -> int:
    """Set the base's rows of the run's merged adaptive tokens (``merge.json``) as training set them before it
    began, the mean of their pieces' rows, in ``params`` (a copy; the base model is left as it is). Returns how
    many."""
    merged = read_json_object(folder / "merge.json").get("merged") or []
    emb = base.model.get_input_embeddings().weight
    name = next((n for n, p in base.model.named_parameters() if p is emb), None)
    if not merged or name not in params:
        return 0
    rows = params[name] = params[name].clone()
    try:
        for entry in merged:
            pieces = base.tokenizer.convert_tokens_to_ids(list(entry["pieces"]))
            rows[int(entry["id"])] = rows[pieces].mean(0)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ChangesError(f"{folder / 'merge.json'} cannot be read as the run's merged tokens ({exc!r}): restore "
                           "it from the run, or compare without it by deleting it.") from exc
    return len(merged)


def _backbone(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter outside the classification head, as float32 on the CPU (not copied where already so)."""
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
        bias = bias if bias in base else None
        covered.update([weight] + ([bias] if bias else []))
        change = _matrix_change(tuned[weight], base[weight], tuned.get(bias), base.get(bias))
        rows.append({"name": weight, "layer": layer, "module": kind} | change)
    return rows, covered


def _matrix_change(new: torch.Tensor, old: torch.Tensor, new_bias: torch.Tensor | None,
                   old_bias: torch.Tensor | None) -> dict[str, Any]:
    """One matrix's figures: weight rows changed, bias entries changed (apart: BitFit moves biases alone), and the
    change's size with the bias counted with its rows."""
    delta = (new - old).reshape(old.shape[0], -1)
    bias_delta = (new_bias - old_bias) if new_bias is not None and old_bias is not None else delta.new_zeros(0)
    rows_changed = int((delta != 0).any(dim=1).sum())
    params = old.numel() + bias_delta.numel()
    params_changed = int((delta != 0).sum() + (bias_delta != 0).sum())
    change_norm = float(torch.cat([delta.flatten(), bias_delta]).norm())
    base_norm = float(torch.cat([old.flatten(), old_bias.flatten() if old_bias is not None else old.new_zeros(0)]).norm())
    return {"rows": old.shape[0], "rows_changed": rows_changed, "share_rows_changed": rows_changed / old.shape[0],
            "biases_changed": int((bias_delta != 0).sum()), "params": params, "params_changed": params_changed,
            "share_params_changed": params_changed / params, "change_norm": change_norm,
            "relative_change": change_norm / base_norm if base_norm > 0 else 0.0}
