"""Baselines and ablations: every method trains through the shared loop; counts and budgets hold."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForSequenceClassification

from clm_explore.baselines import choose_layers, gradient_sensitivity, load_run_model
from clm_explore.batches import predict_proba
from clm_explore.config import METHODS, ConfigError, FinetuneConfig, MaskConfig, SensitivityConfig
from clm_explore.masks import budget_to_params
from clm_explore.modeling import count_parameters, head_parameter_names, load_model
from clm_explore.sensitivity import SensitivityReport
from clm_explore.training import finetune


def _cfg(method: str, budget: float = 0.05, seed: int = 0) -> FinetuneConfig:
    # 160 training rows in batches of 80: two optimizer steps. Short calibration keeps it fast.
    return FinetuneConfig(method=method, epochs=1, batch_size=80, seed=seed, device="cpu",
                          mask=MaskConfig(budget=budget, seed=seed),
                          sensitivity=SensitivityConfig(calibration_rows=80, warmup_epochs=1))


def _run(method, data, tmp_path, **kw):
    return finetune(data, _cfg(method, **kw), tmp_path / method, source="tiny-random")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_two_steps_and_saves_a_plain_model(method, tiny_data, tmp_path):
    result = _run(method, tiny_data, tmp_path)
    steps = [json.loads(line) for line in (result.out_dir / "progress.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if s["eval"] is None]
    assert result.status == "succeeded"
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert 0 < result.metrics["trainable_params"] <= result.metrics["base_params"]
    assert len(pd.read_csv(result.out_dir / "predictions.csv")) == len(tiny_data.test)
    model = AutoModelForSequenceClassification.from_pretrained(result.out_dir)
    assert model.config.id2label[0] == tiny_data.labels[0]


def test_head_and_bitfit_count_exactly_what_they_train(tiny_data, tiny, tmp_path):
    model = tiny.model
    heads = set(head_parameter_names(model))
    head = sum(p.numel() for n, p in model.named_parameters() if n in heads)
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias") and n not in heads)
    assert _run("head", tiny_data, tmp_path).metrics["trainable_params"] == head
    bitfit = _run("bitfit", tiny_data, tmp_path).metrics
    assert bitfit["trainable_params"] == biases + head == bitfit["bias_params"] + head


def test_bitfit_leaves_weights_untouched(tiny_data, tiny, tmp_path):
    before = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    out = _run("bitfit", tiny_data, tmp_path).out_dir
    after = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    heads = set(head_parameter_names(tiny.model))
    for name, value in before.items():
        if not name.endswith(".bias") and name not in heads:
            assert torch.equal(after[name], value), name


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_peft_methods_train_far_fewer_parameters_than_full(method, tiny_data, tiny, tmp_path):
    metrics = _run(method, tiny_data, tmp_path).metrics
    assert metrics["trainable_params"] < count_parameters(tiny.model) / 4


def test_prefix_starts_at_zero_or_at_random(tiny_data, tiny, tmp_path):
    from clm_explore.baselines import prepare_prefix
    from clm_explore.training import MethodContext

    def start(init: str) -> torch.Tensor:
        loaded = load_model("tiny-random", tiny_data.labels, seed=0)
        cfg = replace(_cfg("prefix"), prefix_init=init)
        prepared = prepare_prefix(MethodContext(loaded, tiny_data, cfg, torch.device("cpu"), tmp_path))
        return prepared.model.prompt_encoder["default"].embedding.weight.detach()

    assert torch.count_nonzero(start("zero")) == 0  # keys and values 0: nothing added to an attention output
    assert torch.count_nonzero(start("random")) > 0  # peft's default draws
    metrics = finetune(tiny_data, replace(_cfg("prefix"), prefix_init="zero"), tmp_path / "zero",
                       source="tiny-random").metrics
    assert metrics["prefix_init"] == "zero"
    with pytest.raises(ConfigError, match="prefix_init must be one of random, zero"):
        FinetuneConfig(method="prefix", prefix_init="ones")


def test_prefix_models_take_the_cache_under_the_name_peft_passes_it(tiny_data):
    """peft calls the model's own forward only if it names peft's cache argument; otherwise it runs the backbone and
    feeds the head its second output, a decoder's cache (peft 0.22 with a Llama: a TypeError in the head)."""
    import inspect

    from transformers import LlamaConfig, LlamaForSequenceClassification

    from clm_explore.baselines import _accept_prefix_cache, _peft_cache_argument

    tok = load_model("tiny-random").tokenizer
    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=2, num_attention_heads=4, num_labels=4,
                                                       pad_token_id=tok.pad_token_id))
    for model in (load_model("tiny-random", tiny_data.labels).model, llama):
        _accept_prefix_cache(model)
        assert _peft_cache_argument() in inspect.signature(model.forward).parameters, type(model).__name__
    batch = tok(["a b c", "d e"], padding=True, return_tensors="pt")
    llama.eval()
    with torch.no_grad():
        own = type(llama).forward(llama, **batch).logits
        shimmed = llama(**batch).logits  # no prefix given: the instance forward is the class's
    assert torch.equal(own, shimmed)


