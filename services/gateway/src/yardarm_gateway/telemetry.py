"""The gateway's metrics and the log lines of its policy transitions.

The label `upstream_track` is the track of the endpoint that served (the base label
`track` is the gateway's own); on the panic metrics it names the pool, `*` for the one
over all tracks.

Labels follow the question an operator asks: which route, which upstream, which
track, which endpoint. Breaker, ejection and panic transitions are logged as well as
counted, because an operator reads those first when traffic moves.
"""

from __future__ import annotations

import logging

from yardarm_kit.metrics import Metrics

from yardarm_gateway.breaker import BreakerState
from yardarm_gateway.endpoints import Endpoint
from yardarm_gateway.outlier import OutlierEvent
from yardarm_gateway.panic import PanicEvent

log = logging.getLogger("yardarm_gateway.policy")

BREAKER_VALUE: dict[BreakerState, float] = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class GatewayTelemetry:
    """Every gateway metric, created once per process."""

    def __init__(self, metrics: Metrics) -> None:
        self.route_requests = metrics.counter(
            "yardarm_gateway_route_requests_total",
            "Requests answered per route and track, by status code.",
            ["route", "upstream", "upstream_track", "code"],
        )
        self.attempts = metrics.counter(
            "yardarm_gateway_upstream_requests_total",
            "Attempts sent upstream, by endpoint and outcome (response, connect_error, "
            "timeout, invalid_response).",
            ["upstream", "upstream_track", "endpoint", "outcome"],
        )
        self.attempt_duration = metrics.histogram(
            "yardarm_gateway_upstream_request_duration_seconds",
            "Duration of each upstream attempt.",
            ["upstream", "upstream_track"],
        )
        self.retries = metrics.counter(
            "yardarm_gateway_retries_total",
            "Retries sent, by the reason of the failed attempt; connect_error counts the "
            "re-routes of refused connections, which need no retry budget.",
            ["upstream", "reason"],
        )
        self.retries_refused = metrics.counter(
            "yardarm_gateway_retries_refused_total",
            "Retries not sent because the retry budget or the deadline forbade them.",
            ["upstream", "why"],
        )
        self.rejected = metrics.counter(
            "yardarm_gateway_rejected_requests_total",
            "Requests refused without reaching an upstream (rate_limited, bulkhead, "
            "circuit_open, no_endpoint, forbidden).",
            ["route", "reason"],
        )
        self.breaker_state = metrics.gauge(
            "yardarm_gateway_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["breaker"],
        )
        self.breaker_transitions = metrics.counter(
            "yardarm_gateway_breaker_transitions_total",
            "Circuit breaker transitions, by the state entered.",
            ["breaker", "state"],
        )
        self.ejections = metrics.counter(
            "yardarm_gateway_ejections_total",
            "Outlier ejections, by reason.",
            ["upstream", "endpoint", "reason"],
        )
        self.ejected = metrics.gauge(
            "yardarm_gateway_endpoint_ejected",
            "1 while an endpoint is ejected.",
            ["upstream", "endpoint"],
        )
        self.panics = metrics.counter(
            "yardarm_gateway_panics_total",
            "Times a pool entered panic mode: too few endpoints healthy and not ejected, so "
            "requests were spread over all of them.",
            ["upstream", "upstream_track"],
        )
        self.panic = metrics.gauge(
            "yardarm_gateway_upstream_panic",
            "1 while a pool balances in panic mode.",
            ["upstream", "upstream_track"],
        )
        self.healthy = metrics.gauge(
            "yardarm_gateway_endpoint_healthy",
            "1 while an endpoint passes its active health checks.",
            ["upstream", "endpoint", "upstream_track"],
        )
        self.config_version = metrics.gauge(
            "yardarm_gateway_routing_version",
            "Datastore version of the routing document in force (0: built-in routes).",
        )
        self.config_errors = metrics.counter(
            "yardarm_gateway_routing_errors_total",
            "Routing documents refused (invalid) or not read (datastore unreachable).",
            ["kind"],
        )

    def breaker_transition(
        self, name: str, old: BreakerState, new: BreakerState, reason: str
    ) -> None:
        self.breaker_state.set(BREAKER_VALUE[new], breaker=name)
        self.breaker_transitions.inc(breaker=name, state=new)
        (log.warning if new == "open" else log.info)(
            "circuit %s: %s -> %s (%s)", name, old, new, reason,
            extra={"event": "breaker", "breaker": name, "from": old, "to": new,
                   "reason": reason},
        )  # fmt: skip

    def outlier_event(self, upstream: str, event: OutlierEvent) -> None:
        url = event.endpoint.url
        if event.action == "eject":
            self.ejections.inc(upstream=upstream, endpoint=url, reason=event.reason)
            self.ejected.set(1, upstream=upstream, endpoint=url)
            log.warning(
                "ejected %s from %s (%s, ejection %d)", url, upstream, event.reason,
                event.ejections,
                extra={"event": "eject", "upstream": upstream, "endpoint": url,
                       "reason": event.reason, "ejections": event.ejections},
            )  # fmt: skip
        else:
            self.ejected.set(0, upstream=upstream, endpoint=url)
            log.info(
                "ejection of %s from %s ended (%s)" if event.reason == "removed"
                else "returned %s to %s (%s)", url, upstream, event.reason,
                extra={"event": "uneject", "upstream": upstream, "endpoint": url,
                       "reason": event.reason},
            )  # fmt: skip

    def panic_change(self, event: PanicEvent) -> None:
        self.panic.set(1 if event.panic else 0, upstream=event.upstream, upstream_track=event.track)
        extra = {"event": "panic", "upstream": event.upstream, "pool": event.track,
                 "panic": event.panic, "available": event.available, "endpoints": event.total,
                 "threshold_percent": event.threshold_percent}  # fmt: skip
        if event.panic:
            self.panics.inc(upstream=event.upstream, upstream_track=event.track)
            log.warning(
                "panic in %s (track %s): %d of %d endpoints in rotation, below %g%%;"
                " balancing over all of them",
                event.upstream, event.track, event.available, event.total,
                event.threshold_percent, extra=extra,
            )  # fmt: skip
        else:
            log.info(
                "panic over in %s (track %s): %d of %d endpoints in rotation",
                event.upstream, event.track, event.available, event.total, extra=extra,
            )  # fmt: skip

    def health_change(self, upstream: str, endpoint: Endpoint, healthy: bool) -> None:
        self.healthy.set(
            1 if healthy else 0,
            upstream=upstream,
            endpoint=endpoint.url,
            upstream_track=endpoint.track,
        )

    def endpoint_added(self, upstream: str, endpoint: Endpoint) -> None:
        """An endpoint joined from the routing document: healthy until probed otherwise."""
        self.health_change(upstream, endpoint, True)
        log.info(
            "endpoint %s joined %s (track %s)", endpoint.url, upstream, endpoint.track,
            extra={"event": "endpoint_added", "upstream": upstream, "endpoint": endpoint.url,
                   "track": endpoint.track},
        )  # fmt: skip

    def endpoint_draining(self, upstream: str, endpoint: Endpoint) -> None:
        log.info(
            "endpoint %s left %s; draining %d request(s) in flight", endpoint.url, upstream,
            endpoint.active,
            extra={"event": "endpoint_draining", "upstream": upstream, "endpoint": endpoint.url,
                   "track": endpoint.track, "in_flight": endpoint.active},
        )  # fmt: skip

    def endpoint_gone(self, upstream: str, endpoint: Endpoint) -> None:
        """A drained endpoint is dropped, and its series with it: a health gauge kept at
        0 would read as an endpoint failing its health checks (a rollout judge would see
        a canary that left as a canary hidden by the gateway)."""
        self.healthy.remove(upstream=upstream, endpoint=endpoint.url, upstream_track=endpoint.track)
        # Its breaker and ejection state went with it: a re-added URL starts fresh.
        self.breaker_state.remove(breaker=f"{upstream}/{endpoint.url}")
        self.ejected.remove(upstream=upstream, endpoint=endpoint.url)
        log.info(
            "endpoint %s gone from %s (%d request(s) still in flight)", endpoint.url, upstream,
            endpoint.active,
            extra={"event": "endpoint_gone", "upstream": upstream, "endpoint": endpoint.url,
                   "track": endpoint.track, "in_flight": endpoint.active},
        )  # fmt: skip
