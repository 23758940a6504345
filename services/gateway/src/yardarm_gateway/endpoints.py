"""An endpoint: one replica of an upstream service, as every gateway policy sees it.

Policies (balancers, breakers, outlier detection) key their own state by the
Endpoint object itself (identity), so two endpoints with the same URL in different
upstreams never share state. The gateway runs on one asyncio loop: no locking.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TRACK = "stable"


@dataclass(eq=False, slots=True)
class Endpoint:
    """One replica: its base URL, the release track it serves and its static weight.

    `active` counts requests in flight to it (least-request balancing reads it);
    `added_at` is the loop time it joined (slow start reads it).
    """

    url: str
    track: str = DEFAULT_TRACK
    weight: int = 1
    added_at: float = 0.0
    active: int = 0

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r}, track={self.track!r}, weight={self.weight})"
