"""``FinetuneConfig.compile``: the training step under torch.compile trains the same weights as eager.

The tests compile with the 'aot_eager' backend: dynamo's tracing and AOT autograd's forward and backward
graphs, as with inductor, without inductor's code generation (which takes about 25 s per tiny run on one CPU
thread).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_finetune import SPARSE, assert_only_masked_rows_changed, saved_params
from torch._dynamo.backends.registry import lookup_backend

from clm_explore import training
from clm_explore.batches import collate
from clm_explore.config import FinetuneConfig
from clm_explore.training import finetune


@pytest.fixture
def traced_only(monkeypatch) -> list[int]:
    """Compile with aot_eager; returns the widths (tokens) of the batches each compiled graph was made for."""
    widths: list[int] = []

    def backend(graph, example_inputs):
        widths.extend(x.shape[1] for x in example_inputs if isinstance(x, torch.Tensor) and x.dim() == 2
                      and x.shape[0] == SPARSE.batch_size and not x.is_floating_point())  # ids and mask
        return lookup_backend("aot_eager")(graph, example_inputs)

    monkeypatch.setattr(training, "COMPILE_BACKEND", backend)
    return widths


def assert_same_weights(eager_dir, compiled_dir) -> None:
    """Every saved parameter equal up to the order of sums (padding and traced graphs change only that)."""
    before, after = saved_params(eager_dir), saved_params(compiled_dir)
    for name, weight in before.items():
        torch.testing.assert_close(after[name], weight, rtol=1e-4, atol=1e-5, msg=name)


def test_collate_pads_to_a_multiple_of_tokens():
    ids = [[1, 2, 3], [4, 5, 6, 7, 8]]
    input_ids, mask = collate(ids, np.array([0, 1]), pad_id=0, multiple=16)
    assert input_ids.shape == mask.shape == (2, 16)
    assert mask.sum(1).tolist() == [3, 5]
    assert collate(ids, np.array([0, 1]), pad_id=0)[0].shape == (2, 5)  # the default: the longest row


def test_compiled_sparse_training_matches_eager(tmp_path, tiny_data, traced_only):
    cfg = replace(SPARSE, epochs=1)
    eager = finetune(tiny_data, cfg, tmp_path / "eager", source="tiny-random")
    compiled = finetune(tiny_data, replace(cfg, compile="reduce-overhead"), tmp_path / "compiled",
                        source="tiny-random")
    assert compiled.status == "succeeded"
    # It was compiled; on a CPU (no CUDA graphs) for batches as long as their longest row.
    assert traced_only and any(w % training.GRAPHS_PAD_MULTIPLE for w in traced_only)
    assert_only_masked_rows_changed(compiled.out_dir)
    assert_same_weights(eager.out_dir, compiled.out_dir)
    assert compiled.metrics["trainable_params"] == eager.metrics["trainable_params"]


def test_compiled_full_finetuning_matches_eager(tmp_path, tiny_data, traced_only):
    cfg = FinetuneConfig(method="full", epochs=1, batch_size=SPARSE.batch_size, device="cpu")
    eager = finetune(tiny_data, cfg, tmp_path / "eager", source="tiny-random")
    compiled = finetune(tiny_data, replace(cfg, compile="default"), tmp_path / "compiled", source="tiny-random")
    assert any(w % training.GRAPHS_PAD_MULTIPLE for w in traced_only)  # compiled, batches as long as their rows
    assert_same_weights(eager.out_dir, compiled.out_dir)


def test_batches_are_padded_for_cuda_graphs_only():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [training.batch_pad_multiple(m, cuda) for m in ("reduce-overhead", "max-autotune", "default", "off")] == [
        training.GRAPHS_PAD_MULTIPLE, training.GRAPHS_PAD_MULTIPLE, 1, 1]
    assert training.batch_pad_multiple("reduce-overhead", cpu) == 1  # no graphs to record: padding is only work
    from torch._inductor import list_mode_options

    from clm_explore.config import COMPILE_MODES

    # The modes that record CUDA graphs are torch's own list: a torch that changes it fails here.
    graphs = {m for m in COMPILE_MODES if m != "off"
              and list_mode_options(None if m == "default" else m).get("triton.cudagraphs")}
    assert graphs == set(training.CUDA_GRAPH_MODES)


def test_compile_is_refused_with_the_frozen_layer_cache_or_an_unknown_mode():
    with pytest.raises(ValueError, match="cache_frozen_layers"):
        FinetuneConfig(compile="default", cache_frozen_layers=True)
    with pytest.raises(ValueError, match="compile must be one of"):
        FinetuneConfig(compile="fast")
