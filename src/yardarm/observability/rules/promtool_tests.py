"""promtool unit tests for every rule group, written from the same definitions.

Each SLO gets the same scenarios, with counters that burn its error budget at a
chosen rate (burn 20 means errors at 20 times the share the objective allows):

- burning 20x: the 1h/5m page fires within minutes, the 6h/30m page after its `for`,
  the ticket after an hour;
- 20x for 40 minutes, then clean: the 1h/5m page stops (the 5m window is clean) while
  the 6h/30m page goes on;
- 8x: only the 6h/30m page, then the ticket; 2x: only the ticket;
- 0.5x, with probes and scrapes (or another service's consumer) failing beside it:
  nothing fires.

The platform alerts have tests written out below, each with a case that fires and
cases that must not. Expected annotations come from the alert's own templates
(`Alert.expected_annotations`), so they check the labels and numbers the alert shows.
Float values are compared exactly by promtool, so recording-rule tests compare
`round(x * 10000)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from yardarm.observability.rules import alerts, red
from yardarm.observability.rules.model import Alert
from yardarm.observability.rules.promql import quote
from yardarm.observability.rules.render import groups, rule_file
from yardarm.observability.rules.slo import BURN_ALERTS, SLI, SLOS, BurnAlert, le_text

ENV = "test"
PER_MINUTE = 100_000  # events per minute in the SLO scenarios: every share is whole


def series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f"{k}={quote(v)}" for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def identity(service: str, **extra: str) -> dict[str, str]:
    """The labels every series of one instance carries."""
    return {
        "environment": extra.pop("environment", ENV),
        "job": service,
        "service": service,
        "version": extra.pop("version", "1.0.0"),
        "track": extra.pop("track", "stable"),
        "instance": extra.pop("instance", f"{service}-0"),
        **extra,
    }


def counter(segments: Sequence[tuple[int, int]]) -> str:
    """A counter at 0, then `step` more at each of the next `samples` samples, segment
    after segment, in promtool's expanding notation (whole numbers: no exponents)."""
    parts: list[str] = []
    value = 0
    for index, (samples, step) in enumerate(segments):
        if index == 0:
            parts.append(f"0+{step}x{samples}")
        elif samples > 0:
            parts.append(f"{value + step}+{step}x{samples - 1}")
        value += step * samples
    return " ".join(parts)


def rules_for(*names: str) -> list[str]:
    by_name = {group.name: group for group in groups()}
    return [f"../{rule_file(by_name[name]).removeprefix('prometheus/')}" for name in names]


def expect(alert: Alert, value: float, labels: dict[str, str]) -> dict[str, Any]:
    """One expected firing alert: every label and the rendered annotations."""
    all_labels = {**labels, **alert.all_labels()}
    return {
        "exp_labels": all_labels,
        "exp_annotations": alert.expected_annotations(value, all_labels),
    }


def alert_test(name: str, eval_time: str, expected: list[dict[str, Any]]) -> dict[str, Any]:
    return {"eval_time": eval_time, "alertname": name, "exp_alerts": expected}


# -- SLO scenarios ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    # (minutes, burn rate) segments; the first sample is at 0
    burn: tuple[tuple[int, float], ...]
    # eval minute -> the burn alerts firing then, with the burn rate each one shows
    expect: tuple[tuple[int, tuple[tuple[BurnAlert, float], ...]], ...]
    noise: bool = False


FAST, SLOW, TICKET = BURN_ALERTS
SCENARIOS = (
    Scenario(
        "burning 20x: the fast page, then the slow page, then the ticket",
        ((80, 20.0),),
        (
            (10, ((FAST, 20.0),)),
            (30, ((FAST, 20.0), (SLOW, 20.0))),
            (75, ((FAST, 20.0), (SLOW, 20.0), (TICKET, 20.0))),
        ),
    ),
    Scenario(
        "20x for 40m then clean: the 5m window resets the fast page, the slow one goes on",
        ((40, 20.0), (20, 0.0)),
        ((50, ((SLOW, 16.0),)),),
    ),
    Scenario(
        "burning 8x: the slow page and later the ticket, never the fast page",
        ((100, 8.0),),
        ((30, ((SLOW, 8.0),)), (90, ((SLOW, 8.0), (TICKET, 8.0)))),
    ),
    Scenario("burning 2x: only the ticket", ((100, 2.0),), ((30, ()), (90, ((TICKET, 2.0),)))),
    Scenario(
        "burning 0.5x, beside noise the SLI must leave out: nothing fires",
        ((130, 0.5),),
        ((30, ()), (125, ())),
        noise=True,
    ),
)


