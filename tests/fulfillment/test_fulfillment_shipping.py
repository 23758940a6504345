"""The shipping participant over real JetStream and Postgres, service in-process."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from .conftest import Bus, StartFulfillment, base_url, cancel, metric_value, schedule


def saga() -> str:
    return str(uuid.uuid4())


async def test_schedule_records_a_shipment_and_replies_with_its_id(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    service = await start_fulfillment()
    saga_id = saga()
    await bus.send(schedule(saga_id, customer_id="cust-9"))
    [event] = await bus.wait_events(saga_id)
    assert event.subject == "evt.shipping.scheduled"
    assert event.envelope.id == f"{saga_id}:shipping.schedule:reply"
    row = await db.fetchrow("SELECT * FROM shipments WHERE saga_id = $1", saga_id)
    assert row is not None and row["status"] == "scheduled" and row["customer_id"] == "cust-9"
    assert event.envelope.data == {"order_id": saga_id, "shipment_id": str(row["shipment_id"])}
    async with httpx.AsyncClient(base_url=base_url(service)) as client:
        view = (await client.get(f"/shipments/{saga_id}")).json()
    assert view["status"] == "scheduled"
    assert view["items"] == [{"sku": "anchor", "quantity": 2}]
    assert metric_value(service, "yardarm_shipments_total", outcome="scheduled") == 1


async def test_noship_customers_fail_with_a_reason(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    await start_fulfillment()
    saga_id = saga()
    await bus.send(schedule(saga_id, customer_id="noship-3"))
    [event] = await bus.wait_events(saga_id)
    assert event.subject == "evt.shipping.failed"
    assert event.envelope.data == {"order_id": saga_id, "reason": "address not serviceable"}
    assert await db.fetchval("SELECT status FROM shipments WHERE saga_id = $1", saga_id) == "failed"


async def test_cancel_marks_a_scheduled_shipment_cancelled(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    await start_fulfillment()
    saga_id = saga()
    await bus.send(schedule(saga_id))
    [scheduled] = await bus.wait_events(saga_id)
    await bus.send(cancel(saga_id))
    events = await bus.wait_events(saga_id, 2, settle=True)
    assert [e.subject for e in events] == ["evt.shipping.scheduled", "evt.shipping.cancelled"]
    assert events[1].envelope.data["shipment_id"] == scheduled.envelope.data["shipment_id"]
    assert events[1].envelope.data["order_id"] == saga_id
    row = await db.fetchrow("SELECT status, items FROM shipments WHERE saga_id = $1", saga_id)
    assert row is not None and row["status"] == "cancelled"


async def test_a_schedule_after_a_cancel_fails_instead_of_shipping(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    await start_fulfillment()
    saga_id = saga()
    await bus.send(cancel(saga_id))
    await bus.wait_events(saga_id)
    await bus.send(schedule(saga_id))
    events = await bus.wait_events(saga_id, 2)
    assert events[1].subject == "evt.shipping.failed"
    assert events[1].envelope.data["reason"] == "shipment cancelled"
    assert await db.fetchval("SELECT count(*) FROM shipments WHERE saga_id = $1", saga_id) == 1


async def test_a_repeated_schedule_keeps_one_shipment(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    await start_fulfillment()
    saga_id = saga()
    first = schedule(saga_id)
    await bus.send(first)
    await bus.send(first, msg_id="another-transport-id")
    await bus.send(first.model_copy(update={"id": f"{saga_id}:shipping.schedule:again"}))
    events = await bus.wait_events(saga_id, 2, settle=True)
    assert len(events) == 2
    assert len({e.envelope.data["shipment_id"] for e in events}) == 1
    assert await db.fetchval("SELECT count(*) FROM shipments WHERE saga_id = $1", saga_id) == 1
