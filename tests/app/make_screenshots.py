"""Regenerate docs/screenshots/*.png from a live app (not a test).

    .venv/bin/python tests/app/make_screenshots.py [--model default|tiny-random] [--threads N]

Starts the app (`clm-explore app`) on a temporary run root, walks every page (two 1-epoch runs are
trained for the Compare and Runs pages) and saves one PNG per page, palette-quantised to stay small.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_browser import _launch, launch, nav, streamlit_server, wait_run  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WAIT = 1_500_000  # the default model trains for minutes on a small, busy CPU


def settle(page, seconds: float = 2.5) -> None:
    """Let plotly charts and data grids finish drawing."""
    page.wait_for_load_state("networkidle")
    time.sleep(seconds)


def shoot(page, name: str, full_page: bool = True) -> None:
    """A PNG of the page (its top 2400 px), or of the window as scrolled (``full_page=False``)."""
    from PIL import Image

    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    image = Image.open(path)
    if image.height > 2400:  # keep the top of very long pages
        image = image.crop((0, 0, image.width, 2400))
    image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path.name}: {path.stat().st_size // 1024} KiB")


def shoot_setup_pages(page) -> None:
    """Data, Tokens, Sensitivity (with the unrestricted comparison) and Budget."""
    shoot(page, "1_data")
    page.get_by_role("button", name="Check the labels").click()
    page.get_by_text("Rows flagged").wait_for(timeout=WAIT)
    settle(page)
    # The section sits below the data report: the window scrolled to its heading.
    page.get_by_role("heading", name="Labels the data disputes").evaluate("e => e.scrollIntoView({block: 'start'})")
    settle(page, 1)
    shoot(page, "1_labels", full_page=False)
    nav(page, "Tokens")
    page.get_by_text("groups from").wait_for(timeout=WAIT)
    settle(page)
    shoot(page, "2_tokens")

    nav(page, "Sensitivity")
    page.get_by_text("Restricted vs unrestricted").wait_for(timeout=WAIT)
    page.get_by_text("Compare with the other restriction").click()  # a toggle
    page.get_by_text("Difference (").first.wait_for(timeout=WAIT)
    settle(page)
    shoot(page, "3_sensitivity")

    nav(page, "Budget")
    page.get_by_text("Trainable parameters").wait_for(timeout=WAIT)
    page.get_by_test_id("stExpander").get_by_text("Row choice", exact=True).click()  # open it: the shot shows the row options
    settle(page)
    shoot(page, "4_budget")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--from-finetune", action="store_true", help="only the Finetune, Compare and Runs pages"
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        streamlit_server(Path(tmp), args.model, args.threads) as url,
        sync_playwright() as p,
    ):
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        page.get_by_text("Rows per label").first.wait_for(timeout=WAIT)
        settle(page)
        if not args.from_finetune:
            shoot_setup_pages(page)
        nav(page, "Finetune")

        page.get_by_role("button", name="Launch").wait_for(timeout=WAIT)
        launch(page, "sparse", "demo-sparse")
        wait_run(page, "demo-sparse", timeout_s=WAIT / 1000)
        launch(page, "full", "demo-full")
        page.get_by_text("val accuracy").first.wait_for(timeout=WAIT)  # the sparse run's curves
        page.get_by_text(re.compile(r"step [1-9]\d*/")).first.wait_for(timeout=WAIT)  # full has started
        settle(page, 3)
        shoot(page, "5_finetune")
        wait_run(page, "demo-full", timeout_s=WAIT / 1000)

        nav(page, "Compare")
        page.get_by_text("Top words per label").first.wait_for(timeout=WAIT)
        settle(page, 5)
        shoot(page, "6_compare")
        page.get_by_text("Compare the weights with the base model's").click()  # a toggle: both runs' maps
        page.get_by_text("backbone parameters changed").nth(1).wait_for(timeout=WAIT)
        page.get_by_role("heading", name="What training changed").evaluate("e => e.scrollIntoView({block: 'start'})")
        settle(page, 2)
        shoot(page, "6_changes", full_page=False)
        page.get_by_text("Compare the layers' representations (CKA)").click()  # A vs B and each vs its base
        page.get_by_text(re.compile(r"Over [\d,]+ test rows")).first.wait_for(timeout=WAIT)
        page.get_by_text("CKA per layer").first.evaluate("e => e.scrollIntoView({block: 'center'})")
        settle(page, 2)
        shoot(page, "6_layers", full_page=False)
        page.get_by_text("Attention heads").first.click()  # the first disagreement's text, under both runs
        page.get_by_text(re.compile("attention to task tokens")).first.wait_for(timeout=WAIT)
        page.get_by_text("Attention heads").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        settle(page, 2)
        shoot(page, "6_heads", full_page=False)

        nav(page, "Runs")
        page.get_by_text("Every run in the registry").wait_for(timeout=WAIT)
        page.get_by_text("Compare groups of runs (seeds)").click()  # open it: the shot shows the comparison
        settle(page)
        shoot(page, "7_runs")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
