"""The proxy handler: admit, route, choose a track and an endpoint, forward, retry.

Per request, in order:
1. route on the raw path (400 for dot segments, 404 for no route);
2. edge rules: `x-yardarm-track` and writes on `admin_writes` routes need the admin
   token (`x-yardarm-admin-token`); the token never travels upstream;
3. admission: the client's token bucket (429) and the upstream's bulkhead (503), both
   with Retry-After;
4. the track: the override header, else the route's split (sticky by header or
   cookie when configured; a track without endpoints takes no weight), else any
   endpoint of the upstream; the track's circuit must be closed or half-open with a
   free permit (503 when open);
5. attempts: the balancer picks an usable endpoint (healthy, not ejected, circuit not
   open, not tried yet) whose circuit admits the call, or, while too few of the pool's
   endpoints are healthy and not ejected (panic mode), any endpoint not tried yet whose
   circuit admits it; one deadline (the route timeout, or less when the caller sent
   `yardarm-timeout-ms`) covers every attempt and is propagated to the upstream.

Retries: GET/HEAD/OPTIONS and requests carrying an Idempotency-Key are retried on a
reset or garbled answer, a per-try timeout, or a 502/503/504; every such retry needs
the upstream's retry budget, waits a fully jittered backoff and counts against
`max_retries`. A refused connection is re-routed instead, for a request of any method:
it never left the gateway, so another endpoint is tried at once, outside the budget
and the count (see `retry.retry_verdict`). Each endpoint is tried at most once per
request, and the deadline bounds them all.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict
from opentelemetry import trace
from yardarm_kit import ROUTE_KEY, Problem, deadline
from yardarm_kit.gateway_policy import RateLimitConfig

from yardarm_gateway.admission import RateLimiter, retry_after_header
from yardarm_gateway.balancer import request_hash_key
from yardarm_gateway.dispatch import Attempt, Dispatcher
from yardarm_gateway.endpoints import Endpoint
from yardarm_gateway.forwarding import (
    Relocation,
    downstream_response_headers,
    upstream_request_headers,
)
from yardarm_gateway.retry import backoff_s, is_retryable_request, retry_verdict
from yardarm_gateway.routing import TRACK, DotSegmentError, Route, RouteTable
from yardarm_gateway.split import TrafficSplit
from yardarm_gateway.telemetry import GatewayTelemetry
from yardarm_gateway.upstreams import ALL_TRACKS, Pool, Upstream

TRACK_HEADER = "x-yardarm-track"
TOKEN_HEADER = "x-yardarm-admin-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class RoutingState:
    """One consistent version of the routing: swapped whole, never edited in place.

    A request keeps the state it started with, so a change never disturbs it.
    """

    table: RouteTable
    splits: Mapping[str, TrafficSplit]
    version: int

    @classmethod
    def build(cls, table: RouteTable, version: int) -> RoutingState:
        splits = {r.name: TrafficSplit(r.split) for r in table.routes if r.split is not None}
        return cls(table, splits, version)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, or a 413 problem as soon as it exceeds `limit` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise Problem(413, "request body too large", f"the limit is {limit} bytes")
    if declared == 0:
        return b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise Problem(413, "request body too large", f"the limit is {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Proxy:
    """Forwards every routed request to one endpoint of its upstream."""

    def __init__(
        self,
        state: RoutingState,
        upstreams: Mapping[str, Upstream],
        telemetry: GatewayTelemetry,
        tracer: trace.Tracer,
        *,
        route_timeout_s: float,
        max_body_bytes: int,
        admin_token: str | None,
        rate_limit: RateLimitConfig,
        rng: random.Random | None = None,
        own_paths: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.state = state
        self._upstreams = upstreams
        self._telemetry = telemetry
        self._tracer = tracer
        self._route_timeout_s = route_timeout_s
        self._max_body_bytes = max_body_bytes
        self._admin_token = admin_token.encode() if admin_token else None
        self._own_paths = dict(own_paths or {})
        self._rate_limit = rate_limit
        self._limiter = RateLimiter(rate_limit) if rate_limit.enabled else None
        self._rng = rng or random.Random()
        self.dispatcher = Dispatcher(telemetry, tracer)

    # -- edge ---------------------------------------------------------------------

    def _is_admin(self, request: web.Request) -> bool:
        presented = request.headers.get(TOKEN_HEADER)
        return (
            presented is not None
            and self._admin_token is not None
            # a value that is not UTF-8 compares unequal rather than raising
            and hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self._admin_token)
        )

    def _require_admin(self, request: web.Request, route: Route, why: str) -> None:
        if request.headers.get(TOKEN_HEADER) is None:
            self._telemetry.rejected.inc(route=route.name, reason="forbidden")
            raise Problem(401, "admin token required", f"{why} needs the {TOKEN_HEADER} header")
        if not self._is_admin(request):
            self._telemetry.rejected.inc(route=route.name, reason="forbidden")
            raise Problem(403, "invalid admin token", f"the {TOKEN_HEADER} header is not valid")

    def _admit(self, request: web.Request, route: Route, now: float) -> None:
        if self._limiter is None:
            return
        if self._rate_limit.key == "header" and self._rate_limit.header:
            key = request.headers.get(self._rate_limit.header) or request.remote or "-"
        else:
            key = request.remote or "-"
        wait = self._limiter.acquire(key, now)
        if wait > 0:
            self._telemetry.rejected.inc(route=route.name, reason="rate_limited")
            raise Problem(
                429,
                "rate limited",
                f"more than {self._rate_limit.requests_per_s:g} requests/s from this client",
                headers={"Retry-After": retry_after_header(wait)},
            )

    # -- handler ------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        allowed = self._own_paths.get(request.path)
        if allowed is not None:  # the gateway's own path with another method: never proxied
            raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
        state = self.state
        try:
            match = state.table.match(request.raw_path)
        except DotSegmentError:
            raise Problem(
                400, "invalid path", "paths with '.' or '..' segments are not routed"
            ) from None
        if match is None:
            raise Problem(404, "no route", f"no route matches the path {request.path!r}")
        route = match.route
        request[ROUTE_KEY] = route.prefix
        override = request.headers.get(TRACK_HEADER)
        if override is not None:
            self._require_admin(request, route, f"choosing a track with {TRACK_HEADER}")
        if route.admin_writes and request.method not in SAFE_METHODS:
            self._require_admin(request, route, f"{request.method} on {route.prefix}")
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._admit(request, route, now)
        upstream = self._upstreams[route.upstream]
        if not upstream.bulkhead.try_enter():
            self._telemetry.rejected.inc(route=route.name, reason="bulkhead")
            raise Problem(
                503,
                "upstream busy",
                f"upstream {upstream.name!r} has {upstream.spec.max_concurrent} requests in "
                "flight, its limit",
                headers={"Retry-After": "1"},
            )
        try:
            return await self._forward(request, state, route, match.upstream_path, upstream,
                                       override, now)  # fmt: skip
        finally:
            upstream.bulkhead.leave()

    def _choose_track(
        self,
        request: web.Request,
        state: RoutingState,
        route: Route,
        upstream: Upstream,
        override: str | None,
        now: float,
    ) -> tuple[str, str | None]:
        """The track to use and, for cookie stickiness, a new cookie value to set.

        A track without endpoints in rotation (none listed, or all draining) takes no
        traffic: a split's weight on it goes to the other weighted tracks in proportion,
        and naming it in `x-yardarm-track` is a 503 (it may have endpoints again soon).
        """
        if override is not None:
            served = ", ".join(sorted(upstream.tracks)) or "none"
            if not TRACK.fullmatch(override):  # `*` too: the pool of all tracks is no track
                raise Problem(
                    422,
                    "unknown track",
                    f"{override[:40]!r} is not a track name (tracks of upstream "
                    f"{upstream.name!r}: {served})",
                )
            if not upstream.has_endpoints(override):
                self._telemetry.rejected.inc(route=route.name, reason="no_endpoint")
                raise Problem(
                    503,
                    "no endpoint on this track",
                    f"upstream {upstream.name!r} has no endpoint on track {override!r} now "
                    f"(tracks with endpoints: {served})",
                    headers={"Retry-After": "1"},
                )
            return override, None
        split = state.splits.get(route.name)
        if split is None:
            if not upstream.endpoints:  # the control plane listed none (scaled to zero)
                self._telemetry.rejected.inc(route=route.name, reason="no_endpoint")
                raise Problem(
                    503,
                    "no endpoint",
                    f"upstream {upstream.name!r} has no endpoint now",
                    headers={"Retry-After": "1"},
                )
            return ALL_TRACKS, None
        new_cookie: str | None = None
        key: bytes | None = None
        sticky = route.sticky
        if sticky is not None:
            if sticky.header is not None:
                value = request.headers.get(sticky.header)
            else:
                assert sticky.cookie is not None
                value = request.cookies.get(sticky.cookie)
                if not value:
                    value = new_cookie = secrets.token_hex(16)
            key = value.encode() if value else None
        track = split.pick(lambda t: upstream.track_usable(t, now), key)
        if track is None:  # no weighted track has a usable endpoint: keep to the weights
            track = split.pick(upstream.has_endpoints, key)
        if track is None:
            self._telemetry.rejected.inc(route=route.name, reason="no_endpoint")
            weighted = ", ".join(sorted(t for t, w in split.weights.items() if w))
            raise Problem(
                503,
                "no endpoint on the route's tracks",
                f"route {route.name!r} weighs tracks {weighted} of upstream "
                f"{upstream.name!r}, and none of them has an endpoint now",
                headers={"Retry-After": "1"},
            )
        return track, new_cookie

    async def _forward(
        self,
        request: web.Request,
        state: RoutingState,
        route: Route,
        path: str,
        upstream: Upstream,
        override: str | None,
        now: float,
    ) -> web.StreamResponse:
        body = await read_body(request, self._max_body_bytes)
        track, new_cookie = self._choose_track(request, state, route, upstream, override, now)
        pool = upstream.pools[track]
        if not pool.breaker.try_acquire(now):
            self._telemetry.rejected.inc(route=route.name, reason="circuit_open")
            raise Problem(
                503,
                "circuit open",
                f"the circuit of upstream {upstream.name!r} (track {track}) is open after "
                "too many failures or slow calls",
                headers={"Retry-After": retry_after_header(pool.breaker.retry_after_s(now))},
            )
        started = now
        attempt: Attempt | None = None
        try:
            attempt = await self._attempts(request, route, path, upstream, pool, body)
        finally:
            ended = asyncio.get_running_loop().time()
            if attempt is None:
                pool.breaker.release()
            else:
                failed = attempt.failure is not None or (attempt.status or 0) >= 500
                pool.breaker.record(ended, ended - started, failed)
        relocation = state.table.relocation(route)
        return self._respond(route, upstream, track, attempt, new_cookie, relocation)

    async def _attempts(
        self,
        request: web.Request,
        route: Route,
        path: str,
        upstream: Upstream,
        pool: Pool,
        body: bytes,
    ) -> Attempt | None:
        """Attempts until a usable answer, the retry policy says stop, or time runs out.

        None when no endpoint could be tried at all.
        """
        loop = asyncio.get_running_loop()
        policy = upstream.spec.retry
        budget = deadline.budget(route.timeout_s or self._route_timeout_s) or 0.0
        end = loop.time() + budget
        headers = upstream_request_headers(
            request.headers, client_ip=request.remote, scheme=request.scheme, host=request.host
        )
        idempotent = is_retryable_request(request.method, request.headers)
        key = (
            request_hash_key(
                upstream.spec.balancer, request.headers, request.cookies, request.remote
            )
            if upstream.spec.balancer.policy == "consistent_hash"
            else None
        )
        tried: list[Endpoint] = []
        last: Attempt | None = None
        retries = 0  # retries under the budget; re-routes of refused connections are free
        holding = False  # a retry-budget slot is held for the next attempt
        retry_reason: str | None = None  # why the next attempt is a retry or re-route
        retry_budget = upstream.budget
        retry_budget.request_started()
        try:
            while True:
                now = loop.time()
                endpoint = upstream.pick(pool, key, now, tried)
                while endpoint is not None and not upstream.breakers[endpoint].try_acquire(now):
                    tried.append(endpoint)  # half-open with no permit left: try another
                    endpoint = upstream.pick(pool, key, now, tried)
                if endpoint is None:
                    if last is None:
                        self._telemetry.rejected.inc(route=route.name, reason="no_endpoint")
                    return last
                tried.append(endpoint)
                remaining = end - now
                if remaining <= 0:
                    upstream.breakers[endpoint].release()
                    return last or Attempt(endpoint, failure="timeout")
                if retry_reason is not None:
                    self._telemetry.retries.inc(upstream=upstream.name, reason=retry_reason)
                per_try = policy.per_try_timeout_s
                timeout = remaining if per_try is None else min(per_try, remaining)
                try:
                    last = await self.dispatcher.send(
                        request.method, endpoint, path, body, headers, timeout, upstream
                    )
                finally:
                    if holding:
                        retry_budget.release_retry()
                        holding = False
                verdict = retry_verdict(
                    last.failure, last.status, idempotent=idempotent, config=policy,
                    retries=retries,
                )  # fmt: skip
                if verdict == "stop":
                    return last
                retry_reason = last.failure or str(last.status)
                if verdict == "reroute":
                    continue  # nothing was sent: no budget, no backoff, not a retry spent
                delay = backoff_s(retries, policy, self._rng)
                if loop.time() + delay >= end:
                    self._telemetry.retries_refused.inc(upstream=upstream.name, why="deadline")
                    return last
                if not retry_budget.try_acquire_retry():
                    self._telemetry.retries_refused.inc(upstream=upstream.name, why="budget")
                    return last
                holding = True
                retries += 1
                await asyncio.sleep(delay)
        finally:
            if holding:  # granted, but no attempt followed (no endpoint left, cancelled)
                retry_budget.release_retry()
            retry_budget.request_finished()

    def _respond(
        self,
        route: Route,
        upstream: Upstream,
        track: str,
        attempt: Attempt | None,
        new_cookie: str | None,
        relocation: Relocation,
    ) -> web.StreamResponse:
        if attempt is None:
            raise Problem(
                503,
                "no usable endpoint",
                f"every endpoint of upstream {upstream.name!r} is unhealthy, ejected or "
                "behind an open circuit",
                headers={"Retry-After": "1"},
            )
        label = track if track != ALL_TRACKS else attempt.endpoint.track
        if attempt.failure is not None:
            self._telemetry.route_requests.inc(
                route=route.name, upstream=upstream.name, upstream_track=label,
                code={"timeout": "504"}.get(attempt.failure, "502"),
            )  # fmt: skip
            if attempt.failure == "timeout":
                raise Problem(
                    504,
                    "upstream timeout",
                    f"upstream {upstream.name!r} did not answer within the time allowed",
                )
            if attempt.failure == "connect_error":
                raise Problem(
                    502, "upstream unavailable", f"upstream {upstream.name!r} could not be reached"
                )
            raise Problem(
                502,
                "invalid upstream response",
                f"upstream {upstream.name!r} sent an invalid response",
            )
        assert attempt.status is not None and attempt.headers is not None
        # Location and Content-Location back into the public path space
        headers: CIMultiDict[str] = downstream_response_headers(
            attempt.headers, relocation, attempt.endpoint
        )
        if track != ALL_TRACKS:
            headers[TRACK_HEADER] = track
        if new_cookie is not None and route.sticky is not None and route.sticky.cookie:
            headers.add(
                "Set-Cookie", f"{route.sticky.cookie}={new_cookie}; Path=/; HttpOnly; SameSite=Lax"
            )
        self._telemetry.route_requests.inc(
            route=route.name, upstream=upstream.name, upstream_track=label, code=str(attempt.status)
        )
        return web.Response(status=attempt.status, body=attempt.body, headers=headers)
