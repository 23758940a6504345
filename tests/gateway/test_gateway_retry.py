"""Retries: config validation, full-jitter backoff, which requests may be retried, budget."""

from __future__ import annotations

import random

import pytest
from multidict import CIMultiDict
from pydantic import ValidationError
from yardarm_gateway.retry import (
    RetryBudget,
    RetryConfig,
    backoff_s,
    is_retryable_request,
    retry_verdict,
)


def test_config_defaults_retry_gateway_errors_twice() -> None:
    config = RetryConfig()
    assert config.enabled
    assert config.max_retries == 2
    assert config.retry_on_status == frozenset({502, 503, 504})
    assert config.per_try_timeout_s is None
    assert (config.budget_percent, config.budget_min_retry_concurrency) == (20.0, 10)


def test_default_budget_retries_every_request_in_flight_on_a_replica_that_dies() -> None:
    """A SIGKILLed replica of two resets the requests it held, about half of those in
    flight; with a handful of clients every one of them must still get its retry."""
    config = RetryConfig()
    budget = RetryBudget(config.budget_percent, config.budget_min_retry_concurrency)
    for _ in range(16):
        budget.request_started()
    assert all(budget.try_acquire_retry() for _ in range(8))
    assert budget.rejected == 0


RETRYABLE = RetryConfig()


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_refused_connection_is_rerouted_whatever_the_retries_already_spent(
    idempotent: bool,
) -> None:
    """Nothing left the gateway: another endpoint is tried at once, outside the budget
    and the retry count (each endpoint still only once per request, see the proxy)."""
    for spent in (0, RETRYABLE.max_retries, RETRYABLE.max_retries + 5):
        verdict = retry_verdict(
            "connect_error", None, idempotent=idempotent, config=RETRYABLE, retries=spent
        )
        assert verdict == "reroute", spent


@pytest.mark.parametrize(
    ("failure", "status"),
    [("invalid_response", None), ("timeout", None), (None, 502), (None, 503), (None, 504)],
)
def test_an_idempotent_request_that_reached_an_upstream_is_retried_within_max_retries(
    failure: str | None, status: int | None
) -> None:
    verdicts = [
        retry_verdict(failure, status, idempotent=True, config=RETRYABLE, retries=spent)
        for spent in range(RETRYABLE.max_retries + 2)
    ]
    assert verdicts == ["retry"] * RETRYABLE.max_retries + ["stop", "stop"]


@pytest.mark.parametrize(
    ("failure", "status"), [("invalid_response", None), ("timeout", None), (None, 503)]
)
def test_a_request_without_a_key_that_reached_an_upstream_is_never_sent_again(
    failure: str | None, status: int | None
) -> None:
    verdict = retry_verdict(failure, status, idempotent=False, config=RETRYABLE, retries=0)
    assert verdict == "stop"


@pytest.mark.parametrize("status", [200, 404, 409, 500, 501])
def test_answers_outside_retry_on_status_are_final(status: int) -> None:
    assert retry_verdict(None, status, idempotent=True, config=RETRYABLE, retries=0) == "stop"


def test_retries_turned_off_stop_every_retry_even_a_reroute() -> None:
    off = RetryConfig(enabled=False)
    for failure in ("connect_error", "invalid_response"):
        assert retry_verdict(failure, None, idempotent=True, config=off, retries=0) == "stop"


def test_config_reads_statuses_from_a_json_list() -> None:
    config = RetryConfig.model_validate_json('{"retry_on_status": [503, 429]}')
    assert config.retry_on_status == frozenset({503, 429})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_retries", -1),
        ("backoff_base_s", 0),
        ("backoff_max_s", -0.1),
        ("per_try_timeout_s", 0),
        ("budget_percent", 101),
        ("budget_min_retry_concurrency", -1),
        ("retry_on_status", [200]),
        ("retry_on_status", [302]),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        RetryConfig.model_validate({field: value})


def test_config_rejects_a_cap_below_the_base() -> None:
    with pytest.raises(ValidationError, match="backoff_max_s"):
        RetryConfig(backoff_base_s=0.5, backoff_max_s=0.1)


def test_config_is_frozen_and_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        RetryConfig.model_validate({"retries": 3})
    config = RetryConfig()
    with pytest.raises(ValidationError):
        config.max_retries = 5


def test_backoff_stays_within_the_capped_exponential() -> None:
    config = RetryConfig(backoff_base_s=0.025, backoff_max_s=0.25)
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(0.25, 0.025 * 2**attempt)
        samples = [backoff_s(attempt, config, rng) for _ in range(500)]
        assert all(0.0 <= s <= ceiling for s in samples), attempt
        # The ceiling is reached, not a lower constant: the upper tenth is sampled.
        assert max(samples) > 0.9 * ceiling, attempt


