"""Data-set-level attributions and the two-run comparison, on fabricated tiny run folders."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from test_attribution import tiny_loaded

from clm_explore import casestudy as cs
from clm_explore.attribution import AttributionConfig

GROUPS = ["card", "exchange rate", "top", "##less"]


def make_run(
    root: Path, data, seed: int = 0, method: str = "sparse", groups: object = None, max_length: int | None = None
) -> Path:
    """A run folder as finetune writes it: model + tokenizer, predictions, metrics, task tokens, masks; with
    ``max_length`` also clm_run.json, the predictions read at that length as training read."""
    loaded = tiny_loaded(data.labels, seed=seed)
    out = root / f"{method}-{seed}"
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    if max_length is not None:
        run = {"method": method, "config": {"method": method, "seed": seed, "max_length": max_length}}
        (out / "clm_run.json").write_text(json.dumps(run))
    test = data.test
    enc = loaded.tokenizer(
        list(test["text"]), padding=True, truncation=True, max_length=max_length or 64, return_tensors="pt"
    )
    with torch.no_grad():
        probs = torch.softmax(loaded.model(**enc).logits, -1)
    pred = [data.labels[i] for i in probs.argmax(-1).tolist()]
    frame = pd.DataFrame(
        {"row": range(len(test)), "text": test["text"], "label": test["label"], "pred": pred}
    ).assign(prob=probs.max(-1).values.numpy())
    frame.to_csv(out / "predictions.csv", index=False)
    index = {x: i for i, x in enumerate(data.labels)}
    confusion = np.zeros((len(index), len(index)), dtype=int)
    for gold, p in zip(frame["label"], frame["pred"], strict=True):
        confusion[index[gold], index[p]] += 1
    f1 = {
        x: float(2 * confusion[i, i] / max(1, confusion[i].sum() + confusion[:, i].sum()))
        for x, i in index.items()
    }
    metrics = {
        "accuracy": float((frame["label"] == frame["pred"]).mean()),
        "macro_f1": float(np.mean(list(f1.values()))),
        "per_label_f1": f1,
        "confusion": confusion.tolist(),
        "labels": data.labels,
        "method": method,
        "seed": seed,
        "train_seconds": 1.5,
        "trainable_params": 1234,
        "total_params": 99999,
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    if groups is None:
        groups = {"groups": [{"text": g, "count": 3} for g in GROUPS]}
    (out / "task_tokens.json").write_text(json.dumps(groups))
    masks = {}
    for name, param in loaded.model.named_parameters():
        if (
            name.endswith(".weight")
            and param.dim() == 2
            and ("encoder.layer" in name or "word_embeddings" in name)
        ):
            masks[name] = torch.rand(param.shape[0], generator=torch.Generator().manual_seed(seed)) < 0.2
    save_file(masks, str(out / "masks.safetensors"))
    return out


@pytest.fixture
def runs(tmp_path: Path, tiny_data) -> tuple[Path, Path]:
    return make_run(tmp_path, tiny_data, 0, "sparse"), make_run(tmp_path, tiny_data, 1, "full")


CFG = AttributionConfig(n_steps=8)


def test_attribute_split_cached(runs, monkeypatch: pytest.MonkeyPatch) -> None:
    run_a, _ = runs
    first = cs.attribute_split(run_a, cfg=CFG)
    assert len(first.rows) == 40 and set(first.rows.columns) >= {"row", "text", "label", "pred", "delta"}
    assert list((run_a / "attributions").glob("test-*.json"))
    # predicted target and predictions.csv agree
    assert (first.rows["pred"] == first.rows["target_label"]).all()

    def boom(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(cs, "explain", boom)
    again = cs.attribute_split(run_a, cfg=CFG)
    assert {r: i.scores for r, i in again.items.items()} == {r: i.scores for r, i in first.items.items()}
    # another config is another cache entry
    with pytest.raises(AssertionError, match="recomputed"):
        cs.attribute_split(run_a, cfg=AttributionConfig(n_steps=9))
    monkeypatch.undo()
    other = first.predictions.assign(text="other " + first.predictions["text"])[["row", "text", "label"]]
    cs.attribute_split(run_a, data=other, cfg=CFG, rows=[0, 1])  # given rows: a cache of their own (the review:
    monkeypatch.setattr(cs, "explain", boom)  # each evicted the other's rows at every switch)
    assert cs.attribute_split(run_a, cfg=CFG).items[0].scores == first.items[0].scores
    assert len(list((run_a / "attributions").glob("test-data-*.json"))) == 1


def test_attribute_split_fills_missing_rows(runs) -> None:
    run_a, _ = runs
    part = cs.attribute_split(run_a, cfg=CFG, rows=[3, 1])
    assert list(part.rows["row"]) == [3, 1] and set(part.items) == {1, 3}
    full = cs.attribute_split(run_a, cfg=CFG)
    assert full.items[3].scores == part.items[3].scores


def test_attribute_split_from_dataframe_gold(runs, tiny_data) -> None:
    run_a, _ = runs
    attrs = cs.attribute_split(
        run_a, "validation", tiny_data.validation, AttributionConfig(n_steps=8, target="gold")
    )
    assert len(attrs.rows) == 40
    assert (attrs.rows["target_label"] == attrs.rows["label"]).all()
    assert list((run_a / "attributions").glob("validation-*.json"))


def test_gold_attributions_are_computed_again_for_a_relabelled_row(runs, tiny_data) -> None:
    """The data review: after a label was corrected (the audit's workflow) the cache served the old label's
    attributions, by text alone, and top words went to the wrong label."""
    run_a, _ = runs
    gold = AttributionConfig(n_steps=8, target="gold")
    rows = tiny_data.validation.head(4)
    cs.attribute_split(run_a, "validation", rows, gold)
    labels = sorted(set(tiny_data.labels))
    relabelled = rows.assign(label=[next(x for x in labels if x != old) for old in rows["label"]])
    again = cs.attribute_split(run_a, "validation", relabelled, gold)
    assert (again.rows["target_label"] == relabelled["label"].to_numpy()).all()


def test_gold_rows_with_a_label_the_model_lacks_explain_its_prediction(runs, tiny_data) -> None:
    run_a, _ = runs
    rows = tiny_data.validation.head(4).assign(label=["NO_NODES_DETECTED", *tiny_data.validation["label"][1:4]])
    attrs = cs.attribute_split(run_a, "validation", rows, AttributionConfig(n_steps=8, target="gold"))
    unknown, known = attrs.rows.iloc[0], attrs.rows.iloc[1:]
    assert attrs.items[0].target == attrs.items[0].predicted and unknown["target_label"] == unknown["pred"]
    assert (known["target_label"] == known["label"]).all()


def test_a_run_is_read_at_the_length_it_trained_at(tmp_path: Path, tiny_data, monkeypatch) -> None:
    train = tiny_data.train["text"].tolist()
    tails = [" ".join(train[(7 * i) % len(train) :][:5]) for i in range(len(tiny_data.test))]
    tiny_data.test = tiny_data.test.assign(text=[f"{t} {tail}" for t, tail in zip(tiny_data.test["text"], tails, strict=True)])
    run = make_run(tmp_path, tiny_data, seed=1, max_length=32)  # seed 1: some predictions change past 32 sub-tokens
    attrs = cs.attribute_split(run, cfg=CFG)
    assert {len(item.tokens) for item in attrs.items.values()} == {32}
    assert all("truncated to 32 sub-tokens" in item.note for item in attrs.items.values())
    assert (attrs.rows["pred"] == attrs.rows["target_label"]).all()  # predictions.csv's label is the one explained
    at_64 = cs.attribute_split(run, cfg=AttributionConfig(n_steps=8, max_length=64))
    assert (at_64.rows["pred"] != at_64.rows["target_label"]).any()  # what reading the default length explains

    def boom(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(cs, "explain", boom)  # the run's length resolved first: one cache entry for both spellings
    cs.attribute_split(run, cfg=AttributionConfig(n_steps=8, max_length=32))


def test_top_words_by_hand() -> None:
    from clm_explore.attribution import TokenAttribution

    def item(words, scores, label):
        return TokenAttribution(words, scores, 0, label, 0.5, 0.0)

    items = {0: item(["My", "card"], [0.1, 0.5], "x"), 1: item(["card", "lost"], [0.3, 0.2], "x"),
             2: item(["rate"], [0.9], "y")}  # fmt: skip
    rows = pd.DataFrame({"row": [0, 1, 2], "label": ["x", "x", "y"]})
    attrs = cs.RunAttributions(Path("."), "test", rows, items)
    top = cs.top_words(attrs, k=2, min_count=1)
    x = top[top["label"] == "x"]
    assert list(x["word"]) == ["card", "lost"] and x["mean_score"].iloc[0] == pytest.approx(0.4)
    assert list(x["count"]) == [2, 1]
    assert list(cs.top_words(attrs, k=5, min_count=2)["word"]) == ["card"]


def test_group_overlap_and_loading(runs, tmp_path: Path) -> None:
    run_a, _ = runs
    groups = cs.load_task_tokens(run_a)
    assert groups == GROUPS
    top = pd.DataFrame(
        {"label": ["x"] * 4, "rank": [1, 2, 3, 4], "word": ["card", "rate", "cardless", "why"]}
    )
    overlap = cs.group_overlap(top, groups, k=4)
    assert overlap.loc[0, "in_groups"] == 3 and overlap.loc[0, "share"] == pytest.approx(0.75)
    (tmp_path / "task_tokens.json").write_text(json.dumps(["why"]))
    assert cs.load_task_tokens(tmp_path) == ["why"]
    assert cs.load_task_tokens(tmp_path / "nope") is None


def test_a_mined_fragment_marks_a_word_only_where_it_can_stand() -> None:
    groups = ["##less", "##r ##ing", "Ġcon", "▁re"]
    marked = [w for w in ["cardless", "less", "transferring", "ringer", "contactless", "icon", "return", "are"]
              if cs.is_group_word(w, groups)]
    # ##-pieces continue a word (any substring counted: '##ing' marked 'ingot'); Ġ and ▁ start one (never matched)
    assert marked == ["cardless", "transferring", "contactless", "return"]


def test_a_mined_fragment_marks_only_words_the_tokenizer_splits_into_it() -> None:
    """The report review: '##ed' marked 'received', one token in MiniLM's vocabulary, so the top words' overlap
    with the mined groups was inflated."""
    vocab = {"received": ["received"], "unblocked": ["un", "##block", "##ed"], "transferring": ["transfer", "##ring"],
             "card": ["card"]}

    def split(word: str) -> list[str]:  # an uncased tokenizer: a capitalised word splits as the word
        return vocab[word.lower()]

    groups = ["##ed", "##r ##ing", "card"]
    assert cs.is_group_word("received", groups)  # by the text alone
    assert not cs.is_group_word("received", groups, split)
    assert cs.is_group_word("unblocked", groups, split)
    assert not cs.is_group_word("transferring", groups, split)  # its pieces are not '##r ##ing'
    top = pd.DataFrame({"label": ["x"] * 3, "rank": [1, 2, 3], "word": ["received", "unblocked", "card"]})
    marked = cs.mark_mined(top, groups, split)
    assert marked["mined"].tolist() == [False, True, True]
    assert cs.group_overlap(marked, groups, k=3).loc[0, "words"] == ["unblocked", "card"]
    # A cased byte-level tokenizer (the diff review): the top words are lower-cased, the mined piece 'ĠCon' came from
    # "Contactless"; the word as written splits otherwise, the word capitalised into it.
    cased = {"contactless": ["Ġ", "c", "o", "n", "tact", "less"], "Contactless": ["ĠCon", "tact", "less"],
             "icon": ["Ġicon"], "Icon": ["ĠIcon"]}.__getitem__
    assert cs.is_group_word("contactless", ["ĠCon"], cased) and not cs.is_group_word("icon", ["ĠCon"], cased)


def test_compare_runs(runs) -> None:
    a = cs.attribute_split(runs[0], cfg=CFG)
    b = cs.attribute_split(runs[1], cfg=CFG)
    cmp = cs.compare_runs(a, b)
    same = (a.rows["pred"] == b.rows["pred"]).mean()
    assert cmp.agreement == pytest.approx(same) and cmp.n_rows == 40
    assert len(cmp.disagreements) == round((1 - same) * 40)
    assert not cmp.disagreements.empty  # the two runs differ on some rows: the loop below checks them
    for _, r in cmp.disagreements.iterrows():
        assert r["right"] == (
            "a" if r["pred_a"] == r["label"] else "b" if r["pred_b"] == r["label"] else "neither"
        )
    assert len(cmp.row_difference) == 40 and (cmp.row_difference["mean_abs_diff"] >= 0).all()
    assert -1 <= cmp.rank_correlation <= 1
    self_cmp = cs.compare_runs(a, a)
    assert self_cmp.agreement == 1.0 and self_cmp.rank_correlation == pytest.approx(1.0)
    assert self_cmp.disagreements.empty
    stab = cs.stability(a, b)
    assert stab["rank_correlation"] == pytest.approx(cmp.rank_correlation)
    diff = cs.word_difference(a, b, 0)
    assert list(diff.columns) == ["word", "score_a", "score_b", "diff"] and len(diff) == len(a.items[0].words)


def test_spearman() -> None:
    assert cs.spearman(np.array([1, 2, 3.0]), np.array([10, 20, 35.0])) == pytest.approx(1.0)
    assert cs.spearman(np.array([1, 2, 3.0]), np.array([3, 2, 1.0])) == pytest.approx(-1.0)
    assert math.isnan(cs.spearman(np.array([1.0]), np.array([2.0])))


def test_case_study_disagreements_first(runs) -> None:
    study = cs.case_study(runs[0], runs[1], cfg=CFG, k=5, min_count=1, max_rows=12)
    assert len(study.a.rows) == 12 and study.b is not None and len(study.b.rows) == 12
    dis = list(study.comparison.disagreements["row"])  # over all 40 rows, not only the attributed ones
    assert len(dis) == round((1 - (study.a.predictions["pred"] == study.b.predictions["pred"]).mean()) * 40)
    first = list(study.a.rows["row"][: min(len(dis), 12)])
    assert set(first) <= set(dis) and len(set(first)) == len(first)
    assert set(study.overlap["run"]) == {"a", "b"}
    assert (study.top_a.groupby("label")["rank"].max() <= 5).all()


def test_rows_are_spread_over_the_labels(runs, tiny_data) -> None:
    # The test rows are sorted by label (10 each): the first 8 in file order would all be one label's.
    study = cs.case_study(runs[0], cfg=CFG, min_count=1, max_rows=8)
    assert set(study.a.rows["label"]) == set(tiny_data.labels)
    assert study.coverage() == (8, 40) and study.coverage_text().startswith("8 of 40 rows attributed")
    labels = {0: "b", 1: "b", 2: "a", 3: "c", 4: "a"}
    assert cs.spread_over_labels([0, 1, 2, 3, 4], labels) == [2, 0, 3, 4, 1]  # a, b, c, then a, b


def test_with_data_the_runs_predict_first_so_disagreements_come_first(runs, tiny_data) -> None:
    csv = cs.case_study(runs[0], runs[1], cfg=CFG, min_count=1, max_rows=6)
    data = cs.case_study(runs[0], runs[1], tiny_data.test, cfg=CFG, min_count=1, max_rows=6)
    dis = set(csv.comparison.disagreements["row"])
    assert len(dis) > 0 and data.comparison.n_rows == 40  # agreement over every data row, as predictions.csv
    assert set(data.comparison.disagreements["row"]) == dis
    assert set(data.a.rows["row"][: min(6, len(dis))]) <= dis
    assert list(data.a.rows["row"]) == list(csv.a.rows["row"])


def test_correlations_say_which_rows_they_use(runs) -> None:
    preds = [pd.read_csv(run / "predictions.csv")["pred"] for run in runs]
    agree = list(np.flatnonzero(preds[0] == preds[1]))
    differ = list(np.flatnonzero(preds[0] != preds[1]))
    rows = [int(r) for r in agree[:4] + differ[:4]]
    a, b = (cs.attribute_split(run, cfg=CFG, rows=rows) for run in runs)
    cmp = cs.compare_runs(a, b)
    assert cmp.n_rows == 40 and cmp.n_attributed == len(cmp.row_difference) == len(rows)
    same = cmp.row_difference.set_index("row")["same_pred"]

    def pooled(keep: bool) -> float:
        rows = [r for r in a.items if same[r] == keep]
        return cs.spearman(np.concatenate([a.items[r].scores for r in rows]),
                           np.concatenate([b.items[r].scores for r in rows]))  # fmt: skip

    assert same.any() and (~same).any()
    assert cmp.rank_correlation_agree == pytest.approx(pooled(True))
    assert cmp.rank_correlation_disagree == pytest.approx(pooled(False))


def test_missing_predictions_and_no_rows_are_plain_messages(tmp_path: Path, runs) -> None:
    with pytest.raises(FileNotFoundError, match="--data"):
        cs.split_frame(tmp_path)
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        cs.case_study(runs[0], cfg=CFG, max_rows=0)


def test_the_attribution_cache_key_changes_with_how_words_are_cut(tmp_path, monkeypatch):
    from clm_explore import casestudy
    from clm_explore.config import AttributionConfig

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    before = casestudy._cache_key(tmp_path, AttributionConfig())
    assert casestudy._cache_key(tmp_path, AttributionConfig()) == before
    monkeypatch.setattr(casestudy, "WORDS_VERSION", casestudy.WORDS_VERSION + 1)
    assert casestudy._cache_key(tmp_path, AttributionConfig()) != before


def test_damaged_run_files_are_named(tmp_path: Path, runs) -> None:
    from clm_explore.data import DataError
    from clm_explore.modeling import ModelSourceError

    (tmp_path / "task_tokens.json").write_text(json.dumps({"groups": [{"text": "card"}, {"count": 3}]}))
    with pytest.raises(ModelSourceError, match=r"task_tokens.json: group 1 has no 'text' field \(it has count\)"):
        cs.load_task_tokens(tmp_path)
    for bad in ("[1, 2", json.dumps({"groups": 3})):
        (tmp_path / "task_tokens.json").write_text(bad)
        with pytest.raises(ModelSourceError, match="task_tokens.json"):
            cs.load_task_tokens(tmp_path)
    frame = pd.read_csv(runs[0] / "predictions.csv")
    frame.drop(columns=["label", "text"]).to_csv(tmp_path / "predictions.csv", index=False)
    with pytest.raises(DataError, match=r"predictions.csv has no text or label column"):
        cs.split_frame(tmp_path)
    frame.drop(columns=["row"]).to_csv(tmp_path / "predictions.csv", index=False)  # numbered in file order
    assert cs.split_frame(tmp_path)["row"].tolist() == frame["row"].tolist()
    (tmp_path / "predictions.csv").write_text("")
    with pytest.raises(DataError, match="predictions.csv cannot be read as a CSV file"):
        cs.split_frame(tmp_path)


def test_attributions_go_on_when_the_run_folder_cannot_be_written(runs, monkeypatch) -> None:
    run_a, _ = runs

    def denied(path, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(cs, "write_json_atomic", denied)
    attrs = cs.attribute_split(run_a, cfg=CFG, rows=[0, 1])
    assert set(attrs.items) == {0, 1} and not (run_a / "attributions").exists()  # nothing half made


def test_known_label_accuracy_counts_the_rows_a_run_can_predict(runs, tiny_data) -> None:
    data = pd.concat([tiny_data.test, pd.DataFrame({"text": ["who is she"], "label": ["HUM"]})], ignore_index=True)
    study = cs.case_study(runs[0], runs[1], data, cfg=CFG, min_count=1, max_rows=2)
    assert study.from_data and not cs.case_study(runs[0], cfg=CFG, max_rows=2).from_data
    acc, n = cs.known_label_accuracy(study.a)
    assert n == 40 and acc == pytest.approx(json.loads((runs[0] / "metrics.json").read_text())["accuracy"])
    assert cs.known_label_accuracy(cs.attribute_split(runs[0], "x", tiny_data.test, CFG, rows=[0])) is None


def test_run_name_of_the_working_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "run-7").mkdir()
    monkeypatch.chdir(tmp_path / "run-7")
    assert cs.run_name(Path(".")) == "run-7" and cs.run_name("..") == tmp_path.name
    assert cs.run_name("a/b") == "b"


def test_a_case_study_tells_its_progress_and_draws_a_bar_when_nobody_listens(runs, capsys) -> None:
    from dataclasses import replace

    heard: list[tuple[str, int, int]] = []
    cs.case_study(runs[0], runs[1], cfg=replace(CFG, n_steps=CFG.n_steps + 1), min_count=1, max_rows=5,
                  on_progress=lambda *report: heard.append(report))  # minutes of silence on a real model before
    names = (Path(runs[0]).name, Path(runs[1]).name)
    assert heard[-1] == (f"attributing run B ({names[1]})", 5, 5)
    assert (f"attributing run A ({names[0]})", 5, 5) in heard and "attributing" not in capsys.readouterr().err
    cs.case_study(runs[0], cfg=replace(CFG, n_steps=CFG.n_steps + 2), min_count=1, max_rows=5)
    assert f"attributing run A ({names[0]})" in capsys.readouterr().err


def test_a_damaged_attribution_cache_is_computed_again(runs) -> None:
    run_a, _ = runs
    cfg = AttributionConfig(n_steps=5)
    first = cs.attribute_split(run_a, cfg=cfg, rows=[0, 1, 2])
    [cache] = [p for p in (run_a / "attributions").glob("test-*.json") if json.loads(p.read_text())["config"]
               ["n_steps"] == 5]
    for damage in ([1, 2], {"items": []}, {"items": {"0": {"text_hash": "x"}, "1": 3}}):  # TypeError, AttributeError
        cache.write_text(json.dumps(damage))
        again = cs.attribute_split(run_a, cfg=cfg, rows=[0, 1, 2])
        assert {r: i.scores for r, i in again.items.items()} == {r: i.scores for r, i in first.items.items()}


def test_runs_tested_on_rows_that_do_not_pair_are_refused_not_compared(runs, tiny_data, tmp_path: Path) -> None:
    """The attributions review: B's predictions.csv in another order read as 4.9% agreement for one model twice,
    A's texts beside B's answers to other texts."""
    from clm_explore.data import DataError

    shuffled = tmp_path / "shuffled"
    shutil.copytree(runs[0], shuffled)
    frame = pd.read_csv(shuffled / "predictions.csv")
    frame.iloc[::-1].assign(row=range(len(frame))).to_csv(shuffled / "predictions.csv", index=False)
    with pytest.raises(DataError, match=r"tested on different rows \(row 0 is .* under run A and .* under run B\)"):
        cs.case_study(runs[0], shuffled, cfg=CFG, max_rows=2)
    frame.head(30).to_csv(shuffled / "predictions.csv", index=False)  # fewer rows: same ids where both have them
    with pytest.raises(DataError, match="run A has 40 rows and run B 30, 30 of them the same ids"):
        cs.case_study(runs[0], shuffled, cfg=CFG, max_rows=2)
    study = cs.case_study(runs[0], shuffled, data=tiny_data.test, cfg=CFG, max_rows=2)  # rows given: both on them
    assert study.comparison.n_rows == 40
