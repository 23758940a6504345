"""`GET /stock` and `GET /stock/{sku}`: the catalog as the datastore holds it.

An entry is a `stock/<sku>` record whose key ends in a valid SKU and whose value is a
valid stock item; a record that is not (written by hand, half-migrated) is left out of
the list and is 404 on its own, exactly as `POST /orders` treats it (an unknown SKU),
and is logged for the operator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from pydantic import TypeAdapter, ValidationError
from yardarm_kit import ApiSpec, Param, Problem, Reply, params_of
from yardarm_kit.datastore_client import DatastoreClient, DatastoreUnavailable, KvRecord

from yardarm_orders.datastore import UNAVAILABLE, unavailable
from yardarm_orders.documents import StockEntry, StockList
from yardarm_orders.payloads import Sku, StockItem
from yardarm_orders.saga.stock_steps import stock_key

STOCK_PREFIX = "stock/"
_SKU: TypeAdapter[str] = TypeAdapter(Sku)
TAGS = ("stock",)
SKU = Param(
    "sku",
    "path",
    Sku,
    "the SKU: a letter or digit, then up to 63 letters, digits or `._:-`; anything else "
    "can never be in the catalog and is a 422",
)


class StockApi:
    def __init__(self, datastore: DatastoreClient, log: logging.Logger) -> None:
        self._datastore = datastore
        self._log = log

    def _entry(self, record: KvRecord) -> StockEntry | None:
        """The record as a catalog entry, named by its key; None when it is not one."""
        try:
            sku = _SKU.validate_python(record.key.removeprefix(STOCK_PREFIX))
            item = StockItem.model_validate(record.value)
        except ValidationError as exc:
            self._log.warning("stock record %s is not a stock item, ignored: %s", record.key, exc)
            return None
        return StockEntry(
            sku=sku,
            name=item.name,
            price_cents=item.price_cents,
            available=item.available,
        )

    async def list(self, request: web.Request) -> web.Response:
        try:
            records = await self._datastore.list(STOCK_PREFIX)
        except DatastoreUnavailable as exc:
            raise unavailable(self._log, exc, "listing the stock") from None
        entries = [entry for entry in map(self._entry, records) if entry is not None]
        return web.json_response(StockList(items=entries).model_dump(mode="json"))

    async def get(self, request: web.Request) -> web.Response:
        sku: str = params_of(request)["sku"]
        try:
            record = await self._datastore.get(stock_key(sku))
        except DatastoreUnavailable as exc:
            raise unavailable(self._log, exc, "reading a stock record") from None
        entry = None if record is None else self._entry(record)
        if entry is None:
            raise Problem(404, "Unknown SKU", f"no stock record for SKU {sku!r}")
        return web.json_response(entry.model_dump(mode="json"))


def add_routes(api: ApiSpec, stock: Callable[[], StockApi]) -> None:
    """Register the catalog operations; `stock()` is the started replica's `StockApi`."""

    async def list_stock(request: web.Request) -> web.Response:
        return await stock().list(request)

    async def get_stock(request: web.Request) -> web.Response:
        return await stock().get(request)

    api.add(
        "GET", "/stock", list_stock, operation_id="listStock", tags=TAGS,
        summary="Every catalog entry with its price and available quantity",
        responses={200: Reply("the catalog", StockList), 503: UNAVAILABLE},
    )  # fmt: skip
    api.add(
        "GET", "/stock/{sku}", get_stock, operation_id="getStockItem", tags=TAGS,
        summary="One catalog entry",
        params=[SKU],
        responses={
            200: Reply("the entry", StockEntry),
            404: Reply.error("no catalog entry has this SKU"),
            503: UNAVAILABLE,
        },
    )  # fmt: skip
