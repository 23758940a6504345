"""Passive outlier detection: take a misbehaving endpoint out of rotation for a while.

Modelled on Envoy's outlier detection so its documentation applies:

- inline, on each response: `consecutive_5xx` server errors, or `consecutive_gateway_failure`
  gateway errors (502/503/504, or no response at all), eject the endpoint;
- every `interval_s` (`sweep`): endpoints whose success rate over the interval lies below
  mean - stdev_factor * stdev of their peers are ejected, provided enough endpoints saw
  enough requests for the statistics to mean something;
- an ejection lasts base_ejection_time_s * (times ejected), at most max_ejection_time_s, so
  a repeat offender stays out longer; the multiplier drops by one for every sweep that finds
  the endpoint in service, so an endpoint that recovered is forgiven over time;
- at most max_ejection_percent of the endpoints are ejected at once, but, as in Envoy, one
  endpoint may always be ejected however small the upstream, so a single bad replica among
  a few is never kept in rotation by the percentage rounding down to zero;
- an ejected endpoint that passes an active health check (one begun after the ejection)
  returns at once, as with Envoy's successful_active_health_check_uneject_host: a replica
  restarted after a crash is back in seconds, not after its full ejection time, and frees
  its ejection slot for the next replica to fail. Its multiplier stays, so a relapse is
  ejected for longer. An admin's ejection is a decision, not a verdict: only its time or
  the admin ends it.

State is keyed by Endpoint identity; time is passed in (`now`, monotonic seconds).
Endpoints join and leave with the routing document (`add`, `remove`); the ejection cap
follows their count, and one that leaves takes its ejection with it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from yardarm_kit.gateway_policy import OutlierConfig

from yardarm_gateway.endpoints import Endpoint

GATEWAY_ERRORS = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class OutlierEvent:
    """An endpoint left or rejoined the rotation.

    `reason` is one of a few fixed words (consecutive_5xx, consecutive_gateway_failure,
    success_rate, expired, active_health_check, or the admin's), so it can label a metric.
    `ejections` is the multiplier the ejection time was computed from; `until` is when an
    ejection ends.
    """

    endpoint: Endpoint
    action: Literal["eject", "uneject"]
    reason: str
    ejections: int
    until: float | None


class _Monitor:
    """What the detector knows about one endpoint."""

    __slots__ = (
        "consecutive_5xx",
        "consecutive_gateway_failure",
        "ejected_at",
        "ejected_until",
        "ejections",
        "manual",
        "reason",
        "requests",
        "successes",
        "total_ejections",
    )

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway_failure = 0
        self.requests = 0  # in the current interval
        self.successes = 0  # in the current interval
        self.ejections = 0  # the ejection-time multiplier; decays while in service
        self.total_ejections = 0
        self.ejected_at = 0.0
        self.ejected_until: float | None = None
        self.manual = False  # out by an admin's ejection, which no health check ends
        self.reason = ""


class OutlierDetector:
    """Ejects the outliers among one upstream's endpoints; the balancer skips ejected ones.

    `enabled=False` turns passive detection off (nothing is ejected automatically); an
    admin's `eject` still takes effect, since it is an explicit decision.
    """

    __slots__ = (
        "_config",
        "_ejected",
        "_max_ejected",
        "_monitors",
        "_multiplier_cap",
        "_next_expiry",
        "_on_event",
    )

    def __init__(
        self,
        config: OutlierConfig,
        endpoints: Sequence[Endpoint],
        on_event: Callable[[OutlierEvent], None] | None = None,
    ) -> None:
        self._config = config
        self._on_event = on_event
        self._monitors: dict[Endpoint, _Monitor] = {endpoint: _Monitor() for endpoint in endpoints}
        self._ejected: dict[Endpoint, _Monitor] = {}
        self._next_expiry = math.inf  # never after the earliest end of a current ejection
        self._max_ejected = 1
        self._resize()
        # Past this the ejection time is capped anyway; stopping the multiplier here (as
        # Envoy does) lets it decay back within a few intervals instead of dozens.
        self._multiplier_cap = math.ceil(config.max_ejection_time_s / config.base_ejection_time_s)

    @property
    def config(self) -> OutlierConfig:
        return self._config

    def add(self, endpoint: Endpoint) -> None:
        """Watch a new endpoint (or one back in the routing document) from a clean slate."""
        self._ejected.pop(endpoint, None)
        self._monitors[endpoint] = _Monitor()
        self._resize()

    def remove(self, endpoint: Endpoint) -> bool:
        """Forget an endpoint that left the routing document; True if it was ejected."""
        self._monitors.pop(endpoint, None)
        ejected = self._ejected.pop(endpoint, None) is not None
        self._resize()
        return ejected

    def _resize(self) -> None:
        self._max_ejected = max(
            1, math.floor(len(self._monitors) * self._config.max_ejection_percent / 100)
        )

    def record(self, endpoint: Endpoint, status: int | None, now: float) -> None:
        """One response from `endpoint`; status None means none came (connect failure, timeout)."""
        config = self._config
        monitor = self._monitors.get(endpoint)
        if monitor is None or not config.enabled:
            return
        monitor.requests += 1
        if status is not None and status < 500:
            monitor.successes += 1
            monitor.consecutive_5xx = 0
            monitor.consecutive_gateway_failure = 0
            return
        gateway_failure = status is None or status in GATEWAY_ERRORS
        if gateway_failure:
            monitor.consecutive_gateway_failure += 1
        else:
            monitor.consecutive_gateway_failure = 0
        monitor.consecutive_5xx += 1
        if (
            gateway_failure
            and config.consecutive_gateway_failure
            and monitor.consecutive_gateway_failure >= config.consecutive_gateway_failure
        ):
            self._outlier(endpoint, monitor, now, "consecutive_gateway_failure")
        elif config.consecutive_5xx and monitor.consecutive_5xx >= config.consecutive_5xx:
            self._outlier(endpoint, monitor, now, "consecutive_5xx")

    def is_ejected(self, endpoint: Endpoint, now: float) -> bool:
        """Whether `endpoint` is out of rotation now; an ejection whose time is over ends here."""
        monitor = self._monitors.get(endpoint)
        if monitor is None or monitor.ejected_until is None:
            return False
        if now < monitor.ejected_until:
            return True
        self._uneject(endpoint, monitor, "expired")
        return False

    def ejected(self, endpoint: Endpoint) -> bool:
        """Whether `endpoint` is out as of the last `expire` (or is_ejected, or sweep)."""
        monitor = self._monitors.get(endpoint)
        return monitor is not None and monitor.ejected_until is not None

    def held(self, endpoint: Endpoint) -> bool:
        """Whether an admin's ejection holds `endpoint` out (as of the last expiry)."""
        monitor = self._monitors.get(endpoint)
        return monitor is not None and monitor.manual

    def expire(self, now: float) -> None:
        """End every ejection whose time is over; O(1) while none is due."""
        if now < self._next_expiry:
            return
        due = [
            (endpoint, monitor)
            for endpoint, monitor in self._ejected.items()
            if monitor.ejected_until is not None and now >= monitor.ejected_until
        ]
        for endpoint, monitor in due:
            self._uneject(endpoint, monitor, "expired")
        self._next_expiry = min(
            (m.ejected_until for m in self._ejected.values() if m.ejected_until is not None),
            default=math.inf,
        )

    def health_check_passed(self, endpoint: Endpoint, probed_at: float, now: float) -> bool:
        """An active health check begun at `probed_at` passed and the endpoint is healthy.

        Ends the detector's ejection of `endpoint` at once when
        successful_active_health_check_uneject_host is on; True if it did. A check begun
        before the ejection saw the endpoint as it was before its errors, so it ends nothing.
        """
        monitor = self._monitors.get(endpoint)
        if (
            monitor is None
            or monitor.manual
            or not self._config.successful_active_health_check_uneject_host
            or not self.is_ejected(endpoint, now)
            or probed_at < monitor.ejected_at
        ):
            return False
        self._uneject(endpoint, monitor, "active_health_check")
        return True

    def sweep(self, now: float) -> None:
        """The per-interval pass: end expired ejections, decay multipliers, judge success rates."""
        for endpoint, monitor in self._monitors.items():
            if monitor.ejected_until is None:
                if monitor.ejections:
                    monitor.ejections -= 1
            elif now >= monitor.ejected_until:
                self._uneject(endpoint, monitor, "expired")
        if self._config.enabled:
            self._success_rate_ejections(now)
        for monitor in self._monitors.values():
            monitor.requests = 0
            monitor.successes = 0

    def eject(
        self, endpoint: Endpoint, now: float, duration_s: float | None = None, reason: str = "admin"
    ) -> bool:
        """Take `endpoint` out now, regardless of max_ejection_percent; False if already out.

        Without `duration_s` it counts as an ejection like any other (the multiplier grows
        and sets the time); with one, it is a hold for exactly that long.
        """
        monitor = self._monitor(endpoint)
        if duration_s is not None and not 0.0 < duration_s < math.inf:
            raise ValueError(
                f"ejection duration must be a positive number of seconds, not {duration_s}"
            )
        if self.is_ejected(endpoint, now):
            return False
        self._eject(endpoint, monitor, now, duration_s, reason, manual=True)
        return True

    def uneject(self, endpoint: Endpoint, now: float, reason: str = "admin") -> bool:
        """Return `endpoint` to rotation now; False if it was not ejected."""
        monitor = self._monitor(endpoint)
        if not self.is_ejected(endpoint, now):
            return False
        self._uneject(endpoint, monitor, reason)
        return True

    def snapshot(self, endpoint: Endpoint, now: float) -> dict[str, object]:
        """One endpoint's ejection state and counters, for the admin API (a clean slate
        for one no longer watched: a draining endpoint)."""
        monitor = self._monitors.get(endpoint) or _Monitor()
        ejected = self.is_ejected(endpoint, now)
        return {
            "url": endpoint.url,
            "ejected": ejected,
            "until": monitor.ejected_until,
            "reason": monitor.reason if ejected else None,
            "ejections": monitor.ejections,
            "total_ejections": monitor.total_ejections,
            "consecutive_5xx": monitor.consecutive_5xx,
            "consecutive_gateway_failure": monitor.consecutive_gateway_failure,
            "interval_requests": monitor.requests,
            "interval_successes": monitor.successes,
        }

    def _monitor(self, endpoint: Endpoint) -> _Monitor:
        monitor = self._monitors.get(endpoint)
        if monitor is None:
            raise ValueError(f"{endpoint!r} is not an endpoint of this upstream")
        return monitor

    def _outlier(self, endpoint: Endpoint, monitor: _Monitor, now: float, reason: str) -> None:
        # Start counting a new bout whether or not the ejection is allowed, as Envoy does,
        # so a capped-out endpoint is judged again after another full run of errors.
        monitor.consecutive_5xx = 0
        monitor.consecutive_gateway_failure = 0
        if not self.is_ejected(endpoint, now) and self._room_to_eject(now):
            self._eject(endpoint, monitor, now, None, reason)

    def _room_to_eject(self, now: float) -> bool:
        if len(self._ejected) < self._max_ejected:
            return True
        self.expire(now)  # some may have served their time without anyone asking since
        return len(self._ejected) < self._max_ejected

    def _success_rate_ejections(self, now: float) -> None:
        config = self._config
        rates = [
            (monitor.successes * 100.0 / monitor.requests, endpoint, monitor)
            for endpoint, monitor in self._monitors.items()
            if monitor.requests >= config.success_rate_request_volume
        ]
        if len(rates) < config.success_rate_minimum_hosts:
            return
        # statistics computes exactly, so equal rates give stdev 0 and nobody is ejected.
        values = [rate for rate, _, _ in rates]
        threshold = statistics.mean(values) - config.success_rate_stdev_factor * statistics.pstdev(
            values
        )
        rates.sort(key=lambda entry: entry[0])  # the worst first, should the cap bind
        for rate, endpoint, monitor in rates:
            if rate >= threshold:
                break
            if not self.is_ejected(endpoint, now) and self._room_to_eject(now):
                self._eject(endpoint, monitor, now, None, "success_rate")

    def _eject(
        self,
        endpoint: Endpoint,
        monitor: _Monitor,
        now: float,
        duration_s: float | None,
        reason: str,
        *,
        manual: bool = False,
    ) -> None:
        config = self._config
        if duration_s is None:
            monitor.ejections = min(monitor.ejections + 1, self._multiplier_cap)
            duration_s = min(
                config.base_ejection_time_s * monitor.ejections, config.max_ejection_time_s
            )
        monitor.total_ejections += 1
        monitor.ejected_at = now
        monitor.ejected_until = until = now + duration_s
        monitor.manual = manual
        monitor.reason = reason
        self._ejected[endpoint] = monitor
        self._next_expiry = min(self._next_expiry, until)
        if self._on_event is not None:
            self._on_event(OutlierEvent(endpoint, "eject", reason, monitor.ejections, until))

    def _uneject(self, endpoint: Endpoint, monitor: _Monitor, reason: str) -> None:
        monitor.ejected_until = None
        monitor.manual = False
        # Errors from before the ejection say nothing about the endpoint as it returns.
        monitor.consecutive_5xx = 0
        monitor.consecutive_gateway_failure = 0
        del self._ejected[endpoint]
        if self._on_event is not None:
            self._on_event(OutlierEvent(endpoint, "uneject", reason, monitor.ejections, None))
