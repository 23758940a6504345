"""The gateway's policy vocabulary: balancing, health checks, outlier ejection, breakers,
retries and admission, as validated settings.

They live in the kit, not in the gateway, because two parties read them: the gateway,
which enforces them, and the deployment model, which validates a `yardarm.yaml` before
anything starts (and must not import a service to do so). Only pydantic is imported
here, so loading the model stays cheap for every CLI command.
"""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Policy = Literal[
    "round_robin", "weighted_round_robin", "least_request", "peak_ewma", "consistent_hash"
]
HashSource = Literal["header", "cookie", "client_address"]

# RFC 9110 field-name: a token.
_FIELD_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class BalancerConfig(BaseModel):
    """How one upstream spreads its requests; invalid combinations fail at start-up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Policy = "round_robin"
    hash_on: HashSource | None = None
    hash_key: str | None = Field(default=None, min_length=1)
    ring_size: int = Field(default=1024, ge=1, le=65536)
    choice_count: int = Field(default=2, ge=2, le=32)
    active_request_bias: float = Field(default=1.0, ge=0.0, le=16.0, allow_inf_nan=False)
    ewma_decay_s: float = Field(default=10.0, gt=0.0, allow_inf_nan=False)
    slow_start_window_s: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    slow_start_aggression: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    slow_start_min_weight_percent: float = Field(
        default=10.0, ge=1.0, le=100.0, allow_inf_nan=False
    )
    healthy_panic_threshold_percent: float = Field(
        default=50.0, ge=0.0, le=100.0, allow_inf_nan=False
    )
    """Below this share of endpoints in rotation, balance over all of them; 0 turns it off."""

    @model_validator(mode="after")
    def _hashing_is_complete(self) -> Self:
        if self.policy == "consistent_hash":
            if self.hash_on is None:
                raise ValueError(
                    "policy consistent_hash needs hash_on: header, cookie or client_address"
                )
            if self.slow_start_window_s > 0:
                raise ValueError(
                    "slow start does not apply to consistent_hash (a key's endpoint must not "
                    "depend on time); set slow_start_window_s to 0"
                )
        elif self.hash_on is not None:
            raise ValueError(
                f"hash_on only applies to policy consistent_hash, not {self.policy!r}; "
                "remove hash_on or set policy: consistent_hash"
            )
        if self.hash_on in ("header", "cookie") and self.hash_key is None:
            raise ValueError(f"hash_on {self.hash_on!r} needs hash_key: the {self.hash_on} name")
        if self.hash_on == "client_address" and self.hash_key is not None:
            raise ValueError("hash_key names a header or cookie; hash_on client_address has none")
        return self


class BreakerConfig(BaseModel):
    """When a circuit opens and how it recovers; names mirror resilience4j's settings.

    For a count window `minimum_calls` is capped at `window_size`, as resilience4j does, so
    a small window can still trip.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    window_type: Literal["count", "time"] = "count"
    window_size: int = Field(default=100, ge=1, le=100_000)
    """Calls (count window) or seconds (time window)."""
    minimum_calls: int = Field(default=20, ge=1)
    failure_rate_threshold: float = Field(default=50.0, gt=0.0, le=100.0)
    slow_call_rate_threshold: float = Field(default=100.0, gt=0.0, le=100.0)
    slow_call_duration_s: float = Field(default=5.0, gt=0.0)
    wait_in_open_s: float = Field(default=10.0, gt=0.0)
    permitted_calls_in_half_open: int = Field(default=5, ge=1, le=10_000)


