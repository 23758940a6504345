"""Admin listener: bearer-token protected, disabled without a token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

StartBackend = Callable[..., Awaitable[str]]
StartGateway = Callable[..., Awaitable[Any]]

ROUTES = [
    {"prefix": "/api/orders", "upstream": "orders"},
    {"prefix": "/api/kv", "upstream": "datastore"},
]
PROBLEM = "application/problem+json"


async def test_admin_routes_require_the_bearer_token(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    upstreams = {
        "orders": ["http://127.0.0.1:9", "http://127.0.0.1:10/"],
        "datastore": ["http://127.0.0.1:11"],
    }
    gw = await start_gateway(ROUTES, upstreams, admin=True, admin_token="s3cret-token")
    url = f"{gw.admin_url}/admin/routes"

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        async with client.get(url, headers=headers) as resp:
            assert resp.status == 401, headers
            assert resp.content_type == PROBLEM
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "s3cret" not in await resp.text()

    async with client.get(url, headers={"Authorization": "Bearer s3cret-token"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["routes"] == ROUTES
    assert body["strip_prefix"] == "/api"
    assert body["upstreams"]["orders"]["endpoints"] == [
        "http://127.0.0.1:9",
        "http://127.0.0.1:10",
    ]
    assert body["upstreams"]["datastore"]["endpoints"] == ["http://127.0.0.1:11"]

    # The admin API is not reachable through the public port.
    async with client.get(
        f"{gw.url}/admin/routes", headers={"Authorization": "Bearer s3cret-token"}
    ) as resp:
        assert resp.status == 404


async def test_admin_api_without_a_token_is_disabled(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(
        ROUTES, {"orders": ["http://127.0.0.1:9"], "datastore": ["http://127.0.0.1:9"]}, admin=True
    )
    for path in ("/admin/routes", "/", "/anything"):
        async with client.get(f"{gw.admin_url}{path}") as resp:
            assert resp.status == 404
            assert resp.content_type == PROBLEM
