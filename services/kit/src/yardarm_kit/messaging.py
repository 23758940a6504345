"""NATS JetStream with trace context in headers, so async hops stay in one trace.

Streams: COMMANDS (`cmd.>`), EVENTS (`evt.>`), DLQ (`dlq.>`). Every message is an
`Envelope`; its `id` is the `Nats-Msg-Id`, so JetStream drops republished duplicates and
consumers' inboxes catch the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import MsgAlreadyAckdError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel, Field, ValidationError

from yardarm_kit.lifecycle import finish_task

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


class PullConsumer:
    """A durable pull consumer whose handler runs in a CONSUMER span of the sender's trace.

    Success acks; an exception naks with a delay (redelivered up to `max_deliver`); a
    body that is not an Envelope can never succeed, so it is terminated.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        tracer: trace.Tracer,
        stream: str,
        durable: str,
        filter_subject: str,
        handler: Handler,
        ack_wait_s: float = 30.0,
        max_deliver: int = 5,
        batch: int = 32,
        nak_delay_s: float = 1.0,
        log: logging.Logger | None = None,
    ) -> None:
        self._js = js
        self._tracer = tracer
        self.stream = stream
        self.durable = durable
        self.filter_subject = filter_subject
        self._handler = handler
        self._ack_wait_s = ack_wait_s
        self._max_deliver = max_deliver
        self._batch = batch
        self._nak_delay_s = nak_delay_s
        self._log = log or globals()["log"]
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Create (or bind to) the durable consumer and start fetching."""
        config = ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait_s,
            max_deliver=self._max_deliver,
            max_ack_pending=max(self._batch * 4, 256),
        )
        sub = await self._js.pull_subscribe(
            self.filter_subject, durable=self.durable, stream=self.stream, config=config
        )
        self._task = asyncio.create_task(self._loop(sub), name=f"consumer:{self.durable}")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop fetching; in-flight messages finish (bounded), the rest are redelivered."""
        self._stopping.set()
        if self._task is not None:
            await finish_task(self._task, grace_s)
            self._task = None

    async def _loop(self, sub: JetStreamContext.PullSubscription) -> None:
        backoff = FETCH_BACKOFF_MIN_S
        while not self._stopping.is_set():
            try:
                messages = await sub.fetch(self._batch, timeout=1.0)
            except (NatsTimeoutError, TimeoutError):
                backoff = FETCH_BACKOFF_MIN_S
                continue  # nothing to do within the poll window: normal
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # server gone or restarting: back off, keep going
                if self._stopping.is_set():
                    break
                self._log.warning(
                    "fetch from %s failed: %r; retrying in %.1fs", self.durable, exc, backoff
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
                backoff = min(backoff * 2, FETCH_BACKOFF_MAX_S)
                continue
            backoff = FETCH_BACKOFF_MIN_S
            await asyncio.gather(*(self._process(m) for m in messages))

    async def _settle(self, msg: Msg, action: str, **kwargs: float) -> None:
        """Ack/nak/term, tolerating a handler that settled itself or a lost connection.

        If the server never hears it, the message is redelivered after ack_wait.
        """
        try:
            await getattr(msg, action)(**kwargs)
        except MsgAlreadyAckdError:
            pass
        except Exception as exc:
            self._log.warning("could not %s message on %s: %r", action, msg.subject, exc)

    async def _process(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        ctx = propagate.extract(headers)
        with self._tracer.start_as_current_span(
            f"{msg.subject} process",
            context=ctx,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": self.durable,
                "messaging.message.id": headers.get("Nats-Msg-Id", ""),
            },
        ) as span:
            try:
                envelope = Envelope.model_validate_json(msg.data)
            except ValidationError as exc:
                span.set_status(Status(StatusCode.ERROR, "invalid envelope"))
                self._log.error(
                    "terminating invalid message on %s: %s",
                    msg.subject,
                    exc.errors(include_url=False)[:3],
                )
                await self._settle(msg, "term")
                return
            span.set_attribute("messaging.message.conversation_id", envelope.saga_id)
            try:
                await self._handler(envelope, msg)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                delivered = _num_delivered(msg)
                if delivered is not None and delivered >= self._max_deliver:
                    self._log.exception(
                        "handler failed for %s (%s) on delivery %d of %d; giving up",
                        envelope.id, msg.subject, delivered, self._max_deliver,
                    )  # fmt: skip
                else:
                    self._log.exception("handler failed for %s (%s); will redeliver",
                                        envelope.id, msg.subject)  # fmt: skip
                await self._settle(msg, "nak", delay=self._nak_delay_s)
                return
            await self._settle(msg, "ack")


def _num_delivered(msg: Msg) -> int | None:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # not a JetStream message (no reply subject metadata)
        return None
