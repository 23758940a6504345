"""Settings validation: a broken routing table fails at start-up, naming the problem."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from yardarm_gateway.settings import SHARED_PORT_DRAIN_DELAY_S, GatewaySettings

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
    monkeypatch.setenv("YARDARM_GATEWAY_ROUTE_TIMEOUT_S", "2.5")
    monkeypatch.setenv("YARDARM_GATEWAY_PORT", "8080")
    monkeypatch.setenv("YARDARM_GATEWAY_ADMIN_PORT", "8081")
    s = GatewaySettings()  # type: ignore[call-arg]  # fields come from the environment
    assert s.service == "gateway"
    assert [(r.prefix, r.upstream, r.name) for r in s.routes] == [
        ("/api/orders", "orders", "api-orders"),
        ("/api/stock", "orders", "api-stock"),
        ("/api/kv", "datastore", "api-kv"),
    ]
    assert {name: [e.url for e in spec.endpoints] for name, spec in s.upstreams.items()} == (
        upstreams
    )
    assert all(e.track == "stable" for spec in s.upstreams.values() for e in spec.endpoints)
    assert s.route_timeout_s == 2.5
    assert s.strip_prefix == "/api"
    assert s.admin_port == 8081
    assert s.admin_token is None


def test_trailing_slashes_on_endpoints_are_normalized() -> None:
    s = settings(routes=[{"prefix": "/api/orders", "upstream": "orders"}], upstreams=UPSTREAMS)
    assert [e.url for e in s.upstreams["orders"].endpoints] == [
        "http://127.0.0.1:8100",
        "http://127.0.0.1:8101",
    ]


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
        ([], {"orders": []}, "at least 1 item"),
        ([], {"orders": ["http://a:1", "http://a:1/"]}, "endpoint is listed twice"),
        ([], {"orders": [{"url": "http://a:1", "track": "Canary!"}]}, "track"),
        ([], {"orders": [{"url": "http://a:1", "weight": 0}]}, "weight"),
        ([], {"orders": {"endpoints": ["http://a:1"], "surprise": 1}}, "surprise"),
        (
            [],
            {"orders": {"endpoints": ["http://a:1"], "breaker": {"minimum_calls": -1}}},
            "minimum_calls",
        ),
        (
            [{"prefix": "/o", "upstream": "orders", "split": {"stable": 90, "canary": 10}}],
            UPSTREAMS,
            "no endpoint on it",
        ),
        (
            [{"prefix": "/o", "upstream": "orders", "split": {"stable": 0}}],
            UPSTREAMS,
            "at least one track",
        ),
        (
            [{"prefix": "/o", "upstream": "orders", "sticky": {"cookie": "c"}}],
            UPSTREAMS,
            "sticky needs a split",
        ),
        (
            [
                {"prefix": "/a", "upstream": "orders", "name": "x"},
                {"prefix": "/b", "upstream": "orders", "name": "x"},
            ],
            UPSTREAMS,
            "duplicate route name",
        ),
    ],
)
def test_invalid_configuration_is_rejected(
    routes: list[dict[str, Any]], upstreams: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(routes=routes, upstreams=upstreams)


def test_upstream_policies_and_tracks_are_read_from_the_long_form() -> None:
    s = settings(
        routes=[{"prefix": "/o", "upstream": "orders", "split": {"stable": 95, "canary": 5}}],
        upstreams={
            "orders": {
                "endpoints": [
                    "http://127.0.0.1:8100",
                    {"url": "http://127.0.0.1:8101", "track": "canary", "weight": 3},
                ],
                "balancer": {"policy": "least_request"},
                "retry": {"max_retries": 1},
                "max_concurrent": 50,
            }
        },
    )
    spec = s.upstreams["orders"]
    assert [(e.track, e.weight) for e in spec.endpoints] == [("stable", 1), ("canary", 3)]
    assert spec.balancer.policy == "least_request"
    assert spec.retry.max_retries == 1
    assert spec.max_concurrent == 50
    assert spec.outlier.consecutive_5xx == 5  # Envoy's defaults where not given
    assert s.tracks() == {"orders": {"stable", "canary"}}


def test_tls_files_must_come_as_an_existing_pair(tmp_path: Any) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ValidationError, match="set together"):
        settings(tls_cert_file=cert)
    with pytest.raises(ValidationError, match="does not exist"):
        settings(tls_cert_file=cert, tls_key_file=tmp_path / "missing.pem")


def test_the_admin_token_may_come_from_a_file_but_not_from_both(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "admin.token"
    secret.write_text("from-the-file-0123456789\n")  # editors add the newline
    monkeypatch.setenv("YARDARM_GATEWAY_PORT", "8080")
    monkeypatch.setenv("YARDARM_GATEWAY_ADMIN_TOKEN_FILE", str(secret))
    s = GatewaySettings()  # type: ignore[call-arg]  # fields come from the environment
    assert s.admin_credential == "from-the-file-0123456789"
    monkeypatch.delenv("YARDARM_GATEWAY_ADMIN_TOKEN_FILE")
    assert settings(admin_token="from-the-value-0123456789").admin_credential == (
        "from-the-value-0123456789"
    )
    assert settings().admin_credential is None
    with pytest.raises(ValidationError, match="admin_token or admin_token_file, not both"):
        settings(admin_token="from-the-value-0123456789", admin_token_file=secret)


@pytest.mark.parametrize("content", [None, "", "  \n", "short"])
def test_an_unusable_admin_token_file_stops_the_start_naming_the_field(
    tmp_path: Any, content: str | None
) -> None:
    path = tmp_path / "admin.token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValidationError, match="admin_token_file"):
        settings(admin_token_file=path)


def test_the_datastore_credential_is_read_from_its_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.token"
    path.write_text("gateway-credential\n")
    monkeypatch.setenv("YARDARM_GATEWAY_PORT", "8080")
    monkeypatch.setenv("YARDARM_GATEWAY_DATASTORE_TOKEN_FILE", str(path))
    s = GatewaySettings()  # type: ignore[call-arg]  # fields come from the environment
    assert s.datastore_credential == "gateway-credential"
    monkeypatch.delenv("YARDARM_GATEWAY_DATASTORE_TOKEN_FILE")
    assert settings().datastore_credential is None
    with pytest.raises(ValidationError, match="datastore_token_file"):
        settings(datastore_token_file=tmp_path / "missing.token")


def test_a_replica_sharing_the_public_port_drains_for_a_second_unless_told() -> None:
    # Nothing routes by a shared-port replica's readiness: its drain delay is what moves
    # its keep-alive clients to its peers (answers with Connection: close).
    assert settings(reuse_port=True).drain_delay_s == SHARED_PORT_DRAIN_DELAY_S == 1.0
    assert settings(reuse_port=True, drain_delay_s=0).drain_delay_s == 0
    assert settings(reuse_port=True, drain_delay_s=2.5).drain_delay_s == 2.5
    assert settings().drain_delay_s == 0  # alone on its port: the kit's default
