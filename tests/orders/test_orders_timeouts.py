"""Step timeouts on a real process: silent participants get re-sends, then compensation.

The process runs with a 3 s step timeout and re-sends after 0.5 s (doubling to 1 s), so
each saga here times out within seconds; waits allow many times that.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from yardarm_kit.messaging import Envelope

from tests.orders.conftest import (
    OrdersProcess,
    _stop,
    order_body,
    seed_stock,
    start_orders,
    stock_available,
)
from tests.orders.participant import SUCCESS, Participant

TIMEOUT_S = 3.0
FAST_SAGA = {
    "YARDARM_ORDERS_CHARGE_TIMEOUT_S": str(TIMEOUT_S),
    "YARDARM_ORDERS_SHIPPING_TIMEOUT_S": str(TIMEOUT_S),
    "YARDARM_ORDERS_RESEND_AFTER_S": "0.5",
    "YARDARM_ORDERS_RESEND_MAX_S": "1",
}
WAIT_S = 20 * TIMEOUT_S


@pytest.fixture
def fast_orders(
    tmp_path: Path, pg_database: str, nats_url: str, datastore_url: str
) -> Iterator[OrdersProcess]:
    proc, service = start_orders(
        tmp_path,
        dsn=pg_database,
        nats_url=nats_url,
        datastore_url=datastore_url,
        extra_env=FAST_SAGA,
    )
    try:
        yield service
    finally:
        _stop(proc)


def place(service: OrdersProcess, quantity: int) -> str:
    response = service.post(order_body([{"sku": "rope", "quantity": quantity}]), str(uuid.uuid4()))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def ids(participant: Participant, order_id: str, subject: str) -> list[str]:
    return [env.id for env, _ in participant.received(order_id, subject)]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_charge_never_answered_is_resent_then_refunded_released_and_cancelled(
    fast_orders: OrdersProcess, nats_url: str
) -> None:
    seed_stock(fast_orders.datastore_url, {"rope": (250, 10)})
    refunds_only = {"cmd.payments.refund": SUCCESS["cmd.payments.refund"]}
    async with Participant(nats_url) as participant, participant.answering(refunds_only):
        order_id = place(fast_orders, 3)
        order = await fast_orders.wait_status(order_id, {"CANCELLED", "CONFIRMED"}, WAIT_S)

    assert order["status"] == "CANCELLED"
    assert order["reason"].startswith("payments.charge timed out: no reply after")
    charges = ids(participant, order_id, "cmd.payments.charge")
    assert charges[:2] == [f"{order_id}:payments.charge", f"{order_id}:payments.charge:2"]
    assert len(set(charges)) == len(charges)  # every re-send is a new message
    assert ids(participant, order_id, "cmd.payments.refund")[0] == f"{order_id}:payments.refund"
    assert stock_available(fast_orders.datastore_url, "rope") == 10
    steps = [(h["step"], h["outcome"]) for h in order["history"]]
    assert steps.count(("payments.charge", "resent")) == len(charges) - 1
    for expected in [
        ("step.timeout", "applied"),
        ("payments.refunded", "applied"),
        ("stock.release", "released"),
        ("stock.released", "applied"),
    ]:
        assert expected in steps, steps
    assert order["saga"]["state"] == "CANCELLED" and order["saga"]["step"] is None

    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"{fast_orders.url}/metrics")).text
    assert metric(metrics, "yardarm_saga_step_timeouts_total", step="CHARGING") == 1
    assert metric(metrics, "yardarm_saga_compensations_total", step="REFUNDING") == 1
    assert metric(metrics, "yardarm_saga_compensations_total", step="RELEASING") == 1
    resends = metric(metrics, "yardarm_saga_command_resends_total", command="payments.charge")
    assert resends == len(charges) - 1


def first_refund_lost(envelope: Envelope) -> tuple[str, dict[str, str]] | None:
    if envelope.id.endswith(":payments.refund"):  # the first send: as if never delivered
        return None
    return "payments.refunded", {"refund_id": "rf-1"}


async def test_a_shipment_never_answered_is_cancelled_then_refunded_with_retries(
    fast_orders: OrdersProcess, nats_url: str
) -> None:
    seed_stock(fast_orders.datastore_url, {"rope": (250, 10)})
    answers = {
        "cmd.payments.charge": SUCCESS["cmd.payments.charge"],
        "cmd.shipping.cancel": SUCCESS["cmd.shipping.cancel"],
        "cmd.payments.refund": first_refund_lost,
    }
    async with Participant(nats_url) as participant, participant.answering(answers):
        order_id = place(fast_orders, 2)
        order = await fast_orders.wait_status(order_id, {"CANCELLED", "CONFIRMED"}, WAIT_S)

    assert order["status"] == "CANCELLED"
    assert order["reason"].startswith("shipping.schedule timed out")
    assert len(ids(participant, order_id, "cmd.shipping.schedule")) >= 2
    subjects = [s.msg.subject for s in participant.seen if s.envelope.saga_id == order_id]
    # compensation in reverse: the shipment is cancelled before the money goes back
    assert subjects.index("cmd.shipping.cancel") < subjects.index("cmd.payments.refund")
    refunds = ids(participant, order_id, "cmd.payments.refund")
    # the refund is sent until it is answered: the lost first send is followed by another
    assert refunds[:2] == [f"{order_id}:payments.refund", f"{order_id}:payments.refund:2"]
    assert stock_available(fast_orders.datastore_url, "rope") == 10
    cancels = [h for h in order["history"] if h["step"] == "shipping.cancelled"]
    assert [h["outcome"] for h in cancels][:1] == ["applied"]
