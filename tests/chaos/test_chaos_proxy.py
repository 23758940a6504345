"""The link proxy against real TCP echo servers on loopback: relay, cut, heal, slow down."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.chaos.conftest import (
    FAILS_WITHIN_S,
    EchoServer,
    echo_on,
    fails_fast,
    round_trip,
)
from tests.conftest import free_port
from yardarm.chaos.proxy import LinkProxy

DELAY_MS = 200
# asyncio may wake a timer up to its clock resolution early; allow a millisecond.
TIMER_SLACK_S = 0.001


@pytest.fixture
async def echo(echo_factory: Callable[[], Awaitable[EchoServer]]) -> EchoServer:
    return await echo_factory()


@pytest.fixture
async def link(echo: EchoServer) -> AsyncIterator[LinkProxy]:
    proxy = LinkProxy("a->b", "127.0.0.1", 0, "127.0.0.1", echo.port, rng=random.Random(7))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll every 10 ms, at most `timeout` seconds' worth."""
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still false after {timeout}s")


async def test_relays_both_ways_and_counts(link: LinkProxy, echo: EchoServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", link.listen_port)
    await echo_on(reader, writer, b"hello")
    await echo_on(reader, writer, b"world!")
    await eventually(lambda: link.stats.bytes_backward == 11)
    state = link.state()
    assert (state["connections"], state["active"]) == (1, 1)
    assert (state["bytes_forward"], state["bytes_backward"]) == (11, 11)
    assert state["target"] == f"127.0.0.1:{echo.port}"
    writer.close()
    await eventually(lambda: link.state()["active"] == 0)
    assert echo.endings == ["eof"]  # a clean close stays clean through the proxy


async def test_partition_fails_open_connections_at_both_ends_quickly(
    link: LinkProxy, echo: EchoServer
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", link.listen_port)
    await echo_on(reader, writer)
    assert link.partition() == 1
    async with asyncio.timeout(FAILS_WITHIN_S):
        with pytest.raises(ConnectionResetError):
            await reader.read(10)
        await eventually(lambda: echo.endings == ["reset"], FAILS_WITHIN_S)
    writer.close()
    assert link.state()["connections_cut"] == 1
    assert link.state()["partitioned"]


async def test_partition_refuses_new_connections_quickly(link: LinkProxy, echo: EchoServer) -> None:
    link.partition()
    for _ in range(3):
        assert isinstance(await fails_fast(link.listen_port), ConnectionResetError)
    assert link.stats.refused == 3
    assert link.stats.connections == 0
    assert echo.endings == []  # nothing reached the target


async def test_heal_lets_new_connections_through(link: LinkProxy) -> None:
    link.partition()
    await fails_fast(link.listen_port)
    link.heal()
    await round_trip(link.listen_port)
    assert not link.state()["partitioned"]
    assert link.stats.connections == 1


async def test_delay_holds_each_direction_live_and_zero_clears_it(link: LinkProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", link.listen_port)
    await echo_on(reader, writer)
    link.delay(DELAY_MS)  # on a connection that is already open
    slowed = [await echo_on(reader, writer) for _ in range(2)]
    # Held once on the way out and once on the way back.
    assert min(slowed) >= 2 * DELAY_MS / 1000 - TIMER_SLACK_S, slowed
    assert link.stats.chunks_delayed == 4
    link.delay(0, 0)
    cleared = [await echo_on(reader, writer) for _ in range(3)]
    assert min(cleared) < DELAY_MS / 1000, cleared
    assert link.stats.chunks_delayed == 4
    writer.close()


async def test_jittered_delay_keeps_each_direction_in_order(link: LinkProxy) -> None:
    link.delay(40, 35)  # chunk holds range over 5..75 ms: later chunks often come due first
    reader, writer = await asyncio.open_connection("127.0.0.1", link.listen_port)
    sent = [f"{i:04d};".encode() for i in range(120)]
    for message in sent:
        writer.write(message)
        await writer.drain()
        await asyncio.sleep(0.002)  # separate chunks, each with its own hold
    received = await asyncio.wait_for(reader.readexactly(len(b"".join(sent))), 30)
    assert received == b"".join(sent)
    assert link.stats.chunks_delayed >= 20  # they really were separate chunks
    writer.close()


async def test_end_of_stream_waits_behind_held_data(link: LinkProxy) -> None:
    link.delay(100)
    reader, writer = await asyncio.open_connection("127.0.0.1", link.listen_port)
    payload = b"x" * 10_000
    writer.write(payload)
    writer.write_eof()
    # The echo server answers until it reads the end of stream, then closes: had the
    # end overtaken the held bytes, less would come back.
    echoed = await asyncio.wait_for(reader.read(), 30)
    assert echoed == payload
    writer.close()


async def test_unreachable_target_fails_the_caller_quickly() -> None:
    proxy = LinkProxy("a->gone", "127.0.0.1", 0, "127.0.0.1", free_port())
    await proxy.start()
    try:
        await fails_fast(proxy.listen_port)
        assert proxy.stats.target_failures == 1
    finally:
        await proxy.stop()


async def test_stop_resets_open_connections(link: LinkProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", link.listen_port)
    await echo_on(reader, writer)
    await link.stop()
    async with asyncio.timeout(FAILS_WITHIN_S):
        with pytest.raises(ConnectionResetError):
            await reader.read(10)
    assert not link.listening
    writer.close()


def test_delay_refuses_negative_or_excess_jitter() -> None:
    proxy = LinkProxy("a->b", "127.0.0.1", 0, "127.0.0.1", 1)
    with pytest.raises(ValueError, match="negative"):
        proxy.delay(-1)
    with pytest.raises(ValueError, match="jitter"):
        proxy.delay(10, 20)
    assert (proxy.delay_ms, proxy.jitter_ms) == (0, 0)
