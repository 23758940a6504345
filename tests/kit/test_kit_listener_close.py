"""Stopping a service refuses nothing a client already sent: what the kernel queued on a
closing listener, a connection whose first request is still on its way, and a request
whose body is still arriving are all answered (with `Connection: close`); an idle
keep-alive connection does not hold the stop up.

Each case sets up the moment a shared-port replica meets when it leaves the port under
load, deterministically, on a Service in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yardarm_kit import Service, ServiceSettings
from yardarm_kit.service import FIRST_REQUEST_S

from tests.conftest import free_port

DRAIN_TIMEOUT_S = 8.0


async def ping(request: web.Request) -> web.Response:
    return web.json_response({"pong": True})


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"length": len(await request.read())})


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    """A started service answering `GET /ping` and `POST /echo` (stopped at the end)."""
    running = Service(
        ServiceSettings(
            service="closer",
            port=free_port(),
            state_dir=tmp_path,
            drain_timeout_s=DRAIN_TIMEOUT_S,
        )
    )
    running.app.router.add_get("/ping", ping)
    running.app.router.add_post("/echo", echo)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def _request(port: int, path: str = "/ping") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (b"" when it reset the connection)."""
    sock.settimeout(DRAIN_TIMEOUT_S)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        return b""
    finally:
        sock.close()
    return received


async def _closed(port: int, within_s: float = 5.0) -> None:
    """Until a new connection to the port is refused (the listener is gone)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except (ConnectionRefusedError, ConnectionResetError):
            return
        writer.close()
        assert time.monotonic() < deadline, f":{port} still accepts connections"
        await asyncio.sleep(0.01)


def _ok_and_closing(answer: bytes) -> None:
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200 "), answer
    assert b"\r\nconnection: close" in head, answer


async def test_connections_queued_on_the_closing_listener_are_answered(
    service: Service,
) -> None:
    port = service.settings.port
    # The kernel completes these handshakes at once; until the event loop runs they wait
    # in the listener's accept queue, each with its request already sent.
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    for client in clients:
        client.sendall(_request(port))
    # stop() runs before the loop gets to accept them: the listener closes on them.
    stopping = asyncio.create_task(service.stop())
    answers = await asyncio.gather(*(asyncio.to_thread(_answer, c) for c in clients))
    await stopping
    for answer in answers:
        _ok_and_closing(answer)


async def test_a_connection_whose_first_request_is_on_its_way_is_answered(
    service: Service,
) -> None:
    port = service.settings.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.1)  # accepted by the server, no request yet
    stopping = asyncio.create_task(service.stop())
    await _closed(port)
    writer.write(_request(port))  # the request a client sends right after connecting
    try:
        answer = await asyncio.wait_for(reader.read(), DRAIN_TIMEOUT_S)
    finally:
        writer.close()
    await stopping
    _ok_and_closing(answer)


async def test_a_request_whose_body_is_still_arriving_is_answered(service: Service) -> None:
    port = service.settings.port
    body = b"x" * 2000
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body[:1000])
    await asyncio.sleep(0.1)  # the handler runs and waits for the rest of the body
    stopping = asyncio.create_task(service.stop())
    await _closed(port)
    writer.write(body[1000:])
    try:
        answer = await asyncio.wait_for(reader.read(), DRAIN_TIMEOUT_S)
    finally:
        writer.close()
    await stopping
    _ok_and_closing(answer)
    assert answer.endswith(b'{"length": 2000}'), answer


async def test_a_connection_that_never_sends_holds_the_stop_up_briefly(
    service: Service,
) -> None:
    # A preconnecting browser may open a connection it never uses.
    _, writer = await asyncio.open_connection("127.0.0.1", service.settings.port)
    try:
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await service.stop()
        assert time.monotonic() - started < FIRST_REQUEST_S + 1.0 < DRAIN_TIMEOUT_S
    finally:
        writer.close()


async def test_an_idle_keep_alive_connection_does_not_hold_the_stop_up(
    service: Service,
) -> None:
    url = f"http://127.0.0.1:{service.settings.port}/ping"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:  # kept alive in the session's pool
            assert resp.status == 200 and resp.headers.get("Connection") is None
        started = time.monotonic()
        await service.stop()
        assert time.monotonic() - started < DRAIN_TIMEOUT_S / 4


async def test_a_shared_port_listener_leaves_as_the_drain_begins(tmp_path: Path) -> None:
    port = free_port()
    replica = Service(
        ServiceSettings(service="replica", port=port, state_dir=tmp_path, drain_delay_s=60)
    )
    replica.reuse_port = True
    replica.app.router.add_get("/ping", ping)
    await replica.start()
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/ping"
        async with http.get(url) as resp:  # a keep-alive connection to the replica
            assert resp.status == 200 and resp.headers.get("Connection") is None
        # A peer joins the port, as the other replica of the gateway is there.
        peer = socket.socket()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        peer.bind(("127.0.0.1", port))
        peer.listen(64)
        peer.setblocking(False)
        drain = asyncio.create_task(replica.drain())
        clients: list[socket.socket] = []
        accepted: list[socket.socket] = []
        try:
            await asyncio.sleep(0.05)
            # Every new connection is the peer's from now on...
            clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
            with contextlib.suppress(BlockingIOError):
                while True:
                    accepted.append(peer.accept()[0])
            assert len(accepted) == len(clients)
            # ...while the replica still answers on the connection it has, closing it.
            async with http.get(url) as resp:
                assert resp.status == 200 and resp.headers["Connection"] == "close"
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            await replica.stop()
            for sock in [peer, *clients, *accepted]:
                sock.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
    except FileNotFoundError:
        if os.environ.get("CI"):
            raise  # CI installs openssl (.ci/run): a missing one is a broken run
        pytest.skip("openssl is not installed (apt-get install -y openssl)")
    return cert, key


async def test_tls_connections_queued_on_the_closing_listener_are_answered(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    port = free_port()
    secure = Service(
        ServiceSettings(
            service="closer", port=port, state_dir=tmp_path, tls_cert_file=cert, tls_key_file=key
        )
    )
    secure.app.router.add_get("/ping", ping)
    await secure.start()
    context = ssl.create_default_context(cafile=str(cert))
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    stopping = asyncio.create_task(secure.stop())  # before the loop accepts them

    def exchange(sock: socket.socket) -> bytes:
        sock.settimeout(DRAIN_TIMEOUT_S)
        try:
            wrapped = context.wrap_socket(sock, server_hostname="127.0.0.1")
        except (ConnectionResetError, ssl.SSLError):
            return b""
        wrapped.sendall(_request(port))
        return _answer(wrapped)

    answers = await asyncio.gather(*(asyncio.to_thread(exchange, c) for c in clients))
    await stopping
    for answer in answers:
        _ok_and_closing(answer)
