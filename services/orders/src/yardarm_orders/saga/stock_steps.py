"""The saga's local steps on one SKU: reserve and release stock in the datastore.

Each write is a compare-and-set on the stock record's version, retried on conflict a
bounded number of times, and carries an Idempotency-Key. The number of the write about
to be sent and the exact request (`{"attempt", "value", "if_version"}`) are committed
first (`reserve_attempt` / `reserve_request`, likewise for release), so a run that finds
an attempt whose outcome it never saw sends that identical request again under the same
key: the datastore replays it if it applied, applies it now if it never arrived and the
version still matches, and refuses it (409) if the record moved on, when the step reads
again and writes anew. Neither a reservation nor a release is ever applied twice, and
none is lost. (The datastore refuses a key reused for another request, so only the
identical request can ask.)

An attempt recorded by a previous version has no request of its number; it is probed as
that version did, by repeating its key with a version that cannot match: a datastore
that matches replays by key alone replays it, one that binds keys to requests refuses
it as a reused key (422); either answer means the attempt applied.

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
        sent = item.reserve_request if kind == "reserve" else item.release_request
        if sent is not None and sent.get("attempt") != attempt:
            sent = None  # a previous version recorded this attempt (and no request)
        # An earlier run started write number `attempt` and never saw its outcome.
        unsure = attempt > 0
        if unsure and sent is not None:
            if await self._send(key, sent, idempotency_key(kind, order_id, item.sku, attempt)):
                return done
            unsure = False  # it never applied and now cannot: write anew
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
            request: dict[str, Any] = {
                "attempt": attempt,
                "value": {**record.value, "available": stock.available + delta},
                "if_version": record.version,
            }
            async with self._pool.acquire() as conn, conn.transaction():
                await store.hold_lease(conn, order_id, self._owner, self._lease_s)
                await store.record_attempt(conn, order_id, item.sku, kind, attempt, request)
            if await self._send(key, request, idempotency_key(kind, order_id, item.sku, attempt)):
                return done
        raise Contended(f"{kind} {item.sku}: {self._cas_retries} compare-and-set attempts lost")

    async def _send(self, key: str, request: dict[str, Any], idempotency: str) -> bool:
        """Send a recorded write; True when it applied (now, or earlier: a replay)."""
        result = await self._datastore.put(
            key,
            request["value"],
            if_version=int(request["if_version"]),
            idempotency_key=idempotency,
        )
        return result.applied

    async def _applied_before(
        self, record: KvRecord, kind: str, order_id: UUID, sku: str, attempt: int
    ) -> bool:
        probe = await self._datastore.put(
            record.key,
            record.value,
            if_version=record.version + PROBE_VERSION_OFFSET,
            idempotency_key=idempotency_key(kind, order_id, sku, attempt),
        )
        # A datastore that binds keys to requests refuses the probe (another request
        # under a recorded key), and records keys only for writes it applied: so did it.
        return (probe.applied and probe.replayed) or probe.key_reused

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
