"""Which policy an upstream balances with and how it is tuned, checked at start-up."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Policy = Literal[
    "round_robin", "weighted_round_robin", "least_request", "peak_ewma", "consistent_hash"
]
HashSource = Literal["header", "cookie", "client_address"]


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
