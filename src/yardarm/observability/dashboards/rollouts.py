"""Rollouts: where each rollout stands and what it decided, how traffic is split between
tracks, what each track and version serves, and the canary against its baseline (same
traffic share, fresh instances, old release).

The rollout controller's view comes first: its series are about the service it rolls
(`$service` narrows `rollout_service`, `$track` the `rollout_track` where a series has
one; they carry the controller's own version, so `$version` does not narrow them). Then
two views of the same traffic: the gateway's (per route and upstream track; its series
carry the gateway's own version, so `$version` does not narrow them, `$service` and
`$track` narrow the upstream) and the services' own (per track, version and route).
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from yardarm.observability import stack
from yardarm.observability.dashboards.common import (
    SERVER_ERROR,
    USER_TRAFFIC,
    Query,
    Row,
    Scope,
    agg,
    dashboard,
    graph,
    latency,
    quantile,
    ratio,
    states,
    sum_increase,
    sum_rate,
)

UID = "yardarm-rollouts"

_S = Scope()
_REQUESTS = _S("http_server_request_duration_seconds_count", USER_TRAFFIC)
_ERRORS = _S("http_server_request_duration_seconds_count", USER_TRAFFIC, SERVER_ERROR)
_BUCKETS = _S("http_server_request_duration_seconds_bucket", USER_TRAFFIC)

_COMPARED = 'track=~"canary|baseline"'
_CANARY_REQUESTS = _S("http_server_request_duration_seconds_count", USER_TRAFFIC, _COMPARED)
_CANARY_ERRORS = _S(
    "http_server_request_duration_seconds_count", USER_TRAFFIC, SERVER_ERROR, _COMPARED
)
_CANARY_BUCKETS = _S("http_server_request_duration_seconds_bucket", USER_TRAFFIC, _COMPARED)

_PER_ROUTE = ("service", "track", "http_route")
_ROUTE_TRACK = ("route", "upstream_track")


def _gateway(series: str, *extra: str) -> str:
    """A gateway series about the selected upstream services and tracks."""
    matchers = (
        f'{stack.ENVIRONMENT_LABEL}=~"$environment"',
        'service="gateway"',
        'upstream=~"$service"',
        'upstream_track=~"$track"',
        *extra,
    )
    return f"{series}{{{', '.join(matchers)}}}"


_ROUTED = _gateway("yardarm_gateway_route_requests_total")
_ROUTED_ERRORS = _gateway("yardarm_gateway_route_requests_total", 'code=~"5.."')


def _controller(series: str, *extra: str) -> str:
    """A rollout controller series about the selected services."""
    matchers = (
        f'{stack.ENVIRONMENT_LABEL}=~"$environment"',
        f'service="{stack.ROLLOUT_CONTROLLER}"',
        'rollout_service=~"$service"',
        *extra,
    )
    return f"{series}{{{', '.join(matchers)}}}"


# The phase gauge is 1 for the current phase and 0 for the others: one number per service.
_PHASES = (
    ("progressing", "1", "blue"),
    ("paused", "2", "yellow"),
    ("completed", "3", "green"),
    ("aborted", "4", "orange"),
    ("failed", "5", "red"),
)


def _phase_code() -> str:
    return " + ".join(
        f"{code} * "
        + agg("max", ("rollout_service",), _controller("yardarm_rollout_phase", f'phase="{phase}"'))
        for phase, code, _ in _PHASES
    )


def _controller_row() -> Row:
    return Row(
        "Rollouts (controller)",
        [
            states(
                "Rollout phase per service",
                "Where does each service's current or last rollout stand: progressing, "
                "paused (waiting for `yardarm rollout promote`), or ended (completed, "
                "aborted, failed)? `yardarm rollout status` says why it ended.",
                Query(_phase_code(), "{{rollout_service}}"),
                tuple((code, phase, colour) for phase, code, colour in _PHASES),
            ),
            graph(
                "Rollout weights per track",
                "What share of each service's traffic does its rollout give each track now, "
                "as the controller stored it? The gateway's weights (next row) should "
                "follow within seconds.",
                "percent",
                [
                    Query(
                        agg(
                            "max",
                            ("rollout_service", "rollout_track"),
                            _controller("yardarm_rollout_weight", 'rollout_track=~"$track"'),
                        ),
                        "{{rollout_service}} → {{rollout_track}}",
                    )
                ],
                max_value=100,
                steps=True,
            ),
            graph(
                "Rollout events",
                "What happened to each rollout, per window: started, step, verdict, paused, "
                "promoted, and how it ended (completed, failed, aborted)?",
                "short",
                [
                    Query(
                        sum_increase(
                            ("rollout_service", "kind"),
                            _controller("yardarm_rollout_events_total"),
                        ),
                        "{{rollout_service}} {{kind}}",
                    )
                ],
                width=8,
            ),
            graph(
                "Analyses by outcome and rule",
                "How did the judge decide each analysis, per window: pass, inconclusive "
                "(too few samples: the step is extended) or fail, and by which rule "
                "(error-rate, latency, unavailable, starved, a guardrail)?",
                "short",
                [
                    Query(
                        sum_increase(
                            ("rollout_service", "outcome", "rule"),
                            _controller("yardarm_rollout_analyses_total"),
                        ),
                        "{{rollout_service}} {{outcome}} ({{rule}})",
                    )
                ],
                width=8,
            ),
            graph(
                "Webhook notifications",
                "Did the rollout notifications reach the webhook (delivered), or not "
                "(failed after every retry, dropped from a full queue)? No data: no "
                "webhook is configured.",
                "short",
                [
                    Query(
                        sum_increase(
                            ("rollout_service", "outcome"),
                            _controller("yardarm_rollout_webhook_deliveries_total"),
                        ),
                        "{{rollout_service}} {{outcome}}",
                    )
                ],
                width=8,
            ),
        ],
    )


def build() -> dm.Dashboard:
    return dashboard(
        UID,
        "Yardarm: rollouts",
        "Where a rollout stands: each rollout's phase, weights, events and verdicts, the "
        "weights the gateway applies per route and track, the traffic each track really "
        "gets, and whether the canary is worse than its baseline.",
        service=None,
        rows=[
            _controller_row(),
            Row(
                "Traffic split (gateway)",
                [
                    graph(
                        "Route weights per track",
                        "What share of each route's traffic does the weighted split send "
                        "to each track right now (a track without endpoints gets 0)?",
                        "percent",
                        [
                            Query(
                                agg(
                                    "max",
                                    ("route", "upstream", "upstream_track"),
                                    _gateway("yardarm_gateway_route_weight"),
                                ),
                                "{{route}} → {{upstream_track}}",
                            )
                        ],
                        max_value=100,
                        steps=True,
                    ),
                    graph(
                        "Observed share per track",
                        "What share of each route's requests did each track answer? It "
                        "should follow the weights; a gap means a track's pool is missing "
                        "endpoints or its requests fail over to another track.",
                        "percentunit",
                        [
                            Query(
                                f"{sum_rate(_ROUTE_TRACK, _ROUTED)} / on (route) group_left "
                                f"{sum_rate(('route',), _ROUTED)}",
                                "{{route}} → {{upstream_track}}",
                            )
                        ],
                        max_value=1,
                    ),
                    graph(
                        "Requests per route and track",
                        "How many requests per second does each route send to each track?",
                        "reqps",
                        [Query(sum_rate(_ROUTE_TRACK, _ROUTED), "{{route}} → {{upstream_track}}")],
                    ),
                    graph(
                        "Error ratio per route and track (5xx)",
                        "What share of each route's answers from each track are 5xx?",
                        "percentunit",
                        [
                            Query(
                                ratio(
                                    sum_rate(_ROUTE_TRACK, _ROUTED_ERRORS),
                                    sum_rate(_ROUTE_TRACK, _ROUTED),
                                ),
                                "{{route}} → {{upstream_track}}",
                            )
                        ],
                    ),
                ],
            ),
            Row(
                "Per track and route (services' view)",
                [
                    graph(
                        "Request rate per track and route",
                        "How much traffic does each track of each service serve, per route?",
                        "reqps",
                        [
                            Query(
                                sum_rate(_PER_ROUTE, _REQUESTS),
                                "{{service}}/{{track}} {{http_route}}",
                            )
                        ],
                        width=8,
                    ),
                    graph(
                        "Error ratio per track and route (5xx)",
                        "What share of each track's requests fail with a 5xx, per route?",
                        "percentunit",
                        [
                            Query(
                                ratio(
                                    sum_rate(_PER_ROUTE, _ERRORS), sum_rate(_PER_ROUTE, _REQUESTS)
                                ),
                                "{{service}}/{{track}} {{http_route}}",
                            )
                        ],
                        width=8,
                    ),
                    latency(
                        "p99 latency per track and route",
                        "How slow are the slowest 1% of each track's requests, per route? "
                        "Exemplars open a slow request's trace.",
                        _BUCKETS,
                        _PER_ROUTE,
                        "{{service}}/{{track}} {{http_route}}",
                        quantiles=(0.99,),
                        width=8,
                    ),
                    graph(
                        "Request rate per version",
                        "Which releases serve traffic, on which tracks?",
                        "reqps",
                        [
                            Query(
                                sum_rate(("service", "version", "track"), _REQUESTS),
                                "{{service}} {{version}} ({{track}})",
                            )
                        ],
                        stacked=True,
                        width=24,
                    ),
                ],
            ),
            Row(
                "Canary against baseline",
                [
                    graph(
                        "Error ratio: canary vs baseline",
                        "Does the canary fail more than the baseline (the old release on "
                        "fresh instances, with the same share of traffic)? The lines "
                        "should overlap.",
                        "percentunit",
                        [
                            Query(
                                ratio(
                                    sum_rate(("service", "track"), _CANARY_ERRORS),
                                    sum_rate(("service", "track"), _CANARY_REQUESTS),
                                ),
                                "{{service}} {{track}}",
                            )
                        ],
                        width=8,
                    ),
                    graph(
                        "p99 latency: canary vs baseline",
                        "Is the canary slower than the baseline? Exemplars open a slow "
                        "request's trace on either track.",
                        "s",
                        [
                            Query(
                                quantile(0.99, _CANARY_BUCKETS, ("service", "track")),
                                "p99 {{service}} {{track}}",
                                exemplar=True,
                            )
                        ],
                        width=8,
                    ),
                    graph(
                        "Request rate: canary vs baseline",
                        "Do canary and baseline get comparable traffic (the comparison is "
                        "only fair when they do)?",
                        "reqps",
                        [
                            Query(
                                sum_rate(("service", "track"), _CANARY_REQUESTS),
                                "{{service}} {{track}}",
                            )
                        ],
                        width=8,
                    ),
                ],
            ),
        ],
        tags=("rollouts",),
    )
