"""Wires the gateway into the kit's Service: proxy, health, routing sync, admin listener."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import aiohttp
from aiohttp import web
from yardarm_kit import Service
from yardarm_kit.datastore_client import DatastoreClient
from yardarm_kit.http_server import AppRunner
from yardarm_kit.lifecycle import cancel_task

from yardarm_gateway.admin import AdminApi, admin_app, admin_openapi
from yardarm_gateway.health import HealthChecker
from yardarm_gateway.proxy import Proxy, RoutingState
from yardarm_gateway.routeconfig import RoutingDoc, RoutingSync
from yardarm_gateway.routing import RouteTable, check_routes
from yardarm_gateway.settings import GatewaySettings
from yardarm_gateway.telemetry import GatewayTelemetry
from yardarm_gateway.upstream_client import UpstreamPool
from yardarm_gateway.upstreams import Upstream

SWEEP_TICK_S = 0.5
ADMIN_APP = web.AppKey("yardarm.gateway.admin_app", web.Application)


class _Ejections:
    """Applies the routing document's manual ejections to the outlier detectors."""

    def __init__(self, upstreams: dict[str, Upstream]) -> None:
        self._upstreams = upstreams
        self._applied: set[tuple[str, str]] = set()

    def apply(self, doc: RoutingDoc) -> None:
        now = asyncio.get_running_loop().time()
        wall = time.time()
        wanted: set[tuple[str, str]] = set()
        for entry in doc.ejections:
            if entry.until <= wall:
                continue
            upstream = self._upstreams[entry.upstream]
            endpoint = upstream.by_url[entry.endpoint]
            upstream.outlier.eject(endpoint, now, entry.until - wall, f"admin: {entry.reason}")
            wanted.add((entry.upstream, entry.endpoint))
        for name, url in self._applied - wanted:
            upstream = self._upstreams[name]
            upstream.outlier.uneject(upstream.by_url[url], now, "admin")
        self._applied = wanted


def _check(settings: GatewaySettings, upstreams: dict[str, Upstream], doc: RoutingDoc) -> None:
    check_routes(doc.routes, settings.tracks())
    for entry in doc.ejections:
        upstream = upstreams.get(entry.upstream)
        if upstream is None or entry.endpoint not in upstream.by_url:
            raise ValueError(f"ejection names unknown endpoint {entry.upstream}/{entry.endpoint}")


