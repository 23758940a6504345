"""The direct OTLP/JSON encoder writes exactly the document the protobuf path wrote.

`_reference` is that old path (protobuf encoder, `MessageToDict`, ids rewritten to hex),
kept here as the oracle; every test feeds both the same real SDK spans.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from yardarm_kit.otlp_json import encode_spans_json, encode_spans_json_line
from yardarm_kit.telemetry import JsonLinesSpanExporter

from yardarm import tracing_view

REMOTE = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "v1"), ("other", "x")]),
)


def _hex_ids(node: Any) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str) and value:
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)
    return node


def _reference(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    return dict(_hex_ids(MessageToDict(encode_spans(spans))))


def _assert_same(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    document = encode_spans_json(spans)
    assert json.dumps(document, sort_keys=True) == json.dumps(_reference(spans), sort_keys=True)
    # The exporter's line is the same document, byte for byte as json.dumps writes it.
    assert encode_spans_json_line(spans) == json.dumps(document, separators=(",", ":"))
    return document


def _provider(
    service: str = "gateway", limits: SpanLimits | None = None
) -> tuple[TracerProvider, InMemorySpanExporter]:
    resource = Resource.create(
        {"service.name": service, "service.instance.id": f"{service}-1", "yardarm.track": "stable"},
        schema_url="https://opentelemetry.io/schemas/1.26.0",
    )
    provider = TracerProvider(resource=resource, span_limits=limits)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _spans(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        span
        for resource_spans in document["resourceSpans"]
        for scope_spans in resource_spans["scopeSpans"]
        for span in scope_spans["spans"]
    ]


def test_every_kind_root_child_and_remote_parent_encode_like_protobuf() -> None:
    provider, exporter = _provider()
    tracer = provider.get_tracer("yardarm.gateway")
    remote_parent = trace.set_span_in_context(NonRecordingSpan(REMOTE))
    with (
        tracer.start_as_current_span("GET /orders", context=remote_parent, kind=SpanKind.SERVER),
        tracer.start_as_current_span("pick endpoint"),
        tracer.start_as_current_span("GET", kind=SpanKind.CLIENT),
    ):
        pass
    with tracer.start_as_current_span("publish", kind=SpanKind.PRODUCER):
        pass
    with tracer.start_as_current_span("consume", kind=SpanKind.CONSUMER):
        pass

    document = _assert_same(exporter.get_finished_spans())

    by_name = {span["name"]: span for span in _spans(document)}
    server = by_name["GET /orders"]
    assert server["kind"] == "SPAN_KIND_SERVER" and server["traceState"] == "vendor=v1,other=x"
    assert server["parentSpanId"] == "00f067aa0ba902b7" and server["flags"] == 0x300
    assert by_name["GET"]["traceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert by_name["pick endpoint"]["flags"] == 0x100
    assert "parentSpanId" not in by_name["publish"] and by_name["consume"]["status"] == {}


def test_every_attribute_type_encodes_like_protobuf() -> None:
    provider, exporter = _provider()
    with provider.get_tracer("t").start_as_current_span("attrs") as span:
        span.set_attributes(
            {
                "str": "GET",
                "empty.str": "",
                "unicode": "größe ✓",
                "escaped": 'say "hi"\n\t\\ \x01',
                "schlüssel": "a non-ASCII key",
                "bool.true": True,
                "bool.false": False,
                "int": 503,
                "int.zero": 0,
                "int.negative": -42,
                "int.max": 2**63 - 1,
                "int.min": -(2**63),
                "float": 0.25,
                "float.zero": 0.0,
                "float.negative": -1e-300,
                "float.nan": float("nan"),
                "float.inf": float("inf"),
                "float.neg_inf": float("-inf"),
                "list.str": ["a", "", "c"],
                "list.bool": [True, False],
                "list.int": [1, -2, 0],
                "list.float": [1.5, -0.0],
                "list.empty": [],
            }
        )
        # The SDK also lets bytes, None and mappings through (the OTLP AnyValue model).
        span.set_attribute("bytes", b"\x00\xffyardarm")
        span.set_attribute("mapping", {"a": 1, "b": ["x"], "c": {}})
        span.set_attribute("list.mixed", [1, "x", None])

    document = _assert_same(exporter.get_finished_spans())

    values = {a["key"]: a["value"] for a in _spans(document)[0]["attributes"]}
    assert values["int.negative"] == {"intValue": "-42"} and values["list.empty"] == {
        "arrayValue": {}
    }
    assert values["float.nan"] == {"doubleValue": "NaN"} and values["empty.str"] == {
        "stringValue": ""
    }


def test_events_links_and_statuses_encode_like_protobuf() -> None:
    provider, exporter = _provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("ok") as ok:
        ok.set_status(Status(StatusCode.OK))
        ok.add_event("retry", {"attempt": 2, "why": "timeout", "backoff.ms": [10.0, 20.0]})
        ok.add_event("plain")
    with (
        tracer.start_as_current_span(
            "failed",
            links=[Link(REMOTE, {"messaging.batch": True}), Link(ok.get_span_context())],
        ) as failed,
    ):
        failed.set_status(Status(StatusCode.ERROR, "upstream answered 503"))
        failed.record_exception(ValueError("bad gateway"))
    with tracer.start_as_current_span("error without description") as bare:
        bare.set_status(StatusCode.ERROR)

    document = _assert_same(exporter.get_finished_spans())

    by_name = {span["name"]: span for span in _spans(document)}
    assert by_name["ok"]["status"] == {"code": "STATUS_CODE_OK"}
    assert by_name["failed"]["status"] == {
        "message": "upstream answered 503",
        "code": "STATUS_CODE_ERROR",
    }
    assert [link["flags"] for link in by_name["failed"]["links"]] == [0x300, 0x100]
    assert [event["name"] for event in by_name["ok"]["events"]] == ["retry", "plain"]


def test_two_resources_and_two_scopes_group_in_first_seen_order_like_protobuf() -> None:
    gateway, gateway_spans = _provider("gateway")
    orders, orders_spans = _provider("orders")
    twin, twin_spans = _provider("gateway")  # an equal resource from another provider
    scoped = gateway.get_tracer(
        "yardarm.gateway",
        "1.2.3",
        schema_url="https://opentelemetry.io/schemas/1.21.0",
        attributes={"scope.kind": "proxy"},
    )
    for tracer, name in (
        (orders.get_tracer("yardarm.orders"), "o1"),
        (scoped, "g1"),
        (gateway.get_tracer("yardarm.kit"), "k1"),
        (twin.get_tracer("yardarm.kit"), "k2"),
        (scoped, "g2"),
        (orders.get_tracer("yardarm.orders"), "o2"),
    ):
        with tracer.start_as_current_span(name):
            pass
    finished = {
        span.name: span
        for exporter in (gateway_spans, orders_spans, twin_spans)
        for span in exporter.get_finished_spans()
    }
    batch = [finished[name] for name in ("o1", "g1", "k1", "k2", "g2", "o2")]

    document = _assert_same(batch)

    layout = [
        [[span["name"] for span in scope_spans["spans"]] for scope_spans in rs["scopeSpans"]]
        for rs in document["resourceSpans"]
    ]
    assert layout == [[["o1", "o2"]], [["g1", "g2"], ["k1", "k2"]]]
    scope = document["resourceSpans"][1]["scopeSpans"][0]
    assert scope["scope"]["version"] == "1.2.3" and scope["schemaUrl"].endswith("1.21.0")


def test_dropped_attributes_events_and_links_are_counted_like_protobuf() -> None:
    limits = SpanLimits(
        max_span_attributes=2,
        max_events=1,
        max_links=1,
        max_event_attributes=1,
        max_link_attributes=1,
        max_attribute_length=4,
    )
    provider, exporter = _provider(limits=limits)
    tracer = provider.get_tracer("t")
    links = [Link(REMOTE), Link(REMOTE, {"a": 1, "b": 2})]  # the last one is kept
    with tracer.start_as_current_span("limited", links=links) as span:
        span.set_attributes({"one": "truncated", "two": 2, "three": 3, "four": 4})
        span.add_event("evicted")  # the oldest event makes room for the newest
        span.add_event("kept", {"a": 1, "b": 2, "c": 3})

    document = _assert_same(exporter.get_finished_spans())

    encoded = _spans(document)[0]
    assert encoded["droppedAttributesCount"] == 2 and encoded["droppedEventsCount"] == 1
    assert encoded["droppedLinksCount"] == 1
    assert [event["name"] for event in encoded["events"]] == ["kept"]
    assert encoded["events"][0]["droppedAttributesCount"] == 2
    assert encoded["links"][0]["droppedAttributesCount"] == 1


def test_attributes_protobuf_cannot_hold_are_dropped_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, exporter = _provider()
    with provider.get_tracer("t").start_as_current_span("odd") as span:
        span.set_attributes(
            {
                "too.big": 2**63,
                "too.small": -(2**63) - 1,
                "lone.surrogate": "a\ud800b",
                "big.in.list": [1, 2**64],
                "kept": "yes",
            }
        )
    spans = exporter.get_finished_spans()

    with caplog.at_level(logging.WARNING, logger="yardarm_kit.otlp_json"):
        document = _assert_same(spans)

    assert [a["key"] for a in _spans(document)[0]["attributes"]] == ["kept"]
    assert "too.big" in caplog.text and "lone.surrogate" in caplog.text


def test_spans_built_outside_a_tracer_and_empty_batches_encode_like_protobuf() -> None:
    bare = ReadableSpan(
        name="",
        context=SpanContext(trace_id=1, span_id=2, is_remote=False),
        parent=SpanContext(trace_id=1, span_id=0, is_remote=True),
        resource=Resource({}),
        instrumentation_scope=None,
        status=Status(StatusCode.ERROR),
    )
    scoped = ReadableSpan(
        name="scoped",
        context=SpanContext(trace_id=1, span_id=3, is_remote=False),
        resource=Resource({}),
        instrumentation_scope=InstrumentationScope(""),
        start_time=1,
        end_time=2,
    )

    document = _assert_same([bare, scoped])

    assert _assert_same([]) == {}
    assert _spans(document)[0] == {
        "traceId": f"{1:032x}",
        "spanId": f"{2:016x}",
        "parentSpanId": "0" * 16,
        "kind": "SPAN_KIND_INTERNAL",
        "status": {"code": "STATUS_CODE_ERROR"},
        "flags": 0x300,
    }


def test_exporter_writes_one_line_per_batch_that_yardarm_trace_reads_back(
    tmp_path: Path,
) -> None:
    provider, exporter = _provider("gateway")
    tracer = provider.get_tracer("yardarm.gateway")
    remote_parent = trace.set_span_in_context(NonRecordingSpan(REMOTE))
    with tracer.start_as_current_span(
        "GET /orders", context=remote_parent, kind=SpanKind.SERVER
    ) as server:
        server.set_attributes({"http.response.status_code": 503, "order.id": "o-7"})
        server.set_status(Status(StatusCode.ERROR, "upstream failed"))
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as client:
            client.set_attribute("server.port", 8081)
    first, second = exporter.get_finished_spans()  # the client ends first
    path = tmp_path / "telemetry" / "gateway-1.jsonl"
    writer = JsonLinesSpanExporter(path)

    writer.export([first])
    writer.export([second])

    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        json.loads(json.dumps(_reference([span]))) for span in (first, second)
    ]
    spans = {span.name: span for span in tracing_view.iter_spans([path])}
    assert spans["GET /orders"].parent_id == "00f067aa0ba902b7"
    assert spans["GET /orders"].error and spans["GET /orders"].kind == "server"
    assert spans["GET /orders"].attributes == {"http.response.status_code": 503, "order.id": "o-7"}
    assert spans["GET"].parent_id == spans["GET /orders"].span_id
    assert spans["GET"].trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert spans["GET"].service == "gateway" and spans["GET"].instance == "gateway-1"
    assert spans["GET"].start_ns == first.start_time and spans["GET"].end_ns == first.end_time
