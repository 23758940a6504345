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
TOKEN = "s3cret-token-0123456789"


async def test_admin_routes_require_the_bearer_token(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    upstreams = {
        "orders": ["http://127.0.0.1:9", "http://127.0.0.1:10/"],
        "datastore": ["http://127.0.0.1:11"],
    }
    gw = await start_gateway(ROUTES, upstreams, admin=True, admin_token=TOKEN)
    url = f"{gw.admin_url}/admin/routes"

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        async with client.get(url, headers=headers) as resp:
            assert resp.status == 401, headers
            assert resp.content_type == PROBLEM
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "s3cret" not in await resp.text()

    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with client.get(url, headers=auth) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert [(r["prefix"], r["upstream"], r["name"]) for r in body["routes"]] == [
        (r["prefix"], r["upstream"], r["prefix"][1:].replace("/", "-")) for r in ROUTES
    ]
    assert body["strip_prefix"] == "/api"
    assert body["version"] == 0 and body["persistent"] is False
    async with client.get(f"{gw.admin_url}/admin/upstreams", headers=auth) as resp:
        upstream_view = await resp.json()
    assert [e["url"] for e in upstream_view["orders"]["endpoints"]] == [
        "http://127.0.0.1:9",
        "http://127.0.0.1:10",
    ]
    assert [e["url"] for e in upstream_view["datastore"]["endpoints"]] == ["http://127.0.0.1:11"]
    assert not any(e["health"]["healthy"] for e in upstream_view["orders"]["endpoints"])

    # The admin API is not reachable through the public port.
    async with client.get(f"{gw.url}/admin/routes", headers=auth) as resp:
        assert resp.status == 404


async def test_admin_changes_routes_and_ejections_with_precise_errors(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    upstreams = {
        "orders": ["http://127.0.0.1:9", "http://127.0.0.1:10"],
        "datastore": ["http://127.0.0.1:11"],
    }
    gw = await start_gateway(ROUTES, upstreams, admin=True, admin_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    new_routes = {"routes": [{"prefix": "/api/orders", "upstream": "orders", "name": "o"}]}
    async with client.put(f"{gw.admin_url}/admin/routes", json=new_routes, headers=auth) as resp:
        assert resp.status == 200
        assert (await resp.json())["version"] == 1
    async with client.get(f"{gw.url}/api/stock/x") as resp:
        assert resp.status == 404  # the old route is gone at once
    for body, status, field in [
        ({"routes": [{"prefix": "/x", "upstream": "nope"}]}, 422, "unknown upstream"),
        ({"routes": [{"prefix": "x", "upstream": "orders"}]}, 422, "routes.0.prefix"),
        ({"routez": []}, 422, "routez"),
    ]:
        async with client.put(f"{gw.admin_url}/admin/routes", json=body, headers=auth) as resp:
            assert resp.status == status
            assert resp.content_type == PROBLEM
            assert field in await resp.text()
    async with client.put(f"{gw.admin_url}/admin/routes", data=b"{nope", headers=auth) as resp:
        assert resp.status == 400

    ejections = f"{gw.admin_url}/admin/upstreams/orders/ejections"
    body = {"endpoint": "http://127.0.0.1:9", "duration_s": 60}
    async with client.post(ejections, json=body, headers=auth) as resp:
        assert resp.status == 201
    async with client.get(f"{gw.admin_url}/admin/upstreams", headers=auth) as resp:
        view = await resp.json()
    assert view["orders"]["endpoints"][0]["outlier"]["ejected"] is True
    assert view["orders"]["endpoints"][1]["outlier"]["ejected"] is False
    async with client.post(
        ejections, json={"endpoint": "http://127.0.0.1:99"}, headers=auth
    ) as resp:
        assert resp.status == 422
    async with client.post(
        f"{gw.admin_url}/admin/upstreams/nope/ejections", json=body, headers=auth
    ) as resp:
        assert resp.status == 404
    async with client.delete(
        ejections, params={"endpoint": "http://127.0.0.1:9"}, headers=auth
    ) as resp:
        assert resp.status == 200
    async with client.get(f"{gw.admin_url}/admin/upstreams", headers=auth) as resp:
        view = await resp.json()
    assert view["orders"]["endpoints"][0]["outlier"]["ejected"] is False
    async with client.delete(
        ejections, params={"endpoint": "http://127.0.0.1:9"}, headers=auth
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
