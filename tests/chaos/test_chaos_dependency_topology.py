"""What the topology renders when services reach their dependencies through link proxies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from yardarm.chaos.config import ChaosConfig, config_path
from yardarm.local.plan import dependency_links, port_plan
from yardarm.local.render import InstanceSpec, instances
from yardarm.model import Topology, TopologyError, load_topology, validate_file

BASE = 14000
POSTGRES, NATS = BASE + 42, BASE + 40


def datastore(j: int) -> int:
    return BASE + 10 + j


def orders(j: int) -> int:
    return BASE + 20 + j


def topology(on: bool, **replicas: int) -> Topology:
    return Topology.model_validate(
        {
            "base_port": BASE,
            "chaos": {"dependency_links": on},
            "services": {name: {"replicas": n} for name, n in replicas.items()},
        }
    )


def render(
    tmp_path: Path, on: bool, **replicas: int
) -> tuple[dict[str, InstanceSpec], ChaosConfig]:
    specs = {spec.name: spec for spec in instances(topology(on, **replicas), tmp_path)}
    return specs, ChaosConfig.model_validate_json(config_path(tmp_path).read_text())


def port(url: str) -> int:
    found = urlsplit(url).port
    assert found is not None, url
    return found


def env(spec: InstanceSpec, key: str) -> str:
    return spec.env[f"YARDARM_{spec.service.upper()}_{key}"]


def dialled(spec: InstanceSpec) -> dict[str, list[int]]:
    """Every port the instance's settings tell it to connect to, by setting."""
    found: dict[str, list[int]] = {}
    for key in ("DATABASE_URL", "NATS_URL"):
        if f"YARDARM_{spec.service.upper()}_{key}" in spec.env:
            found[key] = [port(env(spec, key))]
    if f"YARDARM_{spec.service.upper()}_DATASTORE_URLS" in spec.env:
        found["DATASTORE_URLS"] = [port(u) for u in json.loads(env(spec, "DATASTORE_URLS"))]
    if spec.service == "gateway":
        upstreams: dict[str, Any] = json.loads(env(spec, "UPSTREAMS"))
        for name, listed in upstreams.items():
            endpoints = listed["endpoints"] if isinstance(listed, dict) else listed
            found[f"UPSTREAMS.{name}"] = [port(e["url"]) for e in endpoints]
    return found


def test_off_by_default_every_client_dials_its_dependency_directly(tmp_path: Path) -> None:
    assert Topology().chaos.dependency_links is False
    specs, config = render(tmp_path, False, datastore=3, orders=2)
    assert all(link.src.startswith("datastore-") for link in config.links)  # Raft only
    assert dependency_links(topology(False)) == []
    assert dialled(specs["orders-1"]) == {
        "DATABASE_URL": [POSTGRES],
        "NATS_URL": [NATS],
        "DATASTORE_URLS": [datastore(j) for j in range(3)],
    }
    assert dialled(specs["fulfillment-0"]) == {"DATABASE_URL": [POSTGRES], "NATS_URL": [NATS]}
    assert dialled(specs["gateway-0"]) == {
        "DATASTORE_URLS": [datastore(j) for j in range(3)],
        "UPSTREAMS.orders": [orders(0), orders(1)],
        "UPSTREAMS.datastore": [datastore(j) for j in range(3)],
    }
    assert specs["fulfillment-0"].depends_on == ["nats", "postgres"]
    assert max(port_plan(topology(False)).values()) < BASE + 200


def test_on_every_client_dials_its_own_link_to_the_real_port(tmp_path: Path) -> None:
    specs, config = render(tmp_path, True, datastore=3, orders=2, gateway=2)
    by_port = {link.listen_port: link for link in config.links}
    real = {"postgres": POSTGRES, "nats": NATS}
    real |= {f"datastore-{j}": datastore(j) for j in range(3)}
    real |= {f"orders-{j}": orders(j) for j in range(2)}
    expected = {
        "orders": {
            "DATABASE_URL": ["postgres"],
            "NATS_URL": ["nats"],
            "DATASTORE_URLS": ["datastore-0", "datastore-1", "datastore-2"],
        },
        "fulfillment": {"DATABASE_URL": ["postgres"], "NATS_URL": ["nats"]},
        "gateway": {
            "DATASTORE_URLS": ["datastore-0", "datastore-1", "datastore-2"],
            "UPSTREAMS.orders": ["orders-0", "orders-1"],
            "UPSTREAMS.datastore": ["datastore-0", "datastore-1", "datastore-2"],
        },
    }
    for name in ("orders-0", "orders-1", "fulfillment-0", "gateway-0", "gateway-1"):
        spec = specs[name]
        reached: dict[str, list[str]] = {}
        for key, ports in dialled(spec).items():
            links = [by_port[p] for p in ports]  # KeyError: a port no link listens on
            assert all(link.src == name for link in links), (name, key)
            assert all(link.target_port == real[link.dst] for link in links)
            reached[key] = [link.dst for link in links]
        assert reached == expected[spec.service], name
        assert "chaos" in spec.depends_on  # its proxies must listen before it starts
    assert env(specs["orders-0"], "DATABASE_URL").endswith("/orders")
    assert env(specs["fulfillment-0"], "DATABASE_URL").endswith("/fulfillment")


