"""Wires the gateway into the kit's Service: proxy, health, routing sync, admin listener."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from yardarm_kit import Service
from yardarm_kit.datastore_client import DatastoreClient
from yardarm_kit.lifecycle import cancel_task

from yardarm_gateway.admin import AdminApi, admin_app, admin_openapi
from yardarm_gateway.endpoints import Endpoint
from yardarm_gateway.health import HealthChecker
from yardarm_gateway.proxy import Proxy, RoutingState
from yardarm_gateway.routeconfig import RoutingDoc, RoutingSync
from yardarm_gateway.routing import RouteTable, check_routes
from yardarm_gateway.settings import GatewaySettings
from yardarm_gateway.split import shares
from yardarm_gateway.telemetry import GatewayTelemetry
from yardarm_gateway.upstream_client import UpstreamPool
from yardarm_gateway.upstreams import ALL_TRACKS, Upstream

SWEEP_TICK_S = 0.5
ADMIN_APP = web.AppKey("yardarm.gateway.admin_app", web.Application)


class _Ejections:
    """Applies the routing document's manual ejections to the outlier detectors.

    An ejection naming an endpoint that is not listed (any more) is dropped: it left
    rotation anyway.
    """

    def __init__(self, upstreams: dict[str, Upstream]) -> None:
        self._upstreams = upstreams
        self._applied: set[tuple[str, str]] = set()

    def apply(self, doc: RoutingDoc) -> None:
        now = asyncio.get_running_loop().time()
        wall = time.time()
        wanted: set[tuple[str, str]] = set()
        for entry in doc.ejections:
            upstream = self._upstreams[entry.upstream]
            endpoint = upstream.by_url.get(entry.endpoint)
            if entry.until <= wall or endpoint is None:
                continue
            upstream.outlier.eject(endpoint, now, entry.until - wall, f"admin: {entry.reason}")
            wanted.add((entry.upstream, entry.endpoint))
        for name, url in self._applied - wanted:
            upstream = self._upstreams[name]
            endpoint = upstream.by_url.get(url)
            if endpoint is not None:
                upstream.outlier.uneject(endpoint, now, "admin")
        self._applied = wanted


def _check(settings: GatewaySettings, doc: RoutingDoc) -> None:
    """Whether this gateway can route by `doc` (ValueError naming what cannot be).

    Weight on a track without endpoints is allowed here: the control plane may remove a
    track's last endpoint under a split, and that weight then goes unused. An admin's
    change may not add such weight (`AdminApi`).
    """
    for name, specs in doc.endpoints.items():
        spec = settings.upstreams.get(name)
        if spec is None:
            known = ", ".join(sorted(settings.upstreams)) or "none"
            raise ValueError(f"endpoints listed for unknown upstream {name!r} (known: {known})")
        ring = spec.balancer.ring_size
        if spec.balancer.policy == "consistent_hash" and len(specs) > ring:
            raise ValueError(
                f"upstream {name!r} lists {len(specs)} endpoints, more than its hash ring's "
                f"{ring} points"
            )
    tracks = {
        name: {e.track for e in doc.endpoints_of(name, spec.endpoints)}
        for name, spec in settings.upstreams.items()
    }
    check_routes(doc.routes, tracks, weights_need_endpoints=False)
    for entry in doc.ejections:
        if entry.upstream not in settings.upstreams:
            raise ValueError(f"ejection names unknown upstream {entry.upstream!r}")


def _in_rotation(upstream: Upstream) -> Callable[[], tuple[Endpoint, ...]]:
    """The endpoints to probe: those in rotation at each round (not the draining)."""
    return lambda: upstream.endpoints


def _drain_s(settings: GatewaySettings, doc: RoutingDoc) -> float:
    """The longest a request in flight may last by `doc`: how long a removed endpoint
    may keep requests before it is dropped anyway."""
    return max([settings.route_timeout_s, *(r.timeout_s for r in doc.routes if r.timeout_s)])


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

    def dropped(name: str, endpoint: Endpoint) -> None:
        """A drained endpoint is gone: close its pooled connections."""
        if proxy.dispatcher.pool is not None:
            proxy.dispatcher.pool.discard(endpoint.url)
        telemetry.endpoint_gone(name, endpoint)

    upstreams = {
        name: Upstream(
            name,
            spec,
            now=now,
            on_breaker=telemetry.breaker_transition,
            on_outlier=telemetry.outlier_event,
            on_panic=telemetry.panic_change,
            on_drop=dropped,
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

    def route_weights() -> Iterator[tuple[tuple[str, str, str], float]]:
        state = proxy.state
        for route in state.table.routes:
            split = state.splits.get(route.name)
            upstream = upstreams.get(route.upstream)
            if split is None or upstream is None:
                yield (route.name, route.upstream, ALL_TRACKS), 100.0
                continue
            for track, share in shares(split, upstream.has_endpoints).items():
                yield (route.name, route.upstream, track), share

    service.metrics.read_gauge(
        "yardarm_gateway_route_weight",
        "Percentage of a route's requests the weighted split sends to each track now (a "
        'track without endpoints gets 0; upstream_track="*": a route with no split).',
        ("route", "upstream", "upstream_track"),
        route_weights,
    )
    ejections = _Ejections(upstreams)

    def apply(doc: RoutingDoc, version: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        drain_s = _drain_s(settings, doc)
        for name, upstream in upstreams.items():
            specs = doc.endpoints_of(name, settings.upstreams[name].endpoints)
            added, leaving = upstream.set_endpoints(specs, now, drain_s)
            for endpoint in added:
                telemetry.endpoint_added(name, endpoint)
            for endpoint in leaving:
                telemetry.endpoint_draining(name, endpoint)
            upstream.reap(now)  # those with nothing in flight go at once
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
        check=lambda doc: _check(settings, doc),
        apply=apply,
        on_error=lambda kind: telemetry.config_errors.inc(kind=kind),
    )
    checkers = [
        HealthChecker(
            name,
            upstream.health,
            _in_rotation(upstream),
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
                if upstream.draining:  # nothing left in flight, or the drain time is over
                    upstream.reap(now)
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
        # The stored document first, so the endpoints it lists are probed before the
        # listener opens, like those of the settings.
        await sync.start()
        for upstream in upstreams.values():
            for endpoint in upstream.endpoints:
                telemetry.health_change(upstream.name, endpoint, True)
            for pool in upstream.distinct_pools():
                telemetry.panic.set(0, upstream=upstream.name, upstream_track=pool.track)
        await asyncio.gather(*(checker.start() for checker in checkers))
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
        """Each upstream has a healthy endpoint, unless it has none at all (scaled to 0:
        its routes answer 503, the others serve)."""
        return all(
            any(u.health.is_healthy(e) for e in u.endpoints)
            for u in upstreams.values()
            if u.endpoints
        )

    service.add_readiness_check("upstreams", upstreams_ready)

    if settings.admin_port is not None:
        api = AdminApi(sync, lambda: base, upstreams, settings.strip_prefix)
        app = admin_app(
            api,
            token=settings.admin_credential,
            readyz=service.readyz,
            metrics=service.metrics,  # each replica's own, whatever the public port reaches
            version=settings.version,
        )
        service.app[ADMIN_APP] = app
        # On `host` like the public port, and drained with it: its /readyz (what the
        # supervisor probes) fails first, then both close together.
        service.add_listener(app, settings.admin_port)
    return service
