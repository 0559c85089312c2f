"""AppTest over every page with the tiny random model and the bundled sample data.

Jobs run inline (CLM_EXPLORE_INLINE_JOBS=1), so a launched run finishes inside the script run.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import io
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from clm_explore.data import DataError, load_data
from clm_explore.runs import RunStatus, RunStore, RunStoreError
from clm_explore.ui import views
from clm_explore.ui.state import DataChoice, save_upload
from clm_explore.ui.views import escape_markdown
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "clm_explore" / "ui" / "app" / "app.py")
PAGES = [
    "app_pages/2_tokens.py",
    "app_pages/3_sensitivity.py",
    "app_pages/4_budget.py",
    "app_pages/5_finetune.py",
    "app_pages/6_compare.py",
    "app_pages/7_runs.py",
]
TIMEOUT = 120


@pytest.fixture(autouse=True)
def _app_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_EXPLORE_MODEL", "tiny-random")
    monkeypatch.setenv("CLM_EXPLORE_INLINE_JOBS", "1")
    monkeypatch.setenv("CLM_EXPLORE_DEVICE", "cpu")


@pytest.fixture
def at() -> AppTest:
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    assert not app.exception, app.exception
    return app


def goto(app: AppTest, page: str) -> AppTest:
    app.switch_page(page)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def button(app: AppTest, label: str):
    return next(b for b in app.button if b.label == label)


def test_data_page_defaults_to_sample(at: AppTest) -> None:
    assert at.session_state["data_choice"].name == "banking77_20"
    assert at.title[0].value == "Data"
    assert any("banking77\\_20" in c.value for c in at.sidebar.caption)  # a data name is escaped Markdown
    assert any("**Model:** tiny\\-random \\(a 2\\-layer random BERT\\: runs score near chance\\)" in c.value
               for c in at.sidebar.caption)  # a demo's runs at chance are no fault of the method
    assert at.metric[0].label == "Rows" and int(at.metric[0].value) > 0


def test_the_data_page_points_to_the_next_steps_and_empty_pages_to_finetune(at: AppTest) -> None:
    assert [link.proto.page for link in at.get("page_link")] == ["tokens", "finetune"]
    for page in ("app_pages/6_compare.py", "app_pages/7_runs.py"):  # no run yet
        goto(at, page)
        assert [link.proto.page for link in at.get("page_link")] == ["finetune"]


def test_many_labels_are_drawn_as_a_bar_a_label_each_named(at: AppTest) -> None:
    def label_chart() -> dict:
        charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
        return next(c for c in charts if c["layout"]["title"]["text"] == "Rows per label")

    assert label_chart()["data"][0]["orientation"] == "v"  # the sample's 20 labels: upright
    at.radio(key="data_kind").set_value("shared").run(timeout=TIMEOUT)
    at.selectbox(key="data_shared").set_value("banking77").run(timeout=TIMEOUT)
    chart = label_chart()  # 77: squashed upright, every other name left out; now a row each, all named
    assert chart["data"][0]["orientation"] == "h" and chart["layout"]["yaxis"]["dtick"] == 1
    assert chart["layout"]["height"] >= 77 * 18


def test_data_page_says_how_many_texts_a_run_would_cut(at: AppTest) -> None:
    said = next(i.value for i in at.info if "sub-tokens a run reads" in i.value)  # the tiny tokenizer splits a lot
    longer = int(re.match(r"([\d,]+) of", said).group(1).replace(",", ""))
    assert longer > 0 and "only their start is used" in said and "set to **end** keeps their ends instead" in said
    at.session_state["ft_keep"] = "end"  # the Finetune form keeping long texts' ends
    at.run()
    said = next(i.value for i in at.info if "sub-tokens a run reads" in i.value)
    assert "only their end is used" in said and "keeps their ends instead" not in said
    at.session_state["ft_max_length"] = 128  # as the Finetune form would keep it
    at.run()
    fewer = [i.value for i in at.info if "sub-tokens a run reads" in i.value]
    assert not fewer or int(re.match(r"([\d,]+) of", fewer[0]).group(1).replace(",", "")) < longer
    assert fewer or any("Every text fits in the 128 sub-tokens" in c.value for c in at.caption)


def test_the_label_check_of_a_few_shot_draw_reads_every_row(at: AppTest) -> None:
    """Checked on the draw, a label's wrong rows would be looked for among 5 of its own, and the data downloaded with
    labels changed would hold the draw alone: every other row lost."""
    at.number_input(key="data_shots").set_value(5).run()
    # the report too: under the draw, the sample's leakage went unreported (the diff review); the draw is said beside
    assert at.metric[0].label == "Rows" and int(at.metric[0].value) == 2000
    assert "leakage" in " ".join(w.value for w in at.warning)
    assert any("trains on 100 of the 1,080 training rows" in i.value.replace("\\", "") for i in at.info)
    assert any("The check reads every row, not the few-shot draw" in c.value for c in at.caption)
    at.number_input(key="data_shots").set_value(1).run()  # too few to train: said in the box's name, the draw kept
    assert any("Training rows of each label 1 leaves 20 training rows" in e.value.replace("\\", "") for e in at.error)
    assert at.session_state["data_choice"].shots == 5
    at.number_input(key="data_shots").set_value(5).run()
    button(at, "Check the labels").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert int({m.label: m.value for m in at.metric}["Rows checked"]) == 2000


def test_data_page_checks_the_labels_on_request_and_keeps_the_result(at: AppTest) -> None:
    assert not any(m.label == "Rows flagged" for m in at.metric)  # a model pass only when asked
    button(at, "Check the labels").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.get("progress")  # the audit's bar is gone once it is done
    shown = {m.label: m.value for m in at.metric}
    flagged = int(shown["Rows flagged"])  # the tiny random model's features dispute many labels
    assert int(shown["Rows checked"]) == 2000 and flagged > 0
    table = next(d.value for d in at.dataframe if "suggested" in d.value.columns)  # the editor: a dataframe here
    # The text beside its labels (the accessibility review: last, it sat off screen and out of the screen reader's
    # table); probabilities rounded, as that table reads values, not formats.
    assert len(table) == flagged and list(table.columns[:4]) == ["accept", "label", "suggested", "text"]
    assert (table["label_prob"] == table["label_prob"].round(3)).all()
    assert any(f"disputes the labels of {flagged:,} of 2,000 rows" in i.value for i in at.info)  # an alert screen readers announce
    downloads = [b.proto.label for b in at.get("download_button")]
    assert "Download the flagged rows (CSV)" in downloads and not any("changed" in d for d in downloads)
    # Two suggestions accepted (as the editor's boxes record them): the data with them, to download.
    at.session_state["data_issues"] = {"edited_rows": {"0": {"accept": True}, "2": {"accept": True}},
                                       "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Download the data with 2 label(s) changed" in [
        b.proto.label for b in at.get("download_button")]
    goto(at, "app_pages/2_tokens.py")
    goto(at, "app_pages/1_data.py")  # still shown after another page, from the cache
    assert {m.label: m.value for m in at.metric}["Rows flagged"] == shown["Rows flagged"]
    # ... and worked on here: the same splits, as this session's upload, with the two labels changed.
    original = at.session_state["data_choice"]
    at.session_state["data_issues"] = {"edited_rows": {"0": {"accept": True}, "2": {"accept": True}},
                                       "added_rows": [], "deleted_rows": []}
    at.run()
    button(at, "Work on the data with 2 label(s) changed").click().run(timeout=TIMEOUT)
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    choice = at.session_state["data_choice"]
    assert (choice.kind, choice.name) == ("upload", "banking77_20-relabelled.csv")
    assert at.radio(key="data_kind").value == "upload"
    before, after = load_data(original.path), load_data(choice.path)
    for split in ("train", "validation", "test"):
        assert after.split(split)["text"].tolist() == before.split(split)["text"].tolist(), split
    changed = [(split, row, label) for split in ("train", "validation", "test")
               for row, (label, was) in enumerate(zip(after.split(split)["label"], before.split(split)["label"],
                                                      strict=True)) if label != was]
    assert set(changed) == {(table.iloc[i]["split"], int(table.iloc[i]["row"]), table.iloc[i]["suggested"])
                            for i in (0, 2)}


def test_a_failed_label_audit_is_kept_for_every_session_until_a_click_tries_again(monkeypatch) -> None:
    from clm_explore.label_issues import TooFewRowsError, find_label_issues
    from clm_explore.ui import cache

    cache._audits.clear()
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise TooFewRowsError("too few rows per label for the folds")
        return find_label_issues(*args, **kwargs)

    monkeypatch.setattr(cache, "find_label_issues", flaky)
    first, second = (AppTest.from_file(APP, default_timeout=TIMEOUT).run() for _ in range(2))
    button(first, "Check the labels").click().run(timeout=TIMEOUT)
    assert any("too few rows" in w.value for w in first.warning), [w.value for w in first.warning]
    # Another session that was following the same audit (its click came while the audit ran) reads its failure
    # too, rather than starting it again.
    from clm_explore.config import LabelAuditConfig

    second.session_state["audited"] = (second.session_state["data_choice"], "tiny-random", LabelAuditConfig())
    second.run()
    assert any("too few rows" in w.value for w in second.warning) and calls == [1]
    button(second, "Check the labels").click().run(timeout=TIMEOUT)  # a click tries again
    assert calls == [1, 1] and any(m.label == "Rows flagged" for m in second.metric)



def test_a_running_label_audit_can_be_stopped_for_every_session_sharing_it(monkeypatch) -> None:
    import time

    from clm_explore.ui import cache

    cache._audits.clear()
    monkeypatch.setenv("CLM_EXPLORE_INLINE_JOBS", "0")  # on a thread of its own, as on the server
    calls = []

    def endless(loaded, annotated, cfg, device=None, on_progress=None):
        calls.append(1)
        while True:
            on_progress("probing the folds", 1, 5)
            time.sleep(0.01)

    monkeypatch.setattr(cache, "find_label_issues", endless)
    first, second = (AppTest.from_file(APP, default_timeout=TIMEOUT).run() for _ in range(2))
    button(first, "Check the labels").click().run(timeout=TIMEOUT)
    button(second, "Check the labels").click().run(timeout=TIMEOUT)  # the same audit: shared, not started again
    task = cache._audits().get_or_start(cache._audit_key("tiny-random", first.session_state["data_choice"],
                                                         cache.LabelAuditConfig()), endless)
    assert not task.done and calls == [1]
    button(first, "Stop the check").click().run(timeout=TIMEOUT)
    assert task.finished.wait(10) and task.stopped
    said = [i.value for i in first.info if "label check" in i.value]  # the click's rerun may find it ended ...
    if not said:
        said = [i.value for i in first.run().info]  # ... else the fragment's rerun, once it ends
    assert any("was stopped" in i for i in said), said
    second.run()  # the other session following it reads that it stopped too
    assert not first.exception and not second.exception, [e.value for e in [*first.exception, *second.exception]]
    assert any("was stopped" in i.value for i in second.info), [i.value for i in second.info]
    for app in (first.run(), second.run()):  # shown once; neither starts it again
        assert not any(b.label == "Stop the check" for b in app.button)
        assert not any("was stopped" in i.value for i in app.info)
    assert calls == [1]
    button(second, "Check the labels").click().run(timeout=TIMEOUT)  # a click starts it again
    deadline = time.monotonic() + 10
    while calls == [1] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == [1, 1]
    cache.stop_audit(cache._audits().get_or_start(task.key, endless))  # let the thread go


ACCEPT_TWO = {"edited_rows": {"0": {"accept": True}, "2": {"accept": True}}, "added_rows": [], "deleted_rows": []}


def _accept_two_and_switch(app: AppTest) -> None:
    button(app, "Check the labels").click().run(timeout=TIMEOUT)
    app.session_state["data_issues"] = ACCEPT_TWO
    app.run()
    button(app, "Work on the data with 2 label(s) changed").click().run(timeout=TIMEOUT)


def _app_with_an_upload(name: str, raw: bytes) -> AppTest:
    """A new session that uploaded ``raw`` as ``name`` on the Data page."""
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    app.radio(key="data_kind").set_value("upload").run()
    app.file_uploader(key="data_upload").set_value((name, raw, "text/csv")).run(timeout=TIMEOUT)
    return app


def test_the_data_page_says_when_the_models_vocabulary_cannot_read_the_texts(at: AppTest) -> None:
    """The language review: a Chinese upload, 72% [UNK] to the default model, went on to near chance with no word."""
    assert not any("sub\\-tokens are" in w.value for w in at.warning)  # the sample: English, read
    rows = "text,label\n" + "".join(f"我想{'退款' if i % 2 else '开发票'}第{i}次,{'退款' if i % 2 else '发票'}\n"
                                     for i in range(40))
    app = _app_with_an_upload("zh.csv", rows.encode())
    assert not app.exception, [e.value for e in app.exception]
    said = [w.value for w in app.warning if "of the training texts' sub\\-tokens are \\[UNK\\]" in w.value]
    assert said and "multilingual" in said[0], [w.value for w in app.warning]


def test_the_accepted_labels_replace_an_upload_and_keep_it_on_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app_with_an_upload("mine.csv", (ROOT / "sample_data/banking77_20/train.csv").read_bytes())
    original = app.session_state["data_choice"]
    monkeypatch.setattr("clm_explore.ui.state.UPLOADS_KEPT", 1)  # room for one file: the original must stay
    _accept_two_and_switch(app)
    assert not app.exception and not app.error, [e.value for e in [*app.exception, *app.error]]
    app.run()  # the file box that still holds mine.csv does not select it again
    assert app.session_state["data_choice"].name == "mine-relabelled.csv"
    assert Path(original.path).is_file() and Path(app.session_state["data_choice"].path).is_file()


def test_another_source_does_not_replace_an_upload_until_picked_and_kept_uploads_can_be_picked_again() -> None:
    raw = (ROOT / "sample_data/banking77_20/train.csv").read_bytes()
    app = _app_with_an_upload("mine.csv", raw)
    mine = app.session_state["data_choice"]
    app.radio(key="data_kind").set_value("shared").run(timeout=TIMEOUT)
    assert app.session_state["data_choice"] == mine  # before: the first shared set took over at once (the UX review)
    assert "The other pages still use mine\\.csv." in [c.value for c in app.caption]
    app.radio(key="data_kind").set_value("upload").run(timeout=TIMEOUT)
    app.file_uploader(key="data_upload").set_value(("other.csv", raw.replace(b"card", b"kart"), "text/csv")).run(
        timeout=TIMEOUT)
    assert app.session_state["data_choice"].name == "other.csv"
    kept = app.selectbox(key="data_kept")
    assert [Path(p).name for p in kept.options] == ["mine.csv"]  # before: gone from the app, on the server still
    kept.set_value(kept.options[0]).run(timeout=TIMEOUT)
    app.run()  # the file box that held other.csv does not select it again
    assert not app.exception and app.session_state["data_choice"].path == mine.path
    assert any(c.value.startswith("Working on mine\\.csv, uploaded earlier") for c in app.caption)  # an empty box


def test_an_upload_with_unlabelled_rows_can_be_worked_on_without_them() -> None:
    rows = [f"text number {i} about {'cards' if i % 2 else 'money'},{('card' if i % 2 else 'cash') if i % 9 else ''}"
            for i in range(60)]
    app = _app_with_an_upload("gaps.csv", ("utterance,intent\n" + "\n".join(rows) + "\n").encode())
    assert any("7 row\\(s\\) have no label" in e.value for e in app.error), [e.value for e in app.error]
    button(app, "Work on the file without these 7 row(s)").click().run(timeout=TIMEOUT)  # before: no way on here
    app.run()  # the file box still holding gaps.csv does not select it again
    assert not app.exception and not app.error, [e.value for e in [*app.exception, *app.error]]
    choice = app.session_state["data_choice"]
    assert choice.name == "gaps-complete.csv"
    assert sum(len(load_data(choice.path).split(s)) for s in ("train", "validation", "test")) == 53


def test_no_room_for_the_accepted_labels_is_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_EXPLORE_UPLOADS_MB", "0.01")  # smaller than the sample's splits as one file
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    _accept_two_and_switch(app)
    assert not app.exception, [e.value for e in app.exception]
    assert any("room for uploads" in e.value for e in app.error)
    assert app.session_state["data_choice"].kind == "sample"  # still working on the sample


def test_every_page_renders(at: AppTest) -> None:
    titles = {"app_pages/2_tokens.py": "Task tokens", "app_pages/3_sensitivity.py": "Sensitivity",
              "app_pages/4_budget.py": "Budget", "app_pages/5_finetune.py": "Finetune",
              "app_pages/6_compare.py": "Compare runs", "app_pages/7_runs.py": "Runs", "app_pages/1_data.py": "Data"}
    assert set(titles) == {*PAGES, "app_pages/1_data.py"}  # a page added to PAGES is checked here too
    assert [t.value for t in at.title] == ["Data"] and not at.error, [e.value for e in at.error]  # the start page
    for page, title in titles.items():  # every page, then back to the first
        goto(at, page)
        assert [t.value for t in at.title] == [title], page
        assert not at.error, (page, [e.value for e in at.error])


def test_upload_via_library_path_and_column_mapping(tmp_path: Path) -> None:
    raw = b"utterance,intent\n" + b"".join(
        f"text number {i} about {'cards' if i % 2 else 'money'},{'card' if i % 2 else 'cash'}\n".encode()
        for i in range(60)
    )
    choice = save_upload(raw, "../../My Upload!.csv", folder=tmp_path / "session")
    assert Path(choice.path).parent == (tmp_path / "session").resolve() and choice.name == "My-Upload.csv"
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.session_state["data_choice"] = choice
    app.run()
    assert not app.exception and not app.error
    assert app.radio(key="data_kind").value == "upload"
    assert app.selectbox(key="data_text_col").options == ["(detect)", "utterance", "intent"]
    app.selectbox(key="data_text_col").set_value("utterance").run()
    app.selectbox(key="data_label_col").set_value("intent").run()
    assert not app.exception and not app.error
    assert app.session_state["data_choice"].label_col == "intent"


def test_an_upload_not_made_yet_says_which_data_the_other_pages_keep(at: AppTest) -> None:
    at.radio(key="data_kind").set_value("upload").run()
    assert "The other pages still use banking77\\_20." in [c.value for c in at.caption]


def test_bad_upload_shows_plain_error(tmp_path: Path) -> None:
    raw = b"a,b\n1,2\n"
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.session_state["data_choice"] = DataChoice(
        "upload", str(tmp_path / "bad.csv"), "bad.csv", digest=hashlib.sha256(raw).hexdigest()
    )
    (tmp_path / "bad.csv").write_bytes(raw)
    app.run()
    assert not app.exception
    assert app.error and "column" in app.error[0].value.lower()
    assert "--text-col" not in app.error[0].value  # the app's own control, not the command line's option
    assert "Text column box on the Data page" in app.error[0].value


def test_a_registry_that_cannot_be_used_leaves_the_data_pages_working(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app review: a read-only registry showed its refusal alone on every page, the Data page too."""
    from clm_explore.ui import jobs

    def unusable():
        raise RunStoreError("The run registry /srv/runs/registry.sqlite is read-only for this user.")

    monkeypatch.setattr(jobs, "job_queue", unusable)
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    assert not app.exception
    assert "only for this user" in app.warning[0].value and "runs cannot be launched or listed" in app.warning[0].value
    assert [m.label for m in app.metric][:2] == ["Rows", "Labels"]  # the Data page's report is drawn


def test_data_errors_name_the_apps_controls_not_command_line_options() -> None:
    from clm_explore.ui.views import data_error_text

    both = data_error_text("x.csv: the text and the label column are both 'a'. Pass different columns with "
                           "--text-col and --label-col.", upload=True)
    assert both.endswith("Pick different columns in the Text column and Label column boxes on the Data page.")
    size = data_error_text("x.csv is 300 MB, above the 200 MB limit. Use a smaller sample or raise the limit with "
                           "--max-file-mb (DataConfig.max_file_mb).", upload=True)
    assert size == "x.csv is 300 MB, above the 200 MB limit. Use a smaller sample."
    from clm_explore.config import DataConfig

    three = pd.DataFrame({"text": [f"text {i}" for i in range(9)], "label": ["xx", "yy", "zz"] * 3})
    for limits in ({"max_labels": 2}, {"max_rows": 5}, {"max_label_chars": 1}):  # the library's own words
        with pytest.raises(DataError) as refused:
            load_data(three, DataConfig(**limits))
        said = data_error_text(str(refused.value), upload=False)
        assert "DataConfig" not in said and "Python API" not in said and said.endswith("."), said
    labels = data_error_text(str(refused.value).replace("max_label_chars", "max_labels"), upload=False)
    assert "--" not in labels and "(the Label column box on the Data page)" in labels and "uploaded files only" in labels

    with pytest.raises(DataError) as asked:  # the library names the flag and the Python keyword (the API review)
        load_data(pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}), text_col="txt")
    assert str(asked.value).endswith("Pass one of them with --text-col (text_col=).")
    assert data_error_text(str(asked.value), upload=True).endswith("Pick one of them in the Text column box on the "
                                                                   "Data page.")


