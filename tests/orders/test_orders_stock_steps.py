"""Stock steps against a real datastore: crash recovery never double-applies or leaks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import httpx
import pytest
from opentelemetry import trace
from yardarm_kit import HttpClient
from yardarm_kit.datastore_client import DatastoreClient, DatastoreUnavailable
from yardarm_kit.metrics import Metrics
from yardarm_orders import order_store
from yardarm_orders.saga import store
from yardarm_orders.saga.definition import RUNNING_STATES
from yardarm_orders.saga.stock_steps import StockOutcome, StockSteps, idempotency_key
from yardarm_orders.settings import OrdersSettings

from tests.conftest import free_port
from tests.orders.conftest import seed_stock, stock_available
from tests.orders.test_orders_store import new_order


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    settings = OrdersSettings(
        port=1, database_url="postgresql://x", nats_url="nats://x", datastore_urls=["http://x"]
    )
    async with aiohttp.ClientSession() as session:
        yield HttpClient(
            session,
            "datastore",
            trace.get_tracer("test"),
            Metrics(settings).http_client_duration,
        )


async def _claimed_order(pool: asyncpg.Pool, sku: str, quantity: int) -> uuid.UUID:
    order = new_order(items=[{"sku": sku, "quantity": quantity, "name": sku, "price_cents": 1}])
    async with pool.acquire() as conn:
        await order_store.create(conn, order, key=str(order.id), request_hash="h")
        assert await store.claim_due(conn, "w", 60, RUNNING_STATES) is not None
    return order.id


async def _item(pool: asyncpg.Pool, order_id: uuid.UUID) -> store.Reservation:
    async with pool.acquire() as conn:
        (item,) = await store.reservations(conn, order_id)
    return item


async def _crash_mid_write(
    pool: asyncpg.Pool,
    datastore_url: str,
    order_id: uuid.UUID,
    kind: str,
    available: int,
    *,
    sent: bool,
) -> None:
    """What a run does before it crashes: record write number 1 of `kind` with the exact
    request (a compare-and-set to `available`), then send it (`sent`) or die first."""
    async with httpx.AsyncClient(base_url=datastore_url, timeout=10) as client:
        current = (await client.get("/kv/stock/rope")).json()
        request = {
            "attempt": 1,
            "value": {**current["value"], "available": available},
            "if_version": current["version"],
        }
        async with pool.acquire() as conn:
            await store.record_attempt(conn, order_id, "rope", kind, 1, request)
        if sent:
            applied = await client.put(
                "/kv/stock/rope",
                json={"value": request["value"], "if_version": request["if_version"]},
                headers={"Idempotency-Key": idempotency_key(kind, order_id, "rope", 1)},
            )
            assert applied.status_code == 200, applied.text


async def test_a_reservation_that_applied_before_a_crash_is_not_applied_again(
    pool: asyncpg.Pool, datastore_url: str, http: HttpClient
) -> None:
    seed_stock(datastore_url, {"rope": (250, 10)})
    order_id = await _claimed_order(pool, "rope", 4)
    # The crashed run: attempt 1 recorded, its write applied, the outcome never recorded.
    await _crash_mid_write(pool, datastore_url, order_id, "reserve", 6, sent=True)
    # Stock is now exactly the order's quantity short; a naive re-run would see 6 >= 4
    # and reserve again.
    steps = StockSteps(
        pool, DatastoreClient(http, [datastore_url]), owner="w", lease_s=60, cas_retries=5
    )
    outcome = await steps.reserve(order_id, await _item(pool, order_id), None)
    assert outcome is StockOutcome.RESERVED
    assert stock_available(datastore_url, "rope") == 6
    item = await _item(pool, order_id)
    assert item.state == "reserved" and item.reserve_attempt == 1


async def test_a_write_recorded_but_never_sent_is_applied_once_on_the_next_run(
    pool: asyncpg.Pool, datastore_url: str, http: HttpClient
) -> None:
    seed_stock(datastore_url, {"rope": (250, 10)})
    order_id = await _claimed_order(pool, "rope", 4)
    await _crash_mid_write(pool, datastore_url, order_id, "reserve", 6, sent=False)
    steps = StockSteps(
        pool, DatastoreClient(http, [datastore_url]), owner="w", lease_s=60, cas_retries=5
    )
    assert await steps.reserve(order_id, await _item(pool, order_id), None) is (
        StockOutcome.RESERVED
    )
    assert stock_available(datastore_url, "rope") == 6
    # The recorded request itself was sent (and applied): no second write was needed.
    assert (await _item(pool, order_id)).reserve_attempt == 1
    # and a release after a crash that had already applied it gives back exactly once
    await _crash_mid_write(pool, datastore_url, order_id, "release", 10, sent=True)
    await steps.release(order_id, await _item(pool, order_id), None)
    assert stock_available(datastore_url, "rope") == 10
    assert (await _item(pool, order_id)).state == "released"


async def test_a_recorded_write_overtaken_by_another_writer_is_redone_once(
    pool: asyncpg.Pool, datastore_url: str, http: HttpClient
) -> None:
    """The crashed run's write never arrived and the record moved on since: sending it
    now is refused (409), so the next run reads again and writes once, with a new key."""
    seed_stock(datastore_url, {"rope": (250, 10)})
    order_id = await _claimed_order(pool, "rope", 4)
    await _crash_mid_write(pool, datastore_url, order_id, "reserve", 6, sent=False)
    seed_stock(datastore_url, {"rope": (250, 20)})  # another writer restocks meanwhile
    steps = StockSteps(
        pool, DatastoreClient(http, [datastore_url]), owner="w", lease_s=60, cas_retries=5
    )
    assert await steps.reserve(order_id, await _item(pool, order_id), None) is (
        StockOutcome.RESERVED
    )
    assert stock_available(datastore_url, "rope") == 16
    assert (await _item(pool, order_id)).reserve_attempt == 2


async def test_an_attempt_a_previous_version_recorded_is_probed_not_answered_by_an_older_request(
    pool: asyncpg.Pool, datastore_url: str, http: HttpClient
) -> None:
    """A previous version records attempt numbers without requests, so the request on the
    row may be an older attempt's: it is never sent under the newer attempt's key."""
    seed_stock(datastore_url, {"rope": (250, 10)})
    order_id = await _claimed_order(pool, "rope", 4)
    await _crash_mid_write(pool, datastore_url, order_id, "reserve", 6, sent=False)
    async with pool.acquire() as conn:  # the previous version's attempt 2, never sent
        await conn.execute("UPDATE reservations SET reserve_attempt = 2")
    steps = StockSteps(
        pool, DatastoreClient(http, [datastore_url]), owner="w", lease_s=60, cas_retries=5
    )
    assert await steps.reserve(order_id, await _item(pool, order_id), None) is (
        StockOutcome.RESERVED
    )
    assert stock_available(datastore_url, "rope") == 6
    assert (await _item(pool, order_id)).reserve_attempt == 3  # probed, then written anew


async def test_an_applied_attempt_a_previous_version_recorded_is_not_applied_again(
    pool: asyncpg.Pool, datastore_url: str, http: HttpClient
) -> None:
    """The probe of a previous version's attempt reuses its key with another request:
    the datastore refuses that as a reused key, which only an applied write leaves."""
    seed_stock(datastore_url, {"rope": (250, 10)})
    order_id = await _claimed_order(pool, "rope", 4)
    await _crash_mid_write(pool, datastore_url, order_id, "reserve", 6, sent=True)
    async with pool.acquire() as conn:  # a previous version recorded no request
        await conn.execute("UPDATE reservations SET reserve_request = NULL")
    steps = StockSteps(
        pool, DatastoreClient(http, [datastore_url]), owner="w", lease_s=60, cas_retries=5
    )
    assert await steps.reserve(order_id, await _item(pool, order_id), None) is (
        StockOutcome.RESERVED
    )
    assert stock_available(datastore_url, "rope") == 6  # reserved once, not twice
    assert (await _item(pool, order_id)).reserve_attempt == 1


async def test_a_worker_whose_lease_was_taken_cannot_record_progress(
    pool: asyncpg.Pool, datastore_url: str, http: HttpClient
) -> None:
    seed_stock(datastore_url, {"rope": (250, 10)})
    order_id = await _claimed_order(pool, "rope", 4)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE sagas SET lease_owner = 'someone-else'")
    steps = StockSteps(
        pool, DatastoreClient(http, [datastore_url]), owner="w", lease_s=60, cas_retries=5
    )
    with pytest.raises(store.LeaseLost):
        await steps.reserve(order_id, await _item(pool, order_id), None)
    assert stock_available(datastore_url, "rope") == 10  # fenced before the write


async def test_the_client_falls_over_to_the_next_url_and_reports_when_none_answer(
    datastore_url: str, http: HttpClient
) -> None:
    seed_stock(datastore_url, {"rope": (250, 10)})
    dead = f"http://127.0.0.1:{free_port()}"
    client = DatastoreClient(http, [dead, datastore_url], timeout_s=5)
    record = await client.get("stock/rope")
    assert record is not None and record.value["available"] == 10
    assert await client.get("stock/none") is None
    with pytest.raises(DatastoreUnavailable):
        await DatastoreClient(http, [dead], timeout_s=5).get("stock/rope")
