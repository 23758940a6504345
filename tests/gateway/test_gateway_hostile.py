"""Hostile input on the public port: refused by the gateway itself, never forwarded.

Malformed HTTP, broken percent-escapes and a deadline that is not a positive number
reach the client as a problem+json 400 from the gateway (not a 502 or 504 from an
upstream that never should have seen them); a client that leaves mid-body is neither
a 5xx in the server metrics nor an error in the log. Each test's backend records what
reached it, and the gateway runs as `python -m yardarm_gateway`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import raw_exchange
from tests.gateway.apps import echo_app
from tests.gateway.processes import metric_sum, scrape

StartBackend = Callable[..., Awaitable[str]]
StartGateway = Callable[..., Awaitable[Any]]
PROBLEM = "application/problem+json"
TOKEN = "hostile-admin-token-0123456789"


class Recorded:
    """A backend that echoes, and remembers every request that reached it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def app(self) -> web.Application:
        app = echo_app("backend")

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path != "/readyz":
                self.seen.append(f"{request.method} {request.raw_path}")
            return await handler(request)

        app.middlewares.append(record)
        return app


@pytest.fixture
async def gateway(start_backend: StartBackend, start_gateway: StartGateway) -> tuple[Any, Recorded]:
    backend = Recorded()
    url = await start_backend(backend.app())
    routes = [{"prefix": "/api/work", "upstream": "svc"}]
    gw = await start_gateway(routes, {"svc": [url]}, admin_token=TOKEN)
    return gw, backend


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


