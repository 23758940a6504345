"""Load-balancing policies: shares, skipping, load and latency awareness, hashing, slow start.

Everything is deterministic: randomness comes from seeded `random.Random`s and time
passes only through the `now` argument.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from pydantic import ValidationError
from yardarm_gateway.balancer import (
    Balancer,
    BalancerConfig,
    PeakEwma,
    make_balancer,
    request_hash_key,
)
from yardarm_gateway.endpoints import Endpoint


def everything(endpoint: Endpoint) -> bool:
    return True


def pool(count: int, *weights: int) -> list[Endpoint]:
    chosen = weights or (1,) * count
    return [Endpoint(f"http://10.0.0.{i + 1}:8000", weight=w) for i, w in enumerate(chosen)]


def picks(
    balancer: Balancer,
    count: int,
    now: float = 0.0,
    available: Callable[[Endpoint], bool] = everything,
    key: bytes | None = None,
) -> list[Endpoint]:
    chosen = []
    for _ in range(count):
        endpoint = balancer.pick(available, key, now)
        assert endpoint is not None
        chosen.append(endpoint)
    return chosen


def shares(chosen: Sequence[Endpoint], endpoints: Sequence[Endpoint]) -> list[float]:
    counts = Counter(chosen)
    return [counts[endpoint] / len(chosen) for endpoint in endpoints]


def letters(chosen: Sequence[Endpoint], endpoints: Sequence[Endpoint]) -> str:
    return "".join("abcdefghij"[endpoints.index(endpoint)] for endpoint in chosen)


# --- configuration ---------------------------------------------------------------


def test_consistent_hash_without_hash_on_is_rejected() -> None:
    with pytest.raises(ValidationError, match="consistent_hash needs hash_on"):
        BalancerConfig(policy="consistent_hash")


@pytest.mark.parametrize("source", ["header", "cookie"])
def test_header_or_cookie_hashing_without_hash_key_is_rejected(source: str) -> None:
    with pytest.raises(ValidationError, match=f"hash_on '{source}' needs hash_key"):
        BalancerConfig(policy="consistent_hash", hash_on=source)  # type: ignore[arg-type]


def test_hashing_options_that_would_be_ignored_are_rejected() -> None:
    with pytest.raises(ValidationError, match="hash_on only applies to policy consistent_hash"):
        BalancerConfig(policy="round_robin", hash_on="client_address")
    with pytest.raises(ValidationError, match="client_address has none"):
        BalancerConfig(policy="consistent_hash", hash_on="client_address", hash_key="x")
    with pytest.raises(ValidationError, match="slow start does not apply to consistent_hash"):
        BalancerConfig(
            policy="consistent_hash", hash_on="cookie", hash_key="sid", slow_start_window_s=5
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("choice_count", 1),
        ("ring_size", 0),
        ("ring_size", 1 << 20),
        ("active_request_bias", -0.5),
        ("ewma_decay_s", 0.0),
        ("ewma_decay_s", float("inf")),
        ("slow_start_window_s", -1.0),
        ("slow_start_aggression", 0.0),
        ("slow_start_min_weight_percent", 0.0),
        ("slow_start_min_weight_percent", 150.0),
        ("healthy_panic_threshold_percent", -1.0),
        ("healthy_panic_threshold_percent", 100.5),
        ("healthy_panic_threshold_percent", float("nan")),
        ("policy", "random"),
    ],
)
def test_out_of_range_settings_are_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        BalancerConfig.model_validate({field: value})
    assert caught.value.errors()[0]["loc"] == (field,)


def test_config_is_frozen_and_rejects_unknown_fields() -> None:
    config = BalancerConfig()
    with pytest.raises(ValidationError):
        config.policy = "least_request"
    with pytest.raises(ValidationError, match="choices"):
        BalancerConfig.model_validate({"choices": 3})


def test_invalid_endpoint_sets_are_rejected() -> None:
    with pytest.raises(ValueError, match="weights must be >= 1"):
        make_balancer(BalancerConfig(), [Endpoint("http://a:1", weight=0)])
    endpoint = Endpoint("http://a:1")
    with pytest.raises(ValueError, match="listed twice"):
        make_balancer(BalancerConfig(), [endpoint, endpoint])
    with pytest.raises(ValueError, match="raise ring_size"):
        config = BalancerConfig(policy="consistent_hash", hash_on="client_address", ring_size=4)
        make_balancer(config, pool(5))


@pytest.mark.parametrize(
    "config",
    [
        BalancerConfig(),
        BalancerConfig(policy="least_request"),
        BalancerConfig(policy="peak_ewma"),
        BalancerConfig(policy="consistent_hash", hash_on="client_address"),
    ],
)
def test_a_balancer_without_endpoints_picks_none(config: BalancerConfig) -> None:
    balancer = make_balancer(config, [], random.Random(1))
    assert balancer.pick(everything, None, 0.0) is None
    assert balancer.pick(everything, b"key", 0.0) is None


# --- round robin ---------------------------------------------------------------------


def test_equal_weights_are_plain_round_robin() -> None:
    endpoints = pool(3)
    chosen = picks(make_balancer(BalancerConfig(), endpoints), 300)
    assert letters(chosen[:7], endpoints) == "abcabca"
    assert Counter(chosen) == dict.fromkeys(endpoints, 100)


def test_smooth_weighted_sequence_matches_nginx() -> None:
    endpoints = pool(3, 5, 1, 1)
    balancer = make_balancer(BalancerConfig(policy="weighted_round_robin"), endpoints)
    assert letters(picks(balancer, 14), endpoints) == "aabacaa" * 2


@pytest.mark.parametrize(
    "config",
    [
        BalancerConfig(policy="round_robin"),
        BalancerConfig(policy="weighted_round_robin"),
        BalancerConfig(policy="least_request"),
    ],
)
def test_weights_are_respected_within_one_point(config: BalancerConfig) -> None:
    endpoints = pool(4, 1, 2, 3, 4)
    chosen = picks(make_balancer(config, endpoints, random.Random(3)), 2000)
    for share, weight in zip(shares(chosen, endpoints), (1, 2, 3, 4), strict=True):
        assert share == pytest.approx(weight / 10, abs=0.01)


def test_unavailable_endpoint_is_skipped_without_breaking_the_rotation() -> None:
    endpoints = pool(3)
    a, b, c = endpoints
    balancer = make_balancer(BalancerConfig(), endpoints)
    assert balancer.pick(everything, None, 0.0) is a
    assert balancer.pick(lambda e: e is not b, None, 0.0) is c
    assert balancer.pick(everything, None, 0.0) is a


def test_skipping_keeps_the_others_interleaved_and_weighted() -> None:
    endpoints = pool(3, 5, 1, 1)
    c = endpoints[2]
    balancer = make_balancer(BalancerConfig(), endpoints)
    chosen = picks(balancer, 12, available=lambda e: e is not c)
    assert letters(chosen, endpoints) == "aabaaa" * 2


def test_round_robin_with_nothing_available_picks_none_then_resumes() -> None:
    endpoints = pool(3, 100, 1, 1)
    balancer = make_balancer(BalancerConfig(), endpoints)
    assert balancer.pick(lambda e: False, None, 0.0) is None
    assert balancer.pick(everything, None, 0.0) in endpoints


# --- least request -------------------------------------------------------------------


def test_least_request_never_sends_to_the_most_loaded_and_favours_the_least_loaded() -> None:
    endpoints = pool(10)
    for load, endpoint in enumerate(endpoints):
        endpoint.active = load
    balancer = make_balancer(BalancerConfig(policy="least_request"), endpoints, random.Random(5))
    counts = Counter(picks(balancer, 10_000))
    assert counts[endpoints[-1]] == 0
    # Two distinct choices: the idlest is a candidate in 1 - C(9,2)/C(10,2) = 20% of picks.
    assert counts[endpoints[0]] / 10_000 == pytest.approx(0.2, abs=0.02)


def test_least_request_with_two_endpoints_always_picks_the_idle_one() -> None:
    endpoints = pool(2)
    endpoints[0].active = 4
    balancer = make_balancer(BalancerConfig(policy="least_request"), endpoints, random.Random(2))
    assert set(picks(balancer, 200)) == {endpoints[1]}


def mean_load_spread(choose: Callable[[list[Endpoint], random.Random], Endpoint]) -> float:
    """Requests arrive one by one; with 40 in flight a random one completes per arrival."""
    endpoints = pool(5)
    rng = random.Random(11)
    in_flight: list[Endpoint] = []
    spreads = []
    for _ in range(5000):
        endpoint = choose(endpoints, rng)
        endpoint.active += 1
        in_flight.append(endpoint)
        if len(in_flight) > 40:
            in_flight.pop(rng.randrange(len(in_flight))).active -= 1
        loads = [e.active for e in endpoints]
        spreads.append(max(loads) - min(loads))
    return sum(spreads[100:]) / len(spreads[100:])


def test_least_request_keeps_in_flight_counts_far_more_even_than_random_choice() -> None:
    balancers: dict[int, Balancer] = {}

    def least_request(endpoints: list[Endpoint], rng: random.Random) -> Endpoint:
        balancer = balancers.setdefault(
            0, make_balancer(BalancerConfig(policy="least_request"), endpoints, rng)
        )
        endpoint = balancer.pick(everything, None, 0.0)
        assert endpoint is not None
        return endpoint

    p2c = mean_load_spread(least_request)
    uniform = mean_load_spread(lambda endpoints, rng: rng.choice(endpoints))
    assert p2c < uniform / 2  # about 2.7 against 6.5 busiest-minus-idlest


def test_weighted_least_request_discounts_weight_by_active_requests() -> None:
    heavy, light = pool(2, 2, 1)
    heavy.active = 3
    loaded = make_balancer(BalancerConfig(policy="least_request"), [heavy, light])
    # 2 / (3 + 1) < 1 / (0 + 1): the idle light endpoint now takes two thirds.
    assert shares(picks(loaded, 300), [heavy, light]) == pytest.approx([1 / 3, 2 / 3], abs=0.01)
    unbiased = make_balancer(
        BalancerConfig(policy="least_request", active_request_bias=0.0), [heavy, light]
    )
    assert shares(picks(unbiased, 300), [heavy, light]) == pytest.approx([2 / 3, 1 / 3], abs=0.01)


def test_weighted_least_request_gives_a_returning_endpoint_no_catch_up_burst() -> None:
    endpoints = pool(3, 1, 1, 2)
    c = endpoints[2]
    balancer = make_balancer(BalancerConfig(policy="least_request"), endpoints)
    picks(balancer, 200, available=lambda e: e is not c)
    back = Counter(picks(balancer, 8))
    assert back[c] <= 5  # its fair share is 4 of 8, not the 100 it missed


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (1, 2, 3, 4)])
def test_least_request_only_picks_available_endpoints(weights: tuple[int, ...]) -> None:
    endpoints = pool(4, *weights)
    balancer = make_balancer(BalancerConfig(policy="least_request"), endpoints, random.Random(4))
    allowed = {endpoints[1], endpoints[3]}
    chosen = picks(balancer, 500, available=allowed.__contains__)
    assert set(chosen) == allowed
    assert balancer.pick(lambda e: False, None, 0.0) is None


# --- peak EWMA -----------------------------------------------------------------------


class LatencySimulation:
    """Sequential requests every 10 ms, each answered after its endpoint's latency."""

    def __init__(self, balancer: Balancer, latency: dict[Endpoint, float]) -> None:
        self.balancer = balancer
        self.latency = latency
        self.now = 0.0

    def run(self, seconds: float) -> Counter[Endpoint]:
        counts: Counter[Endpoint] = Counter()
        end = self.now + seconds
        while self.now < end:
            endpoint = self.balancer.pick(everything, None, self.now)
            assert endpoint is not None
            counts[endpoint] += 1
            self.balancer.observe(endpoint, self.latency[endpoint], self.now)
            self.now += 0.01
        return counts


