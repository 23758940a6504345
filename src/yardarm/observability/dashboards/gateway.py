"""The gateway: routes, upstream pools and endpoints, and the resilience machinery
(health checks, outlier ejection, panic mode, breakers, retries, admission)."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from yardarm.observability.dashboards.common import (
    USER_TRAFFIC,
    Query,
    Row,
    Scope,
    agg,
    dashboard,
    error_logs,
    graph,
    latency,
    ratio,
    single,
    states,
    sum_increase,
    sum_rate,
)

UID = "yardarm-gateway"
SERVICE = "gateway"

_S = Scope(SERVICE)
_ROUTE_REQUESTS = _S("yardarm_gateway_route_requests_total")
_ROUTE_ERRORS = _S("yardarm_gateway_route_requests_total", 'code=~"5.."')
_ATTEMPTS = _S("yardarm_gateway_upstream_requests_total")
_UP_DOWN = (("0", "down", "red"), ("1", "up", "green"))


def build() -> dm.Dashboard:
    return dashboard(
        UID,
        "Yardarm: gateway",
        "What the gateway answers per route and track, how its upstream pools behave, "
        "and which of its defences (health checks, ejection, panic, breakers, retries, "
        "admission limits) are acting.",
        service=SERVICE,
        rows=[
            Row(
                "Routes",
                [
                    graph(
                        "Requests per route and track",
                        "How much traffic does each route send to each upstream track?",
                        "reqps",
                        [
                            Query(
                                sum_rate(("route", "upstream_track"), _ROUTE_REQUESTS),
                                "{{route}} → {{upstream_track}}",
                            )
                        ],
                    ),
                    graph(
                        "Error ratio per route (5xx)",
                        "What share of each route's answers are 5xx (the upstream's own "
                        "5xx, or the gateway's 502/503/504)?",
                        "percentunit",
                        [
                            Query(
                                ratio(
                                    sum_rate(("route",), _ROUTE_ERRORS),
                                    sum_rate(("route",), _ROUTE_REQUESTS),
                                ),
                                "{{route}}",
                            )
                        ],
                    ),
                    graph(
                        "Answers per route by status code",
                        "Which status codes does each route answer with?",
                        "reqps",
                        [
                            Query(
                                sum_rate(("route", "code"), _ROUTE_REQUESTS),
                                "{{route}} {{code}}",
                            )
                        ],
                        stacked=True,
                    ),
                    latency(
                        "Latency per route",
                        "How long do clients wait on each route, as the gateway serves "
                        "it (retries included)? Exemplars open the request's trace.",
                        _S("http_server_request_duration_seconds_bucket", USER_TRAFFIC),
                        ("http_route",),
                        "{{http_route}}",
                    ),
                ],
            ),
            Row(
                "Upstreams",
                [
                    graph(
                        "Attempts per upstream by outcome",
                        "How do attempts sent upstream end: a response, or a connect "
                        "error, timeout or invalid response?",
                        "reqps",
                        [
                            Query(
                                sum_rate(("upstream", "upstream_track", "outcome"), _ATTEMPTS),
                                "{{upstream}}/{{upstream_track}} {{outcome}}",
                            )
                        ],
                        stacked=True,
                    ),
                    latency(
                        "Upstream attempt latency",
                        "How long does one attempt take per upstream pool? Compare with "
                        "the route latency: the difference is retries and queueing.",
                        _S("yardarm_gateway_upstream_request_duration_seconds_bucket"),
                        ("upstream", "upstream_track"),
                        "{{upstream}}/{{upstream_track}}",
                    ),
                    graph(
                        "Attempts per endpoint",
                        "Does the balancer spread load over every endpoint of a pool?",
                        "reqps",
                        [
                            Query(
                                sum_rate(("upstream", "endpoint"), _ATTEMPTS),
                                "{{upstream}} {{endpoint}}",
                            )
                        ],
                        width=24,
                    ),
                ],
            ),
            Row(
                "Endpoint health, ejection and panic",
                [
                    states(
                        "Active health per endpoint",
                        "Which endpoints pass their active health checks?",
                        Query(
                            agg(
                                "min",
                                ("upstream", "upstream_track", "endpoint"),
                                _S("yardarm_gateway_endpoint_healthy"),
                            ),
                            "{{upstream}}/{{upstream_track}} {{endpoint}}",
                        ),
                        _UP_DOWN,
                    ),
                    states(
                        "Ejected endpoints",
                        "Which endpoints has outlier detection taken out of rotation?",
                        Query(
                            agg(
                                "max",
                                ("upstream", "endpoint"),
                                _S("yardarm_gateway_endpoint_ejected"),
                            ),
                            "{{upstream}} {{endpoint}}",
                        ),
                        (("0", "in rotation", "green"), ("1", "ejected", "red")),
                    ),
                    graph(
                        "Ejections by reason",
                        "Why were endpoints ejected (consecutive 5xx, gateway errors, "
                        "success rate, manual)? Ejections per window.",
                        "short",
                        [
                            Query(
                                sum_increase(
                                    ("upstream", "reason"),
                                    _S("yardarm_gateway_ejections_total"),
                                ),
                                "{{upstream}} {{reason}}",
                            )
                        ],
                    ),
                    states(
                        "Pools in panic",
                        "Which pools balance in panic mode (too few endpoints in rotation, "
                        "so traffic goes to all of them, broken ones too)?",
                        Query(
                            agg(
                                "max",
                                ("upstream", "upstream_track"),
                                _S("yardarm_gateway_upstream_panic"),
                            ),
                            "{{upstream}}/{{upstream_track}}",
                        ),
                        (("0", "normal", "green"), ("1", "panic", "red")),
                    ),
                    graph(
                        "Panics entered",
                        "How often did a pool enter panic mode? Entries per window.",
                        "short",
                        [
                            Query(
                                sum_increase(
                                    ("upstream", "upstream_track"),
                                    _S("yardarm_gateway_panics_total"),
                                ),
                                "{{upstream}}/{{upstream_track}}",
                            )
                        ],
                        width=24,
                        height=6,
                    ),
                ],
            ),
            Row(
                "Breakers, retries and admission",
                [
                    states(
                        "Circuit breakers",
                        "Which breakers are open (failing fast) or half-open (probing)? "
                        "A breaker appears once it first changes state.",
                        Query(
                            agg("max", ("breaker",), _S("yardarm_gateway_breaker_state")),
                            "{{breaker}}",
                        ),
                        (
                            ("0", "closed", "green"),
                            ("1", "half-open", "orange"),
                            ("2", "open", "red"),
                        ),
                    ),
                    graph(
                        "Breaker transitions",
                        "Which states did breakers enter? Transitions per window.",
                        "short",
                        [
                            Query(
                                sum_increase(
                                    ("breaker", "state"),
                                    _S("yardarm_gateway_breaker_transitions_total"),
                                ),
                                "{{breaker}} → {{state}}",
                            )
                        ],
                    ),
                    graph(
                        "Retries by reason",
                        "How many retries does the gateway send, and after what failure "
                        "(connect_error counts re-routes of refused connections)?",
                        "reqps",
                        [
                            Query(
                                sum_rate(
                                    ("upstream", "reason"), _S("yardarm_gateway_retries_total")
                                ),
                                "{{upstream}} {{reason}}",
                            )
                        ],
                    ),
                    graph(
                        "Retries refused",
                        "Which retries were not sent because the retry budget or the "
                        "request's deadline forbade them?",
                        "reqps",
                        [
                            Query(
                                sum_rate(
                                    ("upstream", "why"),
                                    _S("yardarm_gateway_retries_refused_total"),
                                ),
                                "{{upstream}} {{why}}",
                            )
                        ],
                    ),
                    graph(
                        "Rejected requests by reason",
                        "Which requests did the gateway refuse without trying an upstream "
                        "(rate_limited, bulkhead, circuit_open, no_endpoint, forbidden)?",
                        "reqps",
                        [
                            Query(
                                sum_rate(
                                    ("route", "reason"),
                                    _S("yardarm_gateway_rejected_requests_total"),
                                ),
                                "{{route}} {{reason}}",
                            )
                        ],
                        stacked=True,
                        width=24,
                    ),
                ],
            ),
            Row(
                "Routing document",
                [
                    single(
                        "Routing version",
                        "Which datastore version of the routing document is in force on "
                        "each gateway instance? Instances that disagree are still syncing.",
                        "none",
                        Query(
                            agg("max", ("instance",), _S("yardarm_gateway_routing_version")),
                            "{{instance}}",
                        ),
                        width=8,
                        height=6,
                    ),
                    graph(
                        "Routing errors",
                        "Were routing documents refused (invalid) or not read (datastore "
                        "unreachable)? Errors per window.",
                        "short",
                        [
                            Query(
                                sum_increase(("kind",), _S("yardarm_gateway_routing_errors_total")),
                                "{{kind}}",
                            )
                        ],
                        width=16,
                        height=6,
                    ),
                ],
            ),
            Row("Logs", [error_logs(SERVICE)]),
        ],
        tags=(SERVICE,),
    )
