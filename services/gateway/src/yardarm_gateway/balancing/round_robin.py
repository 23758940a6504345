"""Smooth weighted round robin, precomputed so a pick is a step along a fixed sequence."""

from __future__ import annotations

import math
from collections.abc import Sequence

from yardarm_gateway.balancing.contract import Available
from yardarm_gateway.balancing.slow_start import NO_RAMP, SlowStart
from yardarm_gateway.endpoints import Endpoint

# Smooth round robin precomputes one period of its sequence; this caps the work
# (period length x endpoints) so building a balancer stays in the milliseconds.
_SCHEDULE_BUDGET = 1 << 18


class RoundRobin:
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a.

    The sequence repeats every sum(weights) picks, so one period is computed up front
    and `pick` walks it: O(1), deterministic, and over N*k picks with equal weights each
    endpoint gets exactly k. An unavailable endpoint's turns are skipped, as nginx
    skips a down peer, and the others keep their order. An endpoint in slow start
    keeps a fraction of its turns (a credit of its relative factor per turn, spent 1 at
    a time), which scales its share by exactly that factor without randomness.
    """

    __slots__ = (
        "_credit",
        "_endpoints",
        "_generation",
        "_max_steps",
        "_position",
        "_ramp",
        "_schedule",
        "_stamps",
    )

    def __init__(self, endpoints: Sequence[Endpoint], ramp: SlowStart = NO_RAMP) -> None:
        self._endpoints = tuple(endpoints)
        self._schedule = _smooth_schedule([endpoint.weight for endpoint in self._endpoints])
        self._position = 0
        self._ramp = ramp
        self._credit = [0.0] * len(self._endpoints)
        self._stamps = [0] * len(self._endpoints)
        self._generation = 0
        # A ramping endpoint earns at least min% of a turn per visit, so this many
        # steps always reach an admitted endpoint if any is available.
        rounds = math.ceil(1.0 / ramp.floor) + 1 if ramp.until > -math.inf else 1
        self._max_steps = len(self._schedule) * rounds

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    def pick(self, available: Available, key: bytes | None, now: float) -> Endpoint | None:
        schedule = self._schedule
        length = len(schedule)
        endpoints = self._endpoints
        position = self._position
        ramping = now < self._ramp.until
        generation = 0
        unavailable = 0
        for _ in range(self._max_steps):
            index = schedule[position]
            position += 1
            if position == length:
                position = 0
            endpoint = endpoints[index]
            if not available(endpoint):
                if generation == 0:
                    self._generation += 1
                    generation = self._generation
                if self._stamps[index] != generation:
                    self._stamps[index] = generation
                    unavailable += 1
                    if unavailable == len(endpoints):
                        break
                continue
            if ramping and not self._admit(index, now):
                continue
            self._position = position
            return endpoint
        self._position = position
        return None

    def observe(self, endpoint: Endpoint, latency_s: float, now: float) -> None:
        return None

    def _admit(self, index: int, now: float) -> bool:
        factor = self._ramp.relative(index, now)
        if factor >= 1.0:
            return True
        credit = self._credit[index] + factor
        if credit >= 1.0:
            self._credit[index] = credit - 1.0
            return True
        self._credit[index] = credit
        return False


def _smooth_schedule(weights: Sequence[int]) -> list[int]:
    """One period of nginx's smooth weighted round robin, as endpoint indexes.

    Each step adds every weight to its endpoint's current value, picks the highest
    (the first on a tie, as nginx) and takes the total off it. Weights are divided by
    their gcd first; if the period is still too long to simulate cheaply they are
    scaled down proportionally (keeping at least 1), which shifts shares by at most
    a rounding step of the scaled weights.
    """
    count = len(weights)
    if count == 0:
        return []
    divisor = math.gcd(*weights)
    reduced = [weight // divisor for weight in weights]
    total = sum(reduced)
    if total == count:
        return list(range(count))
    if total * count > _SCHEDULE_BUDGET:
        scale = _SCHEDULE_BUDGET / (total * count)
        reduced = [max(1, round(weight * scale)) for weight in reduced]
        divisor = math.gcd(*reduced)
        reduced = [weight // divisor for weight in reduced]
        total = sum(reduced)
    current = [0] * count
    schedule = [0] * total
    for step in range(total):
        best = 0
        best_value = current[0] + reduced[0]
        current[0] = best_value
        for index in range(1, count):
            value = current[index] + reduced[index]
            current[index] = value
            if value > best_value:
                best, best_value = index, value
        current[best] = best_value - total
        schedule[step] = best
    return schedule
