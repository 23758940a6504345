"""Orders settings, read from `YARDARM_ORDERS_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict
from yardarm_kit import ServiceSettings

from yardarm_orders.saga.steps import SagaTiming


class OrdersSettings(ServiceSettings):
    """Where the database, NATS and the datastore are, and how the saga machinery paces itself."""

    model_config = SettingsConfigDict(env_prefix="YARDARM_ORDERS_", extra="ignore")

    service: str = "orders"
    database_url: str
    nats_url: str
    datastore_urls: list[str] = Field(min_length=1)
    # How long a worker owns a claimed step before another replica may take it.
    lease_s: float = Field(default=10.0, gt=0)
    poll_interval_s: float = Field(default=0.2, gt=0)
    # Due saga steps one replica runs at once (each holds a database connection while
    # it writes, so pool_max_size must leave room for the API and the consumer).
    worker_concurrency: int = Field(default=8, ge=1, le=64)
    datastore_timeout_s: float = Field(default=5.0, gt=0)
    # The credential sent to the datastore (`Authorization: Bearer`), read at start-up
    # from this file (the control plane renders `<home>/credentials/orders.token`).
    # None: requests carry none, which only a datastore without access control accepts.
    datastore_token_file: Path | None = None
    # Compare-and-set retries per SKU within one run of a stock step.
    cas_retries: int = Field(default=8, ge=1)
    retry_base_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    # After this many failed runs a reservation gives up and the order is cancelled.
    reserve_max_attempts: int = Field(default=20, ge=1)
    # Remote steps: a command without a reply is sent again (a new envelope id) after
    # resend_after_s, the wait doubling up to resend_max_s; compensations re-send the same
    # way until they are done. A charge or shipment without a reply within its timeout is
    # compensated (the participant may have acted on it).
    charge_timeout_s: float = Field(default=30.0, gt=0)
    shipping_timeout_s: float = Field(default=30.0, gt=0)
    resend_after_s: float = Field(default=5.0, gt=0)
    resend_max_s: float = Field(default=30.0, gt=0)
    # The command shape this replica sends (2: payment amounts with a currency; 1: the
    # previous version), so two versions can run side by side on one database and stream.
    message_schema: int = Field(default=2, ge=1, le=2)
    # Replies: a reply whose transaction keeps failing is redelivered after these delays
    # (the last repeats) and dead-lettered after reply_max_deliver deliveries.
    reply_max_deliver: int = Field(default=40, ge=1)
    reply_backoff_s: list[float] = Field(default=[1.0, 5.0, 15.0, 30.0], min_length=1)
    reply_batch: int = Field(default=64, ge=1, le=1000)
    # A reply held by a replica that died is redelivered to another after this long.
    reply_ack_wait_s: float = Field(default=30.0, gt=0)
    outbox_batch: int = Field(default=32, ge=1, le=1000)
    pool_max_size: int = Field(default=20, ge=2)
    in_flight_wait_ms: int = Field(default=100, ge=0)

    def saga_timing(self) -> SagaTiming:
        return SagaTiming(
            charge_timeout_s=self.charge_timeout_s,
            shipping_timeout_s=self.shipping_timeout_s,
            resend_after_s=self.resend_after_s,
            resend_max_s=self.resend_max_s,
            retry_base_s=self.retry_base_s,
            retry_max_s=self.retry_max_s,
            reserve_max_attempts=self.reserve_max_attempts,
        )

    @field_validator("datastore_urls")
    @classmethod
    def _strip_slash(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"datastore URL {url!r} must start with http:// or https://")
        return [url.rstrip("/") for url in value]
