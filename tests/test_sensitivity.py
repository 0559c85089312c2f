"""Row sensitivity against brute-force per-example autograd on the tiny random BERT.

The reference re-implements method.md section 2 literally: every scored linear map computes
y = m * (x W^T + b) + (1 - m) * (x stopgrad(W)^T + stopgrad(b)) (and the word embeddings likewise), so
autograd's weight gradient of one example comes only from the allowed positions m = 1. A Fisher row
score is then the mean over examples of the row's summed squared gradient (weight row + bias entry).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from clm_explore.config import MaskConfig, SensitivityConfig
from clm_explore.data import AnnotatedData
from clm_explore.masks import select_mask
from clm_explore.mining import TaskTokens, TokenGroup, mine_task_tokens
from clm_explore.modeling import ModelSourceError, head_parameter_names, load_model, unsupported_reason
from clm_explore.sensitivity import SensitivityReport, compute_sensitivity, scored_linears

LABELS = ["a", "b"]
TEXTS = ["i want refunding now", "refunding", "money please"]
Y = [0, 1, 0]
# Allowed positions under the mined group "refunding" plus the CLS position 0:
# [CLS] i want refund ##ing now [SEP] / [CLS] refund ##ing [SEP] / [CLS] money please [SEP]
ALLOWED = [[0, 3, 4], [0, 1, 2], [0]]
REFUNDING = TaskTokens([TokenGroup("refunding", ["refund", "##ing"], "words", 2, 1.0, 1.0, 1.0, "a", 1.5)],
                       "", 3, {})


def hand_data(texts=TEXTS, y=Y) -> AnnotatedData:
    train = pd.DataFrame({"text": texts, "label": [LABELS[i] for i in y]})
    return AnnotatedData(train, train.iloc[:0], train.iloc[:0], LABELS, source="hand")


def wide_tiny(seed: int = 0):
    """The tiny BERT with weights drawn wider than BERT's 0.02 init, so gradients are not vanishing."""
    loaded = load_model("tiny-random", LABELS, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loaded.model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return loaded


def brute_force(loaded, texts, y, allowed, score: str = "fisher") -> dict[str, torch.Tensor]:
    """Per-example autograd with the stop-gradient formulation; returns weight name -> row scores."""
    model = loaded.model
    model.eval()
    linears = {f"{n}.weight": lin for n, (lin, _, _) in scored_linears(model).items()}
    emb = model.get_input_embeddings()
    emb_name = next(n for n, p in model.named_parameters() if p is emb.weight)
    totals = {name: torch.zeros(lin.out_features) for name, lin in linears.items()}
    totals[emb_name] = torch.zeros(emb.num_embeddings)
    weight_grads = {name: torch.zeros_like(lin.weight) for name, lin in linears.items()}
    bias_grads = {name: torch.zeros_like(lin.bias) for name, lin in linears.items()}
    emb_grad = torch.zeros_like(emb.weight)
    state: dict[str, torch.Tensor] = {}

    def restrict_linear(mod, args, out):
        x = args[0]
        if x.dim() == 2:  # the pooler sees the pooled position only, which always counts
            return out
        return state["m"] * out + (1 - state["m"]) * F.linear(x, mod.weight.detach(), mod.bias.detach())

    def restrict_embedding(mod, args, out):
        return state["m"] * out + (1 - state["m"]) * F.embedding(args[0], mod.weight.detach())

    handles = [lin.register_forward_hook(restrict_linear) for lin in linears.values()]
    handles.append(emb.register_forward_hook(restrict_embedding))
    try:
        for text, label, allow in zip(texts, y, allowed, strict=True):
            enc = loaded.tokenizer([text], return_tensors="pt")
            m = torch.zeros(1, enc.input_ids.shape[1], 1)
            m[0, allow if allow is not None else slice(None)] = 1.0
            state["m"] = m
            logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
            loss = F.cross_entropy(logits, torch.tensor([label]))
            params = [p for lin in linears.values() for p in (lin.weight, lin.bias)] + [emb.weight]
            grads = torch.autograd.grad(loss, params)
            for i, name in enumerate(linears):
                gw, gb = grads[2 * i], grads[2 * i + 1]
                if score == "fisher":
                    totals[name] += gw.pow(2).sum(1) + gb.pow(2)
                elif score == "gradient":  # each example its own batch
                    totals[name] += gw.abs().sum(1) + gb.abs()
                weight_grads[name] += gw
                bias_grads[name] += gb
            if score == "fisher":
                totals[emb_name] += grads[-1].pow(2).sum(1)
            elif score == "gradient":
                totals[emb_name] += grads[-1].abs().sum(1)
            emb_grad += grads[-1]
    finally:
        for h in handles:
            h.remove()
    n = len(texts)
    if score == "taylor":  # first-order Taylor of the calibration loss: |w * dL/dw| summed over a row
        with torch.no_grad():
            for name, lin in linears.items():
                totals[name] = (lin.weight * weight_grads[name] / n).abs().sum(1) + (lin.bias * bias_grads[name] / n).abs()
            totals[emb_name] = (emb.weight * emb_grad / n).abs().sum(1)
        return totals
    if score == "gradient_one_batch":  # every row in one batch: the summed gradient's row L1 norms
        with torch.no_grad():
            for name in linears:
                totals[name] = weight_grads[name].abs().sum(1) + bias_grads[name].abs()
            totals[emb_name] = emb_grad.abs().sum(1)
    return {k: v / n for k, v in totals.items()}


def assert_scores_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name in want:
        scale = float(want[name].abs().max())
        assert scale > 0, name
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-5 * scale, msg=name)


