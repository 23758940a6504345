"""`GET /stock` and `GET /stock/{sku}`: the catalog as the datastore holds it."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from yardarm_kit import Problem
from yardarm_kit.datastore_client import DatastoreClient, DatastoreUnavailable, KvRecord

from yardarm_orders.payloads import SKU_PATTERN
from yardarm_orders.saga.stock_steps import stock_key

STOCK_PREFIX = "stock/"
_SKU = re.compile(SKU_PATTERN)


def _unavailable(exc: DatastoreUnavailable) -> Problem:
    return Problem(
        503,
        "Stock unavailable",
        f"the stock service could not be reached; retry shortly ({exc})",
        headers={"Retry-After": "1"},
    )


def _item(record: KvRecord) -> dict[str, Any]:
    value = record.value if isinstance(record.value, dict) else {}
    return {
        "sku": value.get("sku", record.key.removeprefix(STOCK_PREFIX)),
        "name": value.get("name"),
        "price_cents": value.get("price_cents"),
        "available": value.get("available"),
    }


class StockApi:
    def __init__(self, datastore: DatastoreClient) -> None:
        self._datastore = datastore

    def register(self, app: web.Application) -> None:
        app.router.add_get("/stock", self.list)
        app.router.add_get("/stock/{sku}", self.get)

    async def list(self, request: web.Request) -> web.Response:
        try:
            records = await self._datastore.list(STOCK_PREFIX)
        except DatastoreUnavailable as exc:
            raise _unavailable(exc) from None
        return web.json_response({"items": [_item(record) for record in records]})

    async def get(self, request: web.Request) -> web.Response:
        sku = request.match_info["sku"]
        record = None
        if len(sku) <= 64 and _SKU.match(sku):
            try:
                record = await self._datastore.get(stock_key(sku))
            except DatastoreUnavailable as exc:
                raise _unavailable(exc) from None
        if record is None:
            raise Problem(404, "Unknown SKU", f"no stock record for SKU {sku!r}")
        return web.json_response(_item(record))
