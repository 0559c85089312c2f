"""weight_changes / `clm-explore changes`: how far a run moved each weight matrix of its base model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from safetensors.torch import load_file

from clm_explore.changes import ChangesError, weight_changes
from clm_explore.cli import main
from clm_explore.config import FinetuneConfig, MaskConfig
from clm_explore.modeling import ModelSourceError
from clm_explore.training import finetune


def _run(tmp_path_factory, data, method: str, seed: int = 0, **options):
    cfg = FinetuneConfig(method=method, epochs=1, batch_size=16, device="cpu", seed=seed, **options)
    return finetune(data, cfg, tmp_path_factory.mktemp(method), source="tiny-random")


SPARSE = {"mask": MaskConfig(budget=0.03, min_layer=0)}  # every layer and the embeddings may take rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data_module):
    return {method: _run(tmp_path_factory, tiny_data_module, method, **(SPARSE if method == "sparse" else {}))
            for method in ("sparse", "full", "prefix", "bitfit")}


def _assert_only_selected_rows_changed(changes, run) -> None:
    masks = load_file(run.out_dir / "masks.safetensors")
    selected = changes.table["name"].map(lambda n: int(masks[n].bool().reshape(len(masks[n]), -1).any(1).sum())
                                         if n in masks else 0)
    assert changes.table["rows_changed"].sum() > 0 and selected.sum() > 0
    assert (changes.table["rows_changed"] <= selected).all(), changes.table.assign(selected=selected)


def test_a_sparse_run_changed_only_rows_its_mask_selected(runs):
    changes = weight_changes(runs["sparse"])
    assert changes.source == "tiny-random" and changes.backbone_params == 42_058
    _assert_only_selected_rows_changed(changes, runs["sparse"])
    assert (changes.table.loc[changes.table["params_changed"] == 0, "relative_change"] == 0).all()
    # Beyond the table's maps only the trained LayerNorms moved: fewer parameters than the budget's rows hold.
    assert 0 < changes.other_params_changed < changes.backbone_params_changed


def test_full_finetuning_moves_every_map_and_prefix_tuning_none(runs):
    full = weight_changes(runs["full"]).table
    maps = full[full["module"] != "embeddings"]
    assert (maps["rows_changed"] > 0).all() and (maps["relative_change"] > 0).all()
    prefix = weight_changes(runs["prefix"])  # its prefix lives in adapter/, outside the backbone
    assert prefix.backbone_params_changed == 0 and prefix.table["rows_changed"].sum() == 0


def test_bitfit_moves_biases_only_and_a_head_at_another_seed_nothing(tmp_path_factory, tiny_data_module, runs):
    bitfit = weight_changes(runs["bitfit"]).table
    assert bitfit["rows_changed"].sum() == 0 and bitfit["biases_changed"].sum() > 0
    assert bitfit["share_params_changed"].max() < 0.1  # not every parameter, as full finetuning's map would say
    # The tiny model's backbone is drawn from the seed: the base must be built at the run's seed, or every weight
    # of a head-only run would read as changed.
    head = weight_changes(_run(tmp_path_factory, tiny_data_module, "head"))
    seeded = weight_changes(_run(tmp_path_factory, tiny_data_module, "head", seed=3))
    assert head.backbone_params_changed == 0 and seeded.backbone_params_changed == 0


def test_merged_tokens_rows_are_set_in_the_base_before_comparing(tmp_path_factory, tiny_data_module):
    words = dict(zip(tiny_data_module.labels, ["refunding", "topups", "cardholder", "fxrates"], strict=True))
    tagged = {name: frame.assign(text=frame["text"] + " " + frame["label"].map(words))
              for name, frame in (("train", tiny_data_module.train), ("validation", tiny_data_module.validation),
                                  ("test", tiny_data_module.test))}
    run = _run(tmp_path_factory, replace(tiny_data_module, **tagged), "sparse_merged", **SPARSE)
    changes = weight_changes(run)
    assert changes.merged_rows >= 4 and "merged-token rows set from their pieces first" in changes.summary()
    _assert_only_selected_rows_changed(changes, run)  # a merged slot's row counts only if training moved it


def test_a_given_base_model_is_the_one_named(runs, tmp_path):
    from clm_explore.modeling import load_model

    (runs["full"].out_dir / "clm_run.json").rename(tmp_path / "kept.json")  # a run that names no base model
    try:
        (runs["full"].out_dir / "clm_run.json").write_text(json.dumps({"method": "full"}))
        with pytest.raises(ChangesError, match="does not record the model it was trained from"):
            weight_changes(runs["full"])
        given = weight_changes(runs["full"], base=load_model("tiny-random", labels=None))
        assert given.source == "tiny-random" and given.backbone_params_changed > 0
    finally:
        (tmp_path / "kept.json").replace(runs["full"].out_dir / "clm_run.json")


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


def test_a_run_records_its_model_folder_so_that_it_is_found_from_anywhere(tmp_path, tiny_data_module, monkeypatch):
    from clm_explore.modeling import load_model

    tiny = load_model("tiny-random", tiny_data_module.labels)
    for part in (tiny.model, tiny.tokenizer):
        part.save_pretrained(tmp_path / "mybase")
    monkeypatch.chdir(tmp_path)
    cfg = FinetuneConfig(method="sparse", epochs=1, batch_size=16, device="cpu")
    run = finetune(tiny_data_module, cfg, tmp_path / "run", source="mybase")  # relative, as typed
    assert json.loads((tmp_path / "run" / "clm_run.json").read_text())["source"] == str(tmp_path / "mybase")
    monkeypatch.chdir(tmp_path / "run")  # elsewhere: the recorded folder is still found
    assert weight_changes(run).backbone_params_changed > 0
    # ... and so are the scores the run saved: another run from here trains from them on the same model.
    again = finetune(tiny_data_module, cfg, tmp_path / "again", source=str(tmp_path / "mybase"),
                     scores=tmp_path / "run" / "sensitivity")
    assert again.metrics["scores_from"] == str(tmp_path / "run" / "sensitivity")
    (tmp_path / "run" / "merge.json").write_text(json.dumps({"merged": [{"id": 5}]}))  # damaged: no pieces
    with pytest.raises(ChangesError, match="merge.json cannot be read"):
        weight_changes(run)
    missing = tmp_path / "run" / "clm_run.json"
    missing.write_text(json.dumps({"method": "head", "source": "gone-folder"}))
    # a relative path (the upgrade review: older versions recorded a folder as typed) says where it was relative to
    with pytest.raises(ModelSourceError, match="was trained from gone-folder, a path relative to where it was trained "
                       r"\(older versions recorded a model folder as typed\), which cannot be loaded here.*--base"):
        weight_changes(run)
    missing.write_text(json.dumps({"method": "head", "source": str(tmp_path / "gone-folder")}))
    with pytest.raises(ModelSourceError, match=r"gone-folder, which cannot be loaded here"):
        weight_changes(run)


def test_a_run_stored_below_float32_says_its_rounding_reads_as_change(runs, tmp_path):
    """The layer review: a run re-saved in float16 read 98% of its parameters changed, by at most 2e-4 relative,
    without a word."""
    import shutil

    from safetensors.torch import save_file

    folder = tmp_path / "fp16"
    shutil.copytree(runs["prefix"].out_dir, folder)
    weights = load_file(folder / "model.safetensors")
    save_file({name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in weights.items()},
              folder / "model.safetensors")
    changes = weight_changes(folder)
    assert changes.stored == "float16" and changes.share_changed > 0.5
    assert "stored as float16, whose rounding counts as change here" in changes.summary()
    assert weight_changes(runs["prefix"]).stored_note() == "" and changes.to_record()["stored"] == "float16"
