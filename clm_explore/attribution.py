"""Word attributions of a sequence classifier: Integrated Gradients on the input word embeddings.

``explain(model, tokenizer, texts, cfg)`` runs Captum's ``LayerIntegratedGradients`` on
``model.get_input_embeddings()`` and returns one ``TokenAttribution`` per text: a score per sub-token
(the attribution summed over the hidden dimension), merged into words (a word's score is the sum of its
pieces). The attributed output is the softmax probability of the target label (``AttributionConfig.output``; or its
logit), so that the scores of a row sum to ``p(x) - p(reference)`` (or the logit's change) up to the convergence
``delta``.

Reference inputs: Captum calls them ``baselines``; here they are ``reference_ids`` because
``baselines`` means comparison finetuning methods elsewhere in this project. For encoders the reference
keeps the special tokens ([CLS], [SEP]) and replaces every other token by [PAD]. Decoders pool at the last
non-pad token, so a pad reference would move the pooling position: they get a non-pad token (UNK, EOS or BOS,
else a space's token; ``reference_token_id``) and twice the steps, and the result's ``note`` says so.
"""

from __future__ import annotations

import math
import threading
import unicodedata
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from clm_explore.batches import bounded_texts, cut_side, tokenized
from clm_explore.config import MAX_ATTRIBUTION_STEPS, AttributionConfig, config_from
from clm_explore.modeling import LoadedModel, check_trained, load_run
from clm_explore.runs import TRAINED_LENGTH_KEY

TargetSpec = int | str | None
DEFAULT_MAX_LENGTH = 64
"""Sub-tokens read when neither the config nor the model says how many (``AttributionConfig.max_length`` None and
a model that is no finetuned run's)."""


class AttributionError(ValueError):
    """An attribution request cannot be served (unknown target label, empty text); the message says why."""


