"""Replicas reach each other over real loopback TCP: in order, through cuts and late
starts, refusing strangers (a foreign cluster, a peer without the group's secret, a
replayed handshake, a certificate the CA did not sign), dropping (and counting) what
cannot be delivered, and leaving no task or socket behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import ssl
import struct
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from yardarm_datastore import transport as transport_module
from yardarm_datastore.codec import encode_message
from yardarm_datastore.raft.types import Entry, Message, MsgType
from yardarm_datastore.transport import (
    BACKOFF_CAP,
    CONNECT_TIMEOUT,
    MAGIC,
    PROTOCOL_VERSION,
    Peer,
    Transport,
    frame,
    hello,
)
from yardarm_kit import tls

from tests.datastore.certs import Leaf, TestCA

SCALE = float(os.environ.get("YARDARM_TEST_SCALE", "1.0"))
# A peer that comes back is reached within one capped backoff plus a connect; the margin
# is wide because the test box is small and shared.
RECONNECT_WAIT = 10 * (BACKOFF_CAP + CONNECT_TIMEOUT)

pytestmark = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)


def reserve_port() -> int:
    """A loopback port nobody listens on (yet)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.01)


def msg(src: int, dst: int, seq: int, *, payload: bytes = b"") -> Message:
    """An APPEND whose `index` numbers it, so receivers can check order."""
    entries = (Entry(1, seq, data=payload),) if payload else ()
    return Message(MsgType.APPEND, src, dst, 1, index=seq, entries=entries)


class Node:
    """A transport and what it has received."""

    def __init__(self, transport: Transport, inbox: list[Message]) -> None:
        self.transport = transport
        self.inbox = inbox

    @property
    def id(self) -> int:
        return self.transport.node_id

    @property
    def peer(self) -> Peer:
        return Peer(self.id, "127.0.0.1", self.transport.port)

    def seqs_from(self, src: int) -> list[int]:
        return [m.index for m in self.inbox if m.src == src]


MakeNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node(caplog: pytest.LogCaptureFixture) -> AsyncIterator[MakeNode]:
    """Started transports on loopback; all closed (and checked for leftovers) afterwards."""
    nodes: list[Node] = []

    async def make(
        node_id: int,
        peers: list[Peer] | None = None,
        *,
        port: int = 0,
        cluster: str = "yardarm",
        max_queue: int = 8192,
        on_message: Callable[[Message], None] | None = None,
        secret: bytes | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> Node:
        inbox: list[Message] = []
        transport = Transport(
            node_id,
            host="127.0.0.1",
            port=port,
            peers=peers or [],
            on_message=on_message or inbox.append,
            cluster=cluster,
            max_queue=max_queue,
            secret=secret,
            server_ssl=server_ssl,
            client_ssl=client_ssl,
        )
        node = Node(transport, inbox)
        nodes.append(node)
        await transport.start()
        return node

    yield make
    for node in nodes:
        await node.transport.close()
    assert not _transport_tasks(), "close() left tasks running"
    gc.collect()
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    loop_errors = [r.getMessage() for r in records if r.name == "asyncio"]
    assert loop_errors == [], "the event loop reported errors"


def _transport_tasks() -> list[asyncio.Task[object]]:
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and task.get_coro().__qualname__.startswith(("Transport.", "_Link."))  # type: ignore[union-attr]
    ]


class Relay:
    """A TCP relay in front of a listener that the test can cut, like a faulty network."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.accepted += 1
        self._writers.add(down_w)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            down_w.transport.abort()
            return
        self._writers.add(up_w)
        pumps = [
            asyncio.create_task(self._pump(down_r, up_w)),
            asyncio.create_task(self._pump(up_r, down_w)),
        ]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for writer in (down_w, up_w):
            writer.transport.abort()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._writers.discard(writer)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                await self.flowing.wait()  # paused: bytes wait in the kernel's buffers
                chunk = await src.read(65536)
                if not chunk:
                    return
                dst.write(chunk)
                await dst.drain()

    def cut(self) -> None:
        """Reset every connection through the relay; new ones are still accepted."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        for _ in range(5):  # let aborted transports finish closing their sockets
            await asyncio.sleep(0)


@pytest.fixture
async def relays() -> AsyncIterator[list[Relay]]:
    made: list[Relay] = []
    yield made
    for relay in made:
        await relay.close()


