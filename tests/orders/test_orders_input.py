"""Hostile input against a real orders process: every refusal is a 4xx problem that
creates nothing, never a 500 (each case was a 500 found by fuzzing a running stack)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx

from tests.orders.conftest import OrdersProcess, order_body, seed_stock
from tests.orders.test_orders_api import assert_problem, fields

MAX_LINE_QUANTITY = 1000


def post_raw(service: OrdersProcess, raw: bytes, key: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json", "Idempotency-Key": key or str(uuid.uuid4())}
    return httpx.post(f"{service.url}/orders", content=raw, headers=headers, timeout=20)


async def count_rows(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            table: int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
            for table in ("orders", "idempotency_keys", "sagas", "outbox")
        }
    finally:
        await conn.close()


NOTHING = {"orders": 0, "idempotency_keys": 0, "sagas": 0, "outbox": 0}


async def test_bodies_the_kit_refuses_are_4xx_problems_and_create_nothing(
    orders_service: OrdersProcess,
) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 10)})
    good = '"items": [{"sku": "rope", "quantity": 1}], "payment": {"card": "4242424242424242"}'
    cases: list[tuple[str, bytes, int, str | None]] = [
        # Postgres refuses U+0000 in text: the field is named, not a 500 from the insert.
        ("NUL in customer_id", b'{"customer_id": "a\\u0000b", ' + good.encode() + b"}", 422,
         "customer_id"),
        ("lone surrogate in customer_id", b'{"customer_id": "\\ud800", ' + good.encode() + b"}",
         422, "customer_id"),
        # Python's int-string conversion limit (4,300 digits) raised ValueError mid-decode.
        ("an integer of 4,400 digits",
         b'{"customer_id": "c", "items": [{"sku": "rope", "quantity": ' + b"7" * 4400
         + b'}], "payment": {"card": "4242424242424242"}}', 400, None),
        # json's recursive decoder hit the recursion limit.
        ("5,000 nested brackets", b"[" * 5000 + b"]" * 5000, 400, None),
        ("a NUL in an object key", b'{"customer_id\\u0000": "c", ' + good.encode() + b"}", 422,
         None),
    ]  # fmt: skip
    answers = {name: post_raw(orders_service, raw) for name, raw, _, _ in cases}
    assert {name: response.status_code for name, response in answers.items()} == {
        name: status for name, _, status, _ in cases
    }
    for name, _, status, field in cases:
        problem = assert_problem(answers[name], status)
        if field is not None:
            assert field in fields(problem), (name, problem)
    assert await count_rows(orders_service.dsn) == NOTHING


async def test_one_sku_on_several_lines_over_the_line_maximum_is_422_naming_its_lines(
    orders_service: OrdersProcess,
) -> None:
    """Each line is within 1..1000 but the merged line is not: the request is refused as a
    whole, naming every line of that SKU, before anything is priced or stored."""
    seed_stock(orders_service.datastore_url, {"rope": (250, 5000), "lamp": (1999, 5000)})
    lines = [
        {"sku": "rope", "quantity": 600},
        {"sku": "lamp", "quantity": 1},
        {"sku": "rope", "quantity": 401},
    ]
    problem = assert_problem(orders_service.post(order_body(lines), str(uuid.uuid4())), 422)
    assert fields(problem) == {"items.0.quantity", "items.2.quantity"}
    errors: Any = problem["errors"]
    assert all("rope" in error["message"] and "1001" in error["message"] for error in errors)
    assert await count_rows(orders_service.dsn) == NOTHING

    # Exactly the maximum, merged, is an order.
    at_most = [{"sku": "rope", "quantity": 600}, {"sku": "rope", "quantity": 400}]
    created = orders_service.post(order_body(at_most), str(uuid.uuid4()))
    assert created.status_code == 202, created.text
    order = orders_service.get(created.json()["id"]).json()
    assert [(i["sku"], i["quantity"]) for i in order["items"]] == [("rope", MAX_LINE_QUANTITY)]


async def test_hostile_paths_and_headers_are_4xx_problems(orders_service: OrdersProcess) -> None:
    """Malformed ids and SKUs are 422 naming the parameter (they can name nothing); text a
    URL cannot carry (NUL, an encoded lone surrogate) is the kit's 400."""
    url = orders_service.url
    cases = [
        ("GET", "/orders/not-a-uuid", 422),
        # Only the hyphenated form `format: uuid` names, not the others Python parses.
        ("GET", "/orders/" + uuid.uuid4().hex, 422),
        ("GET", "/orders/urn:uuid:" + str(uuid.uuid4()), 422),
        ("GET", "/orders/" + "a" * 5000, 422),
        ("GET", "/orders/%F0%9F%98%80", 422),
        ("POST", "/orders/%F0%9F%98%80/cancel", 422),
        ("POST", "/orders/" + "9" * 5000 + "/cancel", 422),
        ("GET", "/orders/%00", 400),
        ("GET", "/orders/%ED%A0%80", 400),
        ("GET", "/stock/%C3%A9", 422),
        ("GET", "/stock/" + "a" * 65, 422),
        ("GET", "/stock/a%2Fb", 422),
        ("GET", "/stock/%00", 400),
        ("GET", "/stock/%ED%A0%80", 400),
    ]
    seed_stock(orders_service.datastore_url, {"rope": (250, 10)})
    body = order_body([{"sku": "rope", "quantity": 1}])
    async with httpx.AsyncClient(timeout=20) as client:
        answers = [await client.request(m, url + path) for m, path, _ in cases]
        assert [a.status_code for a in answers] == [status for _, _, status in cases]
        for answer, (_, _, status) in zip(answers, cases, strict=True):
            assert_problem(answer, status)
        for key in ["é".encode(), b"a b", b"k" * 256, b""]:
            response = await client.post(
                f"{url}/orders", json=body, headers={"Idempotency-Key": key}
            )
            assert fields(assert_problem(response, 400)) == {"header.Idempotency-Key"}
        missing = assert_problem(await client.post(f"{url}/orders", json=body), 400)
        assert fields(missing) == {"header.Idempotency-Key"}
    assert await count_rows(orders_service.dsn) == NOTHING
    assert orders_service.post(body, "~" * 255).status_code == 202  # the widest key


