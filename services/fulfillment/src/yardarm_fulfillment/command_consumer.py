"""One participant as the kit's `InboxConsumer` handler: ledger effect and reply in ONE
transaction, exactly once per command envelope id.

The kit inserts the batch's inbox rows (keyed by the envelope id, so a command
republished under another `Nats-Msg-Id` changes nothing) and runs `apply` for each fresh
delivery; a failing delivery's writes roll back (the rest of its batch is applied again
without it) and it is redelivered on the backoff, then dead-lettered. `prepare` runs
before the transaction, where a slow or failing provider call belongs: it holds no
connection while it waits.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

from yardarm_kit import Flags
from yardarm_kit.consumer import Delivery
from yardarm_kit.messaging import Envelope, current_traceparent
from yardarm_kit.metrics import LabeledCounter
from yardarm_kit.postgres import Connection

from yardarm_fulfillment import outbox
from yardarm_fulfillment.commands import CommandTable, MalformedCommand, Reply, UnknownCommand

ERROR_RATE_FLAG = "fault.consumer-error-rate"
LATENCY_FLAG = "fault.latency-ms"  # a slow release: every delivery of every participant
TRANSIENT_RATE_FLAG = "fault.transient-error-rate"
# Replies applied but never committed (a failed batch commit) are forgotten past this many.
MAX_UNCOMMITTED_REPLIES = 10_000


class InjectedFault(RuntimeError):
    """Raised on purpose (flag `fault.consumer-error-rate`) after the delivery's writes,
    to drill their rollback and the redelivery."""


class TransientFault(RuntimeError):
    """Raised on purpose (flag `fault.transient-error-rate`) before any transaction, as a
    provider that is briefly unreachable would."""


def reply_id(command_id: str) -> str:
    """The reply's id is derived from the command's, so a re-sent reply is deduplicated."""
    return f"{command_id}:reply"


class CommandConsumer:
    """The `MessageHandler` of one participant's durable consumer (`cmd.<name>.>`)."""

    def __init__(
        self,
        name: str,
        commands: CommandTable,
        *,
        effects: LabeledCounter,
        flags: Flags,
        log: logging.Logger,
        on_commit: Callable[[], None],
    ) -> None:
        self.name = name
        self._commands = commands
        self._effects = effects
        self._flags = flags
        self._log = log
        self._on_commit = on_commit
        self._latency_flag = f"{name}.latency-ms"
        # Replies of applied deliveries, counted and logged once their batch commits.
        # Keyed by the delivery object's id; the value holds the delivery, so the id stays
        # unique while the entry exists.
        self._uncommitted: dict[int, tuple[Delivery, Reply]] = {}

    def latency_s(self) -> float:
        """Injected provider latency: the participant's own (`<name>.latency-ms`) or the
        release's (`fault.latency-ms`, as the kit adds to HTTP requests), the larger."""
        own = self._flags.int(self._latency_flag, 0)
        return max(0, own, self._flags.int(LATENCY_FLAG, 0)) / 1000.0

    async def prepare(self, delivery: Delivery) -> None:
        """The provider call: injected latency, then an injected transient failure."""
        latency = self.latency_s()
        if latency > 0:
            await asyncio.sleep(latency)
        rate = self._flags.float(TRANSIENT_RATE_FLAG, 0.0)
        if rate > 0 and random.random() < rate:
            raise TransientFault(f"{TRANSIENT_RATE_FLAG} is {rate}; failed before the transaction")

    async def apply(self, conn: Connection, delivery: Delivery) -> None:
        """Apply the command and enqueue its reply in the batch's transaction."""
        envelope = delivery.envelope
        command = self._commands.get(envelope.type)
        if command is None:
            raise UnknownCommand(
                f"no handler for command type {envelope.type!r} on consumer {self.name}"
            )
        if delivery.subject != f"cmd.{envelope.type}":
            raise MalformedCommand(f"command type {envelope.type!r} arrived on {delivery.subject}")
        reply = await command(conn, envelope, delivery.schema)
        answer = Envelope(
            type=reply.type, id=reply_id(envelope.id), saga_id=envelope.saga_id, data=reply.data
        )
        # The CONSUMER span's context: the reply continues the command's trace.
        await outbox.enqueue(conn, reply.subject, answer, current_traceparent())
        error_rate = self._flags.float(ERROR_RATE_FLAG, 0.0)
        if error_rate > 0 and random.random() < error_rate:
            raise InjectedFault(f"{ERROR_RATE_FLAG} is {error_rate}; rolled back on purpose")
        if len(self._uncommitted) >= MAX_UNCOMMITTED_REPLIES:
            self._uncommitted.pop(next(iter(self._uncommitted)))
        self._uncommitted[id(delivery)] = (delivery, reply)

    def after_commit(self, applied: Sequence[Delivery]) -> None:
        """Count the committed effects and let the relay publish the replies at once."""
        for delivery in applied:
            entry = self._uncommitted.pop(id(delivery), None)
            if entry is None:
                continue
            reply = entry[1]
            if reply.effect is not None:
                self._effects.inc(outcome=reply.effect)
            envelope = delivery.envelope
            self._log.info(
                "%s -> %s", envelope.type, reply.type,
                extra={"msg_id": envelope.id, "saga_id": envelope.saga_id, "reply": reply.type},
            )  # fmt: skip
        if applied:
            self._on_commit()
