"""The candidate sampling that least request and peak EWMA share; they differ in cost."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence

from yardarm_kit.gateway_policy import BalancerConfig

from yardarm_gateway.balancing.contract import Available
from yardarm_gateway.balancing.slow_start import SlowStart
from yardarm_gateway.endpoints import Endpoint


class PowerOfChoices(ABC):
    """Shared sampling for the P2C policies: choice_count distinct available endpoints.

    Candidates come from a partial Fisher-Yates shuffle of a reusable index array, so
    they are distinct and uniform among the available ones, unavailable ones are
    skipped without retry loops, and nothing is allocated per pick. During slow start
    a ramping endpoint enters the comparison only with its relative factor as probability.
    """

    __slots__ = ("_choices", "_endpoints", "_order", "_ramp", "_random", "_weights")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        config: BalancerConfig,
        rng: random.Random,
        ramp: SlowStart,
    ) -> None:
        self._endpoints = tuple(endpoints)
        self._weights = [float(endpoint.weight) for endpoint in self._endpoints]
        self._order = list(range(len(self._endpoints)))
        self._choices = config.choice_count
        self._random = rng.random
        self._ramp = ramp

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    @abstractmethod
    def _cost(self, index: int, endpoint: Endpoint, now: float) -> float:
        """Lower is better; only the candidates' costs are ever compared."""

    def _choose(self, available: Available, now: float) -> Endpoint | None:
        endpoints = self._endpoints
        order = self._order
        count = len(order)
        draw = self._random
        ramping = now < self._ramp.until
        best: Endpoint | None = None
        best_cost = 0.0
        found = 0
        held_back: Endpoint | None = None
        for slot in range(count):
            swap = slot + int(draw() * (count - slot))
            index = order[swap]
            order[swap] = order[slot]
            order[slot] = index
            endpoint = endpoints[index]
            if not available(endpoint):
                continue
            if ramping and draw() >= self._ramp.relative(index, now):
                if held_back is None:
                    held_back = endpoint
                continue
            cost = self._cost(index, endpoint, now)
            if best is None or cost < best_cost:
                best, best_cost = endpoint, cost
            found += 1
            if found == self._choices:
                break
        return best if best is not None else held_back
