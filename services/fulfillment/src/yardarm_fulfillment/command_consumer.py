"""Applies one command delivery exactly once: inbox, ledger effect and reply in ONE transaction.

The inbox is keyed by the envelope id, not the transport's message id: a command
republished under another `Nats-Msg-Id` still finds its inbox row and changes nothing.
Any failure rolls the whole transaction back and raises, so the kit's consumer naks and
JetStream redelivers (up to `max_deliver`); the ack only follows a commit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import asyncpg
from nats.aio.msg import Msg
from yardarm_kit import Flags
from yardarm_kit.messaging import Envelope, current_traceparent
from yardarm_kit.metrics import LabeledCounter

from yardarm_fulfillment import outbox
from yardarm_fulfillment.commands import CommandTable, MalformedCommand, Reply, UnknownCommand
from yardarm_fulfillment.metrics import FulfillmentMetrics

ERROR_RATE_FLAG = "fault.consumer-error-rate"


class InjectedFault(RuntimeError):
    """Raised on purpose (flag `fault.consumer-error-rate`) to drill redelivery."""


def reply_id(command_id: str) -> str:
    """The reply's id is derived from the command's, so a re-sent reply is deduplicated."""
    return f"{command_id}:reply"


class CommandConsumer:
    """The handler of one durable consumer (`await consumer(envelope, msg)`)."""

    def __init__(
        self,
        name: str,
        commands: CommandTable,
        pool: asyncpg.Pool,
        *,
        metrics: FulfillmentMetrics,
        effects: LabeledCounter,
        flags: Flags,
        log: logging.Logger,
        max_deliver: int,
        on_reply: Callable[[], None],
        latency_s: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.name = name
        self._commands = commands
        self._pool = pool
        self._metrics = metrics
        self._effects = effects
        self._flags = flags
        self._log = log
        self._max_deliver = max_deliver
        self._on_reply = on_reply
        self._latency_s = latency_s

    async def __call__(self, envelope: Envelope, msg: Msg) -> None:
        subject = msg.subject
        started = time.perf_counter()
        try:
            reply = await self.handle(envelope, subject)
        except Exception as exc:
            self._metrics.messages.inc(consumer=self.name, subject=subject, outcome="failed")
            self._log_failure(envelope, subject, msg, exc)
            raise
        finally:
            self._metrics.handle_duration.observe(time.perf_counter() - started, consumer=self.name)
        if reply is None:
            self._metrics.messages.inc(consumer=self.name, subject=subject, outcome="duplicate")
            self._log.info(
                "duplicate command %s acknowledged without effect", envelope.id,
                extra={"msg_id": envelope.id, "saga_id": envelope.saga_id},
            )  # fmt: skip
            return
        self._metrics.messages.inc(consumer=self.name, subject=subject, outcome="processed")
        if reply.effect is not None:
            self._effects.inc(outcome=reply.effect)
        self._on_reply()
        self._log.info(
            "%s -> %s", envelope.type, reply.type,
            extra={"msg_id": envelope.id, "saga_id": envelope.saga_id, "reply": reply.type},
        )  # fmt: skip

    async def handle(self, envelope: Envelope, subject: str) -> Reply | None:
        """Apply the command once; its reply, or None for a duplicate already applied."""
        command = self._commands.get(envelope.type)
        if command is None:
            raise UnknownCommand(
                f"no handler for command type {envelope.type!r} on consumer {self.name}"
            )
        if subject != f"cmd.{envelope.type}":
            raise MalformedCommand(f"command type {envelope.type!r} arrived on {subject}")
        latency = self._latency_s()
        if latency > 0:
            await asyncio.sleep(latency)
        async with self._pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(
                "INSERT INTO inbox (msg_id, subject) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING RETURNING true",
                envelope.id,
                subject,
            )
            if not fresh:
                return None
            reply = await command(conn, envelope)
            answer = Envelope(
                type=reply.type, id=reply_id(envelope.id), saga_id=envelope.saga_id,
                data=reply.data,
            )  # fmt: skip
            # The CONSUMER span's context: the reply continues the command's trace.
            await outbox.enqueue(conn, reply.subject, answer, current_traceparent())
            error_rate = self._flags.float(ERROR_RATE_FLAG, 0.0)
            if error_rate > 0 and random.random() < error_rate:
                raise InjectedFault(f"{ERROR_RATE_FLAG} is {error_rate}; rolled back on purpose")
        return reply

    def _log_failure(self, envelope: Envelope, subject: str, msg: Msg, exc: Exception) -> None:
        delivered = _num_delivered(msg)
        extra: dict[str, Any] = {
            "msg_id": envelope.id, "saga_id": envelope.saga_id, "subject": subject,
            "delivery": delivered, "error": repr(exc),
        }  # fmt: skip
        if delivered is not None and delivered >= self._max_deliver:
            self._log.error(
                "giving up on %s after %d deliveries: %s (JetStream will not redeliver it)",
                envelope.id, delivered, exc, extra=extra,
            )  # fmt: skip
        elif isinstance(exc, (UnknownCommand, MalformedCommand)):
            self._log.error("rejected command %s: %s; redelivering", envelope.id, exc, extra=extra)
        else:
            self._log.warning("command %s failed: %r; redelivering", envelope.id, exc, extra=extra)


def _num_delivered(msg: Msg) -> int | None:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # not a JetStream message (metadata absent)
        return None