def config(**kw) -> SensitivityConfig:
    return SensitivityConfig(**{"warmup_epochs": 0, "batch_size": 2, "normalise": "none", **kw})


def test_allowed_positions_of_the_hand_case():
    tok = load_model("tiny-random", LABELS).tokenizer
    assert tok.tokenize(TEXTS[0]) == ["i", "want", "refund", "##ing", "now"]
    assert tok.tokenize(TEXTS[2]) == ["money", "please"]


def test_unrestricted_fisher_equals_per_example_autograd():
    # batch_size 2 over rows of 4, 5 and 7 tokens: padding and two batches are exercised.
    report = compute_sensitivity(wide_tiny(), hand_data(), None, config(restriction="none"), device="cpu")
    want = brute_force(wide_tiny(), TEXTS, Y, [None] * 3)
    assert_scores_close(report.row_scores, want)


def test_token_restricted_fisher_equals_stopgrad_formulation():
    report = compute_sensitivity(wide_tiny(), hand_data(), REFUNDING, config(), device="cpu")
    want = brute_force(wide_tiny(), TEXTS, Y, ALLOWED)
    assert_scores_close(report.row_scores, want)
    unrestricted = brute_force(wide_tiny(), TEXTS, Y, [None] * 3)
    q0 = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(want[q0], unrestricted[q0])  # the restriction matters
    # Word-embedding rows of tokens never at an allowed position get no score at all.
    tok = load_model("tiny-random", LABELS).tokenizer
    emb = report.row_scores["bert.embeddings.word_embeddings.weight"]
    assert emb[tok.convert_tokens_to_ids("money")] == 0
    assert emb[tok.convert_tokens_to_ids("refund")] > 0


def test_scoring_builds_no_gradient_of_the_whole_embedding_table(monkeypatch):
    """The core review: the scorer unfroze the word-embedding weight to read its rows' gradients, so every batch
    also built a (vocabulary x width) gradient of the whole table (47 MB on MiniLM) that nothing read."""
    from clm_explore import sensitivity

    seen: list[bool] = []
    accumulate = sensitivity._EmbeddingScorer._accumulate

    def spy(self, grad):
        seen.append(self.embedding.weight.requires_grad)
        return accumulate(self, grad)

    monkeypatch.setattr(sensitivity._EmbeddingScorer, "_accumulate", spy)
    report = compute_sensitivity(wide_tiny(), hand_data(), REFUNDING, config(), device="cpu")
    assert seen and not any(seen)
    assert report.row_scores["bert.embeddings.word_embeddings.weight"].sum() > 0


def test_taylor_equals_autograd_and_does_not_depend_on_batch_size():
    want = brute_force(wide_tiny(), TEXTS, Y, ALLOWED, score="taylor")
    for batch_size in (1, 3):
        report = compute_sensitivity(wide_tiny(), hand_data(), REFUNDING, config(score="taylor", batch_size=batch_size),
                                     device="cpu")
        assert_scores_close(report.row_scores, want)