def test_a_mask_option_a_baseline_does_not_use_is_noted(tiny_data, tmp_path):
    def run(method: str, **mask) -> dict:
        cfg = _cfg(method)
        return finetune(tiny_data, replace(cfg, mask=replace(cfg.mask, **mask)), tmp_path / method,
                        source="tiny-random").metrics

    sampled = {"strategy": "sampled", "sample_temperature": 0.5}
    assert "--sample-temperature" in run("fisher", **sampled)["mask_note"]  # it took its top rows in silence
    assert "spread_heads" in run("random", spread_heads=True)["mask_note"]
    assert "mask_note" not in run("sparse", **sampled)  # ours draws its rows as asked


def test_lora_merges_into_the_base_architecture(tiny_data, tmp_path):
    result = _run("lora", tiny_data, tmp_path)
    assert result.metrics["total_params"] == result.metrics["base_params"]
    assert not (result.out_dir / "adapter").exists()
    reloaded = load_run_model(result.out_dir)
    assert type(reloaded.model).__name__ == "BertForSequenceClassification"


def test_prefix_run_reloads_and_predicts_the_same(tiny_data, tmp_path):
    out = _run("prefix", tiny_data, tmp_path).out_dir
    # peft's files, without its README.md: a card template of "[More Information Needed]" (the run's card is one up)
    assert {f.name for f in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    saved = pd.read_csv(out / "predictions.csv")
    loaded = load_run_model(out)
    probs = predict_proba(loaded.model, loaded, saved["text"].tolist())
    labels = np.array([loaded.model.config.id2label[i] for i in range(probs.shape[1])])
    assert (labels[probs.argmax(1)] == saved["pred"]).all()
    np.testing.assert_allclose(probs.max(1), saved["prob"], atol=1e-5)
    # The top level is a plain transformers folder holding the trained head (not the random one).
    plain = AutoModelForSequenceClassification.from_pretrained(out)
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    trained = next(v for k, v in adapter.items() if k.endswith("classifier.weight"))
    assert torch.equal(plain.classifier.weight, trained)
    # A copy without the adapter would predict with the base model alone: refused.
    import shutil

    from clm_explore.modeling import ModelSourceError

    partial = tmp_path / "partial"
    shutil.copytree(out, partial, ignore=shutil.ignore_patterns("adapter"))
    with pytest.raises(ModelSourceError, match="without its adapter"):
        load_run_model(partial)
    # The case study explains a prefix run like any other: its word embeddings are the base model's.
    from clm_explore.attribution import explain

    text = saved["text"].iloc[0]
    (why,) = explain(loaded.model, loaded.tokenizer, [text])
    assert why.probability == pytest.approx(float(saved["prob"].iloc[0]), abs=1e-5) and why.tokens


@pytest.mark.parametrize("method", ["sparse", "sparse_merged", "random", "fisher", "gradient"])
def test_row_selections_spend_the_budget(method, tiny_data, tmp_path):
    result = _run(method, tiny_data, tmp_path, budget=0.05)
    report = SensitivityReport.load(result.out_dir / "sensitivity")
    budget = budget_to_params(0.05, report.backbone_params)
    masks = load_file(result.out_dir / "masks.safetensors")
    selected = sum(int(m.sum()) * report.matrices[n].row_params for n, m in masks.items())
    widest_row = max(info.row_params for info in report.matrices.values())
    assert selected == result.metrics["selected_params"]
    assert budget - widest_row < selected <= budget


def test_fisher_baseline_scores_with_fisher_whatever_sparse_uses(tiny_data, tmp_path):
    cfg = replace(_cfg("fisher"), sensitivity=SensitivityConfig(calibration_rows=80, warmup_epochs=1, score="gradient"))
    result = finetune(tiny_data, cfg, tmp_path / "fisher", source="tiny-random")
    scored = json.loads((result.out_dir / "sensitivity" / "sensitivity.json").read_text())["config"]
    assert (scored["score"], scored["restriction"]) == ("fisher", "none")


def test_random_rows_depend_on_the_seed(tiny_data, tmp_path):
    a = load_file(_run("random", tiny_data, tmp_path / "a", seed=0).out_dir / "masks.safetensors")
    b = load_file(_run("random", tiny_data, tmp_path / "b", seed=1).out_dir / "masks.safetensors")
    assert a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a)
    # A mask without a seed of its own (the app's and a notebook's default) takes the run's.
    unseeded = replace(_cfg("random", seed=1), mask=MaskConfig(budget=0.05))
    run = finetune(tiny_data, unseeded, tmp_path / "c", source="tiny-random").out_dir
    c = load_file(run / "masks.safetensors")
    assert c.keys() == b.keys() and all(torch.equal(b[k], c[k]) for k in b)
    assert json.loads((run / "clm_run.json").read_text())["config"]["mask"]["seed"] == 1


