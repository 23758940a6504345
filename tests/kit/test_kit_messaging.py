"""JetStream helpers: one trace across the hop, redelivery on failure, bad bodies terminated."""

from __future__ import annotations

import asyncio
import uuid

from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider
from yardarm_kit import messaging
from yardarm_kit.messaging import Envelope, PullConsumer


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