def test_gradient_magnitude_equals_autograd_for_batches_of_one_and_of_all():
    for batch_size, want_score in ((1, "gradient"), (3, "gradient_one_batch")):
        want = brute_force(wide_tiny(), TEXTS, Y, ALLOWED, score=want_score)
        report = compute_sensitivity(wide_tiny(), hand_data(), REFUNDING,
                                     config(score="gradient", batch_size=batch_size), device="cpu")
        assert_scores_close(report.row_scores, want)
    per_example, one_batch = (brute_force(wide_tiny(), TEXTS, Y, ALLOWED, score=s) for s in ("gradient", "gradient_one_batch"))
    q0 = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(per_example[q0], one_batch[q0])  # the batching matters, as documented


def test_fisher_of_model_labels_equals_autograd_at_the_drawn_labels():
    # One batch of all three rows, two draws: each pass draws every row's label from the model's softmax
    # with the seeded generator, and the score is the mean over both passes' per-example squared gradients.
    loaded = wide_tiny()
    enc = loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = loaded.model.eval()(**enc).logits.softmax(-1)
    rng = torch.Generator().manual_seed(7)
    draws = [torch.multinomial(probs, 1, generator=rng).squeeze(1).tolist() for _ in range(2)]
    assert draws[0] != Y or draws[1] != Y  # the drawn labels are not just the annotated ones
    per_draw = [brute_force(wide_tiny(), TEXTS, y, ALLOWED) for y in draws]
    want = {name: (per_draw[0][name] + per_draw[1][name]) / 2 for name in per_draw[0]}
    cfg = config(fisher_labels="model", label_draws=2, batch_size=3, seed=7)
    report = compute_sensitivity(wide_tiny(), hand_data(), REFUNDING, cfg, device="cpu")
    assert_scores_close(report.row_scores, want)
    assert any("drawn from the model, 2 per row" in note for note in report.notes)


def test_model_labels_need_the_fisher_score():
    with pytest.raises(ValueError, match="needs score 'fisher'"):
        SensitivityConfig(score="taylor", fisher_labels="model")
    with pytest.raises(ValueError, match="fisher_labels must be one of data, model"):
        SensitivityConfig(fisher_labels="annotated")
    with pytest.raises(ValueError, match="label_draws must be >= 1"):
        SensitivityConfig(fisher_labels="model", label_draws=0)


def test_one_finite_non_negative_score_per_row(tiny, tiny_data):
    train = tiny_data.train
    tt = mine_task_tokens(train["text"].tolist(), train["label"].tolist(), tiny.tokenizer)
    report = compute_sensitivity(tiny, tiny_data, tt, SensitivityConfig(warmup_epochs=1), device="cpu")
    params = dict(tiny.model.named_parameters())
    n_layers = tiny.model.config.num_hidden_layers
    assert len(report.row_scores) == 6 * n_layers + 2  # q k v o ffn_in ffn_out per layer, pooler, embeddings
    for name, scores in report.row_scores.items():
        info = report.matrices[name]
        assert scores.shape == (params[name].shape[0],) == (info.rows,)
        assert torch.isfinite(scores).all() and (scores >= 0).all()
        if info.module == "embeddings":
            assert info.row_params == params[name].shape[1]
            assert info.eligible_rows == sorted(tt.token_ids(tiny.tokenizer))
        else:
            # a key map's bias cannot learn (softmax takes it away): its rows cost no bias entry
            assert info.row_params == params[name].shape[1] + (info.module != "k") and info.bias == (info.module != "k")
            assert scores.sum() > 0
    assert report.backbone_params == sum(p.numel() for n, p in params.items() if not n.startswith("classifier"))


def test_deterministic_under_seed(tiny_data):
    cfg = SensitivityConfig(warmup_epochs=1, calibration_rows=64, restriction="none")
    a = compute_sensitivity(load_model("tiny-random", tiny_data.labels), tiny_data, None, cfg, device="cpu")
    b = compute_sensitivity(load_model("tiny-random", tiny_data.labels), tiny_data, None, cfg, device="cpu")
    assert a.row_scores.keys() == b.row_scores.keys()
    assert all(torch.equal(a.row_scores[k], b.row_scores[k]) for k in a.row_scores)
    assert all(torch.equal(a.head_state[k], b.head_state[k]) for k in a.head_state)
    other = SensitivityConfig(warmup_epochs=1, calibration_rows=64, restriction="none", seed=1)
    c = compute_sensitivity(load_model("tiny-random", tiny_data.labels), tiny_data, None, other, device="cpu")
    assert not all(torch.equal(a.row_scores[k], c.row_scores[k]) for k in a.row_scores)  # another subset


