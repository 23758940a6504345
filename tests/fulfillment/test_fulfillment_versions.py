"""Schema 1 and schema 2 commands side by side: same ledger, same replies.

Schema 2 payment commands carry `amount: {cents, currency}` where schema 1 carried
`amount_cents` (US dollars); the shipping commands did not change. Replies stay schema 1.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import httpx
from yardarm_fulfillment.app import ACCEPTED_SCHEMAS
from yardarm_fulfillment.payments import CHARGE_READERS, REFUND_READERS
from yardarm_fulfillment.shipping import CANCEL_READERS, SCHEDULE_READERS

from .conftest import (
    Bus,
    Event,
    StartFulfillment,
    base_url,
    charge,
    charge_v2,
    refund,
    refund_v2,
    schedule,
)

LEDGER = "SELECT kind, status, amount_cents, currency, card_last4 FROM payments"


def saga() -> str:
    return str(uuid.uuid4())


def without_ids(event: Event) -> dict[str, Any]:
    """A reply's data with the per-saga ids left out, to compare two sagas' replies."""
    ids = {"order_id", "charge_id", "refund_id"}
    return {k: v for k, v in event.envelope.data.items() if k not in ids}


async def ledger(db: asyncpg.Connection, saga_id: str) -> list[tuple[Any, ...]]:
    rows = await db.fetch(f"{LEDGER} WHERE saga_id = $1 ORDER BY kind", saga_id)
    return [tuple(r) for r in rows]


def test_every_command_reads_exactly_the_accepted_schemas() -> None:
    for readers in (CHARGE_READERS, REFUND_READERS, SCHEDULE_READERS, CANCEL_READERS):
        assert set(readers) == set(ACCEPTED_SCHEMAS) == {1, 2}


async def test_charge_and_refund_have_the_same_outcome_in_schema_1_and_schema_2(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    await start_fulfillment()
    old, new = saga(), saga()
    await bus.send(charge(old, amount_cents=4200), schema=1)
    await bus.send(charge_v2(new, cents=4200, currency="USD"), schema=2)
    [old_charged] = await bus.wait_events(old)
    [new_charged] = await bus.wait_events(new)
    await bus.send(refund(old, amount_cents=4200), schema=1)
    await bus.send(refund_v2(new, cents=4200, currency="USD"), schema=2)
    old_events = await bus.wait_events(old, 2)
    new_events = await bus.wait_events(new, 2)

    assert [e.subject for e in old_events] == ["evt.payments.charged", "evt.payments.refunded"]
    assert [e.subject for e in new_events] == [e.subject for e in old_events]
    for old_event, new_event in zip(old_events, new_events, strict=True):
        assert without_ids(old_event) == without_ids(new_event)
        assert old_event.headers["yardarm-schema"] == new_event.headers["yardarm-schema"] == "1"
    assert old_charged.envelope.data["amount_cents"] == new_charged.envelope.data["amount_cents"]
    assert new_events[1].envelope.data["charge_id"] == new_charged.envelope.data["charge_id"]
    expected = [
        ("charge", "charged", 4200, "USD", "4242"),
        ("refund", "refunded", 4200, "USD", "4242"),
    ]
    assert await ledger(db, old) == expected
    assert await ledger(db, new) == expected


async def test_a_declined_card_is_declined_in_both_schemas(
    bus: Bus, start_fulfillment: StartFulfillment
) -> None:
    await start_fulfillment()
    old, new = saga(), saga()
    await bus.send(charge(old, card="4000000000000002"), schema=1)
    await bus.send(charge_v2(new, card="4000000000000002"), schema=2)
    [old_event] = await bus.wait_events(old)
    [new_event] = await bus.wait_events(new)
    assert old_event.subject == new_event.subject == "evt.payments.declined"
    assert without_ids(old_event) == without_ids(new_event) == {"reason": "card declined"}


async def test_the_ledger_keeps_the_charge_currency_and_a_refund_returns_it(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    service = await start_fulfillment()
    saga_id = saga()
    await bus.send(charge_v2(saga_id, cents=1999, currency="EUR"), schema=2)
    await bus.wait_events(saga_id)
    # The refund's own amount and currency are not what goes back: the charge row is.
    await bus.send(refund_v2(saga_id, cents=5, currency="GBP"), schema=2)
    events = await bus.wait_events(saga_id, 2)
    assert events[1].subject == "evt.payments.refunded"
    assert events[1].envelope.data["amount_cents"] == 1999
    assert await ledger(db, saga_id) == [
        ("charge", "charged", 1999, "EUR", "4242"),
        ("refund", "refunded", 1999, "EUR", "4242"),
    ]
    async with httpx.AsyncClient(base_url=base_url(service)) as client:
        view = (await client.get(f"/payments/{saga_id}")).json()
    assert [e["currency"] for e in view["entries"]] == ["EUR", "EUR"]


async def test_a_schema_1_refund_of_a_schema_2_charge_returns_the_charge_currency(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    """A previous-version orders service may compensate a charge the current one made."""
    await start_fulfillment()
    saga_id = saga()
    await bus.send(charge_v2(saga_id, cents=700, currency="JPY"), schema=2)
    await bus.wait_events(saga_id)
    await bus.send(refund(saga_id, amount_cents=700), schema=1)
    await bus.wait_events(saga_id, 2)
    assert await ledger(db, saga_id) == [
        ("charge", "charged", 700, "JPY", "4242"),
        ("refund", "refunded", 700, "JPY", "4242"),
    ]


async def test_a_schema_2_refund_of_a_never_charged_saga_records_its_currency(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    await start_fulfillment()
    saga_id = saga()
    await bus.send(refund_v2(saga_id, cents=300, currency="EUR"), schema=2)
    [event] = await bus.wait_events(saga_id)
    assert event.envelope.data["amount_cents"] == 0
    assert await ledger(db, saga_id) == [("refund", "refunded", 0, "EUR", None)]


async def test_a_schema_2_charge_sent_twice_under_new_transport_ids_charges_once(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    await start_fulfillment()
    saga_id = saga()
    envelope = charge_v2(saga_id)
    await bus.send(envelope, schema=2, msg_id="transport-a")
    await bus.send(envelope, schema=2, msg_id="transport-b")
    events = await bus.wait_events(saga_id, settle=True)
    assert [e.subject for e in events] == ["evt.payments.charged"]
    assert await db.fetchval("SELECT count(*) FROM payments WHERE saga_id = $1", saga_id) == 1


async def test_shipping_commands_read_the_same_under_both_schemas(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    await start_fulfillment()
    old, new = saga(), saga()
    await bus.send(schedule(old), schema=1)
    await bus.send(schedule(new), schema=2)
    [old_event] = await bus.wait_events(old)
    [new_event] = await bus.wait_events(new)
    assert old_event.subject == new_event.subject == "evt.shipping.scheduled"
    rows = await db.fetch(
        "SELECT saga_id, status, items FROM shipments WHERE saga_id = ANY($1::text[])", [old, new]
    )
    assert {r["saga_id"]: (r["status"], json.loads(r["items"])) for r in rows} == {
        old: ("scheduled", [{"sku": "anchor", "quantity": 2}]),
        new: ("scheduled", [{"sku": "anchor", "quantity": 2}]),
    }
