"""What a run measured: a bounded-memory latency histogram and the outcome counters.

The histogram keeps counts in logarithmic buckets, each 2% wider than the last, and
reports a bucket by its geometric middle: any reported percentile is within 1% of the
true value (sqrt(1.02) - 1 < 0.01), and memory is bounded by the range, not the count
(1 microsecond to an hour is about 1,100 buckets). Min, max and mean are exact.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from yardarm.load.mix import KINDS, Kind

GROWTH = 1.02
SMALLEST_S = 1e-6
_LOG_GROWTH = math.log(GROWTH)


class LatencyHistogram:
    """Latencies in seconds, percentiles within 1% relative error."""

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.total_s = 0.0
        self.min_s = math.inf
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        """Add one latency (negative values, from clock skew, count as 0)."""
        seconds = max(seconds, 0.0)
        index = _bucket(seconds)
        self._buckets[index] = self._buckets.get(index, 0) + 1
        self.count += 1
        self.total_s += seconds
        self.min_s = min(self.min_s, seconds)
        self.max_s = max(self.max_s, seconds)

    @property
    def buckets(self) -> int:
        """How many buckets hold samples (the memory used)."""
        return len(self._buckets)

    def mean(self) -> float | None:
        """The exact mean, None without samples."""
        return self.total_s / self.count if self.count else None

    def percentile(self, q: float) -> float | None:
        """The nearest-rank q-quantile (0 < q <= 1), None without samples."""
        if not 0 < q <= 1:
            raise ValueError(f"quantile must be in (0, 1], not {q}")
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                middle = SMALLEST_S * math.pow(GROWTH, index + 0.5)
                return min(max(middle, self.min_s), self.max_s)
        return self.max_s


def _bucket(seconds: float) -> int:
    if seconds <= SMALLEST_S:
        return 0
    return math.floor(math.log(seconds / SMALLEST_S) / _LOG_GROWTH)


def status_class(status: int) -> str:
    """ok (2xx/3xx), client_error (4xx) or server_error (anything else with a status)."""
    if 200 <= status < 400:
        return "ok"
    if 400 <= status < 500:
        return "client_error"
    return "server_error"


@dataclass
class Outcomes:
    """Counts by outcome class plus a latency histogram, for the run or for one kind."""

    requests: int = 0
    ok: int = 0
    client_errors: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def failures(self) -> int:
        """Everything that was not 2xx/3xx."""
        return self.client_errors + self.server_errors + self.transport_errors

    def add(self, status: int | None, latency_s: float) -> None:
        """Count one finished request (status None: no HTTP answer)."""
        self.requests += 1
        self.latency.record(latency_s)
        if status is None:
            self.transport_errors += 1
            return
        cls = status_class(status)
        if cls == "ok":
            self.ok += 1
        elif cls == "client_error":
            self.client_errors += 1
        else:
            self.server_errors += 1


class Recorder:
    """Every finished request of a run, overall and per kind."""

    def __init__(self) -> None:
        self.total = Outcomes()
        self.kinds: dict[Kind, Outcomes] = {kind: Outcomes() for kind in KINDS}
        self.status_codes: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()

    def record(self, kind: Kind, status: int | None, error: str | None, latency_s: float) -> None:
        """One request: its HTTP status, or the transport error that replaced it."""
        self.total.add(status, latency_s)
        self.kinds[kind].add(status, latency_s)
        if status is not None:
            self.status_codes[status] += 1
        else:
            self.errors[error or "unknown"] += 1
