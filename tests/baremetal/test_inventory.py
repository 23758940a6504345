"""The bare-metal inventory: the host list refused with every problem placed, instances
spread over the hosts allowed to run them, and every address an instance dials one that
some process in the inventory listens on.

The inventory is read back the way Ansible reads it (`ansible-inventory --list`, group
and host variables merged), and the expectations are computed from the deployment model
itself (its instances, its port functions), not from the bare-metal target, so a wrong
address or port in the target cannot make both sides agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from yardarm.baremetal.commands import app
from yardarm.baremetal.hosts import HostList, HostsError, Role, load_hosts, parse_hosts
from yardarm.baremetal.inventory import render_inventory
from yardarm.baremetal.target import SHARED_PARTS, BareMetalTarget, PlacementError, place
from yardarm.containers.target import HOME_MOUNT, PGPASS_FILE, ContainerTarget
from yardarm.local.plan import port_plan
from yardarm.model import (
    SERVICE_NAMES,
    Deployment,
    Topology,
    deployment,
    desired_from,
    instance_settings,
    scaled,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "ansible" / "hosts.example.yml"
ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"
runner = CliRunner()


def _hosts(count: int, roles: dict[int, list[str]] | None = None) -> HostList:
    listed: list[dict[str, Any]] = [
        {"name": f"node{i + 1}", "address": f"10.0.0.{11 + i}", "user": "yardarm"}
        for i in range(count)
    ]
    for index, allowed in (roles or {}).items():
        listed[index]["roles"] = allowed
    return HostList.model_validate({"hosts": listed})


def _topology(**services: dict[str, Any]) -> Topology:
    return Topology.model_validate({"services": services})


# --- the host list -----------------------------------------------------------------------


def test_the_example_host_list_names_three_hosts() -> None:
    hosts = load_hosts(EXAMPLE).hosts
    assert [h.address for h in hosts] == ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
    assert {h.user for h in hosts} == {"yardarm"}
    assert {h.ssh_port for h in hosts} == {22}
    assert all(h.roles is None for h in hosts)


def test_a_host_may_be_given_every_part_of_the_stack_as_a_role() -> None:
    assert set(get_args(Role)) == {*SERVICE_NAMES, *SHARED_PARTS}


def test_the_rollout_controller_is_no_role_a_host_may_have() -> None:
    """It runs where Ansible does (`yardarm ansible controller`): a host list that still
    gives a host the role is refused with the roles there are."""
    text = "hosts:\n  - name: node1\n    address: 10.0.0.11\n    roles: [orders, controller]\n"
    hosts, problems = parse_hosts(text)
    assert hosts is None
    roles = ["datastore", "orders", "fulfillment", "gateway", "nats", "postgres", "haproxy"]
    listed = ", ".join(repr(role) for role in roles) + " or 'prometheus'"
    assert problems == [f"hosts.0.roles.1: must be one of {listed} (got 'controller') (line 4)"]


def test_a_bad_host_list_names_every_problem_with_its_line() -> None:
    text = (
        "hosts:\n"  # 1
        "  - name: node1\n"  # 2
        "    address: 10.0.0.256\n"  # 3
        "  - name: node2\n"  # 4
        "    address: 10.0.0.12\n"  # 5
        "    ssh_port: 0\n"  # 6
        "    user: Root!\n"  # 7
        "    roles: [web]\n"  # 8
        "    colour: blue\n"  # 9
        "  - name: node1\n"  # 10
        "    address: 10.0.0.12\n"  # 11
        "  - address: 10.0.0.14\n"  # 12
    )
    hosts, problems = parse_hosts(text)
    assert hosts is None
    joined = "\n".join(problems)
    expected = [
        ("hosts.0.address: ", "10.0.0.256", "(line 3)"),
        ("hosts.1.ssh_port: ", ">= 1", "(line 6)"),
        ("hosts.1.user: ", "Root!", "(line 7)"),
        ("hosts.1.roles.0: ", "datastore", "(line 8)"),
        ("hosts.1.colour: ", "unknown key", "(line 9)"),
        ("hosts.2.name: ", "'node1' is already hosts.0's", "(line 10)"),
        ("hosts.2.address: ", "'10.0.0.12' is already hosts.1's", "(line 11)"),
        ("hosts.3.name: ", "missing", "(line 12)"),
    ]
    for where, why, line in expected:
        assert any(p.startswith(where) and why in p and p.endswith(line) for p in problems), (
            where,
            joined,
        )
    assert len(problems) == len(expected), joined


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("hosts: []\n", "hosts: "),
        ("", "(document): must be a mapping"),
        ("- node1\n", "(document): must be a mapping"),
        ("hosts: [\n", "YAML syntax error at line"),
        ("hosts:\n  - {name: a, address: b, roles: []}\n", "hosts.0.roles: "),
    ],
)
def test_a_host_list_without_hosts_is_refused(text: str, why: str) -> None:
    hosts, problems = parse_hosts(text)
    assert hosts is None
    assert len(problems) == 1 and problems[0].startswith(why), problems


@pytest.mark.parametrize("key", ["address", "ssh_address", "control_address"])
@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("10.0.0.11", True),
        ("fd00::11", True),
        ("db-1.example.com", True),
        ("node3", True),
        ("10.0.0.256", False),
        ("-db.example.com", False),
        ("db..example.com", False),
        ("db_1.example.com", False),
        ("10.0.0.11:22", False),
        ("", False),
    ],
)
def test_addresses_are_ip_addresses_or_host_names(key: str, address: str, valid: bool) -> None:
    listed = {"name": "n", "address": "10.0.0.1", key: address}
    hosts, problems = parse_hosts(json.dumps({"hosts": [listed]}))
    assert (hosts is not None) == valid, problems
    if not valid:
        assert len(problems) == 1, problems
        assert problems[0].startswith(f"hosts.0.{key}: must be an IP address or a host name")


def test_the_operators_machine_dials_the_control_address() -> None:
    """`control_address` is where the machine running the rollout controller reaches a
    host (a tunnel, a port forward); the stack itself keeps dialing `address`."""
    hosts = HostList.model_validate(
        {
            "hosts": [
                {"name": "n1", "address": "10.0.0.11", "control_address": "FD00:0::7"},
                {"name": "n2", "address": "fd00::12"},
                {"name": "n3", "address": "10.0.0.13", "control_address": "192.0.2.50"},
            ]
        }
    )
    first, second, third = hosts.hosts
    assert first.control_address == "fd00::7"  # normalised, as `address` is
    assert first.control_netloc(8080) == "[fd00::7]:8080"
    assert first.netloc(8080) == "10.0.0.11:8080"
    assert second.control_netloc(8080) == "[fd00::12]:8080"  # none: its address
    assert third.control_netloc(9) == "192.0.2.50:9"
    for path, text in render_inventory(Topology(), hosts).items():
        assert "fd00::7" not in text and "192.0.2.50" not in text, path


def test_loading_a_bad_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text("hosts:\n  - {name: n, address: x, ssh_port: 70000}\n")
    with pytest.raises(HostsError, match=r"hosts\.yml: hosts\.0\.ssh_port: must be <= 65535"):
        load_hosts(path)
    with pytest.raises(HostsError, match="cannot read"):
        load_hosts(tmp_path / "missing.yml")


# --- placement ---------------------------------------------------------------------------


def _expected_round_robin(planned: Deployment, hosts: HostList) -> dict[str, str]:
    """Each service's primary track in the deployment's order, host i mod n of those that
    may run the service; an instance of another track at host (primaries + ordinal) mod n."""
    expected: dict[str, str] = {}
    for service in ("datastore", "orders", "fulfillment", "gateway"):
        allowed = [h.name for h in hosts.hosts if h.roles is None or service in h.roles]
        running = [i for i in planned.instances if i.service == service]
        primaries = [i for i in running if i.track == planned.topology.services.spec(service).track]
        for index, inst in enumerate(primaries):
            expected[inst.name] = allowed[index % len(allowed)]
        for inst in running:
            if inst not in primaries:
                expected[inst.name] = allowed[(len(primaries) + inst.ordinal) % len(allowed)]
    return expected


def _expected_track_ports(planned: Deployment, recorded: dict[str, int]) -> dict[str, int]:
    """Each instance off its primary track in the deployment's order: the port `recorded`
    for it, else the lowest of the topology's track range no other instance holds."""
    ports = dict(recorded)
    for inst in planned.instances:
        if inst.track == planned.topology.services.spec(inst.service).track:
            continue
        if inst.name not in ports:
            free = [p for p in planned.topology.track_ports if p not in ports.values()]
            ports[inst.name] = free[0]
    return ports


