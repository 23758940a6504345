"""`yardarm trace` reads OTLP/JSON lines and rebuilds the span tree across services."""

from __future__ import annotations

import json
from pathlib import Path

from yardarm import tracing_view

TRACE = "0af7651916cd43dd8448eb211c80319c"


def _request(service: str, spans: list[dict[str, object]]) -> dict[str, object]:
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": service}},
                        {"key": "service.instance.id", "value": {"stringValue": f"{service}-0"}},
                    ]
                },
                "scopeSpans": [{"scope": {"name": "t"}, "spans": spans}],
            }
        ]
    }


def _span(
    span_id: str, parent: str | None, name: str, start: int, **attrs: object
) -> dict[str, object]:
    span: dict[str, object] = {
        "traceId": TRACE,
        "spanId": span_id,
        "name": name,
        "kind": "SPAN_KIND_SERVER",
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 2_000_000),
        "attributes": [{"key": k, "value": {"stringValue": str(v)}} for k, v in attrs.items()],
        "status": {},
    }
    if parent:
        span["parentSpanId"] = parent
    return span


def _write(home: Path) -> None:
    telemetry = home / "telemetry"
    telemetry.mkdir(parents=True)
    (telemetry / "gateway-0.jsonl").write_text(
        json.dumps(_request("gateway", [_span("a" * 16, None, "POST /api/orders", 1000)])) + "\n"
    )
    orders = _request(
        "orders", [_span("b" * 16, "a" * 16, "POST /orders", 2000, **{"order.id": "o-1"})]
    )
    (telemetry / "orders-0.jsonl").write_text(json.dumps(orders) + "\n" + '{"torn": ')
    (telemetry / "fulfillment-0.jsonl.1").write_text(
        json.dumps(
            _request(
                "fulfillment", [_span("c" * 16, "b" * 16, "cmd.payments.charge process", 3000)]
            )
        )
        + "\n"
    )


def test_spans_from_every_file_form_one_tree(tmp_path: Path) -> None:
    _write(tmp_path)
    roots = tracing_view.load_trace(tmp_path, TRACE)
    assert [r.name for r in roots] == ["POST /api/orders"]
    assert roots[0].children[0].service == "orders"
    assert roots[0].children[0].children[0].service == "fulfillment"
    assert tracing_view.services_in(roots) == {"gateway", "orders", "fulfillment"}


def test_order_id_resolves_to_its_trace(tmp_path: Path) -> None:
    _write(tmp_path)
    assert tracing_view.find_trace_id(tmp_path, "o-1") == TRACE
    assert tracing_view.find_trace_id(tmp_path, TRACE.upper()) == TRACE
    assert tracing_view.find_trace_id(tmp_path, "unknown") is None