def test_scoring_the_same_model_twice_gives_the_same_report(tiny, tiny_data):
    # A notebook scores one loaded model again: the second warm-up must not start from the first's head.
    cfg = SensitivityConfig(warmup_epochs=2, calibration_rows=48, restriction="none")
    first = compute_sensitivity(tiny, tiny_data, None, cfg, device="cpu")
    second = compute_sensitivity(tiny, tiny_data, None, cfg, device="cpu")
    assert all(torch.equal(first.row_scores[k], second.row_scores[k]) for k in first.row_scores)
    assert all(torch.equal(first.head_state[k], second.head_state[k]) for k in first.head_state)


def test_backbone_unchanged_and_requires_grad_restored(tiny, tiny_data):
    model = tiny.model
    model.bert.embeddings.position_embeddings.weight.requires_grad_(False)  # a mixed set of flags
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    report = compute_sensitivity(tiny, tiny_data, None, SensitivityConfig(restriction="none", warmup_epochs=2,
                                                                          calibration_rows=48), device="cpu")
    after = model.state_dict()
    for name, value in before.items():  # the head too: the warmed-up head travels in the report
        assert torch.equal(after[name], value), name
    head = set(head_parameter_names(model))
    assert head == set(report.head_state) and any(not torch.equal(report.head_state[n], before[n]) for n in head)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())  # no hook left behind


def test_save_load_round_trip(tiny, tiny_data, tmp_path):
    tt = mine_task_tokens(tiny_data.train["text"].tolist(), tiny_data.train["label"].tolist(), tiny.tokenizer)
    report = compute_sensitivity(tiny, tiny_data, tt, SensitivityConfig(warmup_epochs=1), device="cpu")
    report.save(tmp_path / "sens")
    back = SensitivityReport.load(tmp_path / "sens")
    assert list(back.row_scores) == list(report.row_scores)  # the model's order, not safetensors' sorted names
    assert all(torch.equal(back.row_scores[k], report.row_scores[k]) for k in report.row_scores)
    for drawn in ({"strategy": "random"}, {"random_share": 0.5, "seed": 3}, {"strategy": "sampled", "seed": 1}):
        # the rows a seed draws follow that order: a run from saved scores drew other rows than one scoring itself
        mask = MaskConfig(budget=0.05, min_layer=0, **drawn)
        here, there = select_mask(report, mask).masks, select_mask(back, mask).masks
        assert here.keys() == there.keys() and all(torch.equal(here[k], there[k]) for k in here), drawn
    assert all(torch.equal(back.head_state[k], report.head_state[k]) for k in report.head_state)
    assert back.matrices == report.matrices
    heads = {info.module: info.heads for info in report.matrices.values()}
    assert heads["q"] == heads["k"] == heads["v"] == tiny.model.config.num_attention_heads > 1
    assert {m: h for m, h in heads.items() if m not in ("q", "k", "v")} == dict.fromkeys(set(heads) - {"q", "k", "v"}, 1)
    assert (back.n_layers, back.backbone_params, back.config) == (report.n_layers, report.backbone_params, report.config)
    pd.testing.assert_frame_equal(back.table, report.table)
    assert (tmp_path / "sens" / "sensitivity.csv").is_file()
    assert (back.head_params, back.small_params) == (report.head_params, report.small_params)  # int layers again
    assert report.head_params == sum(p.numel() for n, p in tiny.model.named_parameters() if n.startswith("classifier"))
    # Saved again into the folder without a head (scores from the loaded head): the old head is not read as its.
    from dataclasses import replace

    replace(report, head_state={}).save(tmp_path / "sens")
    assert SensitivityReport.load(tmp_path / "sens").head_state == {}


