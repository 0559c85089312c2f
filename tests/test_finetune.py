"""finetune() on the tiny random BERT: frozen rows stay bit-identical, the run folder is complete.

One sparse run (2 epochs, batch 8) is shared by the tests that only read its folder; cancel, weight
decay and full finetuning get their own short runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from clm_explore.config import ConfigError, FinetuneConfig, MaskConfig, SensitivityConfig
from clm_explore.data import AnnotatedData
from clm_explore.modeling import count_parameters, load_model
from clm_explore.sensitivity import SensitivityReport
from clm_explore.training import finetune

LABELS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed"]
# min_layer 0: every layer and the word embeddings compete, so DeltaEmbedding is exercised too.
SPARSE = FinetuneConfig(method="sparse", epochs=2, batch_size=8, device="cpu", seed=0,
                        mask=MaskConfig(budget=0.03, min_layer=0))
N_LAYERS = 2


@pytest.fixture(scope="module")
def data(tiny_data_module) -> AnnotatedData:
    return tiny_data_module


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory, data):
    steps = []
    out = tmp_path_factory.mktemp("sparse")
    torch.manual_seed(123)  # finetune must seed itself: the global state must not matter
    result = finetune(data, SPARSE, out, source="tiny-random", on_step=steps.append)
    return result, steps


def base_params(seed: int = 0) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in load_model("tiny-random", LABELS, seed=seed).model.named_parameters()}


def saved_params(folder) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in AutoModelForSequenceClassification.from_pretrained(folder).named_parameters()}


def layer_of(name: str) -> int:
    found = re.search(r"layer\.(\d+)\.", name)
    return int(found.group(1)) if found else (-1 if "embeddings" in name else N_LAYERS)


def assert_only_masked_rows_changed(folder, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every backbone matrix row outside the mask is bit-identical to the base model; returns the masks."""
    masks = {k: v.bool() for k, v in load_file(folder / "masks.safetensors").items()}
    assert masks
    base, saved = base_params(seed), saved_params(folder)
    assert base.keys() == saved.keys()
    lowest = min(layer_of(k) for k in masks)
    for name, before in base.items():
        after = saved[name]
        owner = name.rsplit(".", 1)[0] + ".weight"
        if name.startswith("classifier") or ("LayerNorm" in name and layer_of(name) >= lowest):
            continue  # head and LayerNorms at or above the lowest selected layer train
        if owner in masks:
            mask = masks[owner]
            assert torch.equal(after[~mask], before[~mask]), f"{name}: a row outside the mask changed"
        else:
            assert torch.equal(after, before), f"{name} changed but has no selected row"
    return masks


def test_rows_outside_the_mask_are_bit_identical_and_masked_rows_changed(sparse_run):
    result, _ = sparse_run
    assert result.status == "succeeded"
    masks = assert_only_masked_rows_changed(result.out_dir)
    base, saved = base_params(), saved_params(result.out_dir)
    for name, mask in masks.items():
        bias = name.removesuffix("weight") + "bias"
        for row in torch.nonzero(mask).flatten().tolist():
            changed = not torch.equal(saved[name][row], base[name][row])
            if bias in base:
                changed = changed or not torch.equal(saved[bias][row], base[bias][row])
            assert changed, f"{name} row {row} is selected but did not change"
    assert not torch.equal(saved["classifier.weight"], base["classifier.weight"])


def test_delta_file_holds_the_change_of_the_selected_rows(sparse_run):
    result, _ = sparse_run
    delta = load_file(result.out_dir / "delta.safetensors")
    base, saved = base_params(), saved_params(result.out_dir)
    modules = {k.removesuffix(".rows") for k in delta if k.endswith(".rows")}
    assert modules == {k.removesuffix(".weight") for k in load_file(result.out_dir / "masks.safetensors")}
    for module in modules:
        rows = delta[f"{module}.rows"]
        torch.testing.assert_close(saved[f"{module}.weight"][rows],
                                   base[f"{module}.weight"][rows] + delta[f"{module}.delta_w"])


def test_trainable_params_are_deltas_layernorms_and_head(sparse_run, data):
    result, _ = sparse_run
    masks = {k: v.bool() for k, v in load_file(result.out_dir / "masks.safetensors").items()}
    model = load_model("tiny-random", LABELS).model
    modules = dict(model.named_modules())
    deltas = 0
    for name, mask in masks.items():
        mod = modules[name.removesuffix(".weight")]
        # a key map's row trains no bias entry: softmax takes a key bias away (modeling.is_attention_key)
        row_params = mod.embedding_dim if isinstance(mod, torch.nn.Embedding) else mod.in_features + (".key." not in name)
        deltas += int(mask.sum()) * row_params
    lowest = min(layer_of(k) for k in masks)
    norms = sum(p.numel() for n, p in model.named_parameters() if "LayerNorm" in n and layer_of(n) >= lowest)
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("classifier"))
    assert head == 32 * 4 + 4
    m = result.metrics
    assert m["lowest_layer"] == lowest
    assert m["selected_params"] == deltas
    assert 0 < deltas <= round(0.03 * m["backbone_params"])
    assert m["trainable_params"] == deltas + norms + head
    saved = load_file(result.out_dir / "delta.safetensors")
    assert any(k.endswith("key.delta_w") for k in saved) and not any(k.endswith("key.delta_b") for k in saved)
    # What the Budget page and select_mask say a run will train, from the saved scores alone, is what it trained.
    from clm_explore.masks import select_mask
    from clm_explore.sensitivity import SensitivityReport

    selection = select_mask(SensitivityReport.load(result.out_dir / "sensitivity"), SPARSE.mask)
    assert (selection.selected_params, selection.trainable_params) == (deltas, m["trainable_params"])
    assert selection.optimizer_bytes == 16 * m["trainable_params"]


def test_saved_folder_is_a_standard_model_that_reproduces_predictions(sparse_run, data):
    result, _ = sparse_run
    folder = result.out_dir
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert [model.config.id2label[i] for i in range(len(LABELS))] == sorted(LABELS)
    assert count_parameters(model) == count_parameters(load_model("tiny-random", LABELS).model)
    assert count_parameters(model) == result.metrics["total_params"] == result.metrics["base_params"]
    predictions = pd.read_csv(folder / "predictions.csv")
    assert list(predictions.columns) == ["row", "text", "label", "pred", "prob"]
    assert predictions["text"].tolist() == data.test["text"].tolist()
    with torch.no_grad():
        enc = tok(predictions["text"].tolist(), return_tensors="pt", padding=True, truncation=True, max_length=64)
        probs = torch.softmax(model(**enc).logits, -1)
    assert [model.config.id2label[int(i)] for i in probs.argmax(-1)] == predictions["pred"].tolist()
    np.testing.assert_allclose(probs.max(-1).values.numpy(), predictions["prob"].to_numpy(), rtol=1e-4, atol=1e-5)
    accuracy = float((predictions["pred"] == predictions["label"]).mean())
    assert result.metrics["accuracy"] == pytest.approx(accuracy)


