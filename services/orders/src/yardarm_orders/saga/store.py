"""SQL for sagas: claiming local steps under a lease, per-SKU progress, transitions.

A transition writes the saga state, the order's status and reason, a history row and,
when the step sends a command, the outbox row, all on the caller's connection inside
the caller's transaction, so they commit or vanish together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from yardarm_kit.postgres import Connection

from yardarm_orders.saga.definition import (
    LOCAL_STATES,
    CommandType,
    Decision,
    SagaState,
    status_of,
)


class LeaseLost(Exception):
    """Another worker owns this saga now (our lease expired); stop working on it."""


@dataclass(frozen=True)
class SagaRow:
    order_id: UUID
    state: SagaState
    attempts: int
    step_started_at: datetime
    traceparent: str | None
    trace_id: str | None


@dataclass(frozen=True)
class Reservation:
    sku: str
    quantity: int
    state: str  # pending | reserved | released
    reserve_attempt: int
    release_attempt: int


_SAGA_COLUMNS = """
    s.order_id, s.state, s.attempts, s.step_started_at, o.traceparent, o.trace_id
"""


def _saga(row: asyncpg.Record) -> SagaRow:
    return SagaRow(
        order_id=row["order_id"],
        state=SagaState(row["state"]),
        attempts=row["attempts"],
        step_started_at=row["step_started_at"],
        traceparent=row["traceparent"],
        trace_id=row["trace_id"],
    )


async def start_saga(
    conn: Connection,
    order_id: UUID,
    *,
    card: str,
    items: list[tuple[str, int]],
    trace_id: str | None,
) -> None:
    """The saga row (RESERVING), one pending reservation per SKU and the first history row."""
    await conn.execute(
        "INSERT INTO sagas (order_id, state, card) VALUES ($1, $2, $3)",
        order_id,
        SagaState.RESERVING.value,
        card,
    )
    await conn.executemany(
        "INSERT INTO reservations (order_id, sku, quantity) VALUES ($1, $2, $3)",
        [(order_id, sku, quantity) for sku, quantity in items],
    )
    await add_history(conn, order_id, "order.created", "ok", None, trace_id)


async def add_history(
    conn: Connection,
    order_id: UUID,
    step: str,
    outcome: str,
    detail: str | None,
    trace_id: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO saga_history (order_id, step, outcome, detail, trace_id)"
        " VALUES ($1, $2, $3, $4, $5)",
        order_id,
        step,
        outcome,
        detail,
        trace_id,
    )


async def claim_local(conn: Connection, owner: str, lease_s: float) -> SagaRow | None:
    """Lease the oldest due saga whose step runs here; None when there is none."""
    row = await conn.fetchrow(
        f"""
        WITH claimed AS (
            UPDATE sagas
               SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
             WHERE order_id = (
                    SELECT order_id FROM sagas
                     WHERE state = ANY($3::text[])
                       AND (lease_until IS NULL OR lease_until < now())
                       AND next_attempt_at <= now()
                     ORDER BY updated_at
                     LIMIT 1
                       FOR UPDATE SKIP LOCKED)
            RETURNING *
        )
        SELECT {_SAGA_COLUMNS} FROM claimed s JOIN orders o ON o.id = s.order_id
        """,
        owner,
        lease_s,
        [state.value for state in LOCAL_STATES],
    )
    return None if row is None else _saga(row)


async def lock_saga(conn: Connection, order_id: UUID) -> SagaRow | None:
    """The saga row, locked for the rest of the caller's transaction."""
    row = await conn.fetchrow(
        f"""
        SELECT {_SAGA_COLUMNS} FROM sagas s JOIN orders o ON o.id = s.order_id
         WHERE s.order_id = $1
           FOR UPDATE OF s
        """,
        order_id,
    )
    return None if row is None else _saga(row)


async def hold_lease(conn: Connection, order_id: UUID, owner: str, lease_s: float) -> None:
    """Extend our lease, or raise LeaseLost; row-locks the saga for the caller's transaction."""
    held = await conn.fetchval(
        """
        UPDATE sagas SET lease_until = now() + make_interval(secs => $3)
         WHERE order_id = $1 AND lease_owner = $2
        RETURNING true
        """,
        order_id,
        owner,
        lease_s,
    )
    if not held:
        raise LeaseLost(str(order_id))


