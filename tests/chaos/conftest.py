"""Echo servers on loopback, the chaos controller as a real process, and stand-in services."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from yardarm.chaos.config import ChaosConfig, LinkConfig, config_path
from yardarm.local.plan import port_plan
from yardarm.local.processes import HOME_MARK
from yardarm.local.render import InstanceSpec
from yardarm.model import Topology

# How long a failure may take to show, when the point is that it shows "at once": a
# reset arrives in microseconds; a silently dropped connection would never end.
FAILS_WITHIN_S = 2.0
CONTROLLER_START_S = 30.0


class EchoServer:
    """Echoes every byte back; records how each connection ended (eof or reset)."""

    def __init__(self) -> None:
        self.port = 0
        self.endings: list[str] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ending = "eof"
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            ending = "reset"
        self.endings.append(ending)
        writer.close()


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _ThreadedEcho(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def threaded_echo_servers(count: int) -> Iterator[list[int]]:
    """Echo servers in threads, so they answer whatever event loop a test runs; ports."""
    servers = [_ThreadedEcho(("127.0.0.1", 0), _EchoHandler) for _ in range(count)]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        yield [int(server.server_address[1]) for server in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
async def echo_factory() -> AsyncIterator[Callable[[], Awaitable[EchoServer]]]:
    servers: list[EchoServer] = []

    async def make() -> EchoServer:
        server = EchoServer()
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


async def round_trip(port: int, payload: bytes = b"ping") -> float:
    """Seconds for one echo through a fresh connection (raises when it fails)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await echo_on(reader, writer, payload)
    finally:
        writer.close()


async def echo_on(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes = b"ping"
) -> float:
    started = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
    assert echoed == payload
    return time.perf_counter() - started


async def fails_fast(port: int) -> BaseException:
    """A fresh connection through `port` fails (refused, reset or closed) without hanging."""
    async with asyncio.timeout(FAILS_WITHIN_S):
        try:
            await round_trip(port)
        except (OSError, asyncio.IncompleteReadError) as exc:
            return exc
    raise AssertionError(f"a round trip through {port} succeeded")


# --- the controller as a process ------------------------------------------------------


@dataclass
class ControllerProcess:
    """A running `python -m yardarm.chaos`, its config and its log."""

    config: ChaosConfig
    proc: subprocess.Popen[bytes]
    log: Path
    link_ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.control_port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launch_controller(
    home: Path,
    links: list[LinkConfig],
    *,
    env: dict[str, str] | None = None,
    admin_token_file: Path | None = None,
) -> ControllerProcess:
    """Write a config and start the controller (not waiting for it)."""
    home.mkdir(parents=True, exist_ok=True)
    config = ChaosConfig(
        control_port=free_port(),
        home=home.resolve(),
        links=links,
        admin_token_file=admin_token_file,
    )
    path = config_path(home)
    path.write_text(config.model_dump_json())
    log = home / "chaos.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "yardarm.chaos", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    return ControllerProcess(config, proc, log, {link.name: link.listen_port for link in links})


def wait_ready(controller: ControllerProcess) -> None:
    deadline = time.monotonic() + CONTROLLER_START_S
    while time.monotonic() < deadline:
        assert controller.proc.poll() is None, controller.log.read_text()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{controller.url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"controller not ready: {controller.log.read_text()}")


@contextlib.contextmanager
def running_controller(
    home: Path,
    links: list[LinkConfig],
    *,
    env: dict[str, str] | None = None,
    admin_token_file: Path | None = None,
) -> Iterator[ControllerProcess]:
    controller = launch_controller(home, links, env=env, admin_token_file=admin_token_file)
    try:
        wait_ready(controller)
        yield controller
    finally:
        controller.stop()


def replica_links(targets: dict[str, int]) -> list[LinkConfig]:
    """A link for every ordered pair of named replicas, each to the dst's port."""
    return [
        LinkConfig(
            name=f"{src}->{dst}",
            src=src,
            dst=dst,
            listen_port=free_port(),
            target_port=targets[dst],
        )
        for src in targets
        for dst in targets
        if src != dst
    ]


def marked_env(home: Path) -> dict[str, str]:
    """What the supervisor puts into every child's environment."""
    return {HOME_MARK: str(home.resolve())}


# --- stand-ins for supervised services -------------------------------------------------

# A tiny HTTP server answering /readyz; SIGTERM ends it (exit code -15).
STANDIN = r"""
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["STANDIN_PORT"])), Handler).serve_forever()
"""


def standin(name: str) -> InstanceSpec:
    port = free_port()
    return InstanceSpec(
        name=name,
        service=name.rsplit("-", 1)[0],
        command=[sys.executable, "-c", STANDIN],
        env={"STANDIN_PORT": str(port)},
        port=port,
        readiness="http",
        readiness_url=f"http://127.0.0.1:{port}/readyz",
    )


def _all_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_base_port() -> int:
    """A base port whose whole port plan is free (below the ephemeral range)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000, 10)
        if _all_free(list(port_plan(Topology(base_port=base)).values())):
            return base
    raise RuntimeError("no free port range for a test stack")
