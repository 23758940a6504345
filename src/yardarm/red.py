"""Live RED numbers (rate, errors, duration) per service, version and track: the data
behind `yardarm top`.

Two sources give the same rows. With the stack's Prometheus running, instant PromQL
queries over a window; without one, two scrapes of every instance's `/metrics` a window
apart, with the same arithmetic Prometheus does (counter increase over the window, and
`histogram_quantile`'s linear interpolation inside the bucket). Requests are the
services' HTTP server requests without probes and scrapes; messages are the consumers'
deliveries, so a queue consumer with no HTTP traffic still shows its work.
"""

from __future__ import annotations

import math
import ssl
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, str, str]  # service, version, track

REQUESTS = "http_server_request_duration_seconds"
MESSAGES = "yardarm_consumer_messages_total"
QUIET_ROUTES = ("/healthz", "/readyz", "/metrics")
FAILED_OUTCOMES = ("failed", "dead_lettered")
QUANTILES = (0.5, 0.99)


@dataclass
class RedRow:
    """One (service, version, track): rates per second, error ratios in [0, 1], latency
    quantiles in seconds (None without requests in the window)."""

    service: str
    version: str
    track: str
    instances: int = 0
    requests_per_s: float = 0.0
    error_ratio: float = 0.0
    p50_s: float | None = None
    p99_s: float | None = None
    messages_per_s: float = 0.0
    message_error_ratio: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RedView:
    """A snapshot: where it came from, over which window, one row per key."""

    source: str  # "prometheus" or "scrape"
    window_s: float
    rows: list[RedRow] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "window_s": self.window_s,
            "rows": [row.as_dict() for row in self.rows],
        }


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


# -- from Prometheus -----------------------------------------------------------------

_BY = "service, version, track"
_QUIET = "|".join(QUIET_ROUTES)


def promql(window: str) -> dict[str, str]:
    """The queries, by what they measure."""
    served = f'{REQUESTS}_count{{http_route!~"{_QUIET}"}}'
    failed = f'{REQUESTS}_count{{http_route!~"{_QUIET}",http_response_status_code=~"5.."}}'
    buckets = f'{REQUESTS}_bucket{{http_route!~"{_QUIET}"}}'
    bad = "|".join(FAILED_OUTCOMES)
    queries = {
        "requests": f"sum by ({_BY}) (rate({served}[{window}]))",
        "errors": f"sum by ({_BY}) (rate({failed}[{window}]))",
        "messages": f"sum by ({_BY}) (rate({MESSAGES}[{window}]))",
        "message_errors": f'sum by ({_BY}) (rate({MESSAGES}{{outcome=~"{bad}"}}[{window}]))',
        "instances": f"count by ({_BY}) (group by ({_BY}, instance) ({REQUESTS}_count))",
    }
    for q in QUANTILES:
        queries[f"p{q * 100:g}"] = (
            f"histogram_quantile({q}, sum by ({_BY}, le) (rate({buckets}[{window}])))"
        )
    return queries


def _query(client: httpx.Client, base: str, expr: str) -> dict[Key, float]:
    response = client.get(f"{base}/api/v1/query", params={"query": expr})
    response.raise_for_status()
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error')}")
    out: dict[Key, float] = {}
    for item in body["data"]["result"]:
        labels = item["metric"]
        key = (labels.get("service", ""), labels.get("version", ""), labels.get("track", ""))
        out[key] = float(item["value"][1])
    return out


def from_prometheus(base: str, window_s: float, timeout_s: float = 5.0) -> RedView:
    """The rows from the stack's Prometheus (rates over the last `window_s`)."""
    window = f"{max(1, round(window_s))}s"
    with httpx.Client(timeout=timeout_s) as client:
        results = {name: _query(client, base, expr) for name, expr in promql(window).items()}
    keys = set().union(*(r.keys() for r in results.values()))
    rows = []
    for key in sorted(keys):
        requests = results["requests"].get(key, 0.0)
        messages = results["messages"].get(key, 0.0)
        rows.append(
            RedRow(
                *key,
                instances=int(results["instances"].get(key, 0)),
                requests_per_s=requests,
                error_ratio=_ratio(results["errors"].get(key, 0.0), requests),
                p50_s=_finite(results["p50"].get(key)),
                p99_s=_finite(results["p99"].get(key)),
                messages_per_s=messages,
                message_error_ratio=_ratio(results["message_errors"].get(key, 0.0), messages),
            )
        )
    return RedView("prometheus", window_s, rows)


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) or math.isinf(value) else value


