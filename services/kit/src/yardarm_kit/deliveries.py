"""One fetched batch, from raw messages to verdicts (the work behind `InboxConsumer`).

Per batch: parse every envelope and its `yardarm-schema`; run the handler's `prepare`
for all of them at once (outside any transaction: waits on providers overlap); then ONE
transaction claims every envelope id in the inbox with one statement and `apply`s the
fresh ones; then the verdicts. An id already in the inbox, or seen earlier in the same
batch, is a duplicate: acked, not applied.

A failing `apply` must undo only its own writes. Savepoints per delivery would do it,
but cost two round trips per message, and every savepoint that writes takes a
subtransaction id (past 64 in one transaction, Postgres overflows its per-backend cache
and every session's snapshots slow down). So the batch first runs without them; if an
apply raises, that transaction rolls back and the batch runs once more without the
failed delivery, now with a savepoint per apply.

The verdicts (ack, nak on the backoff schedule, dead letter) are `yardarm_kit.verdicts`.

This runs per message at tens of thousands a second, so it avoids what is slow there:
the span's parent comes from a direct parse of a lone `traceparent` header (the global
propagator when there is more to read), the ack metadata from a split of the reply
subject, and the span gets its attributes when it starts. A delivery of an unsampled
trace skips the tracer when its sampler would drop the span anyway, and a `prepare` that
does nothing is not run (running it costs a task per delivery).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, ParentBasedTraceIdRatio
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
)
from pydantic import ValidationError

from yardarm_kit.inbox import Inbox
from yardarm_kit.messaging import SCHEMA_HEADER, Envelope
from yardarm_kit.metrics import Metrics
from yardarm_kit.postgres import Connection
from yardarm_kit.verdicts import Verdicts

NO_HEADERS: Mapping[str, str] = MappingProxyType({})
NO_CONTEXT = otel_context.Context()
# W3C trace-context, version 00, lower-case hex (what TraceContextTextMapPropagator takes).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of one message, as the handler sees it."""

    envelope: Envelope
    subject: str
    schema: int  # header yardarm-schema, 1 when absent
    headers: Mapping[str, str]
    num_delivered: int  # 1 on the first delivery
    stream_seq: int
    msg: Msg  # settled by the consumer: never ack or nak it yourself


class MessageHandler(Protocol):
    """What a service implements to consume with `InboxConsumer`.

    A handler with nothing to do outside the transaction sets a class attribute
    `prepares = False`: the consumer then never calls `prepare`, which would cost a task
    per delivery.
    """

    async def prepare(self, delivery: Delivery) -> None:
        """Outside any transaction, concurrently for the batch (provider calls, waits);
        raise to fail this delivery. May run for a delivery that turns out a duplicate."""

    async def apply(self, conn: Connection, delivery: Delivery) -> None:
        """Inside the batch transaction; raise to fail this delivery (its writes roll
        back, the others' stay). May run again if its transaction rolled back, so
        effects outside the database belong in `after_commit`."""

    def after_commit(self, applied: Sequence[Delivery]) -> None:
        """After the batch committed (e.g. nudge the outbox relay); `applied` excludes
        duplicates and failures, and is never empty."""


class ConsumerMetrics:
    """The consumer series; construct once per process and share between consumers."""

    def __init__(self, metrics: Metrics) -> None:
        self.messages = metrics.counter(
            "yardarm_consumer_messages_total",
            "Deliveries by verdict: processed, duplicate, failed (redelivered later) or "
            "dead_lettered.",
            ("consumer", "subject", "outcome"),
        )
        self.redeliveries = metrics.counter(
            "yardarm_consumer_redeliveries_total",
            "Deliveries of a message delivered before.",
            ("consumer",),
        )
        self.dead_letters = metrics.counter(
            "yardarm_consumer_dead_letters_total",
            "Messages stored on the DLQ stream (by the consumer or its advisory watcher).",
            ("consumer", "subject"),
        )
        self.lag = metrics.gauge(
            "yardarm_consumer_lag", "Messages not yet delivered to the consumer.", ("consumer",)
        )
        self.in_flight = metrics.gauge(
            "yardarm_consumer_in_flight", "Deliveries being handled right now.", ("consumer",)
        )
        self.batch_duration = metrics.histogram(
            "yardarm_consumer_batch_duration_seconds",
            "Time from fetching a batch to settling every message in it.",
            ("consumer",),
        )


