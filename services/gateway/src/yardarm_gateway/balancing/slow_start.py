"""Slow start: the ramp that keeps a newly added endpoint from taking its full share at once."""

from __future__ import annotations

import math
from collections.abc import Sequence

from yardarm_kit.gateway_policy import BalancerConfig

from yardarm_gateway.endpoints import Endpoint


class SlowStart:
    """Envoy's slow start: weight x max(min%, (age / window) ** (1 / aggression)).

    Only shares matter, so policies use `relative`: an endpoint's factor over that of
    the longest-present endpoint. Endpoints that all joined together (a gateway start)
    therefore do not ramp at all, and `until`, the loop time after which nothing ramps,
    lets the policies skip all of this with one comparison per pick.
    """

    __slots__ = ("_added", "_eldest", "_inverse_aggression", "_window", "floor", "until")

    def __init__(self, config: BalancerConfig, endpoints: Sequence[Endpoint]) -> None:
        self._window = config.slow_start_window_s
        self.floor = config.slow_start_min_weight_percent / 100.0
        self._inverse_aggression = 1.0 / config.slow_start_aggression
        self._added = [endpoint.added_at for endpoint in endpoints]
        self._eldest = min(self._added, default=0.0)
        staggered = self._window > 0 and max(self._added, default=0.0) > self._eldest
        self.until = max(self._added) + self._window if staggered else -math.inf

    def factor(self, added_at: float, now: float) -> float:
        age = now - added_at
        if age >= self._window:
            return 1.0
        if age <= 0:
            return self.floor
        return max(self.floor, math.pow(age / self._window, self._inverse_aggression))

    def relative(self, index: int, now: float) -> float:
        return self.factor(self._added[index], now) / self.factor(self._eldest, now)


NO_RAMP = SlowStart(BalancerConfig(), ())
