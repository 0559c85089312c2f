"""The notebook surface: every name ``clm_explore`` exports resolves to the object its module defines."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd

import clm_explore


def test_every_public_name_resolves_to_its_module_object():
    for name in clm_explore.__all__:
        module = importlib.import_module(clm_explore._EXPORTS[name])
        assert getattr(clm_explore, name) is getattr(module, name), name


def test_a_type_checker_sees_every_exported_name_from_its_module():
    """The packaging review: the lazy exports were Any to a type checker; the TYPE_CHECKING block names them."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(clm_explore.__file__).read_text())
    [block] = [node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"]
    seen = {alias.name: node.module for node in block.body for alias in node.names}
    assert seen == clm_explore._EXPORTS
    assert all(alias.asname == alias.name for node in block.body for alias in node.names)  # re-exported as named


def test_predict_takes_one_string_a_result_or_no_text(tiny_data, tmp_path):
    from dataclasses import replace

    import pytest

    result = clm_explore.finetune(tiny_data, replace(clm_explore.FinetuneConfig(method="head"), epochs=1),
                                  tmp_path / "run", source="tiny-random")
    one = clm_explore.predict(result, "my card has not arrived")  # the FinetuneResult, one string: one row
    assert one.shape == (1, len(tiny_data.labels)) and list(one.index) == ["my card has not arrived"]
    assert one.equals(clm_explore.predict(tmp_path / "run", ["my card has not arrived"]))
    none = clm_explore.predict(result, [])
    assert none.shape == (0, len(tiny_data.labels)) and list(none.columns) == list(one.columns)
    with pytest.raises(TypeError, match=r"texts\[1\] is float"):
        clm_explore.predict(result, ["fine", float("nan")])


def test_the_natural_calls_work_and_plain_mistakes_say_what_to_do(tiny_data, data_dir, tmp_path):
    from dataclasses import replace

    import pytest

    from clm_explore.config import ConfigError
    from clm_explore.data import DataError

    head = replace(clm_explore.FinetuneConfig(method="head"), epochs=1)
    runs = [clm_explore.finetune(data_dir, replace(head, seed=s), tmp_path / f"run{s}", source="tiny-random")
            for s in range(2)]  # a data folder's path is read as load_data reads it
    by_result = clm_explore.compare_run_groups(runs[:1], runs[1:])
    by_folder = clm_explore.compare_run_groups([tmp_path / "run0"], [str(tmp_path / "run1")])
    assert not by_result.empty and by_result.equals(by_folder)
    assert by_result.equals(clm_explore.compare_run_groups([runs[0].metrics], [runs[1].metrics]))
    with pytest.raises(ValueError, match="no finished run's metrics"):
        clm_explore.compare_run_groups([tmp_path], runs[1:])
    with pytest.raises(TypeError, match=r"two lists of runs .*got str: wrap a single run in a list"):
        clm_explore.compare_run_groups(str(tmp_path / "run0"), runs[1:])  # its characters were read as runs
    with pytest.raises(TypeError, match="got FinetuneResult: wrap a single run"):
        clm_explore.compare_run_groups(runs[0], runs[1:])
    assert by_result.equals(clm_explore.compare_run_groups(pd.Series([tmp_path / "run0"]), (r for r in runs[1:])))
    assert clm_explore.load_data(type("P", (), {"__fspath__": lambda self: str(data_dir)})()).labels  # os.PathLike
    with pytest.raises(TypeError, match="got the string 'abc'"):
        clm_explore.load_model("tiny-random", "abc")  # made three labels, a, b and c
    with pytest.raises(DataError, match="got Series"):
        clm_explore.load_data(tiny_data.train["text"])
    frame = pd.concat([tiny_data.train] * 2, ignore_index=True)  # a DataFrame goes where a data path goes
    from_frame = clm_explore.finetune(frame, head, tmp_path / "frame", source="tiny-random")
    assert from_frame.status == "succeeded" and from_frame.metrics["labels"] == tiny_data.labels
    loaded = clm_explore.load_model("tiny-random", tiny_data.labels)
    with pytest.raises(TypeError, match="source is a model name or folder"):
        clm_explore.finetune(tiny_data, head, tmp_path / "x", source=loaded)
    unlabelled = clm_explore.load_model("tiny-random")  # labels left out: a head of another size
    with pytest.raises(ConfigError, match=r"head has 2 labels .*the data has 4.*load_model\(source, data.labels\)"):
        clm_explore.compute_sensitivity(unlabelled, tiny_data, None, clm_explore.SensitivityConfig(restriction="none"))
    report = clm_explore.compute_sensitivity(loaded, tiny_data, None, clm_explore.SensitivityConfig(
        restriction="none", warmup_epochs=0, calibration_rows=16), device="cpu")
    assert clm_explore.select_mask(report, np.float64(0.05)).masks.keys() == \
        clm_explore.select_mask(report, clm_explore.MaskConfig(budget=0.05)).masks.keys()


def test_results_print_a_short_summary_in_a_notebook(tiny_data, tmp_path):
    from dataclasses import replace

    loaded = clm_explore.load_model("tiny-random", tiny_data.labels)
    assert repr(loaded).startswith("LoadedModel('tiny-random': BertForSequenceClassification,") and "4 labels" in repr(loaded)
    report = clm_explore.compute_sensitivity(loaded, tiny_data, None, clm_explore.SensitivityConfig(
        restriction="none", warmup_epochs=0, calibration_rows=16), device="cpu")
    selection = clm_explore.select_mask(report, 0.05)
    result = clm_explore.finetune(tiny_data, replace(clm_explore.FinetuneConfig(method="head"), epochs=1),
                                  tmp_path / "run", source="tiny-random")
    tokens = clm_explore.mine_task_tokens(tiny_data.train["text"], tiny_data.train["label"], loaded.tokenizer)
    assert len(tokens) == len(list(tokens)) > 0 and tokens[0] is tokens.groups[0]
    study = clm_explore.case_study(result.out_dir, result.out_dir, cfg=clm_explore.AttributionConfig(n_steps=2),
                                   max_rows=3)
    record = clm_explore.RunStore(tmp_path / "store").register_folder(result.out_dir)
    for shown, words in [(report, "matrices over 2 layers"), (selection, "rows of"), (result, "succeeded, accuracy"),
                         (tokens, f"TaskTokens({len(tokens)} groups from"), (study, "CaseStudy(run vs run: 3 of"),
                         (study.a, "RunAttributions(run: 3 of"), (study.comparison, "Comparison(agreement 100.0%"),
                         (record, "head, succeeded, accuracy"),
                         (clm_explore.data_report(tiny_data), f"rows (train {len(tiny_data.train)},")]:
        assert words in repr(shown) and len(repr(shown)) < 300 and "tensor" not in repr(shown), repr(shown)


def test_data_comes_in_from_dataframes_with_the_files_checks(tiny_data):
    import pandas as pd
    import pytest

    from clm_explore.data import DataError

    frame = tiny_data.train.rename(columns={"text": "utterance", "label": "intent"})
    data = clm_explore.load_data(frame)  # one table: its columns found, validation and test carved
    assert data.labels == tiny_data.labels and len(data.train) + len(data.validation) + len(data.test) == len(frame)
    assert any("carved" in note for note in data.notes) and "in memory" not in repr(data)
    split = clm_explore.load_data({"train": tiny_data.train, "dev": tiny_data.validation, "test": tiny_data.test})
    assert split.validation.equals(tiny_data.validation.reset_index(drop=True).astype(str))
    with pytest.raises(DataError, match="'train' one"):
        clm_explore.load_data({"test": tiny_data.test})
    spaced = frame.assign(intent=[label + " " * (i % 2) for i, label in enumerate(frame["intent"])])
    assert clm_explore.load_data(spaced).labels == tiny_data.labels  # one label, with a note that says so
    assert any("differ only in surrounding spaces" in note and repr(tiny_data.labels[0]) in note
               for note in clm_explore.load_data(spaced).notes)
    with pytest.raises(DataError, match="must be a DataFrame with 'text' and 'label' columns"):
        clm_explore.AnnotatedData(frame, frame, frame, tiny_data.labels)
    with pytest.raises(DataError, match="needs training rows and their labels"):
        clm_explore.AnnotatedData(tiny_data.train, tiny_data.validation, tiny_data.test, [])
    with pytest.raises(DataError, match="empty"):
        clm_explore.load_data(pd.DataFrame({"text": ["a", ""], "label": ["x", "y"]}))


def test_a_run_leaves_the_notebooks_random_state_and_transformers_logging_as_they_were(tiny_data, tmp_path):
    import numpy as np
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    try:
        torch.manual_seed(123)
        np.random.seed(123)
        expected = torch.rand(3), np.random.rand(3)
        torch.manual_seed(123)
        np.random.seed(123)
        cfg = clm_explore.FinetuneConfig(method="head", epochs=1)
        clm_explore.finetune(tiny_data, cfg, tmp_path / "run", source="tiny-random")  # seeds both for its own draws
        assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
        # Reading a run reseeded torch's generator at the run's seed (the API review): a notebook interleaving
        # predictions with its own draws repeated the same draws after every call.
        torch.manual_seed(123)
        clm_explore.load_run(tmp_path / "run")
        clm_explore.predict(tmp_path / "run", "my card")
        clm_explore.load_model("tiny-random", tiny_data.labels, seed=5)
        assert torch.equal(torch.rand(3), expected[0])
        assert hf_logging.get_verbosity() == hf_logging.WARNING and hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def test_a_finetune_called_without_callbacks_shows_a_progress_bar_and_one_with_them_does_not(tiny_data, tmp_path,
                                                                                              capsys):
    cfg = clm_explore.FinetuneConfig(method="sparse", epochs=2, batch_size=8)
    result = clm_explore.finetune(tiny_data, cfg, tmp_path / "bar", source="tiny-random")  # minutes of silence before
    shown = capsys.readouterr().err
    steps = 2 * -(-len(tiny_data.train) // 8)
    assert "training: 100%" in shown and f"{steps}/{steps}" in shown and "loss=" in shown
    assert "validation acc=" in shown and "scoring rows" in shown  # the preparation's phases have bars too
    history = result.history()  # per step, and each epoch's end again with its validation accuracy
    assert len(history) == steps + 2 and history["step"].max() == steps and history["loss"].notna().all()
    ends = history[history["eval_accuracy"].notna()]
    assert ends["epoch"].tolist() == [1, 2] and set(ends["eval_split"]) == {"validation"}
    assert ends["eval_accuracy"].tolist() == [p["accuracy"] for p in result.metrics["val_curve"]]
    seen: list[int] = []
    clm_explore.finetune(tiny_data, cfg, tmp_path / "callback", source="tiny-random", on_step=lambda s: seen.append(s.step))
    clm_explore.finetune(tiny_data, cfg, tmp_path / "off", source="tiny-random", progress=False)
    assert seen and "training" not in capsys.readouterr().err  # the caller draws its own (the CLI, the app)


def test_a_wrong_argument_to_a_step_is_named_and_the_natural_stand_ins_are_taken(tiny_data, tmp_path):
    import pytest

    from clm_explore.attribution import TokenAttribution

    loaded = clm_explore.load_model("tiny-random", tiny_data)  # the data itself: "AnnotatedData has no len()"
    assert loaded.model.config.id2label == dict(enumerate(tiny_data.labels))
    groups = clm_explore.mine_task_tokens(tiny_data.train.text, tiny_data.train.label, loaded)  # not callable
    assert groups.to_frame().equals(clm_explore.mine_task_tokens(tiny_data.train.text, tiny_data.train.label,
                                                                 loaded.tokenizer).to_frame())
    with pytest.raises(TypeError, match=r"compute_sensitivity: loaded is what load_model\(source, data.labels\) "
                       "returns; got str"):  # "'str' object has no attribute 'model'"
        clm_explore.compute_sensitivity("tiny-random", tiny_data, groups)
    with pytest.raises(TypeError, match=r"data is what load_data\(path\) returns; got str"):
        clm_explore.compute_sensitivity(loaded, "sample_data/banking77_20", groups)
    with pytest.raises(TypeError, match="task_tokens is what mine_task_tokens"):
        clm_explore.compute_sensitivity(loaded, tiny_data, groups.to_frame())
    report = clm_explore.compute_sensitivity(loaded, tiny_data, groups)
    selection = clm_explore.select_mask(report, 0.05)
    with pytest.raises(TypeError, match="select_mask takes the SensitivityReport .* got MaskSelection"):
        clm_explore.select_mask(selection, 0.01)
    result = clm_explore.finetune(tiny_data, clm_explore.FinetuneConfig(method="head", epochs=1), tmp_path / "run",
                                  source="tiny-random", progress=False)
    record = clm_explore.RunStore(tmp_path / "registry").register_folder(tmp_path / "run")
    assert clm_explore.predict(record, "my card").equals(clm_explore.predict(result, "my card"))  # pathlib's TypeError
    with pytest.raises(TypeError, match="texts is one string or a list of strings; got int 123"):
        clm_explore.predict(result, 123)
    with pytest.raises(TypeError, match="a run is its folder, a run id .* got BertForSequenceClassification"):
        clm_explore.predict(loaded.model, "my card")
    run = clm_explore.load_run(result)  # a run loaded already: as explain takes it
    assert clm_explore.predict(run, "my card").equals(clm_explore.predict(result, "my card"))
    [explained] = clm_explore.explain(loaded.model, loaded.tokenizer, "my card has not arrived yet")
    assert isinstance(explained, TokenAttribution) and len(repr(explained)) < 160  # 528 characters a text before
    assert repr(explained).startswith(f"TokenAttribution({explained.target_label} p=")


def test_overwrite_keeps_the_earlier_run_when_the_new_one_is_refused_before_it_starts(tiny_data, tmp_path):
    import pytest

    from clm_explore.config import ConfigError
    from clm_explore.modeling import ModelSourceError

    cfg = clm_explore.FinetuneConfig(method="head", epochs=1)
    clm_explore.finetune(tiny_data, cfg, tmp_path / "run", source="tiny-random", progress=False)
    kept = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(ModelSourceError):  # a mistyped source emptied the folder first (failure review)
        clm_explore.finetune(tiny_data, cfg, tmp_path / "run", source="tiny-randm", overwrite=True, progress=False)
    with pytest.raises(ConfigError, match="buys no row"):
        clm_explore.finetune(tiny_data, clm_explore.FinetuneConfig(mask={"budget": 2}), tmp_path / "run",
                             source="tiny-random", overwrite=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == kept
    assert clm_explore.predict(tmp_path / "run", "my card").shape == (1, len(tiny_data.labels))


def test_a_run_id_works_where_a_run_folder_does_and_an_unfinished_run_is_named(tiny_data, tmp_path):
    from dataclasses import replace

    import pytest

    head = replace(clm_explore.FinetuneConfig(method="head"), epochs=1)
    done = clm_explore.finetune(tiny_data, head, tmp_path / "done", source="tiny-random")
    run_id = clm_explore.RunStore().register_folder(done.out_dir).id
    text = "my card has not arrived"
    assert clm_explore.predict(run_id, text).equals(clm_explore.predict(done, text))  # as the CLI's --run takes it
    assert clm_explore.load_run(run_id).model.config.id2label == clm_explore.load_run(done).model.config.id2label
    assert clm_explore.explain(run_id, text)[0].tokens == clm_explore.explain(done.out_dir, [text])[0].tokens
    assert repr(clm_explore.weight_changes(run_id)).startswith("WeightChanges(done: 0 of ")  # a probe moves no weight
    assert clm_explore.compare_run_groups([run_id], [done]).loc[0, "a_runs"] == 1
    stopped = clm_explore.finetune(tiny_data, head, tmp_path / "stopped", source="tiny-random",
                                   should_stop=lambda: True)
    assert stopped.status == "cancelled"
    for call in (lambda: clm_explore.predict(stopped, text), lambda: clm_explore.load_run(tmp_path / "stopped"),
                 lambda: clm_explore.weight_changes(stopped), lambda: clm_explore.case_study(stopped),
                 lambda: clm_explore.explain(stopped, text)):
        with pytest.raises(clm_explore.ModelSourceError, match=r"is not finished \(status cancelled\)"):
            call()
    for call in (lambda: clm_explore.case_study(tmp_path / "nope"), lambda: clm_explore.predict("nope-id", text)):
        with pytest.raises(clm_explore.ModelSourceError, match="does not exist .nor is it a run id"):
            call()
    with pytest.raises(ValueError, match="nope is neither a run folder nor a run id"):
        clm_explore.compare_run_groups([tmp_path / "nope"], [done])
    with pytest.raises(TypeError, match="pass cfg or target by name"):
        clm_explore.explain(done, text, clm_explore.AttributionConfig())


def test_data_without_test_rows_is_refused_before_training_and_load_data_takes_config_fields(tiny_data, tmp_path):
    import pytest

    twice = pd.DataFrame({"text": ["a b", "c d"] * 30, "label": ["x", "y"] * 30})  # two texts: no test carve
    with pytest.raises(clm_explore.DataError, match="has no test rows to score the run on .No test split was given"):
        clm_explore.finetune(twice, clm_explore.FinetuneConfig(method="head", epochs=1), tmp_path / "run",
                             source="tiny-random")
    assert not (tmp_path / "run").exists()
    renamed = tiny_data.train.rename(columns={"text": "utterance", "label": "intent"})
    loaded = clm_explore.load_data(renamed, text_col="utterance", label_col="intent")  # DataConfig's fields by name
    assert loaded.labels == tiny_data.labels
    assert clm_explore.load_data(renamed, clm_explore.DataConfig(text_col="x"), text_col="utterance",
                                 label_col="intent").labels == tiny_data.labels  # over the cfg's
    with pytest.raises(TypeError, match="load_data got textcol, which DataConfig does not have; its fields: text_col"):
        clm_explore.load_data(renamed, textcol="utterance")


def test_plain_mistakes_of_a_notebook_are_named(tiny_data, tmp_path):
    from dataclasses import replace

    import pytest

    with pytest.raises(ValueError, match=r"at least two label names .*got \[\]"):
        clm_explore.load_model("tiny-random", [])
    with pytest.raises(ValueError, match=r"at least two label names .*got \['a'\]"):
        clm_explore.load_model("tiny-random", ["a"])
    result = clm_explore.finetune(tiny_data, replace(clm_explore.FinetuneConfig(method="head"), epochs=1),
                                  tmp_path / "run", source="tiny-random", progress=False)
    with pytest.raises(ValueError, match="max_length is the sub-tokens read per text, 8 to 512"):
        clm_explore.predict(result, "my card", max_length=-3)
    with pytest.raises(ValueError, match="max_length is the sub-tokens read per text, 8 to 512"):
        clm_explore.predict(result, "my card", max_length=64.7)  # torch's TypeError before (the new-features review)
    assert len(clm_explore.predict(result, "my card", max_length=np.int64(32))) == 1  # a numpy count is a count
    # as the CLI refuses them (the long-text review: 1 read silently, 600 raised torch's "expanded size" error)
    with pytest.raises(clm_explore.ConfigError, match=r"max_length 1 must be in 8\.\.512"):
        clm_explore.predict(result, "my card", max_length=1)
    with pytest.raises(clm_explore.ConfigError, match="max_length 200 is above the 128 positions a text may take"):
        clm_explore.predict(result, "my card", max_length=200)
    (tmp_path / "train.csv").write_text("text,label\na,b\n")
    with pytest.raises(ValueError, match="train.csv is not a file of mined groups"):
        clm_explore.TaskTokens.load(tmp_path / "train.csv")


def test_explain_takes_the_texts_by_name_and_predict_refuses_an_untrained_head(tiny_data, tmp_path):
    from dataclasses import replace

    import pytest

    result = clm_explore.finetune(tiny_data, replace(clm_explore.FinetuneConfig(method="head"), epochs=1),
                                  tmp_path / "run", source="tiny-random", progress=False)
    assert clm_explore.explain(result, texts=["my card"])[0].tokens == clm_explore.explain(result, "my card")[0].tokens
    with pytest.raises(clm_explore.ModelSourceError, match="is not a finetuned run"):
        clm_explore.predict(clm_explore.load_model("tiny-random"), "my card")  # LABEL_0, LABEL_1: never trained
    with pytest.raises(clm_explore.ModelSourceError, match="is not a finetuned run"):  # as predict (the API review)
        clm_explore.explain(clm_explore.load_model("tiny-random"), "my card")
    with pytest.raises(clm_explore.AttributionError, match=r"texts\[1\] is empty: it has no words"):
        clm_explore.explain(result, ["my card", " "])
    (tmp_path / "some-id").write_text("not a run")  # a file named like a run id is no run folder
    with pytest.raises(clm_explore.ModelSourceError, match="does not exist .nor is it a run id"):
        clm_explore.predict(str(tmp_path / "some-id"), "my card")


def test_a_notebooks_natural_stand_ins_are_read_or_refused_by_name(tiny_data, data_dir, tmp_path):
    import pytest

    from clm_explore.attribution import TokenAttribution

    loaded = clm_explore.load_model("tiny-random", tiny_data.train.label.drop_duplicates())  # a Series: ambiguous
    assert list(loaded.model.config.id2label.values()) == list(tiny_data.train.label.drop_duplicates())
    with pytest.raises(TypeError, match="got set, which has no order"):
        clm_explore.load_model("tiny-random", set(tiny_data.labels))
    with pytest.raises(TypeError, match="two lists of the same length; got a single string"):
        clm_explore.mine_task_tokens("my card has not arrived", "card_arrival", loaded.tokenizer)
    groups = clm_explore.mine_task_tokens(tiny_data.train.text, tiny_data.train.label, loaded,
                                          {"top_k": 5})  # every config argument takes a dict of its fields
    assert len(groups.groups) <= 5
    with pytest.raises(IsADirectoryError, match="is a folder; TaskTokens.save writes one JSON file"):
        groups.save(tmp_path)
    with pytest.raises(TypeError, match="data_report takes what load_data returns"):
        clm_explore.data_report(str(data_dir))
    run = clm_explore.finetune(tiny_data, clm_explore.FinetuneConfig(method="sparse", epochs=1, mask={"budget": 0.05}),
                               tmp_path / "run", source="tiny-random", progress=False)
    # a run folder (its sensitivity/) or the path of its scores: another budget without a model pass
    by_folder = clm_explore.select_mask(tmp_path / "run", budget=0.02)
    by_report = clm_explore.select_mask(clm_explore.SensitivityReport.load(tmp_path / "run" / "sensitivity"),
                                        {"budget": 0.02})
    assert by_folder.selected_params == by_report.selected_params > 0
    assert by_folder.selected_params < clm_explore.select_mask(str(tmp_path / "run"), 0.05).selected_params
    with pytest.raises(TypeError, match="got a DataFrame: pass its text column"):
        clm_explore.predict(run, pd.DataFrame({"text": ["my card", "a fee"]}))  # its column names were the texts
    with pytest.raises(clm_explore.LayerViewError, match="CKA needs at least 10 texts; got 1"):
        clm_explore.layer_similarity(run, texts="my card has not arrived")  # its 23 characters were 23 texts
    with pytest.raises(TypeError, match="head_attention reads one text .*got list: call it once per text"):
        clm_explore.head_attention(run, ["my card", "a fee"])
    [explained] = clm_explore.explain(run, "my card has not arrived", cfg={"n_steps": 8})
    assert TokenAttribution.from_dict(explained.to_record()) == explained  # explain --json's records read back
    assert TokenAttribution.from_dict(explained.to_dict()) == explained
    record = explained.to_record()  # the record's names read the same fields off the object
    assert [getattr(explained, k) for k in ("sub_tokens", "sub_token_scores", "target_id", "predicted_id")] == [
        record[k] for k in ("sub_tokens", "sub_token_scores", "target_id", "predicted_id")]
    for data in (tiny_data, data_dir):  # what build_report takes: the data, or its path (the test split is read)
        study = clm_explore.case_study(run, data=data, max_rows=2, progress=False)
        assert len(study.a.items) == 2 and study.from_data
    with pytest.raises(ValueError, match=r"a fraction in \(0, 1\) \(0.95 for 95%\); got 95"):
        clm_explore.compare_run_groups([run], [run], level=95)
    with pytest.raises(ValueError, match="at least one run a group; got 0 and 1"):
        clm_explore.compare_run_groups([], [run])
    with pytest.raises(TypeError, match="run_grid takes the data's file or folder"):
        clm_explore.run_grid(tiny_data.train, clm_explore.BenchConfig(methods=("head",)), tmp_path / "bench")
    renamed = tiny_data.train.rename(columns={"text": "utterance"})
    assert len(clm_explore.load_data(renamed, {"text_col": "utterance"}).train) > 0  # a dict for DataConfig too
    by_dict = clm_explore.finetune(tiny_data, {"method": "head", "epochs": 1}, tmp_path / "by-dict", source="tiny-random",
                                   progress=False)  # and for FinetuneConfig
    assert by_dict.status == "succeeded" and by_dict.metrics["method"] == "head"
    assert repr(clm_explore.RunStore(tmp_path / "registry")) == f"RunStore({str((tmp_path / 'registry').resolve())!r})"
    assert clm_explore.LabelAuditConfig(splits="train").splits == ("train",)


def test_overwrite_puts_the_earlier_run_back_when_the_new_one_is_cancelled_or_fails(tiny_data, tmp_path):
    import pytest

    cfg = clm_explore.FinetuneConfig(method="head", epochs=1)
    clm_explore.finetune(tiny_data, cfg, tmp_path / "run", source="tiny-random", progress=False)
    files = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with pytest.warns(UserWarning, match="this run did not succeed: the earlier run in .* was put back"):
        cancelled = clm_explore.finetune(tiny_data, cfg, tmp_path / "run", source="tiny-random", overwrite=True,
                                         progress=False, should_stop=lambda: True)
    assert cancelled.status == "cancelled"
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == files  # was lost

    def fail(step):
        raise RuntimeError("the disk is full")

    with pytest.raises(RuntimeError, match="the disk is full"), pytest.warns(UserWarning, match="was put back"):
        clm_explore.finetune(tiny_data, cfg, tmp_path / "run", source="tiny-random", overwrite=True, on_step=fail)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == files
    assert not list(tmp_path.glob(".replaced-*"))  # nothing left beside it
    replaced = clm_explore.finetune(tiny_data, clm_explore.FinetuneConfig(method="head", epochs=1, seed=1),
                                    tmp_path / "run", source="tiny-random", overwrite=True, progress=False)
    assert replaced.status == "succeeded" and json.loads((tmp_path / "run" / "metrics.json").read_text())["seed"] == 1
    assert not list(tmp_path.glob(".replaced-*"))


def test_predict_takes_a_loaded_run_whose_labels_are_named_like_placeholders(tmp_path):
    """The data review: data exported from a Hugging Face pipeline names its labels LABEL_0, LABEL_1; the run trained
    on it predicted by its folder but was refused once loaded ("is not a finetuned run")."""
    import pandas as pd

    texts = [f"card number {i} arrived late" for i in range(10)] + [f"loan rate {i} went up" for i in range(10)]
    frame = pd.DataFrame({"text": texts, "label": ["LABEL_0"] * 10 + ["LABEL_1"] * 10})
    result = clm_explore.finetune(frame, {"method": "head", "epochs": 1}, tmp_path / "run", source="tiny-random",
                                  progress=False)
    by_folder = clm_explore.predict(result, ["my card", "the loan"])
    loaded = clm_explore.predict(clm_explore.load_run(tmp_path / "run"), ["my card", "the loan"])
    assert list(loaded.columns) == ["LABEL_0", "LABEL_1"] and loaded.values.tolist() == by_folder.values.tolist()


def test_evaluate_scores_a_run_on_labelled_rows_as_its_own_test_was_scored(tiny_data, data_dir, tmp_path):
    """The API review: predict gave probabilities only, and nothing scored a run on a new labelled set."""
    import pandas as pd
    import pytest

    result = clm_explore.finetune(tiny_data, clm_explore.FinetuneConfig(method="head", epochs=1), tmp_path / "run",
                                  source="tiny-random", progress=False)
    own = clm_explore.evaluate(result, tiny_data)  # its test split: the figures metrics.json holds
    assert own.accuracy == result.metrics["accuracy"] and own.macro_f1 == result.metrics["macro_f1"]
    assert own.metrics["confusion"] == result.metrics["confusion"]
    saved = pd.read_csv(tmp_path / "run" / "predictions.csv", keep_default_na=False)
    assert own.predictions["pred"].tolist() == saved["pred"].tolist()
    for source in (data_dir, data_dir / "test.csv", tiny_data.test):  # a folder's test file, a file, a DataFrame
        assert clm_explore.evaluate(tmp_path / "run", source).accuracy == own.accuracy
    renamed = tiny_data.test.rename(columns={"text": "utterance", "label": "intent"}).head(6)
    renamed.loc[0, "intent"] = "a label never trained"
    new = clm_explore.evaluate(tmp_path / "run", renamed, text_col="utterance", label_col="intent")
    assert new.unseen_labels == ["a label never trained"] and len(new.predictions) == 6
    assert not new.predictions.loc[0, "correct"] and new.metrics["confusion_unseen"]
    table = new.to_frame()
    assert table["rows"].sum() == 6 and table.iloc[-1]["label"] == "a label never trained"
    assert table["f1"].dropna().is_monotonic_increasing  # where the run struggles first
    assert "6 rows" in repr(new) and "1 label(s) the run was not trained on" in repr(new)
    with pytest.raises(clm_explore.DataError, match="None of the data's labels .* is one of the run's"):
        clm_explore.evaluate(tmp_path / "run", renamed.assign(intent="x"), text_col="utterance", label_col="intent")
    from dataclasses import replace

    with pytest.raises(clm_explore.DataError, match="The data holds no rows to evaluate on"):  # not "no label known"
        clm_explore.evaluate(tmp_path / "run", replace(tiny_data, test=tiny_data.test.head(0)))
    (data_dir / "test.csv").unlink()
    with pytest.raises(clm_explore.DataError, match="has no test file to evaluate on"):
        clm_explore.evaluate(tmp_path / "run", data_dir)


def test_compute_sensitivity_shows_a_bar_unless_a_listener_or_progress_false_says_otherwise(tiny_data, capsys):
    """The API review: scoring 4,096 rows is minutes with no output in a notebook."""
    loaded = clm_explore.load_model("tiny-random", tiny_data.labels)
    cfg = clm_explore.SensitivityConfig(calibration_rows=40, restriction="none", batch_size=8)
    clm_explore.compute_sensitivity(loaded, tiny_data, None, cfg)
    assert "scoring rows" in capsys.readouterr().err
    seen: list[tuple[int, int]] = []
    clm_explore.compute_sensitivity(loaded, tiny_data, None, cfg, on_progress=lambda *a: seen.append(a))
    clm_explore.compute_sensitivity(loaded, tiny_data, None, cfg, progress=False)
    assert "scoring rows" not in capsys.readouterr().err and seen[-1][0] == seen[-1][1] == 5


def test_a_run_of_a_method_this_version_does_not_know_is_loaded_with_a_warning(tiny_data, tmp_path):
    """A newer version's method may keep trained parts outside the model folder (as prefix tuning keeps adapter/):
    loading it as a plain model says so, where it was read without a word (the upgrade review)."""
    import json
    import warnings

    import pytest

    import clm_explore
    from clm_explore.runs import unknown_method_note

    clm_explore.finetune(tiny_data, clm_explore.FinetuneConfig(method="head", epochs=1), tmp_path / "run",
                         source="tiny-random", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known method: no warning
        clm_explore.load_run(tmp_path / "run")
    record_path = tmp_path / "run" / "clm_run.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "method": "dora"}))
    with pytest.warns(UserWarning, match="method 'dora', which this version of clm-explore does not know"):
        clm_explore.load_run(tmp_path / "run")
    record_path.write_text(json.dumps({**record, "method": "<b>x</b>"}))  # anyone's text: named as the registry does
    assert "method '?'" in unknown_method_note(tmp_path / "run")