def test_layers_trains_whole_layers_within_the_budget(tiny_data, tmp_path):
    small = _run("layers", tiny_data, tmp_path / "small", budget=0.05).metrics
    assert len(small["layers"]) == 1 and small["over_budget"]  # no tiny layer fits 5%: the top one trains
    both = _run("layers", tiny_data, tmp_path / "both", budget=0.9).metrics
    assert both["layers"] == [0, 1] and not both["over_budget"]
    assert both["trainable_params"] == both["selected_params"] + 132  # + the 4 x 32 head and its bias


def test_choose_layers_takes_ranked_layers_while_they_fit():
    model = nn.ModuleDict({"layer": nn.ModuleList([nn.Linear(10, 10) for _ in range(3)])})  # 110 each
    assert choose_layers(model, [2, 0, 1], 250) == [0, 2]
    assert choose_layers(model, [1, 0, 2], 50) == [1]


def test_gradient_scores_are_row_sums_of_the_batch_gradient(tiny_data, tiny):
    cfg = SensitivityConfig(calibration_rows=len(tiny_data.train), batch_size=len(tiny_data.train), warmup_epochs=0)
    report = gradient_sensitivity(tiny, tiny_data, cfg, device="cpu")
    name = "bert.encoder.layer.1.attention.self.value"
    lin = tiny.model.get_submodule(name)
    enc = tiny.tokenizer(tiny_data.train["text"].tolist(), padding=True, truncation=True, max_length=64,
                         return_tensors="pt")
    tiny.model.eval()
    for p in tiny.model.parameters():
        p.requires_grad_(True)
    logits = tiny.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    nn.functional.cross_entropy(logits, torch.as_tensor(tiny_data.label_ids("train")), reduction="sum").backward()
    expected = (lin.weight.grad.abs().sum(-1) + lin.bias.grad.abs()) / len(tiny_data.train)
    torch.testing.assert_close(report.row_scores[f"{name}.weight"], expected, rtol=1e-4, atol=1e-7)
    assert all(torch.isfinite(s).all() and (s >= 0).all() for s in report.row_scores.values())
    assert report.config["score"] == "gradient"


def test_gradient_scores_leave_the_model_as_it_was(tiny_data, tiny):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    cfg = SensitivityConfig(calibration_rows=32, warmup_epochs=2)
    first, second = (gradient_sensitivity(tiny, tiny_data, cfg, device="cpu") for _ in range(2))
    assert all(torch.equal(v, tiny.model.state_dict()[k]) for k, v in before.items())  # the warmed head is the report's
    assert all(torch.equal(first.row_scores[k], second.row_scores[k]) for k in first.row_scores)
    assert any(not torch.equal(first.head_state[k], before[k]) for k in first.head_state)


def test_gradient_scores_from_a_layer_match_the_full_pass_there(tiny_data, tiny):
    cfg = SensitivityConfig(calibration_rows=len(tiny_data.train), warmup_epochs=0)
    flags = {n: p.requires_grad for n, p in tiny.model.named_parameters()}
    full = gradient_sensitivity(tiny, tiny_data, cfg, device="cpu")
    upper = gradient_sensitivity(tiny, tiny_data, SensitivityConfig(**{**cfg.__dict__, "min_layer": 1}), device="cpu")
    assert upper.scored_from_layer == 1
    for name, info in full.matrices.items():
        if info.layer >= 1:
            torch.testing.assert_close(upper.row_scores[name], full.row_scores[name], rtol=1e-5, atol=1e-9)
        else:
            assert not upper.row_scores[name].any(), name
    assert {n: p.requires_grad for n, p in tiny.model.named_parameters()} == flags


