"""Traffic split: exact smooth weighted round robin, sticky clients, minimal movement."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from itertools import pairwise, permutations

import pytest
from pydantic import ValidationError
from yardarm_gateway.split import StickyConfig, TrafficSplit

WEIGHT_SETS = [
    {"stable": 90, "canary": 10},
    {"blue": 50, "green": 50},
    {"stable": 99, "canary": 1},
    {"baseline": 1, "canary": 2, "stable": 97},
    {"stable": 33, "canary": 33, "baseline": 34},
    {"stable": 7, "canary": 3, "baseline": 0},
]


def _keys(count: int, prefix: str = "client") -> list[bytes]:
    return [f"{prefix}-{index}".encode() for index in range(count)]


@pytest.mark.parametrize("weights", WEIGHT_SETS)
def test_round_robin_shares_match_the_weights(weights: dict[str, int]) -> None:
    split = TrafficSplit(weights)
    counts = Counter(split.pick() for _ in range(2000))
    total = sum(weights.values())
    for track, weight in weights.items():
        assert abs(counts[track] / 2000 - weight / total) <= 0.01, (track, counts)
    assert set(counts) == {track for track, weight in weights.items() if weight > 0}


def test_even_split_never_repeats_a_track() -> None:
    split = TrafficSplit({"blue": 50, "green": 50})
    picks = [split.pick() for _ in range(1000)]
    assert all(a != b for a, b in pairwise(picks))


def test_ten_percent_canary_is_spread_one_in_every_ten() -> None:
    split = TrafficSplit({"stable": 90, "canary": 10})
    picks = [split.pick() for _ in range(1000)]
    for start in range(len(picks) - 9):
        assert picks[start : start + 10].count("canary") == 1, start


def test_one_percent_canary_comes_once_per_hundred() -> None:
    split = TrafficSplit({"stable": 99, "canary": 1})
    picks = [split.pick() for _ in range(1000)]
    for start in range(0, 1000, 100):
        assert picks[start : start + 100].count("canary") == 1


def test_three_way_split_interleaves_the_tracks() -> None:
    split = TrafficSplit({"stable": 33, "canary": 33, "baseline": 34})
    picks = [split.pick() for _ in range(300)]
    for start in range(len(picks) - 3):
        assert len(set(picks[start : start + 4])) == 3, start
    # At most baseline's one extra pick per cycle of 100 makes a pair.
    repeats = [a for a, b in pairwise(picks) if a == b]
    assert len(repeats) <= 3 and set(repeats) <= {"baseline"}


def test_round_robin_is_deterministic_and_ignores_mapping_order() -> None:
    one = TrafficSplit({"stable": 80, "canary": 15, "baseline": 5})
    two = TrafficSplit({"baseline": 5, "canary": 15, "stable": 80})
    assert [one.pick() for _ in range(200)] == [two.pick() for _ in range(200)]


def test_unavailable_track_is_skipped_and_the_rest_keep_their_ratio() -> None:
    split = TrafficSplit({"stable": 60, "canary": 10, "baseline": 30})
    counts = Counter(split.pick(lambda track: track != "baseline") for _ in range(700))
    assert counts == {"stable": 600, "canary": 100}


def test_a_track_back_from_an_outage_is_not_flooded() -> None:
    """A track that was unavailable earns no credit meanwhile, so it resumes its share
    instead of taking a burst of catch-up traffic the moment it recovers."""
    split = TrafficSplit({"stable": 90, "canary": 10})
    for _ in range(500):
        assert split.pick(lambda track: track != "canary") == "stable"
    picks = [split.pick() for _ in range(100)]
    assert 9 <= picks.count("canary") <= 11
    assert all(not (a == b == "canary") for a, b in pairwise(picks))


def test_none_when_no_weighted_track_is_available() -> None:
    split = TrafficSplit({"stable": 0, "canary": 1})
    assert split.pick(lambda track: track != "canary") is None
    assert split.pick(lambda track: False, sticky_key=b"client-1") is None
    assert split.pick() == "canary"


def test_zero_weight_track_is_never_picked() -> None:
    split = TrafficSplit({"stable": 1, "green": 0})
    picks = {split.pick() for _ in range(100)}
    picks |= {split.pick(sticky_key=key) for key in _keys(1000)}
    assert picks == {"stable"}


def test_availability_is_asked_once_per_track_per_pick() -> None:
    split = TrafficSplit({"stable": 9, "canary": 1, "baseline": 0})
    asked: list[str] = []

    def available(track: str) -> bool:
        asked.append(track)
        return True

    split.pick(available)
    assert sorted(asked) == ["canary", "stable"]


def test_sticky_client_always_gets_the_same_track() -> None:
    split = TrafficSplit({"stable": 50, "canary": 50})
    for key in _keys(200):
        first = split.pick(sticky_key=key)
        assert all(split.pick(sticky_key=key) == first for _ in range(5))
        assert TrafficSplit({"canary": 50, "stable": 50}).pick(sticky_key=key) == first


@pytest.mark.parametrize("weights", WEIGHT_SETS)
def test_sticky_shares_over_many_clients_match_the_weights(weights: dict[str, int]) -> None:
    split = TrafficSplit(weights)
    keys = _keys(20_000)
    counts = Counter(split.pick(sticky_key=key) for key in keys)
    total = sum(weights.values())
    for track, weight in weights.items():
        assert abs(counts[track] / len(keys) - weight / total) <= 0.02, (track, counts)


def _moves(before: dict[str, int], after: dict[str, int]) -> Counter[tuple[str, str]]:
    old, new = TrafficSplit(before), TrafficSplit(after)
    moved: Counter[tuple[str, str]] = Counter()
    for key in _keys(20_000):
        a, b = old.pick(sticky_key=key), new.pick(sticky_key=key)
        if a != b:
            assert a is not None and b is not None
            moved[(a, b)] += 1
    return moved


def test_weight_shift_moves_only_the_crossing_clients_one_way() -> None:
    moved = _moves({"stable": 90, "canary": 10}, {"stable": 80, "canary": 20})
    assert set(moved) == {("stable", "canary")}
    assert 0.08 <= moved[("stable", "canary")] / 20_000 <= 0.12


def test_a_changed_total_still_moves_clients_one_way() -> None:
    # 90/10 -> 90/20: the canary's share grows from 9.1% to 18.2% of a larger total.
    moved = _moves({"stable": 90, "canary": 10}, {"stable": 90, "canary": 20})
    assert set(moved) == {("stable", "canary")}
    assert 0.06 <= moved[("stable", "canary")] / 20_000 <= 0.10


def _canary_step(w: int) -> dict[str, int]:
    """The weights at a canary step of w%, as the rollout engine sets them: a baseline
    of the old version as large as the canary (while stable can spare it)."""
    baseline = min(w, 100 - w)
    return {"stable": 100 - w - baseline, "canary": w, "baseline": baseline}


RAMP = (10, 25, 50, 75, 100)


def _random_keys(count: int) -> list[bytes]:
    rng = random.Random(14)
    return [rng.randbytes(16) for _ in range(count)]


def test_a_canary_ramp_never_sends_a_canary_client_back_to_the_old_version() -> None:
    keys = _random_keys(5_000)
    on_canary: set[bytes] = set()
    for w in RAMP:
        split = TrafficSplit(_canary_step(w))
        picks = {key: split.pick(sticky_key=key) for key in keys}
        went_back = [key for key in on_canary if picks[key] != "canary"]
        assert not went_back, f"{len(went_back)} canary clients left the canary at {w}%"
        on_canary = {key for key, track in picks.items() if track == "canary"}
        assert abs(len(on_canary) / len(keys) - w / 100) <= 0.03, (w, len(on_canary))


def test_same_weights_in_any_mapping_order_place_every_key_identically() -> None:
    keys = _random_keys(5_000)
    for weights in (
        {"stable": 50, "canary": 25, "baseline": 25},
        {"stable": 40, "canary": 20, "baseline": 15, "green": 25},
        {"blue": 50, "green": 50},
    ):
        placements = {
            tuple(TrafficSplit(dict(order)).pick(sticky_key=key) for key in keys)
            for order in permutations(weights.items())
        }
        assert len(placements) == 1, weights


def test_sticky_client_on_an_unavailable_track_falls_back_to_the_others() -> None:
    split = TrafficSplit({"stable": 50, "canary": 50})
    keys = _keys(100)
    on_canary = [key for key in keys if split.pick(sticky_key=key) == "canary"]
    assert on_canary
    for key in on_canary:
        assert split.pick(lambda track: track != "canary", sticky_key=key) == "stable"
        assert split.pick(sticky_key=key) == "canary"  # back once the canary is


def test_sticky_placement_is_the_same_in_every_process() -> None:
    """Replicas of the gateway must agree: Python's salted hash() would not."""
    script = (
        "from yardarm_gateway.split import TrafficSplit\n"
        "s = TrafficSplit({'stable': 70, 'canary': 30})\n"
        "print(''.join('c' if s.pick(sticky_key=f'k{i}'.encode()) == 'canary' else 's'"
        " for i in range(300)))\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    split = TrafficSplit({"stable": 70, "canary": 30})
    here = "".join(
        "c" if split.pick(sticky_key=f"k{i}".encode()) == "canary" else "s" for i in range(300)
    )
    assert outputs == {here + "\n"}


def test_weights_property_reports_the_configuration_read_only() -> None:
    split = TrafficSplit({"stable": 100, "canary": 0})
    assert dict(split.weights) == {"stable": 100, "canary": 0}
    with pytest.raises(TypeError):
        split.weights["canary"] = 5  # type: ignore[index]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({}, "at least one track"),
        ({"stable": 0, "canary": 0}, "weight above 0"),
        ({"stable": 90, "canary": -10}, "'canary' must be >= 0"),
        ({"stable": 1.5}, "must be an integer"),
        ({"stable": True}, "must be an integer"),
        ({"": 1}, "non-empty string"),
    ],
)
def test_invalid_weights_are_refused_with_a_clear_message(
    weights: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TrafficSplit(weights)


def test_sticky_config_takes_a_header_or_a_cookie() -> None:
    assert StickyConfig(header="X-User").header == "X-User"
    assert StickyConfig(cookie="session").cookie == "session"


@pytest.mark.parametrize(
    "data",
    [{}, {"header": "X-User", "cookie": "session"}, {"header": " "}, {"query": "user"}],
)
def test_sticky_config_refuses_anything_but_exactly_one_source(data: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        StickyConfig.model_validate(data)
