"""The SQL layer against a real Postgres: idempotent creation, claims and leases."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from yardarm_kit.metrics import Metrics
from yardarm_kit.postgres import Connection
from yardarm_orders import order_store
from yardarm_orders.order_store import InFlight, NewOrder
from yardarm_orders.saga import store
from yardarm_orders.saga.definition import RUNNING_STATES
from yardarm_orders.saga.metrics import SagaMetrics
from yardarm_orders.settings import OrdersSettings

CARD = "4242424242424242"


def new_order(**overrides: Any) -> NewOrder:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "customer_id": "c-1",
        "items": [{"sku": "rope", "quantity": 2, "name": "Rope", "price_cents": 250}],
        "total_cents": 500,
        "card": CARD,
        "trace_id": "ab" * 16,
        "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01",
    }
    fields.update(overrides)
    return NewOrder(**fields)


def saga_metrics() -> SagaMetrics:
    settings = OrdersSettings(
        port=1, database_url="postgresql://x", nats_url="nats://x", datastore_urls=["http://x"]
    )
    return SagaMetrics(Metrics(settings))


async def test_same_key_returns_the_first_order_and_one_saga(pool: asyncpg.Pool) -> None:
    first, second = new_order(), new_order()
    async with pool.acquire() as conn:
        a = await order_store.create(conn, first, key="k1", request_hash="h1")
        b = await order_store.create(conn, second, key="k1", request_hash="h1")
        assert a.order_id == b.order_id == first.id
        assert await conn.fetchval("SELECT count(*) FROM orders") == 1
        saga = await conn.fetchrow("SELECT state, card FROM sagas WHERE order_id = $1", first.id)
        assert saga is not None
        assert saga["state"] == "RESERVING" and saga["card"] == CARD
        stored = await conn.fetchrow("SELECT card_last4, status FROM orders")
        assert stored is not None
        assert stored["card_last4"] == "4242" and stored["status"] == "PENDING"
        history = await conn.fetch("SELECT step, outcome, trace_id FROM saga_history")
        assert [(h["step"], h["outcome"], h["trace_id"]) for h in history] == [
            ("order.created", "ok", "ab" * 16)
        ]
        assert (await order_store.find_by_key(conn, "k1")) == a


async def test_same_key_while_the_first_transaction_is_open_is_in_flight(
    pool: asyncpg.Pool,
) -> None:
    holder = await pool.acquire()
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "INSERT INTO idempotency_keys (key, request_hash, order_id) VALUES ($1, $2, $3)",
            "busy",
            "h",
            uuid.uuid4(),
        )
        async with pool.acquire() as conn:
            with pytest.raises(InFlight):
                await asyncio.wait_for(
                    order_store.create(conn, new_order(), key="busy", request_hash="h"), 10
                )
        await tx.rollback()
        async with pool.acquire() as conn:  # once the holder gave up, the key is free
            made = await order_store.create(conn, new_order(), key="busy", request_hash="h")
            assert await conn.fetchval("SELECT count(*) FROM orders WHERE id = $1", made.order_id)
    finally:
        await pool.release(holder)


async def claim(conn: Connection, owner: str, lease_s: float) -> store.SagaRow | None:
    return await store.claim_due(conn, owner, lease_s, RUNNING_STATES)


async def test_two_workers_never_claim_the_same_saga(pool: asyncpg.Pool) -> None:
    orders = [new_order() for _ in range(6)]
    async with pool.acquire() as conn:
        for i, order in enumerate(orders):
            await order_store.create(conn, order, key=f"k{i}", request_hash="h")

    async def claim_one(owner: str) -> uuid.UUID | None:
        async with pool.acquire() as conn:
            saga = await claim(conn, owner, 30)
        return None if saga is None else saga.order_id

    claimed = await asyncio.gather(*(claim_one(f"w{i}") for i in range(6)))
    assert sorted(map(str, claimed)) == sorted(str(o.id) for o in orders)
    async with pool.acquire() as conn:
        assert await claim(conn, "late", 30) is None  # all leased


async def test_an_expired_lease_is_taken_over_and_the_old_owner_is_fenced_out(
    pool: asyncpg.Pool,
) -> None:
    order = new_order()
    async with pool.acquire() as conn:
        await order_store.create(conn, order, key="k", request_hash="h")
        assert await claim(conn, "old", 0.2) is not None
        await asyncio.sleep(0.4)
        taken = await claim(conn, "new", 30)
        assert taken is not None and taken.order_id == order.id
        with pytest.raises(store.LeaseLost):
            await store.hold_lease(conn, order.id, "old", 30)
        held = await store.hold_lease(conn, order.id, "new", 30)
        assert held.order_id == order.id and held.trace_id == order.trace_id


async def test_a_retried_step_waits_for_its_next_attempt(pool: asyncpg.Pool) -> None:
    order = new_order()
    async with pool.acquire() as conn:
        await order_store.create(conn, order, key="k", request_hash="h")
        await claim(conn, "w", 30)
        assert await store.schedule_retry(conn, order.id, "w", 0.5) == 1
        assert await claim(conn, "w", 30) is None
        await asyncio.sleep(0.7)
        again = await claim(conn, "w", 30)
        assert again is not None and again.attempts == 1


async def test_only_running_sagas_that_are_due_are_claimed_oldest_due_first(
    pool: asyncpg.Pool,
) -> None:
    orders = [new_order() for _ in range(4)]
    async with pool.acquire() as conn:
        for i, order in enumerate(orders):
            await order_store.create(conn, order, key=f"k{i}", request_hash="h")
        states = ["CONFIRMED", "CHARGING", "REFUNDING", "CANCELLED"]
        dues = [-10, 3600, -5, -20]  # seconds from now
        for order, state, due in zip(orders, states, dues, strict=True):
            await conn.execute(
                "UPDATE sagas SET state = $2, next_attempt_at = now() + make_interval(secs => $3)"
                " WHERE order_id = $1",
                order.id,
                state,
                due,
            )
        first = await claim(conn, "w", 30)
        assert first is not None and first.order_id == orders[2].id  # REFUNDING, due
        assert await claim(conn, "w", 30) is None  # CHARGING is not due; the rest are done
