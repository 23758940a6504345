"""The engine against a real Postgres: transitions, command shapes, re-sends and timeouts."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg
import pytest
from prometheus_client import generate_latest
from yardarm_kit.metrics import Metrics
from yardarm_kit.postgres import Connection
from yardarm_orders import order_store
from yardarm_orders.saga import store
from yardarm_orders.saga.commands import CommandWriter
from yardarm_orders.saga.definition import RUNNING_STATES, SagaState, Trigger
from yardarm_orders.saga.engine import Applied, SagaEngine
from yardarm_orders.saga.metrics import SagaMetrics
from yardarm_orders.saga.steps import SagaTiming, order_saga
from yardarm_orders.settings import OrdersSettings

from tests.orders.test_orders_store import CARD, new_order

TIMING = SagaTiming(charge_timeout_s=30, shipping_timeout_s=20, resend_after_s=5, resend_max_s=8)


def make_engine(schema: int = 2) -> tuple[SagaEngine, Metrics]:
    settings = OrdersSettings(
        port=1, database_url="postgresql://x", nats_url="nats://x", datastore_urls=["http://x"]
    )
    metrics = Metrics(settings)
    engine = SagaEngine(
        order_saga(TIMING), CommandWriter(schema), SagaMetrics(metrics), logging.getLogger("t")
    )
    return engine, metrics


async def placed(conn: Connection) -> uuid.UUID:
    order = new_order()
    await order_store.create(conn, order, key=str(order.id), request_hash="h")
    return order.id


async def fire(
    engine: SagaEngine, conn: Connection, order_id: uuid.UUID, trigger: Trigger
) -> Applied:
    async with conn.transaction():
        saga = await store.lock_saga(conn, order_id)
        assert saga is not None
        applied = await engine.fire(conn, saga, trigger, "detail")
    engine.observe(applied)
    return applied


async def due_now(engine: SagaEngine, conn: Connection, *, past_deadline: bool = False) -> Applied:
    """Make the saga due (and optionally past its deadline), then claim and run it."""
    await conn.execute("UPDATE sagas SET next_attempt_at = now()")
    if past_deadline:
        await conn.execute("UPDATE sagas SET deadline_at = now() - interval '1 second'")
    claimed = await store.claim_due(conn, "w", 30, RUNNING_STATES)
    assert claimed is not None
    async with conn.transaction():
        held = await store.hold_lease(conn, claimed.order_id, "w", 30)
        applied = await engine.on_due(conn, held)
    engine.observe(applied)
    return applied


async def one(conn: Connection, sql: str) -> asyncpg.Record:
    row = await conn.fetchrow(sql)
    assert row is not None, sql
    return row


async def outbox(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT subject, msg_id, payload, schema FROM outbox ORDER BY id")


def sample(metrics: Metrics, line_start: str) -> float:
    text = generate_latest(metrics.registry).decode()
    found = [line for line in text.splitlines() if line.startswith(line_start)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in found)


@pytest.mark.parametrize(
    ("schema", "amount"),
    [(1, {"amount_cents": 500}), (2, {"amount": {"cents": 500, "currency": "USD"}})],
)
async def test_reserved_sends_the_charge_in_the_replicas_schema_and_keeps_the_card_to_resend(
    pool: asyncpg.Pool, schema: int, amount: dict[str, Any]
) -> None:
    engine, _ = make_engine(schema)
    async with pool.acquire() as conn:
        order_id = await placed(conn)
        applied = await fire(engine, conn, order_id, Trigger.STOCK_RESERVED)
        assert applied.wrote_outbox and applied.target is SagaState.CHARGING
        (row,) = await outbox(conn)
        assert (row["subject"], row["msg_id"], row["schema"]) == (
            "cmd.payments.charge",
            f"{order_id}:payments.charge",
            schema,
        )
        assert row["payload"]["data"] == {"order_id": str(order_id), "card": CARD, **amount}
        saga = await one(
            conn,
            "SELECT state, card, attempts, deadline_at - step_started_at AS timeout,"
            " next_attempt_at - step_started_at AS first_wait, lease_owner FROM sagas",
        )
        assert saga["state"] == "CHARGING" and saga["card"] == CARD  # a re-send needs it
        assert saga["attempts"] == 1 and saga["lease_owner"] is None
        assert saga["timeout"].total_seconds() == 30 and saga["first_wait"].total_seconds() == 5

        await fire(engine, conn, order_id, Trigger.PAYMENT_CHARGED)
        ship = (await outbox(conn))[-1]
        assert ship["subject"] == "cmd.shipping.schedule" and ship["schema"] == schema
        assert ship["payload"]["data"] == {
            "order_id": str(order_id),
            "customer_id": "c-1",
            "items": [{"sku": "rope", "quantity": 2}],
        }
        saga = await one(conn, "SELECT state, card, deadline_at - now() AS left FROM sagas")
        assert saga["state"] == "SHIPPING" and saga["card"] is None
        assert 0 < saga["left"].total_seconds() <= 20


async def test_a_charge_without_reply_is_resent_with_new_ids_then_times_out_into_a_refund(
    pool: asyncpg.Pool,
) -> None:
    engine, metrics = make_engine()
    async with pool.acquire() as conn:
        order_id = await placed(conn)
        await fire(engine, conn, order_id, Trigger.STOCK_RESERVED)
        for send in (2, 3):
            applied = await due_now(engine, conn)
            assert applied.decision is None and applied.send == send
        rows = await outbox(conn)
        assert [r["msg_id"] for r in rows] == [
            f"{order_id}:payments.charge",
            f"{order_id}:payments.charge:2",
            f"{order_id}:payments.charge:3",
        ]
        assert all(r["payload"]["data"]["card"] == CARD for r in rows)
        saga = await one(
            conn,
            "SELECT state, attempts, lease_owner, next_attempt_at <= deadline_at AS bounded,"
            " next_attempt_at - now() AS wait FROM sagas",
        )
        assert saga["state"] == "CHARGING" and saga["attempts"] == 3
        assert saga["lease_owner"] is None and saga["bounded"]
        assert 7 < saga["wait"].total_seconds() <= 8  # the backoff, capped at resend_max_s

        applied = await due_now(engine, conn, past_deadline=True)
        assert applied.trigger is Trigger.TIMED_OUT and applied.target is SagaState.REFUNDING
        refund = (await outbox(conn))[-1]
        assert refund["msg_id"] == f"{order_id}:payments.refund"
        assert refund["payload"]["data"]["amount"] == {"cents": 500, "currency": "USD"}
        order = await one(
            conn,
            "SELECT o.status, o.reason, s.card, s.deadline_at, s.attempts"
            " FROM orders o JOIN sagas s ON s.order_id = o.id",
        )
        assert order["status"] == "PENDING" and order["card"] is None
        assert order["reason"].startswith("payments.charge timed out: no reply after 3 sends")
        assert order["deadline_at"] is None and order["attempts"] == 1  # refunds never time out

        # a compensation keeps re-sending until its reply comes, whatever the wait
        applied = await due_now(engine, conn, past_deadline=True)
        assert applied.sent is not None and applied.send == 2
        assert (await outbox(conn))[-1]["msg_id"] == f"{order_id}:payments.refund:2"
        history = await conn.fetch("SELECT step, outcome FROM saga_history ORDER BY seq")
        steps = [(h["step"], h["outcome"]) for h in history]
        assert steps.count(("payments.charge", "resent")) == 2
        assert ("step.timeout", "applied") in steps and ("payments.refund", "resent") in steps

    assert sample(metrics, "yardarm_saga_command_resends_total{") == 3
    assert sample(metrics, "yardarm_saga_step_timeouts_total{") == 1
    assert sample(metrics, "yardarm_saga_compensations_total{") == 1


async def test_a_shipping_timeout_cancels_the_shipment_with_the_orders_reason(
    pool: asyncpg.Pool,
) -> None:
    engine, _ = make_engine(schema=1)
    async with pool.acquire() as conn:
        order_id = await placed(conn)
        await fire(engine, conn, order_id, Trigger.STOCK_RESERVED)
        await fire(engine, conn, order_id, Trigger.PAYMENT_CHARGED)
        applied = await due_now(engine, conn, past_deadline=True)
        assert applied.target is SagaState.CANCELLING_SHIPMENT
        cancel = (await outbox(conn))[-1]
        assert cancel["subject"] == "cmd.shipping.cancel" and cancel["schema"] == 1
        reason = cancel["payload"]["data"]["reason"]
        assert cancel["payload"]["data"] == {"order_id": str(order_id), "reason": reason}
        assert reason.startswith("shipping.schedule timed out")
        await fire(engine, conn, order_id, Trigger.SHIPPING_CANCELLED)
        refund = (await outbox(conn))[-1]
        assert refund["payload"]["data"] == {"order_id": str(order_id), "amount_cents": 500}


async def test_a_reply_the_state_does_not_expect_is_recorded_and_changes_nothing(
    pool: asyncpg.Pool,
) -> None:
    engine, _ = make_engine()
    async with pool.acquire() as conn:
        order_id = await placed(conn)
        await fire(engine, conn, order_id, Trigger.STOCK_RESERVED)
        await due_now(engine, conn, past_deadline=True)  # CHARGING timed out: REFUNDING
        before = await one(conn, "SELECT * FROM sagas")
        late = await fire(engine, conn, order_id, Trigger.PAYMENT_CHARGED)
        assert late.decision is not None and late.decision.outcome == "ignored"
        assert not late.wrote_outbox
        assert await one(conn, "SELECT * FROM sagas") == before
        last = await one(conn, "SELECT step, outcome, detail FROM saga_history ORDER BY seq DESC")
        assert (last["step"], last["outcome"]) == ("payments.charged", "ignored")
        assert last["detail"] == "in state REFUNDING: detail"


async def test_a_saga_charging_under_the_previous_version_gets_resends_and_a_deadline(
    pool: asyncpg.Pool,
) -> None:
    """A 0001-era replica entered CHARGING with no deadline and attempts = 0."""
    engine, _ = make_engine()
    async with pool.acquire() as conn:
        await placed(conn)
        legacy = (
            "UPDATE sagas SET state = 'CHARGING', attempts = 0, deadline_at = NULL,"
            " step_started_at = now() - make_interval(secs => $1)"
        )
        await conn.execute(legacy, 1.0)
        applied = await due_now(engine, conn)
        assert applied.send == 2  # its first send came from the old replica
        deadline = await conn.fetchval("SELECT deadline_at - step_started_at FROM sagas")
        assert deadline.total_seconds() == 30

        await conn.execute(legacy, 3600.0)
        await conn.execute("UPDATE sagas SET deadline_at = NULL")
        applied = await due_now(engine, conn)
        assert applied.trigger is Trigger.TIMED_OUT and applied.target is SagaState.REFUNDING


async def test_a_legacy_charge_without_the_card_waits_for_its_reply_or_timeout(
    pool: asyncpg.Pool,
) -> None:
    """The previous version dropped the card with the first charge: nothing to re-send."""
    engine, _ = make_engine()
    async with pool.acquire() as conn:
        await placed(conn)
        await conn.execute(
            "UPDATE sagas SET state = 'CHARGING', attempts = 0, card = NULL, deadline_at = NULL,"
            " step_started_at = now()"
        )
        applied = await due_now(engine, conn)
        assert applied.sent is None and await outbox(conn) == []
        saga = await one(
            conn, "SELECT attempts, next_attempt_at = deadline_at AS waits, lease_owner FROM sagas"
        )
        assert saga["attempts"] == 0 and saga["waits"] and saga["lease_owner"] is None
        applied = await due_now(engine, conn, past_deadline=True)
        assert applied.target is SagaState.REFUNDING
