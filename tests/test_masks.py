"""Row selection under a budget on hand-made sensitivity reports (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clm_explore.config import ConfigError, MaskConfig
from clm_explore.masks import budget_to_params, select_mask
from clm_explore.sensitivity import MatrixInfo, SensitivityReport

Q0, F1, EMB = "l0.q.weight", "l1.ffn_in.weight", "emb.weight"


def hand_report() -> SensitivityReport:
    """Three matrices, raw scores used as they are (normalise 'none'); 1000 backbone parameters.

    q (layer 0): 4 rows of 10 params, scores 9 1 5 3
    ffn_in (layer 1): 4 rows of 10 params, scores 8 2 7 4
    embeddings: 6 rows of 5 params, only rows 1, 3, 5 eligible; scores 10 6 10 0.5 10 6.5
    Global order of eligible rows: emb5 (6.5) is below q0 (9) f0 (8) f2 (7): 9, 8, 7, 6.5, 6, 5, 4, 3, 2, 1, 0.5
    """
    scores = {
        Q0: torch.tensor([9.0, 1.0, 5.0, 3.0]),
        F1: torch.tensor([8.0, 2.0, 7.0, 4.0]),
        EMB: torch.tensor([10.0, 6.0, 10.0, 0.5, 10.0, 6.5]),
    }
    matrices = {
        Q0: MatrixInfo(Q0, 0, "q", 4, 10),
        F1: MatrixInfo(F1, 1, "ffn_in", 4, 10),
        EMB: MatrixInfo(EMB, -1, "embeddings", 6, 5, [1, 3, 5]),
    }
    return SensitivityReport(scores, matrices, n_layers=2, backbone_params=1000, config={"normalise": "none"})


def chosen(sel) -> dict[str, list[int]]:
    return {k: torch.nonzero(v).flatten().tolist() for k, v in sel.masks.items()}


def test_topk_picks_the_known_top_rows():
    # budget 35: q0 (10) + f0 (10) + f2 (10) = 30; the next row, emb5, costs 5 -> 35 fits; then emb1 (5) -> 40 > 35.
    sel = select_mask(hand_report(), MaskConfig(budget=35, min_layer=0))
    assert chosen(sel) == {Q0: [0], F1: [0, 2], EMB: [5]}
    assert sel.selected_params == 35 == sel.budget_params
    assert sel.lowest_layer == -1
    assert sel.share == pytest.approx(0.035)
    assert sel.optimizer_bytes == 35 * 16
    assert all(m.dtype == torch.bool and m.shape == (hand_report().matrices[k].rows,) for k, m in sel.masks.items())


def test_budget_fraction_and_stops_before_the_row_that_would_exceed():
    # 0.024 * 1000 = 24: q0 + f0 = 20, the next row f2 (10) would make 30 > 24.
    sel = select_mask(hand_report(), MaskConfig(budget=0.024, min_layer=0))
    assert sel.budget_params == 24
    assert sel.selected_params == 20
    assert chosen(sel) == {Q0: [0], F1: [0]}
    assert sel.lowest_layer == 0


def test_ineligible_embedding_rows_are_never_selected():
    sel = select_mask(hand_report(), MaskConfig(budget=1000, min_layer=0))
    assert chosen(sel)[EMB] == [1, 3, 5]  # rows 0, 2, 4 score 10 but are not mined tokens
    assert sel.selected_params == 8 * 10 + 3 * 5


def test_a_budget_above_every_eligible_row_selects_them_all_and_says_so():
    sel = select_mask(hand_report(), MaskConfig(budget=1000, min_layer=1))
    assert sel.selected_params == sel.eligible_params == 40
    assert sel.budget_note is not None and "1,000" in sel.budget_note and "(layers 1 and up) hold 40" in sel.budget_note
    # A budget that every eligible row fills exactly, and one that leaves a row out, need no note.
    assert select_mask(hand_report(), MaskConfig(budget=40, min_layer=1)).budget_note is None
    assert select_mask(hand_report(), MaskConfig(budget=30, min_layer=1)).budget_note is None
    assert "a lower min_layer lets more rows compete" in sel.budget_note
    # scores that start at layer 1 (a run's own, scored from its mask's floor): a lower min_layer cannot help (the
    # diff review: `select RUN --min-layer 0` was told to lower it)
    upper = hand_report()
    upper.config = {**upper.config, "min_layer": 1}
    said = select_mask(upper, MaskConfig(budget=1000, min_layer=0)).budget_note
    assert "the scores start at layer 1" in said and "lower min_layer" not in said


def test_min_layer_and_include_embeddings():
    sel = select_mask(hand_report(), MaskConfig(budget=30, min_layer=1))
    assert chosen(sel) == {F1: [0, 2, 3]}
    assert sel.lowest_layer == 1
    sel = select_mask(hand_report(), MaskConfig(budget=1000, min_layer=0, include_embeddings=False))
    assert EMB not in sel.masks
    assert sel.selected_params == 80
    assert sel.lowest_layer == 0


def test_min_layer_zero_lets_embeddings_compete_and_auto_keeps_the_upper_half():
    # MaskConfig.min_layer: "-1 = auto (the upper half of the layers: n_layers // 2), 0 = every layer
    # and the word embeddings compete".
    everything = select_mask(hand_report(), MaskConfig(budget=1000, min_layer=0))
    assert set(everything.masks) == {Q0, F1, EMB}
    auto = select_mask(hand_report(), MaskConfig(budget=1000))
    assert set(auto.masks) == {F1}
    assert auto.lowest_layer == 1


def test_selection_table():
    sel = select_mask(hand_report(), MaskConfig(budget=35, min_layer=0))
    table = sel.table.set_index("module")
    assert table.loc["embeddings", "selected_rows"] == 1 and table.loc["embeddings", "rows"] == 3
    assert table.loc["ffn_in", "share_selected"] == pytest.approx(0.5)
    assert table.loc["q", "selected_rows"] == 1
    assert list(sel.table["layer"]) == [-1, 0, 1]


def test_random_is_seed_reproducible_and_differs_across_seeds():
    report = big_report(layers=2)
    a = select_mask(report, MaskConfig(budget=0.01, min_layer=0, strategy="random", seed=0))
    b = select_mask(report, MaskConfig(budget=0.01, min_layer=0, strategy="random", seed=0))
    c = select_mask(report, MaskConfig(budget=0.01, min_layer=0, strategy="random", seed=1))
    assert chosen(a) == chosen(b)
    assert chosen(a) != chosen(c)
    unseeded = select_mask(report, MaskConfig(budget=0.01, min_layer=0, strategy="random"))
    assert chosen(unseeded) == chosen(a)  # outside a run a mask without a seed draws as seed 0
    for sel in (a, c):
        assert sel.selected_params <= sel.budget_params
        assert sel.selected_params > sel.budget_params - 1537  # within one (largest) row of the budget


def test_sampled_rows_lie_between_top_k_and_random():
    report = big_report(layers=2)
    norm = report.normalised()

    def mean_score(sel) -> float:
        return float(torch.cat([norm[name][mask] for name, mask in sel.masks.items()]).mean())

    def pick(**kw):
        return select_mask(report, MaskConfig(budget=0.01, min_layer=0, **kw))

    top, rand = pick(), pick(strategy="random")
    sampled = pick(strategy="sampled", sample_temperature=1.0)
    assert chosen(sampled) == chosen(pick(strategy="sampled", sample_temperature=1.0))  # seeded
    assert chosen(sampled) != chosen(pick(strategy="sampled", sample_temperature=1.0, seed=1))
    assert mean_score(rand) < mean_score(sampled) < mean_score(top)
    assert chosen(pick(strategy="sampled", sample_temperature=1e-6)) == chosen(top)  # the cold limit is top-k
    assert sampled.selected_params <= sampled.budget_params


def test_random_share_tops_the_top_rows_up_with_random_ones():
    report = big_report(layers=2)

    def pick(**kw):
        return select_mask(report, MaskConfig(budget=0.01, min_layer=0, **kw))

    def rows(sel) -> set[tuple[str, int]]:
        return {(name, row) for name, picked in chosen(sel).items() for row in picked}

    top, half = pick(), pick(random_share=0.5)
    kept, added = rows(top) & rows(half), rows(half) - rows(top)
    # The top rows that fit half the budget stay; the other half holds rows the top mask did not pick.
    kept_params = sum(report.matrices[name].row_params for name, _ in kept)
    assert 0.5 * half.budget_params - 1537 < kept_params <= 0.6 * half.budget_params  # + what random re-drew
    assert sum(report.matrices[name].row_params for name, _ in added) > 0.4 * half.budget_params
    assert half.selected_params <= half.budget_params
    assert half.selected_params > half.budget_params - 1537  # within one (largest) row of the budget
    assert chosen(half) != chosen(pick(random_share=0.5, seed=1))  # the random part follows the seed
    assert chosen(pick(random_share=1.0)) == chosen(pick(strategy="random"))
    assert chosen(pick(random_share=0.0)) == chosen(top)


def test_spread_heads_takes_each_attention_maps_rows_round_robin_over_its_heads():
    report = big_report(layers=2)
    for name, info in report.matrices.items():
        if info.module in ("q", "k", "v"):
            info.heads = 12
            report.row_scores[name][:32] += 100  # head 0 holds the map's top rows
    top = select_mask(report, MaskConfig(budget=0.01, min_layer=0))
    spread = select_mask(report, MaskConfig(budget=0.01, min_layer=0, spread_heads=True))
    # Every map keeps its share of the budget; only the attention maps' rows change.
    assert {k: int(v.sum()) for k, v in spread.masks.items()} == {k: int(v.sum()) for k, v in top.masks.items()}
    assert spread.selected_params == top.selected_params and spread.lowest_layer == top.lowest_layer
    attention = [k for k in top.masks if report.matrices[k].module in ("q", "k", "v")]
    assert attention and len(attention) < len(top.masks)
    for name in top.masks:
        if name not in attention:
            assert torch.equal(spread.masks[name], top.masks[name])
            continue
        per_head = spread.masks[name].view(12, 32).sum(1)
        assert int(per_head.max() - per_head.min()) <= 1, per_head
        assert int(top.masks[name].view(12, 32).sum(1)[0]) == min(32, int(top.masks[name].sum()))  # crowded
        scores = report.row_scores[name].view(12, 32)
        for head in range(12):  # each head gives its best rows
            k = int(per_head[head])
            assert set(spread.masks[name].view(12, 32)[head].nonzero().flatten().tolist()) == set(
                scores[head].topk(k).indices.tolist())


def test_spread_heads_leaves_maps_without_heads_and_needs_the_top_rows():
    report = big_report(layers=2)  # every map has heads=1, as in reports saved before the field existed
    assert chosen(select_mask(report, MaskConfig(min_layer=0, spread_heads=True))) == chosen(
        select_mask(report, MaskConfig(min_layer=0)))
    with pytest.raises(ValueError, match="spread_heads"):
        MaskConfig(strategy="random", spread_heads=True)
    with pytest.raises(ValueError, match="spread_heads"):
        MaskConfig(random_share=0.5, spread_heads=True)


def test_budget_above_the_parameter_count_raises():
    with pytest.raises(ValueError, match="budget"):
        select_mask(hand_report(), MaskConfig(budget=1001, min_layer=0))
    assert select_mask(hand_report(), MaskConfig(budget=1000, min_layer=0)).selected_params == 80 + 15  # all eligible rows
    with pytest.raises(ValueError, match=r"a budget of 2,000 parameters is more than the backbone has \(1,000\)"):
        budget_to_params(2000, 1000)
    assert budget_to_params(1.0, 1000) == 1000
    assert budget_to_params(0.0015, 1000) == 2  # rounds to the nearest count


def big_report(layers: int = 6, seed: int = 0) -> SensitivityReport:
    """A report sized like all-MiniLM-L6-v2: per layer q k v o (384 x 385), ffn_in (1536 x 385),
    ffn_out (384 x 1537); word embeddings 30522 x 384 with 5000 eligible rows."""
    gen = torch.Generator().manual_seed(seed)
    scores, matrices = {}, {}
    for layer in range(layers):
        for module, rows, row_params in (("q", 384, 385), ("k", 384, 385), ("v", 384, 385), ("o", 384, 385),
                                         ("ffn_in", 1536, 385), ("ffn_out", 384, 1537)):
            name = f"layer.{layer}.{module}.weight"
            scores[name] = torch.rand(rows, generator=gen) * (layer + 1)
            matrices[name] = MatrixInfo(name, layer, module, rows, row_params)
    eligible = sorted(torch.randperm(30522, generator=gen)[:5000].tolist())
    scores["emb.weight"] = torch.rand(30522, generator=gen)
    matrices["emb.weight"] = MatrixInfo("emb.weight", -1, "embeddings", 30522, 384, eligible)
    backbone = sum(m.rows * m.row_params for m in matrices.values())
    return SensitivityReport(scores, matrices, n_layers=layers, backbone_params=backbone, config={"normalise": "mean"})


@pytest.mark.parametrize("budget", [0.001, 0.01, 0.1])
def test_default_sized_report_is_a_correct_global_top_k(budget):
    report = big_report()
    sel = select_mask(report, MaskConfig(budget=budget, min_layer=0))
    norm = report.normalised()
    picked, rest = [], []
    spent = 0
    for name, info in report.matrices.items():
        eligible = np.asarray(info.eligible_rows if info.eligible_rows is not None else range(info.rows))
        mask = sel.masks.get(name, torch.zeros(info.rows, dtype=torch.bool)).numpy()
        assert not mask[np.setdiff1d(np.arange(info.rows), eligible)].any()
        s = norm[name].numpy()
        picked += [(float(x), info.row_params) for x in s[eligible][mask[eligible]]]
        rest += [(float(x), info.row_params) for x in s[eligible][~mask[eligible]]]
        spent += int(mask.sum()) * info.row_params
    assert spent == sel.selected_params <= sel.budget_params == round(budget * report.backbone_params)
    # Global top-k: every selected row scores at least as high as every unselected one ...
    assert min(x for x, _ in picked) >= max(x for x, _ in rest)
    # ... and the best unselected row would not fit in what is left of the budget.
    best_rest = max(rest)
    assert sel.selected_params + best_rest[1] > sel.budget_params
    assert sel.lowest_layer == min(report.matrices[k].layer for k in sel.masks)
    assert sel.table["selected_rows"].sum() == sum(int(m.sum()) for m in sel.masks.values())


def test_default_sized_report_auto_min_layer():
    report = big_report()
    sel = select_mask(report, MaskConfig(budget=0.05))  # min_layer -1: layers 3, 4, 5 only
    assert sel.masks and min(report.matrices[k].layer for k in sel.masks) >= 3
    assert sel.lowest_layer >= 3
    assert sel.selected_params <= sel.budget_params


def test_rank_normalisation_takes_the_same_share_of_every_matrix_and_its_top_rows():
    report = big_report()
    heavy = "layer.5.k.weight"  # a heavy tail: mean normalisation lets this matrix take most of the budget
    report.row_scores[heavy] = torch.linspace(0, 1, 384) ** 8
    by_mean = select_mask(report, MaskConfig(budget=0.01))
    report.config["normalise"] = "rank"
    by_rank = select_mask(report, MaskConfig(budget=0.01))
    upper = [k for k, info in report.matrices.items() if info.layer >= 3]
    shares = [int(by_rank.masks[k].sum()) / report.matrices[k].rows for k in upper]
    assert max(shares) - min(shares) <= 1 / 384 + 1e-9
    assert int(by_mean.masks[heavy].sum()) > 3 * int(by_rank.masks[heavy].sum())
    for k in upper:  # inside a matrix the scores still decide: the selected rows are its top rows
        mask, s = by_rank.masks[k], report.row_scores[k]
        assert s[mask].min() >= s[~mask].max()


def test_rows_below_the_scored_layers_are_never_selected():
    report = hand_report()
    report.config["min_layer"] = 1  # scored from layer 1: q (layer 0) and the embeddings were not scored
    sel = select_mask(report, MaskConfig(budget=1000, min_layer=0))
    assert chosen(sel) == {F1: [0, 1, 2, 3]}
    assert sel.lowest_layer == 1


def test_a_budget_below_the_first_row_is_refused_with_the_least_that_buys_one():
    # rows are bought in score order: q0 (10 parameters) first, though an embedding row costs 5 (the budget review:
    # "raise the budget to at least 384" where 384 bought nothing)
    for budget in (4, 9):
        with pytest.raises(ConfigError, match=rf"budget of {budget} parameters buys no row: the first row in the "
                           r"selection's order costs 10 parameters; raise the budget to at least 10 \("):
            select_mask(hand_report(), MaskConfig(budget=budget, min_layer=0))
    assert chosen(select_mask(hand_report(), MaskConfig(budget=10, min_layer=0))) == {Q0: [0]}
    with pytest.raises(ConfigError, match=r"counts parameters: for a share of the backbone give a fraction \(4% is "
                       r"0.04\)"):  # select_mask(report, 4) meant 4%: the message steered to a count of 5
        select_mask(hand_report(), 4)
    with pytest.raises(ConfigError, match=r"buys no row.*backbone\)\.$"):  # a fraction too small: no such hint
        select_mask(hand_report(), MaskConfig(budget=1e-6, min_layer=0))


def test_a_floor_above_the_model_is_refused():
    with pytest.raises(ConfigError, match="no rows can be selected from layer 3 up: the model's layers are 0-1"):
        select_mask(hand_report(), MaskConfig(budget=30, min_layer=3))


def twin_layers_report(normalise: str) -> SensitivityReport:
    """The same 8 scores in layer 0 and layer 1 (row costs 10): only the layer can break their ties."""
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    names = ("l0.q.weight", "l1.q.weight")
    matrices = {n: MatrixInfo(n, layer, "q", 8, 10) for layer, n in enumerate(names)}
    return SensitivityReport({n: scores.clone() for n in names}, matrices, n_layers=2, backbone_params=10_000,
                             config={"normalise": normalise})


@pytest.mark.parametrize("normalise", ["mean", "zscore", "rank"])
def test_cost_aware_prefers_the_upper_layer_under_every_normalisation(normalise):
    # Nine rows from two identical matrices: the ninth goes to the upper layer. Under z-scores, half the rows
    # score below zero, where a bonus factor used to push upper rows down instead.
    sel = select_mask(twin_layers_report(normalise), MaskConfig(budget=90, min_layer=0, cost_aware=1.0))
    assert chosen(sel) == {"l0.q.weight": [4, 5, 6, 7], "l1.q.weight": [3, 4, 5, 6, 7]}


def test_rank_gives_tied_rows_their_average_rank_and_zero_scores_rank_zero():
    report = twin_layers_report("rank")
    report.row_scores["l0.q.weight"] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0])  # 7 rows never moved
    ranks = report.normalised()
    assert ranks["l0.q.weight"][:7].tolist() == [0.0] * 7 and ranks["l0.q.weight"][7] == pytest.approx(15 / 16)
    assert ranks["l1.q.weight"].tolist() == pytest.approx([(i + 0.5) / 8 for i in range(8)])
    sel = select_mask(report, MaskConfig(budget=30, min_layer=0))  # three rows: no zero-score row among them
    assert chosen(sel) == {"l0.q.weight": [7], "l1.q.weight": [6, 7]}


def test_a_zscore_of_a_single_eligible_row_is_zero_not_nan():
    report = hand_report()
    report.config["normalise"] = "zscore"
    report.matrices[EMB].eligible_rows = [5]
    normalised = report.normalised()
    assert normalised[EMB][5] == 0.0 and not any(torch.isnan(s).any() for s in normalised.values())


def _corrupt(folder, fault: str) -> None:
    import json

    from safetensors.torch import load_file, save_file

    meta = json.loads((folder / "sensitivity.json").read_text())
    scores = load_file(folder / "row_scores.safetensors")
    if fault == "short":
        scores[Q0] = scores[Q0][:3]
    elif fault == "nan":
        scores[F1][1] = float("nan")
    elif fault == "negative_row":
        meta["matrices"][EMB]["eligible_rows"] = [-1, 3]
    elif fault == "normalise":
        meta["config"]["normalise"] = "bogus"
    elif fault == "unknown_field":
        meta["matrices"][Q0]["colour"] = "red"
    elif fault == "extra_scores":
        scores["x.weight"] = torch.zeros(2)
    elif fault == "pickle":
        (folder / "row_scores.safetensors").write_bytes(b"\x80\x04K\x01.")
        return
    save_file(scores, folder / "row_scores.safetensors")
    (folder / "sensitivity.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(("fault", "phrase"), [
    ("short", r"\(3,\) scores for 4 rows"), ("nan", "finite and non-negative"), ("negative_row", "eligible rows"),
    ("normalise", "unknown normalisation 'bogus'"), ("unknown_field", "not a readable scores folder"),
    ("extra_scores", "name different weights"), ("pickle", "not a readable scores folder")])
def test_a_damaged_scores_folder_is_refused_with_its_name(tmp_path, fault, phrase):
    hand_report().save(tmp_path / "sens")
    assert select_mask(SensitivityReport.load(tmp_path / "sens"), MaskConfig(budget=30, min_layer=0)).masks
    _corrupt(tmp_path / "sens", fault)
    with pytest.raises(ConfigError, match=phrase) as caught:
        SensitivityReport.load(tmp_path / "sens")
    assert str(tmp_path / "sens") in str(caught.value)


def test_masks_of_another_model_are_refused_when_attached():
    from clm_explore.modeling import load_model
    from clm_explore.sparse import attach_deltas

    model = load_model("tiny-random", ["a", "b"]).model
    q = "bert.encoder.layer.1.attention.self.query.weight"
    with pytest.raises(ValueError, match="has \\(384,\\) rows; the model's matrix has 32"):
        attach_deltas(model, {q: torch.zeros(384, dtype=torch.bool)})
    with pytest.raises(ValueError, match="this model does not have"):
        attach_deltas(model, {"model.layers.1.self_attn.q_proj.weight": torch.zeros(32, dtype=torch.bool)})


def test_a_run_folder_reselected_at_its_own_budget_gives_its_own_rows(tmp_path):
    """The budget review: ``select_mask(run, budget=B)`` took the default lowest layer (3), not the run's (0), so it
    showed 52,328 trainable parameters where the run trained 57,705."""
    from safetensors.torch import load_file

    from clm_explore import finetune
    from clm_explore.config import FinetuneConfig
    from tests.conftest import banking77_slice

    cfg = FinetuneConfig(method="sparse", epochs=1, max_length=16, device="cpu",
                         mask=MaskConfig(budget=0.02, min_layer=0, random_share=0.25))
    run = finetune(banking77_slice(), cfg, tmp_path / "run", source="tiny-random", progress=False).out_dir
    trained = {name: mask.bool() for name, mask in load_file(str(run / "masks.safetensors")).items()}
    again = select_mask(run, budget=0.02)
    assert chosen(again) == {name: torch.nonzero(mask).flatten().tolist() for name, mask in trained.items()}
    assert again.min_layer == 0 and again.budget_params == round(0.02 * again.backbone_params)
    assert select_mask(run, MaskConfig(budget=0.02)).min_layer == 1  # options given: those, not the run's
