"""JetStream helpers: one trace across the hop, redelivery on failure, bad bodies terminated."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider
from yardarm_kit import messaging
from yardarm_kit.messaging import Envelope, PullConsumer

from tests.conftest import free_port, wait_for_port
from yardarm.local import infra


async def test_consumer_span_joins_the_producers_trace_and_failures_redeliver(
    nats_url: str,
) -> None:
    nc, js = await messaging.connect(nats_url, "kit-test")
    await messaging.ensure_streams(js)
    await messaging.ensure_streams(js)  # idempotent
    tracer = TracerProvider().get_tracer("test")
    subject = f"cmd.kittest.{uuid.uuid4().hex[:8]}"
    seen: list[tuple[str, int, str | None]] = []
    done = asyncio.Event()

    async def handler(envelope: Envelope, msg: Msg) -> None:
        deliveries = msg.metadata.num_delivered
        seen.append((envelope.id, deliveries, messaging.current_traceparent()))
        if envelope.id == "flaky" and deliveries == 1:
            raise RuntimeError("first try fails")
        if envelope.id == "flaky":
            done.set()

    consumer = PullConsumer(
        js, tracer=tracer, stream="COMMANDS", durable=f"d{uuid.uuid4().hex[:8]}",
        filter_subject=subject, handler=handler, nak_delay_s=0.1,
    )  # fmt: skip
    await consumer.start()
    try:
        with tracer.start_as_current_span("producer") as span:
            trace_id = f"{span.get_span_context().trace_id:032x}"
            await messaging.publish(
                js, subject, Envelope(type="t", id="flaky", saga_id="s", data={})
            )
        await js.publish(subject, b"not an envelope", headers={"Nats-Msg-Id": uuid.uuid4().hex})
        await asyncio.wait_for(done.wait(), timeout=20)
    finally:
        await consumer.stop()
        await nc.close()
    flaky = [s for s in seen if s[0] == "flaky"]
    assert [d for _, d, _ in flaky] == [1, 2]
    assert all(tp is not None and tp.split("-")[1] == trace_id for _, _, tp in flaky)
    assert len(seen) == 2  # the invalid body never reached the handler


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


async def test_invalid_body_is_terminated_not_redelivered(nats_url: str) -> None:
    nc, js = await messaging.connect(nats_url, "kit-test")
    await messaging.ensure_streams(js)
    subject = f"cmd.kittest.{uuid.uuid4().hex[:8]}"
    durable = f"d{uuid.uuid4().hex[:8]}"
    calls: list[str] = []

    async def handler(envelope: Envelope, msg: Msg) -> None:
        calls.append(envelope.id)

    consumer = PullConsumer(
        js, tracer=TracerProvider().get_tracer("test"), stream="COMMANDS", durable=durable,
        filter_subject=subject, handler=handler, nak_delay_s=0.1, ack_wait_s=1.0,
    )  # fmt: skip
    await consumer.start()
    try:
        await js.publish(subject, b'{"type": "t"}', headers={"Nats-Msg-Id": uuid.uuid4().hex})

        async def settled() -> bool:
            info = await js.consumer_info("COMMANDS", durable)
            return info.delivered.stream_seq > 0 and info.num_ack_pending == 0

        await _wait_until(settled)
        await asyncio.sleep(1.5)  # past ack_wait: a nak'd or unacked message would be back
        info = await js.consumer_info("COMMANDS", durable)
        assert info.num_redelivered == 0 and info.num_ack_pending == 0 and info.num_pending == 0
        assert calls == []
    finally:
        await consumer.stop()
        await nc.close()


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


async def test_consumer_keeps_consuming_across_a_server_restart(private_nats: _Server) -> None:
    nc, js = await messaging.connect(private_nats.url, "kit-test")
    await messaging.ensure_streams(js)
    got: list[str] = []

    async def handler(envelope: Envelope, msg: Msg) -> None:
        got.append(envelope.id)

    consumer = PullConsumer(
        js, tracer=TracerProvider().get_tracer("test"), stream="EVENTS", durable="restart",
        filter_subject="evt.restart.>", handler=handler,
    )  # fmt: skip
    await consumer.start()
    try:
        await messaging.publish(js, "evt.restart.a", Envelope(type="t", id="before", saga_id="s"))

        async def received_before() -> bool:
            return got == ["before"]

        await _wait_until(received_before)
        private_nats.stop()
        await asyncio.sleep(1.5)  # several fetches fail while the server is gone
        private_nats.start()

        async def published_after() -> bool:
            try:
                await messaging.publish(
                    js, "evt.restart.a", Envelope(type="t", id="after", saga_id="s")
                )
            except Exception:
                return False
            return True

        await _wait_until(published_after, timeout=30)

        async def received_after() -> bool:
            return "after" in got

        await _wait_until(received_after, timeout=30)
        assert got.count("before") == 1
    finally:
        await consumer.stop()
        await nc.close()
