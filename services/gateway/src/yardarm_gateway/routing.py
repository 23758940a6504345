"""Path-prefix routing: which upstream serves a request, and at which path.

Prefixes match whole path segments (`/api/orders` matches `/api/orders/1`, never
`/api/ordersX`), the longest prefix wins, and the lookup costs one dict probe per
segment of the request path, independent of the number of routes.

Matching works on the raw (still percent-encoded) path so that what is matched is
exactly what is forwarded: `%2F` stays inside its segment and cannot move a request
to another route.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from yardarm_gateway.split import StickyConfig

ROUTE_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
TRACK = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


class Route(BaseModel):
    """Requests whose path starts with `prefix` (on segment boundaries) go to `upstream`.

    `split` weighs the upstream's tracks (`{"stable": 90, "canary": 10}`); without it
    every endpoint of the upstream is eligible whatever its track. `sticky` keeps one
    client on one track. `admin_writes` lets only holders of the admin token send
    anything but GET/HEAD/OPTIONS (the raw KV route). `name` defaults to the prefix.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefix: str
    upstream: str
    name: str = Field(default="", pattern=ROUTE_NAME)
    split: dict[str, int] | None = None
    sticky: StickyConfig | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=300)
    admin_writes: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        if (
            isinstance(value, dict)
            and not value.get("name")
            and isinstance(value.get("prefix"), str)
        ):
            derived = normalize_prefix(value["prefix"]).strip("/").replace("/", "-").lower()
            value = {**value, "name": derived or "root"}
        return value

    @field_validator("split")
    @classmethod
    def _split_weights(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is None:
            return None
        for track, weight in value.items():
            if not TRACK.match(track):
                raise ValueError(f"track name {track!r} must match {TRACK.pattern}")
            if not 0 <= weight <= 10_000:
                raise ValueError(f"weight of track {track!r} must be 0..10000 (got {weight})")
        if not any(value.values()):
            raise ValueError("a split needs at least one track with a weight above 0")
        return value

    @model_validator(mode="after")
    def _sticky_needs_split(self) -> Route:
        if self.sticky is not None and self.split is None:
            raise ValueError("sticky needs a split: stickiness keeps a client on one track")
        return self

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"route prefix {value!r} must start with '/'")
        if "?" in value or "#" in value:
            raise ValueError(f"route prefix {value!r} must be a path, without query or fragment")
        normalized = normalize_prefix(value)
        if any(segment in (".", "..") for segment in normalized.split("/")):
            raise ValueError(f"route prefix {value!r} must not contain '.' or '..' segments")
        return normalized

    @field_validator("upstream")
    @classmethod
    def _upstream_named(cls, value: str) -> str:
        if not value:
            raise ValueError("route upstream must not be empty")
        return value


def check_routes(routes: Iterable[Route], tracks: dict[str, set[str]]) -> None:
    """Raise ValueError naming the first route that cannot be served.

    `tracks` maps each upstream to the tracks its endpoints serve. A split weighing a
    track with no endpoint is refused rather than silently sent elsewhere: it is
    almost always a typo or a rollout step taken too early.
    """
    prefixes: set[str] = set()
    names: set[str] = set()
    for route in routes:
        if route.prefix in prefixes:
            raise ValueError(f"duplicate route prefix {route.prefix!r}")
        if route.name in names:
            raise ValueError(f"duplicate route name {route.name!r}")
        prefixes.add(route.prefix)
        names.add(route.name)
        if route.upstream not in tracks:
            known = ", ".join(sorted(tracks)) or "none"
            raise ValueError(
                f"route {route.name!r} names unknown upstream {route.upstream!r} (known: {known})"
            )
        for track, weight in (route.split or {}).items():
            if weight and track not in tracks[route.upstream]:
                served = ", ".join(sorted(tracks[route.upstream]))
                raise ValueError(
                    f"route {route.name!r} sends weight {weight} to track {track!r}, but "
                    f"upstream {route.upstream!r} has no endpoint on it (tracks: {served})"
                )


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The route that matched and the path to send upstream (raw, with its query)."""

    route: Route
    upstream_path: str


class DotSegmentError(ValueError):
    """The request path has a `.` or `..` segment, which could escape its route upstream."""


def normalize_prefix(prefix: str) -> str:
    """`/api/orders/` and `/api/orders` are the same prefix; `/` stays `/`."""
    stripped = prefix.rstrip("/")
    return stripped or "/"


def _has_dot_segment(path: str) -> bool:
    return any(unquote(segment) in (".", "..") for segment in path.split("/"))


class RouteTable:
    """An immutable set of routes plus the prefix stripped before forwarding."""

    def __init__(self, routes: Iterable[Route], *, strip_prefix: str = "") -> None:
        self._routes = tuple(routes)
        self._by_prefix: dict[str, Route] = {}
        names: set[str] = set()
        for route in self._routes:
            if route.prefix in self._by_prefix:
                raise ValueError(f"duplicate route prefix {route.prefix!r}")
            if route.name in names:
                raise ValueError(f"duplicate route name {route.name!r}")
            names.add(route.name)
            self._by_prefix[route.prefix] = route
        stripped = normalize_prefix(strip_prefix) if strip_prefix else ""
        self._strip = "" if stripped == "/" else stripped

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    @property
    def strip_prefix(self) -> str:
        return self._strip

    def match(self, raw_path_qs: str) -> RouteMatch | None:
        """Route a raw request target (`/api/orders/1?x=y`); None when no route matches.

        Raises DotSegmentError for paths with `.`/`..` segments: the upstream might
        resolve them to a resource outside the matched route.
        """
        path, sep, query = raw_path_qs.partition("?")
        if not path.startswith("/"):
            return None
        if _has_dot_segment(path):
            raise DotSegmentError(path)
        route = self._longest_prefix(path)
        if route is None:
            return None
        return RouteMatch(route=route, upstream_path=self._strip_path(path) + sep + query)

    def _longest_prefix(self, path: str) -> Route | None:
        candidate = path.rstrip("/")
        while candidate:
            route = self._by_prefix.get(candidate)
            if route is not None:
                return route
            candidate = candidate[: candidate.rfind("/")]
        return self._by_prefix.get("/")

    def _strip_path(self, path: str) -> str:
        strip = self._strip
        if not strip:
            return path
        if path == strip:
            return "/"
        if path.startswith(strip) and path[len(strip)] == "/":
            return path[len(strip) :]
        return path