def test_instances_go_round_robin_over_the_hosts() -> None:
    topology = _topology(
        orders={
            "replicas": 3,
            "tracks": {
                "canary": {"replicas": 2, "version": "0.2.0"},
                "baseline": {"replicas": 1, "version": "0.1.0"},
            },
        },
        gateway={"replicas": 2},
    )
    planned = deployment(topology)
    hosts = _hosts(4)
    placed = {name: host.name for name, host in place(planned, hosts).instances.items()}
    assert placed == _expected_round_robin(planned, hosts)
    # Spelled out once, so the helper above cannot be wrong the same way as the code:
    # the other tracks start after the primary track's hosts, side by side by ordinal.
    assert [placed[f"orders-{i}"] for i in range(3)] == ["node1", "node2", "node3"]
    assert [placed[f"orders-canary-{i}"] for i in range(2)] == ["node4", "node1"]
    assert placed["orders-baseline-0"] == "node4"
    assert [placed[f"gateway-{i}"] for i in range(2)] == ["node1", "node2"]


def _running(files: dict[str, str]) -> dict[str, tuple[str, int]]:
    """Each instance the rendered host_vars list: its host and its port."""
    found: dict[str, tuple[str, int]] = {}
    for path, text in files.items():
        if path.startswith("host_vars/"):
            host = path.removeprefix("host_vars/").removesuffix(".yml")
            for inst in yaml.safe_load(text)["yardarm_instances"]:
                assert int(_env(inst, "PORT")) == inst["port"], inst["name"]
                found[inst["name"]] = (host, inst["port"])
    return found