def test_peak_ewma_moves_traffic_away_from_a_slow_endpoint_and_back_after_recovery() -> None:
    tau = 10.0
    endpoints = pool(3)
    slow = endpoints[0]
    config = BalancerConfig(policy="peak_ewma", ewma_decay_s=tau)
    simulation = LatencySimulation(
        make_balancer(config, endpoints, random.Random(7)), dict.fromkeys(endpoints, 0.01)
    )
    healthy = simulation.run(30)
    assert healthy[slow] / healthy.total() == pytest.approx(1 / 3, abs=0.05)

    simulation.latency[slow] = 0.5
    simulation.run(1)
    degraded = simulation.run(6 * tau)
    # Only the odd probe once its estimate has decayed below the others'.
    assert degraded[slow] / degraded.total() < 0.01

    simulation.latency[slow] = 0.01
    simulation.run(8 * tau)  # ln(0.5 / 0.01) * tau ~ 4 tau until it is probed again
    recovered = simulation.run(3 * tau)
    assert recovered[slow] / recovered.total() == pytest.approx(1 / 3, abs=0.05)


def test_peak_ewma_estimate_jumps_to_a_peak_and_decays_back() -> None:
    endpoint = Endpoint("http://a:1")
    balancer = make_balancer(BalancerConfig(policy="peak_ewma", ewma_decay_s=10.0), [endpoint])
    assert isinstance(balancer, PeakEwma)
    assert balancer.latency_estimate(endpoint, 0.0) is None
    for second in range(20):
        balancer.observe(endpoint, 0.01, float(second))
    assert balancer.latency_estimate(endpoint, 19.0) == pytest.approx(0.01, rel=1e-6)
    balancer.observe(endpoint, 1.0, 20.0)
    assert balancer.latency_estimate(endpoint, 20.0) == 1.0
    balancer.observe(endpoint, 0.01, 21.0)
    after_one = balancer.latency_estimate(endpoint, 21.0)
    assert after_one is not None and 0.5 < after_one < 1.0
    # With no samples the estimate decays with time constant tau.
    assert balancer.latency_estimate(endpoint, 31.0) == pytest.approx(after_one / 2.718281828)


