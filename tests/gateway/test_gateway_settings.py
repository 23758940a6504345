"""Settings validation: a broken routing table fails at start-up, naming the problem."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from yardarm_gateway.settings import GatewaySettings

UPSTREAMS = {"orders": ["http://127.0.0.1:8100", "http://127.0.0.1:8101/"]}


def settings(**kwargs: Any) -> GatewaySettings:
    return GatewaySettings(port=8080, **kwargs)


def test_reads_json_routes_and_upstreams_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routes = [
        {"prefix": "/api/orders", "upstream": "orders"},
        {"prefix": "/api/stock", "upstream": "orders"},
        {"prefix": "/api/kv", "upstream": "datastore"},
    ]
    upstreams = {
        "orders": ["http://127.0.0.1:8100", "http://127.0.0.1:8101"],
        "datastore": ["https://kv.internal:8443"],
    }
    monkeypatch.setenv("YARDARM_GATEWAY_ROUTES", json.dumps(routes))
    monkeypatch.setenv("YARDARM_GATEWAY_UPSTREAMS", json.dumps(upstreams))
    monkeypatch.setenv("YARDARM_GATEWAY_UPSTREAM_TIMEOUT_S", "2.5")
    monkeypatch.setenv("YARDARM_GATEWAY_PORT", "8080")
    monkeypatch.setenv("YARDARM_GATEWAY_ADMIN_PORT", "8081")
    s = GatewaySettings()  # type: ignore[call-arg]  # fields come from the environment
    assert s.service == "gateway"
    assert [r.model_dump() for r in s.routes] == routes
    assert s.upstreams == upstreams
    assert s.upstream_timeout_s == 2.5
    assert s.strip_prefix == "/api"
    assert s.admin_port == 8081
    assert s.admin_token is None


def test_trailing_slashes_on_endpoints_are_normalized() -> None:
    s = settings(routes=[{"prefix": "/api/orders", "upstream": "orders"}], upstreams=UPSTREAMS)
    assert s.upstreams["orders"] == ["http://127.0.0.1:8100", "http://127.0.0.1:8101"]


@pytest.mark.parametrize(
    ("routes", "upstreams", "message"),
    [
        ([{"prefix": "/api/x", "upstream": "nope"}], UPSTREAMS, "unknown upstream 'nope'"),
        ([{"prefix": "api/orders", "upstream": "orders"}], UPSTREAMS, "must start with '/'"),
        (
            [{"prefix": "/a", "upstream": "orders"}, {"prefix": "/a/", "upstream": "orders"}],
            UPSTREAMS,
            "duplicate route prefix",
        ),
        ([], {"orders": ["ftp://127.0.0.1:21"]}, "must be http:// or https://"),
        ([], {"orders": ["127.0.0.1:8100"]}, "must be http:// or https://"),
        ([], {"orders": ["http://"]}, "has no host"),
        ([], {"orders": []}, "has no endpoints"),
        ([], {"orders": ["http://a:1", "http://a:1/"]}, "endpoint twice"),
    ],
)
def test_invalid_configuration_is_rejected(
    routes: list[dict[str, str]], upstreams: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(routes=routes, upstreams=upstreams)
