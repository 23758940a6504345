"""Fulfillment against NATS and Postgres containers: each command applied once and
answered once, with tests/fulfillment's bus and service fixtures."""

from __future__ import annotations

import uuid

import asyncpg

from tests.fulfillment.conftest import (
    CARD_DECLINED,
    Bus,
    StartFulfillment,
    charge,
    metric_value,
    schedule,
)


async def test_commands_over_the_containers_are_applied_once_and_answered_once(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    service = await start_fulfillment()
    paid, declined, shipped = (str(uuid.uuid4()) for _ in range(3))
    twice = charge(paid, amount_cents=4200)
    await bus.send(twice, msg_id="transport-1")
    await bus.send(twice, msg_id="transport-2")  # JetStream keeps both; the inbox, one
    await bus.send(charge(declined, card=CARD_DECLINED))
    await bus.send(schedule(shipped))

    answers = {
        saga: [(e.subject, e.envelope.id) for e in await bus.wait_events(saga, settle=True)]
        for saga in (paid, declined, shipped)
    }
    assert answers == {
        paid: [("evt.payments.charged", f"{paid}:payments.charge:reply")],
        declined: [("evt.payments.declined", f"{declined}:payments.charge:reply")],
        shipped: [("evt.shipping.scheduled", f"{shipped}:shipping.schedule:reply")],
    }
    ledger = await db.fetch("SELECT saga_id, status, amount_cents FROM payments")
    assert sorted((r["saga_id"], r["status"], r["amount_cents"]) for r in ledger) == sorted(
        [(paid, "charged", 4200), (declined, "declined", 2500)]
    )
    assert await db.fetchval("SELECT count(*) FROM shipments WHERE saga_id = $1", shipped) == 1
    assert metric_value(service, "yardarm_consumer_messages_total", outcome="duplicate") == 1
    assert metric_value(service, "yardarm_consumer_messages_total", outcome="processed") == 3
