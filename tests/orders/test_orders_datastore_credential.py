"""Orders' datastore credential: read from its file, sent as a bearer token, and a refusal
is a 503 to clients (an outage to them) while the log names the credential."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiohttp import web
from yardarm_kit.access import new_token, write_token
from yardarm_orders.settings import OrdersSettings

from tests.conftest import free_port
from tests.orders.conftest import _stop, order_body, start_orders
from tests.orders.test_orders_api import assert_problem


def test_the_token_file_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {
        "DATABASE_URL": "postgresql://db",
        "NATS_URL": "nats://bus",
        "DATASTORE_URLS": '["http://ds"]',
        "PORT": "1",
    }.items():
        monkeypatch.setenv(f"YARDARM_ORDERS_{name}", value)
    assert OrdersSettings().datastore_token_file is None
    monkeypatch.setenv("YARDARM_ORDERS_DATASTORE_TOKEN_FILE", str(tmp_path / "orders.token"))
    settings = OrdersSettings()
    assert settings.datastore_token_file == tmp_path / "orders.token"


class RefusingDatastore:
    """A datastore whose access document does not know the caller: every request is 401."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        body = {"type": "about:blank", "title": "Unauthorized", "status": 401}
        return web.json_response(
            body,
            status=401,
            content_type="application/problem+json",
            headers={"WWW-Authenticate": 'Bearer realm="datastore"'},
        )


@pytest.fixture
async def refusing_datastore() -> AsyncIterator[tuple[RefusingDatastore, str]]:
    fake = RefusingDatastore()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_refused_credential_is_503_with_retry_after_and_logged_as_refused(
    tmp_path: Path,
    pg_database: str,
    nats_url: str,
    refusing_datastore: tuple[RefusingDatastore, str],
) -> None:
    fake, url = refusing_datastore
    token = new_token()
    token_file = tmp_path / "credentials" / "orders.token"
    write_token(token_file, token + "\n")  # an editor's trailing newline is not the token
    proc, service = await asyncio.to_thread(
        start_orders,
        tmp_path,
        dsn=pg_database,
        nats_url=nats_url,
        datastore_url=url,
        extra_env={"YARDARM_ORDERS_DATASTORE_TOKEN_FILE": str(token_file)},
    )
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=20) as client:
            body = order_body([{"sku": "rope", "quantity": 1}])
            answers = [
                await client.post("/orders", json=body, headers={"Idempotency-Key": "k-1"}),
                await client.get("/stock"),
                await client.get("/stock/rope"),
            ]
            for response in answers:
                assert_problem(response, 503)
                assert response.headers["Retry-After"] == "1"
                assert url not in response.text  # the cause is for the log, not the client
    finally:
        await asyncio.to_thread(_stop, proc)
    conn = await asyncpg.connect(pg_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders") == 0
    finally:
        await conn.close()
    assert fake.authorizations and set(fake.authorizations) == {f"Bearer {token}"}
    logged = [json.loads(line) for line in service.log.read_text().splitlines() if line[:1] == "{"]
    refused = [entry for entry in logged if entry.get("event") == "datastore_credential_refused"]
    assert len(refused) == len(answers)
    assert all("refused this replica's credential" in entry["message"] for entry in refused)
    assert all(entry["level"] == "error" and entry["status"] == 401 for entry in refused)
