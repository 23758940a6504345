"""`POST /orders`, `GET /orders/{order_id}` and `POST /orders/{order_id}/cancel`.

Creating validates, prices and starts the saga exactly once per Idempotency-Key. Cancel
honours the saga's semantic lock: while a saga runs on the order (forward or
compensating) nothing else may change it, so a cancel then is 409 naming the state; a
confirmed order is cancelled by compensating every step (cancel the shipment, refund,
release the stock), which runs as a saga of its own.

`add_routes` registers the operations with their OpenAPI description; the parameters
and the body are validated by the kit before a handler runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import asyncpg
from aiohttp import web
from opentelemetry import trace
from pydantic import BeforeValidator, StringConstraints, ValidationError
from yardarm_kit import ApiSpec, Header, Param, Problem, Reply, params_of, parse_json
from yardarm_kit.datastore_client import DatastoreClient, DatastoreUnavailable
from yardarm_kit.messaging import current_traceparent
from yardarm_kit.telemetry import current_trace_ids

from yardarm_orders import order_store
from yardarm_orders.datastore import UNAVAILABLE, unavailable
from yardarm_orders.documents import OrderAccepted, OrderDocument
from yardarm_orders.order_store import InFlight, KeyedOrder, NewOrder
from yardarm_orders.payloads import OrderRequest, StockItem
from yardarm_orders.saga import store as saga_store
from yardarm_orders.saga.definition import (
    CANCEL_REASON,
    RUNNING_STATES,
    OrderStatus,
    SagaState,
    Trigger,
)
from yardarm_orders.saga.engine import SagaEngine
from yardarm_orders.saga.stock_steps import stock_key
from yardarm_orders.saga.store import SagaRow

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
IdempotencyKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH, pattern=r"^[\x21-\x7e]{1,255}$"),
]
# The refusals of a well-formed order that depend on live data or earlier requests, so
# no schema can state them; clients (and the fuzzer) tell them apart by these types.
UNKNOWN_SKU_TYPE = "urn:yardarm:orders:unknown-sku"
KEY_REUSED_TYPE = "urn:yardarm:orders:idempotency-key-reused"
# A 409 on a running saga suggests retrying by its deadline, at most this far out.
MAX_RETRY_AFTER_S = 30

TAGS = ("orders",)
_RETRY_AFTER = Header("seconds to wait before retrying", required=True)
_LOCATION = Header("the order's URL, `/orders/{order_id}`", required=True)
_UUID_TEXT = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")


def _hyphenated(value: object) -> object:
    """Only the form `format: uuid` names; pydantic alone would also take braces, a
    `urn:uuid:` prefix or 32 bare hex digits."""
    if isinstance(value, str) and not _UUID_TEXT.match(value):
        raise ValueError("must be a UUID in its hyphenated form (8-4-4-4-12 hex digits)")
    return value


OrderId = Annotated[uuid.UUID, BeforeValidator(_hyphenated)]
ORDER_ID = Param(
    "order_id",
    "path",
    OrderId,
    "the order's id, a UUID as `POST /orders` returned it; anything else is a 422",
)
IDEMPOTENCY_KEY = Param(
    IDEMPOTENCY_HEADER,
    "header",
    IdempotencyKey,
    "1 to 255 visible ASCII characters (e.g. a UUID) naming this order: a retry with the "
    "same key and body answers with the same order, never a second one",
    required=True,
)
# Stateful links: an accepted order can be read and cancelled.
ORDER_LINKS = {
    "GetOrder": {"operationId": "getOrder", "parameters": {"order_id": "$response.body#/id"}},
    "CancelOrder": {
        "operationId": "cancelOrder",
        "parameters": {"order_id": "$response.body#/id"},
    },
}


def _accepted(order: KeyedOrder) -> web.Response:
    body = OrderAccepted(id=order.order_id, status=OrderStatus(order.status))
    return web.json_response(
        body.model_dump(mode="json"),
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
            type=KEY_REUSED_TYPE,
        )
    return _accepted(existing)


def _document(order: order_store.OrderView, status: int = 200, **headers: str) -> web.Response:
    body = OrderDocument.of(order).model_dump(mode="json")
    return web.json_response(body, status=status, headers=headers or None)


class OrdersApi:
    def __init__(
        self,
        pool: asyncpg.Pool,
        datastore: DatastoreClient,
        engine: SagaEngine,
        *,
        log: logging.Logger,
        on_created: Callable[[], None],
        on_outbox: Callable[[], None],
        in_flight_wait_ms: int,
    ) -> None:
        self._pool = pool
        self._datastore = datastore
        self._engine = engine
        self._log = log
        self._on_created = on_created
        self._on_outbox = on_outbox
        self._in_flight_wait_ms = in_flight_wait_ms

    async def create(self, request: web.Request) -> web.Response:
        key: str = params_of(request)[IDEMPOTENCY_HEADER]
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
            raise unavailable(self._log, exc, "pricing an order") from None
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
                type=UNKNOWN_SKU_TYPE,
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
        order_id: uuid.UUID = params_of(request)["order_id"]
        async with self._pool.acquire() as conn:
            order = await order_store.get(conn, order_id, self._engine.saga)
        if order is None:
            raise _not_found(order_id)
        return _document(order)

    async def cancel(self, request: web.Request) -> web.Response:
        """202 when compensation of a confirmed order starts, 200 when it is cancelled
        already, 409 while a saga runs on it, 404 for an unknown order."""
        order_id: uuid.UUID = params_of(request)["order_id"]
        trace.get_current_span().set_attribute("order.id", str(order_id))
        applied = None
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                saga = await saga_store.lock_saga(conn, order_id)
                if saga is None:
                    raise _not_found(order_id)
                if saga.state in RUNNING_STATES:
                    raise self._locked(saga)
                if saga.state is SagaState.CONFIRMED:
                    applied = await self._engine.fire(
                        conn, saga, Trigger.CANCEL_REQUESTED, CANCEL_REASON
                    )
            order = await order_store.get(conn, order_id, self._engine.saga)
        assert order is not None  # the saga row, locked above, references it
        if applied is None:
            return _document(order)
        self._engine.observe(applied)
        if applied.wrote_outbox:
            self._on_outbox()
        return _document(order, 202, Location=f"/orders/{order_id}")

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


def _not_found(order_id: uuid.UUID) -> Problem:
    return Problem(404, "Order not found", f"no order with id {order_id}")


def add_routes(api: ApiSpec, orders: Callable[[], OrdersApi]) -> None:
    """Register the orders operations; `orders()` is the started replica's `OrdersApi`."""

    async def create(request: web.Request) -> web.Response:
        return await orders().create(request)

    async def get(request: web.Request) -> web.Response:
        return await orders().get(request)

    async def cancel(request: web.Request) -> web.Response:
        return await orders().cancel(request)

    not_found = Reply.error("no order has this id")
    api.add(
        "POST", "/orders", create, operation_id="createOrder", tags=TAGS,
        summary="Place an order (once per Idempotency-Key)",
        description=(
            "Validates and prices the order, then starts its saga (reserve stock, charge, "
            "ship). Lines naming one SKU are merged; the merged quantity may be at most "
            "1000 like any line's."
        ),
        body=OrderRequest, params=[IDEMPOTENCY_KEY],
        responses={
            202: Reply(
                "accepted: the saga runs; the same key and body answer with the same order",
                OrderAccepted, headers={"Location": _LOCATION}, links=ORDER_LINKS,
            ),
            400: Reply.error(
                "the body is not JSON this API takes (malformed, nested too deep, a number "
                "out of range), or the Idempotency-Key header is missing or invalid"
            ),
            409: Reply.error(
                "an order with this Idempotency-Key is being created right now",
                **{"Retry-After": _RETRY_AFTER},
            ),
            422: Reply.error(
                "the body does not validate (`errors` names each field; one SKU's lines "
                "totalling more than 1000 name each such `items.N.quantity`), a line names "
                f"an SKU not in the catalog (type `{UNKNOWN_SKU_TYPE}`, `errors` naming each "
                f"`items.N.sku`), or the Idempotency-Key was used for another body (type "
                f"`{KEY_REUSED_TYPE}`)"
            ),
            503: UNAVAILABLE,
        },
    )  # fmt: skip
    api.add(
        "GET", "/orders/{order_id}", get, operation_id="getOrder", tags=TAGS,
        summary="An order with its history and saga",
        params=[ORDER_ID],
        responses={200: Reply("the order", OrderDocument), 404: not_found},
    )  # fmt: skip
    api.add(
        "POST", "/orders/{order_id}/cancel", cancel, operation_id="cancelOrder", tags=TAGS,
        summary="Cancel a confirmed order (compensates every step)",
        params=[ORDER_ID],
        responses={
            200: Reply("the order was cancelled already; nothing changed", OrderDocument),
            202: Reply(
                "compensation started; the order is PENDING until it ends CANCELLED",
                OrderDocument, headers={"Location": _LOCATION},
            ),
            404: not_found,
            409: Reply.error(
                "a saga runs on the order (the semantic lock); the problem's `state` and "
                "`step` say which, Retry-After when it should be done",
                **{"Retry-After": _RETRY_AFTER},
            ),
        },
    )  # fmt: skip
