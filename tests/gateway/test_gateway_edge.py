"""Edge rules of the public listener: admin-only controls, admission, TLS, limits, splits."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.gateway.apps import echo_app

StartBackend = Callable[..., Awaitable[str]]
StartGateway = Callable[..., Awaitable[Any]]
TOKEN = "edge-admin-token-0123456789"
PROBLEM = "application/problem+json"


async def two_tracks(start_backend: StartBackend) -> dict[str, Any]:
    stable = await start_backend(echo_app("stable"))
    canary = await start_backend(echo_app("canary"))
    return {
        "svc": {"endpoints": [stable, {"url": canary, "track": "canary"}]},
        "kv": [stable],
    }


ROUTES = [
    {"prefix": "/api/work", "upstream": "svc", "split": {"stable": 100, "canary": 0}},
    {"prefix": "/api/kv", "upstream": "kv", "admin_writes": True},
]


async def test_track_override_and_kv_writes_need_the_admin_token_which_never_goes_upstream(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(ROUTES, await two_tracks(start_backend), admin_token=TOKEN)
    override = {"x-yardarm-track": "canary"}
    async with client.get(f"{gw.url}/api/work", headers=override) as resp:
        assert resp.status == 401
        assert resp.content_type == PROBLEM
    bad = {**override, "x-yardarm-admin-token": "nope"}
    async with client.get(f"{gw.url}/api/work", headers=bad) as resp:
        assert resp.status == 403
    good = {**override, "x-yardarm-admin-token": TOKEN}
    async with client.get(f"{gw.url}/api/work", headers=good) as resp:
        assert resp.status == 200
        body = await resp.json()
        assert body["backend"] == "canary"  # weight 0, but explicitly chosen
        assert resp.headers["x-yardarm-track"] == "canary"
        assert "x-yardarm-admin-token" not in body["headers"]
        assert TOKEN not in str(body)
    # A track without endpoints may get some at any time: 503; a name that is no track: 422.
    async with client.get(
        f"{gw.url}/api/work", headers={"x-yardarm-track": "blue", "x-yardarm-admin-token": TOKEN}
    ) as resp:
        assert resp.status == 503
        assert resp.content_type == PROBLEM
        assert "tracks with endpoints: canary, stable" in (await resp.json())["detail"]
    async with client.get(
        f"{gw.url}/api/work", headers={"x-yardarm-track": "*", "x-yardarm-admin-token": TOKEN}
    ) as resp:
        assert resp.status == 422
        assert "canary, stable" in (await resp.json())["detail"]

    async with client.get(f"{gw.url}/api/kv/a") as resp:
        assert resp.status == 200  # reads are public
    async with client.put(f"{gw.url}/api/kv/a", json={"value": 1}) as resp:
        assert resp.status == 401
        assert resp.content_type == PROBLEM
    async with client.delete(f"{gw.url}/api/kv/a") as resp:
        assert resp.status == 401
    async with client.put(
        f"{gw.url}/api/kv/a", json={"value": 1}, headers={"x-yardarm-admin-token": TOKEN}
    ) as resp:
        assert resp.status == 200
        assert "x-yardarm-admin-token" not in (await resp.json())["headers"]


async def test_without_an_admin_token_configured_nobody_may_override_or_write(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(ROUTES, await two_tracks(start_backend))
    headers = {"x-yardarm-track": "canary", "x-yardarm-admin-token": "anything-at-all"}
    async with client.get(f"{gw.url}/api/work", headers=headers) as resp:
        assert resp.status == 403
    async with client.post(f"{gw.url}/api/kv/a", json={}, headers=headers) as resp:
        assert resp.status == 403


async def test_cookie_stickiness_keeps_a_client_on_its_track(
    start_backend: StartBackend, start_gateway: StartGateway
) -> None:
    routes = [
        {
            "prefix": "/api/work",
            "upstream": "svc",
            "split": {"stable": 50, "canary": 50},
            "sticky": {"cookie": "yardarm-sticky"},
        },
        ROUTES[1],
    ]
    gw = await start_gateway(routes, await two_tracks(start_backend))
    first_tracks: Counter[str] = Counter()
    for _ in range(40):  # 40 new clients, each with its own cookie jar
        jar = aiohttp.CookieJar(unsafe=True)  # keep cookies set by an IP-address host
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            async with session.get(f"{gw.url}/api/work") as resp:
                assert resp.status == 200
                first = (await resp.json())["backend"]
                assert "yardarm-sticky" in resp.cookies
            for _ in range(5):
                async with session.get(f"{gw.url}/api/work") as resp:
                    assert (await resp.json())["backend"] == first
        first_tracks[first] += 1
    assert first_tracks["stable"] > 5 and first_tracks["canary"] > 5  # both tracks in use


async def test_rate_limit_answers_429_with_retry_after_per_client(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(
        ROUTES,
        await two_tracks(start_backend),
        rate_limit={"enabled": True, "requests_per_s": 1, "burst": 5},
    )
    statuses = []
    for _ in range(8):
        async with client.get(f"{gw.url}/api/work") as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
                assert resp.content_type == PROBLEM
    assert statuses[:5] == [200] * 5
    assert 429 in statuses[5:]


async def test_bulkhead_refuses_beyond_the_concurrency_limit_with_503(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()
    arrived: list[web.Request] = []

    async def slow(request: web.Request) -> web.Response:
        arrived.append(request)
        await release.wait()
        return web.json_response({"backend": "slow"})

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_route("*", "/{tail:.*}", slow)
    url = await start_backend(app)
    upstreams = {"svc": {"endpoints": [url], "max_concurrent": 2}, "kv": [url]}
    gw = await start_gateway([{"prefix": "/api/work", "upstream": "svc"}, ROUTES[1]], upstreams)
    held = [asyncio.create_task(client.get(f"{gw.url}/api/work")) for _ in range(2)]
    for _ in range(200):  # until both hold the bulkhead's two places at the backend
        if len(arrived) == 2:
            break
        await asyncio.sleep(0.02)
    assert len(arrived) == 2

    async with client.get(f"{gw.url}/api/work") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["title"] == "upstream busy"
    release.set()
    for task in held:
        response = await task
        assert response.status == 200
        response.release()


async def test_oversized_headers_are_refused_with_a_4xx_not_a_crash(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(ROUTES, await two_tracks(start_backend), max_header_bytes=2048)
    async with client.get(f"{gw.url}/api/work", headers={"X-Big": "y" * 4096}) as resp:
        assert 400 <= resp.status < 500
    async with client.get(f"{gw.url}/api/work") as resp:
        assert resp.status == 200


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_on_the_public_listener(
    start_backend: StartBackend, start_gateway: StartGateway, tmp_path: Path
) -> None:
    try:
        cert, key = _self_signed(tmp_path)
    except FileNotFoundError:
        if os.environ.get("CI"):
            raise  # CI installs openssl (.ci/run): a missing one is a broken run
        pytest.skip("openssl is not installed (apt-get install -y openssl)")
    gw = await start_gateway(
        ROUTES,
        await two_tracks(start_backend),
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        probe_scheme="https",
    )
    context = ssl.create_default_context(cafile=str(cert))
    url = gw.url.replace("http://", "https://")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/work", ssl=context) as resp:
            assert resp.status == 200
            assert (await resp.json())["headers"]["x-forwarded-proto"] == "https"
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"{gw.url}/api/work"):
                pass  # plain HTTP on the TLS port is refused


async def test_the_callers_deadline_bounds_every_attempt_and_travels_upstream(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    seen: list[int] = []

    async def slow(request: web.Request) -> web.Response:
        seen.append(int(request.headers["yardarm-timeout-ms"]))
        await asyncio.sleep(2.0)
        return web.json_response({"backend": "slow"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    url = await start_backend(app)
    upstreams = {"svc": {"endpoints": [url], "health": {"enabled": False}}, "kv": [url]}
    gw = await start_gateway([{"prefix": "/api/work", "upstream": "svc"}, ROUTES[1]], upstreams)
    started = asyncio.get_running_loop().time()
    async with client.get(f"{gw.url}/api/work", headers={"yardarm-timeout-ms": "300"}) as resp:
        assert resp.status == 504
        assert resp.content_type == PROBLEM
    elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 1.5  # the caller's 0.3 s, not the route's 15 s nor the backend's 2 s
    assert seen and all(0 < budget <= 300 for budget in seen)  # every try got the remainder
