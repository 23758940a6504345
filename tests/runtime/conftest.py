"""Fixtures for the supervisor tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from yardarm.local import control


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A state directory whose stack is stopped after the test, whatever happened."""
    path = tmp_path / "home"
    try:
        yield path
    finally:
        control.stop_stack(path)