async def connect_all(nodes: list[Node]) -> None:
    for node in nodes:
        node.transport.set_peers([other.peer for other in nodes])


async def test_three_replicas_exchange_messages_in_order(make_node: MakeNode) -> None:
    nodes = [await make_node(i) for i in (1, 2, 3)]
    await connect_all(nodes)
    count = int(300 * SCALE)
    for seq in range(count):
        for node in nodes:
            for other in nodes:
                if other is not node:
                    node.transport.send(msg(node.id, other.id, seq, payload=b"v" * (seq % 50)))
        if seq % 16 == 0:
            await asyncio.sleep(0)  # let writers run mid-burst, as a busy leader would
    await wait_until(
        lambda: all(len(node.inbox) == 2 * count for node in nodes), "every message delivered"
    )
    for node in nodes:
        for other in nodes:
            if other is not node:
                assert node.seqs_from(other.id) == list(range(count))
        assert all(m.dst == node.id for m in node.inbox)
        stats = node.transport.stats
        assert stats.sent == stats.received == 2 * count
        assert stats.dropped.total == 0
        assert stats.connects == 2


async def test_a_burst_goes_out_in_few_writes(make_node: MakeNode) -> None:
    a, b = await make_node(1), await make_node(2)
    a.transport.set_peers([b.peer])
    a.transport.send(msg(1, 2, 0))
    await wait_until(lambda: len(b.inbox) == 1, "the first message")
    writes = a.transport.stats.writes
    for seq in range(1, 1001):
        a.transport.send(msg(1, 2, seq))
    await wait_until(lambda: len(b.inbox) == 1001, "the burst")
    assert b.seqs_from(1) == list(range(1001))
    assert a.transport.stats.writes - writes <= 2


async def test_a_late_peer_gets_messages_sent_once_it_is_up(make_node: MakeNode) -> None:
    port = reserve_port()
    a = await make_node(1, [Peer(2, "127.0.0.1", port)])
    a.transport.send(msg(1, 2, 0))
    await wait_until(lambda: a.transport.stats.connect_failures >= 2, "failed connects")
    assert a.transport.stats.connects == 0
    b = await make_node(2, port=port)
    await wait_until(lambda: a.transport.stats.connects == 1, "a reconnect", RECONNECT_WAIT)
    for seq in range(100, 110):
        a.transport.send(msg(1, 2, seq))
    await wait_until(lambda: 109 in b.seqs_from(1), "messages to the late peer")
    # What was queued while it was down comes first (the queue had room), then the rest.
    assert b.seqs_from(1) == [0, *range(100, 110)]


async def test_cut_streams_reconnect_and_never_reorder(
    make_node: MakeNode, relays: list[Relay]
) -> None:
    b = await make_node(2)
    relay = Relay(b.transport.port)
    relays.append(relay)
    await relay.start()
    a = await make_node(1, [Peer(2, "127.0.0.1", relay.port)])
    a.transport.send(msg(1, 2, 0))
    await wait_until(lambda: len(b.inbox) == 1, "the first message")
    seq = 1
    cuts = max(3, int(5 * SCALE))
    for _ in range(cuts):
        # A steady stream, cut while messages are in flight.
        for _ in range(200):
            a.transport.send(msg(1, 2, seq, payload=b"x" * 100))
            seq += 1
        await asyncio.sleep(0)
        relay.cut()
        # Keep sending (Raft would) until something sent after the cut gets through.
        after_cut = seq
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONNECT_WAIT
        while not b.inbox or b.inbox[-1].index < after_cut:
            assert loop.time() < deadline, "no message got through after the cut"
            a.transport.send(msg(1, 2, seq))
            seq += 1
            await asyncio.sleep(0.02)
    received = b.seqs_from(1)
    assert received == sorted(set(received)), "reordered or duplicated across reconnects"
    stats = a.transport.stats
    assert stats.connects >= cuts + 1
    assert relay.accepted >= cuts + 1
    assert stats.dropped.queue_full == 0