def parent_context(headers: Mapping[str, str]) -> otel_context.Context:
    """The context the message carries: the producer's span (and baggage) or, without a
    valid traceparent, nothing, so its span starts a new trace. Never the consumer's own
    current context."""
    traceparent = headers.get("traceparent")
    if traceparent is None or "tracestate" in headers or "baggage" in headers:
        return propagate.extract(headers, context=NO_CONTEXT)  # the general (slower) path
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:  # another version, or invalid: the propagator's rules apply
        return propagate.extract(headers, context=NO_CONTEXT)
    trace_id, span_id = int(match.group(1), 16), int(match.group(2), 16)
    if not trace_id or not span_id:
        return NO_CONTEXT
    parent = SpanContext(trace_id, span_id, is_remote=True,
                         trace_flags=TraceFlags(int(match.group(3), 16)))  # fmt: skip
    return trace.set_span_in_context(NonRecordingSpan(parent), NO_CONTEXT)


def ack_fields(msg: Msg) -> tuple[int, int, int]:
    """(num_delivered, stream sequence, num_pending) from the ack reply subject."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
        return int(tokens[4]), int(tokens[5]), int(tokens[8])
    meta = msg.metadata  # the v2 form (with domain and account hash), parsed by nats-py
    return meta.num_delivered, meta.sequence.stream, meta.num_pending


def unsampled_parents_dropped_by(tracer: trace.Tracer) -> Callable[[], int] | None:
    """The tracer's span id generator, if its sampler drops every span whose remote parent
    is not sampled (the SDK's parent-based samplers, by default); else None.

    Then a delivery of an unsampled trace needs no call into the tracer: its span is a
    non-recording one with a fresh id in the producer's trace, as the tracer would make.
    """
    sampler = getattr(tracer, "sampler", None)
    generator = getattr(tracer, "id_generator", None)
    if type(sampler) not in (ParentBased, ParentBasedTraceIdRatio) or generator is None:
        return None
    assert isinstance(sampler, ParentBased)
    describe: Callable[[], str] = sampler.get_description  # untyped in the SDK
    if f",remoteParentNotSampled:{ALWAYS_OFF.get_description()}," not in describe():
        return None
    new_span_id: Callable[[], int] = generator.generate_span_id
    return new_span_id


@dataclass(slots=True)
class Received:
    """One message of a batch on its way to a verdict (internal to the consumer)."""

    msg: Msg
    subject: str
    headers: Mapping[str, str]
    num_delivered: int
    stream_seq: int
    num_pending: int
    span: Span = trace.INVALID_SPAN
    context: otel_context.Context = field(default_factory=lambda: NO_CONTEXT)  # span as current
    delivery: Delivery | None = None
    failure: str | None = None
    duplicate: bool = False
    first: Received | None = None  # the earlier copy in this batch with the same envelope id
    settled: bool = False


class _ApplyFailed(Exception):
    def __init__(self, item: Received, reason: str) -> None:
        super().__init__(reason)
        self.item = item
        self.reason = reason


def reason_of(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class BatchSettings:
    """What every batch of one consumer shares."""

    js: JetStreamContext
    pool: asyncpg.Pool
    handler: MessageHandler
    metrics: ConsumerMetrics
    tracer: trace.Tracer
    log: logging.Logger
    stream: str
    durable: str
    inbox: Inbox
    accepted_schemas: frozenset[int]
    max_deliver: int
    backoff_s: tuple[float, ...]


class BatchWork:
    """Turns fetched batches into verdicts; one per consumer, many batches at once."""

    def __init__(self, settings: BatchSettings) -> None:
        self.s = settings
        self.verdicts = Verdicts(settings)
        self._accepts = ", ".join(str(n) for n in sorted(settings.accepted_schemas))
        self._prepares = getattr(settings.handler, "prepares", True)
        self._new_span_id = unsampled_parents_dropped_by(settings.tracer)

    async def run(self, msgs: list[Msg]) -> None:
        """Handle one batch to its verdicts; cancelled, it hands back what is unsettled."""
        items = [self._receive(msg) for msg in msgs]
        try:
            await self._handle(items)
        except asyncio.CancelledError:  # stop() ran out of grace: another replica takes them
            await self.verdicts.give_back(items, "the consumer stopped")
            raise
        except Exception as exc:
            self.s.log.exception("batch on %s failed unexpectedly", self.s.durable)
            await self.verdicts.give_back(items, reason_of(exc))

    # -- parsing

    def _receive(self, msg: Msg) -> Received:
        headers: Mapping[str, str] = msg.headers or NO_HEADERS
        subject = msg.subject
        item = Received(msg, subject, headers, *ack_fields(msg))
        envelope: Envelope | None = None
        try:
            envelope = Envelope.model_validate_json(msg.data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            item.failure = f"invalid envelope: {where}: {first.get('msg', 'invalid')}"
        else:
            raw_schema = headers.get(SCHEMA_HEADER)
            try:
                schema = 1 if raw_schema is None else int(raw_schema)
            except ValueError:
                item.failure = f"invalid {SCHEMA_HEADER} header {raw_schema!r}"
            else:
                item.delivery = Delivery(envelope, subject, schema, headers, item.num_delivered,
                                         item.stream_seq, msg)  # fmt: skip
                if schema not in self.s.accepted_schemas:
                    item.failure = f"unsupported schema {schema} (accepts {self._accepts})"
        carried = parent_context(headers)
        if self._new_span_id is not None:
            parent = trace.get_current_span(carried).get_span_context()
            if parent.is_valid and parent.is_remote and not parent.trace_flags.sampled:
                # What the tracer would return (its sampler drops it), without asking it.
                item.span = NonRecordingSpan(SpanContext(
                    parent.trace_id, self._new_span_id(), is_remote=False,
                    trace_flags=parent.trace_flags, trace_state=parent.trace_state,
                ))  # fmt: skip
                item.context = trace.set_span_in_context(item.span, carried)
                return item
        attributes: dict[str, str | int] = {
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.consumer.group.name": self.s.durable,
        }
        if item.num_delivered > 1:
            attributes["messaging.nats.num_delivered"] = item.num_delivered
        if envelope is not None:
            attributes["messaging.message.id"] = envelope.id
            attributes["messaging.message.conversation_id"] = envelope.saga_id
        item.span = self.s.tracer.start_span(
            f"{subject} process", context=carried, kind=SpanKind.CONSUMER, attributes=attributes
        )
        item.context = trace.set_span_in_context(item.span, carried)
        return item

    # -- the batch

    async def _handle(self, items: list[Received]) -> None:
        firsts: dict[str, Received] = {}
        for item in items:
            if item.delivery is None or item.failure is not None:
                continue
            first = firsts.setdefault(item.delivery.envelope.id, item)
            if first is not item:
                item.first = first
        unique = list(firsts.values())
        if self._prepares:
            await self._prepare(unique)
        ready = [item for item in unique if item.failure is None]
        if ready:
            await self._commit(ready)
        for item in items:
            if item.first is not None:  # a copy: its fate is the first one's
                if item.first.failure is None:
                    item.duplicate = True
                else:
                    item.failure = f"a copy in the same batch failed: {item.first.failure}"
        applied = [
            item.delivery
            for item in ready
            if item.failure is None and not item.duplicate and item.delivery is not None
        ]
        if applied:
            try:
                self.s.handler.after_commit(applied)
            except Exception:
                self.s.log.exception("after_commit of %s failed (the batch is committed)",
                                     self.s.durable)  # fmt: skip
        await self.verdicts.settle(items)

    async def _prepare(self, items: list[Received]) -> None:
        handler = self.s.handler

        async def one(item: Received) -> None:
            assert item.delivery is not None
            token = otel_context.attach(item.context)  # cheaper than trace.use_span()
            try:
                await handler.prepare(item.delivery)
            except Exception as exc:
                item.failure = reason_of(exc)
                item.span.record_exception(exc)
            finally:
                otel_context.detach(token)

        if len(items) == 1:
            await one(items[0])
        elif items:
            await asyncio.gather(*(one(item) for item in items))

    async def _commit(self, ready: list[Received]) -> None:
        """Apply in one transaction; on an apply failure, once more with savepoints."""
        try:
            await self._transaction(ready, careful=False)
            return
        except _ApplyFailed as failed:
            failed.item.failure = failed.reason
            ready = [item for item in ready if item is not failed.item]
        except Exception as exc:
            self._fail_all(ready, exc)
            return
        if not ready:
            return
        try:
            await self._transaction(ready, careful=True)
        except Exception as exc:
            self._fail_all(ready, exc)

    def _fail_all(self, items: list[Received], exc: Exception) -> None:
        self.s.log.warning("batch transaction on %s failed: %r", self.s.durable, exc)
        for item in items:
            if item.failure is None:
                item.failure = f"batch transaction failed: {reason_of(exc)}"
                item.duplicate = False

    async def _transaction(self, items: list[Received], *, careful: bool) -> None:
        handler = self.s.handler
        pairs = [(item, item.delivery) for item in items if item.delivery is not None]
        ids = [delivery.envelope.id for _, delivery in pairs]
        async with self.s.pool.acquire() as conn, conn.transaction():
            fresh = await self.s.inbox.claim(conn, ids, [d.subject for _, d in pairs])
            undone: list[str] = []
            for item, delivery in pairs:
                item.duplicate = delivery.envelope.id not in fresh
                if item.duplicate:
                    continue
                token = otel_context.attach(item.context)
                try:
                    if careful:
                        async with conn.transaction():  # a savepoint
                            await handler.apply(conn, delivery)
                    else:
                        await handler.apply(conn, delivery)
                except Exception as exc:
                    item.span.record_exception(exc)
                    if not careful:
                        raise _ApplyFailed(item, reason_of(exc)) from exc
                    item.failure = reason_of(exc)
                    undone.append(delivery.envelope.id)
                finally:
                    otel_context.detach(token)
            if undone:
                await self.s.inbox.forget(conn, undone)
