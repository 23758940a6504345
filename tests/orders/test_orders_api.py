"""The orders HTTP API on a real process: validation, idempotency, stock, reads."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from tests.orders.conftest import OrdersProcess, order_body, seed_stock

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, object] = response.json()
    assert body["status"] == status and body["title"]
    return body


def fields(problem: dict[str, object]) -> set[str]:
    errors = problem["errors"]
    assert isinstance(errors, list)
    return {error["field"] for error in errors}


def test_missing_or_bad_idempotency_key_is_400(orders_service: OrdersProcess) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 10)})
    body = order_body([{"sku": "rope", "quantity": 1}])
    assert_problem(orders_service.post(body, None), 400)
    assert_problem(orders_service.post(body, "x" * 256), 400)


def test_validation_errors_name_the_fields(orders_service: OrdersProcess) -> None:
    key = str(uuid.uuid4())
    problem = assert_problem(orders_service.post({"customer_id": "c", "items": []}, key), 422)
    assert {"items", "payment"} <= fields(problem)

    bad = {
        "customer_id": "",
        "items": [{"sku": "rope", "quantity": 0}, {"sku": "", "quantity": 1001}],
        "payment": {"card": "42-42"},
    }
    problem = assert_problem(orders_service.post(bad, key), 422)
    assert {
        "customer_id",
        "items.0.quantity",
        "items.1.sku",
        "items.1.quantity",
        "payment.card",
    } <= fields(problem)
    assert_problem(orders_service.post(order_body([{"sku": "rope", "quantity": 1}] * 51), key), 422)
    malformed = httpx.post(
        f"{orders_service.url}/orders",
        content=b"{nope",
        headers={"Idempotency-Key": key, "content-type": "application/json"},
    )
    assert_problem(malformed, 400)


def test_unknown_sku_is_422_pointing_at_the_item(orders_service: OrdersProcess) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 10)})
    body = order_body([{"sku": "rope", "quantity": 1}, {"sku": "no-such-sku", "quantity": 1}])
    problem = assert_problem(orders_service.post(body, str(uuid.uuid4())), 422)
    assert fields(problem) == {"items.1.sku"}
    assert problem["type"] == "urn:yardarm:orders:unknown-sku"


async def test_same_key_same_body_is_the_same_order_and_other_body_is_422(
    orders_service: OrdersProcess,
) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 10)})
    key = str(uuid.uuid4())
    body = order_body([{"sku": "rope", "quantity": 2}])
    first = orders_service.post(body, key)
    assert first.status_code == 202, first.text
    order_id = first.json()["id"]
    assert first.headers["Location"] == f"/orders/{order_id}"
    assert first.json()["status"] == "PENDING"

    again = orders_service.post(body, key)
    assert again.status_code == 202
    assert again.json()["id"] == order_id
    assert again.headers["Location"] == first.headers["Location"]

    reused = assert_problem(orders_service.post({**body, "customer_id": "someone-else"}, key), 422)
    assert reused["type"] == "urn:yardarm:orders:idempotency-key-reused"

    conn = await asyncpg.connect(orders_service.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders") == 1
    finally:
        await conn.close()


async def test_concurrent_requests_with_one_key_create_one_order(
    orders_service: OrdersProcess,
) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 100)})
    key = str(uuid.uuid4())
    body = order_body([{"sku": "rope", "quantity": 1}])
    async with httpx.AsyncClient(timeout=20) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    f"{orders_service.url}/orders", json=body, headers={"Idempotency-Key": key}
                )
                for _ in range(8)
            )
        )
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {202, 409}, [r.text for r in responses]
    ids = {r.json()["id"] for r in responses if r.status_code == 202}
    assert len(ids) == 1
    conn = await asyncpg.connect(orders_service.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders") == 1
    finally:
        await conn.close()


async def test_same_key_while_the_first_is_still_being_created_is_409(
    orders_service: OrdersProcess,
) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 10)})
    key = str(uuid.uuid4())
    holder = await asyncpg.connect(orders_service.dsn)
    try:
        tx = holder.transaction()
        await tx.start()  # an open creating transaction holding the key
        await holder.execute(
            "INSERT INTO idempotency_keys (key, request_hash, order_id) VALUES ($1, 'h', $2)",
            key,
            uuid.uuid4(),
        )
        body = order_body([{"sku": "rope", "quantity": 1}])
        response = await asyncio.to_thread(orders_service.post, body, key)
        assert_problem(response, 409)
        assert response.headers["Retry-After"]
        await tx.rollback()
        assert (await asyncio.to_thread(orders_service.post, body, key)).status_code == 202
    finally:
        await holder.close()


def test_order_reads_back_with_total_items_trace_and_history(
    orders_service: OrdersProcess,
) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 10), "lamp": (1999, 5)})
    body = order_body(
        [
            {"sku": "rope", "quantity": 2},
            {"sku": "lamp", "quantity": 1},
            {"sku": "rope", "quantity": 1},  # duplicates are merged into one line
        ]
    )
    created = orders_service.post(body, str(uuid.uuid4()))
    assert created.status_code == 202, created.text
    order = orders_service.get(created.json()["id"]).json()
    assert order["total_cents"] == 3 * 250 + 1999
    assert [(i["sku"], i["quantity"]) for i in order["items"]] == [("rope", 3), ("lamp", 1)]
    assert order["status"] in {"PENDING", "CANCELLED", "CONFIRMED"}
    assert len(order["trace_id"]) == 32
    assert order["history"][0]["step"] == "order.created"
    assert order["history"][0]["trace_id"] == order["trace_id"]
    assert "card" not in order and order["card_last4"] == "4242"
    for key in ("created_at", "updated_at", "reason"):
        assert key in order


def test_an_unknown_order_id_is_404_and_a_malformed_one_422(orders_service: OrdersProcess) -> None:
    assert_problem(orders_service.get(str(uuid.uuid4())), 404)
    problem = assert_problem(orders_service.get("not-a-uuid"), 422)
    assert fields(problem) == {"path.order_id"}


def test_stock_lists_every_page_and_reads_one(orders_service: OrdersProcess) -> None:
    skus = {f"sku-{i:03d}": (100 + i, i) for i in range(130)}  # more than one datastore page
    seed_stock(orders_service.datastore_url, skus)
    listing = httpx.get(f"{orders_service.url}/stock", timeout=10).json()["items"]
    assert {item["sku"] for item in listing} == set(skus)
    one = httpx.get(f"{orders_service.url}/stock/sku-007", timeout=10).json()
    assert one == {"sku": "sku-007", "name": "sku-007 name", "price_cents": 107, "available": 7}
    assert_problem(httpx.get(f"{orders_service.url}/stock/nope", timeout=10), 404)
    # Not an SKU at all (it could never be in the catalog): the parameter is refused.
    problem = assert_problem(httpx.get(f"{orders_service.url}/stock/..%2F..", timeout=10), 422)
    assert fields(problem) == {"path.sku"}
