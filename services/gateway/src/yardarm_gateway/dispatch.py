"""One attempt: send a request to one endpoint and record its outcome everywhere.

HTTP/1.1 upstreams go through the lean keep-alive pool (`upstream_client.py`); https
ones, or all when the pool is off, through aiohttp's client. Each attempt is a CLIENT
span, feeds the endpoint's breaker, the outlier detector and the latency-aware
balancers, and is counted by endpoint and outcome.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

import aiohttp
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from yardarm_kit import deadline

from yardarm_gateway.endpoints import Endpoint
from yardarm_gateway.telemetry import GatewayTelemetry
from yardarm_gateway.upstream_client import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from yardarm_gateway.upstreams import ALL_TRACKS, Upstream

Failure = Literal["connect_error", "timeout", "invalid_response"]


@dataclass(slots=True)
class Attempt:
    """The outcome of one upstream attempt: a response, or why there is none."""

    endpoint: Endpoint
    status: int | None = None
    headers: list[tuple[str, str]] | None = None  # wire order, repeats kept
    body: bytes = b""
    failure: Failure | None = None


class Dispatcher:
    """Sends attempts; `session` and `pool` are opened on the running loop at start-up."""

    def __init__(self, telemetry: GatewayTelemetry, tracer: trace.Tracer) -> None:
        self._telemetry = telemetry
        self._tracer = tracer
        self.session: aiohttp.ClientSession | None = None
        self.pool: UpstreamPool | None = None

    async def send(
        self,
        method: str,
        endpoint: Endpoint,
        path: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        upstream: Upstream,
    ) -> Attempt:
        """One try against one endpoint, as a CLIENT span; every outcome is recorded."""
        assert self.session is not None
        breaker = upstream.breakers[endpoint]
        result = Attempt(endpoint)
        span = self._tracer.start_span(
            f"{method} {upstream.name}",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "url.full": endpoint.url + path,
                "yardarm.upstream": upstream.name,
                "yardarm.track": endpoint.track,
            },
        )
        out = dict(headers)
        propagate.inject(out, context=trace.set_span_in_context(span))
        out[deadline.TIMEOUT_HEADER] = str(max(1, int(timeout * 1000)))
        endpoint.active += 1
        started = time.perf_counter()
        try:
            if self.pool is not None and endpoint.url.startswith("http://"):
                answer = await self.pool.request(
                    endpoint.url, method, path, list(out.items()), body, timeout
                )
                result.status = answer.status
                result.headers = answer.headers
                result.body = answer.body
            else:
                async with self.session.request(
                    method,
                    endpoint.url + path,
                    data=body or None,
                    headers=out,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    allow_redirects=False,
                ) as response:
                    result.body = await response.read()
                    result.status = response.status
                    result.headers = list(response.headers.items())
        except (TimeoutError, UpstreamTimeoutError):
            result.failure = "timeout"
        except (aiohttp.ClientConnectorError, UpstreamConnectError):
            result.failure = "connect_error"
        except (aiohttp.ClientError, OSError, ValueError, UpstreamProtocolError):
            result.failure = "invalid_response"
        except BaseException:  # cancelled (the client left): no outcome to judge by
            breaker.release()  # a half-open permit must not leak
            span.set_status(Status(StatusCode.ERROR, "cancelled"))
            span.end()
            raise
        finally:
            endpoint.active -= 1
        elapsed = time.perf_counter() - started
        now = asyncio.get_running_loop().time()
        failed = result.failure is not None or (result.status or 0) >= 500
        breaker.record(now, elapsed, failed)
        upstream.outlier.record(endpoint, result.status, now)
        if result.failure is None:
            upstream.pools[endpoint.track].balancer.observe(endpoint, elapsed, now)
            upstream.pools[ALL_TRACKS].balancer.observe(endpoint, elapsed, now)
            span.set_attribute("http.response.status_code", result.status or 0)
            if failed:
                span.set_status(Status(StatusCode.ERROR))
        else:
            span.set_status(Status(StatusCode.ERROR, result.failure))
        span.end()
        telemetry = self._telemetry
        telemetry.attempts.inc(
            upstream=upstream.name, upstream_track=endpoint.track, endpoint=endpoint.url,
            outcome=result.failure or "response",
        )  # fmt: skip
        telemetry.attempt_duration.observe(
            elapsed, upstream=upstream.name, upstream_track=endpoint.track
        )
        return result
