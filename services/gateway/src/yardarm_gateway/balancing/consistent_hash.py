"""Consistent hashing: a request key keeps reaching the same endpoint across replicas."""

from __future__ import annotations

import math
from collections.abc import Sequence
from hashlib import blake2b

from yardarm_gateway.balancing.contract import Available
from yardarm_gateway.balancing.round_robin import RoundRobin
from yardarm_gateway.endpoints import Endpoint

_MASK64 = (1 << 64) - 1


class ConsistentHash:
    """A key always reaches the same endpoint while it is available; None keys round-robin.

    The ring has `ring_size` fixed points (the hash of a key picks one; the next points
    clockwise serve it while its owner is unavailable). Each point belongs to the
    endpoint with the highest weighted rendezvous score for it, a stable 64-bit hash of
    the endpoint URL and the point, so an endpoint owns a share of points proportional
    to its weight, every gateway replica and restart builds the same ring, and a point
    changes owner only when its owner leaves or a joining endpoint outscores it: one
    endpoint joining or leaving out of N moves about 1/N of keys, and no others. Building
    costs O(ring_size x endpoints); a pick is O(1) while the owner is available.
    """

    __slots__ = ("_endpoints", "_fallback", "_generation", "_owners", "_stamps")

    def __init__(self, endpoints: Sequence[Endpoint], ring_size: int) -> None:
        self._endpoints = tuple(endpoints)
        if len(self._endpoints) > ring_size:
            raise ValueError(
                f"ring_size {ring_size} is smaller than the {len(self._endpoints)} endpoints; "
                "raise ring_size so every endpoint can own points"
            )
        self._owners = _ring_owners(self._endpoints, ring_size) if self._endpoints else []
        self._fallback = RoundRobin(self._endpoints)
        self._stamps = [0] * len(self._endpoints)
        self._generation = 0

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    def pick(self, available: Available, key: bytes | None, now: float) -> Endpoint | None:
        if key is None:
            return self._fallback.pick(available, None, now)
        owners = self._owners
        size = len(owners)
        if size == 0:
            return None
        point = int.from_bytes(blake2b(key, digest_size=8).digest(), "little") % size
        endpoint = self._endpoints[owners[point]]
        if available(endpoint):
            return endpoint
        self._generation += 1
        generation = self._generation
        stamps = self._stamps
        stamps[owners[point]] = generation
        unavailable = 1
        for _ in range(size - 1):
            if unavailable == len(self._endpoints):
                return None
            point = point + 1 if point + 1 < size else 0
            index = owners[point]
            if stamps[index] == generation:
                continue
            endpoint = self._endpoints[index]
            if available(endpoint):
                return endpoint
            stamps[index] = generation
            unavailable += 1
        return None

    def observe(self, endpoint: Endpoint, latency_s: float, now: float) -> None:
        return None


def _mix64(value: int) -> int:
    """SplitMix64's finaliser: a stable, well-spread 64-bit mix (Python's hash() is salted)."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _ring_owners(endpoints: Sequence[Endpoint], size: int) -> list[int]:
    """For each ring point, the index of the endpoint with the highest rendezvous score.

    Weighted scores are ln(u) / weight for a uniform u in (0, 1): the endpoint with the
    largest wins a point with probability weight / total weight.
    """
    seeds = [
        int.from_bytes(blake2b(e.url.encode("utf-8"), digest_size=8).digest(), "little")
        for e in endpoints
    ]
    weights = [float(endpoint.weight) for endpoint in endpoints]
    equal = len(set(weights)) == 1
    owners = [0] * size
    for point in range(size):
        salt = _mix64(point)
        best = 0
        best_score = -math.inf
        for index, seed in enumerate(seeds):
            mixed = _mix64(seed ^ salt)
            score: float = mixed if equal else math.log((mixed + 0.5) / 2.0**64) / weights[index]
            if score > best_score:
                best, best_score = index, score
        owners[point] = best
    return owners
