"""The few-shot draw as a data option (``DataConfig.shots``, ``--shots K --data-seed S``, the Data page's boxes): the
rows ``bench --shots K`` drew were out of reach of finetune, sensitivity and the app (the last note's leftover)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clm_explore.bench import few_shot
from clm_explore.cards import model_card
from clm_explore.cli import main
from clm_explore.config import ConfigError, DataConfig
from clm_explore.data import data_digest, load_data
from clm_explore.runs import RunStore, data_key_name
from clm_explore.ui.state import DataChoice
from tests.test_cli_method import FAST, TINY


def test_the_draw_keeps_k_rows_per_label_of_train_and_validation_as_bench_draws_and_test_whole(data_dir) -> None:
    every = load_data(data_dir)
    drawn = load_data(data_dir, shots=3)
    for split, whole in (("train", every.train), ("validation", every.validation)):
        assert drawn.split(split)["label"].value_counts().to_dict() == dict.fromkeys(every.labels, 3)
        assert drawn.split(split).equals(few_shot(whole, 3, 0))  # a bench cell's rows at --shots 3
    assert drawn.test.equals(every.test)
    assert any("trains on 12 of the 160 training rows and validates on 12 of the 40 validation rows" in n
               and "the test split is kept whole" in n for n in drawn.notes), drawn.notes
    other = load_data(data_dir, shots=3, shots_seed=1)
    assert not other.train.equals(drawn.train)
    assert len({data_digest(d) for d in (every, drawn, other)}) == 3  # runs on other rows are told apart
    assert load_data(data_dir, shots=3).train.equals(drawn.train)  # seeded


def test_a_label_with_fewer_rows_than_the_shots_keeps_its_own_and_is_named(data_dir) -> None:
    drawn = load_data(data_dir, shots=50)
    assert len(drawn.train) == 160 and len(drawn.validation) == 40
    assert any("--shots 50 (shots=50): 4 of 4 labels have fewer training rows and keep all theirs" in n for n in drawn.notes)


def test_a_draw_of_one_row_of_each_label_is_refused_as_a_bench_cell_would_be(data_dir) -> None:
    from clm_explore.data import DataError

    with pytest.raises(DataError, match=r"--shots 1 \(shots=1\) leaves 4 training rows for 4 labels, fewer than 2"):
        load_data(data_dir, shots=1)


def test_shots_below_zero_are_refused_by_the_config_and_the_command_line(data_dir, capsys) -> None:
    with pytest.raises(ConfigError, match="shots must be 0 .* got -1"):
        DataConfig(shots=-1)
    with pytest.raises(ConfigError, match="shots_seed must be 0 or more, got -2"):
        DataConfig(shots=2, shots_seed=-2)
    for flag in ("--shots", "--data-seed"):
        with pytest.raises(SystemExit) as stop:
            main(["finetune", "--data", str(data_dir), *TINY, *FAST, flag, "-1"])
        assert stop.value.code == 2 and f"{flag}: -1 must be 0 or more" in capsys.readouterr().err


def test_a_run_at_shots_records_its_draw_and_evaluate_and_the_card_read_it(tiny_data, tmp_path: Path, capsys) -> None:
    import pandas as pd

    one_file = tmp_path / "tickets.csv"  # a single file: the run carves its splits, then draws
    pd.concat([tiny_data.train, tiny_data.validation, tiny_data.test]).to_csv(one_file, index=False)
    out = tmp_path / "few"
    assert main(["finetune", "--data", str(one_file), *TINY, *FAST, "--method", "head", "--shots", "3",
                 "--data-seed", "1", "--out", str(out)]) == 0
    assert "--shots 3 (shots=3): trains on 12 of the " in capsys.readouterr().err
    record = json.loads((out / "clm_run.json").read_text())
    assert {k: record["data_config"][k] for k in ("shots", "shots_seed")} == {"shots": 3, "shots_seed": 1}
    assert record["data_digest"] == data_digest(load_data(one_file, shots=3, shots_seed=1))
    assert ("| training rows | at most 3 of each label, and as many validation rows, drawn at random (draw 1: the "
            "app's Few-shot boxes, `--shots 3 --data-seed 1`) |") in model_card(out)
    [listed] = RunStore().list()  # the Runs and Compare pages' data column names the draw, and a registry made anew
    assert listed.config["data"] == f"{one_file}, 3 rows of each label (draw 1)" and record["data"] == str(one_file)
    assert record["data_carved"] == ["test", "validation"]
    fresh = RunStore(tmp_path / "fresh")
    assert fresh.register_folder(out).config["data"] == listed.config["data"]
    # the run's own data file: its test split alone is scored, the file read with the run's draw (not said to have
    # changed since, and its 200 other rows scored, as a read without the draw would)
    assert main(["evaluate", "--run", str(out), "--data", str(one_file), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows"] == len(load_data(one_file).test) < 240
    assert "which held its few-shot draw of training and validation rows" in captured.err
    assert "changed" not in captured.err


def test_a_rerun_reads_the_runs_draw_again(data_dir, tmp_path: Path) -> None:
    from clm_explore import rerun

    out = tmp_path / "few"
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--shots", "2",
                 "--out", str(out)]) == 0
    again = rerun(out, tmp_path / "again", data=data_dir, progress=False)
    record = json.loads((Path(again.out_dir) / "clm_run.json").read_text())
    assert record["data_digest"] == json.loads((out / "clm_run.json").read_text())["data_digest"]
    assert record["data_config"]["shots"] == 2


def test_the_apps_key_names_the_draw_and_keys_of_every_row_are_as_before() -> None:
    every = DataChoice("sample", "/x", "banking77_20")
    drawn = DataChoice("sample", "/x", "banking77_20", shots=10, shots_seed=2)
    assert every.key == "sample:banking77_20:None:None:"  # keys earlier runs recorded
    assert drawn.key != every.key and data_key_name(drawn.key) == "banking77_20, 10 rows of each label (draw 2)"
    assert drawn.shown == "banking77_20, 10 rows of each label (draw 2)" and every.shown == "banking77_20"
    upload = DataChoice("upload", "/x", "a:b.csv", "utterance", None, "abcdef123456789", shots=1)
    assert data_key_name(upload.key, columns=True) == ("a:b.csv (abcdef), text column utterance, 1 row of each label "
                                                        "(draw 0)")


def test_a_carve_share_of_any_size_keys_and_names_only_the_split_it_changed() -> None:
    """A validation share of 0.001% wrote a key with an exponent (1e-05) that no page could read back: the launch and
    the Runs and Compare pages raised. A data set's own test split was named "test 20% of train"."""
    tiny = DataChoice("sample", "/x", "banking77_20", validation_fraction=1e-05)
    assert ":carve-0.00001-0.2" in tiny.key and data_key_name(tiny.key) == "banking77_20, validation 0.001% of train"
    none = DataChoice("upload", "/x", "u.csv", digest="abcdef12", validation_fraction=0.0, shots=2, shots_seed=3)
    assert data_key_name(none.key) == "u.csv (abcdef), validation 0% of train, 2 rows of each label (draw 3)"
    assert data_key_name("sample:banking77_20:None:None::carve-1..2-0.2") == (
        "sample:banking77_20:None:None::carve-1..2-0.2")  # a key edited by hand is named as it stands