def test_peak_ewma_prefers_the_endpoint_with_fewer_requests_in_flight() -> None:
    busy, idle = pool(2)
    balancer = make_balancer(BalancerConfig(policy="peak_ewma"), [busy, idle], random.Random(1))
    balancer.observe(busy, 0.05, 0.0)
    balancer.observe(idle, 0.05, 0.0)
    busy.active = 2
    assert set(picks(balancer, 100, now=0.1)) == {idle}


def test_peak_ewma_tries_an_unmeasured_endpoint_once_but_does_not_flood_it() -> None:
    known, new = pool(2)
    balancer = make_balancer(BalancerConfig(policy="peak_ewma"), [known, new], random.Random(1))
    balancer.observe(known, 0.05, 0.0)
    assert balancer.pick(everything, None, 0.1) is new
    new.active = 1  # its first request is still in flight
    known.active = 5
    assert set(picks(balancer, 50, now=0.2)) == {known}


def test_peak_ewma_treats_weight_as_capacity() -> None:
    big, small = pool(2, 3, 1)
    balancer = make_balancer(BalancerConfig(policy="peak_ewma"), [big, small], random.Random(1))
    balancer.observe(big, 0.05, 0.0)
    balancer.observe(small, 0.05, 0.0)
    big.active = 1  # 0.05 * 2 / 3 < 0.05 * 1 / 1
    assert set(picks(balancer, 50, now=0.0)) == {big}


