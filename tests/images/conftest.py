"""A small source tree shaped like the project's, for the tests that change files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

FILES = {
    "pyproject.toml": '[project]\nname = "yardarm"\nversion = "0.1.0"\n',
    "README.md": "# yardarm\n",
    "Dockerfile": "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n",
    "uv.lock": "version = 1\n",
    "docs/guide.md": "a guide\n",
    "src/yardarm/__init__.py": "",
    "services/kit/pyproject.toml": '[project]\nname = "yardarm-kit"\nversion = "0.1.0"\n',
    "services/kit/src/yardarm_kit/__init__.py": "KIT = 1\n",
    "services/orders/pyproject.toml": '[project]\nname = "yardarm-orders"\nversion = "0.2.0"\n',
    "services/orders/Dockerfile": "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n",
    "services/orders/src/yardarm_orders/app.py": "ORDERS = 1\n",
    "services/gateway/pyproject.toml": '[project]\nname = "yardarm-gateway"\nversion = "0.1.0"\n',
    "services/gateway/src/yardarm_gateway/app.py": "GATEWAY = 1\n",
    "images/postgres/Dockerfile": "ARG BASE_IMAGE=debian:bookworm-slim\nFROM ${BASE_IMAGE}\n",
    "images/postgres/entrypoint.sh": "#!/bin/sh\nexec postgres\n",
    ".gitignore": "*.log\n",
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A git checkout (nothing committed: untracked files count as the tree's own)."""
    root = tmp_path / "tree"
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "images/postgres/entrypoint.sh").chmod(0o755)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root
