"""JetStream helpers: publish dedupe on the envelope id, streams created and repaired."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from yardarm_kit import messaging
from yardarm_kit.messaging import Envelope

from tests.conftest import free_port, wait_for_port
from yardarm.local import infra


async def test_publish_dedupes_on_envelope_id(nats_url: str) -> None:
    nc, js = await messaging.connect(nats_url, "kit-test")
    await messaging.ensure_streams(js)
    subject = f"evt.kittest.{uuid.uuid4().hex[:8]}"
    envelope = Envelope(type="t", id=uuid.uuid4().hex, saga_id="s", data={"n": 1})
    await messaging.publish(js, subject, envelope)
    await messaging.publish(js, subject, envelope)
    sub = await js.pull_subscribe(subject, stream="EVENTS")
    msgs = await sub.fetch(10, timeout=2)
    assert len(msgs) == 1
    assert msgs[0].headers is not None and msgs[0].headers["yardarm-schema"] == "1"
    await nc.close()


class _Server:
    """A private nats-server that a test may stop and restart on the same port and store."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = infra.nats_command(port=self.port, monitor_port=free_port(), store_dir=self.store)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[_Server]:
    server = _Server(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.1)


async def test_ensure_streams_repairs_drifted_config_and_tolerates_racing(
    private_nats: _Server,
) -> None:
    nc, js = await messaging.connect(private_nats.url, "kit-test")
    other, other_js = await messaging.connect(private_nats.url, "kit-test-2")
    try:
        await js.add_stream(name="EVENTS", subjects=["evt.only"], duplicate_window=5)
        await asyncio.gather(messaging.ensure_streams(js), messaging.ensure_streams(other_js))
        for name, subjects in messaging.STREAMS.items():
            info = await js.stream_info(name)
            assert info.config.subjects == subjects
            assert info.config.duplicate_window == messaging.DUPLICATE_WINDOW_S
    finally:
        await nc.close()
        await other.close()
