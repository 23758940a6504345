"""Orders against Postgres and NATS containers: its migrations, whole sagas with the real
fulfillment, and commands JetStream keeps across a restart of the NATS container.

Orders runs as a process (`python -m yardarm_orders`, tests/orders' `orders_service`),
fulfillment in the test's event loop (tests/fulfillment's `start_fulfillment`), each on a
database of its own in the Postgres container; outcomes are judged with the end-to-end
saga checks (tests/e2e/saga_ledger.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import asyncpg
import httpx
import pytest
from yardarm_kit.messaging import Envelope
from yardarm_kit.postgres import bundled_migrations

from tests.conftest import fresh_database
from tests.e2e.saga_ledger import (
    check_exactly_once,
    check_money,
    check_outcomes,
    check_recorded_as_planned,
    check_stock,
    check_terminal,
    read_history,
    read_orders,
    read_payments,
    read_shipments,
)
from tests.e2e.saga_workload import CARD_DECLINED, CARD_OK, NOSHIP_PREFIX, PlannedOrder
from tests.fulfillment.conftest import Bus, StartFulfillment, wait_until
from tests.integration.conftest import NatsServer
from tests.orders.conftest import OrdersProcess, seed_stock, stock_available

TERMINAL = {"CONFIRMED", "CANCELLED"}
PRICES = {"rope": 250, "lamp": 1999}
STOCK = {"rope": 20, "lamp": 5}


@pytest.fixture
async def fulfillment_dsn(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """Fulfillment's own database in the Postgres container, as in a stack (request it
    before `start_fulfillment`, so the service stops before its database is dropped)."""
    async with fresh_database(postgres_admin_dsn) as dsn:
        yield dsn


def ok(n: int, *items: tuple[str, int]) -> PlannedOrder:
    return PlannedOrder(f"ok-{n}", "ok", f"cust-{n}", CARD_OK, items)


async def place(service: OrdersProcess, entry: PlannedOrder) -> str:
    """POST /orders with the entry's key as its Idempotency-Key; the order's id."""
    async with httpx.AsyncClient(timeout=20) as client:
        response = await client.post(
            f"{service.url}/orders", json=entry.body(), headers={"Idempotency-Key": entry.key}
        )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def judge(
    service: OrdersProcess,
    fulfillment_dsn: str,
    planned: Sequence[PlannedOrder],
    ids: dict[str, str],
) -> None:
    """Every order terminal, as its plan entry allows, charged and shipped at most once,
    and the stock adds up."""
    orders_db = await asyncpg.create_pool(service.dsn, min_size=1, max_size=2)
    ledger_db = await asyncpg.create_pool(fulfillment_dsn, min_size=1, max_size=2)
    try:
        orders = await read_orders(orders_db)
        payments = await read_payments(ledger_db)
        shipments = await read_shipments(ledger_db)
    finally:
        await orders_db.close()
        await ledger_db.close()
    left = {sku: stock_available(service.datastore_url, sku) for sku in STOCK}
    violations = [
        *check_terminal(orders),
        *check_exactly_once(planned, ids, orders),
        *check_recorded_as_planned(planned, ids, orders, PRICES),
        *check_outcomes(planned, ids, orders, contended=()),
        *check_money(planned, orders, payments, shipments, PRICES),
        *check_stock(STOCK, left, planned, ids, orders),
    ]
    assert violations == []


async def test_orders_migrates_and_its_sagas_end_as_planned_with_fulfillment_on_containers(
    orders_service: OrdersProcess, fulfillment_dsn: str, start_fulfillment: StartFulfillment
) -> None:
    seed_stock(orders_service.datastore_url, {sku: (PRICES[sku], n) for sku, n in STOCK.items()})
    await start_fulfillment(database_url=fulfillment_dsn)
    planned = [
        ok(1, ("rope", 3), ("lamp", 1)),
        ok(2, ("rope", 2)),
        PlannedOrder("declined-3", "declined", "cust-3", CARD_DECLINED, (("lamp", 1),)),
        PlannedOrder("noship-4", "noship", f"{NOSHIP_PREFIX}4", CARD_OK, (("rope", 1),)),
        PlannedOrder("oversized-5", "oversized", "cust-5", CARD_OK, (("lamp", 6),)),
    ]
    ids = {entry.key: await place(orders_service, entry) for entry in planned}
    final = {key: await orders_service.wait_status(i, TERMINAL) for key, i in ids.items()}

    assert {key: order["status"] for key, order in final.items()} == {
        "ok-1": "CONFIRMED",
        "ok-2": "CONFIRMED",
        "declined-3": "CANCELLED",
        "noship-4": "CANCELLED",
        "oversized-5": "CANCELLED",
    }
    await judge(orders_service, fulfillment_dsn, planned, ids)
    conn = await asyncpg.connect(orders_service.dsn)
    try:  # orders' migrations ran at start-up, against the container's Postgres
        applied = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
    finally:
        await conn.close()
    assert sorted(applied) == sorted(m.name for m in bundled_migrations("yardarm_orders"))


async def test_commands_stored_before_nats_is_replaced_are_consumed_after_it(
    orders_service: OrdersProcess,
    fulfillment_dsn: str,
    start_fulfillment: StartFulfillment,
    bus: Bus,
    nats_container: NatsServer,
) -> None:
    """The NATS container is stopped and replaced by a new one on the same volume. Orders
    re-sends nothing here (`orders_service` waits minutes before a re-send), so an order
    confirmed after it had its command kept by JetStream on that volume."""
    seed_stock(orders_service.datastore_url, {sku: (PRICES[sku], n) for sku, n in STOCK.items()})
    fulfillment = await start_fulfillment(database_url=fulfillment_dsn)
    before, stored, during = ok(1, ("rope", 1)), ok(2, ("lamp", 2)), ok(3, ("rope", 4))
    ids = {before.key: await place(orders_service, before)}
    await orders_service.wait_status(ids[before.key], {"CONFIRMED"})

    await fulfillment.service.stop()  # commands now wait in the stream
    ids[stored.key] = await place(orders_service, stored)
    charge_id = f"{ids[stored.key]}:payments.charge"
    await wait_stored(bus, charge_id)

    await nats_container.stop()  # and removed: what it kept is on its volume
    ids[during.key] = await place(orders_service, during)  # accepted while NATS is away
    await nats_container.start()

    await start_fulfillment(database_url=fulfillment_dsn, instance="fulfillment-after")
    for key in (stored.key, during.key):
        order = await orders_service.wait_status(ids[key], TERMINAL)
        assert order["status"] == "CONFIRMED", order

    await judge(orders_service, fulfillment_dsn, [before, stored, during], ids)
    commands = [m for m in await bus.stored("COMMANDS") if envelope_id(m.data) == charge_id]
    assert len(commands) == 1, "the charge was sent again: nothing shows it was kept"
    orders_db = await asyncpg.create_pool(orders_service.dsn, min_size=1, max_size=1)
    try:
        history = await read_history(orders_db)
    finally:
        await orders_db.close()
    assert all(outcome != "resent" for _, outcome in history[ids[stored.key]])


def envelope_id(data: bytes) -> str:
    return Envelope.model_validate_json(data).id


async def wait_stored(bus: Bus, envelope: str, timeout: float = 30.0) -> None:
    """Until the COMMANDS stream holds the command with envelope id `envelope`."""

    async def stored() -> bool:
        return any(envelope_id(m.data) == envelope for m in await bus.stored("COMMANDS"))

    await wait_until(stored, timeout=timeout, what=f"{envelope} in COMMANDS")