async def test_any_storable_customer_id_round_trips_exactly(orders_service: OrdersProcess) -> None:
    seed_stock(orders_service.datastore_url, {"rope": (250, 100)})
    for customer in [
        "\U0001f600" * 128,  # 128 characters, 512 bytes
        "\uffff\ufffe",  # noncharacters are still text
        "\u202eright-to-left\u2028",
        "e\u0301",  # combining: not normalized
        "\x7f\x01\t",
    ]:
        body = order_body([{"sku": "rope", "quantity": 1}], customer=customer)
        created = orders_service.post(body, str(uuid.uuid4()))
        assert created.status_code == 202, (customer, created.text)
        assert orders_service.get(created.json()["id"]).json()["customer_id"] == customer
    too_long = order_body([{"sku": "rope", "quantity": 1}], customer="\U0001f600" * 129)
    assert fields(assert_problem(orders_service.post(too_long, "k-long"), 422)) == {"customer_id"}


async def test_a_catalog_entry_priced_beyond_any_order_total_is_not_for_sale(
    orders_service: OrdersProcess,
) -> None:
    """A stock record is operator data, read as input like any other: a price whose order
    total could not be stored (Postgres bigint) makes it no catalog entry, not a 500."""
    seed_stock(orders_service.datastore_url, {"gold": (10**19, 10), "rope": (250, 10)})
    body = order_body([{"sku": "gold", "quantity": 1}])
    problem = assert_problem(orders_service.post(body, str(uuid.uuid4())), 422)
    assert fields(problem) == {"items.0.sku"}
    assert await count_rows(orders_service.dsn) == NOTHING
    async with httpx.AsyncClient(base_url=orders_service.url, timeout=10) as client:
        listed = (await client.get("/stock")).json()["items"]
        assert [item["sku"] for item in listed] == ["rope"]
        assert_problem(await client.get("/stock/gold"), 404)