def test_peak_ewma_ignores_samples_for_endpoints_it_does_not_balance() -> None:
    endpoint = Endpoint("http://a:1")
    balancer = make_balancer(BalancerConfig(policy="peak_ewma"), [endpoint])
    assert isinstance(balancer, PeakEwma)
    balancer.observe(Endpoint("http://a:1"), 1.0, 0.0)
    assert balancer.latency_estimate(endpoint, 0.0) is None


# --- consistent hashing --------------------------------------------------------------

KEYS = [f"session-{i}".encode() for i in range(10_000)]
HASHED = BalancerConfig(policy="consistent_hash", hash_on="cookie", hash_key="sid")


def mapping(endpoints: Sequence[Endpoint], keys: Sequence[bytes] = KEYS) -> dict[bytes, str]:
    balancer = make_balancer(HASHED, endpoints)
    chosen = {}
    for key in keys:
        endpoint = balancer.pick(everything, key, 0.0)
        assert endpoint is not None
        chosen[key] = endpoint.url
    return chosen


def test_a_key_always_maps_to_the_same_endpoint_across_balancers() -> None:
    first = mapping(pool(5))
    again = mapping(pool(5))  # new Endpoint objects, same URLs: as after a rebuild
    assert first == again


def test_consistent_hash_spreads_keys_by_weight() -> None:
    equal = Counter(mapping(pool(5)).values())
    assert all(count / len(KEYS) == pytest.approx(0.2, abs=0.05) for count in equal.values())
    endpoints = pool(2, 1, 3)
    weighted = Counter(mapping(endpoints).values())
    assert weighted[endpoints[1].url] / len(KEYS) == pytest.approx(0.75, abs=0.05)


