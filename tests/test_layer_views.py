"""Layer by layer: linear CKA between two models' representations, and each attention head's reading of a text
beside the share of its rows the run's mask selected (``clm_explore.layer_views``, ``layers`` and ``heads``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clm_explore.cli import layer_cmds, main
from clm_explore.config import FinetuneConfig, MaskConfig, SensitivityConfig
from clm_explore.layer_views import MIN_CKA_ROWS, LayerViewError, head_attention, layer_similarity, linear_cka
from clm_explore.training import finetune

TEXT = "my card has not arrived yet, where is my card?"


def _cfg(method: str) -> FinetuneConfig:
    return FinetuneConfig(method=method, epochs=1, batch_size=80, device="cpu", lr=5e-2 if method == "full" else 0.0,
                          mask=MaskConfig(budget=0.05, min_layer=0),
                          sensitivity=SensitivityConfig(calibration_rows=80, warmup_epochs=1))


@pytest.fixture(scope="module")
def runs(tiny_data_module, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layer_views")
    return {m: finetune(tiny_data_module, _cfg(m), root / m, source="tiny-random", progress=False).out_dir
            for m in ("sparse", "full", "head", "prefix")}


def test_linear_cka_is_one_for_the_same_representation_up_to_rotation_and_scale() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0)
    assert linear_cka(x, rng.normal(size=(200, 8))) < 0.2  # unrelated features of another width
    assert linear_cka(x, x[:, :8]) == pytest.approx(linear_cka(x[:, :8], x))  # symmetric
    assert np.isnan(linear_cka(x, np.ones((200, 4))))  # a constant representation says nothing
    # Fewer texts than features: the plain estimator reads unrelated features as alike, the debiased one does not.
    wide_a, wide_b = rng.normal(size=(256, 384)), rng.normal(size=(256, 384))
    assert linear_cka(wide_a, wide_b, debiased=False) > 0.5 and abs(linear_cka(wide_a, wide_b)) < 0.05


def test_layer_similarity_sees_what_each_method_changed(runs) -> None:
    probe = layer_similarity(runs["head"])  # a linear probe leaves the backbone as it was
    assert list(probe.table["layer"]) == [-1, 0, 1] and probe.rows == 40  # the embeddings, blocks 0 and 1; test rows
    assert np.allclose(probe.table["cka"], 1.0, atol=1e-6), probe.table
    full = layer_similarity(runs["full"])
    assert full.table["cka"].iloc[-1] < 0.999 and full.lowest()[1] == full.table["cka"].min()
    texts = [f"{TEXT} {i}" for i in range(6)] + ["hello", "exchange rate", "top up", "my card is lost"]
    between = layer_similarity(runs["sparse"], runs["full"], texts=texts)
    assert between.rows == 10 and between.other == str(runs["full"])
    assert "sparse vs full" in repr(between) and json.loads(json.dumps(between.to_record()))["layers"][0]["layer"] == -1
    with pytest.raises(LayerViewError, match=f"at least {MIN_CKA_ROWS} texts"):
        layer_similarity(runs["sparse"], texts=texts[:MIN_CKA_ROWS - 1])
    assert MIN_CKA_ROWS == layer_cmds.MIN_CKA_ROWS  # the CLI's copy (its --help loads no torch)
    prefix = layer_similarity(runs["prefix"])  # positions shifted by the prefix: said, not read as training
    assert prefix.notes and "is a prefix run: its positions are shifted by its 16 virtual tokens" in prefix.notes[0]


def test_head_attention_reads_every_head_and_the_masks_rows_per_head(runs) -> None:
    result = head_attention(runs["sparse"], TEXT)
    layers, heads, n, m = result.attention.shape
    assert (layers, heads) == (2, 4) and n == m == len(result.tokens) and result.tokens[0] == "[CLS]"
    assert np.allclose(result.attention.sum(-1), 1.0, atol=1e-5)  # each query's attention over the keys
    assert result.special_positions == [0, n - 1]
    assert result.task_positions and not set(result.task_positions) & set(result.special_positions)
    queries = [i for i in range(n) if i not in result.special_positions]
    expected = result.attention[1, 2][queries][:, result.task_positions].sum(-1).mean()
    assert result.task_attention[1, 2] == pytest.approx(expected)
    masks = load_file(str(runs["sparse"] / "masks.safetensors"))
    for layer in range(layers):  # the per-head shares add up to the rows the mask selected in q, k and v
        picked = sum(int(masks[f"bert.encoder.layer.{layer}.attention.self.{kind}.weight"].sum())
                     for kind in ("query", "key", "value")
                     if f"bert.encoder.layer.{layer}.attention.self.{kind}.weight" in masks)
        assert result.selected[layer].sum() * 3 * 32 / heads == pytest.approx(picked)
    assert result.selected.sum() > 0
    table = result.table()
    assert len(table) == layers * heads and list(table.columns) == ["layer", "head", "task_attention", "selected"]
    full = head_attention(runs["full"], TEXT)
    assert full.selected is None and not full.task_positions  # no row mask, no mined tokens of its own
    lent = head_attention(runs["full"], TEXT, groups_from=runs["sparse"])  # the sparse run's, on the same data
    assert lent.task_positions == result.task_positions and "task tokens mined by sparse" in lent.notes[0]
    assert not np.isnan(lent.task_attention).any()


def test_a_prefix_runs_attention_leaves_the_prefix_positions_out_and_says_so(runs) -> None:
    result = head_attention(runs["prefix"], TEXT, groups_from=runs["sparse"])
    n = len(result.tokens)
    assert result.attention.shape[2:] == (n, n) and (result.attention.sum(-1) < 0.99).all()
    assert "of the attention goes to the prefix's positions, left out" in result.notes[0]
    assert result.task_positions and result.selected is None
    long = head_attention(runs["sparse"], " ".join([TEXT] * 20))  # cut at the run's length, as explain says
    assert len(long.tokens) == 64 and "text truncated to 64 sub-tokens (the run's trained length" in long.notes[0]
    short = head_attention(runs["sparse"], " ".join([TEXT] * 20), max_length=8)  # the docs review: it said the run's
    assert "text truncated to 8 sub-tokens (the length asked; a larger max length reads more)" in short.notes[0]


def test_a_prefix_runs_length_leaves_room_for_its_prefix(runs, capsys) -> None:
    from clm_explore.config import ConfigError
    from clm_explore.modeling import load_model
    from clm_explore.training import check_runnable

    tiny = load_model("tiny-random", ["a", "b"])  # 128 positions
    with pytest.raises(ConfigError, match="above the 128 positions a text may take in BertForSequenceClassification less the 16"):
        check_runnable(FinetuneConfig(method="prefix", max_length=128), tiny)
    check_runnable(FinetuneConfig(method="sparse", max_length=128), tiny)
    assert main(["predict", "--run", str(runs["prefix"]), "--text", TEXT, "--max-length", "128"]) == 2
    assert "above the 128 positions a text may take in this run's model less the 16 its prefix takes" in capsys.readouterr().err


def _tiny_llama(folder) -> str:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from clm_explore.modeling import load_model

    tok = load_model("tiny-random").tokenizer
    LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               num_labels=4, pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_a_decoder_prefix_runs_heads_leave_no_text_position_out(tiny_data_module, tmp_path) -> None:
    """The diff review: a prefix run's attention sink is among its virtual tokens, left out of the maps; taking the
    text's first token out as well (and dividing by what it did not get) measured the wrong thing."""
    folder = _tiny_llama(tmp_path / "llama")
    run = finetune(tiny_data_module, _cfg("prefix"), tmp_path / "run", source=folder, progress=False).out_dir
    from clm_explore.config import MiningConfig
    from clm_explore.mining import mine_task_tokens
    from clm_explore.modeling import load_tokenizer

    train = tiny_data_module.train  # task tokens for the text, as a sparse run of the same data mines them
    mine_task_tokens(train["text"].tolist(), train["label"].tolist(), load_tokenizer(folder),
                     MiningConfig(min_count=2)).save(run / "task_tokens.json")
    result = head_attention(run, TEXT)
    assert result.left_out == [] and not any("attention sink" in note for note in result.notes)
    assert any("goes to the prefix's positions, left out" in note for note in result.notes)
    # Of the text's part of the attention (the layer review: every head read below an even spread, its rows holding
    # only the text's part of the attention)
    queries = [i for i in range(len(result.tokens)) if i not in result.special_positions]
    rows = result.attention[:, :, queries]
    expected = (rows[..., result.task_positions].sum(-1) / rows.sum(-1)).mean(-1)
    assert result.task_positions and np.allclose(result.task_attention, expected)


