"""NATS JetStream with trace context in headers, so async hops stay in one trace.

Streams: COMMANDS (`cmd.>`), EVENTS (`evt.>`), DLQ (`dlq.>`). Every message is an
`Envelope`; its `id` is the `Nats-Msg-Id`, so JetStream drops republished duplicates and
consumers' inboxes catch the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, Field

SCHEMA_HEADER = "yardarm-schema"
STREAMS: dict[str, list[str]] = {"COMMANDS": ["cmd.>"], "EVENTS": ["evt.>"], "DLQ": ["dlq.>"]}
DUPLICATE_WINDOW_S = 120.0
FETCH_BACKOFF_MIN_S = 0.25
FETCH_BACKOFF_MAX_S = 5.0

log = logging.getLogger("yardarm.messaging")


class Envelope(BaseModel):
    """The body of every command and event."""

    type: str = Field(min_length=1)
    id: str = Field(min_length=1)
    saga_id: str
    data: dict[str, Any] = Field(default_factory=dict)


Handler = Callable[[Envelope, Msg], Awaitable[None]]


async def connect(
    url: str, name: str, timeout: float = 10.0, *, connect_timeout_s: float = 30.0
) -> tuple[NATS, JetStreamContext]:
    """Connect, then reconnect forever after any later loss of the server.

    The first connection is bounded by `connect_timeout_s` (TimeoutError after it), so a
    missing server fails startup instead of hanging; `timeout` bounds JetStream API calls.
    """

    async def disconnected() -> None:
        log.warning("disconnected from NATS at %s; reconnecting", url)

    async def reconnected() -> None:
        log.info("reconnected to NATS at %s", url)

    async def error(exc: Exception) -> None:
        log.warning("NATS connection error: %r", exc)

    nc = await asyncio.wait_for(
        nats.connect(
            url,
            name=name,
            connect_timeout=2,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        ),
        timeout=connect_timeout_s,
    )
    return nc, nc.jetstream(timeout=timeout)


def _stream_config(name: str, subjects: list[str]) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=subjects,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


async def ensure_streams(js: JetStreamContext) -> None:
    """Create the streams, or update their subjects and dedupe window; safe to race."""
    for name, subjects in STREAMS.items():
        wanted = _stream_config(name, subjects)
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            try:
                await js.add_stream(wanted)
                continue
            except BadRequestError:
                info = await js.stream_info(name)  # another process created it meanwhile
        current = info.config
        if sorted(current.subjects or []) != sorted(subjects) or (
            current.duplicate_window != DUPLICATE_WINDOW_S
        ):
            current.subjects = subjects
            current.duplicate_window = DUPLICATE_WINDOW_S
            await js.update_stream(current)


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, for storing beside an outbox row."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


async def publish(
    js: JetStreamContext,
    subject: str,
    envelope: Envelope,
    *,
    traceparent: str | None = None,
    schema: int = 1,
) -> None:
    """Publish in a PRODUCER span; the stored traceparent (if any) is the parent."""
    tracer = trace.get_tracer("yardarm.messaging")
    parent = propagate.extract({"traceparent": traceparent}) if traceparent else None
    with tracer.start_as_current_span(
        f"{subject} publish",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.message.id": envelope.id,
            "messaging.message.conversation_id": envelope.saga_id,
        },
    ):
        headers: dict[str, str] = {"Nats-Msg-Id": envelope.id, SCHEMA_HEADER: str(schema)}
        propagate.inject(headers)
        await js.publish(subject, envelope.model_dump_json().encode(), headers=headers)
