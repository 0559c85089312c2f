"""weight_changes / `clm-explore changes`: how far a run moved each weight matrix of its base model."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from clm_explore.changes import ChangesError, weight_changes
from clm_explore.cli import main
from clm_explore.config import FinetuneConfig, MaskConfig
from clm_explore.training import finetune


def _run(tmp_path_factory, data, method: str, **options):
    cfg = FinetuneConfig(method=method, epochs=1, batch_size=16, device="cpu", seed=0, **options)
    return finetune(data, cfg, tmp_path_factory.mktemp(method), source="tiny-random")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data_module):
    sparse = {"mask": MaskConfig(budget=0.03, min_layer=0)}  # every layer and the embeddings may take rows
    return {method: _run(tmp_path_factory, tiny_data_module, method, **(sparse if method == "sparse" else {}))
            for method in ("sparse", "full", "prefix")}


def test_a_sparse_run_changed_only_rows_its_mask_selected(runs):
    changes = weight_changes(runs["sparse"])
    assert changes.source == "tiny-random" and changes.backbone_params == 42_058
    masks = load_file(runs["sparse"].out_dir / "masks.safetensors")
    selected = changes.table["name"].map(lambda n: int(masks[n].bool().reshape(len(masks[n]), -1).any(1).sum())
                                         if n in masks else 0)
    assert changes.table["rows_changed"].sum() > 0 and selected.sum() > 0
    assert (changes.table["rows_changed"] <= selected).all(), changes.table.assign(selected=selected)
    assert (changes.table.loc[changes.table["rows_changed"] == 0, "relative_change"] == 0).all()
    # Beyond the table's maps only the trained LayerNorms moved: fewer parameters than the budget's rows hold.
    assert 0 < changes.other_params_changed < changes.backbone_params_changed


def test_full_finetuning_moves_every_map_and_prefix_tuning_none(runs):
    full = weight_changes(runs["full"]).table
    maps = full[full["module"] != "embeddings"]
    assert (maps["rows_changed"] > 0).all() and (maps["relative_change"] > 0).all()
    prefix = weight_changes(runs["prefix"])  # its prefix lives in adapter/, outside the backbone
    assert prefix.backbone_params_changed == 0 and prefix.table["rows_changed"].sum() == 0


def test_changes_command_prints_the_table_and_json(runs, capsys):
    folder = str(runs["sparse"].out_dir)
    assert main(["changes", "--run", folder]) == 0
    out = capsys.readouterr().out
    assert "rows_changed" in out and "backbone parameters changed" in out
    assert main(["changes", "--run", folder, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["source"] == "tiny-random" and len(record["matrices"]) == len(weight_changes(folder).table)
    assert {"layer", "module", "rows_changed", "relative_change"} <= set(record["matrices"][0])


def test_another_base_model_is_refused(runs, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from clm_explore.modeling import load_model

    tiny = load_model("tiny-random", ["a", "b"])
    wider = tiny.model.config.to_dict() | {"hidden_size": 32, "intermediate_size": 64}
    other = AutoModelForSequenceClassification.from_config(type(tiny.model.config).from_dict(wider))
    other.save_pretrained(tmp_path / "wider")
    tiny.tokenizer.save_pretrained(tmp_path / "wider")
    with pytest.raises(ChangesError, match="do not have the same weights"):
        weight_changes(runs["sparse"], source=str(tmp_path / "wider"))
    assert main(["changes", "--run", str(runs["sparse"].out_dir), "--base", str(tmp_path / "wider")]) == 2
    assert "is " + str(tmp_path / "wider") + " the model the run was trained from?" in capsys.readouterr().err
    with pytest.raises(ChangesError, match="not a run folder"):
        weight_changes(tmp_path / "wider")
