"""Admission: per-client token buckets in bounded memory, bulkheads, Retry-After."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from yardarm_gateway.admission import (
    Bulkhead,
    RateLimitConfig,
    RateLimiter,
    TokenBucket,
    retry_after_header,
)


def test_config_is_off_by_default_with_sane_limits() -> None:
    config = RateLimitConfig()
    assert not config.enabled
    assert (config.requests_per_s, config.burst, config.key) == (100.0, 200, "client_address")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"requests_per_s": 0}, "requests_per_s"),
        ({"burst": 0}, "burst"),
        ({"max_keys": 0}, "max_keys"),
        ({"key": "cookie"}, "key"),
        ({"key": "header"}, "rate_limit.header"),
        ({"key": "header", "header": "X Api Key"}, "not a valid header name"),
        ({"header": "X-Api-Key"}, "client_address"),
        ({"rate": 5}, "rate"),
    ],
)
def test_config_rejects_invalid_settings_naming_the_field(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        RateLimitConfig.model_validate(data)


def test_config_accepts_a_header_key() -> None:
    config = RateLimitConfig(enabled=True, key="header", header="X-Api-Key")
    assert config.header == "X-Api-Key"


def test_bucket_admits_a_full_burst_then_asks_to_wait_one_token() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=5, now=100.0)
    assert [bucket.take(100.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(100.0) == pytest.approx(0.1)


def test_waiting_the_given_delay_is_enough() -> None:
    bucket = TokenBucket(rate_per_s=3.0, burst=1, now=0.0)
    now = 0.0
    assert bucket.take(now) == 0.0
    for _ in range(50):
        wait = bucket.take(now)
        assert wait > 0
        now += wait
        assert bucket.take(now) == 0.0


def test_bucket_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=10, now=0.0)
    for _ in range(10):
        bucket.take(0.0)
    assert bucket.take(0.05) == pytest.approx(0.05)  # half a token back after 50 ms
    # 0.35 s later 3.5 tokens have come back (the half token above included): 3 admitted.
    assert [bucket.take(0.35) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.35) == pytest.approx(0.05)


def test_bucket_never_holds_more_than_the_burst() -> None:
    bucket = TokenBucket(rate_per_s=100.0, burst=3, now=0.0)
    results = [bucket.take(3600.0) for _ in range(4)]
    assert results[:3] == [0.0, 0.0, 0.0]
    assert results[3] == pytest.approx(0.01)


def test_a_clock_going_backwards_adds_no_tokens() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1, now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)
    assert bucket.take(10.5) == pytest.approx(0.5)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_bucket_rejects_invalid_parameters(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, now=0.0)


def _limiter(**overrides: object) -> RateLimiter:
    data: dict[str, object] = {"enabled": True, "requests_per_s": 1.0, "burst": 2, **overrides}
    return RateLimiter(RateLimitConfig.model_validate(data))


def test_limiter_keeps_one_bucket_per_client() -> None:
    limiter = _limiter()
    assert [limiter.acquire("10.0.0.1", 0.0) for _ in range(2)] == [0.0, 0.0]
    retry_after = limiter.acquire("10.0.0.1", 0.0)
    assert retry_after == pytest.approx(1.0)
    assert limiter.acquire("10.0.0.2", 0.0) == 0.0  # another client is not affected


def test_limiter_forgets_the_least_recently_seen_client_beyond_max_keys() -> None:
    limiter = _limiter(max_keys=3)
    for key in ("a", "b", "c"):
        limiter.acquire(key, 0.0)
        limiter.acquire(key, 0.0)  # every bucket is now empty
    assert limiter.acquire("a", 0.0) > 0  # touching "a" makes "b" the oldest
    limiter.acquire("d", 0.0)
    assert len(limiter) == 3
    assert limiter.acquire("b", 0.0) == 0.0  # "b" was evicted: back with a full bucket
    assert limiter.acquire("a", 0.0) > 0  # "a" was kept and is still empty
    for index in range(1000):
        limiter.acquire(f"client-{index}", 0.0)
    assert len(limiter) == 3


def test_disabled_limiter_admits_everything_and_keeps_nothing() -> None:
    limiter = RateLimiter(RateLimitConfig(enabled=False, requests_per_s=1.0, burst=1))
    assert all(limiter.acquire("10.0.0.1", 0.0) == 0.0 for _ in range(100))
    assert len(limiter) == 0


def test_bulkhead_rejects_beyond_its_limit_until_a_slot_frees() -> None:
    bulkhead = Bulkhead(max_concurrent=2)
    assert bulkhead.try_enter() and bulkhead.try_enter()
    assert not bulkhead.try_enter()
    assert (bulkhead.active, bulkhead.rejected) == (2, 1)
    bulkhead.leave()
    assert bulkhead.active == 1
    assert bulkhead.try_enter()
    assert bulkhead.rejected == 1


def test_bulkhead_leave_without_enter_is_a_bug() -> None:
    bulkhead = Bulkhead(max_concurrent=1)
    with pytest.raises(RuntimeError):
        bulkhead.leave()
    assert bulkhead.active == 0


def test_bulkhead_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        Bulkhead(0)


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.001, "1"), (0.0, "1"), (-2.0, "1"), (1.0, "1"), (1.2, "2"), (59.0001, "60"), (120, "120")],
)
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header


@pytest.mark.parametrize("seconds", [float("nan"), float("inf")])
def test_retry_after_refuses_a_non_finite_delay(seconds: float) -> None:
    with pytest.raises(ValueError):
        retry_after_header(seconds)
