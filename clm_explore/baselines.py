"""Comparison methods for the shared training loop (docs/method.md section 5; the baselines of the team's
peers.md, B.3, in the shared docs).

Each method registers a *preparer* with ``finetune.register_method``: it decides what trains and how a
plain model comes back, and ``finetune.finetune`` does the rest, so data, epochs, seeds, evaluation and
the trainable-parameter count (parameters with ``requires_grad``) are the same for every method.

- ``head``: linear probe, only the classification head trains.
- ``bitfit``: every bias of the backbone plus the head; refused on a model without backbone biases (Llama-style
  decoders such as smollm2), where it would be a linear probe (``training.check_runnable``).
- ``lora`` / ``prefix``: ``peft`` adapters (task type SEQ_CLS, the head in ``modules_to_save``). LoRA is
  merged into the weights, so its run folder is a plain model, with its adapter kept beside it
  (``lora_adapter/``: what peft loads over the base model). A prefix cannot be merged: see
  ``PrefixRunModel`` for what its run folder holds and ``load_run_model`` to reload it.
- ``layers``: whole transformer layers, highest sensitivity per parameter first, up to the budget.
- ``random`` / ``fisher`` / ``gradient``: row deltas at the same budget as ``sparse``, with rows chosen
  at random, by Fisher scores without the token restriction, or by accumulated gradient magnitude.
"""

from __future__ import annotations

import re
import time
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from clm_explore.config import SensitivityConfig, config_from, to_dict
from clm_explore.data import AnnotatedData
from clm_explore.masks import budget_to_params, select_mask
from clm_explore.modeling import (
    LoadedModel,
    ModelSourceError,
    head_module_names,
    head_parameter_names,
    load_model,
    resolve_device,
)
from clm_explore.runs import read_json_object
from clm_explore.sensitivity import (
    SensitivityReport,
    _embedding_info,
    calibration_rows,
    head_kept,
    linear_matrix_infos,
    make_batches,
    scored_linears,
    warm_up_head,
)
from clm_explore.training import (
    MethodContext,
    Prepared,
    freeze_all,
    head_parameters,
    mine_and_score,
    prepare_rows,
    register_method,
    scoring_config,
)

ADAPTER_DIR = "adapter"
"""Sub-folder of a prefix run holding the peft adapter (the top level holds the base model)."""
LORA_ADAPTER_DIR = "lora_adapter"
"""Sub-folder of a LoRA run holding its peft adapter (the A and B matrices and the head), kept beside the merged model
at the top: what a peft user loads over the base model, and the run as a patch of a few hundred KB. Named apart from
``adapter/``, which loading a run puts back over its model (the LoRA one is in it already)."""

_LAYER = re.compile(r"layers?\.(\d+)\.")


# ---------------------------------------------------------------------------------- simple freezes


@register_method("head")
def prepare_head(ctx: MethodContext) -> Prepared:
    """Linear probe: the backbone stays frozen, only the classification head trains."""
    model = ctx.loaded.model
    freeze_all(model)
    return Prepared(model, [{"params": head_parameters(model), "weight_decay": 0.0}], lambda: model)


@register_method("bitfit")
def prepare_bitfit(ctx: MethodContext) -> Prepared:
    """BitFit: every bias term of the backbone (LayerNorm biases included) plus the head."""
    model = ctx.loaded.model
    freeze_all(model)
    heads = set(head_parameter_names(model))
    biases = [p for n, p in model.named_parameters() if n.endswith(".bias") and n not in heads]
    for p in biases:
        p.requires_grad_(True)
    groups = [{"params": biases, "weight_decay": 0.0}, {"params": head_parameters(model), "weight_decay": 0.0}]
    return Prepared(model, groups, lambda: model, info={"bias_params": sum(p.numel() for p in biases)})


# ------------------------------------------------------------------------------------------- peft