async def reservations(conn: Connection, order_id: UUID) -> list[Reservation]:
    rows = await conn.fetch(
        "SELECT sku, quantity, state, reserve_attempt, release_attempt FROM reservations"
        " WHERE order_id = $1 ORDER BY sku",
        order_id,
    )
    return [
        Reservation(
            sku=row["sku"],
            quantity=row["quantity"],
            state=row["state"],
            reserve_attempt=row["reserve_attempt"],
            release_attempt=row["release_attempt"],
        )
        for row in rows
    ]


async def record_attempt(
    conn: Connection, order_id: UUID, sku: str, kind: str, attempt: int
) -> None:
    """Note that datastore write number `attempt` of `kind` (reserve/release) is starting."""
    column = {"reserve": "reserve_attempt", "release": "release_attempt"}[kind]
    await conn.execute(
        f"UPDATE reservations SET {column} = $3 WHERE order_id = $1 AND sku = $2",
        order_id,
        sku,
        attempt,
    )


async def mark_reservation(conn: Connection, order_id: UUID, sku: str, state: str) -> None:
    await conn.execute(
        "UPDATE reservations SET state = $3 WHERE order_id = $1 AND sku = $2",
        order_id,
        sku,
        state,
    )


async def schedule_retry(conn: Connection, order_id: UUID, owner: str, delay_s: float) -> int:
    """Give up the lease and make the step due again after `delay_s`; returns attempts."""
    attempts: int | None = await conn.fetchval(
        """
        UPDATE sagas
           SET lease_owner = NULL, lease_until = NULL, attempts = attempts + 1,
               next_attempt_at = now() + make_interval(secs => $3)
         WHERE order_id = $1 AND lease_owner = $2
        RETURNING attempts
        """,
        order_id,
        owner,
        delay_s,
    )
    if attempts is None:
        raise LeaseLost(str(order_id))
    return attempts


async def apply_decision(
    conn: Connection,
    saga: SagaRow,
    decision: Decision,
    *,
    step: str,
    detail: str | None,
    traceparent: str | None,
    trace_id: str | None,
) -> bool:
    """Write what `decision` says; returns True when an outbox row was written."""
    await add_history(conn, saga.order_id, step, decision.outcome, detail, trace_id)
    if decision.target is None:
        return False
    if decision.command is not None:
        # Before the saga update below, which drops the card the charge command carries.
        await enqueue_command(conn, saga.order_id, decision.command, traceparent)
    target = decision.target
    await conn.execute(
        """
        UPDATE sagas
           SET state = $2, lease_owner = NULL, lease_until = NULL, attempts = 0,
               next_attempt_at = now(), step_started_at = now(), updated_at = now(),
               card = CASE WHEN $3 THEN card ELSE NULL END
         WHERE order_id = $1
        """,
        saga.order_id,
        target.value,
        # The card stays only until the charge command carries it; then it is dropped.
        target is SagaState.RESERVING,
    )
    await conn.execute(
        """
        UPDATE orders SET status = $2, reason = COALESCE($3, reason), updated_at = now()
         WHERE id = $1
        """,
        saga.order_id,
        status_of(target).value,
        decision.reason,
    )
    return decision.command is not None


async def enqueue_command(
    conn: Connection, order_id: UUID, command: CommandType, traceparent: str | None
) -> None:
    """The command's envelope into the outbox; its id is deterministic (`<saga>:<type>`)."""
    order = await conn.fetchrow(
        "SELECT o.customer_id, o.items, o.total_cents, s.card"
        " FROM orders o JOIN sagas s ON s.order_id = o.id WHERE o.id = $1",
        order_id,
    )
    if order is None:
        raise LookupError(f"order {order_id} vanished inside its own transaction")
    oid = str(order_id)
    data: dict[str, Any]
    if command is CommandType.CHARGE:
        data = {"order_id": oid, "amount_cents": order["total_cents"], "card": order["card"]}
    elif command is CommandType.REFUND:
        data = {"order_id": oid, "amount_cents": order["total_cents"]}
    else:
        items = [{"sku": i["sku"], "quantity": i["quantity"]} for i in order["items"]]
        data = {"order_id": oid, "customer_id": order["customer_id"], "items": items}
    msg_id = f"{oid}:{command.value}"
    envelope = {"type": command.value, "id": msg_id, "saga_id": oid, "data": data}
    await conn.execute(
        "INSERT INTO outbox (subject, msg_id, payload, traceparent) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (msg_id) DO NOTHING",
        command.subject,
        msg_id,
        envelope,
        traceparent,
    )