@dataclass
class TokenAttribution:
    """Integrated-Gradients scores of one text, per word and per sub-token."""

    words: list[str]
    """The text's words (the tokenizer's words, split further at whitespace; ``merge_words``). When truncation
    cut the text, the words read are kept and the last one may be a fragment of a cut word (``note`` says so)."""
    scores: list[float]
    """One score per word: the sum of its sub-token scores (positive = towards the target)."""
    target: int
    """Label id explained (also ``target_id``: ``to_record``'s ``target`` is the label name)."""
    target_label: str
    probability: float
    """Softmax probability of the target label on the input."""
    delta: float
    """Convergence delta: sum(token_scores) - (f(input) - f(reference)), f the output explained (``output``); small
    when the integral converged."""
    tokens: list[str] = field(default_factory=list)
    """Sub-tokens, special tokens included (also ``sub_tokens``: ``to_record``'s ``tokens`` are the words)."""
    token_scores: list[float] = field(default_factory=list)
    note: str = ""
    """Anything a reader should know (decoder reference, truncation)."""
    predicted: int = -1
    """The model's predicted label id (equals ``target`` when the target is 'predicted')."""
    predicted_label: str = ""
    output: str = "probability"
    """What the scores explain: the target's 'probability' or its 'logit' (``AttributionConfig.output``)."""

    @property
    def change(self) -> float:
        """What the scores add up to, exactly: the output's change from the reference to the input."""
        return float(sum(self.token_scores or self.scores)) - self.delta

    @property
    def unsettled(self) -> bool:
        """Whether the scores miss ``change`` by more than the integral's error allows (``is_unsettled``)."""
        return is_unsettled(self.delta, self.change, self.output)

    def __repr__(self) -> str:  # the default lists every sub-token and score: hundreds of characters a text
        strongest = sorted(zip(self.words, self.scores, strict=True), key=lambda ws: -abs(ws[1]))[:4]
        shown = ", ".join(f"{word} {score:+.2f}" for word, score in strongest)
        more = f", ... ({len(self.words)} words)" if len(self.words) > len(strongest) else ""
        return f"TokenAttribution({self.target_label} p={self.probability:.2f}: {shown}{more})"

    # The names ``explain --json`` (``to_record``) gives these fields, for code written against it (the API review:
    # ``tokens`` and ``target`` mean sub-tokens and an id here, words and a label name there).
    @property
    def sub_tokens(self) -> list[str]:
        return self.tokens

    @property
    def sub_token_scores(self) -> list[float]:
        return self.token_scores

    @property
    def target_id(self) -> int:
        return self.target

    @property
    def predicted_id(self) -> int:
        return self.predicted

    def to_dict(self) -> dict[str, Any]:
        """Every field, by its name here (``from_dict`` reads it back)."""
        return asdict(self)

    def to_record(self) -> dict[str, Any]:
        """The object ``clm-explore explain --json`` prints for a text: ``tokens`` are the words, ``target`` and
        ``predicted`` label names (with ``target_id``/``predicted_id``), ``sub_tokens`` the pieces."""
        return {"tokens": self.words, "scores": self.scores, "target": self.target_label, "target_id": self.target,
                "predicted": self.predicted_label or str(self.predicted), "predicted_id": self.predicted,
                "probability": self.probability, "delta": self.delta, "output": self.output,
                "sub_tokens": self.tokens, "sub_token_scores": self.token_scores, "note": self.note}

    def to_frame(self) -> pd.DataFrame:
        """A row per word: word, score (towards ``target_label``)."""
        return pd.DataFrame({"word": self.words, "score": self.scores})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenAttribution:
        """A ``to_dict`` dict, or a ``to_record`` one (``explain --json``'s: words as ``tokens``, label names)."""
        if "words" not in data and "sub_tokens" in data:
            data = {"words": data["tokens"], "scores": data["scores"], "target": data["target_id"],
                    "target_label": data["target"], "probability": data["probability"], "delta": data["delta"],
                    "tokens": data["sub_tokens"], "token_scores": data.get("sub_token_scores", []),
                    "note": data.get("note", ""), "predicted": data.get("predicted_id", -1),
                    "predicted_label": data.get("predicted", ""), "output": data.get("output", "probability")}
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def is_decoder_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Decoders pool at the last token and have no [CLS]; they need a non-pad reference."""
    return bool(getattr(model.config, "is_decoder", False)) or tokenizer.cls_token_id is None


def reference_token_id(tokenizer: PreTrainedTokenizerBase, decoder: bool) -> int:
    """The token every non-special position of the reference takes: PAD (encoders) or UNK/EOS/BOS (decoders), else a
    space's own token: id 0, the last resort, is "!" in a byte-level vocabulary (GPT-2's, SmolLM2's), a token with a
    meaning of its own (the attributions review)."""
    pad = tokenizer.pad_token_id
    if not decoder and pad is not None:
        return int(pad)
    for candidate in (tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None and candidate != pad:
            return int(candidate)
    space = tokenizer(" ", add_special_tokens=False)["input_ids"]
    if len(space) == 1 and space[0] != pad:
        return int(space[0])
    return 0 if pad != 0 else 1


def resolve_target(model: PreTrainedModel, target: TargetSpec) -> int | None:
    """A label name or id -> a label id (None stays None); unknown names raise ``AttributionError``.

    A string is a label name first: labels are strings sorted as strings, so with numeric labels
    ("0", "1", "10", "2", ...) the label "2" is not id 2. Only a string that names no label and is all
    digits is read as an id; an int is always an id.
    """
    if target is None:
        return None
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    if isinstance(target, str):
        by_name = {v: k for k, v in id2label.items()}
        if target in by_name:
            return by_name[target]
        if not target.lstrip("-").isdigit():
            raise AttributionError(
                f"Unknown target label {target!r}; the model's labels are: {', '.join(by_name)}."
            )
    idx = int(target)
    if idx not in id2label:
        raise AttributionError(
            f"Target label id {idx} is out of range; the model has {len(id2label)} labels."
        )
    return idx


def explain(
    model: PreTrainedModel | LoadedModel | str | Path | Any,
    tokenizer: PreTrainedTokenizerBase | Sequence[str] | str | None = None,
    texts: Sequence[str] | str | None = None,
    cfg: AttributionConfig | None = None,
    target: TargetSpec | Sequence[TargetSpec] = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[TokenAttribution]:
    """Integrated-Gradients word attributions of each text: ``explain(model, tokenizer, texts)``, or as ``predict``
    is called, ``explain(run, texts)`` (a run folder, run id, ``FinetuneResult``, registry record or ``LoadedModel``;
    the other arguments then by name).

    Args:
        model: a sequence classifier; put in eval mode for the call (its previous mode is restored),
            never otherwise changed. Calls on one model from several threads take turns.
        tokenizer: the model's fast tokenizer (word ids and offsets are needed to merge pieces).
        texts: one text or a list of texts.
        cfg: steps, batching, truncation (``max_length`` None: the length the model's run trained with, which its
            config records, so ``load_run``'s model is read as ``predict`` reads it; DEFAULT_MAX_LENGTH for a
            model that records none, e.g. a run saved before the record was kept).
        target: None (the predicted label), one label name/id for every text, or one per text (gold labels
            when ``cfg.target == 'gold'``).
        on_progress: called with (texts done, texts) after each batch: a few hundred texts take minutes.

    Returns:
        One ``TokenAttribution`` per text, in input order.
    """
    if not isinstance(model, torch.nn.Module):
        model, tokenizer, texts = _run_call(model, tokenizer, texts)
    elif texts is None:
        raise TypeError("explain(model, tokenizer, texts): the texts are missing.")
    cfg = config_from(cfg, AttributionConfig, "explain")
    if cfg.max_length is None:
        trained = getattr(model.config, TRAINED_LENGTH_KEY, None)
        cfg = replace(cfg, max_length=trained if isinstance(trained, int) and trained >= 4 else DEFAULT_MAX_LENGTH)
    if not getattr(tokenizer, "is_fast", False):
        raise AttributionError(
            "explain needs a fast tokenizer (word ids and offsets merge pieces into words)."
        )
    side = cut_side(tokenizer)  # a run that kept long texts' ends: its tokenizer cuts their starts
    given = [texts] if isinstance(texts, str) else list(texts)
    whole = [len(text) if isinstance(text, str) else 0 for text in given]  # a cut note says of how many characters
    texts = bounded_texts(given, cfg.max_length, side)
    blank = [i for i, text in enumerate(texts) if isinstance(text, str) and not text.strip()]
    if blank:  # its attributions would be the special tokens' alone
        raise AttributionError(f"texts[{blank[0]}] is empty: it has no words to attribute ({len(blank)} such).")
    targets = _per_text_targets(model, texts, cfg, target)
    if not texts:
        return []
    # Group texts of similar length so each batch pads little (sorted by sub-token count). One sub-token more than
    # read tells a text that was cut (what its characters cannot: a tokenizer drops some, an emoji's U+FE0F say).
    beyond = [(ids, chunk.word_ids(j), offsets) for chunk in tokenized(
        tokenizer, texts, cfg.max_length + 1, truncation=True, max_length=cfg.max_length + 1,
        return_offsets_mapping=True) for j, (ids, offsets) in enumerate(zip(chunk["input_ids"],
                                                                            chunk["offset_mapping"], strict=True))]
    lengths = [len(ids) for ids, _, _ in beyond]
    read = cfg.max_length - tokenizer.num_special_tokens_to_add()
    # A cut: 0 none, 1 between words, 2 inside a word (its last word shown is the start of a longer one); with the
    # text's whole length (the bound above cut it to 2,048 characters at 64 sub-tokens, and a note read "of 2,048")
    cuts = [(0 if n <= cfg.max_length else 1 + _cuts_a_word(text, word_ids, offsets, read, side), size)
            for text, size, (n, (_, word_ids, offsets)) in zip(texts, whole, zip(lengths, beyond, strict=True),
                                                                 strict=True)]
    unread = [i for i, n in enumerate(lengths) if n <= tokenizer.num_special_tokens_to_add()]
    if unread:  # zero-width or control characters alone: the tokenizer drops them, and the "explanation" was of an
        # empty input (the attributions review)
        raise AttributionError(f"texts[{unread[0]}] has no character the model reads (only invisible or control "
                               f"characters): it has no words to attribute ({len(unread)} such).")
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    results: list[TokenAttribution | None] = [None] * len(texts)
    with model_lock(model):  # Captum hooks the model's input embeddings while it attributes
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                for start in range(0, len(order), cfg.batch_size):
                    chunk = order[start : start + cfg.batch_size]
                    done = _explain_batch(model, tokenizer, [texts[i] for i in chunk], cfg,
                                          [targets[i] for i in chunk], [cuts[i] for i in chunk])
                    for i, res in zip(chunk, done, strict=True):
                        results[i] = res
                    if on_progress is not None:
                        on_progress(min(start + cfg.batch_size, len(order)), len(order))
        finally:
            model.train(was_training)
    return [r for r in results if r is not None]


_MODEL_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.Lock:
    """One lock per model object. While ``explain`` runs, a hook on the input embeddings swaps in its own
    tensors, so a second ``explain`` on the same model at once (two app sessions share a cached run model) fails
    on the first one's shapes: calls on one model take turns."""
    with _LOCKS_LOCK:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