def test_a_canary_and_its_baseline_stay_put_while_either_scales() -> None:
    """A rollout scales one track with the other running: an instance that runs keeps its
    host and its port (the ports recorded at the last rendering), or the gateways would
    route to where it no longer listens."""
    topology = _topology(orders={"replicas": 2})
    hosts = _hosts(4)
    ports = topology.track_ports
    canary = scaled(topology, desired_from(topology), "orders", 1, "canary", "0.2.0")
    both = scaled(topology, canary, "orders", 1, "baseline", "0.1.0")
    first = render_inventory(topology, hosts, desired=both)
    before = _running(first)
    # After the primary track's two hosts; ports from the bottom of the track range.
    assert before["orders-canary-0"] == ("node3", ports[0])
    assert before["orders-baseline-0"] == ("node3", ports[1])
    recorded = json.loads(first["track-ports.json"])
    assert recorded == {"orders-canary-0": ports[0], "orders-baseline-0": ports[1]}

    grown = scaled(topology, both, "orders", 2, "canary")
    second = render_inventory(topology, hosts, desired=grown, recorded_ports=recorded)
    after = _running(second)
    assert {name: after[name] for name in before} == before
    assert after["orders-canary-1"] == ("node4", ports[2])  # the lowest port left
    recorded = json.loads(second["track-ports.json"])
    assert recorded == {
        "orders-canary-0": ports[0],
        "orders-baseline-0": ports[1],
        "orders-canary-1": ports[2],
    }

    # The baseline scales too, then the canary goes: the rest stays where it was.
    wider = scaled(topology, grown, "orders", 2, "baseline")
    files = render_inventory(topology, hosts, desired=wider, recorded_ports=recorded)
    third = _running(files)
    assert {name: third[name] for name in after} == after
    assert third["orders-baseline-1"] == ("node4", ports[3])
    recorded = json.loads(files["track-ports.json"])
    gone = scaled(topology, wider, "orders", 0, "canary")
    fourth = _running(render_inventory(topology, hosts, desired=gone, recorded_ports=recorded))
    assert sorted(fourth) == sorted(n for n in third if not n.startswith("orders-canary-"))
    assert {name: third[name] for name in fourth} == fourth


def test_datastore_replicas_get_distinct_hosts_when_there_are_enough() -> None:
    planned = deployment(_topology(datastore={"replicas": 5}, gateway={"replicas": 2}))
    placement = place(planned, _hosts(5))
    hosts = [placement.instances[inst.name].name for inst in planned.of("datastore")]
    assert len(set(hosts)) == 5
    assert placement.notes == ()
    crowded = place(planned, _hosts(3))
    hosts = [crowded.instances[inst.name].name for inst in planned.of("datastore")]
    assert hosts == ["node1", "node2", "node3", "node1", "node2"]
    assert any("5 datastore replicas on 3 host(s)" in note for note in crowded.notes)


def test_a_single_gateway_is_noted() -> None:
    """HAProxy in front of one gateway cannot keep serving while its host restarts."""
    alone = place(deployment(_topology()), _hosts(3))
    assert [note for note in alone.notes if "one gateway behind HAProxy" in note]
    paired = place(deployment(_topology(gateway={"replicas": 2})), _hosts(3))
    assert paired.notes == ()


def test_roles_say_which_hosts_run_what() -> None:
    edge = ["gateway", "haproxy", "nats", "postgres", "prometheus"]
    work = ["datastore", "orders", "fulfillment"]
    hosts = _hosts(4, {0: edge, 1: work, 2: work, 3: work})
    planned = deployment(_topology(orders={"replicas": 4}))
    placement = place(planned, hosts)
    for inst in planned.instances:
        host = placement.instances[inst.name]
        assert host.roles is not None and inst.service in host.roles, (inst.name, host.name)
    assert {n: h.name for n, h in placement.instances.items()} == _expected_round_robin(
        planned, hosts
    )
    assert {part: host.name for part, host in placement.shared.items()} == dict.fromkeys(
        ["nats", "postgres", "haproxy", "prometheus"], "node1"
    )


