"""Who may call the datastore (etcd's model): bearer tokens, roles, key-prefix permissions.

With an access document (`ACCESS_FILE`), every KV and Raft admin request needs a bearer
token whose roles allow it: read on the key (GET), read on the prefix (a listing: a
caller allowed only `stock/` may list `stock/...` but not `` or `s`), write on the key
(PUT, DELETE), the admin role for `/raft/*`. The probes, `/metrics` and `/openapi.json`
stay open. Without a document, authentication is off (said loudly at start-up).

The order is fixed: the kit's checks of the URL itself (broken percent-escapes, `%00`),
then who is calling and what its roles allow (401, 403), and only then the parameters and
the body (400, 413, 422). The decision uses the raw key or prefix (the path and query as
decoded), so a caller without a credential learns nothing about the data, not even
whether its input would have been valid; a key that later fails validation was never
read or written.

Writes a follower takes are authorized there and handed to the leader over the Raft
stream, which only authenticated peers reach; admin requests a follower relays carry the
caller's `Authorization` header, and the leader checks it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from yardarm_kit import Service
from yardarm_kit.access import Authorizer
from yardarm_kit.openapi import Handler

REALM = "yardarm-datastore"

Rule = Callable[[Authorizer, web.Request], object]


def read_key(authorizer: Authorizer, request: web.Request) -> object:
    return authorizer.require(request, "read", request.match_info.get("key", ""))


def write_key(authorizer: Authorizer, request: web.Request) -> object:
    return authorizer.require(request, "write", request.match_info.get("key", ""))


def read_prefix(authorizer: Authorizer, request: web.Request) -> object:
    return authorizer.require(request, "read", request.query.get("prefix", ""))


def admin(authorizer: Authorizer, request: web.Request) -> object:
    return authorizer.require_admin(request)


class Guard:
    """Registers guarded operations (documented as secured) and checks each request
    against its operation's rule in a middleware, ahead of the kit's validation."""

    def __init__(self, service: Service, authorizer: Authorizer | None) -> None:
        self._api = service.api
        self.authorizer = authorizer
        self._rules: dict[tuple[str, str], Rule] = {}
        service.app.middlewares.append(self._check)

    def add(
        self, method: str, path: str, handler: Handler, *, rule: Rule, permission: str, **spec: Any
    ) -> None:
        """`service.api.add(...)` for an operation that `rule` guards."""
        self._api.add(method, path, handler, secured=True, permission=permission, **spec)
        self._rules[(method.upper(), self._api.operations[-1].path)] = rule

    @web.middleware
    async def _check(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.authorizer is not None:
            resource = request.match_info.route.resource
            if resource is not None:  # None: no route (404, 405), nothing to guard
                rule = self._rules.get((request.method, resource.canonical))
                if rule is not None:
                    rule(self.authorizer, request)
        return await handler(request)
