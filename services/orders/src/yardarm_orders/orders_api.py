"""`POST /orders`, `GET /orders/{id}` and `POST /orders/{id}/cancel`.

Creating validates, prices and starts the saga exactly once per Idempotency-Key. Cancel
honours the saga's semantic lock: while a saga runs on the order (forward or
compensating) nothing else may change it, so a cancel then is 409 naming the state; a
confirmed order is cancelled by compensating every step (cancel the shipment, refund,
release the stock), which runs as a saga of its own.
"""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from opentelemetry import trace
from pydantic import ValidationError
from yardarm_kit import Problem, parse_json
from yardarm_kit.datastore_client import DatastoreClient, DatastoreUnavailable
from yardarm_kit.messaging import current_traceparent
from yardarm_kit.telemetry import current_trace_ids

from yardarm_orders import order_store
from yardarm_orders.order_store import InFlight, KeyedOrder, NewOrder, OrderView, SagaView
from yardarm_orders.payloads import OrderRequest, StockItem
from yardarm_orders.saga import store as saga_store
from yardarm_orders.saga.definition import CANCEL_REASON, RUNNING_STATES, SagaState, Trigger
from yardarm_orders.saga.engine import SagaEngine
from yardarm_orders.saga.stock_steps import stock_key
from yardarm_orders.saga.store import SagaRow

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
# A 409 on a running saga suggests retrying by its deadline, at most this far out.
MAX_RETRY_AFTER_S = 30


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if not key:
        raise Problem(
            400,
            "Idempotency-Key required",
            "send an Idempotency-Key header (1 to 255 visible ASCII characters, e.g. a UUID) "
            "so a retried request cannot create a second order",
        )
    if len(key) > MAX_KEY_LENGTH or not _PRINTABLE.match(key):
        raise Problem(
            400,
            "Invalid Idempotency-Key",
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
        )
    return key


def _accepted(order: KeyedOrder) -> web.Response:
    return web.json_response(
        {"id": str(order.order_id), "status": order.status},
        status=202,
        headers={"Location": f"/orders/{order.order_id}"},
    )


def _replay(existing: KeyedOrder, request_hash: str) -> web.Response:
    if existing.request_hash != request_hash:
        raise Problem(
            422,
            "Idempotency-Key reused",
            "this Idempotency-Key was already used for a different request body; "
            "use a new key for a new order",
        )
    return _accepted(existing)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _saga_document(saga: SagaView | None) -> dict[str, Any] | None:
    if saga is None:
        return None
    return {
        "state": saga.state,
        "step": saga.step,
        "step_started_at": saga.step_started_at.isoformat(),
        "deadline_at": _iso(saga.deadline_at),
        "attempts": saga.attempts,
    }


def order_document(order: OrderView) -> dict[str, Any]:
    """The JSON shape of `GET /orders/{id}`."""
    return {
        "id": str(order.id),
        "customer_id": order.customer_id,
        "status": order.status,
        "reason": order.reason,
        "items": order.items,
        "total_cents": order.total_cents,
        "currency": order.currency,
        "card_last4": order.card_last4,
        "trace_id": order.trace_id,
        "created_at": order.created_at.isoformat(),
        "updated_at": order.updated_at.isoformat(),
        "history": [
            {
                "step": entry.step,
                "outcome": entry.outcome,
                "detail": entry.detail,
                "trace_id": entry.trace_id,
                "at": entry.at.isoformat(),
            }
            for entry in order.history
        ],
        "saga": _saga_document(order.saga),
    }


