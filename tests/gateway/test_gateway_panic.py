"""Panic routing: below the healthy panic threshold a pool balances over all its endpoints.

An upstream's live state is driven by hand here: health verdicts through its tracker,
ejections through its outlier detector, time through `now`.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from yardarm_gateway.endpoints import Endpoint
from yardarm_gateway.panic import PanicEvent, in_panic
from yardarm_gateway.settings import UpstreamSpec
from yardarm_gateway.upstreams import ALL_TRACKS, Upstream


def upstream(
    count: int = 4,
    events: list[PanicEvent] | None = None,
    *,
    threshold: float | None = None,
    canaries: int = 0,
    **policy: Any,
) -> Upstream:
    endpoints: list[dict[str, Any]] = [{"url": f"http://10.0.0.{i}:8080"} for i in range(count)]
    endpoints += [{"url": f"http://10.0.1.{i}:8080", "track": "canary"} for i in range(canaries)]
    spec: dict[str, Any] = {"endpoints": endpoints, "outlier": {"max_ejection_percent": 100.0}}
    if threshold is not None:
        spec["balancer"] = {"healthy_panic_threshold_percent": threshold}
    spec.update(policy)
    return Upstream(
        "svc",
        UpstreamSpec.model_validate(spec),
        now=0.0,
        rng=random.Random(7),
        on_panic=None if events is None else events.append,
    )


def mark_unhealthy(up: Upstream, *endpoints: Endpoint) -> None:
    for endpoint in endpoints:
        up.health.record(endpoint, False)  # the first probe decides at once


def mark_healthy(up: Upstream, *endpoints: Endpoint) -> None:
    for endpoint in endpoints:
        for _ in range(up.spec.health.healthy_threshold):
            up.health.record(endpoint, True)


def eject(up: Upstream, endpoint: Endpoint, now: float) -> None:
    for _ in range(up.spec.outlier.consecutive_gateway_failure):
        up.outlier.record(endpoint, None, now)
    assert up.outlier.ejected(endpoint)


def spread(up: Upstream, picks: int, now: float = 1.0, track: str = ALL_TRACKS) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(picks):
        endpoint = up.pick(up.pools[track], None, now, [])
        assert endpoint is not None
        seen[endpoint.url] += 1
    return seen


def urls(*endpoints: Endpoint) -> set[str]:
    return {endpoint.url for endpoint in endpoints}


@pytest.mark.parametrize(
    ("available", "total", "threshold", "panic"),
    [
        (1, 2, 50.0, False),  # half is not below half
        (0, 2, 50.0, True),
        (1, 3, 50.0, True),
        (2, 3, 50.0, False),
        (2, 3, 70.0, True),
        (3, 4, 100.0, True),
        (4, 4, 100.0, False),
        (0, 2, 0.0, False),  # 0 turns panic mode off
        (0, 0, 50.0, False),
    ],
)
def test_panic_is_a_share_strictly_below_the_threshold(
    available: int, total: int, threshold: float, panic: bool
) -> None:
    assert in_panic(available, total, threshold) is panic


def test_default_threshold_is_envoys_fifty_percent() -> None:
    up = upstream(2)
    assert up.spec.balancer.healthy_panic_threshold_percent == 50.0


def test_below_the_threshold_requests_spread_over_all_endpoints_until_recovery() -> None:
    events: list[PanicEvent] = []
    up = upstream(4, events)
    a, b, c, d = up.endpoints
    mark_unhealthy(up, b, c)
    assert spread(up, 300) == Counter({a.url: 150, d.url: 150})  # half left: no panic
    assert events == []

    mark_unhealthy(up, d)  # 1 of 4 in rotation
    assert up.pools[ALL_TRACKS].panic
    assert events == [PanicEvent("svc", ALL_TRACKS, True, 1, 4, 50.0)]
    assert spread(up, 400) == Counter({e.url: 100 for e in up.endpoints})

    mark_healthy(up, c)  # 2 of 4: out of panic, back to the endpoints in rotation
    assert not up.pools[ALL_TRACKS].panic
    assert events[-1] == PanicEvent("svc", ALL_TRACKS, False, 2, 4, 50.0)
    assert set(spread(up, 100)) == urls(a, c)
    assert len(events) == 2


def test_ejected_endpoints_count_against_the_share_and_serve_in_panic() -> None:
    events: list[PanicEvent] = []
    up = upstream(3, events)
    a, b, c = up.endpoints
    eject(up, a, now=0.0)  # until 30 s
    eject(up, b, now=0.0)
    assert [e.panic for e in events] == [True]
    assert set(spread(up, 60, now=1.0)) == urls(a, b, c)
    # The ejections end on their own; the next pick notices without anyone asking.
    spread(up, 1, now=30.0)
    assert [e.panic for e in events] == [True, False]
    assert not up.pools[ALL_TRACKS].panic


def test_an_ended_ejection_ends_the_panic_on_the_next_pick() -> None:
    events: list[PanicEvent] = []
    up = upstream(2, events)
    a, b = up.endpoints
    eject(up, a, now=0.0)  # until 30 s
    mark_unhealthy(up, b)
    assert up.pools[ALL_TRACKS].panic
    assert up.pick(up.pools[ALL_TRACKS], None, 29.0, []) is not None
    assert up.pools[ALL_TRACKS].panic
    assert up.pick(up.pools[ALL_TRACKS], None, 30.0, []) is a
    assert not up.pools[ALL_TRACKS].panic
    assert set(spread(up, 20, now=30.0)) == urls(a)
    assert [e.panic for e in events] == [True, False]


def test_a_passing_health_check_of_an_ejected_endpoint_ends_the_panic() -> None:
    events: list[PanicEvent] = []
    up = upstream(2, events)
    a, b = up.endpoints
    eject(up, a, now=10.0)
    mark_unhealthy(up, b)
    up.health_check_passed(a, probed_at=11.0, now=11.0)
    assert not up.outlier.is_ejected(a, 11.0)
    assert [e.panic for e in events] == [True, False]
    assert set(spread(up, 20, now=11.0)) == urls(a)


def test_panic_keeps_away_from_an_open_circuit() -> None:
    breaker = {"window_size": 5, "minimum_calls": 5, "wait_in_open_s": 10.0}
    up = upstream(3, breaker=breaker)
    a, b, c = up.endpoints
    for _ in range(5):
        up.breakers[c].record(0.0, 0.01, True)
    assert up.breakers[c].state == "open"
    mark_unhealthy(up, b, c)
    assert up.pools[ALL_TRACKS].panic
    assert set(spread(up, 60)) == urls(a, b)


def test_a_retry_in_panic_goes_to_an_endpoint_not_tried_yet() -> None:
    up = upstream(3)
    a, b, c = up.endpoints
    mark_unhealthy(up, a, b)
    pool = up.pools[ALL_TRACKS]
    for _ in range(10):
        first = up.pick(pool, None, 1.0, [])
        assert first is not None
        second = up.pick(pool, None, 1.0, [first])
        assert second is not None and second is not first
    assert up.pick(pool, None, 1.0, [a, b, c]) is None


def test_threshold_zero_keeps_every_request_on_the_survivors() -> None:
    events: list[PanicEvent] = []
    up = upstream(4, events, threshold=0.0)
    a, b, c, d = up.endpoints
    mark_unhealthy(up, b, c, d)
    assert not up.pools[ALL_TRACKS].panic
    assert spread(up, 100) == Counter({a.url: 100})
    # With none in rotation the first attempt still goes somewhere; a retry does not.
    mark_unhealthy(up, a)
    pool = up.pools[ALL_TRACKS]
    first = up.pick(pool, None, 1.0, [])
    assert first is not None
    assert up.pick(pool, None, 1.0, [first]) is None
    assert events == []


def test_each_track_panics_on_its_own_endpoints() -> None:
    events: list[PanicEvent] = []
    up = upstream(3, events, canaries=1)
    canary = up.pools["canary"].endpoints[0]
    mark_unhealthy(up, canary)  # the whole upstream: 3 of 4, fine; the canary track: 0 of 1
    assert events == [PanicEvent("svc", "canary", True, 0, 1, 50.0)]
    assert not up.pools["stable"].panic and not up.pools[ALL_TRACKS].panic
    assert set(spread(up, 10, track="canary")) == urls(canary)
    assert canary.url not in spread(up, 60)
    assert up.snapshot(1.0)["tracks"]["canary"]["panic"] is True  # type: ignore[index]


def test_an_admins_ejection_counts_neither_way_and_is_kept_in_panic() -> None:
    events: list[PanicEvent] = []
    up = upstream(3, events)
    a, b, c = up.endpoints
    assert up.outlier.eject(c, 0.0, duration_s=100.0, reason="admin: maintenance")
    mark_unhealthy(up, b)  # 1 of the 2 left in rotation: not a panic
    assert events == []
    assert set(spread(up, 20)) == urls(a)
    eject(up, a, now=1.0)  # 0 of 2: panic, over a and b but never c
    assert events == [PanicEvent("svc", ALL_TRACKS, True, 0, 2, 50.0)]
    assert set(spread(up, 60, now=2.0)) == urls(a, b)
    # Once the admin's ejection ends, c counts and serves again: 1 of 3 is still a panic.
    assert up.outlier.uneject(c, 3.0)
    assert up.pools[ALL_TRACKS].panic and len(events) == 1
    assert set(spread(up, 60, now=3.0)) == urls(a, b, c)
