"""Fulfillment settings, read from `YARDARM_FULFILLMENT_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from yardarm_kit import ServiceSettings


class FulfillmentSettings(ServiceSettings):
    """Where Postgres and NATS are, and how the consumers and the outbox relay pace themselves."""

    model_config = SettingsConfigDict(env_prefix="YARDARM_FULFILLMENT_", extra="ignore")

    service: str = "fulfillment"
    database_url: str
    nats_url: str
    # JetStream redelivers a message not acked within ack_wait_s, at most max_deliver times.
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=5, ge=1)
    batch: int = Field(default=32, ge=1, le=1000)
    # Delay before a failed message is redelivered.
    nak_delay_s: float = Field(default=1.0, ge=0)
    relay_batch: int = Field(default=32, ge=1, le=1000)
    relay_poll_s: float = Field(default=0.2, gt=0)
    pool_max_size: int = Field(default=10, ge=2)
    # How long shutdown waits for in-flight handlers before giving their messages back.
    shutdown_grace_s: float = Field(default=10.0, gt=0)
