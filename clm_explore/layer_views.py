"""Inside a run's model, layer by layer: how alike two models' representations are (linear CKA), and what each
attention head reads in one text beside the share of its rows the run's mask selected.

Weight changes (``changes``) say where training moved the weights; these say where it moved what the model
computes (the representation view of ecco's CKA) and which heads look at the mined task tokens (BertViz's head
view, tied to the mask: no peer shows which heads a sparse run trained).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel

from clm_explore.batches import bounded_texts, cut_side, cutting, text_list, tokenized
from clm_explore.modeling import (
    LoadedModel,
    ModelSourceError,
    finished_run,
    load_run,
    trained_max_length,
    virtual_tokens,
)

DEFAULT_MAX_ROWS = 512
"""Test rows whose pooled states are compared: CKA over a few hundred inputs is stable to about 0.01."""


class LayerViewError(ModelSourceError):
    """Two models whose layers cannot be compared, or a text that cannot be read; the message says why."""


# ------------------------------------------------------------------------------------------------ similarity


@dataclass
class LayerSimilarity:
    """Debiased linear CKA (Kornblith et al., 2019; the unbiased HSIC estimator of Song et al., 2012, as Nguyen et
    al., 2021 use it) between two models' mean-pooled token states, layer by layer, over the same texts: 1 = the
    same representation up to rotation and scale, about 0 = unrelated; lower = training changed what that layer
    computes. The plain estimator reads near 1 for unrelated features when there are fewer texts than the layer is
    wide (0.6 over 256 texts of 384 random features); the debiased one does not. Two different models read the same
    texts well above 0 all the same (a random wider BERT against a trained run: 0.73 at every layer, the layer
    review): both pooled states hold which tokens a text has."""

    table: pd.DataFrame
    """One row per layer: layer (-1 = the embeddings' output, i = the output of block i, counted from 0 as the
    masks and the weight changes count them), cka."""
    run: str
    other: str
    """The other run's folder, or the base model's source."""
    rows: int
    """Texts compared."""
    notes: list[str] = field(default_factory=list)

    def lowest(self) -> tuple[int | None, float]:
        """The layer whose representation moved most (lowest CKA) and its CKA; (None, NaN) when no layer has one
        (the texts' states do not vary: twelve copies of one text, say)."""
        if self.table["cka"].isna().all():
            return None, math.nan
        at = int(self.table["cka"].idxmin())
        return int(self.table.at[at, "layer"]), float(self.table.at[at, "cka"])

    def summary(self) -> str:
        layer, cka = self.lowest()
        if layer is None:  # the layer review: idxmin of no figure was a traceback in layers, report and Compare
            return (f"no CKA over {self.rows:,} texts: their states do not vary between the texts (the same text "
                    "repeated?)")
        top = self.table.iloc[-1]
        return (f"CKA over {self.rows:,} texts: {float(self.table['cka'].iloc[0]):.3f} at the embeddings, "
                f"{float(top['cka']):.3f} after the last layer ({int(top['layer'])}); lowest {cka:.3f} at "
                + ("the embeddings" if layer < 0 else f"layer {layer}"))

    def __repr__(self) -> str:  # one line in a notebook (the per-layer figures are .table)
        return f"LayerSimilarity({Path(self.run).name} vs {Path(self.other).name}: {self.summary()})"

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict (``layers --json``)."""
        return {"run": self.run, "other": self.other, "rows": self.rows, "notes": self.notes,
                "layers": [{"layer": int(r.layer), "cka": float(r.cka)} for r in self.table.itertuples()]}


MIN_CKA_ROWS = 10
"""Fewest texts CKA is computed over: the debiased estimator needs 4. Its spread is large over few texts (for
unrelated features the layer review measured a standard deviation of 0.16 at 10 texts, 0.08 at 20, 0.03 at 50,
0.005 at 256), so fewer than ``STEADY_CKA_ROWS`` texts get a note."""
STEADY_CKA_ROWS = 50
"""From this many texts on, CKA's sampling spread is a few hundredths (0.03 for unrelated features)."""


def linear_cka(x: np.ndarray, y: np.ndarray, debiased: bool = True) -> float:
    """Linear CKA of two (n, d) representations of the same n inputs (their widths may differ), from their Gram
    matrices (Kornblith et al.'s reference code); ``debiased`` (default) with the unbiased HSIC estimator, which
    needs n >= 4 and may read slightly below 0 for unrelated features. NaN when either is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not np.ptp(x, axis=0).any() or not np.ptp(y, axis=0).any():  # the same for every input: nothing to compare
        return math.nan
    gram_x, gram_y = _centred_gram(x @ x.T, debiased), _centred_gram(y @ y.T, debiased)
    denominator = np.linalg.norm(gram_x) * np.linalg.norm(gram_y)
    return float(gram_x.ravel() @ gram_y.ravel() / denominator) if denominator > 1e-12 else math.nan


def _centred_gram(gram: np.ndarray, unbiased: bool) -> np.ndarray:
    """A Gram matrix centred (``unbiased``: as the unbiased HSIC estimator takes it, its diagonal zeroed)."""
    gram = gram.copy()
    n = gram.shape[0]
    if unbiased:
        np.fill_diagonal(gram, 0.0)
        means = gram.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
    else:
        means = gram.mean(0)
        means -= means.mean() / 2
    gram -= means[:, None]
    gram -= means[None, :]
    if unbiased:
        np.fill_diagonal(gram, 0.0)
    return gram


def layer_similarity(run: Any, other: Any = None, texts: list[str] | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                     source: str | None = None) -> LayerSimilarity:
    """How alike ``run``'s and ``other``'s representations are after each layer, over the same texts.

    Args:
        run: a finished run (folder, run id, ``FinetuneResult`` or registry record), or a ``LoadedModel``.
        other: another finished run or ``LoadedModel`` of the same number of layers; None: the run's base model
            (``source``, else the one it was trained from).
        texts: the texts; default: the run's test rows (its predictions.csv), a seeded sample of ``max_rows``.
        max_rows: at most this many texts (a seeded sample of longer lists); at least ``MIN_CKA_ROWS``.
        source: the base model when ``other`` is None (``weight_changes``' ``source``).

    Raises:
        LayerViewError: models of different depths, fewer than ``MIN_CKA_ROWS`` texts, or no texts and no
            predictions.csv.
        ModelSourceError: a run or the base model cannot be loaded.
    """
    if max_rows < MIN_CKA_ROWS:
        raise LayerViewError(f"max_rows must be at least {MIN_CKA_ROWS} (CKA compares texts with each other); got "
                             f"{max_rows}.")
    texts = _sampled(texts if texts is not None else _test_texts(run), max_rows)
    model_a, name_a, length = _model_of(run)
    if other is None:
        from clm_explore.changes import base_model

        model_b = base_model(run if not isinstance(run, LoadedModel) else name_a, source)
        name_b = model_b.source
    else:
        model_b, name_b, length_b = _model_of(other)
        length = max(length, length_b)
    depths = [getattr(m.model.config, "num_hidden_layers", None) for m in (model_a, model_b)]
    if depths[0] != depths[1]:  # before any forward pass
        raise LayerViewError(f"{name_a} has {depths[0]} layers and {name_b} {depths[1]}: CKA compares the same layer "
                             "of two models of one depth.")
    # Both read the same part of a long text, the run's: a run keeping texts' ends against its base (which keeps
    # their starts) read different words, CKA 0.02 at layers that never changed (the diff review).
    side = cut_side(model_a.tokenizer)
    with cutting(model_b.tokenizer, side):
        states_a, states_b = pooled_states(model_a, texts, length), pooled_states(model_b, texts, length)
    table = pd.DataFrame({"layer": range(-1, len(states_a) - 1),
                          "cka": [linear_cka(a, b) for a, b in zip(states_a, states_b, strict=True)]})
    notes = [note for m, name in ((model_a, name_a), (model_b, name_b)) if (note := _prefix_note(m, name))]
    if cut_side(model_b.tokenizer) != side:
        kept, other_kept = ("ends", "starts") if side == "left" else ("starts", "ends")
        notes.append(f"{name_a} keeps long texts' {kept}, {name_b} their {other_kept}: both read them as {name_a} "
                     "does")
    if len(texts) < STEADY_CKA_ROWS:
        notes.append(f"over {len(texts)} texts each CKA is rough (between unrelated features it spreads by about "
                     f"{0.16 if len(texts) < 20 else 0.08:.2f}; by 0.03 over {STEADY_CKA_ROWS}): compare more texts")
    if any(m.is_decoder for m in (model_a, model_b)):
        notes.append("a decoder's last point is after its final norm (transformers' last hidden state), not the last "
                     "block's raw output")
    return LayerSimilarity(table=table, run=name_a, other=name_b, rows=len(texts), notes=notes)


def _prefix_note(loaded: LoadedModel, name: str) -> str:
    """A prefix run's states differ from the base model's from the embeddings on without any weight having
    changed: its positions are shifted by the prefix's virtual tokens."""
    virtual = virtual_tokens(loaded)
    if not virtual:
        return ""
    return (f"{Path(name).name} is a prefix run: its positions are shifted by its {virtual} virtual tokens, so its "
            "states differ from the base model's from the embeddings on, though prefix tuning changed no weight "
            "there")


def _model_of(run: Any) -> tuple[LoadedModel, str, int]:
    """The loaded model, its name and the sub-tokens it reads per text (its run's trained length, else 64)."""
    if isinstance(run, LoadedModel):
        length = getattr(getattr(run.model, "config", None), "clm_max_length", None) or 64
        return run, run.source, int(length)
    folder = finished_run(run)
    return load_run(folder), str(folder), trained_max_length(folder)


def _test_texts(run: Any) -> list[str]:
    if isinstance(run, LoadedModel):
        raise LayerViewError("A loaded model has no test rows of its own: pass texts=[...].")
    from clm_explore.casestudy import read_predictions

    folder = finished_run(run)
    if not (folder / "predictions.csv").is_file():
        raise LayerViewError(f"{folder} has no predictions.csv, whose test rows CKA reads by default: pass the texts "
                             "(texts=[...]; clm-explore layers --file F).")
    instead = "pass the texts (texts=[...]; clm-explore layers --file F)"  # not report's --data
    return read_predictions(folder / "predictions.csv", ("text",), instead)["text"].astype(str).tolist()


def _sampled(texts: Sequence[str], max_rows: int) -> list[str]:
    texts = text_list(texts)
    if len(texts) < MIN_CKA_ROWS:
        raise LayerViewError(f"CKA needs at least {MIN_CKA_ROWS} texts; got {len(texts)}.")
    if len(texts) <= max_rows:
        return texts
    keep = np.sort(np.random.default_rng(0).choice(len(texts), max_rows, replace=False))
    return [texts[i] for i in keep]


@torch.no_grad()
def pooled_states(loaded: LoadedModel, texts: list[str], max_length: int, batch_size: int = 32) -> list[np.ndarray]:
    """Per layer (the embeddings' output first), the (texts, width) mean of each text's token states (padding
    left out, and a decoder's first token, an attention sink), as float32 on the CPU."""
    from clm_explore.batches import collate, encode

    model = loaded.model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids = encode(loaded, texts, max_length)
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    pooled: list[list[np.ndarray]] = []
    try:
        for start in range(0, len(ids), batch_size):
            idx = np.arange(start, min(start + batch_size, len(ids)))
            input_ids, mask = collate(ids, idx, pad)
            try:
                out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
            except (RuntimeError, IndexError) as exc:  # e.g. texts longer than a prefix run's positions leave it
                raise LayerViewError(f"The states of {loaded.source} cannot be read ({exc}).") from exc
            weights = mask.to(device).unsqueeze(-1).float()
            if loaded.is_decoder:  # its first token is an attention sink whose states are far larger than the rest
                weights = _without_first_token(weights)
            for i, states in enumerate(out.hidden_states):
                if len(pooled) <= i:
                    pooled.append([])
                mean = (states.float() * weights).sum(1) / weights.sum(1).clamp(min=1)
                pooled[i].append(mean.cpu().numpy())
    finally:
        model.train(was_training)
    return [np.concatenate(parts) for parts in pooled]


def _without_first_token(weights: torch.Tensor) -> torch.Tensor:
    """Pooling weights (texts, tokens, 1) without each text's first real token, where a text has another: a
    decoder's heads park their attention there (an attention sink, which ``head_attention`` leaves out too), and its
    states are large enough to outweigh the text's (left-padded or right-padded alike)."""
    first = weights.squeeze(-1).argmax(1)  # the first position the mask keeps
    many = weights.squeeze(-1).sum(1) > 1
    weights = weights.clone()
    weights[torch.arange(len(weights))[many], first[many]] = 0.0
    return weights


# ------------------------------------------------------------------------------------------------ attention


@dataclass
class HeadAttention:
    """What every attention head of a model reads in one text."""

    tokens: list[str]
    """The sub-tokens read, special tokens included."""
    attention: np.ndarray
    """(layers, heads, tokens, tokens): each query token's attention over the key tokens (rows sum to 1; a prefix
    run's prefix positions are left out, so its rows may sum to less; ``task_attention`` is then of the text's
    share)."""
    task_positions: list[int]
    """Positions of ``tokens`` that a mined task-token group of the run covers."""
    task_attention: np.ndarray
    """(layers, heads): the attention the text's tokens give the task tokens, averaged over the query tokens
    (special tokens left out; a decoder's first token left out, and the share taken of the attention that does not
    go to it; a prefix run's, of the attention that goes to the text); NaN when the text has none."""
    selected: np.ndarray | None
    """(layers, heads): the share of the head's query, key and value rows the run's mask selected; None when the
    run has no row mask (full finetuning, LoRA, ...)."""
    special_positions: list[int] = field(default_factory=list)
    """Positions of the tokenizer's special tokens ([CLS], [SEP], ...)."""
    notes: list[str] = field(default_factory=list)
    left_out: list[int] = field(default_factory=list)
    """Positions left out of ``task_attention`` and ``task_share``: a decoder's first token (an attention sink)."""
    causal: bool = False
    """A decoder's heads: each token sees only the tokens up to it."""

    @property
    def task_share(self) -> float:
        """The attention a head spreading evenly over what each query token sees would give the task tokens, averaged
        over the query tokens as ``task_attention`` is: the task tokens' share of the tokens for an encoder; for a
        decoder, of the tokens up to each query (the layer review: the share of all tokens read 43% where
        an even causal head gives 81%, task tokens early in the text)."""
        return even_share(len(self.tokens), self.task_positions, self.special_positions, self.left_out, self.causal)

    def table(self) -> pd.DataFrame:
        """One row per (layer, head): layer, head, task_attention, selected (NaN without a mask)."""
        layers, heads = self.task_attention.shape
        selected = self.selected if self.selected is not None else np.full((layers, heads), np.nan)
        return pd.DataFrame({"layer": np.repeat(np.arange(layers), heads), "head": np.tile(np.arange(heads), layers),
                             "task_attention": self.task_attention.reshape(-1), "selected": selected.reshape(-1)})

    def __repr__(self) -> str:
        layers, heads = self.task_attention.shape
        return (f"HeadAttention({len(self.tokens)} tokens, {layers} layers x {heads} heads, "
                f"{len(self.task_positions)} task-token positions; .table(), .attention)")

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict (``heads --json``): the tokens, the task positions and the per-head table (the full
        attention maps are left out: layers x heads x tokens^2 numbers)."""
        table = self.table().astype(object).where(self.table().notna(), None)
        return {"tokens": self.tokens, "task_positions": self.task_positions, "left_out": self.left_out,
                "task_share": self.task_share,
                "heads": table.to_dict(orient="records"), "notes": self.notes}


def even_share(n_tokens: int, task_positions: list[int], special: list[int], left_out: list[int],
               causal: bool) -> float:
    """The task tokens' share of the attention of heads that spread it evenly over the keys each query sees (left-out
    keys aside), averaged over the query tokens ``task_attention`` averages (special and left-out ones aside)."""
    task = set(task_positions) - set(left_out)
    queries = [i for i in range(n_tokens) if i not in special and i not in left_out]
    shares = []
    for query in queries:
        seen = [k for k in range(query + 1 if causal else n_tokens) if k not in left_out]
        if seen:
            shares.append(sum(k in task for k in seen) / len(seen))
    return float(np.mean(shares)) if shares else 0.0


def head_attention(run: Any, text: str, max_length: int | None = None, loaded: LoadedModel | None = None,
                   groups_from: Any = None) -> HeadAttention:
    """Every head's attention in ``text`` under a finished run's model, with the run's mined task tokens and, for a
    row method, the share of each head's query, key and value rows its mask selected.

    Args:
        run: a finished run (folder, run id, ``FinetuneResult`` or registry record).
        text: one text.
        max_length: sub-tokens read; default the run's trained length.
        loaded: the run's model already loaded (``load_run``; left as it was), instead of loading it.
        groups_from: the run whose mined task tokens mark the text when ``run`` mined none (full finetuning, LoRA:
            a sparse run of the same data, say); a run that mined its own keeps them.

    Raises:
        LayerViewError: an empty text, or a model whose attention cannot be read.
        ModelSourceError: the run cannot be loaded.
    """
    if not isinstance(text, str):  # a list: the heads are drawn for one text at a time
        raise TypeError(f"head_attention reads one text (a string); got {type(text).__name__}: call it once per text.")
    if not text.strip():
        raise LayerViewError("head_attention needs one non-empty text.")
    folder = finished_run(run)
    loaded = loaded or load_run(folder)
    length = max_length or trained_max_length(folder)
    attention, tokens, special, enc = _attentions(loaded, text, length)
    notes = []
    [counted] = next(tokenized(loaded.tokenizer, [text], length + 1, truncation=True, max_length=length + 1))["input_ids"]
    if len(counted) > length:  # as explain says it (one sub-token more than read is enough to know)
        why = "the length asked" if max_length else "the run's trained length"  # --max-length or max_length=
        notes.append(f"text truncated to {length} sub-tokens ({why}; a larger max length reads more)")
    if loaded.is_decoder:
        notes.append("a decoder's token attends only to the tokens before it: a task token late in the text gets "
                     "little attention from a head that would read it")
    prefixed = attention.sum(-1).mean() < 0.999  # a prefix run's prefix positions, left out of the maps
    if prefixed:
        notes.append(f"{1 - attention.sum(-1).mean():.0%} of the attention goes to the prefix's positions, left out: "
                     "task attention is the share of what goes to the text")
    groups = _run_task_tokens(folder)
    if groups is None and groups_from is not None:
        groups = _run_task_tokens(finished_run(groups_from))
        if groups is not None:
            notes.append(f"task tokens mined by {Path(finished_run(groups_from)).name}: this run mined none")
    if groups is None:
        notes.append("the run has no mined task tokens (task_tokens.json): no task positions")
        positions: list[int] = []
    else:
        from clm_explore.mining import covered_positions

        positions = covered_positions([enc], [text], groups)[0]
    # A decoder's heads park much of their attention on its first token (an attention sink), whatever it is: with a
    # task word there ("How many ...") every head read as task-focused (0.86; 0.17 with one word put before it; the
    # models review). That position is left out, and the task's share is of the attention that goes elsewhere.
    sink = [0] if loaded.is_decoder and len(tokens) > 1 and not prefixed else []  # a prefix holds the sink itself
    if sink:
        notes.append("the first token, where a decoder's heads leave much of their attention (an attention sink), is "
                     "left out: task attention is the share of the rest")
    counted = [p for p in positions if p not in sink]
    queries = [i for i in range(len(tokens)) if i not in special and i not in sink]
    if counted and queries:
        rows = attention[:, :, queries]
        # Of the attention that goes to the text's tokens other than the sink: a prefix run's rows hold only the
        # text's part (53% went to the prefix in the layer review, and every head read below an even spread).
        elsewhere = rows.sum(-1) - (rows[..., sink].sum(-1) if sink else 0.0)
        task_attention = (rows[..., counted].sum(-1) / np.maximum(elsewhere, 1e-9)).mean(-1)
    else:
        task_attention = np.full(attention.shape[:2], np.nan)
    selected = head_selection(folder, attention.shape[0], attention.shape[1], loaded)
    return HeadAttention(tokens=tokens, attention=attention, task_positions=positions, task_attention=task_attention,
                         selected=selected, special_positions=sorted(special), notes=notes, left_out=sink,
                         causal=loaded.is_decoder)


def _attentions(loaded: LoadedModel, text: str, length: int) -> tuple[np.ndarray, list[str], set[int], Any]:
    """(layers, heads, tokens, tokens) attention of one text, its tokens, the special positions and the encoding.
    The model computes with eager attention for the call (SDPA returns no weights), under the model's lock (the
    app's sessions share a cached run model), and is put back as it was."""
    from clm_explore.attribution import model_lock

    [text] = bounded_texts([text], length, cut_side(loaded.tokenizer))
    encoded = loaded.tokenizer(text, truncation=True, max_length=length, return_tensors="pt",
                               return_special_tokens_mask=True)
    special_mask = encoded.pop("special_tokens_mask")[0].tolist()
    model = loaded.model
    # The transformers model that holds the attention: the model itself, or the one a prefix run's wrapper holds.
    base = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    before = getattr(getattr(base, "config", None), "_attn_implementation", None)
    switch = base is not None and before not in (None, "eager")
    device = next(model.parameters()).device
    with model_lock(model), torch.no_grad():
        was_training = model.training
        try:
            if switch:
                base.set_attn_implementation("eager")  # type: ignore[union-attr]
            model.eval()
            out = model(**{k: v.to(device) for k, v in encoded.items()}, output_attentions=True)
        except (ValueError, TypeError, AttributeError, RuntimeError, IndexError) as exc:  # e.g. a text longer
            # than a prefix run's positions leave it
            raise LayerViewError(f"The attention of {loaded.source} cannot be read ({exc}).") from exc
        finally:
            model.train(was_training)
            if switch:
                base.set_attn_implementation(before)  # type: ignore[union-attr]
    if not out.attentions:
        raise LayerViewError(f"{loaded.source} returned no attention weights.")
    n = encoded["input_ids"].shape[1]
    attention = torch.stack([a[0, :, :, -n:].float().cpu() for a in out.attentions]).numpy()
    tokens = loaded.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    special = {i for i, s in enumerate(special_mask) if s}
    return attention, tokens, special, encoded.encodings[0]


def _run_task_tokens(folder: Path) -> Any:
    from clm_explore.mining import TaskTokens

    path = folder / "task_tokens.json"
    if not path.is_file():
        return None
    try:
        return TaskTokens.load(path)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path} cannot be read ({exc}); restore it, or delete it (no task positions are "
                               "then shown).") from exc


