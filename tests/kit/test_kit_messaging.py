"""JetStream helpers: publish dedupe on the envelope id, streams created and repaired."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from yardarm_kit import messaging
from yardarm_kit.messaging import Envelope

from tests.kit.consumer_rig import PrivateNats


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


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateNats]:
    server = PrivateNats(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_ensure_streams_repairs_drifted_config_and_tolerates_racing(
    private_nats: PrivateNats,
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