def test_a_grouped_query_head_counts_its_shared_key_and_value_rows(tiny_data_module, tmp_path) -> None:
    folder = _tiny_llama(tmp_path / "llama")
    run = finetune(tiny_data_module, _cfg("sparse"), tmp_path / "run", source=folder, progress=False).out_dir
    result = head_attention(run, TEXT)
    assert any("a decoder's token attends only to the tokens before it" in note for note in result.notes)
    # The models review: SmolLM2's heads gave a task word in first place 0.86 of their attention (an attention sink)
    assert result.left_out == [0] and any("attention sink" in note for note in result.notes)
    queries = [i for i in range(len(result.tokens)) if i not in result.special_positions and i != 0]
    counted = [p for p in result.task_positions if p != 0]
    rows = result.attention[:, :, queries]
    expected = (rows[..., counted].sum(-1) / (1 - rows[..., 0])).mean(-1)
    assert counted and np.allclose(result.task_attention, expected)
    # An even causal head: each query spreads over the tokens up to it (the layer review: the share of all tokens,
    # used before, read 43% where an even causal head gives 81% with the task tokens early in the text)
    seen = [[k for k in range(1, q + 1)] for q in queries]
    even = np.mean([sum(k in counted for k in keys) / len(keys) for keys in seen])
    assert result.task_share == pytest.approx(even) and result.task_share != pytest.approx(
        len(counted) / (len(result.tokens) - 1))
    masks = load_file(str(run / "masks.safetensors"))
    assert any(f"self_attn.{kind}_proj" in name for name in masks for kind in "kv")  # shared rows were selected
    for layer in range(2):
        rows = {kind: masks.get(f"model.layers.{layer}.self_attn.{kind}_proj.weight") for kind in "qkv"}
        q = rows["q"].reshape(4, -1).sum(1) if rows["q"] is not None else torch.zeros(4)
        kv = sum(rows[k].reshape(2, -1).sum(1) for k in "kv" if rows[k] is not None) + torch.zeros(2)
        picked = q + kv.repeat_interleave(2)  # query heads 0, 1 share key/value head 0; 2, 3 head 1
        assert np.allclose(result.selected[layer], picked.numpy() / (8 + 8 + 8)), (layer, result.selected[layer])


