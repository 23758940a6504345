"""SQL for sagas: claiming due steps under a lease, per-SKU progress, transitions.

A transition writes the saga state (with the new step's deadline and when it is next
due), the order's status and reason, a history row and, when the step sends a command,
the outbox row, all on the caller's connection inside the caller's transaction, so they
commit or vanish together.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from yardarm_kit.postgres import Connection

from yardarm_orders.saga.definition import OrderStatus, SagaState


class LeaseLost(Exception):
    """Another worker owns this saga now (our lease expired); stop working on it."""


@dataclass(frozen=True)
class SagaRow:
    order_id: UUID
    state: SagaState
    # Local steps: failed runs so far. Remote steps: commands sent so far.
    attempts: int
    step_started_at: datetime
    deadline_at: datetime | None
    traceparent: str | None
    trace_id: str | None
    now: datetime  # the database's clock when the row was read (every replica shares it)


@dataclass(frozen=True)
class Reservation:
    sku: str
    quantity: int
    state: str  # pending | reserved | released
    reserve_attempt: int
    release_attempt: int
    # The datastore write of the last attempt, `{"attempt", "value", "if_version"}` (None
    # before the first; of an older attempt when a previous version recorded the last).
    reserve_request: dict[str, Any] | None = None
    release_request: dict[str, Any] | None = None


_SAGA_COLUMNS = """
    s.order_id, s.state, s.attempts, s.step_started_at, s.deadline_at,
    o.traceparent, o.trace_id, now() AS now
"""


def _saga(row: asyncpg.Record) -> SagaRow:
    return SagaRow(
        order_id=row["order_id"],
        state=SagaState(row["state"]),
        attempts=row["attempts"],
        step_started_at=row["step_started_at"],
        deadline_at=row["deadline_at"],
        traceparent=row["traceparent"],
        trace_id=row["trace_id"],
        now=row["now"],
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


async def claim_due(
    conn: Connection, owner: str, lease_s: float, states: Collection[SagaState]
) -> SagaRow | None:
    """Lease the saga in one of `states` that has been due longest; None when none is."""
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
                     ORDER BY next_attempt_at
                     LIMIT 1
                       FOR UPDATE SKIP LOCKED)
            RETURNING *
        )
        SELECT {_SAGA_COLUMNS} FROM claimed s JOIN orders o ON o.id = s.order_id
        """,
        owner,
        lease_s,
        [state.value for state in states],
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


async def hold_lease(conn: Connection, order_id: UUID, owner: str, lease_s: float) -> SagaRow:
    """Extend our lease, or raise LeaseLost; row-locks the saga for the caller's
    transaction and returns it as it is now."""
    row = await conn.fetchrow(
        f"""
        WITH held AS (
            UPDATE sagas SET lease_until = now() + make_interval(secs => $3)
             WHERE order_id = $1 AND lease_owner = $2
            RETURNING *
        )
        SELECT {_SAGA_COLUMNS} FROM held s JOIN orders o ON o.id = s.order_id
        """,
        order_id,
        owner,
        lease_s,
    )
    if row is None:
        raise LeaseLost(str(order_id))
    return _saga(row)


async def reservations(conn: Connection, order_id: UUID) -> list[Reservation]:
    rows = await conn.fetch(
        "SELECT sku, quantity, state, reserve_attempt, release_attempt, reserve_request,"
        " release_request FROM reservations WHERE order_id = $1 ORDER BY sku",
        order_id,
    )
    return [
        Reservation(
            sku=row["sku"],
            quantity=row["quantity"],
            state=row["state"],
            reserve_attempt=row["reserve_attempt"],
            release_attempt=row["release_attempt"],
            reserve_request=row["reserve_request"],
            release_request=row["release_request"],
        )
        for row in rows
    ]


async def record_attempt(
    conn: Connection,
    order_id: UUID,
    sku: str,
    kind: str,
    attempt: int,
    request: dict[str, Any],
) -> None:
    """Note that datastore write number `attempt` of `kind` (reserve/release) is starting,
    and exactly what it sends (`{"attempt", "value", "if_version"}`)."""
    if kind not in ("reserve", "release"):
        raise ValueError(f"unknown stock write {kind!r}")
    await conn.execute(
        f"UPDATE reservations SET {kind}_attempt = $3, {kind}_request = $4"
        " WHERE order_id = $1 AND sku = $2",
        order_id,
        sku,
        attempt,
        request,
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


async def enter_state(
    conn: Connection,
    order_id: UUID,
    state: SagaState,
    *,
    attempts: int,
    first_wait_s: float | None,
    timeout_s: float | None,
    keep_card: bool,
) -> None:
    """Move the saga into `state`: lease released, the step's clock started, its deadline
    set (remote steps), and due after `first_wait_s` (None: never, a terminal state)."""
    await conn.execute(
        """
        UPDATE sagas
           SET state = $2, lease_owner = NULL, lease_until = NULL, attempts = $3,
               next_attempt_at = CASE WHEN $4::float8 IS NULL THEN 'infinity'::timestamptz
                                      ELSE now() + make_interval(secs => $4::float8) END,
               deadline_at = CASE WHEN $5::float8 IS NULL THEN NULL
                                  ELSE now() + make_interval(secs => $5::float8) END,
               step_started_at = now(), updated_at = now(),
               card = CASE WHEN $6 THEN card ELSE NULL END
         WHERE order_id = $1
        """,
        order_id,
        state.value,
        attempts,
        first_wait_s,
        timeout_s,
        keep_card,
    )


async def set_order_status(
    conn: Connection, order_id: UUID, status: OrderStatus, reason: str | None
) -> None:
    """The order's status, and its reason when `reason` is given (a reason is never unset)."""
    await conn.execute(
        """
        UPDATE orders SET status = $2, reason = COALESCE($3, reason), updated_at = now()
         WHERE id = $1
        """,
        order_id,
        status.value,
        reason,
    )


async def schedule_resend(
    conn: Connection,
    order_id: UUID,
    *,
    sends: int,
    deadline_at: datetime | None,
    next_at: datetime | None,
) -> None:
    """After a re-send: the count of sends, the deadline, when it is due next; lease freed."""
    await conn.execute(
        """
        UPDATE sagas
           SET lease_owner = NULL, lease_until = NULL, attempts = $2, deadline_at = $3,
               next_attempt_at = COALESCE($4, 'infinity'::timestamptz), updated_at = now()
         WHERE order_id = $1
        """,
        order_id,
        sends,
        deadline_at,
        next_at,
    )
