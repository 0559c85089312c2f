"""Keeps each test's report on its item, so fixtures can act on failures (browser screenshots)."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