def test_table_columns_and_values():
    report = compute_sensitivity(wide_tiny(), hand_data(), REFUNDING, config(), device="cpu")
    table = report.table
    assert {"layer", "module", "score", "norm_score", "rows", "params"} <= set(table.columns)
    assert len(table) == len(report.row_scores)
    emb = table[table["module"] == "embeddings"].iloc[0]
    assert emb["layer"] == -1
    assert emb["rows"] == 2  # only "refund" and "##ing" are eligible embedding rows
    assert emb["params"] == 2 * 32
    emb_scores = report.row_scores["bert.embeddings.word_embeddings.weight"]
    eligible = report.matrices["bert.embeddings.word_embeddings.weight"].eligible_rows
    assert emb["score"] == pytest.approx(float(emb_scores[eligible].sum()))  # [CLS] is scored but not eligible
    q0 = table[(table["layer"] == 0) & (table["module"] == "q")].iloc[0]
    assert (q0["rows"], q0["params"]) == (32, 32 * 33)
    assert q0["score"] == pytest.approx(float(report.row_scores["bert.encoder.layer.0.attention.self.query.weight"].sum()))
    assert table["norm_score"].max() == pytest.approx(1.0)
    assert (table["norm_score"] >= 0).all()
    assert list(table["layer"]) == sorted(table["layer"])


@pytest.mark.parametrize("score", ["fisher", "taylor", "gradient"])
def test_scoring_from_a_layer_keeps_its_scores_and_stops_backward_there(score):
    reached = []

    def watched():
        loaded = wide_tiny()
        loaded.model.bert.encoder.layer[0].register_full_backward_hook(lambda *a: reached.append(1))
        return loaded

    full = compute_sensitivity(watched(), hand_data(), REFUNDING, config(score=score), device="cpu")
    assert reached  # a full scoring pass runs backward through layer 0 ...
    reached.clear()
    loaded = watched()
    upper = compute_sensitivity(loaded, hand_data(), REFUNDING, config(score=score, min_layer=1), device="cpu")
    assert reached == []  # ... scoring from layer 1 does not
    assert upper.scored_from_layer == 1 and any("scored layers: 1" in n for n in upper.notes)
    for name, info in full.matrices.items():
        if info.layer >= 1:
            torch.testing.assert_close(upper.row_scores[name], full.row_scores[name], rtol=1e-5, atol=0, msg=name)
            assert full.row_scores[name].abs().max() > 0
        else:  # layer 0 and the word embeddings (-1) are not scored
            assert not upper.row_scores[name].any(), name
    assert all(not m._forward_pre_hooks for m in loaded.model.modules())  # the start hook is removed


def test_a_block_that_does_not_exist_is_a_clear_error():  # refused before the head warm-up's work
    with pytest.raises(ValueError, match="min_layer 7 is above the model's top layer"):
        compute_sensitivity(wide_tiny(), hand_data(), REFUNDING, config(min_layer=7), device="cpu")


def test_auto_head_warmup_is_one_epoch_below_twenty_rows_per_label(tiny_data):
    auto = SensitivityConfig()
    assert auto.warmup_epochs == -1
    assert auto.warmup_epochs_for(rows=60, labels=6) == 1  # 10-shot
    assert auto.warmup_epochs_for(rows=120, labels=6) == 5
    assert auto.warmup_epochs_for(rows=4096, labels=77) == 5
    assert SensitivityConfig(warmup_epochs=3).warmup_epochs_for(rows=60, labels=6) == 3  # explicit wins
    cfg = SensitivityConfig(calibration_rows=48, restriction="none")
    # The training split's rows per label decide (40 here), not the calibration sample's (12): a smaller sample
    # turned a full data set's warm-up into the few-shot one (the real-model review).
    resolved = cfg.warmup_epochs_for(len(tiny_data.train), len(tiny_data.labels))
    assert resolved == 5

    def head_after(c: SensitivityConfig) -> SensitivityReport:
        return compute_sensitivity(load_model("tiny-random", tiny_data.labels), tiny_data, None, c, device="cpu")

    auto_report = head_after(cfg)
    same, other = head_after(replace(cfg, warmup_epochs=resolved)), head_after(replace(cfg, warmup_epochs=6 - resolved))
    assert all(torch.equal(auto_report.head_state[k], same.head_state[k]) for k in same.head_state)
    assert not all(torch.equal(auto_report.head_state[k], other.head_state[k]) for k in other.head_state)
    assert f"head warm-up: {resolved} epochs" in auto_report.notes


