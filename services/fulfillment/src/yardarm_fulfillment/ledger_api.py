"""Read-only HTTP views of the ledgers, for people and tests checking what happened.

Both operations are registered with their OpenAPI description; every answer is built by
the model the document declares (`extra="forbid"`, every field required, nullable ones
marked), so the document is exactly what clients receive.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from yardarm_kit import ApiSpec, Param, Problem, Reply, params_of

MAX_SAGA_ID_LENGTH = 200
TAGS = ("ledgers",)
# Saga ids are whatever the commands carried (the orders saga uses the order's UUID);
# the view takes any text a ledger row can hold: 1-200 characters without U+0000
# (which Postgres text refuses, and the kit refuses in a URL).
SagaId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_SAGA_ID_LENGTH, pattern=r"^[^\u0000]{1,200}$"),
]
SAGA_ID = Param(
    "saga_id",
    "path",
    SagaId,
    f"the saga's id as its commands carried it (1 to {MAX_SAGA_ID_LENGTH} characters; "
    "the orders saga's id is its order's id)",
)


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PaymentEntry(_View):
    """One ledger row: a charge (charged or declined) or a refund."""

    id: UUID
    order_id: str
    kind: Literal["charge", "refund"]
    amount_cents: int = Field(ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    card_last4: str | None = Field(description="null for a refund with nothing charged")
    status: Literal["charged", "declined", "refunded"]
    reason: str | None
    refund_of: UUID | None = Field(description="the charge a refund returned money for")
    created_at: datetime


class PaymentsView(_View):
    """`GET /payments/{saga_id}`: the saga's ledger rows, oldest first."""

    saga_id: str
    entries: list[PaymentEntry] = Field(min_length=1)


class ShippedItem(_View):
    sku: str
    quantity: int = Field(ge=1)


class ShipmentView(_View):
    """`GET /shipments/{saga_id}`: the saga's one shipment."""

    saga_id: str
    order_id: str
    shipment_id: UUID
    status: Literal["scheduled", "failed", "cancelled"]
    reason: str | None
    items: list[ShippedItem] | None = Field(
        description="null for a shipment cancelled before it was scheduled"
    )
    customer_id: str | None = Field(
        description="null for a shipment cancelled before it was scheduled"
    )
    created_at: datetime
    updated_at: datetime


def _json(view: BaseModel) -> web.Response:
    return web.json_response(view.model_dump(mode="json"))


def add_routes(api: ApiSpec, pool: Callable[[], asyncpg.Pool]) -> None:
    """`GET /payments/{saga_id}` and `GET /shipments/{saga_id}`; 404 problem when none."""

    async def payments(request: web.Request) -> web.Response:
        saga_id: str = params_of(request)["saga_id"]
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
        entries = [PaymentEntry.model_validate(dict(row)) for row in rows]
        return _json(PaymentsView(saga_id=saga_id, entries=entries))

    async def shipment(request: web.Request) -> web.Response:
        saga_id: str = params_of(request)["saga_id"]
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
        fields: dict[str, Any] = dict(row)
        return _json(ShipmentView(saga_id=saga_id, **fields))

    api.add(
        "GET", "/payments/{saga_id}", payments, operation_id="getPayments", tags=TAGS,
        summary="The payment ledger of one saga (charges, declines, refunds)",
        params=[SAGA_ID],
        responses={
            200: Reply("the saga's ledger rows, oldest first", PaymentsView),
            404: Reply.error("no payment is recorded for this saga"),
        },
    )  # fmt: skip
    api.add(
        "GET", "/shipments/{saga_id}", shipment, operation_id="getShipment", tags=TAGS,
        summary="The shipment of one saga",
        params=[SAGA_ID],
        responses={
            200: Reply("the saga's shipment", ShipmentView),
            404: Reply.error("no shipment is recorded for this saga"),
        },
    )  # fmt: skip
