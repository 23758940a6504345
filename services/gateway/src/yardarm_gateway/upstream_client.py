"""A lean HTTP/1.1 client for the proxy's hot path: keep-alive pools over httptools.

A general client (aiohttp's) builds request objects, header multidicts, timeout
contexts and tracing hooks for every call; a proxy needs none of it. Here one request
is: a connection popped from a per-origin LIFO list, one `transport.write` of the
serialised request, one future resolved by the parser's callbacks, one timer for the
whole exchange. The connection goes back to its list only when the response was read
to its end and allowed keep-alive; on any error, timeout or cancellation it is closed.

Framing follows RFC 9112 section 6.3: no body for HEAD, 1xx, 204 and 304; chunked or
Content-Length bodies otherwise; without either, the body runs to the end of the
connection. Only `http://` origins: TLS upstreams stay on the general client.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class UpstreamError(Exception):
    """Base of the errors one upstream exchange can end with."""


class UpstreamConnectError(UpstreamError):
    """The TCP connection could not be established: the request was not sent at all."""


class UpstreamTimeoutError(UpstreamError):
    """No complete response arrived within the request's timeout."""


class UpstreamProtocolError(UpstreamError):
    """The connection was reset or closed mid-exchange, or the response was unparseable."""


_REPEATABLE = frozenset({"GET", "HEAD", "OPTIONS"})


class _ClosedBeforeResponse(UpstreamProtocolError):
    """The connection ended before a single byte of the response arrived."""