def test_backoff_is_fully_jittered_down_to_zero() -> None:
    """Full jitter spreads uniformly over [0, ceiling], unlike 'equal jitter' ([c/2, c])."""
    config = RetryConfig(backoff_base_s=0.1, backoff_max_s=1.0)
    rng = random.Random(42)
    ceiling = 0.4  # attempt 2: 0.1 * 2**2
    samples = [backoff_s(2, config, rng) for _ in range(4000)]
    quarters = [0, 0, 0, 0]
    for sample in samples:
        quarters[min(3, int(sample / ceiling * 4))] += 1
    assert all(800 <= count <= 1200 for count in quarters), quarters
    assert min(samples) < 0.01 * ceiling
    assert abs(sum(samples) / len(samples) - ceiling / 2) < 0.02


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    config = RetryConfig()
    first = [backoff_s(a, config, random.Random(3)) for a in range(5)]
    again = [backoff_s(a, config, random.Random(3)) for a in range(5)]
    assert first == again


def test_backoff_survives_huge_attempt_numbers() -> None:
    config = RetryConfig(backoff_base_s=0.025, backoff_max_s=0.25)
    rng = random.Random(1)
    assert 0.0 <= backoff_s(5000, config, rng) <= 0.25


def test_backoff_rejects_a_negative_attempt() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_s(-1, RetryConfig(), random.Random(0))


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_safe_methods_are_retryable(method: str) -> None:
    assert is_retryable_request(method, {})


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_unsafe_methods_without_a_key_are_not_retried(method: str) -> None:
    assert not is_retryable_request(method, {"Content-Type": "application/json"})


def test_method_names_are_case_sensitive() -> None:
    assert not is_retryable_request("get", {})


@pytest.mark.parametrize(
    "headers",
    [
        {"Idempotency-Key": "8e03978e-40d5-43e8-bc93-6894a57f9324"},
        {"idempotency-key": "abc"},
        CIMultiDict({"IDEMPOTENCY-KEY": "abc"}),
    ],
)
def test_an_idempotency_key_makes_any_method_retryable(headers: dict[str, str]) -> None:
    assert is_retryable_request("POST", headers)
    assert is_retryable_request("DELETE", headers)


def test_an_empty_idempotency_key_does_not_count() -> None:
    assert not is_retryable_request("POST", {"Idempotency-Key": "  "})


def test_budget_allows_the_minimum_concurrency_with_few_requests() -> None:
    budget = RetryBudget(budget_percent=20.0, min_retry_concurrency=3)
    budget.request_started()
    assert [budget.try_acquire_retry() for _ in range(4)] == [True, True, True, False]
    assert budget.active_retries == 3
    assert budget.rejected == 1


def test_budget_allows_the_percentage_of_many_active_requests() -> None:
    budget = RetryBudget(budget_percent=20.0, min_retry_concurrency=3)
    for _ in range(100):
        budget.request_started()
    granted = sum(budget.try_acquire_retry() for _ in range(30))
    assert granted == 20
    assert budget.rejected == 10
    assert budget.active_requests == 100


def test_budget_percentage_does_not_lose_a_slot_to_float_rounding() -> None:
    budget = RetryBudget(budget_percent=18.4, min_retry_concurrency=0)
    for _ in range(375):  # 18.4% of 375 is 69, but 18.4 * 375 / 100 is 68.99999999999999
        budget.request_started()
    assert sum(budget.try_acquire_retry() for _ in range(80)) == 69


def test_released_retry_frees_its_slot() -> None:
    budget = RetryBudget(budget_percent=20.0, min_retry_concurrency=1)
    assert budget.try_acquire_retry()
    assert not budget.try_acquire_retry()
    budget.release_retry()
    assert budget.active_retries == 0
    assert budget.try_acquire_retry()


def test_finished_requests_shrink_the_budget() -> None:
    budget = RetryBudget(budget_percent=50.0, min_retry_concurrency=0)
    for _ in range(4):
        budget.request_started()
    assert budget.try_acquire_retry() and budget.try_acquire_retry()
    for _ in range(4):
        budget.request_finished()
    assert budget.active_requests == 0
    assert not budget.try_acquire_retry()
    budget.release_retry()
    budget.release_retry()
    assert budget.active_retries == 0


def test_budget_of_zero_refuses_every_retry() -> None:
    budget = RetryBudget(budget_percent=0.0, min_retry_concurrency=0)
    for _ in range(1000):
        budget.request_started()
    assert not budget.try_acquire_retry()


def test_unbalanced_release_is_a_bug_not_a_negative_count() -> None:
    budget = RetryBudget(budget_percent=20.0, min_retry_concurrency=3)
    with pytest.raises(RuntimeError):
        budget.release_retry()
    with pytest.raises(RuntimeError):
        budget.request_finished()
    assert (budget.active_requests, budget.active_retries) == (0, 0)


@pytest.mark.parametrize(("percent", "minimum"), [(-1.0, 3), (100.5, 3), (20.0, -1)])
def test_budget_rejects_invalid_parameters(percent: float, minimum: int) -> None:
    with pytest.raises(ValueError):
        RetryBudget(percent, minimum)
