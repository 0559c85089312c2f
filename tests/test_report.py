"""The HTML report on a tiny pair of fabricated runs: sections present, self-contained, user text escaped."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_casestudy import make_run

from clm_explore.attribution import AttributionConfig, TokenAttribution
from clm_explore.casestudy import Comparison
from clm_explore.report import (
    _confusion_figure,
    _f1_figure,
    agreement_text,
    build_report,
    colored_words,
    mask_table,
)

EVIL = "<script>alert('x')</script> my card"
CFG = AttributionConfig(n_steps=4)


@pytest.fixture
def evil_data(tiny_data):
    tiny_data.test = tiny_data.test.assign(text=EVIL + " " + tiny_data.test["text"])
    return tiny_data


def test_report_pair(tmp_path: Path, evil_data) -> None:
    run_a = make_run(tmp_path, evil_data, 0, "sparse")
    run_b = make_run(tmp_path, evil_data, 1, "full")
    (run_a / "clm_run.json").write_text(json.dumps({"method": "sparse", "source": "tiny-random", "config": {}}))
    out = build_report(
        run_a, run_b, out_path=tmp_path / "r" / "report.html", cfg=CFG, max_rows=20, min_count=1
    )
    page = out.read_text()
    # A's weights against the model it names; B names none (no clm_run.json): a note says why it has no map.
    assert "What training changed" in page and "A: sparse-0: " in page and "backbone parameters changed" in page
    assert "B: full-1: no weight-change map" in page and "not a run folder" in page
    # Layer by layer on the 40 test rows: A against the base it names, B names none, A against B.
    assert "A: sparse-0 vs its base model: CKA over 40 texts: " in page
    assert "B: full-1 vs its base model: no CKA" in page and "A: sparse-0 vs B: full-1: CKA over 40" in page
    assert page.startswith("<!DOCTYPE html>")
    for section in ("Metrics", "Confusion matrices", "Per-label F1", "Top attributed words", "Selected rows"):
        assert section in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert '>&lt;<span class="sr">' in page  # the word spans too
    assert not re.search(r"<script[^>]*\bsrc=", page)  # no CDN: plotly.js is inline
    assert page.count("Plotly.newPlot") >= 6  # two confusions, F1, two mask heatmaps, A's weight changes, CKA
    assert page.count("plotly.js v") == 1  # the bundle's banner: inlined once
    assert "rgba(42,157,143" in page or "rgba(231,111,81" in page
    assert "card_arrival" in page and 'class="group"' in page
    # The report review: a phone laid the page out at 981 px; charts had no text; a sparse run's 10% and full's 100%
    # both drew the brightest colour of their own scale; colours had no key.
    assert "<html lang='en'>" in page and "name='viewport' content='width=device-width" in page
    assert page.count("<details><summary>") >= 5 and "<summary>Confusion A: sparse-0: the numbers</summary>" in page
    assert 'role="figure" aria-label="Per-label F1"' in page
    assert "The maps share one colour scale, 0 to " in page and "teal</span> pushed the model towards it" in page
    assert '<div class="row-text" dir="auto">' in page


def test_report_single_run_with_data(tmp_path: Path, evil_data) -> None:
    run_a = make_run(tmp_path, evil_data, 0, "sparse")
    (run_a / "masks.safetensors").unlink()
    out = build_report(run_a, data=evil_data.test, out_path=tmp_path / "one.html", cfg=CFG, max_rows=10)
    page = out.read_text()
    assert "no masks.safetensors" in page and "Rows (errors first)" in page
    assert "<script>alert" not in page


def test_mask_table(tmp_path: Path, tiny_data) -> None:
    run_a = make_run(tmp_path, tiny_data, 0, "sparse")
    table = mask_table(run_a)
    assert set(table["layer"]) == {"emb", "0", "1"}
    # The kinds the weight-change map beside it names (the report review: attention.self.key beside k)
    assert list(dict.fromkeys(table["module"])) == ["embeddings", "q", "k", "v", "o", "ffn_in", "ffn_out"]
    assert (table["share"] == table["selected_rows"] / table["rows"]).all()
    assert table["share"].between(0, 1).all() and (table["rows"] > 0).all()
    assert mask_table(tmp_path / "none").empty


def test_the_mask_table_counts_the_pooler_rows_above_the_top_layer(tmp_path: Path) -> None:
    """The real-model review: BERT's pooler, a backbone map scored and selected under the budget, was left out with
    the head, so the card's table summed 533 rows of the 542 trained."""
    from safetensors.torch import save_file

    rows = torch.zeros(8, 4)
    save_file({"bert.encoder.layer.1.attention.self.query.weight": rows.clone().index_fill_(0, torch.tensor([0]), 1),
               "bert.pooler.dense.weight": rows.clone().index_fill_(0, torch.tensor([1, 2]), 1),
               "classifier.weight": torch.ones(3, 8)}, tmp_path / "masks.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    table = mask_table(tmp_path)
    assert table[["layer", "module", "selected_rows", "rows"]].values.tolist() == [["1", "q", 1, 8], ["2", "pooler", 2, 8]]
    (tmp_path / "config.json").unlink()  # no config: one above the highest layer the masks name
    assert mask_table(tmp_path)["layer"].tolist() == ["1", "2"]


def test_colored_words_escapes() -> None:
    item = TokenAttribution(["<b>", "ok"], [0.5, -0.25], 0, "<i>lab</i>", 0.9, 0.0)
    out = colored_words(item)
    assert "&lt;b&gt;" in out and "<b>" not in out and "&lt;i&gt;" in out
    assert "rgba(42,157,143,0.60)" in out and 'class="against" style="background-color: rgba(231,111,81,0.30)' in out
    assert '<span class="sr"> (+0.500)</span>' in out and '<span class="sr"> (-0.250)</span>' in out  # read out
    assert "not attributed" in colored_words(None)


def test_the_runs_of_a_row_share_one_colour_scale_and_a_cut_text_says_so() -> None:
    """The report review: each cell was scaled to its own largest score, so A's 0.022 and B's 0.0024 drew alike; a
    text cut at the run's length showed its words without a word of it."""
    from clm_explore.report import row_scale

    strong = TokenAttribution(["card"], [0.02], 0, "x", 0.9, 0.0)
    weak = TokenAttribution(["card"], [0.002], 0, "x", 0.9, 0.0, note="truncated to 32 sub-tokens")
    top = row_scale(strong, weak, None)
    assert top == 0.02
    assert "rgba(42,157,143,0.60)" in colored_words(strong, top) and "rgba(42,157,143,0.06)" in colored_words(weak, top)
    assert "; truncated to 32 sub-tokens</div>" in colored_words(weak, top)


def test_report_metrics_side_by_side(tmp_path: Path, tiny_data) -> None:
    run_a = make_run(tmp_path, tiny_data, 0, "sparse")
    run_b = make_run(tmp_path, tiny_data, 1, "full")
    metrics_b = json.loads((run_b / "metrics.json").read_text())
    (run_b / "metrics.json").write_text(json.dumps({**metrics_b, "budget": None}))  # as full finetuning writes it
    metrics_a = json.loads((run_a / "metrics.json").read_text())
    (run_a / "metrics.json").write_text(json.dumps({**metrics_a, "budget": 0.01}))
    page = build_report(run_a, run_b, out_path=tmp_path / "m.html", cfg=CFG, max_rows=5).read_text()
    section = page.split("<h2>Metrics</h2>")[1].split("<h2>")[0]
    assert "<th>A: sparse-0</th><th>B: full-1</th>" in section
    assert "<tr><td>method</td><td>sparse</td><td>full</td></tr>" in section
    assert "<td>accuracy</td>" in section and "<td>trainable_params</td>" in section
    assert "None" not in section and "<td>nan</td>" not in section  # full finetuning has no budget: blank
    assert "<tr><td>budget</td><td>1% of the backbone</td><td></td></tr>" in section  # it read 0.01, the app 1%
    head = page.split("<h2>")[0]
    assert "A: sparse-0 vs B: full-1" in head and str(tmp_path) not in head  # the runs' names, not server paths


def _explained(main, run: Path, capsys) -> str:
    assert main(["explain", "--run", str(run), "--text", "my card", "--json"]) == 0
    return capsys.readouterr().out


def test_cli_explain_json(tmp_path: Path, tiny_data, capsys: pytest.CaptureFixture[str]) -> None:
    from clm_explore.cli import main

    run = make_run(tmp_path, tiny_data, 0)
    assert main(["explain", "--run", str(run), "--text", "my cardless card", "--steps", "8", "--json"]) == 0
    (one,) = json.loads(capsys.readouterr().out)  # a list for one text too, as predict's
    assert {"tokens", "scores", "target", "probability", "delta"} <= set(one)
    assert one["tokens"] == ["my", "cardless", "card"] and len(one["scores"]) == 3
    assert one["target"] in tiny_data.labels
    import clm_explore as clm  # the notebook's result gives the same object, by the same names

    loaded = clm.load_run(run)
    (api,) = clm.explain(loaded.model, loaded.tokenizer, "my cardless card", clm.AttributionConfig(n_steps=8))
    assert api.to_record() == one and one["predicted"] in tiny_data.labels
    assert api.to_frame()["word"].tolist() == one["tokens"] and api.to_frame()["score"].tolist() == one["scores"]
    args = ["explain", "--run", str(run), "--text", "a", "--text", "b", "--target", "exchange_rate", "--json"]
    assert main(args) == 0
    both = json.loads(capsys.readouterr().out)
    assert isinstance(both, list) and [x["target"] for x in both] == ["exchange_rate"] * 2
    for text, said in (("  ", "--text is empty: give the text to explain.\n"),
                       ("caf\udce9", "is not UTF-8 text; set your terminal to UTF-8\n")):  # no --file: not offered
        assert main(["explain", "--run", str(run), "--text", text]) == 2 and capsys.readouterr().err.endswith(said)
    assert main(["explain", "--run", str(run), "--text", "my card"]) == 0
    human = capsys.readouterr().out.splitlines()
    assert human[0].startswith("my") and human[2].startswith("target ")
    assert "(the predicted label, p=" in human[2] and "the scores sum to p - p(reference) = " in human[2]
    assert main(["explain", "--run", str(run), "--text", "my card", "--output", "logit"]) == 0
    assert "the scores sum to logit - logit(reference) = " in capsys.readouterr().out
    assert json.loads(_explained(main, run, capsys))[0]["output"] == "probability"
    predicted = json.loads(_explained(main, run, capsys))[0]["predicted"]
    other = next(label for label in tiny_data.labels if label != predicted)
    assert main(["explain", "--run", str(run), "--text", "my card", "--target", other]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith(f"target {other} (not the predicted {predicted}, p=")
    from clm_explore.runs import RunStore

    run_id = RunStore().register_folder(run).id  # a run id of the registry, as predict takes
    assert main(["explain", "--run", run_id, "--text", "my card", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["tokens"] == ["my", "card"]


def test_cli_reads_a_run_at_the_length_it_trained_at(tmp_path: Path, tiny_data, capsys) -> None:
    from clm_explore.cli import main

    run = make_run(tmp_path, tiny_data, 0, max_length=32)  # its clm_run.json says 32, as finetune records it
    long = " ".join(["card"] * 60)
    assert main(["explain", "--run", str(run), "--text", long, "--steps", "4", "--json"]) == 0
    (read,) = json.loads(capsys.readouterr().out)
    assert len(read["sub_tokens"]) == 32 and "truncated to 32" in read["note"]
    assert main(["explain", "--run", str(run), "--text", long, "--steps", "4", "--max-length", "16", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["sub_tokens"]) == 16  # an explicit length wins
    args = ["report", "--run", str(run), "--out", str(tmp_path / "r.html"), "--steps", "4", "--max-rows", "2"]
    assert main(args) == 0
    (cached,) = (run / "attributions").glob("test-*.json")
    assert json.loads(cached.read_text())["config"]["max_length"] == 32


def test_cli_bad_input(tmp_path: Path, tiny_data, capsys: pytest.CaptureFixture[str]) -> None:
    from clm_explore.cli import main

    assert main(["explain", "--run", str(tmp_path / "missing"), "--text", "x"]) == 2
    assert "no such run folder" in capsys.readouterr().err
    run = make_run(tmp_path, tiny_data, 0)
    assert main(["explain", "--run", str(run), "--text", "x", "--target", "nope"]) == 2
    err = capsys.readouterr().err
    assert "Unknown target label 'nope'" in err and "card_arrival" in err
    assert main(["report", "--run", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_cli_report(tmp_path: Path, tiny_data, capsys: pytest.CaptureFixture[str]) -> None:
    from clm_explore.cli import main

    run_a, run_b = make_run(tmp_path, tiny_data, 0), make_run(tmp_path, tiny_data, 1, "full")
    out = tmp_path / "cli.html"
    args = [
        "report",
        "--run",
        str(run_a),
        "--vs",
        str(run_b),
        "--out",
        str(out),
        "--steps",
        "4",
        "--max-rows",
        "8",
    ]
    assert main(args) == 0
    assert out.is_file() and "report written" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"out": str(out), "rows_attributed": 8, "rows": 40}
    # The report review: on disagreement rows each run's scores explain its own prediction, and the correlation
    # there was read as the models' disagreement; --target gold explains the same label in both.
    own = html.unescape(out.read_text())
    assert "each run's scores explain its own prediction, two different labels" in own
    assert main([*args, "--target", "gold", "--show-rows", "3"]) == 0
    capsys.readouterr()
    gold = out.read_text()
    assert "explain its own prediction" not in gold
    rows = gold.split("<h2>Disagreement rows</h2>")[1]
    explained_rows = re.findall(r"<td><bdi>([^<]+)</bdi>.*?explains <bdi>([^<]+)</bdi>", rows)
    assert len(explained_rows) >= 3, explained_rows  # the loop below checks every row shown, not none
    for label, explained in explained_rows[:3]:
        assert label == explained  # each row explains its gold label
    assert rows.count("<tr><td title=") == 3
    args[args.index("--out") + 1] = str(tmp_path)  # a folder: refused before any attribution
    assert main(args) == 2
    assert "is a folder" in capsys.readouterr().err


def test_plot_labels_are_escaped_for_plotly_not_for_html() -> None:
    labels = ['say "hi"', "<b>bold</b> & co"]
    metrics = {"labels": labels, "confusion": [[1, 0], [0, 1]], "per_label_f1": dict.fromkeys(labels, 0.5)}
    shown = ['say "hi"', "&lt;b&gt;bold&lt;/b&gt; &amp; co"]  # plotly decodes &lt; &gt; &amp;, not &quot;
    confusion = _confusion_figure(metrics, 'Confusion "A"')
    assert list(confusion.data[0].x) == shown and confusion.layout.title.text == 'Confusion "A"'
    f1 = _f1_figure(metrics, metrics, ('A: "x"', "B: <i>y</i>"))
    assert sorted(f1.data[0].x) == sorted(shown)
    assert [t.name for t in f1.data[:2]] == ['A: "x"', "B: &lt;i&gt;y&lt;/i&gt;"]


def test_per_label_f1_keeps_the_runs_label_order_and_shows_a_missing_f1_as_a_gap() -> None:
    """The data review: labels sorted as text ("10" before "2"); a label B had no F1 for drawn as B = 0 and a
    difference; a label only B scored left out."""
    a = {"per_label_f1": {"1": 0.9, "2": 0.8, "10": 0.7, "gamma": 0.5}}
    b = {"per_label_f1": {"1": 0.8, "2": 0.8, "10": 0.6, "delta": 0.4}}
    fig = _f1_figure(a, b, ("A", "B"))
    assert list(fig.data[0].x) == ["1", "2", "10", "gamma", "delta"]
    assert list(fig.data[0].y) == [0.9, 0.8, 0.7, 0.5, None] and list(fig.data[1].y) == [0.8, 0.8, 0.6, None, 0.4]
    assert [round(d, 6) if d is not None else None for d in fig.data[2].y] == [0.1, 0.0, 0.1, None, None]


def test_report_says_which_rows_each_figure_uses(tmp_path: Path, tiny_data) -> None:
    run_a, run_b = make_run(tmp_path, tiny_data, 0, "sparse"), make_run(tmp_path, tiny_data, 1, "full")
    page = build_report(run_a, run_b, out_path=tmp_path / "c.html", cfg=CFG, max_rows=8, min_count=1).read_text()
    assert "8 of 40 rows attributed" in page
    assert "over 40 rows" in page and "over the 8 rows both runs attributed" in page
    rows = pd.DataFrame({"row": [0, 1, 2], "same_pred": [True, True, False], "mean_abs_diff": 0.1, "spearman": 0.5})
    cmp = Comparison(0.9, 50, pd.DataFrame(), rows, 0.4, 0.5, n_attributed=3, rank_correlation_agree=0.7,
                     rank_correlation_disagree=float("nan"))  # fmt: skip
    text = agreement_text(cmp)
    assert text.startswith("Agreement 90.0% over 50 rows.") and "over the 3 rows both runs attributed: 0.400 pooled" in text
    assert "0.700 pooled over the 2 of them where the runs agree, n/a over the 1 where they disagree" in text
    assert "not a random sample" in text


def _cli(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 0) -> tuple[str, str]:
    from clm_explore.cli import main

    assert main(argv) == code
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_cli_explain_json_shows_the_prediction(tmp_path: Path, tiny_data, capsys) -> None:
    run = make_run(tmp_path, tiny_data, 0)
    base = ["explain", "--run", str(run), "--text", "my card", "--steps", "4"]
    predicted = json.loads(_cli(capsys, [*base, "--json"])[0])[0]["predicted"]
    other = next(x for x in tiny_data.labels if x != predicted)
    (one,) = json.loads(_cli(capsys, [*base, "--target", other, "--json"])[0])
    assert one["target"] == other and one["predicted"] == predicted
    assert one["predicted_id"] == tiny_data.labels.index(predicted)
    both = json.loads(_cli(capsys, [*base, "--text", "rate", "--json"])[0])
    assert isinstance(both, list) and len(both) == 2 and all("predicted" in x for x in both)  # one per --text
    assert f"predicted {predicted}" in _cli(capsys, [*base, "--target", other])[0]


def test_cli_refuses_steps_that_would_not_fit_in_memory(tmp_path: Path, tiny_data, capsys) -> None:
    run = make_run(tmp_path, tiny_data, 0)
    _, err = _cli(capsys, ["explain", "--run", str(run), "--text", "x", "--steps", "100000000"], code=2)
    assert "--steps must be in 2..1024" in err and "Traceback" not in err
    out = str(tmp_path / "r.html")
    assert "--steps" in _cli(capsys, ["report", "--run", str(run), "--out", out, "--steps", "5000"], code=2)[1]


def test_cli_report_refuses_no_rows_and_a_vs_run_without_predictions(tmp_path: Path, tiny_data, capsys) -> None:
    run_a, run_b = make_run(tmp_path, tiny_data, 0), make_run(tmp_path, tiny_data, 1, "full")
    out = str(tmp_path / "r.html")
    assert "--max-rows" in _cli(capsys, ["report", "--run", str(run_a), "--out", out, "--max-rows", "0"], code=2)[1]
    (run_b / "predictions.csv").unlink()
    _, err = _cli(capsys, ["report", "--run", str(run_a), "--vs", str(run_b), "--out", out], code=2)
    assert f"--vs {run_b} has no predictions.csv; pass --data" in err
    assert not Path(out).exists()


def test_cli_report_data_with_named_columns(tmp_path: Path, tiny_data, capsys) -> None:
    run_a, run_b = make_run(tmp_path, tiny_data, 0), make_run(tmp_path, tiny_data, 1, "full")
    rows = tiny_data.test.rename(columns={"text": "words", "label": "answer"})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    base = ["report", "--run", str(run_a), "--vs", str(run_b), "--data", str(tmp_path / "rows.csv"),
            "--out", str(tmp_path / "d.html"), "--steps", "4", "--max-rows", "6"]  # fmt: skip
    assert "--text-col" in _cli(capsys, base, code=2)[1]
    out, _ = _cli(capsys, [*base, "--text-col", "words", "--label-col", "answer"])
    assert "report written to" in out and "6 of " in out and "rows attributed" in out


def test_a_report_of_a_run_whose_metrics_are_not_an_object_still_builds(tmp_path: Path, tiny_data) -> None:
    from clm_explore.report import read_metrics

    run = make_run(tmp_path, tiny_data, 0)
    (run / "metrics.json").write_text("[1, 2]")  # valid JSON, not an object: m.get failed in the report
    assert read_metrics(run) == {}
    page = build_report(run, out_path=tmp_path / "r.html", max_rows=2, progress=False).read_text()
    assert "No figures could be read from the metrics.json of A: " in page  # an empty table, said nowhere


def test_cli_refuses_a_base_model_as_a_run_and_data_of_another_task(tmp_path: Path, tiny_data, capsys) -> None:
    from clm_explore.modeling import load_model

    base = tmp_path / "base"
    loaded = load_model("tiny-random")  # a head for LABEL_0 and LABEL_1, never trained: it predicted LABEL_0
    loaded.model.save_pretrained(base)
    loaded.tokenizer.save_pretrained(base)
    for argv in (["predict", "--run", str(base), "--text", "my card"], ["explain", "--run", str(base), "--text", "x"]):
        assert "not a finetuned run" in _cli(capsys, argv, code=2)[1]
    import clm_explore as clm
    from clm_explore.modeling import ModelSourceError

    with pytest.raises(ModelSourceError, match="not a finetuned run"):  # the API says what the CLI says
        clm.predict(base, "my card")  # (it answered LABEL_0 0.50 / LABEL_1 0.50)
    run = make_run(tmp_path, tiny_data, 0)
    other = pd.DataFrame({"text": [f"what is a dog {i}" for i in range(6)] + [f"who is she {i}" for i in range(6)],
                          "label": ["DESC"] * 6 + ["HUM"] * 6})
    other.to_csv(tmp_path / "other.csv", index=False)
    report = ["report", "--run", str(run), "--out", str(tmp_path / "r.html"), "--steps", "4", "--max-rows", "2"]
    assert "share none with the run's" in _cli(capsys, [*report, "--data", str(tmp_path / "other.csv")], code=2)[1]
    mixed = tmp_path / "mixed"  # a folder: its test file is read whole
    mixed.mkdir()
    tiny_data.train.to_csv(mixed / "train.csv", index=False)
    pd.concat([tiny_data.test.head(6), other.head(4)]).to_csv(mixed / "test.csv", index=False)
    _, err = _cli(capsys, [*report, "--data", str(mixed)])
    assert "4 of --data's 10 rows carry labels the run does not have" in err
    copies = pd.DataFrame({"text": ["my card", "rate up"] * 3, "label": ["card_arrival", "exchange_rate"] * 3})
    copies.to_csv(tmp_path / "copies.csv", index=False)  # every copy of a text stays in train: no test rows
    assert "no test rows" in _cli(capsys, [*report, "--data", str(tmp_path / "copies.csv")], code=2)[1]


def _no_attributions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the attribution work fail loudly: what a test refuses must be refused before it."""
    from clm_explore import casestudy

    def boom(*args, **kwargs):
        raise AssertionError("attributed although the command should have stopped first")

    monkeypatch.setattr(casestudy, "case_study", boom)


def test_cli_report_out_never_replaces_a_data_or_run_file(tmp_path: Path, tiny_data, capsys, monkeypatch) -> None:
    run = make_run(tmp_path, tiny_data, 0)
    base = ["report", "--run", str(run), "--steps", "4", "--max-rows", "2", "--out"]
    predictions = (run / "predictions.csv").read_bytes()
    data = tmp_path / "data.csv"
    data.write_text("text,label\nhi,a\n")
    notes = tmp_path / "notes.html"
    notes.write_text("my notes, not a page")
    with monkeypatch.context() as m:
        _no_attributions(m)
        for out, phrase in [
            (run / "predictions.csv", "does not end in .html"),
            (data, "does not end in .html"),
            (notes, "exists and is not an HTML page"),
            (run / "report.html", f"is inside the run folder {run}"),
            (run / "attributions" / "r.html", f"is inside the run folder {run}"),
            (data / "r.html", f"{data} is a file, not a folder"),
        ]:
            err = _cli(capsys, [*base, str(out)], code=2)[1]
            assert phrase in err and err.startswith(f"error: --out {out}") and "Traceback" not in err, err
        m.setattr("clm_explore.report.os.access", lambda *args, **kwargs: False)  # a folder we may not write in
        err = _cli(capsys, [*base, str(tmp_path / "r.html")], code=2)[1]
        assert "cannot be written (permission denied)" in err and "Errno" not in err
    assert (run / "predictions.csv").read_bytes() == predictions and data.read_text() == "text,label\nhi,a\n"
    assert notes.read_text() == "my notes, not a page" and not (run / "report.html").exists()
    old = tmp_path / "old.html"
    old.write_text("\n  <!doctype HTML><html><body>an earlier report</body></html>")
    assert "report written to" in _cli(capsys, [*base, str(old)])[0]  # an HTML page is replaced
    assert "an earlier report" not in old.read_text()
    new = tmp_path / "new" / "sub" / "r.html"
    assert "report written to" in _cli(capsys, [*base, str(new)])[0] and new.is_file()  # folders still made


def test_looks_like_html() -> None:
    from clm_explore.report import looks_like_html

    for head in (b"<!DOCTYPE html>", b"  \n<html lang='en'>", b"\xef\xbb\xbf<!doctype HTML>", b"<HTML>"):
        assert looks_like_html(head), head
    for head in (b"text,label\n", b"<svg>", b"", b'{"a": 1}', b"<!DOCTYPE svg>"):
        assert not looks_like_html(head), head


def test_cli_report_says_a_failed_write_in_words(tmp_path: Path, tiny_data, capsys, monkeypatch) -> None:
    run = make_run(tmp_path, tiny_data, 0)

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", denied)  # the folder checked fine, then could not be written
    out = tmp_path / "r.html"
    err = _cli(capsys, ["report", "--run", str(run), "--out", str(out), "--steps", "4", "--max-rows", "2"], code=2)[1]
    assert f"--out {out}: the report cannot be written (Permission denied)" in err and "Errno" not in err


def test_report_with_data_says_its_metrics_are_each_runs_own(tmp_path: Path, tiny_data) -> None:
    run_a, run_b = make_run(tmp_path, tiny_data, 0, "sparse"), make_run(tmp_path, tiny_data, 1, "full")
    extra = pd.DataFrame({"text": ["what is a dog", "who is she"], "label": ["DESC", "HUM"]})  # labels no run has
    data = pd.concat([tiny_data.test, extra], ignore_index=True)
    note = "each run's own test-split figures from training (its metrics.json), not figures of the --data rows"
    page = build_report(run_a, run_b, data=data, out_path=tmp_path / "d.html", cfg=CFG, max_rows=4).read_text()
    metrics, confusion = page.split("<h2>Metrics</h2>")[1], page.split("<h2>Confusion matrices</h2>")[1]
    assert note in metrics.split("<table>")[0] and note in confusion.split("<div")[0]
    assert page.count(note) == 3  # Metrics, confusion matrices, per-label F1
    # The rows are predictions.csv's (plus two of labels no run classifies): each run's accuracy on the 40 it can
    # predict is its metrics.json accuracy, shown beside the agreement.
    acc = [json.loads((run / "metrics.json").read_text())["accuracy"] for run in (run_a, run_b)]
    shown = f"Accuracy on these rows: A: sparse-0 {acc[0]:.1%} over 40 rows, B: full-1 {acc[1]:.1%} over 40 rows"
    rows = page.split("Disagreement rows")[1]
    assert shown in rows and "Agreement " in rows.split(shown)[0] and "given below, beside the agreement" in page
    one = build_report(run_a, data=data, out_path=tmp_path / "one.html", cfg=CFG, max_rows=4).read_text()
    assert note in one and "Accuracy on these rows" not in one and "beside the agreement" not in one
    plain = build_report(run_a, run_b, out_path=tmp_path / "p.html", cfg=CFG, max_rows=4).read_text()
    assert "test-split figures" not in plain and "Accuracy on these rows" not in plain  # metrics.json's rows: no note


def test_cli_report_on_a_read_only_run_folder(tmp_path: Path, tiny_data, capsys, monkeypatch) -> None:
    import os
    import stat

    from clm_explore import casestudy

    run = make_run(tmp_path, tiny_data, 0)
    files = sorted(p.name for p in run.iterdir())
    run.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        if os.access(run, os.W_OK):  # root writes anyway: make the cache's write fail as a read-only folder's does
            def denied(path, *args, **kwargs):
                raise PermissionError(13, "Permission denied", str(path))

            monkeypatch.setattr(casestudy, "write_json_atomic", denied)
        out = tmp_path / "r.html"
        assert "report written to" in _cli(capsys, ["report", "--run", str(run), "--out", str(out), "--steps", "4",
                                                    "--max-rows", "2"])[0]  # fmt: skip
        assert out.is_file() and "Top attributed words" in out.read_text()
    finally:
        run.chmod(0o755)
    assert sorted(p.name for p in run.iterdir()) == files  # no cache, no attributions folder, no temporary file


def test_cli_report_names_a_damaged_run_file_before_attributing(tmp_path: Path, tiny_data, capsys, monkeypatch) -> None:
    run = make_run(tmp_path, tiny_data, 0)
    _no_attributions(monkeypatch)
    base = ["report", "--run", str(run), "--out", str(tmp_path / "r.html")]
    good = {name: (run / name).read_bytes() for name in ("masks.safetensors", "task_tokens.json", "predictions.csv")}
    damaged = [
        ("masks.safetensors", b"garbage", "cannot be read"),
        ("task_tokens.json", json.dumps({"groups": [{"count": 3}]}).encode(), "group 0 has no 'text' field"),
        ("task_tokens.json", b"{not json", "cannot be read as JSON"),
        ("predictions.csv", pd.read_csv(run / "predictions.csv").drop(columns=["label"]).to_csv(index=False).encode(),
         "has no label column"),
        ("predictions.csv", pd.read_csv(run / "predictions.csv").drop(columns=["text"]).to_csv(index=False).encode(),
         "has no text column"),
    ]  # fmt: skip
    for name, content, phrase in damaged:
        (run / name).write_bytes(content)
        err = _cli(capsys, base, code=2)[1]
        assert f"{run / name}" in err and phrase in err and "Traceback" not in err, err
        (run / name).write_bytes(good[name])


def test_mask_table_names_a_damaged_file(tmp_path: Path) -> None:
    from clm_explore.modeling import ModelSourceError

    (tmp_path / "masks.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ModelSourceError, match="masks.safetensors cannot be read"):
        mask_table(tmp_path)


def test_cli_report_says_a_run_is_missing_or_not_finished(tmp_path: Path, tiny_data, capsys) -> None:
    import shutil

    from clm_explore.runs import RunStatus, RunStore

    out = ["--out", str(tmp_path / "r.html")]
    moved = make_run(tmp_path, tiny_data, 0)
    run_id = RunStore().register_folder(moved).id
    shutil.rmtree(moved)
    err = _cli(capsys, ["report", "--run", run_id, *out], code=2)[1]
    assert f"the run's folder {moved} does not exist (moved or deleted)" in err and "predictions.csv" not in err
    training = tmp_path / "training"
    training.mkdir()
    (training / "clm_run.json").write_text("{}")  # finetune's first file; the model comes at the end
    err = _cli(capsys, ["report", "--run", str(training), *out], code=2)[1]
    assert "the run is not finished (still training" in err and "not a run folder" not in err
    (training / "metrics.json").write_text(json.dumps({"status": "failed", "error": "out of memory"}))
    assert "not finished (status failed: out of memory)" in _cli(capsys, ["report", "--run", str(training), *out],
                                                                 code=2)[1]  # fmt: skip
    store = RunStore()
    running = store.create("busy", "sparse")  # its folder still empty while the model loads
    store.set_status(running.id, RunStatus.RUNNING)
    run = make_run(tmp_path, tiny_data, 1)
    err = _cli(capsys, ["report", "--run", str(run), "--vs", running.id, *out], code=2)[1]
    assert f"--vs {running.id}: the run is not finished (status running)" in err


def test_cli_report_of_the_working_folder_names_it(tmp_path: Path, tiny_data, capsys, monkeypatch) -> None:
    run = make_run(tmp_path, tiny_data, 0, "sparse")
    monkeypatch.chdir(run)
    out = tmp_path / "here.html"
    _cli(capsys, ["report", "--run", ".", "--out", str(out), "--steps", "4", "--max-rows", "2"])
    page = out.read_text()
    assert "<th>A: sparse-0</th>" in page and "<th>A: </th>" not in page


def test_build_report_refuses_its_path_before_the_attributions(tmp_path: Path, tiny_data, monkeypatch) -> None:
    from clm_explore import report

    run = make_run(tmp_path, tiny_data, 0)
    monkeypatch.setattr(report, "case_study", lambda *a, **k: pytest.fail("attributed before the path was checked"))
    with pytest.raises(report.ReportPathError, match="inside the run folder"):
        build_report(run, out_path=run / "report.html", cfg=CFG)


def test_report_says_when_it_shows_only_some_attributed_rows(tmp_path: Path, tiny_data) -> None:
    run = make_run(tmp_path, tiny_data, 0)
    page = build_report(run, out_path=tmp_path / "r.html", cfg=CFG, max_rows=12).read_text()
    rows = page.split("Rows (errors first)")[1]
    assert "10 of 12 attributed rows, taken from each label in turn (the command line's report --show-rows N, or show_rows=, draws more)." in rows
    few = build_report(run, out_path=tmp_path / "few.html", cfg=CFG, max_rows=4).read_text()
    assert "attributed rows" not in few.split("Rows (errors first)")[1]  # all four shown
    every = build_report(run, out_path=tmp_path / "all.html", cfg=CFG, max_rows=12, show_rows=12).read_text()
    drawn = every.split("Rows (errors first)")[1]
    assert drawn.count('<div class="row-text"') == 12 and "attributed rows" not in drawn
    # The first rows shown are taken from each label in turn (the review: a file sorted by label showed one label)
    shown = re.findall(r"<td><bdi>([^<]+)</bdi>", rows)
    assert len(set(shown[:4])) >= 3, shown


def test_a_right_to_left_override_in_user_text_stays_in_its_element() -> None:
    from clm_explore.attribution import TokenAttribution
    from clm_explore.report import CSS, colored_words

    label = "\u05e9\u05dc\u05d5\u05dd\u202ertl"  # the override flipped the "(p=0.26, δ=...)" after it
    shown = colored_words(TokenAttribution(["hi"], [0.1], 0, label, 0.26, 0.0))
    assert f"<bdi>{label}</bdi> (p=0.26" in shown
    assert "th, td, .row-text span, bdi { unicode-bidi: isolate; }" in CSS  # cells and words too


def test_rows_whose_scores_miss_their_probability_change_are_said_in_the_report(tmp_path: Path, tiny_data,
                                                                                monkeypatch) -> None:
    """The models review: all-mpnet-base-v2's report showed rows with delta -0.87 and +1.93 and averaged them into
    its top words without a word, where explain warned of each."""
    from clm_explore.casestudy import RunAttributions

    def items(deltas: list[float], output: str = "probability") -> dict[int, TokenAttribution]:
        return {row: TokenAttribution(["hi"], [2.0], 0, "a", 0.9, delta, ["hi"], [2.0], output=output)
                for row, delta in enumerate(deltas)}

    rows = pd.DataFrame({"row": [0, 1, 2], "delta": [0.01, -0.87, 0.3]})
    attributed = RunAttributions(tmp_path, "test", rows, items([0.01, -0.87, 0.3]))
    assert attributed.unsettled_note().startswith("2 of 3 rows' word scores miss their probability change by more "
                                                  "than a tenth of it or 0.02, whichever is more (up to 0.87): read "
                                                  "them as a ranking, not amounts")
    assert RunAttributions(tmp_path, "test", rows, items([0.05] * 3)).unsettled_note() == ""
    # The gap allowed is a tenth of the change (here 2.87 and 1.7: both flagged), for logits too
    logits = RunAttributions(tmp_path, "test", rows, items([0.01, -0.87, 0.3], "logit"))
    assert logits.unsettled_note().startswith("2 of 3 rows' word scores miss their logit change by more than a tenth "
                                              "of it or 0.1, whichever is more (up to 0.87)")
    run_a = make_run(tmp_path, tiny_data, 0, "sparse")
    monkeypatch.setattr(RunAttributions, "unsettled_note", lambda self: "2 of 3 rows' word scores miss")
    page = build_report(run_a, out_path=tmp_path / "r.html", cfg=CFG, max_rows=10).read_text()
    assert '<p class="note">A: sparse-0: 2 of 3 rows&#x27; word scores miss.</p>' in page


def test_a_report_of_logit_scores_says_what_they_add_up_to(tmp_path: Path, tiny_data, capsys) -> None:
    from clm_explore.cli import main
    from clm_explore.report import LOGIT_KEY_SUM

    run = make_run(tmp_path, tiny_data, 0, "sparse")
    args = ["report", "--run", str(run), "--out", str(tmp_path / "r.html"), "--steps", "4", "--max-rows", "4"]
    assert main([*args, "--output", "logit"]) == 0
    page = (tmp_path / "r.html").read_text()
    assert LOGIT_KEY_SUM in page and "sum to p &minus; p(reference)" not in page
    assert main([*args, "--out", str(tmp_path / "p.html")]) == 0  # the default: probability, and its own cache
    assert "sum to p &minus; p(reference)" in (tmp_path / "p.html").read_text()


def test_a_logit_reports_top_words_and_its_memory_row_say_what_they_measure(tmp_path: Path, tiny_data) -> None:
    """The diff review: a logit report said "logit" in its rows' key alone, and its Metrics table showed the raw
    peak_memory_mb that the app and card name training memory."""
    from dataclasses import replace

    run = make_run(tmp_path, tiny_data, 0, "sparse")
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "peak_memory_mb": 123.0}))
    page = build_report(run, out_path=tmp_path / "r.html", cfg=replace(CFG, output="logit"), max_rows=4).read_text()
    assert "Mean attribution (in logit: each label's score before the softmax" in page
    assert "training memory, MiB (peak above the loaded model)" in page and "<td>peak_memory_mb</td>" not in page
