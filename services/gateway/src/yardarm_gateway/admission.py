"""Admission control: turn excess load away early, cheaply and with a clear answer.

A per-client rate limit (a token bucket per key, as Envoy's local rate limit) stops one
client from taking the gateway's capacity from the others, and a per-upstream bulkhead
(a concurrency limit) stops one slow upstream from holding every connection of the
gateway. Both reject at once, with 429 + Retry-After or 503, instead of queueing work
that would time out anyway.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

from yardarm_kit.gateway_policy import RateLimitConfig

# RFC 9110 field-name: a token.
_FIELD_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

# A bucket that has refilled to within this of a whole token counts as holding one, so
# a client that waits exactly the Retry-After it was given is admitted despite rounding.
_EPSILON = 1e-9


class TokenBucket:
    """`burst` tokens, refilled continuously at `rate_per_s`; one request takes one.

    Refilling continuously (rather than a whole batch per fill interval) spreads the
    admitted requests evenly and makes the wait until the next token exact.
    """

    __slots__ = ("_burst", "_rate", "_tokens", "_updated")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0 (got {rate_per_s})")
        if burst < 1:
            raise ValueError(f"burst must be >= 1 (got {burst})")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until the next token."""
        if now > self._updated:
            self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self._rate


class RateLimiter:
    """A token bucket per client key, in bounded memory.

    Beyond `max_keys` clients the least recently seen is forgotten; if it returns it
    starts with a full bucket, which only ever errs towards admitting. A disabled
    config admits everything and keeps no state.
    """

    __slots__ = ("_buckets", "_config")

    def __init__(self, config: RateLimitConfig) -> None:
        self._config = config
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        """How many client keys are tracked."""
        return len(self._buckets)

    def acquire(self, key: str, now: float) -> float:
        """0.0 when admitted, else the seconds the client should wait (> 0)."""
        config = self._config
        if not config.enabled:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(config.requests_per_s, config.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > config.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


class Bulkhead:
    """A concurrency limit per upstream, so one slow upstream cannot hold every request.

    Rejects instead of queueing: a queued request would mostly wait out its deadline.
    """

    __slots__ = ("_active", "_max", "rejected")

    def __init__(self, max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1 (got {max_concurrent})")
        self._max = max_concurrent
        self._active = 0
        self.rejected = 0

    @property
    def active(self) -> int:
        return self._active

    @property
    def max_concurrent(self) -> int:
        return self._max

    def try_enter(self) -> bool:
        """Take a slot; False (and counted in `rejected`) when all are taken."""
        if self._active >= self._max:
            self.rejected += 1
            return False
        self._active += 1
        return True

    def leave(self) -> None:
        if self._active == 0:
            raise RuntimeError("leave without a matching try_enter")
        self._active -= 1


def retry_after_header(seconds: float) -> str:
    """A Retry-After value: whole seconds (RFC 9110 delay-seconds), rounded up, at least 1.

    Rounding down would invite the client back before a token exists; 0 would invite
    it back at once.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"Retry-After needs a finite delay (got {seconds})")
    return str(max(1, math.ceil(seconds)))
