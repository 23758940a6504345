"""The hot-path upstream client against real servers on loopback.

Well-behaved upstreams are aiohttp apps; misbehaving ones are raw asyncio servers that
write crafted bytes. Every scenario also runs on uvloop (the loop the gateway serves
on), whose transports report closes and failed writes differently from asyncio's.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import uvloop
from aiohttp import web
from yardarm_gateway.upstream_client import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)

WAIT_S = 5.0  # how long a test waits for something that should happen at once


# -- upstreams ----------------------------------------------------------------------


@asynccontextmanager
async def app_upstream(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """An aiohttp app answering every method and path with `handler`."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@dataclass
class RawConnection:
    """One accepted connection of a raw upstream."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[bytes]

    async def read_request(self) -> bytes | None:
        """The next request (head and Content-Length body), or None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        request = head + await self.reader.readexactly(length)
        self.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_closed_by_client(self) -> None:
        while await self.reader.read(65536):
            pass


@dataclass
class RawUpstream:
    origin: str = ""
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed_by_client: int = 0


@asynccontextmanager
async def raw_upstream(
    serve: Callable[[RawConnection], Awaitable[None]],
) -> AsyncIterator[RawUpstream]:
    """A TCP server running `serve` per connection; counts connections and requests."""
    upstream = RawUpstream()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = RawConnection(upstream.connections, reader, writer, upstream.requests)
        upstream.connections += 1
        try:
            await serve(conn)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    upstream.origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield upstream
    finally:
        server.close()
        await server.wait_closed()


def response(body: bytes = b"ok", *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


async def answer_every_request(conn: RawConnection) -> None:
    while await conn.read_request() is not None:
        await conn.send(response(b"ok"))


async def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.01)


# -- keep-alive and concurrency -----------------------------------------------------


async def test_sequential_requests_reuse_one_connection() -> None:
    peers: set[object] = set()

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(text=f"n={request.query['n']}")

    pool = UpstreamPool()
    async with app_upstream(handler) as origin:
        for n in range(50):
            reply = await pool.request(origin, "GET", f"/count?n={n}", [], b"", WAIT_S)
            assert (reply.status, reply.body) == (200, f"n={n}".encode())
        await pool.close()
    assert len(peers) == 1


async def test_concurrent_requests_each_get_their_own_response() -> None:
    peers: set[object] = set()

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        await asyncio.sleep(random.uniform(0, 0.02))  # answers finish out of order
        return web.Response(text=request.match_info["tail"])

    pool = UpstreamPool()
    async with app_upstream(handler) as origin:
        for _ in range(2):
            replies = await asyncio.gather(
                *(pool.request(origin, "GET", f"/{i}", [], b"", WAIT_S) for i in range(20))
            )
            assert [r.body for r in replies] == [str(i).encode() for i in range(20)]
        await pool.close()
    assert len(peers) <= 20  # the second wave reused the first wave's connections


async def test_idle_connections_past_idle_timeout_are_not_reused() -> None:
    idle_timeout_s = 0.5
    async with raw_upstream(answer_every_request) as upstream:
        pool = UpstreamPool(idle_timeout_s=idle_timeout_s)
        await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        assert upstream.connections == 1
        await asyncio.sleep(idle_timeout_s * 2)
        await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        assert upstream.connections == 2
        await pool.close()


# -- what goes on the wire ----------------------------------------------------------


async def test_request_is_written_with_host_and_caller_headers_in_order() -> None:
    async with raw_upstream(answer_every_request) as upstream:
        pool = UpstreamPool()
        headers = [("Accept", "text/plain"), ("X-Multi", "1"), ("X-Multi", "2")]
        await pool.request(upstream.origin, "GET", "/a/b?x=1&y=%20", headers, b"", WAIT_S)
        await pool.close()
    authority = upstream.origin.removeprefix("http://")
    assert upstream.requests == [
        f"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: {authority}\r\nAccept: text/plain\r\n"
        "X-Multi: 1\r\nX-Multi: 2\r\n\r\n".encode()
    ]


async def test_bodies_are_sent_with_their_content_length() -> None:
    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        length = request.headers.get("Content-Length", "absent")
        return web.Response(text=f"{request.method} {length} {body.decode()}")

    pool = UpstreamPool()
    async with app_upstream(handler) as origin:
        cases = [
            ("POST", b'{"a":1}'),
            ("POST", b""),
            ("PUT", b"x"),
            ("DELETE", b"gone"),
            ("GET", b""),
        ]
        for method, body in cases:
            reply = await pool.request(origin, method, "/", [], body, WAIT_S)
            assert (
                reply.body.decode()
                == {
                    ("POST", b'{"a":1}'): 'POST 7 {"a":1}',
                    ("POST", b""): "POST 0 ",
                    ("PUT", b"x"): "PUT 1 x",
                    ("DELETE", b"gone"): "DELETE 4 gone",
                    ("GET", b""): "GET absent ",
                }[(method, body)]
            )
        await pool.close()


