"""`yardarm rollout ...` against a controller that is not the local stack's (a release's
on Kubernetes, through `kubectl port-forward`): `YARDARM_ROLLOUTS_URL` names it and
`YARDARM_ADMIN_TOKEN_FILE` holds the release's admin token; no stack home is read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from typer.testing import CliRunner, Result

from tests.rollout.test_rollout_cli import FakeController
from yardarm.cli import app
from yardarm.local import control

TOKEN = "release-admin-token-0123456789abcdef"


def cli(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, ["rollout", *args], env={"COLUMNS": "220", **env})


@pytest.fixture
async def remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[FakeController, dict[str, str]]]:
    """A controller on a port of its own, and the environment that names it."""

    def no_local(home: Path) -> str | None:
        raise AssertionError("the local stack's controller was looked up")

    monkeypatch.setattr(control, "rollout_controller_url", no_local)
    controller = FakeController(token=TOKEN)
    runner = web.AppRunner(controller.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    env = {
        "YARDARM_ROLLOUTS_URL": f"http://127.0.0.1:{port}/",
        "YARDARM_ADMIN_TOKEN_FILE": str(token_file),
        "YARDARM_HOME": str(tmp_path / "no-stack"),
    }
    try:
        yield controller, env
    finally:
        await runner.cleanup()


async def test_the_commands_go_to_the_named_controller_with_the_token_in_the_file(
    remote: tuple[FakeController, dict[str, str]],
) -> None:
    controller, env = remote
    started = await asyncio.to_thread(cli, env, "start", "orders", "--version", "0.2.0")
    assert started.exit_code == 0, started.output + started.stderr
    status = await asyncio.to_thread(cli, env, "status", "orders")
    assert status.exit_code == 0, status.stderr
    assert "0.2.0" in status.output
    # Every request carried the file's token (the fake refuses any other with 401).
    assert [(method, path) for method, path, _ in controller.requests] == [
        ("POST", "/rollouts"),
        ("GET", "/rollouts/orders"),
    ]


async def test_a_wrong_token_is_refused_by_the_controller(
    remote: tuple[FakeController, dict[str, str]], tmp_path: Path
) -> None:
    controller, env = remote
    other = tmp_path / "other-token"
    other.write_text("not-the-release-token")
    result = await asyncio.to_thread(cli, env | {"YARDARM_ADMIN_TOKEN_FILE": str(other)}, "list")
    assert result.exit_code == 1
    assert "no valid admin token" in result.stderr
    assert controller.requests == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"YARDARM_ROLLOUTS_URL": "http://127.0.0.1:9"},
         "YARDARM_ROLLOUTS_URL is set but YARDARM_ADMIN_TOKEN_FILE is not"),
        ({"YARDARM_ROLLOUTS_URL": "127.0.0.1:8126", "YARDARM_ADMIN_TOKEN_FILE": "/x"},
         "YARDARM_ROLLOUTS_URL='127.0.0.1:8126' is not an http:// or https:// URL"),
        ({"YARDARM_ROLLOUTS_URL": "http://127.0.0.1:9", "YARDARM_ADMIN_TOKEN_FILE": "/nonexistent"},
         "cannot read the admin token (YARDARM_ADMIN_TOKEN_FILE)"),
    ],
)  # fmt: skip
def test_an_incomplete_setting_says_what_is_missing(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "rollout_controller_url", lambda home: None)
    result = cli({"YARDARM_ADMIN_TOKEN_FILE": "", **env}, "list")
    assert result.exit_code == 1
    assert message in " ".join(result.stderr.split())


def test_nothing_listening_suggests_the_port_forward(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN)
    env = {
        "YARDARM_ROLLOUTS_URL": f"http://127.0.0.1:{port}",
        "YARDARM_ADMIN_TOKEN_FILE": str(token_file),
    }
    result = cli(env, "list")
    assert result.exit_code == 1
    text = " ".join(result.stderr.split())
    assert f"nothing answers at http://127.0.0.1:{port} (YARDARM_ROLLOUTS_URL)" in text
    assert "kubectl port-forward" in text