def test_centroid_head_is_a_nearest_centroid_classifier():
    from clm_explore.sensitivity import centroid_head

    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    labels = torch.arange(3).repeat_interleave(20)
    feats = centres[labels] + 0.3 * torch.randn(60, 3, generator=gen)
    head = torch.nn.Linear(3, 4)  # label 3 has no rows
    centroid_head(head, feats, labels, scale=0.5)
    logits = head(feats)
    assert torch.equal(logits[:, :3].argmax(1), labels)
    assert torch.equal(head.weight[3], torch.zeros(3)) and head.bias[3] == 0
    mean = feats.mean(0)
    assert torch.allclose(head(mean.unsqueeze(0)), torch.zeros(1, 4), atol=1e-5)  # centred on the rows' mean
    weight = head.weight.detach()[:3]
    spread = ((feats - mean) @ (weight / weight.norm(dim=1, keepdim=True)).T).std()
    assert weight.norm(dim=1).allclose(torch.full((3,), 0.5 / float(spread)), rtol=1e-4)


def test_centroid_head_starts_scoring_the_same_for_every_seed(tiny_data):
    cfg = SensitivityConfig(warmup_epochs=0, head_init="centroid", calibration_rows=64, restriction="none")
    heads = []
    for seed in (0, 1):
        torch.manual_seed(seed)  # the loaded head's draw
        loaded = load_model("tiny-random", tiny_data.labels)
        report = compute_sensitivity(loaded, tiny_data, None, cfg, device="cpu")
        assert report.head_state and "from a centroid head" in report.notes[-1]
        heads.append(report.head_state)
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    torch.manual_seed(1)
    loaded = load_model("tiny-random", tiny_data.labels)
    plain = compute_sensitivity(loaded, tiny_data, None, replace(cfg, head_init="loaded"), device="cpu")
    assert plain.head_state == {}  # no warm-up and no centroid: the head stays as loaded


def test_a_model_without_scorable_linear_maps_is_refused_before_any_work(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer = load_model("tiny-random", ["a", "b"]).tokenizer
    gpt2 = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, num_labels=2)
    GPT2ForSequenceClassification(gpt2).save_pretrained(tmp_path)  # its maps are Conv1D, not nn.Linear
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), ["a", "b"])
    with pytest.raises(ModelSourceError, match="gpt2 has no linear maps clm-explore knows how to score"):
        compute_sensitivity(loaded, hand_data(), REFUNDING, config(), device="cpu")
    assert "gpt2 has no linear maps" in unsupported_reason(str(tmp_path))  # the app's sidebar check, no weights
    from clm_explore.config import FinetuneConfig
    from clm_explore.training import check_runnable

    for method in ("sparse", "layers"):  # refused before mining: whole layers are ranked by their rows' scores
        with pytest.raises(ModelSourceError, match="methods full, head, bitfit, lora and prefix run without them"):
            check_runnable(FinetuneConfig(method=method), loaded)
    check_runnable(FinetuneConfig(method="head"), loaded)


def test_a_decoder_is_scored_and_warmed_at_the_position_its_classifier_reads():
    # A decoder whose pad token is the EOS its tokenizer appends: transformers pools at the token before that EOS,
    # and the restriction's kept position and the head warm-up's features must be that token too.
    import numpy as np
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from clm_explore.modeling import LoadedModel
    from clm_explore.sensitivity import _head_inputs, make_batches

    tok = load_model("tiny-random", ["a", "b"]).tokenizer
    tok.pad_token = tok.sep_token
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_labels=2, pad_token_id=tok.pad_token_id, max_position_embeddings=64)).eval()
    loaded = LoadedModel(model, tok, "tiny-llama", True)
    batch = make_batches(loaded, TEXTS, np.array(Y), None, 3, 64)[0]
    ends = batch.attention_mask.sum(1) - 1  # the appended EOS
    hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    read = [r for r in range(3) for p in [ends[r] - 1] if torch.allclose(model.score(hidden[r, p]), logits[r])]
    assert read == [0, 1, 2]  # the classifier reads the token before the EOS
    restricted = make_batches(loaded, TEXTS, np.array(Y), REFUNDING, 3, 64)[0]
    assert all(restricted.positions[r, ends[r] - 1] == 1 for r in range(3))
    features, _ = _head_inputs(loaded, model.score, [batch], torch.device("cpu"))
    assert torch.allclose(model.score(features), logits, atol=1e-6)


