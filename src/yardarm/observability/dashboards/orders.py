"""Orders: its API, the order saga (steps, compensations, timeouts, re-sends, terminal
statuses), its outbox and the consumer of the participants' replies."""

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
    error_logs,
    graph,
    latency,
    ratio,
    single,
    sum_increase,
    sum_rate,
    thresholds,
)

UID = "yardarm-orders"
SERVICE = "orders"

_S = Scope(SERVICE)
_REQUESTS = _S("http_server_request_duration_seconds_count", USER_TRAFFIC)
_ERRORS = _S("http_server_request_duration_seconds_count", USER_TRAFFIC, SERVER_ERROR)
_TERMINAL = _S("yardarm_sagas_terminal_total")


def build() -> dm.Dashboard:
    return dashboard(
        UID,
        "Yardarm: orders",
        "The orders API and the order saga: how orders progress through reserving stock, "
        "charging and shipping, how often they are compensated, and whether commands and "
        "replies flow (outbox, reply consumer).",
        service=SERVICE,
        rows=[
            Row(
                "API",
                [
                    graph(
                        "Requests per route",
                        "Which orders and stock endpoints are called, how often?",
                        "reqps",
                        [Query(sum_rate(("http_route",), _REQUESTS), "{{http_route}}")],
                        width=8,
                    ),
                    graph(
                        "Error ratio per route (5xx)",
                        "What share of each route's requests fail with a 5xx?",
                        "percentunit",
                        [
                            Query(
                                ratio(
                                    sum_rate(("http_route",), _ERRORS),
                                    sum_rate(("http_route",), _REQUESTS),
                                ),
                                "{{http_route}}",
                            )
                        ],
                        width=8,
                    ),
                    latency(
                        "Latency per route",
                        "How long does each route take (median and p99)? Exemplars open "
                        "the trace of one request.",
                        _S("http_server_request_duration_seconds_bucket", USER_TRAFFIC),
                        ("http_route",),
                        "{{http_route}}",
                        width=8,
                    ),
                    latency(
                        "Datastore calls",
                        "How long do orders' calls to the datastore (stock reads and "
                        "writes) take? A slow datastore shows here before it shows in "
                        "the API.",
                        _S("http_client_request_duration_seconds_bucket", 'upstream="datastore"'),
                        ("http_request_method",),
                        "{{http_request_method}}",
                        width=24,
                    ),
                ],
            ),
            Row(
                "Saga",
                [
                    graph(
                        "Step outcomes",
                        "How do saga steps end (stock.reserved, payments.charged, ...; "
                        "retry, ignored and duplicate too)?",
                        "ops",
                        [
                            Query(
                                sum_rate(("step", "outcome"), _S("yardarm_saga_steps_total")),
                                "{{step}} {{outcome}}",
                            )
                        ],
                        stacked=True,
                    ),
                    latency(
                        "Step durations",
                        "How long do sagas spend in each step, from entering it to the "
                        "trigger that ends it? Exemplars open the order's trace.",
                        _S("yardarm_saga_step_duration_seconds_bucket"),
                        ("step",),
                        "{{step}}",
                    ),
                    graph(
                        "Compensations started",
                        "How often do sagas undo work (releasing stock, refunding), by "
                        "the state the compensation runs in?",
                        "ops",
                        [
                            Query(
                                sum_rate(("step",), _S("yardarm_saga_compensations_total")),
                                "{{step}}",
                            )
                        ],
                        width=8,
                    ),
                    graph(
                        "Step timeouts",
                        "Which remote steps got no reply within their timeout (and were "
                        "compensated)? Timeouts per window.",
                        "short",
                        [
                            Query(
                                sum_increase(("step",), _S("yardarm_saga_step_timeouts_total")),
                                "{{step}}",
                            )
                        ],
                        width=8,
                    ),
                    graph(
                        "Command re-sends",
                        "Which commands were sent again because no reply came in time? "
                        "Re-sends per window.",
                        "short",
                        [
                            Query(
                                sum_increase(
                                    ("command",), _S("yardarm_saga_command_resends_total")
                                ),
                                "{{command}}",
                            )
                        ],
                        width=8,
                    ),
                    graph(
                        "Terminal statuses",
                        "How many sagas finish, and how: CONFIRMED or CANCELLED?",
                        "ops",
                        [Query(sum_rate(("status",), _TERMINAL), "{{status}}")],
                        stacked=True,
                        width=16,
                    ),
                    single(
                        "Confirmed share",
                        "Of the sagas that finished, what share was confirmed?",
                        "percentunit",
                        Query(
                            ratio(
                                sum_rate(
                                    (), _S("yardarm_sagas_terminal_total", 'status="CONFIRMED"')
                                ),
                                sum_rate((), _TERMINAL),
                            ),
                            "confirmed",
                        ),
                        width=8,
                        height=8,
                        colours=thresholds((None, "red"), (0.5, "orange"), (0.8, "green")),
                    ),
                ],
            ),
            Row(
                "Outbox and reply consumer",
                [
                    graph(
                        "Outbox pending",
                        "How many commands are committed but not yet published? It should "
                        "drain to zero; a growing backlog means NATS is unreachable.",
                        "short",
                        [
                            Query(
                                agg("max", ("instance",), _S("yardarm_outbox_pending")),
                                "{{instance}}",
                            )
                        ],
                        width=8,
                    ),
                    graph(
                        "Reply consumer throughput by outcome",
                        "How many participant replies does orders handle, and with what "
                        "verdict (processed, duplicate, failed, dead_lettered)?",
                        "ops",
                        [
                            Query(
                                sum_rate(
                                    ("consumer", "outcome"),
                                    _S("yardarm_consumer_messages_total"),
                                ),
                                "{{consumer}} {{outcome}}",
                            )
                        ],
                        stacked=True,
                        width=8,
                    ),
                    graph(
                        "Reply consumer lag",
                        "How many replies wait to be delivered to the consumer?",
                        "short",
                        [
                            Query(
                                agg("max", ("consumer",), _S("yardarm_consumer_lag")),
                                "{{consumer}}",
                            )
                        ],
                        width=8,
                    ),
                    graph(
                        "Replies in flight",
                        "How many replies are being handled right now?",
                        "short",
                        [
                            Query(
                                agg("sum", ("consumer",), _S("yardarm_consumer_in_flight")),
                                "{{consumer}}",
                            )
                        ],
                    ),
                    latency(
                        "Reply batch duration",
                        "How long does a fetched batch of replies take to settle?",
                        _S("yardarm_consumer_batch_duration_seconds_bucket"),
                        ("consumer",),
                        "{{consumer}}",
                    ),
                ],
            ),
            Row("Logs", [error_logs(SERVICE)]),
        ],
        tags=(SERVICE,),
    )