async def test_fields_that_would_split_the_request_are_refused_before_sending() -> None:
    async with raw_upstream(answer_every_request) as upstream:
        pool = UpstreamPool()
        for headers, target in [
            ([("X-A", "1\r\nX-Injected: 1")], "/"),
            ([("X-A", "1\nX-Injected: 1")], "/"),
            ([], "/ HTTP/1.1\r\nX: y"),
            ([], "/a b"),
        ]:
            with pytest.raises(ValueError, match="must not hold CR or LF"):
                await pool.request(upstream.origin, "GET", target, headers, b"", WAIT_S)
        await pool.close()
        assert upstream.connections == 0


async def test_https_origins_are_refused_at_request_time() -> None:
    pool = UpstreamPool()
    with pytest.raises(ValueError, match="plain HTTP only"):
        await pool.request("https://127.0.0.1:8443", "GET", "/", [], b"", WAIT_S)
    with pytest.raises(ValueError, match="not an origin"):
        await pool.request("http://127.0.0.1:8443/base", "GET", "/", [], b"", WAIT_S)


# -- response framing ---------------------------------------------------------------


async def test_repeated_response_headers_are_kept_in_wire_order() -> None:
    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(
            response(
                b"ok", "Set-Cookie: a=1; Path=/", "X-Other: x", "Set-Cookie: b=2", "set-cookie: c=3"
            )
        )

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        reply = await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        await pool.close()
    assert reply.headers == [
        ("Content-Length", "2"),
        ("Set-Cookie", "a=1; Path=/"),
        ("X-Other", "x"),
        ("Set-Cookie", "b=2"),
        ("set-cookie", "c=3"),
    ]


async def test_chunked_body_is_reassembled_and_the_connection_reused() -> None:
    async def serve(conn: RawConnection) -> None:
        while await conn.read_request() is not None:
            for piece in [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                b"lo\r\n",
                b"7\r\n, world\r\n0\r\n",
                b"\r\n",
            ]:
                await conn.send(piece)
                await asyncio.sleep(0.005)

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        for _ in range(3):
            reply = await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
            assert (reply.status, reply.body) == (200, b"hello, world")
        await pool.close()
    assert upstream.connections == 1


async def test_body_delimited_by_close_is_read_to_the_end() -> None:
    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        version = "1.0" if conn.index == 0 else "1.1"
        await conn.send(f"HTTP/{version} 200 OK\r\nContent-Type: text/plain\r\n\r\n".encode())
        for piece in [b"first ", b"second ", b"last"]:
            await conn.send(piece)
            await asyncio.sleep(0.005)

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        for _ in range(2):
            reply = await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
            assert (reply.status, reply.body) == (200, b"first second last")
        await pool.close()
    assert upstream.connections == 2


async def test_head_204_and_304_answers_have_no_body_and_keep_the_connection() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",  # HEAD: the length of a GET's body
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",  # HEAD
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",  # HEAD
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        response(b"after"),
    ]

    async def serve(conn: RawConnection) -> None:
        for answer in answers:
            await conn.read_request()
            await conn.send(answer)
        await conn.until_closed_by_client()

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        replies = [
            await pool.request(upstream.origin, method, "/", [], b"", WAIT_S)
            for method in ["HEAD", "HEAD", "HEAD", "GET", "GET", "GET"]
        ]
        await pool.close()
    assert [(r.status, r.body) for r in replies] == [
        (200, b""),
        (200, b""),
        (200, b""),
        (204, b""),
        (304, b""),
        (200, b"after"),
    ]
    assert upstream.connections == 1


async def test_head_answered_by_aiohttp_keeps_the_connection() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="a body HEAD does not get")

    pool = UpstreamPool()
    async with app_upstream(handler) as origin:
        head = await pool.request(origin, "HEAD", "/", [], b"", WAIT_S)
        get = await pool.request(origin, "GET", "/", [], b"", WAIT_S)
        idle = len(pool._origins[origin].idle)
        await pool.close()
    assert (head.status, head.body) == (200, b"")
    assert ("Content-Length", "24") in head.headers
    assert get.body == b"a body HEAD does not get"
    assert idle == 1


