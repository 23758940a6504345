"""Admin listener: bearer-token protected, disabled without a token."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.gateway.apps import echo_app
from tests.gateway.processes import metric_sum, scrape

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
        # Valid in itself, but this gateway has no such upstream: a conflict.
        ({"routes": [{"prefix": "/x", "upstream": "nope"}]}, 409, "unknown upstream"),
        (
            {
                "routes": [
                    {"prefix": "/x", "upstream": "orders"},
                    {"prefix": "/x/", "upstream": "orders"},
                ]
            },
            409,
            "duplicate route prefix",
        ),
        ({"routes": [{"prefix": "x", "upstream": "orders"}]}, 422, "routes.0.prefix"),
        ({"routes": [{"prefix": "/x", "upstream": "orders", "timeout_s": "5"}]}, 422, "timeout_s"),
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
        assert resp.status == 409  # not an endpoint of this upstream
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


@dataclass
class FakeDatastore:
    """The datastore's KV contract for one key, recording who asked (the bearer token)."""

    seen: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)  # (method, token)
    refuse_reads: int | None = None  # 401/403 for every GET while set
    refuse_writes: int | None = None
    value: Any = None
    version: int = 0

    def app(self) -> web.Application:
        async def kv(request: web.Request) -> web.Response:
            auth = request.headers.get("Authorization", "")
            self.seen.append((request.method, auth.removeprefix("Bearer ") or None))
            refused = self.refuse_reads if request.method == "GET" else self.refuse_writes
            if refused is not None:
                return web.json_response({"title": "refused"}, status=refused)
            key = request.match_info["key"]
            if request.method == "GET":
                if self.value is None:
                    return web.json_response({"title": "no such key"}, status=404)
                return web.json_response({"key": key, "value": self.value, "version": self.version})
            body = await request.json()
            if body.get("if_version", self.version) != self.version:
                return web.json_response({"title": "conflict"}, status=409)
            created = self.value is None
            self.value, self.version = body["value"], self.version + 1
            return web.json_response(
                {"key": key, "version": self.version}, status=201 if created else 200
            )

        app = web.Application()
        app.router.add_route("*", "/kv/{key:.+}", kv)
        return app

    def tokens(self, method: str) -> set[str | None]:
        return {token for seen_method, token in self.seen if seen_method == method}


def token_file(tmp_path: Path, name: str, token: str) -> Path:
    path = tmp_path / f"{name}.token"
    path.write_text(token + "\n")
    return path


ADMIN = "admin-credential-0123456789"
OWN = "gateway-credential-0123456789"
UPSTREAMS = {"orders": ["http://127.0.0.1:9"], "datastore": ["http://127.0.0.1:9"]}


