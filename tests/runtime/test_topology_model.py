"""The topology: defaults, port plan, yardarm.yaml overrides, precise validation errors."""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import pytest

from yardarm.local.plan import port_plan
from yardarm.local.render import InstanceSpec, instances, urls
from yardarm.model import Topology, TopologyError, default_flags, load_topology, validate_file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "yardarm.yaml"
    path.write_text(text)
    return path


def test_defaults_and_port_plan() -> None:
    topology = Topology()
    assert topology.base_port == 8080
    assert topology.environment == "local"
    replicas = {
        name: getattr(topology.services, name).replicas
        for name in ("datastore", "orders", "fulfillment", "gateway")
    }
    assert replicas == {"datastore": 3, "orders": 2, "fulfillment": 1, "gateway": 1}
    assert topology.services.orders.version == "0.1.0"
    assert topology.services.orders.track == "stable"
    for flag in ("fault.error-rate", "fault.latency-ms"):
        assert topology.flags[flag]["state"] == "ENABLED"
        assert topology.flags[flag]["defaultVariant"] == "off"
    assert topology.flags["fault.error-rate"]["variants"]["off"] == 0.0
    assert topology.flags["fault.latency-ms"]["variants"]["off"] == 0

    found = urls(Topology(base_port=9000))
    assert found["gateway"] == "http://127.0.0.1:9000"
    assert found["admin"] == "http://127.0.0.1:9001"
    assert found["datastore"] == "http://127.0.0.1:9010"
    assert found["orders"] == "http://127.0.0.1:9020"
    assert found["fulfillment"] == "http://127.0.0.1:9030"
    assert found["nats"] == "nats://127.0.0.1:9040"
    assert found["postgres"].endswith("@127.0.0.1:9042/postgres")
    assert found["chaos"] == "http://127.0.0.1:9049"


def test_yaml_overrides_defaults_and_base_port_flag_wins(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "base_port: 12000\nservices:\n  orders:\n    replicas: 3\n    track: canary\n",
    )
    topology = load_topology(path, None)
    assert topology.base_port == 12000
    assert topology.services.orders.replicas == 3
    assert topology.services.orders.track == "canary"
    assert topology.services.fulfillment.replicas == 1
    assert load_topology(path, 13000).base_port == 13000


