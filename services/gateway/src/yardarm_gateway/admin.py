"""The admin API on its own listener, so it is never reachable through the public port.

Every request needs `Authorization: Bearer <admin token>` (401 without); without a
configured token the API is off and every path but the open two answers 404. It reads
the live state and changes the routing document (routes, track weights, manual
ejections); changes are stored in the datastore with the caller's own credential, so
every replica applies them within a second and the gateway itself can never rewrite
its routing. This is the hook the rollout engine drives.

    GET    /readyz                                 readiness (open: replica probes)
    GET    /metrics                                this replica's metrics (open: scrapers)
    GET    /openapi.json                           this API's OpenAPI document (open)
    GET    /admin/routes                           routing document and its version
    PUT    /admin/routes                           replace the routes
    PUT    /admin/routes/{name}/split              set one route's track weights
    GET    /admin/upstreams                        endpoints, health, ejections, breakers
    POST   /admin/upstreams/{upstream}/ejections   eject an endpoint for a while
    DELETE /admin/upstreams/{upstream}/ejections   return it (`?endpoint=URL`)

Statuses: 422 for a body or parameter that breaks the document's schema; 409 for a
valid change that conflicts with the gateway's configuration (an unknown upstream or
endpoint, weight on a track without endpoints), with itself (two routes with one
prefix or name) or with a concurrent change; 403 when the datastore refused the
caller's credential for the write; 503 when the datastore cannot be reached.

The document's `endpoints` (the control plane's) are never changed here: every change
stores them back as read. Each change also drops the ejections naming an endpoint no
longer listed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from yardarm_kit import ApiSpec, Header, Param, Problem, Reply, params_of, parse_json
from yardarm_kit.access import bearer_token, unauthorized
from yardarm_kit.datastore_client import DatastoreRefused, DatastoreUnavailable
from yardarm_kit.metrics import Metrics
from yardarm_kit.service import Readiness, problem_middleware

from yardarm_gateway.admin_models import (
    EjectBody,
    OpenApiDocument,
    RoutesBody,
    RoutingView,
    SomeText,
    SplitBody,
    UpstreamsView,
)
from yardarm_gateway.routeconfig import Ejection, RoutingConflict, RoutingDoc, RoutingSync
from yardarm_gateway.routing import Route, check_routes, check_weights
from yardarm_gateway.upstreams import Upstream

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REALM = "yardarm-gateway-admin"
OPEN_PATHS = frozenset({"/readyz", "/metrics", "/openapi.json"})
ADMIN_SPEC = web.AppKey("yardarm.gateway.admin_spec", ApiSpec)
PERMISSION = "the gateway's admin token (the stack's admin credential)"
WRITE_PERMISSION = (
    f"{PERMISSION}; the change is written to the datastore with this same credential, "
    "which must be allowed to write the routing key"
)


def _others(doc: RoutingDoc, upstream: str, url: str) -> list[Ejection]:
    """The document's ejections but this endpoint's, dropping the expired ones."""
    now = time.time()
    return [
        e for e in doc.ejections if (e.upstream, e.endpoint) != (upstream, url) and e.until > now
    ]


def _json(model: type[BaseModel], data: Any, status: int = 200) -> web.Response:
    """An answer produced through its declared model, so it matches the document."""
    return web.json_response(model.model_validate(data).model_dump(mode="json"), status=status)


def _same_secret(presented: str, token: str) -> bool:
    # surrogateescape: a header carrying bytes that are not UTF-8 compares unequal
    # instead of raising
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape")
    )


def _admin_guard(token: str | None) -> Any:
    """The token check; `/readyz` (replicas sharing the public port are probed here),
    `/metrics` and `/openapi.json` are open. Errors become problems in the kit's middleware
    around it."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            if token is None:
                raise Problem(404, "Not Found", "the admin API is disabled (no admin token set)")
            presented = bearer_token(request)
            if presented is None:
                raise unauthorized(REALM, "send 'Authorization: Bearer <admin token>'")
            if not _same_secret(presented, token):
                raise unauthorized(REALM, "the bearer token is not the admin token")
        return await handler(request)

    return guard


