"""Whole sagas on real processes: the test plays payments and shipping over JetStream."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from tests.orders.conftest import (
    CARD_OK,
    OrdersProcess,
    order_body,
    seed_stock,
    stock_available,
)
from tests.orders.participant import Participant

TERMINAL = {"CONFIRMED", "CANCELLED"}


def place(service: OrdersProcess, items: list[dict[str, object]], **kwargs: str) -> str:
    response = service.post(order_body(items, **kwargs), str(uuid.uuid4()))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def test_charged_and_scheduled_confirms_and_takes_exactly_the_stock(
    orders_service: OrdersProcess, nats_url: str
) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 10), "lamp": (1999, 4)})
    async with Participant(nats_url) as participant:
        order_id = place(
            orders_service,
            [{"sku": "rope", "quantity": 3}, {"sku": "lamp", "quantity": 1}],
            customer="c-42",
        )
        charge, msg = await participant.expect(order_id, "cmd.payments.charge")
        assert charge.id == f"{order_id}:payments.charge"
        assert charge.data == {
            "order_id": order_id,
            "amount": {"cents": 3 * 250 + 1999, "currency": "USD"},
            "card": CARD_OK,
        }
        assert msg.headers is not None and msg.headers["yardarm-schema"] == "2"
        trace_id = orders_service.get(order_id).json()["trace_id"]
        assert msg.headers is not None and trace_id in msg.headers["traceparent"]
        # stock is reserved before the charge is asked for
        assert stock_available(orders_service.datastore_url, "rope") == 7
        assert stock_available(orders_service.datastore_url, "lamp") == 3

        await participant.reply(charge, "payments.charged", charge_id="ch_1")
        ship, msg = await participant.expect(order_id, "cmd.shipping.schedule")
        assert ship.id == f"{order_id}:shipping.schedule"
        assert ship.data["customer_id"] == "c-42"
        assert sorted((i["sku"], i["quantity"]) for i in ship.data["items"]) == [
            ("lamp", 1),
            ("rope", 3),
        ]
        assert msg.headers is not None and trace_id in msg.headers["traceparent"]

        await participant.reply(ship, "shipping.scheduled", shipment_id="sh_1")
        order = await orders_service.wait_status(order_id, TERMINAL)

    assert order["status"] == "CONFIRMED" and order["reason"] is None
    assert stock_available(orders_service.datastore_url, "rope") == 7
    assert stock_available(orders_service.datastore_url, "lamp") == 3
    steps = [(h["step"], h["outcome"]) for h in order["history"]]
    assert steps[0] == ("order.created", "ok")
    for expected in [
        ("stock.reserve", "reserved"),
        ("stock.reserved", "applied"),
        ("payments.charged", "applied"),
        ("shipping.scheduled", "applied"),
    ]:
        assert expected in steps, steps
    assert {h["trace_id"] for h in order["history"]} == {trace_id}

    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"{orders_service.url}/metrics")).text
    terminal = [m for m in metrics.splitlines() if m.startswith("yardarm_sagas_terminal_total{")]
    assert any('status="CONFIRMED"' in m and m.endswith(" 1.0") for m in terminal), terminal
    assert any(
        m.startswith("yardarm_saga_steps_total{")
        and 'step="SHIPPING"' in m
        and 'outcome="shipping.scheduled"' in m
        for m in metrics.splitlines()
    )
    assert "yardarm_saga_step_duration_seconds_bucket{" in metrics
    assert "yardarm_outbox_pending{" in metrics

    conn = await asyncpg.connect(orders_service.dsn)
    try:  # once published, no row keeps the card number
        payloads = await conn.fetch("SELECT payload::text AS p, published_at FROM outbox")
        assert payloads and all(row["published_at"] is not None for row in payloads)
        assert all(CARD_OK not in row["p"] for row in payloads)
        assert await conn.fetchval("SELECT count(*) FROM sagas WHERE card IS NOT NULL") == 0
    finally:
        await conn.close()


async def test_declined_payment_cancels_and_restores_the_stock(
    orders_service: OrdersProcess, nats_url: str
) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 10)})
    async with Participant(nats_url) as participant:
        order_id = place(orders_service, [{"sku": "rope", "quantity": 4}])
        charge, _ = await participant.expect(order_id, "cmd.payments.charge")
        assert stock_available(orders_service.datastore_url, "rope") == 6
        await participant.reply(charge, "payments.declined", reason="card declined")
        order = await orders_service.wait_status(order_id, TERMINAL)
        await participant.settle(1.0)
        assert participant.received(order_id, "cmd.payments.refund") == []
        assert participant.received(order_id, "cmd.shipping.schedule") == []
    assert order["status"] == "CANCELLED"
    assert order["reason"] == "payment declined: card declined"
    assert stock_available(orders_service.datastore_url, "rope") == 10
    assert ("stock.release", "released") in [(h["step"], h["outcome"]) for h in order["history"]]


async def test_failed_shipping_refunds_then_releases_and_cancels(
    orders_service: OrdersProcess, nats_url: str
) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 10)})
    async with Participant(nats_url) as participant:
        order_id = place(orders_service, [{"sku": "rope", "quantity": 2}])
        charge, _ = await participant.expect(order_id, "cmd.payments.charge")
        await participant.reply(charge, "payments.charged", charge_id="ch_9")
        ship, _ = await participant.expect(order_id, "cmd.shipping.schedule")
        # a reply that lost the trace context must not split the saga's trace
        await participant.reply(
            ship, "shipping.failed", keep_trace=False, reason="no carrier for the address"
        )
        refund, msg = await participant.expect(order_id, "cmd.payments.refund")
        trace_id = orders_service.get(order_id).json()["trace_id"]
        assert msg.headers is not None and trace_id in msg.headers["traceparent"]
        assert refund.id == f"{order_id}:payments.refund"
        assert refund.data == {"order_id": order_id, "amount": {"cents": 500, "currency": "USD"}}
        # the stock stays reserved until the money is back
        assert stock_available(orders_service.datastore_url, "rope") == 8
        assert orders_service.get(order_id).json()["status"] == "PENDING"
        await participant.reply(refund, "payments.refunded", refund_id="rf_1")
        order = await orders_service.wait_status(order_id, TERMINAL)
    assert order["status"] == "CANCELLED"
    assert order["reason"] == "shipping failed: no carrier for the address"
    assert stock_available(orders_service.datastore_url, "rope") == 10


async def test_a_duplicate_reply_under_another_message_id_has_no_second_effect(
    orders_service: OrdersProcess, nats_url: str
) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 10)})
    async with Participant(nats_url) as participant:
        order_id = place(orders_service, [{"sku": "rope", "quantity": 1}])
        charge, _ = await participant.expect(order_id, "cmd.payments.charge")
        charged = await participant.reply(charge, "payments.charged", charge_id="ch_1")
        ship, _ = await participant.expect(order_id, "cmd.shipping.schedule")
        await participant.redeliver(charged)
        scheduled = await participant.reply(ship, "shipping.scheduled", shipment_id="sh_1")
        await orders_service.wait_status(order_id, TERMINAL)
        await participant.redeliver(scheduled)
        await participant.redeliver(charged)
        await participant.settle(2.0)
        assert len(participant.received(order_id, "cmd.shipping.schedule")) == 1
        assert len(participant.received(order_id)) == 2
    order = orders_service.get(order_id).json()
    assert order["status"] == "CONFIRMED"
    steps = [h["step"] for h in order["history"]]
    assert steps.count("payments.charged") == 1 and steps.count("shipping.scheduled") == 1
    assert stock_available(orders_service.datastore_url, "rope") == 9


async def test_more_than_the_stock_cancels_for_stock_and_keeps_every_unit(
    orders_service: OrdersProcess, nats_url: str
) -> None:
    seed_stock(orders_service.datastore_url, {"a-rope": (250, 10), "b-sextant": (42000, 5)})
    async with Participant(nats_url) as participant:
        # a-rope is reserved first, then b-sextant is short: a-rope must be given back
        order_id = place(
            orders_service,
            [{"sku": "a-rope", "quantity": 2}, {"sku": "b-sextant", "quantity": 6}],
        )
        order = await orders_service.wait_status(order_id, TERMINAL)
        await participant.settle(1.0)
        assert participant.received(order_id) == []  # never charged
    assert order["status"] == "CANCELLED"
    assert order["reason"] == "insufficient stock for b-sextant"
    assert stock_available(orders_service.datastore_url, "a-rope") == 10
    assert stock_available(orders_service.datastore_url, "b-sextant") == 5
    steps = [(h["step"], h["outcome"]) for h in order["history"]]
    assert ("stock.reserve", "reserved") in steps and ("stock.release", "released") in steps
