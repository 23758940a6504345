"""Stack overview: rate, errors and duration of every service, per version and track."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

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
    single,
    sum_rate,
    thresholds,
)

UID = "yardarm-overview"

_S = Scope()
_REQUESTS = _S("http_server_request_duration_seconds_count", USER_TRAFFIC)
_ERRORS = _S("http_server_request_duration_seconds_count", USER_TRAFFIC, SERVER_ERROR)
_BUCKETS = _S("http_server_request_duration_seconds_bucket", USER_TRAFFIC)
_IDENTITY = ("service", "version", "track")
_WHO = "{{service}} {{version}} ({{track}})"
_ERROR_COLOURS = thresholds((None, "green"), (0.01, "orange"), (0.05, "red"))


def build() -> dm.Dashboard:
    return dashboard(
        UID,
        "Yardarm: stack overview",
        "Is every service answering, how many fail, how fast: per service, version and "
        "track. Probes and scrapes (/healthz, /readyz, /metrics) are left out.",
        service=None,
        rows=[
            Row(
                "Now",
                [
                    single(
                        "Requests now",
                        "How many requests per second do the selected services answer?",
                        "reqps",
                        Query(sum_rate((), _REQUESTS), "requests"),
                    ),
                    single(
                        "Errors now (5xx)",
                        "What share of those requests fail with a 5xx?",
                        "percentunit",
                        Query(ratio(sum_rate((), _ERRORS), sum_rate((), _REQUESTS)), "errors"),
                        colours=_ERROR_COLOURS,
                    ),
                    single(
                        "p99 now",
                        "How long do the slowest 1% of requests take, over all services?",
                        "s",
                        Query(quantile(0.99, _BUCKETS, ()), "p99", exemplar=True),
                        colours=thresholds((None, "green"), (0.5, "orange"), (1.0, "red")),
                    ),
                    single(
                        "Instances now",
                        "How many instances serve HTTP right now (any traffic, probes too)?",
                        "short",
                        Query(
                            agg(
                                "count",
                                (),
                                agg(
                                    "count",
                                    ("service", "instance"),
                                    _S("http_server_request_duration_seconds_count"),
                                ),
                            ),
                            "instances",
                        ),
                    ),
                ],
            ),
            Row(
                "Rate, errors, duration per service, version and track",
                [
                    graph(
                        "Request rate",
                        "Which service, version and track takes how much traffic?",
                        "reqps",
                        [Query(sum_rate(_IDENTITY, _REQUESTS), _WHO)],
                    ),
                    graph(
                        "Error ratio (5xx)",
                        "Which service, version or track fails, and how much? A rise on "
                        "one track only points at that release.",
                        "percentunit",
                        [
                            Query(
                                ratio(sum_rate(_IDENTITY, _ERRORS), sum_rate(_IDENTITY, _REQUESTS)),
                                _WHO,
                            )
                        ],
                    ),
                    latency(
                        "Latency",
                        "How long do requests take (median and p99)? Exemplar dots open "
                        "the trace of one slow request.",
                        _BUCKETS,
                        _IDENTITY,
                        _WHO,
                    ),
                    graph(
                        "Responses by status code",
                        "What do the services answer? 4xx are the callers' mistakes (or "
                        "refusals: 401, 403, 409, 429), 5xx are ours.",
                        "reqps",
                        [
                            Query(
                                sum_rate(("service", "http_response_status_code"), _REQUESTS),
                                "{{service}} {{http_response_status_code}}",
                            )
                        ],
                        stacked=True,
                    ),
                    graph(
                        "Instances per version and track",
                        "What runs where: instances of each service per version and track "
                        "(a rollout shows as one line rising while another falls).",
                        "short",
                        [
                            Query(
                                agg(
                                    "count",
                                    _IDENTITY,
                                    agg(
                                        "count",
                                        (*_IDENTITY, "instance"),
                                        _S("http_server_request_duration_seconds_count"),
                                    ),
                                ),
                                _WHO,
                            )
                        ],
                        steps=True,
                        width=24,
                    ),
                ],
            ),
        ],
        tags=("overview",),
    )