def _not_admin(request: web.Request) -> str:
    return f"{request.method} {request.path} is not an admin endpoint"


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

    def _tracks(self, doc: RoutingDoc) -> dict[str, set[str]]:
        """The tracks with endpoints, per upstream, by `doc`."""
        return {
            name: {e.track for e in doc.endpoints_of(name, upstream.spec.endpoints)}
            for name, upstream in self._upstreams.items()
        }

    def _pruned(self, doc: RoutingDoc) -> RoutingDoc:
        """`doc` without the ejections naming an endpoint it does not list (it left;
        should its URL come back, that is a new instance)."""
        keep = [
            e
            for e in doc.ejections
            if e.upstream in self._upstreams
            and any(
                spec.url == e.endpoint
                for spec in doc.endpoints_of(e.upstream, self._upstreams[e.upstream].spec.endpoints)
            )
        ]
        if len(keep) == len(doc.ejections):
            return doc
        return doc.model_copy(update={"ejections": keep})

    def with_examples(self, document: dict[str, Any]) -> dict[str, Any]:
        """`document` with this gateway's upstream names and endpoint URLs as examples,
        so a client (or a fuzzer) can find values the API will act on."""
        names = sorted(self._upstreams)
        urls = [e.url for name in names for e in self._upstreams[name].endpoints]
        for item in document["paths"].values():
            for operation in item.values():
                for param in operation.get("parameters", []):
                    values = {"upstream": names, "endpoint": urls}.get(param["name"])
                    if values:
                        param["schema"] = {**param["schema"], "examples": values}
        eject = document["components"]["schemas"].get("EjectBody")
        if eject is not None and urls:
            endpoint = eject["properties"]["endpoint"]
            eject["properties"]["endpoint"] = {**endpoint, "examples": urls}
        return document

    def _view(self) -> web.Response:
        doc = self._doc()
        return _json(
            RoutingView,
            {
                "version": self._sync.version,
                "persistent": self._sync.persistent,
                "strip_prefix": self._strip_prefix,
                "routes": doc.routes,
                "ejections": doc.ejections,
                "endpoints": doc.endpoints,
            },
        )

    async def _update(
        self, request: web.Request, change: Callable[[RoutingDoc], RoutingDoc]
    ) -> None:
        try:
            await self._sync.update(
                lambda doc: self._pruned(change(doc)), self._base(), token=bearer_token(request)
            )
        except ValueError as exc:  # valid in itself, but not with this configuration
            raise Problem(409, "conflicting routing", str(exc)) from None
        except RoutingConflict as exc:
            raise Problem(409, "concurrent change", str(exc)) from None
        except DatastoreRefused as exc:
            raise Problem(
                403,
                "Forbidden",
                f"the datastore refused to store the change with your credential ({exc}); "
                "it needs write access to the routing key",
            ) from None
        except DatastoreUnavailable as exc:
            raise Problem(
                503,
                "datastore unavailable",
                f"the routing change was not stored: {exc}",
                headers={"Retry-After": "1"},
            ) from None

    async def get_routes(self, _: web.Request) -> web.Response:
        return self._view()

    async def put_routes(self, request: web.Request) -> web.Response:
        body = await parse_json(request, RoutesBody)

        def change(doc: RoutingDoc) -> RoutingDoc:
            check_routes(body.routes, self._tracks(doc))  # no weight on a track without endpoints
            return doc.model_copy(update={"routes": body.routes})

        await self._update(request, change)
        return self._view()

    async def put_split(self, request: web.Request) -> web.Response:
        name = params_of(request)["name"]
        body = await parse_json(request, SplitBody)
        sticky_given = "sticky" in body.model_fields_set

        def change(doc: RoutingDoc) -> RoutingDoc:
            routes: list[Route] = []
            found = False
            for route in doc.routes:
                if route.name == name:
                    found = True
                    data = route.model_dump()
                    data["split"] = dict(body.weights)
                    if sticky_given:
                        data["sticky"] = None if body.sticky is None else body.sticky.model_dump()
                    route = Route.model_validate(data)
                    check_weights(route, self._tracks(doc).get(route.upstream, set()))
                routes.append(route)
            if not found:
                known = ", ".join(r.name for r in doc.routes)
                raise KeyError(f"no route named {name!r} (routes: {known})")
            return doc.model_copy(update={"routes": routes})

        try:
            await self._update(request, change)
        except KeyError as exc:
            raise Problem(404, "no such route", str(exc.args[0])) from None
        return self._view()

    async def get_upstreams(self, _: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        snapshot = {name: upstream.snapshot(now) for name, upstream in self._upstreams.items()}
        return _json(UpstreamsView, snapshot)

    def _upstream(self, request: web.Request) -> Upstream:
        name = params_of(request)["upstream"]
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
                409,
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
            listed = doc.endpoints_of(upstream.name, upstream.spec.endpoints)
            if not any(spec.url == url for spec in listed):  # it left since it was looked up
                raise ValueError(f"upstream {upstream.name!r} no longer lists {url!r}")
            return doc.model_copy(update={"ejections": [*_others(doc, upstream.name, url), entry]})

        await self._update(request, change)
        return _json(Ejection, entry, status=201)

    async def uneject(self, request: web.Request) -> web.Response:
        upstream = self._upstream(request)
        url = self._endpoint_url(upstream, params_of(request)["endpoint"])
        if not any((e.upstream, e.endpoint) == (upstream.name, url) for e in self._doc().ejections):
            raise Problem(404, "not ejected", f"{url} has no manual ejection")

        def change(doc: RoutingDoc) -> RoutingDoc:
            return doc.model_copy(update={"ejections": _others(doc, upstream.name, url)})

        await self._update(request, change)
        return self._view()


ADMIN_API = web.AppKey("yardarm.gateway.admin_api", AdminApi)
_RETRY = Header("seconds to wait before trying again", required=True)
_UNAVAILABLE = Reply.error(
    "the datastore could not be reached; nothing changed", **{"Retry-After": _RETRY}
)
_CONFLICT = Reply.error(
    "valid, but conflicting: with the gateway's upstreams, endpoints or tracks, with another "
    "route of the document (a prefix or name twice), or with a concurrent change"
)
_REFUSED = Reply.error("no valid admin credential, or the datastore refused it for the write")


def _metrics_handler(metrics: Metrics) -> Handler:
    """This replica's own metrics, as the public port's `/metrics` exposes them.

    Replicas share the public port (SO_REUSEPORT), so a scrape there reaches whichever
    replica the kernel picks; each admin port is one replica's, so a scraper sees every
    replica once. Open like `/readyz`: metrics are read-only and scrapers carry no token.
    """

    async def handle(request: web.Request) -> web.Response:
        body, content_type = metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle


def _describe(spec: ApiSpec, api: AdminApi, readyz: Handler, metrics: Metrics) -> None:
    """Route and document every operation of the admin listener."""
    ops = ("operations",)
    spec.add(
        "GET", "/readyz", readyz, operation_id="readyz", tags=ops, operational=True,
        summary="Readiness of this gateway replica (open, for probes)",
        responses={200: Reply("ready", Readiness),
                   503: Reply.error("a check fails; `checks` says which",
                                     **{"Retry-After": _RETRY})},
    )  # fmt: skip
    spec.add(
        "GET", "/metrics", _metrics_handler(metrics), operation_id="metrics", tags=ops,
        operational=True,
        summary="This gateway replica's Prometheus metrics (open, for scrapers; OpenMetrics "
        "with exemplars when asked for)",
        responses={200: Reply("the exposition",
                              content_type="text/plain,application/openmetrics-text")},
    )  # fmt: skip

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(admin_openapi(request.app))

    spec.add(
        "GET", "/openapi.json", openapi, operation_id="openapi", tags=ops, operational=True,
        summary="This API's OpenAPI 3.1 document (open)",
        responses={200: Reply("the document", OpenApiDocument)},
    )  # fmt: skip
    routing = ("routing",)
    # Links let a client (and a fuzzer) follow one answer to the next request.
    to_split = {"operationId": "putSplit", "parameters": {"name": "$response.body#/routes/0/name"}}
    to_eject = {
        "operationId": "eject",
        "parameters": {"upstream": "$response.body#/routes/0/upstream"},
    }
    from_view = {"SetSplit": to_split, "Eject": to_eject}
    view = Reply("the routing document", RoutingView, links=from_view)
    stored = Reply("stored and in force; the routing document", RoutingView, links=from_view)
    secured: dict[str, Any] = {"secured": True, "permission": PERMISSION}
    writes: dict[str, Any] = {"secured": True, "permission": WRITE_PERMISSION}
    spec.add(
        "GET", "/admin/routes", api.get_routes, operation_id="getRoutes", tags=routing,
        summary="The routing document in force and its version",
        responses={200: view}, **secured,
    )  # fmt: skip
    spec.add(
        "PUT", "/admin/routes", api.put_routes, operation_id="putRoutes", tags=routing,
        summary="Replace the routes (every replica applies them within a second)",
        body=RoutesBody,
        responses={200: stored, 403: _REFUSED, 409: _CONFLICT, 503: _UNAVAILABLE},
        **writes,
    )  # fmt: skip
    spec.add(
        "PUT", "/admin/routes/{name}/split", api.put_split, operation_id="putSplit",
        tags=routing, summary="Set one route's track weights (and stickiness)",
        body=SplitBody,
        params=[Param("name", "path", SomeText, "the route's name", required=True)],
        responses={200: stored, 403: _REFUSED, 404: Reply.error("no route has this name"),
                   409: _CONFLICT, 503: _UNAVAILABLE},
        **writes,
    )  # fmt: skip
    upstreams = ("upstreams",)
    spec.add(
        "GET", "/admin/upstreams", api.get_upstreams, operation_id="getUpstreams",
        tags=upstreams, summary="Endpoints, health, ejections, breakers and budgets",
        responses={200: Reply("every upstream by name", UpstreamsView)}, **secured,
    )  # fmt: skip
    upstream = Param("upstream", "path", SomeText, "the upstream's name", required=True)
    to_uneject = {
        "operationId": "uneject",
        "parameters": {
            "upstream": "$response.body#/upstream",
            "endpoint": "$response.body#/endpoint",
        },
    }
    spec.add(
        "POST", "/admin/upstreams/{upstream}/ejections", api.eject, operation_id="eject",
        tags=upstreams, summary="Take an endpoint out of rotation for a while",
        body=EjectBody, params=[upstream],
        responses={201: Reply("ejected", Ejection, links={"Return": to_uneject}), 403: _REFUSED,
                   404: Reply.error("no upstream has this name"), 409: _CONFLICT,
                   503: _UNAVAILABLE},
        **writes,
    )  # fmt: skip
    spec.add(
        "DELETE", "/admin/upstreams/{upstream}/ejections", api.uneject,
        operation_id="uneject", tags=upstreams,
        summary="Return an endpoint an admin ejected to rotation",
        params=[upstream,
                Param("endpoint", "query", SomeText, "the endpoint's URL", required=True)],
        responses={200: stored, 403: _REFUSED,
                   404: Reply.error("no such upstream, or the endpoint has no manual ejection"),
                   409: _CONFLICT, 503: _UNAVAILABLE},
        **writes,
    )  # fmt: skip


def admin_openapi(app: web.Application) -> dict[str, Any]:
    """The admin app's OpenAPI document, with this gateway's names as examples."""
    return app[ADMIN_API].with_examples(app[ADMIN_SPEC].document())


def admin_app(
    api: AdminApi, *, token: str | None, readyz: Handler, metrics: Metrics, version: str
) -> web.Application:
    """The admin application; errors are problem+json like on the public port.

    Its ApiSpec is `app[ADMIN_SPEC]`.
    """
    app = web.Application(
        middlewares=[problem_middleware(log, not_found=_not_admin), _admin_guard(token)],
        client_max_size=256 * 1024,
    )
    spec = ApiSpec(
        app.router,
        "yardarm gateway admin",
        version,
        "Routing, track weights and ejections of one gateway replica; changes are stored "
        "in the datastore and reach every replica.",
        kit_middleware=False,  # no fault injection or deadlines on the admin listener
    )

    _describe(spec, api, readyz, metrics)
    app[ADMIN_SPEC] = spec
    app[ADMIN_API] = api
    return app
