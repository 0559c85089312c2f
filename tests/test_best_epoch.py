"""The best epoch kept (``keep_best``) and early stopping (``early_stop``): what is saved, when training ends, and
the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from clm_explore.batches import predict
from clm_explore.cli import main
from clm_explore.config import ConfigError, FinetuneConfig, MaskConfig
from clm_explore.training import finetune


def _run(data, tmp_path, name, **options):
    cfg = FinetuneConfig(epochs=5, batch_size=16, device="cpu", **options)
    return finetune(data, cfg, tmp_path / name, source="tiny-random", progress=False)


def _validation_accuracy(run, data) -> float:
    probs = predict(run, data.validation["text"].tolist())
    return float((probs.idxmax(axis=1).to_numpy() == data.validation["label"].to_numpy()).mean())


@pytest.mark.parametrize("method, options", [
    ("full", {"lr": 5e-3}),  # validation 0.25, 0.5, 0.525, 0.5, 0.5: the third epoch is the best
    ("sparse", {"lr": 3e-2, "mask": MaskConfig(budget=0.2, min_layer=0)}),  # 0.25, 0.5, 0.5, 0.725, 0.625: the fourth
])
def test_the_best_epochs_weights_are_the_ones_saved_and_scored(tiny_data, tmp_path, method, options):
    kept = _run(tiny_data, tmp_path, "kept", method=method, keep_best=True, **options)
    last = _run(tiny_data, tmp_path, "last", method=method, **options)
    curve = [point["accuracy"] for point in kept.metrics["val_curve"]]
    assert curve == [point["accuracy"] for point in last.metrics["val_curve"]]  # the same training, seeded
    best = int(np.argmax(curve)) + 1  # the first epoch of the highest accuracy
    assert best < len(curve), curve  # the case this test is for: the last epoch is not the best
    assert (kept.metrics["best_epoch"], kept.metrics["saved_epoch"], kept.metrics["best_val_accuracy"]) == (
        best, best, max(curve))
    assert "stopped_after" not in kept.metrics and len(kept.metrics["epoch_seconds"]) == 5
    assert _validation_accuracy(kept, tiny_data) == max(curve)  # the saved model is that epoch's
    assert _validation_accuracy(last, tiny_data) == curve[-1]
    kept_weights, last_weights = (load_file(r.out_dir / "model.safetensors") for r in (kept, last))
    assert any(not kept_weights[name].equal(last_weights[name]) for name in kept_weights)
    if method == "sparse":  # put back through the trained deltas: the rows outside the mask are still the base's
        from clm_explore.changes import weight_changes

        masks, table = load_file(kept.out_dir / "masks.safetensors"), weight_changes(kept).table
        selected = table["name"].map(lambda n: int(masks[n].bool().reshape(len(masks[n]), -1).any(1).sum())
                                     if n in masks else 0)
        assert table["rows_changed"].sum() > 0 and (table["rows_changed"] <= selected).all()


def test_training_stops_after_epochs_without_a_better_validation_accuracy(tiny_data, tmp_path):
    run = _run(tiny_data, tmp_path, "stopped", method="full", lr=1e-12, early_stop=2)  # learns nothing: flat
    curve = [point["accuracy"] for point in run.metrics["val_curve"]]
    assert len(curve) == 3 and len(set(curve)) == 1  # epoch 1 the best, then two without gain
    assert run.metrics["stopped_after"] == 3 and run.metrics["best_epoch"] == 1 and run.metrics["saved_epoch"] == 3
    assert len(run.metrics["epoch_seconds"]) == 3 and run.status == "succeeded"
    assert "| stopped early | after epoch 3 |" in (run.out_dir / "README.md").read_text()
    improving = _run(tiny_data, tmp_path, "on", method="full", lr=5e-3, early_stop=3)  # 0.25, 0.5, 0.525, 0.5, 0.5
    assert "stopped_after" not in improving.metrics and len(improving.metrics["val_curve"]) == 5


def test_the_command_line_keeps_the_best_epoch_and_says_so(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", "--data", str(data_dir), "--model", "tiny-random", "--method", "full", "--epochs", "3",
                 "--lr", "1e-12", "--keep-best", "--early-stop", "1", "--device", "cpu", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "stopped after epoch 2 of 3: no better validation accuracy for 1 epoch(s)" in said
    assert "saved epoch 1's weights, the best on validation" in said
    assert json.loads((out / "clm_run.json").read_text())["config"]["keep_best"] is True
    assert main(["finetune", "--data", str(data_dir), "--model", "tiny-random", "--early-stop", "-1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--early-stop must be >= 0" in capsys.readouterr().err


def test_choices_an_epoch_cannot_be_made_on_are_refused():
    with pytest.raises(ConfigError, match="an epoch chosen on test would be scored on the rows that chose it"):
        FinetuneConfig(keep_best=True, curve_split="test")
    with pytest.raises(ConfigError, match="needs eval_every_epoch"):
        FinetuneConfig(early_stop=2, eval_every_epoch=False)
    with pytest.raises(ConfigError, match="keep_best does not combine with average_last"):
        FinetuneConfig(keep_best=True, average_last=0.5)


def test_the_last_epoch_without_gain_is_no_early_stop_and_no_validation_is_refused(tiny_data, tmp_path):
    from dataclasses import replace

    from clm_explore.data import DataError

    flat = _run(tiny_data, tmp_path, "flat", method="full", lr=1e-12, early_stop=4)  # patience runs out at epoch 5
    assert len(flat.metrics["val_curve"]) == 5 and "stopped_after" not in flat.metrics  # it ran every epoch
    assert flat.metrics["best_epoch"] == 1 and flat.metrics["saved_epoch"] == 5
    blind = replace(tiny_data, validation=tiny_data.validation.iloc[:0])
    for options in ({"keep_best": True}, {"early_stop": 2}):
        with pytest.raises(DataError, match="has no validation rows, which keep_best and early_stop choose on"):
            _run(blind, tmp_path, "blind", method="head", **options)
        assert not (tmp_path / "blind").exists()
    with pytest.raises(ConfigError, match="early_stop does not combine with average_last"):
        FinetuneConfig(early_stop=2, average_last=0.5)
