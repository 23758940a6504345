"""Raft messages between replicas over TCP.

Each peer gets one outbound stream and one writer task, so messages to a peer arrive in
the order they were sent; inbound streams are read by one task each and handed to the
node synchronously. Raft retries everything it needs (heartbeats, appends, votes), so the
transport never blocks or buffers without bound: a full queue, an unknown peer or a
broken stream drops the message and counts it.

Frames are `[u32 length][payload]` (big-endian). A connection opens with a hello frame
(magic, protocol version, sender id, cluster name); the listener answers with a one-frame
verdict before any message flows, so a sender learns at once that the peer behind the
address (or behind a relay in front of it) is really there, and why it was refused.
After that the stream carries encoded messages one way only.

A sender's newest stream replaces its older one: bytes still on their way through an old
stream (a relay holding them, a half-open socket) are never handed over after newer
messages, and a peer that vanished without closing leaves no reader behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable

from yardarm_datastore.codec import CodecError, decode_message, encode_message
from yardarm_datastore.raft.types import Message

log = logging.getLogger("yardarm.datastore.transport")

MAGIC = b"YRFT"
PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 256 * 1024 * 1024  # a whole snapshot travels in one message
MAX_HELLO_BYTES = 1024
CONNECT_TIMEOUT = 2.0  # connect plus hello and verdict
HANDSHAKE_TIMEOUT = 5.0  # how long the listener waits for a hello
STALL_TIMEOUT = 10.0  # a peer that reads nothing for this long gets a fresh stream
BACKOFF_START = 0.05
BACKOFF_CAP = 1.0
READ_CHUNK = 256 * 1024

_LENGTH = struct.Struct(">I")
_HELLO = struct.Struct(">4sBI")
_ACCEPTED = b"\x00"
_REFUSED = b"\x01"


@dataclasses.dataclass(frozen=True)
class Peer:
    """Where a member's Raft listener is."""

    id: int
    host: str
    port: int


@dataclasses.dataclass
class DropCounts:
    """Messages given up on, by reason."""

    queue_full: int = 0  # the peer's queue was at its bound (slow or unreachable peer)
    unknown_peer: int = 0  # `dst` is not a current peer
    disconnected: int = 0  # in a write the stream failed under, or queued to a removed peer
    too_large: int = 0  # the encoded message exceeds MAX_FRAME_BYTES
    misrouted: int = 0  # inbound, addressed to another node

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))


@dataclasses.dataclass
class TransportStats:
    """Counters for metrics and tests: loss is normal for Raft, but it should be visible."""

    sent: int = 0  # messages written and drained
    received: int = 0  # messages handed to `on_message`
    dropped: DropCounts = dataclasses.field(default_factory=DropCounts)
    connects: int = 0  # outbound streams accepted by their peer
    connect_failures: int = 0  # outbound attempts refused, timed out or cut
    writes: int = 0  # write calls (fewer than `sent` when batching)
    bytes_sent: int = 0
    bytes_received: int = 0
    malformed: int = 0  # inbound streams closed for a bad hello or frame
    refused: int = 0  # inbound streams closed for a foreign cluster


class HandshakeRefused(ConnectionError):
    """The listener at a peer's address would not take our stream."""


class _StreamBroken(ConnectionError):
    """The peer closed, reset or stalled an established outbound stream."""


def frame(payload: bytes) -> bytes:
    """`payload` with its length prefix."""
    return _LENGTH.pack(len(payload)) + payload


def hello(cluster: str, node_id: int) -> bytes:
    """The payload that opens every outbound stream."""
    return _HELLO.pack(MAGIC, PROTOCOL_VERSION, node_id) + cluster.encode()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > limit:
        raise CodecError(f"frame of {length} bytes exceeds {limit}")
    return await reader.readexactly(length)


async def _shut(writer: asyncio.StreamWriter) -> None:
    """Close at once (unsent bytes are Raft's to resend) and wait for the socket to go."""
    writer.transport.abort()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