async def test_a_body_wrongly_sent_after_head_never_leaks_into_the_next_response() -> None:
    heads = 0
    retired = asyncio.Event()

    async def serve(conn: RawConnection) -> None:
        nonlocal heads
        while (request := await conn.read_request()) is not None:
            if not request.startswith(b"HEAD"):
                await conn.send(response(b"ok"))
                continue
            heads += 1
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
            if heads == 1:  # the stray body in the same segment as the head
                await conn.send(head + b"stray")
            else:  # the stray body a moment later, while the connection is idle
                await conn.send(head)
                await asyncio.sleep(0.02)
                await conn.send(b"stray")
            await conn.until_closed_by_client()
            retired.set()

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        for _ in range(2):
            head = await pool.request(upstream.origin, "HEAD", "/", [], b"", WAIT_S)
            await asyncio.wait_for(retired.wait(), WAIT_S)
            retired.clear()
            get = await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
            assert (head.body, get.body) == (b"", b"ok")
        await pool.close()
    assert upstream.connections == 3


async def test_informational_responses_are_skipped() -> None:
    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            + response(b"final", "X-Final: yes")
        )

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        reply = await pool.request(upstream.origin, "POST", "/", [], b"x", WAIT_S)
        await pool.close()
    assert (reply.status, reply.body) == (200, b"final")
    assert reply.headers == [("Content-Length", "5"), ("X-Final", "yes")]


async def test_large_body_arrives_whole() -> None:
    payload = random.randbytes(8 * 1024 * 1024)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=payload)

    pool = UpstreamPool()
    async with app_upstream(handler) as origin:
        reply = await pool.request(origin, "GET", "/", [], b"", WAIT_S * 4)
        await pool.close()
    assert reply.body == payload


async def test_response_over_the_size_limit_is_a_protocol_error() -> None:
    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        if conn.index == 0:
            await conn.send(response(b"x" * 50_000))
        else:
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(50):
                await conn.send(b"400\r\n" + b"y" * 1024 + b"\r\n")
        await conn.until_closed_by_client()

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool(max_response_bytes=10_000)
        for _ in range(2):
            with pytest.raises(UpstreamProtocolError, match="exceeds 10000 bytes"):
                await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        await pool.close()


# -- failures -----------------------------------------------------------------------


async def test_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = UpstreamPool()
    with pytest.raises(UpstreamConnectError, match="cannot connect"):
        await pool.request(f"http://127.0.0.1:{port}", "POST", "/", [], b"x", WAIT_S)


async def test_silent_upstream_times_out_within_the_timeout_and_loses_the_connection() -> None:
    timeout_s = 0.3
    closed = asyncio.Event()

    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.until_closed_by_client()
        closed.set()

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError):
            await pool.request(upstream.origin, "GET", "/", [], b"", timeout_s)
        elapsed = time.monotonic() - started
        await asyncio.wait_for(closed.wait(), WAIT_S)
        await pool.close()
    assert timeout_s * 0.9 <= elapsed < timeout_s * 10


async def test_garbage_answer_is_a_protocol_error() -> None:
    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await conn.until_closed_by_client()

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        with pytest.raises(UpstreamProtocolError, match="invalid response"):
            await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        await pool.close()


async def test_switching_protocols_unasked_is_a_protocol_error() -> None:
    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        )
        await conn.until_closed_by_client()

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        with pytest.raises(UpstreamProtocolError, match="switched protocols"):
            await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        await pool.close()


async def test_close_mid_body_is_a_protocol_error() -> None:
    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        if conn.index == 0:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        else:
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        for _ in range(2):
            with pytest.raises(UpstreamProtocolError, match="mid-response"):
                await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        await pool.close()
    assert upstream.connections == 2


async def test_connection_close_answers_are_not_reused() -> None:
    async def serve(conn: RawConnection) -> None:
        while await conn.read_request() is not None:  # keeps the socket open regardless
            await conn.send(response(b"ok", "Connection: close"))

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        for _ in range(3):
            reply = await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
            assert reply.body == b"ok"
        await pool.close()
    assert upstream.connections == 3


