"""`yardarm trace --jaeger URL` (or `YARDARM_JAEGER_URL`) reads the trace from Jaeger's
query API v3 and prints the same tree the local files give; a trace Jaeger lacks, or a
Jaeger that does not answer, is a clear error and exit status 1.

The Jaeger here is an HTTP server in the test serving what Jaeger v2 answers
(`GET /api/v3/traces/{id}`: OTLP/JSON under `result`, enums as numbers), built from
the spans a real service wrote to its local span file.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.trace import Status, StatusCode
from typer.testing import CliRunner
from yardarm_kit import Service, ServiceSettings

from tests.conftest import free_port
from yardarm import jaeger_query, tracing_view
from yardarm.cli import app
from yardarm.tracing_view import Span

KINDS = {f"SPAN_KIND_{name}": number for number, name in enumerate(
    ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"))}  # fmt: skip
STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
UNKNOWN_TRACE = "0" * 31 + "1"


def as_api_v3(lines: list[dict[str, Any]], trace_id: str) -> dict[str, Any]:
    """Jaeger v2's answer for one trace, from OTLP/JSON export lines: the trace's spans
    under `result`, kinds and status codes as numbers (pdata's JSON)."""
    resource_spans = []
    for line in lines:
        for resource in line["resourceSpans"]:
            scopes = []
            for scope in resource["scopeSpans"]:
                spans = []
                for span in scope["spans"]:
                    if span["traceId"] != trace_id:
                        continue
                    span = dict(span, kind=KINDS[span["kind"]])
                    if "code" in span.get("status", {}):
                        span["status"] = {
                            **span["status"],
                            "code": STATUS_CODES[span["status"]["code"]],
                        }
                    spans.append(span)
                if spans:
                    scopes.append({**scope, "spans": spans})
            if scopes:
                resource_spans.append({**resource, "scopeSpans": scopes})
    return {"result": {"resourceSpans": resource_spans}}


@pytest.fixture
async def recorded(tmp_path: Path) -> tuple[str, list[dict[str, Any]], Path]:
    """A real service's spans of one request (a server span, a child that fails), as
    its span file has them: (trace id, the file's lines, the service's state dir)."""
    state = tmp_path / "service-state"
    port = free_port()
    service = Service(ServiceSettings(service="tracer", port=port, state_dir=state))

    async def work(request: web.Request) -> web.Response:
        with service.tracer.start_as_current_span("charge card") as child:
            child.set_status(Status(StatusCode.ERROR, "declined"))
        return web.json_response({})

    service.app.router.add_get("/work", work)
    await service.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/work") as r:
            assert r.status == 200
    finally:
        await service.stop()  # flushes the span file
        service.tracer_provider.shutdown()
    path = state / "telemetry" / f"{service.settings.instance}.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    (trace_id,) = {s.trace_id for s in tracing_view.iter_spans([path]) if s.name == "charge card"}
    return trace_id, lines, state


@pytest.fixture
def jaeger(recorded: tuple[str, list[dict[str, Any]], Path]) -> Iterator[str]:
    """A Jaeger query API holding the recorded trace; its base URL."""
    trace_id, lines, _ = recorded
    traces = {trace_id: json.dumps(as_api_v3(lines, trace_id)).encode()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            prefix = "/api/v3/traces/"
            body = (
                traces.get(self.path.removeprefix(prefix)) if self.path.startswith(prefix) else None
            )
            status = 200
            if body is None:
                status = 404
                error = {"error": {"httpCode": 404, "message": "No traces found"}}
                body = json.dumps(error).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def shape(roots: list[Span]) -> list[tuple[Any, ...]]:
    """A tree's content, comparable across sources."""
    return [
        (s.service, s.instance, s.name, s.kind, s.error, s.start_ns, s.end_ns, s.attributes,
         shape(s.children))
        for s in roots
    ]  # fmt: skip


def test_jaeger_gives_the_tree_the_local_file_gives(
    recorded: tuple[str, list[dict[str, Any]], Path], jaeger: str
) -> None:
    trace_id, _, state = recorded
    local = tracing_view.load_trace(state, trace_id)
    remote = jaeger_query.fetch_trace(jaeger, trace_id)
    assert shape(remote) == shape(local)
    (root,) = remote
    assert (root.kind, root.error) == ("server", False)
    assert [(c.name, c.kind, c.error) for c in root.children] == [("charge card", "internal", True)]


@pytest.mark.parametrize("how", ["option", "environment"])
def test_trace_prints_the_tree_from_jaeger(
    how: str, recorded: tuple[str, list[dict[str, Any]], Path], jaeger: str, tmp_path: Path
) -> None:
    trace_id, _, _ = recorded
    home = tmp_path / "no-local-files"  # the spans can only come from Jaeger
    args = ["trace", trace_id, "--home", str(home)]
    env = {"COLUMNS": "200"}
    if how == "option":
        args += ["--jaeger", jaeger]
    else:
        env["YARDARM_JAEGER_URL"] = jaeger
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert f"trace {trace_id}" in result.stdout
    assert "GET /work" in result.stdout and "charge card" in result.stdout
    assert "services: tracer" in result.stdout


def test_a_trace_jaeger_lacks_is_an_error(jaeger: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["trace", UNKNOWN_TRACE, "--jaeger", jaeger, "--wait", "0", "--home", str(tmp_path)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 1
    assert f"Jaeger at {jaeger} has no trace {UNKNOWN_TRACE}" in result.stderr
    assert "decides a trace" in result.stderr  # why it may be missing


def test_an_unreachable_jaeger_is_an_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        app,
        ["trace", UNKNOWN_TRACE, "--jaeger", url, "--wait", "0", "--home", str(tmp_path)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 1
    assert f"cannot reach Jaeger at {url}" in result.stderr
