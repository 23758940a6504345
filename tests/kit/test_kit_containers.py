"""What a container needs from every service: spans over OTLP with nothing written to
disk (a read-only root filesystem), and listeners on exactly the address configured."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yardarm_kit import Service, ServiceSettings

from tests.conftest import free_port
from tests.kit.service_processes import backend, connects, start_service, stop

OTHER_LOOPBACK = "127.0.0.2"  # on lo like 127.0.0.1, but another address to bind


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """An OTLP/HTTP endpoint in a thread of its own (the exporter posts from its own
    thread while the event loop waits on the flush); yields its URL and what it got."""
    received: list[tuple[str, bytes]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


async def test_span_files_off_exports_over_otlp_and_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    collector: tuple[str, list[tuple[str, bytes]]],
) -> None:
    endpoint, received = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    state_dir = tmp_path / "state"
    port = free_port()
    service = Service(
        ServiceSettings(service="spans", port=port, state_dir=state_dir, span_files=False)
    )

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    service.app.router.add_get("/ping", ping)
    await service.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/ping") as r:
            assert r.status == 200
    finally:
        await service.stop()  # flushes the spans
        service.tracer_provider.shutdown()  # no exporter outlives the collector
    assert any(path == "/v1/traces" and b"GET /ping" in body for path, body in received)
    assert not state_dir.exists()


async def test_span_files_off_without_otlp_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for span_files, warned in ((False, True), (True, False)):
        settings = ServiceSettings(
            service="spans", port=free_port(), state_dir=tmp_path, span_files=span_files
        )
        Service(settings)
        assert ('"event": "spans_discarded"' in capsys.readouterr().err) is warned


async def test_every_listener_binds_the_configured_host_only(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    service = Service(
        ServiceSettings(service="bound", host=OTHER_LOOPBACK, port=port, state_dir=tmp_path)
    )
    service.add_listener(web.Application(), admin_port)
    await service.start()
    try:
        for listener in (port, admin_port):
            assert await connects(OTHER_LOOPBACK, listener)
            assert not await connects("127.0.0.1", listener), f":{listener} is on 127.0.0.1"
    finally:
        await service.stop()
    for listener in (port, admin_port):
        assert not await connects(OTHER_LOOPBACK, listener), f":{listener} is still open"


@pytest.mark.parametrize("service", ["datastore", "gateway"])
async def test_service_processes_bind_the_configured_hosts(service: str, tmp_path: Path) -> None:
    """The datastore's HTTP and Raft listeners (`host`, `raft_host`) and the gateway's
    public and admin listeners (both `host`)."""
    async with contextlib.AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(backend()) if service == "gateway" else None
        target = await start_service(
            service, tmp_path, host=OTHER_LOOPBACK, env={}, upstream=upstream,
            reach=OTHER_LOOPBACK,
        )  # fmt: skip
        stack.callback(stop, target.proc)
        ports = [*target.http_ports, *([target.raft_port] if target.raft_port else [])]
        assert len(ports) == 2
        for port in ports:
            assert await connects(OTHER_LOOPBACK, port)
            assert not await connects("127.0.0.1", port), f"{service} :{port} is on 127.0.0.1"
