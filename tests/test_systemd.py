"""The systemd unit: it verifies, and its sandbox rates 2.0 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).parent.parent / "systemd" / "a2pd.service"


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing (.ci/setup installs the systemd package)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=cwd)


def test_exposure_is_two_or_lower(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=true` rates the unit's sandbox <= 2.0."""
    shutil.copy(UNIT, tmp_path / "a2pd.service")
    result = analyze("security", "--offline=true", "--no-pager", "a2pd.service", cwd=tmp_path)
    found = re.search(r"Overall exposure level for a2pd\.service: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout


def test_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (with a2pd where this venv has it)."""
    a2pd = Path(sys.executable).parent / "a2pd"
    assert a2pd.exists()
    text = UNIT.read_text().replace("/usr/local/bin/a2pd", str(a2pd))
    (tmp_path / "a2pd.service").write_text(text)
    result = analyze("verify", "a2pd.service", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a2pd.service" not in result.stderr, result.stderr


def test_unit_matches_the_daemon() -> None:
    """What the unit relies on is what the daemon does: notify, reload via validate + HUP,
    no restart on 77/78."""
    text = UNIT.read_text()
    assert "Type=notify" in text
    assert "WatchdogSec=" in text
    assert "RestartPreventExitStatus=77 78" in text
    assert re.search(r"ExecReload=\S+ validate", text)
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "LoadCredential=jwt:" in text