def test_readiness_probes_go_to_the_instance_never_through_a_link(tmp_path: Path) -> None:
    specs, config = render(tmp_path, True, orders=2, gateway=2)
    link_ports = {link.listen_port for link in config.links}
    for spec in specs.values():
        if spec.readiness_url is not None:
            assert port(spec.readiness_url) not in link_ports, spec.name
    for name in ("orders-0", "orders-1", "fulfillment-0", "datastore-2"):
        assert specs[name].readiness_url == f"http://127.0.0.1:{specs[name].port}/readyz"
    assert specs["gateway-1"].readiness_url == f"http://127.0.0.1:{BASE + 2}/readyz"


def test_links_are_one_per_pair_in_a_fixed_order_from_base_plus_200(tmp_path: Path) -> None:
    links = dependency_links(topology(True, datastore=2, orders=2, gateway=2))
    assert [(link.src, link.dst) for link in links] == [
        *[
            (f"orders-{i}", dst)
            for i in range(2)
            for dst in ("datastore-0", "datastore-1", "postgres", "nats")
        ],
        ("fulfillment-0", "postgres"),
        ("fulfillment-0", "nats"),
        *[
            (f"gateway-{i}", dst)
            for i in range(2)
            for dst in ("orders-0", "orders-1", "datastore-0", "datastore-1")
        ],
    ]
    assert [link.listen_port for link in links] == list(range(BASE + 200, BASE + 200 + 18))
    assert all(link.name == f"{link.src}->{link.dst}" for link in links)
    _, config = render(tmp_path, True, datastore=2, orders=2, gateway=2)
    assert config.links[-len(links) :] == links  # after the Raft links, in the same order


def test_every_link_port_is_in_the_port_plan_and_unique(tmp_path: Path) -> None:
    chosen = topology(True, orders=3, fulfillment=2, gateway=2)
    plan = port_plan(chosen)
    assert len(set(plan.values())) == len(plan)
    for link in dependency_links(chosen):
        assert plan[f"chaos link {link.name}"] == link.listen_port


def test_the_widest_stack_fits_below_65536_at_the_highest_base_port() -> None:
    widest = Topology.model_validate(
        {
            "base_port": 65000,
            "chaos": {"dependency_links": True},
            "services": {
                name: {"replicas": 9} for name in ("datastore", "orders", "fulfillment", "gateway")
            },
        }
    )
    links = dependency_links(widest)
    assert len(links) == 9 * 11 + 9 * 2 + 9 * 18
    plan = port_plan(widest)
    assert len(set(plan.values())) == len(plan)
    assert max(plan.values()) <= 65535


def test_services_accept_what_the_topology_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yardarm_fulfillment.settings import FulfillmentSettings
    from yardarm_orders.settings import OrdersSettings

    specs, config = render(tmp_path, True)
    by_name = {link.name: link.listen_port for link in config.links}
    for key, value in {**specs["orders-0"].env, **specs["fulfillment-0"].env}.items():
        monkeypatch.setenv(key, value)
    settings = OrdersSettings()  # type: ignore[call-arg]
    assert port(settings.database_url) == by_name["orders-0->postgres"]
    assert port(settings.datastore_urls[1]) == by_name["orders-0->datastore-1"]
    assert port(FulfillmentSettings().nats_url) == by_name["fulfillment-0->nats"]  # type: ignore[call-arg]


def test_yaml_turns_it_on_and_refuses_an_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "yardarm.yaml"
    path.write_text("chaos:\n  dependency_links: true\n")
    assert validate_file(path) == []
    assert load_topology(path, None).chaos.dependency_links is True

    path.write_text("base_port: 9000\nchaos:\n  dependency_link: true\n")
    assert validate_file(path) == ["chaos.dependency_link: unknown key (line 3)"]
    with pytest.raises(TopologyError, match="unknown key"):
        load_topology(path, None)
