"""The workspace's layers (the import-linter contracts in pyproject.toml) hold, and the
check catches a wrong import: the model importing the local target, the kit importing a
service."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:  # first on the path: a copy of a package shadows the real one
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_every_layer_contract_is_kept() -> None:
    run = _lint_imports()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(
    ("package", "module", "wrong_import", "contract"),
    [
        (
            ROOT / "src" / "yardarm",
            "model/probe.py",
            "from yardarm.local import render\n",
            "The deployment model imports no target, tool or service BROKEN",
        ),
        (
            ROOT / "services" / "kit" / "src" / "yardarm_kit",
            "probe.py",
            "import yardarm_gateway.routing\n",
            "The kit imports no service and no control plane BROKEN",
        ),
    ],
)
def test_a_wrong_import_breaks_its_contract(
    tmp_path: Path, package: Path, module: str, wrong_import: str, contract: str
) -> None:
    """A copy of the package with one more module that imports across a layer."""
    copy = tmp_path / package.name
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / module).write_text(f'"""A wrong import."""\n\n{wrong_import}')
    run = _lint_imports(tmp_path)
    assert run.returncode != 0, run.stdout
    assert contract in run.stdout, run.stdout