def test_removing_one_of_n_endpoints_moves_only_its_keys() -> None:
    endpoints = pool(10)
    before = mapping(endpoints)
    removed = endpoints[3].url
    after = mapping([e for e in endpoints if e.url != removed])
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(before[key] == removed for key in moved)
    assert {key for key in KEYS if before[key] == removed} == set(moved)
    assert len(moved) / len(KEYS) <= 1 / 10 + 0.03  # tolerance: ring granularity


def test_adding_one_endpoint_moves_about_one_nth_of_keys_all_to_it() -> None:
    endpoints = pool(11)
    before = mapping(endpoints[:10])
    after = mapping(endpoints)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == endpoints[10].url for key in moved)
    assert 0 < len(moved) / len(KEYS) <= 1 / 11 + 0.03  # tolerance: ring granularity


def test_an_unavailable_owner_passes_its_keys_clockwise_and_gets_them_back() -> None:
    endpoints = pool(4)
    down = endpoints[0]
    balancer = make_balancer(HASHED, endpoints)
    keys = KEYS[:2000]
    normal = {key: balancer.pick(everything, key, 0.0) for key in keys}
    up = lambda e: e is not down  # noqa: E731
    failover = {key: balancer.pick(up, key, 0.0) for key in keys}
    assert failover == {key: balancer.pick(up, key, 0.0) for key in keys}  # deterministic
    for key in keys:
        if normal[key] is down:
            assert failover[key] in endpoints[1:]
        else:
            assert failover[key] is normal[key]
    assert {key: balancer.pick(everything, key, 0.0) for key in keys} == normal
    assert balancer.pick(lambda e: False, KEYS[0], 0.0) is None


def test_an_unavailable_owners_keys_spread_over_the_others_not_onto_one() -> None:
    endpoints = pool(5)
    down = endpoints[2]
    balancer = make_balancer(HASHED, endpoints)
    orphans = [key for key in KEYS[:5000] if balancer.pick(everything, key, 0.0) is down]
    heirs = Counter(balancer.pick(lambda e: e is not down, key, 0.0) for key in orphans)
    # Walking clockwise hands each orphaned point to its neighbour: every survivor takes
    # a share, none takes them all (a failover must not create a hot spot).
    assert set(heirs) == set(endpoints) - {down}
    assert max(heirs.values()) < 0.5 * len(orphans)


def test_requests_without_a_key_are_round_robined() -> None:
    endpoints = pool(3)
    balancer = make_balancer(HASHED, endpoints)
    assert Counter(picks(balancer, 300)) == dict.fromkeys(endpoints, 100)


