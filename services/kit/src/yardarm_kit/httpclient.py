"""Outbound HTTP with trace context, deadline propagation and client RED metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from yarl import URL

from yardarm_kit import deadline
from yardarm_kit.metrics import LabeledHistogram

DEFAULT_TIMEOUT_S = 10.0


class UpstreamError(Exception):
    """The upstream could not give an HTTP answer."""


class UpstreamTimeout(UpstreamError):
    """No answer within the timeout (or what was left of the caller's deadline)."""


class UpstreamUnavailable(UpstreamError):
    """Could not connect, or the upstream broke the connection or the protocol."""


@dataclass(frozen=True)
class HttpResponse:
    """A fully read upstream response; non-2xx statuses are answers, not errors."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpClient:
    """Calls one named upstream; every call is a CLIENT span and a metric sample.

    The session may come from a callable, so a client can be made before the event loop
    runs (aiohttp sessions belong to the loop they were created on).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | Callable[[], aiohttp.ClientSession],
        upstream: str,
        tracer: trace.Tracer,
        duration: LabeledHistogram,
    ) -> None:
        if isinstance(session, aiohttp.ClientSession):
            fixed = session
            self._session: Callable[[], aiohttp.ClientSession] = lambda: fixed
        else:
            self._session = session
        self.upstream = upstream
        self._tracer = tracer
        self._duration = duration

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> HttpResponse:
        """Send one request; raises UpstreamTimeout / UpstreamUnavailable.

        `timeout` (default 10 s) is capped by what is left of the inbound deadline.
        """
        method = method.upper()
        budget = deadline.budget(DEFAULT_TIMEOUT_S if timeout is None else timeout)
        out_headers = dict(headers or {})
        target = URL(url)
        with self._tracer.start_as_current_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "url.full": str(target),
                "server.address": target.host or "",
                "server.port": target.port or 0,
                "yardarm.upstream": self.upstream,
            },
        ) as span:
            propagate.inject(out_headers)
            started = time.perf_counter()
            status_label = "error"
            try:
                if budget is not None:
                    if budget <= 0:
                        raise UpstreamTimeout(f"{self.upstream}: deadline already passed")
                    out_headers[deadline.TIMEOUT_HEADER] = str(max(1, int(budget * 1000)))
                client_timeout = aiohttp.ClientTimeout(total=budget)
                async with self._session().request(
                    method, target, json=json, data=data, headers=out_headers,
                    timeout=client_timeout, allow_redirects=False,
                ) as response:  # fmt: skip
                    body = await response.read()
                    status_label = str(response.status)
                    span.set_attribute("http.response.status_code", response.status)
                    if response.status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                    return HttpResponse(response.status, response.headers, body)
            except TimeoutError as exc:
                span.set_status(Status(StatusCode.ERROR, "timeout"))
                raise UpstreamTimeout(f"{self.upstream}: no answer within {budget}s") from exc
            except (aiohttp.ClientError, OSError) as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise UpstreamUnavailable(f"{self.upstream}: {type(exc).__name__}") from exc
            finally:
                self._duration.observe(
                    time.perf_counter() - started,
                    upstream=self.upstream,
                    http_request_method=method,
                    http_response_status_code=status_label,
                )
