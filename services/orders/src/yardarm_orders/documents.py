"""The response bodies of the orders API, as models.

Every JSON answer is built by one of these models (`extra="forbid"`, every field
required, nullable ones marked), so the OpenAPI document derived from them is exactly
what clients receive.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from yardarm_orders.order_store import OrderView, SagaView
from yardarm_orders.payloads import MAX_PRICE_CENTS, Sku
from yardarm_orders.saga.definition import OrderStatus, SagaState


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrderAccepted(_Document):
    """`POST /orders` 202: the order the Idempotency-Key names."""

    id: UUID
    status: OrderStatus


class OrderLine(_Document):
    """One merged line, priced from the catalog when the order was placed."""

    sku: Sku
    quantity: int = Field(ge=1)
    name: str
    price_cents: int = Field(ge=0, le=MAX_PRICE_CENTS)


class HistoryEntry(_Document):
    """One thing that happened to the order (a step's outcome, a retry, a reply)."""

    step: str
    outcome: str
    detail: str | None
    trace_id: str | None = Field(description="the trace of the request or message behind it")
    at: datetime


class SagaDocument(_Document):
    """Where the order's saga is: its state, the step running in it and that step's clock."""

    state: SagaState
    step: str | None = Field(description="the step running in this state; null when terminal")
    step_started_at: datetime
    deadline_at: datetime | None = Field(
        description="a remote step without a reply by then is compensated"
    )
    attempts: int = Field(ge=0)


class OrderDocument(_Document):
    """`GET /orders/{order_id}`: the order, its history and its saga."""

    id: UUID
    customer_id: str
    status: OrderStatus
    reason: str | None = Field(description="why a cancelled order was cancelled")
    items: list[OrderLine]
    total_cents: int = Field(ge=0)
    currency: str
    card_last4: str
    trace_id: str | None = Field(description="the trace of the request that placed the order")
    created_at: datetime
    updated_at: datetime
    history: list[HistoryEntry]
    saga: SagaDocument | None = Field(description="null only for an order without a saga row")

    @classmethod
    def of(cls, order: OrderView) -> OrderDocument:
        return cls(
            id=order.id,
            customer_id=order.customer_id,
            status=OrderStatus(order.status),
            reason=order.reason,
            items=[OrderLine.model_validate(item) for item in order.items],
            total_cents=order.total_cents,
            currency=order.currency,
            card_last4=order.card_last4,
            trace_id=order.trace_id,
            created_at=order.created_at,
            updated_at=order.updated_at,
            history=[
                HistoryEntry(
                    step=entry.step,
                    outcome=entry.outcome,
                    detail=entry.detail,
                    trace_id=entry.trace_id,
                    at=entry.at,
                )
                for entry in order.history
            ],
            saga=None if order.saga is None else _saga(order.saga),
        )


def _saga(saga: SagaView) -> SagaDocument:
    return SagaDocument(
        state=SagaState(saga.state),
        step=saga.step,
        step_started_at=saga.step_started_at,
        deadline_at=saga.deadline_at,
        attempts=saga.attempts,
    )


class StockEntry(_Document):
    """A catalog entry: what `stock/<sku>` holds in the datastore."""

    sku: Sku
    name: str
    price_cents: int = Field(ge=0, le=MAX_PRICE_CENTS)
    available: int


class StockList(_Document):
    """`GET /stock`: every catalog entry."""

    items: list[StockEntry]