async def test_routing_changes_are_written_with_the_admins_credential_read_with_the_gateways(
    start_backend: StartBackend,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    fake = FakeDatastore()
    gw = await start_gateway(
        ROUTES, UPSTREAMS, admin=True,
        admin_token_file=token_file(tmp_path, "admin", ADMIN),
        datastore_urls=[await start_backend(fake.app())],
        datastore_token_file=token_file(tmp_path, "gateway", OWN),
    )  # fmt: skip
    auth = {"Authorization": f"Bearer {ADMIN}"}
    routes = {"routes": [{"prefix": "/api/orders", "upstream": "orders"}]}
    async with client.put(f"{gw.admin_url}/admin/routes", json=routes, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        view = await resp.json()
    assert (view["version"], view["persistent"]) == (1, True)
    ejection = {"endpoint": "http://127.0.0.1:9", "duration_s": 30, "reason": "drain"}
    async with client.post(
        f"{gw.admin_url}/admin/upstreams/orders/ejections", json=ejection, headers=auth
    ) as resp:
        assert resp.status == 201, await resp.text()
    assert fake.tokens("PUT") == {ADMIN}  # the gateway itself never writes its routing
    assert fake.tokens("GET") == {OWN}
    assert [route["prefix"] for route in fake.value["routes"]] == ["/api/orders"]


async def test_a_write_the_datastore_refuses_is_a_403_and_an_unreachable_one_a_503(
    start_backend: StartBackend,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    free_port: Callable[[], int],
) -> None:
    fake = FakeDatastore(refuse_writes=403)
    gw = await start_gateway(
        ROUTES, UPSTREAMS, admin=True, admin_token=ADMIN,
        datastore_urls=[await start_backend(fake.app())],
        datastore_token_file=token_file(tmp_path, "gateway", OWN),
    )  # fmt: skip
    auth = {"Authorization": f"Bearer {ADMIN}"}
    changes = [
        ("PUT", "/admin/routes", {"routes": [{"prefix": "/api/x", "upstream": "orders"}]}),
        ("PUT", "/admin/routes/api-orders/split", {"weights": {"stable": 1}}),
        ("POST", "/admin/upstreams/orders/ejections", {"endpoint": "http://127.0.0.1:9"}),
    ]
    for method, path, body in changes:
        async with client.request(method, gw.admin_url + path, json=body, headers=auth) as resp:
            assert resp.status == 403, (path, await resp.text())
            assert resp.content_type == PROBLEM
            detail = (await resp.json())["detail"]
            assert "refused" in detail and "your credential" in detail, detail
    async with client.get(f"{gw.admin_url}/admin/routes", headers=auth) as resp:
        assert (await resp.json())["version"] == 0  # nothing changed

    dead = await start_gateway(
        ROUTES, UPSTREAMS, admin=True, admin_token=ADMIN,
        datastore_urls=[f"http://127.0.0.1:{free_port()}"],
    )  # fmt: skip
    method, path, body = changes[0]
    async with client.request(method, dead.admin_url + path, json=body, headers=auth) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["title"] == "datastore unavailable"


async def test_a_refused_read_credential_is_logged_once_counted_and_polling_goes_on(
    start_backend: StartBackend,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    fake = FakeDatastore(refuse_reads=401)
    poll_s = 0.1
    gw = await start_gateway(
        ROUTES, UPSTREAMS, config_poll_s=poll_s,
        datastore_urls=[await start_backend(fake.app())],
        datastore_token_file=token_file(tmp_path, "gateway", "not-a-credential"),
    )  # fmt: skip
    await asyncio.sleep(10 * poll_s)
    samples = await scrape(client, gw.url)
    assert metric_sum(samples, "yardarm_gateway_routing_errors_total", kind="refused") >= 3
    assert metric_sum(samples, "yardarm_gateway_routing_errors_total", kind="unreachable") == 0
    records = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    refused = [r for r in records if r.get("event") == "routing_error"]
    assert len(refused) == 1 and refused[0]["kind"] == "refused", refused  # once an outage
    assert "credential" in refused[0]["message"]

    fake.refuse_reads = None  # the credential is fixed: the next poll applies the document
    fake.value = {"routes": [{"prefix": "/api/orders", "upstream": "orders"}]}
    fake.version = 7
    deadline = time.monotonic() + 50 * poll_s
    while metric_sum(await scrape(client, gw.url), "yardarm_gateway_routing_version") != 7:
        assert time.monotonic() < deadline, "the stored routing was never applied"
        await asyncio.sleep(poll_s)
    assert gw.process.poll() is None


async def test_the_admin_token_file_guards_the_admin_api_and_the_public_admin_controls(
    start_backend: StartBackend,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    backend = await start_backend(echo_app("kv"))
    routes = [{"prefix": "/api/kv", "upstream": "datastore", "admin_writes": True}]
    gw = await start_gateway(
        routes, {"datastore": [backend]}, admin=True,
        admin_token_file=token_file(tmp_path, "admin", ADMIN),
    )  # fmt: skip
    async with client.get(
        f"{gw.admin_url}/admin/routes", headers={"Authorization": f"Bearer {ADMIN}"}
    ) as resp:
        assert resp.status == 200
    async with client.put(
        f"{gw.url}/api/kv/a", json={"value": 1}, headers={"x-yardarm-admin-token": ADMIN}
    ) as resp:
        assert resp.status == 200  # the same token opens the public port's admin writes
    for wrong in ("wrong-token-0123456789", f"{ADMIN}x"):
        async with client.put(
            f"{gw.url}/api/kv/a", json={"value": 1}, headers={"x-yardarm-admin-token": wrong}
        ) as resp:
            assert resp.status == 403


async def test_the_admin_document_is_open_and_describes_every_admin_operation(
    start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(ROUTES, UPSTREAMS, admin=True, admin_token=ADMIN)
    async with client.get(f"{gw.admin_url}/openapi.json") as resp:  # no token
        assert resp.status == 200
        doc = await resp.json()
    assert doc["info"]["title"] == "yardarm gateway admin"
    operations = {
        f"{method.upper()} {path}": op for path, item in doc["paths"].items()
        for method, op in item.items()
    }  # fmt: skip
    secured = {label for label, op in operations.items() if "security" in op}
    assert secured == {
        "GET /admin/routes",
        "PUT /admin/routes",
        "PUT /admin/routes/{name}/split",
        "GET /admin/upstreams",
        "POST /admin/upstreams/{upstream}/ejections",
        "DELETE /admin/upstreams/{upstream}/ejections",
    }
    assert set(operations) - secured == {"GET /readyz", "GET /metrics", "GET /openapi.json"}
    for label in secured:
        assert "admin token" in operations[label]["x-yardarm-permission"], label
