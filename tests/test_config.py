"""Config dataclasses: one test per ``__post_init__`` rule, valid edges, and the JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from clm_explore.config import (
    METHODS,
    ConfigError,
    DataConfig,
    FinetuneConfig,
    MaskConfig,
    MiningConfig,
    SensitivityConfig,
    from_dict,
    to_dict,
)

# (config class, field, a value the rule refuses, a phrase of the message)
RULES = [
    (DataConfig, "max_file_mb", 0, "max_file_mb must be > 0"),
    (DataConfig, "validation_fraction", 0.5, "validation_fraction must be in [0, 0.5)"),
    (DataConfig, "test_fraction", 0.0, "test_fraction must be in (0, 0.5)"),
    (DataConfig, "max_rows", 0, "max_rows must be >= 1"),
    (DataConfig, "max_labels", 1, "max_labels must be >= 2"),
    (MiningConfig, "max_tokens", 4, "max_tokens must be >= 8"),
    (MiningConfig, "max_ngram", 6, "max_ngram must be in 1..5"),
    (MiningConfig, "max_words", 0, "max_words must be >= 1"),
    (MiningConfig, "min_count", 0, "min_count must be >= 1"),
    (MiningConfig, "relevance", "tfidf", "relevance must be kl, mi or chi2"),
    (MiningConfig, "specificity", "idf", "specificity must be wordfreq or none"),
    (MiningConfig, "combine", "sum", "combine must be product or rank"),
    (MiningConfig, "top_k", -1, "top_k must be >= 0"),
    (MiningConfig, "examples_per_group", -1, "examples_per_group must be >= 0"),
    (MiningConfig, "merge_tokens", -1, "merge_tokens must be >= 0"),
    (SensitivityConfig, "batch_size", 0, "batch_size must be >= 1"),
    (SensitivityConfig, "max_length", 600, "max_length must be in 8..512"),
    (SensitivityConfig, "warmup_lr", 0.0, "warmup_lr must be > 0"),
    (SensitivityConfig, "seed", -1, "seed must be in 0..4294967295 or None"),
    (SensitivityConfig, "restriction", "all", "restriction must be tokens or none"),
    (SensitivityConfig, "score", "grad", "score must be one of fisher, taylor, gradient"),
    (SensitivityConfig, "normalise", "max", "normalise must be mean, zscore, rank or none"),
    (SensitivityConfig, "calibration_rows", 0, "calibration_rows must be >= 1"),
    (SensitivityConfig, "warmup_epochs", -2, "warmup_epochs must be >= 0 or -1"),
    (SensitivityConfig, "head_init", "zeros", "head_init must be one of loaded, centroid"),
    (SensitivityConfig, "centroid_scale", 0.0, "centroid_scale must be > 0"),
    (MaskConfig, "budget", 0.0, "budget must be in (0, 1]"),
    (MaskConfig, "budget", 1.5, "budget above 1 must be a whole parameter count"),
    (MaskConfig, "strategy", "topk", "strategy must be one of topk_global, random, sampled"),
    (MaskConfig, "sample_temperature", 0.0, "sample_temperature must be > 0"),
    (MaskConfig, "random_share", 1.5, "random_share must be in"),
    (MaskConfig, "cost_aware", -0.1, "cost_aware must be >= 0"),
    (MaskConfig, "min_layer", -2, "min_layer must be >= -1"),
    (FinetuneConfig, "method", "adapter", "method must be one of"),
    (FinetuneConfig, "epochs", 0, "epochs must be >= 1"),
    (FinetuneConfig, "lr", -1e-3, "lr must be >= 0"),
    (FinetuneConfig, "batch_size", 0, "batch_size must be >= 1"),
    (FinetuneConfig, "max_length", 4, "max_length must be in 8..512"),
    (FinetuneConfig, "warmup_ratio", 1.0, "warmup_ratio must be in [0, 1)"),
    (FinetuneConfig, "cache_input_dropout", 1.0, "cache_input_dropout must be in [0, 1)"),
    (FinetuneConfig, "cache_input_dropout", 0.1, "it needs cache_frozen_layers"),  # nothing to drop out without it
    (FinetuneConfig, "cache_max_mb", 0.0, "cache_max_mb must be > 0"),
    (FinetuneConfig, "cache_dtype", "int8", "cache_dtype must be one of float32, float16, bfloat16"),
    (FinetuneConfig, "out_of_scope_quantile", 0.0, "out_of_scope_quantile must be in (0, 1)"),
    (FinetuneConfig, "out_of_scope_quantile", 1.0, "out_of_scope_quantile must be in (0, 1)"),
    (FinetuneConfig, "lora_r", 0, "lora_r must be >= 1"),
    (FinetuneConfig, "prefix_tokens", 0, "prefix_tokens must be >= 1"),
]

# Values at the edge of each range that must be accepted.
EDGES = [
    (DataConfig, {"validation_fraction": 0.0, "test_fraction": 0.49, "max_file_mb": 0.001}),
    (MiningConfig, {"max_ngram": 1, "max_words": 1, "min_count": 1, "top_k": 0, "relevance": "chi2"}),
    (MiningConfig, {"max_ngram": 5, "specificity": "none", "combine": "rank"}),
    (SensitivityConfig, {"restriction": "none", "score": "taylor", "normalise": "zscore", "warmup_epochs": 0, "seed": None}),
    (MaskConfig, {"budget": 1.0, "strategy": "random", "cost_aware": 0.0, "min_layer": 0}),
    (MaskConfig, {"budget": 50_000}),
    (FinetuneConfig, {"epochs": 1, "lr": 0.0, "batch_size": 1, "max_length": 8, "warmup_ratio": 0.0}),
    (FinetuneConfig, {"max_length": 512, "cache_frozen_layers": True, "cache_input_dropout": 0.0, "cache_max_mb": 0.5}),
]


@pytest.mark.parametrize(("cls", "name", "value", "phrase"), RULES, ids=[f"{c.__name__}.{n}={v!r}" for c, n, v, _ in RULES])
def test_rule_refuses_bad_value(cls, name, value, phrase):
    with pytest.raises(ConfigError) as info:
        cls(**{name: value})
    assert phrase in str(info.value)
    assert repr(value) in str(info.value) or str(value) in str(info.value), "the message shows the bad value"


def test_every_rule_is_covered():
    # A new field with a rule should get a row in RULES; this catches classes that lost their tests.
    assert {c for c, *_ in RULES} == {DataConfig, MiningConfig, SensitivityConfig, MaskConfig, FinetuneConfig}


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(("cls", "kwargs"), EDGES)
def test_edge_values_are_accepted(cls, kwargs):
    cfg = cls(**kwargs)
    for name, value in kwargs.items():
        assert getattr(cfg, name) == value


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_accepted(method):
    assert FinetuneConfig(method=method).method == method


@pytest.mark.parametrize("cls", [DataConfig, MiningConfig, SensitivityConfig, MaskConfig])
def test_flat_round_trip(cls):
    cfg = cls()
    assert from_dict(cls, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DataConfig().seed = 1  # type: ignore[misc]


def test_finetune_round_trip_with_nested_configs():
    cfg = FinetuneConfig(
        method="lora",
        epochs=2,
        lr=5e-4,
        mask=MaskConfig(budget=0.05, strategy="random", seed=7),
        sensitivity=SensitivityConfig(score="taylor", calibration_rows=128),
        mining=MiningConfig(max_ngram=2, relevance="mi", top_k=64),
        lora_r=4,
    )
    data = json.loads(json.dumps(to_dict(cfg)))
    assert data["mask"]["budget"] == 0.05 and data["mining"]["relevance"] == "mi"
    back = FinetuneConfig.from_dict(data)
    assert back == cfg
    assert isinstance(back.mask, MaskConfig) and isinstance(back.sensitivity, SensitivityConfig)
    assert isinstance(back.mining, MiningConfig)


def test_from_dict_ignores_unknown_keys():
    data = {**to_dict(FinetuneConfig()), "from_an_older_version": 1}
    data["mask"] = {**data["mask"], "gone": True}
    assert FinetuneConfig.from_dict(data) == FinetuneConfig()


def test_from_dict_validates():
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        FinetuneConfig.from_dict({"epochs": 0})
    with pytest.raises(ConfigError, match="budget must be"):
        FinetuneConfig.from_dict({"mask": {"budget": -1}})


def test_a_sub_config_may_be_a_dict_of_its_fields_and_nothing_else():
    cfg = FinetuneConfig(mask={"budget": 0.02}, sensitivity={"score": "taylor"})  # a notebook's shorthand
    assert cfg.mask == MaskConfig(budget=0.02) and cfg.sensitivity.score == "taylor"
    with pytest.raises(ConfigError, match="mask must be a MaskConfig .*got int"):
        FinetuneConfig(mask=3)  # an AttributeError on .seed before
    with pytest.raises(TypeError, match="budgett"):
        FinetuneConfig(mask={"budgett": 0.02})


def test_a_field_of_the_wrong_type_is_refused_where_it_is_given():
    from clm_explore.bench import BenchConfig, BenchError

    # epochs=2.5 failed after the preparation ("'float' object cannot be interpreted as an integer"), lr="1e-4" in
    # a comparison of str and int, methods="sparse" as the methods s, p, a, r, s, e
    for kwargs, message in [({"epochs": 2.5}, r"FinetuneConfig.epochs is int; got float 2.5"),
                            ({"lr": "1e-4"}, r"FinetuneConfig.lr is float; got str '1e-4'"),
                            ({"epochs": True}, r"epochs is int; got bool True"),
                            ({"mask": {"budget": "0.01"}}, r"MaskConfig.budget is float; got str")]:
        with pytest.raises(ConfigError, match=message):
            FinetuneConfig(**kwargs)
    assert FinetuneConfig(lr=1, dropout=None).lr == 1  # an int where a float goes, None where it may
    budget = MaskConfig(budget=np.int64(5000)).budget  # a count from a NumPy array
    assert budget == 5000 and type(budget) is int and json.dumps(to_dict(MaskConfig(budget=np.float32(0.5))))
    flag = FinetuneConfig(cache_frozen_layers=np.True_).cache_frozen_layers  # a DataFrame cell (diff review)
    assert flag is True
    with pytest.raises(BenchError, match=r"methods is a tuple, e.g. methods=\('sparse',\); got str"):
        BenchConfig(methods="sparse")
    with pytest.raises(BenchError, match="BenchConfig.seeds is int; got float 2.0"):
        BenchConfig(seeds=2.0)


def test_help_on_a_config_says_what_each_field_does():
    import pydoc
    from pathlib import Path

    import clm_explore.config as config_module
    from clm_explore.bench import BenchConfig

    shown = pydoc.render_doc(MaskConfig, renderer=pydoc.plaintext)  # the signature and defaults alone before
    assert "budget (float, default 0.01)" in shown and "Fraction of backbone parameters in (0, 1]" in shown
    documented = FinetuneConfig.__doc__ or ""
    assert all(f"    {f.name} (" in documented for f in dataclasses.fields(FinetuneConfig))
    assert "Passes over the training split" in documented and "Seeds 0..seeds-1" in (BenchConfig.__doc__ or "")
    import clm_explore

    for cls in (getattr(clm_explore, name) for name in clm_explore.__all__ if name.endswith("Config")):
        lines = (cls.__doc__ or "").splitlines()  # every field says what it does (the docs review: 13 did not)
        heads = [i for i, line in enumerate(lines) if line.startswith("    ") and not line.startswith("     ")]
        bare = [lines[i].split()[0] for i in heads if i + 1 >= len(lines) or not lines[i + 1].startswith(" " * 8)]
        assert not bare, (cls.__name__, bare)
    from clm_explore.config import _module_tree

    assert _module_tree(str(Path(config_module.__file__).with_suffix(".pyc"))) is None  # compiled only: no crash


def test_a_keyword_a_config_lacks_is_named_with_where_it_belongs() -> None:
    from clm_explore.bench import BenchConfig

    with pytest.raises(TypeError, match=r"it is MaskConfig's, given as FinetuneConfig\(mask=MaskConfig\(budget=\.\.\.\)\)"):
        FinetuneConfig(method="sparse", budget=0.01)
    with pytest.raises(TypeError, match="FinetuneConfig has no field 'epoch'; did you mean 'epochs'"):
        FinetuneConfig(epoch=2)
    with pytest.raises(TypeError, match="MaskConfig has no field 'zzz'; its fields: budget, strategy"):
        MaskConfig(zzz=1)
    with pytest.raises(TypeError, match="did you mean 'budgets'"):
        BenchConfig(budget=0.01)
    cfg = FinetuneConfig(epochs=2, mask=MaskConfig(budget=0.02))  # the fields themselves as before
    assert (cfg.epochs, cfg.mask.budget, dataclasses.replace(cfg, epochs=4).epochs) == (2, 0.02, 4)
