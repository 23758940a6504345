"""`POST /orders/{id}/cancel` and the semantic lock, on a real process."""

from __future__ import annotations

import uuid
from datetime import datetime

import httpx

from tests.orders.conftest import OrdersProcess, order_body, seed_stock, stock_available
from tests.orders.participant import Participant
from tests.orders.test_orders_api import assert_problem
from tests.orders.test_orders_timeouts import metric


def place(service: OrdersProcess, quantity: int) -> str:
    response = service.post(order_body([{"sku": "rope", "quantity": quantity}]), str(uuid.uuid4()))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def cancel(service: OrdersProcess, order_id: str) -> httpx.Response:
    return httpx.post(f"{service.url}/orders/{order_id}/cancel", timeout=10)


def test_cancelling_an_unknown_order_is_404_and_a_malformed_id_422(
    orders_service: OrdersProcess,
) -> None:
    assert_problem(cancel(orders_service, str(uuid.uuid4())), 404)
    assert_problem(cancel(orders_service, "not-a-uuid"), 422)


async def test_cancel_while_the_saga_runs_is_409_naming_the_state_and_changes_nothing(
    orders_service: OrdersProcess, nats_url: str
) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 10)})
    async with Participant(nats_url) as participant:
        order_id = place(orders_service, 1)
        await participant.expect(order_id, "cmd.payments.charge")  # and no answer: CHARGING
        before = orders_service.get(order_id).json()
        response = cancel(orders_service, order_id)
        problem = assert_problem(response, 409)
        assert problem["state"] == "CHARGING" and problem["step"] == "payments.charge"
        assert "CHARGING" in str(problem["detail"])
        assert 1 <= int(response.headers["Retry-After"]) <= 30
        after = orders_service.get(order_id).json()
        assert after == before  # the lock refused the cancel without touching the order

    saga = after["saga"]
    assert saga["state"] == "CHARGING" and saga["step"] == "payments.charge"
    assert saga["attempts"] == 1
    started = datetime.fromisoformat(saga["step_started_at"])
    deadline = datetime.fromisoformat(saga["deadline_at"])
    assert (deadline - started).total_seconds() == 600  # the configured charge timeout
    assert after["status"] == "PENDING" and after["currency"] == "USD"


async def test_cancelling_a_confirmed_order_compensates_every_step_in_reverse(
    orders_service: OrdersProcess, nats_url: str
) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 10)})
    async with Participant(nats_url) as participant:
        order_id = place(orders_service, 4)
        charge, _ = await participant.expect(order_id, "cmd.payments.charge")
        await participant.reply(charge, "payments.charged", charge_id="ch_1")
        ship, _ = await participant.expect(order_id, "cmd.shipping.schedule")
        await participant.reply(ship, "shipping.scheduled", shipment_id="sh_1")
        await orders_service.wait_status(order_id, {"CONFIRMED"})
        assert stock_available(orders_service.datastore_url, "rope") == 6

        started = cancel(orders_service, order_id)
        assert started.status_code == 202, started.text
        assert started.headers["Location"] == f"/orders/{order_id}"
        body = started.json()
        assert body["status"] == "PENDING" and body["reason"] == "cancelled on request"
        assert body["saga"]["state"] == "CANCELLING_SHIPMENT"
        assert body["saga"]["deadline_at"] is None  # compensations never time out

        # the order is locked while its cancellation runs
        again = cancel(orders_service, order_id)
        assert assert_problem(again, 409)["state"] == "CANCELLING_SHIPMENT"

        stop, _ = await participant.expect(order_id, "cmd.shipping.cancel")
        assert stop.data == {"order_id": order_id, "reason": "cancelled on request"}
        assert participant.received(order_id, "cmd.payments.refund") == []  # not yet
        await participant.reply(stop, "shipping.cancelled", shipment_id="sh_1")
        refund, _ = await participant.expect(order_id, "cmd.payments.refund")
        assert refund.data["amount"] == {"cents": 1000, "currency": "USD"}
        assert stock_available(orders_service.datastore_url, "rope") == 6  # money first
        await participant.reply(refund, "payments.refunded", refund_id="rf_1")
        order = await orders_service.wait_status(order_id, {"CANCELLED"})

    assert order["reason"] == "cancelled on request"
    assert stock_available(orders_service.datastore_url, "rope") == 10
    steps = [(h["step"], h["outcome"]) for h in order["history"]]
    assert steps.index(("order.cancel", "applied")) < steps.index(("shipping.cancelled", "applied"))
    done = cancel(orders_service, order_id)
    assert done.status_code == 200 and done.json()["status"] == "CANCELLED"
    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"{orders_service.url}/metrics")).text
    for step in ("CANCELLING_SHIPMENT", "REFUNDING", "RELEASING"):
        assert metric(metrics, "yardarm_saga_compensations_total", step=step) == 1, step
