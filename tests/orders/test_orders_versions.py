"""Two versions side by side, as during a rollout: one replica sends message schema 1, the
other schema 2, on one database and one stream, in this process.

Either replica may run any saga's next step and consume any reply (one durable, one
table of sagas), so an order placed on one is often continued by the other; the
participant accepts both command shapes, as the real ones do.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from yardarm_orders import OrdersService, OrdersSettings, create_orders

from tests.conftest import free_port
from tests.orders.conftest import order_body, seed_stock
from tests.orders.participant import Participant, amount_cents

MAX_ROUNDS = 8
ORDERS_PER_REPLICA = 2
PRICE = 250


@pytest.fixture
async def versions(
    tmp_path: Path, pg_database: str, nats_url: str, datastore_url: str
) -> AsyncIterator[dict[int, OrdersService]]:
    """schema -> a started replica sending that schema."""
    replicas: dict[int, OrdersService] = {}
    try:
        for schema in (1, 2):
            settings = OrdersSettings(
                port=free_port(),
                instance=f"orders-schema{schema}",
                version=f"0.{schema}.0",
                state_dir=tmp_path / f"state-{schema}",
                database_url=pg_database,
                nats_url=nats_url,
                datastore_urls=[datastore_url],
                message_schema=schema,
                # re-sends and timeouts out of the way: this test is about the shapes
                resend_after_s=120,
                charge_timeout_s=600,
                shipping_timeout_s=600,
            )
            replicas[schema] = create_orders(settings)
            await replicas[schema].service.start()
        yield replicas
    finally:
        for replica in replicas.values():
            await replica.service.stop()


def url(replica: OrdersService) -> str:
    return f"http://127.0.0.1:{replica.settings.port}"


def charged_here(replica: OrdersService) -> float:
    """Charge replies this replica's consumer applied (each moves one saga to SHIPPING)."""
    text = generate_latest(replica.service.metrics.registry).decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("yardarm_saga_steps_total{")
        and 'step="CHARGING"' in line
        and 'outcome="payments.charged"' in line
    )


async def terminal(
    client: httpx.AsyncClient, base: str, order_id: str, participant: Participant
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        participant.check()
        order: dict[str, Any] = (await client.get(f"{base}/orders/{order_id}")).json()
        if order["status"] in {"CONFIRMED", "CANCELLED"}:
            return order
        assert time.monotonic() < deadline, order
        await asyncio.sleep(0.1)


async def test_schema_1_and_2_replicas_share_sagas_and_replies_and_both_complete(
    versions: dict[int, OrdersService], nats_url: str, datastore_url: str
) -> None:
    seed_stock(datastore_url, {"rope": (PRICE, 1000)})
    placed: dict[str, tuple[int, int]] = {}  # order id -> (replica schema, quantity)
    orders: dict[str, dict[str, Any]] = {}
    participant = Participant(nats_url)
    client = httpx.AsyncClient(timeout=20)
    async with participant, participant.answering(), client:
        for round_ in range(MAX_ROUNDS):
            for schema, replica in versions.items():
                for i in range(ORDERS_PER_REPLICA):
                    quantity = 1 + (round_ + i) % 3
                    response = await client.post(
                        f"{url(replica)}/orders",
                        json=order_body([{"sku": "rope", "quantity": quantity}]),
                        headers={"Idempotency-Key": str(uuid.uuid4())},
                    )
                    assert response.status_code == 202, response.text
                    placed[response.json()["id"]] = (schema, quantity)
            for order_id, (schema, _) in placed.items():
                if order_id not in orders:
                    orders[order_id] = await terminal(
                        client, url(versions[schema]), order_id, participant
                    )
            charges = [s for s in participant.seen if s.msg.subject == "cmd.payments.charge"]
            shapes = {s.schema for s in charges}
            if shapes == {1, 2} and all(charged_here(r) > 0 for r in versions.values()):
                break

    # orders placed on either version complete
    assert {schema for schema, _ in placed.values()} == {1, 2}
    assert all(order["status"] == "CONFIRMED" for order in orders.values()), orders
    # both command shapes went out, each read as its header says, for the right amount
    assert shapes == {1, 2}
    for seen in charges:
        _, quantity = placed[seen.envelope.saga_id]
        assert amount_cents(seen.envelope, seen.schema) == quantity * PRICE
        if seen.schema == 1:
            assert set(seen.envelope.data) == {"order_id", "amount_cents", "card"}
        else:
            assert set(seen.envelope.data) == {"order_id", "amount", "card"}
    ships = [s for s in participant.seen if s.msg.subject == "cmd.shipping.schedule"]
    assert {s.schema for s in ships} <= {1, 2} and len(ships) == len(orders)
    # every charge reply was applied exactly once, by one replica or the other
    applied = {schema: charged_here(replica) for schema, replica in versions.items()}
    assert sum(applied.values()) == len(orders)
    assert all(count > 0 for count in applied.values()), applied
