"""Circuit breaker: resilience4j's state machine over count and time windows."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from yardarm_gateway.breaker import BreakerConfig, BreakerState, CircuitBreaker

Transitions = list[tuple[str, BreakerState, BreakerState, str]]


def breaker(transitions: Transitions | None = None, **overrides: Any) -> CircuitBreaker:
    settings: dict[str, Any] = {
        "window_size": 10,
        "minimum_calls": 4,
        "failure_rate_threshold": 50.0,
        "slow_call_rate_threshold": 100.0,
        "slow_call_duration_s": 1.0,
        "wait_in_open_s": 10.0,
        "permitted_calls_in_half_open": 3,
    }
    settings.update(overrides)

    def on_transition(name: str, old: BreakerState, new: BreakerState, reason: str) -> None:
        if transitions is not None:
            transitions.append((name, old, new, reason))

    return CircuitBreaker("orders", BreakerConfig(**settings), on_transition)


def call(cb: CircuitBreaker, now: float, *, failed: bool = False, duration_s: float = 0.01) -> bool:
    """One call through the breaker: acquire, and record the outcome when admitted."""
    if not cb.try_acquire(now):
        return False
    cb.record(now, duration_s, failed)
    return True


def state(cb: CircuitBreaker) -> BreakerState:
    """The current state, read afresh (a property read would be narrowed by each assert)."""
    return cb.state


def trip(cb: CircuitBreaker, now: float) -> None:
    for _ in range(4):
        call(cb, now, failed=True)
    assert state(cb) == "open"


def test_failure_rate_at_threshold_opens_the_circuit() -> None:
    transitions: Transitions = []
    cb = breaker(transitions)
    for failed in (False, True, False):
        assert call(cb, 0.0, failed=failed)
    assert state(cb) == "closed"
    assert call(cb, 0.0, failed=True)  # 2 of 4 failed: 50% >= 50%
    assert state(cb) == "open"
    assert not cb.try_acquire(0.1)
    assert [(t[0], t[1], t[2]) for t in transitions] == [("orders", "closed", "open")]
    assert "failure rate 50.0%" in transitions[0][3]


def test_failure_rate_below_threshold_keeps_it_closed() -> None:
    cb = breaker(window_size=10, minimum_calls=10)
    for i in range(100):
        assert call(cb, 0.0, failed=i % 10 < 4)  # 40% failures, spread evenly
    assert state(cb) == "closed"


def test_slow_call_rate_opens_the_circuit_even_when_calls_succeed() -> None:
    transitions: Transitions = []
    cb = breaker(transitions, slow_call_rate_threshold=75.0)
    call(cb, 0.0, duration_s=0.5)
    for _ in range(2):
        call(cb, 0.0, duration_s=1.0)  # exactly the slow-call duration counts as slow
    assert state(cb) == "closed"
    call(cb, 0.0, duration_s=3.0)  # 3 of 4 slow: 75%
    assert state(cb) == "open"
    assert "slow-call rate 75.0%" in transitions[0][3]


def test_no_decision_before_minimum_calls() -> None:
    cb = breaker(minimum_calls=5)
    for _ in range(4):
        assert call(cb, 0.0, failed=True)
    assert state(cb) == "closed"
    assert cb.snapshot(0.0)["failure_rate"] == 100.0
    call(cb, 0.0, failed=True)
    assert state(cb) == "open"


def test_minimum_calls_is_capped_at_a_count_window_size() -> None:
    cb = breaker(window_size=3, minimum_calls=20)
    for _ in range(3):
        call(cb, 0.0, failed=True)
    assert state(cb) == "open"


def test_count_window_forgets_the_oldest_calls() -> None:
    cb = breaker(window_size=4, minimum_calls=4, failure_rate_threshold=75.0)
    for failed in (True, True, False, False):  # 50%
        call(cb, 0.0, failed=failed)
    for _ in range(2):  # pushes out both failures: 0%
        call(cb, 0.0)
    assert cb.snapshot(0.0)["failure_rate"] == 0.0
    for _ in range(2):  # 2 of the last 4 failed: 50%, below 75%
        call(cb, 0.0, failed=True)
    assert state(cb) == "closed"
    call(cb, 0.0, failed=True)  # 3 of the last 4: 75%
    assert state(cb) == "open"


def test_open_rejects_until_the_wait_then_half_opens() -> None:
    transitions: Transitions = []
    cb = breaker(transitions)
    trip(cb, 100.0)
    assert cb.retry_after_s(104.0) == pytest.approx(6.0)
    assert not cb.try_acquire(109.9)
    assert state(cb) == "open"
    assert cb.try_acquire(110.0)
    assert state(cb) == "half_open"
    assert cb.retry_after_s(110.0) == 0.0
    assert [(t[1], t[2]) for t in transitions] == [("closed", "open"), ("open", "half_open")]


def test_calls_admitted_before_the_trip_do_not_count_once_open() -> None:
    cb = breaker()
    assert cb.try_acquire(0.0)  # in flight while the circuit trips
    trip(cb, 0.0)
    cb.record(1.0, 0.01, False)
    assert state(cb) == "open"
    assert cb.snapshot(1.0)["calls"] == 4


def test_half_open_permits_only_the_trial_calls() -> None:
    cb = breaker()
    trip(cb, 0.0)
    assert [cb.try_acquire(10.0) for _ in range(5)] == [True, True, True, False, False]
    assert cb.snapshot(10.0)["half_open_in_flight"] == 3


def test_half_open_closes_when_the_trial_calls_succeed() -> None:
    transitions: Transitions = []
    cb = breaker(transitions)
    trip(cb, 0.0)
    for _ in range(3):
        assert cb.try_acquire(10.0)
    cb.record(10.5, 0.01, True)  # 1 of 3 failed: 33% < 50%
    cb.record(10.5, 0.01, False)
    assert state(cb) == "half_open"  # undecided until every trial call is recorded
    cb.record(10.5, 0.01, False)
    assert state(cb) == "closed"
    assert transitions[-1][1:3] == ("half_open", "closed")
    # A fresh window: the failures that tripped it are gone.
    assert cb.snapshot(10.5)["calls"] == 0
    for _ in range(3):
        call(cb, 11.0, failed=True)
    assert state(cb) == "closed"


def test_half_open_reopens_when_the_trial_calls_fail() -> None:
    transitions: Transitions = []
    cb = breaker(transitions)
    trip(cb, 0.0)
    for failed in (True, True, False):
        assert call(cb, 10.0, failed=failed)
    assert state(cb) == "open"
    assert transitions[-1][1:3] == ("half_open", "open")
    assert "half-open trial" in transitions[-1][3]
    # The wait starts over from the re-open.
    assert not cb.try_acquire(19.9)
    assert cb.retry_after_s(15.0) == pytest.approx(5.0)
    assert cb.try_acquire(20.0)


def test_half_open_reopens_on_slow_trial_calls() -> None:
    cb = breaker()
    trip(cb, 0.0)
    for _ in range(3):
        call(cb, 10.0, duration_s=2.0)
    assert state(cb) == "open"


def test_release_gives_a_half_open_permit_back() -> None:
    cb = breaker()
    trip(cb, 0.0)
    for _ in range(3):
        assert cb.try_acquire(10.0)
    assert not cb.try_acquire(10.0)
    cb.release()  # one trial call was cancelled
    assert cb.try_acquire(10.0)
    assert not cb.try_acquire(10.0)
    for _ in range(3):
        cb.record(10.5, 0.01, False)
    assert state(cb) == "closed"


def test_release_never_grants_more_than_the_permitted_calls() -> None:
    cb = breaker()
    trip(cb, 0.0)
    assert call(cb, 10.0)
    cb.release()  # nothing in flight: a stray release (a call from before the trip)
    cb.release()
    assert [cb.try_acquire(10.0) for _ in range(3)] == [True, True, False]


def test_outcomes_beyond_the_trial_calls_are_not_counted_in_half_open() -> None:
    cb = breaker()
    trip(cb, 0.0)
    assert cb.try_acquire(10.0)
    cb.record(10.0, 0.01, True)  # the trial call
    cb.record(10.0, 0.01, True)  # a call admitted while closed, finishing late
    cb.record(10.0, 0.01, True)
    assert state(cb) == "half_open"
    assert cb.snapshot(10.0)["calls"] == 1


def test_time_window_counts_only_the_last_seconds() -> None:
    cb = breaker(window_type="time", window_size=10, minimum_calls=4)
    for second in range(3):
        call(cb, 100.0 + second, failed=True)
    assert cb.snapshot(102.5)["calls"] == 3
    # 10 s later those three failures have left the window: one more does not trip it.
    call(cb, 112.5, failed=True)
    assert state(cb) == "closed"
    assert cb.snapshot(112.5)["calls"] == 1
    for _ in range(3):
        call(cb, 113.0, failed=True)
    assert state(cb) == "open"


def test_time_window_forgets_bucket_by_bucket() -> None:
    cb = breaker(window_type="time", window_size=5, minimum_calls=100)
    for second in range(5):
        for _ in range(second + 1):  # 1, 2, 3, 4, 5 calls in seconds 0..4
            call(cb, float(second) + 0.5, failed=second % 2 == 0)
    assert cb.snapshot(4.9)["calls"] == 15
    assert cb.snapshot(5.0)["calls"] == 14  # second 0 is out
    assert cb.snapshot(6.2)["calls"] == 12  # and second 1
    snapshot = cb.snapshot(8.0)  # only second 4 remains: 5 failures
    assert (snapshot["calls"], snapshot["failed_calls"]) == (5, 5)
    assert cb.snapshot(1000.0)["calls"] == 0
    call(cb, 1000.0)
    assert cb.snapshot(1000.0)["calls"] == 1


def test_disabled_breaker_admits_everything_and_never_transitions() -> None:
    transitions: Transitions = []
    cb = breaker(transitions, enabled=False)
    for _ in range(50):
        assert call(cb, 0.0, failed=True, duration_s=60.0)
    assert state(cb) == "closed"
    assert cb.retry_after_s(0.0) == 0.0
    assert transitions == []
    assert cb.snapshot(0.0)["enabled"] is False


def test_every_transition_reaches_the_callback_in_order() -> None:
    transitions: Transitions = []
    cb = breaker(transitions)
    trip(cb, 0.0)
    for _ in range(3):
        call(cb, 10.0, failed=True)
    for _ in range(3):
        call(cb, 20.0)
    trip(cb, 21.0)
    assert [(t[1], t[2]) for t in transitions] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("closed", "open"),
    ]
    assert {t[0] for t in transitions} == {"orders"}


def test_snapshot_reports_state_and_rates() -> None:
    cb = breaker(slow_call_rate_threshold=90.0)
    call(cb, 0.0, failed=True)
    call(cb, 0.0, duration_s=2.0)
    call(cb, 0.0)
    snapshot = cb.snapshot(0.0)
    assert snapshot["state"] == "closed"
    assert snapshot["calls"] == 3
    assert snapshot["failure_rate"] == pytest.approx(100 / 3)
    assert snapshot["slow_call_rate"] == pytest.approx(100 / 3)
    assert breaker().snapshot(0.0)["failure_rate"] is None
    call(cb, 1.0, failed=True)
    opened = cb.snapshot(3.0)
    assert (opened["state"], opened["failure_rate"]) == ("open", 50.0)
    assert opened["retry_after_s"] == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_rate_threshold", 0.0),
        ("failure_rate_threshold", 100.1),
        ("slow_call_rate_threshold", 0.0),
        ("window_size", 0),
        ("minimum_calls", 0),
        ("permitted_calls_in_half_open", 0),
        ("wait_in_open_s", 0.0),
        ("slow_call_duration_s", -1.0),
        ("window_type", "sliding"),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as excinfo:
        BreakerConfig.model_validate({field: value})
    assert field in str(excinfo.value)


def test_config_rejects_unknown_fields_and_is_frozen() -> None:
    with pytest.raises(ValidationError, match="failure_threshold"):
        BreakerConfig.model_validate({"failure_threshold": 10})
    config = BreakerConfig()
    with pytest.raises(ValidationError):
        config.window_size = 5
