"""The kit's HTTP app: problems, RED metrics with exemplars, traces, deadlines, faults."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from pydantic import BaseModel
from yardarm_kit import (
    Problem,
    Service,
    ServiceSettings,
    UpstreamTimeout,
    UpstreamUnavailable,
    parse_json,
)
from yardarm_kit.telemetry import JsonLinesSpanExporter

from tests.conftest import free_port

FLAG = "fault.error-rate"


class Item(BaseModel):
    sku: str
    quantity: int


class Order(BaseModel):
    items: list[Item]


def _flags(path: Path, variant: str) -> None:
    path.write_text(
        json.dumps(
            {
                "flags": {
                    FLAG: {
                        "state": "ENABLED",
                        "variants": {"on": 1.0, "off": 0.0},
                        "defaultVariant": variant,
                    }
                }
            }
        )
    )


Factory = Callable[..., Awaitable[tuple[Service, str]]]


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[Factory]:
    started: list[Service] = []

    async def make(name: str, **kwargs: object) -> tuple[Service, str]:
        port = free_port()
        service = Service(
            ServiceSettings(service=name, port=port, state_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
        )

        async def order(request: web.Request) -> web.Response:
            body = await parse_json(request, Order)
            return web.json_response({"items": len(body.items)})

        async def teapot(request: web.Request) -> web.Response:
            raise Problem(418, "Teapot", "short and stout", headers={"Retry-After": "3"})

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return web.json_response({})

        async def boom(request: web.Request) -> web.Response:
            raise RuntimeError("kaboom")

        service.app.router.add_post("/orders", order)
        service.app.router.add_get("/teapot", teapot)
        service.app.router.add_get("/slow", slow)
        service.app.router.add_get("/boom", boom)
        started.append(service)
        return service, f"http://127.0.0.1:{port}"

    yield make
    for service in started:
        await service.stop()


async def _problem(response: aiohttp.ClientResponse, status: int) -> dict[str, object]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, object] = await response.json(content_type=None)
    assert body["status"] == status and body["title"]
    return body


async def test_problems_for_every_kind_of_error(make_service: Factory) -> None:
    service, url = await make_service("a")
    await service.start()
    async with aiohttp.ClientSession(url) as http:
        teapot = await http.get("/teapot")
        body = await _problem(teapot, 418)
        assert body["detail"] == "short and stout" and teapot.headers["Retry-After"] == "3"
        await _problem(await http.get("/nowhere"), 404)
        await _problem(await http.put("/orders"), 405)
        await _problem(await http.post("/orders", data=b"{"), 400)
        invalid = await _problem(await http.post("/orders", json={"items": [{"sku": 1}]}), 422)
        fields = {e["field"] for e in invalid["errors"]}  # type: ignore[union-attr]
        assert fields == {"items.0.sku", "items.0.quantity"}
        await _problem(await http.get("/boom"), 500)


async def test_readyz_reflects_checks(make_service: Factory) -> None:
    service, url = await make_service("a")
    healthy = True

    async def check() -> bool:
        return healthy

    service.add_readiness_check("db", check)
    await service.start()
    async with aiohttp.ClientSession(url) as http:
        assert (await http.get("/readyz")).status == 200
        healthy = False
        body = await _problem(await http.get("/readyz"), 503)
        assert body["checks"] == {"db": False}
        assert (await http.get("/healthz")).status == 200


async def test_red_metrics_carry_identity_labels_and_trace_exemplars(make_service: Factory) -> None:
    service, url = await make_service("a", version="2.0.0", track="canary", instance="a-7")
    await service.start()
    async with aiohttp.ClientSession(url) as http:
        await http.post("/orders", json={"items": []})
        text = await (
            await http.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        ).text()
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("http_server_request_duration_seconds_bucket")
        and 'http_route="/orders"' in line
    ]
    assert lines
    for label in ('service="a"', 'version="2.0.0"', 'track="canary"', 'instance="a-7"',
                  'http_request_method="POST"', 'http_response_status_code="200"'):  # fmt: skip
        assert label in lines[0]
    assert any('# {trace_id="' in line for line in lines)


async def test_trace_and_deadline_propagate_through_the_client(
    make_service: Factory, tmp_path: Path
) -> None:
    downstream, down_url = await make_service("b")
    seen: dict[str, str] = {}

    async def echo(request: web.Request) -> web.Response:
        seen.update(request.headers)
        return web.json_response({})

    downstream.app.router.add_get("/echo", echo)
    upstream, up_url = await make_service("a")
    client = upstream.http_client("b")

    async def call(request: web.Request) -> web.Response:
        answer = await client.request("GET", f"{down_url}/echo")
        return web.json_response({"status": answer.status})

    upstream.app.router.add_get("/call", call)
    await downstream.start()
    await upstream.start()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with aiohttp.ClientSession(up_url) as http:
        response = await http.get(
            "/call",
            headers={
                "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
                "yardarm-timeout-ms": "2000",
            },
        )
        assert response.status == 200
        slow = await http.get("/slow", headers={"yardarm-timeout-ms": "200"})
        await _problem(slow, 504)
    assert seen["traceparent"].split("-")[1] == trace_id
    assert 0 < int(seen["yardarm-timeout-ms"]) <= 2000
    upstream.tracer_provider.force_flush()
    lines = (tmp_path / "telemetry" / "a-0.jsonl").read_text().splitlines()
    spans = [
        span
        for line in lines
        for rs in json.loads(line)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    ]
    assert any(
        s["traceId"] == trace_id and s.get("parentSpanId") == "00f067aa0ba902b7" for s in spans
    )


async def test_error_rate_flag_turns_on_and_off_from_the_file(
    make_service: Factory, tmp_path: Path
) -> None:
    flags = tmp_path / "flags.json"
    _flags(flags, "on")
    service, url = await make_service("a", flags_file=flags)
    await service.start()
    async with aiohttp.ClientSession(url) as http:
        await _problem(await http.post("/orders", json={"items": []}), 500)
        assert (await http.get("/healthz")).status == 200  # operational paths are exempt
        _flags(flags, "off")
        for _ in range(60):  # the provider re-reads the file; allow it many poll intervals
            if (await http.post("/orders", json={"items": []})).status == 200:
                break
            await asyncio.sleep(0.25)
        else:
            pytest.fail("flag change was not picked up")


async def test_logs_are_json_with_trace_ids(
    make_service: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = await make_service("a")

    async def logs(request: web.Request) -> web.Response:
        service.log.info("inside a request", extra={"order_id": "o-1"})
        return web.json_response({})

    service.app.router.add_get("/log", logs)
    await service.start()
    handler = logging.getLogger().handlers[0]
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert json.loads(handler.format(record))["trace_id"] is None
    async with aiohttp.ClientSession(url) as http:
        await http.get("/log")
    lines = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    inside = [line for line in lines if line["message"] == "inside a request"]
    assert inside and len(inside[0]["trace_id"]) == 32 and inside[0]["order_id"] == "o-1"


async def test_client_timeouts_and_refusals_are_typed_errors_and_metered(
    make_service: Factory,
) -> None:
    downstream, down_url = await make_service("b")
    upstream, _ = await make_service("a")
    client = upstream.http_client("b")  # made before start: the pool opens on the loop
    await downstream.start()
    await upstream.start()
    with pytest.raises(UpstreamTimeout):
        await client.request("GET", f"{down_url}/slow", timeout=0.3)
    with pytest.raises(UpstreamUnavailable):
        await client.request("GET", f"http://127.0.0.1:{free_port()}/", timeout=5)
    teapot = await client.request("GET", f"{down_url}/teapot")
    assert teapot.status == 418 and teapot.json()["title"] == "Teapot"
    body, _ = upstream.metrics.exposition("")
    text = body.decode()
    for status in ("error", "418"):
        assert (
            'http_client_request_duration_seconds_count{http_request_method="GET",'
            f'http_response_status_code="{status}",instance="a-0",service="a",'
            'track="stable",upstream="b",version="0.1.0"}'
        ) in text


async def test_a_zero_deadline_is_a_bad_request_and_unknown_routes_are_not_traced_by_path(
    make_service: Factory,
) -> None:
    service, url = await make_service("a")
    await service.start()
    async with aiohttp.ClientSession(url) as http:
        # No sender puts 0 ms on the wire (the kit's client refuses to send an expired
        # deadline), so 0 is the caller's mistake: 400, not 504.
        await _problem(await http.get("/teapot", headers={"yardarm-timeout-ms": "0"}), 400)
        await _problem(await http.get("/no/such/7"), 404)
    text = service.metrics.exposition("")[0].decode()
    assert 'http_route="unmatched"' in text and "/no/such/7" not in text


async def test_telemetry_lines_are_otlp_json_with_resource_and_hex_ids(
    make_service: Factory, tmp_path: Path
) -> None:
    service, url = await make_service("a", instance="a-3", version="1.2.3", track="canary")
    await service.start()
    async with aiohttp.ClientSession(url) as http:
        await http.get("/teapot")
    service.tracer_provider.force_flush()
    lines = (tmp_path / "telemetry" / "a-3.jsonl").read_text().splitlines()
    assert lines
    hex_id = re.compile(r"^[0-9a-f]+$")
    names = set()
    for line in lines:
        for rs in json.loads(line)["resourceSpans"]:
            attrs = {a["key"]: a["value"]["stringValue"] for a in rs["resource"]["attributes"]}
            assert attrs["service.name"] == "a" and attrs["service.instance.id"] == "a-3"
            assert attrs["service.version"] == "1.2.3" and attrs["yardarm.track"] == "canary"
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    names.add(span["name"])
                    assert len(span["traceId"]) == 32 and hex_id.match(span["traceId"])
                    assert len(span["spanId"]) == 16 and hex_id.match(span["spanId"])
    assert "GET /teapot" in names


def test_telemetry_file_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    exporter = JsonLinesSpanExporter(path, rotate_bytes=2000)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for i in range(40):
        with tracer.start_as_current_span(f"span-{i}"):
            pass
    assert path.with_name("x.jsonl.1").exists() and path.with_name("x.jsonl.3").exists()
    assert not path.with_name("x.jsonl.4").exists()
    for file in (path, path.with_name("x.jsonl.1")):
        assert file.stat().st_size <= 2000 + 2000  # rotated once it passes the limit
        for line in file.read_text().splitlines():
            assert json.loads(line)["resourceSpans"]


async def test_unhandled_errors_are_logged_with_trace_id_and_traceback(
    make_service: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    service, url = await make_service("a")
    await service.start()
    async with aiohttp.ClientSession(url) as http:
        await _problem(await http.get("/boom"), 500)
    records = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    errors = [r for r in records if r["level"] == "error"]
    assert errors and "kaboom" in errors[0]["exception"]
    assert len(errors[0]["trace_id"]) == 32 and errors[0]["service"] == "a"
