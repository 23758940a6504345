"""Load-balancing policies: pick one endpoint of an upstream for each request.

The gateway runs on one asyncio loop, so a policy needs no locking; `pick` never
awaits. Further policies (least-request, P2C, weighted) implement the same `Balancer`
protocol.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol


class Balancer(Protocol):
    """Chooses the endpoint for the next request."""

    @property
    def endpoints(self) -> tuple[str, ...]: ...

    def pick(self, exclude: Collection[str] = ()) -> str | None:
        """The next endpoint not in `exclude`, or None when every endpoint is excluded."""
        ...


class RoundRobin:
    """Endpoints in turn: over N*k requests each of N endpoints gets exactly k."""

    __slots__ = ("_endpoints", "_next")

    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise ValueError("a balancer needs at least one endpoint")
        self._endpoints = tuple(endpoints)
        self._next = 0

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._endpoints

    def pick(self, exclude: Collection[str] = ()) -> str | None:
        count = len(self._endpoints)
        for _ in range(count):
            endpoint = self._endpoints[self._next]
            self._next = (self._next + 1) % count
            if endpoint not in exclude:
                return endpoint
        return None
