"""An upstream at run time: its endpoints and every policy that guards them.

Per upstream: active health, passive outlier detection, a breaker per endpoint, a
breaker per track (a failing canary opens the canary's circuit, never stable's), a
balancer per track plus one over all endpoints (routes without a split), a bulkhead
and a retry budget.

Health and ejection feed each other and the balancer: a passing health check ends an
ejection, and each pool's panic state (see `panic.py`) is judged again whenever an
endpoint's health or ejection changes, never per request.

The endpoint set follows the routing document (`set_endpoints`), Envoy's EDS: an added
endpoint joins every pool at once, healthy, with fresh outlier and breaker state. A
removed one drains: it leaves every pool (and so every balancer, whatever the policy)
at once, so no new request or retry goes to it, while the requests already in flight
to it finish; once none is left, or the drain time is over, it is dropped (`reap`).
Pools are changed in place, never replaced, so a request that chose its pool before
the change retries within the new membership. A track left without endpoints keeps
its (empty) pool and its circuit, takes no traffic and never counts as in panic.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from yardarm_gateway.admission import Bulkhead
from yardarm_gateway.balancer import Balancer, make_balancer
from yardarm_gateway.breaker import CircuitBreaker, Transition
from yardarm_gateway.endpoints import Endpoint
from yardarm_gateway.health import HealthTracker
from yardarm_gateway.outlier import OutlierDetector, OutlierEvent
from yardarm_gateway.panic import PanicEvent, in_panic
from yardarm_gateway.retry import RetryBudget
from yardarm_gateway.settings import EndpointSpec, UpstreamSpec

ALL_TRACKS = "*"


@dataclass(slots=True)
class Pool:
    """The endpoints one request may go to: one track's, or all of them (`*`).

    `panic`: too few of them are in rotation, so the balancer uses them all.
    `reported`: a panic of this pool was reported (so its end is reported too).
    """

    track: str
    endpoints: tuple[Endpoint, ...]
    balancer: Balancer
    breaker: CircuitBreaker
    panic: bool = False
    weights: tuple[int, ...] = ()
    reported: bool = False


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
        on_drop: Callable[[str, Endpoint], None] | None = None,
    ) -> None:
        self.name = name
        self.spec = spec  # its endpoints are the bootstrap set, until a document lists others
        self._rng = rng
        self._on_breaker = on_breaker
        self._on_outlier = on_outlier
        self._on_panic = on_panic
        self._on_drop = on_drop
        self.endpoints: tuple[Endpoint, ...] = ()
        """The endpoints in rotation (listed), in the order listed."""
        self.by_url: dict[str, Endpoint] = {}
        self.draining: dict[Endpoint, float] = {}
        """Endpoints that left, with the loop time by which they go whatever is in flight."""
        self.health = HealthTracker(
            spec.health, (), on_change=lambda endpoint, healthy: self._judge_panic()
        )
        self.outlier = OutlierDetector(spec.outlier, (), self._outlier_event)
        self.breakers: dict[Endpoint, CircuitBreaker] = {}
        self.pools: dict[str, Pool] = {ALL_TRACKS: self._pool(ALL_TRACKS)}
        self.bulkhead = Bulkhead(spec.max_concurrent)
        self.budget = RetryBudget(
            spec.retry.budget_percent, spec.retry.budget_min_retry_concurrency
        )
        self.set_endpoints(spec.endpoints, now)

    def _pool(self, track: str) -> Pool:
        return Pool(
            track,
            (),
            make_balancer(self.spec.balancer, (), self._rng),
            CircuitBreaker(f"{self.name}/track:{track}", self.spec.track_breaker, self._on_breaker),
        )

    def set_endpoints(
        self, specs: Sequence[EndpointSpec], now: float, drain_s: float = 0.0
    ) -> tuple[list[Endpoint], list[Endpoint]]:
        """Route to exactly `specs` from now on; returns (added, draining now).

        A URL already in rotation keeps its endpoint and state (a new track or weight
        applies at once). A URL that is draining comes back: the same Endpoint object,
        so its in-flight count and pooled connections carry on, with the fresh health,
        outlier and breaker state of any added endpoint. A URL no longer listed drains
        for at most `drain_s` seconds (the longest a request in flight may last).
        """
        listed: list[Endpoint] = []
        added: list[Endpoint] = []
        for spec in specs:
            endpoint = self.by_url.get(spec.url)
            if endpoint is None:
                endpoint = next((e for e in self.draining if e.url == spec.url), None)
                if endpoint is None:
                    endpoint = Endpoint(
                        spec.url, track=spec.track, weight=spec.weight, added_at=now
                    )
                else:
                    del self.draining[endpoint]
                    endpoint.draining = False
                self.health.add(endpoint)
                self.outlier.add(endpoint)
                self.breakers[endpoint] = CircuitBreaker(
                    f"{self.name}/{endpoint.url}", self.spec.breaker, self._on_breaker
                )
                added.append(endpoint)
            endpoint.track = spec.track
            endpoint.weight = spec.weight
            listed.append(endpoint)
        kept = set(listed)
        leaving = [endpoint for endpoint in self.endpoints if endpoint not in kept]
        self.endpoints = tuple(listed)
        self.by_url = {endpoint.url: endpoint for endpoint in listed}
        for endpoint in leaving:
            endpoint.draining = True
            self.draining[endpoint] = now + drain_s
            # Its ejection (an admin's too) ends with it: it is in no pool to return to.
            if self.outlier.remove(endpoint) and self._on_outlier is not None:
                event = OutlierEvent(endpoint, "uneject", "removed", 0, None)
                self._on_outlier(self.name, event)
        if added or leaving or any(self._stale(pool) for pool in self.pools.values()):
            self._rebuild_pools()
            self._judge_panic()
        return added, leaving

    def reap(self, now: float) -> list[Endpoint]:
        """Drop the draining endpoints with nothing in flight, or whose drain time is
        over; returns them (their pooled connections are the caller's to close)."""
        gone = [e for e, until in self.draining.items() if e.active <= 0 or now >= until]
        for endpoint in gone:
            del self.draining[endpoint]
            self.health.remove(endpoint)
            del self.breakers[endpoint]
            if self._on_drop is not None:
                self._on_drop(self.name, endpoint)
        return gone

    def _members(self, track: str) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if track in (ALL_TRACKS, e.track))

    def _stale(self, pool: Pool) -> bool:
        members = self._members(pool.track)
        return members != pool.endpoints or pool.weights != tuple(e.weight for e in members)

    def _rebuild_pools(self) -> None:
        """Each track's pool (a new track gets one) and `*`, edited in place: a request
        holding a pool sees the new membership on its next pick. Only a pool whose
        members or weights changed gets a new balancer, so the others keep their place
        in the rotation and their latency estimates."""
        tracks = {pool.track for pool in self.pools.values()} | {e.track for e in self.endpoints}
        tracks.discard(ALL_TRACKS)
        pools = {track: self.pools.get(track) or self._pool(track) for track in sorted(tracks)}
        pools[ALL_TRACKS] = self.pools[ALL_TRACKS]
        for pool in pools.values():
            if self._stale(pool):
                members = self._members(pool.track)
                if members and not pool.endpoints:
                    # A track back from no endpoints is a new release of it (the next
                    # canary or green): its circuit starts closed, not as the last left it.
                    pool.breaker.reset("the track has endpoints again")
                pool.endpoints = members
                pool.weights = tuple(e.weight for e in members)
                pool.balancer = make_balancer(self.spec.balancer, members, self._rng)
        self.pools = pools

    @property
    def tracks(self) -> set[str]:
        """The tracks with an endpoint in rotation."""
        return {track for track in self.pools if track != ALL_TRACKS and self.has_endpoints(track)}

    def has_endpoints(self, track: str) -> bool:
        """Whether `track` has an endpoint in rotation (draining ones do not count)."""
        pool = self.pools.get(track)
        return pool is not None and bool(pool.endpoints)

    def distinct_pools(self) -> list[Pool]:
        """Every track's pool that has endpoints and `*`, or only `*` when one track has
        every endpoint."""
        tracks = [p for t, p in self.pools.items() if t != ALL_TRACKS and p.endpoints]
        if len(tracks) <= 1:
            return [self.pools[ALL_TRACKS]]
        return [*tracks, self.pools[ALL_TRACKS]]

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
        """Each pool's panic state, over the endpoints in rotation only: a draining
        endpoint is in no pool, and a pool without endpoints is never in panic."""
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
            # A panic's end is reported wherever its start was, even for a pool that
            # no longer counts on its own (its track lost its endpoints).
            if self._on_panic is not None and (id(pool) in reported or pool.reported):
                pool.reported = panic
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
                    "usable": not e.draining and self.usable(e, now),
                    "draining": e.draining,
                    "health": self.health.snapshot(e),
                    "outlier": self.outlier.snapshot(e, now),
                    "breaker": self.breakers[e].snapshot(now),
                }
                for e in (*self.endpoints, *self.draining)
            ],
        }
