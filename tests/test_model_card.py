"""The model card (README.md) a finished run carries: the Hub's metadata, Markdown that keeps the data's text literal,
a usage snippet that works, and `clm-explore card`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from huggingface_hub import ModelCard

from clm_explore.cards import ModelCardError, md_text, model_card, write_model_card
from clm_explore.cli import main
from clm_explore.config import ConfigError, FinetuneConfig, MaskConfig, MiningConfig
from clm_explore.data import AnnotatedData
from clm_explore.training import finetune


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory, tiny_data_module):
    cfg = FinetuneConfig(method="sparse", epochs=1, batch_size=16, device="cpu", mask=MaskConfig(budget=0.03))
    return finetune(tiny_data_module, cfg, tmp_path_factory.mktemp("runs") / "sparse", source="tiny-random")


def test_a_finished_run_carries_a_card_the_hub_reads_with_its_figures(sparse_run):
    card = ModelCard.load(sparse_run.out_dir / "README.md")  # huggingface_hub's own parser of the metadata
    metrics = sparse_run.metrics
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
    assert {"clm-explore", "sparse", "sparse-finetuning"} <= set(card.data.tags)
    assert card.data.base_model is None  # the tiny random model has no name on the Hub
    assert card.data.language == "en"  # banking77's, detected from its training texts
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"accuracy": round(metrics["accuracy"], 4), "f1": round(metrics["macro_f1"], 4)}
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    text = card.text
    for label in metrics["labels"]:  # a row per label, lowest F1 first
        assert f"| {md_text(label)} | {metrics['per_label_f1'][label]:.4f} |" in text
    f1s = [float(v) for v in re.findall(r"^\| \S+ \| (\d\.\d{4}) \|$", text.split("### F1 per label")[1].split("###")[0],
                                        flags=re.M)]
    assert len(f1s) == len(metrics["labels"]) and f1s == sorted(f1s)
    assert f"{metrics['selected_params']:,} parameters chosen" in text
    assert f"the lowest layer trained is {metrics['lowest_layer']}" in text
    rows = re.findall(r"^\| (\d+|emb) \| ([\d,]+) \| ([\d,]+) \|$", text, flags=re.M)  # rows chosen per layer
    assert rows and min(int(r[0]) for r in rows if r[0] != "emb" and r[1] != "0") >= metrics["lowest_layer"]
    assert sum(int(r[1].replace(",", "")) for r in rows) > 0
    assert "Budget 3% of the backbone: " in text  # in percent, as the app says it (it read "Budget 0.03")
    # every scored map counted, a layer with no row chosen too, and the embeddings over the mined words' rows (the
    # budget review: only maps with a chosen row, and the whole vocabulary); rows that could not compete are said
    scored = json.loads((sparse_run.out_dir / "sensitivity" / "sensitivity.json").read_text())["matrices"]
    per_layer: dict[str, int] = {}
    for info in scored.values():
        layer = "emb" if info["module"] == "embeddings" else str(info["layer"])
        eligible = info["eligible_rows"]
        per_layer[layer] = per_layer.get(layer, 0) + (len(eligible) if eligible is not None else info["rows"])
    assert {r[0]: int(r[2].replace(",", "")) for r in rows} == per_layer
    assert "The rows of layer 0 and the word embeddings could not be chosen: the mask's lowest eligible layer is 1" in text
    assert "## Task token groups" in text
    made = json.loads((sparse_run.out_dir / "clm_run.json").read_text())["provenance"]
    assert f"Made by clm-explore's code `{made['code']}` (clm-explore " in text and "`clm-explore rerun --run DIR`" in text
    assert "| sub-tokens read per text | 64 |" in text and "LoRA rank" not in text


def test_the_cards_usage_snippet_predicts_what_the_run_predicts(sparse_run, tiny_data_module):
    from transformers import pipeline

    from clm_explore.batches import predict

    snippet = re.search(r"```python\n(.*?)```", model_card(sparse_run), flags=re.S).group(1)
    assert 'pipeline("text-classification", model=' in snippet and "max_length=64" in snippet
    texts = tiny_data_module.test["text"].head(8).tolist()
    classify = pipeline("text-classification", model=str(sparse_run.out_dir))
    shown = [r["label"] for r in classify(texts, truncation=True, max_length=64)]
    assert shown == predict(sparse_run, texts).idxmax(axis=1).tolist()


def test_the_datas_text_stays_literal_in_the_card(tmp_path):
    hostile = ["<img src=x onerror=alert(1)>", "[click](http://example.com)", "a|b", "**bold**\nnext line"]
    rows = [(f"text {i} about {j}", label) for j, label in enumerate(hostile) for i in range(6)]
    frame = pd.DataFrame(rows, columns=["text", "label"])
    data = AnnotatedData(frame, frame, frame, sorted(set(frame["label"])), source=str(tmp_path / "<b>data"))
    run = finetune(data, FinetuneConfig(method="head", epochs=1, device="cpu"), tmp_path / "run", source="tiny-random")
    metadata, text = (run.out_dir / "README.md").read_text().split("\n---\n", 1)  # the YAML, then the Markdown
    assert "<img" not in text and "<b>" not in text and "](http" not in text and "**bold**" not in text
    card = ModelCard.load(run.out_dir / "README.md")  # the metadata keeps the data's name as a YAML string
    assert {r.dataset_name for r in card.data.eval_results} == {"<b>data"} and metadata.startswith("---\n")
    per_label = text.split("### F1 per label")[1].split("###")[0]
    table = [line for line in per_label.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(hostile)
    assert all(len(re.split(r"(?<!\\)\|", line)) == 4 for line in table)  # a | in a label does not add a cell
    assert md_text("a|b") == r"a\|b" and md_text("<x> & y") == "&lt;x\\> &amp; y"
    # GitHub links a bare web address (cmark-gfm: "http://e.x" -> <a href>; "http\://e.x" and "www\.e.x" -> text)
    assert md_text("see http://e.example/a or WWW.e.example") == r"see http\://e.example/a or WWW\.e.example"
    assert md_text("3:4 a.b") == "3:4 a.b"  # no escape where no link would be


def test_the_card_names_the_datas_language_and_an_older_run_none(tmp_path, sparse_run):
    words = ["Überweisung", "Karte", "Konto", "Gebühr", "Rückerstattung"]
    texts = [f"Ich habe eine Frage zu meiner {w}, die noch nicht angekommen ist und die ich gestern {i} bestellt habe"
             for i in range(6) for w in words]
    frame = pd.DataFrame({"text": texts, "label": words * 6})
    data = AnnotatedData(frame, frame, frame, sorted(words), source=str(tmp_path / "de.csv"))
    run = finetune(data, FinetuneConfig(method="head", epochs=1, device="cpu"), tmp_path / "de", source="tiny-random")
    assert json.loads((run.out_dir / "clm_run.json").read_text())["language"] == "de"
    assert ModelCard.load(run.out_dir / "README.md").data.language == "de"
    unknown = FinetuneConfig(method="head", epochs=1, device="cpu", mining=MiningConfig(background_lang="xx"))
    with pytest.raises(ConfigError, match="background_lang"):  # before any folder, for a method that mines nothing too
        finetune(data, unknown, tmp_path / "xx", source="tiny-random")
    assert not (tmp_path / "xx").exists()
    older = tmp_path / "older"  # a run folder written before the language was recorded
    shutil.copytree(sparse_run.out_dir, older)
    meta = json.loads((older / "clm_run.json").read_text())
    del meta["language"]
    (older / "clm_run.json").write_text(json.dumps(meta))
    assert ModelCard(model_card(older)).data.language is None


def test_a_folder_without_a_finished_run_has_no_card(tmp_path, sparse_run):
    with pytest.raises(ModelCardError, match="holds no finished run"):
        model_card(tmp_path)
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    for name in ("clm_run.json", "config.json"):
        (stopped / name).write_text((sparse_run.out_dir / name).read_text())
    (stopped / "metrics.json").write_text(json.dumps({"status": "cancelled", "steps": 3}))
    with pytest.raises(ModelCardError):
        write_model_card(stopped)
    assert not (stopped / "README.md").exists()


def test_a_card_that_cannot_be_made_leaves_the_run_succeeded(tmp_path, tiny_data, monkeypatch):
    from clm_explore import cards

    def broken(run):
        raise KeyError("per_label_f1")

    monkeypatch.setattr(cards, "write_model_card", broken)
    with pytest.warns(UserWarning, match="model card .* could not be written .*clm-explore card --run"):
        run = finetune(tiny_data, FinetuneConfig(method="head", epochs=1, device="cpu"), tmp_path / "run",
                       source="tiny-random")
    assert run.status == "succeeded" and not (run.out_dir / "README.md").exists()


def test_card_command_prints_writes_and_refuses(sparse_run, tmp_path, capsys):
    folder = sparse_run.out_dir
    assert main(["card", "--run", str(folder)]) == 0
    assert capsys.readouterr().out == model_card(folder)
    (folder / "README.md").unlink()  # a run saved before cards were written
    assert main(["card", "--run", str(folder), "--write", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["path"] == str(folder / "README.md") and shown["card"] == (folder / "README.md").read_text()
    assert main(["card", "--run", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_the_card_command_loads_no_torch(sparse_run):
    """The real-model review: `card` reads files alone, yet imported torch and transformers for its mask table
    (7.5 s and 500 MB for the default model's card)."""
    script = ("import sys; from clm_explore.cli import main; import contextlib, io\n"
              f"with contextlib.redirect_stdout(io.StringIO()) as out: code = main(['card', '--run', {str(sparse_run.out_dir)!r}])\n"
              "print(code, '| rows chosen | rows |' in out.getvalue(), sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "0 True []", done.stderr[-2000:]


def test_a_folder_name_cannot_break_the_cards_code_or_markdown(sparse_run, tmp_path):
    odd = tmp_path / 'my`run"```x'
    shutil.copytree(sparse_run.out_dir, odd)
    text = model_card(odd)
    fence = re.search(r"^(`{3,})python$", text, flags=re.M).group(1)
    assert len(fence) > 3 and text.count(f"\n{fence}\n") == 1  # a fence longer than the name's backticks
    code = text.split(f"{fence}python\n")[1].split(f"\n{fence}")[0]
    compile(code, "card", "exec")  # the snippet is still Python
    assert json.dumps('path/to/my`run"```x') in code


def test_a_prefix_runs_card_points_to_the_tool_and_a_foreign_readme_is_kept(tmp_path, tiny_data_module):
    cfg = FinetuneConfig(method="prefix", epochs=1, batch_size=16, device="cpu")
    run = finetune(tiny_data_module, cfg, tmp_path / "prefix", source="tiny-random")
    card = ModelCard.load(run.out_dir / "README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag is None  # no widget without its adapter
    assert "from clm_explore import predict" in card.text and "pipeline(" not in card.text
    assert "without its trained prefix (adapter/)" in card.text  # a plain load predicts without it (models review)
    (run.out_dir / "README.md").write_text("# my own notes\n")
    with pytest.raises(ModelCardError, match="clm-explore did not write; it is left as it is"):
        write_model_card(run)
    assert (run.out_dir / "README.md").read_text() == "# my own notes\n"


def test_a_damaged_masks_file_leaves_the_rows_table_out_and_says_why(tmp_path, sparse_run):
    import shutil

    copy = shutil.copytree(sparse_run.out_dir, tmp_path / "run")
    assert "| layer | rows chosen | rows |" in model_card(copy)
    (copy / "masks.safetensors").write_bytes(b"not a safetensors file")
    card = model_card(copy)  # the table was dropped without a word, where report and heads name the file
    assert "| layer | rows chosen | rows |" not in card and "The table of rows chosen is left out:" in card
    assert "masks.safetensors" in card
