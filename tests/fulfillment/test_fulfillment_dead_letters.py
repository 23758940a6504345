"""Commands no retry can fix (a newer schema, an unknown type, bad data) are redelivered
up to max_deliver and then dead-lettered with their reason and original headers, and the
consumer goes on with the commands behind them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import pytest
from yardarm_kit.messaging import Envelope

from .conftest import (
    Bus,
    StartFulfillment,
    charge,
    charge_v2,
    metric_value,
    new_traceparent,
    wait_until,
)

MAX_DELIVER = 3


@dataclass(frozen=True)
class Poison:
    """A command that fails on every delivery, and the reason the DLQ should give."""

    name: str
    schema: int
    reason: str

    def envelope(self, saga_id: str) -> Envelope:
        if self.name == "unknown type":
            return charge(saga_id).model_copy(
                update={"type": "payments.teleport", "id": f"{saga_id}:payments.teleport"}
            )
        if self.name == "malformed data":
            return charge(saga_id).model_copy(update={"data": {"order_id": saga_id}})
        if self.name == "schema 1 data under schema 2":
            return charge(saga_id)
        return charge_v2(saga_id)


POISONS = [
    Poison("schema 3", 3, "unsupported schema 3 (accepts 1, 2)"),
    Poison("unknown type", 1, "no handler for command type 'payments.teleport'"),
    Poison("malformed data", 1, "card: Field required"),
    Poison("schema 1 data under schema 2", 2, "amount: Field required"),
]


@pytest.mark.parametrize("poison", POISONS, ids=[p.name for p in POISONS])
async def test_a_command_that_always_fails_ends_in_the_dlq_with_its_reason_and_headers(
    poison: Poison, bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    service = await start_fulfillment(max_deliver=MAX_DELIVER, backoff_s=[0.1, 0.2])
    saga_id = str(uuid.uuid4())
    envelope = poison.envelope(saga_id)
    traceparent, _ = new_traceparent()
    body = envelope.model_dump_json().encode()
    await bus.send(
        envelope, schema=poison.schema, traceparent=traceparent,
        headers={"x-origin": "orders-v3"}, body=body,
    )  # fmt: skip

    [dead] = await bus.wait_dead_letters()
    subject = f"cmd.{envelope.type}"
    assert dead.subject == f"dlq.{subject}"
    assert dead.data == body
    assert poison.reason in dead.headers["yardarm-dlq-reason"]
    assert dead.headers["yardarm-dlq-subject"] == subject
    assert dead.headers["yardarm-dlq-stream"] == "COMMANDS"
    assert dead.headers["yardarm-dlq-consumer"] == "payments"
    assert dead.headers["yardarm-dlq-deliveries"] == str(MAX_DELIVER)
    assert dead.headers["yardarm-dlq-msg-id"] == envelope.id
    # The original headers travel with it, so a replay is the same message.
    assert dead.headers["yardarm-schema"] == str(poison.schema)
    assert dead.headers["traceparent"] == traceparent
    assert dead.headers["x-origin"] == "orders-v3"

    def deliveries(outcome: str) -> float:
        return metric_value(service, "yardarm_consumer_messages_total", outcome=outcome)

    async def counted() -> bool:  # the DLQ's PubAck comes before the verdict is counted
        return deliveries("dead_lettered") >= 1

    await wait_until(counted, what="the dead-lettered delivery counted")
    assert deliveries("failed") == MAX_DELIVER - 1
    assert deliveries("dead_lettered") == 1
    dead_letters = metric_value(
        service, "yardarm_consumer_dead_letters_total", consumer="payments", subject=subject
    )
    assert dead_letters == 1
    for table in ("payments", "inbox", "outbox"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table

    # Nothing is stuck behind it.
    good = str(uuid.uuid4())
    await bus.send(charge_v2(good), schema=2)
    events = await bus.wait_events(good, settle=True)
    assert [e.subject for e in events] == ["evt.payments.charged"]
    assert await bus.events() == events
    assert len(await bus.stored("DLQ")) == 1


async def test_a_poison_command_among_good_ones_fails_alone(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    """Sent before the consumer starts, so they arrive in one batch: the bad command
    rolls back alone, the good ones commit."""
    good = [str(uuid.uuid4()) for _ in range(3)]
    bad = str(uuid.uuid4())
    await bus.send(charge(good[0]))
    await bus.send(charge(bad).model_copy(update={"data": {"order_id": bad}}))
    await bus.send(charge_v2(good[1]), schema=2)
    await bus.send(charge(good[2]))
    service = await start_fulfillment(max_deliver=MAX_DELIVER, backoff_s=[0.1, 0.2], batch=8)

    async def all_good_replied() -> bool:
        return {e.envelope.saga_id for e in await bus.events()} == set(good)

    await wait_until(all_good_replied, what="replies to the good commands")
    [dead] = await bus.wait_dead_letters()
    assert dead.headers["yardarm-dlq-msg-id"] == f"{bad}:payments.charge"
    rows = await db.fetch("SELECT saga_id FROM payments")
    assert sorted(r["saga_id"] for r in rows) == sorted(good)
    inbox = await db.fetch("SELECT msg_id FROM inbox")
    assert sorted(r["msg_id"] for r in inbox) == sorted(f"{s}:payments.charge" for s in good)
    assert metric_value(service, "yardarm_payments_total", outcome="charged") == len(good)
