"""Request deadlines carried across hops, so nobody works for a caller who has gone.

The inbound `yardarm-timeout-ms` header becomes an absolute monotonic deadline in a
context variable; outbound calls send what is left of it.
"""

from __future__ import annotations

import contextvars
import time

TIMEOUT_HEADER = "yardarm-timeout-ms"

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "yardarm_deadline", default=None
)


def set_deadline(seconds_from_now: float) -> contextvars.Token[float | None]:
    """Start a deadline for the current task; never extends an earlier, tighter one."""
    candidate = time.monotonic() + seconds_from_now
    current = _deadline.get()
    if current is not None and current < candidate:
        candidate = current
    return _deadline.set(candidate)


def reset_deadline(token: contextvars.Token[float | None]) -> None:
    """Restore the deadline that was in force before `set_deadline`."""
    _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the current deadline (negative once passed), or None."""
    current = _deadline.get()
    return None if current is None else current - time.monotonic()


def budget(timeout: float | None) -> float | None:
    """The smaller of an own timeout and what is left of the inbound deadline."""
    left = remaining()
    if left is None:
        return timeout
    if timeout is None:
        return left
    return min(timeout, left)


MAX_TIMEOUT_MS = 24 * 3600 * 1000


def parse_header(value: str | None) -> float | None:
    """Seconds from a `yardarm-timeout-ms` header; None when absent or not a positive,
    finite number of milliseconds (the caller's error, answered 400: a deadline that
    has already passed is never sent, see `HttpClient`). Budgets beyond a day are a day:
    no request runs that long, and the event loop's timers take no larger values."""
    if value is None:
        return None
    try:
        millis = float(value)
    except ValueError:
        return None
    if not 0 < millis < float("inf"):  # also NaN
        return None
    return min(millis, MAX_TIMEOUT_MS) / 1000.0