def head_selection(folder: Path, layers: int, heads: int, loaded: LoadedModel) -> np.ndarray | None:
    """(layers, heads): the share of each head's query, key and value rows in the run's row mask
    (``masks.safetensors``, which holds only the maps with a selected row); a key/value head shared by several
    query heads (grouped-query attention) counts for each. None without a mask."""
    path = folder / "masks.safetensors"
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from clm_explore.sensitivity import scored_linears

    try:
        masks = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelSourceError(f"{path} cannot be read ({exc}); restore it, or delete it (no mask is then shown)."
                               ) from exc
    kv_heads = getattr(loaded.model.config, "num_key_value_heads", None) or heads
    picked = np.zeros((layers, heads))
    total = np.zeros((layers, heads))
    for name, (lin, layer, kind) in scored_linears(loaded.model).items():
        own = heads if kind == "q" else kv_heads
        if kind not in ("q", "k", "v") or not 0 <= layer < layers or lin.out_features % own:
            continue
        mask = masks.get(f"{name}.weight")
        rows = np.zeros(lin.out_features, dtype=bool) if mask is None else (
            mask.bool().reshape(mask.shape[0], -1).any(dim=1).numpy())
        per_head = rows.reshape(own, -1)
        for h in range(heads):
            block = per_head[h * own // heads]
            picked[layer, h] += block.sum()
            total[layer, h] += block.size
    if not total.any():
        return None
    return np.divide(picked, total, out=np.full_like(picked, np.nan), where=total > 0)
