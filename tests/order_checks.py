"""An order through a stack's public entry and its trace: what the whole-stack tests of
every target check the same way (the containers', the bare-metal hosts')."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from yardarm.tracing_view import Span

SERVICES = ("gateway", "orders", "fulfillment", "datastore")
GOOD_CARD = "4242424242424242"
# A stack's start and a saga's steps are seconds each on a busy machine; wide bounds.
BOUND_S = 90.0

T = TypeVar("T")


def poll(what: str, check: Callable[[], T | None], bound_s: float = BOUND_S) -> T:
    """`check()` until it returns something truthy (an HTTP error counts as nothing yet),
    or fail saying `what` did not happen within `bound_s`."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound_s:.0f}s")
        time.sleep(0.5)


def confirmed_order(http: httpx.Client, customer: str, key: str) -> dict[str, Any]:
    """Place an order for one unit of the catalog's first SKU and return it once it is
    CONFIRMED (failing at once if the saga cancels or fails it)."""
    skus = poll("the catalog through the entry", lambda: http.get("/api/stock").json())
    sku = skus["items"][0]["sku"]
    body = {"customer_id": customer, "items": [{"sku": sku, "quantity": 1}],
            "payment": {"card": GOOD_CARD}}  # fmt: skip
    placed = http.post("/api/orders", json=body, headers={"Idempotency-Key": key})
    assert placed.status_code in (201, 202), placed.text
    order_id = placed.json()["id"]

    def confirmed() -> dict[str, Any] | None:
        order: dict[str, Any] = http.get(f"/api/orders/{order_id}").json()
        assert order["status"] not in ("CANCELLED", "FAILED"), order
        return order if order["status"] == "CONFIRMED" else None

    return poll(f"order {order_id} confirmed", confirmed)


def trace_roots(spans: list[Span]) -> list[tuple[str, str]]:
    """(service, name) of each span whose parent is not in `spans`."""
    ids = {span.span_id for span in spans}
    return [(span.service, span.name) for span in spans if span.parent_id not in ids]


def whole_trace(trace_id: str, spans_now: Callable[[], list[Span]]) -> list[Span]:
    """The trace's spans once every service wrote its part and one root remains: each
    service exports in batches, so a span may be on disk before its parent is."""

    def whole() -> list[Span] | None:
        spans = [span for span in spans_now() if span.trace_id == trace_id]
        if {span.service for span in spans} >= set(SERVICES) and len(trace_roots(spans)) == 1:
            return spans
        return None

    try:
        return poll(f"trace {trace_id} whole in all four services' span files", whole)
    except AssertionError:
        seen = [span for span in spans_now() if span.trace_id == trace_id]
        raise AssertionError(
            f"services {sorted({s.service for s in seen})}, roots {trace_roots(seen)}"
        ) from None
