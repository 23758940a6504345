"""An upstream: a named set of endpoints, their balancer and what is known of their health."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from yardarm_gateway.balancer import Balancer, RoundRobin


@dataclass(slots=True)
class Upstream:
    """One upstream service; `ready` holds the endpoints whose last /readyz answered 200."""

    name: str
    balancer: Balancer
    ready: set[str] = field(default_factory=set)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self.balancer.endpoints

    @classmethod
    def round_robin(cls, name: str, endpoints: Sequence[str]) -> Upstream:
        return cls(name=name, balancer=RoundRobin(endpoints))


def build_upstreams(config: Mapping[str, Sequence[str]]) -> dict[str, Upstream]:
    """One round-robin upstream per configured name."""
    return {name: Upstream.round_robin(name, urls) for name, urls in config.items()}
