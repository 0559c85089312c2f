"""TailAverage: the running mean over the last steps, swapped in and out in place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clm_explore.averaging import TailAverage


def test_the_average_is_the_mean_of_the_weights_after_each_step_from_the_start_step():
    weight = nn.Parameter(torch.zeros(3))
    average = TailAverage([weight], start_step=3)
    for step in range(1, 6):
        with torch.no_grad():
            weight.fill_(float(step))
        average.update(step)
    assert average.count == 3  # steps 3, 4, 5
    average.swap()
    assert torch.allclose(weight, torch.full((3,), 4.0))  # mean of 3, 4, 5
    average.swap()
    assert torch.equal(weight, torch.full((3,), 5.0))  # training's last weights are back


def test_for_share_counts_the_last_steps_and_keeps_at_least_one():
    weight = nn.Parameter(torch.zeros(1))
    assert TailAverage.for_share([weight], 0.5, 10).start_step == 6
    assert TailAverage.for_share([weight], 1.0, 10).start_step == 1
    assert TailAverage.for_share([weight], 1e-6, 10).start_step == 10


def test_swap_before_any_averaged_step_changes_nothing():
    weight = nn.Parameter(torch.ones(2))
    average = TailAverage([weight], start_step=5)
    average.update(1)
    average.swap()
    assert torch.equal(weight, torch.ones(2)) and not average.started


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_share_outside_0_1_is_refused(share):
    from clm_explore.config import FinetuneConfig

    with pytest.raises(ValueError, match="average_last must be in"):
        FinetuneConfig(average_last=share)


def test_the_means_memory_is_one_float32_copy_of_the_averaged_parameters():
    params = [nn.Parameter(torch.zeros(256, 256, dtype=torch.bfloat16)), nn.Parameter(torch.zeros(256))]
    assert TailAverage(params, 1).megabytes == pytest.approx((256 * 256 + 256) * 4 / 2**20)


def test_a_finetune_with_averaging_saves_and_scores_the_average(tmp_path, tiny_data):
    from dataclasses import replace

    from test_finetune import SPARSE, assert_only_masked_rows_changed

    from clm_explore.training import finetune

    cfg = replace(SPARSE, epochs=2, schedule="constant", average_last=0.5)
    result = finetune(tiny_data, cfg, tmp_path / "run", source="tiny-random")
    steps = -(-len(tiny_data.train) // cfg.batch_size) * cfg.epochs
    assert result.metrics["averaged_steps"] == round(0.5 * steps)
    assert_only_masked_rows_changed(result.out_dir)  # the average of masked deltas leaves other rows as they were
    # The last epoch's validation score is the averaged model's: the saved one, scored again here.
    from clm_explore.batches import predict

    probs = predict(result.out_dir, tiny_data.validation["text"].tolist())
    accuracy = (probs.idxmax(axis=1).to_numpy() == tiny_data.validation["label"].astype(str).to_numpy()).mean()
    assert result.metrics["val_curve"][-1]["accuracy"] == pytest.approx(accuracy)
