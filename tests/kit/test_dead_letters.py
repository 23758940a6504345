"""Dead letters: the header contract, deduplication, and dead-lettering a message of a
stream by its sequence (the advisory path). Reading one back and replaying it is the
CLI's (tests/cli/test_dlq.py)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from yardarm_kit.dead_letters import (
    MaxDeliveriesWatcher,
    dead_letter_headers,
    publish_dead_letter,
)
from yardarm_kit.messaging import connect, ensure_streams

ORIGINAL = {
    "Nats-Msg-Id": "saga-1:payments.charge",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "yardarm-schema": "2",
}


def test_headers_keep_the_original_ones_and_say_where_from_and_why() -> None:
    reason = "RuntimeError: card service said\nno " + "x" * 2000
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    headers = dead_letter_headers(
        ORIGINAL, reason=reason, stream="COMMANDS", subject="cmd.payments.charge",
        consumer="payments", stream_seq=42, deliveries=5, at=at,
    )  # fmt: skip
    assert headers["traceparent"] == ORIGINAL["traceparent"]
    assert headers["yardarm-schema"] == "2"
    assert headers["Nats-Msg-Id"] == "dlq:COMMANDS:42"
    assert headers["yardarm-dlq-msg-id"] == "saga-1:payments.charge"
    assert headers["yardarm-dlq-stream"] == "COMMANDS"
    assert headers["yardarm-dlq-subject"] == "cmd.payments.charge"
    assert headers["yardarm-dlq-consumer"] == "payments"
    assert headers["yardarm-dlq-stream-seq"] == "42"
    assert headers["yardarm-dlq-deliveries"] == "5"
    assert headers["yardarm-dlq-at"] == "2026-01-02T03:04:05.678Z"
    assert len(headers["yardarm-dlq-reason"]) == 1000
    assert headers["yardarm-dlq-reason"].startswith("RuntimeError: card service said no xx")
    assert "\n" not in headers["yardarm-dlq-reason"]


def test_without_a_msg_id_there_is_no_original_id_header() -> None:
    headers = dead_letter_headers(
        {"traceparent": "x"}, reason="r", stream="S", subject="s", consumer="c",
        stream_seq=1, deliveries=1, at=datetime.now(UTC),
    )  # fmt: skip
    assert "yardarm-dlq-msg-id" not in headers and headers["Nats-Msg-Id"] == "dlq:S:1"


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    nc, js = await connect(nats_url, "kit-dead-letters-test")
    await ensure_streams(js)
    try:
        yield nc, js
    finally:
        await nc.close()


async def test_a_dead_letter_is_stored_once_with_its_headers(
    bus: tuple[NATS, JetStreamContext],
) -> None:
    _, js = bus
    subject = f"cmd.dl{uuid.uuid4().hex[:10]}.charge"
    body = b'{"type":"payments.charge","id":"saga-1:payments.charge","saga_id":"saga-1"}'
    args = {
        "subject": subject, "body": body, "headers": ORIGINAL, "reason": "boom",
        "stream": "COMMANDS", "consumer": "payments", "deliveries": 5,
        "stream_seq": int(uuid.uuid4().int % 10**9),
    }  # fmt: skip
    assert await publish_dead_letter(js, **args) is True  # type: ignore[arg-type]
    assert await publish_dead_letter(js, **args) is False  # type: ignore[arg-type]
    info = await js.stream_info("DLQ", subjects_filter=f"dlq.{subject}")
    assert sum((info.state.subjects or {}).values()) == 1
    raw = await js.get_msg("DLQ", subject=f"dlq.{subject}")
    stored = dict(raw.headers or {})
    assert raw.data == body
    assert {k: stored[k] for k in ORIGINAL if k != "Nats-Msg-Id"} == {
        k: v for k, v in ORIGINAL.items() if k != "Nats-Msg-Id"
    }
    assert stored["Nats-Msg-Id"] == f"dlq:COMMANDS:{args['stream_seq']}"
    assert stored["yardarm-dlq-msg-id"] == "saga-1:payments.charge"
    assert (stored["yardarm-dlq-subject"], stored["yardarm-dlq-reason"]) == (subject, "boom")
    assert (stored["yardarm-dlq-stream"], stored["yardarm-dlq-consumer"]) == (
        "COMMANDS",
        "payments",
    )
    assert stored["yardarm-dlq-stream-seq"] == str(args["stream_seq"])
    assert stored["yardarm-dlq-deliveries"] == "5"
    at = datetime.fromisoformat(stored["yardarm-dlq-at"])
    assert abs((datetime.now(UTC) - at).total_seconds()) < 60


async def test_the_watcher_dead_letters_a_stream_message_by_its_sequence(
    bus: tuple[NATS, JetStreamContext], caplog: pytest.LogCaptureFixture
) -> None:
    nc, js = bus
    subject = f"cmd.dl{uuid.uuid4().hex[:10]}.ship"
    ack = await js.publish(subject, b"payload", headers=ORIGINAL)
    counted: list[str] = []
    watcher = MaxDeliveriesWatcher(
        js, nc, stream="COMMANDS", durable="shipping", log=logging.getLogger("t"),
        on_dead_letter=counted.append, reason_of=lambda seq: f"last failure of {seq}",
    )  # fmt: skip
    await watcher.dead_letter(ack.seq, 5)
    raw = await js.get_msg("DLQ", subject=f"dlq.{subject}")
    stored = dict(raw.headers or {})
    assert raw.data == b"payload" and stored["traceparent"] == ORIGINAL["traceparent"]
    assert (stored["yardarm-dlq-subject"], stored["yardarm-dlq-stream-seq"]) == (
        subject,
        str(ack.seq),
    )
    assert stored["yardarm-dlq-reason"] == f"last failure of {ack.seq}"
    assert stored["yardarm-dlq-consumer"] == "shipping"
    assert counted == [subject]
    with caplog.at_level(logging.ERROR):
        await watcher.dead_letter(ack.seq + 10**9, 5)  # gone from the stream: logged, no raise
    assert "left the stream" in caplog.text
