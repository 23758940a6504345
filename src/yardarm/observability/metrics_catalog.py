"""Every series the services and the rollout controller expose, with its labels.

The one list that dashboards, recording rules, alerts and their tests check PromQL
against, so a misspelt metric or a label a series does not carry fails offline instead
of drawing an empty panel or a silent alert. Names are as Prometheus stores them:
counters end in `_total`; a histogram is listed by its family name and stored as
`<name>_bucket` (with `le`), `<name>_count` and `<name>_sum`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from yardarm.observability.stack import CONTROLLERS, ENVIRONMENT_LABEL, SERVICES

# Set by the kit on every series (`yardarm_kit.metrics.BASE_LABELS`).
BASE_LABELS: Final = ("service", "version", "track", "instance")
# Added by the scrape config: the environment as a target label, the job (= service).
SCRAPE_LABELS: Final = (ENVIRONMENT_LABEL, "job")

Kind = Literal["counter", "gauge", "histogram"]
HISTOGRAM_SUFFIXES: Final = ("_bucket", "_count", "_sum")

_ALL = (*SERVICES, *CONTROLLERS)  # every process built on the kit's `Service`
_CONSUMERS = ("orders", "fulfillment")


@dataclass(frozen=True)
class Metric:
    """One metric family: its own labels (beyond the base and scrape labels), the
    services that expose it, and whether a healthy stack under load produces it
    (`healthy=False`: it appears only once something goes wrong, e.g. a retry, or once
    something is done to the stack, e.g. a rollout)."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    services: tuple[str, ...]
    doc: str
    healthy: bool = True

    @property
    def series(self) -> tuple[str, ...]:
        """The names Prometheus stores for this family."""
        if self.kind == "histogram":
            return tuple(self.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        return (self.name,)

    def label_names(self, series: str) -> frozenset[str]:
        """Every label a stored series of this family carries."""
        extra = ("le",) if series == self.name + "_bucket" else ()
        return frozenset((*BASE_LABELS, *SCRAPE_LABELS, *self.labels, *extra))


def _m(
    name: str,
    kind: Kind,
    labels: tuple[str, ...],
    services: tuple[str, ...],
    doc: str,
    *,
    healthy: bool = True,
) -> Metric:
    return Metric(name, kind, labels, services, doc, healthy)


METRICS: Final[tuple[Metric, ...]] = (
    # The kit: every service.
    _m(
        "http_server_request_duration_seconds",
        "histogram",
        ("http_route", "http_request_method", "http_response_status_code"),
        _ALL,
        "Duration of HTTP server requests.",
    ),
    _m(
        "http_client_request_duration_seconds",
        "histogram",
        ("upstream", "http_request_method", "http_response_status_code"),
        ("gateway", "orders"),
        "Duration of HTTP client requests to upstreams.",
    ),
    _m(
        "yardarm_http_malformed_requests_total",
        "counter",
        ("reason",),
        _ALL,
        "Requests refused before routing because they were not valid HTTP/1.x.",
        healthy=False,
    ),
    # The kit's consumers: orders (replies) and fulfillment (payments, shipping).
    _m(
        "yardarm_consumer_messages_total",
        "counter",
        ("consumer", "subject", "outcome"),
        _CONSUMERS,
        "Deliveries by verdict: processed, duplicate, failed (redelivered later) or dead_lettered.",
    ),
    _m(
        "yardarm_consumer_redeliveries_total",
        "counter",
        ("consumer",),
        _CONSUMERS,
        "Deliveries of a message delivered before.",
        healthy=False,
    ),
    _m(
        "yardarm_consumer_dead_letters_total",
        "counter",
        ("consumer", "subject"),
        _CONSUMERS,
        "Messages stored on the DLQ stream (by the consumer or its advisory watcher).",
        healthy=False,
    ),
    _m(
        "yardarm_consumer_lag",
        "gauge",
        ("consumer",),
        _CONSUMERS,
        "Messages not yet delivered to the consumer.",
    ),
    _m(
        "yardarm_consumer_in_flight",
        "gauge",
        ("consumer",),
        _CONSUMERS,
        "Deliveries being handled right now.",
    ),
    _m(
        "yardarm_consumer_batch_duration_seconds",
        "histogram",
        ("consumer",),
        _CONSUMERS,
        "Time from fetching a batch to settling every message in it.",
    ),
    _m(
        "yardarm_outbox_pending",
        "gauge",
        (),
        _CONSUMERS,
        "Outbox rows (orders: commands, fulfillment: replies) committed but not yet published.",
    ),
    # Gateway.
    _m(
        "yardarm_gateway_route_requests_total",
        "counter",
        ("route", "upstream", "upstream_track", "code"),
        ("gateway",),
        "Requests answered per route and track, by status code.",
    ),
    _m(
        "yardarm_gateway_route_weight",
        "gauge",
        ("route", "upstream", "upstream_track"),
        ("gateway",),
        "Percentage (0-100) of a route's requests the weighted split sends to each track "
        'now (a track without endpoints gets 0; upstream_track="*": a route with no split).',
    ),
    _m(
        "yardarm_gateway_upstream_requests_total",
        "counter",
        ("upstream", "upstream_track", "endpoint", "outcome"),
        ("gateway",),
        "Attempts sent upstream, by endpoint and outcome (response, connect_error, "
        "timeout, invalid_response).",
    ),
    _m(
        "yardarm_gateway_upstream_request_duration_seconds",
        "histogram",
        ("upstream", "upstream_track"),
        ("gateway",),
        "Duration of each upstream attempt.",
    ),
    _m(
        "yardarm_gateway_endpoint_healthy",
        "gauge",
        ("upstream", "endpoint", "upstream_track"),
        ("gateway",),
        "1 while an endpoint passes its active health checks.",
    ),
    _m(
        "yardarm_gateway_upstream_panic",
        "gauge",
        ("upstream", "upstream_track"),
        ("gateway",),
        "1 while a pool balances in panic mode.",
    ),
    _m(
        "yardarm_gateway_retries_total",
        "counter",
        ("upstream", "reason"),
        ("gateway",),
        "Retries sent, by the reason of the failed attempt.",
        healthy=False,
    ),
    _m(
        "yardarm_gateway_retries_refused_total",
        "counter",
        ("upstream", "why"),
        ("gateway",),
        "Retries not sent because the retry budget or the deadline forbade them.",
        healthy=False,
    ),
    _m(
        "yardarm_gateway_rejected_requests_total",
        "counter",
        ("route", "reason"),
        ("gateway",),
        "Requests refused without reaching an upstream (rate_limited, bulkhead, "
        "circuit_open, no_endpoint, forbidden).",
        healthy=False,
    ),
    _m(
        "yardarm_gateway_breaker_state",
        "gauge",
        ("breaker",),
        ("gateway",),
        "Circuit breaker state: 0 closed, 1 half-open, 2 open (from its first transition).",
        healthy=False,
    ),
    _m(
        "yardarm_gateway_breaker_transitions_total",
        "counter",
        ("breaker", "state"),
        ("gateway",),
        "Circuit breaker transitions, by the state entered.",
        healthy=False,
    ),
    _m(
        "yardarm_gateway_ejections_total",
        "counter",
        ("upstream", "endpoint", "reason"),
        ("gateway",),
        "Outlier ejections, by reason.",
        healthy=False,
    ),
    _m(
        "yardarm_gateway_endpoint_ejected",
        "gauge",
        ("upstream", "endpoint"),
        ("gateway",),
        "1 while an endpoint is ejected (from its first ejection).",
        healthy=False,
    ),
    _m(
        "yardarm_gateway_panics_total",
        "counter",
        ("upstream", "upstream_track"),
        ("gateway",),
        "Times a pool entered panic mode.",
        healthy=False,
    ),
    _m(
        "yardarm_gateway_routing_version",
        "gauge",
        (),
        ("gateway",),
        "Datastore version of the routing document in force (set once one is applied).",
        healthy=False,
    ),
    _m(
        "yardarm_gateway_routing_errors_total",
        "counter",
        ("kind",),
        ("gateway",),
        "Routing documents refused (invalid) or not read (datastore unreachable).",
        healthy=False,
    ),
    # Orders: the saga.
    _m(
        "yardarm_saga_steps_total",
        "counter",
        ("step", "outcome"),
        ("orders",),
        "Saga step outcomes: the trigger that ended a step, or retry/ignored/duplicate.",
    ),
    _m(
        "yardarm_saga_step_duration_seconds",
        "histogram",
        ("step",),
        ("orders",),
        "Time a saga spent in a step, from entering it to the trigger that ended it.",
    ),
    _m(
        "yardarm_saga_compensations_total",
        "counter",
        ("step",),
        ("orders",),
        "Compensation steps started, by the state they run in (e.g. REFUNDING).",
    ),
    _m(
        "yardarm_saga_step_timeouts_total",
        "counter",
        ("step",),
        ("orders",),
        "Remote steps whose reply did not come within their timeout (then compensated).",
        healthy=False,
    ),
    _m(
        "yardarm_saga_command_resends_total",
        "counter",
        ("command",),
        ("orders",),
        "Commands sent again (a new envelope id) because no reply came in time.",
        healthy=False,
    ),
    _m(
        "yardarm_sagas_terminal_total",
        "counter",
        ("status",),
        ("orders",),
        "Sagas that reached a terminal status.",
    ),
    # Fulfillment.
    _m(
        "yardarm_payments_total",
        "counter",
        ("outcome",),
        ("fulfillment",),
        "Payment ledger changes: charged, declined, refunded, nothing_to_refund.",
    ),
    _m(
        "yardarm_shipments_total",
        "counter",
        ("outcome",),
        ("fulfillment",),
        "Shipment changes: scheduled, failed, cancelled.",
    ),
    # Datastore (per replica).
    _m("yardarm_datastore_raft_term", "gauge", (), ("datastore",), "Current Raft term."),
    _m(
        "yardarm_datastore_raft_role",
        "gauge",
        ("role",),
        ("datastore",),
        "1 for this replica's current role (leader, follower, candidate, pre_candidate).",
    ),
    _m(
        "yardarm_datastore_raft_leader",
        "gauge",
        (),
        ("datastore",),
        "The replica id this replica follows (0: no leader known).",
    ),
    _m(
        "yardarm_datastore_raft_leader_changes_total",
        "counter",
        (),
        ("datastore",),
        "Times this replica saw a new leader.",
    ),
    _m(
        "yardarm_datastore_raft_elections_won_total",
        "counter",
        ("cause",),
        ("datastore",),
        "Times this replica became the leader, by cause: transfer (handed over by the "
        "leader, as in a rolling restart) or election (no leader heard in time).",
    ),
    _m(
        "yardarm_datastore_raft_commit_index",
        "gauge",
        (),
        ("datastore",),
        "Highest log index known committed.",
    ),
    _m(
        "yardarm_datastore_raft_applied_index",
        "gauge",
        (),
        ("datastore",),
        "Highest log index applied.",
    ),
    _m(
        "yardarm_datastore_raft_append_seconds",
        "histogram",
        (),
        ("datastore",),
        "Time to write one batch of Raft entries and hard state to the log (before fsync).",
    ),
    _m(
        "yardarm_datastore_wal_fsync_seconds",
        "histogram",
        (),
        ("datastore",),
        "Time to fsync the Raft log after a write.",
    ),
    _m(
        "yardarm_datastore_wal_batch_size",
        "histogram",
        (),
        ("datastore",),
        "Raft entries per log write.",
    ),
    _m(
        "yardarm_datastore_raft_snapshots_total",
        "counter",
        (),
        ("datastore",),
        "Snapshots taken.",
        healthy=False,
    ),
    _m(
        "yardarm_datastore_raft_snapshot_bytes",
        "gauge",
        (),
        ("datastore",),
        "Size of the latest snapshot taken.",
        healthy=False,
    ),
    _m(
        "yardarm_datastore_writes_total",
        "counter",
        ("op", "outcome"),
        ("datastore",),
        "KV writes by operation (put, delete) and outcome.",
    ),
    _m("yardarm_datastore_keys", "gauge", (), ("datastore",), "Keys stored."),
    _m(
        "yardarm_datastore_revision",
        "gauge",
        (),
        ("datastore",),
        "The store's revision (count of applied writes).",
    ),
    # The rollout controller: about the services it rolls (`rollout_service`) and their
    # tracks (`rollout_track`); its own `service`, `version` and `track` name the
    # controller. Every series appears once a rollout was stored.
    _m(
        "yardarm_rollout_events_total",
        "counter",
        ("rollout_service", "kind"),
        CONTROLLERS,
        "Rollout events this controller stored, by kind (started, step, verdict, paused, "
        "promoted, failed, aborted, completed).",
        healthy=False,
    ),
    _m(
        "yardarm_rollout_analyses_total",
        "counter",
        ("rollout_service", "outcome", "rule"),
        CONTROLLERS,
        "Analyses of a canary against its baseline, by verdict and deciding rule.",
        healthy=False,
    ),
    _m(
        "yardarm_rollout_weight",
        "gauge",
        ("rollout_service", "rollout_track"),
        CONTROLLERS,
        "Percentage (0-100) of the service's traffic its current or last rollout gives each "
        "track, as stored (all on stable once it ended).",
        healthy=False,
    ),
    _m(
        "yardarm_rollout_running",
        "gauge",
        ("rollout_service",),
        CONTROLLERS,
        "1 while a rollout of the service runs (progressing or paused), else 0.",
        healthy=False,
    ),
    _m(
        "yardarm_rollout_phase",
        "gauge",
        ("rollout_service", "phase"),
        CONTROLLERS,
        "1 for the phase of the service's current or last rollout, 0 for the others.",
        healthy=False,
    ),
    _m(
        "yardarm_rollout_webhook_deliveries_total",
        "counter",
        ("rollout_service", "outcome"),
        CONTROLLERS,
        "Webhook notifications by outcome: delivered, failed (after every attempt, or "
        "refused with a 4xx) or dropped (the queue was full).",
        healthy=False,
    ),
    _m(
        "yardarm_rollout_webhook_retries_total",
        "counter",
        ("rollout_service", "reason"),
        CONTROLLERS,
        "Webhook attempts retried, by why the last one failed (timeout, connect_error, "
        "server_error, rate_limited).",
        healthy=False,
    ),
)

BY_NAME: Final[dict[str, Metric]] = {metric.name: metric for metric in METRICS}
BY_SERIES: Final[dict[str, Metric]] = {
    series: metric for metric in METRICS for series in metric.series
}


def label_names(series: str) -> frozenset[str]:
    """The labels a stored series carries; KeyError for a series no service exposes."""
    return BY_SERIES[series].label_names(series)


# A light PromQL reader: enough to find the selectors and grouping clauses of the
# expressions the dashboards and rules write, not a parser of the whole language.

SERIES_LABELS: Final[dict[str, frozenset[str]]] = {
    series: metric.label_names(series) for series, metric in BY_SERIES.items()
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")
_RANGE = re.compile(r"\[[^\]]*\]")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
    | {"and", "or", "unless", "offset", "inf", "nan", "Inf", "NaN"}
)


@dataclass(frozen=True)
class Selector:
    """One vector selector: the series name and its (label, operator, value) matchers;
    the value keeps its quotes' content as written."""

    name: str
    matchers: tuple[tuple[str, str, str], ...]

    def values(self, label: str) -> list[str]:
        return [value for name, _, value in self.matchers if name == label]


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of `expr`, bare names (no braces) too."""
    found = [
        Selector(
            match.group(1),
            tuple((m.group(1), m.group(2), m.group(3)[1:-1]) for m in _MATCHER.finditer(body)),
        )
        for match in _SELECTOR.finditer(expr)
        for body in (match.group(2),)
    ]
    rest = _RANGE.sub(" ", _GROUPING.sub(" ", _SELECTOR.sub(" ", _STRING.sub('""', expr))))
    found.extend(
        Selector(name, ())
        for name in _IDENTIFIER.findall(rest)
        if name not in _KEYWORDS and not name.isdigit()
    )
    return found


def _argument(expr: str, start: int) -> str:
    """The parenthesised text opening at or after `start` (an aggregation's argument)."""
    opening = expr.find("(", start)
    depth = 0
    for index in range(opening, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[index], 0)
        if depth == 0:
            return expr[opening + 1 : index]
    return expr[opening + 1 :]


def reference_problems(expr: str, known: Mapping[str, frozenset[str]] = SERIES_LABELS) -> list[str]:
    """What in `expr` names a series or label that does not exist: a series missing
    from `known` (series -> its labels), a matcher on a label the series lacks, a
    `by`/`without` label a series inside that aggregation lacks, an `on`/`ignoring`/
    `group_*` label no series of the expression carries. Empty when all is known."""
    problems: list[str] = []
    found = selectors(expr)
    for selector in found:
        labels = known.get(selector.name)
        if labels is None:
            problems.append(f"unknown series {selector.name}")
            continue
        problems.extend(
            f"{selector.name} has no label {label}"
            for label, _, _ in selector.matchers
            if label not in labels and label != "__name__"
        )
    for clause in _GROUPING.finditer(expr):
        keyword, names = clause.group(1), [n.strip() for n in clause.group(2).split(",")]
        names = [n for n in names if n]
        if keyword in ("by", "without"):
            inner = [s for s in selectors(_argument(expr, clause.end())) if s.name in known]
            problems.extend(
                f"{keyword} ({label}): {s.name} has no label {label}"
                for label in names
                for s in inner
                if label not in known[s.name]
            )
        else:
            carried = set().union(*(known.get(s.name, frozenset()) for s in found))
            problems.extend(
                f"{keyword} ({label}): no series of the expression has it"
                for label in names
                if label not in carried
            )
    return problems
