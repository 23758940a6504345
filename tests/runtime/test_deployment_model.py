"""Versions and tracks in the deployment model, and one settings function for every target."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from yardarm.local.plan import port_plan
from yardarm.local.render import instances
from yardarm.model import (
    Deployment,
    Instance,
    ScaleError,
    TlsFiles,
    Topology,
    TrackSpec,
    current_for,
    deployment,
    deployment_of,
    desired_from,
    instance_settings,
    load_topology,
    scaled,
    track_ports,
    validate_file,
)

CANARY = """
services:
  orders:
    tracks:
      canary: {replicas: 1, version: 0.2.0}
      baseline: {replicas: 1, version: 0.1.0}
  fulfillment:
    versions:
      1.1.0: {env: {LOG_LEVEL: DEBUG}}
    tracks:
      canary: {replicas: 2, version: 1.1.0}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "yardarm.yaml"
    path.write_text(text)
    return path


def test_orders_declares_demo_releases_without_any_file() -> None:
    orders = Topology().services.orders
    assert orders.declared() == [
        "0.1.0", "0.2.0", "0.3.0-errors", "0.3.0-flaky", "0.3.0-laggy", "0.3.0-slow",
    ]  # fmt: skip
    assert orders.release("0.3.0-errors").flags == {"fault.error-rate": "high"}
    assert orders.release("0.3.0-slow").flags == {"fault.latency-ms": "large"}
    names = [inst.name for inst in deployment(Topology()).instances]
    assert names == [
        "datastore-0", "datastore-1", "datastore-2", "orders-0", "orders-1",
        "fulfillment-0", "gateway-0",
    ]  # fmt: skip


def test_tracks_start_beside_the_primary_one_with_their_own_versions(tmp_path: Path) -> None:
    topology = load_topology(write(tmp_path, CANARY), None)
    planned = deployment(topology)
    assert [(i.name, i.track, i.version) for i in planned.of("orders")] == [
        ("orders-0", "stable", "0.1.0"),
        ("orders-1", "stable", "0.1.0"),
        ("orders-canary-0", "canary", "0.2.0"),
        ("orders-baseline-0", "baseline", "0.1.0"),
    ]
    specs = {spec.name: spec for spec in instances(topology, tmp_path / "home")}
    canary = specs["orders-canary-0"]
    assert canary.env["YARDARM_ORDERS_VERSION"] == "0.2.0"
    assert canary.env["YARDARM_ORDERS_TRACK"] == "canary"
    assert canary.env["YARDARM_ORDERS_INSTANCE"] == "orders-canary-0"
    assert canary.port == topology.track_ports[0] and canary.version == "0.2.0"
    # A release's own settings reach its instances, and only them.
    assert specs["fulfillment-canary-1"].env["YARDARM_FULFILLMENT_LOG_LEVEL"] == "DEBUG"
    assert specs["fulfillment-0"].env["YARDARM_FULFILLMENT_LOG_LEVEL"] == "INFO"
    # The gateway routes to every track, and waits for every orders instance.
    upstreams = json.loads(specs["gateway-0"].env["YARDARM_GATEWAY_UPSTREAMS"])
    tracks = {e["url"].rsplit(":", 1)[1]: e["track"] for e in upstreams["orders"]}
    assert tracks[str(canary.port)] == "canary"
    assert sorted(tracks.values()) == ["baseline", "canary", "stable", "stable"]
    assert "orders-canary-0" in specs["gateway-0"].depends_on
    plan = port_plan(topology)
    assert plan["orders-canary-0"] == canary.port
    assert len(set(plan.values())) == len(plan)