async def test_a_peer_that_closes_its_end_is_reconnected_without_losing_the_next_message(
    make_node: MakeNode, relays: list[Relay]
) -> None:
    b = await make_node(2)
    relay = Relay(b.transport.port)
    relays.append(relay)
    await relay.start()
    a = await make_node(1, [Peer(2, "127.0.0.1", relay.port)])
    a.transport.send(msg(1, 2, 0))
    await wait_until(lambda: len(b.inbox) == 1, "the first message")
    relay.cut()
    # The idle writer notices the closed stream by itself and opens a new one...
    await wait_until(lambda: a.transport.stats.connects == 2, "a reconnect", RECONNECT_WAIT)
    # ...so the next message is not spent discovering that the old one is dead.
    a.transport.send(msg(1, 2, 1))
    await wait_until(lambda: len(b.inbox) == 2, "the message after the cut")
    assert a.transport.stats.dropped.total == 0


async def test_a_stalled_stream_is_replaced(
    make_node: MakeNode, relays: list[Relay], monkeypatch: pytest.MonkeyPatch
) -> None:
    stall = 0.5
    monkeypatch.setattr(transport_module, "STALL_TIMEOUT", stall)
    b = await make_node(2)
    relay = Relay(b.transport.port)
    relays.append(relay)
    await relay.start()
    a = await make_node(1, [Peer(2, "127.0.0.1", relay.port)])
    a.transport.send(msg(1, 2, 0))
    await wait_until(lambda: len(b.inbox) == 1, "the first message")

    relay.flowing.clear()  # the network stops moving bytes but keeps the connection
    big = b"s" * 65536
    for seq in range(1, 301):  # ~20 MB: more than the socket buffers on both sides hold
        a.transport.send(msg(1, 2, seq, payload=big))
    await wait_until(
        lambda: a.transport.stats.dropped.disconnected > 0, "the stall to be noticed", 20 * stall
    )
    relay.flowing.set()
    await wait_until(lambda: a.transport.stats.connects >= 2, "a fresh stream", RECONNECT_WAIT)
    a.transport.send(msg(1, 2, 1000))
    await wait_until(lambda: 1000 in b.seqs_from(1), "a message on the fresh stream")
    # The relay still held bytes of the stalled stream when it resumed; none may arrive
    # after the newer message.
    received = b.seqs_from(1)
    assert received == sorted(set(received))


