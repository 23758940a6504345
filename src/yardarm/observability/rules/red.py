"""RED recording rules per service, version and track: what dashboards, rollouts and
`yardarm top` read.

Rate, errors and duration come from the same events as each service's SLIs (the
SLO table in `slo.py`): an HTTP service's requests without probes and scrapes, the
fulfillment consumer's deliveries and batches. So "requests" of fulfillment are
deliveries, and its latency is the time to settle a batch.
"""

from __future__ import annotations

from yardarm.observability.rules.model import Record
from yardarm.observability.rules.promql import by
from yardarm.observability.rules.slo import SLI, SLOS

RED_LABELS = ("environment", "service", "version", "track")
WINDOW = "1m"
LEVEL = "service_version_track"
REQUESTS = f"{LEVEL}:requests:rate{WINDOW}"
ERRORS = f"{LEVEL}:request_errors:ratio_rate{WINDOW}"
QUANTILES = (("p50", "0.5"), ("p99", "0.99"))


def latency_record(name: str) -> str:
    return f"{LEVEL}:request_duration_seconds:{name}_rate{WINDOW}"


def _quantile(latency: SLI, q: str) -> str:
    assert latency.good is not None
    buckets = latency.good.without("le")
    return (
        f"histogram_quantile(\n  {q},\n"
        f"  sum {by((*RED_LABELS, 'le'))} (rate({buckets}[{WINDOW}]))\n)"
    )


def red_records() -> list[Record]:
    records: list[Record] = []
    for slo in SLOS:
        availability, latency = slo.slis
        rate = f"sum {by(RED_LABELS)} (rate({availability.total}[{WINDOW}]))"
        labels = (("service", slo.service),)  # tells the rules apart (promtool's lint)
        records.append(Record(REQUESTS, rate, labels))
        records.append(Record(ERRORS, availability.error_ratio(WINDOW, RED_LABELS), labels))
        for name, q in QUANTILES:
            records.append(Record(latency_record(name), _quantile(latency, q), labels))
    return records
