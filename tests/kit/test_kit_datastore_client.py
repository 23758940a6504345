"""The datastore client moves on from a replica that answers 503 when that is safe."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Histogram
from yardarm_kit.datastore_client import DatastoreClient, DatastoreUnavailable
from yardarm_kit.httpclient import HttpClient
from yardarm_kit.metrics import LabeledHistogram

from tests.conftest import free_port


async def _server(status: int, calls: list[str]) -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.Response:
        calls.append(f"{request.method} {request.path}")
        if status == 503:
            return web.json_response({"title": "Datastore unavailable"}, status=503)
        if request.method == "GET":
            return web.json_response({"key": "k", "value": 1, "version": 7})
        return web.json_response({"key": "k", "version": 8}, status=200)

    app = web.Application()
    app.router.add_route("*", "/kv/{key:.+}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[DatastoreClient, list[str], list[str]]]:
    down: list[str] = []
    up: list[str] = []
    first, first_url = await _server(503, down)
    second, second_url = await _server(200, up)
    histogram = Histogram(
        "t",
        "t",
        ["upstream", "http_request_method", "http_response_status_code"],
        registry=CollectorRegistry(),
    )
    async with aiohttp.ClientSession() as session:
        http = HttpClient(session, "datastore", trace.NoOpTracer(), LabeledHistogram(histogram, {}))
        yield DatastoreClient(http, [first_url, second_url]), down, up
    await first.cleanup()
    await second.cleanup()


async def test_reads_and_keyed_writes_fail_over_but_unkeyed_writes_do_not(
    replicas: tuple[DatastoreClient, list[str], list[str]],
) -> None:
    client, down, up = replicas
    record = await client.get("k")
    assert record is not None and record.version == 7
    assert (down, up) == (["GET /kv/k"], ["GET /kv/k"])
    result = await client.put("k", 2, idempotency_key="once")
    assert result.version == 8 and up[-1] == "PUT /kv/k"
    # Without a key the first replica may have applied it: resending could apply it twice.
    with pytest.raises(DatastoreUnavailable, match="503"):
        await client.put("k", 3)
    assert up.count("PUT /kv/k") == 1
