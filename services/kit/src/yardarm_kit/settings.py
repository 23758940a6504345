"""Settings every service shares; each service subclasses with its own env prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Track = Literal["stable", "canary", "baseline", "blue", "green"]


class ServiceSettings(BaseSettings):
    """Identity, listener and state locations of one service process.

    Subclasses set `model_config = SettingsConfigDict(env_prefix="YARDARM_<SERVICE>_")`
    and a default `service` name, so the runtime configures every process the same way.
    """

    model_config = SettingsConfigDict(env_prefix="YARDARM_", extra="ignore")

    service: str
    instance: str = ""
    version: str = "0.1.0"
    track: Track = "stable"
    environment: str = "local"
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    state_dir: Path = Path(".yardarm")
    flags_file: Path | None = None
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _default_instance(self) -> ServiceSettings:
        if not self.instance:
            self.instance = f"{self.service}-0"
        return self
