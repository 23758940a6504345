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
from typing import Annotated, Any
from urllib.parse import unquote

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from yardarm_kit.openapi import portable_pattern

from yardarm_gateway.forwarding import Relocation
from yardarm_gateway.split import STICKY_SCHEMA, StickyConfig

ROUTE_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
TRACK = re.compile(r"[a-z][a-z0-9-]{0,31}")  # whole names only: see `fullmatch` below
MAX_WEIGHT = 10_000
_NOT_NAME = re.compile(r"[^a-z0-9._-]+")

# The JSON Schema of what `Route` accepts (the admin API's document is built from it):
# the validators below say the same in Python. No string holds NUL (the kit refuses it).
TRACK_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": portable_pattern(r"^[a-z][a-z0-9-]{0,31}$"),
}
SPLIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "weight per track (0..10000); at least one above 0",
    "propertyNames": TRACK_SCHEMA,
    "additionalProperties": {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT},
    "not": {"additionalProperties": {"const": 0}},
}
_PREFIX_SCHEMA: dict[str, Any] = {
    "type": "string",
    "description": "a path: '/' then segments, none of them '.' or '..', no '?' or '#'",
    "pattern": portable_pattern(r"^(?:/(?!\.{1,2}(?:/|$))[^/?#\x00]*)+$"),
}
ROUTE_SCHEMA_PROPERTIES: dict[str, Any] = {
    "prefix": _PREFIX_SCHEMA,
    "upstream": {"type": "string", "pattern": portable_pattern(r"^[^\x00]+$")},
    "name": {
        "description": "derived from the prefix when absent, null or empty",
        "anyOf": [
            {"type": "string", "pattern": portable_pattern(r"^(?:[a-z0-9][a-z0-9._-]{0,62})?$")},
            {"type": "null"},
        ],
    },
    "split": {"anyOf": [SPLIT_SCHEMA, {"type": "null"}]},
    "sticky": {"anyOf": [STICKY_SCHEMA, {"type": "null"}]},
    "timeout_s": {
        "anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 300}, {"type": "null"}]
    },
    "admin_writes": {"type": "boolean"},
}


def _route_schema(schema: dict[str, Any]) -> None:
    schema["properties"] = ROUTE_SCHEMA_PROPERTIES
    schema["required"] = ["prefix", "upstream"]
    schema["additionalProperties"] = False
    schema["allOf"] = [  # a sticky route needs a split
        {
            "if": {"required": ["sticky"], "properties": {"sticky": {"type": "object"}}},
            "then": {"required": ["split"], "properties": {"split": {"type": "object"}}},
        }
    ]


def _integral(value: Any) -> Any:
    """`5.0` as 5: JSON Schema counts a number with a zero fraction as an integer."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Weight = Annotated[int, BeforeValidator(_integral)]
"""A track's weight: a JSON integer (strict: never a string or a boolean)."""


def derive_name(prefix: str) -> str:
    """The route name a prefix gives when none is set: `/api/orders` is `api-orders`, `/`
    is `root`; any character a name may not hold becomes `-`, so every prefix has one."""
    text = normalize_prefix(prefix).strip("/").lower().replace("/", "-")
    return _NOT_NAME.sub("-", text).lstrip("._-")[:63] or "root"


def check_split(value: dict[str, Weight]) -> dict[str, int]:
    """Track names and weights of a split, and at least one weight above 0."""
    for track, weight in value.items():
        if not TRACK.fullmatch(track):
            raise ValueError(f"track name {track!r} must match ^{TRACK.pattern}$")
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight of track {track!r} must be 0..{MAX_WEIGHT} (got {weight})")
    if not any(value.values()):
        raise ValueError("a split needs at least one track with a weight above 0")
    return value


class Route(BaseModel):
    """Requests whose path starts with `prefix` (on segment boundaries) go to `upstream`.

    `split` weighs the upstream's tracks (`{"stable": 90, "canary": 10}`); without it
    every endpoint of the upstream is eligible whatever its track. `sticky` keeps one
    client on one track. `admin_writes` lets only holders of the admin token send
    anything but GET/HEAD/OPTIONS (the raw KV route). `name` is derived from the prefix
    when absent, null or empty (`derive_name`). Types are JSON's as they are (strict: a
    string is never a number, nor 1 a boolean), so the published schema says exactly what
    is taken.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, json_schema_extra=_route_schema
    )

    prefix: str
    upstream: str
    name: str = Field(default="", pattern=ROUTE_NAME)
    split: dict[str, Weight] | None = None
    sticky: StickyConfig | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=300)
    admin_writes: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        if (
            isinstance(value, dict)
            and value.get("name") in (None, "")
            and isinstance(value.get("prefix"), str)
        ):
            value = {**value, "name": derive_name(value["prefix"])}
        return value

    @field_validator("split")
    @classmethod
    def _split_weights(cls, value: dict[str, Weight] | None) -> dict[str, int] | None:
        return None if value is None else check_split(value)

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


def check_routes(
    routes: Iterable[Route], tracks: dict[str, set[str]], *, weights_need_endpoints: bool = True
) -> None:
    """Raise ValueError naming the first route that cannot be served.

    `tracks` maps each upstream to the tracks its endpoints serve. With
    `weights_need_endpoints` (settings, and an admin's change) a split weighing a track
    with no endpoint is refused rather than silently sent elsewhere: it is almost always
    a typo or a rollout step taken too early. A stored document may hold one (the
    control plane removed a track's last endpoint): that weight is simply not used.
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
        if weights_need_endpoints:
            check_weights(route, tracks[route.upstream])


def check_weights(route: Route, tracks: set[str]) -> None:
    """Raise ValueError if the route's split weighs a track outside `tracks` (those of
    its upstream that have endpoints)."""
    for track, weight in (route.split or {}).items():
        if weight and track not in tracks:
            served = ", ".join(sorted(tracks)) or "none"
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
        self._relocations = {
            route.name: Relocation(self._strip_path(route.prefix), route.prefix)
            for route in self._routes
        }

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    @property
    def strip_prefix(self) -> str:
        return self._strip

    def relocation(self, route: Route) -> Relocation:
        """How the route's upstream paths map back to its public prefix (`/orders` to
        `/api/orders`), for the Location headers of its answers."""
        return self._relocations[route.name]

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
