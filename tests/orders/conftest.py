"""Fixtures for orders tests: migrated databases, a real datastore, a real orders process.

Postgres and NATS come from the shared fixtures in tests/conftest.py. The datastore and
the orders service run as processes (`python -m ...`), configured through the same
environment variables the local runtime sets.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from yardarm_kit.postgres import migrate
from yardarm_orders.app import MIGRATION_LOCK_ID

from tests.conftest import free_port, wait_for_port

CARD_OK = "4242424242424242"
# Re-sends and timeouts far beyond any test's waits, for tests about other behaviour.
PATIENT_SAGA = {
    "YARDARM_ORDERS_RESEND_AFTER_S": "120",
    "YARDARM_ORDERS_RESEND_MAX_S": "120",
    "YARDARM_ORDERS_CHARGE_TIMEOUT_S": "600",
    "YARDARM_ORDERS_SHIPPING_TIMEOUT_S": "600",
}


@pytest.fixture
async def orders_dsn(pg_database: str) -> str:
    """A fresh database with the orders schema applied."""
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn, "yardarm_orders", MIGRATION_LOCK_ID)
    finally:
        await conn.close()
    return pg_database


@pytest.fixture
async def pool(orders_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    from yardarm_kit.postgres import create_pool

    created = await create_pool(orders_dsn, max_size=6)
    try:
        yield created
    finally:
        await created.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture
def datastore_url(tmp_path: Path) -> Iterator[str]:
    """A real datastore process on a free port, with its own data directory."""
    port = free_port()
    log = tmp_path / "datastore.log"
    env = {
        **os.environ,
        "YARDARM_DATASTORE_PORT": str(port),
        "YARDARM_DATASTORE_DATA_DIR": str(tmp_path / "datastore-data"),
        "YARDARM_DATASTORE_STATE_DIR": str(tmp_path / "state"),
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "yardarm_datastore"], env=env, stdout=out, stderr=out
        )
    try:
        wait_for_port(port)
        _wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def seed_stock(datastore_url: str, items: dict[str, tuple[int, int]]) -> None:
    """Create `sku -> (price_cents, available)` records in the datastore."""
    for sku, (price, available) in items.items():
        value = {"sku": sku, "name": f"{sku} name", "price_cents": price, "available": available}
        response = httpx.put(f"{datastore_url}/kv/stock/{sku}", json={"value": value}, timeout=10)
        assert response.status_code in (200, 201), response.text


def stock_available(datastore_url: str, sku: str) -> int:
    response = httpx.get(f"{datastore_url}/kv/stock/{sku}", timeout=10)
    assert response.status_code == 200, response.text
    return int(response.json()["value"]["available"])


@dataclass
class OrdersProcess:
    url: str
    dsn: str
    datastore_url: str
    nats_url: str
    log: Path

    def post(self, body: dict[str, Any], key: str | None, **kwargs: Any) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key is not None else {}
        return httpx.post(f"{self.url}/orders", json=body, headers=headers, timeout=20, **kwargs)

    def get(self, order_id: str) -> httpx.Response:
        return httpx.get(f"{self.url}/orders/{order_id}", timeout=10)

    async def wait_status(
        self, order_id: str, statuses: set[str], timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                order: dict[str, Any] = (await client.get(f"{self.url}/orders/{order_id}")).json()
                if order["status"] in statuses:
                    return order
                if time.monotonic() > deadline:
                    raise AssertionError(f"order not {statuses} after {timeout}s: {order}")
                await asyncio.sleep(0.1)


def start_orders(
    tmp_path: Path,
    *,
    dsn: str,
    nats_url: str,
    datastore_url: str,
    instance: str = "orders-0",
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], OrdersProcess]:
    port = free_port()
    log = tmp_path / f"{instance}.log"
    env = {
        **os.environ,
        "YARDARM_ORDERS_PORT": str(port),
        "YARDARM_ORDERS_INSTANCE": instance,
        "YARDARM_ORDERS_STATE_DIR": str(tmp_path / "state"),
        "YARDARM_ORDERS_DATABASE_URL": dsn,
        "YARDARM_ORDERS_NATS_URL": nats_url,
        "YARDARM_ORDERS_DATASTORE_URLS": json.dumps([datastore_url]),
        **(extra_env or {}),
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "yardarm_orders"], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{url}/readyz", proc, log)
    except BaseException:
        _stop(proc)
        raise
    return proc, OrdersProcess(url, dsn, datastore_url, nats_url, log)


@pytest.fixture
def orders_service(
    tmp_path: Path, pg_database: str, nats_url: str, datastore_url: str
) -> Iterator[OrdersProcess]:
    """A real orders process on a fresh database, the session's NATS and a real datastore;
    commands are not re-sent and steps do not time out within a test."""
    proc, service = start_orders(
        tmp_path,
        dsn=pg_database,
        nats_url=nats_url,
        datastore_url=datastore_url,
        extra_env=PATIENT_SAGA,
    )
    try:
        yield service
    finally:
        _stop(proc)


def order_body(
    items: list[dict[str, Any]], *, customer: str = "c-1", card: str = CARD_OK
) -> dict[str, Any]:
    return {"customer_id": customer, "items": items, "payment": {"card": card}}