class HealthConfig(BaseModel):
    """Envoy's health check knobs; a probe passes on HTTP 200 within `timeout_s`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    path: str = Field(default="/readyz", pattern=r"^/")
    interval_s: float = Field(default=1.0, gt=0, le=300)
    timeout_s: float = Field(default=0.5, gt=0, le=60)
    healthy_threshold: int = Field(default=2, ge=1, le=100)
    unhealthy_threshold: int = Field(default=2, ge=1, le=100)


class OutlierConfig(BaseModel):
    """When an endpoint counts as an outlier and how long it stays out; names follow Envoy's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    consecutive_5xx: int = Field(default=5, ge=0)
    """Consecutive 5xx (gateway failures included) that eject; 0 disables the check."""
    consecutive_gateway_failure: int = Field(default=5, ge=0)
    """Consecutive 502/503/504 or failures to get a response that eject; 0 disables it."""
    interval_s: float = Field(default=10.0, gt=0.0)
    base_ejection_time_s: float = Field(default=30.0, gt=0.0)
    max_ejection_time_s: float = Field(default=300.0, gt=0.0)
    max_ejection_percent: float = Field(default=10.0, ge=0.0, le=100.0)
    success_rate_minimum_hosts: int = Field(default=5, ge=1)
    success_rate_request_volume: int = Field(default=100, ge=1)
    success_rate_stdev_factor: float = Field(default=1.9, ge=0.0)
    successful_active_health_check_uneject_host: bool = True
    """A passing active health check ends an ejection at once (off: only its time does)."""

    @model_validator(mode="after")
    def _ejection_times(self) -> Self:
        if self.max_ejection_time_s < self.base_ejection_time_s:
            raise ValueError(
                f"max_ejection_time_s ({self.max_ejection_time_s:g}) must be at least"
                f" base_ejection_time_s ({self.base_ejection_time_s:g})"
            )
        return self


class RetryConfig(BaseModel):
    """Retry policy of one upstream.

    `per_try_timeout_s=None` lets each try use whatever is left of the route deadline;
    a per-try timeout lets a retry still fit when one replica hangs. `retry_on_status`
    applies only to retryable requests (see `is_retryable_request`). `enabled=False`
    turns off re-routes of refused connections too.

    The budget floor (`budget_min_retry_concurrency`, Envoy's default is 3) is 10: a
    replica SIGKILLed under load resets every request it held at the same instant, about
    1/N of those in flight with N replicas, and a floor of 3 let a few of them fail
    with fewer than twenty clients. Ten concurrent retries cannot overload anything; past
    50 requests in flight the percentage governs, as before.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_base_s: float = Field(default=0.025, gt=0)
    backoff_max_s: float = Field(default=0.25, gt=0)
    per_try_timeout_s: float | None = Field(default=None, gt=0)
    retry_on_status: frozenset[int] = frozenset({502, 503, 504})
    budget_percent: float = Field(default=20.0, ge=0, le=100)
    budget_min_retry_concurrency: int = Field(default=10, ge=0)

    @field_validator("retry_on_status")
    @classmethod
    def _error_statuses(cls, value: frozenset[int]) -> frozenset[int]:
        for status in sorted(value):
            if not 400 <= status <= 599:
                raise ValueError(
                    f"retry_on_status {status} is not an error status (must be 400..599)"
                )
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> Self:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be at least "
                f"backoff_base_s ({self.backoff_base_s})"
            )
        return self


class RateLimitConfig(BaseModel):
    """Per-client rate limit: `requests_per_s` sustained, bursts of up to `burst`.

    The client is identified by its address, or by a request header (an API key, or the
    client address a trusted load balancer in front of the gateway forwards).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    requests_per_s: float = Field(default=100.0, gt=0)
    burst: int = Field(default=200, ge=1)
    key: Literal["client_address", "header"] = "client_address"
    header: str | None = None
    max_keys: int = Field(default=100_000, ge=1)

    @model_validator(mode="after")
    def _header_matches_key(self) -> Self:
        if self.key == "header":
            if self.header is None:
                raise ValueError("rate_limit.key is 'header': set rate_limit.header to its name")
            if not _FIELD_NAME.match(self.header):
                raise ValueError(f"rate_limit.header {self.header!r} is not a valid header name")
        elif self.header is not None:
            raise ValueError(
                "rate_limit.header is set but rate_limit.key is 'client_address': "
                "set key to 'header' or remove header"
            )
        return self


class UpstreamPolicy(BaseModel):
    """The policies that protect one upstream (everything but its endpoints).

    `breaker` applies to each endpoint; `track_breaker` to each track as a whole, so a
    failing canary opens the canary's circuit and never stable's.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    balancer: BalancerConfig = Field(default_factory=BalancerConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    outlier: OutlierConfig = Field(default_factory=OutlierConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    track_breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    max_concurrent: int = Field(default=1024, ge=1)