def test_bitfit_without_biases_and_layers_over_the_backbone_are_refused_before_any_work(tiny_data, tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from clm_explore.config import ConfigError
    from clm_explore.modeling import LoadedModel, load_model
    from clm_explore.training import check_runnable

    tok = load_model("tiny-random").tokenizer
    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=2, num_attention_heads=4, num_labels=4))
    with pytest.raises(ConfigError, match="no bias terms outside its head.*--method head"):
        check_runnable(_cfg("bitfit"), LoadedModel(llama, tok, "tiny-llama", True))
    with pytest.raises(ConfigError, match="the backbone has"):
        finetune(tiny_data, _cfg("layers", budget=1e9), tmp_path / "layers", source="tiny-random")
    assert not (tmp_path / "layers").exists()  # refused before mining and scoring wrote into it


def test_dropout_and_bias_options_reach_a_llama_decoder_or_say_they_cannot(tiny_data, tmp_path):
    # Llama-style decoders hold attention dropout as a number and have no dropout layer nor linear bias: the dropout
    # option changed nothing and train_biases trained nothing more, silently.
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from clm_explore.modeling import load_model
    from clm_explore.training import set_dropout

    tok = load_model("tiny-random").tokenizer
    folder = tmp_path / "llama"
    LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_labels=4,
                                               pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    llama = load_model(str(folder), tiny_data.labels).model
    assert set_dropout(llama, 0.3) == 2 and [m.self_attn.attention_dropout for m in llama.model.layers] == [0.3, 0.3]
    assert set_dropout(nn.Sequential(nn.Linear(2, 2)), 0.3) == 0  # nothing to set: the caller notes it
    zero = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                                      num_hidden_layers=1, num_attention_heads=4, attention_dropout=0))
    assert set_dropout(zero, 0.3) == 1 and zero.model.layers[0].self_attn.attention_dropout == 0.3  # an int 0 too
    cfg = _cfg("sparse", budget=0.05)
    cfg = replace(cfg, dropout=0.2, mask=replace(cfg.mask, train_biases=True))
    metrics = finetune(tiny_data, cfg, tmp_path / "run", source=str(folder)).metrics
    assert metrics["biases_note"] == "the model's linear maps have no biases: train_biases changed nothing"
    assert "dropout_note" not in metrics
    bert = finetune(tiny_data, cfg, tmp_path / "bert", source="tiny-random").metrics
    assert "biases_note" not in bert and "dropout_note" not in bert


def test_lora_and_layers_decay_the_matrices_they_train_and_no_bias(tiny_data, tmp_path, monkeypatch):
    from clm_explore import training

    seen = {}
    original = training._TrainLoop.__init__

    def keep_groups(self, loaded, data, cfg, prepared, *args, **kw):
        seen[cfg.method] = [(g["weight_decay"], {p.ndim for p in g["params"]}) for g in prepared.param_groups]
        original(self, loaded, data, cfg, prepared, *args, **kw)

    monkeypatch.setattr(training._TrainLoop, "__init__", keep_groups)
    for method in ("lora", "layers"):
        finetune(tiny_data, replace(_cfg(method, budget=0.5), weight_decay=0.1), tmp_path / method,
                 source="tiny-random")
        assert sorted(seen[method], key=lambda g: g[0]) == [(0.0, {1}), (0.1, {2})], method


def save_two_layer_head_model(folder, family: str) -> str:
    """A tiny random RoBERTa, MPNet, DistilBERT or DeBERTa-v2 folder (a dense layer then an output layer as the
    head) with the tiny tokenizer."""
    from transformers import DebertaV2Config, DistilBertConfig, MPNetConfig, RobertaConfig

    from clm_explore.modeling import load_model

    tok = load_model("tiny-random").tokenizer
    shape = {"vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 37, "max_position_embeddings": 130, "pad_token_id": tok.pad_token_id}
    if family == "distilbert":
        config = DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                  max_position_embeddings=130, pad_token_id=tok.pad_token_id)
    elif family == "deberta":  # as DeBERTa-v3: relative attention, its embeddings normalised in the encoder
        config = DebertaV2Config(**shape, relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
                                 norm_rel_ebd="layer_norm", max_relative_positions=-1, position_buckets=16)
    else:
        config = {"roberta": RobertaConfig, "mpnet": MPNetConfig}[family](**shape)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