def test_a_shared_part_goes_where_it_is_told() -> None:
    hosts = _hosts(3, {0: ["gateway", "datastore", "orders", "fulfillment", "haproxy"]})
    planned = deployment(Topology())
    placement = place(planned, hosts, {"postgres": "node3"})
    assert placement.shared["postgres"].name == "node3"
    # node1's roles leave NATS out: the first host that may run it.
    assert placement.shared["nats"].name == "node2"
    assert placement.shared["haproxy"].name == "node1"
    target = BareMetalTarget(planned, placement)
    orders = planned.named("orders-0")
    assert "@10.0.0.13:" in target.postgres_dsn(orders, "orders")
    assert target.nats_url(orders).startswith("nats://10.0.0.12:")


@pytest.mark.parametrize(
    ("hosts", "shared", "why"),
    [
        (_hosts(2, {0: ["orders"], 1: ["orders"]}), {}, "no host may run datastore"),
        (_hosts(1), {}, "2 gateway replicas need as many hosts"),
        (_hosts(2), {"nats": "node9"}, "nats: no host 'node9'"),
        (_hosts(3, {1: ["orders"]}), {"postgres": "node2"}, "may not run it"),
        (_hosts(2), {"redis": "node1"}, "no shared part 'redis'"),
        # The rollout controller runs off the hosts: no --place for it.
        (
            _hosts(2),
            {"controller": "node1"},
            r"no shared part 'controller' \(parts: nats, postgres, haproxy, prometheus\)",
        ),
    ],
)
def test_a_deployment_the_hosts_cannot_run_is_refused(
    hosts: HostList, shared: dict[str, str], why: str
) -> None:
    planned = deployment(_topology(gateway={"replicas": 2}))
    with pytest.raises(PlacementError, match=why):
        place(planned, hosts, shared)


