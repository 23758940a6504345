"""Route table: segment-aware longest-prefix match, /api stripping, query kept."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
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


@pytest.mark.parametrize(
    ("prefix", "name"),
    [
        ("/api/orders", "api-orders"),
        ("/API/Orders/", "api-orders"),
        ("/", "root"),
        ("//", "root"),
        ("/a//b", "a--b"),
        ("/a b/c", "a-b-c"),
        ("/.well-known", "well-known"),
        ("/ö/x", "x"),
        ("/ö", "root"),
        ("/" + "x" * 100, "x" * 63),
    ],
)
def test_every_prefix_gives_a_valid_name(prefix: str, name: str) -> None:
    """A prefix valid as a path never fails for the name it derives."""
    assert Route(prefix=prefix, upstream="u").name == name
    assert Route.model_validate({"prefix": prefix, "upstream": "u", "name": None}).name == name


@pytest.mark.parametrize(
    "route",
    [
        {"prefix": "/a", "upstream": "u", "timeout_s": "5"},
        {"prefix": "/a", "upstream": "u", "admin_writes": 1},
        {"prefix": "/a", "upstream": "u", "admin_writes": "true"},
        {"prefix": "/a", "upstream": "u", "split": {"stable": "5"}},
        {"prefix": "/a", "upstream": "u", "split": {"stable": True}},
        {"prefix": "/a", "upstream": "u", "split": {"stable": 5.5}},
        {"prefix": "/a", "upstream": "u", "split": {"canary\n": 5}},
        {"prefix": "/a", "upstream": "u", "name": 0},
        {"prefix": "/a", "upstream": "u", "split": {"s": 1}, "sticky": {"header": "x y"}},
        {"prefix": "/a", "upstream": "u", "split": {"s": 1}, "sticky": {"cookie": "c\n"}},
    ],
)
def test_routes_take_json_types_as_they_are_and_whole_names_only(route: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Route.model_validate(route)


def test_an_integral_weight_written_as_a_float_is_an_integer() -> None:
    route = Route.model_validate({"prefix": "/a", "upstream": "u", "split": {"stable": 5.0}})
    assert route.split == {"stable": 5} and isinstance(route.split["stable"], int)


# Each: a route document, and whether it is valid. The model and the JSON Schema the admin
# API publishes for it must agree on every one.
AGREEMENT = [
    ({"prefix": "/", "upstream": "u"}, True),
    ({"prefix": "/a/./b", "upstream": "u"}, False),
    ({"prefix": "/a/..", "upstream": "u"}, False),
    ({"prefix": "/a/...", "upstream": "u"}, True),
    ({"prefix": "/.\n", "upstream": "u"}, True),
    ({"prefix": "/a/", "upstream": "u"}, True),
    ({"prefix": "/a?b", "upstream": "u"}, False),
    ({"prefix": "a", "upstream": "u"}, False),
    ({"prefix": "/a", "upstream": ""}, False),
    ({"prefix": "/a", "upstream": " "}, True),
    ({"prefix": "/a", "upstream": "u", "name": ""}, True),
    ({"prefix": "/a", "upstream": "u", "name": "Upper"}, False),
    ({"prefix": "/a", "upstream": "u", "name": "ok\n"}, False),
    ({"prefix": "/a", "upstream": "u", "split": {"stable": 0}}, False),
    ({"prefix": "/a", "upstream": "u", "split": {}}, False),
    ({"prefix": "/a", "upstream": "u", "split": {"stable": 0, "canary": 1}}, True),
    ({"prefix": "/a", "upstream": "u", "split": {"stable": 10_001}}, False),
    ({"prefix": "/a", "upstream": "u", "split": {"Stable": 1}}, False),
    ({"prefix": "/a", "upstream": "u", "sticky": {"header": "x-user"}}, False),
    ({"prefix": "/a", "upstream": "u", "sticky": None}, True),
    ({"prefix": "/a", "upstream": "u", "split": {"s": 1}, "sticky": {"header": "x-user"}}, True),
    ({"prefix": "/a", "upstream": "u", "split": {"s": 1}, "sticky": {}}, False),
    ({"prefix": "/a", "upstream": "u", "split": {"s": 1},
      "sticky": {"header": "h", "cookie": "c"}}, False),
    ({"prefix": "/a", "upstream": "u", "split": {"s": 1},
      "sticky": {"header": None, "cookie": "c"}}, True),
    ({"prefix": "/a", "upstream": "u", "timeout_s": 0}, False),
    ({"prefix": "/a", "upstream": "u", "timeout_s": 300}, True),
    ({"prefix": "/a", "upstream": "u", "surprise": 1}, False),
]  # fmt: skip


@pytest.mark.parametrize(("route", "valid"), AGREEMENT)
def test_the_published_schema_says_what_the_model_accepts(
    route: dict[str, Any], valid: bool
) -> None:
    schema = Route.model_json_schema()
    validator = jsonschema_rs.Draft202012Validator(schema)
    assert validator.is_valid(route) == valid, "schema"
    try:
        Route.model_validate(route)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == valid, "model"
