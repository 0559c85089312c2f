"""Select rows under a parameter budget from stored sensitivity scores (method.md section 3).

Contract of a selection strategy: inputs are a ``SensitivityReport`` (row scores per weight matrix) and
a ``MaskConfig`` (budget as a fraction of backbone parameters or an absolute count); the output maps
each weight name to a bool (rows,) mask on CPU. No model pass is needed, so the app's budget slider can
call this on every move.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clm_explore.config import ConfigError, MaskConfig, config_from, eligible_floor, from_dict
from clm_explore.mask_tables import (
    mask_table as mask_table,  # re-exported: where callers have always found it
)
from clm_explore.model_names import MODULE_ORDER
from clm_explore.sensitivity import SensitivityReport

ADAM_BYTES_PER_PARAM = 16
"""fp32 value, gradient and AdamW's two moments for every trainable parameter."""


@dataclass
class MaskSelection:
    """The rows a budget buys (``select_mask``): a bool mask per weight matrix, what they cost against the budget,
    the lowest layer they reach (backward stops below it), and a per (layer, module) table."""

    masks: dict[str, torch.Tensor]
    """Weight name -> (rows,) bool; only matrices with at least one selected row."""
    selected_params: int
    """Parameters in the selected rows (what the budget counts)."""
    budget_params: int
    backbone_params: int
    lowest_layer: int | None
    """Lowest layer holding a selected row (-1 = embeddings): backward can stop below it."""
    n_layers: int
    table: pd.DataFrame
    """Per (layer, module): selected_rows, rows, share_selected."""
    beside_params: int | None = None
    """What a row method trains beside the rows: the head, and the LayerNorms (with ``train_biases`` the linear
    biases too) at and above the lowest selected layer. None when the scores' report predates this count."""
    eligible_params: int | None = None
    """Parameters in every row that could be selected (the layers from ``min_layer`` up, embeddings as configured)."""
    min_layer: int = 0
    """The lowest layer whose rows competed."""
    scored_from: int = 0
    """The lowest layer the scores cover (``SensitivityReport.scored_from_layer``): a run's own scores start at its
    mask's floor, and no lower min_layer lets the rows below compete."""

    def __repr__(self) -> str:  # the mask tensors would fill a notebook cell
        rows = sum(int(m.sum()) for m in self.masks.values())
        lowest = "-" if self.lowest_layer is None else self.lowest_layer
        return (f"MaskSelection({self.selected_params:,} of a {self.budget_params:,}-parameter budget ({self.share:.2%} "
                f"of the backbone) in {rows:,} rows of {len(self.masks)} matrices, lowest layer {lowest}, "
                f"{'?' if self.trainable_params is None else f'{self.trainable_params:,}'} trainable)")

    @property
    def share(self) -> float:
        """Selected parameters as a share of the backbone."""
        return self.selected_params / max(self.backbone_params, 1)

    @property
    def trainable_params(self) -> int | None:
        """Everything a row-method run of this selection trains (its metrics' ``trainable_params``): the rows the
        budget counts plus ``beside_params``; None when that is unknown."""
        return None if self.beside_params is None else self.selected_params + self.beside_params

    @property
    def optimizer_bytes(self) -> int:
        """AdamW's memory for what the run trains (the rows alone where ``beside_params`` is unknown)."""
        return (self.trainable_params or self.selected_params) * ADAM_BYTES_PER_PARAM

    @property
    def budget_note(self) -> str | None:
        """A sentence when the budget is larger than every eligible row together, so all of them are selected and
        part of the budget stays unspent; None otherwise."""
        if self.eligible_params is None or self.selected_params < self.eligible_params:
            return None
        if self.eligible_params >= self.budget_params:
            return None
        if self.scored_from > 0 and self.scored_from >= self.min_layer:  # the diff review: told to lower min_layer
            hint = (f"; the scores start at layer {self.scored_from}, so rows below have none to compete with (score "
                    "from a lower layer for more)")
        else:
            hint = "; a lower min_layer lets more rows compete" if self.min_layer > 0 else ""
        return (f"the budget asks for {self.budget_params:,} parameters, but the rows that may be selected (layers "
                f"{self.min_layer} and up) hold {self.eligible_params:,}: all of them are selected, "
                f"{self.share:.2%} of the backbone{hint}.")

    @property
    def time_ratio_estimate(self) -> float:
        """Estimated step time relative to full finetuning.

        A full step costs about 3 forward-equivalents (forward, input gradients, weight gradients). The
        sparse step pays the forward, input gradients only down to the lowest selected layer, and
        weight gradients only for the selected share.
        """
        if self.lowest_layer is None:
            return 1 / 3
        depth = (self.n_layers - max(self.lowest_layer, 0)) / self.n_layers if self.lowest_layer >= 0 else 1.0
        return (1 + depth + self.share) / 3