def test_a_grid_draws_with_its_own_options_and_a_seed_without_shots_is_refused(data_dir, tmp_path, capsys) -> None:
    from clm_explore.bench import BenchConfig, BenchError, run_grid

    with pytest.raises(BenchError, match="run_grid draws its rows with BenchConfig"):
        run_grid(data_dir, BenchConfig(methods=("head",), seeds=1), tmp_path / "grid", DataConfig(shots=3))
    assert not (tmp_path / "grid").exists()
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--data-seed", "2"]) == 2
    assert "--data-seed 2 seeds the rows --shots draws" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the data report reads every row: no draw to hide the data's problems behind
        main(["validate", str(data_dir), "--shots", "3"])


def test_a_notebook_tells_draws_apart_and_trains_a_dataframe_run_again(tiny_data, tmp_path: Path) -> None:
    """The notebook review: two draws printed alike, RunStore().table() named neither data nor model, rerun refused a
    run made from a DataFrame (blaming "an upload in the app") and took shots= as a FinetuneConfig field."""
    import pandas as pd

    from clm_explore import FinetuneConfig, evaluate, finetune, rerun

    frame = pd.concat([tiny_data.train, tiny_data.validation, tiny_data.test])
    drawn = load_data(frame, shots=2, shots_seed=1)
    assert repr(drawn).endswith("4 labels, 2 rows of each label (draw 1))") and "draw" not in repr(load_data(frame))
    cfg = FinetuneConfig(method="head", epochs=1, max_length=16, device="cpu")
    run = finetune(drawn, cfg, tmp_path / "run", source="tiny-random", progress=False)
    RunStore().register_folder(run.out_dir)  # as the README's notebook lists a run in the app
    table = RunStore().table()
    assert table.loc[0, "data"] == "DataFrame, 2 rows of each label (draw 1)" and table.loc[0, "model"] == "tiny-random"
    again = rerun(run, tmp_path / "again", data=frame, progress=False)
    assert json.loads((Path(again.out_dir) / "clm_run.json").read_text())["data_digest"] == data_digest(drawn)
    with pytest.raises(ConfigError, match="shots would read other rows .* a new run"):
        rerun(run, tmp_path / "other", data=frame, shots=3)
    scored = evaluate(run, frame)  # its own rows: the test split alone, and the note kept where a notebook sees it
    assert len(scored.predictions) == len(drawn.test) and any("its test split" in n for n in scored.notes)
    assert repr(scored).endswith(f"{len(scored.notes)} in .notes)")


def test_a_collapsed_run_says_so_in_its_repr() -> None:
    from clm_explore.training import FinetuneResult

    said = repr(FinetuneResult("succeeded", {"accuracy": 0.05, "collapse_note": "every test row was ..."}, Path("r")))
    assert "collapsed to one label: .metrics['collapse_note']" in said
    assert "collapsed" not in repr(FinetuneResult("succeeded", {"accuracy": 0.9}, Path("r")))


def test_select_mask_says_a_folder_is_missing_or_a_run_keeps_no_scores(data_dir, tmp_path: Path) -> None:
    from clm_explore import select_mask

    with pytest.raises(ConfigError, match="does not exist: select_mask reads a scores folder"):
        select_mask(tmp_path / "sprse", budget=0.01)
    assert main(["finetune", "--data", str(data_dir), *TINY, *FAST, "--method", "head", "--out",
                 str(tmp_path / "head")]) == 0
    with pytest.raises(ConfigError, match="is a head run, which holds no row scores"):
        select_mask(tmp_path / "head", budget=0.01)