def _run_call(run: Any, texts: Any, extra: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Any]:
    """``explain(run, texts)``'s model, tokenizer and texts (``texts=`` by name lands in ``extra``)."""
    if texts is None:
        texts, extra = extra, None
    if texts is None:
        raise TypeError("explain(run, texts): the texts are missing.")
    if extra is not None:
        raise TypeError("explain takes (run, texts) or (model, tokenizer, texts); a run was given with more than its "
                        "texts: pass cfg or target by name.")
    if isinstance(run, LoadedModel):
        check_trained(run)  # a base model's head, as predict refuses it (the API review)
    loaded = run if isinstance(run, LoadedModel) else load_run(run)
    return loaded.model, loaded.tokenizer, texts


def _per_text_targets(
    model: PreTrainedModel,
    texts: list[str],
    cfg: AttributionConfig,
    target: TargetSpec | Sequence[TargetSpec],
) -> list[int | None]:
    if isinstance(target, (list, tuple)):
        if len(target) != len(texts):
            raise AttributionError(f"Got {len(target)} targets for {len(texts)} texts.")
        return [resolve_target(model, t) for t in target]
    if target is None and cfg.target == "gold":
        raise AttributionError("target='gold' needs the gold labels: pass target=[label, ...], one per text.")
    one = resolve_target(model, target)  # type: ignore[arg-type]
    return [one] * len(texts)


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    cfg: AttributionConfig,
    decoder: bool,
    device: torch.device,
) -> tuple[Any, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """(encoding, input_ids, reference_ids, extra forward args); ids are (batch, seq) int64."""
    enc = tokenizer(
        texts,
        padding=True,
        padding_side="right",  # as training and predictions pad (batches.collate): GPT-2's positions and a prefix
        # run's read a left-padded text differently, so its bars changed with the other texts of the call
        truncation=True,
        max_length=cfg.max_length,
        return_tensors="pt",
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    input_ids = enc["input_ids"].to(device)
    attention_mask = enc["attention_mask"].to(device)
    keep = enc["special_tokens_mask"].bool().to(device) | (attention_mask == 0)
    # Captum's `baselines`: specials and padding as in the input, every other token replaced.
    fill = torch.full_like(input_ids, reference_token_id(tokenizer, decoder))
    reference_ids = torch.where(keep, input_ids, fill)
    extra = (
        (attention_mask, enc["token_type_ids"].to(device)) if "token_type_ids" in enc else (attention_mask,)
    )
    return enc, input_ids, reference_ids, extra


def _path_start(model: PreTrainedModel, forward: Any, input_ids: torch.Tensor, reference_ids: torch.Tensor,
                extra: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Probabilities where the attribution path starts: the input's forward pass with the reference's word
    embeddings, as Captum's layer attribution interpolates them. Not ``forward(reference_ids)``: RoBERTa and MPNet
    number positions from the ids (pad ids take the padding position), so that pass moves the positions too, and
    the bars (which add up to the path's change) could not match it (an MPNet run's p(reference) read 0.27 there
    against 0.81 at the path's start). For BERT and decoders the two are the same."""
    layer = model.get_input_embeddings()
    reference = layer(reference_ids)
    handle = layer.register_forward_hook(lambda _module, _args, _output: reference)
    try:
        return forward(input_ids, *extra).cpu()
    finally:
        handle.remove()


def _attributed(model: PreTrainedModel, output: str) -> Any:
    """The attributed function: softmax probabilities or logits (``output``), (rows, labels) float32."""

    def forward(
        ids: torch.Tensor, mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        logits = model(**kwargs).logits.float()
        return logits if output == "logit" else torch.softmax(logits, dim=-1)

    return forward


TOKENS_PER_PASS = 128 * 64
"""The most interpolated sub-tokens (rows x padded length) one forward/backward pass takes: the default 128 rows at
the default 64 sub-tokens. The attributions review: a cap on rows alone let 4 texts of 512 sub-tokens take 10.4 GB."""


def rows_per_pass(cap: int, texts: int, length: int) -> int:
    """Captum's ``internal_batch_size``: at most ``cap`` rows and ``TOKENS_PER_PASS`` sub-tokens a pass, and never
    fewer rows than texts (Captum takes every text's first step in the first pass)."""
    return max(texts, min(cap, TOKENS_PER_PASS // max(length, 1)))


UNSETTLED_SHARE = 0.1
"""The share of the output's change the scores may miss it by (|delta|) before a result's note says the bars do not
add up. A gap of a fixed 0.1 in probability (until the sixty-second session) let a delta of 0.09 pass on a change of
0.05 (the attributions review). At the default 32 steps, 60 test texts of an all-MiniLM-L6-v2 sparse run stayed well
under it (largest |delta| 0.069, median 0.0007); 3 of 8 of an all-mpnet-base-v2 full run did not (median 0.092), and
at 200 steps all did (largest 0.0068)."""
UNSETTLED_FLOOR = {"probability": 0.02, "logit": 0.1}
"""The least gap flagged, per output: under it a miss is the integral's noise on a change near 0."""


def allowed_gap(change: float, output: str = "probability") -> float:
    """The |delta| that scores adding up to ``change`` may have and still be read as amounts."""
    return max(unsettled_floor(output), UNSETTLED_SHARE * abs(change))


def unsettled_floor(output: str = "probability") -> float:
    """The least gap flagged for ``output`` (``UNSETTLED_FLOOR``; probability's for another name)."""
    return UNSETTLED_FLOOR.get(output, UNSETTLED_FLOOR["probability"])


def is_unsettled(delta: float, change: float, output: str = "probability") -> bool:
    """Whether scores that miss their output's ``change`` by ``delta`` should be read as a ranking, not amounts."""
    return abs(delta) > allowed_gap(change, output)


def _unsettled_note(delta: float, steps: int, output: str = "probability") -> str:
    """The note of a result whose bars miss the output's change; ``steps``: as asked (--steps; a decoder runs
    twice as many)."""
    more = f"; asking more than {steps} steps (--steps, up to {MAX_ATTRIBUTION_STEPS}) may help" if (
        steps < MAX_ATTRIBUTION_STEPS) else ""
    return f"the bars miss the {output} change by {delta:+.2f}, so read them as a ranking, not amounts{more}"


def _explain_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    cfg: AttributionConfig,
    targets: list[int | None],
    cut: list[tuple[int, int]],
) -> list[TokenAttribution]:
    decoder = is_decoder_model(model, tokenizer)
    enc, input_ids, reference_ids, extra = _encode(
        tokenizer, texts, cfg, decoder, next(model.parameters()).device
    )
    forward = _attributed(model, cfg.output)
    with torch.no_grad():
        values = forward(input_ids, *extra).cpu()
        ref_values = _path_start(model, forward, input_ids, reference_ids, extra)
    probs = values.softmax(-1) if cfg.output == "logit" else values
    predicted = probs.argmax(-1).tolist()
    target_ids = [p if t is None else t for p, t in zip(predicted, targets, strict=True)]
    n_steps = cfg.n_steps * 2 if decoder else cfg.n_steps
    # Imported here: every CLI command loads this module for its defaults, and the others must run where captum
    # is absent (a GPU image) and start without its half second of import.
    from captum.attr import LayerIntegratedGradients

    attributions = LayerIntegratedGradients(forward, model.get_input_embeddings()).attribute(
        inputs=input_ids,
        baselines=reference_ids,
        target=target_ids,
        additional_forward_args=extra,
        n_steps=n_steps,
        method=cfg.method,
        internal_batch_size=rows_per_pass(cfg.internal_batch_size, len(texts), input_ids.shape[1]),
    )
    token_scores = attributions.sum(dim=-1).detach().float().cpu()  # (batch, seq, hidden) -> (batch, seq)
    rows, cols = torch.arange(len(texts)), torch.tensor(target_ids)
    p_in = probs[rows, cols]
    changes = values[rows, cols] - ref_values[rows, cols]
    deltas = token_scores.sum(-1) - changes
    labels = {int(k): str(v) for k, v in model.config.id2label.items()}
    base_note = []
    if decoder:
        ref_tok = tokenizer.convert_ids_to_tokens(reference_token_id(tokenizer, decoder))
        base_note.append(f"decoder model: reference token {ref_tok!r} (not pad), {n_steps} integration steps "
                         f"(twice the {cfg.n_steps} asked)")
    out = []
    for i, text in enumerate(texts):
        offsets = enc["offset_mapping"][i].tolist()
        words, word_scores, _ = merge_words(text, enc.word_ids(i), offsets, token_scores[i])
        kind, size = cut[i]
        note = base_note + ([_cut_note(text, size, words, offsets, cfg.max_length, kind == 2, cut_side(tokenizer))]
                            if kind else [])
        if said := _unknown_note(tokenizer, text, enc["input_ids"][i].tolist(), offsets):
            note.append(said)
        if is_unsettled(float(deltas[i]), float(changes[i]), cfg.output):
            note.append(_unsettled_note(float(deltas[i]), cfg.n_steps, cfg.output))
        valid = enc["attention_mask"][i].bool().tolist()
        tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][i].tolist())
        out.append(
            TokenAttribution(
                words=words,
                scores=word_scores,
                target=target_ids[i],
                target_label=labels.get(target_ids[i], str(target_ids[i])),
                probability=float(p_in[i]),
                delta=float(deltas[i]),
                tokens=[t for t, v in zip(tokens, valid, strict=True) if v],
                token_scores=[float(x) for x, v in zip(token_scores[i].tolist(), valid, strict=True) if v],
                note="; ".join(note),
                predicted=int(predicted[i]),
                predicted_label=labels.get(int(predicted[i]), str(int(predicted[i]))),
                output=cfg.output,
            )
        )
    return out


def _cut_note(text: str, size: int, words: list[str], offsets: list[list[int]], max_length: int, in_word: bool,
              side: str) -> str:
    """What an attribution says of a text cut to ``max_length`` sub-tokens: the characters read of its ``size``
    (``text`` is the part ``bounded_texts`` kept: its start, or with ``side`` 'left' its end), and a word shown in
    part where the cut fell inside it (``in_word``)."""
    if side == "left":
        start = min((begin for begin, end in offsets if end > begin), default=len(text))  # where the read part starts
        part = f"its last {len(text) - start:,} of {size:,} characters"
        inside = f" (its first word shown, {words[0]!r}, is the end of a longer word)" if in_word and words else ""
    else:
        read = max((end for _, end in offsets), default=0)  # how far into the text the sub-tokens read reach
        part = f"its first {read:,} of {size:,} characters"
        inside = f" (its last word shown, {words[-1]!r}, is the start of a longer word)" if in_word and words else ""
    return f"text truncated to {max_length} sub-tokens ({part}){inside}"


def _cuts_a_word(text: str, word_ids: list[int | None], offsets: list[tuple[int, int]], read: int,
                 side: str = "right") -> bool:
    """Whether a text's truncation after ``read`` sub-tokens falls inside a word, as ``merge_words`` joins words: the
    last sub-token read and the first one left out of one word, with no space between them (the attributions
    review: "un" of "unbelievably" shown as a word; a Chinese character, a word of its own, is not cut). With
    ``side`` 'left' the encoding holds the text's last ``read`` + 1 pieces: the first one is left out."""
    pieces = [i for i, word in enumerate(word_ids) if word is not None]
    if read < 1 or len(pieces) <= read:
        return False
    if side == "left":
        pieces = pieces[len(pieces) - read - 1 :]
    last, first = (pieces[0], pieces[1]) if side == "left" else (pieces[read - 1], pieces[read])
    if _has_space(text, offsets[last][1], offsets[first][0]):
        return False
    return word_ids[last] == word_ids[first] or _joins_word(text, offsets[first][0])


def _unknown_note(tokenizer: PreTrainedTokenizerBase, text: str, ids: list[int], offsets: list[list[int]]) -> str:
    """Name the parts of a text the model reads as its unknown token ([UNK]: an emoji, a character outside its
    vocabulary), or ''. Their bars belong to the unknown token at that place, not to what the text says there: the
    attributions review saw 💳 and 卡 scored as if the model had read them."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return ""
    parts = [text[start:end] for token, (start, end) in zip(ids, offsets, strict=True) if token == unk and end > start]
    if not parts:
        return ""
    shown = ", ".join(dict.fromkeys(parts[:8]))
    return (f"{len(parts)} part(s) of the text are unknown to the model ({tokenizer.unk_token}): {shown}; their bars "
            "are the unknown token's at that place, not what the text says there")


def merge_words(
    text: str, word_ids: list[int | None], offsets: list[list[int]], token_scores: torch.Tensor
) -> tuple[list[str], list[float], bool]:
    """Sum sub-token scores into words.

    A word is a run of sub-tokens with one word id and no whitespace between them, or joined by an apostrophe or
    a hyphen between letters ("hasn't", "top-up": BERT's pre-tokenizer makes three words of each, and the report
    showed "hasn ' t" with "'" and "t" among a label's top words): the tokenizer's word ids
    alone are not enough, as a SentencePiece tokenizer without a word pre-tokenizer (Llama-2 and Mistral:
    ``Metaspace(split=False)``) gives every sub-token of a text word id 0. A sub-token that covers only
    whitespace (byte-level BPE's lone 'Ġ' before a second space, SentencePiece's lone '▁') is no word: its
    score goes to the next word (the previous one at the end), so no word is empty and the scores still sum
    to the row's total. A single sub-token that spans whitespace itself (only in vocabularies learnt without
    splitting at spaces) keeps its words together, as its score cannot be divided between them.

    Args:
        text: the original text (words are cut from it by character offsets).
        word_ids: the fast tokenizer's word index per sub-token (None for specials and padding).
        offsets: (start, end) character span per sub-token.
        token_scores: (seq,) float, one score per sub-token.

    Returns:
        (words, scores, truncated): truncated is True when the text has characters after the last sub-token
        read; the last word is then possibly a fragment of a word the truncation cut.
    """
    spans: list[list[int]] = []  # [start, end] of each word's non-whitespace characters
    sums: list[float] = []
    last_wid: int | None = None
    pending = 0.0  # scores of whitespace-only sub-tokens, waiting for the next word
    last_end = 0
    for pos, wid in enumerate(word_ids):
        if wid is None:
            continue
        start, end = offsets[pos]
        last_end = max(last_end, end)
        score = float(token_scores[pos])
        inner = _non_space_span(text, start, end)
        if inner is None:
            pending += score
            continue
        joined = spans and not _has_space(text, spans[-1][1], inner[0]) and _joins_word(text, inner[0])
        if not spans or (wid != last_wid and not joined) or _has_space(text, spans[-1][1], inner[0]):
            spans.append(list(inner))
            sums.append(pending + score)
        else:
            spans[-1][1] = max(spans[-1][1], inner[1])
            sums[-1] += pending + score
        pending, last_wid = 0.0, wid
    if sums:
        sums[-1] += pending  # trailing whitespace pieces: to the last word
    words = [text[s:e] for s, e in spans]
    truncated = any(_read_by_tokenizers(c) for c in text[last_end:])
    return words, sums, truncated


def _read_by_tokenizers(char: str) -> bool:
    """Whether a character left after the last sub-token means the text was cut: not whitespace, and not a format or
    control character (a right-to-left mark, a zero-width space, a BOM), which tokenizers drop and a text may end in."""
    return not char.isspace() and unicodedata.category(char) not in ("Cf", "Cc")


def _non_space_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """(first, last + 1) of the non-whitespace characters in text[start:end]; None when there are none."""
    piece = text[start:end]
    stripped = piece.lstrip()
    if not stripped:
        return None
    first = start + len(piece) - len(stripped)
    return first, first + len(stripped.rstrip())


WORD_JOINERS = frozenset("'\u2019-\u2010")
"""Characters that join two parts of one word when letters stand on both sides: apostrophes and hyphens."""


def _joins_word(text: str, start: int) -> bool:
    """Whether the piece starting at ``start`` continues the word before it: a joiner between letters or digits
    ("hasn|'t", "covid|-19"), or a letter or digit after such a joiner ("hasn'|t"). Other punctuation ("card.",
    "(card)") stays a word of its own."""
    if start < 1 or start >= len(text):
        return False
    left, right = text[start - 1], text[start]
    if right in WORD_JOINERS:
        return left.isalnum() and start + 1 < len(text) and text[start + 1].isalnum()
    return left in WORD_JOINERS and right.isalnum() and start >= 2 and text[start - 2].isalnum()


def _has_space(text: str, start: int, end: int) -> bool:
    return any(ch.isspace() for ch in text[start:end])


def load_run_model(run_dir: str | Path) -> LoadedModel:
    """Load a run folder with its own labels (``modeling.load_run``)."""
    return load_run(run_dir)


def mean_abs_delta(results: Sequence[TokenAttribution]) -> float:
    """Mean |delta| over results (nan when empty): the convergence figure of a batch of attributions."""
    if not results:
        return math.nan
    return sum(abs(r.delta) for r in results) / len(results)