TWO_LAYER_HEADS = {  # family -> (the head's dense layer, its output layer)
    "roberta": ("classifier.dense", "classifier.out_proj"),
    "mpnet": ("classifier.dense", "classifier.out_proj"),
    "distilbert": ("pre_classifier", "classifier"),  # outside the classifier module (modeling.SplitHead)
    "deberta": ("pooler.dense", "classifier"),
}


@pytest.mark.parametrize("family", list(TWO_LAYER_HEADS))
def test_models_with_a_two_layer_head_run_every_method(family, tiny_data, tmp_path):
    from clm_explore.config import ConfigError
    from clm_explore.modeling import load_model, small_parameters
    from clm_explore.sensitivity import scored_linears

    source = save_two_layer_head_model(tmp_path / family, family)
    loaded = load_model(source, tiny_data.labels)
    kinds = {kind for _, _, kind in scored_linears(loaded.model).values()}
    assert kinds == {"q", "k", "v", "o", "ffn_in", "ffn_out"}  # MPNet names its maps attention.attn.q, DistilBERT q_lin
    dense, out = TWO_LAYER_HEADS[family]
    if family == "deberta":  # the relative embeddings' norm feeds every layer: it sits below them, as the embeddings
        assert {layer for kind, layer, p in small_parameters(loaded.model)
                if p is loaded.model.deberta.encoder.LayerNorm.weight} == {-1}
    assert head_parameter_names(loaded.model) == [f"{dense}.weight", f"{dense}.bias", f"{out}.weight", f"{out}.bias"]
    for method in ("sparse", "head", "full", "lora", "bitfit", "layers", "random", "prefix"):
        cfg = _cfg(method)
        if method == "prefix" and family != "roberta":  # no past key values: refused in plain words
            with pytest.raises(ConfigError, match="takes no past key values.*--method lora"):
                finetune(tiny_data, cfg, tmp_path / method, source=source)
            continue
        result = finetune(tiny_data, cfg, tmp_path / family / method, source=source)
        assert result.status == "succeeded" and np.isfinite(result.metrics["accuracy"]), method
        head_params = sum(p.numel() for n, p in loaded.model.named_parameters() if n.startswith((dense, out)))
        if method in ("sparse", "random"):  # the budget spent on the backbone; the whole two-layer head trained
            report = SensitivityReport.load(result.out_dir / "sensitivity")
            assert f"{dense}.weight" not in report.matrices and report.head_params == head_params
            assert 0 < result.metrics["selected_params"] <= budget_to_params(0.05, report.backbone_params)
        if method == "head":
            assert result.metrics["trainable_params"] == head_params
        reloaded = AutoModelForSequenceClassification.from_pretrained(result.out_dir)
        assert reloaded.config.model_type == loaded.model.config.model_type
        assert reloaded.config.id2label[0] == tiny_data.labels[0]
    centroid = SensitivityConfig(calibration_rows=80, head_init="centroid", warmup_epochs=0)
    first, again = (finetune(tiny_data, replace(_cfg("sparse", seed=i), sensitivity=centroid), tmp_path / f"c{i}",
                             source=source) for i in (0, 1))
    # The output layer set on the dense layer's outputs: the same every seed, as this checkpoint stores its dense
    # layer (a new one would be seeded by the run).
    assert first.status == "succeeded"
    heads = [SensitivityReport.load(r.out_dir / "sensitivity").head_state for r in (first, again)]
    assert torch.equal(heads[0][f"{out}.weight"], heads[1][f"{out}.weight"])
    assert not torch.equal(heads[0][f"{out}.weight"], loaded.model.state_dict()[f"{out}.weight"])


def test_layers_over_the_budget_say_so(tiny_data, tmp_path):
    result = _run("layers", tiny_data, tmp_path, budget=0.01)  # a tiny model's layer holds far more than 1%
    assert result.metrics["over_budget"] is True and result.metrics["budget_share"] > 0.01
    assert result.metrics["budget_note"].startswith("no whole layer fits the budget of 421 parameters")