def human_bytes(n: float) -> str:
    """A byte count in B, KiB, MiB or GiB (two decimals above bytes)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"  # pragma: no cover


def budget_to_params(budget: float, backbone_params: int) -> int:
    """A fraction in (0, 1] of the backbone, or an absolute count when > 1."""
    count = round(budget * backbone_params) if budget <= 1 else int(budget)
    if count > backbone_params:  # whole figures: "2.27132e+07" hid the one parameter too many (the budget review)
        raise ValueError(f"a budget of {count:,} parameters is more than the backbone has ({backbone_params:,})")
    return count


@dataclass
class _Rows:
    """Every candidate row of every matrix, flattened (computed once per report and config)."""

    names: list[str]
    matrix: np.ndarray
    row: np.ndarray
    score: np.ndarray
    cost: np.ndarray
    layer: np.ndarray


def _candidate_rows(report: SensitivityReport, cfg: MaskConfig) -> _Rows:
    names, matrix, row, score, cost, layer = [], [], [], [], [], []
    normalised = report.normalised()
    min_layer = _lowest_competing_layer(report, cfg)
    floor = min_layer if min_layer > 0 else -1  # 0 = every layer and the word embeddings (layer -1) compete
    for name, s in normalised.items():
        info = report.matrices[name]
        if info.layer < floor or (info.module == "embeddings" and not cfg.include_embeddings):
            continue
        rows = np.asarray(info.eligible_rows if info.eligible_rows is not None else range(info.rows), dtype=np.int64)
        names.append(name)
        matrix.append(np.full(len(rows), len(names) - 1))
        row.append(rows)
        score.append(s.numpy()[rows].astype(np.float64))
        cost.append(np.full(len(rows), info.row_params))
        layer.append(np.full(len(rows), info.layer))
    if not names:
        has_pooler = any(info.layer == report.n_layers for info in report.matrices.values())
        pooler = f" (and {report.n_layers} for its pooler)" if has_pooler else ""
        raise ConfigError(f"no rows can be selected from layer {min_layer} up: the model's layers are 0-"
                          f"{report.n_layers - 1}{pooler}; lower min_layer.")
    cat = np.concatenate
    return _Rows(names, cat(matrix), cat(row), cat(score), cat(cost), cat(layer))


def _lowest_competing_layer(report: SensitivityReport, cfg: MaskConfig) -> int:
    return max(effective_min_layer(cfg, report.n_layers), report.scored_from_layer)


def eligible_matrices(report: SensitivityReport, cfg: MaskConfig) -> set[str]:
    """The matrices whose rows may be selected under ``cfg`` (its layer floor, the embeddings option)."""
    return set(_candidate_rows(report, cfg).names)


def effective_min_layer(cfg: MaskConfig, n_layers: int) -> int:
    """The lowest eligible layer: ``cfg.min_layer``, or the upper half of the layers when it is -1."""
    return eligible_floor(cfg.min_layer, n_layers)


def _rng(cfg: MaskConfig) -> np.random.Generator:
    return np.random.default_rng(0 if cfg.seed is None else cfg.seed)


def _order(rows: _Rows, cfg: MaskConfig, n_layers: int, budget: int) -> np.ndarray:
    if cfg.strategy == "random":
        return _rng(cfg).permutation(len(rows.score))
    order = _scored_order(rows, cfg, n_layers)
    if not cfg.random_share:
        return order
    # The scored rows fill (1 - random_share) of the budget; the rest of the order is a uniform shuffle of
    # every other candidate, so random rows fill what is left.
    spent = np.cumsum(rows.cost[order])
    head = order[: int(np.searchsorted(spent, (1 - cfg.random_share) * budget, side="right"))]
    rest = np.setdiff1d(np.arange(len(order)), head, assume_unique=True)
    return np.concatenate([head, _rng(cfg).permutation(rest)])


def _scored_order(rows: _Rows, cfg: MaskConfig, n_layers: int) -> np.ndarray:
    # z-scores go below zero; shifted to start at zero, the upper-layer bonus and the draw's weights still favour
    # the higher score (a factor > 1 on a negative score would push an upper row down).
    score = rows.score - min(float(rows.score.min()), 0.0)
    if cfg.cost_aware:
        # Prefer upper layers at equal score: backward stops sooner the higher the lowest selected row.
        score = score * (1 + cfg.cost_aware * (rows.layer + 1) / (n_layers + 1))
    if cfg.strategy == "sampled":
        # Gumbel top-k: an ordered draw without replacement with P(row) proportional to score ** (1 / T).
        gumbel = _rng(cfg).gumbel(size=len(score))
        score = np.log(np.maximum(score, 1e-30)) / cfg.sample_temperature + gumbel
    return np.argsort(-score, kind="stable")


def no_row_message(budget: int, cheapest: int, backbone_params: int, asked: float = 0.0, first: bool = False) -> str:
    """Why a budget selects nothing, and the least budget that selects a row: ``cheapest``, the cost of the cheapest
    row that may compete, or with ``first`` of the first row the selection's order buys (the budget review: 384 was
    said to be enough where the top row cost 385); ``asked`` is the budget as given (a count of 5 is most often 5%
    meant)."""
    row = "the first row in the selection's order" if first else "the cheapest eligible row"
    return (f"a budget of {budget:,} parameters buys no row: {row} costs {cheapest:,} parameters; "
            f"raise the budget to at least {cheapest:,} ({cheapest / max(backbone_params, 1) * 100:.2g}% of the "
            "backbone)." + (f" A budget above 1 counts parameters: for a share of the backbone give a fraction "
                            f"({asked:g}% is {asked / 100:g})." if 1 < asked <= 100 else ""))


def _check_scores_folder(folder: Path) -> None:
    """A missing folder, or a run of a method that keeps no row scores, said as such (the notebook review: both read
    "not a readable scores folder ... No such file")."""
    import json

    if not folder.exists():
        raise ConfigError(f"{folder} does not exist: select_mask reads a scores folder (`sensitivity --out`) or a run "
                          "folder of a row method.")
    record = folder / "clm_run.json"
    if record.is_file() and not (folder / "sensitivity" / "sensitivity.json").is_file():
        try:
            method = json.loads(record.read_text()).get("method")
        except (OSError, ValueError, AttributeError):
            return
        raise ConfigError(f"{folder} is a {method} run, which holds no row scores (a sensitivity/ folder): "
                          "select_mask reads those a row method's run kept (sparse, fisher, gradient, random) or a "
                          "scores folder (`sensitivity --out`, compute_sensitivity(...).save).")


def select_mask(report: SensitivityReport | str | Path, cfg: MaskConfig | dict | float | None = None, *,
                budget: float | None = None) -> MaskSelection:
    """Global top rows by normalised score (or random or score-weighted drawn rows, or top rows topped up with
    random ones) until the budget is spent; with ``spread_heads``, each attention map's share re-picked evenly
    over its heads.

    ``report`` is what ``compute_sensitivity`` returns, or a saved scores folder or run folder (read with
    ``SensitivityReport.load``). ``cfg`` is a ``MaskConfig``, a dict of its fields or a budget alone
    (``select_mask(report, 0.01)``); None: the defaults, or a run folder's own mask options (its lowest layer, random
    share, ...: the budget review's run from layer 0 was re-selected from layer 3). ``budget=`` sets the budget over
    ``cfg``'s (``select_mask(run, budget=0.02)``: what the run's options select at another budget).
    """
    if isinstance(report, str | Path):
        _check_scores_folder(Path(report))
        if cfg is None:
            cfg = run_mask_config(Path(report))
        report = SensitivityReport.load(report)
    if not isinstance(report, SensitivityReport):  # a MaskSelection or TaskTokens: "has no attribute 'normalised'"
        raise TypeError(f"select_mask takes the SensitivityReport that compute_sensitivity returns (or a scores or "
                        f"run folder); got {type(report).__name__}")
    if isinstance(cfg, numbers.Real) and not isinstance(cfg, bool):  # numpy numbers too
        cfg = MaskConfig(budget=float(cfg))
    cfg = config_from(cfg, MaskConfig, "select_mask")
    if budget is not None:
        cfg = replace(cfg, budget=budget)
    budget = budget_to_params(cfg.budget, report.backbone_params)
    rows = _candidate_rows(report, cfg)
    order = _order(rows, cfg, report.n_layers, budget)
    spent = np.cumsum(rows.cost[order])
    chosen = order[: int(np.searchsorted(spent, budget, side="right"))]
    if not len(chosen):  # a run labelled sparse that trains the head alone would mislead
        # rows are bought in the selection's order: its first row's cost, not the cheapest's, is the least budget
        raise ConfigError(no_row_message(budget, int(rows.cost[order[0]]), report.backbone_params, cfg.budget,
                                         first=True))
    masks = {}
    for m in np.unique(rows.matrix[chosen]):
        name = rows.names[m]
        info = report.matrices[name]
        picked = rows.row[chosen[rows.matrix[chosen] == m]]
        if cfg.spread_heads and info.heads > 1:
            picked = _spread_over_heads(rows.score[rows.matrix == m], info.heads, len(picked))
        mask = torch.zeros(info.rows, dtype=torch.bool)
        mask[torch.from_numpy(picked)] = True
        masks[name] = mask
    lowest = int(rows.layer[chosen].min()) if len(chosen) else None
    return MaskSelection(masks, int(rows.cost[chosen].sum()), budget, report.backbone_params, lowest,
                         report.n_layers, _selection_table(report, masks, set(rows.names)),
                         _beside_rows(report, cfg, lowest, masks),
                         int(rows.cost.sum()), _lowest_competing_layer(report, cfg), report.scored_from_layer)


def run_mask_config(folder: Path) -> MaskConfig | None:
    """The mask options a run folder's run selected with (its clm_run.json), or None for a scores folder."""
    from clm_explore.runs import read_json_object

    mask = (read_json_object(folder.expanduser() / "clm_run.json").get("config") or {}).get("mask")
    return from_dict(MaskConfig, mask) if isinstance(mask, dict) else None


