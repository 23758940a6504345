"""A TCP link proxy whose faults can be switched while it relays: cut, heal, slow down.

Replicas reach each other through one proxy per directed link, so a partition or a
slow link is a property of the path, not of either process. A partition resets every
open connection and resets each new one as soon as it is accepted (SO_LINGER 0, so the
peer reads ECONNRESET at once instead of a clean end of stream, and the listening port
stays ours). A delay holds each chunk for ms ± jitter before forwarding it; chunks of
one direction leave in the order they arrived, and an end of stream waits behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass
from typing import Any, Literal

from typing_extensions import TypedDict  # pydantic reads it from here on Python 3.11

CHUNK_BYTES = 64 * 1024
# Chunks held per direction before the reader stops reading (TCP backpressure).
QUEUE_CHUNKS = 256
CONNECT_TIMEOUT_S = 5.0
_LINGER_RESET = struct.pack("ii", 1, 0)

Direction = Literal["forward", "backward"]


@dataclass
class LinkStats:
    """What went through one link since it started (counters only ever grow)."""

    connections: int = 0  # accepted and connected through to the target
    refused: int = 0  # accepted while partitioned, and reset at once
    target_failures: int = 0  # the target could not be reached; the caller was reset
    connections_cut: int = 0  # open connections reset by partition()
    bytes_forward: int = 0  # listener side to target
    bytes_backward: int = 0  # target to listener side
    chunks_delayed: int = 0


class LinkState(TypedDict):
    """A link's settings and counters at one moment (the controller's API shape)."""

    name: str
    listen_port: int
    target: str
    partitioned: bool
    delay_ms: int
    jitter_ms: int
    active: int
    connections: int
    refused: int
    target_failures: int
    connections_cut: int
    bytes_forward: int
    bytes_backward: int
    chunks_delayed: int


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: the peer sees an error, not a clean end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


class _Connection:
    """One relayed connection: a reader and a sender task per direction."""

    def __init__(
        self,
        link: LinkProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self._link = link
        self._client = client
        self._upstream = upstream
        self._tasks: list[asyncio.Task[None]] = []
        self._failed = False

    async def run(self) -> None:
        forward = asyncio.create_task(self._pump(self._client[0], self._upstream[1], "forward"))
        backward = asyncio.create_task(self._pump(self._upstream[0], self._client[1], "backward"))
        self._tasks = [forward, backward]
        try:
            await asyncio.wait(self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()
            if not self._failed:
                for writer in (self._client[1], self._upstream[1]):
                    writer.close()

    def reset(self) -> None:
        """Reset both sockets and drop whatever was held (a partition, or an error)."""
        if self._failed:
            return
        self._failed = True
        _reset(self._client[1])
        _reset(self._upstream[1])
        for task in self._tasks:
            task.cancel()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        sender = asyncio.create_task(self._send(queue, writer, direction))
        try:
            while not self._failed:
                try:
                    chunk = await reader.read(CHUNK_BYTES)
                except OSError:
                    self.reset()
                    return
                hold = self._link.hold_s()
                if chunk and hold > 0:
                    self._link.stats.chunks_delayed += 1
                await queue.put((loop.time() + hold, chunk))
                if not chunk:
                    break
            await sender
        finally:
            sender.cancel()

    async def _send(
        self,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        direction: Direction,
    ) -> None:
        loop = asyncio.get_running_loop()
        stats = self._link.stats
        while not self._failed:
            due, chunk = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if not chunk:
                    # End of stream, after every chunk held before it.
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()
            except OSError:
                self.reset()
                return
            if direction == "forward":
                stats.bytes_forward += len(chunk)
            else:
                stats.bytes_backward += len(chunk)


class LinkProxy:
    """Relays one directed link between two processes; its faults change live."""

    def __init__(
        self,
        name: str,
        listen_host: str,
        listen_port: int,
        target_host: str,
        target_port: int,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.target_host = target_host
        self.target_port = target_port
        self.stats = LinkStats()
        self._rng = rng or random.Random()
        self._partitioned = False
        self._delay_ms = 0
        self._jitter_ms = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Listen; OSError when the port is taken."""
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self.listen_port, reuse_address=True
        )
        if self.listen_port == 0:
            self.listen_port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and reset every connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.reset()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    # --- faults --------------------------------------------------------------------

    @property
    def partitioned(self) -> bool:
        return self._partitioned

    @property
    def delay_ms(self) -> int:
        return self._delay_ms

    @property
    def jitter_ms(self) -> int:
        return self._jitter_ms

    def partition(self) -> int:
        """Cut the link: reset open connections and every new one; how many were cut."""
        self._partitioned = True
        cut = list(self._connections)
        for conn in cut:
            conn.reset()
        self.stats.connections_cut += len(cut)
        return len(cut)

    def heal(self) -> None:
        """Let new connections through again (the ones cut stay cut, as after a real one)."""
        self._partitioned = False

    def delay(self, ms: int, jitter_ms: int = 0) -> None:
        """Hold every chunk for ms ± jitter_ms from now on; `delay(0, 0)` clears it."""
        if ms < 0 or jitter_ms < 0:
            raise ValueError(f"delay must not be negative (got {ms} ms ± {jitter_ms} ms)")
        if jitter_ms > ms:
            raise ValueError(f"jitter ({jitter_ms} ms) must not exceed the delay ({ms} ms)")
        self._delay_ms = ms
        self._jitter_ms = jitter_ms

    def hold_s(self) -> float:
        """How long to hold the next chunk, in seconds (0 without a delay)."""
        if self._delay_ms == 0:
            return 0.0
        jitter = self._rng.uniform(-self._jitter_ms, self._jitter_ms) if self._jitter_ms else 0.0
        return max(0.0, self._delay_ms + jitter) / 1000.0

    def state(self) -> LinkState:
        """Settings and counters, for the API and the metrics."""
        return LinkState(
            name=self.name,
            listen_port=self.listen_port,
            target=f"{self.target_host}:{self.target_port}",
            partitioned=self._partitioned,
            delay_ms=self._delay_ms,
            jitter_ms=self._jitter_ms,
            active=len(self._connections),
            connections=self.stats.connections,
            refused=self.stats.refused,
            target_failures=self.stats.target_failures,
            connections_cut=self.stats.connections_cut,
            bytes_forward=self.stats.bytes_forward,
            bytes_backward=self.stats.bytes_backward,
            chunks_delayed=self.stats.chunks_delayed,
        )

    # --- relaying ------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._partitioned:
            self.stats.refused += 1
            _reset(writer)
            return
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            self.stats.target_failures += 1
            _reset(writer)
            return
        if self._partitioned:  # cut while we were connecting
            self.stats.refused += 1
            _reset(writer)
            _reset(upstream[1])
            return
        conn = _Connection(self, (reader, writer), upstream)
        self._connections.add(conn)
        self.stats.connections += 1
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
