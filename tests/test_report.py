"""The HTML report on a tiny pair of fabricated runs: sections present, self-contained, user text escaped."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
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
    out = build_report(
        run_a, run_b, out_path=tmp_path / "r" / "report.html", cfg=CFG, max_rows=20, min_count=1
    )
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    for section in ("Metrics", "Confusion matrices", "Per-label F1", "Top attributed words", "Selected rows"):
        assert section in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert ">&lt;</span>" in page  # the word spans too
    assert not re.search(r"<script[^>]*\bsrc=", page)  # no CDN: plotly.js is inline
    assert page.count("Plotly.newPlot") >= 4  # two confusions, F1, two mask heatmaps
    assert page.count("plotly.js v") == 1  # the bundle's banner: inlined once
    assert "rgba(34,139,34" in page or "rgba(220,20,60" in page
    assert "card_arrival" in page and 'class="group"' in page


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
    assert {"attention.self.query", "intermediate.dense", "output.dense"} <= set(table["module"])
    assert table["share"].between(0, 1).all() and (table["rows"] > 0).all()
    assert mask_table(tmp_path / "none").empty


def test_colored_words_escapes() -> None:
    item = TokenAttribution(["<b>", "ok"], [0.5, -0.25], 0, "<i>lab</i>", 0.9, 0.0)
    out = colored_words(item)
    assert "&lt;b&gt;" in out and "<b>" not in out and "&lt;i&gt;" in out
    assert "rgba(34,139,34,0.85)" in out and "rgba(220,20,60,0.42)" in out
    assert "not attributed" in colored_words(None)


def test_report_metrics_side_by_side(tmp_path: Path, tiny_data) -> None:
    run_a = make_run(tmp_path, tiny_data, 0, "sparse")
    run_b = make_run(tmp_path, tiny_data, 1, "full")
    metrics_b = json.loads((run_b / "metrics.json").read_text())
    (run_b / "metrics.json").write_text(json.dumps({**metrics_b, "budget": None}))  # as full finetuning writes it
    page = build_report(run_a, run_b, out_path=tmp_path / "m.html", cfg=CFG, max_rows=5).read_text()
    section = page.split("<h2>Metrics</h2>")[1].split("<h2>")[0]
    assert "<th>A: sparse-0</th><th>B: full-1</th>" in section
    assert "<tr><td>method</td><td>sparse</td><td>full</td></tr>" in section
    assert "<td>accuracy</td>" in section and "<td>trainable_params</td>" in section
    assert "None" not in section and "<td>nan</td>" not in section  # full finetuning has no budget: blank


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
    assert main(["explain", "--run", str(run), "--text", "my card"]) == 0
    human = capsys.readouterr().out
    assert human.splitlines()[0].startswith("my") and "delta" in human
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
    assert isinstance(both, list) and all("predicted" in x for x in both)
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
    assert build_report(run, out_path=tmp_path / "r.html", max_rows=2).is_file()


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