class _Link:
    """The outbound side for one peer: its bounded queue of frames and its writer task."""

    def __init__(self, owner: Transport, peer: Peer) -> None:
        self.owner = owner
        self.peer = peer
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.broken = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"raft-link-{self.owner.node_id}->{self.peer.id}"
        )

    async def _run(self) -> None:
        stats = self.owner.stats
        backoff = BACKOFF_START
        reported = False
        while True:
            try:
                reader, writer = await self._connect()
            except Exception as exc:
                stats.connect_failures += 1
                expected = isinstance(exc, (OSError, TimeoutError, EOFError, CodecError))
                level = logging.DEBUG if reported and expected else logging.WARNING
                log.log(level, "cannot reach raft peer %s: %s", self._where(), _why(exc))
                reported = True
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_CAP)
                continue
            stats.connects += 1
            log.info("connected to raft peer %s", self._where())
            reported = False
            started = asyncio.get_running_loop().time()
            try:
                await self._pump(reader, writer)
            except (OSError, TimeoutError) as exc:
                log.warning("stream to raft peer %s broke: %s", self._where(), _why(exc))
            except Exception:
                log.exception("stream to raft peer %s failed", self._where())
            finally:
                await _shut(writer)
            # A stream that lived a while earns a quick reconnect; one cut at once backs off.
            if asyncio.get_running_loop().time() - started > BACKOFF_CAP:
                backoff = BACKOFF_START
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_CAP)

    def _where(self) -> str:
        return f"{self.peer.id} at {self.peer.host}:{self.peer.port}"

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(self.peer.host, self.peer.port)
        try:
            _nodelay(writer)
            writer.write(frame(hello(self.owner.cluster, self.owner.node_id)))
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await writer.drain()
                verdict = await _read_frame(reader, MAX_HELLO_BYTES)
            if verdict != _ACCEPTED:
                reason = verdict[1:].decode(errors="replace") or "no reason given"
                raise HandshakeRefused(f"refused: {reason}")
        except BaseException:
            await _shut(writer)
            raise
        return reader, writer

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = self.owner.stats
        self.broken = False
        watcher = asyncio.get_running_loop().create_task(self._watch(reader))
        try:
            while True:
                if not self.queue:
                    self.wake.clear()
                    await self.wake.wait()
                if self.broken:
                    raise _StreamBroken("closed by the peer")
                if not self.queue:
                    continue
                batch = list(self.queue)
                self.queue.clear()
                data = b"".join(batch)
                try:
                    writer.write(data)
                    async with asyncio.timeout(STALL_TIMEOUT):
                        await writer.drain()
                except TimeoutError:
                    stats.dropped.disconnected += len(batch)
                    raise _StreamBroken(f"peer read nothing for {STALL_TIMEOUT:g}s") from None
                except BaseException:
                    stats.dropped.disconnected += len(batch)
                    raise
                stats.writes += 1
                stats.sent += len(batch)
                stats.bytes_sent += len(data)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        """Notice a peer that closes while we have nothing to write; it never speaks."""
        with contextlib.suppress(OSError):
            await reader.read(1)
        self.broken = True
        self.wake.set()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