def _trainable_group(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the trained matrices (the head's too), none on biases and norms: the rule of full finetuning,
    whole layers and LoRA, as transformers' Trainer has it. The row methods follow their own (``weight_decay``'s
    docstring): their deltas, bias rows included, are pulled towards the checkpoint, and their head is not decayed."""
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in trained if p.ndim <= 1], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


@register_method("lora")
def prepare_lora(ctx: MethodContext) -> Prepared:
    """LoRA on the attention query/value maps (peft's default targets per architecture), merged after training."""
    from peft import LoraConfig, TaskType, get_peft_model

    r = ctx.cfg.lora_r
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=2 * r, lora_dropout=0.1,
                        target_modules=_lora_targets(ctx.loaded.model), modules_to_save=head_module_names(ctx.loaded.model))
    with quiet_peft():
        peft_model = get_peft_model(ctx.loaded.model, config)

    def finalize() -> PreTrainedModel:
        # Folds B @ A into the weights and swaps the trained head copy in: the base architecture again.
        return peft_model.merge_and_unload()

    return Prepared(peft_model, _trainable_group(peft_model, ctx.cfg.weight_decay), finalize,
                    info={"lora_r": r, "lora_alpha": 2 * r, "adapter": LORA_ADAPTER_DIR},
                    keep_unmerged=lambda folder: save_adapter(peft_model, folder / LORA_ADAPTER_DIR))


def save_adapter(peft_model: nn.Module, folder: Path) -> None:
    """peft's adapter files (adapter_config.json, adapter_model.safetensors) without the README.md peft writes beside
    them: a model card template of "[More Information Needed]" lines, where the run's own card (its README.md) is one
    folder up."""
    peft_model.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft 0.21 asks transformers 5 a deprecated question whenever it wraps a model; not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _lora_targets(model: nn.Module) -> list[str] | None:
    """None (peft's own query/value targets) where peft knows the architecture; else the query and value maps'
    names as the row scores find them (MPNet's ``q`` and ``v``), so that LoRA adapts the same maps everywhere."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

    if KNOWN.get(model.config.model_type):
        return None
    found = sorted({name.rsplit(".", 1)[-1] for name, (_, _, kind) in scored_linears(model).items() if kind in ("q", "v")})
    return found or None


@register_method("prefix")
def prepare_prefix(ctx: MethodContext) -> Prepared:
    """Prefix tuning: trained key/value prefixes in every layer plus the head; cannot be merged."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    model = ctx.loaded.model
    _accept_prefix_cache(model)
    config = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=ctx.cfg.prefix_tokens,
                                modules_to_save=head_module_names(model),
                                init_weights="zero" if ctx.cfg.prefix_init == "zero" else None)
    with quiet_peft():
        peft_model = get_peft_model(model, config)

    def finalize() -> PreTrainedModel:
        return PrefixRunModel(peft_model)  # type: ignore[return-value]  # saves like one, see the class

    return Prepared(peft_model, _trainable_group(peft_model, 0.0), finalize,
                    info={"prefix_tokens": ctx.cfg.prefix_tokens, "prefix_init": ctx.cfg.prefix_init,
                          "adapter": ADAPTER_DIR})


def takes_a_prefix(model: PreTrainedModel) -> bool:
    """Whether peft's prefix tuning can feed this model its prefixes: its forward or its backbone's takes
    ``past_key_values``, or the backbone takes transformers 5's ``cache`` (``_accept_prefix_cache``). MPNet takes
    neither."""
    import inspect

    backbone = inspect.signature(model.base_model.forward).parameters
    return ("past_key_values" in inspect.signature(model.forward).parameters or "past_key_values" in backbone
            or "cache" in backbone)


def _peft_cache_argument() -> str:
    """The name under which peft hands its prefix to a model's forward: ``past_key_values`` up to peft 0.21;
    peft 0.22 follows transformers (``cache`` from transformers 5.24 on) and says which."""
    try:
        from peft.import_utils import get_transformers_cache_name
    except ImportError:  # peft 0.21
        return "past_key_values"
    return get_transformers_cache_name()


def _accept_prefix_cache(model: PreTrainedModel) -> None:
    """Let peft pass its prefix through the model's own forward, whatever that forward calls the cache.

    peft looks for its cache argument (``_peft_cache_argument``) in the model's forward signature; without it,
    it calls the backbone itself and feeds the head the backbone's second output, which is BERT's pooled vector
    but a decoder's cache (peft 0.22 with a Llama: a TypeError in the head). transformers 5 calls the cache
    ``cache`` in the backbones (BERT's forward on top takes neither name; from 5.24 a Llama's takes ``cache``).
    An instance-level forward that takes peft's name and hands it on as ``cache`` keeps every model on its own
    forward, its own pooling and head; models whose forward already takes peft's name are left alone.
    """
    import inspect

    name = _peft_cache_argument()
    params = inspect.signature(model.forward).parameters
    if name in params or "cache" not in inspect.signature(model.base_model.forward).parameters:
        return
    cls_forward = type(model).forward

    if name == "cache":
        def forward(self, input_ids=None, attention_mask=None, cache=None, **kwargs):
            return cls_forward(self, input_ids=input_ids, attention_mask=attention_mask, cache=cache, **kwargs)
    else:
        def forward(self, input_ids=None, attention_mask=None, past_key_values=None, **kwargs):
            return cls_forward(self, input_ids=input_ids, attention_mask=attention_mask, cache=past_key_values,
                               **kwargs)

    model.forward = types.MethodType(forward, model)


