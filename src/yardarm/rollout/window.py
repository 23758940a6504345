"""What one release track did over one analysis window: the judge's only input.

The metrics source (`yardarm.rollout.metrics_source`) fills these from Prometheus or
from direct scrapes; the judge (`yardarm.rollout.judge`) never reads metrics itself, so
it can be replayed over recorded or seeded windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrackWindow:
    """One track's traffic over a window, as the gateway served it.

    `requests` and `errors` (5xx answers) count what users of the track's routes got.
    `latency_points` are latency quantiles in seconds, one per (instance, sub-window,
    quantile) — the points of series Kayenta compares, not raw requests, so one slow
    instance or one slow moment weighs as much as it lasted. `weight` is the percentage of
    the routes' traffic the split gives the track; `share` is the percentage it received.
    `unavailable` names every way the gateway could be hiding the track's endpoints from
    traffic (ejected, failing health checks, circuit open), empty when none.
    `route_requests` counts every track's requests on the same routes over the window (0
    when unknown): it tells a starved track from an idle route even when the baseline
    is starved too.
    """

    track: str
    requests: int
    errors: int
    latency_points: tuple[float, ...] = ()
    weight: float = 0.0
    share: float = 0.0
    unavailable: tuple[str, ...] = field(default_factory=tuple)
    route_requests: int = 0

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0
