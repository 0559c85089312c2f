"""``clm-explore export``: a run copied for serving, without its records (the interop review)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import clm_explore
from clm_explore.cli import main
from clm_explore.exports import EXPORT_RECORD, ExportError, export_run


@pytest.fixture(scope="module")
def sparse_run(tiny_data_module, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sparse"
    cfg = clm_explore.FinetuneConfig(method="sparse", epochs=1, max_length=16, mask=clm_explore.MaskConfig(budget=0.05))
    clm_explore.finetune(tiny_data_module, cfg, out, source="tiny-random", progress=False)
    return out


def test_an_export_holds_what_serving_needs_and_predicts_as_the_run(sparse_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", "--run", str(sparse_run), "--out", str(tmp_path / "serve")]) == 0
    said = capsys.readouterr().out
    files = {f.name for f in (tmp_path / "serve").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= files
    for record in ("predictions.csv", "clm_run.json", "metrics.json", "masks.safetensors", "delta.safetensors",
                   "task_tokens.json", "progress.jsonl", "sensitivity"):  # the test texts, the data's path, ...
        assert record not in files, record
    assert said.startswith(f"exported {sparse_run} to {tmp_path / 'serve'} (")
    texts = ["my card has not arrived", "the exchange rate was wrong on my payment"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "serve")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "serve").eval()
    logits = model(**tokenizer(texts, truncation=True, padding=True, return_tensors="pt")).logits
    assert logits.softmax(-1).detach().numpy() == pytest.approx(clm_explore.predict(sparse_run, texts).to_numpy(),
                                                                 abs=1e-5)
    assert "Exported for serving by `clm-explore export`" in (tmp_path / "serve" / "README.md").read_text()
    # --json, as every other command but `app` (the README review: a serving script's step had only the line above)
    assert main(["export", "--run", str(sparse_run), "--out", str(tmp_path / "half"), "--dtype", "float16",
                 "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    on_disk = {str(f.relative_to(tmp_path / "half")): f.stat().st_size for f in (tmp_path / "half").rglob("*")
               if f.is_file()}
    assert said["files"] == on_disk and said["bytes"] == sum(on_disk.values()) and said["dtype"] == "float16"
    assert said["out"] == str(tmp_path / "half") and said["patch"] is False


def test_a_half_precision_export_is_half_the_size_and_a_folder_is_never_replaced_by_mistake(sparse_run: Path,
                                                                                            tmp_path: Path) -> None:
    full = export_run(sparse_run, tmp_path / "f32")
    half = export_run(sparse_run, tmp_path / "f16", dtype="float16")
    # The real-model review: the cast weights were owner-only (safetensors' 0600), the float32 copy the umask's.
    assert (half / "model.safetensors").stat().st_mode & 0o777 == (half / "config.json").stat().st_mode & 0o777
    size = {p.name: (p / "model.safetensors").stat().st_size for p in (full, half)}
    assert size["f16"] < 0.6 * size["f32"] and json.loads((half / "config.json").read_text())["dtype"] == "float16"
    assert json.loads((half / EXPORT_RECORD).read_text()) == {"run": sparse_run.name, "dtype": "float16"}
    with pytest.raises(ExportError, match="holds an earlier export; replace it with --overwrite"):
        export_run(sparse_run, half)
    assert export_run(sparse_run, half, overwrite=True) == half
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an export of clm-explore's"):
        export_run(sparse_run, tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ExportError, match="the run folder, inside it or above it"):
        export_run(sparse_run, sparse_run / "serve")


def test_a_prefix_runs_export_keeps_its_adapter_without_the_servers_path(tiny_data, tmp_path: Path) -> None:
    cfg = clm_explore.FinetuneConfig(method="prefix", epochs=1, max_length=16)
    clm_explore.finetune(tiny_data, cfg, tmp_path / "prefix", source="tiny-random", progress=False)
    out = export_run(tmp_path / "prefix", tmp_path / "serve")
    assert {f.name for f in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    texts = ["my card has not arrived"]
    assert clm_explore.predict(out, texts).to_numpy() == pytest.approx(
        clm_explore.predict(tmp_path / "prefix", texts).to_numpy(), abs=1e-6)


@pytest.mark.parametrize("options", [{"method": "sparse"}, {"method": "random", "average_last": 0.5},
                                     {"method": "fisher", "keep_best": True, "mask": {"train_biases": True}}])
def test_a_row_methods_run_is_its_base_model_and_its_delta_file(tiny_data, tmp_path: Path, options: dict) -> None:
    """The interop review: delta.safetensors left out the head and the norms that trained too, so the base and it
    did not make the model; now it is the run as a patch of a few MB over a public model."""
    import dataclasses

    import torch

    from clm_explore.exports import apply_delta

    mask = dataclasses.replace(clm_explore.MaskConfig(budget=0.05), **options.pop("mask", {}))
    cfg = clm_explore.FinetuneConfig(epochs=2, max_length=16, mask=mask, **options)
    clm_explore.finetune(tiny_data, cfg, tmp_path / "run", source="tiny-random", progress=False)
    rebuilt, saved = apply_delta(tmp_path / "run").model.state_dict(), clm_explore.load_run(tmp_path / "run")
    differ = [name for name, tensor in saved.model.state_dict().items() if not torch.equal(tensor, rebuilt[name])]
    assert not differ, differ[:5]
    texts = ["my card has not arrived"]
    assert clm_explore.predict(apply_delta(tmp_path / "run"), texts).equals(clm_explore.predict(tmp_path / "run", texts))


def test_a_run_that_is_no_patch_is_refused_by_apply_delta(sparse_run: Path, tiny_data, tmp_path: Path) -> None:
    from clm_explore.exports import apply_delta

    clm_explore.finetune(tiny_data, clm_explore.FinetuneConfig(method="head", epochs=1), tmp_path / "head",
                         source="tiny-random", progress=False)
    with pytest.raises(ExportError, match="is a head run: only the row methods' and LoRA's runs"):
        apply_delta(tmp_path / "head")


def test_a_patch_export_is_the_delta_and_rebuilds_the_run_over_its_base(sparse_run: Path, tmp_path: Path,
                                                                        capsys) -> None:
    import torch

    from clm_explore.exports import apply_delta

    assert main(["export", "--run", str(sparse_run), "--out", str(tmp_path / "patch"), "--patch"]) == 0
    files = {f.name for f in (tmp_path / "patch").iterdir()}
    assert "delta.safetensors" in files and "model.safetensors" not in files and "clm_run.json" not in files
    rebuilt = apply_delta(tmp_path / "patch").model.state_dict()
    saved = clm_explore.load_run(sparse_run).model.state_dict()
    assert all(torch.equal(tensor, rebuilt[name]) for name, tensor in saved.items())
    assert "It is a patch: `clm_explore.apply_delta(folder)`" in (tmp_path / "patch" / "README.md").read_text()


def test_a_lora_run_keeps_its_adapter_which_peft_loads_over_the_base_and_which_exports_as_its_patch(
        tiny_data, tmp_path: Path) -> None:
    """A LoRA run kept only its merged model: a peft user had no adapter to load over the base, and the run shipped as
    the whole model where a few hundred KB say it (the interop review's leftover)."""
    import torch
    from peft import PeftModel

    from clm_explore.baselines import quiet_peft
    from clm_explore.exports import apply_delta
    from clm_explore.modeling import load_model

    cfg = clm_explore.FinetuneConfig(method="lora", epochs=2, max_length=16, lr=1e-2)
    clm_explore.finetune(tiny_data, cfg, tmp_path / "lora", source="tiny-random", progress=False)
    assert {f.name for f in (tmp_path / "lora" / "lora_adapter").iterdir()} == {"adapter_config.json",
                                                                                "adapter_model.safetensors"}
    run = clm_explore.load_run(tmp_path / "lora").model
    base = load_model("tiny-random", list(run.config.id2label.values())).model
    assert not torch.equal(base.classifier.weight, run.classifier.weight)  # trained: the test is not of a no-op
    inputs = {"input_ids": torch.tensor([[2, 40, 41, 42, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.no_grad(), quiet_peft():
        over_base = PeftModel.from_pretrained(base, str(tmp_path / "lora" / "lora_adapter")).eval()(**inputs).logits
        assert over_base == pytest.approx(run.eval()(**inputs).logits, abs=1e-5)
    assert 'PeftModel.from_pretrained(base, "path/to/lora" + "/lora_adapter")' in (tmp_path / "lora" / "README.md").read_text()

    assert main(["export", "--run", str(tmp_path / "lora"), "--out", str(tmp_path / "patch"), "--patch"]) == 0
    shipped = {str(f.relative_to(tmp_path / "patch")) for f in (tmp_path / "patch").rglob("*") if f.is_file()}
    assert "model.safetensors" not in shipped and "lora_adapter/adapter_model.safetensors" in shipped
    adapter_config = json.loads((tmp_path / "patch" / "lora_adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] is None  # tiny-random has no Hub id; never the server's path
    assert "rebuilds the model from the base model and its `lora_adapter/`" in (tmp_path / "patch" / "README.md").read_text()
    rebuilt = apply_delta(tmp_path / "patch").model.state_dict()
    differ = [name for name, tensor in run.state_dict().items() if not torch.allclose(tensor, rebuilt[name], atol=1e-6)]
    assert not differ, differ[:5]
    texts = ["my card has not arrived"]
    assert clm_explore.predict(apply_delta(tmp_path / "patch"), texts).to_numpy() == pytest.approx(
        clm_explore.predict(tmp_path / "lora", texts).to_numpy(), abs=1e-6)
