"""What every policy offers its caller, so callers never depend on a concrete one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from yardarm_gateway.endpoints import Endpoint

Available = Callable[[Endpoint], bool]


class Balancer(Protocol):
    """Chooses the endpoint for the next request."""

    def pick(self, available: Available, key: bytes | None, now: float) -> Endpoint | None:
        """An endpoint for which available(e) is true, or None if there is none."""
        ...

    def observe(self, endpoint: Endpoint, latency_s: float, now: float) -> None:
        """Called after each completed upstream attempt (only latency-aware policies use it)."""
        ...
