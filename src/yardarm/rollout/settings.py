"""The rollout controller's tuning from the environment (`YARDARM_ROLLOUTS_*`), the same
for every target's controller process."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ControllerSettings(BaseSettings):
    """Tuning from the environment (`YARDARM_ROLLOUTS_*`); the defaults are the judge's
    and the engine's own. Tests lower the minimum samples to run short steps."""

    model_config = SettingsConfigDict(env_prefix="YARDARM_ROLLOUTS_", extra="ignore")

    min_requests: int | None = Field(default=None, ge=1)
    min_latency_points: int | None = Field(default=None, ge=1)
    max_inconclusive: int = Field(default=3, ge=0, le=100)
    replicas: int = Field(default=1, ge=1, le=9)
    sub_window_s: float = Field(default=2.0, gt=0, le=60)
    smoke_rate: float = Field(default=20.0, gt=0, le=500)  # blue-green, per track
    # Where rollout events are posted (a Slack incoming webhook, or anything taking its
    # JSON); unset or empty: nowhere.
    webhook_url: str | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    webhook_attempts: int = Field(default=4, ge=1, le=10)

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        from yardarm.rollout.telemetry import check_webhook_url

        return None if value is None or not value.strip() else check_webhook_url(value)

    def judge_overrides(self) -> dict[str, Any]:
        overrides = {
            "min_requests": self.min_requests,
            "min_latency_points": self.min_latency_points,
        }
        return {key: value for key, value in overrides.items() if value is not None}
