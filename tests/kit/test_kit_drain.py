"""SIGTERM drains every HTTP service in the order Kubernetes and Envoy rely on: readiness
fails while the listeners still answer, then the listeners close while the requests in
flight finish, then the process exits 0. Each service runs as a real process bound to
0.0.0.0, as in a container, with no span files."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yardarm_kit import Service, ServiceSettings

from tests.conftest import free_port
from tests.kit.service_processes import (
    SERVICES,
    Deps,
    backend,
    connects,
    start_service,
    stop,
    write_latency_flag,
)

# The request held in flight lasts LATENCY_MS (the `fault.latency-ms` flag); readiness
# fails for DRAIN_DELAY_S before the listeners close, well within it.
LATENCY_MS = 4000
DRAIN_DELAY_S = 1.0


async def send_get(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send `GET path` on a connection of its own (keep the writer: dropping it closes
    the connection). Once the request is written the server has it, whatever happens
    next: the listener accepts for DRAIN_DELAY_S after the signal."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def status_of(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1])


async def readiness_fails_while_listening(port: int, within_s: float) -> float:
    """/readyz answers 503 (draining) on a new connection before the listener closes;
    returns when it first did."""
    deadline = time.monotonic() + within_s
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 503:
                        body = await resp.json(content_type=None)
                        assert body["draining"] is True, body
                        return time.monotonic()
                    assert resp.status == 200, resp.status
            except aiohttp.ClientConnectorError:
                raise AssertionError(f":{port} closed before its readiness failed") from None
            assert time.monotonic() < deadline, f":{port} stayed ready after SIGTERM"
            await asyncio.sleep(0.02)


async def refused_within(port: int, within_s: float) -> float:
    """Returns when a new connection to the port was first refused."""
    deadline = time.monotonic() + within_s
    while await connects("127.0.0.1", port):
        assert time.monotonic() < deadline, f":{port} still accepts connections"
        await asyncio.sleep(0.02)
    return time.monotonic()


@pytest.mark.parametrize("service", SERVICES)
async def test_sigterm_drains_then_closes_then_exits_0(
    service: str, tmp_path: Path, nats_url: str, pg_database: str
) -> None:
    flags = tmp_path / "flags.json"
    write_latency_flag(flags, LATENCY_MS)
    env = {"FLAGS_FILE": str(flags), "DRAIN_DELAY_S": str(DRAIN_DELAY_S)}
    async with contextlib.AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(backend()) if service == "gateway" else None
        target = await start_service(
            service, tmp_path, host="0.0.0.0", env=env, deps=Deps(pg_database, nats_url),
            upstream=upstream,
        )  # fmt: skip
        for proc in [target.proc, *target.others]:
            stack.callback(stop, proc)
        # Bound to every address: reached on 127.0.0.1 (above) and on 127.0.0.2 too.
        for port in [*target.http_ports, *([target.raft_port] if target.raft_port else [])]:
            assert await connects("127.0.0.2", port), f"{service} :{port} is not on 0.0.0.0"

        reader, writer = await send_get(target.port, target.slow_path)
        stack.callback(writer.close)
        answer = asyncio.create_task(status_of(reader))
        target.proc.send_signal(signal.SIGTERM)
        failed = [
            await readiness_fails_while_listening(port, within_s=DRAIN_DELAY_S + 5)
            for port in target.http_ports
        ]
        closed = [await refused_within(port, LATENCY_MS / 1000) for port in target.http_ports]
        # The listeners kept answering for the drain delay after readiness failed (the
        # first 503 comes within a poll of the signal; half the delay is the margin).
        assert min(closed) - max(failed) >= DRAIN_DELAY_S / 2, (failed, closed)
        assert not answer.done() and target.proc.poll() is None, (
            "the listeners closed only once nothing was in flight"
        )
        status = await asyncio.wait_for(answer, LATENCY_MS / 1000 + 10)
        assert 200 <= status < 300, (status, target.log_text())
        code = await asyncio.to_thread(target.proc.wait, 30)
        assert code == 0, target.log_text()
        assert not target.state_dir.exists(), sorted(target.state_dir.rglob("*"))


@pytest.fixture
async def draining_service(tmp_path: Path) -> AsyncIterator[tuple[Service, str]]:
    """A started service whose drain has begun (and would last a minute)."""
    port = free_port()
    service = Service(
        ServiceSettings(service="drainer", port=port, state_dir=tmp_path, drain_delay_s=60)
    )

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"pong": True})

    service.app.router.add_get("/ping", ping)
    await service.start()
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http, http.get(f"{url}/ping") as resp:
        assert resp.status == 200 and resp.headers.get("Connection") is None
    drain = asyncio.create_task(service.drain())
    await asyncio.sleep(0)  # the drain's first step: readiness fails
    try:
        yield service, url
    finally:
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        await service.stop()


async def test_draining_answers_with_readiness_failed_and_no_keep_alive(
    draining_service: tuple[Service, str],
) -> None:
    _, url = draining_service
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/readyz") as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            assert (await resp.json(content_type=None))["draining"] is True
        async with http.get(f"{url}/healthz") as resp:  # alive: nothing restarts it
            assert resp.status == 200
        async with http.get(f"{url}/ping") as resp:  # still served
            assert resp.status == 200 and resp.headers["Connection"] == "close"
    # ...and the server closes the connection after the answer (EOF, not keep-alive).
    reader, writer = await send_get(int(url.rsplit(":", 1)[1]), "/ping")
    try:
        answer = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
