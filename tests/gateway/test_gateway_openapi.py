"""The gateway's OpenAPI documents: the admin API's says what the code does, and the
public port's covers only what the gateway answers itself.

The admin document is checked for drift against the routes the admin app serves, then
fuzzed by schemathesis (every check) against a running gateway; the public port must
answer its own paths itself, never proxy them, whatever the routes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import schemathesis
from aiohttp import web
from yardarm_gateway.admin import AdminApi, admin_app, admin_openapi
from yardarm_gateway.routeconfig import RoutingDoc, RoutingSync
from yardarm_gateway.routing import Route
from yardarm_gateway.settings import UpstreamSpec
from yardarm_gateway.upstreams import Upstream
from yardarm_kit import ServiceSettings
from yardarm_kit.metrics import Metrics

from tests.gateway.apps import echo_app

StartBackend = Callable[..., Awaitable[str]]
StartGateway = Callable[..., Awaitable[Any]]

SCALE = float(os.environ.get("YARDARM_TEST_SCALE", "1"))
CONFIG = Path(__file__).resolve().parents[2] / "schemathesis.toml"
TOKEN = "openapi-admin-token-0123456789"
PROBLEM = "application/problem+json"


def _admin() -> web.Application:
    upstreams = {
        "orders": Upstream("orders", UpstreamSpec.model_validate(["http://127.0.0.1:9"]), now=0.0)
    }
    base = RoutingDoc(routes=[Route(prefix="/api/orders", upstream="orders")])
    sync = RoutingSync(None, "config/gateway/routing", poll_s=1.0, check=lambda _: None,
                       apply=lambda doc, version: None)  # fmt: skip

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready", "checks": {}})

    api = AdminApi(sync, lambda: base, upstreams, "/api")
    metrics = Metrics(ServiceSettings(service="gateway", instance="gateway-test", port=9))
    return admin_app(api, token=TOKEN, readyz=readyz, metrics=metrics, version="1.2.3")


def test_every_admin_route_is_documented_and_every_documented_operation_routed() -> None:
    app = _admin()
    routed: set[tuple[str, str]] = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = str(info.get("path") or info.get("formatter"))
        routed.add((route.method, template))
    doc = admin_openapi(app)  # what /openapi.json serves and `yardarm api-docs` writes
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    assert routed == documented
    assert ("PUT", "/admin/routes/{name}/split") in documented
    assert doc["info"] == {
        "title": "yardarm gateway admin",
        "version": "1.2.3",
        "description": doc["info"]["description"],
    }
    labels = sorted(
        result.ok().label for result in schemathesis.openapi.from_dict(doc).get_all_operations()
    )
    assert labels == sorted(f"{method} {path}" for method, path in documented)
    # The configured names are offered as examples, so callers find values that act.
    eject = doc["components"]["schemas"]["EjectBody"]["properties"]["endpoint"]
    assert eject["examples"] == ["http://127.0.0.1:9"]
    upstream = doc["paths"]["/admin/upstreams/{upstream}/ejections"]["post"]["parameters"][0]
    assert upstream["schema"]["examples"] == ["orders"]


async def test_the_public_port_answers_its_own_paths_and_never_proxies_them(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    seen: list[str] = []
    backend = echo_app("backend")

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        return await handler(request)

    backend.middlewares.append(record)
    url = await start_backend(backend)
    # A catch-all route: every path the gateway does not answer itself goes upstream.
    gw = await start_gateway([{"prefix": "/", "upstream": "svc"}], {"svc": [url]}, strip_prefix="")
    seen.clear()  # the health checks
    async with client.get(f"{gw.url}/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["info"]["title"] == "yardarm gateway"
    assert set(doc["paths"]) <= {"/healthz", "/readyz", "/metrics", "/openapi.json"}
    assert schemathesis.openapi.from_dict(doc)
    for method, path in [("POST", "/openapi.json"), ("PUT", "/healthz"), ("DELETE", "/metrics"),
                         ("POST", "/readyz")]:  # fmt: skip
        async with client.request(method, gw.url + path) as resp:
            assert resp.status == 405, (method, path, await resp.text())
            assert resp.content_type == PROBLEM
            assert "GET" in resp.headers["Allow"]
    async with client.get(f"{gw.url}/anything/else") as resp:
        assert resp.status == 200
        assert (await resp.json())["backend"] == "backend"
    assert [s for s in seen if not s.endswith("/readyz")] == ["GET /anything/else"]


async def test_schemathesis_finds_nothing_wrong_with_the_admin_api(
    start_backend: StartBackend, start_gateway: StartGateway, tmp_path: Path
) -> None:
    stable = await start_backend(echo_app("stable"))
    canary = await start_backend(echo_app("canary"))
    upstreams = {
        "orders": {"endpoints": [stable, {"url": canary, "track": "canary"}]},
        "datastore": [stable],
    }
    routes = [
        {"prefix": "/api/orders", "upstream": "orders", "split": {"stable": 90, "canary": 10}},
        {"prefix": "/api/kv", "upstream": "datastore", "admin_writes": True},
    ]
    gw = await start_gateway(routes, upstreams, admin=True, admin_token=TOKEN)
    examples = max(5, round(25 * SCALE))
    # As tests/openapi_checks.py runs it (the repository's config, one worker, nothing
    # written to the work tree), with the admin's credential on every request.
    config = ["--config-file", str(CONFIG)] if CONFIG.is_file() else []
    command = [
        str(Path(sys.executable).with_name("st")), *config, "--no-color", "run",
        f"{gw.admin_url}/openapi.json", "--url", gw.admin_url,
        "--checks", "all", "--max-examples", str(examples), "--workers", "1",
        "--generation-database", "none", "--request-timeout", "20",
        "-H", f"Authorization: Bearer {TOKEN}",
    ]  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "160"}
    run = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=env,
        cwd=CONFIG.parent if config else tmp_path,
        timeout=600,
    )  # fmt: skip
    report = (run.stdout + run.stderr)[-20_000:]
    assert run.returncode == 0, report
    # Every operation was reached, the core of the writes included.
    assert "8 selected / 8 total" in report, report