def test_tokens_mine_filter_and_examples(at: AppTest) -> None:
    goto(at, "app_pages/2_tokens.py")
    assert at.dataframe, "groups table"
    pick = at.selectbox(key="tok_pick")
    pick.set_value(pick.options and pick.value).run()
    assert any("**" in m.value for m in at.markdown), "example rows with the group in bold"
    assert "label_rows" in at.dataframe[0].value.columns  # the mining review: a spread group's label read as firm
    assert any(re.search(r"in \d+ rows, \d+ of them of this label", m.value) for m in at.markdown)
    at.number_input(key="tok_min_count").set_value(3)
    at.number_input(key="tok_min_chars").set_value(1)
    at.number_input(key="tok_min_share").set_value(0.05)
    assert at.selectbox(key="tok_background_lang").value == "auto"
    at.selectbox(key="tok_background_lang").set_value("de")
    button(at, "Mine task tokens").click().run()
    assert not at.exception
    assert at.session_state["mining_cfg"].min_count == 3 and at.session_state["mining_cfg"].fragment_min_chars == 1
    assert at.session_state["mining_cfg"].min_score_share == 0.05
    assert at.session_state["mining_cfg"].background_lang == "de"  # the language review: English was the only list
    at.text_input(key="tok_all_query").input("zzzz-no-match").run()
    assert not at.exception
    at.toggle(key="tok_merge").set_value(True).run()
    assert not at.exception
    assert [m.label for m in at.metric][-3:] == ["Mean sub-tokens before", "After merging", "Shorter by"]


def test_mining_that_finds_no_group_is_said_where_the_scores_are_read(at: AppTest) -> None:
    """The app review: with no group mined, Sensitivity still said "restriction: tokens" and Budget selected as
    usual, while sparse read the pooled position alone."""
    goto(at, "app_pages/2_tokens.py")
    at.number_input(key="tok_min_count").set_value(1000)
    button(at, "Mine task tokens").click().run()
    for page in ("app_pages/3_sensitivity.py", "app_pages/4_budget.py"):
        goto(at, page)
        assert not at.exception, at.exception
        assert any(w.value.startswith("No task token was mined") for w in at.warning), [w.value for w in at.warning]


def test_a_heatmap_cell_that_dwarfs_the_rest_gets_the_top_colour_and_a_note() -> None:
    from clm_explore.ui.views import capped_scale

    table = pd.DataFrame({"layer": [0, 0, 1, 1, 6], "module": ["q", "k", "q", "k", "pooler"],
                          "score": [1.0, 2.0, 3.0, 4.0, 300.0]})
    zrange, note = capped_scale(table, "score")  # before: the pooler's 300 made 1..4 one colour (the UX review)
    assert zrange == (0.0, 4.0)
    assert "L6 · pooler (300, 75 times that)" in note
    assert capped_scale(table.assign(score=[1.0, 2.0, 3.0, 4.0, 5.0]), "score") == (None, "")
    from clm_explore.ui.views import shared_capped_scale

    even = table.assign(score=[1.0, 2.0, 3.0, 6.0, 5.0])  # no cell dwarfs: its largest, 6, ends the shared scale
    zrange, note = shared_capped_scale([table, even], "score")  # the demo review: the restriction's two maps
    assert zrange == (0.0, 6.0) and "L6 · pooler (300, 50 times that)" in note


def test_compare_says_what_one_test_row_is_worth_and_run_tables_lead_with_figures() -> None:
    from clm_explore.ui.run_views import accuracy_scale_note, runs_frame

    assert accuracy_scale_note(56).startswith("Scored on 56 test rows: one row is 1.79 points of accuracy.")
    assert accuracy_scale_note(None) == ""
    record = SimpleNamespace(id="r1", method="full", metrics={"accuracy": 0.9, "macro_f1": 0.8}, config={},
                             status=SimpleNamespace(value="succeeded"), is_terminal=True, path=Path("/nonexistent"),
                             created="2026-12-07", error=None)
    columns = list(runs_frame([record]).columns)  # before: accuracy 8th, cut off at 1280 px (the UX review)
    assert columns[:5] == ["run", "method", "status", "accuracy", "macro_f1"]


def test_the_app_s_tables_write_a_missing_figure_as_a_dash_not_none(at: AppTest) -> None:
    """The UX review: a pending run's figures, a method without a budget and a one-run group's std read "None"."""
    from clm_explore.ui.views import MISSING

    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    create_finished(store, "a-full", "full", SAMPLE_KEY)
    store.create("b-pending", "sparse", {"data": SAMPLE_KEY, "source": "tiny-random"})
    goto(at, "app_pages/7_runs.py")
    frames = at.dataframe
    assert frames and all(frame.proto.placeholder == MISSING for frame in frames)  # the runs and groups tables
    assert MISSING == "–"


def test_a_runs_predictions_download_says_when_the_file_went_or_is_a_link(tmp_path: Path) -> None:
    from clm_explore.ui.run_views import predictions_csv

    (tmp_path / "predictions.csv").write_text("row,text,label,prob\r\n0,hello,Überweisung,0.5\r\n"
                                              '1,"=HYPERLINK(""http://e.example"",""x"")",-1,0.25\r\n', encoding="utf-8")
    sent = predictions_csv(tmp_path)  # led by UTF-8's mark: Excel read the label in the machine's code page
    assert sent.startswith("\ufeffrow,text,label,prob\r\n0,hello,Überweisung,0.5\r\n".encode())
    assert pd.read_csv(io.BytesIO(sent), dtype=str).to_dict("records") == [
        {"row": "0", "text": "hello", "label": "Überweisung", "prob": "0.5"},
        {"row": "1", "text": "'=HYPERLINK(\"http://e.example\",\"x\")", "label": "-1", "prob": "0.25"}]  # a formula: text
    secret = tmp_path / "secret.txt"
    secret.write_text("a secret of the server")
    (tmp_path / "predictions.csv").unlink()
    assert b"no longer on the server" in predictions_csv(tmp_path)  # before: a traceback in the log, no download
    (tmp_path / "predictions.csv").symlink_to(secret)
    assert b"is a link" in predictions_csv(tmp_path) and b"secret" not in predictions_csv(tmp_path)


def test_the_f1_difference_colours_span_the_differences_shown() -> None:
    from clm_explore.ui.run_views import _colour_end

    assert _colour_end(pd.Series([-0.04, 0.02, 0.0])) == 0.04  # was 1: a few points' difference drew near white
    assert _colour_end(pd.Series([0.0, 0.0])) == 0.01 and _colour_end(pd.Series([float("nan")])) == 0.01


def test_sensitivity_opens_on_what_the_budget_selects(at: AppTest) -> None:
    goto(at, "app_pages/3_sensitivity.py")
    assert at.radio(key="sens_view").value == "share_selected"  # the total score's brightest cell misled


def test_sensitivity_views_and_unrestricted_comparison(at: AppTest) -> None:
    goto(at, "app_pages/3_sensitivity.py")
    for view in ("norm_score", "share_selected", "score"):
        at.radio(key="sens_view").set_value(view).run()
        assert not at.exception, view
    at.toggle(key="sens_compare").set_value(True).run()
    assert not at.exception
    assert any("Difference" in str(c.proto) for c in at.get("plotly_chart"))
    at.toggle(key="sens_compare").set_value(False).run()  # and off again: no second scoring pass
    assert not any("Difference" in str(c.proto) for c in at.get("plotly_chart"))
    at.selectbox(key="sens_head").set_value("centroid")
    button(at, "Compute").click().run()
    assert not at.exception
    assert at.session_state["sens_cfg"].head_init == "centroid"  # reaches the scores and the finetune page
    at.selectbox(key="sens_labels").set_value("model")
    at.selectbox(key="sens_score").set_value("taylor")
    button(at, "Compute").click().run()
    assert any("Fisher score only" in e.value for e in at.error), "model labels need the Fisher score"
    assert at.session_state["sens_cfg"].fisher_labels == "data"  # nothing changed
    at.selectbox(key="sens_score").set_value("fisher")
    at.number_input(key="sens_draws").set_value(2)
    button(at, "Compute").click().run()
    assert not at.exception and not at.error
    assert (at.session_state["sens_cfg"].fisher_labels, at.session_state["sens_cfg"].label_draws) == ("model", 2)


def test_budget_slider_and_number_box(at: AppTest) -> None:
    goto(at, "app_pages/4_budget.py")
    first = at.metric[0].value
    at.select_slider(key="budget_slider").set_value(0.1).run()
    assert not at.exception
    assert at.number_input(key="budget_number").value == pytest.approx(10.0)
    assert at.session_state["budget"] == pytest.approx(0.1)
    assert at.metric[0].value != first
    at.number_input(key="budget_number").set_value(0.5).run()
    assert at.session_state["budget"] == pytest.approx(0.005)
    assert not at.exception
    assert at.number_input(key="budget_number").min == pytest.approx(0.01)  # the slider's lowest step
    assert "from the cached scores in" in " ".join(c.value for c in at.caption)
    assert "all of them are selected" not in " ".join(c.value for c in at.caption)
    at.number_input(key="budget_number").set_value(100.0).run()  # more than the upper half's rows hold
    assert "hold 7,685: all of them are selected" in " ".join(c.value for c in at.caption)  # the key rows cost no bias
    for typed in (5.0, 20.0):  # off the slider's log steps, or above them: the slider stands at the budget in use
        at.number_input(key="budget_number").set_value(typed).run()
        assert at.select_slider(key="budget_slider").value == pytest.approx(typed / 100)
    at.number_input(key="budget_number").set_value(6.31).run()  # a step, but for float rounding: no second 6.31%
    assert at.select_slider(key="budget_slider").value == 0.0631
    assert at.select_slider(key="budget_slider").options.count("6.31%") == 1


def test_budget_as_a_parameter_count(at: AppTest) -> None:
    """The faces review: the CLI and the API took a budget as a count, the app only as a share."""
    goto(at, "app_pages/4_budget.py")
    count = at.number_input(key="budget_count")
    backbone = count.max
    assert count.value == round(0.01 * backbone)  # the default 1%, counted
    count.set_value(5000).run()
    assert not at.exception
    assert at.session_state["budget"] * backbone == pytest.approx(5000)
    assert at.number_input(key="budget_number").value == pytest.approx(round(5000 / backbone * 100, 4))
    selected = int(at.metric[0].value.replace(",", ""))
    assert 4000 < selected <= 5000  # rows up to the count
    at.select_slider(key="budget_slider").set_value(0.001).run()
    assert at.number_input(key="budget_count").value == round(0.001 * backbone)  # the count follows the slider


def test_the_finetune_form_folds_all_but_the_first_options(at: AppTest) -> None:
    goto(at, "app_pages/5_finetune.py")
    [more] = [e for e in at.expander if e.label.startswith("More training options")]
    folded = {w.key for kind in ("number_input", "checkbox", "selectbox", "radio") for w in getattr(more, kind)}
    assert folded == {"ft_schedule", "ft_average", "ft_cache", "ft_cold", "ft_decay", "ft_max_length", "ft_keep",
                      "ft_best", "ft_patience"}  # fifteen boxes at once buried the four a first run needs
    assert {"ft_method", "ft_budget", "ft_epochs", "ft_lr", "ft_seed", "ft_seeds"} <= {
        w.key for kind in ("number_input", "selectbox") for w in getattr(at, kind)} - folded


def test_few_shot_data_starts_the_epochs_at_the_few_shot_setting_and_says_why(tmp_path: Path) -> None:
    """The few-shot review: an annotator's 10 rows per label trained the default 3 epochs (6 steps) and scored 13
    points below what 30 epochs gave, and neither the form nor the Budget page said a word."""
    raw = "text,label\n" + "".join(f"text number {i} about {('cards', 'cash', 'fees', 'pins')[i % 4]},"
                                    f"{('card', 'cash', 'fee', 'pin')[i % 4]}\n" for i in range(40))
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.session_state["data_choice"] = save_upload(raw.encode(), "few.csv", folder=tmp_path / "session")
    app.run()
    goto(app, "app_pages/5_finetune.py")
    assert app.number_input(key="ft_epochs").value == 30 and not [i for i in app.info if "per label" in i.value]
    # its 4 carved validation rows: a best epoch or a stop chosen on them is said to be largely chance
    assert any("Validation holds 4 rows" in c.value and "one row is 25 points" in c.value for c in app.caption)
    goto(app, "app_pages/4_budget.py")
    assert any("Each method trains 30 epoch" in c.value for c in app.caption)
    app.session_state["ft_epochs"] = 3  # as a form submitted at 3 epochs leaves it
    goto(app, "app_pages/5_finetune.py")
    said = [i.value for i in app.info if "per label" in i.value]
    assert len(said) == 1 and "3 epoch" in said[0] and "set Epochs to 30" in said[0], said


def test_data_with_enough_rows_per_label_keeps_the_default_epochs(at: AppTest) -> None:
    goto(at, "app_pages/5_finetune.py")  # the sample: 54 or more training rows per label
    assert at.number_input(key="ft_epochs").value == 3 and not [i for i in at.info if "per label" in i.value]


def test_launch_two_runs_then_compare_and_delete(at: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    goto(at, "app_pages/5_finetune.py")
    for method in ("sparse", "full"):
        at.selectbox(key="ft_method").set_value(method)
        at.number_input(key="ft_epochs").set_value(1)
        at.selectbox(key="ft_schedule").set_value("cosine" if method == "sparse" else "linear")
        at.number_input(key="ft_average").set_value(0.5 if method == "sparse" else 0.0)
        at.checkbox(key="ft_cache").set_value(method == "sparse")
        at.checkbox(key="ft_cold").set_value(method == "full")
        at.number_input(key="ft_decay").set_value(1.0 if method == "sparse" else 0.0)
        at.checkbox(key="ft_best").set_value(method == "full")
        at.number_input(key="ft_patience").set_value(2 if method == "full" else 0)
        at.number_input(key="ft_max_length").set_value(48 if method == "sparse" else 64)
        at.radio(key="ft_keep").set_value("end" if method == "sparse" else "start")
        button(at, "Launch").click().run(timeout=TIMEOUT)
        assert not at.exception, [e.value for e in at.exception]
    store = RunStore()
    runs = store.list()
    assert sorted(r.method for r in runs) == ["full", "sparse"]
    assert {r.method: r.config["schedule"] for r in runs} == {"sparse": "cosine", "full": "linear"}
    assert {r.method: r.config["average_last"] for r in runs} == {"sparse": 0.5, "full": 0.0}
    assert {r.method: r.config["cache_frozen_layers"] for r in runs} == {"sparse": True, "full": False}
    assert {r.method: r.config["head_warmup"] for r in runs} == {"sparse": True, "full": False}
    assert {r.method: r.config["weight_decay"] for r in runs} == {"sparse": 1.0, "full": 0.0}
    assert {r.method: (r.config["keep_best"], r.config["early_stop"]) for r in runs} == {
        "sparse": (False, 0), "full": (True, 2)}
    assert {r.method: r.config["max_length"] for r in runs} == {"sparse": 48, "full": 64}
    assert {r.method: r.config["truncation_side"] for r in runs} == {"sparse": "left", "full": "right"}
    assert json.loads((store.latest("sparse").path / "tokenizer_config.json").read_text())["truncation_side"] == "left"
    assert store.latest("full").metrics["saved_epoch"] == store.latest("full").metrics["best_epoch"]
    assert all(r.status is RunStatus.SUCCEEDED for r in runs), [(r.id, r.status, r.error) for r in runs]
    assert all((r.path / "predictions.csv").is_file() for r in runs)
    at.run()  # the cards of finished jobs: their test accuracy, and the way on to Compare
    shown = sorted(m.value for m in at.metric if m.label == "Test accuracy")
    assert shown == sorted(f"{r.metrics['accuracy']:.4f}" for r in runs)
    assert "compare" in [link.proto.page for link in at.get("page_link")]

    goto(at, "app_pages/6_compare.py")
    assert at.selectbox(key="cmp_a").value == store.latest("sparse").id
    assert at.selectbox(key="cmp_b").value == store.latest("full").id
    at.radio(key="cmp_filter").set_value("only A").run()
    disagreements = next(d.value for d in at.dataframe if "right" in d.value.columns)
    assert set(disagreements["right"]) <= {"only A"} and disagreements.columns[-1] == "text"
    said = next(c.value for c in at.caption if "disagreements in" in c.value)
    assert re.search(r"A \(sparse\) right on \d+, B \(full\) on \d+, neither on \d+\.$", said), said
    assert not at.exception
    at.radio(key="cmp_filter").set_value("all").run()
    at.toggle(key="cmp_changes").set_value(True).run()  # where each moved its base model's weights
    assert not at.exception, [e.value for e in at.exception]
    moved = [c.value.replace("\\", "") for c in at.caption if "backbone parameters changed" in c.value]
    shares = [float(re.search(r"changed \(([\d.]+)%\)", c).group(1)) for c in moved]
    assert len(shares) == 2 and 0 < shares[0] < 10 < shares[1], moved  # A sparse: few; B full: most
    scales = [trace["zmax"] for chart in at.get("plotly_chart")
              for trace in json.loads(chart.proto.spec)["data"] if "zmax" in trace]
    assert len(scales) == 2 and scales[0] == scales[1] > 0.5  # one colour scale for both maps, up to full's most
    at.radio(key="cmp_changes_view").set_value("relative_change").run()
    assert not at.exception and "Change relative" in at.radio(key="cmp_changes_view").format_func("relative_change")
    at.toggle(key="cmp_cka").set_value(True).run(timeout=TIMEOUT)  # the layers' representations, A, B and the base
    assert not at.exception, [e.value for e in at.exception]
    cka = next(c.value for c in at.caption if c.value.startswith("Over ") and "test rows" in c.value)
    assert cka.count("lowest") == 3 and "A vs B" in cka and "B vs its base model" in cka, cka
    at.toggle(key="cmp_cka").set_value(False).run()
    goto(at, "app_pages/7_runs.py")  # one run's map, on the Runs page
    at.toggle(key="runs_changes").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len([c for c in at.caption if "backbone parameters changed" in c.value]) == 1
    shown_run = store.get(at.selectbox(key="runs_pick").value)
    card = (shown_run.path / "README.md").read_text()  # the model card its run wrote, shown as the file's text
    assert [c.value for c in at.code if "model-index" in c.value] == [card.strip()]
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download the model card" in labels and "Download its test predictions (CSV)" in labels  # not only the zip
    folder = next(c.value for c in at.caption if c.value.startswith("Folder: "))
    assert "in the server's runs folder" in folder and str(store.root) not in folder.replace("\\", "")
    (shown_run.path / "README.md").unlink()  # a run saved before runs wrote cards: one made for the page
    at.run()
    assert [c.value for c in at.code if "model-index" in c.value] == [card.strip()]
    goto(at, "app_pages/6_compare.py")
    at.toggle(key="cmp_top").set_value(True).run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.info, [i.value for i in at.info]  # every library module present: nothing guarded
    assert any("sparse" in m.value and "p =" in m.value for m in at.markdown), "attributions of run A"
    overlaps = [d.value for d in at.dataframe if "in_groups" in d.value.columns]
    assert overlaps, "the overlap of the top words with the mined groups"  # the report review: runs named a and b,
    assert set(overlaps[0]["run"]) == {"A: sparse", "B: full"}  # words as a Python list's repr
    assert not overlaps[0]["words"].str.contains(r"\[").any()
    explained = sum("p =" in m.value for m in at.markdown)
    at.text_area(key="cmp_try_text").input("my new card has not arrived yet")
    assert sum("p =" in m.value for m in at.markdown) == explained  # nothing before Explain
    button(at, "Explain with both runs").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    answers = [m.value for m in at.markdown if "p =" in m.value]
    assert len(answers) == explained + 2 and "sparse" in answers[-2] and "full" in answers[-1]
    at.toggle(key="cmp_try_heads").set_value(True).run(timeout=TIMEOUT)  # each head's reading of the text
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="cmp_try_heads_layer").value == 1  # the tiny model's last layer first
    at.number_input(key="cmp_try_heads_head").set_value(3).run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    numbers = [d.value for d in at.dataframe if list(d.value.columns) == ["task_attention", "selected"]]
    assert len(numbers) == 2 and numbers[0]["selected"].notna().all() and numbers[1]["selected"].isna().all()
    said = [c.value for c in at.caption if "spreading its attention evenly" in c.value or "No task token" in c.value]
    assert len(said) == 2 and "● = the mask selected rows" in said[0] and "●" not in said[1]  # A sparse; B full
    at.toggle(key="cmp_try_heads").set_value(False).run()
    import clm_explore.casestudy

    studied, real_study = [], clm_explore.casestudy.case_study
    monkeypatch.setattr(clm_explore.casestudy, "case_study", lambda *a, **k: studied.append(a) or real_study(*a, **k))
    at.button(key="cmp_report").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert at.get("download_button"), "report download offered"
    assert studied == []  # the top words' attributions, made above, write the report: not made again
    at.toggle(key="cmp_top").set_value(False).run(timeout=TIMEOUT)  # another click on the page: the report stays
    assert at.get("download_button") and any("report is ready" in s.value for s in at.success)

    goto(at, "app_pages/7_runs.py")
    goto(at, "app_pages/6_compare.py")  # back on Compare, the text is still there and explained (cached)
    assert at.text_area(key="cmp_try_text").value == "my new card has not arrived yet"
    assert sum("p =" in m.value for m in at.markdown) == explained + 2

    goto(at, "app_pages/7_runs.py")
    victim = at.selectbox(key="runs_pick").value
    assert not any("may be another user's" in w.value for w in at.warning)  # launched in this session
    other = store.create("someone-elses", "full", {})
    at.run()  # the picker lists it
    at.selectbox(key="runs_pick").set_value(other.id).run()
    assert any("did not launch this run: it may be another user's" in w.value for w in at.warning)
    at.selectbox(key="runs_pick").set_value(victim).run()
    at.checkbox(key=f"runs_confirm_{victim}").check().run()
    at.button(key="runs_delete").click().run()
    assert not at.exception
    assert victim not in [r.id for r in store.list()]
    shown = at.selectbox(key="runs_pick").value  # another run: its confirmation starts unticked
    assert shown != victim and at.checkbox(key=f"runs_confirm_{shown}").value is False
    assert not any("no longer on this server" in w.value for w in at.warning)  # deleted here: no one else to blame
    assert at.button(key="runs_delete").disabled
    goto(at, "app_pages/5_finetune.py")  # its job's card says the run is gone (it read "succeeded" still)
    cards = [m.value for m in at.markdown if m.value.startswith("**") and "`succeeded`" in m.value]
    assert [escape_markdown(victim) in c for c in cards].count(True) == 1, cards
    assert all(("run deleted since" in c) == (escape_markdown(victim) in c) for c in cards), cards