MALFORMED = [
    (b"GET /api/work/SECRET\r\n\r\n", "HTTP/0.9"),
    (b"GET /api/work/SECRET HTTP/0.9\r\n\r\n", "HTTP/0.9"),
    (b"GET /api/work/SECRET HTTP/1.1 extra\r\nHost: a\r\n\r\n", "not valid"),
    (b"SECRET-GARBAGE\r\n\r\n", "not valid"),
    (b"POST /api/work/SECRET HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
     b"Content-Length: 2\r\n\r\nab", "appears twice"),
    (b"GET /api/work/SECRET HTTP/1.1\r\nHost: a\r\nX-Big: " + b"SECRET" * 2000 + b"\r\n\r\n",
     "too long"),
    (b"POST /api/work/SECRET HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"zz\r\nSECRET\r\n0\r\n\r\n", "malformed request"),
]  # fmt: skip


async def test_malformed_http_is_a_400_problem_from_the_gateway_and_never_forwarded(
    gateway: tuple[Any, Recorded], client: aiohttp.ClientSession
) -> None:
    gw, backend = gateway
    for raw, says in MALFORMED:
        answer = await raw_exchange(_port(gw.url), raw)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b" 400 " in head.split(b"\r\n")[0], (raw[:60], answer[:300])
        assert PROBLEM.encode() in head, raw[:60]
        doc = json.loads(body)
        assert doc["status"] == 400 and says in doc["detail"], (raw[:60], doc)
        assert b"SECRET" not in answer, raw[:60]  # nothing of the request is echoed
    assert backend.seen == []
    samples = await scrape(client, gw.url)
    assert metric_sum(samples, "yardarm_http_malformed_requests_total") == len(MALFORMED)
    assert metric_sum(samples, "yardarm_gateway_upstream_requests_total") == 0


BROKEN_ESCAPES = [
    ("/api/work/a%zz", "not followed by two hex digits"),
    ("/api/work/a%2", "not followed by two hex digits"),
    ("/api/work/a%ff", "not UTF-8"),
    ("/api/work/a%c3%28", "not UTF-8"),
    ("/api/work?q=%zz", "not followed by two hex digits"),
    ("/api/work/a%00b", "NUL"),
]


async def test_broken_percent_escapes_are_a_400_problem_and_never_forwarded(
    gateway: tuple[Any, Recorded], client: aiohttp.ClientSession
) -> None:
    gw, backend = gateway
    for target, says in BROKEN_ESCAPES:
        async with client.get(URL(gw.url + target, encoded=True)) as resp:
            assert resp.status == 400, (target, await resp.text())
            assert resp.content_type == PROBLEM, target
            assert says in (await resp.json())["detail"], target
    assert backend.seen == []
    # A correctly escaped percent sign goes upstream exactly as sent.
    async with client.get(URL(f"{gw.url}/api/work/a%25zz", encoded=True)) as resp:
        assert resp.status == 200
    assert backend.seen == ["GET /work/a%25zz"]


async def test_a_deadline_that_is_not_positive_is_a_400_not_a_504_and_never_forwarded(
    gateway: tuple[Any, Recorded], client: aiohttp.ClientSession
) -> None:
    gw, backend = gateway
    for value in ("0", "-1", "abc", "nan", "inf", "", "-0"):
        for method in ("GET", "POST"):
            async with client.request(
                method, f"{gw.url}/api/work/x", headers={"yardarm-timeout-ms": value}, json={}
            ) as resp:
                assert resp.status == 400, (value, method, await resp.text())
                assert resp.content_type == PROBLEM
                assert "positive number of milliseconds" in (await resp.json())["detail"]
    assert backend.seen == []
    samples = await scrape(client, gw.url)
    assert metric_sum(samples, "yardarm_gateway_upstream_requests_total") == 0
    async with client.get(f"{gw.url}/api/work/x", headers={"yardarm-timeout-ms": "5000"}) as r:
        assert r.status == 200  # a positive deadline travels on


async def test_an_admin_token_that_is_not_utf8_is_refused_not_a_crash(
    gateway: tuple[Any, Recorded], client: aiohttp.ClientSession
) -> None:
    gw, backend = gateway
    raw = (
        b"GET /api/work/x HTTP/1.1\r\nHost: a\r\nx-yardarm-track: stable\r\n"
        b"x-yardarm-admin-token: \xff\xfe" + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n"
    )
    answer = await raw_exchange(_port(gw.url), raw)
    assert answer.split(b"\r\n")[0].split(b" ")[1] == b"403", answer[:300]
    assert backend.seen == []
    samples = await scrape(client, gw.url)
    assert metric_sum(samples, "http_server_request_duration_seconds_count",
                      http_response_status_code="500") == 0  # fmt: skip


async def test_a_client_leaving_mid_body_is_not_a_5xx_nor_an_error(
    gateway: tuple[Any, Recorded], client: aiohttp.ClientSession
) -> None:
    gw, backend = gateway
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", _port(gw.url)))
        sock.sendall(
            b"POST /api/work/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n"
            + b"x" * 1000
        )
        await asyncio.sleep(0.2)
        sock.close()

    def count(samples: dict[str, float], code: str) -> float:
        return metric_sum(
            samples, "http_server_request_duration_seconds_count",
            http_route="/api/work", http_response_status_code=code,
        )  # fmt: skip

    for _ in range(50):
        samples = await scrape(client, gw.url)
        if count(samples, "499") >= 3:
            break
        await asyncio.sleep(0.1)
    assert count(samples, "499") == 3
    server_errors = [
        key for key, value in samples.items()
        if key.startswith("http_server_request_duration_seconds_count{")
        and 'http_response_status_code="5' in key and value
    ]  # fmt: skip
    assert server_errors == []
    assert backend.seen == []  # an incomplete body is never forwarded
    records = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    assert not [r for r in records if r["level"] in ("error", "critical")], records
    assert [r for r in records if r.get("event") == "client_closed"]


async def test_the_admin_listener_refuses_hostile_input_the_same_way(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(
        [{"prefix": "/api/work", "upstream": "svc"}], {"svc": ["http://127.0.0.1:9"]},
        admin=True, admin_token=TOKEN,
    )  # fmt: skip
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for raw in (b"GET /admin/routes/SECRET\r\n\r\n", b"SECRET-GARBAGE\r\n\r\n"):
        answer = await raw_exchange(_port(gw.admin_url), raw)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b" 400 " in head.split(b"\r\n")[0], answer[:300]
        assert PROBLEM.encode() in head and b"SECRET" not in answer
        assert json.loads(body)["status"] == 400
    for target in ("/admin/upstreams/a%zz/ejections", "/admin/upstreams/a%00/ejections?endpoint=x",
                   "/admin/upstreams/x/ejections?endpoint=%ff"):  # fmt: skip
        async with client.delete(URL(gw.admin_url + target, encoded=True), headers=auth) as resp:
            assert resp.status == 400, (target, await resp.text())
            assert resp.content_type == PROBLEM
    raw = b"GET /admin/routes HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
    answer = await raw_exchange(_port(gw.admin_url), raw)
    assert answer.split(b"\r\n")[0].split(b" ")[1] == b"401", answer[:300]
    samples = await scrape(client, gw.url)
    assert metric_sum(samples, "yardarm_http_malformed_requests_total") == 2