class PrefixRunModel(nn.Module):
    """A trained prefix model in the shape ``finetune`` saves and evaluates.

    ``save_pretrained(out_dir)`` writes the base model with the *trained* head at the top of the run
    folder (so it is still a standard transformers folder that ``AutoModelForSequenceClassification``
    loads, though without the prefix it predicts differently) and the peft adapter (the prefix key/value
    vectors) into ``out_dir/adapter``. ``load_run_model`` puts both together again.
    """

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self.peft = peft_model
        self.config = peft_model.get_base_model().config

    def forward(self, *args, **kwargs):
        return self.peft(*args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        """The base model's word embeddings (what Captum's attributions hook, as on any transformers model)."""
        return self.peft.get_input_embeddings()

    def save_pretrained(self, out_dir: str | Path, **kwargs) -> None:
        save_adapter(self.peft, Path(out_dir) / ADAPTER_DIR)  # prefix + head, while peft still wraps the head
        _unwrap_heads(self.peft)  # then the trained head becomes the base model's own module, saved with it
        self.peft.get_base_model().save_pretrained(out_dir, **kwargs)


def _unwrap_heads(peft_model: nn.Module) -> None:
    """Replace peft's ModulesToSaveWrapper by its trained copy, in place (what merge_and_unload does)."""
    from peft.utils.other import ModulesToSaveWrapper

    base = peft_model.get_base_model()
    for name, module in list(base.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child = name.rpartition(".")
            parent = base.get_submodule(parent_name) if parent_name else base
            setattr(parent, child, module.modules_to_save[module.active_adapters[0]])


def load_run_model(run_dir: str | Path) -> LoadedModel:
    """Load a run folder for prediction; a prefix run gets its adapter back (``adapter/``).

    Every other method's run folder is a plain transformers model, and this equals
    ``modeling.load_model(run_dir, None)`` for it.
    """
    run_dir = Path(run_dir)
    loaded = load_model(str(run_dir), None)
    adapter = run_dir / ADAPTER_DIR
    method = read_json_object(run_dir / "clm_run.json").get("method")
    if method == "prefix" and not (adapter / "adapter_config.json").is_file():  # the base model alone would answer
        raise ModelSourceError(f"{run_dir} is a prefix-tuning run without its {ADAPTER_DIR}/ folder (the trained "
                               "prefix); copy the whole run folder.")
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        _accept_prefix_cache(loaded.model)
        with quiet_peft():
            peft_model = PeftModel.from_pretrained(loaded.model, str(adapter))
        loaded.model = PrefixRunModel(peft_model).eval()  # type: ignore[assignment]
    return loaded


# ------------------------------------------------------------------------------------ whole layers


def layer_of(name: str) -> int | None:
    """Transformer layer index in a parameter or module name, or None (embeddings, pooler, head)."""
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def rank_layers(report: SensitivityReport) -> list[int]:
    """Transformer layers by sensitivity per scored parameter, highest first."""
    table = report.table
    table = table[(table["layer"] >= 0) & (table["layer"] < report.n_layers)]
    per_layer = table.groupby("layer")[["score", "params"]].sum()
    density = per_layer["score"] / per_layer["params"].clip(lower=1)
    return [int(x) for x in density.sort_values(ascending=False, kind="stable").index]


def choose_layers(model: nn.Module, ranked: list[int], budget_params: int) -> list[int]:
    """Whole layers in rank order while they fit the budget; the top layer alone when none fits."""
    sizes: dict[int, int] = {}
    for name, p in model.named_parameters():
        layer = layer_of(name)
        if layer is not None:
            sizes[layer] = sizes.get(layer, 0) + p.numel()
    chosen, spent = [], 0
    for layer in ranked:
        if spent + sizes[layer] <= budget_params:
            chosen.append(layer)
            spent += sizes[layer]
    return sorted(chosen or ranked[:1])


@register_method("layers")
def prepare_layers(ctx: MethodContext) -> Prepared:
    """Layer selection: whole top-ranked layers (token-restricted sensitivity) up to the row budget.

    A layer of a small encoder holds several percent of the backbone, so at small budgets no layer fits;
    then the single top layer trains anyway and ``over_budget`` is set in the metrics.
    """
    _, report, seconds = mine_and_score(ctx, "tokens", all_layers=True)  # every layer competes
    model = ctx.loaded.model
    freeze_all(model)
    if report.head_state:  # the same warmed-up head the row methods start from
        model.load_state_dict(report.head_state, strict=False)
    budget = budget_to_params(ctx.cfg.mask.budget, report.backbone_params)
    layers = ctx.from_main(choose_layers(model, rank_layers(report), budget))  # every rank trains rank 0's
    params = [(n, p) for n, p in model.named_parameters() if layer_of(n) in layers]
    for _, p in params:
        p.requires_grad_(True)
    selected = sum(p.numel() for _, p in params)
    head = head_parameters(model)
    groups = [{"params": [p for _, p in params if p.ndim > 1] + [p for p in head if p.ndim > 1],
               "weight_decay": ctx.cfg.weight_decay},
              {"params": [p for _, p in params if p.ndim <= 1] + [p for p in head if p.ndim <= 1], "weight_decay": 0.0}]
    info = {"layers": layers, "lowest_layer": min(layers), "prep_seconds": seconds, "budget": ctx.cfg.mask.budget,
            "selected_params": selected, "budget_share": selected / max(report.backbone_params, 1),
            "over_budget": selected > budget}
    if selected > budget:  # printed by finetune and shown in the app, as the row methods' budget notes are
        info["budget_note"] = (f"no whole layer fits the budget of {budget:,} parameters: the top-ranked layer "
                               f"trains anyway ({selected:,} parameters, {info['budget_share']:.1%} of the backbone)")
    if report.zero_note:  # the layers were ranked by scores that are all 0
        info["score_note"] = report.zero_note
    return Prepared(model, [g for g in groups if g["params"]], lambda: model, info=info)


# ------------------------------------------------------------------------------- row-mask ablations


@register_method("random")
def prepare_random(ctx: MethodContext) -> Prepared:
    """Random rows at the same budget, over the same eligible rows and warmed-up head as ``sparse``
    (``spread_heads``, a way of picking top rows, does not apply)."""
    _, report, seconds = mine_and_score(ctx, "tokens")
    selection = select_mask(report, replace(ctx.cfg.mask, strategy="random", spread_heads=False))
    return _noting_unused(prepare_rows(ctx, report, selection, seconds), ctx, ("sampled",), spread_applies=False)


@register_method("fisher")
def prepare_fisher(ctx: MethodContext) -> Prepared:
    """Fisher rows without the token restriction (every position's gradient counts), whatever the score
    of ``sparse`` is set to: the baseline is the unrestricted Fisher by definition (at the configured
    ``fisher_labels``, so that it differs from sparse's Fisher rows in the restriction alone)."""
    _, report, seconds = mine_and_score(ctx, "none", score="fisher")
    prepared = prepare_rows(ctx, report, select_mask(report, replace(ctx.cfg.mask, strategy="topk_global")), seconds)
    return _noting_unused(prepared, ctx, ("sampled", "random"))


@register_method("gradient")
def prepare_gradient(ctx: MethodContext) -> Prepared:
    """Gradient-magnitude static mask (SIFT / SPEFT style): rows by accumulated |dL/dw|, no mining."""
    started = time.perf_counter()
    report = gradient_sensitivity(ctx.loaded, ctx.data, scoring_config(ctx), device=str(ctx.device))
    report.save(ctx.out_dir / "sensitivity")
    selection = select_mask(report, replace(ctx.cfg.mask, strategy="topk_global"))
    return _noting_unused(prepare_rows(ctx, report, selection, time.perf_counter() - started), ctx, ("sampled", "random"))


def _noting_unused(prepared: Prepared, ctx: MethodContext, ignored: tuple[str, ...],
                   spread_applies: bool = True) -> Prepared:
    """A baseline that picks its rows its own way says which of the mask options it was given changed nothing
    (``mask_note``), as ``--train-biases`` on a model without biases does."""
    mask = ctx.cfg.mask
    unused = []
    if mask.strategy in ignored:
        flag = " (--sample-temperature)" if mask.strategy == "sampled" else ""
        unused.append(f"strategy {mask.strategy!r}{flag}")
    if mask.spread_heads and not spread_applies:
        unused.append("spread_heads (--spread-heads)")
    if unused:
        prepared.info["mask_note"] = f"{ctx.cfg.method} picks its rows its own way: {' and '.join(unused)} changed nothing"
    return prepared


def gradient_sensitivity(loaded: LoadedModel, data: AnnotatedData, cfg: SensitivityConfig | None = None,
                         device: str = "auto") -> SensitivityReport:
    """Row scores sum_batches sum_j |dL_batch/dw_rj| (+ |dL_batch/db_r|) over the calibration rows.

    Same calibration subset, head warm-up and scored matrices as ``compute_sensitivity``, but plain
    batch gradients (``cfg.batch_size`` rows each) instead of per-example squares, and no token
    restriction: eligible word-embedding rows are the tokens seen in the calibration rows. Maps below
    ``cfg.min_layer`` (and the embeddings, when it is above 0) get no gradient and score 0.
    """
    cfg = config_from(cfg, SensitivityConfig, "gradient_sensitivity")
    started = time.perf_counter()
    dev = resolve_device(device)
    model = loaded.model.to(dev)
    texts, label_ids = calibration_rows(data, cfg)
    batches = make_batches(loaded, texts, label_ids, None, cfg.batch_size, cfg.max_length)
    linears = scored_linears(model)
    with head_kept(model):
        head_state = warm_up_head(loaded, batches, cfg, dev, train_rows=len(data.train)) if cfg.prepares_head else {}
        totals = _accumulate_gradients(model, batches, linears, dev, cfg.min_layer)
    n_rows = sum(len(b.labels) for b in batches)
    matrices = linear_matrix_infos(model, linears)
    row_scores = {f"{n}.weight": totals[n] / n_rows for n in linears}
    emb_name, emb_info = _embedding_info(loaded, None, batches)
    matrices[emb_name], row_scores[emb_name] = emb_info, totals["<embedding>"] / n_rows
    config = {**to_dict(cfg), "restriction": "none", "score": "gradient", "fisher_labels": "data", "label_draws": 1}
    notes = [f"calibration rows: {len(texts)}", "restriction: none", "score: gradient (accumulated |dL/dw|)"]
    if cfg.min_layer:
        notes.append(f"scored layers: {cfg.min_layer} and up (rows below score 0 and cannot be selected)")
    return SensitivityReport.of_model(model, row_scores, matrices, config, head_state, time.perf_counter() - started,
                                      notes)


def _accumulate_gradients(model, batches, linears, dev, min_layer: int = 0) -> dict[str, torch.Tensor]:
    """Summed |batch gradient| per row. Maps below ``min_layer`` (and the word embeddings, when it is above
    0) require no gradient and score 0, so backward stops at the lowest scored map."""
    input_embeddings = model.get_input_embeddings()
    embedding = input_embeddings if not min_layer else None
    scored = {n: lin for n, (lin, layer, _) in linears.items() if layer >= min_layer}
    was = {n: p.requires_grad for n, p in model.named_parameters()}
    totals = {n: torch.zeros(lin.out_features) for n, (lin, _, _) in linears.items()}
    totals["<embedding>"] = torch.zeros(input_embeddings.num_embeddings)  # stays 0 when unscored
    model.eval()  # dropout off, as for the Fisher scores
    freeze_all(model)
    params = ([embedding.weight] if embedding is not None else []) + [p for lin in scored.values() for p in lin.parameters()]
    for p in params:
        p.requires_grad_(True)
    try:
        for b in batches:
            out = model(input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev))
            nn.functional.cross_entropy(out.logits.float(), b.labels.to(dev), reduction="sum").backward()
            with torch.no_grad():
                for n, lin in scored.items():
                    row = lin.weight.grad.abs().sum(-1)
                    if lin.bias is not None:
                        row += lin.bias.grad.abs()
                    totals[n] += row.float().cpu()
                if embedding is not None:
                    totals["<embedding>"] += embedding.weight.grad.abs().sum(-1).float().cpu()
            for p in params:
                p.grad = None
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(was[n])
            p.grad = None
    return totals
