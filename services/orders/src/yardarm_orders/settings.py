"""Orders settings, read from `YARDARM_ORDERS_*` environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict
from yardarm_kit import ServiceSettings


class OrdersSettings(ServiceSettings):
    """Where the database, NATS and the datastore are, and how the saga machinery paces itself."""

    model_config = SettingsConfigDict(env_prefix="YARDARM_ORDERS_", extra="ignore")

    service: str = "orders"
    database_url: str
    nats_url: str
    datastore_urls: list[str] = Field(min_length=1)
    # How long a worker owns a claimed local step before another replica may take it.
    lease_s: float = Field(default=10.0, gt=0)
    poll_interval_s: float = Field(default=0.2, gt=0)
    datastore_timeout_s: float = Field(default=5.0, gt=0)
    # Compare-and-set retries per SKU within one run of a stock step.
    cas_retries: int = Field(default=8, ge=1)
    retry_base_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    # After this many failed runs a reservation gives up and the order is cancelled.
    reserve_max_attempts: int = Field(default=20, ge=1)
    outbox_batch: int = Field(default=32, ge=1, le=1000)
    pool_max_size: int = Field(default=10, ge=2)
    in_flight_wait_ms: int = Field(default=100, ge=0)

    @field_validator("datastore_urls")
    @classmethod
    def _strip_slash(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"datastore URL {url!r} must start with http:// or https://")
        return [url.rstrip("/") for url in value]