class OrdersApi:
    def __init__(
        self,
        pool: asyncpg.Pool,
        datastore: DatastoreClient,
        engine: SagaEngine,
        *,
        on_created: Callable[[], None],
        on_outbox: Callable[[], None],
        in_flight_wait_ms: int,
    ) -> None:
        self._pool = pool
        self._datastore = datastore
        self._engine = engine
        self._on_created = on_created
        self._on_outbox = on_outbox
        self._in_flight_wait_ms = in_flight_wait_ms

    def register(self, app: web.Application) -> None:
        app.router.add_post("/orders", self.create)
        app.router.add_get("/orders/{order_id}", self.get)
        app.router.add_post("/orders/{order_id}/cancel", self.cancel)

    async def create(self, request: web.Request) -> web.Response:
        key = _idempotency_key(request)
        body = await parse_json(request, OrderRequest)
        request_hash = body.request_hash()
        async with self._pool.acquire() as conn:
            existing = await order_store.find_by_key(conn, key)
        if existing is not None:
            trace.get_current_span().set_attribute("order.id", str(existing.order_id))
            return _replay(existing, request_hash)

        items = await self._priced_items(body)
        order_id = uuid.uuid4()
        trace.get_current_span().set_attribute("order.id", str(order_id))
        trace_id, _ = current_trace_ids()
        new = NewOrder(
            id=order_id,
            customer_id=body.customer_id,
            items=items,
            total_cents=sum(item["price_cents"] * item["quantity"] for item in items),
            card=body.payment.card,
            trace_id=trace_id,
            traceparent=current_traceparent(),
        )
        try:
            async with self._pool.acquire() as conn:
                created = await order_store.create(
                    conn,
                    new,
                    key=key,
                    request_hash=request_hash,
                    in_flight_wait_ms=self._in_flight_wait_ms,
                )
        except InFlight:
            raise Problem(
                409,
                "Request in flight",
                "an order with this Idempotency-Key is being created right now; "
                "retry shortly to get its result",
                headers={"Retry-After": "1"},
            ) from None
        if created.order_id != order_id:  # lost the race to an identical request
            return _replay(created, request_hash)
        self._on_created()
        return _accepted(created)

    async def _priced_items(self, body: OrderRequest) -> list[dict[str, Any]]:
        """The merged lines with name and price from the catalog; 422 naming unknown SKUs."""
        merged = body.merged_items()
        try:
            records = await asyncio.gather(
                *(self._datastore.get(stock_key(item.sku)) for item in merged)
            )
        except DatastoreUnavailable as exc:
            raise Problem(
                503,
                "Stock unavailable",
                f"the stock service could not be reached; retry shortly ({exc})",
                headers={"Retry-After": "1"},
            ) from None
        stock: dict[str, StockItem] = {}
        for item, record in zip(merged, records, strict=True):
            if record is None or not isinstance(record.value, dict):
                continue
            try:
                stock[item.sku] = StockItem.model_validate(record.value)
            except ValidationError:
                continue
        errors = [
            {"field": f"items.{index}.sku", "message": f"unknown SKU {item.sku!r}"}
            for index, item in enumerate(body.items)
            if item.sku not in stock
        ]
        if errors:
            raise Problem(
                422,
                "Unknown SKU",
                "the order names SKUs that are not in the catalog (GET /stock lists them)",
                errors=errors,
            )
        return [
            {
                "sku": item.sku,
                "quantity": item.quantity,
                "name": stock[item.sku].name,
                "price_cents": stock[item.sku].price_cents,
            }
            for item in merged
        ]

    async def get(self, request: web.Request) -> web.Response:
        order_id = _order_id(request)
        async with self._pool.acquire() as conn:
            order = await order_store.get(conn, order_id, self._engine.saga)
        if order is None:
            raise _not_found(request)
        return web.json_response(order_document(order))

    async def cancel(self, request: web.Request) -> web.Response:
        """202 when compensation of a confirmed order starts, 200 when it is cancelled
        already, 409 while a saga runs on it, 404 for an unknown order."""
        order_id = _order_id(request)
        trace.get_current_span().set_attribute("order.id", str(order_id))
        applied = None
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                saga = await saga_store.lock_saga(conn, order_id)
                if saga is None:
                    raise _not_found(request)
                if saga.state in RUNNING_STATES:
                    raise self._locked(saga)
                if saga.state is SagaState.CONFIRMED:
                    applied = await self._engine.fire(
                        conn, saga, Trigger.CANCEL_REQUESTED, CANCEL_REASON
                    )
            order = await order_store.get(conn, order_id, self._engine.saga)
        assert order is not None  # the saga row, locked above, references it
        if applied is None:
            return web.json_response(order_document(order))
        self._engine.observe(applied)
        if applied.wrote_outbox:
            self._on_outbox()
        return web.json_response(
            order_document(order), status=202, headers={"Location": f"/orders/{order_id}"}
        )

    def _locked(self, saga: SagaRow) -> Problem:
        phase = self._engine.saga.phase(saga.state)
        step = phase.name if phase is not None else saga.state.value
        retry_after = 1
        if saga.deadline_at is not None:
            left = (saga.deadline_at - saga.now).total_seconds()
            retry_after = max(1, min(MAX_RETRY_AFTER_S, math.ceil(left)))
        return Problem(
            409,
            "Order is being processed",
            f"the order's saga is running ({saga.state.value}, step {step}); it can be "
            "cancelled once it is CONFIRMED, so retry after it finishes",
            headers={"Retry-After": str(retry_after)},
            extra={"state": saga.state.value, "step": step},
        )


def _order_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["order_id"])
    except ValueError:
        raise _not_found(request) from None


def _not_found(request: web.Request) -> Problem:
    raw = request.match_info["order_id"]
    return Problem(404, "Order not found", f"no order with id {raw!r}")
