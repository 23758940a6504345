"""With an OTLP endpoint set, a service's log records also go out over OTLP/HTTP, each
with its resource (service, version, instance, track), a severity, a body and the trace
it was logged in, and they are flushed when the service stops; stderr (the local log
file) still gets every line."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from yardarm_kit import Service, ServiceSettings

from tests.conftest import free_port
from tests.kit.service_processes import spawn, stop, tail, wait_ready

# Far beyond the test's length: only the flush at shutdown can deliver the records.
NO_PERIODIC_EXPORT_MS = "600000"
# The gateway opens an endpoint's breaker after 20 calls (its minimum) at >= 50% failed.
REQUESTS = 30


@dataclass
class Received:
    """What the in-test OTLP/HTTP endpoint decoded, by signal."""

    logs: list[ExportLogsServiceRequest] = field(default_factory=list)
    traces: list[ExportTraceServiceRequest] = field(default_factory=list)


def _decoded(raw: bytes, encoding: str | None) -> bytes:
    return gzip.decompress(raw) if encoding == "gzip" else raw


@contextlib.contextmanager
def otlp_endpoint() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP receiver (protobuf) on loopback, on an event loop in a thread of its
    own: an in-process service flushes synchronously, blocking the test's loop, and
    must still be answered. Yields its base URL and what it decoded."""
    received = Received()

    async def logs(request: web.Request) -> web.Response:
        message = ExportLogsServiceRequest()
        message.ParseFromString(
            _decoded(await request.read(), request.headers.get("Content-Encoding"))
        )
        received.logs.append(message)
        body = ExportLogsServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(
            _decoded(await request.read(), request.headers.get("Content-Encoding"))
        )
        received.traces.append(message)
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/logs", logs)
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@contextlib.asynccontextmanager
async def failing_upstream() -> AsyncIterator[str]:
    """An upstream that is ready but answers every request with a 500."""

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_get("/{tail:.*}", fail)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path


async def start_gateway(tmp_path: Path, upstream: str, otel: dict[str, str]) -> Gateway:
    """A gateway process routing `/api/echo` to `upstream`, with `otel` (the standard,
    unprefixed OTel variables) in its environment and no span file."""
    port, admin_port = free_port(), free_port()
    settings = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ADMIN_PORT": str(admin_port),
        "INSTANCE": "gateway-0",
        "VERSION": "1.2.3",
        "TRACK": "canary",
        "STATE_DIR": str(tmp_path / "state"),
        "SPAN_FILES": "false",
        "ROUTES": json.dumps([{"prefix": "/api/echo", "upstream": "echo", "name": "echo"}]),
        "UPSTREAMS": json.dumps({"echo": [upstream]}),
    }
    log = tmp_path / "gateway.log"
    env = {f"YARDARM_GATEWAY_{key}": value for key, value in settings.items()} | otel
    proc = spawn("gateway", env, log)
    try:
        await wait_ready(proc, f"http://127.0.0.1:{port}", log)
    except BaseException:
        stop(proc)
        raise
    return Gateway(proc, port, log)


def _values(attributes: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in attributes if isinstance(kv, KeyValue)}


def _records(received: Received) -> list[tuple[dict[str, str], str, LogRecord]]:
    """Every log record received: (resource attributes, scope name, record)."""
    return [
        (_values(resource_logs.resource.attributes), scope_logs.scope.name, record)
        for request in received.logs
        for resource_logs in request.resource_logs
        for scope_logs in resource_logs.scope_logs
        for record in scope_logs.log_records
    ]


async def test_log_records_go_over_otlp_with_their_trace_and_the_file_keeps_them(
    tmp_path: Path,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        endpoint, received = stack.enter_context(otlp_endpoint())
        upstream = await stack.enter_async_context(failing_upstream())
        running = await start_gateway(
            tmp_path,
            upstream,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_BLRP_SCHEDULE_DELAY": NO_PERIODIC_EXPORT_MS,
                "OTEL_BSP_SCHEDULE_DELAY": NO_PERIODIC_EXPORT_MS,
            },
        )
        stack.callback(stop, running.proc)
        async with aiohttp.ClientSession() as http:
            for _ in range(REQUESTS):
                async with http.get(f"http://127.0.0.1:{running.port}/api/echo/x") as resp:
                    assert resp.status in (500, 503), await resp.text()
        assert received.logs == [], "records were exported before the flush at shutdown"
        running.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(running.proc.wait, 60) == 0, tail(running.log)

    span_traces = {
        span.trace_id.hex()
        for request in received.traces
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    }
    records = _records(received)
    assert records, f"no log record arrived:\n{tail(running.log)}"
    for resource, _, record in records:
        assert resource["service.name"] == "gateway"
        assert resource["service.version"] == "1.2.3"
        assert resource["service.instance.id"] == "gateway-0"
        assert resource["yardarm.track"] == "canary"
        assert record.severity_text and record.severity_number > 0
        assert record.body.string_value
    traced = [(scope, record) for _, scope, record in records if record.trace_id]
    assert traced, "no record carries a trace id"
    for _, record in traced:
        assert record.trace_id.hex() in span_traces, "a record's trace is not a span's trace"
        assert len(record.span_id) == 8
    opened = [
        (scope, r)
        for scope, r in traced
        if _values(r.attributes).get("event") == "breaker" and _values(r.attributes)["to"] == "open"
    ]
    assert opened, "the breaker's opening (logged in a request) was not exported"
    for scope, record in opened:
        assert record.severity_text == "WARNING"
        assert scope.startswith("yardarm")

    # The local log (the process's stderr) has the same lines, with the same traces.
    lines = [
        json.loads(line) for line in running.log.read_text().splitlines() if line.startswith("{")
    ]
    local = [line for line in lines if line.get("event") == "breaker" and line.get("to") == "open"]
    assert sorted((line["message"], line["trace_id"]) for line in local) == sorted(
        (record.body.string_value, record.trace_id.hex()) for _, record in opened
    )


async def test_stopping_a_service_flushes_its_log_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with otlp_endpoint() as (endpoint, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_BLRP_SCHEDULE_DELAY", NO_PERIODIC_EXPORT_MS)
        service = Service(ServiceSettings(service="logs", port=free_port(), state_dir=tmp_path))
        assert service.logger_provider is not None
        try:
            with service.tracer.start_as_current_span("work") as span:
                service.log.error("it broke", extra={"event": "broke", "attempt": 3})
            assert received.logs == []
            await service.stop()
            records = _records(received)
        finally:
            service.tracer_provider.shutdown()
            service.logger_provider.shutdown()
    (record,) = [r for _, _, r in records if r.body.string_value == "it broke"]
    assert record.severity_text == "ERROR"
    assert record.trace_id.hex() == f"{span.get_span_context().trace_id:032x}"
    attributes = {kv.key: kv.value for kv in record.attributes}
    assert attributes["event"].string_value == "broke"
    assert attributes["attempt"].int_value == 3


async def test_without_an_endpoint_logs_go_to_stderr_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    service = Service(ServiceSettings(service="logs", port=free_port(), state_dir=tmp_path))
    assert service.logger_provider is None
    assert [type(h).__name__ for h in logging.getLogger().handlers] == ["StreamHandler"]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://127.0.0.1:9/v1/logs")
    service = Service(ServiceSettings(service="logs", port=free_port(), state_dir=tmp_path))
    assert service.logger_provider is not None
    service.logger_provider.shutdown()
    service.tracer_provider.shutdown()
