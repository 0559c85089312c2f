"""Token-driven sensitivity: which rows of which weight matrices matter for the task (method.md section 2).

After a short head warm-up on cached pooled features, every training example's loss is backpropagated
once. Forward hooks keep each linear map's input x and a tensor hook its output gradient g; the weight
gradient of one example is sum_p m_p g_p x_p^T, where the position mask m keeps only token positions
covered by mined groups plus the pooling position. Applying m there, rather than at the embedding output,
restricts every matrix's weight gradient while leaving the forward values and the gradients that flow
to lower layers untouched. Row scores sum the squared per-example gradient over a row (empirical Fisher),
|w * dL/dw| (Taylor) or the row's L1 norm of each batch's gradient (gradient magnitude).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from clm_explore.batches import cutting, tokenized
from clm_explore.config import NORMALISATIONS, ConfigError, SensitivityConfig, config_from, to_dict
from clm_explore.data import AnnotatedData, split_digest
from clm_explore.datareport import plural
from clm_explore.mining import TaskTokens, covered_positions
from clm_explore.model_names import (  # re-exported: where callers have always found them
    MODULE_ORDER as MODULE_ORDER,
    MODULE_PATTERNS as MODULE_PATTERNS,
    classify_linear as classify_linear,
)
from clm_explore.modeling import (
    LoadedModel,
    ModelSourceError,
    head_classes,
    head_entry,
    head_logits,
    head_module,
    head_parameter_names,
    pooled_positions,
    recorded_source,
    resolve_device,
    small_parameter_counts,
    usable_positions,
)
from clm_explore.prefix_cache import PrefixCache
from clm_explore.runs import share_tensor_files


@dataclass
class MatrixInfo:
    """Where a scored weight matrix sits and what one of its rows costs."""

    name: str
    """Parameter name of the weight, e.g. ``bert.encoder.layer.3.attention.self.query.weight``."""
    layer: int
    """Transformer layer; -1 for the embeddings, n_layers for the pooler."""
    module: str
    rows: int
    row_params: int
    """Parameters in one row (in_features, + 1 for the bias; an attention key map's bias is not trained)."""
    eligible_rows: list[int] | None = None
    """For the word embeddings: the rows that may be selected (None = all)."""
    heads: int = 1
    """Attention heads the rows split into, in equal consecutive blocks (query, key and value maps); 1 for
    every other map, and in reports saved before the field existed."""
    bias: bool = False
    """Whether a row's cost counts a bias entry (a linear map with a bias, but for a key map's); False in reports
    saved before the field existed."""


@dataclass
class SensitivityReport:
    """Row scores of every scored matrix, plus the warmed-up head and a per-(layer, module) table."""

    row_scores: dict[str, torch.Tensor]
    """Weight name -> (rows,) float32 raw scores."""
    matrices: dict[str, MatrixInfo]
    n_layers: int
    backbone_params: int
    config: dict
    head_state: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    head_params: int | None = None
    """The classification head's parameters (trained by every row method); None in reports saved before it."""
    small_params: dict[str, dict[int, int]] | None = None
    """LayerNorm ('norm') and linear-bias ('bias') parameters per layer (``modeling.small_parameter_counts``):
    a row method trains them at and above its lowest selected layer as ``MaskConfig`` says; None in reports
    saved before it."""
    labels: list[str] | None = None
    """The head's labels, in its output order, that the scores were computed for; None in reports saved before it."""
    source: str | None = None
    """The model's source (``load_model``'s) the scores were computed on; None where unknown."""
    mining: dict | None = None
    """The mining settings of the groups the scores read (``TaskTokens.config``: the restriction's positions and the
    eligible embedding rows); None when none were given, or in reports saved before it."""
    train_digest: str | None = None
    """``data.split_digest`` of the training split the scores were made from (their calibration rows and the head's
    warm-up); None where unknown (reports saved before it)."""

    @classmethod
    def of_model(cls, model: nn.Module, row_scores: dict[str, torch.Tensor], matrices: dict[str, MatrixInfo],
                 config: dict, head_state: dict[str, torch.Tensor], seconds: float,
                 notes: list[str], source: str | None = None, mining: dict | None = None) -> SensitivityReport:
        """The report of scores made on ``model``, with its layer count, backbone size and trained extras."""
        head_names = set(head_parameter_names(model))
        head = [p for n, p in model.named_parameters() if n in head_names]
        labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        return cls(row_scores, matrices, model.config.num_hidden_layers, backbone_parameter_count(model), config,
                   head_state, seconds, notes, sum(p.numel() for p in head), small_parameter_counts(model), labels,
                   source, mining)

    def __repr__(self) -> str:  # the score tensors would fill a notebook cell
        how = ", ".join(f"{k} {self.config[k]}" for k in ("score", "restriction", "normalise") if k in self.config)
        return (f"SensitivityReport({len(self.row_scores)} matrices over {self.n_layers} layers, "
                f"{self.backbone_params:,} backbone parameters{', ' + how if how else ''}, {self.seconds:.1f} s)")

    @property
    def scored_from_layer(self) -> int:
        """Rows of layers below this one were not scored (``SensitivityConfig.min_layer``): never select them."""
        return int(self.config.get("min_layer", 0))

    @property
    def zero_note(self) -> str | None:
        """A sentence when every row scored 0, so that the top rows are an arbitrary pick; None otherwise."""
        if any(bool(s.any()) for s in self.row_scores.values()):
            return None
        warmed = self.config.get("warmup_epochs", -1) != 0
        return ("every row scored 0: no gradient reached the scored rows, so the rows (or layers) taken are an "
                "arbitrary pick" + ("; a head whose units all died in its warm-up does this: try --head-warmup-epochs "
                                    "0" if warmed else "; the head passes no gradient back (weights of 0?)"))

    @property
    def thin_restriction_note(self) -> str | None:
        """The notes' sentence that few calibration rows held a mined group within the length read
        (``_thin_restriction_note``), or None: a run copies it into its metrics, where it is read (the review of the
        new features: a run at 0.14 accuracy wrote it only to its sensitivity.json)."""
        return next((note for note in self.notes if THIN_RESTRICTION in note), None)

    @property
    def no_tokens_note(self) -> str | None:
        """A sentence when the token restriction had no mined group to read (the mining options let none through):
        the scores then read the pooled position alone and no word-embedding row can be taken, another method than
        the one named, which ran on in silence (the app review); None otherwise."""
        if self.config.get("restriction") != "tokens":
            return None
        embeddings = [info for info in self.matrices.values() if info.module == "embeddings"]
        if not embeddings or embeddings[0].eligible_rows is None or embeddings[0].eligible_rows:
            return None
        return ("no task token was mined (the mining options let no group through), so the token-restricted scores "
                "read the pooled position alone and no word-embedding row can be taken: lower the mining's minimum "
                "count, or score without the restriction")

    def normalised(self, how: str | None = None) -> dict[str, torch.Tensor]:
        """Row scores normalised within each matrix ('mean', 'zscore', 'rank' or 'none')."""
        how = how or self.config.get("normalise", "mean")
        out = {}
        for name, s in self.row_scores.items():
            info = self.matrices[name]
            pool = s[info.eligible_rows] if info.eligible_rows is not None else s
            if how == "mean":
                s = s / pool.mean().clamp_min(1e-30)
            elif how == "zscore":  # a single eligible row has no spread: its z-score is 0, not NaN
                spread = pool.std() if len(pool) > 1 else pool.new_zeros(())
                s = (s - pool.mean()) / spread.clamp_min(1e-30)
            elif how == "rank":
                s = _percentile_ranks(s, pool)
            out[name] = s
        return out

    @property
    def table(self) -> pd.DataFrame:
        """Per (layer, module): total raw score, score per parameter scaled to max 1, rows, params."""
        recs = []
        for name, s in self.row_scores.items():
            info = self.matrices[name]
            rows = len(info.eligible_rows) if info.eligible_rows is not None else info.rows
            total = float(s[info.eligible_rows].sum() if info.eligible_rows is not None else s.sum())
            recs.append({"layer": info.layer, "module": info.module, "score": total, "rows": rows,
                         "params": rows * info.row_params, "density": total / max(rows * info.row_params, 1)})
        df = pd.DataFrame(recs)
        df["norm_score"] = df["density"] / max(df["density"].max(), 1e-30)
        return df.drop(columns="density").sort_values(["layer", "module"], key=_module_key).reset_index(drop=True)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.row_scores.items()}, folder / "row_scores.safetensors")
        if self.head_state:
            save_file({k: v.contiguous() for k, v in self.head_state.items()}, folder / "head.safetensors")
        else:  # an earlier report's head in this folder must not be read as this one's
            (folder / "head.safetensors").unlink(missing_ok=True)
        share_tensor_files([folder / "row_scores.safetensors", folder / "head.safetensors"])
        meta = {"matrices": {k: vars(v) for k, v in self.matrices.items()}, "n_layers": self.n_layers,
                "backbone_params": self.backbone_params, "config": self.config, "seconds": self.seconds,
                "notes": self.notes, "head_params": self.head_params, "small_params": self.small_params,
                "labels": self.labels, "source": self.source, "mining": self.mining, "train_digest": self.train_digest}
        (folder / "sensitivity.json").write_text(json.dumps(meta))
        self.table.to_csv(folder / "sensitivity.csv", index=False)

    @classmethod
    def load(cls, folder: str | Path) -> SensitivityReport:
        """A saved report (safetensors and JSON: nothing is unpickled), checked before any selection reads it.
        ``folder`` is the scores folder, or a run folder that holds one (its ``sensitivity/``).

        Raises:
            ConfigError: the folder is not a complete, consistent scores folder (names the folder and the fault).
        """
        folder = Path(folder)
        if not (folder / "sensitivity.json").exists() and (folder / "sensitivity" / "sensitivity.json").is_file():
            folder = folder / "sensitivity"  # a run folder: the scores its run selected from
        try:
            meta = json.loads((folder / "sensitivity.json").read_text())
            head = folder / "head.safetensors"
            small = meta.get("small_params")  # JSON keys are strings: the layers come back as ints
            small = {kind: {int(k): v for k, v in by_layer.items()} for kind, by_layer in small.items()} if small else None
            matrices = {k: MatrixInfo(**v) for k, v in meta["matrices"].items()}
            report = cls(_in_order(load_file(folder / "row_scores.safetensors"), matrices), matrices, int(meta["n_layers"]),
                         int(meta["backbone_params"]), dict(meta["config"]), load_file(head) if head.exists() else {},
                         meta.get("seconds", 0.0), meta.get("notes", []), meta.get("head_params"), small,
                         meta.get("labels"), meta.get("source"), meta.get("mining"), meta.get("train_digest"))
            report.check()
        except ConfigError as exc:
            raise ConfigError(f"{folder} holds unusable scores: {exc}") from exc
        except (OSError, ValueError, TypeError, KeyError, AttributeError, SafetensorError) as exc:
            why = (f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror
                   else f"{type(exc).__name__}: {exc}")
            raise ConfigError(f"{folder} is not a readable scores folder (sensitivity.json and "
                              f"row_scores.safetensors, as `sensitivity --out` writes them): {why}") from exc
        return report

    def check(self) -> None:
        """Scores that selection can trust: one finite, non-negative score per row of every matrix described,
        eligible rows inside the matrix, heads that split its rows evenly, a known normalisation.

        Raises:
            ConfigError: naming the first matrix at fault.
        """
        if set(self.row_scores) != set(self.matrices):
            raise ConfigError("the scores and the matrices they describe name different weights")
        if self.labels is not None and not (isinstance(self.labels, list) and all(isinstance(x, str) for x in self.labels)):
            raise ConfigError(f"labels must be a list of label names, got {self.labels!r:.60}")
        if self.mining is not None and not isinstance(self.mining, dict):
            raise ConfigError(f"mining must be a dict of mining settings, got {self.mining!r:.60}")
        normalise = self.config.get("normalise", "mean")
        if normalise not in NORMALISATIONS:
            raise ConfigError(f"unknown normalisation {normalise!r} (one of {', '.join(NORMALISATIONS)})")
        for name, scores in self.row_scores.items():
            info = self.matrices[name]
            if not (isinstance(info.layer, int) and isinstance(info.rows, int) and isinstance(info.row_params, int)):
                raise ConfigError(f"{name}: layer, rows and row_params must be integers")
            if tuple(scores.shape) != (info.rows,) or info.row_params < 1 or info.heads < 1 or info.rows % info.heads:
                raise ConfigError(f"{name}: {tuple(scores.shape)} scores for {info.rows} rows of {info.row_params} "
                                  f"parameters in {info.heads} heads")
            if not bool(torch.isfinite(scores).all()) or bool((scores < 0).any()):
                raise ConfigError(f"{name}: scores must be finite and non-negative")
            eligible = info.eligible_rows
            if eligible and (min(eligible) < 0 or max(eligible) >= info.rows):
                raise ConfigError(f"{name}: eligible rows must lie in 0..{info.rows - 1}")


    def check_fits(self, loaded: LoadedModel, labels: list[str]) -> None:
        """Scores that can choose rows of ``loaded`` for data with ``labels``: made on a model of the same shape
        (every scored matrix with as many rows), with a head for the same labels in the same order (its warmed-up
        state is what a row method starts training from).

        Raises:
            ConfigError: naming the first difference.
        """
        model = loaded.model
        params = dict(model.named_parameters())
        if self.n_layers != model.config.num_hidden_layers or self.backbone_params != backbone_parameter_count(model):
            raise ConfigError(f"they were computed on another model ({self.n_layers} layers, {self.backbone_params:,} "
                              f"backbone parameters; this one has {model.config.num_hidden_layers} and "
                              f"{backbone_parameter_count(model):,})")
        for name, info in self.matrices.items():
            if name not in params or params[name].shape[0] != info.rows:
                found = f"{params[name].shape[0]} rows" if name in params else "no such weight"
                raise ConfigError(f"they were computed on another model ({name}: {info.rows} rows scored, {found} "
                                  "here)")
        if self.source is not None and not same_source(self.source, loaded.source):
            raise ConfigError(f"they were computed on another model ({self.source!r}; this run loads "
                              f"{loaded.source!r})")
        labels = [str(label) for label in labels]
        if self.labels is None and self.head_state:  # a report saved before it named them: the order is unknown
            raise ConfigError("they do not name the labels their warmed-up head was made for (saved by an earlier "
                              "version); score again")
        if self.labels is not None and self.labels != labels:
            shown = ", ".join(self.labels[:5]) + (", ..." if len(self.labels) > 5 else "")
            raise ConfigError(f"they were computed for {len(self.labels)} other labels ({shown}); this data has "
                              f"{len(labels)}. Score this data's training split.")
        for name, value in self.head_state.items():
            if name not in params or params[name].shape != value.shape:
                raise ConfigError(f"their warmed-up head does not fit this model's head for {len(labels)} labels "
                                  f"({name})")


