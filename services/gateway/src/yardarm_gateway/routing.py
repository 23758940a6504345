"""Path-prefix routing: which upstream serves a request, and at which path.

Prefixes match whole path segments (`/api/orders` matches `/api/orders/1`, never
`/api/ordersX`), the longest prefix wins, and the lookup costs one dict probe per
segment of the request path, independent of the number of routes.

Matching works on the raw (still percent-encoded) path so that what is matched is
exactly what is forwarded: `%2F` stays inside its segment and cannot move a request
to another route.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, field_validator


class Route(BaseModel):
    """Requests whose path starts with `prefix` (on segment boundaries) go to `upstream`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefix: str
    upstream: str

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
        for route in self._routes:
            if route.prefix in self._by_prefix:
                raise ValueError(f"duplicate route prefix {route.prefix!r}")
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
