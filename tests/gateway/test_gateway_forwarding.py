"""Header forwarding: hop-by-hop headers stop at the gateway, the rest passes."""

from __future__ import annotations

from multidict import CIMultiDict
from yardarm_gateway.forwarding import downstream_response_headers, upstream_request_headers


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