def test_tls_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    topology = Topology.model_validate({"tls": {"enabled": True}})
    planned = deployment(topology)
    with pytest.raises(ValueError, match=r"tls\.enabled is not supported by the bare-metal target"):
        BareMetalTarget(planned, place(planned, _hosts(3)))
    config = tmp_path / "yardarm.yaml"
    config.write_text("tls: {enabled: true}\n")
    result = runner.invoke(
        app, ["inventory", "--hosts", str(EXAMPLE), "-c", str(config), "-o", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "tls.enabled is not supported" in " ".join(result.output.split())


# --- the inventory as Ansible reads it ---------------------------------------------------


@dataclass(frozen=True)
class View:
    """The inventory as `ansible-inventory --list` reports it."""

    hostvars: dict[str, dict[str, Any]]
    groups: dict[str, list[str]]

    def address(self, host: str) -> str:
        return str(self.hostvars[host]["ansible_host"])

    def shared(self, group: str) -> str:
        (host,) = self.groups[group]
        return self.address(host)


def _write(files: dict[str, str], directory: Path) -> Path:
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def _ansible_view(directory: Path) -> View:
    env = {
        **os.environ,
        "ANSIBLE_HOME": str(directory / ".ansible"),
        "ANSIBLE_LOCAL_TEMP": str(directory / ".ansible" / "tmp"),
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
        "PYTHONWARNINGS": "ignore",
    }
    done = subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(directory / "inventory.yml"), "--list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=directory,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    groups = {
        name: group.get("hosts", [])
        for name, group in listed.items()
        if name not in ("_meta", "all", "ungrouped")
    }
    return View(listed["_meta"]["hostvars"], groups)


CASES = {
    "defaults": (Topology(), 3),
    "tracks": (
        _topology(
            orders={
                "replicas": 3,
                "tracks": {
                    "canary": {"replicas": 2, "version": "0.3.0-errors"},
                    "baseline": {"replicas": 1, "version": "0.1.0"},
                },
            },
            fulfillment={"tracks": {"canary": {"replicas": 1, "version": "0.3.0-slow"}}},
        ),
        3,
    ),
    "wide": (
        Topology.model_validate(
            {
                "base_port": 20000,
                "environment": "staging",
                "prometheus": {"enabled": False},
                "services": {
                    "datastore": {"replicas": 5},
                    "gateway": {"replicas": 2},
                    "orders": {"replicas": 4},
                },
            }
        ),
        5,
    ),
    "crowded": (_topology(datastore={"replicas": 5}, gateway={"replicas": 2}), 2),
}


@pytest.fixture(params=sorted(CASES), scope="module")
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Topology, View]:
    topology, count = CASES[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    return topology, _ansible_view(_write(render_inventory(topology, _hosts(count)), directory))


def _instances(view: View) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every listed instance by name, with the host it is listed on."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for host, hostvars in view.hostvars.items():
        for inst in hostvars["yardarm_instances"]:
            assert inst["name"] not in found, f"{inst['name']} listed twice"
            found[inst["name"]] = (host, inst)
    return found


def _env(inst: dict[str, Any], key: str) -> str:
    return str(inst["env"][f"YARDARM_{inst['service'].upper()}_{key}"])


def _listeners(view: View) -> dict[tuple[str, int], str]:
    """What listens at each (address, port): every instance's listeners as its settings
    say, and the shared parts at the ports the stack-wide variables give them."""
    listening: dict[tuple[str, int], str] = {}

    def add(address: str, port: int, what: str) -> None:
        assert (address, port) not in listening, f"{what} and {listening[(address, port)]}"
        listening[(address, port)] = what

    for name, (host, inst) in _instances(view).items():
        address = view.address(host)
        assert _env(inst, "HOST") == address, name
        assert int(_env(inst, "PORT")) == inst["port"], name
        add(address, inst["port"], name)
        if inst["service"] == "gateway":
            add(address, int(_env(inst, "ADMIN_PORT")), f"{name} admin")
        if inst["service"] == "datastore":
            assert _env(inst, "RAFT_HOST") == address, name
            add(address, int(_env(inst, "RAFT_PORT")), f"{name} raft")
    stack = next(iter(view.hostvars.values()))
    add(view.shared("nats"), stack["yardarm_nats"]["port"], "nats")
    add(view.shared("nats"), stack["yardarm_nats"]["monitor_port"], "nats monitor")
    add(view.shared("postgres"), stack["yardarm_postgres"]["port"], "postgres")
    add(view.shared("haproxy"), stack["yardarm_haproxy"]["port"], "haproxy")
    if stack["yardarm_prometheus"]["enabled"]:
        add(view.shared("prometheus"), stack["yardarm_prometheus"]["port"], "prometheus")
    return listening


def _dialed(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "//" in address else f"//{address}")
    assert parts.hostname is not None and parts.port is not None, address
    return parts.hostname, parts.port


def test_every_instance_of_the_deployment_is_listed_once(case: tuple[Topology, View]) -> None:
    topology, view = case
    listed = _instances(view)
    planned = deployment(topology)
    assert sorted(listed) == sorted(inst.name for inst in planned.instances)
    for inst in planned.instances:
        host, entry = listed[inst.name]
        assert (entry["service"], entry["track"], entry["version"]) == (
            inst.service,
            inst.track,
            inst.version,
        )
        assert (_env(entry, "INSTANCE"), _env(entry, "TRACK"), _env(entry, "VERSION")) == (
            inst.name,
            inst.track,
            inst.version,
        )
        assert _env(entry, "ENVIRONMENT") == topology.environment
        assert host in view.groups[inst.service]
    # A service's group is exactly the hosts running one of its instances.
    for service in ("datastore", "orders", "fulfillment", "gateway"):
        running = {host for host, entry in listed.values() if entry["service"] == service}
        assert set(view.groups[service]) == running


def test_each_instance_has_every_setting_the_model_gives_it(case: tuple[Topology, View]) -> None:
    topology, view = case
    planned = deployment(topology)
    other = ContainerTarget(planned)
    listed = _instances(view)
    for inst in planned.instances:
        env = listed[inst.name][1]["env"]
        assert all(isinstance(value, str) for value in env.values()), inst.name
        # Behind HAProxy a gateway also drains for as long as HAProxy needs to notice.
        extra = {"YARDARM_GATEWAY_DRAIN_DELAY_S"} if inst.service == "gateway" else set()
        assert set(env) == set(instance_settings(planned, inst, other)) | extra, inst.name


def test_no_two_listeners_on_a_host_share_a_port(case: tuple[Topology, View]) -> None:
    _listeners(case[1])  # asserts as it collects


def test_ports_follow_the_local_targets_port_plan(case: tuple[Topology, View]) -> None:
    topology, view = case
    plan = port_plan(topology)
    tracks = _expected_track_ports(deployment(topology), {})
    for name, (_host, inst) in _instances(view).items():
        if inst["service"] == "gateway":
            ordinal = int(name.rpartition("-")[2])
            admin = "gateway-admin" if ordinal == 0 else f"gateway-admin-{ordinal}"
            assert inst["port"] == plan["gateway-0"]
            assert int(_env(inst, "ADMIN_PORT")) == plan[admin]
            continue
        assert inst["port"] == tracks.get(name, plan[name]), name
        if inst["service"] == "datastore":
            assert int(_env(inst, "RAFT_PORT")) == plan[f"{name}-raft"]
    stack = next(iter(view.hostvars.values()))
    assert stack["yardarm_nats"]["port"] == plan["nats"]
    assert stack["yardarm_postgres"]["port"] == plan["postgres"]
    # The rollout controller runs where Ansible does, on no host of the inventory.
    assert "yardarm_controller" not in stack and "controller" not in view.groups


def test_a_fresh_stacks_track_ports_are_the_bottom_of_the_track_range() -> None:
    """Spelled out once, so `_expected_track_ports` cannot be wrong the same way as the
    code: in the deployment's order, from the first port of the range."""
    topology, _view = CASES["tracks"]
    files = render_inventory(topology, _hosts(3))
    first = topology.track_ports[0]
    expected = {
        "orders-canary-0": first,
        "orders-canary-1": first + 1,
        "orders-baseline-0": first + 2,
        "fulfillment-canary-0": first + 3,
    }
    assert json.loads(files["track-ports.json"]) == expected
    running = _running(files)
    assert {name: running[name][1] for name in expected} == expected


def test_every_address_an_instance_dials_is_one_that_listens(
    case: tuple[Topology, View],
) -> None:
    view = case[1]
    listening = _listeners(view)
    listed = _instances(view)

    def owner(address: str) -> str:
        where = _dialed(address)
        assert where in listening, f"{address}: nothing listens there"
        return listening[where]

    datastores = sorted(n for n, (_h, i) in listed.items() if i["service"] == "datastore")
    for name, (_host, inst) in listed.items():
        service = inst["service"]
        if service in ("orders", "gateway"):
            urls = json.loads(_env(inst, "DATASTORE_URLS"))
            assert sorted(owner(url) for url in urls) == datastores, name
        if service in ("orders", "fulfillment"):
            assert owner(_env(inst, "NATS_URL")) == "nats", name
            dsn = _env(inst, "DATABASE_URL")
            assert owner(dsn) == "postgres", name
            assert urlsplit(dsn).path == f"/{service}", name
        if service == "datastore":
            peers = json.loads(_env(inst, "PEERS"))
            others = [n for n in datastores if n != name]
            assert sorted(peers) == sorted(str(int(n.rpartition("-")[2]) + 1) for n in others)
            for replica_id, peer in peers.items():
                expected = f"datastore-{int(replica_id) - 1}"
                assert owner(peer["http"]) == expected, name
                assert owner(peer["raft"]) == f"{expected} raft", name
        if service == "gateway":
            upstreams = json.loads(_env(inst, "UPSTREAMS"))
            for upstream in ("orders", "datastore"):
                listed_endpoints = upstreams[upstream]
                if isinstance(listed_endpoints, dict):
                    listed_endpoints = listed_endpoints["endpoints"]
                owners = {owner(e["url"]): e["track"] for e in listed_endpoints}
                tracks = {
                    n: i["track"] for n, (_h, i) in listed.items() if i["service"] == upstream
                }
                assert owners == tracks, name


def test_haproxy_and_prometheus_reach_what_listens(case: tuple[Topology, View]) -> None:
    view = case[1]
    listening = _listeners(view)
    stack = next(iter(view.hostvars.values()))
    gateways = sorted(n for n, (_h, i) in _instances(view).items() if i["service"] == "gateway")
    backends = stack["yardarm_haproxy"]["backends"]
    assert [listening[_dialed(b["address"])] for b in backends] == gateways
    assert [listening[_dialed(b["check"])] for b in backends] == [f"{g} admin" for g in gateways]
    prometheus = stack["yardarm_prometheus"]
    if not prometheus["enabled"]:
        assert "prometheus" not in view.groups
        return
    scraped = {
        group["labels"]["instance"]: listening[_dialed(group["targets"][0])]
        for groups in prometheus["targets"].values()
        for group in groups
    }
    for name, what in scraped.items():
        # A gateway replica's metrics are on its admin port.
        assert what in (name, f"{name} admin"), (name, what)
    assert set(scraped) == set(_instances(view))
    # The rollout controller runs off the hosts, where Prometheus does not reach.
    assert prometheus["targets"]["rollouts"] == []


def test_files_are_where_the_roles_put_them(case: tuple[Topology, View]) -> None:
    topology, view = case
    stack = next(iter(view.hostvars.values()))
    credentials = stack["yardarm_credentials"]
    state_dirs = set()
    for name, (_host, inst) in _instances(view).items():
        state_dirs.add(_env(inst, "STATE_DIR"))
        assert _env(inst, "STATE_DIR") == f"/var/lib/yardarm/{name}"
        flags = _env(inst, "FLAGS_FILE")
        assert flags.startswith("/etc/yardarm/flags/")
        assert flags.rpartition("/")[2] in stack["yardarm_flags"], name
        if inst["service"] == "datastore":
            assert _env(inst, "DATA_DIR").startswith(f"/var/lib/yardarm/{name}/")
            assert _env(inst, "ACCESS_FILE") == credentials["access"]
            assert _env(inst, "PEER_TOKEN_FILE") == credentials["peer_secret"]
        if inst["service"] in ("orders", "gateway"):
            principal = inst["service"]
            assert _env(inst, "DATASTORE_TOKEN_FILE") == credentials["tokens"][principal]
        if inst["service"] == "gateway":
            assert _env(inst, "ADMIN_TOKEN_FILE") == credentials["tokens"]["admin"]
            assert _env(inst, "REUSE_PORT") == "false"
        if inst["service"] in ("orders", "fulfillment"):
            passfile = urlsplit(_env(inst, "DATABASE_URL")).query
            assert passfile == f"passfile={credentials['pgpass']}"
    # The stack home's layout, as the container targets mount it, under /etc/yardarm.
    mounted = ContainerTarget(deployment(Topology()))

    def moved(path: str) -> str:
        return "/etc/yardarm/" + path.removeprefix(f"{HOME_MOUNT}/")

    assert credentials["tokens"] == {
        p: moved(mounted.credential_file(p)) for p in ("admin", "orders", "gateway")
    }
    assert credentials["access"] == moved(mounted.access_file())
    assert credentials["peer_secret"] == moved(mounted.peer_secret_file())
    assert credentials["pgpass"] == f"/etc/yardarm/{PGPASS_FILE}"
    assert stack["yardarm_databases"] == ["orders", "fulfillment"]
    assert stack["yardarm_environment"] == topology.environment


def test_a_pinning_versions_flag_file_is_rendered() -> None:
    topology = _topology(
        orders={"tracks": {"canary": {"replicas": 1, "version": "0.3.0-errors"}}},
        datastore={"versions": {"0.2.0": {"flags": {"fault.latency-ms": "small"}}}},
    )
    files = render_inventory(topology, _hosts(3))
    stack = yaml.safe_load(files["group_vars/all/main.yml"])
    canary = next(
        inst
        for path, text in files.items()
        if path.startswith("host_vars/")
        for inst in yaml.safe_load(text)["yardarm_instances"]
        if inst["name"] == "orders-canary-0"
    )
    name = canary["env"]["YARDARM_ORDERS_FLAGS_FILE"]
    assert name == "/etc/yardarm/flags/orders-0.3.0-errors.json"
    pinned = json.loads(stack["yardarm_flags"]["orders-0.3.0-errors.json"])
    assert pinned["flags"]["fault.error-rate"]["defaultVariant"] == "high"
    stable = json.loads(stack["yardarm_flags"]["flags.json"])
    assert stable["flags"] == topology.flags
    # Every declared version that pins flags has its file, ready for a rollout.
    for service in ("orders", "fulfillment", "datastore"):
        for version, release in topology.services.spec(service).versions.items():
            if release.flags:
                document = json.loads(stack["yardarm_flags"][f"{service}-{version}.json"])
                for key, variant in release.flags.items():
                    assert document["flags"][key]["defaultVariant"] == variant


def test_a_gateway_drains_longer_than_haproxy_takes_to_notice() -> None:
    """HAProxy takes a gateway out after `fall` failed checks, one per interval; the
    gateway must keep serving until then, or requests in that window are refused."""
    topology = _topology(gateway={"replicas": 2})
    files = render_inventory(topology, _hosts(3))
    check = yaml.safe_load(files["group_vars/all/main.yml"])["yardarm_haproxy"]["check"]
    noticed_s = check["fall"] * check["interval_ms"] / 1000
    gateways = [
        inst
        for path, text in files.items()
        if path.startswith("host_vars/")
        for inst in yaml.safe_load(text)["yardarm_instances"]
        if inst["service"] == "gateway"
    ]
    assert len(gateways) == 2
    for gateway in gateways:
        assert float(gateway["env"]["YARDARM_GATEWAY_DRAIN_DELAY_S"]) > noticed_s
    # A version's own drain delay wins.
    topology = _topology(
        gateway={"replicas": 2, "versions": {"0.1.0": {"env": {"DRAIN_DELAY_S": "9"}}}}
    )
    files = render_inventory(topology, _hosts(3))
    delays = {
        inst["env"]["YARDARM_GATEWAY_DRAIN_DELAY_S"]
        for path, text in files.items()
        if path.startswith("host_vars/")
        for inst in yaml.safe_load(text)["yardarm_instances"]
        if inst["service"] == "gateway"
    }
    assert delays == {"9"}


def test_a_value_ansible_would_template_is_refused() -> None:
    release = {"0.2.0": {"env": {"GREETING": "{{ lookup }}"}}}
    running = _topology(
        orders={"versions": release, "tracks": {"canary": {"replicas": 1, "version": "0.2.0"}}}
    )
    with pytest.raises(ValueError, match="YARDARM_ORDERS_GREETING: Ansible would read"):
        render_inventory(running, _hosts(3))
    # Declared but not running: no instance carries the value.
    render_inventory(_topology(orders={"versions": release}), _hosts(3))


def test_addresses_of_ipv6_hosts_are_bracketed() -> None:
    hosts = HostList.model_validate(
        {"hosts": [{"name": f"n{i}", "address": f"fd00::{i}"} for i in range(1, 4)]}
    )
    planned = deployment(Topology())
    target = BareMetalTarget(planned, place(planned, hosts))
    orders, datastore = planned.named("orders-0"), planned.named("datastore-1")
    assert target.url(orders, datastore) == f"http://[fd00::2]:{Topology().datastore_port(1)}"
    assert target.bind(datastore) == ("fd00::2", Topology().datastore_port(1))
    assert target.nats_url(orders) == f"nats://[fd00::1]:{Topology().nats_port}"


def test_the_instances_a_host_runs_follow_the_placement() -> None:
    topology = _topology(orders={"replicas": 4})
    hosts = _hosts(3)
    files = render_inventory(topology, hosts)
    expected = _expected_round_robin(deployment(topology), hosts)
    for host in hosts.hosts:
        listed = yaml.safe_load(files[f"host_vars/{host.name}.yml"])["yardarm_instances"]
        assert [i["name"] for i in listed] == [n for n, h in expected.items() if h == host.name]


def test_every_file_says_what_generates_it() -> None:
    files = render_inventory(Topology(), _hosts(3))
    # The track ports are JSON, which has no comments: the one file without a header.
    assert [path for path in files if not path.endswith(".yml")] == ["track-ports.json"]
    assert json.loads(files.pop("track-ports.json")) == {}
    for path, text in files.items():
        assert text.startswith("# Generated from the deployment model"), path
        assert "`yardarm ansible inventory`" in text.splitlines()[0], path


# --- the command -------------------------------------------------------------------------


def _invoke(*args: str) -> Any:
    return runner.invoke(app, ["inventory", "--hosts", str(EXAMPLE), *args])


def test_check_finds_a_stale_file_and_writing_fixes_it(tmp_path: Path) -> None:
    out = tmp_path / "inventory"
    assert _invoke("--check", "-o", str(out)).exit_code == 1
    wrote = _invoke("-o", str(out))
    assert wrote.exit_code == 0, wrote.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.yml")) == [
        "group_vars/all/main.yml",
        "host_vars/node1.yml",
        "host_vars/node2.yml",
        "host_vars/node3.yml",
        "inventory.yml",
    ]
    assert _invoke("--check", "-o", str(out)).exit_code == 0
    stale = out / "host_vars" / "node2.yml"
    stale.write_text(stale.read_text().replace("10.0.0.12", "10.0.0.99"))
    result = _invoke("--check", "-o", str(out))
    assert result.exit_code == 1
    assert "stale:" in result.output and "node2.yml" in result.output
    assert "differs from the model" in " ".join(result.output.split())
    assert _invoke("-o", str(out)).exit_code == 0
    assert _invoke("--check", "-o", str(out)).exit_code == 0


