"""The admin API on its own listener, so it is never reachable through the public port.

Every request needs `Authorization: Bearer <admin_token>` (401 without); without a
configured token the API is off and every path answers 404. It reads the live state
and changes the routing document (routes, track weights, manual ejections); changes
are stored in the datastore, so every replica applies them within a second. This is
the hook the rollout engine drives.

    GET    /readyz                                 readiness (no token: replica probes)
    GET    /admin/routes                           routing document and its version
    PUT    /admin/routes                           replace the routes
    PUT    /admin/routes/{name}/split              set one route's track weights
    GET    /admin/upstreams                        endpoints, health, ejections, breakers
    POST   /admin/upstreams/{upstream}/ejections   eject an endpoint for a while
    DELETE /admin/upstreams/{upstream}/ejections   return it (`?endpoint=URL`)
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from yardarm_kit import Problem, parse_json
from yardarm_kit.datastore_client import DatastoreUnavailable

from yardarm_gateway.routeconfig import Ejection, RoutingConflict, RoutingDoc, RoutingSync
from yardarm_gateway.routing import Route
from yardarm_gateway.split import StickyConfig
from yardarm_gateway.upstreams import Upstream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_EJECTION_S = 7 * 24 * 3600


class RoutesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    routes: list[Route]


class SplitBody(BaseModel):
    """New weights; `sticky` is kept unless given (`null` turns stickiness off)."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, int]
    sticky: StickyConfig | None = None


class EjectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(min_length=1)
    duration_s: float = Field(default=60.0, gt=0, le=MAX_EJECTION_S)
    reason: str = Field(default="admin", max_length=200)


def _others(doc: RoutingDoc, upstream: str, url: str) -> list[Ejection]:
    """The document's ejections but this endpoint's, dropping the expired ones."""
    now = time.time()
    return [
        e for e in doc.ejections if (e.upstream, e.endpoint) != (upstream, url) and e.until > now
    ]


def _authorized(request: web.Request, token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), token.encode()
    )


def _admin_middleware(token: str | None) -> Any:
    """Token check first, then problem+json for every error (the kit's shape).

    `/readyz` alone is open: replicas sharing the public port are probed here.
    """

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path == "/readyz":
                return await handler(request)
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


class AdminApi:
    """Handlers over the routing sync and the live upstreams."""

    def __init__(
        self,
        sync: RoutingSync,
        base: Callable[[], RoutingDoc],
        upstreams: Mapping[str, Upstream],
        strip_prefix: str,
    ) -> None:
        self._sync = sync
        self._base = base
        self._upstreams = upstreams
        self._strip_prefix = strip_prefix

    def _doc(self) -> RoutingDoc:
        return self._sync.doc or self._base()

    def _view(self) -> dict[str, Any]:
        doc = self._doc()
        return {
            "version": self._sync.version,
            "persistent": self._sync.persistent,
            "strip_prefix": self._strip_prefix,
            **doc.model_dump(mode="json"),
        }

    async def _update(self, change: Callable[[RoutingDoc], RoutingDoc]) -> None:
        try:
            await self._sync.update(change, self._base())
        except ValueError as exc:
            raise Problem(422, "invalid routing", str(exc)) from None
        except RoutingConflict as exc:
            raise Problem(409, "concurrent change", str(exc)) from None
        except DatastoreUnavailable as exc:
            raise Problem(
                503,
                "datastore unavailable",
                f"the routing change was not stored: {exc}",
                headers={"Retry-After": "1"},
            ) from None

    async def get_routes(self, _: web.Request) -> web.Response:
        return web.json_response(self._view())

    async def put_routes(self, request: web.Request) -> web.Response:
        body = await parse_json(request, RoutesBody)
        await self._update(lambda doc: doc.model_copy(update={"routes": body.routes}))
        return web.json_response(self._view())

    async def put_split(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await parse_json(request, SplitBody)
        sticky_given = "sticky" in body.model_fields_set

        def change(doc: RoutingDoc) -> RoutingDoc:
            routes: list[Route] = []
            found = False
            for route in doc.routes:
                if route.name == name:
                    found = True
                    data = route.model_dump()
                    data["split"] = body.weights
                    if sticky_given:
                        data["sticky"] = None if body.sticky is None else body.sticky.model_dump()
                    route = Route.model_validate(data)
                routes.append(route)
            if not found:
                known = ", ".join(r.name for r in doc.routes)
                raise KeyError(f"no route named {name!r} (routes: {known})")
            return doc.model_copy(update={"routes": routes})

        try:
            await self._update(change)
        except KeyError as exc:
            raise Problem(404, "no such route", str(exc.args[0])) from None
        return web.json_response(self._view())

    async def get_upstreams(self, _: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        return web.json_response(
            {name: upstream.snapshot(now) for name, upstream in self._upstreams.items()}
        )

    def _upstream(self, request: web.Request) -> Upstream:
        name = request.match_info["upstream"]
        upstream = self._upstreams.get(name)
        if upstream is None:
            known = ", ".join(sorted(self._upstreams))
            raise Problem(404, "no such upstream", f"no upstream {name!r} (upstreams: {known})")
        return upstream

    @staticmethod
    def _endpoint_url(upstream: Upstream, url: str) -> str:
        url = url.rstrip("/")
        if url not in upstream.by_url:
            known = ", ".join(upstream.by_url)
            raise Problem(
                422,
                "unknown endpoint",
                f"upstream {upstream.name!r} has no endpoint {url!r} (endpoints: {known})",
            )
        return url

    async def eject(self, request: web.Request) -> web.Response:
        upstream = self._upstream(request)
        body = await parse_json(request, EjectBody)
        url = self._endpoint_url(upstream, body.endpoint)
        until = time.time() + body.duration_s
        entry = Ejection(upstream=upstream.name, endpoint=url, until=until, reason=body.reason)

        def change(doc: RoutingDoc) -> RoutingDoc:
            return doc.model_copy(update={"ejections": [*_others(doc, upstream.name, url), entry]})

        await self._update(change)
        return web.json_response(entry.model_dump(mode="json"), status=201)

    async def uneject(self, request: web.Request) -> web.Response:
        upstream = self._upstream(request)
        raw = request.query.get("endpoint")
        if not raw:
            raise Problem(400, "endpoint required", "send ?endpoint=<endpoint URL>")
        url = self._endpoint_url(upstream, raw)
        if not any((e.upstream, e.endpoint) == (upstream.name, url) for e in self._doc().ejections):
            raise Problem(404, "not ejected", f"{url} has no manual ejection")

        def change(doc: RoutingDoc) -> RoutingDoc:
            return doc.model_copy(update={"ejections": _others(doc, upstream.name, url)})

        await self._update(change)
        return web.json_response(self._view())


def admin_app(api: AdminApi, *, token: str | None, readyz: Handler) -> web.Application:
    """The admin application; errors are problem+json like on the public port."""
    app = web.Application(middlewares=[_admin_middleware(token)], client_max_size=256 * 1024)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/admin/routes", api.get_routes)
    app.router.add_put("/admin/routes", api.put_routes)
    app.router.add_put("/admin/routes/{name}/split", api.put_split)
    app.router.add_get("/admin/upstreams", api.get_upstreams)
    app.router.add_post("/admin/upstreams/{upstream}/ejections", api.eject)
    app.router.add_delete("/admin/upstreams/{upstream}/ejections", api.uneject)
    return app
