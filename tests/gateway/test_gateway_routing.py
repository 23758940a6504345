"""Route table: segment-aware longest-prefix match, /api stripping, query kept."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from yardarm_gateway.routing import DotSegmentError, Route, RouteTable

ROUTES = [
    Route(prefix="/api/orders", upstream="orders"),
    Route(prefix="/api/stock", upstream="orders"),
    Route(prefix="/api/kv", upstream="datastore"),
    Route(prefix="/api/kv/special", upstream="special"),
]


@pytest.fixture
def table() -> RouteTable:
    return RouteTable(ROUTES, strip_prefix="/api")


@pytest.mark.parametrize(
    ("target", "upstream", "path"),
    [
        ("/api/orders", "orders", "/orders"),
        ("/api/orders/", "orders", "/orders/"),
        ("/api/orders/123", "orders", "/orders/123"),
        ("/api/orders/123?verbose=1&x=%20y", "orders", "/orders/123?verbose=1&x=%20y"),
        ("/api/stock?limit=5", "orders", "/stock?limit=5"),
        ("/api/kv/a/b", "datastore", "/kv/a/b"),
        ("/api/kv?prefix=stock/&limit=2", "datastore", "/kv?prefix=stock/&limit=2"),
        ("/api/kv/special", "special", "/kv/special"),
        ("/api/kv/special/x", "special", "/kv/special/x"),
        ("/api/kv/specialist", "datastore", "/kv/specialist"),
        ("/api/kv/a%2Fb", "datastore", "/kv/a%2Fb"),
    ],
)
def test_longest_segment_prefix_wins_and_api_is_stripped(
    table: RouteTable, target: str, upstream: str, path: str
) -> None:
    match = table.match(target)
    assert match is not None
    assert match.route.upstream == upstream
    assert match.upstream_path == path


@pytest.mark.parametrize(
    "target", ["/api/ordersX", "/api/ordersX/1", "/api", "/", "/orders", "/api/kvx?a=b", "*"]
)
def test_prefix_must_end_on_a_segment_boundary(table: RouteTable, target: str) -> None:
    assert table.match(target) is None


@pytest.mark.parametrize("target", ["/api/orders/../kv/x", "/api/orders/%2e%2E/kv", "/api/kv/./a"])
def test_dot_segments_are_refused(table: RouteTable, target: str) -> None:
    with pytest.raises(DotSegmentError):
        table.match(target)


def test_root_route_catches_everything_else() -> None:
    table = RouteTable(
        [Route(prefix="/", upstream="web"), Route(prefix="/api/kv", upstream="kv")],
        strip_prefix="/api",
    )
    assert (m := table.match("/anything/else?q")) and m.route.upstream == "web"
    assert m.upstream_path == "/anything/else?q"
    assert (m := table.match("/api/kv/1")) and m.route.upstream == "kv"


def test_paths_outside_the_strip_prefix_are_forwarded_unchanged() -> None:
    table = RouteTable([Route(prefix="/internal", upstream="x")], strip_prefix="/api")
    assert (m := table.match("/internal/a")) and m.upstream_path == "/internal/a"


def test_trailing_slash_prefix_is_the_same_prefix() -> None:
    route = Route(prefix="/api/orders/", upstream="orders")
    assert route.prefix == "/api/orders"
    with pytest.raises(ValueError, match="duplicate"):
        RouteTable([route, Route(prefix="/api/orders", upstream="o2")])


@pytest.mark.parametrize("prefix", ["api/orders", "", "/a/../b", "/a?x=1"])
def test_invalid_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(ValidationError):
        Route(prefix=prefix, upstream="orders")