def same_source(a: str, b: str) -> bool:
    """Whether two model sources name the same model: equal, or one folder or file written two ways."""
    if a == b:
        return True
    first, second = Path(a).expanduser(), Path(b).expanduser()
    return first.exists() and second.exists() and first.resolve() == second.resolve()


def _percentile_ranks(scores: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """A row's percentile within its matrix: global top-k then takes about the same share of every matrix, so the
    scores choose rows inside a matrix but not between matrices. Tied rows share their average rank (rows that
    never received a gradient tie at zero: they must not rank with the top), and a zero score ranks 0."""
    ordered = pool.sort().values.contiguous()
    below = torch.searchsorted(ordered, scores.contiguous(), right=False).float()
    at_or_below = torch.searchsorted(ordered, scores.contiguous(), right=True).float()
    ranks = (below + at_or_below) / 2 / len(pool)
    return torch.where(scores > 0, ranks, torch.zeros_like(ranks))


def _module_key(col: pd.Series) -> pd.Series:
    return col.map(MODULE_ORDER.index) if col.name == "module" else col


def _backbone_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """(module name, linear map) of every linear map outside the classification head."""
    heads = {n.rsplit(".", 1)[0] for n in head_parameter_names(model)}
    return ((name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and name not in heads)


def scored_linears(model: nn.Module) -> dict[str, tuple[nn.Linear, int, str]]:
    """Module name -> (linear, layer, module kind) for every scored linear map of the backbone."""
    n_layers = model.config.num_hidden_layers
    found = {}
    for name, mod in _backbone_linears(model):
        where = classify_linear(name)
        if where is not None:
            layer, kind = where
            found[name] = (mod, n_layers if layer == -2 else layer, kind)
    return found


def unscored_linears(model: nn.Module) -> list[str]:
    """Module names of the backbone's linear maps that ``scored_linears`` does not know (DeBERTa-v2's
    ``pos_key_proj`` when its attention keys are not shared, say): no row of theirs can be selected."""
    return [name for name, _ in _backbone_linears(model) if classify_linear(name) is None]


def scorable_linears(model: nn.Module) -> dict[str, tuple[nn.Linear, int, str]]:
    """``scored_linears``, refusing a model that has none (e.g. GPT-2's Conv1D maps): nothing could ever be
    selected, so it is said before any work.

    Raises:
        ModelSourceError: the model type and what is supported.
    """
    linears = scored_linears(model)
    if not linears:
        raise ModelSourceError(f"{model.config.model_type} has no linear maps clm-explore knows how to score "
                               "(BERT-, RoBERTa-, MPNet-, DistilBERT-, DeBERTa- and Llama-style blocks are supported): the "
                               "sensitivity map and the methods that "
                               "score rows or rank layers need them; on the command line, methods full, head, bitfit, "
                               "lora and prefix run without them.")
    return linears


def linear_matrix_infos(model: nn.Module, linears: dict[str, tuple[nn.Linear, int, str]]) -> dict[str, MatrixInfo]:
    """Weight name -> MatrixInfo of every scored linear map (``scored_linears``), with the query, key and value
    maps' attention heads."""
    infos = {}
    for n, (lin, layer, kind) in linears.items():
        bias = lin.bias is not None and kind != "k"  # a key map's bias cannot learn (modeling.is_attention_key)
        infos[f"{n}.weight"] = MatrixInfo(f"{n}.weight", layer, kind, lin.out_features, lin.in_features + bias,
                                          heads=_attention_heads(model, kind, lin), bias=bias)
    return infos


def _attention_heads(model: nn.Module, kind: str, lin: nn.Linear) -> int:
    """Heads of a query (num_attention_heads) or key/value map (num_key_value_heads under grouped-query
    attention); 1 for other maps or when the rows do not split evenly."""
    config = model.config
    heads = getattr(config, "num_attention_heads", 1) if kind in ("q", "k", "v") else 1
    if kind in ("k", "v"):
        heads = getattr(config, "num_key_value_heads", None) or heads
    return heads if heads > 1 and lin.out_features % heads == 0 else 1


def backbone_parameter_count(model: nn.Module) -> int:
    heads = set(head_parameter_names(model))
    return sum(p.numel() for n, p in model.named_parameters() if n not in heads)


@dataclass
class Batch:
    input_ids: torch.Tensor
    """(batch, seq_len) int64"""
    attention_mask: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    """(batch, seq_len) float32: 1 where weight gradients are kept (mined groups + pooling position)."""
    rows: np.ndarray | None = None
    """The batch's training-row numbers, when known (a prefix cache feeds rows by number)."""


def make_batches(loaded: LoadedModel, texts: list[str], label_ids: np.ndarray, task_tokens: TaskTokens | None,
                 batch_size: int, max_length: int, row_ids: np.ndarray | None = None) -> list[Batch]:
    """Length-sorted batches (little padding) with the restriction mask of each position; ``row_ids``
    numbers the texts (their training rows)."""
    tok = loaded.tokenizer
    encodings = [encoding for chunk in tokenized(tok, texts, max_length, truncation=True, max_length=max_length)
                 for encoding in chunk.encodings]
    input_ids = [encoding.ids for encoding in encodings]
    covered = covered_positions(encodings, texts, task_tokens) if task_tokens is not None else None
    order = np.argsort([len(ids) for ids in input_ids], kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(input_ids[i]) for i in idx)
        ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        pos = torch.zeros((len(idx), width))
        for r, i in enumerate(idx):
            n = len(input_ids[i])
            ids[r, :n] = torch.tensor(input_ids[i])
            mask[r, :n] = 1
            if covered is None:
                pos[r, :n] = 1.0
            else:
                pos[r, [p for p in covered[i] if p < n]] = 1.0
        # The pooling position always counts: CLS for encoders, the token the classifier reads for decoders.
        pooled = pooled_positions(ids, loaded.model.config.pad_token_id) if loaded.is_decoder else torch.zeros(
            len(idx), dtype=torch.long)
        pos[torch.arange(len(idx)), pooled] = 1.0
        batches.append(Batch(ids, mask, torch.as_tensor(label_ids[idx]), pos,
                             None if row_ids is None else np.asarray(row_ids)[idx]))
    return batches


THIN_RESTRICTION = "calibration rows hold a mined group within the"
"""The words that mark ``_thin_restriction_note``'s sentence among a report's notes."""


def _thin_restriction_note(batches: list[Batch], tokens: TaskTokens, max_length: int) -> str:
    """A sentence when under half the calibration rows hold a mined group within the sub-tokens read, most rows are
    cut there, and the groups were mined reading further (``MiningConfig.max_tokens``): the token restriction then
    reads little but the pooled position (the long-text review: 52 of 240 rows at 64 sub-tokens, whose groups sat
    further on). Short texts are read whole: a group they lack is the mining's, not the cut's."""
    rows = sum(len(batch.positions) for batch in batches)
    # a row's pooled position always counts (1); a mined group adds more
    held = sum(int((batch.positions.sum(dim=1) > 1).sum()) for batch in batches)
    cut = sum(int((batch.attention_mask.sum(dim=1) >= max_length).sum()) for batch in batches)
    mined_from = int((tokens.config or {}).get("max_tokens") or 0)
    if not rows or held * 2 >= rows or cut * 2 < rows or mined_from <= max_length:
        return ""
    return (f"only {held:,} of {rows:,} {THIN_RESTRICTION} {max_length} sub-tokens read "
            f"(the groups were mined reading {mined_from}): the token restriction reads little but the pooled position; "
            "read more sub-tokens per text, or score without the restriction")


def fed(prefix: PrefixCache | None, batch: Batch) -> AbstractContextManager:
    """Run the model on ``batch`` from the prefix cache's states when there is one, else from the start."""
    if prefix is None:
        return nullcontext()
    if batch.rows is None:
        raise ValueError("a prefix cache feeds training rows by number: build the batches with row_ids")
    return prefix.feeding(batch.rows)


@contextmanager
def head_kept(model: nn.Module) -> Iterator[None]:
    """The head's weights as they were on entry, put back on exit: scoring warms the head up for its own use, and
    the warmed head travels in the report, so the caller's model (a notebook's, scored twice) is left unchanged."""
    names = set(head_parameter_names(model))
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in saved:
                    param.copy_(saved[name])


def warm_up_head(loaded: LoadedModel, batches: list[Batch], cfg: SensitivityConfig, device: torch.device,
                 prefix: PrefixCache | None = None, train_rows: int | None = None) -> dict[str, torch.Tensor]:
    """Train the classification head alone on cached head inputs (one forward pass over the batches, from
    ``prefix``'s states when given), for ``cfg.warmup_epochs_for`` the training split's rows (``train_rows``, the
    split the batches' calibration rows were drawn from; default: the batches' rows) and the head's labels.

    Returns the head's state dict (also loaded into the model).
    """
    model = loaded.model
    head = head_module(model)
    feats, labels = _head_inputs(loaded, head, batches, device, prefix)
    if cfg.head_init == "centroid":
        centroid_head(*_output_layer(head, feats), labels, cfg.centroid_scale)
    gen = torch.Generator().manual_seed(cfg.rng_seed)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.warmup_lr, weight_decay=0.0)
    was_training = head_entry(head).training  # a SplitHead is made anew, in training mode
    head.train()  # a two-layer head's dropout, as in finetuning (a linear head has none)
    for _ in range(cfg.warmup_epochs_for(train_rows or len(feats), head_classes(head))):
        for idx in torch.randperm(len(feats), generator=gen).split(cfg.batch_size):
            loss = nn.functional.cross_entropy(head_logits(head, feats[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.train(was_training)
    names = set(head_parameter_names(model))
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if n in names}


@torch.no_grad()
def _output_layer(head: nn.Module, feats: torch.Tensor) -> tuple[nn.Linear, torch.Tensor]:
    """The head's output layer and its inputs for the pooled ``feats``: a linear head and ``feats`` themselves; a
    two-layer head's ``out_proj`` and what its dense layer (as loaded) makes of them, which a centroid head reads."""
    if isinstance(head, nn.Linear):
        return head, feats
    captured: list[torch.Tensor] = []
    handle = head.out_proj.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    was_training = head_entry(head).training  # a SplitHead is made anew, in training mode
    head.eval()
    try:
        head_logits(head, feats)
    finally:
        handle.remove()
        head.train(was_training)
    return head.out_proj, captured[0]


@torch.no_grad()
def centroid_head(head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor, scale: float) -> None:
    """Set ``head`` to a nearest-centroid classifier of ``feats``: label c's weights are the unit direction
    from the rows' mean to label c's mean, divided by the spread of the rows' projections on those
    directions and times ``scale``; the bias centres the logits on the rows' mean (a head without a bias
    keeps the uncentred projections). A label without rows keeps a zero direction."""
    feats = feats.float()
    mean = feats.mean(0)
    seen = labels.unique()
    directions = torch.zeros(head.out_features, feats.shape[1], device=feats.device)
    for label in seen:
        directions[label] = feats[labels == label].mean(0) - mean
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    spread = ((feats - mean) @ directions[seen].T).std().clamp_min(1e-12)
    weight = directions * (scale / spread)
    head.weight.copy_(weight.to(head.weight.dtype))
    if head.bias is not None:
        head.bias.copy_((-(weight @ mean)).to(head.bias.dtype))


@torch.no_grad()
def _head_inputs(loaded: LoadedModel, head: nn.Module, batches: list[Batch], device: torch.device,
                 prefix: PrefixCache | None = None):
    captured: list[torch.Tensor] = []

    def keep(_mod, args):
        captured.append(args[0].detach())

    handle = head_entry(head).register_forward_pre_hook(keep)
    feats = []
    try:
        loaded.model.eval()
        for b in batches:
            captured.clear()
            with fed(prefix, b):
                loaded.model(input_ids=b.input_ids.to(device), attention_mask=b.attention_mask.to(device))
            x = captured[0]
            if x.dim() == 3:  # the head reads one position: the one a decoder pools, an encoder's first
                at = (pooled_positions(b.input_ids, loaded.model.config.pad_token_id) if loaded.is_decoder
                      else torch.zeros(len(x), dtype=torch.long))
                x = x[torch.arange(len(x)), at.to(device)]
            feats.append(x.float())
    finally:
        handle.remove()
    return torch.cat(feats), torch.cat([b.labels for b in batches]).to(device)


class _RowScorer:
    """Hooks that turn per-position inputs and output gradients into per-row scores."""

    def __init__(self, linears: dict[str, tuple[nn.Linear, int, str]], score: str, min_layer: int = 0):
        self.score = score
        self.linears = linears
        self.totals = {name: torch.zeros(lin.out_features) for name, (lin, _, _) in linears.items()}
        # Taylor: signed weight/bias gradients summed over all calibration rows, |w * g| taken at the end,
        # so the score is that of the calibration loss and does not depend on how rows are batched.
        self.grad_sums: dict[str, list[torch.Tensor]] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self.positions: torch.Tensor | None = None
        self.handles = []
        for name, (lin, layer, _) in linears.items():
            if layer >= min_layer:  # maps below score 0: no gradient reaches them
                self.handles.append(lin.register_forward_hook(self._forward_hook(name, lin)))

    def _forward_hook(self, name: str, lin: nn.Linear):
        def hook(_mod, args, out):
            if not out.requires_grad:
                return
            self.inputs[name] = args[0].detach()
            out.register_hook(lambda g: self._accumulate(name, lin, g))
        return hook

    @torch.no_grad()
    def _accumulate(self, name: str, lin: nn.Linear, grad: torch.Tensor) -> None:
        x = self.inputs.pop(name).float()
        if grad.dim() == 2:  # the pooler sees only the pooled position, which always counts
            g, x = grad.float().unsqueeze(1), x.unsqueeze(1)
        else:
            g = grad.float() * self.positions.unsqueeze(-1)  # keep only the allowed positions' gradient
        if self.score == "fisher":
            # ||sum_p g_pr x_p||^2 = g_r^T (X X^T) g_r: a (seq x seq) Gram matrix per example is far
            # cheaper than materialising (batch, out, in) per-example gradients (seq << in).
            gram = x @ x.transpose(1, 2)
            if lin.bias is not None:
                gram += 1.0  # the bias acts like a constant input of 1
            row = torch.einsum("bpo,bpq,bqo->o", g, gram, g)
            self.totals[name] += row.cpu()
        elif self.score == "gradient":
            # L1 norm of each row of the batch's (position-restricted) weight gradient, plus its bias's.
            row = torch.einsum("bpo,bpi->oi", g, x).abs().sum(-1)
            if lin.bias is not None:
                row += g.sum((0, 1)).abs()
            self.totals[name] += row.cpu()
        else:
            grad_w = torch.einsum("bpo,bpi->oi", g, x)
            sums = self.grad_sums.setdefault(name, [torch.zeros_like(grad_w), torch.zeros_like(grad_w[:, 0])])
            sums[0] += grad_w
            sums[1] += g.sum((0, 1))
        return None

    @torch.no_grad()
    def scores(self, n_rows: int) -> dict[str, torch.Tensor]:
        if self.score in ("fisher", "gradient"):
            return {k: v / n_rows for k, v in self.totals.items()}
        out = {}
        for name, (lin, _, _) in self.linears.items():
            if name not in self.grad_sums:
                out[name] = self.totals[name]
                continue
            grad_w, grad_b = self.grad_sums[name]
            row = (grad_w / n_rows * lin.weight.float()).abs().sum(-1)
            if lin.bias is not None:
                row += (grad_b / n_rows * lin.bias.float()).abs()
            out[name] = row.cpu()
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _EmbeddingScorer:
    """Per-example squared gradient of each word-embedding row, at allowed positions only."""

    def __init__(self, embedding: nn.Embedding, score: str):
        self.embedding, self.score = embedding, score
        self.totals = torch.zeros(embedding.num_embeddings)
        self.grad_sum: torch.Tensor | None = None
        """Taylor: signed per-row gradient summed over all calibration rows."""
        self.ids: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.handle = embedding.register_forward_hook(self._hook)

    def _hook(self, _mod, args, out):
        """The lookup's output made a leaf that carries a gradient, its hook reading it: the weight stays frozen,
        so backward builds no (vocabulary x width) gradient of the whole table each batch (47 MB on MiniLM, never
        read; the core review)."""
        self.ids = args[0].detach()
        out = out.detach().requires_grad_()
        out.register_hook(self._accumulate)
        return out

    @torch.no_grad()
    def _accumulate(self, grad: torch.Tensor) -> None:
        g = (grad.float() * self.positions.unsqueeze(-1)).flatten(0, 1)
        batch, seq = self.ids.shape
        vocab = self.embedding.num_embeddings
        keys = (torch.arange(batch, device=self.ids.device).unsqueeze(1) * vocab + self.ids).flatten()
        uniq, inverse = keys.unique(return_inverse=True)
        per_example = torch.zeros(len(uniq), g.shape[-1], device=g.device).index_add_(0, inverse, g)
        rows = uniq % vocab
        if self.score == "fisher":
            self.totals.index_add_(0, rows.cpu(), per_example.pow(2).sum(-1).cpu())
        elif self.score == "gradient":  # a token row's batch gradient is the sum over the batch's examples
            tokens, where = rows.unique(return_inverse=True)
            batch_grad = torch.zeros(len(tokens), g.shape[-1], device=g.device).index_add_(0, where, per_example)
            self.totals.index_add_(0, tokens.cpu(), batch_grad.abs().sum(-1).cpu())
        else:
            if self.grad_sum is None:
                self.grad_sum = torch.zeros(self.embedding.weight.shape, device=g.device)
            self.grad_sum.index_add_(0, rows, per_example)

    @torch.no_grad()
    def scores(self, n_rows: int) -> torch.Tensor:
        if self.score in ("fisher", "gradient") or self.grad_sum is None:
            return self.totals / n_rows
        return (self.grad_sum / n_rows * self.embedding.weight.float()).abs().sum(-1).cpu()

    def close(self) -> None:
        self.handle.remove()


def _check_arguments(loaded: object, data: object, task_tokens: object, cfg: object) -> None:
    """compute_sensitivity's arguments by type, named: a source string or a path given for the model or the data
    failed as "'str' object has no attribute 'model'" deep inside."""
    wanted = [("loaded", loaded, LoadedModel, "load_model(source, data.labels)"),
              ("data", data, AnnotatedData, "load_data(path)"),
              ("task_tokens", task_tokens, TaskTokens | None, "mine_task_tokens(...), or None"),
              ("cfg", cfg, SensitivityConfig | dict | None, "SensitivityConfig(...) (or a dict of its fields), or None")]
    for name, value, kind, made_by in wanted:
        if not isinstance(value, kind):
            raise TypeError(f"compute_sensitivity: {name} is what {made_by} returns; got {type(value).__name__}")


def compute_sensitivity(
    loaded: LoadedModel,
    data: AnnotatedData,
    task_tokens: TaskTokens | None,
    cfg: SensitivityConfig | dict | None = None,
    device: str = "auto",
    on_progress: Callable[[int, int], None] | None = None,
    prefix: PrefixCache | None = None,
    progress: bool | None = None,
) -> SensitivityReport:
    """Warm up the head, then score rows of every linear map and eligible word-embedding rows.

    Args:
        loaded: the model, left as it was: the warmed-up head is the report's ``head_state`` (a second call
            starts from the same head and gives the same scores).
        data: training split is used (a seeded calibration subset of it).
        task_tokens: mined groups; needed for restriction 'tokens' and for eligible embedding rows.
        cfg: options; ``restriction='none'`` is the unrestricted (ablation) Fisher.
        device: where the warm-up and the scoring run: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda:N'.
        on_progress: called with (batches done, batches total).
        prefix: the training rows' hidden states below layer ``cfg.min_layer`` (or lower), computed once
            (``finetune`` with ``cache_frozen_layers``): the warm-up and the scoring then run only the layers
            above, with the same result, since nothing below ``cfg.min_layer`` is scored. Its rows must be
            ``data``'s training rows tokenized with ``cfg.max_length``.
        progress: a progress bar over the scoring batches (a notebook's widget, a terminal's text bar); None shows
            one when no ``on_progress`` listens (a notebook waited minutes in silence; the API review).
    """
    from clm_explore.progress_bar import phase_bar

    _check_arguments(loaded, data, task_tokens, cfg)
    # A model loaded with the caller's random state put back carries the state it was loaded at: the warm-up's
    # dropout draws from it, as it did when loading left it behind, and the caller's state is left as it was.
    kept = torch.random.fork_rng(devices=[]) if loaded.rng_state is not None else nullcontext()
    with phase_bar(progress, on_progress, "scoring rows") as report, kept:
        if loaded.rng_state is not None:
            torch.set_rng_state(loaded.rng_state)
        return _compute_sensitivity(loaded, data, task_tokens, cfg, device, report, prefix)


def _compute_sensitivity(loaded: LoadedModel, data: AnnotatedData, task_tokens: TaskTokens | None,
                         cfg: SensitivityConfig | dict | None, device: str,
                         on_progress: Callable[[int, int], None] | None, prefix: PrefixCache | None) -> SensitivityReport:
    cfg = config_from(cfg, SensitivityConfig, "compute_sensitivity")
    if cfg.restriction == "tokens" and task_tokens is None:
        raise ValueError("restriction 'tokens' needs mined task tokens; mine first or use restriction 'none'")
    check_head_labels(loaded, data.labels)
    positions = usable_positions(loaded.model.config)
    if isinstance(positions, int) and cfg.max_length > positions:  # an index error deep in the warm-up's first batch
        raise ConfigError(f"max_length {cfg.max_length} is above the {positions} positions a text may take in "
                          f"{type(loaded.model).__name__}: read at most {positions} sub-tokens per text.")
    n_layers = loaded.model.config.num_hidden_layers
    if cfg.min_layer >= n_layers:
        raise ConfigError(f"min_layer {cfg.min_layer} is above the model's top layer ({n_layers - 1}); nothing would "
                          "be scored.")
    started = time.perf_counter()
    dev = resolve_device(device)
    model = loaded.model.to(dev)
    if prefix is not None and (prefix.start > cfg.min_layer or len(prefix.states) != len(data.train)):
        raise ValueError(f"a prefix cache from layer {prefix.start} over {len(prefix.states)} rows cannot feed "
                         f"scoring from layer {cfg.min_layer} over {len(data.train)} training rows")
    linears = scorable_linears(model)
    rows = calibration_indices(data, cfg)
    texts, label_ids = _train_rows(data, rows)
    restrict = task_tokens if cfg.restriction == "tokens" else None
    with cutting(loaded.tokenizer, cfg.truncation_side):  # as the run it serves cuts texts; the caller's model as it was
        batches = make_batches(loaded, texts, label_ids, restrict, cfg.batch_size, cfg.max_length, rows)
    with head_kept(model):
        head_state = warm_up_head(loaded, batches, cfg, dev, prefix, len(data.train)) if cfg.prepares_head else {}
        scores, emb_scores = _score_rows(loaded, batches, linears, cfg, dev, on_progress, prefix)
    emb_name, emb_info = _embedding_info(loaded, task_tokens, batches)
    matrices = linear_matrix_infos(model, linears)
    row_scores = {f"{n}.weight": s for n, s in scores.items()}
    matrices[emb_name], row_scores[emb_name] = emb_info, emb_scores
    kept = ", the end of a longer one" if cfg.truncation_side == "left" else ""
    notes = [f"calibration rows: {len(texts)}", f"reading {cfg.max_length} sub-tokens per text{kept}",
             f"restriction: {cfg.restriction}", f"score: {cfg.score}",
             f"head warm-up: {plural(cfg.warmup_epochs_for(len(data.train), len(data.labels)), 'epoch')}"
             + (" from a centroid head" if cfg.head_init == "centroid" else "")]
    if cfg.fisher_labels == "model":
        notes.append(f"Fisher labels: drawn from the model, {cfg.label_draws} per row")
    if cfg.min_layer:
        notes.append(f"scored layers: {cfg.min_layer} and up (rows below score 0 and cannot be selected)")
    if restrict is not None and (thin := _thin_restriction_note(batches, restrict, cfg.max_length)):
        notes.append(thin)
    if unknown := unscored_linears(model):  # said, not left out in silence (the models review: DeBERTa-v2)
        kinds = sorted({name.rsplit(".", 1)[-1] for name in unknown})
        notes.append(f"{len(unknown)} linear maps of kinds clm-explore does not score ({', '.join(kinds[:4])}) are "
                     "left out: none of their rows can be selected")
    report = SensitivityReport.of_model(model, row_scores, matrices, to_dict(cfg), head_state,
                                        time.perf_counter() - started, notes, recorded_source(loaded.source),
                                        task_tokens.config if task_tokens is not None else None)
    report.train_digest = split_digest(data.train)
    for note in (report.zero_note, report.no_tokens_note):
        if note:
            report.notes.append(note)
    return report


def calibration_indices(data: AnnotatedData, cfg: SensitivityConfig) -> np.ndarray:
    """The training rows used for the scores: a seeded sample of min(N, cfg.calibration_rows), in order."""
    n = min(len(data.train), cfg.calibration_rows)
    rng = np.random.default_rng(cfg.rng_seed)
    return np.sort(rng.choice(len(data.train), size=n, replace=False))


def calibration_rows(data: AnnotatedData, cfg: SensitivityConfig) -> tuple[list[str], np.ndarray]:
    return _train_rows(data, calibration_indices(data, cfg))


def check_head_labels(loaded: LoadedModel, labels: list[str]) -> None:
    """The model's head must name the data's labels in the data's order: label ids index the head's outputs.

    Raises:
        ConfigError: naming both and the call that makes them agree.
    """
    config = loaded.model.config
    head = [str(config.id2label[i]) for i in range(config.num_labels)]
    if head != [str(label) for label in labels]:
        shown = ", ".join(head[:5]) + (", ..." if len(head) > 5 else "")
        raise ConfigError(f"the model's head has {len(head)} labels ({shown}); the data has {len(labels)}. Load it "
                          "for this data: load_model(source, data.labels).")


def _train_rows(data: AnnotatedData, idx: np.ndarray) -> tuple[list[str], np.ndarray]:
    return data.train["text"].iloc[idx].tolist(), data.label_ids("train")[idx]


def _score_rows(loaded, batches, linears, cfg, dev, on_progress, prefix=None):
    model = loaded.model
    model.eval()  # dropout off: scores should not depend on dropout noise
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    scorer = _RowScorer(linears, cfg.score, cfg.min_layer)
    emb = _EmbeddingScorer(model.get_input_embeddings(), cfg.score) if not cfg.min_layer else None
    start = start_backward_at(model, cfg.min_layer) if cfg.min_layer else None
    draws = cfg.label_draws if cfg.fisher_labels == "model" else 1
    draw_rng = torch.Generator().manual_seed(cfg.rng_seed)
    try:
        for done, b in enumerate(batches * draws, start=1):
            scorer.positions = b.positions.to(dev)
            if emb is not None:
                emb.positions = scorer.positions
            with fed(prefix, b):
                out = model(input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev))
            logits = out.logits.float()
            targets = b.labels if cfg.fisher_labels == "data" else model_labels(logits, draw_rng)
            # Sum, not mean: each example's gradient is then dL_n/dw, as the Fisher needs.
            loss = nn.functional.cross_entropy(logits, targets.to(dev), reduction="sum")
            loss.backward()
            if on_progress:
                on_progress(done, draws * len(batches))
    finally:
        scorer.close()
        if emb is not None:
            emb.close()
        if start is not None:
            start.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(frozen[n])
            p.grad = None
    n_rows = draws * sum(len(b.labels) for b in batches)
    emb_scores = emb.scores(n_rows) if emb is not None else torch.zeros(model.get_input_embeddings().num_embeddings)
    return scorer.scores(n_rows), emb_scores


def model_labels(logits: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """One label per row drawn from the softmax of ``logits`` (on the CPU, so a seed gives the same draw on
    any device)."""
    probs = logits.detach().float().softmax(-1).cpu()
    return torch.multinomial(probs, 1, generator=rng).squeeze(1)


def block_module(model: nn.Module, layer: int) -> nn.Module:
    """Transformer block number ``layer`` (``...layer.N`` in BERT, ``...layers.N`` in decoders)."""
    pattern = re.compile(rf"(^|\.)layers?\.{layer}$")
    for name, module in model.named_modules():
        if pattern.search(name):
            return module
    raise ValueError(f"no transformer block {layer} in {type(model).__name__}")


def start_backward_at(model: nn.Module, layer: int) -> torch.utils.hooks.RemovableHandle:
    """Make block ``layer``'s input a leaf that requires a gradient, with every parameter frozen: the
    backward pass then runs from the loss down to that block and no further. Returns the hook's handle."""

    def detach_input(_module, args, kwargs):
        if args:
            return (args[0].detach().requires_grad_(), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_()}

    return block_module(model, layer).register_forward_pre_hook(detach_input, with_kwargs=True)


def _embedding_info(loaded: LoadedModel, task_tokens: TaskTokens | None, batches: list[Batch]):
    emb = loaded.model.get_input_embeddings()
    name = next(n for n, p in loaded.model.named_parameters() if p is emb.weight)
    if task_tokens is not None:
        eligible = sorted(task_tokens.token_ids(loaded.tokenizer))
    else:  # unrestricted: any token seen in the calibration data
        special = set(loaded.tokenizer.all_special_ids)
        eligible = sorted(set(torch.cat([b.input_ids.flatten() for b in batches]).tolist()) - special)
    info = MatrixInfo(name, -1, "embeddings", emb.num_embeddings, emb.embedding_dim, eligible)
    return name, info


def _in_order(row_scores: dict[str, torch.Tensor], matrices: dict[str, MatrixInfo]) -> dict[str, torch.Tensor]:
    """Saved row scores in the model's order of matrices, as ``compute_sensitivity`` made them: safetensors hands
    its tensors back sorted by name, and the rows a seed draws (random rows, ``random_share``, sampled rows) and
    the order of equal scores follow this order, so a run from saved scores drew other rows than the same run
    scoring for itself, and than ``sensitivity --budget`` showed (the faces review)."""
    ordered = {name: row_scores[name] for name in matrices if name in row_scores}
    return ordered | {name: scores for name, scores in row_scores.items() if name not in ordered}
