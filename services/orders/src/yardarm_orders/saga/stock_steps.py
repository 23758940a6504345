"""The saga's local steps on one SKU: reserve and release stock in the datastore.

Each write is a compare-and-set on the stock record's version, retried on conflict a
bounded number of times, and carries an Idempotency-Key. The number of the write about
to be sent is committed first (`reserve_attempt` / `release_attempt`), so after a crash
the next run asks the datastore whether that write applied, by repeating its key with a
version that cannot match: a replayed success means it did, anything else means it did
not. Neither a reservation nor a release is ever applied twice, and none is lost.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import ValidationError
from yardarm_kit.datastore_client import DatastoreClient, KvRecord

from yardarm_orders.payloads import StockItem
from yardarm_orders.saga import store
from yardarm_orders.saga.store import Reservation

# Added to a record's current version to make a probe write that can never match.
PROBE_VERSION_OFFSET = 2**31


class StockOutcome(StrEnum):
    RESERVED = "reserved"
    RELEASED = "released"
    INSUFFICIENT = "insufficient"
    MISSING = "missing"


class Contended(Exception):
    """Every compare-and-set attempt in this run lost to another writer; try again later."""


def idempotency_key(kind: str, order_id: UUID, sku: str, attempt: int) -> str:
    """`reserve:<order>:<sku>` for the first write; later writes get `:<attempt>` appended."""
    base = f"{kind}:{order_id}:{sku}"
    return base if attempt <= 1 else f"{base}:{attempt}"


def stock_key(sku: str) -> str:
    return f"stock/{sku}"


class StockSteps:
    """Reserve or release one order's SKUs; progress is fenced by the worker's lease."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        datastore: DatastoreClient,
        *,
        owner: str,
        lease_s: float,
        cas_retries: int,
    ) -> None:
        self._pool = pool
        self._datastore = datastore
        self._owner = owner
        self._lease_s = lease_s
        self._cas_retries = cas_retries

    async def reserve(
        self, order_id: UUID, item: Reservation, trace_id: str | None
    ) -> StockOutcome:
        outcome = await self._write(order_id, item, "reserve", -item.quantity)
        if outcome is StockOutcome.RESERVED:
            await self._mark(order_id, item, "reserved", "stock.reserve", outcome, trace_id)
        return outcome

    async def release(self, order_id: UUID, item: Reservation, trace_id: str | None) -> None:
        outcome = await self._write(order_id, item, "release", item.quantity)
        # A stock record deleted since the reservation has nothing left to give back to.
        await self._mark(order_id, item, "released", "stock.release", outcome, trace_id)

    async def _write(
        self, order_id: UUID, item: Reservation, kind: str, delta: int
    ) -> StockOutcome:
        key = stock_key(item.sku)
        done = StockOutcome.RESERVED if kind == "reserve" else StockOutcome.RELEASED
        attempt = item.reserve_attempt if kind == "reserve" else item.release_attempt
        unsure = attempt > 0  # an earlier run started a write whose outcome we never saw
        for _ in range(self._cas_retries):
            record = await self._datastore.get(key)
            if record is None:
                return StockOutcome.MISSING
            if unsure:
                if await self._applied_before(record, kind, order_id, item.sku, attempt):
                    return done
                unsure = False
            stock = _stock(record)
            if stock is None:
                return StockOutcome.MISSING
            if stock.available + delta < 0:
                return StockOutcome.INSUFFICIENT
            attempt += 1
            async with self._pool.acquire() as conn, conn.transaction():
                await store.hold_lease(conn, order_id, self._owner, self._lease_s)
                await store.record_attempt(conn, order_id, item.sku, kind, attempt)
            value: dict[str, Any] = {**record.value, "available": stock.available + delta}
            result = await self._datastore.put(
                key,
                value,
                if_version=record.version,
                idempotency_key=idempotency_key(kind, order_id, item.sku, attempt),
            )
            if result.applied:
                return done
        raise Contended(f"{kind} {item.sku}: {self._cas_retries} compare-and-set attempts lost")

    async def _applied_before(
        self, record: KvRecord, kind: str, order_id: UUID, sku: str, attempt: int
    ) -> bool:
        probe = await self._datastore.put(
            record.key,
            record.value,
            if_version=record.version + PROBE_VERSION_OFFSET,
            idempotency_key=idempotency_key(kind, order_id, sku, attempt),
        )
        return probe.applied and probe.replayed

    async def _mark(
        self,
        order_id: UUID,
        item: Reservation,
        state: str,
        step: str,
        outcome: StockOutcome,
        trace_id: str | None,
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await store.hold_lease(conn, order_id, self._owner, self._lease_s)
            await store.mark_reservation(conn, order_id, item.sku, state)
            await store.add_history(
                conn, order_id, step, outcome.value, f"{item.sku} x{item.quantity}", trace_id
            )


def _stock(record: KvRecord) -> StockItem | None:
    if not isinstance(record.value, dict):
        return None
    try:
        return StockItem.model_validate(record.value)
    except ValidationError:
        return None
