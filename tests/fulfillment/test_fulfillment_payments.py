"""The payment participant over real JetStream and Postgres, service in-process."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from .conftest import (
    CARD_DECLINED,
    Bus,
    StartFulfillment,
    base_url,
    charge,
    metric_value,
    new_traceparent,
    refund,
)


def saga() -> str:
    return str(uuid.uuid4())


async def test_a_good_card_is_charged_and_the_reply_continues_the_trace(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    service = await start_fulfillment()
    saga_id = saga()
    traceparent, trace_id = new_traceparent()
    await bus.send(charge(saga_id, amount_cents=4200), traceparent=traceparent)

    [event] = await bus.wait_events(saga_id)
    assert event.subject == "evt.payments.charged"
    assert event.envelope.type == "payments.charged"
    assert event.envelope.id == f"{saga_id}:payments.charge:reply"
    assert event.headers["Nats-Msg-Id"] == event.envelope.id
    assert event.envelope.data["order_id"] == saga_id
    assert event.envelope.data["amount_cents"] == 4200
    assert event.headers["traceparent"].split("-")[1] == trace_id
    # The reply's parent is fulfillment's consumer span, not the command's producer span.
    assert event.headers["traceparent"].split("-")[2] != traceparent.split("-")[2]

    rows = await db.fetch("SELECT * FROM payments WHERE saga_id = $1", saga_id)
    assert len(rows) == 1
    assert rows[0]["kind"] == "charge" and rows[0]["status"] == "charged"
    assert rows[0]["amount_cents"] == 4200 and rows[0]["card_last4"] == "4242"
    assert str(rows[0]["id"]) == event.envelope.data["charge_id"]

    async with httpx.AsyncClient(base_url=base_url(service)) as client:
        view = await client.get(f"/payments/{saga_id}")
    assert view.status_code == 200
    [entry] = view.json()["entries"]
    assert entry["status"] == "charged" and entry["card_last4"] == "4242"
    assert "4242424242424242" not in view.text
    assert metric_value(service, "yardarm_payments_total", outcome="charged") == 1


async def test_the_full_card_number_is_stored_nowhere(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    await start_fulfillment()
    saga_id = saga()
    await bus.send(charge(saga_id, card="4111111111111111"))
    await bus.wait_events(saga_id)
    for table in ("payments", "outbox", "inbox", "shipments"):
        dump = await db.fetchval(f"SELECT coalesce(string_agg(t::text, ' '), '') FROM {table} t")
        assert "4111111111111111" not in dump, table


async def test_the_decline_card_is_declined(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    await start_fulfillment()
    saga_id = saga()
    await bus.send(charge(saga_id, card=CARD_DECLINED))
    [event] = await bus.wait_events(saga_id)
    assert event.subject == "evt.payments.declined"
    assert event.envelope.data == {"order_id": saga_id, "reason": "card declined"}
    status = await db.fetchval("SELECT status FROM payments WHERE saga_id = $1", saga_id)
    assert status == "declined"


async def test_a_card_failing_luhn_is_declined_as_invalid(
    bus: Bus, start_fulfillment: StartFulfillment
) -> None:
    await start_fulfillment()
    saga_id = saga()
    await bus.send(charge(saga_id, card="4242424242424241"))
    [event] = await bus.wait_events(saga_id)
    assert event.subject == "evt.payments.declined"
    assert event.envelope.data["reason"] == "invalid card number"


async def test_a_command_delivered_twice_under_different_msg_ids_charges_once(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    service = await start_fulfillment()
    saga_id = saga()
    envelope = charge(saga_id)
    await bus.send(envelope, msg_id="transport-1")
    await bus.send(envelope, msg_id="transport-2")
    events = await bus.wait_events(saga_id, settle=True)
    assert [e.subject for e in events] == ["evt.payments.charged"]
    assert await db.fetchval("SELECT count(*) FROM payments WHERE saga_id = $1", saga_id) == 1
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE msg_id LIKE $1", f"{saga_id}%") == 1
    assert metric_value(service, "yardarm_consumer_messages_total", outcome="duplicate") == 1
    assert metric_value(service, "yardarm_consumer_messages_total", outcome="processed") == 1


async def test_another_charge_command_for_a_charged_saga_answers_with_the_same_charge(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    await start_fulfillment()
    saga_id = saga()
    first = charge(saga_id)
    retry = first.model_copy(update={"id": f"{saga_id}:payments.charge:retry"})
    await bus.send(first)
    await bus.wait_events(saga_id)
    await bus.send(retry)
    events = await bus.wait_events(saga_id, 2)
    assert {e.envelope.data["charge_id"] for e in events} == {events[0].envelope.data["charge_id"]}
    assert await db.fetchval("SELECT count(*) FROM payments WHERE saga_id = $1", saga_id) == 1


async def test_refund_after_charge_refunds_the_charged_amount_once(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    service = await start_fulfillment()
    saga_id = saga()
    await bus.send(charge(saga_id, amount_cents=3100))
    [charged] = await bus.wait_events(saga_id)
    await bus.send(refund(saga_id, amount_cents=3100))
    await bus.send(refund(saga_id).model_copy(update={"id": f"{saga_id}:payments.refund:2"}))
    events = await bus.wait_events(saga_id, 3, settle=True)
    refunds = [e for e in events if e.subject == "evt.payments.refunded"]
    assert len(refunds) == 2
    assert len({e.envelope.data["refund_id"] for e in refunds}) == 1
    assert refunds[0].envelope.data["amount_cents"] == 3100
    assert refunds[0].envelope.data["charge_id"] == charged.envelope.data["charge_id"]
    rows = await db.fetch(
        "SELECT kind, status, amount_cents FROM payments WHERE saga_id = $1 ORDER BY kind",
        saga_id,
    )
    assert [tuple(r) for r in rows] == [("charge", "charged", 3100), ("refund", "refunded", 3100)]
    assert metric_value(service, "yardarm_payments_total", outcome="refunded") == 1


async def test_refund_of_a_never_charged_saga_refunds_nothing_and_blocks_a_late_charge(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    await start_fulfillment()
    saga_id = saga()
    await bus.send(refund(saga_id))
    [refunded] = await bus.wait_events(saga_id)
    assert refunded.subject == "evt.payments.refunded"
    assert refunded.envelope.data["amount_cents"] == 0
    assert refunded.envelope.data["note"] == "nothing to refund"
    await bus.send(charge(saga_id))
    events = await bus.wait_events(saga_id, 2)
    assert events[1].subject == "evt.payments.declined"
    assert events[1].envelope.data["reason"] == "order already refunded"
    charged = await db.fetchval(
        "SELECT count(*) FROM payments WHERE saga_id = $1 AND status = 'charged'", saga_id
    )
    assert charged == 0


async def test_ledger_views_answer_404_problems_for_unknown_sagas(
    bus: Bus, start_fulfillment: StartFulfillment
) -> None:
    service = await start_fulfillment()
    async with httpx.AsyncClient(base_url=base_url(service)) as client:
        for path in ("/payments/nope", "/shipments/nope"):
            response = await client.get(path)
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "nope" in response.json()["detail"]
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"postgres": True, "nats": True}
        too_long = await client.get("/payments/" + "x" * 300)
        assert too_long.status_code == 422
        assert too_long.json()["errors"][0]["field"] == "path.saga_id"
