"""The service level objectives, and the rules derived from them.

Each service has two SLIs, both "bad events / all events" ratios:

| service     | availability (good events)              | latency (fast enough)          |
|-------------|-----------------------------------------|--------------------------------|
| gateway     | 99.5% of requests answered without 5xx  | 99% within 500 ms              |
| orders      | 99.5% of API requests without 5xx       | 99% within 500 ms              |
| datastore   | 99.9% of API requests without 5xx       | 99% within 250 ms              |
| fulfillment | 99.5% of deliveries not failed or       | 99% of batches settled within  |
|             | dead-lettered                           | 500 ms                         |

Why these numbers:
- The gateway's objective is the user's. It is no stricter than orders' behind it,
  but no looser either: it retries idempotent requests on another instance, which
  hides most single-instance failures of orders.
- Orders accepts an order in one request (prices read from the datastore, then the
  order, its saga and outbox rows in one Postgres transaction); the benchmark's p99 for
  that POST is about 250 ms at low concurrency, so 500 ms leaves room for a loaded
  machine. The gateway's hop costs about a millisecond, so it gets the same threshold.
- The datastore sits under orders and the gateway's routing: a dependency must do
  better than its dependents, hence 99.9%, and a threshold well under orders' (its
  benchmark p99 for writes is 63 ms at concurrency 16, 147 ms at 64).
- Fulfillment is a queue consumer: its events are deliveries. A failed delivery is
  redelivered later, so it is not lost, but it is work done twice and a saga waiting;
  a batch (up to 64 messages in one transaction) settling in over 500 ms means the
  database or a payment provider is slow.

Latency thresholds are histogram bucket boundaries (`yardarm_kit.metrics`), written
as both Python's client and Go's print them (`0.5`, never `1.0`), so the `le` matcher
works whatever client or Prometheus version stores them.

The error budget period is 30 days. The alerts are the Google SRE workbook's
multiwindow, multi-burn-rate alerts (chapter 5, "Alerting on SLOs"): a burn rate is
the error ratio divided by the budget (1 - objective); each alert needs the burn over a
long window (enough budget spent to matter) and over a short one (still burning now,
so the alert resets soon after the problem ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from yardarm.observability.rules.model import Alert, Record, Severity
from yardarm.observability.rules.promql import Selector, sum_rate

BUDGET_PERIOD_HOURS = 30 * 24
WINDOWS = ("5m", "30m", "1h", "6h", "3d")
# A 3d rate reads every sample of three days: the long windows are evaluated less often
# than a local Prometheus' 1 s interval (they move slowly anyway).
LONG_WINDOWS = ("6h", "3d")
LONG_WINDOW_INTERVAL = "30s"
SLI_LABELS = ("environment", "service")
# The kit's own endpoints (`yardarm_kit.service.OPERATIONAL_PATHS`): probes and
# scrapes, not the service's users; /readyz answers 503 while an instance drains.
OPERATIONAL_ROUTES = ("/healthz", "/readyz", "/metrics", "/openapi.json")

SliKind = Literal["availability", "latency"]


def record_name(window: str) -> str:
    """The error ratio of an SLI over `window`, per service (label `slo` says which)."""
    return f"service:slo_errors:ratio_rate{window}"


def _hours(window: str) -> float:
    units = {"m": 1 / 60, "h": 1.0, "d": 24.0}
    return float(window[:-1]) * units[window[-1]]


@dataclass(frozen=True)
class BurnAlert:
    """One row of the workbook's table: alert when the burn rate exceeds `factor` over
    both windows."""

    long: str
    short: str
    factor: float
    severity: Severity
    for_: str

    @property
    def budget_share(self) -> float:
        """The share of the period's budget such a burn spends over the long window."""
        return self.factor * _hours(self.long) / BUDGET_PERIOD_HOURS


# 2% of the budget in an hour and 5% in six hours page; 10% in three days is a ticket.
# `for` only filters one-evaluation blips, scaled to the window (the short window
# already demands that the burn is still going on).
BURN_ALERTS = (
    BurnAlert("1h", "5m", 14.4, "page", "2m"),
    BurnAlert("6h", "30m", 6.0, "page", "15m"),
    BurnAlert("3d", "6h", 1.0, "ticket", "1h"),
)


def _number(value: float) -> str:
    return f"{round(value, 10):g}"