def test_scores_that_are_all_zero_say_the_pick_is_arbitrary(tiny_data, tmp_path):
    from clm_explore.config import FinetuneConfig, MaskConfig
    from clm_explore.training import finetune

    loaded = load_model("tiny-random", tiny_data.labels)
    with torch.no_grad():  # a head that passes no gradient back, as one whose ReLU units all died would
        loaded.model.classifier.weight.zero_()
    loaded.model.save_pretrained(tmp_path / "model")
    loaded.tokenizer.save_pretrained(tmp_path / "model")
    sens = SensitivityConfig(calibration_rows=40, warmup_epochs=0, restriction="none")
    report = compute_sensitivity(load_model(str(tmp_path / "model"), tiny_data.labels), tiny_data, None, sens)
    assert report.notes[-1].startswith("every row scored 0") and report.zero_note == report.notes[-1]
    cfg = FinetuneConfig(method="fisher", epochs=1, mask=MaskConfig(budget=0.05), sensitivity=sens)
    result = finetune(tiny_data, cfg, tmp_path / "run", source=str(tmp_path / "model"))
    assert result.metrics["score_note"] == report.zero_note and "weights of 0" in report.zero_note  # no warm-up ran
    layers = finetune(tiny_data, replace(cfg, method="layers", mask=MaskConfig(budget=0.5)), tmp_path / "layers",
                      source=str(tmp_path / "model"))
    assert layers.metrics["score_note"] == report.zero_note  # whole layers ranked by those scores

    scored = compute_sensitivity(load_model("tiny-random", tiny_data.labels), tiny_data, None, sens)
    assert scored.zero_note is None and not any("scored 0" in n for n in scored.notes)


def test_the_head_warm_up_leaves_a_split_head_in_the_models_mode(tiny_data, tmp_path):
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    from clm_explore.sensitivity import make_batches, warm_up_head

    tokenizer = load_model("tiny-random", tiny_data.labels).tokenizer
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), tiny_data.labels)
    loaded.model.eval()
    texts, labels = tiny_data.train["text"].tolist()[:40], np.arange(40) % len(tiny_data.labels)
    state = warm_up_head(loaded, make_batches(loaded, texts, labels, None, 16, 32), SensitivityConfig(warmup_epochs=1),
                         torch.device("cpu"))
    assert set(state) == {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"}
    assert [n for n, m in loaded.model.named_modules() if m.training] == []  # the head's dropout stays off


def test_a_model_folder_written_two_ways_is_one_source(tmp_path, monkeypatch):
    from clm_explore.sensitivity import same_source

    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert same_source(str(tmp_path / "model"), "model") and same_source("./model/", str(tmp_path / "model"))
    assert not same_source("model", "default") and not same_source("tiny-random", "default")


def test_a_token_restriction_without_a_mined_group_is_said_and_recorded_by_the_run(tiny_data, tmp_path):
    """The app review: mining options that let no group through left sparse reading the pooled position alone (and
    no word-embedding row eligible) with only the Tokens page saying anything."""
    from clm_explore.config import FinetuneConfig, MiningConfig
    from clm_explore.training import finetune

    loaded = load_model("tiny-random", tiny_data.labels)
    texts, labels = tiny_data.train["text"].tolist(), tiny_data.train["label"].tolist()
    none = mine_task_tokens(texts, labels, loaded.tokenizer, MiningConfig(min_count=10**6))
    assert not none.groups
    sens = SensitivityConfig(calibration_rows=40)
    report = compute_sensitivity(loaded, tiny_data, none, sens)
    assert report.no_tokens_note.startswith("no task token was mined") and report.notes[-1] == report.no_tokens_note
    report.save(tmp_path / "scores")
    assert SensitivityReport.load(tmp_path / "scores").no_tokens_note == report.no_tokens_note  # said from saved scores
    mined = mine_task_tokens(texts, labels, loaded.tokenizer)
    assert compute_sensitivity(loaded, tiny_data, mined, sens).no_tokens_note is None
    assert compute_sensitivity(loaded, tiny_data, None, replace(sens, restriction="none")).no_tokens_note is None
    cfg = FinetuneConfig(method="sparse", epochs=1, mining=MiningConfig(min_count=10**6), sensitivity=sens)
    result = finetune(tiny_data, cfg, tmp_path / "run", source="tiny-random", progress=False)
    assert result.metrics["no_tokens_note"] == report.no_tokens_note


def test_linear_maps_of_kinds_not_scored_are_named_in_the_notes(tiny_data):
    """The models review: DeBERTa-v2 with unshared attention keys has pos_key_proj and pos_query_proj maps that no
    row method could pick, and nothing said so."""
    from transformers import AutoModelForSequenceClassification, DebertaV2Config

    from clm_explore.modeling import LoadedModel
    from clm_explore.sensitivity import unscored_linears

    tok = load_model("tiny-random").tokenizer
    config = DebertaV2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=37, pad_token_id=tok.pad_token_id, relative_attention=True,
                             pos_att_type=["p2c", "c2p"], share_att_key=False,
                             id2label=dict(enumerate(tiny_data.labels)))
    model = AutoModelForSequenceClassification.from_config(config)
    assert sorted({n.rsplit(".", 1)[-1] for n in unscored_linears(model)}) == ["pos_key_proj", "pos_query_proj"]
    report = compute_sensitivity(LoadedModel(model, tok, "deberta", False), tiny_data, None,
                                 SensitivityConfig(calibration_rows=20, restriction="none"), progress=False)
    assert any(n.startswith("4 linear maps of kinds clm-explore does not score (pos_key_proj, pos_query_proj)")
               for n in report.notes), report.notes
    assert unscored_linears(load_model("tiny-random", tiny_data.labels).model) == []


