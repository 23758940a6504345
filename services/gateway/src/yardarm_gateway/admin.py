"""The admin API on its own listener, so it is never reachable through the public port.

Every request needs `Authorization: Bearer <admin_token>`; without a configured token
the API is off and every path answers 404. Read-only for now: it is where live route
and weight changes will land.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from yardarm_kit import Problem

from yardarm_gateway.routing import RouteTable
from yardarm_gateway.upstreams import Upstream

RoutesView = Callable[[], dict[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def routes_view(table: RouteTable, upstreams: Mapping[str, Upstream]) -> RoutesView:
    """The current routing state as JSON-ready data."""

    def view() -> dict[str, Any]:
        return {
            "strip_prefix": table.strip_prefix,
            "routes": [route.model_dump() for route in table.routes],
            "upstreams": {
                name: {
                    "endpoints": list(upstream.endpoints),
                    "ready": sorted(upstream.ready),
                }
                for name, upstream in upstreams.items()
            },
        }

    return view


def _authorized(request: web.Request, token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), token.encode()
    )


def _admin_middleware(token: str | None) -> Any:
    """Token check first, then problem+json for every error (the kit's shape)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if token is None:
                raise Problem(404, "Not Found", "the admin API is disabled (no admin token set)")
            if not _authorized(request, token):
                raise Problem(
                    401,
                    "Unauthorized",
                    "send 'Authorization: Bearer <admin token>'",
                    headers={"WWW-Authenticate": 'Bearer realm="yardarm-gateway-admin"'},
                )
            return await handler(request)
        except Problem as problem:
            return problem.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            detail = f"{request.method} {request.path} is not an admin endpoint"
            return Problem(exc.status, exc.reason, detail).response()

    return guard


def admin_app(view: RoutesView, *, token: str | None) -> web.Application:
    """The admin application; errors are problem+json like on the public port."""

    async def get_routes(_: web.Request) -> web.Response:
        return web.json_response(view())

    app = web.Application(middlewares=[_admin_middleware(token)])
    app.router.add_get("/admin/routes", get_routes)
    return app
