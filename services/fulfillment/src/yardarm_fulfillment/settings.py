"""Fulfillment settings, read from `YARDARM_FULFILLMENT_*` environment variables."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict
from yardarm_kit import ServiceSettings

DEFAULT_BACKOFF_S = [1.0, 5.0, 15.0, 30.0]


class FulfillmentSettings(ServiceSettings):
    """Where Postgres and NATS are, and how the consumers and the outbox relay pace themselves."""

    model_config = SettingsConfigDict(env_prefix="YARDARM_FULFILLMENT_", extra="ignore")

    service: str = "fulfillment"
    database_url: str
    nats_url: str
    # JetStream redelivers a message not acked within ack_wait_s; after max_deliver
    # deliveries without success it goes to the DLQ stream.
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=5, ge=2)
    # Delay before the n-th redelivery of a failed command (the last value repeats).
    # From the environment: a JSON list (`[1, 5, 15]`) or comma-separated (`1,5,15`).
    backoff_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_BACKOFF_S)
    )
    batch: int = Field(default=32, ge=1, le=1000)
    # Batches each consumer works on at once (each holds one database connection).
    max_batches_in_flight: int = Field(default=2, ge=1, le=16)
    relay_batch: int = Field(default=32, ge=1, le=1000)
    relay_poll_s: float = Field(default=0.2, gt=0)
    pool_max_size: int = Field(default=10, ge=2)
    # How long shutdown waits for in-flight batches before giving their messages back.
    shutdown_grace_s: float = Field(default=10.0, gt=0)

    @field_validator("backoff_s", mode="before")
    @classmethod
    def _split_backoff(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip().removeprefix("[").removesuffix("]")
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check_redelivery(self) -> FulfillmentSettings:
        if not self.backoff_s:
            raise ValueError("backoff_s needs at least one delay, e.g. [1, 5, 15, 30]")
        if any(delay <= 0 for delay in self.backoff_s):
            raise ValueError(f"every backoff_s delay must be above 0 seconds, got {self.backoff_s}")
        if self.max_deliver <= len(self.backoff_s):
            raise ValueError(
                f"max_deliver ({self.max_deliver}) must exceed the number of backoff_s delays"
                f" ({len(self.backoff_s)}): a command is redelivered at most max_deliver - 1"
                " times, so the last delays would never be used; raise max_deliver or"
                " shorten backoff_s"
            )
        # Each consumer: a connection per batch in flight and one for inbox pruning;
        # then the outbox relay and the ledger views.
        needed = 2 * (self.max_batches_in_flight + 1) + 2
        if self.pool_max_size < needed:
            raise ValueError(
                f"pool_max_size ({self.pool_max_size}) is below {needed}: each of the two"
                f" consumers holds up to {self.max_batches_in_flight + 1} connections (its"
                " batches in flight and inbox pruning), plus the outbox relay and the ledger"
                " views; raise pool_max_size or lower max_batches_in_flight"
            )
        return self