@dataclass(slots=True)
class UpstreamResponse:
    """A complete response; `headers` in wire order, repeated names kept (Set-Cookie)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection: feeds the parser, resolves the exchange's future."""

    __slots__ = (
        "_body",
        "_head",
        "_headers",
        "_limit",
        "_lost",
        "_lost_seen",
        "_parser",
        "_received",
        "_spent",
        "_status",
        "_waiter",
        "closed",
        "idle_since",
        "reusable",
        "transport",
    )

    def __init__(self, limit: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False  # the peer closed, or we did: never reuse
        self.reusable = False  # the last response was complete and allowed keep-alive
        self.idle_since = 0.0
        self._limit = limit
        self._parser = HttpResponseParser(self)
        self._spent = False  # the parser is mid-message after a HEAD response: replace it
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._head = False
        self._status = 0
        self._received = 0
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._lost: asyncio.Future[None] | None = None
        self._lost_seen = False

    # -- the exchange, driven by the pool -------------------------------------------

    def send(self, data: bytes, waiter: asyncio.Future[UpstreamResponse], head: bool) -> None:
        if self._spent:
            self._parser = HttpResponseParser(self)
            self._spent = False
        self._waiter = waiter
        self._head = head
        self._status = 0
        self._received = 0
        self.reusable = False
        assert self.transport is not None
        try:
            self.transport.write(data)
        except (OSError, RuntimeError) as exc:
            self._fail(_ClosedBeforeResponse(f"the connection failed on write: {exc!r}"))

    def expire(self) -> None:
        if self._waiter is not None:  # else the response is complete, the timer just late
            self._fail(UpstreamTimeoutError("no complete response within the timeout"))

    def abort(self) -> None:
        self.reusable = False
        self._waiter = None
        if self.transport is not None:
            self.transport.abort()

    def wait_lost(self) -> asyncio.Future[None]:
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
            if self._lost_seen:
                self._lost.set_result(None)
        return self._lost

    def _fail(self, exc: UpstreamError) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def _finish(self, keep_alive: bool) -> None:
        waiter = self._waiter
        self._waiter = None
        self.reusable = keep_alive
        body = b"".join(self._body)
        self._body.clear()
        headers = self._headers
        self._headers = []
        if waiter is not None and not waiter.done():
            waiter.set_result(UpstreamResponse(self._status, headers, body))

    def _eof_delimited(self) -> bool:
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == "content-length":
                return False
            if lowered == "transfer-encoding" and "chunked" in value.lower():
                return False
        return True

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self._limit:
            self._fail(UpstreamProtocolError(f"the response exceeds {self._limit} bytes"))
            return
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols unasked"))
        except HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid response: {exc}"))

    def eof_received(self) -> None:
        self.closed = True  # the transport closes itself; connection_lost settles the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self._lost_seen = True
        self.reusable = False
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self._status and self._eof_delimited():
            self._finish(False)
            return
        self._waiter = None
        if self._received == 0:
            waiter.set_exception(
                _ClosedBeforeResponse("the upstream closed the connection unanswered")
            )
        else:
            waiter.set_exception(
                UpstreamProtocolError("the upstream closed the connection mid-response")
            )

    # -- httptools callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:  # bytes nobody asked for: the stream is out of step
            raise HttpParserError("a response nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            return  # informational: its message ends here, the real response follows
        self._status = status
        if self._head:
            # httptools cannot tell the parser a body will not follow: finish here and
            # give the next exchange a fresh parser
            self._spent = True
            self._finish(self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self._waiter is None:
            raise HttpParserError("a body after a HEAD response")
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status == 0:
            self._headers.clear()  # an informational response ended
        elif self._waiter is None:
            self._spent = False  # the HEAD response carried no framing to wait for
        else:
            self._finish(self._parser.should_keep_alive())


def _serialize(
    host_field: str, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
) -> bytes:
    """The request as one bytes object: request line, Host, headers, length, body."""
    if body or method in _BODY_METHODS:
        lines = [f"{method} {target} HTTP/1.1", host_field, *map(": ".join, headers),
                 f"Content-Length: {len(body)}", "\r\n"]  # fmt: skip
    else:
        lines = [f"{method} {target} HTTP/1.1", host_field, *map(": ".join, headers), "\r\n"]
    text = "\r\n".join(lines)
    # a CR or LF inside a field, or a space in the target, would let one request
    # smuggle another past the upstream's parser
    if text.count("\n") != len(lines) or text.count("\r") != len(lines) or " " in target:
        raise ValueError("header fields and the target must not hold CR or LF, nor the target SP")
    data = text.encode("utf-8", "surrogateescape")
    return data + body if body else data


@dataclass(slots=True)
class _Origin:
    host: str
    port: int
    host_field: str
    idle: list[_Connection]
    discarded: bool = False  # connections still in use close when their exchange ends


def _parse_origin(origin: str) -> _Origin:
    parts = urlsplit(origin)
    if parts.scheme == "https":
        raise ValueError(
            f"UpstreamPool speaks plain HTTP only; send {origin!r} through the TLS client"
        )
    if parts.scheme != "http" or not parts.hostname or parts.username is not None:
        raise ValueError(f"{origin!r} is not an origin like http://host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{origin!r} is not an origin: it has a path, query or fragment")
    return _Origin(parts.hostname, parts.port or 80, f"Host: {parts.netloc}", [])


class UpstreamPool:
    """Keep-alive connections to many origins (scheme://host:port), reused LIFO.

    LIFO keeps the hottest connections busy and lets the rest age out: a connection
    idle longer than `idle_timeout_s` is closed when met, so no timer runs per
    connection. Everything runs on one event loop; nothing here is thread-safe.
    """

    def __init__(
        self,
        *,
        max_idle_per_origin: int = 64,
        idle_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_response_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._max_idle = max_idle_per_origin
        self._idle_timeout_s = idle_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_response_bytes = max_response_bytes
        self._origins: dict[str, _Origin] = {}
        self._closed = False

    async def request(
        self,
        origin: str,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        timeout: float,
    ) -> UpstreamResponse:
        """Send one request and read its whole response within `timeout` seconds.

        The pool writes Host and, when there is a body or the method carries one,
        Content-Length; `headers` must hold neither. Raises UpstreamConnectError,
        UpstreamTimeoutError or UpstreamProtocolError; ValueError for an origin that is
        not `http://host[:port]` or a header, method or target that would split the
        request.
        """
        if self._closed:
            raise RuntimeError("the upstream pool is closed")
        if timeout <= 0:
            raise UpstreamTimeoutError("no time left for the request")
        dest = self._origins.get(origin)
        if dest is None:
            dest = self._origins[origin] = _parse_origin(origin)
        data = _serialize(dest.host_field, method, target, headers, body)
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout
        head = method == "HEAD"
        conn = self._checkout(dest, now)
        # Resending after a reused connection died unanswered is kept to requests that
        # may run twice, as Go's client does (see below).
        reused = conn is not None and (
            method in _REPEATABLE or any(k.lower() == "idempotency-key" for k, _ in headers)
        )
        unanswered: _ClosedBeforeResponse | None = None
        while True:
            if conn is None:
                try:
                    conn = await self._connect(origin, dest, deadline, loop)
                except UpstreamConnectError:
                    if unanswered is not None:  # it was sent once: never "not sent"
                        raise unanswered from None
                    raise
            waiter: asyncio.Future[UpstreamResponse] = loop.create_future()
            timer = loop.call_at(deadline, conn.expire)
            conn.send(data, waiter, head)
            try:
                return await waiter
            except _ClosedBeforeResponse as exc:
                if not reused:
                    raise
                unanswered = exc
            finally:
                timer.cancel()
                self._checkin(dest, conn, loop)
            # A pooled connection ended before one byte of a response came back: most
            # often the upstream closed it for being idle just as we reused it, and the
            # request never ran. But an upstream that read the request and died
            # without a word looks the same, so only requests that may run twice
            # (safe methods, or an Idempotency-Key) are sent again, once, and never
            # after a fresh connection failed; others get UpstreamProtocolError. Should
            # the new connection be refused, the first failure is raised: the request
            # went out once, so it is not a refused connection that sent nothing.
            reused = False
            conn = None

    async def close(self) -> None:
        """Close every idle connection; connections in use close when their exchange ends."""
        self._closed = True
        lost: list[asyncio.Future[None]] = []
        for dest in self._origins.values():
            for conn in dest.idle:
                if conn.transport is not None:
                    conn.transport.close()
                lost.append(conn.wait_lost())
            dest.idle.clear()
        if lost:
            await asyncio.wait(lost, timeout=self._connect_timeout_s)

    def discard(self, origin: str) -> None:
        """Close the idle connections to `origin` at once and those in use as their
        exchange ends (an endpoint that left the routing); a later request to it opens a
        new one."""
        dest = self._origins.pop(origin, None)
        if dest is None:
            return
        dest.discarded = True
        for conn in dest.idle:
            conn.reusable = False
            if conn.transport is not None:
                conn.transport.close()  # idle: a FIN, nothing is lost
        dest.idle.clear()

    def _checkout(self, dest: _Origin, now: float) -> _Connection | None:
        idle = dest.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since <= self._idle_timeout_s:
                return conn
            conn.abort()
        return None

    def _checkin(self, dest: _Origin, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        if not conn.reusable or conn.closed or self._closed or dest.discarded:
            conn.abort()
            return
        idle = dest.idle
        now = conn.idle_since = loop.time()
        # LIFO leaves the oldest at the bottom, where checkout may never reach them
        if idle and now - idle[0].idle_since > self._idle_timeout_s:
            idle.pop(0).abort()
        if len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn.abort()

    async def _connect(
        self, origin: str, dest: _Origin, deadline: float, loop: asyncio.AbstractEventLoop
    ) -> _Connection:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise UpstreamTimeoutError(f"no time left to connect to {origin}")
        limit = min(self._connect_timeout_s, remaining)
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._max_response_bytes), dest.host, dest.port
                )
        except TimeoutError:
            if limit < remaining:
                raise UpstreamConnectError(
                    f"connecting to {origin} took longer than {limit:g}s"
                ) from None
            raise UpstreamTimeoutError(f"the timeout ran out connecting to {origin}") from None
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {origin}: {exc}") from exc
        return conn