def test_scores_do_not_depend_on_what_the_caller_drew_before_loading(tiny_data, tmp_path):
    """The diff review: once load_model put the caller's random state back, the warm-up's dropout (a two-layer head's)
    drew from whatever the caller had drawn, and the scores of one model and config differed between calls."""
    from test_baselines import save_two_layer_head_model

    folder = save_two_layer_head_model(tmp_path / "roberta", "roberta")
    cfg = SensitivityConfig(restriction="none", calibration_rows=32)

    def scores(drawn_before: int, keep: bool) -> torch.Tensor:
        torch.manual_seed(drawn_before)
        loaded = load_model(folder, tiny_data.labels, seed=0, keep_global_rng=keep)
        report = compute_sensitivity(loaded, tiny_data, None, cfg, progress=False)
        return torch.cat([s.flatten() for s in report.row_scores.values()])

    kept = scores(1, True)
    assert torch.equal(kept, scores(2, True))
    assert torch.equal(kept, scores(3, False))  # as when loading left its state behind for the warm-up
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    compute_sensitivity(load_model(folder, tiny_data.labels), tiny_data, None, cfg, progress=False)
    assert torch.equal(torch.rand(2), expected)  # the caller's state left as it was


def test_a_restriction_that_reads_few_mined_groups_within_the_length_read_is_said():
    """The long-text review: groups mined from 512 sub-tokens sat past the 64 that scoring reads; the token-restricted
    scores read 124 mined positions of 2,249, with no word."""
    texts = ["money please money please money please i want refunding now"] * 6 + ["refunding now please"] * 2
    data = hand_data(texts, [0, 1] * 4)
    loaded = load_model("tiny-random", LABELS, seed=0)
    tokens = TaskTokens(REFUNDING.groups, "", 8, {"max_tokens": 512})
    short = compute_sensitivity(loaded, data, tokens, SensitivityConfig(max_length=8, calibration_rows=8))
    said = [n for n in short.notes if n.startswith("only ")]
    assert said == ["only 2 of 8 calibration rows hold a mined group within the 8 sub-tokens read (the groups were "
                    "mined reading 512): the token restriction reads little but the pooled position; read more "
                    "sub-tokens per text, or score without the restriction"], said
    assert "reading 8 sub-tokens per text" in short.notes
    long = compute_sensitivity(loaded, data, tokens, SensitivityConfig(max_length=32, calibration_rows=8))
    assert not [n for n in long.notes if n.startswith("only ")]


def test_short_texts_without_a_mined_group_are_not_blamed_on_the_cut():
    """The re-read: the note named the mining's length where the texts were read whole and simply held no group."""
    texts = ["money please"] * 6 + ["refunding now please"] * 2
    data = hand_data(texts, [0, 1] * 4)
    loaded = load_model("tiny-random", LABELS, seed=0)
    tokens = TaskTokens(REFUNDING.groups, "", 8, {"max_tokens": 512})
    report = compute_sensitivity(loaded, data, tokens, SensitivityConfig(max_length=8, calibration_rows=8))
    assert not [n for n in report.notes if n.startswith("only ")]