async def test_bytes_after_the_response_retire_the_connection() -> None:
    retired = asyncio.Event()

    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        if conn.index == 0:  # stray bytes in the same segment as the response
            await conn.send(response(b"ok") + b"HTTP/1.1 200 OK\r\n")
        else:  # stray bytes while the connection sits idle
            await conn.send(response(b"ok"))
            await asyncio.sleep(0.02)
            await conn.send(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await conn.until_closed_by_client()
        retired.set()

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        for _ in range(2):
            reply = await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
            assert reply.body == b"ok"
            await asyncio.wait_for(retired.wait(), WAIT_S)  # closed by the client unasked
            retired.clear()
        await pool.close()
    assert upstream.connections == 2


# -- stale pooled connections -------------------------------------------------------


async def test_connection_closed_by_upstream_while_idle_is_replaced() -> None:
    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(response(b"ok"))  # then the upstream's idle timeout closes it

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        for _ in range(3):
            reply = await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
            assert reply.body == b"ok"
            await asyncio.sleep(0.05)
        await pool.close()
    assert upstream.connections == 3


async def test_request_racing_an_idle_close_is_sent_again_on_a_new_connection() -> None:
    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(response(b"first"))
        await conn.read_request()  # read, then close unanswered as an idle timeout would

    keyed = [("Idempotency-Key", "k-1")]
    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        reply = await pool.request(upstream.origin, "POST", "/", keyed, b"body", WAIT_S)
        await pool.close()
    assert reply.body == b"first"
    assert upstream.connections == 2
    assert upstream.requests[1] == upstream.requests[2]
    assert upstream.requests[2].endswith(b"Content-Length: 4\r\n\r\nbody")


async def test_a_write_without_idempotency_key_is_never_sent_twice() -> None:
    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(response(b"first"))
        await conn.read_request()  # it may have acted on it: no resend may follow

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        with pytest.raises(UpstreamProtocolError, match="unanswered"):
            await pool.request(upstream.origin, "POST", "/", [], b"body", WAIT_S)
        await pool.close()
    assert upstream.connections == 1
    assert len(upstream.requests) == 2


async def test_an_unanswered_request_is_sent_again_once_only() -> None:
    async def serve(conn: RawConnection) -> None:
        if conn.index == 0:
            await conn.read_request()
            await conn.send(response(b"first"))
        await conn.read_request()

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        with pytest.raises(UpstreamProtocolError, match="unanswered"):
            await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        assert upstream.connections == 2
        with pytest.raises(UpstreamProtocolError, match="unanswered"):  # fresh: not resent
            await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)
        assert upstream.connections == 3
        await pool.close()


async def test_a_request_the_upstream_took_then_died_is_never_reported_as_refused() -> None:
    """The upstream read the request and died; the resend found nothing listening.

    The request may have run, so this is not a refused connection (`UpstreamConnectError`
    means nothing was sent, which lets the proxy re-route outside its retry budget).
    """
    server: asyncio.Server | None = None
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = RawConnection(0, reader, writer, requests)
        await conn.read_request()
        await conn.send(response(b"first"))
        await conn.read_request()  # taken; then the process dies, listener and all
        assert server is not None
        server.close()
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool = UpstreamPool()
    try:
        await pool.request(origin, "GET", "/", [], b"", WAIT_S)
        with pytest.raises(UpstreamProtocolError) as caught:
            await pool.request(origin, "GET", "/", [], b"", WAIT_S)
        assert not isinstance(caught.value, UpstreamConnectError)
        assert len(requests) == 2
        # A fresh connection refused is still a refused connection.
        with pytest.raises(UpstreamConnectError):
            await pool.request(origin, "GET", "/", [], b"", WAIT_S)
    finally:
        await pool.close()
        server.close()


# -- shutdown and cancellation ------------------------------------------------------


async def test_close_closes_idle_connections() -> None:
    closed = 0

    async def serve(conn: RawConnection) -> None:
        nonlocal closed
        await answer_every_request(conn)
        closed += 1

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        await asyncio.gather(
            *(pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S) for _ in range(3))
        )
        assert (upstream.connections, closed) == (3, 0)
        await pool.close()
        await until(lambda: closed == 3)
        with pytest.raises(RuntimeError, match="closed"):
            await pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S)


async def test_cancelled_request_closes_its_connection() -> None:
    closed = asyncio.Event()

    async def serve(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.until_closed_by_client()
        closed.set()

    async with raw_upstream(serve) as upstream:
        pool = UpstreamPool()
        task = asyncio.ensure_future(pool.request(upstream.origin, "GET", "/", [], b"", WAIT_S))
        await until(lambda: len(upstream.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), WAIT_S)
        await pool.close()


# -- the same on uvloop -------------------------------------------------------------

SCENARIOS = [
    test
    for name, test in sorted(globals().items())
    if name.startswith("test_") and asyncio.iscoroutinefunction(test)
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda test: test.__name__[5:])
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(scenario())  # type: ignore[arg-type]