# -- from the instances' /metrics ----------------------------------------------------


@dataclass
class _Sample:
    """What one scrape of all instances says, summed per key."""

    at: float
    requests: dict[Key, float] = field(default_factory=lambda: defaultdict(float))
    errors: dict[Key, float] = field(default_factory=lambda: defaultdict(float))
    buckets: dict[Key, dict[float, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    messages: dict[Key, float] = field(default_factory=lambda: defaultdict(float))
    message_errors: dict[Key, float] = field(default_factory=lambda: defaultdict(float))
    instances: dict[Key, set[str]] = field(default_factory=lambda: defaultdict(set))


def _key(labels: Mapping[str, str]) -> Key:
    return labels.get("service", ""), labels.get("version", ""), labels.get("track", "")


def parse_exposition(text: str, sample: _Sample) -> None:
    """Add one instance's exposition (Prometheus text format) to `sample`."""
    for family in text_string_to_metric_families(text):
        if family.name == REQUESTS:
            for s in family.samples:
                labels = s.labels
                if labels.get("http_route") in QUIET_ROUTES:
                    continue
                key = _key(labels)
                sample.instances[key].add(labels.get("instance", ""))
                if s.name == f"{REQUESTS}_count":
                    sample.requests[key] += s.value
                    if labels.get("http_response_status_code", "").startswith("5"):
                        sample.errors[key] += s.value
                elif s.name == f"{REQUESTS}_bucket":
                    sample.buckets[key][float(labels["le"])] += s.value
        elif family.name == MESSAGES.removesuffix("_total"):
            for s in family.samples:
                if s.name != MESSAGES:
                    continue
                key = _key(s.labels)
                sample.instances[key].add(s.labels.get("instance", ""))
                sample.messages[key] += s.value
                if s.labels.get("outcome") in FAILED_OUTCOMES:
                    sample.message_errors[key] += s.value


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' `histogram_quantile` over cumulative bucket counts (upper bound ->
    count): linear interpolation inside the bucket the rank falls in; the +Inf bucket
    answers with the highest finite bound."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def _increase(later: Mapping[Key, float], earlier: Mapping[Key, float], key: Key) -> float:
    """A counter's increase; a reset (an instance restarted) counts from zero."""
    now, before = later.get(key, 0.0), earlier.get(key, 0.0)
    return now - before if now >= before else now


def rows_between(earlier: _Sample, later: _Sample) -> RedView:
    """The rows over the time between two samples."""
    span = max(later.at - earlier.at, 1e-9)
    rows = []
    for key in sorted(later.instances):
        requests = _increase(later.requests, earlier.requests, key)
        messages = _increase(later.messages, earlier.messages, key)
        deltas = {
            le: count - earlier.buckets.get(key, {}).get(le, 0.0)
            for le, count in later.buckets.get(key, {}).items()
        }
        if any(d < 0 for d in deltas.values()):
            deltas = dict(later.buckets.get(key, {}))
        rows.append(
            RedRow(
                *key,
                instances=len(later.instances[key]),
                requests_per_s=requests / span,
                error_ratio=_ratio(_increase(later.errors, earlier.errors, key), requests),
                p50_s=histogram_quantile(0.5, deltas),
                p99_s=histogram_quantile(0.99, deltas),
                messages_per_s=messages / span,
                message_error_ratio=_ratio(
                    _increase(later.message_errors, earlier.message_errors, key), messages
                ),
            )
        )
    return RedView("scrape", round(span, 3), rows)


class Scraper:
    """Scrapes every instance's `/metrics`; an instance that does not answer is skipped
    (it is restarting, or gone since the list was made)."""

    def __init__(
        self, urls: Sequence[str], verify: ssl.SSLContext | bool = True, timeout_s: float = 2.0
    ) -> None:
        self._urls = list(urls)
        self._client = httpx.Client(verify=verify, timeout=timeout_s)

    def sample(self) -> _Sample:
        sample = _Sample(at=time.monotonic())
        for url in self._urls:
            try:
                response = self._client.get(f"{url}/metrics")
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                parse_exposition(response.text, sample)
        return sample

    def close(self) -> None:
        self._client.close()


def from_scrapes(
    urls: Iterable[str], window_s: float, verify: ssl.SSLContext | bool = True
) -> RedView:
    """Two scrapes `window_s` apart."""
    scraper = Scraper(list(urls), verify)
    try:
        first = scraper.sample()
        time.sleep(window_s)
        return rows_between(first, scraper.sample())
    finally:
        scraper.close()