def _steps(
    sli: SLI, burn: tuple[tuple[int, float], ...]
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Per-minute good and bad event counts for the burn segments."""
    good: list[tuple[int, int]] = []
    bad: list[tuple[int, int]] = []
    for minutes, rate in burn:
        errors = round(PER_MINUTE * sli.budget * rate)
        good.append((minutes, PER_MINUTE - errors))
        bad.append((minutes, errors))
    return good, bad


def _http_series(sli: SLI, scenario: Scenario) -> list[dict[str, str]]:
    good, bad = _steps(sli, scenario.burn)
    total = [(m, g + b) for (m, g), (_, b) in zip(good, bad, strict=True)]
    family = "http_server_request_duration_seconds"
    route = {"http_route": "/things", "http_request_method": "GET"}
    out: list[dict[str, str]] = []
    if sli.kind == "availability":
        ok = identity(sli.service, **route, http_response_status_code="200")
        failed = identity(sli.service, **route, http_response_status_code="500")
        out += [
            series(f"{family}_count", ok, counter(good)),
            series(f"{family}_count", failed, counter(bad)),
        ]
    else:
        assert sli.threshold_s is not None
        labels = identity(sli.service, **route, http_response_status_code="200")
        le = le_text(sli.threshold_s)
        out += [
            series(f"{family}_count", labels, counter(total)),
            series(f"{family}_bucket", {**labels, "le": le}, counter(good)),
            series(f"{family}_bucket", {**labels, "le": "+Inf"}, counter(total)),
        ]
    if scenario.noise:  # a draining instance's probes: failed and slow, never counted
        probes = identity(
            sli.service,
            http_route="/readyz",
            http_request_method="GET",
            http_response_status_code="503",
        )
        minutes = sum(m for m, _ in scenario.burn)
        out += [
            series(f"{family}_count", probes, counter([(minutes, PER_MINUTE)])),
            series(f"{family}_bucket", {**probes, "le": le_text(0.5)}, "0x" + str(minutes)),
        ]
    return out


def _consumer_series(sli: SLI, scenario: Scenario) -> list[dict[str, str]]:
    good, bad = _steps(sli, scenario.burn)
    total = [(m, g + b) for (m, g), (_, b) in zip(good, bad, strict=True)]
    out: list[dict[str, str]] = []
    if sli.kind == "availability":
        where = {"consumer": "payments", "subject": "cmd.payments.charge"}
        out += [
            series(
                "yardarm_consumer_messages_total",
                identity(sli.service, **where, outcome="processed"),
                counter(good),
            ),
            series(
                "yardarm_consumer_messages_total",
                identity(sli.service, **where, outcome="failed"),
                counter(bad),
            ),
        ]
    else:
        assert sli.threshold_s is not None
        labels = identity(sli.service, consumer="payments")
        family = "yardarm_consumer_batch_duration_seconds"
        out += [
            series(f"{family}_count", labels, counter(total)),
            series(f"{family}_bucket", {**labels, "le": le_text(sli.threshold_s)}, counter(good)),
        ]
    if scenario.noise:  # the orders service's own consumer failing: not fulfillment's SLO
        minutes = sum(m for m, _ in scenario.burn)
        where = {"consumer": "orders", "subject": "evt.payments.charged"}
        failing = counter([(minutes, PER_MINUTE)])
        out += [
            series(
                "yardarm_consumer_messages_total",
                identity("orders", **where, outcome="failed"),
                failing,
            ),
            series(
                "yardarm_consumer_batch_duration_seconds_count",
                identity("orders", consumer="orders"),
                failing,
            ),
        ]
    return out


def _slo_test(sli: SLI, scenario: Scenario) -> dict[str, Any]:
    make = _consumer_series if sli.service == "fulfillment" else _http_series
    name = sli.alert_name()
    cases = []
    for minute, firing in scenario.expect:
        expected = []
        for burn, value in firing:
            alert = sli.alert(burn)
            labels = {"environment": ENV, "service": sli.service, "slo": sli.kind}
            expected.append(expect(alert, value, labels))
        cases.append(alert_test(name, f"{minute}m", expected))
    return {
        "name": f"{sli.service} {sli.kind}: {scenario.name}",
        "interval": "1m",
        "input_series": make(sli, scenario),
        "alert_rule_test": cases,
    }


def slo_tests(service: str) -> dict[str, Any]:
    slo = next(slo for slo in SLOS if slo.service == service)
    return {
        "rule_files": rules_for("yardarm-slo-sli", "yardarm-slo-sli-long", "yardarm-slo-burn"),
        "evaluation_interval": "1m",
        "group_eval_order": ["yardarm-slo-sli", "yardarm-slo-sli-long", "yardarm-slo-burn"],
        "tests": [_slo_test(sli, scenario) for sli in slo.slis for scenario in SCENARIOS],
    }


# -- recording rules ---------------------------------------------------------------------


def _scaled(expr: str, eval_time: str, samples: list[tuple[dict[str, str], int]]) -> dict[str, Any]:
    """A promql_expr_test of `round(expr * 10000)`: exact integers to compare."""
    return {
        "expr": f"round({expr} * 10000)",
        "eval_time": eval_time,
        "exp_samples": [
            {
                "labels": "{" + ", ".join(f"{k}={quote(v)}" for k, v in labels.items()) + "}",
                "value": value,
            }
            for labels, value in samples
        ],
    }


def recording_tests() -> dict[str, Any]:
    """RED and SLI records over two orders versions and a fulfillment consumer.

    orders 0.2.0 (stable): 10 req/s, none failing, latency buckets 0.1: 4/s, 0.25: 8/s,
    0.5: 10/s (p50 0.1375 s, p99 0.4875 s), plus failing probes that must not count;
    orders 0.3.0 (canary): 10 req/s, 1/s answered 500, half of them over 0.5 s;
    fulfillment: 10 deliveries/s, 0.5/s failed, batches 2/s, 1.5/s within 0.5 s.
    """
    family = "http_server_request_duration_seconds"
    route = {"http_route": "/orders", "http_request_method": "POST"}
    stable = identity("orders", version="0.2.0", **route, http_response_status_code="201")
    probes = identity(
        "orders",
        version="0.2.0",
        http_route="/readyz",
        http_request_method="GET",
        http_response_status_code="503",
    )
    canary_ok = identity(
        "orders",
        version="0.3.0",
        track="canary",
        instance="orders-canary-0",
        **route,
        http_response_status_code="201",
    )
    canary_bad = {**canary_ok, "http_response_status_code": "500"}
    ful = identity("fulfillment")
    where = {"consumer": "payments", "subject": "cmd.payments.charge"}
    n = "10"
    inputs = [
        series(f"{family}_count", stable, f"0+600x{n}"),
        series(f"{family}_bucket", {**stable, "le": "0.1"}, f"0+240x{n}"),
        series(f"{family}_bucket", {**stable, "le": "0.25"}, f"0+480x{n}"),
        series(f"{family}_bucket", {**stable, "le": "0.5"}, f"0+600x{n}"),
        series(f"{family}_bucket", {**stable, "le": "+Inf"}, f"0+600x{n}"),
        series(f"{family}_count", probes, f"0+600x{n}"),
        series(f"{family}_bucket", {**probes, "le": "0.5"}, f"0x{n}"),
        series(f"{family}_bucket", {**probes, "le": "+Inf"}, f"0+600x{n}"),
        series(f"{family}_count", canary_ok, f"0+540x{n}"),
        series(f"{family}_bucket", {**canary_ok, "le": "0.5"}, f"0+270x{n}"),
        series(f"{family}_bucket", {**canary_ok, "le": "+Inf"}, f"0+540x{n}"),
        series(f"{family}_count", canary_bad, f"0+60x{n}"),
        series(f"{family}_bucket", {**canary_bad, "le": "0.5"}, f"0+30x{n}"),
        series(f"{family}_bucket", {**canary_bad, "le": "+Inf"}, f"0+60x{n}"),
        series(
            "yardarm_consumer_messages_total",
            {**ful, **where, "outcome": "processed"},
            f"0+570x{n}",
        ),
        series(
            "yardarm_consumer_messages_total", {**ful, **where, "outcome": "failed"}, f"0+30x{n}"
        ),
        series(
            "yardarm_consumer_batch_duration_seconds_count",
            {**ful, "consumer": "payments"},
            f"0+120x{n}",
        ),
        series(
            "yardarm_consumer_batch_duration_seconds_bucket",
            {**ful, "consumer": "payments", "le": "0.5"},
            f"0+90x{n}",
        ),
        series(
            "yardarm_consumer_batch_duration_seconds_bucket",
            {**ful, "consumer": "payments", "le": "+Inf"},
            f"0+120x{n}",
        ),
    ]

    def red_labels(service: str, version: str, track: str = "stable") -> dict[str, str]:
        return {"environment": ENV, "service": service, "version": version, "track": track}

    o_stable = red_labels("orders", "0.2.0")
    o_canary = red_labels("orders", "0.3.0", "canary")
    f_stable = red_labels("fulfillment", "1.0.0")

    def sli(service: str, slo: str) -> dict[str, str]:
        return {"environment": ENV, "service": service, "slo": slo}

    at = "10m"
    exprs = [
        _scaled(red.REQUESTS, at, [(o_stable, 100000), (o_canary, 100000), (f_stable, 100000)]),
        _scaled(red.ERRORS, at, [(o_stable, 0), (o_canary, 1000), (f_stable, 500)]),
        _scaled(
            red.latency_record("p50"), at, [(o_stable, 1375), (o_canary, 5000), (f_stable, 3333)]
        ),
        _scaled(
            red.latency_record("p99"), at, [(o_stable, 4875), (o_canary, 5000), (f_stable, 5000)]
        ),
    ]
    for window in ("5m", "1h", "3d"):
        exprs.append(
            _scaled(
                f"service:slo_errors:ratio_rate{window}",
                at,
                [
                    (sli("orders", "availability"), 500),
                    (sli("orders", "latency"), 2500),
                    (sli("fulfillment", "availability"), 500),
                    (sli("fulfillment", "latency"), 2500),
                ],
            )
        )
    return {
        "rule_files": rules_for("yardarm-red", "yardarm-slo-sli", "yardarm-slo-sli-long"),
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "RED per version and track, SLI ratios per service; probes left out",
                "interval": "1m",
                "input_series": inputs,
                "promql_expr_test": exprs,
            }
        ],
    }


# -- the platform alerts -----------------------------------------------------------------


def _replica(i: int, environment: str = ENV) -> dict[str, str]:
    return identity("datastore", instance=f"datastore-{i}", environment=environment)


def _up(i: int, environment: str = ENV) -> dict[str, str]:
    return {"environment": environment, "job": "datastore", "instance": f"datastore-{i}"}


def datastore_tests() -> dict[str, Any]:
    no_leader, flapping = alerts.DATASTORE_NO_LEADER, alerts.DATASTORE_LEADER_FLAPPING
    role = "yardarm_datastore_raft_role"
    healthy_prod = [series("up", _up(i, "prod"), "1x30") for i in range(3)] + [
        series(role, {**_replica(i, "prod"), "role": "leader"}, ("1" if i == 0 else "0") + "x30")
        for i in range(3)
    ]
    # 10 s samples; replica 0 leads until 60 s.
    quorum_lost = [
        series("up", _up(0), "1x30"),
        series("up", _up(1), "1x6 0x23"),
        series("up", _up(2), "1x6 0x23"),
        series(role, {**_replica(0), "role": "leader"}, "1x6 0x23"),
        series(role, {**_replica(0), "role": "candidate"}, "0x6 1x23"),
        series(role, {**_replica(1), "role": "leader"}, "0x6 stale"),
        series(role, {**_replica(2), "role": "leader"}, "0x6 stale"),
    ]
    all_down = [series("up", _up(i), "1x6 0x23") for i in range(3)] + [
        series(role, {**_replica(i), "role": "leader"}, ("1" if i == 0 else "0") + "x6 stale")
        for i in range(3)
    ]
    # the leader dies at 70 s; one sample later replica 1 has won the election
    election = [
        series("up", _up(0), "1x6 0x23"),
        series("up", _up(1), "1x30"),
        series("up", _up(2), "1x30"),
        series(role, {**_replica(0), "role": "leader"}, "1x6 stale"),
        series(role, {**_replica(1), "role": "leader"}, "0x7 1x22"),
        series(role, {**_replica(2), "role": "leader"}, "0x30"),
    ]
    fired = {"environment": ENV, "service": "datastore"}
    changes = "yardarm_datastore_raft_leader_changes_total"
    return {
        "rule_files": rules_for("yardarm-datastore"),
        "evaluation_interval": "10s",
        "tests": [
            {
                "name": "quorum lost: the survivor stays candidate; fires after 30s",
                "interval": "10s",
                "input_series": quorum_lost + healthy_prod,
                "alert_rule_test": [
                    alert_test(no_leader.alert, "60s", []),
                    alert_test(no_leader.alert, "90s", []),  # pending: 20 s without
                    alert_test(no_leader.alert, "110s", [expect(no_leader, 1, fired)]),
                ],
            },
            {
                "name": "every replica down: no leader reported, none scraped",
                "interval": "10s",
                "input_series": all_down + healthy_prod,
                "alert_rule_test": [
                    alert_test(no_leader.alert, "110s", [expect(no_leader, 0, fired)]),
                ],
            },
            {
                "name": "an election: ten seconds without a leader is no outage",
                "interval": "10s",
                "input_series": election + healthy_prod,
                "alert_rule_test": [
                    alert_test(no_leader.alert, "80s", []),
                    alert_test(no_leader.alert, "150s", []),
                ],
            },
            {
                "name": "a leader change a minute fires; one election (two changes) does not",
                "interval": "1m",
                "input_series": [
                    series(changes, _replica(0), "1+1x40"),
                    series(changes, _replica(1), "1+1x40"),
                    series(changes, _replica(0, "prod"), "1x20 3x20"),
                ],
                "alert_rule_test": [
                    alert_test(flapping.alert, "5m", []),
                    alert_test(flapping.alert, "30m", [expect(flapping, 15, fired)]),
                ],
            },
        ],
    }


def messaging_tests() -> dict[str, Any]:
    dead, lag = alerts.DEAD_LETTERS_GROWING, alerts.CONSUMER_LAG_GROWING
    letters = "yardarm_consumer_dead_letters_total"
    payments = identity("fulfillment", consumer="payments", subject="cmd.payments.charge")
    shipping = identity("fulfillment", consumer="shipping", subject="cmd.shipping.schedule")
    replies = identity("orders", consumer="orders", subject="evt.payments.charged")

    def up(service: str) -> dict[str, str]:
        return {"environment": ENV, "job": service, "instance": f"{service}-0"}

    def where(service: str, consumer: str) -> dict[str, str]:
        return {"environment": ENV, "service": service, "consumer": consumer}

    behind = identity("fulfillment", consumer="payments")
    draining = identity("fulfillment", consumer="shipping")
    small = identity("orders", consumer="orders")
    return {
        "rule_files": rules_for("yardarm-messaging"),
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "a new series (the first dead letter) fires until 10m old, "
                "but not for counters already there when Prometheus started",
                "interval": "1m",
                "input_series": [
                    series("up", up("fulfillment"), "1x45"),
                    series("up", up("orders"), "1x45"),
                    series(letters, payments, "_x15 1x30"),
                    series(letters, replies, "2x45"),
                ],
                "alert_rule_test": [
                    alert_test(dead.alert, "6m", []),
                    alert_test(dead.alert, "14m", []),
                    alert_test(
                        dead.alert, "16m", [expect(dead, 1, where("fulfillment", "payments"))]
                    ),
                    alert_test(dead.alert, "26m", []),
                ],
            },
            {
                "name": "an old counter growing fires; one standing still does not",
                "interval": "1m",
                "input_series": [
                    series(letters, shipping, "3x30 4x10"),
                    series(letters, replies, "2x40"),
                ],
                "alert_rule_test": [
                    alert_test(dead.alert, "20m", []),
                    alert_test(
                        dead.alert, "35m", [expect(dead, 1, where("fulfillment", "shipping"))]
                    ),
                ],
            },
            {
                "name": "a backlog over the limit and growing fires; shrinking or small not",
                "interval": "1m",
                "input_series": [
                    series("yardarm_consumer_lag", behind, "0+100x40"),
                    series("yardarm_consumer_lag", draining, "5000-100x40"),
                    series("yardarm_consumer_lag", small, "0+10x40"),
                ],
                "alert_rule_test": [
                    alert_test(lag.alert, "12m", []),  # over the limit, not yet for 5m
                    alert_test(
                        lag.alert, "20m", [expect(lag, 2000, where("fulfillment", "payments"))]
                    ),
                ],
            },
        ],
    }


def gateway_tests() -> dict[str, Any]:
    breaker = alerts.BREAKER_OPEN
    state, moves = "yardarm_gateway_breaker_state", "yardarm_gateway_breaker_transitions_total"
    canary = identity("gateway", breaker="orders/track:canary")
    gone = identity("gateway", breaker="orders/http://127.0.0.1:31021")
    healed = identity("gateway", breaker="orders/http://127.0.0.1:31020")
    fired = {
        "environment": ENV,
        "instance": "gateway-0",
        "breaker": "orders/track:canary",
        "job": "gateway",
        "service": "gateway",
        "track": "stable",
        "version": "1.0.0",
    }
    return {
        "rule_files": rules_for("yardarm-gateway"),
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "open and re-opening after its probes for 10m fires; a leftover gauge of "
                "an endpoint gone, or a breaker that closed, does not",
                "interval": "1m",
                "input_series": [
                    series(state, canary, "2 1 2 1 2 1 2 1 2 1 2 1 2 1 2 1 2 1 2 1 2"),
                    series(moves, {**canary, "state": "open"}, "1+1x20"),
                    series(moves, {**canary, "state": "half_open"}, "0+1x20"),
                    series(state, gone, "2x20"),
                    series(moves, {**gone, "state": "open"}, "1x20"),
                    series(state, healed, "2x4 0x16"),
                    series(moves, {**healed, "state": "open"}, "1+1x4 5x16"),
                ],
                "alert_rule_test": [
                    alert_test(breaker.alert, "5m", []),
                    alert_test(breaker.alert, "12m", [expect(breaker, 2, fired)]),
                ],
            }
        ],
    }


def orders_tests() -> dict[str, Any]:
    high = alerts.SAGA_COMPENSATIONS_HIGH
    terminal, compensations = "yardarm_sagas_terminal_total", "yardarm_saga_compensations_total"

    def orders(environment: str, **extra: str) -> dict[str, str]:
        return identity("orders", environment=environment, **extra)

    inputs = []
    # busy: 100 sagas a minute, 40 compensations; normal: 5; quiet: 1 saga, 1 compensation
    for environment, sagas, undone in (("busy", 100, 40), ("normal", 100, 5), ("quiet", 1, 1)):
        inputs += [
            series(terminal, orders(environment, status="CONFIRMED"), f"0+{sagas - undone}x40"),
            series(terminal, orders(environment, status="CANCELLED"), f"0+{undone}x40"),
            series(compensations, orders(environment, step="RELEASING"), f"0+{undone}x40"),
        ]
    fired = {"environment": "busy", "service": "orders"}
    return {
        "rule_files": rules_for("yardarm-orders"),
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "40% compensations fires; 5%, or a handful of sagas, does not",
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    alert_test(high.alert, "5m", []),
                    alert_test(high.alert, "20m", [expect(high, 0.4, fired)]),
                    alert_test(high.alert, "40m", [expect(high, 0.4, fired)]),
                ],
            }
        ],
    }


def test_files() -> dict[str, dict[str, Any]]:
    """Test file name (without `.yml`) -> the promtool test document."""
    files = {f"slo-{slo.service}": slo_tests(slo.service) for slo in SLOS}
    files["recording"] = recording_tests()
    files["datastore"] = datastore_tests()
    files["messaging"] = messaging_tests()
    files["gateway"] = gateway_tests()
    files["orders"] = orders_tests()
    return files
