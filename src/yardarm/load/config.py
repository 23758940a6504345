"""How a load run is shaped: target, loop model, bounds and mix, validated up front."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from yardarm.load.mix import Mix

Mode = Literal["open", "closed"]

DEFAULT_CONCURRENCY = 8
DEFAULT_CONNECTIONS = 64
DEFAULT_MAX_IN_FLIGHT = 1000


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP literal; other names are not resolved (DNS can change)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_target(url: str, allow_remote: bool) -> str:
    """The base URL without a trailing slash; ValueError if it is unusable or not loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"url: {url!r} is not an http(s) URL with a host, e.g. http://127.0.0.1:8080"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"url: {url!r} must be a base URL, without query or fragment")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"url: {url!r} has an invalid port") from exc
    if not allow_remote and not is_loopback(parts.hostname):
        raise ValueError(
            f"url: {parts.hostname!r} is not a loopback address; load stays on this machine "
            "unless remote targets are allowed (--allow-remote)"
        )
    return url.rstrip("/")


class LoadConfig(BaseModel):
    """One run. Either `rate` (open loop) or `concurrency` (closed loop, the default).

    Open loop: a slot every 1/rate seconds whatever the answers; `connections` senders
    take slots off a backlog; a slot arriving while `max_in_flight` are waiting or on the
    wire is dropped. Closed loop: `concurrency` workers, each sends when its last answered.
    Both loops stop at `duration_s` or `max_requests`, whichever comes first.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    rate: float | None = Field(default=None, gt=0, le=1_000_000)
    concurrency: int | None = Field(default=None, ge=1, le=10_000)
    connections: int | None = Field(default=None, ge=1, le=10_000)
    max_in_flight: int | None = Field(default=None, ge=1, le=1_000_000)
    duration_s: float = Field(default=30.0, gt=0, le=7 * 24 * 3600)
    max_requests: int = Field(default=1_000_000, ge=1)
    mix: Mix = Mix()
    timeout_s: float = Field(default=5.0, gt=0, le=3600)
    seed: int | None = None
    allow_remote: bool = False
    decline_share: float = Field(default=0.05, ge=0, le=1)
    progress_interval_s: float = Field(default=0.5, gt=0)
    ca_file: Path | None = None  # trust this CA for an https target (a stack with TLS on)

    @model_validator(mode="after")
    def _consistent(self) -> LoadConfig:
        check_target(self.url, self.allow_remote)
        if self.rate is not None and self.concurrency is not None:
            raise ValueError("give either rate (open loop) or concurrency (closed loop), not both")
        if self.rate is None and (self.connections is not None or self.max_in_flight is not None):
            raise ValueError(
                "connections and max_in_flight apply to the open loop only: "
                "give a rate, or leave them out"
            )
        if (
            self.connections is not None
            and self.max_in_flight is not None
            and self.connections > self.max_in_flight
        ):
            raise ValueError(
                f"connections ({self.connections}) cannot exceed max_in_flight "
                f"({self.max_in_flight}): every connection holds one request in flight"
            )
        return self

    @property
    def base_url(self) -> str:
        """The target without a trailing slash; request paths are appended to it."""
        return self.url.rstrip("/")

    @property
    def mode(self) -> Mode:
        """open: fixed schedule; closed: fixed workers."""
        return "closed" if self.rate is None else "open"

    @property
    def workers(self) -> int:
        """Senders, and the connection limit: the closed loop's concurrency or the connections."""
        if self.rate is None:
            return self.concurrency if self.concurrency is not None else DEFAULT_CONCURRENCY
        if self.connections is not None:
            return self.connections
        return min(DEFAULT_CONNECTIONS, self.in_flight_cap)

    @property
    def in_flight_cap(self) -> int:
        """Open loop: admitted requests not yet answered; the closed loop's is its workers."""
        if self.rate is None:
            return self.workers
        if self.max_in_flight is not None:
            return self.max_in_flight
        return max(DEFAULT_MAX_IN_FLIGHT, self.connections or 0)
