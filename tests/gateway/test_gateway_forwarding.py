"""Header forwarding: hop-by-hop headers stop at the gateway, the rest passes."""

from __future__ import annotations

from multidict import CIMultiDict
from yardarm_gateway.endpoints import Endpoint
from yardarm_gateway.forwarding import (
    Relocation,
    downstream_response_headers,
    upstream_request_headers,
)


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    inbound = CIMultiDict(
        [
            ("Host", "gw.local"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic x"),
            ("TE", "trailers"),
            ("Trailer", "X-Sum"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "websocket"),
            ("X-Secret-Hop", "1"),
            ("Content-Length", "3"),
            ("Accept", "application/json"),
            ("X-Custom", "a"),
            ("X-Custom", "b"),
            ("Authorization", "Bearer t"),
        ]
    )
    out = upstream_request_headers(inbound, client_ip="10.0.0.9", scheme="http", host="gw.local")
    assert set(out.keys()) == {
        "Accept",
        "X-Custom",
        "Authorization",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
    }
    assert out["X-Custom"] == "a, b"
    assert out["X-Forwarded-For"] == "10.0.0.9"
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "gw.local"


def test_forwarded_for_chain_is_extended() -> None:
    inbound = CIMultiDict(
        [
            ("X-Forwarded-For", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("Cookie", "a=1"),
            ("cookie", "b=2"),
        ]
    )
    out = upstream_request_headers(inbound, client_ip="127.0.0.1", scheme="https", host=None)
    assert out == {
        "X-Forwarded-For": "1.1.1.1, 2.2.2.2, 127.0.0.1",
        "Cookie": "a=1; b=2",
        "X-Forwarded-Proto": "https",
    }


def test_response_keeps_end_to_end_headers() -> None:
    upstream = CIMultiDict(
        [
            ("Content-Type", "application/problem+json"),
            ("Location", "/orders/1"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
            ("Content-Length", "10"),
        ]
    )
    out = downstream_response_headers(list(upstream.items()))
    assert list(out.items()) == [
        ("Content-Type", "application/problem+json"),
        ("Location", "/orders/1"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_relocation_compares_whole_origins_with_default_ports() -> None:
    relocation = Relocation("/orders", "/api/orders")
    https = Endpoint("https://Orders.internal")
    assert relocation.public_value("https://orders.INTERNAL:443/orders/7", https) == (
        "/api/orders/7"
    )
    assert relocation.public_value("http://orders.internal/orders/7", https) == (
        "http://orders.internal/orders/7"
    )
    v6 = Endpoint("http://[::1]:8120")
    assert relocation.public_value("http://[::1]:8120/orders#x", v6) == "/api/orders#x"
    assert relocation.public_value("http://[::2]:8120/orders", v6) == "http://[::2]:8120/orders"
    assert relocation.public_value("http://[::1]:bad/orders", v6) == "http://[::1]:bad/orders"
    root = Relocation("/", "/api")  # the route `/api` forwards everything to `/`
    assert root.public_value("/", v6) == "/api/"
    assert root.public_value("/x?y", v6) == "/api/x?y"
    assert root.public_value("//elsewhere.example/x", v6) == "//elsewhere.example/x"
    assert Relocation("/", "/").public_value("/x", v6) == "/x"
