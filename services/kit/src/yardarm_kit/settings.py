"""Settings every service shares; each service subclasses with its own env prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from yardarm_kit.identity import Track


class ServiceSettings(BaseSettings):
    """Identity, listener and state locations of one service process.

    Subclasses set `model_config = SettingsConfigDict(env_prefix="YARDARM_<SERVICE>_")`
    and a default `service` name, so the runtime configures every process the same way.

    `host` is the address every HTTP listener of the process binds (the gateway's admin
    listener too): 127.0.0.1 locally, `0.0.0.0` (or `::`) in a container, where the
    port must be reachable from outside it. `span_files=false` writes no span files
    under `state_dir` (OTLP export only, with `OTEL_EXPORTER_OTLP_ENDPOINT`), so a
    stateless service writes nothing to disk and runs on a read-only root filesystem.

    On SIGTERM the process drains (Kubernetes' and Envoy's sequence): `/readyz` answers
    503 at once while the listeners keep serving for `drain_delay_s`, long enough for
    whatever routes by readiness to stop sending here (a Kubernetes Service: the
    readiness probe's period times its failure threshold; the yardarm gateway: its
    health check interval times `unhealthy_threshold`, 2 s by default); responses in
    that window carry `Connection: close`. Then the listeners close, requests in flight
    get up to `drain_timeout_s` to finish, the shutdown hooks run, and the process exits
    0. The delay is 0 by default so a local stack stops fast (its gateway re-routes a
    refused connection at once); delay + timeout + shutdown hooks must fit in the
    runtime's grace (the supervisor's 10 s, Kubernetes' terminationGracePeriodSeconds).
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
    # Local span files (`<state_dir>/telemetry/<instance>.jsonl`, what `yardarm trace`
    # reads); false: OTLP export only, nothing written under state_dir.
    span_files: bool = True
    # SIGTERM: how long readiness fails while the listeners still serve, then how long
    # requests in flight may take once the listeners have closed.
    drain_delay_s: float = Field(default=0.0, ge=0.0, le=300.0)
    drain_timeout_s: float = Field(default=8.0, gt=0.0, le=300.0)

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
