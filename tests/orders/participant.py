"""The test plays the payment and shipping participants over real JetStream.

Like the real participants it accepts both command schemas (the `yardarm-schema` header:
1 sends `amount_cents`, 2 an `amount` object), records which one each command came in,
and when it answers on its own (`answering`) it is idempotent per saga: a re-sent command
gets the outcome recorded for the first one, in a reply with id `<command id>:reply`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from yardarm_kit.messaging import SCHEMA_HEADER, Envelope, connect, ensure_streams, publish

ACCEPTED_SCHEMAS = (1, 2)
PAYMENT_COMMANDS = ("payments.charge", "payments.refund")

# What to answer a command with: (event, data), or None to stay silent.
Answer = Callable[[Envelope], tuple[str, dict[str, Any]] | None]

SUCCESS: dict[str, Answer] = {
    "cmd.payments.charge": lambda env: ("payments.charged", {"charge_id": f"ch-{env.saga_id}"}),
    "cmd.payments.refund": lambda env: ("payments.refunded", {"refund_id": f"rf-{env.saga_id}"}),
    "cmd.shipping.schedule": lambda env: ("shipping.scheduled", {"shipment_id": "sh"}),
    "cmd.shipping.cancel": lambda env: ("shipping.cancelled", {"shipment_id": "sh"}),
}


@dataclass(frozen=True)
class Seen:
    envelope: Envelope
    msg: Msg
    schema: int


def amount_cents(envelope: Envelope, schema: int) -> int:
    """The amount of a payment command, read as its schema says; AssertionError when the
    shape does not match the schema."""
    data = envelope.data
    if schema == 1:
        assert "amount" not in data and isinstance(data.get("amount_cents"), int), data
        return int(data["amount_cents"])
    assert schema == 2, f"unsupported schema {schema} (accepts 1, 2)"
    amount = data.get("amount")
    assert "amount_cents" not in data and isinstance(amount, dict), data
    assert isinstance(amount.get("cents"), int) and amount.get("currency") == "USD", data
    return int(amount["cents"])


class Participant:
    """Reads commands from the COMMANDS stream (new ones only) and publishes replies."""

    def __init__(self, nats_url: str) -> None:
        self._url = nats_url
        self._durable = f"test-participant-{uuid.uuid4().hex[:8]}"
        self.seen: list[Seen] = []
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._outcomes: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        self._answered: set[str] = set()
        self._answering = False  # a background loop pulls; others only look
        self.failure: BaseException | None = None  # what stopped the background loop

    async def __aenter__(self) -> Participant:
        self.nc, self.js = await connect(self._url, self._durable)
        await ensure_streams(self.js)
        self._sub = await self.js.pull_subscribe(
            "cmd.>",
            durable=self._durable,
            stream="COMMANDS",
            config=ConsumerConfig(
                durable_name=self._durable,
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.EXPLICIT,
            ),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.js is not None and self.nc is not None
        await self.js.delete_consumer("COMMANDS", self._durable)
        await self.nc.close()

    async def _pull(self, timeout: float) -> None:
        if self._answering:
            await asyncio.sleep(timeout)
            return
        await self._fetch(timeout)

    async def _fetch(self, timeout: float) -> None:
        assert self._sub is not None
        try:
            msgs = await self._sub.fetch(32, timeout=timeout)
        except (NatsTimeoutError, TimeoutError):
            return
        for msg in msgs:
            schema = int((msg.headers or {}).get(SCHEMA_HEADER, "1"))
            envelope = Envelope.model_validate_json(msg.data)
            assert schema in ACCEPTED_SCHEMAS, f"{envelope.id}: schema {schema}"
            if envelope.type in PAYMENT_COMMANDS:
                amount_cents(envelope, schema)  # the shape must match the header
            self.seen.append(Seen(envelope, msg, schema))
            await msg.ack()

    def received(self, order_id: str, subject: str | None = None) -> list[tuple[Envelope, Msg]]:
        return [
            (s.envelope, s.msg)
            for s in self.seen
            if s.envelope.saga_id == order_id and (subject is None or s.msg.subject == subject)
        ]

    def check(self) -> None:
        """Raise what stopped the background loop (a command it could not accept), if any."""
        if self.failure is not None:
            raise AssertionError(f"the participant stopped: {self.failure!r}")

    def schema_of(self, envelope: Envelope) -> int:
        return next(s.schema for s in self.seen if s.envelope.id == envelope.id)

    async def expect(
        self, order_id: str, subject: str, timeout: float = 30, count: int = 1
    ) -> tuple[Envelope, Msg]:
        """The first command on `subject` for this order, once `count` of them came."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.received(order_id, subject)
            if len(found) >= count:
                return found[0]
            if time.monotonic() > deadline:
                got = [m.subject for _, m in self.received(order_id)]
                raise AssertionError(f"no {count} {subject} for {order_id} in {timeout}s ({got})")
            await self._pull(0.5)

    async def settle(self, seconds: float) -> None:
        """Keep collecting for a while, to prove something did NOT arrive."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self._pull(0.3)

    async def reply(
        self, command: Envelope, event: str, *, keep_trace: bool = True, **data: Any
    ) -> Envelope:
        """Publish the participant's reply per the message contract; like a real participant
        it continues the command's trace unless `keep_trace` is False."""
        assert self.js is not None
        traceparent = None
        if keep_trace:
            msg = next(s.msg for s in self.seen if s.envelope.id == command.id)
            traceparent = (msg.headers or {}).get("traceparent")
        envelope = Envelope(
            type=event,
            id=f"{command.id}:reply",
            saga_id=command.saga_id,
            data={"order_id": command.saga_id, **data},
        )
        await publish(self.js, f"evt.{event}", envelope, traceparent=traceparent)
        return envelope

    async def redeliver(self, envelope: Envelope) -> None:
        """The same envelope again under another Nats-Msg-Id: JetStream will not dedupe it."""
        assert self.js is not None
        await self.js.publish(
            f"evt.{envelope.type}",
            envelope.model_dump_json().encode(),
            headers={"Nats-Msg-Id": f"{envelope.id}:again:{uuid.uuid4().hex}"},
        )

    async def answer_pending(self, answers: Mapping[str, Answer]) -> None:
        """Answer every command not answered yet, the recorded outcome for a saga's repeat."""
        for seen in list(self.seen):
            envelope, subject = seen.envelope, seen.msg.subject
            if envelope.id in self._answered or subject not in answers:
                continue
            key = (envelope.saga_id, envelope.type)
            outcome = self._outcomes.get(key) or answers[subject](envelope)
            if outcome is None:
                continue
            self._outcomes[key] = outcome
            self._answered.add(envelope.id)
            await self.reply(envelope, outcome[0], **outcome[1])

    @contextlib.asynccontextmanager
    async def answering(self, answers: Mapping[str, Answer] = SUCCESS) -> AsyncIterator[None]:
        """Answer commands in the background while the block runs."""

        async def loop() -> None:
            try:
                while True:
                    await self._fetch(0.2)
                    await self.answer_pending(answers)
            except Exception as exc:
                self.failure = exc
                raise

        self._answering = True
        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            self._answering = False
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)
