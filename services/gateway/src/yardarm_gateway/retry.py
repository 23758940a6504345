"""Retries: which requests may be retried, how long to wait, and how many at once.

A retry helps when a failure is transient and one replica of many is at fault; it
hurts when the whole upstream is overloaded, because every retry is more load on a
service that is already failing. So retries are bounded three ways: per request
(`max_retries`, spaced by fully jittered exponential backoff so retrying clients do not
arrive in lockstep), per route deadline (the caller stops when its deadline passes),
and per upstream (a retry budget, as in Envoy, caps concurrent retries relative to the
requests in flight, so retries can never multiply an overload).

A connection the upstream refused is different: the request never left the gateway,
so sending it to another endpoint adds no load anywhere. That is a re-route, not a
retry (`retry_verdict`): at once, outside the budget and `max_retries`, bounded only by
the request's deadline and by trying each endpoint once.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Literal

from yardarm_kit.gateway_policy import RetryConfig

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDEMPOTENCY_KEY = "idempotency-key"

Verdict = Literal["stop", "retry", "reroute"]

# 2.0 ** 1024 overflows a float; any exponent past this is already far beyond any cap.
_MAX_EXPONENT = 1023


def backoff_s(attempt: int, config: RetryConfig, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    Full jitter (uniform between 0 and the capped exponential) spreads the retries of
    many clients that failed at the same moment, so they do not hit the upstream again
    together; of the jitter variants it does the least total work for the same outcome.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0 (got {attempt})")
    ceiling = config.backoff_base_s * 2.0 ** min(attempt, _MAX_EXPONENT)
    return rng.uniform(0.0, min(config.backoff_max_s, ceiling))


def retry_verdict(
    failure: str | None,
    status: int | None,
    *,
    idempotent: bool,
    config: RetryConfig,
    retries: int,
) -> Verdict:
    """What follows an attempt that ended with `failure` or `status`.

    "reroute": the connection was refused (`connect_error`), so the request was never
    sent: another endpoint is tried at once, without the budget, a backoff or counting
    against `max_retries`, whatever the method. "retry": the request reached an
    upstream, may run twice (`idempotent`, see `is_retryable_request`) and failed in a
    way another try may fix, and fewer than `max_retries` (`retries` so far, re-routes
    not counted) were spent; it still needs the budget and waits a backoff. "stop":
    the answer or failure goes back to the client.
    """
    if not config.enabled:
        return "stop"
    if failure == "connect_error":
        return "reroute"
    if not idempotent:
        return "stop"
    if failure is None and status not in config.retry_on_status:
        return "stop"
    return "retry" if retries < config.max_retries else "stop"


def is_retryable_request(method: str, headers: Mapping[str, str]) -> bool:
    """Whether the gateway may send this request a second time.

    Only safe methods (GET, HEAD, OPTIONS; method names are case-sensitive) or requests
    that carry a non-empty Idempotency-Key, with which the upstream itself deduplicates.
    PUT and DELETE are idempotent by RFC 9110, but the gateway cannot tell whether the
    first try took effect: a PUT guarded by an expected version fails the second time
    with a conflict the client never caused, and a retried DELETE answers 404 for a
    delete that succeeded. The client must see such effects exactly once, so without a
    key these are left to the client to retry.
    """
    if method in SAFE_METHODS:
        return True
    # A plain dict is case-sensitive; aiohttp's headers are not. Scan to serve both.
    return any(name.lower() == IDEMPOTENCY_KEY and value.strip() for name, value in headers.items())


class RetryBudget:
    """Envoy's retry budget: concurrent retries are capped by the traffic in flight.

    Active retries may not exceed max(min_retry_concurrency, budget_percent% of the
    active original requests). A fixed retry count alone multiplies load by
    (1 + max_retries) exactly when the upstream is failing everywhere; the budget ties
    retries to real traffic instead, and the floor of `min_retry_concurrency` still lets
    a quiet upstream retry at all.
    """

    __slots__ = ("_active_requests", "_active_retries", "_min", "_percent", "rejected")

    def __init__(self, budget_percent: float, min_retry_concurrency: int) -> None:
        if not 0 <= budget_percent <= 100:
            raise ValueError(f"budget_percent must be 0..100 (got {budget_percent})")
        if min_retry_concurrency < 0:
            raise ValueError(f"min_retry_concurrency must be >= 0 (got {min_retry_concurrency})")
        self._percent = budget_percent
        self._min = min_retry_concurrency
        self._active_requests = 0
        self._active_retries = 0
        self.rejected = 0

    @property
    def active_requests(self) -> int:
        return self._active_requests

    @property
    def active_retries(self) -> int:
        return self._active_retries

    @property
    def limit(self) -> int:
        """How many retries may be in flight now."""
        # The epsilon keeps a float product such as 6.999999999999999 from losing a slot.
        return max(self._min, int(self._percent * self._active_requests / 100 + 1e-9))

    def request_started(self) -> None:
        """An original request (not a retry) is in flight."""
        self._active_requests += 1

    def request_finished(self) -> None:
        if self._active_requests == 0:
            raise RuntimeError("request_finished without a matching request_started")
        self._active_requests -= 1

    def try_acquire_retry(self) -> bool:
        """Take a retry slot; False (and counted in `rejected`) when the budget is spent."""
        if self._active_retries >= self.limit:
            self.rejected += 1
            return False
        self._active_retries += 1
        return True

    def release_retry(self) -> None:
        """The retry has finished, whatever its outcome."""
        if self._active_retries == 0:
            raise RuntimeError("release_retry without a matching try_acquire_retry")
        self._active_retries -= 1