def test_a_release_that_pins_flags_reads_its_own_flag_file(tmp_path: Path) -> None:
    text = "services:\n  orders:\n    tracks:\n      canary: {replicas: 1, version: 0.3.0-errors}\n"
    home = tmp_path / "home"
    specs = {s.name: s for s in instances(load_topology(write(tmp_path, text), None), home)}
    pinned = Path(specs["orders-canary-0"].env["YARDARM_ORDERS_FLAGS_FILE"])
    assert pinned == home.resolve() / "flags" / "orders-0.3.0-errors.json"
    flags = json.loads(pinned.read_text())["flags"]
    assert flags["fault.error-rate"]["defaultVariant"] == "high"
    assert flags["fault.latency-ms"]["defaultVariant"] == "off"
    assert specs["orders-0"].env["YARDARM_ORDERS_FLAGS_FILE"] == str(home.resolve() / "flags.json")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "services:\n  orders:\n    tracks:\n      canary: {replicas: 1, version: 9.9.9}\n",
            r"services\.orders\.tracks\.canary\.version: unknown version '9\.9\.9' \(declared: "
            r"0\.1\.0, 0\.2\.0, 0\.3\.0-errors, 0\.3\.0-flaky, 0\.3\.0-laggy, "
            r"0\.3\.0-slow\) \(line 4\)",
        ),
        (
            "services:\n  orders:\n    tracks:\n      purple: {version: 0.2.0}\n",
            r"services\.orders\.tracks\.purple: must be one of 'stable', 'canary', 'baseline', "
            r"'blue' or 'green' \(got 'purple'\) \(line 4\)",
        ),
        (
            "services:\n  orders:\n    tracks:\n      stable: {version: 0.2.0}\n",
            r"services\.orders\.tracks\.stable: the primary track is set by replicas and "
            r"version; remove it here \(line 4\)",
        ),
        (
            "services:\n  gateway:\n    tracks:\n      canary: {version: 0.1.0}\n",
            r"services\.gateway\.tracks: unknown key \(line 3\)",
        ),
        (
            "services:\n  orders:\n    versions:\n      bad:\n        flags: {fault.nope: high}\n",
            r"services\.orders\.versions\.bad\.flags\.fault\.nope: unknown flag 'fault\.nope' "
            r"\(defined: fault\.consumer-error-rate, fault\.error-rate, fault\.latency-ms\) "
            r"\(line 5\)",
        ),
        (
            "services:\n  orders:\n    versions:\n      bad:\n"
            "        flags: {fault.error-rate: max}\n",
            r"services\.orders\.versions\.bad\.flags\.fault\.error-rate: flag "
            r"'fault\.error-rate' has no variant 'max' \(variants: off, some, low, high, all\) "
            r"\(line 5\)",
        ),
        (
            "services:\n  orders:\n    versions:\n      bad:\n        env: {PORT: '1'}\n",
            r"services\.orders\.versions\.bad\.env: .*env key 'PORT' is set by the model for "
            r"every instance \(line 5\)",
        ),
        (
            "services:\n  orders:\n    versions:\n      'a b': {}\n",
            r"services\.orders\.versions: .*version name 'a b' must be .* \(line 3\)",
        ),
    ],
)
def test_versions_and_tracks_are_validated_with_their_place(
    tmp_path: Path, text: str, expected: str
) -> None:
    errors = validate_file(write(tmp_path, text))
    assert len(errors) == 1, errors
    assert re.fullmatch(expected, errors[0]), errors[0]


class DnsTarget:
    """A target where every instance has its own host name and its files are mounted."""

    def bind(self, instance: Instance) -> tuple[str, int]:
        return "0.0.0.0", 8080

    def url(self, client: Instance, server: Instance) -> str:
        return f"http://{server.name}.{server.service}:8080"

    def raft_bind(self, instance: Instance) -> tuple[str, int]:
        return "0.0.0.0", 7000

    def raft_address(self, client: Instance, peer: Instance) -> str:
        return f"{peer.name}.datastore:7000"

    def postgres_dsn(self, client: Instance, database: str) -> str:
        return f"postgresql://yardarm@postgres:5432/{database}"

    def nats_url(self, client: Instance) -> str:
        return "nats://nats:4222"

    def gateway_admin_port(self, instance: Instance) -> int:
        return 8081

    def shares_gateway_port(self) -> bool:
        return False

    def state_dir(self, instance: Instance) -> str:
        return "/var/lib/yardarm"

    def data_dir(self, instance: Instance) -> str:
        return "/var/lib/yardarm/data"

    def flags_file(self, instance: Instance) -> str:
        return "/etc/yardarm/flags.json"

    def credential_file(self, principal: str) -> str:
        return f"/run/secrets/{principal}.token"

    def access_file(self) -> str:
        return "/run/secrets/access.json"

    def peer_secret_file(self) -> str:
        return "/run/secrets/raft-peer.secret"

    def tls(self, instance: Instance) -> TlsFiles | None:
        return None


