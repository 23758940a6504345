"""Gateway settings, read from `YARDARM_GATEWAY_*` environment variables.

Validated as a whole at start-up so a bad routing table stops the process with a
message naming the field, instead of surfacing as 404s or 502s later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict
from yardarm_kit import ServiceSettings
from yardarm_kit.access import read_token
from yardarm_kit.gateway_policy import RateLimitConfig, UpstreamPolicy

from yardarm_gateway.routing import Route, check_routes

TRACK_NAME = r"^[a-z][a-z0-9-]{0,31}$"
# A shared-port replica's default drain delay: long enough for a client sending a
# request a second on a keep-alive connection to get one answer with Connection: close.
SHARED_PORT_DRAIN_DELAY_S = 1.0


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


class EndpointSpec(BaseModel):
    """One replica of an upstream: its base URL, the track it serves and its weight (in
    the `UPSTREAMS` setting a plain URL string is shorthand for one on the stable track)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    track: str = Field(default="stable", pattern=TRACK_NAME)
    weight: int = Field(default=1, ge=1, le=1000)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _base_url(value)


class UpstreamSpec(UpstreamPolicy):
    """An upstream service: its endpoints and the policies that protect it."""

    endpoints: list[EndpointSpec] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = {"endpoints": value}
        if isinstance(value, dict) and isinstance(value.get("endpoints"), list):
            value = dict(value)
            value["endpoints"] = [
                {"url": item} if isinstance(item, str) else item for item in value["endpoints"]
            ]
        return value

    @field_validator("endpoints")
    @classmethod
    def _distinct(cls, value: list[EndpointSpec]) -> list[EndpointSpec]:
        urls = [endpoint.url for endpoint in value]
        if len(set(urls)) != len(urls):
            raise ValueError("an endpoint is listed twice")
        return value


class GatewaySettings(ServiceSettings):
    """Routes, upstream endpoints and their policies, admission, TLS and the admin API.

    The admin token (`admin_token`, or `admin_token_file` where a secret store mounts
    it; not both) guards the admin API and the public port's admin-only controls
    (`x-yardarm-admin-token`). `datastore_token_file` is the gateway's own datastore
    credential, which only reads the routing document: routing changes are written with
    the credential of the admin who asked for them. Token files are read once, here, so
    a missing or empty one stops the process at start naming the field.

    The admin listener (`admin_port`) binds the kit's `host`, as the public port does
    (`0.0.0.0` in a container), and drains with it on SIGTERM.

    A replica sharing the public port with its peers (`reuse_port`) leaves the port as
    soon as it drains (the kernel gives new connections to its peers), then serves the
    connections it has for `drain_delay_s`, `SHARED_PORT_DRAIN_DELAY_S` unless set:
    every answer closes its connection, so a keep-alive client moves to a peer at its
    next request. A connection left idle all through the delay is closed at its end;
    a request sent on it at that very instant would fail (HTTP/1.1 cannot announce it).
    """

    model_config = SettingsConfigDict(env_prefix="YARDARM_GATEWAY_")

    service: str = "gateway"
    routes: list[Route] = Field(default_factory=list)
    upstreams: dict[str, UpstreamSpec] = Field(default_factory=dict)
    strip_prefix: str = "/api"
    route_timeout_s: float = Field(default=15.0, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_header_bytes: int = Field(default=8190, ge=1024, le=65536)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    admin_port: int | None = Field(default=None, ge=0, le=65535)
    admin_token: str | None = Field(default=None, min_length=16)
    admin_token_file: Path | None = None
    datastore_urls: list[str] = Field(default_factory=list)
    datastore_token_file: Path | None = None
    config_key: str = "config/gateway/routing"
    config_poll_s: float = Field(default=0.25, gt=0, le=10)
    reuse_port: bool = False
    # The HTTP/1.1 client of the hot path: the lean httptools pool (measured faster in
    # bench/gateway) or aiohttp's. https upstreams always use aiohttp.
    upstream_http: Literal["native", "aiohttp"] = "native"
    max_response_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    _admin_credential: str | None = PrivateAttr(default=None)
    _datastore_credential: str | None = PrivateAttr(default=None)

    @field_validator("datastore_urls")
    @classmethod
    def _datastore_urls(cls, value: list[str]) -> list[str]:
        return [_base_url(url) for url in value]

    @field_validator("strip_prefix")
    @classmethod
    def _strip_is_a_path(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError(f"strip_prefix {value!r} must be empty or start with '/'")
        return value

    @model_validator(mode="after")
    def _routes_resolve(self) -> Self:
        check_routes(self.routes, self.tracks())
        return self

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if self.admin_token is not None and self.admin_token_file is not None:
            raise ValueError("set admin_token or admin_token_file, not both")
        self._admin_credential = self.admin_token
        if self.admin_token_file is not None:
            token = _read_credential("admin_token_file", self.admin_token_file)
            if len(token) < 16:
                raise ValueError("admin_token_file: the token must be at least 16 characters")
            self._admin_credential = token
        if self.datastore_token_file is not None:
            self._datastore_credential = _read_credential(
                "datastore_token_file", self.datastore_token_file
            )
        return self

    @property
    def admin_credential(self) -> str | None:
        """The admin token, from `admin_token` or `admin_token_file`; None: admin off."""
        return self._admin_credential

    @property
    def datastore_credential(self) -> str | None:
        """The gateway's own datastore token (reads `config/gateway/`), if configured."""
        return self._datastore_credential

    @model_validator(mode="after")
    def _shared_port_drains(self) -> Self:
        if self.reuse_port and "drain_delay_s" not in self.model_fields_set:
            self.drain_delay_s = SHARED_PORT_DRAIN_DELAY_S
        return self

    def tracks(self) -> dict[str, set[str]]:
        """The tracks each upstream's endpoints serve."""
        return {
            name: {endpoint.track for endpoint in spec.endpoints}
            for name, spec in self.upstreams.items()
        }


def _read_credential(field: str, path: Path) -> str:
    try:
        return read_token(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{field}: cannot read a token from {str(path)!r}: {exc}") from None
