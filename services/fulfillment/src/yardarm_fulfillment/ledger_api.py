"""Read-only HTTP views of the ledgers, for people and tests checking what happened."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
from aiohttp import web
from yardarm_kit import Problem

MAX_SAGA_ID_LENGTH = 200


def _saga_id(request: web.Request) -> str:
    saga_id = request.match_info["saga_id"]
    if len(saga_id) > MAX_SAGA_ID_LENGTH:
        raise Problem(400, "Invalid saga id", f"a saga id has at most {MAX_SAGA_ID_LENGTH} chars")
    return saga_id


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def add_routes(app: web.Application, pool: Callable[[], asyncpg.Pool]) -> None:
    """`GET /payments/{saga_id}` and `GET /shipments/{saga_id}`; 404 problem when none."""

    async def payments(request: web.Request) -> web.Response:
        saga_id = _saga_id(request)
        rows = await pool().fetch(
            """
            SELECT id, order_id, kind, amount_cents, currency, card_last4, status, reason,
                   refund_of, created_at
              FROM payments WHERE saga_id = $1 ORDER BY created_at, kind
            """,
            saga_id,
        )
        if not rows:
            raise Problem(404, "No payments", f"no payment is recorded for saga {saga_id}")
        entries = [
            {
                "id": str(row["id"]),
                "order_id": row["order_id"],
                "kind": row["kind"],
                "amount_cents": row["amount_cents"],
                "currency": row["currency"],
                "card_last4": row["card_last4"],
                "status": row["status"],
                "reason": row["reason"],
                "refund_of": None if row["refund_of"] is None else str(row["refund_of"]),
                "created_at": _iso(row["created_at"]),
            }
            for row in rows
        ]
        return web.json_response({"saga_id": saga_id, "entries": entries})

    async def shipment(request: web.Request) -> web.Response:
        saga_id = _saga_id(request)
        row = await pool().fetchrow(
            """
            SELECT order_id, shipment_id, status, reason, items, customer_id, created_at,
                   updated_at
              FROM shipments WHERE saga_id = $1
            """,
            saga_id,
        )
        if row is None:
            raise Problem(404, "No shipment", f"no shipment is recorded for saga {saga_id}")
        return web.json_response(
            {
                "saga_id": saga_id,
                "order_id": row["order_id"],
                "shipment_id": str(row["shipment_id"]),
                "status": row["status"],
                "reason": row["reason"],
                "items": row["items"],
                "customer_id": row["customer_id"],
                "created_at": _iso(row["created_at"]),
                "updated_at": _iso(row["updated_at"]),
            }
        )

    app.router.add_get("/payments/{saga_id}", payments)
    app.router.add_get("/shipments/{saga_id}", shipment)
