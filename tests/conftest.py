"""Test-wide settings: with A2PD_NO_SKIPS=1 (CI), a skipped test fails the run; hypothesis
is deterministic (derandomized, no example database, no deadline)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Derandomized: CI runs the same examples every time, so a failure is reproducible and a
# pass is not luck. A2PD_HYPOTHESIS_EXAMPLES raises the count for a deeper local search.
settings.register_profile(
    "a2pd",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=int(os.environ.get("A2PD_HYPOTHESIS_EXAMPLES", "200")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("a2pd")


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