@dataclass(frozen=True)
class SLI:
    """One SLI of a service: its events, which of them are bad (availability) or good
    (latency), the objective and, for latency, the threshold."""

    service: str
    kind: SliKind
    objective: float  # e.g. 0.995
    total: Selector
    bad: Selector | None = None
    good: Selector | None = None
    threshold_s: float | None = None
    bad_events: str = ""  # what a bad event is, for the alert text

    @property
    def budget(self) -> float:
        return round(1.0 - self.objective, 10)

    @property
    def objective_text(self) -> str:
        return _number(self.objective * 100) + "%"

    def error_ratio(self, window: str, labels: tuple[str, ...]) -> str:
        """The share of bad events over `window`, summed by `labels`. 0 (not nothing)
        when there were events but no bad ones: a counter of bad events exists only
        from its first increment."""
        total = sum_rate(self.total, window, labels)
        if self.bad is not None:
            bad = sum_rate(self.bad, window, labels)
            return f"(\n  {bad}\n  or\n  {total} * 0\n)\n/\n{total}"
        assert self.good is not None
        good = sum_rate(self.good, window, labels)
        return f"1 - (\n  {good}\n  /\n  {total}\n)"

    @property
    def rule_labels(self) -> tuple[tuple[str, str], ...]:
        """`service` repeats the value the sum keeps: it tells the rules apart (promtool
        lints rules with one name and the same labels as duplicates)."""
        return (("service", self.service), ("slo", self.kind))

    def records(self) -> list[Record]:
        return [
            Record(record_name(w), self.error_ratio(w, SLI_LABELS), self.rule_labels)
            for w in WINDOWS
        ]

    def alert_name(self) -> str:
        return "AvailabilityBudgetBurn" if self.kind == "availability" else "LatencyBudgetBurn"

    def alert(self, burn: BurnAlert) -> Alert:
        budget = _number(self.budget)
        factor = _number(burn.factor)

        def ratio(window: str) -> str:
            sel = f'{record_name(window)}{{service="{self.service}", slo="{self.kind}"}}'
            return f"{sel} / {budget} > {factor}"

        share = _number(burn.budget_share * 100)
        return Alert(
            alert=self.alert_name(),
            expr=f"{ratio(burn.long)}\nand\n{ratio(burn.short)}",
            severity=burn.severity,
            for_=burn.for_,
            labels=(*self.rule_labels, ("long", burn.long), ("short", burn.short)),
            value_format="%.1f",
            summary=(
                f"{self.service} {self.kind}: error budget burning {{value}}x "
                f"over {burn.long} (and {burn.short})"
            ),
            description=(
                f"In {{environment}}, {self.bad_events} came at {{value}} times the rate "
                f"the {self.service} {self.kind} objective ({self.objective_text}) allows "
                f"over the last {burn.long}, and still over the last {burn.short}. A burn "
                f"of {factor}x spends {share}% of the 30-day error budget in {burn.long}."
            ),
        )

    def alerts(self) -> list[Alert]:
        return [self.alert(burn) for burn in BURN_ALERTS]


@dataclass(frozen=True)
class ServiceSLO:
    service: str
    availability: SLI
    latency: SLI

    @property
    def slis(self) -> tuple[SLI, SLI]:
        return (self.availability, self.latency)


def le_text(threshold_s: float) -> str:
    """The `le` label of a bucket boundary as both Python's and Go's clients print it."""
    text = repr(threshold_s)
    if text.endswith(".0"):
        raise ValueError(
            f"{threshold_s}: whole seconds print as {text} in Python, but "
            f"{text[:-2]} in Go; pick a fractional bucket boundary"
        )
    return text


def _http_slo(service: str, objective: float, threshold_s: float, what: str) -> ServiceSLO:
    """An HTTP service's SLIs from the kit's server histogram, probes and scrapes left out."""
    family = "http_server_request_duration_seconds"
    requests = Selector(f"{family}_count").where("service", "=", service)
    requests = requests.where(
        "http_route", "!~", "|".join(r.replace(".", "\\.") for r in OPERATIONAL_ROUTES)
    )
    return ServiceSLO(
        service,
        SLI(
            service=service,
            kind="availability",
            objective=objective,
            total=requests,
            bad=requests.where("http_response_status_code", "=~", "5.."),
            bad_events=f"{what} answered with a 5xx",
        ),
        SLI(
            service=service,
            kind="latency",
            objective=0.99,
            total=requests,
            good=requests.renamed(f"{family}_bucket").where("le", "=", le_text(threshold_s)),
            threshold_s=threshold_s,
            bad_events=f"{what} slower than {threshold_s * 1000:g} ms",
        ),
    )


def _consumer_slo(service: str, objective: float, threshold_s: float) -> ServiceSLO:
    """A queue consumer's SLIs: deliveries by verdict, and batch durations."""
    deliveries = Selector("yardarm_consumer_messages_total").where("service", "=", service)
    batches = Selector("yardarm_consumer_batch_duration_seconds_count").where(
        "service", "=", service
    )
    return ServiceSLO(
        service,
        SLI(
            service=service,
            kind="availability",
            objective=objective,
            total=deliveries,
            bad=deliveries.where("outcome", "=~", "failed|dead_lettered"),
            bad_events="deliveries that failed or were dead-lettered",
        ),
        SLI(
            service=service,
            kind="latency",
            objective=0.99,
            total=batches,
            good=batches.renamed("yardarm_consumer_batch_duration_seconds_bucket").where(
                "le", "=", le_text(threshold_s)
            ),
            threshold_s=threshold_s,
            bad_events=f"batches taking over {threshold_s * 1000:g} ms to settle",
        ),
    )


SLOS: tuple[ServiceSLO, ...] = (
    _http_slo("gateway", 0.995, 0.5, "requests"),
    _http_slo("orders", 0.995, 0.5, "orders API requests"),
    _http_slo("datastore", 0.999, 0.25, "datastore API requests"),
    _consumer_slo("fulfillment", 0.995, 0.5),
)


def sli_records(*, long: bool) -> list[Record]:
    """The error ratios over the short windows, or (`long`) over 6h and 3d."""
    return [
        record
        for slo in SLOS
        for sli in slo.slis
        for record in sli.records()
        if (record.record in {record_name(w) for w in LONG_WINDOWS}) == long
    ]


def burn_alerts() -> list[Alert]:
    return [alert for slo in SLOS for sli in slo.slis for alert in sli.alerts()]