async def test_a_wrong_cluster_is_refused(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    b = await make_node(2)
    a = await make_node(1, [b.peer], cluster="staging")
    caplog.set_level(logging.WARNING, logger="yardarm.datastore.transport")
    a.transport.send(msg(1, 2, 0))
    await wait_until(
        lambda: b.transport.stats.refused >= 2 and a.transport.stats.connect_failures >= 2,
        "refusals, seen by both ends",
    )
    assert a.transport.stats.connects == 0
    assert b.inbox == []
    assert "cluster 'staging', this node is in 'yardarm'" in caplog.text


async def test_a_full_queue_drops_and_counts_and_delivers_the_rest(make_node: MakeNode) -> None:
    port = reserve_port()
    a = await make_node(1, [Peer(2, "127.0.0.1", port)], max_queue=5)
    for seq in range(12):
        a.transport.send(msg(1, 2, seq))
    assert a.transport.stats.dropped.queue_full == 7
    b = await make_node(2, port=port)
    await wait_until(lambda: len(b.inbox) == 5, "the queued messages", RECONNECT_WAIT)
    assert b.seqs_from(1) == [0, 1, 2, 3, 4]


async def test_messages_to_unknown_peers_are_dropped_and_counted(make_node: MakeNode) -> None:
    a = await make_node(1)
    a.transport.send(msg(1, 99, 0))
    a.transport.send(msg(1, 1, 0))  # itself: never a peer
    assert a.transport.stats.dropped.unknown_peer == 2


async def test_membership_changes_open_and_close_streams(make_node: MakeNode) -> None:
    b, c = await make_node(2), await make_node(3)
    a = await make_node(1, [b.peer])
    a.transport.send(msg(1, 2, 0))
    await wait_until(lambda: len(b.inbox) == 1, "a message to the first member")

    a.transport.set_peers([a.peer, c.peer])
    a.transport.send(msg(1, 2, 1))
    a.transport.send(msg(1, 3, 2))
    await wait_until(lambda: len(c.inbox) == 1, "a message to the new member")
    assert a.transport.stats.dropped.unknown_peer == 1
    await wait_until(
        lambda: not any("1->2" in t.get_name() for t in _transport_tasks()),
        "the removed member's writer to stop",
    )

    # A member that moved to another address is reached there.
    await b.transport.close()
    b2 = await make_node(2)
    a.transport.set_peers([b2.peer, c.peer])
    a.transport.send(msg(1, 2, 3))
    await wait_until(lambda: len(b2.inbox) == 1, "the moved member")
    assert b2.inbox[0].index == 3


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(length)


async def _challenge(reader: asyncio.StreamReader) -> bytes:
    """The listener's greeting; its nonce."""
    greeting = await _read_frame(reader)
    assert greeting[:5] == MAGIC + bytes([PROTOCOL_VERSION]) and len(greeting) == 37
    return greeting[5:]


async def _raw_stream(
    node: Node, secret: bytes | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made sender (node 9) through the handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.transport.port)
    nonce = await _challenge(reader)
    writer.write(frame(hello("yardarm", 9, nonce, secret=secret)))
    verdict = await _read_frame(reader)
    assert verdict[:1] == b"\x00", verdict
    return reader, writer


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(10):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True


async def test_messages_for_another_node_are_dropped_and_counted(make_node: MakeNode) -> None:
    b = await make_node(2)
    _, writer = await _raw_stream(b)
    try:
        writer.write(frame(encode_message(msg(9, 5, 0))) + frame(encode_message(msg(9, 2, 1))))
        await wait_until(lambda: len(b.inbox) == 1, "the message for this node")
        assert b.inbox[0].index == 1
        assert b.transport.stats.dropped.misrouted == 1
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_senders_newer_stream_replaces_its_older_one(make_node: MakeNode) -> None:
    """A stream the sender has given up on (cut behind a relay, half-open after a crash)
    must not deliver stale messages after newer ones, nor keep a reader alive."""
    b = await make_node(2)
    old_reader, old_writer = await _raw_stream(b)
    _, new_writer = await _raw_stream(b)
    try:
        assert await _closed_by_peer(old_reader)
        new_writer.write(frame(encode_message(msg(9, 2, 7))))
        await wait_until(lambda: len(b.inbox) == 1, "the message on the newer stream")
        assert len(_transport_tasks()) == 1
    finally:
        for writer in (old_writer, new_writer):
            writer.transport.abort()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.mark.parametrize(
    "garbage",
    [
        frame(b"not a raft message"),
        frame(encode_message(msg(9, 2, 0))[:-1]),
        b"\xff\xff\xff\xff",  # a length no frame may have
    ],
    ids=["garbage", "truncated", "oversized"],
)
async def test_a_malformed_frame_closes_only_its_stream(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    b = await make_node(2)
    a = await make_node(1, [b.peer])
    reader, writer = await _raw_stream(b)
    try:
        writer.write(frame(encode_message(msg(9, 2, 0))) + garbage)
        assert await _closed_by_peer(reader)
    finally:
        writer.transport.abort()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert b.transport.stats.malformed == 1
    assert "closed a raft stream" in caplog.text
    assert [m.src for m in b.inbox] == [9]
    a.transport.send(msg(1, 2, 1))
    await wait_until(lambda: len(b.inbox) == 2, "other streams to keep working")


async def test_a_stream_that_is_not_raft_is_closed(make_node: MakeNode) -> None:
    b = await make_node(2)
    reader, writer = await asyncio.open_connection("127.0.0.1", b.transport.port)
    try:
        await _challenge(reader)
        writer.write(b"\x00\x00\x00\x12GET / HTTP/1.1\r\n\r\n")
        assert await _closed_by_peer(reader)
    finally:
        writer.transport.abort()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert b.transport.stats.malformed == 1


async def test_a_failing_handler_does_not_stop_the_stream(make_node: MakeNode) -> None:
    seen: list[int] = []

    def handler(m: Message) -> None:
        seen.append(m.index)
        if m.index == 0:
            raise RuntimeError("bug in the node")

    b = await make_node(2, on_message=handler)
    a = await make_node(1, [b.peer])
    a.transport.send(msg(1, 2, 0))
    a.transport.send(msg(1, 2, 1))
    await wait_until(lambda: seen == [0, 1], "both messages handled")


async def test_close_leaves_no_task_or_socket_behind(
    make_node: MakeNode, relays: list[Relay]
) -> None:
    nodes = [await make_node(i) for i in (1, 2, 3)]
    await connect_all(nodes)
    relay = Relay(nodes[0].transport.port)
    relays.append(relay)
    await relay.start()
    # Also: a peer behind a relay, and one that is down, so a writer sits in its backoff.
    down = Peer(5, "127.0.0.1", reserve_port())
    d = await make_node(4, [Peer(1, "127.0.0.1", relay.port), down, *(n.peer for n in nodes)])
    for node in nodes:
        node.transport.send(msg(node.id, 4, 0))  # unknown to them: dropped
        for other in nodes:
            if other is not node:
                node.transport.send(msg(node.id, other.id, 0))
    for target in (1, 2, 3, 5):
        d.transport.send(msg(4, target, 0))
    await wait_until(lambda: all(len(n.inbox) == 3 for n in nodes), "traffic on every stream")
    await wait_until(lambda: d.transport.stats.connect_failures >= 1, "a writer in its backoff")
    ports = [n.transport.port for n in (*nodes, d)]
    # And an inbound stream whose sender is still connected when the receiver closes.
    raw_reader, raw_writer = await _raw_stream(nodes[1])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for node in (*nodes, d):
            await node.transport.close()
            await node.transport.close()  # twice is harmless
        assert _transport_tasks() == []
        assert await _closed_by_peer(raw_reader)
        raw_writer.transport.abort()
        await raw_writer.wait_closed()
        for node in (*nodes, d):
            node.transport.send(msg(node.id, 1, 0))  # after close: dropped, not raised
        del node
        nodes.clear()
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    for port in ports:  # every listener is gone
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


# -- peer authentication -----------------------------------------------------------------

SECRET = b"the group's shared peer secret"


async def test_peers_with_the_group_secret_connect_and_deliver(make_node: MakeNode) -> None:
    b = await make_node(2, secret=SECRET)
    a = await make_node(1, [b.peer], secret=SECRET)
    for seq in range(50):
        a.transport.send(msg(1, 2, seq))
    await wait_until(lambda: len(b.inbox) == 50, "every message")
    assert b.seqs_from(1) == list(range(50))
    assert a.transport.stats.connects == 1 and b.transport.stats.unauthenticated == 0


@pytest.mark.parametrize("dialer_secret", [b"another secret", None], ids=["wrong", "none"])
async def test_a_peer_without_the_group_secret_is_refused_and_delivers_nothing(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, dialer_secret: bytes | None
) -> None:
    caplog.set_level(logging.WARNING, logger="yardarm.datastore.transport")
    b = await make_node(2, secret=SECRET)
    a = await make_node(1, [b.peer], secret=dialer_secret)
    a.transport.send(msg(1, 2, 0))
    await wait_until(
        lambda: b.transport.stats.unauthenticated >= 2 and a.transport.stats.connect_failures >= 2,
        "refusals, seen by both ends",
    )
    assert a.transport.stats.connects == 0
    assert b.inbox == [] and b.transport.stats.received == 0
    assert "peer authentication failed" in caplog.text
    assert b.transport.stats.refused == 0  # counted as what it is


async def test_a_replayed_handshake_is_refused_and_delivers_nothing(make_node: MakeNode) -> None:
    """Bytes recorded from a good handshake are worthless on a new connection: the
    proof covers the listener's fresh nonce."""
    b = await make_node(2, secret=SECRET)
    reader, writer = await asyncio.open_connection("127.0.0.1", b.transport.port)
    nonce = await _challenge(reader)
    recorded = frame(hello("yardarm", 9, nonce, secret=SECRET))
    writer.write(recorded)
    assert (await _read_frame(reader))[:1] == b"\x00"
    writer.write(frame(encode_message(msg(9, 2, 1))))
    await wait_until(lambda: len(b.inbox) == 1, "the message on the genuine stream")
    writer.close()
    await writer.wait_closed()

    reader, writer = await asyncio.open_connection("127.0.0.1", b.transport.port)
    try:
        assert await _challenge(reader) != nonce
        writer.write(recorded + frame(encode_message(msg(9, 2, 2))))
        verdict = await _read_frame(reader)
        assert verdict[:1] == b"\x01" and b"peer authentication failed" in verdict
        assert await _closed_by_peer(reader)
    finally:
        writer.transport.abort()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert [m.index for m in b.inbox] == [1]
    assert b.transport.stats.unauthenticated == 1


async def test_a_listener_that_cannot_prove_the_secret_gets_no_messages(
    make_node: MakeNode,
) -> None:
    """The dialer checks the listener's proof too: something listening at a peer's
    address without the secret is not sent a single message."""
    b = await make_node(2)  # no secret: accepts anyone, proves nothing
    a = await make_node(1, [b.peer], secret=SECRET)
    a.transport.send(msg(1, 2, 0))
    await wait_until(lambda: a.transport.stats.connect_failures >= 2, "refusals by the dialer")
    assert a.transport.stats.connects == 0 and b.inbox == []


async def test_without_a_secret_peers_connect_as_before(make_node: MakeNode) -> None:
    b = await make_node(2)
    a = await make_node(1, [b.peer])
    a.transport.send(msg(1, 2, 0))
    await wait_until(lambda: len(b.inbox) == 1, "the message")


async def test_a_previous_protocol_hello_is_refused(make_node: MakeNode) -> None:
    b = await make_node(2, secret=SECRET)
    reader, writer = await asyncio.open_connection("127.0.0.1", b.transport.port)
    try:
        await _challenge(reader)
        writer.write(frame(struct.pack(">4sBI", MAGIC, 1, 9) + b"yardarm"))
        verdict = await _read_frame(reader)
        assert verdict[:1] == b"\x01" and b"protocol version 1" in verdict
    finally:
        writer.transport.abort()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert b.transport.stats.refused == 1 and b.inbox == []


# -- mutual TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, TestCA]:
    """The group's CA, and another one nobody in the group trusts."""
    return TestCA(tmp_path_factory.mktemp("ca")), TestCA(tmp_path_factory.mktemp("other-ca"))


def _server(leaf: Leaf) -> ssl.SSLContext:
    return tls.server_context(leaf.cert, leaf.key, ca=leaf.ca, require_client_cert=True)


def _client(ca: Path, leaf: Leaf | None) -> ssl.SSLContext:
    if leaf is None:
        return tls.client_context(ca)
    return tls.client_context(ca, cert=leaf.cert, key=leaf.key)


async def test_mutual_tls_connects_and_delivers(
    make_node: MakeNode, pki: tuple[TestCA, TestCA]
) -> None:
    ca, _ = pki
    one, two = ca.leaf("replica-1"), ca.leaf("replica-2")
    b = await make_node(2, server_ssl=_server(two), client_ssl=_client(ca.ca_file, two),
                        secret=SECRET)  # fmt: skip
    a = await make_node(1, [b.peer], server_ssl=_server(one),
                        client_ssl=_client(ca.ca_file, one), secret=SECRET)  # fmt: skip
    for seq in range(20):
        a.transport.send(msg(1, 2, seq, payload=b"p" * 1000))
    await wait_until(lambda: len(b.inbox) == 20, "every message over TLS")
    assert b.seqs_from(1) == list(range(20))


@pytest.mark.parametrize("dialer", ["no client certificate", "another CA's certificate"])
async def test_a_dialer_the_ca_did_not_certify_is_refused(
    make_node: MakeNode, pki: tuple[TestCA, TestCA], dialer: str
) -> None:
    ca, other = pki
    b = await make_node(2, server_ssl=_server(ca.leaf("replica-2")))
    leaf = None if dialer == "no client certificate" else other.leaf("intruder")
    a = await make_node(1, [b.peer], client_ssl=_client(ca.ca_file, leaf))
    a.transport.send(msg(1, 2, 0))
    await wait_until(lambda: a.transport.stats.connect_failures >= 2, "refused handshakes")
    assert a.transport.stats.connects == 0 and b.inbox == []


async def test_a_listener_the_ca_did_not_certify_is_not_trusted(
    make_node: MakeNode, pki: tuple[TestCA, TestCA]
) -> None:
    ca, other = pki
    impostor = other.leaf("impostor")
    b = await make_node(
        2, server_ssl=tls.server_context(impostor.cert, impostor.key)
    )  # no client certificate asked for: the dialer alone must notice
    own = ca.leaf("replica-1")
    a = await make_node(1, [b.peer], client_ssl=_client(ca.ca_file, own))
    a.transport.send(msg(1, 2, 0))
    await wait_until(lambda: a.transport.stats.connect_failures >= 2, "refused handshakes")
    assert a.transport.stats.connects == 0 and b.inbox == []