def _beside_rows(report: SensitivityReport, cfg: MaskConfig, lowest: int | None, masks: dict[str, torch.Tensor]
                 ) -> int | None:
    """The head and the small parameters a row method trains with the rows (``training._small_params``). With
    ``train_biases`` a selected row's bias entry trains in its map's bias, not in the row's delta: counted once."""
    if report.head_params is None or report.small_params is None:
        return None
    small = sum(n for kind in cfg.small_kinds for layer, n in report.small_params.get(kind, {}).items()
                if lowest is not None and layer >= lowest)
    if "bias" in cfg.small_kinds:
        small -= sum(int(mask.sum()) for name, mask in masks.items() if report.matrices[name].bias)
    return report.head_params + small


def _spread_over_heads(scores: np.ndarray, heads: int, count: int) -> np.ndarray:
    """``count`` rows of a map whose rows form ``heads`` equal consecutive blocks, taken round-robin: every
    head's best row (the heads in descending score order), then every head's second best, and so on."""
    per_head = len(scores) // heads
    by_head = scores.reshape(heads, per_head)
    rank_in_head = np.empty_like(by_head, dtype=np.int64)
    np.put_along_axis(rank_in_head, np.argsort(-by_head, axis=1, kind="stable"), np.arange(per_head)[None, :], axis=1)
    return np.lexsort((-scores, rank_in_head.reshape(-1)))[:count]


