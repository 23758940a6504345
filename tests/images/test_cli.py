"""`yardarm images build` says what to do when it cannot build: exit 1, and the next step."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from yardarm.cli import app

DAEMON_DOWN = """#!/bin/sh
echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2
exit 1
"""
# A daemon that answers and holds no image at all.
EMPTY_DAEMON = """#!/bin/sh
case "$1" in
    info) echo 20.10.24 ;;
    image) echo "Error: No such image: $3" >&2; exit 1 ;;
    pull) echo "Error response from daemon: Get \"https://registry-1.docker.io/v2/\":" \
        "dial tcp: lookup registry-1.docker.io: no such host" >&2; exit 1 ;;
    build) echo "build must not run" >&2; exit 3 ;;
    *) exit 0 ;;
esac
"""


def _bin(tmp_path: Path, **scripts: str) -> Path:
    """A PATH holding only these scripts (so no docker, no debootstrap unless given)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def _build(path: Path, *args: str) -> Result:
    return CliRunner().invoke(
        app, ["images", "build", *args], env={"PATH": str(path), "COLUMNS": "200"}
    )


@pytest.fixture(autouse=True)
def _in_a_tree(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)


def test_without_docker_it_says_to_install_it(tmp_path: Path) -> None:
    result = _build(_bin(tmp_path))
    assert result.exit_code == 1
    assert "docker is not installed" in result.output
    assert "install Docker and start the daemon" in result.output


def test_without_a_daemon_it_says_to_start_it(tmp_path: Path) -> None:
    result = _build(_bin(tmp_path, docker=DAEMON_DOWN), "--json")
    assert result.exit_code == 1
    assert "the Docker daemon does not answer: Cannot connect" in result.output
    assert "install Docker and start the daemon" in result.output
    assert "{" not in result.stdout  # no report when nothing was built


def test_offline_without_debootstrap_says_how_to_get_it(tmp_path: Path) -> None:
    result = _build(_bin(tmp_path, docker=EMPTY_DAEMON), "--offline", "--only", "orders")
    assert result.exit_code == 1, result.output
    assert "debootstrap is not installed" in result.output
    assert "apt-get install debootstrap" in result.output


def test_without_a_registry_it_points_to_offline(tmp_path: Path) -> None:
    result = _build(_bin(tmp_path, docker=EMPTY_DAEMON), "--only", "orders")
    assert result.exit_code == 1, result.output
    assert "cannot pull python:3.11-slim" in result.output  # the Dockerfile's own base
    assert "no such host" in result.output
    assert "--offline" in result.output


def test_an_unknown_image_is_refused_with_the_list(tmp_path: Path) -> None:
    result = _build(_bin(tmp_path, docker=EMPTY_DAEMON), "--only", "ordres")
    assert result.exit_code == 1
    assert "unknown image 'ordres'" in result.output
    assert "gateway, orders, fulfillment, datastore, control, postgres, nats" in result.output


def test_outside_the_source_tree_it_says_where_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = _build(_bin(tmp_path, docker=EMPTY_DAEMON))
    assert result.exit_code == 1
    assert "not inside the yardarm source tree" in result.output
