"""An endpoint: one replica of an upstream service, as every gateway policy sees it.

Policies (balancers, breakers, outlier detection) key their own state by the
Endpoint object itself (identity), so two endpoints with the same URL in different
upstreams never share state. The gateway runs on one asyncio loop: no locking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_TRACK = "stable"
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]
"""An RFC 6454 origin: scheme and host in lower case, and the port (explicit or default)."""


def split_origin(url: str) -> tuple[Origin, str] | None:
    """An absolute http(s) URL's origin and the rest of it (path, query and fragment,
    starting with '/'); None for anything else (a path, another scheme, a bad port)."""
    scheme, sep, after = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        return None
    end = len(after)
    for stop in "/?#":
        found = after.find(stop)
        if 0 <= found < end:
            end = found
    try:
        parts = urlsplit(f"{scheme}://{after[:end]}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    rest = after[end:]
    if not rest.startswith("/"):
        rest = "/" + rest
    return (scheme, parts.hostname, _DEFAULT_PORTS[scheme] if port is None else port), rest


@dataclass(eq=False, slots=True)
class Endpoint:
    """One replica: its base URL, the release track it serves and its static weight.

    `active` counts requests in flight to it (least-request balancing reads it);
    `added_at` is the loop time it joined (slow start reads it); `draining` is set
    while it has left the routing document but still has requests in flight (it is in
    no balancer then, and goes once they end). `origin` and
    `base_path` (what its URL puts before every forwarded path, usually nothing) are
    parsed once, for mapping the endpoint's own URLs in answers back to public paths.
    """

    url: str
    track: str = DEFAULT_TRACK
    weight: int = 1
    added_at: float = 0.0
    active: int = 0
    draining: bool = False
    origin: Origin | None = field(init=False, default=None)
    base_path: str = field(init=False, default="")

    def __post_init__(self) -> None:
        split = split_origin(self.url)
        if split is not None:
            self.origin = split[0]
            self.base_path = split[1].partition("?")[0].partition("#")[0].rstrip("/")

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r}, track={self.track!r}, weight={self.weight})"
