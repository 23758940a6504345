"""One trace from a Jaeger query API, as the span tree `yardarm trace` prints.

Jaeger v2's API v3 answers `GET /api/v3/traces/{trace_id}` with OTLP/JSON wrapped in
`{"result": {"resourceSpans": [...]}}` (enums as numbers, ids in hex), so the spans
are parsed by `tracing_view.spans_of` like the local files. A trace Jaeger does not
have is a 404 whose body is `{"error": {"httpCode": 404, "message": "..."}}`.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from yardarm import tracing_view
from yardarm.observability import collector
from yardarm.tracing_view import Span

TIMEOUT_S = 10.0
POLL_S = 0.5
# Why a trace the services recorded may be missing: the collector's tail sampling.
NOT_FOUND_HINT = (
    f"the collector decides a trace {collector.DECISION_WAIT_S} s after its first span "
    f"and keeps errors, traces over {collector.SLOW_TRACE_MS} ms and "
    f"{collector.BASELINE_PERCENT}% of the rest; wait longer with --wait"
)


class JaegerError(Exception):
    """Jaeger could not answer with the trace; the message says why, for the user."""


class TraceNotFound(JaegerError):
    """Jaeger answered, without this trace (not there yet, or not sampled)."""


def trace_url(base_url: str, trace_id: str) -> str:
    return f"{base_url.rstrip('/')}/api/v3/traces/{trace_id}"


def fetch_trace(base_url: str, trace_id: str, *, timeout_s: float = TIMEOUT_S) -> list[Span]:
    """The root spans of `trace_id` as Jaeger at `base_url` has it, children attached."""
    url = trace_url(base_url, trace_id)
    try:
        response = httpx.get(url, timeout=timeout_s, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise JaegerError(f"cannot reach Jaeger at {base_url}: {exc}") from exc
    if response.status_code == 404:
        raise TraceNotFound(f"Jaeger at {base_url} has no trace {trace_id}")
    if response.status_code != 200:
        raise JaegerError(
            f"Jaeger at {base_url} answered {response.status_code} for trace {trace_id}: "
            f"{_error_message(response)}"
        )
    try:
        body = response.json()
    except ValueError as exc:
        raise JaegerError(f"Jaeger at {base_url} answered something other than JSON") from exc
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, dict):
        raise JaegerError(f"Jaeger at {base_url} answered without a result (is it API v3?)")
    try:
        spans = [s for s in tracing_view.spans_of(result) if s.trace_id == trace_id]
    except (KeyError, TypeError, ValueError) as exc:
        raise JaegerError(f"Jaeger at {base_url} answered spans this reader cannot parse") from exc
    if not spans:
        raise TraceNotFound(f"Jaeger at {base_url} has no spans of trace {trace_id}")
    return tracing_view.tree(spans)


def wait_for_trace(base_url: str, trace_id: str, wait_s: float) -> list[Span]:
    """`fetch_trace`, asking again while Jaeger does not have the trace yet, for up to
    `wait_s` seconds (the collector holds a trace back until it decides to keep it)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return fetch_trace(base_url, trace_id)
        except TraceNotFound:
            if time.monotonic() + POLL_S > deadline:
                raise
        time.sleep(POLL_S)


def _error_message(response: httpx.Response) -> str:
    """The message of an API v3 error body, else the start of the body."""
    try:
        body: Any = response.json()
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200].strip() or response.reason_phrase
    return str(message)