def _selection_table(report: SensitivityReport, masks: dict[str, torch.Tensor], eligible: set[str]) -> pd.DataFrame:
    """A row per matrix: its rows selected, its rows (the embeddings': those that may compete), their share, and
    whether it could compete at all (``eligible``: its layer at or above the lowest eligible one)."""
    recs = []
    for name, info in report.matrices.items():
        total = len(info.eligible_rows) if info.eligible_rows is not None else info.rows
        picked = int(masks[name].sum()) if name in masks else 0
        recs.append({"layer": info.layer, "module": info.module, "selected_rows": picked, "rows": total,
                     "share_selected": picked / max(total, 1), "selected_params": picked * info.row_params,
                     "eligible": name in eligible})
    df = pd.DataFrame(recs)
    order = df["module"].map(MODULE_ORDER.index)
    return df.assign(_o=order).sort_values(["layer", "_o"]).drop(columns="_o").reset_index(drop=True)


def masks_jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Jaccard overlap of two row selections (rows as (matrix, index) pairs)."""
    def as_set(masks: dict[str, torch.Tensor]) -> set[tuple[str, int]]:
        return {(n, int(i)) for n, m in masks.items() for i in torch.nonzero(m).flatten()}

    sa, sb = as_set(a), as_set(b)
    return len(sa & sb) / max(len(sa | sb), 1)


