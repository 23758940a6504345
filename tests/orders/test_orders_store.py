"""The SQL layer against a real Postgres: idempotent creation, leases, transitions, inbox."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from yardarm_kit.messaging import Envelope
from yardarm_kit.metrics import Metrics
from yardarm_orders import order_store
from yardarm_orders.order_store import InFlight, NewOrder
from yardarm_orders.saga import store
from yardarm_orders.saga.definition import SagaState, Trigger, decide
from yardarm_orders.saga.metrics import SagaMetrics
from yardarm_orders.saga.replies import ReplyHandler
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
        assert saga["state"] == "RESERVING" and saga["card"] == CARD
        stored = await conn.fetchrow("SELECT card_last4, status FROM orders")
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


async def test_two_workers_never_claim_the_same_saga(pool: asyncpg.Pool) -> None:
    orders = [new_order() for _ in range(6)]
    async with pool.acquire() as conn:
        for i, order in enumerate(orders):
            await order_store.create(conn, order, key=f"k{i}", request_hash="h")

    async def claim(owner: str) -> uuid.UUID | None:
        async with pool.acquire() as conn:
            saga = await store.claim_local(conn, owner, 30)
        return None if saga is None else saga.order_id

    claimed = await asyncio.gather(*(claim(f"w{i}") for i in range(6)))
    assert sorted(map(str, claimed)) == sorted(str(o.id) for o in orders)
    async with pool.acquire() as conn:
        assert await store.claim_local(conn, "late", 30) is None  # all leased


async def test_an_expired_lease_is_taken_over_and_the_old_owner_is_fenced_out(
    pool: asyncpg.Pool,
) -> None:
    order = new_order()
    async with pool.acquire() as conn:
        await order_store.create(conn, order, key="k", request_hash="h")
        assert await store.claim_local(conn, "old", 0.2) is not None
        await asyncio.sleep(0.4)
        taken = await store.claim_local(conn, "new", 30)
        assert taken is not None and taken.order_id == order.id
        with pytest.raises(store.LeaseLost):
            await store.hold_lease(conn, order.id, "old", 30)
        await store.hold_lease(conn, order.id, "new", 30)


async def test_a_retried_step_waits_for_its_next_attempt(pool: asyncpg.Pool) -> None:
    order = new_order()
    async with pool.acquire() as conn:
        await order_store.create(conn, order, key="k", request_hash="h")
        await store.claim_local(conn, "w", 30)
        assert await store.schedule_retry(conn, order.id, "w", 0.5) == 1
        assert await store.claim_local(conn, "w", 30) is None
        await asyncio.sleep(0.7)
        again = await store.claim_local(conn, "w", 30)
        assert again is not None and again.attempts == 1


async def test_reserved_writes_charge_command_with_the_card_then_forgets_the_card(
    pool: asyncpg.Pool,
) -> None:
    order = new_order()
    async with pool.acquire() as conn:
        await order_store.create(conn, order, key="k", request_hash="h")
        saga = await store.claim_local(conn, "w", 30)
        assert saga is not None
        async with conn.transaction():
            wrote = await store.apply_decision(
                conn,
                saga,
                decide(saga.state, Trigger.STOCK_RESERVED),
                step="stock.reserved",
                detail=None,
                traceparent=order.traceparent,
                trace_id=order.trace_id,
            )
        assert wrote
        row = await conn.fetchrow("SELECT subject, msg_id, payload, traceparent FROM outbox")
        assert row["subject"] == "cmd.payments.charge"
        assert row["msg_id"] == f"{order.id}:payments.charge"
        assert row["traceparent"] == order.traceparent
        assert row["payload"] == {
            "type": "payments.charge",
            "id": f"{order.id}:payments.charge",
            "saga_id": str(order.id),
            "data": {"order_id": str(order.id), "amount_cents": 500, "card": CARD},
        }
        saga_row = await conn.fetchrow("SELECT state, card, lease_owner FROM sagas")
        assert saga_row["state"] == "CHARGING"
        assert saga_row["card"] is None and saga_row["lease_owner"] is None


@dataclass
class _Delivery:
    """What the consumer hands the handler besides the envelope: the subject it came on."""

    subject: str


async def test_a_reply_delivered_twice_has_one_effect(pool: asyncpg.Pool) -> None:
    order = new_order()
    async with pool.acquire() as conn:
        await order_store.create(conn, order, key="k", request_hash="h")
        await conn.execute("UPDATE sagas SET state = 'CHARGING'")
    nudged: list[str] = []
    handler = ReplyHandler(
        pool,
        metrics=saga_metrics(),
        log=logging.getLogger("test"),
        on_outbox=lambda: nudged.append("outbox"),
        on_local_step=lambda: nudged.append("worker"),
    )
    reply = Envelope(
        type="payments.charged",
        id=f"{order.id}:payments.charge:reply",
        saga_id=str(order.id),
        data={"order_id": str(order.id), "charge_id": "ch_1"},
    )
    await handler(reply, _Delivery("evt.payments.charged"))
    await handler(reply, _Delivery("evt.payments.charged"))
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT state FROM sagas") == "SHIPPING"
        subjects = [r["subject"] for r in await conn.fetch("SELECT subject FROM outbox")]
        assert subjects == ["cmd.shipping.schedule"]
        steps = [r["step"] for r in await conn.fetch("SELECT step FROM saga_history")]
        assert steps.count("payments.charged") == 1
    assert nudged == ["outbox"]


async def test_a_reply_for_a_state_left_behind_is_recorded_as_ignored(pool: asyncpg.Pool) -> None:
    order = new_order()
    async with pool.acquire() as conn:
        await order_store.create(conn, order, key="k", request_hash="h")
    handler = ReplyHandler(
        pool,
        metrics=saga_metrics(),
        log=logging.getLogger("test"),
        on_outbox=lambda: None,
        on_local_step=lambda: None,
    )
    late = Envelope(
        type="shipping.scheduled",
        id=f"{order.id}:shipping.schedule:reply",
        saga_id=str(order.id),
        data={"order_id": str(order.id), "shipment_id": "sh_1"},
    )
    await handler(late, _Delivery("evt.shipping.scheduled"))
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT state FROM sagas") == SagaState.RESERVING.value
        last = await conn.fetchrow("SELECT step, outcome FROM saga_history ORDER BY seq DESC")
        assert (last["step"], last["outcome"]) == ("shipping.scheduled", "ignored")
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
