"""`POST /orders` bodies as the model reads them: what JSON says, exactly (no process)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from yardarm_orders.payloads import MAX_LINE_QUANTITY, OrderRequest


def body(*lines: tuple[str, Any]) -> dict[str, Any]:
    items = [{"sku": sku, "quantity": quantity} for sku, quantity in lines]
    return {"customer_id": "c-1", "items": items, "payment": {"card": "4242424242424242"}}


def errors(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        OrderRequest.model_validate(document)
    return {
        ".".join(str(part) for part in error["loc"]): error["msg"]
        for error in caught.value.errors()
    }


def test_merged_lines_over_the_maximum_name_every_line_of_the_sku() -> None:
    found = errors(body(("rope", 999), ("lamp", 1000), ("rope", 1), ("rope", 1)))
    assert set(found) == {"items.0.quantity", "items.2.quantity", "items.3.quantity"}
    assert all("'rope' is ordered 1001 times" in message for message in found.values())
    merged = OrderRequest.model_validate(body(("rope", 999), ("lamp", 1000), ("rope", 1)))
    assert [(i.sku, i.quantity) for i in merged.merged_items()] == [
        ("rope", MAX_LINE_QUANTITY),
        ("lamp", MAX_LINE_QUANTITY),
    ]


@pytest.mark.parametrize("quantity", [2, 2.0, 2e0])
def test_a_quantity_is_any_json_integer(quantity: Any) -> None:
    """JSON Schema's `integer` (what the document says) includes 2.0; the request is the
    same request as with 2 (one Idempotency-Key may replay it)."""
    request = OrderRequest.model_validate(body(("rope", quantity)))
    assert request.items[0].quantity == 2 and type(request.items[0].quantity) is int
    assert request.request_hash() == OrderRequest.model_validate(body(("rope", 2))).request_hash()


@pytest.mark.parametrize("quantity", ["2", True, 2.5, 0, 1001, 1001.0, None])
def test_a_quantity_that_is_not_an_integer_in_range_is_refused(quantity: Any) -> None:
    assert set(errors(body(("rope", quantity)))) == {"items.0.quantity"}


def test_the_schema_states_the_bounds_the_model_checks() -> None:
    item = OrderRequest.model_json_schema()["$defs"]["OrderItem"]["properties"]["quantity"]
    assert (item["type"], item["minimum"], item["maximum"]) == ("integer", 1, MAX_LINE_QUANTITY)
    customer = OrderRequest.model_json_schema()["properties"]["customer_id"]
    assert (customer["minLength"], customer["maxLength"]) == (1, 128)
    assert customer["pattern"] == "^[^\\u0000]*$"
