"""SQL behind the orders API: create an order exactly once per Idempotency-Key, read it back.

Creating writes the order, its idempotency key, the saga (RESERVING) and the first history
row in one transaction. A second request with the same key waits at most
`in_flight_wait` for the first transaction: if it is still open, the second gets
`InFlight` (409) instead of queueing behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from yardarm_kit.postgres import Connection

from yardarm_orders.saga import store as saga_store
from yardarm_orders.saga.definition import OrderStatus, Saga, SagaState


@dataclass(frozen=True)
class NewOrder:
    id: UUID
    customer_id: str
    items: list[dict[str, Any]]  # {"sku", "quantity", "name", "price_cents"}
    total_cents: int
    card: str
    trace_id: str | None
    traceparent: str | None


@dataclass(frozen=True)
class KeyedOrder:
    """The order an Idempotency-Key already names, and the hash of the body that made it."""

    order_id: UUID
    status: str
    request_hash: str


class InFlight(Exception):
    """The key's first request is still inside its creating transaction."""


@dataclass(frozen=True)
class HistoryEntry:
    step: str
    outcome: str
    detail: str | None
    trace_id: str | None
    at: datetime


@dataclass(frozen=True)
class SagaView:
    """Where the order's saga is: its state, the step running in it and that step's clock."""

    state: str
    step: str | None
    step_started_at: datetime
    deadline_at: datetime | None
    attempts: int


@dataclass(frozen=True)
class OrderView:
    id: UUID
    customer_id: str
    status: str
    reason: str | None
    items: list[dict[str, Any]]
    total_cents: int
    currency: str
    card_last4: str
    trace_id: str | None
    created_at: datetime
    updated_at: datetime
    history: list[HistoryEntry]
    saga: SagaView | None


async def find_by_key(conn: Connection, key: str) -> KeyedOrder | None:
    row = await conn.fetchrow(
        "SELECT k.order_id, k.request_hash, o.status FROM idempotency_keys k"
        " JOIN orders o ON o.id = k.order_id WHERE k.key = $1",
        key,
    )
    if row is None:
        return None
    return KeyedOrder(row["order_id"], row["status"], row["request_hash"])


async def create(
    conn: Connection,
    order: NewOrder,
    *,
    key: str,
    request_hash: str,
    in_flight_wait_ms: int = 100,
) -> KeyedOrder:
    """Create `order` under `key`, or return the order the key already names.

    Raises InFlight when another transaction holds the key uncommitted for longer than
    `in_flight_wait_ms`.
    """
    async with conn.transaction():
        # Inserting a key another open transaction inserted waits for that transaction;
        # the lock timeout turns a long wait into lock_not_available.
        await conn.execute(f"SET LOCAL lock_timeout = '{int(in_flight_wait_ms)}ms'")
        row: asyncpg.Record | None = None
        try:
            claimed = await conn.fetchval(
                "INSERT INTO idempotency_keys (key, request_hash, order_id) VALUES ($1, $2, $3)"
                " ON CONFLICT (key) DO NOTHING RETURNING true",
                key,
                request_hash,
                order.id,
            )
            if not claimed:
                row = await conn.fetchrow(
                    "SELECT k.order_id, k.request_hash, o.status FROM idempotency_keys k"
                    " JOIN orders o ON o.id = k.order_id WHERE k.key = $1 FOR UPDATE OF k NOWAIT",
                    key,
                )
        except asyncpg.LockNotAvailableError as exc:
            raise InFlight(key) from exc
        if not claimed:
            if row is None:  # the conflicting row was deleted between the two statements
                raise InFlight(key)
            return KeyedOrder(row["order_id"], row["status"], row["request_hash"])
        await conn.execute("SET LOCAL lock_timeout = 0")
        await conn.execute(
            """
            INSERT INTO orders (id, customer_id, items, total_cents, card_last4, status,
                                trace_id, traceparent)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            """,
            order.id,
            order.customer_id,
            order.items,
            order.total_cents,
            order.card[-4:],
            OrderStatus.PENDING.value,
            order.trace_id,
            order.traceparent,
        )
        await saga_store.start_saga(
            conn,
            order.id,
            card=order.card,
            items=[(item["sku"], item["quantity"]) for item in order.items],
            trace_id=order.trace_id,
        )
    return KeyedOrder(order.id, OrderStatus.PENDING.value, request_hash)


async def get(conn: Connection, order_id: UUID, saga: Saga) -> OrderView | None:
    """The order with its history and saga; `saga` names the step running in each state."""
    row = await conn.fetchrow(
        "SELECT o.id, o.customer_id, o.status, o.reason, o.items, o.total_cents, o.currency,"
        " o.card_last4, o.trace_id, o.created_at, o.updated_at, s.state, s.step_started_at,"
        " s.deadline_at, s.attempts"
        " FROM orders o LEFT JOIN sagas s ON s.order_id = o.id WHERE o.id = $1",
        order_id,
    )
    if row is None:
        return None
    history = await conn.fetch(
        "SELECT step, outcome, detail, trace_id, at FROM saga_history"
        " WHERE order_id = $1 ORDER BY seq",
        order_id,
    )
    return OrderView(
        id=row["id"],
        customer_id=row["customer_id"],
        status=row["status"],
        reason=row["reason"],
        items=row["items"],
        total_cents=row["total_cents"],
        currency=row["currency"],
        card_last4=row["card_last4"],
        trace_id=row["trace_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        history=[
            HistoryEntry(h["step"], h["outcome"], h["detail"], h["trace_id"], h["at"])
            for h in history
        ],
        saga=None if row["state"] is None else _saga_view(row, saga),
    )


def _saga_view(row: asyncpg.Record, saga: Saga) -> SagaView:
    state = SagaState(row["state"])
    phase = saga.phase(state)
    return SagaView(
        state=state.value,
        step=None if phase is None else phase.name,
        step_started_at=row["step_started_at"],
        deadline_at=row["deadline_at"],
        attempts=row["attempts"],
    )