def test_a_registry_deleted_under_the_server_is_said_once_and_made_again(at: AppTest) -> None:
    """The app review: the Finetune panel (a fragment, outside app.py's handler) showed a traceback every second,
    and every page said "no such table: runs" until the server restarted, every run gone from the app."""
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    run = store.create("kept", "head", {})
    (run.path / "clm_run.json").write_text(json.dumps({"method": "head", "config": {}}))
    (run.path / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    store.set_status(run.id, RunStatus.SUCCEEDED)
    goto(at, "app_pages/5_finetune.py")
    for file in store.root.glob("registry.sqlite*"):
        file.unlink()
    at.run()
    assert not at.exception, at.exception
    assert any("had lost its table" in e.value for e in at.error), [e.value for e in at.error]
    at.run()
    assert not at.exception and not at.error
    assert [r.id for r in store.list()] == [run.id]


def test_a_finished_run_whose_folder_is_gone_says_so(at: AppTest) -> None:
    """The app review: a run folder deleted from disk still read "succeeded", with a model-card caption in the CLI's
    words and a weight-changes toggle that said the run id was not in the registry."""
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    run = store.create("vanished", "head", {})
    store.set_status(run.id, RunStatus.SUCCEEDED)
    shutil.rmtree(run.path)
    goto(at, "app_pages/7_runs.py")
    assert not at.exception
    assert at.dataframe[0].value["status"].tolist() == ["succeeded, folder gone"]
    assert any("folder is gone from the server" in w.value for w in at.warning)
    assert not [h for h in at.subheader if h.value == "What training changed"]
    at.checkbox(key=f"runs_confirm_{run.id}").check().run()
    at.button(key="runs_delete").click().run()
    assert not at.exception and not store.list()


def test_runs_page_shows_interrupted(at: AppTest) -> None:
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    run = store.create("ghost", "sparse", {})
    store._update(run.id, {"status": "running", "pid": 2**22 + 7, "pid_start": "0"})  # a process long gone
    store.mark_interrupted()
    goto(at, "app_pages/7_runs.py")
    assert store.get(run.id).status is RunStatus.INTERRUPTED
    assert "interrupted" in at.dataframe[0].value["status"].tolist()


def test_runs_page_compares_groups_of_seeds(at: AppTest) -> None:
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    for method, accuracies in (("full", (0.90, 0.91, 0.92)), ("sparse", (0.95, 0.955, 0.96))):
        for seed, accuracy in enumerate(accuracies):
            run = store.create(f"{method}-{seed}", method, {"seed": seed, "data": "sample", "source": "tiny-random"})
            store.update_metrics(run.id, {"accuracy": accuracy, "macro_f1": accuracy - 0.01})
            store.set_status(run.id, RunStatus.SUCCEEDED)
    goto(at, "app_pages/7_runs.py")
    groups = at.multiselect(key="runs_groups_a"), at.multiselect(key="runs_groups_b")
    by_method = {r.method: sorted(x.id for x in store.list() if x.method == r.method) for r in store.list()}
    assert sorted(groups[0].value) == by_method["sparse"] and sorted(groups[1].value) == by_method["full"]
    table = next(d.value for d in at.dataframe if "difference_points" in d.value)
    accuracy = table.set_index("metric").loc["accuracy"]
    assert accuracy["difference_points"] == pytest.approx(4.5) and accuracy["verdict"] == "ahead"
    assert accuracy["std_ratio"] == pytest.approx(0.5)
    assert accuracy["std_ratio_low"] < 0.5 < accuracy["std_ratio_high"]
    shown = {m.label: m.value for m in at.metric}  # one run's figures in words before its JSON, which is folded
    picked = store.get(at.selectbox(key="runs_pick").value)
    assert shown["Method"] == picked.method and shown["accuracy"] == f"{picked.metrics['accuracy']:.4f}"
    assert shown["training time, s (with preparation)"] == "–"  # one it lacks
    assert {"Config (clm_run.json)", "Metrics (metrics.json)"} <= {e.label for e in at.expander}
    assert [w.value for w in at.warning] == ["This browser session did not launch this run: it may be another user's."]
    groups[1].set_value(by_method["full"] + by_method["sparse"][:1]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("in both groups" in w.value for w in at.warning)


def test_highlight_escapes_user_text() -> None:
    from clm_explore.ui.views import escape_markdown, highlight_markdown

    out = highlight_markdown("<b>My card</b> $5 [x](javascript:y) card", "card")
    assert out.count("**card**") == 2 and "<" not in out.replace("\\<", "")
    assert "\\$" in out and "\\[" in out and "\\(" in out
    assert escape_markdown("**bold** :red[x]") == "\\*\\*bold\\*\\* \\:red\\[x\\]"
    assert escape_markdown("x\r=====\r\n    code\u2028y") == "x =====     code y"  # one line: no heading, no block
    # GitHub-flavoured Markdown made links of these, escaped or not (security review; checked in Chromium: none)
    assert escape_markdown("see https://evil.example/x") == "see https\\:\u200b//evil\\.example/x"
    assert escape_markdown("user@mail.example") == "user@\u200bmail\\.example"
    assert escape_markdown("Www.leak.example") == "Ww\u200bw\\.leak\\.example"
    assert escape_markdown("at 10:30") == "at 10\\:30"  # other colons as they were


def test_highlight_finds_a_group_as_the_uncased_tokenizer_read_it() -> None:
    """The language review: "发 票" (the tokenizer's spaces around Chinese characters) and "fur" (its accents
    dropped) were never found in their rows, so the Tokens page's examples showed nothing in bold."""
    from clm_explore.ui.views import highlight_markdown

    assert highlight_markdown("我要开发票", "发 票") == "我要开**发票**"
    assert highlight_markdown("Gebühr für Überweisung", "fur") == "Gebühr **für** Überweisung"
    assert highlight_markdown("ÜBERWEISUNG fehlt", "uberweisung") == "**ÜBERWEISUNG** fehlt"
    assert highlight_markdown("my  card, mycard", "my card") == "**my  card**, mycard"  # words stay words
    assert highlight_markdown("ﬁne", "fine") == "**ﬁne**"  # a ligature is one character of the text


def test_widget_labels_escape_only_what_a_label_acts_on() -> None:
    """A label as written is also its name for a screen reader, which read escape_markdown's backslashes out."""
    from clm_explore.ui.views import label_text

    assert label_text("20261206-221335-full.v2 (b)") == "20261206-221335-full.v2 (b)"
    assert label_text("**bold** :red[x] $y$ `z` ~s~ <b>") == "\\*\\*bold\\*\\* \\:red\\[x\\] \\$y\\$ \\`z\\` \\~s\\~ \\<b\\>"
    assert (label_text("# big"), label_text("- item"), label_text("12. first")) == ("\\# big", "\\- item", "12\\. first")
    assert label_text("see https://evil.example/x\nnext") == "see https\\:\u200b//evil.example/x next"


def test_the_budget_map_leaves_rows_that_cannot_compete_blank_and_speaks_percent(at: AppTest) -> None:
    """The budget review: layers below the lowest eligible one were drawn 0, as if their rows lost, and the cells
    read fractions (0.057) where every budget figure on the page is in percent."""
    goto(at, "app_pages/4_budget.py")
    [chart] = [json.loads(c.proto.spec) for c in at.get("plotly_chart")
               if json.loads(c.proto.spec)["layout"]["title"]["text"].startswith("Rows selected per layer")]
    z = chart["data"][0]["z"]  # plotly's typed array
    grid = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(
        [int(n) for n in z["shape"].split(",")])
    rows = {layer: [None if np.isnan(v) else float(v) for v in row]
            for layer, row in zip(chart["data"][0]["y"], grid, strict=True)}
    assert all(v is None for v in rows["L0"]) and all(v is None for v in rows["emb"])  # auto: layer 1 and up compete
    assert any(v for v in rows["L1"]) and max(v for v in rows["L1"] if v is not None) > 1  # percent, not a fraction
    assert any(c.value == views.SELECTED_BLANKS for c in at.caption)
    assert chart["data"][0]["texttemplate"] == "%{z:.3~g}"  # 100 as "100", not ".2g"'s "1.0e+2"


def lowest_layer_shown(app: AppTest) -> str:
    return next(m.value for m in app.metric if m.label == "Lowest selected layer")


def test_row_choice_reselects_the_mask_and_reaches_the_finetune_page(at: AppTest) -> None:
    goto(at, "app_pages/4_budget.py")
    assert lowest_layer_shown(at) == "1"  # auto: the upper half of the tiny model's 2 layers
    at.selectbox(key="budget_min_layer").set_value(0).run()
    at.slider(key="budget_random_share").set_value(1.0).run()
    assert not at.exception, [e.value for e in at.exception]
    assert lowest_layer_shown(at) in ("0", "embeddings")  # random rows from every layer and the embeddings
    assert (at.session_state["mask_options"].min_layer, at.session_state["mask_options"].random_share) == (0, 1.0)
    goto(at, "app_pages/5_finetune.py")
    assert any("lowest layer 0, random share 1" in c.value for c in at.caption)
    goto(at, "app_pages/4_budget.py")  # the choice survives a round trip through another page
    assert at.slider(key="budget_random_share").value == 1.0
    assert at.checkbox(key="budget_spread_heads").disabled  # random rows have no top rows to spread
    at.slider(key="budget_random_share").set_value(0.0).run()
    at.checkbox(key="budget_spread_heads").check().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["mask_options"].spread_heads is True
    goto(at, "app_pages/5_finetune.py")
    assert any("random share 0, spread over heads" in c.value for c in at.caption)
    goto(at, "app_pages/4_budget.py")
    at.slider(key="budget_random_share").set_value(0.5).run()  # spread rows no longer apply: the box says so
    assert at.checkbox(key="budget_spread_heads").value is False and at.checkbox(key="budget_spread_heads").disabled
    assert at.session_state["mask_options"].spread_heads is False


def test_a_budget_that_buys_no_row_keeps_the_methods_picked_and_holds_the_launch(at: AppTest) -> None:
    goto(at, "app_pages/4_budget.py")
    at.multiselect(key="budget_methods").set_value(["sparse", "head"]).run()
    at.select_slider(key="budget_slider").set_value(0.0001).run()
    assert any("buys no row" in w.value for w in at.warning)
    assert at.button(key="budget_launch").disabled  # the page stopped above the box: it came back empty, Launch live
    assert any("Launching waits for a budget that selects rows" in c.value for c in at.caption)
    at.select_slider(key="budget_slider").set_value(0.01).run()
    assert at.multiselect(key="budget_methods").value == ["sparse", "head"] and not at.button(key="budget_launch").disabled


def test_the_scores_read_as_many_sub_tokens_as_the_runs(at: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The faces review: at 16 sub-tokens set on the Finetune form, a sparse run scored and trained other rows than
    the page showed; the long-text review: at 512 the pages' heatmaps read 64. The pages' scores now read the
    form's length."""
    goto(at, "app_pages/3_sensitivity.py")
    assert any("reading 64 sub-tokens per text" in c.value for c in at.caption)
    at.session_state["kept_widgets"] = {**at.session_state["kept_widgets"], "ft_max_length": 16}
    goto(at, "app_pages/3_sensitivity.py")
    assert any("reading 16 sub-tokens per text" in c.value for c in at.caption), [c.value for c in at.caption]
    asked: list[int] = []
    from clm_explore.ui import cache

    real = cache.sensitivity
    monkeypatch.setattr(cache, "sensitivity", lambda *a, **k: asked.append(a[3].max_length) or real(*a, **k))
    goto(at, "app_pages/4_budget.py")
    assert asked and set(asked) == {16}
    at.session_state["kept_widgets"] = {**at.session_state["kept_widgets"], "ft_max_length": 256}
    goto(at, "app_pages/3_sensitivity.py")  # the form at 256: the tiny model reads 128, and the page reads that
    assert any("reading 128 sub-tokens per text" in c.value for c in at.caption) and not at.exception
    at.session_state["kept_widgets"] = {**at.session_state["kept_widgets"], "ft_keep": "end"}
    goto(at, "app_pages/3_sensitivity.py")  # the form keeping long texts' ends: the scores cut them so too
    assert any("reading 128 sub-tokens per text, the end of a longer one" in c.value for c in at.caption)
    goto(at, "app_pages/4_budget.py")
    assert any("sub-tokens per text, the end of a longer one (" in c.value for c in at.caption)


def test_budget_page_launches_methods_at_its_budget(at: AppTest) -> None:
    goto(at, "app_pages/4_budget.py")
    said = next(c.value for c in at.caption if c.value.startswith("Each method trains"))
    assert "reading 64 sub-tokens per text (the defaults;" in said  # the Finetune form was never used: not "as set"
    at.select_slider(key="budget_slider").set_value(0.001).run()
    at.slider(key="budget_random_share").set_value(0.5).run()
    at.multiselect(key="budget_methods").set_value(["sparse", "head"]).run()
    at.button(key="budget_launch").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    runs = {r.method: r for r in RunStore().list()}
    assert set(runs) == {"sparse", "head"}
    assert runs["sparse"].config["mask"]["budget"] == pytest.approx(0.001)
    assert runs["sparse"].config["mask"]["random_share"] == 0.5
    assert all(r.status is RunStatus.SUCCEEDED for r in runs.values()), [
        (r.method, r.error) for r in runs.values()
    ]
    assert "sparse-0-1pct" in runs["sparse"].id and "head" in runs["head"].id, [r.id for r in runs.values()]
    # A seed-0 run at the page's settings trains from the page's scores: the rows shown, not scored again.
    assert json.loads((runs["sparse"].path / "metrics.json").read_text())["scores_from"] == "given"
    assert "pct" not in runs["head"].id  # the budget does not size a probe: its name does not claim one


def test_finetune_form_trains_from_scores_a_page_made_and_never_scores_in_the_page() -> None:
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    goto(app, "app_pages/5_finetune.py")
    from clm_explore.ui import cache

    cache.sensitivity.clear()  # no report made yet in this server process: the launch scores in its run

    cache._scorings.clear()  # and the scoring tasks that keep theirs
    gc.collect()  # and none an earlier test made kept alive by a reference cycle
    launch_from_form(app, "sparse", seed=0)
    goto(app, "app_pages/4_budget.py")  # the Budget page makes the report (seed 0, its settings)
    goto(app, "app_pages/5_finetune.py")
    for method, seed in (("sparse", 0), ("sparse", 1), ("random", 0), ("fisher", 0)):
        launch_from_form(app, method, seed)
    # In the order they trained (one after another): the registry orders runs of the same second by id.
    runs = sorted(RunStore().list(), key=lambda r: (r.path / "clm_run.json").stat().st_mtime_ns)
    origins = [(r.method, r.config["seed"], json.loads((r.path / "metrics.json").read_text()).get("scores_from"))
               for r in runs]
    # Given only when the run would make those scores itself: seed 0, a method scored with the tokens' restriction.
    assert origins == [("sparse", 0, None), ("sparse", 0, "given"), ("sparse", 1, None), ("random", 0, "given"),
                       ("fisher", 0, None)], origins
    # a run reading 48 sub-tokens and keeping texts' ends takes the scores the Budget page made so (the diff review:
    # the form's scoring settings alone were looked up, and it scored again)
    app.number_input(key="ft_max_length").set_value(48)
    app.radio(key="ft_keep").set_value("end")
    launch_from_form(app, "sparse", seed=0)  # no page has scored so yet: it scores in its run
    goto(app, "app_pages/4_budget.py")
    goto(app, "app_pages/5_finetune.py")
    launch_from_form(app, "sparse", seed=0)
    last = sorted(RunStore().list(), key=lambda r: (r.path / "clm_run.json").stat().st_mtime_ns)[-2:]
    assert [json.loads((r.path / "metrics.json").read_text()).get("scores_from") for r in last] == [None, "given"]
    assert {r.config["truncation_side"] for r in last} == {"left"} and {r.config["max_length"] for r in last} == {48}


def launch_from_form(app: AppTest, method: str, seed: int) -> None:
    app.selectbox(key="ft_method").set_value(method)
    app.number_input(key="ft_epochs").set_value(1)
    app.number_input(key="ft_seed").set_value(seed)
    button(app, "Launch").click().run(timeout=TIMEOUT)
    assert not app.exception, [e.value for e in app.exception]


def test_the_finetune_form_launches_one_run_per_seed(at: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    goto(at, "app_pages/5_finetune.py")
    at.selectbox(key="ft_method").set_value("head")
    at.number_input(key="ft_epochs").set_value(1)
    from clm_explore.config import MAX_SEED
    from clm_explore.ui.forms import MAX_SEEDS

    # The faces review: 10,000 here, any CLI run's seed there; the diff review: the last seeds a launch adds fit too.
    assert at.number_input(key="ft_seed").max == MAX_SEED - MAX_SEEDS + 1
    at.number_input(key="ft_seed").set_value(3)
    at.number_input(key="ft_seeds").set_value(2)
    at.text_input(key="ft_name").input("probe")
    monkeypatch.delenv("CLM_EXPLORE_DEVICE")  # the server's choice of device, as a plain install has it
    button(at, "Launch").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    runs = sorted(RunStore().list(), key=lambda r: r.config["seed"])
    assert [(r.name, r.config["seed"], r.status) for r in runs] == [
        ("probe-s3", 3, RunStatus.SUCCEEDED), ("probe-s4", 4, RunStatus.SUCCEEDED)]
    # The faces review: an app run recorded the device it resolved to ('cpu'), so a rerun elsewhere took no GPU.
    assert {r.config["device"] for r in runs} == {"auto"} and all(
        json.loads((r.path / "clm_run.json").read_text())["config"]["device"] == "auto" for r in runs)
    assert at.number_input(key="ft_seeds").value == 2  # kept for the next launch
    goto(at, "app_pages/4_budget.py")  # the Budget page's launches take them too
    assert any("trains 1 epoch(s) with each of the seeds 3-4" in c.value for c in at.caption)
    at.multiselect(key="budget_methods").set_value(["head"]).run()
    at.button(key="budget_launch").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(r.name.split("-", 2)[-1] for r in RunStore().list() if r.name.startswith("head")) == ["s3", "s4"]
    goto(at, "app_pages/5_finetune.py")
    from clm_explore.ui import jobs

    monkeypatch.setattr(jobs, "MAX_ACTIVE_PER_SESSION", 1)  # room for one: two seeds are refused together
    monkeypatch.setattr(jobs.JobQueue, "active", lambda self: [])
    button(at, "Launch").click().run(timeout=TIMEOUT)
    assert any("at a time is the most one session may have" in e.value for e in at.error)
    assert len(RunStore().list()) == 4


def pick_model_folder(at: AppTest, folder: Path) -> None:
    """The sidebar's model box set to a folder on the server, as a user does."""
    from clm_explore.ui.forms import SOURCES

    at.selectbox(key="side_source").set_value(SOURCES[2]).run()
    at.text_input(key="side_folder").input(str(folder)).run()


def test_bad_model_folder_is_a_plain_error(at: AppTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_EXPLORE_MODEL_DIRS", str(tmp_path))  # the server allows model folders there
    goto(at, "app_pages/3_sensitivity.py")
    pick_model_folder(at, tmp_path / "no-such-model")
    shown = [e.value for e in at.error] + [e.value for e in at.exception]  # one message, no traceback
    assert len(shown) == 1 and "is neither 'default'" in shown[0]


def test_compare_shows_out_of_scope_scores_when_a_run_has_them() -> None:
    from clm_explore.runs import RunRecord
    from clm_explore.ui.run_views import metrics_side_by_side

    def record(run_id: str, **metrics) -> RunRecord:
        return RunRecord(run_id, run_id, "sparse", RunStatus.SUCCEEDED, Path(run_id), "", "", metrics=metrics)

    plain = metrics_side_by_side(record("a", accuracy=0.5), record("b", accuracy=0.25))
    assert not any("out of scope" in name or "abstention" in name for name in plain.index)
    assert list(plain.columns) == ["A: sparse", "B: sparse"] and plain.loc["run"].tolist() == ["a", "b"]
    scope = {"accuracy": 0.61, "auroc": 0.8125, "threshold": 0.4, "macro_f1": 0.5, "oos_recall": 0.3}
    frame = metrics_side_by_side(record("a", accuracy=0.5, out_of_scope=scope), record("b", accuracy=0.25))
    # Every test row's figures when the run abstains, not the out-of-scope rows' (the metrics review)
    assert frame.loc["with abstention: accuracy"].tolist() == ["0.6100", "–"]
    assert frame.loc["out of scope: AUROC (top probability)"].tolist() == ["0.8125", "–"]
    assert frame.loc["accuracy"].tolist() == ["0.5000", "0.2500"]  # shares: 4 decimals on both sides
    assert frame.loc["with abstention: macro-F1"].tolist() == ["0.5000", "–"]  # in words, not metrics.json's keys
    assert frame.loc["out-of-scope rows turned away"].tolist() == ["0.3000", "–"]
    assert not any("oos_recall" in name or "peak_memory_mb" in name for name in frame.index)
    assert "training memory, MiB" in frame.index  # not the process's peak: the caption under the table says so
    tiny = metrics_side_by_side(record("a", budget=0.00005), record("b", budget=0.01))
    assert tiny.loc["budget %"].tolist() == ["0.0050", "1"]  # in percent, as elsewhere; a tiny one not rounded to 0
    counted = metrics_side_by_side(record("a", budget=5000), record("b", budget=0.01))
    assert counted.loc["budget %"].tolist() == ["5,000 parameters", "1"]  # a count, not 5,000 %
    lowest = metrics_side_by_side(record("a", lowest_layer=-1), record("b", lowest_layer=3))
    assert lowest.loc["lowest trained layer"].tolist() == ["embeddings", "3"]  # as the Budget page says, not "-1"


def test_a_run_stopped_early_says_so_in_the_compare_and_runs_tables() -> None:
    """The few-shot review: a 30-epoch run stopped after epoch 5 (on 7 validation rows) read as 30 epochs on the
    Runs and Compare pages; where it stopped was in its raw metrics.json alone."""
    from clm_explore.runs import RunRecord
    from clm_explore.ui.run_views import metrics_side_by_side, runs_frame

    def record(run_id: str, **metrics) -> RunRecord:
        return RunRecord(run_id, run_id, "sparse", RunStatus.SUCCEEDED, Path(run_id), "", "",
                         config={"epochs": metrics.get("epochs")}, metrics=metrics)

    stopped = record("a", epochs=30, best_epoch=2, saved_epoch=5, stopped_after=5)
    kept = record("b", epochs=30, best_epoch=12, saved_epoch=12)  # the best epoch kept, no stop
    frame = metrics_side_by_side(stopped, kept)
    assert frame.loc["epochs"].tolist() == ["30 (stopped after 5)", "30 (saved epoch 12)"]
    assert metrics_side_by_side(record("c", epochs=3), record("d", epochs=3)).loc["epochs"].tolist() == ["3", "3"]
    table = runs_frame([stopped, kept])
    assert table["stopped after"].tolist()[0] == 5 and pd.isna(table["stopped after"].tolist()[1])


def test_compare_says_how_many_rows_the_out_of_scope_figures_stand_on() -> None:
    """The few-shot review: thresholds from 10 validation rows turned away 4.5% to 35.6% of in-scope rows between
    seeds, and 0.2222 of the out-of-scope rows was 2 of 9; `evaluate` said the quantile was rough, the app did not."""
    from clm_explore.ui.run_views import scope_rows_note

    few = scope_rows_note({"rows": 9, "threshold": 0.64, "quantile": 0.1, "validation_rows": 10})
    assert few == ("the threshold is the 10% quantile of its 10 in-scope validation rows' top probabilities; so few "
                   "rows make a rough quantile, which moves a lot between seeds; 9 out-of-scope test rows (one is "
                   "11.1 points of the share turned away)")
    many = scope_rows_note({"rows": 400, "threshold": 0.5, "quantile": 0.1, "validation_rows": 300})
    assert "rough" not in many and many.startswith("the threshold is the 10% quantile of its 300")
    assert scope_rows_note({}) == ""


def test_the_runs_table_shows_a_budget_given_as_a_parameter_count_as_its_share_of_the_backbone() -> None:
    """The metrics review: a count of 20,000 read 20000.0 under "budget %"."""
    from clm_explore.runs import RunRecord
    from clm_explore.ui.run_views import runs_frame

    def record(run_id: str, budget: float, **metrics) -> RunRecord:
        return RunRecord(run_id, run_id, "sparse", RunStatus.SUCCEEDED, Path(run_id), "", "",
                         config={"mask": {"budget": budget}}, metrics=metrics)

    frame = runs_frame([record("a", 0.01), record("b", 20_000, backbone_params=2_000_000), record("c", 20_000)])
    assert frame["budget %"].tolist()[:2] == [1.0, 1.0] and pd.isna(frame["budget %"].tolist()[2])
    assert "seed" in frame.columns  # beside the id, which a long name's shortening may not show it in


def test_finetune_page_offers_the_abstention_quantile_when_test_has_unseen_labels(at: AppTest) -> None:
    goto(at, "app_pages/5_finetune.py")
    assert not [n for n in at.number_input if n.key == "ft_oos"]  # the sample's test labels are all trained
    hint3 = ROOT.parent / "shared" / "data" / "hint3_sofmattress"
    at.session_state["data_choice"] = DataChoice("shared", str(hint3), "hint3_sofmattress")
    at.run()
    at.selectbox(key="ft_method").set_value("head")
    at.number_input(key="ft_epochs").set_value(1)
    at.number_input(key="ft_oos").set_value(0.25)
    button(at, "Launch").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    run = RunStore().list()[0]
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.config["out_of_scope_quantile"] == 0.25
    scope = run.metrics["out_of_scope"]
    assert scope["rows"] == 144 and scope["quantile"] == 0.25 and scope["threshold"] is not None


def test_upload_gone_from_the_server_is_a_plain_error(tmp_path: Path) -> None:
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.session_state["data_choice"] = DataChoice("upload", str(tmp_path / "gone.csv"), "gone.csv", digest="0" * 64)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.error and "upload it again" in app.error[0].value


def test_prune_uploads_deletes_only_old_session_folders(tmp_path: Path) -> None:
    from clm_explore.ui.state import prune_uploads

    old, fresh, empty_old, other = (tmp_path / name for name in ("a" * 32, "b" * 32, "c" * 32, "not-a-session"))
    for folder in (old, fresh, empty_old, other):
        folder.mkdir()
    (old / "a.csv").write_text("text,label\n")
    (fresh / "b.csv").write_text("text,label\n")
    now = 1_000_000_000.0
    day = 86400
    os.utime(old / "a.csv", (now - 8 * day, now - 8 * day))
    os.utime(fresh / "b.csv", (now - 6 * day, now - 6 * day))
    os.utime(empty_old, (now - 9 * day, now - 9 * day))
    os.utime(other, (now - 9 * day, now - 9 * day))  # an admin's folder under the root: not a session's (review)
    assert prune_uploads(tmp_path, 0, now=now) == []  # 0 keeps everything
    assert prune_uploads(tmp_path, 7, now=now) == ["a" * 32, "c" * 32]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b" * 32, "not-a-session"]
    assert prune_uploads(tmp_path / "missing", 7, now=now) == []


def test_all_sessions_uploads_together_stay_under_their_cap(tmp_path: Path, monkeypatch) -> None:
    # Each new session has room for five files: the cap is over every session's folder.
    monkeypatch.setenv("CLM_EXPLORE_UPLOADS_MB", str(2.5 / 1024))  # 2.5 KiB
    kb = b"text,label\n" + b"x" * 1013
    s1, s2, s3, s4, s5 = (f"{i:032x}" for i in range(1, 6))  # session tokens
    for i, session in enumerate((s1, s2, s3, s4)):
        save_upload(kb + bytes([65 + i]), f"f{i}.csv", folder=tmp_path / session)
        os.utime(tmp_path / session / f"f{i}.csv", (1000 + i, 1000 + i))  # in upload order, long unused
    left = sorted(f.relative_to(tmp_path).as_posix() for f in tmp_path.glob("*/*"))
    assert left == [f"{s3}/f2.csv", f"{s4}/f3.csv"]  # the oldest went first, the file just saved stays
    monkeypatch.setenv("CLM_EXPLORE_UPLOADS_MB", "0.000001")  # below one file: the upload is refused
    with pytest.raises(DataError, match=r"room for uploads .* is full with files in use.*CLM_EXPLORE_UPLOADS_MB"):
        save_upload(kb, "big.csv", folder=tmp_path / s5)
    assert sorted(f.relative_to(tmp_path).as_posix() for f in tmp_path.glob("*/*")) == left  # nothing went for it


def test_an_upload_the_disk_has_no_room_for_is_a_plain_error_and_leaves_no_part(tmp_path: Path, monkeypatch) -> None:
    """The app review: a full disk gave a raw OSError traceback and left 98,304 bytes under the upload's name."""
    import errno

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def fileno(self):
            return self.file.fileno()

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(DataError, match=r"cannot keep the upload \(No space left on device\): its disk may be full"):
        save_upload(b"text,label\n" + b"x" * 4096, "big.csv", folder=tmp_path / ("a" * 32))
    assert list((tmp_path / ("a" * 32)).iterdir()) == []  # nothing cut short under its name, no part file


def test_a_file_made_from_an_upload_never_pushes_that_upload_out(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CLM_EXPLORE_UPLOADS_MB", str(2.5 / 1024))  # 2.5 KiB: two files of 1 KiB
    kb = b"text,label\n" + b"x" * 1013
    session = tmp_path / f"{1:032x}"
    original = save_upload(kb + b"O", "mine.csv", folder=session)
    save_upload(kb + b"P", "other.csv", folder=session)
    # The relabelled copy is made with room for two: the other, newer file goes, not the one it was made from.
    save_upload(kb + b"R", "mine-relabelled.csv", folder=session, protect=(Path(original.path),))
    assert sorted(f.name for f in session.iterdir()) == ["mine-relabelled.csv", "mine.csv"]
    with pytest.raises(DataError, match="is full with files in use"):  # no room without it: refused, it stays
        save_upload(kb * 2, "big.csv", folder=session, protect=(Path(original.path),))
    assert (session / "mine.csv").is_file()


def test_one_session_cannot_push_out_the_uploads_of_sessions_in_use(tmp_path: Path, monkeypatch) -> None:
    # Fresh tabs each get room for five files: before, their uploads deleted everyone else's (security review).
    monkeypatch.setenv("CLM_EXPLORE_UPLOADS_MB", str(2.5 / 1024))  # 2.5 KiB
    kb = b"text,label\n" + b"x" * 1013
    victim, tab1, tab2 = (f"{i:032x}" for i in (7, 8, 9))
    save_upload(kb + b"V", "mine.csv", folder=tmp_path / victim)  # uploaded just now: in use
    save_upload(kb + b"A", "a.csv", folder=tmp_path / tab1)
    with pytest.raises(DataError, match="is full with files in use"):
        save_upload(kb + b"B", "b.csv", folder=tmp_path / tab2)
    assert (tmp_path / victim / "mine.csv").is_file() and not (tmp_path / tab2 / "b.csv").exists()
    os.utime(tmp_path / victim / "mine.csv", (1000, 1000))  # an hour and more unused: its room may be taken
    save_upload(kb + b"B", "b.csv", folder=tmp_path / tab2)
    assert not (tmp_path / victim / "mine.csv").exists() and (tmp_path / tab2 / "b.csv").is_file()


def test_a_file_linked_into_two_sessions_takes_its_room_once(tmp_path: Path, monkeypatch) -> None:
    # A session taken up from its address links its upload into the new folder: one file on disk, two names.
    kb = b"text,label\n" + b"x" * 1013
    s1, s2, s3, s4, s5 = (f"{i:032x}" for i in range(1, 6))  # session tokens
    for session in (s1, s3):
        (tmp_path / session).mkdir()
    (tmp_path / s1 / "a.csv").write_bytes(kb + b"A")
    (tmp_path / s2).mkdir()
    os.link(tmp_path / s1 / "a.csv", tmp_path / s2 / "a.csv")
    (tmp_path / s3 / "b.csv").write_bytes(kb + b"B")
    os.utime(tmp_path / s1 / "a.csv", (1000, 1000))
    os.utime(tmp_path / s3 / "b.csv", (1001, 1001))

    def left() -> list[str]:
        return sorted(f.relative_to(tmp_path).as_posix() for f in tmp_path.glob("*/*"))

    monkeypatch.setenv("CLM_EXPLORE_UPLOADS_MB", str(3.5 / 1024))  # three files' room: all fit
    save_upload(kb + b"C", "c.csv", folder=tmp_path / s4)
    assert left() == [f"{s1}/a.csv", f"{s2}/a.csv", f"{s3}/b.csv", f"{s4}/c.csv"]  # before: s1's link went
    monkeypatch.setenv("CLM_EXPLORE_UPLOADS_MB", str(2.5 / 1024))
    save_upload(kb + b"D", "d.csv", folder=tmp_path / s5)
    assert left() == [f"{s4}/c.csv", f"{s5}/d.csv"]  # both links of the oldest file, then the next oldest


def test_an_upload_deleted_by_another_session_meanwhile_is_skipped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CLM_EXPLORE_UPLOADS_MB", "0.001")
    (tmp_path / ("1" * 32)).mkdir()
    (tmp_path / ("1" * 32) / "a.csv").write_bytes(b"text,label\n" + b"x" * 800)
    real_is_file = Path.is_file

    def gone_once_listed(path: Path) -> bool:  # another session's cleanup removes it right after the listing
        found = real_is_file(path)
        if path.name == "a.csv":
            path.unlink(missing_ok=True)
        return found

    monkeypatch.setattr(Path, "is_file", gone_once_listed)
    choice = save_upload(b"text,label\nhello,a\n", "new.csv", folder=tmp_path / ("2" * 32))  # FileNotFoundError
    assert Path(choice.path).read_bytes() == b"text,label\nhello,a\n"


def test_a_session_keeps_its_newest_uploads_only(tmp_path: Path) -> None:
    from clm_explore.ui.state import UPLOADS_KEPT

    for i in range(UPLOADS_KEPT + 2):
        choice = save_upload(b"text,label\n", f"file{i}.csv", folder=tmp_path)
        os.utime(choice.path, ns=(i * 10**9, i * 10**9))  # file i is the i-th newest
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [f"file{i}.csv" for i in range(2, UPLOADS_KEPT + 2)]


def test_compare_pairs_runs_of_one_data_set_only() -> None:
    import pandas as pd

    from clm_explore.runs import RunRecord
    from clm_explore.ui.run_views import data_mismatch, disagreements, other_run

    def record(run_id: str, method: str, data: str | None) -> RunRecord:
        config = {} if data is None else {"data": data}
        return RunRecord(run_id, run_id, method, RunStatus.SUCCEEDED, Path(run_id), "", "", config=config)

    newest_first = [record("s2", "sparse", "sample:a:None:None:"), record("s1", "sparse", "sample:a:None:None:"),
                    record("f1", "full", "shared:b:None:None:")]
    assert other_run(newest_first, newest_first[0], prefer="full").id == "s1"  # its own data before the method
    assert other_run(newest_first[:1] + newest_first[2:], newest_first[0], prefer="full").id == "f1"  # else any
    assert other_run(newest_first, newest_first[2], prefer="full").id == "s2"  # never the picked run itself
    assert other_run(newest_first[:1], newest_first[0], prefer="full") is None
    assert data_mismatch(newest_first[0], newest_first[1]) == ""
    message = data_mismatch(newest_first[0], newest_first[2])
    assert "on a, run B on b" in message
    assert data_mismatch(newest_first[0], record("cli", "full", None)) == ""  # unknown data: paired by text
    two_uploads = data_mismatch(record("u1", "sparse", "upload:x.csv:t:l:aaa"), record("u2", "full", "upload:x.csv:t:l:bbb"))
    assert "aaa" in two_uploads and "bbb" in two_uploads  # one name, two files: the keys tell them apart

    pred = pd.DataFrame({"row": [0, 1], "text": ["hi", "yo"], "label": ["a", "b"], "pred": ["a", "a"], "prob": 0.9})
    other = pred.assign(pred=["b", "b"])
    assert disagreements(pred, other)["right"].tolist() == ["only A", "only B"]
    assert disagreements(pred, other.assign(text=["x", "y"])).empty  # same row ids, other texts: no pairs


def test_a_cli_run_and_an_app_run_on_the_same_rows_are_the_same_data(monkeypatch, tmp_path: Path) -> None:
    """The faces review: the CLI recorded the path typed, the app its own key; the Runs page warned "different data",
    Compare said "different data sets", and the default groups left the CLI runs out. Both record the splits'
    digest now."""
    from clm_explore.cli import main
    from clm_explore.runs import RunRecord, RunStore
    from clm_explore.ui.run_views import default_groups, other_run, same_data

    monkeypatch.setenv("CLM_EXPLORE_RUNS", str(tmp_path / "runs"))
    sample = ROOT / "sample_data" / "banking77_20"
    assert main(["finetune", "--data", str(sample), "--model", "tiny-random", "--method", "head", "--epochs", "1",
                 "--device", "cpu"]) == 0
    (cli_run,) = RunStore().list()
    from clm_explore.data import data_digest, load_data

    assert cli_run.config["data_digest"] == data_digest(load_data(sample))
    app_run = RunRecord("app-full", "app-full", "full", RunStatus.SUCCEEDED, tmp_path, "", "",
                        config={"data": "sample:banking77_20:None:None:", "data_digest": data_digest(load_data(sample)),
                                "source": cli_run.config["source"]})
    other = RunRecord("other", "other", "full", RunStatus.SUCCEEDED, tmp_path, "", "",
                      config={"data": "shared:snips:None:None:", "data_digest": "0" * 16,
                              "source": cli_run.config["source"]})
    assert same_data(cli_run, app_run) and not same_data(app_run, other)
    older = RunRecord("older", "older", "full", RunStatus.SUCCEEDED, tmp_path, "", "",
                      config={"data": "sample:banking77_20:None:None:"})  # registered before the digest
    assert same_data(older, app_run) and not same_data(older, cli_run)  # by the key where a digest is missing
    cli_sparse = RunRecord("cli-sparse", "cli-sparse", "sparse", RunStatus.SUCCEEDED, tmp_path, "", "",
                           config=cli_run.config)
    assert default_groups([app_run, cli_sparse, other]) == (["cli-sparse"], ["app-full"])
    other_sparse = RunRecord("other-sparse", "other-sparse", "sparse", RunStatus.SUCCEEDED, tmp_path, "", "",
                             config=other.config)
    newest_first = [other, other_sparse, app_run, cli_sparse]  # another user's runs on snips are the newest
    assert default_groups(newest_first, "sample:banking77_20:None:None:") == (["cli-sparse"], ["app-full"])
    assert default_groups(newest_first, "shared:snips:None:None:") == (["other-sparse"], ["other"])
    assert other_run([other, app_run, cli_sparse], cli_sparse, prefer="full").id == "app-full"  # not the newer snips


def test_the_default_groups_are_one_settings_seeds_not_every_sparse_and_full_run() -> None:
    """The scale review: on a server of 500 runs the groups pre-selected every sparse run (100) against every full
    one (90), budgets, epochs and rates pooled into one verdict."""
    from clm_explore.runs import RunRecord
    from clm_explore.ui.run_views import DEFAULT_GROUP_RUNS, default_groups

    def run(run_id: str, method: str, seed: int, budget: float | None = None, lr: float = 1e-3) -> RunRecord:
        config = {"data": "sample:banking77_20:None:None:", "source": "default", "seed": seed, "lr": lr,
                  "mask": {"budget": budget}}
        return RunRecord(run_id, run_id, method, RunStatus.SUCCEEDED, Path(run_id), "", "", config=config)

    newest_first = [run("s5-0", "sparse", 0, 0.05), run("f-1", "full", 1, lr=2e-4), run("s1-1", "sparse", 1, 0.01),
                    run("s5-1", "sparse", 1, 0.05), run("f-0", "full", 0, lr=2e-4), run("f-old", "full", 0, lr=1e-4),
                    run("s1-0", "sparse", 0, 0.01)]
    assert default_groups(newest_first) == (["s5-0", "s5-1"], ["f-1", "f-0"])
    many = [run(f"s-{seed}", "sparse", seed, 0.01) for seed in range(15)] + [run("f", "full", 0)]
    assert default_groups(many)[0] == [f"s-{seed}" for seed in range(DEFAULT_GROUP_RUNS)]


def test_a_relabelled_copy_pairs_with_its_original_and_says_how_many_labels_differ(tmp_path: Path) -> None:
    import pandas as pd

    from clm_explore.runs import RunRecord
    from clm_explore.ui.run_views import data_mismatch, label_difference_note

    def record(name: str, data: str, labels: list[str], texts: tuple[str, ...] = ("hi", "yo", "ok")) -> RunRecord:
        folder = tmp_path / name
        folder.mkdir()
        pd.DataFrame({"row": range(3), "text": texts, "label": labels, "pred": "a", "prob": 0.9}).to_csv(
            folder / "predictions.csv", index=False)
        return RunRecord(name, name, "head", RunStatus.SUCCEEDED, folder, "", "", config={"data": data})

    original = record("orig", "sample:banking77_20:None:None:", ["a", "b", "a"])
    copy = record("copy", "upload:banking77_20-relabelled.csv:None:None:e144d7", ["a", "a", "a"])
    assert data_mismatch(copy, original) == ""  # the same test texts: paired row by row
    assert "same test texts, 1 of 3 of them labelled differently" in label_difference_note(copy, original)
    other = record("other", "shared:trec6:None:None:", ["a", "b", "a"], texts=("x", "y", "z"))
    assert "cannot be compared row by row" in data_mismatch(other, original)
    assert label_difference_note(other, original) == "" == label_difference_note(original, original)


def test_compare_page_refuses_runs_on_different_data(at: AppTest) -> None:
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    for method, data in (("full", "shared:trec6:None:None:"), ("sparse", "sample:banking77_20:None:None:")):
        run = store.create(method, method, {"data": data})
        (run.path / "metrics.json").write_text("{}")
        store.set_status(run.id, RunStatus.SUCCEEDED)
    goto(at, "app_pages/6_compare.py")
    assert at.selectbox(key="cmp_a").value != at.selectbox(key="cmp_b").value
    assert at.warning and "cannot be compared row by row" in at.warning[0].value


def test_model_dirs_limit_the_sidebar_folder_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clm_explore.ui.state import refused_model_source

    allowed = tmp_path / "models"
    monkeypatch.setenv("CLM_EXPLORE_MODEL_DIRS", f"{tmp_path / 'elsewhere'}{os.pathsep}{allowed}")
    assert refused_model_source(str(allowed / "mini")) == ""
    assert refused_model_source("smollm2") == ""  # named sources stay
    outside = refused_model_source("/etc")
    assert "CLM_EXPLORE_MODEL_DIRS" in outside
    assert refused_model_source(str(allowed / ".." / "secret")) == outside  # no way out through ..
    assert refused_model_source("/no/such/folder") == outside  # same answer whether it exists or not
    monkeypatch.delenv("CLM_EXPLORE_MODEL_DIRS")  # unset: named sources alone (the security review: any path)
    assert refused_model_source("/etc") == refused_model_source("/no/such") != ""
    assert "CLM_EXPLORE_MODEL_DIRS" in refused_model_source("/etc") and refused_model_source("default") == ""
    with monkeypatch.context() as admin:
        admin.setenv("CLM_EXPLORE_MODEL", str(allowed / "admins-choice"))
        assert refused_model_source(str(allowed / "admins-choice")) == ""  # the model sessions start with
    monkeypatch.setenv("CLM_EXPLORE_MODEL_DIRS", "*")
    assert refused_model_source("/etc") == ""  # one user's server: any path

    monkeypatch.setenv("CLM_EXPLORE_MODEL_DIRS", str(allowed))
    # AppTest keeps the sidebar's elements of a session's first run only: the folder is typed before it.
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.session_state["side_source"] = "local folder…"
    app.session_state["side_folder"] = "/etc"
    app.run()
    assert not app.exception
    assert any("its administrator" in e.value for e in app.sidebar.error)  # escaped Markdown, one message
    assert app.session_state["model_source"] == "tiny-random"  # unchanged, and the refusal says so
    assert any(e.value.endswith(r"Still using tiny\-random\.") for e in app.sidebar.error), app.sidebar.error


def test_a_budget_that_buys_no_row_is_a_warning_and_queues_nothing(at: AppTest) -> None:
    goto(at, "app_pages/4_budget.py")
    at.select_slider(key="budget_slider").set_value(0.0001).run()  # 4 of the tiny model's 42k parameters
    assert not at.exception, [e.value for e in at.exception]
    assert any("buys no row" in w.value for w in at.warning)
    at.select_slider(key="budget_slider").set_value(0.01).run()  # the page comes back
    at.multiselect(key="budget_methods").set_value(["head", "sparse"]).run()
    at.number_input(key="budget_number").set_value(0.01).run()
    assert any("buys no row" in w.value for w in at.warning)
    goto(at, "app_pages/5_finetune.py")
    at.selectbox(key="ft_method").set_value("sparse")
    at.number_input(key="ft_budget").set_value(0.01)
    button(at, "Launch").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert any("buys no row" in e.value for e in at.error)
    assert RunStore().list() == []  # refused before a run folder or a job existed


def _app_on_model_folder(model, tokenizer, folder: Path) -> AppTest:
    """A new session whose sidebar was given ``model`` saved with ``tokenizer`` as a local folder, run once."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.session_state["side_source"] = "local folder…"
    app.session_state["side_folder"] = str(folder)
    app.run()
    assert not app.exception
    return app


def test_sidebar_refuses_an_unsupported_model_folder_and_a_new_model_resets_the_layer_floor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_EXPLORE_MODEL_DIRS", str(tmp_path))  # the server allows model folders there
    from transformers import AutoModelForSequenceClassification, FunnelConfig

    from clm_explore.config import MaskConfig
    from clm_explore.modeling import load_model

    tiny = load_model("tiny-random", ["a", "b"])
    funnel = FunnelConfig(vocab_size=len(tiny.tokenizer), d_model=16, n_head=2, d_head=8, d_inner=32,
                          block_sizes=[1, 1], num_labels=2)
    app = _app_on_model_folder(AutoModelForSequenceClassification.from_config(funnel), tiny.tokenizer,
                               tmp_path / "funnel")
    assert any("funnel models are not supported" in e.value for e in app.sidebar.error)
    assert app.session_state["model_source"] == "tiny-random"  # unchanged

    tiny.model.save_pretrained(tmp_path / "bert")
    tiny.tokenizer.save_pretrained(tmp_path / "bert")
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.session_state["mask_options"] = MaskConfig(min_layer=1)  # chosen for the model before
    app.session_state["side_source"] = "local folder…"
    app.session_state["side_folder"] = str(tmp_path / "bert")
    app.run()
    assert not app.exception
    assert app.session_state["model_source"] == str(tmp_path / "bert")
    assert app.session_state["mask_options"].min_layer == -1  # back to auto for the new model


def test_the_job_panel_keeps_every_active_job_however_many_finished() -> None:
    from types import SimpleNamespace

    from clm_explore.ui.jobs import shown_jobs

    running = SimpleNamespace(name="running", done=False)  # the oldest job: the one on the device now
    ended = [SimpleNamespace(name=f"ended{i}", done=True) for i in range(10)]
    waiting = [SimpleNamespace(name=f"waiting{i}", done=False) for i in range(2)]
    cards = shown_jobs([running, *ended, *waiting])
    assert cards[:3] == [waiting[1], waiting[0], running]  # active first, newest first: none pushed off
    assert cards[3:] == ended[::-1][:8] and len(cards) == 11
    for job, name in ((running, "r"), (waiting[0], "w0"), (waiting[1], "w1")):
        job.id = name
    ordered = shown_jobs([running, *ended, *waiting], ahead={"w0": 2, "w1": 1})  # w1's turn comes first
    assert ordered[:3] == [running, waiting[1], waiting[0]]  # in the order they run (the multi-session review)


def create_finished(store: RunStore, name: str, method: str, data: str) -> str:
    run = store.create(name, method, {"data": data, "source": "tiny-random"})
    (run.path / "metrics.json").write_text("{}")
    store.set_status(run.id, RunStatus.SUCCEEDED)
    return run.id


SAMPLE_KEY = "sample:banking77_20:None:None:"


def test_compare_opens_on_a_pair_of_the_sessions_data_whatever_other_sessions_ran(at: AppTest) -> None:
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])  # names sort in creation order: one second ties by id
    sparse = create_finished(store, "a-sparse", "sparse", SAMPLE_KEY)
    full = create_finished(store, "b-full", "full", SAMPLE_KEY)
    create_finished(store, "c-other-full", "full", "upload:tiny.csv:None:None:abc")  # another session, newest
    goto(at, "app_pages/6_compare.py")
    assert (at.selectbox(key="cmp_a").value, at.selectbox(key="cmp_b").value) == (sparse, full)
    assert not at.warning, [w.value for w in at.warning]
    assert any("tiny.csv" in o for o in at.selectbox(key="cmp_b").options)  # each run's data set is named
    assert all("banking77_20" in o or "tiny.csv" in o for o in at.selectbox(key="cmp_a").options)

    create_finished(store, "d-other-sparse", "sparse", "upload:tiny.csv:None:None:abc")
    fresh = AppTest.from_file(APP, default_timeout=TIMEOUT)  # a new session on the sample
    fresh.run()
    goto(fresh, "app_pages/6_compare.py")
    assert (fresh.selectbox(key="cmp_a").value, fresh.selectbox(key="cmp_b").value) == (sparse, full)


def test_compare_refuses_two_runs_whose_rows_do_not_pair(at: AppTest) -> None:
    """The diff review: one data name, B's test rows re-sorted: the page said "0 disagreements in 40 test rows"."""
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    frame = pd.DataFrame({"row": range(4), "text": ["a card", "the rate", "my pin", "top up"],
                          "label": ["x", "y", "x", "y"], "pred": ["x", "y", "y", "y"], "prob": [0.9] * 4})
    ids = [create_finished(store, name, method, SAMPLE_KEY) for name, method in (("a", "sparse"), ("b", "full"))]
    frame.to_csv(store.get(ids[0]).path / "predictions.csv", index=False)
    frame.iloc[::-1].assign(row=range(4)).to_csv(store.get(ids[1]).path / "predictions.csv", index=False)
    goto(at, "app_pages/6_compare.py")
    at.selectbox(key="cmp_a").set_value(ids[0]).run()
    at.selectbox(key="cmp_b").set_value(ids[1]).run()
    assert any("tested on different rows" in e.value and "cannot be compared row by row" in e.value for e in at.error)
    assert not any("disagreements in" in c.value for c in at.caption)


def test_compare_picks_follow_the_sessions_data_and_b_follows_a(at: AppTest) -> None:
    from clm_explore.ui.state import DataChoice

    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    tiny = "upload:tiny.csv:None:None:abc000000000"
    sample_pair = [create_finished(store, n, m, SAMPLE_KEY) for n, m in (("a-sparse", "sparse"), ("b-full", "full"))]
    tiny_pair = [create_finished(store, n, m, tiny) for n, m in (("c-sparse", "sparse"), ("d-full", "full"))]
    goto(at, "app_pages/6_compare.py")
    assert [at.selectbox(key=k).value for k in ("cmp_a", "cmp_b")] == sample_pair
    goto(at, "app_pages/7_runs.py")
    at.session_state["data_choice"] = DataChoice("upload", "/tmp/tiny.csv", "tiny.csv", digest="abc" + "0" * 61)
    goto(at, "app_pages/6_compare.py")  # another data set: its own pair, not the picks kept for the sample
    assert [at.selectbox(key=k).value for k in ("cmp_a", "cmp_b")] == tiny_pair
    at.selectbox(key="cmp_a").set_value(sample_pair[0]).run()  # B follows A to a run of the same rows
    assert at.selectbox(key="cmp_b").value == sample_pair[1] and not at.warning


def test_sensitivity_share_view_at_a_budget_that_buys_no_row_is_a_warning(at: AppTest) -> None:
    goto(at, "app_pages/4_budget.py")
    at.select_slider(key="budget_slider").set_value(0.0001).run()
    goto(at, "app_pages/3_sensitivity.py")
    at.radio(key="sens_view").set_value("share_selected").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("buys no row" in w.value for w in at.warning)
    assert at.toggle(key="sens_compare") and at.header[-1].value == "Restricted vs unrestricted"  # page goes on


def test_an_attribution_says_what_its_bars_add_up_to_and_shows_its_note() -> None:
    def script() -> None:
        from clm_explore.attribution import TokenAttribution
        from clm_explore.ui.run_views import render_attribution

        render_attribution(TokenAttribution(words=["my", "card"], scores=[0.05, 0.2], target=0,
                                            target_label="card_arrival", probability=0.9, delta=0.01,
                                            note="text truncated to 64 sub-tokens"), "A: sparse", key="t")

    app = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not app.exception, [e.value for e in app.exception]
    captions = " ".join(c.value for c in app.caption)
    assert "Integrated Gradients toward card\\_arrival" in captions and "p(reference) = +0.24," in captions
    assert "delta = +0.01" in captions and "Note: text truncated to 64 sub\\-tokens" in captions


def test_two_runs_attributions_share_one_scale_and_say_when_they_explain_different_labels(monkeypatch) -> None:
    """The attributions review: each chart on its own axis drew a run's 0.24 as long as the other's 0.93, and on a
    row where the runs disagree the page did not say each explains its own answer."""
    def script() -> None:
        from types import SimpleNamespace

        from clm_explore.attribution import TokenAttribution
        from clm_explore.ui import cache, run_views

        found = {"a": TokenAttribution(words=["my", "card"], scores=[0.05, 0.24], target=0, target_label="card_arrival",
                                       probability=0.4, delta=0.0),
                 "b": TokenAttribution(words=["my", "card"], scores=[-0.1, 0.93], target=1,
                                       target_label="lost_or_stolen_card", probability=0.97, delta=0.0)}
        cache.attributions = lambda path, mtime, texts, target=None, output="probability": [found[path]]
        runs = [SimpleNamespace(path=__import__("pathlib").Path(name), method=name) for name in "ab"]
        run_views.explain_pair("my card", *runs, key="pair")

    app = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not app.exception, [e.value for e in app.exception]
    ranges = [json.loads(chart.proto.spec)["layout"]["xaxis"]["range"] for chart in app.get("plotly_chart")]
    assert len(ranges) == 2 and ranges[0] == ranges[1] and ranges[0][1] == pytest.approx(1.05 * 0.93)
    axis = json.loads(app.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]["title"]["text"]
    assert axis == "change in p(card_arrival)"
    assert any("each chart explains its own run's answer" in c.value for c in app.caption)


def test_a_disagreement_row_is_explained_toward_its_annotated_label_by_both_runs_on_request() -> None:
    """The attributions review: each run explained its own answer, and the page offered no way to ask both about
    the same label (the case study's question)."""
    def script() -> None:
        from types import SimpleNamespace

        import streamlit as st

        from clm_explore.attribution import TokenAttribution
        from clm_explore.ui import cache, run_views

        def attributions(path, mtime, texts, target=None, output="probability"):
            st.session_state.setdefault("asked", []).append((path, target))
            label = target or {"a": "card_arrival", "b": "lost_or_stolen_card"}[path]
            return [TokenAttribution(words=["my", "card"], scores=[0.1, 0.2], target=0, target_label=label,
                                     probability=0.5, delta=0.0, output=output)]

        cache.attributions = attributions
        runs = [SimpleNamespace(path=__import__("pathlib").Path(name), method=name) for name in "ab"]
        run_views.explain_pair("my card", *runs, key="pair", gold="card_arrival")

    app = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert app.session_state["asked"] == [("a", None), ("b", None)]  # each run's own answer first
    assert any("each chart explains its own run's answer" in c.value for c in app.caption)
    app.radio(key="pair_target").set_value("the annotated label (card_arrival)").run()
    assert app.session_state["asked"][-2:] == [("a", "card_arrival"), ("b", "card_arrival")]
    assert not any("each chart explains its own run's answer" in c.value for c in app.caption)


def test_the_pairs_bars_measure_the_logit_on_request_and_say_so() -> None:
    """The attributions review's leftover: the bars measured the probability alone, where Captum's tutorials
    attribute the logit."""
    def script() -> None:
        from types import SimpleNamespace

        import streamlit as st

        from clm_explore.attribution import TokenAttribution
        from clm_explore.ui import cache, run_views

        def attributions(path, mtime, texts, target=None, output="probability"):
            st.session_state.setdefault("asked", []).append(output)
            return [TokenAttribution(words=["my", "card"], scores=[0.5, 2.5], target=0, target_label="card_arrival",
                                     probability=0.5, delta=0.02, output=output)]

        cache.attributions = attributions
        runs = [SimpleNamespace(path=__import__("pathlib").Path(name), method=name) for name in "ab"]
        run_views.explain_pair("my card", *runs, key="pair", output=run_views.attribution_output_choice("pair_output"))

    app = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert app.session_state["asked"] == ["probability", "probability"]
    app.radio(key="pair_output").set_value("logit").run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.session_state["asked"][-2:] == ["logit", "logit"]
    axis = json.loads(app.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]["title"]["text"]
    assert axis == "change in logit(card_arrival)"
    captions = " ".join(c.value for c in app.caption)
    assert "its logit at the reference = +2.98, up to delta = +0.02" in captions


def test_a_charts_title_and_its_numbers_label_show_a_runs_text_as_text() -> None:
    def script() -> None:
        import pandas as pd
        import plotly.graph_objects as go

        from clm_explore.ui import views

        title = "A: full<a href='https://e.example'>[x](https://e.example)"
        views.chart(go.Figure(go.Bar(x=[1], y=[1]), layout={"title": title}), "c", pd.DataFrame({"n": [1]}), title)

    app = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not app.exception, [e.value for e in app.exception]
    [expander] = app.expander
    assert expander.label.startswith("Numbers") and "[x](" not in expander.label and "\\[x\\]\\(" in expander.label
    shown = json.loads(app.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]
    assert shown == "A: full‹a href='https://e.example'›[x](https://e.example)"  # plotly reads <a href> as a link


def test_the_runs_page_shows_a_folders_name_as_text(at: AppTest, tmp_path: Path) -> None:
    out = tmp_path / "a`![t](https:e.example)"  # a backtick ended the code span the path was shown in
    out.mkdir()
    (out / "clm_run.json").write_text(json.dumps({"method": "head", "config": {}}))
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    RunStore(os.environ["CLM_EXPLORE_RUNS"]).register_folder(out)
    goto(at, "app_pages/7_runs.py")
    caption = next(c.value for c in at.caption if c.value.startswith("Folder:"))
    assert "![t](" not in caption and "\\!\\[t\\]\\(https" in caption


def test_the_runs_page_labels_an_uploaded_file_of_texts_with_a_run(at: AppTest, tiny_data, tmp_path: Path) -> None:
    """A domain expert's model put to work on new texts: before, the app labelled one typed text at a time."""
    import clm_explore

    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    clm_explore.finetune(tiny_data, clm_explore.FinetuneConfig(method="head", epochs=1), store.root / "mine",
                         source="tiny-random", progress=False)
    record = store.register_folder(store.root / "mine")
    goto(at, "app_pages/7_runs.py")
    at.selectbox(key="runs_pick").set_value(record.id).run()
    texts = ["my card has not arrived", "<b>how</b> do I top up", "[x](https://e.example)"]
    raw = ("id,body\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts))).encode()
    at.file_uploader(key="runs_label_upload").set_value(("new tickets.csv", raw, "text/csv")).run(timeout=TIMEOUT)
    at.button(key="runs_label_go").click().run(timeout=TIMEOUT)
    [error] = [e.value for e in at.error]  # no column named like a text column: the box is named, and the file
    assert error.startswith("new tickets\\.csv\\: no text column found") and "pick it in the Text column box" in error
    assert "--text-col" not in error and "/tmp" not in error and "uploaded" not in error  # not the server's copy
    at.selectbox(key="runs_label_col").set_value("body").run(timeout=TIMEOUT)
    at.button(key="runs_label_go").click().run(timeout=TIMEOUT)
    assert not at.exception and not at.error, [e.value for e in at.error]
    [frame] = [f for f in at.dataframe if list(f.value.columns[:3]) == ["row", "text", "label"]]
    assert frame.value["text"].tolist() == texts  # user text in a table cell: shown as text, never as HTML
    expected = clm_explore.predict(store.root / "mine", texts).idxmax(axis=1).tolist()
    assert frame.value["label"].tolist() == expected
    assert any(c.value.startswith("3 text\\(s\\) labelled\\:") for c in at.caption), [c.value for c in at.caption]
    [download] = [d for d in at.get("download_button") if d.proto.label == "Download the labels (CSV)"]


def test_the_runs_page_flags_a_run_of_a_method_this_version_does_not_know(at: AppTest) -> None:
    """The upgrade review: a newer version's run was read without a word; the diff review: said with its short name."""
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    run_id = create_finished(store, "newer", "sparse", SAMPLE_KEY)
    (store.get(run_id).path / "clm_run.json").write_text(json.dumps({"method": "dora", "config": {}}))
    goto(at, "app_pages/7_runs.py")
    at.selectbox(key="runs_pick").set_value(run_id).run()
    [said] = [w.value for w in at.warning if "does not know" in w.value]
    assert "method 'dora'" in said and said.startswith("This run \\(" + escape_markdown(run_id))
    assert str(store.root) not in said


def test_a_labelling_whose_run_went_says_so_without_the_servers_paths(tmp_path: Path) -> None:
    """The diff review: a run deleted by another user while a file was labelled showed "Run folder /tmp/... does
    not exist" in the browser."""
    def script(gone: str) -> None:
        from clm_explore.ui import cache, labelling

        key = cache.labelling_key(gone, 0.0, "d" * 64, "new.csv", None)
        labelling._follow(cache.label_upload(key, b"text\nmy card\n", inline=True), key="k", box=True)

    app = AppTest.from_function(script, args=(str(tmp_path / "gone"),), default_timeout=TIMEOUT).run()
    assert not app.exception, [e.value for e in app.exception]
    [error] = [e.value for e in app.error]
    assert error.startswith("The run's folder is gone or damaged") and str(tmp_path) not in error


def test_a_labelling_refusal_names_the_text_column_box_only_where_the_page_shows_it() -> None:
    """The diff review: a .txt file's refusal pointed to a Text column box the page does not show for it."""
    from clm_explore.ui.labelling import _in_app_words

    said = ("new.txt looks like a tab-separated table, not one text per line: ... rename it .tsv (--text-col picks "
            "another column); else save one text per line, without a header.")
    assert "column" not in _in_app_words(said, box=False).split("rename it .tsv")[1].split(";")[0]
    missing = "new.csv: no text column found. Rename it, or pass the column with --text-col (text_col=)."
    assert _in_app_words(missing, box=True).endswith("Rename it, or pick it in the Text column box above.")


def test_a_model_card_that_is_a_link_is_not_shown(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "secret.txt").write_text("another account's file")
    (tmp_path / "run" / "README.md").symlink_to(tmp_path / "secret.txt")

    def script(folder: str) -> None:
        from types import SimpleNamespace

        from clm_explore.ui.run_views import render_model_card

        render_model_card(SimpleNamespace(path=folder), key="card")

    app = AppTest.from_function(script, args=(str(tmp_path / "run"),), default_timeout=TIMEOUT).run()
    assert not app.exception and not app.code  # the linked file's text was shown as the card
    assert any("is a link, not the run's own file" in c.value for c in app.caption)


def test_page_settings_survive_a_visit_to_another_page(at: AppTest) -> None:
    goto(at, "app_pages/5_finetune.py")
    assert any(c.value.startswith("Data: banking77") and "runs on: cpu" in c.value for c in at.caption)  # by Launch
    at.selectbox(key="ft_method").set_value("head")
    at.number_input(key="ft_epochs").set_value(2)
    at.number_input(key="ft_seed").set_value(7)
    at.selectbox(key="ft_schedule").set_value("cosine")
    at.checkbox(key="ft_cold").check()
    at.number_input(key="ft_budget").set_value(2.5)
    button(at, "Launch").click().run(timeout=TIMEOUT)  # a form's values are the ones it submitted
    assert not at.exception, [e.value for e in at.exception]
    # The card says what the job is, and that this session launched it (a shared queue: whose job is this?)
    assert any(" · head on banking77\\_20 with tiny\\-random · cpu" in m.value and m.value.endswith("*launched here*")
               for m in at.markdown), [m.value for m in at.markdown]
    goto(at, "app_pages/3_sensitivity.py")
    at.radio(key="sens_view").set_value("norm_score").run()
    at.toggle(key="sens_compare").set_value(True).run()
    goto(at, "app_pages/2_tokens.py")
    goto(at, "app_pages/5_finetune.py")
    assert at.selectbox(key="ft_method").value == "head" and at.number_input(key="ft_epochs").value == 2
    assert at.number_input(key="ft_seed").value == 7 and at.selectbox(key="ft_schedule").value == "cosine"
    assert at.checkbox(key="ft_cold").value is True
    assert at.number_input(key="ft_budget").value == 2.5  # it fell back to the Budget page's 1%: the next Launch too
    goto(at, "app_pages/3_sensitivity.py")
    assert at.radio(key="sens_view").value == "norm_score" and at.toggle(key="sens_compare").value is True

    goto(at, "app_pages/4_budget.py")  # the Budget page's launches take the Finetune form's epochs and seed
    assert any("trains 2 epoch(s) with seed 7" in c.value for c in at.caption)
    at.multiselect(key="budget_methods").set_value(["head"]).run()
    goto(at, "app_pages/2_tokens.py")
    goto(at, "app_pages/4_budget.py")
    assert at.multiselect(key="budget_methods").value == ["head"]
    at.button(key="budget_launch").click().run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    runs = RunStore().list()
    assert len(runs) == 2 and all((r.config["epochs"], r.config["seed"]) == (2, 7) for r in runs)
    assert [r.config["mask"]["budget"] for r in runs] == [0.025, 0.025]  # the budget launched is the shared one
    assert [r.config["schedule"] for r in runs] == ["linear", "cosine"]  # the Budget page's: the defaults


def test_compare_picks_survive_a_visit_to_another_page(at: AppTest) -> None:
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    ids = [create_finished(store, name, method, SAMPLE_KEY)
           for name, method in (("a-sparse", "sparse"), ("b-full", "full"), ("c-full", "full"))]
    goto(at, "app_pages/6_compare.py")
    assert at.selectbox(key="cmp_b").value == ids[2]
    at.selectbox(key="cmp_b").set_value(ids[1]).run()
    goto(at, "app_pages/7_runs.py")
    goto(at, "app_pages/6_compare.py")
    assert (at.selectbox(key="cmp_a").value, at.selectbox(key="cmp_b").value) == (ids[0], ids[1])
    store.delete(ids[1])  # a kept pick that is gone falls back to the default, and says so
    goto(at, "app_pages/7_runs.py")
    goto(at, "app_pages/6_compare.py")
    assert at.selectbox(key="cmp_b").value == ids[2]
    assert any("Run B" in w.value and "no longer on this server" in w.value for w in at.warning)


def test_a_compared_run_deleted_meanwhile_is_never_replaced_by_the_other_side(at: AppTest) -> None:
    # Another user deletes run B while this page shows it: Streamlit fell back to the list's first run, Run A
    # itself ("0 disagreements"), without a word.
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    ids = [create_finished(store, name, method, SAMPLE_KEY)
           for name, method in (("a-full", "full"), ("b-sparse", "sparse"), ("c-head", "head"))]
    goto(at, "app_pages/6_compare.py")
    at.selectbox(key="cmp_a").set_value(ids[2]).run()
    at.selectbox(key="cmp_b").set_value(ids[0]).run()
    assert ids[2] not in at.selectbox(key="cmp_b").options  # B is never A
    store.delete(ids[0])
    at.run()
    a, b = at.selectbox(key="cmp_a").value, at.selectbox(key="cmp_b").value
    assert (a, b) == (ids[2], ids[1])
    assert any("Run B" in w.value and "no longer on this server" in w.value for w in at.warning)


def test_a_download_of_a_run_deleted_meanwhile_says_so(tmp_path: Path) -> None:
    import io
    import zipfile

    from clm_explore.ui.run_views import run_zip

    store = RunStore(tmp_path)
    run_id = create_finished(store, "gone", "full", SAMPLE_KEY)
    assert zipfile.ZipFile(io.BytesIO(run_zip(store, run_id))).namelist() == [f"{run_id}/metrics.json"]
    store.delete(run_id)  # after the page was drawn, before the click: the zip is made on the click
    archive = zipfile.ZipFile(io.BytesIO(run_zip(store, run_id)))  # before: an error in the server log, nothing else
    assert "was deleted from the server" in archive.read(f"{run_id}/DELETED.txt").decode()


def test_runs_of_two_users_uploads_with_one_name_are_told_apart(tmp_path: Path) -> None:
    from clm_explore.ui.run_views import data_mismatch, run_label

    store = RunStore(tmp_path)
    theirs, mine = "upload:train.csv:None:None:45e6c6b32ed4", "upload:train.csv:None:None:3c571d74a94c"
    ids = [create_finished(store, name, "head", key) for name, key in (("theirs", theirs), ("mine", mine))]
    a, b = (store.get(i) for i in ids)
    assert run_label(a) == f"{ids[0]} (head, train.csv (45e6c6), tiny-random)"  # was "(head, train.csv)" for both
    said = data_mismatch(a, b)
    assert "train\\.csv \\(45e6c6\\)" in said and "train\\.csv \\(3c571d\\)" in said  # Markdown-escaped
    assert "upload:" not in said  # the inner keys, "upload:train.csv:None:None:45e6c6b32ed4", before
    mapped = create_finished(store, "mapped", "head", "shared:snips:question:qtype:")
    plain = create_finished(store, "plain", "head", "shared:snips:None:None:")
    assert "snips, text column question and label column qtype" in data_mismatch(store.get(mapped), store.get(plain))
    assert "(head, snips, tiny-random)" in run_label(store.get(plain))
    bundled = create_finished(store, "bundled", "head", SAMPLE_KEY)
    served = create_finished(store, "served", "head", "shared:banking77_20:None:None:")
    said = data_mismatch(store.get(bundled), store.get(served))  # it read "banking77_20, run B on banking77_20"
    assert "the bundled sample banking77\\_20, run B on the server's data set banking77\\_20" in said


def test_a_case_study_stopped_while_nobody_followed_it_starts_again_when_a_page_asks(monkeypatch) -> None:
    """The diff review: a stopped study reached the report as a TaskStopped page error; scores restarted, studies
    did not."""
    import clm_explore.casestudy
    from clm_explore.jobs import KeyedTask, TaskStopped
    from clm_explore.ui import cache

    key = ("a", 1.0, "b", 2.0, 10, "probability")  # the two runs, their rows attributed, what the scores measure
    stopped = KeyedTask(key, error=TaskStopped("Stopped while attributing."))
    stopped.finished.set()
    cache._studies()._tasks[key] = stopped
    monkeypatch.setattr(clm_explore.casestudy, "case_study", lambda *args, **kwargs: "a study")
    task = cache.case_study(*key, inline=True)
    assert task is not stopped and task.done and task.error is None and task.result == "a study"
    cache._studies().forget(task)


def test_the_runs_page_says_how_much_disk_the_runs_take_and_how_to_prune_them(at: AppTest) -> None:
    """The crash review: ~90 MB a run, nothing deleting them, and no word of the disk on the page."""
    from clm_explore.ui import cache

    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    run_id = create_finished(store, "big", "full", SAMPLE_KEY)
    (store.get(run_id).path / "model.safetensors").write_bytes(b"0" * 3 * 2**20)
    for other in (store.root / "_uploads" / ("a" * 32), store.root / ".deleting-x"):  # no run's: not counted as runs
        other.mkdir(parents=True, exist_ok=True)
        (other / "big.bin").write_bytes(b"0" * 5 * 2**20)
    cache.runs_disk.clear()
    goto(at, "app_pages/7_runs.py")
    said = next(c.value for c in at.caption if "run(s) take" in c.value)
    assert said.startswith("1 run(s) take 3.0 MB on the server; "), said
    assert "free on its disk" in said and "clm-explore runs --prune DAYS" in said


def test_a_run_that_ended_without_a_model_is_launched_again_with_its_settings(at: AppTest) -> None:
    """The crash review: after a server restart interrupted a run, its options had to be set again by hand."""
    from clm_explore.config import FinetuneConfig, MaskConfig, to_dict
    from clm_explore.data import data_digest
    from clm_explore.ui import cache

    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    choice = at.session_state["data_choice"]
    cfg = FinetuneConfig(method="sparse", epochs=1, seed=5, max_length=32, device="cpu", mask=MaskConfig(budget=0.02))
    run = store.create("lost", "sparse", {**to_dict(cfg), "source": "tiny-random", "data": choice.key,
                                          "data_digest": data_digest(cache.data(choice))})
    store.set_status(run.id, RunStatus.INTERRUPTED)
    other = store.create("theirs", "sparse", {**to_dict(cfg), "source": "tiny-random",
                                              "data": "upload:tiny.csv:None:None:abc"})
    store.set_status(other.id, RunStatus.FAILED)
    goto(at, "app_pages/7_runs.py")
    at.selectbox(key="runs_pick").set_value(other.id).run()
    assert any("choose its data on the Data page \\(tiny\\.csv" in c.value for c in at.caption)
    assert not [b for b in at.button if b.key == "runs_relaunch"]  # another data set: not on this one's rows
    at.selectbox(key="runs_pick").set_value(run.id).run()
    at.button(key="runs_relaunch").click().run(timeout=TIMEOUT)
    assert not at.exception and any("Queued again as" in s.value for s in at.success), [e.value for e in at.error]
    again = next(r for r in store.list() if r.name == "lost" and r.id != run.id)
    assert again.status is RunStatus.SUCCEEDED and again.config["seed"] == 5 and again.config["mask"]["budget"] == 0.02
    assert store.get(run.id).status is RunStatus.INTERRUPTED  # the old run stays as it was


def test_a_succeeded_run_is_trained_at_the_lowest_seeds_its_setting_has_not_had(at: AppTest) -> None:
    """An engineer who ran one seed and wants the spread had to set the run's options again on the Finetune form."""
    import dataclasses

    from clm_explore.config import FinetuneConfig, MaskConfig, to_dict
    from clm_explore.data import data_digest
    from clm_explore.ui import cache

    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    choice = at.session_state["data_choice"]
    cfg = FinetuneConfig(method="random", epochs=1, max_length=32, device="cpu", mask=MaskConfig(budget=0.02))
    beside = {"source": "tiny-random", "data": choice.key, "data_digest": data_digest(cache.data(choice))}

    def recorded(name: str, seed: int, status: RunStatus, **changes) -> str:  # as a run records it: mask seed settled
        seeded = dataclasses.replace(cfg, seed=seed, mask=dataclasses.replace(cfg.mask, seed=seed), **changes)
        run_id = store.create(name, "random", {**to_dict(seeded), **beside}).id
        store.set_status(run_id, status)
        return run_id

    first = recorded("mine-s0", 0, RunStatus.SUCCEEDED)
    recorded("mine-s1", 1, RunStatus.SUCCEEDED, device="cuda")  # where it ran is no part of the setting
    recorded("mine-s2", 2, RunStatus.FAILED)  # its seed has no result: offered again
    recorded("other", 3, RunStatus.SUCCEEDED, lr=1e-2)  # another setting: its seed is no matter
    goto(at, "app_pages/7_runs.py")
    at.selectbox(key="runs_pick").set_value(first).run()
    assert any("Seeds taken by runs of this setting: 0, 1. The new runs train at seed 2, 3" in c.value
               for c in at.caption), [c.value for c in at.caption]
    at.button(key="runs_more_seeds").click().run(timeout=TIMEOUT)
    assert not at.exception and any("Queued 2 run(s) at seed 2, 3" in s.value for s in at.success), [
        e.value for e in at.error]
    new = {r.name: r for r in store.list() if r.status is RunStatus.SUCCEEDED and r.name in ("mine-s2", "mine-s3")}
    assert sorted(new) == ["mine-s2", "mine-s3"]
    for name, seed in (("mine-s2", 2), ("mine-s3", 3)):  # each draws its own random rows, not seed 0's
        trained = json.loads((new[name].path / "clm_run.json").read_text())["config"]
        assert trained["seed"] == seed and trained["mask"] == {**to_dict(cfg.mask), "seed": seed}
        # The faces review: the registry kept the config as given, the Runs page showed it as clm_run.json's.
        assert {k: v for k, v in new[name].config.items() if k not in beside} == trained


def test_a_command_line_run_is_trained_at_more_seeds_on_its_rows_or_told_how(at: AppTest) -> None:
    """The diff review: a run of `clm-explore finetune --data sample` was told to "choose its data on the Data page
    (/work/...)", the sample chosen already: the CLI records a path where the app records its key. The faces review:
    the seeds the app then trained were not counted as the CLI run's setting's, and were offered again."""
    from clm_explore.config import FinetuneConfig, MaskConfig, to_dict
    from clm_explore.data import SAMPLE_DATA, data_digest
    from clm_explore.training import recorded_config
    from clm_explore.ui import cache

    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    choice = at.session_state["data_choice"]
    cfg = FinetuneConfig(method="head", epochs=1, max_length=32, device="cpu", mask=MaskConfig(budget=0.02))
    ids = {}
    for name, data, digest in (("cli-sample", str(SAMPLE_DATA), data_digest(cache.data(choice))),
                               ("cli-other", "/data/tickets.csv", "f" * 64)):
        # As `clm-explore finetune` registers a run: the settled config, the path typed, the rows' digest.
        run = store.create(name, "head", {**to_dict(recorded_config(cfg)), "source": "tiny-random", "data": data,
                                          "data_digest": digest})
        (run.path / "clm_run.json").write_text(json.dumps({"method": "head", "data_digest": digest}))
        store.set_status(run.id, RunStatus.SUCCEEDED)
        ids[name] = run.id
    goto(at, "app_pages/7_runs.py")
    at.selectbox(key="runs_pick").set_value(ids["cli-other"]).run()
    said = " ".join(c.value for c in at.caption)
    assert "trained from the command line" in said and "/data/tickets" not in said
    assert not [b for b in at.button if b.key == "runs_more_seeds"]
    at.selectbox(key="runs_pick").set_value(ids["cli-sample"]).run()  # its rows are the session's: offered
    at.button(key="runs_more_seeds").click().run(timeout=TIMEOUT)
    assert not at.exception and any("Queued 2 run(s) at seed 1, 2" in s.value for s in at.success), [
        e.value for e in at.error]
    at.selectbox(key="runs_pick").set_value(ids["cli-sample"]).run()
    assert any(e.label == "Train this setting at more seeds (3 so far)" for e in at.expander), [
        e.label for e in at.expander]
    assert any("Seeds taken by runs of this setting: 0, 1, 2. The new runs train at seed 3, 4" in c.value
               for c in at.caption), [c.value for c in at.caption]


def waiting_job(store: RunStore, name: str):
    """A job another session queued, still waiting (the tests' inline jobs never wait), in the app's queue."""
    from clm_explore.jobs import Job
    from clm_explore.runs import default_root
    from clm_explore.ui.jobs import _queue

    run = store.create(name, "sparse", {})
    job = Job(f"job-{name}", print, {}, run.id, "cpu")
    _queue(str(default_root().resolve()), True)._jobs[job.id] = job
    return run, job


def test_cancelling_a_job_asks_first(at: AppTest) -> None:
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    run, job = waiting_job(store, "theirs")
    goto(at, "app_pages/5_finetune.py")
    assert any(m.value.endswith("waiting or running: [see the queue](#queue).") for m in at.markdown)  # demo review
    assert run.id != "theirs" and run.id.endswith("-theirs")  # the registry puts the launch time before the name
    assert at.button(key=f"ft_cancel_{job.id}").label == "Cancel theirs…"  # told apart, no backslash, not cut short
    at.button(key=f"ft_cancel_{job.id}").click().run()
    assert not job.cancel_event.is_set() and not job.done  # one click only asks
    assert any("this session did not launch it: it is most likely another user's" in c.value for c in at.caption)
    at.button(key=f"ft_cancel_no_{job.id}").click().run()  # "Keep it"
    assert not job.cancel_event.is_set() and at.button(key=f"ft_cancel_{job.id}")
    at.button(key=f"ft_cancel_{job.id}").click().run()
    at.button(key=f"ft_cancel_yes_{job.id}").click().run()
    assert job.done and job.status is RunStatus.CANCELLED and store.get(run.id).status is RunStatus.CANCELLED

    run, job = waiting_job(store, "zz-also-theirs")
    goto(at, "app_pages/7_runs.py")
    at.selectbox(key="runs_pick").set_value(run.id).run()
    assert not [b for b in at.get("download_button") if b.proto.label.startswith("Download folder")]
    assert any("downloaded once the run ends" in c.value for c in at.caption)  # before: a zip of a half folder
    at.button(key=f"runs_cancel_{job.id}").click().run()
    assert not job.cancel_event.is_set()
    at.button(key=f"runs_cancel_yes_{job.id}").click().run()
    assert job.done and store.get(run.id).status is RunStatus.CANCELLED


def test_a_job_cancelled_from_another_session_says_so_to_its_owner(at: AppTest) -> None:
    from clm_explore.ui.state import LAUNCHED

    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    run, job = waiting_job(store, "mine")
    at.session_state[LAUNCHED] = {run.id}  # this session launched it
    other = AppTest.from_file(APP, default_timeout=TIMEOUT)
    other.run()
    goto(other, "app_pages/7_runs.py")
    other.selectbox(key="runs_pick").set_value(run.id).run()
    other.button(key=f"runs_cancel_{job.id}").click().run()
    other.button(key=f"runs_cancel_yes_{job.id}").click().run()
    assert job.done and job.status is RunStatus.CANCELLED
    goto(at, "app_pages/5_finetune.py")
    card = next(m.value for m in at.markdown if "launched here" in m.value)
    assert "cancelled from another session" in card, card
    goto(other, "app_pages/5_finetune.py")  # the session that cancelled it, which did not launch it: no note
    assert not any("cancelled from another session" in m.value for m in other.markdown)

    run, job = waiting_job(store, "mine-too")
    at.session_state[LAUNCHED] = {*at.session_state[LAUNCHED], run.id}
    at.run()
    at.button(key=f"ft_cancel_{job.id}").click().run()
    at.button(key=f"ft_cancel_yes_{job.id}").click().run()  # cancelled by its owner: nothing to tell
    cards = [m.value for m in at.markdown if "launched here" in m.value and escape_markdown(run.id) in m.value]
    assert len(cards) == 1 and "cancelled from another session" not in cards[0], cards


def test_a_label_check_waited_on_does_not_name_an_upload() -> None:
    from clm_explore.ui import cache, state

    assert cache.audit_label(state.DataChoice("upload", "/u/x/acme_patients.csv", "acme_patients.csv")) == (
        "the label check of an uploaded file")  # before: its file name, to every session waiting behind it
    assert cache.audit_label(state.DataChoice("shared", "/d/snips", "snips")) == "the label check of snips"


def test_a_failed_jobs_traceback_is_shown_to_the_session_that_launched_it_only(at: AppTest) -> None:
    """The two-user review: another session saw the job's traceback, the server's paths and code lines."""
    from clm_explore.ui import state

    run, job = waiting_job(RunStore(os.environ["CLM_EXPLORE_RUNS"]), "failing")
    job.error = 'Traceback (most recent call last):\n  File "/srv/secret/training.py", line 9\nValueError: bad rows'
    job.status, job.finished = RunStatus.FAILED, time.time()
    job._done.set()
    goto(at, "app_pages/5_finetune.py")
    assert any("The job failed" in e.value and "bad rows" in e.value for e in at.error)  # the reason, for everyone
    assert not [x for x in at.expander if x.label == "Traceback"]
    at.session_state[state.LAUNCHED] = {run.id}
    at.run()
    assert [x for x in at.expander if x.label == "Traceback"]


def test_a_running_jobs_card_says_its_cancel_was_asked(at: AppTest) -> None:
    run, job = waiting_job(RunStore(os.environ["CLM_EXPLORE_RUNS"]), "running")
    assert job.claim()  # the worker took it: a cancel now waits for its next step
    job.status = RunStatus.RUNNING
    goto(at, "app_pages/5_finetune.py")
    at.button(key=f"ft_cancel_{job.id}").click().run()
    at.button(key=f"ft_cancel_yes_{job.id}").click().run()
    assert job.cancel_event.is_set() and not job.done
    assert any("Cancel requested" in c.value for c in at.caption)  # a toast from the button's callback was dropped


def test_a_cancel_question_left_open_expires(at: AppTest, monkeypatch) -> None:
    from clm_explore.ui import jobs as ui_jobs

    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    _, job = waiting_job(store, "theirs")
    goto(at, "app_pages/5_finetune.py")
    at.button(key=f"ft_cancel_{job.id}").click().run()
    assert at.button(key=f"ft_cancel_yes_{job.id}")  # asked
    monkeypatch.setattr(ui_jobs, "CANCEL_ARMED_SECONDS", -1.0)  # as if the user came back a minute later
    goto(at, "app_pages/4_budget.py")
    goto(at, "app_pages/5_finetune.py")
    assert at.button(key=f"ft_cancel_{job.id}") and not any(
        b.key == f"ft_cancel_yes_{job.id}" for b in at.button)  # the question is not waiting for one click
    ui_jobs.job_queue().cancel(job.id)  # leave no waiting job behind


def test_a_job_that_ended_while_preparing_says_how_it_ended() -> None:
    from clm_explore.jobs import Progress
    from clm_explore.ui.jobs import progress_bar

    p = Progress(phase="scoring rows", phase_done=3, phase_total=8)
    assert progress_bar(p) == (3 / 8, "preparing: scoring rows 3/8")  # running: unchanged
    assert progress_bar(p, RunStatus.RUNNING) == (3 / 8, "preparing: scoring rows 3/8")
    assert progress_bar(p, RunStatus.CANCELLED) == (0.0, "cancelled while preparing (scoring rows)")
    named = Progress(phase="preparing full", phase_done=0, phase_total=1)  # the phase names it: not said twice
    assert progress_bar(named, RunStatus.CANCELLED) == (0.0, "cancelled while preparing (full)")
    assert progress_bar(Progress(), RunStatus.FAILED) == (0.0, "failed before its first step")
    p.step, p.total_steps, p.epoch = 5, 10, 2
    assert progress_bar(p, RunStatus.CANCELLED) == (0.5, "cancelled at step 5/10 · epoch 2")
    assert progress_bar(p, RunStatus.FAILED) == (0.5, "failed at step 5/10 · epoch 2")  # a worker killed, say
    assert progress_bar(p, RunStatus.RUNNING) == (0.5, "step 5/10 · epoch 2")
    assert progress_bar(Progress()) == (0.0, "starting training")  # was 'step 0/? · epoch 0.00'
    done = Progress(step=10, total_steps=10, epoch=1, phase="evaluating on test and saving")
    assert progress_bar(done) == (1.0, "step 10/10 · epoch 1 · evaluating on test and saving…")  # not idle-looking
    assert progress_bar(done, RunStatus.SUCCEEDED) == (1.0, "step 10/10 · epoch 1")


def test_the_same_bytes_uploaded_under_another_name_take_that_name_and_keep_the_columns(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    from dataclasses import replace

    from clm_explore.ui import state

    monkeypatch.setattr(state, "uploads_root", lambda: tmp_path)
    monkeypatch.setattr(state, "session_id", lambda: "s1")
    raw = b"question,qtype\nhello there,a\n"
    first = replace(state.upload_choice(raw, "snips_small.csv", None), text_col="question", label_col="qtype")
    assert state.upload_choice(raw, "snips_small.csv", first) is first  # the script's next run: nothing new
    renamed = state.upload_choice(raw, "train.csv", first)
    assert renamed.name == "train.csv"  # the page went on naming snips_small.csv
    assert (renamed.text_col, renamed.label_col, renamed.digest) == ("question", "qtype", first.digest)


def test_uploads_whose_names_have_no_ascii_letters_do_not_overwrite_each_other(tmp_path: Path) -> None:
    first = save_upload(b"text,label\na,x\n", "数据.csv", folder=tmp_path)
    second = save_upload(b"text,label\nb,y\n", "统计.csv", folder=tmp_path)
    assert first.path != second.path and Path(first.path).read_bytes() == b"text,label\na,x\n"
    assert (first.name, second.name) == ("数据.csv", "统计.csv")  # shown under their own names
    assert all(Path(c.path).parent == tmp_path.resolve() and Path(c.path).name.isascii() for c in (first, second))
    again = save_upload(b"text,label\na,x\n", "数据.csv", folder=tmp_path)
    assert again.path == first.path  # the same file again: the same stored name
    clash = save_upload(b"text,label\nc,z\n", "数据 1.csv", folder=tmp_path)  # sanitised to "1.csv"
    other = save_upload(b"text,label\nd,w\n", "统计 1.csv", folder=tmp_path)
    assert clash.path != other.path and Path(clash.path).read_bytes() == b"text,label\nc,z\n"


def test_another_model_is_told_the_default_rates_come_from_the_default_one(at: AppTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_EXPLORE_MODEL_DIRS", str(tmp_path))  # the server allows model folders there
    from clm_explore.modeling import load_model
    from clm_explore.ui.views import refusal_text

    goto(at, "app_pages/5_finetune.py")
    assert not [c for c in at.caption if "default learning rates" in c.value]  # the bundled model: no note
    tiny = load_model("tiny-random", ["a", "b"])
    tiny.model.save_pretrained(tmp_path / "bert")
    tiny.tokenizer.save_pretrained(tmp_path / "bert")
    pick_model_folder(at, tmp_path / "bert")
    assert [c for c in at.caption if "default learning rates were chosen on all-MiniLM-L6-v2" in c.value]
    assert refusal_text("use --method lora for an adapter baseline.") == (
        "use the method 'lora' (the Method box) for an adapter baseline.")


def test_a_model_saved_again_into_its_folder_is_loaded_again_not_served_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_EXPLORE_MODEL_DIRS", str(tmp_path))  # the server allows model folders there
    import copy

    from transformers import AutoModelForSequenceClassification

    from clm_explore.modeling import load_model

    tiny = load_model("tiny-random", ["a", "b"])
    at = _app_on_model_folder(tiny.model, tiny.tokenizer, tmp_path / "bert")
    goto(at, "app_pages/4_budget.py")
    assert lowest_layer_shown(at) == "1"  # auto: the upper half of 2 layers
    deeper = copy.deepcopy(tiny.model.config)
    deeper.num_hidden_layers = 4
    AutoModelForSequenceClassification.from_config(deeper).save_pretrained(tmp_path / "bert")  # retrained in place
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert lowest_layer_shown(at) == "2"  # the upper half of the 4 layers now in the folder


def test_every_page_renders_with_a_head_outside_the_classifier_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_EXPLORE_MODEL_DIRS", str(tmp_path))  # the server allows model folders there
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    from clm_explore.modeling import load_model

    tiny = load_model("tiny-random", ["a", "b"])
    distilbert = DistilBertConfig(vocab_size=len(tiny.tokenizer), dim=16, n_layers=2, n_heads=2, hidden_dim=32)
    at = _app_on_model_folder(AutoModelForSequenceClassification.from_config(distilbert), tiny.tokenizer,
                              tmp_path / "distilbert")
    assert at.session_state["model_source"] == str(tmp_path / "distilbert") and not at.sidebar.error
    for page in PAGES[:4]:  # tokens, sensitivity (scored: q_lin, ffn.lin1, ...), budget, finetune
        goto(at, page)
        assert at.title and not at.error, (page, [e.value for e in at.error])


def test_charts_carry_their_numbers_and_a_diverging_map_centres_on_zero() -> None:
    def script() -> None:
        import pandas as pd

        from clm_explore.ui.run_views import confusion
        from clm_explore.ui.views import heatmap

        table = pd.DataFrame({"layer": [0, 0, 1, 1], "module": ["q", "k", "q", "k"],
                              "share": [3e-5, -1e-8, 2e-8, -4e-5]})
        heatmap(table, "share", "Difference", "d", "RdBu", diverging=True)
        labels = [f"label {i}" for i in range(20)]
        confusion({"labels": labels, "confusion": [[int(i == j) for j in range(20)] for i in range(20)]},
                  "A: full", key="c")

    app = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not app.exception, [e.value for e in app.exception]
    heat, matrix = (json.loads(chart.proto.spec) for chart in app.get("plotly_chart"))
    assert heat["data"][0]["zmid"] == 0  # +2e-8 is blue, not red: the white point is 0, not the data's middle
    assert matrix["layout"]["xaxis"]["dtick"] == 1 and matrix["layout"]["yaxis"]["dtick"] == 1  # every label named
    assert matrix["data"][0]["texttemplate"] == "%{z}"  # 20 labels: each cell's count printed, not colour alone
    assert [e.label for e in app.expander] == ["Numbers\\: Difference", "Numbers\\: A\\: full"]  # escaped Markdown
    assert app.dataframe[0].value.loc["L1", "k"] == -4e-5
    assert app.dataframe[1].value.shape == (20, 20) and app.dataframe[1].value.loc["label 3", "label 3"] == 1


def test_coded_labels_are_drawn_as_names_not_as_positions_on_a_scale() -> None:
    # Labels 1, 2, 10, 100, 1000 on a numeric axis: a tick per integer up to 1000 froze the browser for minutes.
    def script() -> None:
        import pandas as pd

        from clm_explore.data import AnnotatedData, data_report
        from clm_explore.ui.run_views import confusion, f1_difference
        from clm_explore.ui.views import render_data_report

        codes = ["1", "2", "10", "100", "1000"]
        rows = pd.DataFrame({"text": [f"text {i} of {c}" for c in codes for i in range(4)],
                             "label": [c for c in codes for _ in range(4)]})
        render_data_report(data_report(AnnotatedData(rows, rows.head(0), rows, codes)), key="d")
        metrics = {"labels": codes, "confusion": [[int(i == j) for j in range(5)] for i in range(5)],
                   "per_label_f1": dict.fromkeys(codes, 0.5)}
        confusion(metrics, "A", key="c")
        f1_difference(metrics, {**metrics, "per_label_f1": dict.fromkeys(codes, 0.25)}, key="f")

    app = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not app.exception, [e.value for e in app.exception]
    rows, matrix, f1 = (json.loads(chart.proto.spec)["layout"] for chart in app.get("plotly_chart"))
    assert rows["xaxis"]["type"] == "category"
    assert matrix["xaxis"]["type"] == matrix["yaxis"]["type"] == "category" and f1["yaxis"]["type"] == "category"
    from clm_explore.report import _confusion_figure, _f1_figure

    metrics = {"labels": ["1", "10"], "confusion": [[1, 0], [0, 1]], "per_label_f1": {"1": 1.0, "10": 1.0}}
    assert _confusion_figure(metrics, "A").layout.xaxis.type == "category"
    assert _confusion_figure(metrics, "A").data[0].texttemplate == "%{z}"  # counts printed, as on Compare
    assert _f1_figure(metrics, None, ("A", "B")).layout.xaxis.type == "category"


def test_a_label_one_run_has_no_f1_for_is_named_not_drawn_as_a_difference_from_0() -> None:
    def script() -> None:
        from clm_explore.ui.run_views import f1_difference

        f1_difference({"per_label_f1": {"card": 0.9, "loan": 0.5, "gamma": 0.4}},
                      {"per_label_f1": {"card": 0.7, "loan": 0.5}}, key="f")

    app = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not app.exception, [e.value for e in app.exception]
    (chart,) = app.get("plotly_chart")
    drawn = json.loads(chart.proto.spec)["data"][0]
    assert sorted(drawn["y"]) == ["card", "loan"]  # before: gamma drawn at A - B = 0.4, as if B scored 0 on it
    assert any("B has no F1 for gamma" in c.value for c in app.caption)


def test_a_damaged_predictions_file_is_named_on_the_compare_page(tmp_path) -> None:
    from clm_explore.data import DataError
    from clm_explore.ui import cache

    (tmp_path / "predictions.csv").write_text("row,text,label\n0,hi,a\n")  # KeyError traceback before
    with pytest.raises(DataError, match=r"predictions.csv has no pred or prob column \(it needs text and label and "
                       "pred and prob"):
        cache.predictions(str(tmp_path), 0.0)


def test_a_runs_unreadable_files_are_named_not_shown_as_missing_figures(tmp_path) -> None:
    """The app review: a damaged metrics.json read on Compare as "This run has no confusion matrix"."""
    from clm_explore.ui import run_views

    store = RunStore(tmp_path / "runs")
    run = store.create("damaged", "head", {})
    store.set_status(run.id, RunStatus.SUCCEEDED)
    (run.path / "metrics.json").write_text('{"accuracy": 0.5, "confusion": [[1')  # cut short
    assert run_views.unread_files_note(store.get(run.id)).startswith("its metrics.json cannot be read")
    (run.path / "metrics.json").write_text('{"accuracy": 0.5}')
    assert run_views.unread_files_note(store.get(run.id)) == ""
    shutil.rmtree(run.path)
    assert run_views.unread_files_note(store.get(run.id)) == f"{run_views.FOLDER_GONE}."


def test_a_data_set_edited_on_the_servers_disk_is_read_again(tmp_path) -> None:
    import dataclasses

    from clm_explore.ui import cache, state

    def write(rows: int) -> None:
        (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"card {i} came,a\nrate {i} up,b\n"
                                                                     for i in range(rows)))

    write(20)
    choice = state.DataChoice("shared", str(tmp_path), "d", version=state.files_version(str(tmp_path)))
    assert len(cache.data(choice).train) + len(cache.data(choice).test) < 40
    write(40)  # a shared data set updated in place: the cache kept serving the old rows to every job
    fresh = dataclasses.replace(choice, version=state.files_version(str(tmp_path)))
    assert fresh.version != choice.version and fresh.key == choice.key  # the runs' data key is unchanged
    assert len(cache.data(fresh).train) + len(cache.data(fresh).test) > 40


def test_an_empty_queue_after_a_restart_says_this_sessions_runs_were_interrupted(at: AppTest) -> None:
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    mine, theirs = (store.create(name, "sparse", {"data": "sample", "source": "tiny-random"}) for name in ("a", "b"))
    for run in (mine, theirs):
        store.set_status(run.id, RunStatus.INTERRUPTED, error="the server stopped")
    at.session_state["launched_runs"] = {mine.id}  # the card went with the old server's queue, in silence
    goto(at, "app_pages/5_finetune.py")
    captions = [c.value for c in at.caption if "No jobs yet" in c.value]
    assert captions and "The server restarted since this session launched 1 of the runs below" in captions[0]


def test_a_refused_upload_leaves_the_sessions_own_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CLM_EXPLORE_UPLOADS_MB", str(2.5 / 1024))  # 2.5 KiB
    kb = b"text,label\n" + b"x" * 1013
    mine, busy = "a" * 32, "b" * 32
    save_upload(kb + b"M", "mine.csv", folder=tmp_path / mine)
    save_upload(kb + b"B", "busy.csv", folder=tmp_path / busy)  # another session, in use
    with pytest.raises(DataError, match="is full with files in use"):
        save_upload(kb + b"N" * 1000, "new.csv", folder=tmp_path / mine)
    # before: mine.csv went first, then the upload was refused anyway (diff review)
    assert sorted(f.name for f in tmp_path.glob("*/*")) == ["busy.csv", "mine.csv"]


def test_the_data_pages_choice_and_the_other_pages_share_one_versioned_choice(tmp_path, monkeypatch) -> None:
    from clm_explore.ui import state

    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"card {i} came,a\nrate {i} up,b\n" for i in range(20)))
    monkeypatch.setattr(state, "SAMPLE_DIR", tmp_path)
    first = state.sample_choice()  # unversioned before: the Data page kept serving the rows as first read
    assert first is not None and first.version == state.files_version(str(tmp_path)) != ""
    (tmp_path / "train.csv").write_text("text,label\nnew,a\nrows,b\n" * 20)
    assert state.sample_choice().version != first.version


def test_one_session_may_not_fill_the_shared_queue(monkeypatch) -> None:
    from types import SimpleNamespace

    from clm_explore.config import ConfigError
    from clm_explore.ui import jobs, state

    waiting = [SimpleNamespace(run_id=f"run{i}") for i in range(jobs.MAX_ACTIVE_PER_SESSION - 1)]
    monkeypatch.setattr(jobs, "job_queue", lambda: SimpleNamespace(active=lambda: waiting))
    monkeypatch.setattr(state, "launched_here", lambda run_id: run_id != "theirs")
    jobs.check_room(1)  # a launch list of every method fits beside what is left
    with pytest.raises(ConfigError, match=r"asks for 2 run\(s\) and this session has 11 job\(s\) waiting or "
                                          r"running; 12 at a time .*: wait for some to end"):
        jobs.check_room(2)  # before: no limit, one session's launches held everyone else's jobs back
    with pytest.raises(ConfigError, match=r"asks for 14 run\(s\).*launch fewer at a time \(fewer seeds"):
        jobs.check_room(14)  # more than the cap at once (seven seeds of two methods): waiting would not help
    waiting.append(SimpleNamespace(run_id="theirs"))  # another session's job does not count against this one
    jobs.check_room(1)
    monkeypatch.setenv("CLM_EXPLORE_MAX_JOBS", "12")  # the server's cap counts every session's jobs
    with pytest.raises(ConfigError, match=r"the server's queue holds 12 job\(s\) waiting or running, of every "
                                          r"session; 12 at a time is the most it takes"):
        jobs.check_room(1)


class _SessionRecorder(dict):
    """A stand-in for ``st.session_state`` that fails the test on any read once ``armed``."""

    armed = False

    def __getitem__(self, key):
        assert not self.armed, f"the session was read ({key!r}) between registering a run and queueing it"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert not self.armed, f"the session was read ({key!r}) between registering a run and queueing it"
        return super().get(key, default)

    def __contains__(self, key):
        assert not self.armed, f"the session was read ({key!r}) between registering a run and queueing it"
        return super().__contains__(key)


def _launch_checks_passed(monkeypatch: pytest.MonkeyPatch, data: Callable[[object], object]) -> None:
    """A launch's reads and checks stood in for: the data (``data(choice)``), no model, no scores, every check passed."""
    from clm_explore.ui import cache, jobs

    monkeypatch.setattr(jobs, "made_scores", lambda *args: None)
    monkeypatch.setattr(cache, "data", data)
    monkeypatch.setattr(cache, "model", lambda source, labels: None)
    monkeypatch.setattr("clm_explore.training.check_runnable", lambda cfg, loaded: None)
    monkeypatch.setattr("clm_explore.training.check_splits", lambda data, cfg: None)
    monkeypatch.setattr(jobs, "data_digest", lambda data: "d" * 16)


def test_a_launch_queues_its_runs_without_reading_the_session(monkeypatch, tmp_path: Path) -> None:
    """Streamlit stops a script for its next run at any session read: a 10-seed launch touched again queued five
    runs and left a sixth "pending" with no job behind it (the two-user review). Every read now comes before the
    first run is registered, and a run whose job cannot be queued is deleted."""
    from types import SimpleNamespace

    import streamlit as st

    from clm_explore.config import FinetuneConfig
    from clm_explore.runs import RunStore
    from clm_explore.ui import jobs, state

    session = _SessionRecorder()
    monkeypatch.setattr(st, "session_state", session)
    runs = RunStore(tmp_path / "runs")
    real_create = runs.create

    def create(*args, **kwargs):
        session.armed = True
        return real_create(*args, **kwargs)

    submitted, cancelled = [], []

    def submit(fn, kwargs, run_id=None, device="cpu", owner=None):
        if len(submitted) == 2:
            raise RuntimeError("the queue is gone")
        submitted.append((run_id, owner))
        return SimpleNamespace(label="", run_id=run_id, id=f"job-{run_id}")

    monkeypatch.setattr(runs, "create", create)
    monkeypatch.setattr(jobs, "store", lambda: runs)
    monkeypatch.setattr(jobs, "job_queue", lambda: SimpleNamespace(
        active=lambda: [], submit=submit, cancel=lambda job_id, by=None: cancelled.append(job_id)))
    _launch_checks_passed(monkeypatch, lambda choice: SimpleNamespace(labels=["a", "b"]))
    session[state.SESSION_ID] = "f" * 32
    choice = state.DataChoice("upload", str(tmp_path / "acme.csv"), "acme.csv", digest="ab12")
    with pytest.raises(RuntimeError, match="the queue is gone"):
        jobs.launch_seeds("probe", FinetuneConfig(), choice, "tiny-random", 3)
    session.armed = False
    assert [r.name for r in runs.list()] == ["probe-s1", "probe-s0"]  # the third, never queued, is not left pending
    assert submitted == [(r.id, "f" * 32) for r in reversed(runs.list())]
    assert cancelled == [f"job-{run_id}" for run_id, _ in submitted]  # all or none: the two queued are cancelled
    assert session[state.LAUNCHED] == {r.id for r in runs.list()}
    assert {r.path.stat().st_mode & 0o777 for r in runs.list()} == {0o700}  # an upload's runs closed as it is


def test_jobs_queued_on_the_same_rows_share_one_copy_of_the_data(monkeypatch, tmp_path: Path) -> None:
    """The security review: st.cache_data hands each launch its own copy of the data, so every queued job held one
    (48 jobs of a 200 MB upload, 48 copies in the server's memory)."""
    from types import SimpleNamespace

    import streamlit as st

    from clm_explore.config import FinetuneConfig
    from clm_explore.runs import RunStore
    from clm_explore.ui import jobs, state

    class Rows:  # a fresh copy at every read, as st.cache_data gives
        labels = ["a", "b"]

    session = _SessionRecorder()
    monkeypatch.setattr(st, "session_state", session)
    runs, held = RunStore(tmp_path / "runs"), []

    def submit(fn, kwargs, run_id=None, device="cpu", owner=None):
        held.append(kwargs["data"])
        return SimpleNamespace(label="", run_id=run_id, id=f"job-{run_id}")

    monkeypatch.setattr(jobs, "store", lambda: runs)
    monkeypatch.setattr(jobs, "job_queue", lambda: SimpleNamespace(active=lambda: [], submit=submit))
    _launch_checks_passed(monkeypatch, lambda choice: Rows())
    session[state.SESSION_ID] = "f" * 32
    choice = state.DataChoice("upload", str(tmp_path / "acme.csv"), "acme.csv", digest="ab12")
    for name in ("first", "second"):  # two launches, as two clicks (or two sessions) make them
        jobs.launch_seeds(name, FinetuneConfig(), choice, "tiny-random", 2)
    assert len(held) == 4 and all(data is held[0] for data in held)
    other = state.DataChoice("upload", str(tmp_path / "other.csv"), "other.csv", digest="cd34")
    jobs.launch_seeds("third", FinetuneConfig(), other, "tiny-random", 1)
    assert held[-1] is not held[0]  # other data: its own copy


def test_a_launch_on_data_without_test_rows_is_refused_before_any_run(monkeypatch, tmp_path: Path) -> None:
    """The two-user review: such a launch was queued and its job failed when its turn came (with a traceback)."""
    import dataclasses
    from types import SimpleNamespace

    import pandas as pd

    from clm_explore.config import FinetuneConfig
    from clm_explore.data import DataError, load_data
    from clm_explore.ui import cache, jobs, state

    texts = [f"card number {i} is lost" for i in range(8)] + [f"loan number {i} is late" for i in range(8)]
    frame = pd.DataFrame({"text": texts, "label": ["card"] * 8 + ["loan"] * 8,
                          "split": (["train"] * 6 + ["validation"] * 2) * 2})
    runs = RunStore(tmp_path / "runs")
    annotated = load_data(frame)
    annotated = dataclasses.replace(annotated, test=annotated.test.iloc[:0])  # e.g. every test row dropped on load
    monkeypatch.setattr(cache, "data", lambda choice: annotated)
    monkeypatch.setattr(jobs, "store", lambda: runs)
    monkeypatch.setattr(jobs, "job_queue", lambda: SimpleNamespace(active=lambda: []))
    monkeypatch.setattr(state, "launched_here", lambda run_id: False)
    with pytest.raises(DataError, match="has no test rows to score the run on"):
        jobs.launch_seeds("probe", FinetuneConfig(), state.DataChoice("sample", "x", "x"), "tiny-random", 2)
    assert runs.list() == []


def test_the_server_freezes_what_it_imported_so_each_rerun_collects_little() -> None:
    """The performance review: Streamlit's full collection after every script run walked the half million objects
    torch and transformers make, 230-430 ms of CPU a click, and each second in every tab on the Finetune page."""
    import gc

    from clm_explore.ui import cache

    cache.configure_torch.clear()
    gc.unfreeze()
    AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    frozen = gc.get_freeze_count()
    assert frozen > 100_000 and len(gc.get_objects()) < frozen  # the imports' objects are out of the collection


def test_the_same_upload_again_keeps_a_shared_hard_link_and_stale_parts_go(tmp_path: Path) -> None:
    """The diff review: writing through a rename ended the hard link a resumed session shares (its room then counted
    twice), and a write killed midway left a hidden .part file that nothing removed."""
    from clm_explore.ui import state

    raw = b"text,label\nmy card,a\nrates,b\n"
    first = Path(save_upload(raw, "mine.csv", folder=tmp_path / ("a" * 32)).path)
    other = tmp_path / ("b" * 32)
    other.mkdir()
    os.link(first, other / first.name)  # as a resumed session takes up the upload
    again = Path(save_upload(raw, "mine.csv", folder=other).path)
    assert again.stat().st_ino == first.stat().st_ino and first.stat().st_nlink == 2
    stale, fresh = other / ".x.csv.1-2.part", other / ".y.csv.1-3.part"
    for part in (stale, fresh):
        part.write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * state.STALE_PART_SECONDS,) * 2)
    save_upload(raw + b"more,c\n", "next.csv", folder=other)
    assert not stale.exists() and fresh.exists()


class _CountingGate:
    """Stands for ``cache._HEAVY`` (the server's heavy-computation slots) and passes every call on to it, counting the
    callers that found it taken and waited: a test's proof that a caller was held at the gate, which no overlap of
    sleeps can prove."""

    def __init__(self, slots) -> None:
        self.slots, self.refused, self._lock = slots, 0, threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if self.slots.acquire(blocking=False):
            return True
        if not blocking:
            return False
        with self._lock:
            self.refused += 1
        return self.slots.acquire(True, timeout)

    def release(self) -> None:
        self.slots.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@pytest.mark.parametrize(("cached", "library", "args"), [
    ("weight_changes", "clm_explore.changes.weight_changes", (0.0, "v")),
    ("layer_similarity", "clm_explore.layer_views.layer_similarity", (0.0, "", 0.0, "v")),
])  # the case study and the scoring are keyed tasks, one at a time by their own gate too (tests/test_jobs.py)
def test_heavy_page_computations_run_one_at_a_time_whoever_asks(monkeypatch, tmp_path: Path, cached, library,
                                                                   args) -> None:
    """The security review: scoring, weight changes, CKA and the case study ran in page threads, several sessions'
    side by side, each with a model in memory, taking the CPU from the jobs."""
    from clm_explore.ui import cache

    inside, most, ran, lock = [0], [0], [], threading.Lock()
    gate = _CountingGate(cache._HEAVY)
    monkeypatch.setattr(cache, "_HEAVY", gate)  # the server's slot itself, its refusals counted
    others_turned_away = []

    def slow(run_path, *rest, **options):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            first = not ran and inside[0] == 1 and not others_turned_away
        if first:  # the first in holds the slot until both other sessions have asked for it and been made to wait
            others_turned_away.append(wait_until(lambda: gate.refused >= 2, every=0.01))
        with lock:
            inside[0] -= 1
            ran.append(run_path)
        return run_path  # picklable for the cache

    monkeypatch.setattr(library, slow)
    wrapper = getattr(cache, cached)
    calls = [threading.Thread(target=wrapper, args=(str(tmp_path / f"run{i}"), *args))
             for i in range(3)]  # three sessions, three runs: nothing cached to share
    for call in calls:
        call.start()
    for call in calls:
        call.join(60)
    assert not any(call.is_alive() for call in calls)
    assert sorted(ran) == [str(tmp_path / f"run{i}") for i in range(3)]  # every session's computation ran
    assert others_turned_away == [True], "the other two sessions never waited at the slot while one held it"
    assert most[0] == cache.HEAVY_AT_ONCE == 1  # and none of them got in beside it
    wrapper.clear()


def test_a_page_waiting_for_another_sessions_computation_says_so(monkeypatch) -> None:
    """The multi-session review: a page waited 35 s under its own spinner, with no word of another's computation."""
    from clm_explore.ui import cache

    def script() -> None:
        from clm_explore.ui import cache

        with cache.turn_note(), cache.heavy_work():  # as a page's call of a cached heavy computation
            pass

    def cached() -> None:
        from clm_explore.ui import cache

        with cache.turn_note():  # a cache hit: returns at once, whoever holds the slot
            pass

    assert cache._HEAVY.acquire(blocking=False)  # another session's computation holds the slot
    hit = AppTest.from_function(cached, default_timeout=TIMEOUT).run()
    assert not any("computation" in c.value for c in hit.caption)  # nothing waited: nothing said (the diff review)
    gate = _CountingGate(cache._HEAVY)
    monkeypatch.setattr(cache, "_HEAVY", gate)

    def let_go() -> None:  # once the page waits for the slot (not a fixed time a slow start could outlast)
        if wait_until(lambda: gate.refused >= 1, timeout=60, every=0.01):
            time.sleep(cache.TURN_NOTED_SECONDS + 0.5)  # long enough a wait to be said
        gate.release()

    releaser = threading.Thread(target=let_go, daemon=True)
    releaser.start()
    app = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    releaser.join(90)
    assert gate.refused == 1  # the page did wait at the slot
    assert not app.exception, [e.value for e in app.exception]
    assert any("another computation on the server first" in c.value for c in app.caption), [c.value for c in app.caption]
    app.run()  # the slot free: nothing said
    assert not any("computation" in c.value for c in app.caption)


def test_a_browsers_jobs_are_one_owners_across_reloads(monkeypatch) -> None:
    """The multi-session review: each reload's new token took turns of its own on the shared queue, and a job
    cancelled in the same browser read "cancelled from another session" after a reload."""
    from types import SimpleNamespace

    from clm_explore.ui import state

    monkeypatch.setattr(state.st, "context", SimpleNamespace(cookies={"_streamlit_xsrf": "2|1a2b|3c4d|1765000000"}))
    first = state.owner_id()
    assert first.startswith("browser-") and "3c4d" not in first  # a hash: the cookie itself is not kept
    assert state.owner_id() == first  # whatever token the session has now
    monkeypatch.setattr(state.st, "context", SimpleNamespace(cookies={"_streamlit_xsrf": "2|9999|8888|1765000001"}))
    assert state.owner_id() != first  # another browser

    def script() -> None:
        import streamlit as st

        from clm_explore.ui import state

        st.write(str(state.owner_id() == state.session_id()))

    monkeypatch.undo()
    app = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not app.exception, [e.value for e in app.exception]
    assert [m.value for m in app.markdown] == ["True"]  # no cookie sent (a test's script): the token, as before


def test_the_case_study_is_a_shared_task_that_reports_its_rows_and_holds_the_heavy_slot(monkeypatch,
                                                                                      tmp_path: Path) -> None:
    """The demo review: a minute's spinner was all an audience saw of the top words; now a task with its rows."""
    from clm_explore.ui import cache

    held = []

    def study(run_a, run_b, cfg, max_rows, on_progress, progress):
        held.append(not cache._HEAVY.acquire(blocking=False))  # one heavy computation at a time, as before
        on_progress("attributing run A (a)", 3, 10)
        return {"rows": max_rows, "output": cfg.output}

    monkeypatch.setattr("clm_explore.casestudy.case_study", study)
    task = cache.case_study(str(tmp_path / "a"), 1.0, str(tmp_path / "b"), 2.0, 10, inline=True)
    assert task.done and task.result == {"rows": 10, "output": "probability"} and held == [True]
    assert task.progress == ("attributing run A (a)", 3, 10)
    assert cache.case_study(str(tmp_path / "a"), 1.0, str(tmp_path / "b"), 2.0, 10) is task  # shared, not redone
    logits = cache.case_study(str(tmp_path / "a"), 1.0, str(tmp_path / "b"), 2.0, 10, "logit", inline=True)
    assert logits is not task and logits.result == {"rows": 10, "output": "logit"}  # the page's choice, its own task


def test_a_run_that_collapsed_onto_one_label_is_a_warning_on_the_runs_page(at: AppTest) -> None:
    """The operations review: a run at chance, every test row on one label, read "succeeded" and nothing more."""
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    run = store.create("collapsed", "lora", {"data": SAMPLE_KEY, "source": "tiny-random"})
    note = "every test row was predicted as 'a': the training collapsed (its accuracy is that label's share)"
    (run.path / "metrics.json").write_text(json.dumps({"accuracy": 0.05, "macro_f1": 0.01, "collapse_note": note}))
    store.set_status(run.id, RunStatus.SUCCEEDED)
    goto(at, "app_pages/7_runs.py")
    assert not at.exception
    assert any("the training collapsed" in w.value for w in at.warning), [w.value for w in at.warning]


def test_the_hourly_prune_logs_what_it_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """The operations review: 20 sessions' uploads went with nothing in the server's log."""
    import logging

    from clm_explore.ui import cache

    idle = tmp_path / ("d" * 32)
    idle.mkdir()
    (idle / "a.csv").write_text("text,label\n")
    os.utime(idle / "a.csv", (1_000_000_000.0, 1_000_000_000.0))
    os.utime(idle, (1_000_000_000.0, 1_000_000_000.0))
    monkeypatch.setenv("CLM_EXPLORE_UPLOAD_DAYS", "7")
    cache.pruned_uploads.clear()
    try:
        with caplog.at_level(logging.INFO, logger="clm_explore"):
            assert cache.pruned_uploads(str(tmp_path)) == ["d" * 32]
    finally:
        cache.pruned_uploads.clear()
    assert any(f"deleted 1 session(s) unused for over 7 day(s) from {tmp_path}" in r.getMessage()
               for r in caplog.records)


def test_the_runs_pages_config_is_the_one_the_run_folder_records(tmp_path: Path) -> None:
    """The faces review: the Runs page showed the registry's config under "Config (clm_run.json)": for runs registered
    before they settled it, the rows read as scored at 64 sub-tokens where the run read 32."""
    from clm_explore.runs import RunRecord
    from clm_explore.ui.run_views import folder_config

    given = {"max_length": 32, "sensitivity": {"max_length": 64}}
    run = RunRecord("r", "r", "sparse", RunStatus.SUCCEEDED, tmp_path, "", "", config=given)
    assert folder_config(run) == given  # not begun, or its folder gone: the registry's
    settled = {"max_length": 32, "sensitivity": {"max_length": 32}}
    (tmp_path / "clm_run.json").write_text(json.dumps({"method": "sparse", "config": settled}))
    assert folder_config(run) == settled


def test_the_label_check_reads_as_many_sub_tokens_as_the_runs(at: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The long-text review: the Data page's check read 64 sub-tokens whatever the Finetune form said, and flagged
    298 of 360 correct rows whose question sat further on."""
    from clm_explore.ui import cache

    asked: list[int] = []
    real = cache.label_audit
    monkeypatch.setattr(cache, "label_audit", lambda *a, **k: asked.append(a[2].max_length) or real(*a, **k))
    assert "Reads 64 sub-tokens per text" in at.button(key="data_audit").help
    at.session_state["ft_max_length"] = 32  # as the Finetune form leaves it
    at.run()
    button(at, "Check the labels").click().run(timeout=TIMEOUT)
    assert asked and set(asked) == {32}
    at.session_state["ft_max_length"] = 256  # above the tiny model's 128 positions: it reads 128
    at.run()
    assert "Reads 128 sub-tokens per text" in at.button(key="data_audit").help and not at.exception
    assert set(asked) == {32}  # no new check without a click (the diff review: one started on its own)
    assert any("The last check read 32 sub-tokens per text; runs now read 128 sub-tokens per text:" in c.value
               for c in at.caption)
    at.session_state["ft_keep"] = "end"  # the form keeping long texts' ends: the check cuts them so, once asked
    at.run()
    assert any("runs now read 128 sub-tokens per text, keeping a longer text's end:" in c.value for c in at.caption)
    button(at, "Check the labels").click().run(timeout=TIMEOUT)
    assert at.session_state["audited"][2].truncation_side == "left"


def test_the_tokens_page_names_the_labels_no_group_marks(tmp_path: Path) -> None:
    """The few-shot review: 5 of 7 labels had no mined group and the page showed the other two's words alone."""
    words = {"card": "card", "cash": "cash", "fee": "fee"}
    lines = [f"please help {words[label]} now,{label}" for label in words for _ in range(10)]
    lines += [f"please help {'now' if i % 2 else ''},pin" for i in range(10)]  # pin: no word of its own
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.session_state["data_choice"] = save_upload(("text,label\n" + "\n".join(lines) + "\n").encode(), "few.csv",
                                                   folder=tmp_path / "session")
    app.run()
    goto(app, "app_pages/2_tokens.py")
    said = [i.value for i in app.info if "have no mined group" in i.value]
    assert len(said) == 1 and "1 of 4 labels have no mined group \\(pin\\)" in said[0], [i.value for i in app.info]


def test_a_runs_figures_say_how_many_test_rows_and_labels_they_stand_on() -> None:
    """The few-shot review: a card read accuracy 0.6667 of 9 test rows, and macro-F1 over 5 of 7 labels, with
    neither said."""
    from clm_explore.ui.run_views import scored_on_note

    said = scored_on_note({"test_rows": 9, "macro_f1_labels": 5, "labels": list("abcdefg")})
    assert said == ("Scored on 9 test rows: one row is 11.1 points of accuracy; macro-F1 averages the 5 of its 7 labels "
                    "that test holds (the others have no test row to be scored on).")
    assert scored_on_note({"test_rows": 800, "macro_f1_labels": 20, "labels": list("abcdefghijklmnopqrst")}) == (
        "Scored on 800 test rows: one row is 0.125 points of accuracy.")
    assert scored_on_note({}) == ""


def test_the_seed_groups_say_when_they_are_runs_on_other_data(at: AppTest) -> None:
    """The few-shot review: on an upload with one run, the groups opened on another data set's runs without a word,
    and the table's screen-reader name was "Weight changes"."""
    store = RunStore(os.environ["CLM_EXPLORE_RUNS"])
    for method in ("full", "sparse"):
        for seed in (0, 1):
            run = store.create(f"{method}-{seed}", method, {"seed": seed, "data": "shared:trec6_8:None:None:",
                                                            "source": "tiny-random"})
            store.update_metrics(run.id, {"accuracy": 0.5 + seed / 10, "macro_f1": 0.5})
            store.set_status(run.id, RunStatus.SUCCEEDED)
    goto(at, "app_pages/7_runs.py")
    assert any("the groups below are runs on trec6\\_8" in c.value for c in at.caption), [c.value for c in at.caption]
    assert all(option.endswith("· trec6_8") for option in at.multiselect(key="runs_groups_a").options)


def test_a_collapse_note_speaks_the_apps_words() -> None:
    """The few-shot review: cards told browser users to try `--lr` and `clm-explore bench --tune-lr`."""
    import numpy as np

    from clm_explore.config import FinetuneConfig
    from clm_explore.training import _collapse_note
    from clm_explore.ui.run_views import app_words

    note = _collapse_note(np.zeros(30, dtype=int), np.arange(30) % 3, ["a", "b", "c"], FinetuneConfig())
    said = app_words(f"{note} Also: 9 of 9 training texts (100%) are longer than the 8 sub-tokens this run reads: "
                     "their start alone is read; --max-length (up to 128) reads more, at a cost in time.")
    assert "--lr" in note and "--lr" not in said and "clm-explore" not in said
    assert "Learning rate or more Epochs in the Finetune" in said
    assert "a larger Sub-tokens read per text in the Finetune form (up to 128)" in said


def test_the_long_text_note_at_the_longest_read_suggests_shorter_texts() -> None:
    """The long-text review: at 512 sub-tokens, the form's top, the Data page still said the form reads more."""
    def script() -> None:
        import pandas as pd

        from clm_explore.ui.views import long_text_note

        long_text_note(pd.Series([513, 40]), 512, 2, 512)
        long_text_note(pd.Series([300, 40]), 256, 2, 512)
        long_text_note(pd.Series([300, 40]), 128, 2, 512, positions=128)  # a model of 128 positions

    app = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    top, shorter, small = (i.value for i in app.info)
    assert "512 is the most a run of this model reads: shorten the texts" in top and "reads more" not in top
    assert "128 is the most a run of this model reads" in small  # the review of the new features
    assert "Sub-tokens read per text** reads more, at a cost in time and memory" in shorter


def test_the_finetune_page_gives_a_launch_of_seeds_its_mean_and_spread() -> None:
    """The few-shot review: after a 3-seed launch the cards gave one figure each; the mean and spread lay folded on
    the Runs page."""
    from clm_explore.runs import RunRecord
    from clm_explore.ui.run_views import seed_group_lines

    def record(name: str, accuracy: float, status: RunStatus = RunStatus.SUCCEEDED) -> RunRecord:
        return RunRecord(name, name, "sparse", status, Path(name), "", "", metrics={"accuracy": accuracy})

    records = [record("sparse-1pct-s0", 0.91), record("sparse-1pct-s1", 0.9043), record("sparse-1pct-s2", 0.9029),
               record("full-s0", 0.9), record("full-s1", 0.5, RunStatus.RUNNING), record("sparse-1pct", 0.8)]
    assert seed_group_lines(records) == ["sparse-1pct: 3 seeds (0, 1, 2) finished, test accuracy 0.9057 ± 0.0038 "
                                         "(mean ± std over seeds)"]
