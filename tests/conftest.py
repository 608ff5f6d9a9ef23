"""Test-wide settings: with A2PD_NO_SKIPS=1 (CI), a skipped test fails the run."""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Turn skips into a failure when CI asks for it."""
    if os.environ.get("A2PD_NO_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(f"A2PD_NO_SKIPS: {len(skipped)} test(s) skipped; failing the run",
                            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
