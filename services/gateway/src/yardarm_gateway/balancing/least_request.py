"""Least request: send the next request where the fewest are in flight, by weight."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence

from yardarm_kit.gateway_policy import BalancerConfig

from yardarm_gateway.balancing.contract import Available
from yardarm_gateway.balancing.power_of_choices import PowerOfChoices
from yardarm_gateway.balancing.slow_start import NO_RAMP, SlowStart
from yardarm_gateway.endpoints import Endpoint


class LeastRequest(PowerOfChoices):
    """Envoy's least request: prefer endpoints with fewer requests in flight.

    Equal weights: power of N choices, the candidate with the lowest `active` wins, so
    the most loaded endpoint never gets a new request until it drains. Unequal weights,
    or an endpoint in slow start: Envoy's weighted mode, an earliest-deadline-first
    schedule in which the picked endpoint's next deadline is 1 / (weight x ramp /
    (active + 1) ** active_request_bias), O(log n) per pick. An endpoint that was
    unavailable rejoins at the current virtual time, so it gets no burst of catch-up
    picks when it returns.
    """

    __slots__ = ("_bias", "_equal", "_heap", "_sequence", "_virtual_time")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        config: BalancerConfig,
        rng: random.Random,
        ramp: SlowStart = NO_RAMP,
    ) -> None:
        super().__init__(endpoints, config, rng, ramp)
        self._bias = config.active_request_bias
        self._equal = len(set(self._weights)) <= 1
        self._heap: list[tuple[float, int, int]] | None = None
        self._sequence = 0
        self._virtual_time = 0.0

    def pick(self, available: Available, key: bytes | None, now: float) -> Endpoint | None:
        if self._equal and now >= self._ramp.until:
            return self._choose(available, now)
        return self._pick_weighted(available, now)

    def observe(self, endpoint: Endpoint, latency_s: float, now: float) -> None:
        return None

    def _cost(self, index: int, endpoint: Endpoint, now: float) -> float:
        return float(endpoint.active)

    def _dynamic_weight(self, index: int, endpoint: Endpoint, now: float) -> float:
        weight = self._weights[index]
        if now < self._ramp.until:
            weight *= self._ramp.relative(index, now)
        load = max(endpoint.active, 0) + 1
        if self._bias == 1.0:
            return weight / load
        if self._bias == 0.0:
            return weight
        return weight / math.pow(load, self._bias)

    def _pick_weighted(self, available: Available, now: float) -> Endpoint | None:
        heap = self._heap
        if heap is None:
            heap = [
                (1.0 / self._dynamic_weight(index, endpoint, now), index, index)
                for index, endpoint in enumerate(self._endpoints)
            ]
            heapq.heapify(heap)
            self._heap = heap
            self._sequence = len(heap)
        skipped: list[tuple[float, int, int]] | None = None
        chosen: Endpoint | None = None
        while heap:
            deadline, _, index = heap[0]
            endpoint = self._endpoints[index]
            if available(endpoint):
                if deadline > self._virtual_time:
                    self._virtual_time = deadline
                self._sequence += 1
                next_deadline = self._virtual_time + 1.0 / self._dynamic_weight(
                    index, endpoint, now
                )
                heapq.heapreplace(heap, (next_deadline, self._sequence, index))
                chosen = endpoint
                break
            if skipped is None:
                skipped = []
            skipped.append(heapq.heappop(heap))
        if skipped:
            for entry in skipped:
                heapq.heappush(heap, entry)
        return chosen
