"""The result of a run, and its JSON document (`yardarm load --json`, `LoadSummary.to_json`).

Tooling reads this document, so its keys are stable; a breaking change bumps `version`.
Latencies are milliseconds, rates per second, shares between 0 and 1. Version 1:

    version            1
    target             base URL the requests went to
    mode               "open" (fixed schedule, --rate) or "closed" (fixed workers)
    target_rate        requests/s asked for (open loop), else null
    workers            connections and senders (closed loop: the concurrency)
    max_in_flight      open loop: admitted but unanswered requests allowed, else null
    mix                {"orders": w, "reads": w, "stock": w}, the weights used
    seed               the seed, or null
    stopped_by         "duration", "max_requests" or "interrupted"
    duration_s         start to the last answer (includes waiting for requests in flight)
    send_duration_s    start to when sending stopped
    requests           requests sent that finished, with an answer or a transport error
    dropped            open loop: slots never sent (backlog at max_in_flight, or still
                       waiting for a connection when sending stopped); closed loop: 0
    achieved_rate      requests / send_duration_s (compare with target_rate)
    throughput         ok / duration_s
    success_rate       ok / requests (null with no requests)
    ok                 answers 2xx or 3xx (redirects are not followed)
    client_errors      answers 4xx
    server_errors      answers 5xx (and any other status)
    transport_errors   no answer: timeout, refused, disconnected, ...
    latency_ms         {"min", "mean", "p50", "p90", "p95", "p99", "max"}, each null when
                       no request finished; percentiles within 1%, min/mean/max exact.
                       Open loop: from each request's scheduled start, so time spent
                       waiting for a connection counts (no coordinated omission);
                       closed loop: from when the worker sent it.
    status_codes       {"202": n, ...} by HTTP status
    kinds              {"orders"|"reads"|"stock": {"requests", "ok", "client_errors",
                       "server_errors", "transport_errors", "p50_ms", "p99_ms"}}, always
                       all three; a read with no order to read yet is sent, and counted,
                       as "stock"
    errors             {"timeout": n, ...}: transport errors by type ("timeout",
                       "connect", "disconnected", "payload", "protocol", "os_error", or
                       the exception's class name)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from yardarm.load.config import LoadConfig, Mode
from yardarm.load.mix import KINDS, Kind
from yardarm.load.stats import LatencyHistogram, Outcomes, Recorder

SCHEMA_VERSION = 1
StopReason = Literal["duration", "max_requests", "interrupted"]
QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Milliseconds; None when nothing finished."""

    min: float | None
    mean: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, histogram: LatencyHistogram) -> LatencySummary:
        """Read a histogram once, so the summary no longer depends on it."""
        if not histogram.count:
            return cls(None, None, None, None, None, None, None)
        quantile = {name: _ms(histogram.percentile(q)) for name, q in QUANTILES.items()}
        return cls(
            min=_ms(histogram.min_s),
            mean=_ms(histogram.mean()),
            max=_ms(histogram.max_s),
            **quantile,
        )


