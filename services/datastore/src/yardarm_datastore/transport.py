"""Raft messages between replicas over TCP.

Each peer gets one outbound stream and one writer task, so messages to a peer arrive in
the order they were sent; inbound streams are read by one task each and handed to the
node synchronously. Raft retries everything it needs (heartbeats, appends, votes), so the
transport never blocks or buffers without bound: a full queue, an unknown peer or a
broken stream drops the message and counts it.

Frames are `[u32 length][payload]` (big-endian). A connection opens with a handshake
before any message flows, so a sender learns at once that the peer behind the address
(or behind a relay in front of it) is really there, and why it was refused; after it the
stream carries encoded messages one way only:

    listener -> dialer   challenge: magic, protocol version, a fresh 32-byte nonce
    dialer -> listener   hello: magic, version, sender id, the dialer's own 32-byte nonce,
                         a 32-byte proof, cluster name
    listener -> dialer   verdict: 0x00 and a 32-byte proof, or 0x01 and the reason

With the group's peer secret, the dialer's proof is HMAC-SHA256(secret, "dial" ||
challenge nonce || hello without the proof) and the listener's is HMAC-SHA256(secret,
"accept" || challenge nonce || the dialer's hello): each side shows it holds the secret
without sending it, and since each proof covers a nonce the other side just chose, bytes
recorded from one handshake are worthless on another connection. The listener compares
in constant time (`hmac.compare_digest`) and refuses (counted as `unauthenticated`,
logged) before reading a single message. Without a secret both proofs are zeros and
not checked: anyone who reaches the port may speak Raft (the replica says so at start).

The secret authenticates who opens a stream, not each frame after it: it shuts out
anyone who can merely reach the port, but an attacker on the path could still take over
a plain stream once it is open. Mutual TLS closes that: with TLS contexts the listener
requires a client certificate signed by the group's CA, the dialer checks the
listener's certificate against the peer's host, and the handshake above runs inside TLS.

A sender's newest stream replaces its older one: bytes still on their way through an old
stream (a relay holding them, a half-open socket) are never handed over after newer
messages, and a peer that vanished without closing leaves no reader behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import random
import secrets
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable, Iterable
from typing import Literal

from yardarm_datastore.codec import CodecError, decode_message, encode_message
from yardarm_datastore.raft.types import Message

log = logging.getLogger("yardarm.datastore.transport")

MAGIC = b"YRFT"
PROTOCOL_VERSION = 2  # 2: challenge, authenticated hello, verdict with the listener's proof
NONCE_BYTES = 32
PROOF_BYTES = 32
MAX_FRAME_BYTES = 256 * 1024 * 1024  # a whole snapshot travels in one message
MAX_HELLO_BYTES = 1024
CONNECT_TIMEOUT = 2.0  # connect plus hello and verdict
HANDSHAKE_TIMEOUT = 5.0  # how long the listener waits for a hello
STALL_TIMEOUT = 10.0  # a peer that reads nothing for this long gets a fresh stream
BACKOFF_START = 0.05
BACKOFF_CAP = 1.0
READ_CHUNK = 256 * 1024

_LENGTH = struct.Struct(">I")
_CHALLENGE = struct.Struct(f">4sB{NONCE_BYTES}s")
_HELLO = struct.Struct(f">4sBI{NONCE_BYTES}s{PROOF_BYTES}s")
_PROOF_AT = _HELLO.size - PROOF_BYTES
_ACCEPTED = b"\x00"
_REFUSED = b"\x01"
_NO_PROOF = bytes(PROOF_BYTES)


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
    refused: int = 0  # inbound streams closed for a foreign cluster or protocol version
    unauthenticated: int = 0  # inbound streams whose sender did not prove the peer secret


class HandshakeRefused(ConnectionError):
    """The listener at a peer's address would not take our stream."""


class _StreamBroken(ConnectionError):
    """The peer closed, reset or stalled an established outbound stream."""


def frame(payload: bytes) -> bytes:
    """`payload` with its length prefix."""
    return _LENGTH.pack(len(payload)) + payload


def challenge(nonce: bytes) -> bytes:
    """The payload a listener opens every inbound stream with."""
    return _CHALLENGE.pack(MAGIC, PROTOCOL_VERSION, nonce)


def _mac(secret: bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"".join((label, *parts)), hashlib.sha256).digest()


def _unsigned(payload: bytes) -> bytes:
    """A hello without its proof: what the proof signs."""
    return payload[:_PROOF_AT] + payload[_HELLO.size :]


def hello(
    cluster: str, node_id: int, challenge_nonce: bytes, *, secret: bytes | None = None
) -> bytes:
    """The dialer's answer to a challenge: who it is, a nonce of its own (which the
    listener's proof must cover), and (with the group's secret) the proof that it holds
    the secret, bound to this challenge."""
    own = secrets.token_bytes(NONCE_BYTES)
    payload = _HELLO.pack(MAGIC, PROTOCOL_VERSION, node_id, own, _NO_PROOF) + cluster.encode()
    if secret is None:
        return payload
    proof = _mac(secret, b"dial", challenge_nonce, _unsigned(payload))
    return payload[:_PROOF_AT] + proof + payload[_HELLO.size :]