def _own_paths(app: web.Application) -> dict[str, frozenset[str]]:
    """The paths the service answers itself (probes, metrics, its OpenAPI document) and
    their methods: the proxy must never forward them, whatever the routes say."""
    paths: dict[str, set[str]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path")
        if isinstance(path, str):
            paths.setdefault(path, set()).add(route.method)
    return {path: frozenset(methods) for path, methods in paths.items()}


def admin_document(service: Service) -> dict[str, Any]:
    """The admin listener's OpenAPI document, as its `/openapi.json` serves it (for
    `yardarm api-docs`); the gateway must have been created with an admin port."""
    app = service.app.get(ADMIN_APP)
    if app is None:
        raise ValueError("this gateway has no admin listener (admin_port is not set)")
    return admin_openapi(app)


def create_gateway(settings: GatewaySettings) -> Service:
    """A gateway Service ready to `run()`."""
    service = Service(settings)
    service.reuse_port = settings.reuse_port
    service.server_options = {
        "max_line_size": settings.max_header_bytes,
        "max_field_size": settings.max_header_bytes,
    }
    telemetry = GatewayTelemetry(service.metrics)
    now = 0.0  # endpoints present at start are not slow-started
    upstreams = {
        name: Upstream(
            name,
            spec,
            now=now,
            on_breaker=telemetry.breaker_transition,
            on_outlier=telemetry.outlier_event,
            on_panic=telemetry.panic_change,
        )
        for name, spec in settings.upstreams.items()
    }
    base = RoutingDoc(routes=list(settings.routes))
    proxy = Proxy(
        RoutingState.build(RouteTable(base.routes, strip_prefix=settings.strip_prefix), 0),
        upstreams,
        telemetry,
        service.tracer,
        route_timeout_s=settings.route_timeout_s,
        max_body_bytes=settings.max_body_bytes,
        admin_token=settings.admin_credential,
        rate_limit=settings.rate_limit,
        own_paths=_own_paths(service.app),
    )
    service.app.router.add_route("*", "/{tail:.*}", proxy.handle)  # after the kit's own
    ejections = _Ejections(upstreams)

    def apply(doc: RoutingDoc, version: int) -> None:
        table = RouteTable(doc.routes, strip_prefix=settings.strip_prefix)
        proxy.state = RoutingState.build(table, version)  # in-flight requests keep theirs
        ejections.apply(doc)
        telemetry.config_version.set(version)

    datastore: DatastoreClient | None = None
    if settings.datastore_urls:
        datastore = DatastoreClient(
            service.http_client("datastore", traced=False),
            settings.datastore_urls,
            timeout_s=2.0,
            token=settings.datastore_credential,  # reads config/gateway/ only
        )
    sync = RoutingSync(
        datastore,
        settings.config_key,
        poll_s=settings.config_poll_s,
        check=lambda doc: _check(settings, upstreams, doc),
        apply=apply,
        on_error=lambda kind: telemetry.config_errors.inc(kind=kind),
    )
    checkers = [
        HealthChecker(
            name,
            upstream.health,
            upstream.endpoints,
            on_change=functools.partial(telemetry.health_change, name),
            on_pass=upstream.health_check_passed,
            ssl_context=service.client_ssl(),
        )
        for name, upstream in upstreams.items()
    ]
    sweeper: list[asyncio.Task[None]] = []

    async def sweep() -> None:
        loop = asyncio.get_running_loop()
        due = {name: loop.time() + u.spec.outlier.interval_s for name, u in upstreams.items()}
        while True:
            await asyncio.sleep(SWEEP_TICK_S)
            now = loop.time()
            for name, upstream in upstreams.items():
                if now >= due[name]:
                    upstream.outlier.sweep(now)
                    due[name] = now + upstream.spec.outlier.interval_s

    async def start() -> None:
        # https upstreams (a stack with TLS on) are verified against the stack's CA.
        proxy.dispatcher.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, keepalive_timeout=30, ssl=service.client_ssl() or True
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        if settings.upstream_http == "native":
            proxy.dispatcher.pool = UpstreamPool(max_response_bytes=settings.max_response_bytes)
        for upstream in upstreams.values():
            for endpoint in upstream.endpoints:
                telemetry.health_change(upstream.name, endpoint, True)
            for pool in upstream.distinct_pools():
                telemetry.panic.set(0, upstream=upstream.name, upstream_track=pool.track)
        await asyncio.gather(*(checker.start() for checker in checkers))
        await sync.start()
        sweeper.append(asyncio.create_task(sweep(), name="outlier-sweep"))

    async def stop() -> None:
        for task in sweeper:
            await cancel_task(task)
        await sync.stop()
        await asyncio.gather(*(checker.stop() for checker in checkers))
        if proxy.dispatcher.session is not None:
            await proxy.dispatcher.session.close()
        if proxy.dispatcher.pool is not None:
            await proxy.dispatcher.pool.close()

    service.on_startup(start)
    service.on_shutdown(stop)

    async def upstreams_ready() -> bool:
        return all(any(u.health.is_healthy(e) for e in u.endpoints) for u in upstreams.values())

    service.add_readiness_check("upstreams", upstreams_ready)

    if settings.admin_port is not None:
        api = AdminApi(sync, lambda: base, upstreams, settings.strip_prefix)
        app = admin_app(
            api, token=settings.admin_credential, readyz=service.readyz, version=settings.version
        )
        admin = AppRunner(app, access_log=None, on_malformed=service.count_malformed)
        service.app[ADMIN_APP] = app

        async def start_admin() -> None:
            await admin.setup()
            await web.TCPSite(
                admin, settings.host, settings.admin_port, ssl_context=service.ssl_context
            ).start()

        service.on_startup(start_admin)
        service.on_shutdown(admin.cleanup)
    return service