@dataclass(frozen=True, slots=True)
class KindSummary:
    """One kind of request: counts by outcome, and its median and p99 in milliseconds."""

    requests: int
    ok: int
    client_errors: int
    server_errors: int
    transport_errors: int
    p50_ms: float | None
    p99_ms: float | None

    @classmethod
    def of(cls, outcomes: Outcomes) -> KindSummary:
        """Freeze one kind's counters."""
        return cls(
            requests=outcomes.requests,
            ok=outcomes.ok,
            client_errors=outcomes.client_errors,
            server_errors=outcomes.server_errors,
            transport_errors=outcomes.transport_errors,
            p50_ms=_ms(outcomes.latency.percentile(0.5)),
            p99_ms=_ms(outcomes.latency.percentile(0.99)),
        )


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """Everything one run measured; `to_json()` is the documented machine-readable form."""

    target: str
    mode: Mode
    target_rate: float | None
    workers: int
    max_in_flight: int | None
    mix: dict[Kind, int]
    seed: int | None
    stopped_by: StopReason
    duration_s: float
    send_duration_s: float
    requests: int
    dropped: int
    ok: int
    client_errors: int
    server_errors: int
    transport_errors: int
    latency_ms: LatencySummary
    status_codes: dict[int, int]
    kinds: dict[Kind, KindSummary]
    errors: dict[str, int]

    @property
    def achieved_rate(self) -> float:
        """Requests per second while sending."""
        return self.requests / self.send_duration_s if self.send_duration_s > 0 else 0.0

    @property
    def throughput(self) -> float:
        """Successful answers per second over the whole run."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def success_rate(self) -> float | None:
        """Share of finished requests answered 2xx/3xx."""
        return self.ok / self.requests if self.requests else None

    @property
    def failures(self) -> int:
        """Requests that were not 2xx/3xx."""
        return self.client_errors + self.server_errors + self.transport_errors

    def to_dict(self) -> dict[str, Any]:
        """The JSON document as Python values (see the module docstring for the keys)."""
        return {
            "version": SCHEMA_VERSION,
            "target": self.target,
            "mode": self.mode,
            "target_rate": self.target_rate,
            "workers": self.workers,
            "max_in_flight": self.max_in_flight,
            "mix": dict(self.mix),
            "seed": self.seed,
            "stopped_by": self.stopped_by,
            "duration_s": round(self.duration_s, 6),
            "send_duration_s": round(self.send_duration_s, 6),
            "requests": self.requests,
            "dropped": self.dropped,
            "achieved_rate": round(self.achieved_rate, 3),
            "throughput": round(self.throughput, 3),
            "success_rate": None if self.success_rate is None else round(self.success_rate, 6),
            "ok": self.ok,
            "client_errors": self.client_errors,
            "server_errors": self.server_errors,
            "transport_errors": self.transport_errors,
            "latency_ms": {
                "min": self.latency_ms.min,
                "mean": self.latency_ms.mean,
                "p50": self.latency_ms.p50,
                "p90": self.latency_ms.p90,
                "p95": self.latency_ms.p95,
                "p99": self.latency_ms.p99,
                "max": self.latency_ms.max,
            },
            "status_codes": {str(code): n for code, n in sorted(self.status_codes.items())},
            "kinds": {
                kind: {
                    "requests": s.requests,
                    "ok": s.ok,
                    "client_errors": s.client_errors,
                    "server_errors": s.server_errors,
                    "transport_errors": s.transport_errors,
                    "p50_ms": s.p50_ms,
                    "p99_ms": s.p99_ms,
                }
                for kind, s in self.kinds.items()
            },
            "errors": dict(sorted(self.errors.items())),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """One JSON document, the form `yardarm load --json` prints."""
        return json.dumps(self.to_dict(), indent=indent)


def summarize(
    config: LoadConfig,
    recorder: Recorder,
    *,
    stopped_by: StopReason,
    duration_s: float,
    send_duration_s: float,
    dropped: int,
) -> LoadSummary:
    """Freeze a finished run's counters into a summary."""
    total = recorder.total
    return LoadSummary(
        target=config.base_url,
        mode=config.mode,
        target_rate=config.rate,
        workers=config.workers,
        max_in_flight=config.in_flight_cap if config.mode == "open" else None,
        mix=config.mix.weights(),
        seed=config.seed,
        stopped_by=stopped_by,
        duration_s=duration_s,
        send_duration_s=send_duration_s,
        requests=total.requests,
        dropped=dropped,
        ok=total.ok,
        client_errors=total.client_errors,
        server_errors=total.server_errors,
        transport_errors=total.transport_errors,
        latency_ms=LatencySummary.of(total.latency),
        status_codes=dict(recorder.status_codes),
        kinds={kind: KindSummary.of(recorder.kinds[kind]) for kind in KINDS},
        errors=dict(recorder.errors),
    )
