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
    # TLS (see yardarm_kit.tls): the listener's certificate and key, the CA that signs
    # the peers this service calls, and the operator's word that a mesh encrypts instead.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    mesh_tls: bool = False

    @model_validator(mode="after")
    def _default_instance(self) -> ServiceSettings:
        if not self.instance:
            self.instance = f"{self.service}-0"
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        for path in (self.tls_cert_file, self.tls_key_file, self.tls_ca_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {str(path)!r} does not exist")
        return self

    @property
    def tls(self) -> bool:
        """Whether the listener serves HTTPS."""
        return self.tls_cert_file is not None
