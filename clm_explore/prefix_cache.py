"""The frozen prefix, computed once: layers below the lowest trained one never change during a row
method's training, so each training row's hidden states at the input of that layer are computed once
(eval mode) and every step runs only the layers above (method.md section 4, "backward stops below the
lowest selected layer"; this also skips their forward pass).

What changes: the frozen lower layers run without dropout (it would be fresh noise each epoch otherwise),
the layers that train keep theirs; ``input_dropout`` (default 0) drops elements of the cached states each
step instead, a stand-in for that lost noise. The cache holds (tokens, hidden) floats per training row, in memory.
When a method scores rows only from a floor layer up (the mask's lowest eligible layer), ``finetune``
builds the cache at that floor before scoring: the head warm-up and the scoring then run only the layers
above it too, and training reuses it (``finetune.frozen_prefix``).

Architecture-agnostic by checking, not by assuming: the model's input-embedding module (or its parent)
must feed layer 0 directly, and the cached path must reproduce the model's own logits on a batch in eval
mode; otherwise ``build_prefix_cache`` says why and training runs the whole model as before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from clm_explore.batches import collate
from clm_explore.modeling import autocast_dtype

BUILD_BATCH = 64
CHECK_ROWS = 8
TRAINS_BELOW = "a parameter below the lowest trained layer trains"


class _Stop(Exception):
    """Raised by the capture hook: nothing above the cached layer needs computing."""


class _Fixed(nn.Module):
    """Stands in for the embeddings: returns the batch's cached states (with dropout ``p`` in training
    mode), whatever it is called with."""

    def __init__(self, states: torch.Tensor, p: float):
        super().__init__()
        self.states, self.p = states, p

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return nn.functional.dropout(self.states, self.p, training=self.training)


@dataclass
class PrefixCache:
    model: nn.Module
    embeddings_name: str
    layers_name: str
    start: int
    """Index of the first layer that runs; layers 0..start-1 and the embeddings are cached."""
    states: list[torch.Tensor]
    """Per training row: (tokens, hidden) input of layer ``start``."""
    seconds: float = 0.0
    input_dropout: float = 0.0
    """Dropout probability on the cached states while the model trains."""
    compute_dtype: torch.dtype = torch.float32
    """The dtype the layers above take (the states may be stored narrower)."""

    @property
    def megabytes(self) -> float:
        return sum(s.numel() * s.element_size() for s in self.states) / 2**20  # the views tile the buffer

    def frozen_modules(self) -> list[nn.Module]:
        """The modules the cache stands in for: the embeddings and the layers below ``start``."""
        layers = self.model.get_submodule(self.layers_name)
        return [self.model.get_submodule(self.embeddings_name), *list(layers)[: self.start]]

    def trains_below(self) -> bool:
        """Whether a parameter the cache stands in for trains (then the cache would be stale)."""
        return any(p.requires_grad for m in self.frozen_modules() for p in m.parameters())

    def fits(self, ids: list[list[int]]) -> bool:
        """Whether the cache holds exactly these rows' lengths (the same rows, tokenized the same way)."""
        return len(ids) == len(self.states) and all(len(x) == len(s) for x, s in zip(ids, self.states, strict=True))

    def info(self) -> dict:
        return {"from_layer": self.start, "seconds": round(self.seconds, 2), "mb": round(self.megabytes, 1),
                "input_dropout": self.input_dropout, "dtype": str(self.states[0].dtype).removeprefix("torch.")
                if self.states else None}

    @contextmanager
    def feeding(self, idx: np.ndarray) -> Iterator[None]:
        """Inside, a forward pass of the model on rows ``idx`` (collated as usual) starts at layer ``start``
        from their cached states; outside, the model is untouched."""
        embeddings = self.model.get_submodule(self.embeddings_name)
        layers = self.model.get_submodule(self.layers_name)
        batch = pad_sequence([self.states[i] for i in idx], batch_first=True).to(self.compute_dtype)
        self.model.set_submodule(self.embeddings_name, _Fixed(batch, self.input_dropout).train(self.model.training))
        self.model.set_submodule(self.layers_name, nn.ModuleList(list(layers)[self.start :]))
        try:
            yield
        finally:
            self.model.set_submodule(self.embeddings_name, embeddings)
            self.model.set_submodule(self.layers_name, layers)