def test_metrics_json(sparse_run):
    result, _ = sparse_run
    m = json.loads((result.out_dir / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "per_label_f1", "train_seconds", "examples_per_second", "peak_memory_mb",
                "trainable_params", "total_params", "budget", "seed", "confusion", "labels", "method", "epochs",
                "val_curve"):
        assert key in m, key
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1
    assert set(m["per_label_f1"]) == set(LABELS)
    assert m["macro_f1"] == pytest.approx(np.mean(list(m["per_label_f1"].values())))
    assert np.array(m["confusion"]).sum() == 40 and np.trace(m["confusion"]) == round(40 * m["accuracy"])
    assert m["train_seconds"] > 0 and m["examples_per_second"] > 0 and m["peak_memory_mb"] >= 0
    assert (m["budget"], m["seed"], m["method"], m["epochs"]) == (0.03, 0, "sparse", 2)
    assert [p["epoch"] for p in m["val_curve"]] == [1, 2]
    run = json.loads((result.out_dir / "clm_run.json").read_text())
    saved = replace(SPARSE, mask=replace(SPARSE.mask, seed=SPARSE.seed))  # the saved config names the mask's seed
    assert run["method"] == "sparse" and FinetuneConfig.from_dict(run["config"]) == saved
    for name in ("config.json", "model.safetensors", "task_tokens.json", "sensitivity/row_scores.safetensors"):
        assert (result.out_dir / name).is_file(), name


def test_out_of_scope_test_rows_are_scored_with_a_threshold_from_validation(tmp_path, data):
    from clm_explore.batches import predict_proba
    from clm_explore.modeling import load_run

    test = data.test.copy()
    test.loc[test.index[::4], "label"] = "out_of_scope"  # 10 rows with a label train never had
    # Validation rows of a label train lacks are left out of the threshold: it turns away a share of in-scope
    # queries, and their low top probabilities pulled it down (the metrics review: 0.40 where in-scope said 0.65)
    unsure = data.validation.head(5).assign(label="out_of_scope", text=["zz qq", "a", "?", "xx", "the"])
    validation = pd.concat([data.validation, unsure], ignore_index=True)
    open_data = AnnotatedData(data.train, validation, test, data.labels, source="open")
    cfg = FinetuneConfig(method="head", epochs=1, batch_size=16, device="cpu", out_of_scope_quantile=0.25)
    result = finetune(open_data, cfg, tmp_path / "run", source="tiny-random")
    scope = result.metrics["out_of_scope"]
    run = load_run(result.out_dir)
    top = predict_proba(run.model, run, data.validation["text"].tolist()).max(1)
    assert scope["threshold"] == pytest.approx(float(np.quantile(top, 0.25)), abs=1e-6)
    assert scope["rows"] == 10 and scope["quantile"] == 0.25 and scope["validation_rows_left_out"] == 5
    rows = pd.read_csv(result.out_dir / "predictions.csv")
    assert (rows["out_of_scope"] == (rows["prob"] < scope["threshold"])).all()
    unseen = (rows["label"] == "out_of_scope").to_numpy()
    right = np.where(unseen, rows["out_of_scope"], ~rows["out_of_scope"] & (rows["pred"] == rows["label"]))
    assert scope["accuracy"] == pytest.approx(right.mean())
    assert result.metrics["accuracy"] == pytest.approx(((rows["pred"] == rows["label"]) & ~unseen).mean())


def test_predictions_have_no_out_of_scope_column_when_every_test_label_was_trained(sparse_run):
    result, _ = sparse_run
    assert "out_of_scope" not in pd.read_csv(result.out_dir / "predictions.csv")
    assert "out_of_scope" not in result.metrics


def test_progress_has_one_line_per_step_and_on_step_was_called(sparse_run):
    result, steps = sparse_run
    total = 2 * (160 // 8)
    lines = [json.loads(x) for x in (result.out_dir / "progress.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["eval"] is None] == list(range(1, total + 1))
    assert all(x["total_steps"] == total for x in lines)
    assert [x["epoch"] for x in lines if x["eval"] is not None] == [1, 2]  # the validation point of each epoch
    assert [s.step for s in steps if s.eval is None] == list(range(1, total + 1))
    assert len(steps) == len(lines)
    assert all(np.isfinite(s.loss) for s in steps if s.eval is None)


def test_the_eta_counts_the_evaluations_still_to_come_once_their_pace_is_known(sparse_run, data):
    """The UX review: the ETA counted training steps alone, so a card read 0s while the test split was still read."""
    _, steps = sparse_run
    last = steps[-1]
    assert last.step == last.total_steps and last.eta > 0  # the test split's evaluation is still to come
    first_epoch = [s for s in steps if s.epoch == 1 and s.eval is None]
    second_epoch = [s for s in steps if s.epoch == 2 and s.eval is None]
    # Before the first evaluation its pace is unknown: steps alone. After it, the epoch 2 and test evaluations add
    # a share that shrinks to the test split's.
    assert first_epoch and second_epoch and second_epoch[-1].eta > 0
    assert len(data.validation) > 0 and len(data.test) > 0


def test_a_run_on_text_its_vocabulary_cannot_read_says_so_in_its_metrics_card_and_to_a_notebook(tmp_path):
    """The language review: a Chinese set trained to near chance with nothing said where an API user or a card reader
    would see it."""
    import warnings

    from clm_explore.cards import model_card

    rows = [(f"我想{'退款' if i % 2 else '开发票'}第{i}次", "退款" if i % 2 else "发票") for i in range(60)]
    frame = pd.DataFrame(rows, columns=["text", "label"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = finetune(frame, FinetuneConfig(method="head", epochs=1, device="cpu", max_length=16),
                          tmp_path / "zh", source="tiny-random", progress=False)
    said = result.metrics["vocabulary_note"]
    assert said.startswith("78% of the training texts' sub-tokens are [UNK]") and "multilingual" in said  # digits read
    assert any("sub-tokens are [UNK]" in str(w.message) for w in caught)  # before the training, in the notebook
    assert "## Notes" in (card := model_card(result.out_dir)) and "to this model's vocabulary" in card


def test_the_eta_counts_each_evaluation_still_to_come_once():
    """The diff review: at an epoch's evaluation report the ETA left out the next epoch's evaluation (the finished
    epoch was subtracted twice), and jumped back up a step later."""
    from types import SimpleNamespace

    from clm_explore.training import _TrainLoop

    data = SimpleNamespace(split=lambda name: [0] * 120, test=[0] * 30)
    loop = SimpleNamespace(cfg=SimpleNamespace(epochs=3, curve_split="validation"), data=data, epoch_seconds=[5.0],
                           eval_rows_per_second=10.0)
    # Epoch 1 ended and was evaluated (or epoch 2 is under way): epochs 2 and 3 are evaluated, then the test split
    assert _TrainLoop._evaluation_left_seconds(loop) == (2 * 120 + 30) / 10.0
    loop.epoch_seconds = [5.0, 5.0, 5.0]
    assert _TrainLoop._evaluation_left_seconds(loop) == 30 / 10.0  # the last epoch ended: the test split alone
    loop.eval_rows_per_second = None
    assert _TrainLoop._evaluation_left_seconds(loop) == 0.0  # no pace before the first evaluation or step


def test_the_eta_paces_evaluation_no_slower_than_training():
    """The few-shot review: 7 validation rows (one batch, mostly fixed cost) paced 700 test rows at 14 rows/s, and
    a card read "ETA 1m 29s" at step 19 of 20 of a run that ended 16 s later. Reading rows forward is never slower
    than training on them, so training's pace bounds the evaluation's; a large split's own pace still counts."""
    from types import SimpleNamespace

    from clm_explore.training import _TrainLoop

    data = SimpleNamespace(split=lambda name: [0] * 7, test=[0] * 700)
    loop = SimpleNamespace(cfg=SimpleNamespace(epochs=10, curve_split="validation"), data=data,
                           epoch_seconds=[1.0] * 10, eval_rows_per_second=14.0)
    assert _TrainLoop._evaluation_left_seconds(loop, training_rate=50.0) == 700 / 50.0
    loop.eval_rows_per_second = 400.0  # measured on many rows: the faster pace stands
    assert _TrainLoop._evaluation_left_seconds(loop, training_rate=50.0) == 700 / 400.0
    loop.eval_rows_per_second = None  # before the first evaluation: training's pace, not nothing
    assert _TrainLoop._evaluation_left_seconds(loop, training_rate=50.0) == 700 / 50.0


def test_a_diverged_steps_nan_loss_is_written_as_null_in_progress_jsonl(tmp_path):
    """The test review: the strict-JSON test below never met a NaN loss, and the writer wrote the bare NaN token."""
    import io

    from clm_explore.training import StepInfo, _logged, read_history

    heard: list[StepInfo] = []
    out = io.StringIO()
    log = _logged(heard.append, out)
    log(StepInfo(1, 2, 1, float("nan"), 10.0, 1.0, float("inf"), {"accuracy": float("nan"), "split": "validation"}))
    log(StepInfo(2, 2, 1, 0.5, 10.0, 2.0, 0.0))

    def refuse(token: str) -> None:
        raise AssertionError(f"not strict JSON: {token}")

    lines = out.getvalue().splitlines()
    first = json.loads(lines[0], parse_constant=refuse)
    assert len(lines) == 2 and first["loss"] is None and first["eta"] is None and first["eval"]["accuracy"] is None
    assert len(heard) == 2 and heard[0].loss != heard[0].loss  # the listener still hears the step as it was
    (tmp_path / "progress.jsonl").write_text(out.getvalue())
    assert read_history(tmp_path)["loss"].tolist()[1] == 0.5


def test_progress_lines_are_strict_json(sparse_run):
    # The contract promises one JSON object per line; a NaN loss would be written as the bare token NaN,
    # which is not JSON (RFC 8259) and breaks non-Python readers.
    result, _ = sparse_run

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    for line in (result.out_dir / "progress.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)


def test_should_stop_cancels(tmp_path, data):
    seen = []
    cfg = FinetuneConfig(epochs=1, batch_size=8, device="cpu", mask=MaskConfig(budget=0.01))
    result = finetune(data, cfg, tmp_path / "run", source="tiny-random", on_step=seen.append,
                      should_stop=lambda: len(seen) >= 3)
    assert result.status == "cancelled"
    assert [s.step for s in seen] == [1, 2, 3]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "cancelled"
    assert not (tmp_path / "run" / "model.safetensors").exists()
    from clm_explore.runs import RunStatus, RunStore

    store = RunStore(tmp_path / "registry")  # the app's queue then records the cancel: the steps stay
    store.set_status(store.register_folder(tmp_path / "run").id, RunStatus.CANCELLED)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {"status": "cancelled", "steps": 3}


@pytest.mark.parametrize(("raised", "status"), [(RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "cancelled")])
def test_a_run_that_raises_says_how_it_ended_and_the_caller_may_say_more(tmp_path, data, raised, status):
    from clm_explore.runs import RunStatus, RunStore

    def raise_at_step_2(info) -> None:
        if info.step == 2:
            raise raised

    cfg = FinetuneConfig(method="full", epochs=1, batch_size=8, device="cpu")
    with pytest.raises(type(raised)):
        finetune(data, cfg, tmp_path / "run", source="tiny-random", on_step=raise_at_step_2)
    ended = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert ended == {"status": status, "error": str(raised) or type(raised).__name__}  # before: no metrics.json
    store = RunStore(tmp_path / "registry")
    record = store.register_folder(tmp_path / "run")
    assert record.status is RunStatus(status)  # it read "pending", for good
    store.set_status(record.id, RunStatus.INTERRUPTED, error="stopped by SIGTERM")  # as the CLI records a launcher's stop
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "interrupted"


def test_the_preparation_reports_its_phases_and_a_cancel_stops_it_at_the_next_scoring_batch(tmp_path, data):
    phases: list[tuple[str, int, int]] = []

    def after_the_first_scoring_batch() -> bool:
        return bool(phases) and phases[-1][0] == "scoring rows" and phases[-1][1] >= 1

    cfg = FinetuneConfig(epochs=1, batch_size=8, device="cpu", mask=MaskConfig(budget=0.01),
                         sensitivity=SensitivityConfig(batch_size=4))
    result = finetune(data, cfg, tmp_path / "run", source="tiny-random", should_stop=after_the_first_scoring_batch,
                      on_phase=lambda *phase: phases.append(phase))
    assert result.status == "cancelled"
    assert [p[0] for p in phases] == ["loading the model", "preparing sparse", "mining task tokens", "head warm-up",
                                      "scoring rows"]
    assert phases[-1][1] == 1 and phases[-1][2] > 1  # stopped after one batch of several
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {"status": "cancelled", "steps": 0}
    assert not (tmp_path / "run" / "sensitivity").exists()


def test_a_run_reports_its_evaluation_after_the_last_step(tmp_path, data):
    from clm_explore.training import FINISHING_PHASE

    phases: list[str] = []
    result = finetune(data, FinetuneConfig(method="head", epochs=1, device="cpu"), tmp_path / "run",
                      source="tiny-random", on_phase=lambda phase, *_: phases.append(phase))
    assert result.status == "succeeded" and phases[-2:] == ["training", FINISHING_PHASE]  # a card read "34/34" idle


def test_a_cancel_before_training_ends_a_method_without_scoring_too(tmp_path, data):
    phases: list[str] = []
    result = finetune(data, FinetuneConfig(method="full", epochs=1, device="cpu"), tmp_path / "run",
                      source="tiny-random", on_phase=lambda phase, *_: phases.append(phase),
                      should_stop=lambda: phases[-1:] == ["head warm-up"])
    assert result.status == "cancelled" and phases == ["loading the model", "preparing full", "head warm-up"]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedule_shapes_the_learning_rate_after_the_warm_up(tmp_path, data, schedule):
    seen: list = []
    cfg = FinetuneConfig(epochs=2, batch_size=8, device="cpu", lr=1e-2, warmup_ratio=0.25, schedule=schedule,
                         eval_every_epoch=False, mask=MaskConfig(budget=0.01))
    finetune(data, cfg, tmp_path / "run", source="tiny-random", on_step=seen.append)
    lrs = [s.lr for s in seen if s.eval is None]
    peak = lrs.index(max(lrs))
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(1e-2)  # linear warm-up from 0 to the rate
    assert peak == int(0.25 * len(lrs))
    after = lrs[peak:]
    if schedule == "constant":
        assert after == [pytest.approx(1e-2)] * len(after)
    else:
        assert all(a > b for a, b in zip(after, after[1:], strict=False)) and after[-1] < 2e-3
        quarter = after[len(after) // 4]  # a quarter into the decay: cosine near 0.85 of the peak, linear 0.75
        assert (quarter > 8e-3) if schedule == "cosine" else (quarter < 8e-3)


def test_a_bad_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule must be one of linear, cosine, constant"):
        FinetuneConfig(schedule="step")


def test_norm_lr_sets_the_rate_of_the_trained_layernorms(tmp_path, data, sparse_run):
    still = finetune(data, replace(SPARSE, epochs=1, norm_lr=1e-12), tmp_path / "run", source="tiny-random")
    base = base_params()
    lowest = still.metrics["lowest_layer"]
    norms = [n for n in base if "LayerNorm" in n and layer_of(n) >= lowest]
    assert norms
    moved, kept = saved_params(sparse_run[0].out_dir), saved_params(still.out_dir)
    # The method's own rate moves them; 1e-12 leaves them where they were (zero biases move by ~1e-12).
    assert all((moved[n] - base[n]).abs().max() > 1e-4 for n in norms)
    assert all((kept[n] - base[n]).abs().max() < 1e-9 for n in norms)


def test_train_biases_adds_every_linear_bias_at_and_above_the_lowest_layer(tmp_path, data):
    upper = replace(SPARSE, epochs=1, mask=replace(SPARSE.mask, min_layer=1))  # layer 0 must stay untouched
    rows_only = finetune(data, upper, tmp_path / "rows", source="tiny-random")
    result = finetune(data, replace(upper, mask=replace(upper.mask, train_biases=True)), tmp_path / "biases",
                      source="tiny-random")
    base, saved = base_params(), saved_params(result.out_dir)
    assert result.metrics["lowest_layer"] == 1
    model = load_model("tiny-random", LABELS).model
    linear_biases = [f"{name}.bias" for name, mod in model.named_modules()
                     if isinstance(mod, torch.nn.Linear) and not name.startswith("classifier") and layer_of(f"{name}.") >= 1]
    moved = [n for n in linear_biases if (saved[n] - base[n]).abs().max() > 1e-4]
    # A key bias adds the same amount to every score of a query, which softmax ignores: its gradient is 0.
    assert linear_biases and moved == [n for n in linear_biases if ".key." not in n]
    extra = sum(base[n].numel() for n in linear_biases if ".key." not in n)  # the key maps' biases are not trained
    # A selected row's bias entry now trains in its map's bias, not twice: the count grows by the biases less the
    # selected linear rows' own bias deltas (a key row has none).
    masks = load_file(result.out_dir / "masks.safetensors")
    selected_linear_rows = sum(int(m.sum()) for name, m in masks.items()
                               if "embeddings" not in name and ".key." not in name)
    assert selected_linear_rows > 0
    assert result.metrics["trainable_params"] == rows_only.metrics["trainable_params"] + extra - selected_linear_rows
    delta = load_file(result.out_dir / "delta.safetensors")
    assert all(not v.any() for k, v in delta.items() if k.endswith(".delta_b"))  # the bias deltas stayed zero
    from clm_explore.masks import select_mask
    from clm_explore.sensitivity import SensitivityReport

    biased = replace(upper.mask, train_biases=True)
    assert select_mask(SensitivityReport.load(result.out_dir / "sensitivity"), biased).trainable_params == \
        result.metrics["trainable_params"]
    below = [n for n in base if n.endswith(".bias") and layer_of(n) == 0]
    assert below and all(torch.equal(saved[n], base[n]) for n in below)


def test_dropout_option_reaches_the_dropout_layers_while_training(tmp_path, data):
    def first_losses(dropout):
        steps: list = []
        cfg = replace(SPARSE, epochs=1, dropout=dropout)
        finetune(data, cfg, tmp_path / str(dropout), source="tiny-random", on_step=steps.append)
        return [s.loss for s in steps if s.eval is None][:3]

    plain, explicit_zero, half = first_losses(None), first_losses(0.0), first_losses(0.5)
    assert plain == explicit_zero  # the tiny model's own dropout is 0: the same run, bit for bit
    assert half[0] != plain[0]  # the first step already sees dropout noise


def test_label_smoothing_reaches_the_training_loss(tmp_path, data):
    def first_loss(smoothing):
        steps: list = []
        finetune(data, replace(SPARSE, epochs=1, label_smoothing=smoothing), tmp_path / str(smoothing),
                 source="tiny-random", on_step=steps.append)
        return next(s.loss for s in steps if s.eval is None)

    assert first_loss(0.5) != pytest.approx(first_loss(0.0), abs=1e-6)  # the same weights, another loss


def test_a_dropout_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="dropout must be in"):
        FinetuneConfig(dropout=1.0)


def test_weight_decay_leaves_rows_outside_the_mask_identical(tmp_path, data):
    cfg = FinetuneConfig(epochs=1, batch_size=8, device="cpu", weight_decay=0.5, lr=1e-2, seed=1,
                         mask=MaskConfig(budget=0.03, min_layer=0))
    result = finetune(data, cfg, tmp_path / "run", source="tiny-random")
    assert result.status == "succeeded"
    assert_only_masked_rows_changed(result.out_dir, seed=1)


def test_full_trains_every_parameter(tmp_path, data):
    cfg = FinetuneConfig(method="full", epochs=1, batch_size=16, device="cpu")
    result = finetune(data, cfg, tmp_path / "run", source="tiny-random")
    m = result.metrics
    assert m["trainable_params"] == m["total_params"] == count_parameters(load_model("tiny-random", LABELS).model)
    base, saved = base_params(), saved_params(result.out_dir)
    for name in base:
        if "encoder" in name or "pooler" in name or "classifier" in name:
            assert not torch.equal(saved[name], base[name]), f"{name} did not train"
    assert not (result.out_dir / "masks.safetensors").exists()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_baselines_start_from_the_same_warmed_head_as_row_methods(data, tmp_path, method):
    from clm_explore.modeling import load_run
    from clm_explore.sensitivity import calibration_rows, make_batches, warm_up_head

    cfg = FinetuneConfig(method=method, epochs=1, batch_size=8, lr=1e-12, warmup_ratio=0.0)
    warm = finetune(data, cfg, tmp_path / "warm", source="tiny-random")
    cold = finetune(data, FinetuneConfig(**{**cfg.__dict__, "head_warmup": False}), tmp_path / "cold",
                    source="tiny-random")
    assert warm.metrics["prep_seconds"] > 0
    assert "prep_seconds" not in cold.metrics
    # With a vanishing learning rate the saved head is the starting head: the row methods' warm-up.
    loaded = load_model("tiny-random", data.labels, seed=0)
    texts, labels = calibration_rows(data, cfg.sensitivity)
    expected = warm_up_head(loaded, make_batches(loaded, texts, labels, None, 32, 64), cfg.sensitivity,
                            torch.device("cpu"))
    saved = load_run(tmp_path / "warm").model.state_dict()
    for name, value in expected.items():
        assert torch.allclose(saved[name], value, atol=1e-6), name
    assert not torch.allclose(load_run(tmp_path / "cold").model.state_dict()[name], value, atol=1e-3)


def test_sparse_merged_saves_the_merged_tokenizer_and_reproduces_predictions(tmp_path, data):
    """The adaptive-token ablation: merged words are single tokens in the saved tokenizer, and the saved
    folder reproduces the run's predictions with that tokenizer."""
    # The tiny vocabulary holds the slice's common words whole; give each label a word it splits.
    words = dict(zip(data.labels, ["refunding", "topups", "cardholder", "fxrates"], strict=True))
    tagged = {name: frame.assign(text=frame["text"] + " " + frame["label"].map(words))
              for name, frame in (("train", data.train), ("validation", data.validation), ("test", data.test))}
    cfg = FinetuneConfig(method="sparse_merged", epochs=1, batch_size=8, device="cpu", seed=0,
                         mask=MaskConfig(budget=0.03, min_layer=0))
    result = finetune(replace(data, **tagged), cfg, tmp_path / "merged", source="tiny-random")
    merge = json.loads((result.out_dir / "merge.json").read_text())
    merged = [m["text"] for m in merge["merged"]]
    assert set(words.values()) <= set(merged)
    assert merge["mean_length_after"] < merge["mean_length_before"]
    tok = AutoTokenizer.from_pretrained(result.out_dir)
    assert tok.tokenize(merged[0]) == [merged[0]]
    assert len(tok) == len(load_model("tiny-random", LABELS).tokenizer)  # slots renamed, none added
    predictions = pd.read_csv(result.out_dir / "predictions.csv")
    model = AutoModelForSequenceClassification.from_pretrained(result.out_dir).eval()
    with torch.no_grad():
        enc = tok(predictions["text"].tolist(), return_tensors="pt", padding=True, truncation=True, max_length=64)
        preds = model(**enc).logits.argmax(-1)
    assert [model.config.id2label[int(i)] for i in preds] == predictions["pred"].tolist()
    assert count_parameters(model) == result.metrics["base_params"]


@pytest.mark.parametrize(("min_layer", "scored_from"), [(-1, 1), (2, 1)])  # auto: the upper half; 2: pooler only
def test_finetune_scores_only_the_layers_the_mask_may_pick(data, tmp_path, min_layer, scored_from):
    cfg = replace(SPARSE, epochs=1, mask=MaskConfig(budget=0.03, min_layer=min_layer))
    result = finetune(data, cfg, tmp_path / "run", source="tiny-random")
    report = SensitivityReport.load(tmp_path / "run" / "sensitivity")
    assert report.scored_from_layer == scored_from
    assert result.metrics["lowest_layer"] >= min_layer
    for name, info in report.matrices.items():
        assert (info.layer >= scored_from) == bool(report.row_scores[name].any()), name


def test_the_scoring_reads_training_length_and_a_none_seed_follows_the_run(data, tmp_path):
    cfg = replace(SPARSE, epochs=1, max_length=32, seed=3, sensitivity=SensitivityConfig(seed=None))
    finetune(data, cfg, tmp_path / "run", source="tiny-random")
    scored = SensitivityReport.load(tmp_path / "run" / "sensitivity").config
    assert (scored["max_length"], scored["seed"]) == (32, 3)
    fixed = replace(cfg, sensitivity=SensitivityConfig())  # the default keeps seed 0 whatever the run's seed
    finetune(data, fixed, tmp_path / "fixed", source="tiny-random")
    assert SensitivityReport.load(tmp_path / "fixed" / "sensitivity").config["seed"] == 0


def test_an_earlier_run_in_the_folder_is_refused_unless_overwritten(data, tmp_path):
    from clm_explore.runs import RunFolderError

    out = tmp_path / "run"
    finetune(data, replace(SPARSE, epochs=1), out, source="tiny-random")
    assert (out / "masks.safetensors").is_file()
    with pytest.raises(RunFolderError, match="already exists; replace it with --overwrite"):
        finetune(data, replace(SPARSE, method="head", epochs=1), out, source="tiny-random")
    finetune(data, replace(SPARSE, method="head", epochs=1), out, source="tiny-random", overwrite=True)
    assert not (out / "masks.safetensors").exists()  # no stale mask is read as the head run's
    assert json.loads((out / "clm_run.json").read_text())["method"] == "head"



def test_a_folder_holding_other_files_is_never_filled_or_emptied(data, tmp_path):
    from clm_explore.runs import RunFolderError

    notebook = tmp_path / "notebook"
    notebook.mkdir()
    (notebook / "notes.txt").write_text("mine")
    head = replace(SPARSE, method="head", epochs=1)
    for overwrite in (False, True):  # never "use --overwrite", which would then be refused: it cannot help here
        with pytest.raises(RunFolderError, match="not a run folder"):
            finetune(data, head, notebook, source="tiny-random", overwrite=overwrite)
    assert [p.name for p in notebook.iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert finetune(data, head, tmp_path / "empty", source="tiny-random").status == "succeeded"


def test_a_budget_that_buys_no_row_is_refused_before_any_work(data, tmp_path):
    cfg = replace(SPARSE, mask=MaskConfig(budget=10, min_layer=0))
    with pytest.raises(ConfigError, match="a budget of 10 parameters buys no row: the cheapest eligible row costs"):
        finetune(data, cfg, tmp_path / "run", source="tiny-random")
    assert not (tmp_path / "run").exists()  # refused before any folder or work
    # a key row's cost (32: its bias does not train), one below the others': refused at once too, not after the
    # scoring with a failed run left behind (the diff review)
    with pytest.raises(ConfigError, match="a budget of 32 parameters buys no row: the cheapest eligible row costs 33"):
        finetune(data, replace(SPARSE, mask=MaskConfig(budget=32)), tmp_path / "run", source="tiny-random")
    assert not (tmp_path / "run").exists()
    finetune(data, replace(cfg, method="head", epochs=1), tmp_path / "head", source="tiny-random")  # no rows: fine


def test_a_mask_floor_above_the_model_is_refused_before_mining(data, tmp_path):
    cfg = replace(SPARSE, mask=MaskConfig(budget=0.03, min_layer=N_LAYERS + 1))
    with pytest.raises(ConfigError, match="mask min_layer 3 is above the model's layers"):
        finetune(data, cfg, tmp_path / "run", source="tiny-random")
    assert not (tmp_path / "run" / "task_tokens.json").exists()


def test_a_cold_head_row_method_scores_with_the_warmed_head_but_trains_from_the_loaded_one(data, tmp_path):
    from safetensors.torch import load_file

    from clm_explore.modeling import head_parameter_names, load_run

    cfg = FinetuneConfig(epochs=1, batch_size=8, lr=1e-12, warmup_ratio=0.0, device="cpu")
    warm = finetune(data, cfg, tmp_path / "warm", source="tiny-random")
    cold = finetune(data, FinetuneConfig(**{**cfg.__dict__, "head_warmup": False}), tmp_path / "cold",
                    source="tiny-random")
    warm_masks = load_file(warm.out_dir / "masks.safetensors")
    cold_masks = load_file(cold.out_dir / "masks.safetensors")
    assert warm_masks.keys() == cold_masks.keys()
    assert all(torch.equal(warm_masks[k], cold_masks[k]) for k in warm_masks)  # the same scores chose the rows
    loaded = load_model("tiny-random", data.labels, seed=0).model.state_dict()
    cold_head = load_run(cold.out_dir).model.state_dict()
    warm_head = load_run(warm.out_dir).model.state_dict()
    for name in head_parameter_names(load_model("tiny-random", data.labels, seed=0).model):
        assert torch.allclose(cold_head[name], loaded[name], atol=1e-6), name  # a vanishing rate: the start
        assert not torch.allclose(warm_head[name], loaded[name], atol=1e-3), name


def test_tail_averaging_changes_only_masked_rows_and_its_last_step_alone_is_training_result(tmp_path, data):
    plain = finetune(data, replace(SPARSE, epochs=1), tmp_path / "plain", source="tiny-random")
    last = finetune(data, replace(SPARSE, epochs=1, average_last=1e-6), tmp_path / "last", source="tiny-random")
    half = finetune(data, replace(SPARSE, epochs=1, average_last=0.5), tmp_path / "half", source="tiny-random")
    plain_w, last_w, half_w = (saved_params(r.out_dir) for r in (plain, last, half))
    assert all(torch.equal(plain_w[n], last_w[n]) for n in plain_w)  # an average of one step is that step
    assert any(not torch.equal(plain_w[n], half_w[n]) for n in plain_w)
    assert_only_masked_rows_changed(half.out_dir)
    assert half.metrics["trainable_params"] == plain.metrics["trainable_params"]


def test_more_processes_than_batches_are_refused_before_any_folder(data, tmp_path, monkeypatch):
    from clm_explore.cli import main
    from clm_explore.config import ConfigError
    from clm_explore.training import check_processes

    check_processes(12, 8, 2)  # two batches: one each
    with pytest.raises(ConfigError, match="12 training rows make fewer batches of 16 than the 2 processes"):
        check_processes(12, 16, 2)
    check_processes(12, 16, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")  # a launch: every process refuses before mining or the run folder
    assert main(["finetune", "--data", str(data), "--model", "tiny-random", "--batch-size", "100000", "--out",
                 str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    assert main(["finetune", "--data", str(data), "--model", "tiny-random"]) == 2  # no --out: on every process


def test_each_step_counts_the_rows_of_every_process_batch():
    from types import SimpleNamespace

    from clm_explore.training import _TrainLoop

    def steps(rank: int, rows: int, batch_size: int) -> list[tuple]:
        loop = SimpleNamespace(cfg=SimpleNamespace(batch_size=batch_size), generator=torch.Generator().manual_seed(3),
                               world=2, rank=rank)
        return _TrainLoop._my_batches(loop, [5] * rows)

    for rows, batch_size in ((18, 4), (12, 8), (31, 4)):  # last batches of 2, 4 and 3 rows
        first, second = steps(0, rows, batch_size), steps(1, rows, batch_size)
        assert len(first) == len(second) == -(-rows // batch_size) // 2
        # Every step counts both processes' rows: it was rank 0's batch size twice, wrong where one got the short one.
        assert [n for _, n in first] == [n for _, n in second] == [
            len(a) + len(b) for (a, _), (b, _) in zip(first, second, strict=True)]
    assert any(len(a) != len(b) for (a, _), (b, _) in zip(steps(0, 12, 8), steps(1, 12, 8), strict=True))


def test_merged_tokens_are_refused_for_a_tokenizer_without_unused_slots(data):
    from transformers import BertTokenizer

    from clm_explore.config import ConfigError, FinetuneConfig, MiningConfig
    from clm_explore.modeling import TINY_VOCAB, LoadedModel, load_model
    from clm_explore.training import check_runnable

    loaded = load_model("tiny-random", data.labels)
    check_runnable(FinetuneConfig(method="sparse_merged"), loaded)
    words = [t for t in TINY_VOCAB.read_text(encoding="utf-8").split("\n") if t and not t.startswith("[unused")]
    plain = BertTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(words))})  # as byte-level vocabularies
    unslotted = LoadedModel(loaded.model, plain, "tiny-random", False)
    with pytest.raises(ConfigError, match="has none: nothing would be merged. Use --method sparse"):
        check_runnable(FinetuneConfig(method="sparse_merged"), unslotted)
    # The models review: sparse with --merge 8 on such a model trained as plain sparse, said only in merge.json
    merged = FinetuneConfig(method="sparse", mining=MiningConfig(merge_tokens=8))
    with pytest.raises(ConfigError, match=r"merge_tokens 8 \(--merge\) merges .* Leave merging out \(--merge 0\)"):
        check_runnable(merged, unslotted)
    check_runnable(FinetuneConfig(method="full", mining=MiningConfig(merge_tokens=8)), unslotted)  # mines nothing
    check_runnable(merged, loaded)


def test_a_length_above_the_models_positions_is_refused_before_any_work(data):
    from clm_explore.config import ConfigError, FinetuneConfig
    from clm_explore.modeling import load_model
    from clm_explore.training import check_runnable

    loaded = load_model("tiny-random", data.labels)  # 128 positions
    check_runnable(FinetuneConfig(max_length=128), loaded)
    with pytest.raises(ConfigError, match="max_length 256 is above the 128 positions a text may take in BertForSequenceClassification"):
        check_runnable(FinetuneConfig(max_length=256), loaded)


def test_scores_saved_by_a_run_train_the_same_rows_without_scoring_again(data, sparse_run, tmp_path, monkeypatch):
    import clm_explore.training as training

    result, _ = sparse_run
    scores = result.out_dir / "sensitivity"

    def refuse(*args, **kwargs):
        raise AssertionError("the rows were scored again")

    monkeypatch.setattr(training, "compute_sensitivity", refuse)
    again = finetune(data, SPARSE, tmp_path / "again", source="tiny-random", scores=scores)
    first, second = load_file(result.out_dir / "masks.safetensors"), load_file(again.out_dir / "masks.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert again.metrics["accuracy"] == result.metrics["accuracy"]  # the same warmed head and rows: the same run
    assert again.metrics["scores_from"] == str(scores.resolve())
    assert "scores_data_note" not in again.metrics  # made on these training rows
    other = replace(data, train=data.train.iloc[::-1].reset_index(drop=True).iloc[1:])  # one row fewer
    moved = finetune(other, replace(SPARSE, epochs=1), tmp_path / "other", source="tiny-random", scores=scores)
    assert "made on other training rows" in moved.metrics["scores_data_note"]
    saved = json.loads((again.out_dir / "clm_run.json").read_text())["config"]["sensitivity"]
    assert saved == SensitivityReport.load(scores).config  # the run records the settings its scores were made with
    for name in ("task_tokens.json", "sensitivity/row_scores.safetensors"):
        assert (again.out_dir / name).is_file(), name


def test_a_report_made_in_a_notebook_chooses_the_rows_as_select_mask_does(data, tmp_path):
    from clm_explore.masks import select_mask
    from clm_explore.mining import mine_task_tokens
    from clm_explore.sensitivity import compute_sensitivity

    loaded = load_model("tiny-random", data.labels)
    groups = mine_task_tokens(data.train["text"].tolist(), data.train["label"].tolist(), loaded.tokenizer)
    report = compute_sensitivity(loaded, data, groups, SensitivityConfig(score="taylor"), device="cpu")
    cfg = replace(SPARSE, epochs=1, mask=MaskConfig(budget=0.02, min_layer=1))
    result = finetune(data, cfg, tmp_path / "run", source="tiny-random", scores=report)
    expected = select_mask(report, replace(cfg.mask, seed=cfg.seed)).masks
    trained = load_file(result.out_dir / "masks.safetensors")
    assert expected.keys() == trained.keys() and all(torch.equal(expected[k].to(torch.uint8), trained[k])
                                                     for k in expected)
    assert result.metrics["scores_from"] == "given"
    assert json.loads((result.out_dir / "clm_run.json").read_text())["config"]["sensitivity"]["score"] == "taylor"
    random = finetune(data, replace(cfg, method="random"), tmp_path / "random", source="tiny-random", scores=report)
    assert random.metrics["scores_from"] == "given" and random.metrics["selected_params"] > 0
    drawn = load_file(random.out_dir / "masks.safetensors")
    assert any(k not in drawn or not torch.equal(drawn[k], trained[k]) for k in trained)  # drawn, not the top rows


def test_scores_that_cannot_serve_the_run_are_refused_before_any_folder(data, sparse_run, tmp_path):
    from clm_explore.config import MiningConfig

    result, _ = sparse_run
    scores = SensitivityReport.load(result.out_dir / "sensitivity")
    assert (scores.source, scores.labels, scores.mining["top_k"]) == ("tiny-random", LABELS, MiningConfig().top_k)
    refused = {
        "full": (replace(SPARSE, method="full"), scores, "serve the methods that train scored rows"),
        "restriction": (replace(SPARSE, method="fisher"), scores, "made with restriction 'tokens'; 'fisher' trains"),
        "merged": (replace(SPARSE, mining=MiningConfig(merge_tokens=4)), scores, "cannot serve a run that merges"),
        "model": (SPARSE, replace(scores, n_layers=5), "computed on another model"),
        "source": (SPARSE, replace(scores, source="default"), "computed on another model \\('default'"),
        "labels": (SPARSE, replace(scores, labels=["a", "b", "c", "d"]), "computed for 4 other labels"),
        "unnamed": (SPARSE, replace(scores, labels=None), "do not name the labels"),  # saved before they were named
        "merged report": (SPARSE, replace(scores, mining={**scores.mining, "merge_tokens": 4}), "nor come from one"),
        "headless": (SPARSE, replace(scores, head_state={}), "warmed-up head that is missing"),
        "settings": (SPARSE, replace(scores, config={**scores.config, "max_length": 4}), "config.max_length must be"),
        "folder": (SPARSE, tmp_path / "nowhere", "is not a readable scores folder"),
    }
    for name, (cfg, given, message) in refused.items():
        with pytest.raises(ConfigError, match=message):
            finetune(data, cfg, tmp_path / name, source="tiny-random", scores=given)
        assert not (tmp_path / name).exists(), name
    with pytest.raises(TypeError, match="scores is a SensitivityReport"):
        finetune(data, SPARSE, tmp_path / "typed", source="tiny-random", scores=0.01)
    # Scores from layer 1 serve a mask that may start at 0, as a run's own scoring from layer 1 would: it says so.
    upper = finetune(data, replace(SPARSE, epochs=1), tmp_path / "upper", source="tiny-random",
                     scores=replace(scores, config={**scores.config, "min_layer": 1}))
    assert upper.metrics["lowest_layer"] >= 1 and "rows of layers 0-0, which the mask allows, were not candidates" in \
        upper.metrics["scores_note"]
    # An earlier run replaced with overwrite=True survives a refusal: its own scores, a budget they cannot fill.
    kept = finetune(data, replace(SPARSE, epochs=1), tmp_path / "kept", source="tiny-random").out_dir
    for cfg, given, message in ((SPARSE, kept / "sensitivity", "lie inside the run folder"),
                                (replace(SPARSE, mask=MaskConfig(budget=10, min_layer=0)), scores, "buys no row")):
        with pytest.raises(ConfigError, match=message):
            finetune(data, cfg, kept, source="tiny-random", scores=given, overwrite=True)
        assert json.loads((kept / "metrics.json").read_text())["status"] == "succeeded"


def test_scores_alike_names_a_report_the_run_would_make_itself(data, tmp_path):
    from clm_explore.mining import mine_task_tokens
    from clm_explore.sensitivity import compute_sensitivity
    from clm_explore.training import scores_alike

    loaded = load_model("tiny-random", data.labels, seed=0)
    groups = mine_task_tokens(data.train["text"].tolist(), data.train["label"].tolist(), loaded.tokenizer)
    report = compute_sensitivity(loaded, data, groups, SensitivityConfig(), device="cpu")  # every layer, as a page's
    cfg = replace(SPARSE, epochs=1, mask=MaskConfig(budget=0.03))  # the mask's floor: the upper layer
    assert scores_alike(report, cfg) and scores_alike(report, replace(cfg, method="random"))
    from clm_explore.config import MiningConfig

    for other in (replace(cfg, seed=1), replace(cfg, method="fisher"), replace(cfg, method="full"),
                  replace(cfg, max_length=32), replace(cfg, sensitivity=SensitivityConfig(score="taylor")),
                  replace(cfg, mining=MiningConfig(top_k=3)),  # other groups: other positions scored
                  replace(cfg, mining=MiningConfig(merge_tokens=4)),  # a merged tokenizer before scoring
                  replace(cfg, sensitivity=SensitivityConfig(min_layer=1), mask=MaskConfig(budget=0.03, min_layer=0)),
                  replace(cfg, cache_frozen_layers=True, cache_dtype="float32")):  # scores read rounded states
        assert not scores_alike(report, other), other
    upper = compute_sensitivity(loaded, data, groups, SensitivityConfig(min_layer=1), device="cpu")
    assert not scores_alike(upper, replace(cfg, mask=MaskConfig(budget=0.03, min_layer=0)))  # rows it never scored
    ungrouped = compute_sensitivity(loaded, data, None, SensitivityConfig(restriction="none"), device="cpu")
    assert not scores_alike(ungrouped, replace(cfg, method="fisher"))  # fisher's own run reads the groups' rows
    # What it claims: the run given the report trains what it would have trained scoring itself.
    scored = finetune(data, cfg, tmp_path / "scored", source="tiny-random")
    given = finetune(data, cfg, tmp_path / "given", source="tiny-random", scores=report)
    first, second = load_file(scored.out_dir / "masks.safetensors"), load_file(given.out_dir / "masks.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert given.metrics["accuracy"] == scored.metrics["accuracy"]


def test_a_run_whose_folder_is_deleted_while_it_trains_stops_and_says_so(tiny_data, tmp_path):
    """The app review: a run folder deleted mid-training trained every epoch, then failed on a raw FileNotFoundError
    for predictions.csv."""
    import shutil

    import pytest

    from clm_explore.config import FinetuneConfig
    from clm_explore.runs import RunFolderError
    from clm_explore.training import finetune

    steps = []

    def delete_at_first_step(info):
        steps.append(info.step)
        if info.step == 1:
            shutil.rmtree(tmp_path / "run")

    with pytest.raises(RunFolderError, match=r"run.? was deleted while its run trained: the run stops"):
        finetune(tiny_data, FinetuneConfig(method="head", epochs=3), tmp_path / "run", source="tiny-random",
                 on_step=delete_at_first_step, progress=False)
    assert steps == [1]  # stopped at the next step, not after every epoch


def test_a_default_rate_on_another_model_is_noted(tiny_data, tmp_path):
    """The models review: SmolLM2 and all-mpnet-base-v2 diverged at the default rates, chosen on MiniLM, unsaid."""
    from dataclasses import replace

    from clm_explore.config import FinetuneConfig
    from clm_explore.modeling import load_model
    from clm_explore.training import finetune

    loaded = load_model("tiny-random", tiny_data.labels)
    loaded.model.save_pretrained(tmp_path / "model")
    loaded.tokenizer.save_pretrained(tmp_path / "model")
    cfg = FinetuneConfig(method="head", epochs=1)
    result = finetune(tiny_data, cfg, tmp_path / "a", source=str(tmp_path / "model"), progress=False)
    assert "default, chosen on all-MiniLM-L6-v2" in result.metrics["lr_note"] and "--tune-lr" in result.metrics["lr_note"]
    given = finetune(tiny_data, replace(cfg, lr=0.01), tmp_path / "b", source=str(tmp_path / "model"), progress=False)
    tiny = finetune(tiny_data, cfg, tmp_path / "c", source="tiny-random", progress=False)
    assert "lr_note" not in given.metrics and "lr_note" not in tiny.metrics


def test_merged_words_whose_rows_are_not_selected_are_said_to_keep_their_start(tmp_path):
    """The models review: under the default layer floor no merged word's embedding row can be selected, so every
    one stayed the mean of its pieces, and nothing said so."""
    from clm_explore.config import FinetuneConfig, MaskConfig
    from clm_explore.data import load_data
    from clm_explore.training import finetune

    sample = load_data(Path(__file__).parents[1] / "sample_data" / "banking77_20")  # words the tiny vocabulary splits
    result = finetune(sample, FinetuneConfig(method="sparse_merged", epochs=1), tmp_path / "run",
                      source="tiny-random", progress=False)
    merged = json.loads((tmp_path / "run" / "merge.json").read_text())["merged"]
    assert merged and result.metrics["merge_note"] == (
        f"{len(merged)} of the {len(merged)} merged words' embedding rows were not selected, so they keep the mean "
        "of their pieces' rows; the mask's layer floor keeps the word embeddings out (--min-layer 0 lets them compete)")
    everything = finetune(sample, FinetuneConfig(method="sparse_merged", epochs=1,
                                                    mask=MaskConfig(budget=1.0, min_layer=0)),
                          tmp_path / "all", source="tiny-random", progress=False)
    assert "merge_note" not in everything.metrics  # every row selected, the merged ones too
    without = finetune(sample, FinetuneConfig(method="sparse_merged", epochs=1,
                                              mask=MaskConfig(min_layer=0, include_embeddings=False)),
                       tmp_path / "none", source="tiny-random", progress=False)
    assert without.metrics["merge_note"].endswith("the mask leaves the word embeddings out (include_embeddings, "
                                                  "--no-embeddings)")  # not "--min-layer 0" (the diff review)


def test_a_collapse_is_every_test_row_on_one_label_of_several_and_a_one_label_test_is_none():
    """The diff review: a test split of one label, answered right, was told "the training collapsed"."""
    import numpy as np

    from clm_explore.training import _collapse_note

    cfg = FinetuneConfig(method="lora", lr=1.0)
    ones, several = np.ones(12, dtype=int), np.arange(12) % 3  # 10 test rows at least (the few-shot review)
    assert "every test row was predicted as 'b'" in _collapse_note(ones, several, ["a", "b", "c"], cfg)
    assert _collapse_note(ones, ones, ["a", "b", "c"], cfg) == ""
    assert _collapse_note(several, several, ["a", "b", "c"], cfg) == ""


def test_a_run_folder_tells_plain_transformers_the_length_it_trained_at(tiny_data, tmp_path) -> None:
    """The interop review: the run's tokenizer said 512 (and the base's 128), so a plain pipeline read more of a long
    text than the run did and disagreed with its predictions.csv."""
    import json

    from transformers import AutoTokenizer, pipeline

    import clm_explore

    cfg = clm_explore.FinetuneConfig(method="head", epochs=1, max_length=16)
    clm_explore.finetune(tiny_data, cfg, tmp_path / "run", source="tiny-random", progress=False)
    settings = json.loads((tmp_path / "run" / "tokenizer_config.json").read_text())
    assert settings["model_max_length"] == 16 and not {"max_length", "is_local", "local_files_only"} & set(settings)
    assert AutoTokenizer.from_pretrained(tmp_path / "run").model_max_length == 16
    assert json.loads((tmp_path / "run" / "config.json").read_text())["problem_type"] == "single_label_classification"
    long = " ".join(["my card has not arrived and the exchange rate was wrong"] * 4)
    ours = clm_explore.predict(tmp_path / "run", [long])
    [theirs] = pipeline("text-classification", model=str(tmp_path / "run"), top_k=None)([long], truncation=True)
    assert {row["label"]: row["score"] for row in theirs} == pytest.approx(ours.iloc[0].to_dict(), abs=1e-5)


def test_one_label_for_a_handful_of_test_rows_is_no_collapse():
    """The few-shot review: 3 test rows all predicted as one label were called a collapse."""
    from clm_explore.config import FinetuneConfig
    from clm_explore.training import COLLAPSE_MIN_ROWS, _collapse_note

    labels, cfg = ["a", "b", "c"], FinetuneConfig()
    few = np.array([0, 1, 2] * 3)
    assert _collapse_note(np.zeros(len(few), dtype=int), few, labels, cfg) == ""
    many = np.array([0, 1, 2] * COLLAPSE_MIN_ROWS)
    assert "the training collapsed" in _collapse_note(np.zeros(len(many), dtype=int), many, labels, cfg)
