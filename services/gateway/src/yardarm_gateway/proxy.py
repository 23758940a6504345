"""The proxy handler: route, pick an endpoint, forward, map failures to problems.

Failure policy (deliberately narrow; retries with budgets come later):
- connection refused/unreachable: the request never reached the endpoint, so
  idempotent requests (GET/HEAD/OPTIONS, or any carrying an Idempotency-Key) try one
  other endpoint; everything else gets 502;
- timeout: 504, never retried (the upstream may still be working on it);
- an invalid HTTP answer or a connection dropped mid-exchange: 502, never retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Literal, Protocol

import aiohttp
from aiohttp import web
from yardarm_kit import ROUTE_KEY, HttpClient, Problem, UpstreamTimeout, UpstreamUnavailable

from yardarm_gateway.forwarding import downstream_response_headers, upstream_request_headers
from yardarm_gateway.routing import DotSegmentError, RouteTable
from yardarm_gateway.upstreams import Upstream

log = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_ATTEMPTS = 2

Outcome = Literal["response", "connect_error", "timeout", "invalid_response"]


class OutcomeCounter(Protocol):
    """The kit's labelled counter, as far as the proxy uses it."""

    def inc(self, amount: float = 1, **labels: str) -> None: ...


def _never_connected(exc: UpstreamUnavailable) -> bool:
    """True when the connection was never established, so the request was not sent.

    Only then is trying another endpoint safe for an idempotent request: a reset or a
    garbled answer may come after the upstream acted on it.
    """
    return isinstance(exc.__cause__, aiohttp.ClientConnectorError)


def _is_retryable(request: web.Request) -> bool:
    return request.method in IDEMPOTENT_METHODS or "Idempotency-Key" in request.headers


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, or a 413 problem as soon as it exceeds `limit` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise Problem(413, "request body too large", f"the limit is {limit} bytes")
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
        table: RouteTable,
        upstreams: Mapping[str, Upstream],
        clients: Mapping[str, HttpClient],  # may be filled in at startup
        *,
        timeout_s: float,
        max_body_bytes: int,
        requests_total: OutcomeCounter,
    ) -> None:
        self._table = table
        self._upstreams = upstreams
        self._clients = clients
        self._timeout_s = timeout_s
        self._max_body_bytes = max_body_bytes
        self._requests_total = requests_total

    async def handle(self, request: web.Request) -> web.Response:
        try:
            match = self._table.match(request.raw_path)
        except DotSegmentError:
            raise Problem(
                400, "invalid path", "paths with '.' or '..' segments are not routed"
            ) from None
        if match is None:
            raise Problem(404, "no route", f"no route matches the path {request.path!r}")
        request[ROUTE_KEY] = match.route.prefix
        upstream = self._upstreams[match.route.upstream]
        body = await read_body(request, self._max_body_bytes)
        headers = upstream_request_headers(
            request.headers, client_ip=request.remote, scheme=request.scheme, host=request.host
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        retryable = _is_retryable(request)
        tried: list[str] = []
        while True:
            endpoint = upstream.balancer.pick(exclude=tried)
            if endpoint is None:
                break
            tried.append(endpoint)
            remaining = deadline - loop.time()
            if remaining <= 0:  # the first attempt used the whole budget
                raise self._timeout_problem(upstream)
            try:
                response = await self._clients[upstream.name].request(
                    request.method,
                    endpoint + match.upstream_path,
                    data=body,
                    headers=headers,
                    timeout=remaining,
                )
            except UpstreamTimeout:
                self._count(upstream, endpoint, "timeout")
                raise self._timeout_problem(upstream) from None
            except UpstreamUnavailable as exc:
                if _never_connected(exc):
                    self._count(upstream, endpoint, "connect_error")
                    log.warning(
                        "upstream connection failed",
                        extra={"upstream": upstream.name, "endpoint": endpoint, "error": str(exc)},
                    )
                    if retryable and len(tried) < MAX_ATTEMPTS:
                        continue
                    break
                self._count(upstream, endpoint, "invalid_response")
                log.warning(
                    "invalid upstream response",
                    extra={"upstream": upstream.name, "endpoint": endpoint, "error": repr(exc)},
                )
                raise Problem(
                    502,
                    "invalid upstream response",
                    f"upstream {upstream.name!r} sent an invalid response",
                ) from None
            self._count(upstream, endpoint, "response")
            return web.Response(
                status=response.status,
                body=response.body,
                headers=downstream_response_headers(response.headers),
            )
        raise Problem(
            502, "upstream unavailable", f"upstream {upstream.name!r} could not be reached"
        )

    def _timeout_problem(self, upstream: Upstream) -> Problem:
        return Problem(
            504,
            "upstream timeout",
            f"upstream {upstream.name!r} did not answer within the time allowed",
        )

    def _count(self, upstream: Upstream, endpoint: str, outcome: Outcome) -> None:
        self._requests_total.inc(upstream=upstream.name, endpoint=endpoint, outcome=outcome)