def build_prefix_cache(model: nn.Module, ids: list[list[int]], pad_id: int, start: int | None,
                       device: torch.device, max_mb: float = float("inf"), require_frozen: bool = True,
                       dtype: torch.dtype = torch.float32) -> tuple[PrefixCache | None, str]:
    """The cache for training rows ``ids`` from layer ``start`` on, or (None, why not), its states stored
    as ``dtype`` (float16 halves the memory; they are cast back to the model's dtype for each batch). With
    ``require_frozen=False`` the model may still have trainable parameters below ``start`` (built before
    the method freezes them): the user then checks ``trains_below()`` before training with it."""
    started = time.perf_counter()
    if not start or start < 1:
        return None, "no frozen layer below the lowest trained one"
    needed_mb = sum(len(x) for x in ids) * model.config.hidden_size * dtype.itemsize / 2**20
    if needed_mb > max_mb:
        return None, f"the cache would need {needed_mb:.0f} MB, above the {max_mb:g} MB cap"
    layers_name = _layer_list_name(model)
    if layers_name is None:
        return None, "no list of transformer layers found"
    layers = model.get_submodule(layers_name)
    if start >= len(layers):
        return None, f"lowest trained layer {start} is not a transformer layer"
    embeddings_name = _feeding_embeddings(model, layers[0], ids, pad_id, device)
    if embeddings_name is None:
        return None, "the input embeddings do not feed layer 0 directly"
    cache = PrefixCache(model, embeddings_name, layers_name, start, [], compute_dtype=next(model.parameters()).dtype)
    if require_frozen and cache.trains_below():
        return None, TRAINS_BELOW
    cache.states = _layer_inputs(model, layers[start], ids, pad_id, device, dtype)
    if not all(bool(torch.isfinite(x).all()) for x in cache.states):  # float16 overflows above 65504
        return None, f"the states exceed {str(dtype).removeprefix('torch.')}'s range"
    if not _reproduces_logits(cache, ids, pad_id, device):
        return None, "the cached layers do not reproduce the model's logits"
    cache.seconds = time.perf_counter() - started
    return cache, ""


def _layer_list_name(model: nn.Module) -> str | None:
    n_layers = getattr(model.config, "num_hidden_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers and name.rsplit(".", 1)[-1] in ("layer", "layers", "h"):
            return name
    return None


def _feeding_embeddings(model: nn.Module, first_layer: nn.Module, ids, pad_id, device) -> str | None:
    """The input-embedding module, or its parent (BERT adds positions and a LayerNorm there), whose output
    is exactly layer 0's input; None when neither is (e.g. positions added in the model's forward)."""
    word = model.get_input_embeddings()
    word_name = next(n for n, m in model.named_modules() if m is word)
    candidates = [word_name, word_name.rpartition(".")[0]]
    outputs: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda _m, _a, out, n=n: outputs.__setitem__(n, out))
             for n in candidates if n]
    rows = _row_groups(ids)[0]
    try:
        layer_input = _run_until(model, first_layer, ids, rows, pad_id, device)
    finally:
        for h in hooks:
            h.remove()
    return next((n for n in candidates if n in outputs and isinstance(outputs[n], torch.Tensor)
                 and outputs[n].shape == layer_input.shape and torch.equal(outputs[n], layer_input)), None)


def _layer_inputs(model: nn.Module, layer: nn.Module, ids, pad_id, device, dtype) -> list[torch.Tensor]:
    """Per row, a view into one preallocated buffer (thousands of small tensors can fragment the heap)."""
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])])
    buffer: torch.Tensor | None = None
    for rows in _row_groups(ids):
        hidden = _run_until(model, layer, ids, rows, pad_id, device)
        if buffer is None:
            buffer = torch.empty(int(offsets[-1]), hidden.shape[-1], device=device, dtype=dtype)
        for r, i in enumerate(rows):
            buffer[offsets[i] : offsets[i + 1]] = hidden[r, : len(ids[i])]
    return [] if buffer is None else [buffer[offsets[i] : offsets[i + 1]] for i in range(len(ids))]


@torch.no_grad()
def _run_until(model: nn.Module, layer: nn.Module, ids, rows: np.ndarray, pad_id, device) -> torch.Tensor:
    """Layer ``layer``'s input hidden states for ``rows`` (eval mode; the layers above are not run)."""
    seen: list[torch.Tensor] = []

    def capture(_mod, args, kwargs):
        seen.append(args[0] if args else kwargs["hidden_states"])
        raise _Stop

    hook = layer.register_forward_pre_hook(capture, with_kwargs=True)
    input_ids, mask = collate(ids, rows, pad_id)
    try:
        with _inference(model, device):
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
    except _Stop:
        pass
    finally:
        hook.remove()
    return seen[0]


@torch.no_grad()
def _reproduces_logits(cache: PrefixCache, ids, pad_id, device) -> bool:
    model = cache.model
    # The shortest rows beside the longest, in one batch: the short ones padded far, where masks matter most.
    order = np.argsort([len(x) for x in ids], kind="stable")
    rows = np.unique(np.concatenate([order[: CHECK_ROWS // 2], order[-(CHECK_ROWS // 2):]]))
    input_ids, mask = collate(ids, rows, pad_id)
    with _inference(model, device):
        plain = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        with cache.feeding(rows):
            cached = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
    narrow = cache.states[0].dtype.itemsize < 4 or autocast_dtype(device) is not None
    tolerance = 5e-2 if narrow else 1e-4  # 16-bit states, or bf16 rounding differently at another padding width
    return bool(torch.allclose(plain, cached, atol=tolerance * (1 + plain.abs().max().item()), rtol=0))


@contextmanager
def _inference(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode (no dropout) and the device's autocast, as training uses it; the mode is restored after."""
    was_training = model.training
    model.eval()
    dtype = autocast_dtype(device)
    try:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            yield
    finally:
        model.train(was_training)


def _row_groups(ids: list[list[int]]) -> list[np.ndarray]:
    """Row indices sorted by length, in batches (little padding)."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    return [order[i : i + BUILD_BATCH] for i in range(0, len(order), BUILD_BATCH)]
