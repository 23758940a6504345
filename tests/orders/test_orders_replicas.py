"""Two orders replicas on one database: concurrent sagas share the stock exactly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.orders.conftest import (
    PATIENT_SAGA,
    OrdersProcess,
    _stop,
    order_body,
    seed_stock,
    start_orders,
    stock_available,
)
from tests.orders.participant import Participant


@pytest.fixture
def two_replicas(
    tmp_path: Path, pg_database: str, nats_url: str, datastore_url: str
) -> Iterator[list[OrdersProcess]]:
    started = []
    try:
        for i in range(2):
            started.append(
                start_orders(
                    tmp_path,
                    dsn=pg_database,
                    nats_url=nats_url,
                    datastore_url=datastore_url,
                    instance=f"orders-{i}",
                    extra_env=PATIENT_SAGA,
                )
            )
        yield [service for _, service in started]
    finally:
        for proc, _ in started:
            _stop(proc)


async def test_concurrent_orders_on_two_replicas_never_oversell(
    two_replicas: list[OrdersProcess], nats_url: str
) -> None:
    first = two_replicas[0]
    seed_stock(first.datastore_url, {"rope": (250, 10)})
    quantities = [1, 2, 1, 3, 2, 1, 2, 1, 3, 1]  # 17 wanted, 10 in stock
    async with Participant(nats_url) as participant, participant.answering():
        async with httpx.AsyncClient(timeout=20) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        f"{two_replicas[i % 2].url}/orders",
                        json=order_body([{"sku": "rope", "quantity": q}]),
                        headers={"Idempotency-Key": str(uuid.uuid4())},
                    )
                    for i, q in enumerate(quantities)
                )
            )
        assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
        orders = [
            await two_replicas[i % 2].wait_status(
                r.json()["id"], {"CONFIRMED", "CANCELLED"}, timeout=120
            )
            for i, r in enumerate(responses)
        ]
    confirmed = sum(o["items"][0]["quantity"] for o in orders if o["status"] == "CONFIRMED")
    cancelled = [o for o in orders if o["status"] == "CANCELLED"]
    assert confirmed + stock_available(first.datastore_url, "rope") == 10
    assert confirmed >= 8  # any order that fits is served; only the leftovers are refused
    assert cancelled and all(o["reason"] == "insufficient stock for rope" for o in cancelled)
