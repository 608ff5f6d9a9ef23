"""What ``pip install`` gives a user: the wheel built from this tree, installed (not editable)
into a new virtualenv beside ``python-daemon`` (which installs a top-level ``daemon``
package), runs the demo and its commands from there, and keeps working when python-daemon
is removed again."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
#: a new venv and its dependencies from the package index: minutes at worst
INSTALL_TIMEOUT = 600


def run(*args: str | Path, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("A2PD_CONFIG", "A2PD_CLIENT_SECRET", "A2PD_JWT", "PYTHONPATH")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout, check=False)


@pytest.mark.slow
def test_wheel_installs_beside_python_daemon_and_runs_the_demo(tmp_path: Path) -> None:
    """The wheel holds its data and no ``daemon/``; installed beside python-daemon both
    import; the demo and the emulator's options work from it; removing python-daemon leaves
    a2pd whole (it used to share the ``daemon`` directory with it)."""
    built = run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", REPO,
                timeout=INSTALL_TIMEOUT)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("a2pd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "a2pd/data/demo.toml" in names
    assert "a2pd/py.typed" in names
    assert not [n for n in names if n.startswith("daemon/")], "the wheel must not own daemon/"

    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    pip = [venv / "bin/python", "-m", "pip", "install", "-q"]
    installed = run(*pip, "python-daemon", wheel, timeout=INSTALL_TIMEOUT)
    assert installed.returncode == 0, installed.stderr
    a2pd = venv / "bin/a2pd"
    other = run(venv / "bin/python", "-c", "import daemon, a2pd; print(daemon.__file__); "
                "print(a2pd.__file__)", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    daemon_file, a2pd_file = other.stdout.split()
    assert "site-packages/daemon/" in daemon_file  # python-daemon's
    assert "site-packages/a2pd/" in a2pd_file

    demo = run(a2pd, "demo", "--duration", "4", "--rate", "50", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    records = [json.loads(line) for path in (tmp_path / "demo-output/events").rglob("*.jsonl")
               for line in path.read_text().splitlines()]
    assert records, demo.stderr
    helped = run(a2pd, "emulator", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--traffic" in helped.stdout

    removed = run(venv / "bin/python", "-m", "pip", "uninstall", "-q", "-y", "python-daemon")
    assert removed.returncode == 0, removed.stderr
    version = run(a2pd, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("a2pd ")
    checked = run(a2pd, "validate", "--no-secrets", REPO / "config/example.toml")
    assert checked.returncode == 0, checked.stderr


def test_every_imported_distribution_is_declared() -> None:
    """Each third-party module a2pd imports comes from a distribution the wheel declares
    (h11 was imported but left to arrive through httpx)."""
    import a2pd

    declared = {re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")
                for req in metadata.requires("a2pd") or [] if "extra ==" not in req}
    providers = metadata.packages_distributions()
    missing: dict[str, str] = {}
    for path in Path(a2pd.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "a2pd":
                    continue
                dists = {d.lower().replace("_", "-") for d in providers.get(top, [top])}
                if not dists & declared:
                    missing[top] = str(path.relative_to(Path(a2pd.__file__).parent))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
