"""Circuit breaker: stop sending calls to a target that fails, probe it before trusting it again.

The state machine follows resilience4j's CircuitBreaker so its documentation applies:

- CLOSED records every outcome in a sliding window (the last N calls, or the calls of the
  last N seconds) and, once `minimum_calls` are in it, opens when the failure rate or the
  slow-call rate reaches its threshold.
- OPEN rejects calls; the first `try_acquire` after `wait_in_open_s` moves to HALF_OPEN.
- HALF_OPEN admits `permitted_calls_in_half_open` trial calls; when all of them have been
  recorded it closes if both rates are below their thresholds, else it opens again.

Time is passed in (`now`, monotonic seconds) so the machine is deterministic in tests.
`try_acquire` and `record` sit on the request path: both are O(1) (the time window's
eviction is amortised over the seconds that pass) and allocate nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from yardarm_kit.gateway_policy import BreakerConfig

BreakerState = Literal["closed", "open", "half_open"]

Transition = Callable[[str, BreakerState, BreakerState, str], None]
"""Called as (breaker name, old state, new state, reason) on every state change."""

_FAILED = 1
_SLOW = 2


class _CountWindow:
    """The outcomes of the last `size` calls: a ring buffer with running totals."""

    __slots__ = ("_next", "_outcomes", "_size", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self._outcomes = bytearray(size)
        self._next = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def advance(self, now: float) -> None:
        """A count window does not age."""

    def record(self, now: float, outcome: int) -> None:
        index = self._next
        if self.calls == self._size:
            evicted = self._outcomes[index]
            self.failures -= evicted & _FAILED
            self.slow -= (evicted & _SLOW) >> 1
        else:
            self.calls += 1
        self._outcomes[index] = outcome
        self.failures += outcome & _FAILED
        self.slow += (outcome & _SLOW) >> 1
        self._next = index + 1 if index + 1 < self._size else 0

    def reset(self) -> None:
        # Only the totals and the fill level matter: slots beyond `calls` are never read.
        self._next = 0
        self.calls = self.failures = self.slow = 0


class _TimeWindow:
    """The outcomes of the last `size` seconds, in one-second buckets with running totals.

    Bucket i holds the second s with s % size == i. Moving to a later second evicts the
    buckets of the seconds skipped over, at most `size` of them, each once per pass.
    """

    __slots__ = (
        "_bucket_calls",
        "_bucket_failures",
        "_bucket_slow",
        "_head",
        "_size",
        "calls",
        "failures",
        "slow",
    )

    def __init__(self, size: int) -> None:
        self._size = size
        self._bucket_calls = [0] * size
        self._bucket_failures = [0] * size
        self._bucket_slow = [0] * size
        self._head: int | None = None
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def advance(self, now: float) -> int:
        """Evict what `now` pushed out of the window; returns the second now counted in."""
        second = math.floor(now)
        head = self._head
        if head is None:
            self._head = second
            return second
        if second <= head:
            # Behind the head (never with a monotonic clock): counts in the head bucket.
            return head
        size = self._size
        for skipped in range(head + 1, head + 1 + min(second - head, size)):
            index = skipped % size
            self.calls -= self._bucket_calls[index]
            self.failures -= self._bucket_failures[index]
            self.slow -= self._bucket_slow[index]
            self._bucket_calls[index] = 0
            self._bucket_failures[index] = 0
            self._bucket_slow[index] = 0
        self._head = second
        return second

    def record(self, now: float, outcome: int) -> None:
        index = self.advance(now) % self._size
        failed = outcome & _FAILED
        slow = (outcome & _SLOW) >> 1
        self._bucket_calls[index] += 1
        self._bucket_failures[index] += failed
        self._bucket_slow[index] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def reset(self) -> None:
        for index in range(self._size):
            self._bucket_calls[index] = 0
            self._bucket_failures[index] = 0
            self._bucket_slow[index] = 0
        self._head = None
        self.calls = self.failures = self.slow = 0


def _rate(part: int, calls: int) -> float:
    return part * 100.0 / calls


class CircuitBreaker:
    """One circuit: guards a target (an endpoint, or a whole release track) against overload.

    Calls go `try_acquire` -> (call) -> `record`, or `release` when the call ended without
    an outcome (cancelled), which gives a half-open trial permit back. Outcomes of calls
    admitted before the circuit opened are ignored once it is open: the decision is made.
    """

    __slots__ = (
        "_closed_window",
        "_config",
        "_metrics",
        "_minimum_calls",
        "_on_transition",
        "_opened_at",
        "_state",
        "_trial_acquired",
        "_trial_window",
        "name",
    )

    def __init__(
        self, name: str, config: BreakerConfig, on_transition: Transition | None = None
    ) -> None:
        self.name = name
        self._config = config
        self._on_transition = on_transition
        self._state: BreakerState = "closed"
        self._closed_window: _CountWindow | _TimeWindow
        if config.window_type == "count":
            self._closed_window = _CountWindow(config.window_size)
            self._minimum_calls = min(config.minimum_calls, config.window_size)
        else:
            self._closed_window = _TimeWindow(config.window_size)
            self._minimum_calls = config.minimum_calls
        # Half-open outcomes are kept apart, as resilience4j does, so the trial is judged
        # on the trial calls alone and the open state can report what re-opened it.
        self._trial_window = _CountWindow(config.permitted_calls_in_half_open)
        self._metrics: _CountWindow | _TimeWindow = self._closed_window
        self._trial_acquired = 0
        self._opened_at = 0.0

    @property
    def config(self) -> BreakerConfig:
        return self._config

    @property
    def state(self) -> BreakerState:
        return self._state

    def try_acquire(self, now: float) -> bool:
        """Whether a call may go ahead now; a True must be followed by `record` or `release`."""
        state = self._state
        if state == "closed":  # where a disabled breaker always stays
            return True
        if state == "open":
            if now - self._opened_at < self._config.wait_in_open_s:
                return False
            self._half_open()
        if self._trial_acquired >= self._config.permitted_calls_in_half_open:
            return False
        self._trial_acquired += 1
        return True

    def record(self, now: float, duration_s: float, failed: bool) -> None:
        """The outcome of an admitted call; may open or close the circuit."""
        config = self._config
        if not config.enabled:
            return
        outcome = (_FAILED if failed else 0) | (
            _SLOW if duration_s >= config.slow_call_duration_s else 0
        )
        state = self._state
        if state == "closed":
            window = self._closed_window
            window.record(now, outcome)
            if window.calls >= self._minimum_calls:
                reason = self._tripped(window)
                if reason is not None:
                    self._open(now, reason)
        elif state == "half_open":
            trial = self._trial_window
            if trial.calls >= self._trial_acquired:
                return  # not a trial call: admitted while closed, finished after the trip
            trial.record(now, outcome)
            if trial.calls >= config.permitted_calls_in_half_open:
                reason = self._tripped(trial)
                if reason is None:
                    self._close(trial)
                else:
                    self._open(now, f"half-open trial: {reason}")

    def release(self) -> None:
        """An admitted call ended without an outcome: its half-open permit is free again."""
        if self._state == "half_open" and self._trial_acquired > self._trial_window.calls:
            self._trial_acquired -= 1

    def retry_after_s(self, now: float) -> float:
        """Seconds until an open circuit admits a trial call; 0 when it is not open."""
        if self._state != "open":
            return 0.0
        return max(0.0, self._opened_at + self._config.wait_in_open_s - now)

    def snapshot(self, now: float) -> dict[str, object]:
        """State and the rates it was judged on (in the open state: those that opened it)."""
        metrics = self._metrics
        trial = metrics is self._trial_window
        if self._state == "closed":
            metrics.advance(now)
        calls = metrics.calls
        snapshot: dict[str, object] = {
            "name": self.name,
            "enabled": self._config.enabled,
            "state": self._state,
            "window": "half_open_trial" if trial else self._config.window_type,
            "calls": calls,
            "failed_calls": metrics.failures,
            "slow_calls": metrics.slow,
            "failure_rate": _rate(metrics.failures, calls) if calls else None,
            "slow_call_rate": _rate(metrics.slow, calls) if calls else None,
            "minimum_calls": (
                self._config.permitted_calls_in_half_open if trial else self._minimum_calls
            ),
            "retry_after_s": self.retry_after_s(now),
        }
        if self._state == "half_open":
            snapshot["half_open_in_flight"] = self._trial_acquired - self._trial_window.calls
            snapshot["half_open_permits_left"] = (
                self._config.permitted_calls_in_half_open - self._trial_acquired
            )
        return snapshot

    def _tripped(self, window: _CountWindow | _TimeWindow) -> str | None:
        config = self._config
        failure_rate = _rate(window.failures, window.calls)
        if failure_rate >= config.failure_rate_threshold:
            return (
                f"failure rate {failure_rate:.1f}% >= {config.failure_rate_threshold:g}%"
                f" over {window.calls} calls"
            )
        slow_rate = _rate(window.slow, window.calls)
        if slow_rate >= config.slow_call_rate_threshold:
            return (
                f"slow-call rate {slow_rate:.1f}% >= {config.slow_call_rate_threshold:g}%"
                f" (>= {config.slow_call_duration_s:g}s) over {window.calls} calls"
            )
        return None

    def reset(self, reason: str) -> None:
        """Closed, with no history: what the circuit guarded is gone (a track whose
        endpoints all left), so nothing it learnt applies to what comes next."""
        self._closed_window.reset()
        self._trial_window.reset()
        self._trial_acquired = 0
        self._metrics = self._closed_window
        if self._state != "closed":
            self._transition("closed", reason)

    def _open(self, now: float, reason: str) -> None:
        self._opened_at = now
        self._transition("open", reason)

    def _half_open(self) -> None:
        self._trial_window.reset()
        self._trial_acquired = 0
        self._metrics = self._trial_window
        self._transition("half_open", f"waited {self._config.wait_in_open_s:g}s in open")

    def _close(self, trial: _CountWindow) -> None:
        reason = (
            f"half-open trial: failure rate {_rate(trial.failures, trial.calls):.1f}% and"
            f" slow-call rate {_rate(trial.slow, trial.calls):.1f}% over {trial.calls} calls"
            " below thresholds"
        )
        self._closed_window.reset()
        self._metrics = self._closed_window
        self._transition("closed", reason)

    def _transition(self, new: BreakerState, reason: str) -> None:
        old = self._state
        self._state = new
        if self._on_transition is not None:
            self._on_transition(self.name, old, new, reason)