def test_one_settings_function_serves_every_target(tmp_path: Path) -> None:
    """Another target changes addresses and paths, never which settings an instance gets."""
    topology = load_topology(write(tmp_path, CANARY), None)
    planned: Deployment = deployment(topology)
    local = {spec.name: spec.env for spec in instances(topology, tmp_path / "home")}
    for inst in planned.instances:
        remote = instance_settings(planned, inst, DnsTarget())
        assert remote.keys() == local[inst.name].keys(), inst.name
        assert not any("127.0.0.1" in value for value in remote.values()), inst.name
        assert remote[f"YARDARM_{inst.service.upper()}_VERSION"] == inst.version
    gateway = instance_settings(planned, planned.named("gateway-0"), DnsTarget())
    upstreams = json.loads(gateway["YARDARM_GATEWAY_UPSTREAMS"])
    assert {"url": "http://orders-canary-0.orders:8080", "track": "canary"} in upstreams["orders"]
    peers = json.loads(
        instance_settings(planned, planned.named("datastore-1"), DnsTarget())[
            "YARDARM_DATASTORE_PEERS"
        ]
    )
    assert peers == {
        "1": {"raft": "datastore-0.datastore:7000", "http": "http://datastore-0.datastore:8080"},
        "3": {"raft": "datastore-2.datastore:7000", "http": "http://datastore-2.datastore:8080"},
    }


def test_scaling_changes_the_desired_state_and_refuses_what_cannot_scale() -> None:
    topology = Topology()
    start = desired_from(topology)
    four = scaled(topology, start, "orders", 4)
    assert four.services["orders"]["stable"] == TrackSpec(replicas=4, version="0.1.0")
    assert four.generation == start.generation + 1
    canary = scaled(topology, four, "orders", 1, "canary", "0.2.0")
    names = [i.name for i in deployment_of(topology, canary).of("orders")]
    assert names == ["orders-0", "orders-1", "orders-2", "orders-3", "orders-canary-0"]
    gone = scaled(topology, canary, "orders", 0, "canary")
    assert "canary" not in gone.services["orders"]
    for service, replicas, track, version, says in [
        ("datastore", 5, None, None, "Raft group"),
        ("gateway", 2, None, None, "share the public port"),
        ("gateway", 1, "canary", "0.1.0", "share the public port"),
        ("datastore", 3, None, "9.9", "no version '9.9'"),
        ("payments", 1, None, None, "no such service"),
        ("orders", 0, None, None, "between 1 and 9"),
        ("orders", 10, "canary", "0.2.0", "between 0 and 9"),
        ("orders", 1, "purple", "0.2.0", "unknown track 'purple'"),
        ("orders", 1, "canary", "9.9", "no version '9.9'"),
    ]:
        with pytest.raises(ScaleError, match=says):
            scaled(topology, canary, service, replicas, track, version)


def test_the_gateway_and_the_datastore_change_version_at_the_count_they_run() -> None:
    """A rolling restart: a new version of every replica, never a new replica count."""
    release = {"versions": {"0.2.0": {"description": "next"}}}
    topology = Topology.model_validate(
        {"services": {"datastore": release, "gateway": {**release, "replicas": 2}}}
    )
    start = desired_from(topology)
    rolled = scaled(topology, start, "datastore", 3, None, "0.2.0")
    assert rolled.services["datastore"]["stable"] == TrackSpec(replicas=3, version="0.2.0")
    rolled = scaled(topology, rolled, "gateway", 2, None, "0.2.0")
    assert rolled.services["gateway"]["stable"] == TrackSpec(replicas=2, version="0.2.0")
    assert [i.version for i in deployment_of(topology, rolled).of("gateway")] == ["0.2.0"] * 2


def test_a_desired_state_is_kept_only_for_the_topology_it_came_from() -> None:
    topology = Topology()
    four = scaled(topology, desired_from(topology), "orders", 4)
    assert current_for(topology, four) is four
    edited = Topology.model_validate({"services": {"orders": {"replicas": 3}}})
    assert current_for(edited, four).services["orders"]["stable"].replicas == 3


def test_an_instance_keeps_its_track_port_while_others_come_and_go() -> None:
    topology = Topology()
    desired = scaled(topology, desired_from(topology), "orders", 2, "canary", "0.2.0")
    first = track_ports(deployment_of(topology, desired), {})
    assert first == {"orders-canary-0": topology.track_ports[0],
                     "orders-canary-1": topology.track_ports[1]}  # fmt: skip
    # canary-1 leaves and a blue instance arrives: canary-0 keeps its port, and blue does
    # not take the one canary-1 just left (it may still be draining there)
    desired = scaled(topology, desired, "orders", 1, "canary")
    desired = scaled(topology, desired, "orders", 1, "blue", "0.2.0")
    again = track_ports(deployment_of(topology, desired), first)
    assert again["orders-canary-0"] == first["orders-canary-0"]
    assert again["orders-blue-0"] == topology.track_ports[2]
    assert len(set(again.values())) == len(again)
