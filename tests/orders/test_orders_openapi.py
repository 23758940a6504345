"""The orders OpenAPI document: complete, exact, and clean under schemathesis against a
real orders process (real Postgres, NATS and datastore) whose sagas a real fulfillment
process answers, so orders reach every status and cancel every outcome."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
from pydantic import ValidationError
from yardarm_kit.validation import field_errors
from yardarm_orders import orders_api
from yardarm_orders.app import create_orders
from yardarm_orders.payloads import OrderRequest
from yardarm_orders.settings import OrdersSettings

from tests.conftest import free_port
from tests.openapi_checks import documented, routed, run_schemathesis
from tests.orders import schemathesis_hooks as hooks
from tests.orders.conftest import OrdersProcess, _stop, _wait_ready, seed_stock
from tests.orders.test_orders_timeouts import metric
from yardarm.local import infra

# The SKUs schemathesis.toml's `orders-test-catalog` dictionary names.
CATALOG = {"rope": (250, 10_000_000), "lamp": (1999, 10_000_000)}


def _service(tmp_path: Path) -> Any:
    settings = OrdersSettings(
        port=1,
        database_url="postgresql://unused",
        nats_url="nats://unused",
        datastore_urls=["http://unused"],
        state_dir=tmp_path,
    )
    return create_orders(settings).service


def test_every_route_is_documented_and_every_documented_operation_routed(
    tmp_path: Path,
) -> None:
    service = _service(tmp_path)
    document = service.api.document()
    assert routed(service.app) == documented(document)
    assert {
        ("POST", "/orders"),
        ("GET", "/orders/{order_id}"),
        ("POST", "/orders/{order_id}/cancel"),
        ("GET", "/stock"),
        ("GET", "/stock/{sku}"),
    } <= documented(document)


def test_the_document_loads_in_schemathesis_and_declares_what_the_handlers_answer(
    tmp_path: Path,
) -> None:
    document = _service(tmp_path).api.document()
    schema = schemathesis.openapi.from_dict(document)
    assert {result.ok().label for result in schema.get_all_operations()} >= {
        "POST /orders", "GET /orders/{order_id}", "POST /orders/{order_id}/cancel",
    }  # fmt: skip
    paths = document["paths"]
    create = paths["/orders"]["post"]
    [key] = create["parameters"]
    assert (key["name"], key["in"], key["required"]) == ("Idempotency-Key", "header", True)
    visible = re.compile(key["schema"]["pattern"])
    assert visible.search("~" * 255) and visible.search("550e8400-e29b-41d4")
    assert not any(visible.search(k) for k in ("", "a b", "k" * 256, "é", "key\n"))
    accepted = create["responses"]["202"]
    assert accepted["headers"]["Location"]["required"] is True
    assert {link["operationId"] for link in accepted["links"].values()} == {
        "getOrder",
        "cancelOrder",
    }
    assert all(
        link["parameters"] == {"order_id": "$response.body#/id"}
        for link in accepted["links"].values()
    )
    assert create["responses"]["409"]["headers"]["Retry-After"]["required"] is True
    assert create["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    assert set(create["responses"]) == {
        "202",
        "400",
        "409",
        "413",
        "415",
        "422",
        "500",
        "503",
        "504",
    }
    cancel = paths["/orders/{order_id}/cancel"]["post"]
    assert set(cancel["responses"]) == {"200", "202", "400", "404", "409", "422", "500", "504"}
    assert cancel["responses"]["409"]["headers"]["Retry-After"]["required"] is True
    [order_id] = paths["/orders/{order_id}"]["get"]["parameters"]
    assert order_id["schema"] == {"format": "uuid", "type": "string"}
    order = document["components"]["schemas"]["OrderDocument"]
    assert order["additionalProperties"] is False
    assert set(order["required"]) == set(order["properties"])
    for nullable in ("reason", "trace_id", "saga"):
        assert {"type": "null"} in order["properties"][nullable]["anyOf"]
    assert {"history", "saga"} <= set(order["properties"])
    for path in ("/stock", "/stock/{sku}"):
        assert paths[path]["get"]["responses"]["503"]["headers"]["Retry-After"]["required"]


def test_the_fuzzing_hooks_know_the_contract_refusals_by_their_problems() -> None:
    """The hooks drop only these refusals of schema-valid orders; they must recognize
    exactly the problems the service gives."""
    assert hooks.UNKNOWN_SKU_TYPE == orders_api.UNKNOWN_SKU_TYPE
    assert hooks.KEY_REUSED_TYPE == orders_api.KEY_REUSED_TYPE
    with pytest.raises(ValidationError) as caught:
        OrderRequest.model_validate(
            {"customer_id": "c", "payment": {"card": "4242424242424242"},
             "items": [{"sku": "rope", "quantity": 600}, {"sku": "rope", "quantity": 401}]}
        )  # fmt: skip
    merged = {"type": "about:blank", "status": 422, "errors": field_errors(caught.value)}
    assert hooks.contract_refusal(merged)
    assert hooks.contract_refusal({"type": orders_api.UNKNOWN_SKU_TYPE})
    assert not hooks.contract_refusal({"type": "about:blank", "errors": [
        {"field": "customer_id", "message": "contains U+0000 (NUL), which cannot be stored"}
    ]})  # fmt: skip


@pytest.fixture
def fulfillment_url(postgres_port: int, nats_url: str, tmp_path: Path) -> Iterator[str]:
    """A real fulfillment process on its own database, answering the orders' commands."""
    name = f"f_{uuid.uuid4().hex[:12]}"
    asyncio.run(infra.create_databases(postgres_port, [name]))
    port = free_port()
    log = tmp_path / "fulfillment-0.log"
    env = {
        **os.environ,
        "YARDARM_FULFILLMENT_PORT": str(port),
        "YARDARM_FULFILLMENT_INSTANCE": "fulfillment-0",
        "YARDARM_FULFILLMENT_STATE_DIR": str(tmp_path / "state"),
        "YARDARM_FULFILLMENT_DATABASE_URL": infra.postgres_dsn(postgres_port, name),
        "YARDARM_FULFILLMENT_NATS_URL": nats_url,
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "yardarm_fulfillment"], env=env, stdout=out, stderr=out
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)
        asyncio.run(_drop_database(postgres_port, name))


async def _drop_database(port: int, name: str) -> None:
    conn = await asyncpg.connect(infra.postgres_dsn(port))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def test_schemathesis_finds_nothing(
    orders_service: OrdersProcess, fulfillment_url: str
) -> None:
    seed_stock(orders_service.datastore_url, CATALOG)
    run = await run_schemathesis(orders_service.url)
    assert run.clean, run.report()
    # The run reached the API's logic, not only its validation: orders were accepted,
    # read back and cancelled (or refused while their saga ran).
    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"{orders_service.url}/metrics")).text
    served = "http_server_request_duration_seconds_count"
    for method, route, status in [
        ("POST", "/orders", "202"),
        ("GET", "/orders/{order_id}", "200"),
        ("GET", "/stock/{sku}", "200"),
    ]:
        count = metric(
            metrics, served, http_request_method=method, http_route=route,
            http_response_status_code=status,
        )  # fmt: skip
        assert count > 0, (method, route, status)


def test_the_served_document_is_the_registry(orders_service: OrdersProcess, tmp_path: Path) -> None:
    served = httpx.get(f"{orders_service.url}/openapi.json", timeout=10).json()
    assert served == _service(tmp_path).api.document()