def test_a_host_no_longer_listed_leaves_no_host_vars(tmp_path: Path) -> None:
    out = tmp_path / "inventory"
    assert _invoke("-o", str(out)).exit_code == 0
    two = tmp_path / "hosts.yml"
    two.write_text(yaml.safe_dump({"hosts": yaml.safe_load(EXAMPLE.read_text())["hosts"][:2]}))
    args = ["inventory", "--hosts", str(two), "-o", str(out)]
    result = runner.invoke(app, [*args, "--check"])
    assert result.exit_code == 1 and "node3.yml" in result.output
    assert runner.invoke(app, args).exit_code == 0
    assert not (out / "host_vars" / "node3.yml").exists()
    assert runner.invoke(app, [*args, "--check"]).exit_code == 0


def test_the_default_directory_is_the_environments_under_ansible_inventories(
    tmp_path: Path,
) -> None:
    config = tmp_path / "yardarm.yaml"
    config.write_text("environment: inventory-test-nowhere\n")
    result = _invoke("--check", "-c", str(config))
    assert result.exit_code == 1
    expected = ROOT / "ansible" / "inventories" / "inventory-test-nowhere" / "inventory.yml"
    assert str(expected) in "".join(result.output.split())


def test_a_bad_host_list_fails_the_command_with_its_problems(tmp_path: Path) -> None:
    bad = tmp_path / "hosts.yml"
    bad.write_text("hosts:\n  - {name: a, address: 10.0.0.1}\n  - {name: a, address: x..y}\n")
    result = runner.invoke(app, ["inventory", "--hosts", str(bad), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "hosts.1.address: must be an IP address" in text
    assert "hosts.1.name: name 'a' is already hosts.0's" in text
    assert not (tmp_path / "o").exists()


def test_placement_notes_and_choices_reach_the_command(tmp_path: Path) -> None:
    config = tmp_path / "yardarm.yaml"
    config.write_text("services:\n  datastore:\n    replicas: 5\n")
    out = tmp_path / "o"
    result = _invoke("-c", str(config), "-o", str(out), "--place", "postgres=node2")
    assert result.exit_code == 0, result.output
    assert "5 datastore replicas on 3 host(s)" in " ".join(result.output.split())
    inventory = yaml.safe_load((out / "inventory.yml").read_text())
    assert inventory["all"]["children"]["postgres"]["hosts"] == {"node2": None}
    assert _invoke("-o", str(out), "--place", "nats").exit_code == 1
