"""An upstream at run time: its endpoints and every policy that guards them.

Per upstream: active health, passive outlier detection, a breaker per endpoint, a
breaker per track (a failing canary opens the canary's circuit, never stable's), a
balancer per track plus one over all endpoints (routes without a split), a bulkhead
and a retry budget.

Health and ejection feed each other and the balancer: a passing health check ends an
ejection, and each pool's panic state (see `panic.py`) is judged again whenever an
endpoint's health or ejection changes, never per request.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from yardarm_gateway.admission import Bulkhead
from yardarm_gateway.balancer import Balancer, make_balancer
from yardarm_gateway.breaker import CircuitBreaker, Transition
from yardarm_gateway.endpoints import Endpoint
from yardarm_gateway.health import HealthTracker
from yardarm_gateway.outlier import OutlierDetector, OutlierEvent
from yardarm_gateway.panic import PanicEvent, in_panic
from yardarm_gateway.retry import RetryBudget
from yardarm_gateway.settings import UpstreamSpec

ALL_TRACKS = "*"


@dataclass(slots=True)
class Pool:
    """The endpoints one request may go to: one track's, or all of them (`*`).

    `panic`: too few of them are in rotation, so the balancer uses them all.
    """

    track: str
    endpoints: tuple[Endpoint, ...]
    balancer: Balancer
    breaker: CircuitBreaker
    panic: bool = False


class Upstream:
    """One upstream service with its live policy state."""

    def __init__(
        self,
        name: str,
        spec: UpstreamSpec,
        *,
        now: float,
        rng: random.Random | None = None,
        on_breaker: Transition | None = None,
        on_outlier: Callable[[str, OutlierEvent], None] | None = None,
        on_panic: Callable[[PanicEvent], None] | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.endpoints = tuple(
            Endpoint(e.url, track=e.track, weight=e.weight, added_at=now) for e in spec.endpoints
        )
        self.by_url = {e.url: e for e in self.endpoints}
        self._on_outlier = on_outlier
        self._on_panic = on_panic
        self.health = HealthTracker(
            spec.health, self.endpoints, on_change=lambda endpoint, healthy: self._judge_panic()
        )
        self.outlier = OutlierDetector(spec.outlier, self.endpoints, self._outlier_event)
        self.breakers = {
            e: CircuitBreaker(f"{name}/{e.url}", spec.breaker, on_transition=on_breaker)
            for e in self.endpoints
        }
        tracks = sorted({e.track for e in self.endpoints})
        self.pools: dict[str, Pool] = {}
        for track in [*tracks, ALL_TRACKS]:
            members = tuple(e for e in self.endpoints if track in (ALL_TRACKS, e.track))
            self.pools[track] = Pool(
                track,
                members,
                make_balancer(spec.balancer, members, rng),
                CircuitBreaker(f"{name}/track:{track}", spec.track_breaker, on_breaker),
            )
        self.bulkhead = Bulkhead(spec.max_concurrent)
        self.budget = RetryBudget(
            spec.retry.budget_percent, spec.retry.budget_min_retry_concurrency
        )

    @property
    def tracks(self) -> set[str]:
        return {track for track in self.pools if track != ALL_TRACKS}

    def distinct_pools(self) -> list[Pool]:
        """Every track's pool and `*`, or only `*` when one track has every endpoint."""
        if len(self.pools) == 2:
            return [self.pools[ALL_TRACKS]]
        return list(self.pools.values())

    def admits(self, endpoint: Endpoint, now: float) -> bool:
        """Its circuit is closed, half-open, or open with the wait over (a trial is due)."""
        return self.breakers[endpoint].retry_after_s(now) <= 0

    def usable(self, endpoint: Endpoint, now: float) -> bool:
        """Healthy, not ejected and its circuit admitting calls."""
        return (
            self.health.is_healthy(endpoint)
            and not self.outlier.is_ejected(endpoint, now)
            and self.admits(endpoint, now)
        )

    def track_usable(self, track: str, now: float) -> bool:
        pool = self.pools.get(track)
        return pool is not None and any(self.usable(e, now) for e in pool.endpoints)

    def _in_rotation(self, endpoint: Endpoint) -> bool:
        """Healthy and not ejected (as of the last expiry): what the panic share counts."""
        return self.health.is_healthy(endpoint) and not self.outlier.ejected(endpoint)

    def health_check_passed(self, endpoint: Endpoint, probed_at: float, now: float) -> None:
        """A passing active health check: may end the endpoint's ejection at once."""
        self.outlier.health_check_passed(endpoint, probed_at, now)

    def pick(
        self, pool: Pool, key: bytes | None, now: float, tried: list[Endpoint]
    ) -> Endpoint | None:
        """An endpoint for the next attempt, never one already tried.

        In panic mode any endpoint whose circuit lets it through may serve, except one an
        admin ejected (a decision, not a verdict). Out of panic mode, when no endpoint is
        healthy and un-ejected (possible with the threshold at 0), the first attempt still
        goes to any endpoint whose circuit lets it through, as it always did: better a
        request on a doubtful endpoint than a certain 503.
        """
        self.outlier.expire(now)  # an ejection that just ended may end a panic

        def admits(endpoint: Endpoint) -> bool:
            return endpoint not in tried and self.admits(endpoint, now)

        if pool.panic:

            def panicking(endpoint: Endpoint) -> bool:
                return admits(endpoint) and not self.outlier.held(endpoint)

            return pool.balancer.pick(panicking, key, now)

        def available(endpoint: Endpoint) -> bool:
            return endpoint not in tried and self.usable(endpoint, now)

        chosen = pool.balancer.pick(available, key, now)
        if chosen is None and not tried:
            chosen = pool.balancer.pick(admits, key, now)
        return chosen

    def _outlier_event(self, event: OutlierEvent) -> None:
        if self._on_outlier is not None:
            self._on_outlier(self.name, event)
        self._judge_panic()

    def _judge_panic(self) -> None:
        threshold = self.spec.balancer.healthy_panic_threshold_percent
        if threshold <= 0:
            return
        reported = {id(pool) for pool in self.distinct_pools()}
        for pool in self.pools.values():
            members = [e for e in pool.endpoints if not self.outlier.held(e)]
            available = sum(1 for endpoint in members if self._in_rotation(endpoint))
            total = len(members)
            panic = in_panic(available, total, threshold)
            if panic == pool.panic:
                continue
            pool.panic = panic
            if self._on_panic is not None and id(pool) in reported:
                self._on_panic(
                    PanicEvent(self.name, pool.track, panic, available, total, threshold)
                )

    def snapshot(self, now: float) -> dict[str, object]:
        """The live state for the admin API."""
        return {
            "balancer": self.spec.balancer.policy,
            "active": self.bulkhead.active,
            "max_concurrent": self.spec.max_concurrent,
            "retry_budget": {
                "active_requests": self.budget.active_requests,
                "active_retries": self.budget.active_retries,
                "rejected": self.budget.rejected,
            },
            "tracks": {
                track: {
                    "breaker": pool.breaker.snapshot(now),
                    "endpoints": len(pool.endpoints),
                    "panic": pool.panic,
                }
                for track, pool in self.pools.items()
            },
            "endpoints": [
                {
                    "url": e.url,
                    "track": e.track,
                    "weight": e.weight,
                    "active": e.active,
                    "usable": self.usable(e, now),
                    "health": self.health.snapshot(e),
                    "outlier": self.outlier.snapshot(e, now),
                    "breaker": self.breakers[e].snapshot(now),
                }
                for e in self.endpoints
            ],
        }