def test_layers_and_heads_commands(capsys, runs) -> None:
    assert main(["layers", "--run", str(runs["head"])]) == 0
    out = capsys.readouterr().out
    assert "emb 1.0000" in out and "CKA over 40 texts" in out
    assert main(["layers", "--run", str(runs["sparse"]), "--vs", str(runs["full"]), "--max-rows", "10", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["rows"] == 10 and [r["layer"] for r in record["layers"]] == [-1, 0, 1]
    assert main(["heads", "--run", str(runs["sparse"]), "--text", TEXT]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tokens: [CLS] ") and "*card*" in out and "head 3" in out and "%)" in out
    assert main(["heads", "--run", str(runs["full"]), "--text", TEXT, "--groups-from", str(runs["sparse"])]) == 0
    out = capsys.readouterr().out
    assert "*card*" in out and "task tokens mined by sparse" in out and "%)" not in out  # no mask: no brackets
    assert main(["heads", "--run", str(runs["sparse"]), "--text", TEXT, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["heads"]) == 8 and record["task_positions"] and 0 < record["task_share"] < 1
    for argv, said in ((["layers", "--run", str(runs["sparse"]), "--max-rows", "2"], "--max-rows must be at least 10"),
                       (["heads", "--run", str(runs["sparse"]), "--text", "  "], "--text is empty"),
                       (["heads", "--run", str(runs["sparse"]), "--text", "caf\udce9"],  # a Latin-1 shell's é
                        "is not UTF-8 text; set your terminal to UTF-8"),
                       (["layers", "--run", str(runs["sparse"]) + "-missing"], "no such run folder")):
        assert main(argv) == 2
        assert said in capsys.readouterr().err


def test_a_damaged_predictions_file_points_to_the_texts_layers_can_take(runs, tmp_path) -> None:
    import shutil

    from clm_explore.data import DataError

    copy = shutil.copytree(runs["head"], tmp_path / "run")
    (copy / "predictions.csv").write_bytes(b"\x00\xff random bytes, not a CSV \xfe")
    with pytest.raises(DataError, match=r"restore the run's predictions.csv, or pass the texts .*layers --file F") as said:
        layer_similarity(copy)
    assert "report --data" not in str(said.value)  # the case study's way, which layers does not take


def test_texts_whose_states_do_not_vary_say_so_and_few_texts_get_a_note(capsys, runs, tmp_path,
                                                                        tiny_data_module) -> None:
    """The layer review: twelve copies of one text made every CKA NaN and `layers` ended in a traceback (idxmin of
    no figure); ten texts gave figures as rough as 0.16 between unrelated features, without a word."""
    same = tmp_path / "same.txt"
    same.write_text("my card has not arrived\n" * 12)
    assert main(["layers", "--run", str(runs["sparse"]), "--file", str(same)]) == 0
    out = capsys.readouterr()
    assert "no CKA over 12 texts: their states do not vary" in out.out + out.err and "Traceback" not in out.err
    result = layer_similarity(runs["sparse"], max_rows=10)
    assert result.rows == 10 and any("each CKA is rough" in note for note in result.notes)
    texts = tiny_data_module.train["text"].tolist()[:50]
    assert not any("rough" in note for note in layer_similarity(runs["sparse"], texts=texts).notes)


def test_a_decoders_pooled_states_leave_its_first_token_out(tmp_path) -> None:
    """The layer review: a decoder's first token is an attention sink with outsized states; `heads` left it out, the
    CKA's mean pooling did not."""
    from clm_explore.layer_views import pooled_states
    from clm_explore.modeling import load_model

    loaded = load_model(_tiny_llama(tmp_path / "llama"), ["a", "b", "c", "d"])
    texts = ["my card has not arrived", "pin blocked"]
    pooled = pooled_states(loaded, texts, 32)
    for row, text in enumerate(texts):
        ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            states = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer, state in enumerate(states):
            assert np.allclose(pooled[layer][row], state[0, 1:].mean(0).numpy(), atol=1e-5), (text, layer)
