"""Fixtures for gateway tests: real backend servers and a real gateway process.

Backends are aiohttp servers (or raw TCP servers) in the test's own event loop on
127.0.0.1, or separate processes (`backends`) where a test kills and restarts them; the
gateway runs as `python -m yardarm_gateway`, configured through its environment exactly
as the local runtime starts it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.gateway.processes import Backends, spawn, wait_ready

StartBackend = Callable[..., Awaitable[str]]
StartRawBackend = Callable[
    [Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]], Awaitable[str]
]


def unused_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Returns loopback ports nothing listens on (connections to them are refused)."""
    return unused_port


@pytest.fixture
async def start_backend() -> AsyncIterator[StartBackend]:
    """Start aiohttp apps on loopback (a free port by default); yields their base URLs."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, port: int = 0) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def start_raw_backend() -> AsyncIterator[StartRawBackend]:
    """Start raw TCP servers (for backends that do not speak HTTP)."""
    servers: list[asyncio.Server] = []

    async def start(
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[Backends]:
    """Backend processes (tests/gateway/backend_app.py), killed at the end of the test."""
    fleet = Backends(tmp_path)
    yield fleet
    fleet.stop_all()


@pytest.fixture
async def datastore_url(tmp_path: Path) -> AsyncIterator[str]:
    """A real datastore (one replica, authentication off), stopped at the end of the test."""
    port = unused_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YARDARM_", "OTEL_"))}
    env.update(
        {
            "YARDARM_DATASTORE_PORT": str(port),
            "YARDARM_DATASTORE_INSTANCE": "datastore-0",
            "YARDARM_DATASTORE_STATE_DIR": str(tmp_path / "ds-state"),
            "YARDARM_DATASTORE_DATA_DIR": str(tmp_path / "ds-data"),
        }
    )
    process = spawn([sys.executable, "-m", "yardarm_datastore"], tmp_path / "datastore.log", env)
    url = f"http://127.0.0.1:{port}"
    await wait_ready(url, tmp_path / "datastore.log")
    yield url
    process.send_signal(signal.SIGTERM)
    process.wait(20)


@dataclass
class Gateway:
    """A running gateway process."""

    url: str
    admin_url: str | None
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


StartGateway = Callable[..., Awaitable[Gateway]]


def _spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "yardarm_gateway"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


async def _wait_healthy(
    gateway: Gateway, within_s: float, scheme: str = "http", instance: str | None = None
) -> None:
    """Until the gateway's `/healthz` answers; with `instance`, until that replica itself
    answers on the port (replicas sharing a port: each try is a new connection, which
    the kernel may give to any of them)."""
    deadline = time.monotonic() + within_s
    base = gateway.url.replace("http://", f"{scheme}://")
    connector = aiohttp.TCPConnector(force_close=True, ssl=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        while time.monotonic() < deadline:
            if gateway.process.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{gateway.log()}")
            try:
                async with session.get(
                    f"{base}/healthz", timeout=aiohttp.ClientTimeout(total=1)
                ) as resp:
                    if resp.status == 200 and (
                        instance is None or (await resp.json())["instance"] == instance
                    ):
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"gateway not healthy after {within_s}s:\n{gateway.log()}")


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[StartGateway]:
    """Start `python -m yardarm_gateway` with the given routes and upstreams.

    `port=` puts it on a given public port (replicas sharing one pass `reuse_port=True`
    too); `admin=True` gives it an admin port of its own.
    """
    gateways: list[Gateway] = []

    async def start(
        routes: list[dict[str, Any]],
        upstreams: dict[str, Any],
        **settings: Any,
    ) -> Gateway:
        index = len(gateways)
        shared = settings.pop("port", None)
        port = unused_port() if shared is None else int(shared)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("YARDARM_", "OTEL_"))
        }
        env.update(
            {
                "YARDARM_GATEWAY_INSTANCE": f"gateway-test-{index}",
                "YARDARM_GATEWAY_HOST": "127.0.0.1",
                "YARDARM_GATEWAY_PORT": str(port),
                "YARDARM_GATEWAY_STATE_DIR": str(tmp_path / f"state-{index}"),
                "YARDARM_GATEWAY_ROUTES": json.dumps(routes),
                "YARDARM_GATEWAY_UPSTREAMS": json.dumps(upstreams),
            }
        )
        scheme = settings.pop("probe_scheme", "http")
        admin_url = None
        if settings.pop("admin", False):
            admin_port = unused_port()
            env["YARDARM_GATEWAY_ADMIN_PORT"] = str(admin_port)
            admin_url = f"http://127.0.0.1:{admin_port}"
        for key, value in settings.items():
            text = json.dumps(value) if isinstance(value, dict | list | bool) else str(value)
            env[f"YARDARM_GATEWAY_{key.upper()}"] = text
        log_path = tmp_path / f"gateway-{index}.log"
        process = _spawn(env, log_path)
        gateway = Gateway(f"http://127.0.0.1:{port}", admin_url, process, log_path)
        gateways.append(gateway)
        await _wait_healthy(
            gateway,
            within_s=60,
            scheme=scheme,
            instance=None if shared is None else env["YARDARM_GATEWAY_INSTANCE"],
        )
        return gateway

    yield start
    for gateway in gateways:
        if gateway.process.poll() is None:
            gateway.process.send_signal(signal.SIGTERM)
    for gateway in gateways:
        try:
            await asyncio.to_thread(gateway.process.wait, 20)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            await asyncio.to_thread(gateway.process.wait, 20)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client for talking to the gateway (no redirects followed)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
