"""Wires the gateway into the kit's Service: proxy route, readiness, admin listener."""

from __future__ import annotations

from aiohttp import web
from yardarm_kit import HttpClient, Service

from yardarm_gateway.admin import admin_app, routes_view
from yardarm_gateway.proxy import Proxy
from yardarm_gateway.readiness import ReadinessProbe
from yardarm_gateway.routing import RouteTable
from yardarm_gateway.settings import GatewaySettings
from yardarm_gateway.upstreams import build_upstreams


def create_gateway(settings: GatewaySettings) -> Service:
    """A gateway Service ready to `run()`."""
    service = Service(settings)
    table = RouteTable(settings.routes, strip_prefix=settings.strip_prefix)
    upstreams = build_upstreams(settings.upstreams)
    requests_total = service.metrics.counter(
        "yardarm_gateway_upstream_requests_total",
        "Requests the gateway sent upstream, by endpoint and outcome "
        "(response, connect_error, timeout, invalid_response).",
        ["upstream", "endpoint", "outcome"],
    )
    # The kit's clients share one session, which must be created on the running loop.
    clients: dict[str, HttpClient] = {}

    async def open_clients() -> None:
        clients.update({name: service.http_client(name) for name in upstreams})

    service.on_startup(open_clients)
    proxy = Proxy(
        table,
        upstreams,
        clients,
        timeout_s=settings.upstream_timeout_s,
        max_body_bytes=settings.max_body_bytes,
        requests_total=requests_total,
    )
    service.app.router.add_route("*", "/{tail:.*}", proxy.handle)

    probe = ReadinessProbe(
        upstreams,
        interval_s=settings.readiness_interval_s,
        timeout_s=settings.readiness_timeout_s,
    )
    service.on_startup(probe.start)
    service.on_shutdown(probe.stop)

    async def upstreams_ready() -> bool:
        return not probe.not_ready()

    service.add_readiness_check("upstreams", upstreams_ready)

    if settings.admin_port is not None:
        admin = web.AppRunner(
            admin_app(routes_view(table, upstreams), token=settings.admin_token),
            access_log=None,
        )

        async def start_admin() -> None:
            await admin.setup()
            await web.TCPSite(admin, settings.host, settings.admin_port).start()

        service.on_startup(start_admin)
        service.on_shutdown(admin.cleanup)
    return service
