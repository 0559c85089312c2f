"""A page reload resumes the session its address names (``clm_explore.ui.saved_session``)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from clm_explore.config import MaskConfig, MiningConfig
from clm_explore.runs import RunStore
from clm_explore.ui import saved_session, state
from clm_explore.ui.state import DataChoice, prune_uploads, save_upload
from clm_explore.ui.views import escape_markdown

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "clm_explore" / "ui" / "app" / "app.py")
TIMEOUT = 120
ROWS = b"utterance,intent\n" + b"".join(
    f"text number {i} about {'cards' if i % 2 else 'money'},{'card' if i % 2 else 'cash'}\n".encode() for i in range(60)
)


@pytest.fixture(autouse=True)
def _app_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLM_EXPLORE_MODEL", "tiny-random")
    monkeypatch.setenv("CLM_EXPLORE_INLINE_JOBS", "1")
    monkeypatch.setenv("CLM_EXPLORE_DEVICE", "cpu")
    monkeypatch.setenv("CLM_EXPLORE_UPLOADS", str(tmp_path / "uploads"))


def open_app(token: str | None = None, page: str | None = None) -> AppTest:
    """A new browser session (what a reload is), its address holding ``token``."""
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if token is not None:
        app.query_params[saved_session.TOKEN_PARAM] = token
    app.run()
    if page is not None:
        app.switch_page(page)
        app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def open_with_upload(tmp_path: Path, token: str, filename: str) -> AppTest:
    """A session ``token`` working on ROWS uploaded as ``filename`` (as if through the Data page), run once."""
    upload = save_upload(ROWS, filename, folder=tmp_path / "uploads" / token)
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.session_state["session_id"] = token
    app.session_state["data_choice"] = dataclasses.replace(upload, text_col="utterance", label_col="intent")
    app.run()
    return app


def token_of(app: AppTest) -> str:
    value = app.query_params[saved_session.TOKEN_PARAM]
    return value[0] if isinstance(value, list) else value


def test_a_reload_takes_up_the_upload_and_settings_where_they_were(tmp_path: Path) -> None:
    token = "a" * 32
    upload = save_upload(ROWS, "My data.csv", folder=tmp_path / "uploads" / token)
    choice = dataclasses.replace(upload, text_col="utterance", label_col="intent")
    first = AppTest.from_file(APP, default_timeout=TIMEOUT)
    first.session_state["session_id"] = token  # as if this session had uploaded the file through the Data page
    first.session_state["data_choice"] = choice
    first.session_state["budget"] = 0.02
    first.session_state["mask_options"] = MaskConfig(min_layer=1)
    first.session_state["kept_widgets"] = {"cmp_max_rows": 250, "budget_methods": ["sparse", "lora"], "odd": object()}
    first.run()
    assert not first.exception and token_of(first) == token
    assert (tmp_path / "uploads" / f"{token}.session.json").is_file()

    reloaded = open_app(token)
    new = token_of(reloaded)  # a copy under a new token
    assert new != token and reloaded.session_state["session_id"] == new and state.TOKEN_PATTERN.fullmatch(new)
    linked = dataclasses.replace(choice, path=str((tmp_path / "uploads" / new / Path(choice.path).name).resolve()))
    assert reloaded.session_state["data_choice"] == linked  # the upload, linked into its folder, and its column mapping
    assert os.path.samefile(linked.path, choice.path)  # one file on disk, not a second copy
    assert Path(choice.path).is_file()  # the first session (a tab still open, say) keeps its file
    assert (tmp_path / "uploads" / f"{new}.session.json").is_file()  # saved under the new token at once
    assert reloaded.session_state["budget"] == 0.02
    assert reloaded.session_state["mask_options"].min_layer == 1
    assert reloaded.session_state["kept_widgets"] == {"cmp_max_rows": 250, "budget_methods": ["sparse", "lora"]}
    assert any(escape_markdown("My-data.csv") in c.value for c in reloaded.sidebar.caption)
    assert reloaded.metric[0].label == "Rows" and int(reloaded.metric[0].value) > 0  # the upload, not the sample
    again = open_app(new)  # and the next reload takes it up again
    assert again.session_state["data_choice"].name == choice.name and again.session_state["budget"] == 0.02


def test_a_link_with_someone_elses_token_never_joins_their_session(tmp_path: Path) -> None:
    # Session fixation: a link carrying a token its maker keeps watching must not make the follower's uploads and
    # choices land in that session.
    maker = "f0" * 16
    saved_session.save(tmp_path / "uploads", maker, json.dumps(saved_session.to_record({state.BUDGET: 0.03})))
    follower = open_app(maker)
    assert follower.session_state["budget"] == 0.03 and token_of(follower) != maker
    save_upload(ROWS, "private.csv", folder=tmp_path / "uploads" / follower.session_state["session_id"])
    assert not (tmp_path / "uploads" / maker).exists()  # the follower's upload is not in the maker's folder
    assert json.loads((tmp_path / "uploads" / f"{maker}.session.json").read_text())["budget"] == 0.03  # nor its file


def test_a_page_that_stops_still_saves_the_session(tmp_path: Path) -> None:
    # After st.stop() Streamlit refuses every session-state read, so the save at the end of the run never happened on
    # a page that stopped (Runs with no run, Compare with fewer than two, the Budget page at a budget that buys no row).
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.session_state["session_id"] = "ab" * 16
    app.session_state["budget"] = 0.04
    app.run()
    app.session_state["budget"] = 0.05  # changed where the page then stops
    app.switch_page("app_pages/7_runs.py")  # no runs: the page stops
    app.run()
    assert app.info and "No runs yet" in app.info[0].value
    record = json.loads((tmp_path / "uploads" / f"{'ab' * 16}.session.json").read_text())
    assert record["budget"] == 0.05
    pages = sorted((ROOT / "clm_explore" / "ui" / "app" / "app_pages").glob("*.py")) + sorted((ROOT / "clm_explore" / "ui").glob("*.py"))
    direct = [p.name for p in pages if "st.stop()" in p.read_text().replace("``st.stop()``", "")
              and p.name != "state.py"]
    assert not direct, f"pages stop through state.stop(), which saves first: {direct}"


def test_a_saved_model_path_the_system_cannot_look_up_is_dropped(tmp_path: Path) -> None:
    folder = tmp_path / "uploads" / ("c" * 32)
    for source in ("~nosuchuser-clm/m.gguf", "/" + "x" * 300 + ".gguf"):
        assert state.MODEL_SOURCE not in saved_session.from_record({"version": 1, "model_source": source}, folder)


def test_the_token_stays_in_the_address_across_pages() -> None:
    app = open_app()
    token = token_of(app)
    assert state.TOKEN_PATTERN.fullmatch(token) and len(token) == 32
    app.switch_page("app_pages/7_runs.py")  # Streamlit clears query parameters on a page switch
    app.run()
    assert not app.exception
    assert token_of(app) == token


@pytest.mark.parametrize("token", ["f" * 32, "../../etc", "", "ABCDEF0123456789"])
def test_an_address_without_a_saved_session_starts_a_fresh_one(token: str, tmp_path: Path) -> None:
    app = open_app(token)
    assert token_of(app) != token and state.TOKEN_PATTERN.fullmatch(token_of(app))
    assert app.session_state["data_choice"].kind == "sample"
    assert not list(tmp_path.glob("etc*")) and not (tmp_path.parent / "etc.session.json").exists()


def test_saved_values_that_no_longer_hold_are_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "uploads" / ("a" * 32)
    folder.mkdir(parents=True)
    inside = save_upload(ROWS, "mine.csv", folder=folder)
    elsewhere = save_upload(ROWS, "theirs.csv", folder=tmp_path / "uploads" / ("b" * 32))
    good = {
        state.MODEL_SOURCE: "tiny-random", state.DATA_CHOICE: inside, state.BUDGET: 0.05,
        state.MINING_CFG: MiningConfig(top_k=7), state.LAUNCHED: {"run-1"},
    }
    assert saved_session.from_record(saved_session.to_record(good), folder) == {**good, state.KEPT_WIDGETS: {}}
    record = saved_session.to_record(good)
    bad = {
        "model_source": str(tmp_path / "no-such-model"),
        "data_choice": saved_session.to_record({state.DATA_CHOICE: elsewhere})["data_choice"],  # another session's
        "budget": 1.5,
        "mining_cfg": {**record["mining_cfg"], "top_k": -3},
        "kept_widgets": {"x": {"nested": 1}},
        "launched_runs": "run-1",
    }
    assert saved_session.from_record({**record, **bad}, folder) == {state.KEPT_WIDGETS: {}}
    assert saved_session.from_record({**record, "version": 99}, folder) == {}
    assert saved_session.from_record(["not", "a", "record"], folder) == {}
    monkeypatch.setenv("CLM_EXPLORE_MODEL_DIRS", str(tmp_path / "models"))
    model = tmp_path / "elsewhere-model"
    model.mkdir()
    assert state.MODEL_SOURCE not in saved_session.from_record({**record, "model_source": str(model)}, folder)


def test_a_damaged_session_file_starts_fresh(tmp_path: Path) -> None:
    token = "c" * 32
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / f"{token}.session.json").write_text("{not json")
    assert saved_session.take_over(tmp_path / "uploads", token) is None
    app = open_app(token)
    assert token_of(app) != token


def test_prune_deletes_a_session_by_its_last_use(tmp_path: Path) -> None:
    day, now = 86400, 1_000_000_000.0
    used, idle, stray = "1" * 32, "2" * 32, "3" * 32
    for token in (used, idle):
        (tmp_path / token).mkdir()
        (tmp_path / token / "a.csv").write_text("text,label\n")
        (tmp_path / f"{token}.session.json").write_text(json.dumps({"version": 1}))
    (tmp_path / f"{stray}.session.json").write_text("{}")  # a session that never uploaded
    (tmp_path / "..session.json").write_text("{}")  # not a token: never taken for the root itself
    old = now - 9 * day
    for path in (tmp_path / used / "a.csv", tmp_path / idle / "a.csv", tmp_path / f"{idle}.session.json",
                 tmp_path / f"{stray}.session.json", tmp_path / "..session.json"):
        os.utime(path, (old, old))
    os.utime(tmp_path / f"{used}.session.json", (now - day, now - day))  # resumed yesterday: its old upload stays
    assert prune_uploads(tmp_path, 7, now=now) == sorted([idle, stray])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["..session.json", used, f"{used}.session.json"])


def test_taking_a_session_over_copies_it_under_a_new_token(tmp_path: Path) -> None:
    token = "d" * 32
    saved_session.save(tmp_path, token, json.dumps(saved_session.to_record({state.BUDGET: 0.03})))
    os.utime(tmp_path / f"{token}.session.json", (1000, 1000))
    new, values = saved_session.take_over(tmp_path, token)
    assert values == {state.BUDGET: 0.03, state.KEPT_WIDGETS: {}, state.LAUNCHED: set()}
    assert (tmp_path / f"{token}.session.json").stat().st_mtime > 1000  # opened: used, not pruned
    again, _ = saved_session.take_over(tmp_path, token)  # each take-over a copy of its own
    assert len({token, new, again}) == 3
    assert saved_session.session_file(tmp_path, "../x") is None


def test_a_session_before_tokens_keeps_its_short_folder_name(tmp_path: Path) -> None:
    token = "e" * 16  # sessions named their folders by 16 hex digits before
    upload = save_upload(ROWS, "old.csv", folder=tmp_path / "uploads" / token)
    saved_session.save(tmp_path / "uploads", token, json.dumps(saved_session.to_record({state.DATA_CHOICE: upload})))
    app = open_app(token)
    choice = app.session_state["data_choice"]
    assert isinstance(choice, DataChoice) and choice.kind == "upload" and choice.digest == upload.digest
    assert Path(choice.path).read_bytes() == ROWS and Path(choice.path).parent.name == token_of(app) != token


def test_uploads_and_saved_sessions_are_readable_by_the_servers_account_alone(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    before = os.umask(0o022)  # the common default, under which both were readable by every account
    try:
        root = tmp_path / "uploads"
        upload = save_upload(ROWS, "My data.csv", folder=root / ("a" * 32))
        saved_session.save(root, "b" * 32, "{}")
        assert [oct(p.stat().st_mode & 0o777) for p in (root, root / ("a" * 32))] == ["0o700", "0o700"]
        assert oct(Path(upload.path).stat().st_mode & 0o777) == "0o600"
        assert [oct(p.stat().st_mode & 0o777) for p in root.glob("*.json")] == ["0o600"]
        named = tmp_path / "named"  # an existing folder named as the uploads root: closed too, its listing names the
        named.mkdir(mode=0o755)    # saved sessions' tokens
        monkeypatch.setenv("CLM_EXPLORE_UPLOADS", str(named))
        saved_session.save(named, "c" * 32, "{}")
        assert oct(named.stat().st_mode & 0o777) == "0o700"
    finally:
        os.umask(before)


def test_ending_a_session_deletes_its_upload_and_choices_and_its_address_opens_afresh(tmp_path: Path) -> None:
    """The two-user review: the address works as a key to the upload, forever; a user (a demo's presenter) could not
    end it."""
    token = "c" * 32
    app = open_with_upload(tmp_path, token, "private.csv")
    assert (tmp_path / "uploads" / f"{token}.session.json").is_file()
    app.session_state["launched_runs"] = {"run-of-mine"}
    assert app.sidebar.button(key="side_end_session").disabled  # one click must not delete an upload
    app.sidebar.checkbox(key="side_end_confirm").check().run()
    app.sidebar.button(key="side_end_session").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert not (tmp_path / "uploads" / token).exists() and not (tmp_path / "uploads" / f"{token}.session.json").exists()
    assert token_of(app) != token and app.session_state["data_choice"].kind == "sample"
    assert app.session_state["launched_runs"] == {"run-of-mine"}  # its runs' cards still say so
    follower = open_app(token)  # the old address: a fresh session, nothing of the upload
    assert follower.session_state["data_choice"].kind == "sample" and token_of(follower) != token


def test_a_follower_ending_its_copy_leaves_the_session_it_followed(tmp_path: Path) -> None:
    """The diff review: ending a session deleted every session that shared a hard-linked upload with it; a reload and
    a colleague following the address look alike to the server, so a follower wiped the maker's session."""
    root = tmp_path / "uploads"
    maker = "a" * 32
    upload = save_upload(ROWS, "private.csv", folder=root / maker)
    saved_session.save(root, maker, json.dumps(saved_session.to_record({state.DATA_CHOICE: upload})))
    follower, _ = saved_session.take_over(root, maker)  # the address followed: a copy, the file linked
    saved_session.end_session(root, follower)
    assert not (root / follower).exists() and (root / maker / "private.csv").read_bytes() == ROWS
    assert (root / f"{maker}.session.json").is_file()


def test_submitted_scoring_options_are_saved_before_the_scoring_runs(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The multi-session review: a reload while the scores were computed reopened the options of before, saved only
    when the script run ended, after the computation."""
    from clm_explore.ui import cache

    app = open_app(page="app_pages/3_sensitivity.py")
    token = token_of(app)
    seen: list[dict] = []
    real = cache.sensitivity

    def watching(*args, **kwargs):
        seen.append(json.loads((tmp_path / "uploads" / f"{token}.session.json").read_text()))
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "sensitivity", watching)
    app.number_input(key="sens_warmup").set_value(3)
    app.button(key="FormSubmitter:sens_form-Compute").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert seen and seen[0]["sens_cfg"]["warmup_epochs"] == 3, seen[:1]  # on disk before the scoring began


def test_the_data_pages_few_shot_draw_reaches_every_page_a_launch_and_a_reload() -> None:
    """The few-shot draw in the app (the command line's --shots K --data-seed S): set once on the Data page, it is
    the data of every page and of the runs launched, and a reload keeps it."""
    app = open_app()
    app.number_input(key="data_shots").set_value(5).run()
    app.number_input(key="data_shots_seed").set_value(2).run()
    assert not app.exception, [e.value for e in app.exception]
    choice = app.session_state["data_choice"]
    assert (choice.shots, choice.shots_seed) == (5, 2)
    assert any("banking77\\_20, 5 rows of each label \\(draw 2\\)" in c.value for c in app.sidebar.caption)
    said = [c.value.replace("\\", "") for c in app.info if "trains on 100 of the " in c.value.replace("\\", "")]
    assert len(said) == 1 and said[0].startswith("Training rows of each label 5: trains on 100 of the ") and (
        "per label, drawn at random (Draw 2); the test split is kept whole" in said[0]), said  # the boxes' names
    app.switch_page("app_pages/5_finetune.py")
    app.run()
    assert app.number_input(key="ft_epochs").value == 30  # 5 rows per label: the few-shot epochs
    app.number_input(key="ft_epochs").set_value(1)
    next(b for b in app.button if b.label == "Launch").click().run(timeout=TIMEOUT)
    assert not app.exception, [e.value for e in app.exception]
    [run] = RunStore().list()
    record = json.loads((run.path / "clm_run.json").read_text())
    assert (record["data_config"]["shots"], record["data_config"]["shots_seed"]) == (5, 2)
    assert run.config["data"] == choice.key and choice.key.endswith(":5-per-label-draw-2")
    again = open_app(token_of(app))  # a reload: the draw is the session's still, and the boxes show it
    assert (again.session_state["data_choice"].shots, again.session_state["data_choice"].shots_seed) == (5, 2)
    assert again.number_input(key="data_shots").value == 5 and again.number_input(key="data_shots_seed").value == 2


def test_the_shares_carved_from_an_uploads_train_are_chosen_on_the_data_page_and_kept(tmp_path: Path) -> None:
    """A single file gives no validation or test split: the app carved 10% and 20% with no say (the few-shot review's
    70 rows lost a tenth to one validation row per label); the command line's --validation-fraction 0 kept them."""
    token = "c" * 32
    app = open_with_upload(tmp_path, token, "rows.csv")
    assert app.number_input(key="data_validation_fraction").value == 10.0
    app.number_input(key="data_validation_fraction").set_value(0.0).run()
    app.number_input(key="data_test_fraction").set_value(30.0).run()
    assert not app.exception, [e.value for e in app.exception]
    choice = app.session_state["data_choice"]
    assert (choice.validation_fraction, choice.test_fraction) == (0.0, 0.3)
    assert "validation: 0 rows" in " ".join(c.value for c in app.caption).replace("\\", "")
    assert any("rows.csv, validation 0% of train, test 30% of train" in c.value.replace("\\", "")
               for c in app.sidebar.caption)
    app.switch_page("app_pages/5_finetune.py")
    app.run()
    app.number_input(key="ft_epochs").set_value(1)
    next(b for b in app.button if b.label == "Launch").click().run(timeout=TIMEOUT)
    assert not app.exception, [e.value for e in app.exception]
    [run] = RunStore().list()
    carved = json.loads((run.path / "clm_run.json").read_text())["data_config"]
    assert (carved["validation_fraction"], carved["test_fraction"]) == (0.0, 0.3)
    again = open_app(token_of(app), page="app_pages/1_data.py")
    kept = again.session_state["data_choice"]
    assert (kept.validation_fraction, kept.test_fraction) == (0.0, 0.3)
    assert again.number_input(key="data_validation_fraction").value == 0.0


def test_only_the_splits_a_data_set_lacks_offer_a_share(tmp_path: Path) -> None:
    app = open_app()  # the sample: train and test files, validation carved
    assert [n.key for n in app.number_input if n.key in ("data_validation_fraction", "data_test_fraction")] == [
        "data_validation_fraction"]


def test_a_choice_beyond_the_boxes_ranges_opens_the_data_page_at_their_limits(tmp_path: Path) -> None:
    """A saved session or a Python-made choice with more shots than the box allows (or a test share under its least)
    raised StreamlitValueAboveMaxError on every run of the Data page."""
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    upload = save_upload(ROWS, "rows.csv", folder=tmp_path / "uploads" / ("d" * 32))
    app.session_state["session_id"] = "d" * 32
    app.session_state["data_choice"] = dataclasses.replace(upload, text_col="utterance", label_col="intent",
                                                           shots=600_000, shots_seed=2**40, test_fraction=0.0001)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.number_input(key="data_shots").value == 500_000 and app.number_input(key="data_test_fraction").value == 0.1
    assert app.number_input(key="data_shots_seed").value == 2**31 - 1


def test_a_run_on_every_row_says_which_boxes_to_set_to_launch_it_again_under_a_draw(tmp_path: Path) -> None:
    """The diff review: "choose its data on the Data page (banking77_20)", with banking77_20 chosen, the draw alone
    differing, and not named."""
    from types import SimpleNamespace

    from clm_explore.ui.jobs import relaunch_refusal

    every = state.sample_choice()
    run = SimpleNamespace(id="r1", path=tmp_path, config={"data": every.key, "data_digest": "0" * 16,
                                                          "source": "tiny-random"})
    said = relaunch_refusal(run, dataclasses.replace(every, shots=5))
    assert said == ("It was trained on banking77_20, every row; the data is read now as banking77_20, 5 rows of each "
                    "label (draw 0). To launch it again with its settings, set the Data page's Few-shot and Splits "
                    "boxes as the run had them."), said