def test_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_topology(None, None) == Topology()
    write(tmp_path, "base_port: 15000\n")
    assert load_topology(None, None).base_port == 15000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "services:\n  orders:\n    replicas: 0\n",
            "services.orders.replicas: must be >= 1 (got 0) (line 3)",
        ),
        (
            "services:\n  orders:\n    replicas: 10\n",
            "services.orders.replicas: must be <= 9 (got 10) (line 3)",
        ),
        ("base_port: 80\n", "base_port: must be >= 1024 (got 80) (line 1)"),
        ("base_port: 65001\n", "base_port: must be <= 65000 (got 65001) (line 1)"),
        ("services:\n  payments: {}\n", "services.payments: unknown key (line 2)"),
        ("colour: blue\n", "colour: unknown key (line 1)"),
    ],
)
def test_validation_messages(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert validate_file(path) == [expected]
    with pytest.raises(TopologyError, match=r"must be|unknown key"):
        load_topology(path, None)


def test_every_error_is_reported(tmp_path: Path) -> None:
    text = "base_port: 1\nservices:\n  orders:\n    replicas: 0\n    track: purple\n"
    errors = validate_file(write(tmp_path, text))
    assert len(errors) == 3
    assert any(e.startswith("services.orders.track: must be one of") for e in errors)


def test_yaml_syntax_error_has_line_number(tmp_path: Path) -> None:
    errors = validate_file(write(tmp_path, "services:\n  orders: [1, 2\nbase_port: 3\n"))
    assert len(errors) == 1
    assert errors[0].startswith("YAML syntax error at line 3")
    with pytest.raises(TopologyError, match="YAML syntax error"):
        load_topology(tmp_path / "yardarm.yaml", None)


def test_bad_base_port_override_is_a_topology_error() -> None:
    with pytest.raises(TopologyError, match="--base-port"):
        load_topology(None, 99)


def test_instances_are_in_dependency_order_with_consistent_env(tmp_path: Path) -> None:
    topology = Topology(base_port=14000)
    specs = instances(topology, tmp_path)
    # The stack's Prometheus (when a binary is on PATH) depends on nothing.
    names = [s.name for s in specs if s.name != "prometheus"]
    assert names == [
        "nats",
        "postgres",
        "chaos",
        "datastore-0",
        "datastore-1",
        "datastore-2",
        "orders-0",
        "orders-1",
        "fulfillment-0",
        "gateway-0",
        "rollouts",  # the rollout controller, once the gateways route
    ]
    seen: set[str] = set()
    for spec in specs:
        assert set(spec.depends_on) <= seen, spec.name
        seen.add(spec.name)
    by_name = {s.name: s for s in specs}
    assert by_name["nats"].port == 14040 and by_name["nats"].readiness == "tcp"
    assert by_name["postgres"].port == 14042 and by_name["postgres"].readiness == "postgres"

    orders = by_name["orders-1"].env
    assert orders["YARDARM_ORDERS_INSTANCE"] == "orders-1"
    assert orders["YARDARM_ORDERS_PORT"] == "14021"
    assert orders["YARDARM_ORDERS_HOST"] == "127.0.0.1"
    assert orders["YARDARM_ORDERS_DATABASE_URL"].endswith("@127.0.0.1:14042/orders")
    assert orders["YARDARM_ORDERS_NATS_URL"] == "nats://127.0.0.1:14040"
    datastores = [f"http://127.0.0.1:{port}" for port in (14010, 14011, 14012)]
    assert json.loads(orders["YARDARM_ORDERS_DATASTORE_URLS"]) == datastores
    assert orders["YARDARM_ORDERS_FLAGS_FILE"] == str(tmp_path.resolve() / "flags.json")
    assert orders["YARDARM_ORDERS_STATE_DIR"] == str(tmp_path.resolve())
    assert by_name["orders-1"].readiness_url == "http://127.0.0.1:14021/readyz"

    fulfillment = by_name["fulfillment-0"].env
    assert fulfillment["YARDARM_FULFILLMENT_DATABASE_URL"].endswith(":14042/fulfillment")
    assert fulfillment["YARDARM_FULFILLMENT_NATS_URL"] == "nats://127.0.0.1:14040"

    datastore = by_name["datastore-0"].env
    assert datastore["YARDARM_DATASTORE_PORT"] == "14010"
    assert datastore["YARDARM_DATASTORE_DATA_DIR"] == str(
        tmp_path.resolve() / "data" / "datastore-0"
    )

    gateway = by_name["gateway-0"].env
    assert gateway["YARDARM_GATEWAY_PORT"] == "14000"
    assert gateway["YARDARM_GATEWAY_ADMIN_PORT"] == "14001"
    assert json.loads(gateway["YARDARM_GATEWAY_UPSTREAMS"]) == {
        "orders": [
            {"url": "http://127.0.0.1:14020", "track": "stable"},
            {"url": "http://127.0.0.1:14021", "track": "stable"},
        ],
        "datastore": [{"url": url, "track": "stable"} for url in datastores],
    }
    assert json.loads(gateway["YARDARM_GATEWAY_DATASTORE_URLS"]) == datastores
    assert gateway["YARDARM_GATEWAY_REUSE_PORT"] == "false"
    prefixes = {r["prefix"]: r["upstream"] for r in json.loads(gateway["YARDARM_GATEWAY_ROUTES"])}
    assert prefixes == {"/api/orders": "orders", "/api/stock": "orders", "/api/kv": "datastore"}
    assert set(by_name["gateway-0"].depends_on) >= {"orders-0", "orders-1", "datastore-0"}


def test_gateway_replicas_share_the_public_port_with_their_own_admin_ports(
    tmp_path: Path,
) -> None:
    topology = Topology.model_validate(
        {"base_port": 14000, "services": {"gateway": {"replicas": 3}}}
    )
    gateways = [i for i in instances(topology, tmp_path) if i.service == "gateway"]
    assert [g.env["YARDARM_GATEWAY_PORT"] for g in gateways] == ["14000"] * 3
    assert [g.env["YARDARM_GATEWAY_ADMIN_PORT"] for g in gateways] == ["14001", "14002", "14003"]
    assert all(g.env["YARDARM_GATEWAY_REUSE_PORT"] == "true" for g in gateways)
    # Probed on their own admin port: the shared port may answer from any replica.
    assert [g.readiness_url for g in gateways] == [
        f"http://127.0.0.1:{port}/readyz" for port in (14001, 14002, 14003)
    ]
    plan = port_plan(topology)
    assert plan["gateway-admin-2"] == 14003
    assert len(set(plan.values())) == len(plan)


def test_admin_token_is_private_and_stable(tmp_path: Path) -> None:
    """The gateway reads the admin token from a file: it is in no process's environment."""

    def gateway_env(specs: list[InstanceSpec]) -> dict[str, str]:
        return next(s for s in specs if s.name == "gateway-0").env

    first = gateway_env(instances(Topology(), tmp_path))["YARDARM_GATEWAY_ADMIN_TOKEN_FILE"]
    token = Path(first).read_text().strip()
    again = gateway_env(instances(Topology(), tmp_path))["YARDARM_GATEWAY_ADMIN_TOKEN_FILE"]
    assert first == again and Path(again).read_text().strip() == token and len(token) >= 24
    mode = stat.S_IMODE((tmp_path / "admin-token").stat().st_mode)
    assert mode == 0o600


FLAGD = {
    "flags": {
        "orders.slow": {
            "state": "ENABLED",
            "variants": {"on": 500, "off": 0},
            "defaultVariant": "on",
        }
    }
}


def test_flags_file_is_read_relative_to_the_yaml(tmp_path: Path) -> None:
    (tmp_path / "faults").mkdir()
    (tmp_path / "faults" / "slow.json").write_text(json.dumps(FLAGD))
    topology = load_topology(write(tmp_path, "flags_file: faults/slow.json\n"), None)
    # The generic fault flags stay defined beside the file's own (releases pin them).
    assert topology.flags == default_flags() | FLAGD["flags"]
    assert topology.flags_file == tmp_path.resolve() / "faults" / "slow.json"


@pytest.mark.parametrize(
    ("files", "text", "expected"),
    [
        ({}, "flags_file: nope.json\n", r"flags_file: cannot read .*nope\.json: .* \(line 1\)"),
        (
            {"bad.json": '{\n  "flags": \n'},
            "flags_file: bad.json\n",
            r"flags_file: .*bad\.json is not JSON: .* at line 3 \(line 1\)",
        ),
        (
            {"list.json": "[]"},
            "flags_file: list.json\n",
            r'flags_file: .*list\.json is not a flagd file: it needs a top-level "flags" object'
            r" \(line 1\)",
        ),
        (
            {"ok.json": json.dumps(FLAGD)},
            "flags: {}\nflags_file: ok.json\n",
            r"flags_file: set flags or flags_file, not both \(line 2\)",
        ),
        (
            {},
            "flags:\n  fault.x:\n    state: ENABLED\n    variants: {a: 1}\n    defaultVariant: b\n",
            r"flags: flag 'fault.x': defaultVariant must name one of \['a'\] \(got 'b'\)"
            r" \(line 1\)",
        ),
        (
            {},
            "flags:\n  fault.x: {state: 'ON', variants: {a: 1}, defaultVariant: a}\n",
            r"flags: flag 'fault.x': state must be ENABLED or DISABLED \(line 1\)",
        ),
    ],
)
def test_flag_errors(tmp_path: Path, files: dict[str, str], text: str, expected: str) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    errors = validate_file(write(tmp_path, text))
    assert len(errors) == 1, errors
    assert re.fullmatch(expected, errors[0]), errors[0]
    with pytest.raises(TopologyError):
        load_topology(tmp_path / "yardarm.yaml", None)


@pytest.mark.parametrize("base_port", [1024, 8080, 65000])
def test_port_plan_never_overlaps_even_at_the_limits(base_port: int, tmp_path: Path) -> None:
    widest = Topology.model_validate(
        {
            "base_port": base_port,
            "services": {name: {"replicas": 9} for name in ("datastore", "orders", "fulfillment")},
        }
    )
    plan = port_plan(widest)
    # gateway and its admin port, 3 x 9 replicas, NATS x2 + Postgres, chaos control,
    # Prometheus, the rollout controller, 9 Raft ports and a chaos link per ordered pair
    # of datastores
    assert len(plan) == 2 + 3 * 9 + 3 + 1 + 1 + 1 + 9 + 9 * 8
    assert len(set(plan.values())) == len(plan)
    assert all(1024 <= port <= 65535 for port in plan.values())
    specs = instances(widest, tmp_path)
    assert {s.name: s.port for s in specs} == {
        k: v
        for k, v in plan.items()
        if k not in ("gateway-admin", "nats-monitor")
        and not k.endswith("-raft")
        and not k.startswith("chaos link ")
        and (k != "prometheus" or shutil.which("prometheus"))  # runs where installed
    }


def test_gateway_policies_from_yaml_reach_the_gateway(tmp_path: Path) -> None:
    text = (
        "services:\n"
        "  gateway:\n"
        "    route_timeout_s: 5\n"
        "    rate_limit: {enabled: true, requests_per_s: 50, burst: 100}\n"
        "    upstreams:\n"
        "      orders:\n"
        "        balancer: {policy: least_request}\n"
        "        retry: {max_retries: 1}\n"
    )
    topology = load_topology(write(tmp_path, text), None)
    (gateway,) = [i for i in instances(topology, tmp_path) if i.service == "gateway"]
    upstreams = json.loads(gateway.env["YARDARM_GATEWAY_UPSTREAMS"])
    assert upstreams["orders"]["balancer"] == {"policy": "least_request"}
    assert upstreams["orders"]["retry"] == {"max_retries": 1}
    assert len(upstreams["orders"]["endpoints"]) == 2
    assert isinstance(upstreams["datastore"], list)  # nothing set: the plain endpoint list
    assert json.loads(gateway.env["YARDARM_GATEWAY_RATE_LIMIT"])["requests_per_s"] == 50
    assert gateway.env["YARDARM_GATEWAY_ROUTE_TIMEOUT_S"] == "5.0"
    # What the topology renders, the gateway accepts.
    from yardarm_gateway.settings import GatewaySettings

    settings = GatewaySettings.model_validate(
        {
            "port": 1,
            "upstreams": upstreams,
            "routes": json.loads(gateway.env["YARDARM_GATEWAY_ROUTES"]),
        }
    )
    assert settings.upstreams["orders"].balancer.policy == "least_request"


def test_invalid_gateway_policy_is_reported_with_its_place(tmp_path: Path) -> None:
    text = (
        "services:\n  gateway:\n    upstreams:\n      orders:\n"
        "        balancer: {policy: fastest}\n"
    )
    errors = validate_file(write(tmp_path, text))
    assert len(errors) == 1
    assert errors[0].startswith("services.gateway.upstreams.orders.balancer.policy")
    assert "line 5" in errors[0]
    text = "services:\n  gateway:\n    upstreams:\n      payments: {}\n"
    assert "payments" in validate_file(write(tmp_path, text))[0]