class Transport:
    """One outbound TCP stream per peer (messages to it, in order) and a listener for
    inbound streams; Raft tolerates loss, so a full queue or a broken stream drops."""

    def __init__(
        self,
        node_id: int,
        *,
        host: str,
        port: int,
        peers: Iterable[Peer],
        on_message: Callable[[Message], None],
        cluster: str = "yardarm",
        max_queue: int = 8192,
    ) -> None:
        if len(cluster.encode()) > MAX_HELLO_BYTES - _HELLO.size:
            raise ValueError(f"cluster name {cluster!r} is too long")
        self.node_id = node_id
        self.host = host
        self.port = port
        self.cluster = cluster
        self.max_queue = max_queue
        self.stats = TransportStats()
        self._on_message = on_message
        self._links: dict[int, _Link] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # inbound readers, retired writers
        self._readers: dict[int, asyncio.Task[None]] = {}  # the live inbound stream per sender
        self._started = False
        self._closed = False
        self.set_peers(peers)

    async def start(self) -> None:
        """Bind the listener and start a writer per peer."""
        if self._started:
            raise RuntimeError("transport already started")
        self._started = True
        self._server = await asyncio.start_server(
            self._on_connect, self.host, self.port, limit=READ_CHUNK
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        for link in self._links.values():
            link.start()

    def send(self, msg: Message) -> None:
        """Queue `msg` for its destination; drops (and counts) rather than block or wait for
        a peer. Raises CodecError only for a message no peer could decode (a bug)."""
        link = self._links.get(msg.dst)
        if link is None:
            if self._closed:
                self.stats.dropped.disconnected += 1
                return
            self.stats.dropped.unknown_peer += 1
            return
        if len(link.queue) >= self.max_queue:
            self.stats.dropped.queue_full += 1
            return
        payload = encode_message(msg)
        if len(payload) > MAX_FRAME_BYTES:
            self.stats.dropped.too_large += 1
            log.error("dropped a %s of %d bytes to %d: too large", msg.type, len(payload), msg.dst)
            return
        link.queue.append(_LENGTH.pack(len(payload)) + payload)
        link.wake.set()

    def set_peers(self, peers: Iterable[Peer]) -> None:
        """Membership changed: open streams to new peers, close removed or moved ones."""
        if self._closed:
            return
        wanted = {peer.id: peer for peer in peers if peer.id != self.node_id}
        for peer_id, link in list(self._links.items()):
            if wanted.get(peer_id) != link.peer:
                del self._links[peer_id]
                self.stats.dropped.disconnected += len(link.queue)
                link.queue.clear()
                if link.task is not None:
                    link.task.cancel()
                    self._tasks.add(link.task)
                    link.task.add_done_callback(self._tasks.discard)
        for peer_id, peer in wanted.items():
            if peer_id not in self._links:
                link = _Link(self, peer)
                self._links[peer_id] = link
                if self._started:
                    link.start()

    async def close(self) -> None:
        """Stop listening, cancel every task and close every socket."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            self.stats.dropped.disconnected += len(link.queue)
        await asyncio.gather(*(link.stop() for link in links))
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve each inbound stream in a task of our own, so `close` can end them all."""
        if self._closed:  # accepted just before the listener closed
            writer.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(
            self._serve(reader, writer), name=f"raft-inbound-{self.node_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        sender = None
        try:
            _nodelay(writer)
            sender = await self._accept(reader, writer)
            if sender is not None and task is not None:
                older = self._readers.get(sender)
                if older is not None:
                    older.cancel()
                self._readers[sender] = task
                await self._read_messages(reader, sender)
        except CodecError as exc:
            self.stats.malformed += 1
            log.warning("closed a raft stream from %s: %s", _remote(writer), exc)
        except (OSError, EOFError, TimeoutError):
            pass  # the sender reconnects; nothing here to report
        except Exception:
            log.exception("raft stream from %s failed", _remote(writer))
        finally:
            if sender is not None and self._readers.get(sender) is task:
                del self._readers[sender]
            await _shut(writer)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> int | None:
        """Check the hello and answer it: the sender's id, or None if refused."""
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            payload = await _read_frame(reader, MAX_HELLO_BYTES)
        if len(payload) < _HELLO.size:
            raise CodecError(f"hello of {len(payload)} bytes is too short")
        magic, version, sender = _HELLO.unpack_from(payload)
        if magic != MAGIC:
            raise CodecError(f"not a raft stream (magic {magic!r})")
        try:
            cluster = payload[_HELLO.size :].decode()
        except UnicodeDecodeError as exc:
            raise CodecError("cluster name is not UTF-8") from exc
        reason = ""
        if version != PROTOCOL_VERSION:
            reason = f"protocol version {version}, this node speaks {PROTOCOL_VERSION}"
        elif cluster != self.cluster:
            reason = f"cluster {cluster!r}, this node is in {self.cluster!r}"
        if reason:
            self.stats.refused += 1
            log.warning(
                "refused a raft stream from node %d (%s): %s", sender, _remote(writer), reason
            )
            writer.write(frame(_REFUSED + reason.encode()))
            with contextlib.suppress(OSError):
                await writer.drain()
            return None
        writer.write(frame(_ACCEPTED))
        await writer.drain()
        return int(sender)

    async def _read_messages(self, reader: asyncio.StreamReader, sender: int) -> None:
        """Decode every whole frame each read brings, so a batch costs one wakeup."""
        stats = self.stats
        node_id = self.node_id
        on_message = self._on_message
        buf = bytearray()
        while True:
            chunk = await reader.read(READ_CHUNK)
            if not chunk:
                if buf:
                    raise CodecError(f"stream from node {sender} ended inside a frame")
                return
            stats.bytes_received += len(chunk)
            buf += chunk
            offset = 0
            with memoryview(buf) as view:
                while len(buf) - offset >= _LENGTH.size:
                    (length,) = _LENGTH.unpack_from(buf, offset)
                    if length > MAX_FRAME_BYTES:
                        raise CodecError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
                    start = offset + _LENGTH.size
                    if len(buf) - start < length:
                        break
                    offset = start + length
                    msg = decode_message(view[start:offset])
                    if msg.dst != node_id:
                        stats.dropped.misrouted += 1
                        continue
                    stats.received += 1
                    try:
                        on_message(msg)
                    except Exception:
                        log.exception("handling a %s from node %d failed", msg.type, msg.src)
            del buf[:offset]


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _remote(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    return f"{address[0]}:{address[1]}" if address else "an unknown address"