def acceptance(secret: bytes | None, challenge_nonce: bytes, hello_payload: bytes) -> bytes:
    """The listener's proof, bound to its challenge and to the dialer's hello (and so to
    the dialer's own nonce)."""
    if secret is None:
        return _NO_PROOF
    return _mac(secret, b"accept", challenge_nonce, hello_payload)


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
        owner = self.owner
        tls = owner.client_ssl
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                self.peer.host,
                self.peer.port,
                ssl=tls,
                server_hostname=self.peer.host if tls is not None else None,
                ssl_handshake_timeout=CONNECT_TIMEOUT if tls is not None else None,
            )
        try:
            _nodelay(writer)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                payload = await _read_frame(reader, MAX_HELLO_BYTES)
                if len(payload) != _CHALLENGE.size:
                    raise CodecError(f"not a raft listener ({len(payload)}-byte greeting)")
                magic, version, nonce = _CHALLENGE.unpack(payload)
                if magic != MAGIC:
                    raise CodecError(f"not a raft listener (magic {magic!r})")
                if version != PROTOCOL_VERSION:
                    raise HandshakeRefused(
                        f"the peer speaks protocol version {version}, this node {PROTOCOL_VERSION}"
                    )
                mine = hello(owner.cluster, owner.node_id, nonce, secret=owner.secret)
                writer.write(frame(mine))
                await writer.drain()
                verdict = await _read_frame(reader, MAX_HELLO_BYTES)
            if verdict[:1] != _ACCEPTED:
                reason = verdict[1:].decode(errors="replace") or "no reason given"
                raise HandshakeRefused(f"refused: {reason}")
            if owner.secret is not None and not hmac.compare_digest(
                verdict[1:], acceptance(owner.secret, nonce, mine)
            ):
                raise HandshakeRefused("the peer did not prove it holds the peer secret")
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
        secret: bytes | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        if len(cluster.encode()) > MAX_HELLO_BYTES - _HELLO.size:
            raise ValueError(f"cluster name {cluster!r} is too long")
        if secret is not None and not secret:
            raise ValueError("an empty peer secret proves nothing")
        self.node_id = node_id
        self.host = host
        self.port = port
        self.cluster = cluster
        self.max_queue = max_queue
        self.secret = secret
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
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
            self._on_connect,
            self.host,
            self.port,
            limit=READ_CHUNK,
            ssl=self.server_ssl,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self.server_ssl is not None else None,
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
        """Challenge the dialer and check its hello: the sender's id, or None if refused.
        The proof is checked before anything else the hello says is trusted, so a
        stranger learns no more than that it was refused."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        writer.write(frame(challenge(nonce)))
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            await writer.drain()
            payload = await _read_frame(reader, MAX_HELLO_BYTES)
        if len(payload) < 4 + 1 + 4 or payload[:4] != MAGIC:
            raise CodecError(f"not a raft stream (it opens with {payload[:4]!r})")
        version = payload[4]
        sender = int.from_bytes(payload[5:9], "big")
        if version != PROTOCOL_VERSION:
            reason = f"protocol version {version}, this node speaks {PROTOCOL_VERSION}"
            await self._refuse(writer, sender, reason, "refused")
            return None
        if len(payload) < _HELLO.size:
            raise CodecError(f"hello of {len(payload)} bytes is too short")
        proof = payload[_PROOF_AT : _HELLO.size]
        if self.secret is not None and not hmac.compare_digest(
            proof, _mac(self.secret, b"dial", nonce, _unsigned(payload))
        ):
            reason = "peer authentication failed (a wrong or missing peer secret)"
            await self._refuse(writer, sender, reason, "unauthenticated")
            return None
        try:
            cluster = payload[_HELLO.size :].decode()
        except UnicodeDecodeError as exc:
            raise CodecError("cluster name is not UTF-8") from exc
        if cluster != self.cluster:
            reason = f"cluster {cluster!r}, this node is in {self.cluster!r}"
            await self._refuse(writer, sender, reason, "refused")
            return None
        writer.write(frame(_ACCEPTED + acceptance(self.secret, nonce, payload)))
        await writer.drain()
        return sender

    async def _refuse(
        self,
        writer: asyncio.StreamWriter,
        sender: int,
        reason: str,
        counter: Literal["refused", "unauthenticated"],
    ) -> None:
        if counter == "unauthenticated":
            self.stats.unauthenticated += 1
        else:
            self.stats.refused += 1
        log.warning(
            "refused a raft stream claiming to be node %d (%s): %s", sender, _remote(writer),
            reason, extra={"event": "raft_stream_refused", "reason": counter},
        )  # fmt: skip
        writer.write(frame(_REFUSED + reason.encode()))
        with contextlib.suppress(OSError):
            await writer.drain()

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
