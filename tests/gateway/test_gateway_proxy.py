"""The gateway process in front of real backends: routing, balancing, passthrough, failures."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from tests.gateway.apps import echo_app
from tests.gateway.processes import metric_sum, scrape

# Fixture types (see conftest.py).
StartBackend = Callable[..., Awaitable[str]]
StartRawBackend = Callable[..., Awaitable[str]]
StartGateway = Callable[..., Awaitable[Any]]
FreePort = Callable[[], int]

ROUTES = [
    {"prefix": "/api/orders", "upstream": "orders"},
    {"prefix": "/api/stock", "upstream": "orders"},
    {"prefix": "/api/kv", "upstream": "datastore"},
]
PROBLEM = "application/problem+json"
ADMIN_TOKEN = "proxy-admin-token-0123456789"


async def test_routes_by_longest_segment_prefix_and_strips_api_keeping_query(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    orders = await start_backend(echo_app("orders-1"))
    datastore = await start_backend(echo_app("datastore-1"))
    gw = await start_gateway(ROUTES, {"orders": [orders], "datastore": [datastore]})

    cases = {
        "/api/orders": ("orders-1", "/orders"),
        "/api/orders/123?verbose=1&q=a%20b&q=c": ("orders-1", "/orders/123?verbose=1&q=a%20b&q=c"),
        "/api/stock/SKU-1": ("orders-1", "/stock/SKU-1"),
        "/api/kv/a/b": ("datastore-1", "/kv/a/b"),
        "/api/kv?prefix=stock/&limit=2": ("datastore-1", "/kv?prefix=stock/&limit=2"),
    }
    for target, (backend, path) in cases.items():
        async with client.get(gw.url + target) as resp:
            assert resp.status == 200, target
            seen = await resp.json()
        assert (seen["backend"], seen["path"]) == (backend, path), target

    async with client.get(gw.url + "/api/ordersX/1") as resp:
        assert resp.status == 404
        assert resp.content_type == PROBLEM
        problem = await resp.json()
    assert problem["status"] == 404
    assert "/api/ordersX/1" in problem["detail"]


async def test_round_robin_splits_300_requests_exactly_over_3_backends(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    urls = [await start_backend(echo_app(f"orders-{i}")) for i in range(3)]
    gw = await start_gateway(ROUTES, {"orders": urls, "datastore": urls[:1]})

    seen: Counter[str] = Counter()
    for i in range(300):
        async with client.get(f"{gw.url}/api/orders/{i}") as resp:
            assert resp.status == 200
            seen[(await resp.json())["backend"]] += 1
    assert seen == {"orders-0": 100, "orders-1": 100, "orders-2": 100}


async def test_status_headers_and_body_pass_through_unchanged(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    problem_body = (
        b'{"type":"about:blank","title":"Unprocessable","status":422,'
        b'"detail":"quantity must be >= 1","errors":[{"field":"items.0.quantity"}]}'
    )

    async def invalid(_: web.Request) -> web.Response:
        return web.Response(
            status=422,
            body=problem_body,
            content_type=PROBLEM,
            headers={"X-Request-Check": "failed"},
        )

    async def create(request: web.Request) -> web.Response:
        assert request.headers["Idempotency-Key"] == "k-1"
        return web.json_response(
            {"id": "o-1", "status": "PENDING"},
            status=202,
            headers={"Location": "/orders/o-1"},
        )

    async def moved(_: web.Request) -> web.Response:
        return web.Response(status=303, headers={"Location": "/orders/elsewhere"})

    async def cookies(_: web.Request) -> web.Response:
        resp = web.Response(text="ok")
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        return resp

    app = web.Application()
    app.router.add_post("/orders/invalid", invalid)
    app.router.add_post("/orders", create)
    app.router.add_get("/orders/moved", moved)
    app.router.add_get("/orders/cookies", cookies)
    url = await start_backend(app)
    gw = await start_gateway(ROUTES, {"orders": [url], "datastore": [url]})

    async with client.post(f"{gw.url}/api/orders/invalid", json={}) as resp:
        assert resp.status == 422
        assert resp.content_type == PROBLEM
        assert resp.headers["X-Request-Check"] == "failed"
        assert await resp.read() == problem_body

    async with client.post(
        f"{gw.url}/api/orders", json={"items": []}, headers={"Idempotency-Key": "k-1"}
    ) as resp:
        assert resp.status == 202
        assert resp.headers["Location"] == "/api/orders/o-1"  # the public path
        assert await resp.json() == {"id": "o-1", "status": "PENDING"}

    async with client.get(f"{gw.url}/api/orders/moved", allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/api/orders/elsewhere"

    async with client.get(f"{gw.url}/api/orders/cookies") as resp:
        assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]


async def test_method_headers_and_body_reach_the_backend(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    url = await start_backend(echo_app("kv"))
    gw = await start_gateway(ROUTES, {"orders": [url], "datastore": [url]})
    body = os.urandom(300_000)

    async with client.put(
        f"{gw.url}/api/kv/blob",
        data=body,
        headers={
            "Content-Type": "application/octet-stream",
            "X-Custom": "kept",
            "Keep-Alive": "timeout=5",
            "Authorization": "Bearer user-token",
        },
    ) as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["method"] == "PUT"
    assert seen["body_len"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    headers = seen["headers"]
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-custom"] == "kept"
    assert headers["authorization"] == "Bearer user-token"
    assert "keep-alive" not in headers
    assert headers["host"] == url.removeprefix("http://")
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"


async def test_body_over_the_limit_is_refused_with_413(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    url = await start_backend(echo_app("kv"))
    gw = await start_gateway(ROUTES, {"orders": [url], "datastore": [url]})
    async with client.put(f"{gw.url}/api/kv/big", data=b"x" * (1024 * 1024 + 1)) as resp:
        assert resp.status == 413
        assert resp.content_type == PROBLEM


async def test_a_refused_connection_is_retried_for_any_method_because_nothing_was_sent(
    start_backend: StartBackend,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    free_port: FreePort,
) -> None:
    live = await start_backend(echo_app("orders-live"))
    dead = f"http://127.0.0.1:{free_port()}"
    blind = {"health": {"enabled": False}, "outlier": {"enabled": False}}
    upstreams = {"orders": {"endpoints": [live, dead], **blind}, "datastore": [live]}
    gw = await start_gateway(ROUTES, upstreams)
    for i in range(10):
        async with client.get(f"{gw.url}/api/orders/{i}") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["backend"] == "orders-live"
        async with client.post(f"{gw.url}/api/orders", json={"n": i}) as resp:
            assert resp.status == 200, await resp.text()
    async with client.get(f"{gw.url}/metrics") as resp:
        metrics = await resp.text()
    connect_errors = [line for line in metrics.splitlines() if "connect_error" in line]
    assert any(f'endpoint="{dead}"' in line for line in connect_errors), metrics


async def test_refused_connections_are_rerouted_outside_the_retry_budget_count_and_backoff(
    start_backend: StartBackend,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    free_port: FreePort,
) -> None:
    """Three dead replicas of four, a budget of zero, a 2 s backoff: every request still
    reaches the live one at once, because a refused connection sent nothing."""
    live = await start_backend(echo_app("orders-live"))
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    off = {"enabled": False}
    blind = {"health": off, "outlier": off, "breaker": off, "track_breaker": off}
    retry = {"budget_percent": 0, "budget_min_retry_concurrency": 0,
             "backoff_base_s": 2.0, "backoff_max_s": 2.0}  # fmt: skip
    upstreams = {
        "orders": {"endpoints": [*dead, live], "retry": retry, **blind},
        "datastore": [live],
    }
    gw = await start_gateway(ROUTES, upstreams)
    started = time.monotonic()
    for i in range(8):
        async with client.get(f"{gw.url}/api/orders/{i}") as resp:
            assert resp.status == 200, await resp.text()
        async with client.post(f"{gw.url}/api/orders", json={"n": i}) as resp:
            assert resp.status == 200, await resp.text()
    # Each request takes four picks, one whole round-robin cycle, so every one met the
    # three dead replicas first: three re-routes each, more than max_retries (2), and
    # with a 2 s backoff per retry the 16 requests would take about 48 s.
    assert time.monotonic() - started < 8.0
    samples = await scrape(client, gw.url)
    rerouted = metric_sum(samples, "yardarm_gateway_retries_total", reason="connect_error")
    refused = metric_sum(
        samples, "yardarm_gateway_upstream_requests_total", outcome="connect_error"
    )
    assert rerouted == refused == 16 * 3
    assert metric_sum(samples, "yardarm_gateway_retries_refused_total") == 0


async def test_retries_that_found_no_endpoint_left_give_their_budget_slot_back(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    """Both replicas answer 503: a retry is granted, then no untried endpoint remains.
    The slot must come back, or a burst of such requests spends the budget for good."""
    healthy = {"a": False, "b": False}

    def replica(name: str) -> web.Application:
        async def serve(_: web.Request) -> web.Response:
            status = 200 if healthy[name] else 503
            return web.json_response({"backend": name}, status=status)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", serve)
        return app

    a = await start_backend(replica("a"))
    b = await start_backend(replica("b"))
    off = {"enabled": False}
    blind = {"health": off, "outlier": off, "breaker": off, "track_breaker": off}
    upstreams = {"orders": {"endpoints": [a, b], **blind}, "datastore": [a]}
    gw = await start_gateway(ROUTES, upstreams, admin=True, admin_token=ADMIN_TOKEN)
    for i in range(12):
        async with client.get(f"{gw.url}/api/orders/{i}") as resp:
            assert resp.status == 503
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with client.get(f"{gw.admin_url}/admin/upstreams", headers=auth) as resp:
        budget = (await resp.json())["orders"]["retry_budget"]
    assert (budget["active_requests"], budget["active_retries"]) == (0, 0)

    healthy["b"] = True  # round robin: every other request fails on a first, then retries
    for i in range(12):
        async with client.get(f"{gw.url}/api/orders/{i}") as resp:
            assert resp.status == 200, await resp.text()
    samples = await scrape(client, gw.url)
    assert metric_sum(samples, "yardarm_gateway_retries_refused_total") == 0


async def test_5xx_answers_are_retried_for_reads_and_keyed_writes_never_for_unkeyed_writes(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    live = await start_backend(echo_app("orders-live"))
    calls: list[str] = []

    async def unavailable(request: web.Request) -> web.Response:
        calls.append(request.method)
        return web.json_response({"backend": "sick"}, status=503)

    sick_app = web.Application()
    sick_app.router.add_route("*", "/{tail:.*}", unavailable)
    sick = await start_backend(sick_app)
    # Health, ejection and breakers off, so the sick replica keeps its turn.
    off = {"enabled": False}
    blind = {"health": off, "outlier": off, "breaker": off, "track_breaker": off}
    upstreams = {"orders": {"endpoints": [live, sick], **blind}, "datastore": [live]}
    gw = await start_gateway(ROUTES, upstreams)

    for i in range(10):
        async with client.get(f"{gw.url}/api/orders/{i}") as resp:
            assert resp.status == 200
        async with client.post(
            f"{gw.url}/api/orders", json={"n": i}, headers={"Idempotency-Key": f"key-{i}"}
        ) as resp:
            assert resp.status == 200
    assert "GET" in calls and "POST" in calls  # the sick one was tried, then retried away

    statuses = []
    for i in range(10):
        async with client.post(f"{gw.url}/api/orders", json={"n": i}) as resp:
            statuses.append(resp.status)
    # Round robin alternates, and an unkeyed write that reached an upstream is never
    # sent again: its 503 is the client's answer.
    assert Counter(statuses) == {200: 5, 503: 5}


async def test_every_replica_dead_gives_502(
    start_gateway: StartGateway, client: aiohttp.ClientSession, free_port: FreePort
) -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    gw = await start_gateway(ROUTES, {"orders": dead, "datastore": dead[:1]})
    async with client.get(f"{gw.url}/api/orders/1") as resp:
        assert resp.status == 502
        assert resp.content_type == PROBLEM
        assert (await resp.json())["title"] == "upstream unavailable"


async def test_slow_backend_gives_504_within_the_timeout_and_gets_the_deadline(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    deadlines: list[str | None] = []

    async def slow(request: web.Request) -> web.Response:
        deadlines.append(request.headers.get("yardarm-timeout-ms"))
        await asyncio.sleep(20)
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_get("/orders/slow", slow)
    url = await start_backend(app)
    gw = await start_gateway(ROUTES, {"orders": [url], "datastore": [url]}, route_timeout_s=0.5)

    started = time.monotonic()
    async with client.get(f"{gw.url}/api/orders/slow") as resp:
        elapsed = time.monotonic() - started
        assert resp.status == 504
        assert resp.content_type == PROBLEM
    assert 0.4 <= elapsed < 5.0
    # A timeout is not retried on another replica.
    assert len(deadlines) == 1
    assert deadlines[0] is not None
    assert 0 < int(deadlines[0]) <= 500


async def test_backend_speaking_garbage_gives_502_and_the_gateway_keeps_serving(
    start_backend: StartBackend,
    start_raw_backend: StartRawBackend,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.read(65536), timeout=5)
            writer.write(b"hello\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()

    bad = await start_raw_backend(garbage)
    good = await start_backend(echo_app("kv"))
    gw = await start_gateway(ROUTES, {"orders": [bad], "datastore": [good]})

    for _ in range(3):
        async with client.get(f"{gw.url}/api/orders/1") as resp:
            assert resp.status == 502
            assert resp.content_type == PROBLEM
    async with client.get(f"{gw.url}/api/kv/a") as resp:
        assert resp.status == 200
    assert gw.process.poll() is None


async def test_trace_context_reaches_the_backend_with_the_callers_trace_id(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    url = await start_backend(echo_app("orders"))
    gw = await start_gateway(ROUTES, {"orders": [url], "datastore": [url]})
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    caller_span = "00f067aa0ba902b7"

    async with client.get(
        f"{gw.url}/api/orders/1", headers={"traceparent": f"00-{trace_id}-{caller_span}-01"}
    ) as resp:
        headers = (await resp.json())["headers"]
    version, seen_trace, parent_span, _flags = headers["traceparent"].split("-")
    assert version == "00"
    assert seen_trace == trace_id
    assert parent_span != caller_span  # the gateway's own client span is the parent


async def test_upstream_requests_are_counted_by_upstream_endpoint_and_outcome(
    start_backend: StartBackend,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    free_port: FreePort,
) -> None:
    url = await start_backend(echo_app("orders"))
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await start_gateway(ROUTES, {"orders": [url], "datastore": [dead]})
    for _ in range(3):
        async with client.get(f"{gw.url}/api/orders/1") as resp:
            assert resp.status == 200
    async with client.get(f"{gw.url}/api/kv/1") as resp:
        assert resp.status == 502
    async with client.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()

    def sample(upstream: str, endpoint: str, outcome: str) -> float:
        for line in text.splitlines():
            if (
                line.startswith("yardarm_gateway_upstream_requests_total{")
                and f'upstream="{upstream}"' in line
                and f'endpoint="{endpoint}"' in line
                and f'outcome="{outcome}"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert sample("orders", url, "response") == 3
    assert sample("datastore", dead, "connect_error") == 1
