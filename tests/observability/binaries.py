"""Prometheus' binaries for the observability tests: skipped with a reason on a laptop
without them, a failure where CI promised them (YARDARM_REQUIRE_PROMETHEUS=1)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str) -> str:
    """The path of `name` (prometheus, promtool), or skip/fail saying how to get it."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not on PATH (Debian: `apt-get install -y prometheus`)"
    if os.environ.get("YARDARM_REQUIRE_PROMETHEUS") == "1":
        pytest.fail(f"{message}; YARDARM_REQUIRE_PROMETHEUS=1 says it must be here")
    pytest.skip(message)
