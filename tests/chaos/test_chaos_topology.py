"""What the topology renders for the Raft datastore and its chaos controller."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yardarm.chaos.config import ChaosConfig, config_path
from yardarm.local.plan import port_plan
from yardarm.local.render import InstanceSpec, instances
from yardarm.model import Topology, TopologyError, load_topology, validate_file

BASE = 14000


def render(tmp_path: Path, replicas: int | None = None) -> dict[str, InstanceSpec]:
    services = {} if replicas is None else {"datastore": {"replicas": replicas}}
    topology = Topology.model_validate({"base_port": BASE, "services": services})
    return {spec.name: spec for spec in instances(topology, tmp_path)}


def test_three_replicas_by_default_behind_a_chaos_controller(tmp_path: Path) -> None:
    assert Topology().services.datastore.replicas == 3
    specs = render(tmp_path)
    names = list(specs)
    assert [n for n in names if n.startswith("datastore")] == [f"datastore-{i}" for i in range(3)]
    assert names.index("chaos") < names.index("datastore-0")
    assert all(specs[f"datastore-{i}"].depends_on == ["chaos"] for i in range(3))

    chaos = specs["chaos"]
    config_file = tmp_path.resolve() / "chaos.json"
    assert chaos.command[1:] == ["-m", "yardarm.chaos", "--config", str(config_file)]
    assert chaos.port == BASE + 49
    assert chaos.readiness == "http"
    assert chaos.readiness_url == f"http://127.0.0.1:{BASE + 49}/readyz"


def test_a_link_per_ordered_pair_from_its_port_to_the_raft_port(tmp_path: Path) -> None:
    render(tmp_path)
    config = ChaosConfig.model_validate_json(config_path(tmp_path).read_text())
    assert config.control_port == BASE + 49
    assert config.home == tmp_path.resolve()
    links = {(link.src, link.dst): link for link in config.links}
    assert len(links) == 6
    for (src, dst), link in links.items():
        i, j = int(src[-1]), int(dst[-1])
        assert i != j
        assert link.name == f"{src}->{dst}"
        assert link.listen_port == BASE + 100 + 10 * i + j
        assert link.target_port == BASE + 60 + j
        assert link.target_host == "127.0.0.1"


def test_each_replica_reaches_its_peers_raft_through_its_own_links(tmp_path: Path) -> None:
    specs = render(tmp_path)
    config = ChaosConfig.model_validate_json(config_path(tmp_path).read_text())
    link_by_port = {link.listen_port: link for link in config.links}
    for i in range(3):
        env = specs[f"datastore-{i}"].env
        assert env["YARDARM_DATASTORE_REPLICA_ID"] == str(i + 1)
        assert env["YARDARM_DATASTORE_RAFT_PORT"] == str(BASE + 60 + i)
        peers = json.loads(env["YARDARM_DATASTORE_PEERS"])
        assert set(peers) == {str(j + 1) for j in range(3) if j != i}
        for key, peer in peers.items():
            j = int(key) - 1
            assert peer["http"] == f"http://127.0.0.1:{BASE + 10 + j}"  # direct
            host, port = peer["raft"].split(":")
            link = link_by_port[int(port)]  # through the chaos proxy of the link i -> j
            assert host == "127.0.0.1"
            assert (link.src, link.dst) == (f"datastore-{i}", f"datastore-{j}")
    assert json.loads(specs["datastore-1"].env["YARDARM_DATASTORE_PEERS"]) == {
        "1": {"raft": f"127.0.0.1:{BASE + 110}", "http": f"http://127.0.0.1:{BASE + 10}"},
        "3": {"raft": f"127.0.0.1:{BASE + 112}", "http": f"http://127.0.0.1:{BASE + 12}"},
    }


def test_the_datastore_accepts_what_the_topology_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yardarm_datastore.settings import DatastoreSettings

    env = render(tmp_path)["datastore-2"].env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = DatastoreSettings()  # type: ignore[call-arg]
    assert settings.replica_id == 3
    assert settings.raft_port == BASE + 62
    assert sorted(settings.peers) == [1, 2]
    assert settings.peers[1].raft == f"127.0.0.1:{BASE + 120}"


def test_services_still_list_every_replica(tmp_path: Path) -> None:
    specs = render(tmp_path)
    everyone = [f"http://127.0.0.1:{BASE + 10 + i}" for i in range(3)]
    assert json.loads(specs["orders-0"].env["YARDARM_ORDERS_DATASTORE_URLS"]) == everyone
    assert json.loads(specs["gateway-0"].env["YARDARM_GATEWAY_DATASTORE_URLS"]) == everyone


def test_port_plan_holds_control_raft_and_link_ports(tmp_path: Path) -> None:
    plan = port_plan(Topology(base_port=BASE))
    assert plan["chaos"] == BASE + 49
    assert [plan[f"datastore-{i}-raft"] for i in range(3)] == [BASE + 60 + i for i in range(3)]
    links = {k: v for k, v in plan.items() if k.startswith("chaos link ")}
    assert links["chaos link datastore-2->datastore-0"] == BASE + 120
    assert sorted(links.values()) == [BASE + p for p in (101, 102, 110, 112, 120, 121)]
    assert len(set(plan.values())) == len(plan)


def test_one_replica_has_no_links_and_no_peers(tmp_path: Path) -> None:
    specs = render(tmp_path, replicas=1)
    assert json.loads(specs["datastore-0"].env["YARDARM_DATASTORE_PEERS"]) == {}
    assert ChaosConfig.model_validate_json(config_path(tmp_path).read_text()).links == []
    assert "chaos" in specs  # kill and pause still apply


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        (0, "services.datastore.replicas: must be >= 1 (got 0) (line 3)"),
        (10, "services.datastore.replicas: must be <= 9 (got 10) (line 3)"),
    ],
)
def test_replica_counts_outside_1_to_9_are_refused(
    tmp_path: Path, replicas: int, expected: str
) -> None:
    path = tmp_path / "yardarm.yaml"
    path.write_text(f"services:\n  datastore:\n    replicas: {replicas}\n")
    assert validate_file(path) == [expected]
    with pytest.raises(TopologyError, match="must be"):
        load_topology(path, None)


@pytest.mark.parametrize("replicas", [1, 2, 5, 9])
def test_replica_counts_from_1_to_9_are_valid(tmp_path: Path, replicas: int) -> None:
    path = tmp_path / "yardarm.yaml"
    path.write_text(f"services:\n  datastore:\n    replicas: {replicas}\n")
    assert validate_file(path) == []
    topology = load_topology(path, None)
    specs = instances(topology, tmp_path)
    assert sum(spec.service == "datastore" for spec in specs) == replicas
    config = ChaosConfig.model_validate_json(config_path(tmp_path).read_text())
    assert len(config.links) == replicas * (replicas - 1)