def test_the_ring_is_the_same_in_another_process_with_another_hash_seed() -> None:
    keys = [key.decode() for key in KEYS[:300]]
    script = (
        "import json, sys\n"
        "from yardarm_gateway.balancer import BalancerConfig, make_balancer\n"
        "from yardarm_gateway.endpoints import Endpoint\n"
        "config = BalancerConfig(policy='consistent_hash', hash_on='cookie', hash_key='sid')\n"
        "urls = [f'http://10.0.0.{i + 1}:8000' for i in range(5)]\n"
        "balancer = make_balancer(config, [Endpoint(url) for url in urls])\n"
        "keys = json.load(sys.stdin)\n"
        "print(json.dumps([balancer.pick(lambda e: True, k.encode(), 0.0).url for k in keys]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(keys),
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    here = mapping(pool(5), [key.encode() for key in keys])
    assert json.loads(result.stdout) == [here[key.encode()] for key in keys]


# --- slow start ------------------------------------------------------------------------


def ramping_pair(**settings: float) -> tuple[BalancerConfig, Endpoint, Endpoint]:
    config = BalancerConfig(slow_start_window_s=10.0, **settings)  # type: ignore[arg-type]
    return config, Endpoint("http://old:1", added_at=0.0), Endpoint("http://new:1", added_at=100.0)


@pytest.mark.parametrize(
    ("age", "aggression", "factor"),
    [
        (0.0, 1.0, 0.1),  # the minimum weight, 10%
        (0.5, 1.0, 0.1),  # 5% of the window is still below the minimum
        (5.0, 1.0, 0.5),
        (5.0, 2.0, 0.5**0.5),
        (10.0, 1.0, 1.0),
        (60.0, 1.0, 1.0),
    ],
)
def test_round_robin_slow_start_scales_a_new_endpoints_share_by_envoys_factor(
    age: float, aggression: float, factor: float
) -> None:
    config, old, new = ramping_pair(slow_start_aggression=aggression)
    balancer = make_balancer(config, [old, new])
    chosen = picks(balancer, 2000, now=100.0 + age)
    assert shares(chosen, [old, new])[1] == pytest.approx(factor / (1 + factor), abs=0.005)


def test_slow_start_only_ramps_endpoints_inside_the_window() -> None:
    config, old, new = ramping_pair()
    veteran = Endpoint("http://veteran:1", added_at=50.0)
    balancer = make_balancer(config, [old, veteran, new])
    old_share, veteran_share, new_share = shares(
        picks(balancer, 2100, now=100.0), [old, veteran, new]
    )
    assert old_share == pytest.approx(veteran_share, abs=0.005)
    assert new_share == pytest.approx(0.1 / 2.1, abs=0.005)


def test_endpoints_that_joined_together_do_not_ramp_against_each_other() -> None:
    # At gateway start every endpoint is new: slow start must not distort the policies.
    endpoints = [Endpoint(f"http://h{i}:1", added_at=100.0) for i in range(3)]
    config = BalancerConfig(slow_start_window_s=10.0)
    chosen = picks(make_balancer(config, endpoints), 300, now=100.0)
    assert Counter(chosen) == dict.fromkeys(endpoints, 100)
    # Nor when they joined moments apart (both ramping): P2C keeps comparing costs.
    busy = Endpoint("http://busy:1", added_at=100.0)
    idle = Endpoint("http://idle:1", added_at=100.01)
    ewma = BalancerConfig(policy="peak_ewma", slow_start_window_s=10.0)
    balancer = make_balancer(ewma, [busy, idle], random.Random(3))
    balancer.observe(busy, 0.05, 100.0)
    balancer.observe(idle, 0.05, 100.0)
    busy.active = 3
    assert set(picks(balancer, 100, now=100.5)) == {idle}


@pytest.mark.parametrize("policy", ["least_request", "peak_ewma"])
def test_load_aware_policies_ramp_a_new_endpoint_up_too(policy: str) -> None:
    config = BalancerConfig.model_validate({"policy": policy, "slow_start_window_s": 10.0})
    endpoints = [Endpoint(f"http://old{i}:1", added_at=0.0) for i in range(2)]
    new = Endpoint("http://new:1", added_at=100.0)
    balancer = make_balancer(config, [*endpoints, new], random.Random(9))
    for endpoint in (*endpoints, new):
        balancer.observe(endpoint, 0.02, 99.0)
    early = Counter(picks(balancer, 3000, now=100.5))[new] / 3000
    late = Counter(picks(balancer, 3000, now=110.0))[new] / 3000
    assert early < 0.12
    assert late == pytest.approx(1 / 3, abs=0.04)


# --- request keys ----------------------------------------------------------------------


def test_request_hash_key_reads_the_configured_source() -> None:
    by_header = BalancerConfig(policy="consistent_hash", hash_on="header", hash_key="X-User")
    by_cookie = BalancerConfig(policy="consistent_hash", hash_on="cookie", hash_key="sid")
    by_client = BalancerConfig(policy="consistent_hash", hash_on="client_address")
    headers = {"x-user": "alice", "Cookie": "ignored"}
    cookies = {"sid": "s-1", "SID": "other"}
    assert request_hash_key(by_header, headers, cookies, "10.1.1.1") == b"alice"
    assert request_hash_key(by_cookie, headers, cookies, "10.1.1.1") == b"s-1"
    assert request_hash_key(by_client, headers, cookies, "10.1.1.1") == b"10.1.1.1"
    assert request_hash_key(by_header, {"X-User": "bj\u00f6rk"}, {}, None) == "bj\u00f6rk".encode()


def test_request_hash_key_is_none_when_absent_or_empty() -> None:
    by_header = BalancerConfig(policy="consistent_hash", hash_on="header", hash_key="X-User")
    by_cookie = BalancerConfig(policy="consistent_hash", hash_on="cookie", hash_key="sid")
    by_client = BalancerConfig(policy="consistent_hash", hash_on="client_address")
    assert request_hash_key(by_header, {}, {}, "10.1.1.1") is None
    assert request_hash_key(by_header, {"X-User": ""}, {}, None) is None
    assert request_hash_key(by_cookie, {}, {"other": "x"}, None) is None
    assert request_hash_key(by_client, {}, {}, None) is None
    assert request_hash_key(BalancerConfig(), {"X-User": "alice"}, {}, "10.1.1.1") is None
