"""Gateway settings, read from `YARDARM_GATEWAY_*` environment variables.

Validated as a whole at start-up so a bad routing table stops the process with a
message naming the field, instead of surfacing as 404s or 502s later.
"""

from __future__ import annotations

from typing import Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict
from yardarm_kit import ServiceSettings

from yardarm_gateway.routing import Route


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"upstream URL {value!r} must be http:// or https://")
    if not parts.hostname:
        raise ValueError(f"upstream URL {value!r} has no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"upstream URL {value!r} must be a base URL (no query, fragment, user)")
    try:
        parts.port  # noqa: B018 - raises on an invalid port
    except ValueError as exc:
        raise ValueError(f"upstream URL {value!r} has an invalid port") from exc
    return value.rstrip("/")


class GatewaySettings(ServiceSettings):
    """Routes, upstream endpoints, timeouts and the admin listener."""

    model_config = SettingsConfigDict(env_prefix="YARDARM_GATEWAY_")

    service: str = "gateway"
    routes: list[Route] = Field(default_factory=list)
    upstreams: dict[str, list[str]] = Field(default_factory=dict)
    strip_prefix: str = "/api"
    upstream_timeout_s: float = Field(default=15.0, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    readiness_interval_s: float = Field(default=1.0, gt=0)
    readiness_timeout_s: float = Field(default=0.5, gt=0)
    admin_port: int | None = Field(default=None, ge=0, le=65535)
    admin_token: str | None = None

    @field_validator("upstreams")
    @classmethod
    def _valid_endpoints(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for name, urls in value.items():
            if not urls:
                raise ValueError(f"upstream {name!r} has no endpoints")
            endpoints = [_base_url(url) for url in urls]
            if len(set(endpoints)) != len(endpoints):
                raise ValueError(f"upstream {name!r} lists an endpoint twice")
            result[name] = endpoints
        return result

    @field_validator("strip_prefix")
    @classmethod
    def _strip_is_a_path(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError(f"strip_prefix {value!r} must be empty or start with '/'")
        return value

    @model_validator(mode="after")
    def _routes_resolve(self) -> Self:
        seen: set[str] = set()
        for route in self.routes:
            if route.prefix in seen:
                raise ValueError(f"duplicate route prefix {route.prefix!r}")
            seen.add(route.prefix)
            if route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none"
                raise ValueError(
                    f"route {route.prefix!r} names unknown upstream {route.upstream!r} "
                    f"(known: {known})"
                )
        return self
