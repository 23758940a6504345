"""Round robin: exact equal split, exclusion for failover."""

from __future__ import annotations

from collections import Counter

import pytest
from yardarm_gateway.balancer import RoundRobin


def test_round_robin_splits_exactly_evenly() -> None:
    rr = RoundRobin(["a", "b", "c"])
    picks = [rr.pick() for _ in range(300)]
    assert Counter(picks) == {"a": 100, "b": 100, "c": 100}
    assert picks[:6] == ["a", "b", "c", "a", "b", "c"]


def test_excluded_endpoint_is_skipped_without_breaking_rotation() -> None:
    rr = RoundRobin(["a", "b", "c"])
    assert rr.pick() == "a"
    assert rr.pick(exclude={"b"}) == "c"
    assert rr.pick() == "a"


def test_all_excluded_yields_none() -> None:
    rr = RoundRobin(["a", "b"])
    assert rr.pick(exclude={"a", "b"}) is None
    assert rr.pick() in {"a", "b"}


def test_balancer_needs_an_endpoint() -> None:
    with pytest.raises(ValueError):
        RoundRobin([])
