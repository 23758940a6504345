"""`yardarm ansible inventory` as an operator runs it: the secrets issued once into the
vault and kept after, a note when they are not issued yet, and the rendered files read
back: Ansible connects to `ssh_address` while the stack uses `address`, each process
manager's health gate asks the instance's own listener, and the stack-wide variables
name every datastore replica and scrape every instance. A rollout's state kept beside the
inventory (`desired.json`, `track-ports.json`) is rendered with it, or refused when it
cannot be read.

Expectations come from the model (its port functions) and the host list, not from the
bare-metal target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from yardarm.baremetal.vault import decrypt
from yardarm.cli import app
from yardarm.model import (
    SERVICE_NAMES,
    Topology,
    deployment,
    deployment_of,
    desired_from,
    fingerprint,
    scaled,
)

runner = CliRunner()
PASSWORD = "correct horse battery staple"
VAULT = Path("group_vars/all/vault.yml")
HOSTS: dict[str, list[dict[str, Any]]] = {
    "hosts": [
        # Behind a port forward: Ansible reaches it elsewhere than the stack does.
        {"name": "edge", "address": "10.0.0.11", "ssh_address": "203.0.113.7", "ssh_port": 2222},
        {"name": "node2", "address": "10.0.0.12", "user": "yardarm"},
        {"name": "node3", "address": "10.0.0.13", "user": "yardarm"},
    ]
}
CONFIG: dict[str, Any] = {
    "services": {
        "datastore": {"replicas": 3},
        "gateway": {"replicas": 2},
        "orders": {"replicas": 2, "tracks": {"canary": {"replicas": 1, "version": "0.2.0"}}},
    }
}


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The host list, the stack's yardarm.yaml and the vault password's file."""
    hosts = tmp_path / "hosts.yml"
    hosts.write_text(yaml.safe_dump(HOSTS))
    config = tmp_path / "yardarm.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    password = tmp_path / "vault-password"
    password.write_text(PASSWORD + "\n")
    return hosts, config, password


def _inventory(hosts: Path, config: Path, out: Path, *args: str) -> Result:
    return runner.invoke(
        app,
        ["ansible", "inventory", "--hosts", str(hosts), "-c", str(config), "-o", str(out), *args],
        env={"ANSIBLE_VAULT_PASSWORD_FILE": None},
    )


def _text(result: Result) -> str:
    return " ".join(result.output.split())


def _squeezed(result: Result) -> str:
    """The output without any blank (a long path may be folded anywhere)."""
    return "".join(result.output.split())


def _read(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- the vault ----------------------------------------------------------------------------


def test_the_vault_is_written_once_and_kept(tmp_path: Path) -> None:
    hosts, config, password = _files(tmp_path)
    out = tmp_path / "inventory"
    first = _inventory(hosts, config, out, "--vault-password-file", str(password))
    assert first.exit_code == 0, first.output
    vault = out / VAULT
    assert f"wrote{vault}(encrypted)" in _squeezed(first)
    assert "no group_vars/all/vault.yml yet" not in _text(first)
    issued = vault.read_bytes()
    secrets = decrypt(vault, PASSWORD)
    second = _inventory(hosts, config, out, "--vault-password-file", str(password))
    assert second.exit_code == 0, second.output
    assert f"kept{vault}(encrypted)" in _squeezed(second)
    assert vault.read_bytes() == issued
    assert decrypt(vault, PASSWORD) == secrets
    # Without the option, an existing vault is left alone and no note is due.
    third = _inventory(hosts, config, out)
    assert third.exit_code == 0, third.output
    assert "vault.yml" not in third.output and "note:" not in third.output
    assert vault.read_bytes() == issued


def test_the_password_file_may_come_from_ansibles_own_variable(tmp_path: Path) -> None:
    hosts, config, password = _files(tmp_path)
    out = tmp_path / "inventory"
    result = runner.invoke(
        app,
        ["ansible", "inventory", "--hosts", str(hosts), "-c", str(config), "-o", str(out)],
        env={"ANSIBLE_VAULT_PASSWORD_FILE": str(password)},
    )
    assert result.exit_code == 0, result.output
    assert set(decrypt(out / VAULT, PASSWORD)) == {"yardarm_secrets"}


def test_without_a_password_a_note_says_how_to_issue_the_secrets(tmp_path: Path) -> None:
    hosts, config, _password = _files(tmp_path)
    out = tmp_path / "inventory"
    result = _inventory(hosts, config, out)
    assert result.exit_code == 0, result.output
    assert (
        "note: no group_vars/all/vault.yml yet: run again with --vault-password-file FILE"
        " to issue the stack's secrets"
    ) in _text(result)
    assert not (out / VAULT).exists()


def test_a_wrong_password_fails_the_command_and_keeps_the_vault(tmp_path: Path) -> None:
    hosts, config, password = _files(tmp_path)
    out = tmp_path / "inventory"
    assert _inventory(hosts, config, out, "--vault-password-file", str(password)).exit_code == 0
    issued = (out / VAULT).read_bytes()
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    result = _inventory(hosts, config, out, "--vault-password-file", str(wrong))
    assert result.exit_code == 1
    assert "does not open with this vault password" in _text(result)
    assert (out / VAULT).read_bytes() == issued
    empty = tmp_path / "empty-password"
    empty.write_text("")
    result = _inventory(hosts, config, out, "--vault-password-file", str(empty))
    assert result.exit_code == 1
    assert "is empty" in _text(result)


# --- the rendered files -------------------------------------------------------------------


def _rendered(tmp_path: Path) -> Path:
    hosts, config, _password = _files(tmp_path)
    out = tmp_path / "inventory"
    result = _inventory(hosts, config, out)
    assert result.exit_code == 0, result.output
    return out


def _instances(out: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every instance in host_vars by name, with the name of the host that runs it."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for host in HOSTS["hosts"]:
        for inst in _read(out / "host_vars" / f"{host['name']}.yml")["yardarm_instances"]:
            assert inst["name"] not in found, f"{inst['name']} listed twice"
            found[inst["name"]] = (str(host["name"]), inst)
    return found


def test_ansible_connects_to_the_ssh_address_and_the_stack_uses_the_address(
    tmp_path: Path,
) -> None:
    out = _rendered(tmp_path)
    listed = _read(out / "inventory.yml")["all"]["hosts"]
    assert listed == {
        "edge": {"ansible_host": "203.0.113.7", "ansible_port": 2222, "ansible_user": "root"},
        "node2": {"ansible_host": "10.0.0.12", "ansible_port": 22, "ansible_user": "yardarm"},
        "node3": {"ansible_host": "10.0.0.13", "ansible_port": 22, "ansible_user": "yardarm"},
    }
    address = {str(h["name"]): str(h["address"]) for h in HOSTS["hosts"]}
    on_edge = 0
    for name, (host, inst) in _instances(out).items():
        prefix = f"YARDARM_{inst['service'].upper()}_"
        env = inst["env"]
        assert env[prefix + "HOST"] == address[host], name
        if inst["service"] == "datastore":
            assert env[prefix + "RAFT_HOST"] == address[host], name
        on_edge += host == "edge"
        assert "203.0.113.7" not in yaml.safe_dump(inst), name
    assert on_edge > 0
    assert "203.0.113.7" not in (out / "group_vars" / "all" / "main.yml").read_text()


def test_each_health_gate_asks_the_instances_own_listener(tmp_path: Path) -> None:
    out = _rendered(tmp_path)
    topology = Topology.model_validate(CONFIG)
    planned = deployment(topology)
    address = {str(h["name"]): str(h["address"]) for h in HOSTS["hosts"]}
    found = _instances(out)
    assert set(found) == {inst.name for inst in planned.instances}
    for inst in planned.instances:
        host, listed = found[inst.name]
        env = listed["env"]
        prefix = f"YARDARM_{inst.service.upper()}_"
        assert int(env[prefix + "PORT"]) == listed["port"], inst.name
        if inst.primary:
            assert listed["port"] == topology.service_port(inst.service, inst.ordinal)
        if inst.service == "gateway":
            port = topology.gateway_admin_port(inst.ordinal)
            assert int(env[prefix + "ADMIN_PORT"]) == port
        else:
            port = listed["port"]
        assert listed["ready_url"] == f"http://{address[host]}:{port}/readyz", inst.name


def test_the_stack_wide_variables_name_every_replica_and_scrape_every_instance(
    tmp_path: Path,
) -> None:
    out = _rendered(tmp_path)
    topology = Topology.model_validate(CONFIG)
    planned = deployment(topology)
    stack = _read(out / "group_vars" / "all" / "main.yml")
    found = _instances(out)

    def netloc(name: str, port: int) -> str:
        host = next(h for h in HOSTS["hosts"] if h["name"] == found[name][0])
        return f"{host['address']}:{port}"

    replicas = planned.of("datastore")
    assert len(replicas) == 3
    assert stack["yardarm_datastore"]["urls"] == [
        f"http://{netloc(inst.name, topology.datastore_port(inst.ordinal))}" for inst in replicas
    ]
    prometheus = stack["yardarm_prometheus"]
    targets = prometheus["targets"]
    jobs = {job["job_name"]: job for job in prometheus["config"]["scrape_configs"]}
    assert set(jobs) == set(targets) and set(jobs) >= set(SERVICE_NAMES)
    for name, job in jobs.items():
        assert job["static_configs"] == targets[name], name
        assert "file_sd_configs" not in job, name
    for service in SERVICE_NAMES:
        scraped = {group["labels"]["instance"]: group["targets"] for group in targets[service]}
        expected = {}
        for inst in planned.of(service):
            # A gateway's metrics are on its admin port (the public one is shared).
            port = (
                topology.gateway_admin_port(inst.ordinal)
                if service == "gateway"
                else found[inst.name][1]["port"]
            )
            expected[inst.name] = [netloc(inst.name, port)]
        assert scraped == expected, service


# --- the state a rollout keeps ------------------------------------------------------------

DESIRED = "desired.json"
TRACK_PORTS = "track-ports.json"


def test_a_rollouts_desired_state_beside_the_inventory_is_rendered(tmp_path: Path) -> None:
    """The rollout controller keeps the desired state and the track ports beside the
    inventory; rendering again runs its tracks, each instance at the port it was given."""
    hosts, config, _password = _files(tmp_path)
    topology = Topology.model_validate(CONFIG)
    out = tmp_path / "inventory"
    out.mkdir()
    desired = scaled(topology, desired_from(topology), "orders", 2, "canary")
    (out / DESIRED).write_text(desired.model_dump_json())
    ports = topology.track_ports
    (out / TRACK_PORTS).write_text(json.dumps({"orders-canary-0": ports[5]}))
    result = _inventory(hosts, config, out)
    assert result.exit_code == 0, result.output
    found = _instances(out)
    assert set(found) == {inst.name for inst in deployment_of(topology, desired).instances}
    # After the two primaries' hosts (edge, node2), by ordinal; the port kept, else the
    # lowest of the track range left.
    assert found["orders-canary-0"][0] == "node3"
    assert found["orders-canary-0"][1]["port"] == ports[5]
    assert found["orders-canary-1"][0] == "edge"
    assert found["orders-canary-1"][1]["port"] == ports[0]
    for name in ("orders-canary-0", "orders-canary-1"):
        assert found[name][1]["env"]["YARDARM_ORDERS_PORT"] == str(found[name][1]["port"])
    assert json.loads((out / TRACK_PORTS).read_text()) == {
        "orders-canary-0": ports[5],
        "orders-canary-1": ports[0],
    }
    assert json.loads((out / DESIRED).read_text()) == json.loads(desired.model_dump_json())
    scraped = _read(out / "group_vars" / "all" / "main.yml")["yardarm_prometheus"]["targets"]
    assert {group["labels"]["instance"] for group in scraped["orders"]} >= {
        "orders-canary-0",
        "orders-canary-1",
    }
    # Rendered again from the same state, nothing changes.
    assert _inventory(hosts, config, out, "--check").exit_code == 0


def test_a_desired_state_from_another_model_is_ignored(tmp_path: Path) -> None:
    """A desired state left from before yardarm.yaml changed describes other services:
    the model's own instances run instead, as `yardarm up` does with one."""
    hosts, config, _password = _files(tmp_path)
    topology = Topology.model_validate(CONFIG)
    out = tmp_path / "inventory"
    out.mkdir()
    desired = scaled(topology, desired_from(topology), "orders", 3, "canary")
    other = desired.model_copy(update={"source": fingerprint(Topology())})
    assert other.source != desired.source
    (out / DESIRED).write_text(other.model_dump_json())
    result = _inventory(hosts, config, out)
    assert result.exit_code == 0, result.output
    assert set(_instances(out)) == {inst.name for inst in deployment(topology).instances}
    # The same state from this model is rendered: only its source made the difference.
    (out / DESIRED).write_text(desired.model_dump_json())
    result = _inventory(hosts, config, out)
    assert result.exit_code == 0, result.output
    assert {"orders-canary-1", "orders-canary-2"} <= set(_instances(out))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        (DESIRED, b'{"source": "abc", "services": {'),
        (DESIRED, b'{"source": 1, "services": []}'),
        (DESIRED, b"\xff\xfe not text"),
        (TRACK_PORTS, b"{not json"),
        (TRACK_PORTS, b"[4000, 4001]"),
        (TRACK_PORTS, b'{"orders-canary-0": "4000"}'),
        (TRACK_PORTS, b"\xff\xfe not text"),
    ],
)
def test_a_kept_state_that_cannot_be_read_fails_the_command(
    tmp_path: Path, name: str, content: bytes
) -> None:
    """Rendering without it would stop a rollout's instances or move their ports: the
    command stops, names the file's folder, and writes nothing."""
    out = _rendered(tmp_path)
    hosts, config = tmp_path / "hosts.yml", tmp_path / "yardarm.yaml"
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    (out / name).write_bytes(content)
    for args in ((), ("--check",)):
        result = _inventory(hosts, config, out, *args)
        assert result.exit_code == 1, result.output
        text = _text(result)
        assert "cannot read the state kept in" in text and "fix or remove the file" in text
        assert str(out) in _squeezed(result)
    after = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert after == {**before, out / name: content}


def _controller(hosts: Path, config: Path, out: Path, password: Path) -> Result:
    return runner.invoke(
        app,
        ["ansible", "controller", "--hosts", str(hosts), "-c", str(config), "-i", str(out),
         "--vault-password-file", str(password)],
        env={"ANSIBLE_VAULT_PASSWORD_FILE": None},
    )  # fmt: skip


def test_the_controller_refuses_an_inventory_that_differs_from_the_model(
    tmp_path: Path,
) -> None:
    """It would change the hosts by an inventory the operator never converged."""
    hosts, config, password = _files(tmp_path)
    out = tmp_path / "inventory"
    assert _inventory(hosts, config, out, "--vault-password-file", str(password)).exit_code == 0
    changed = {**CONFIG, "services": {**CONFIG["services"], "orders": {"replicas": 3}}}
    config.write_text(yaml.safe_dump(changed))
    result = _controller(hosts, config, out, password)
    assert result.exit_code == 1, result.output
    assert "differs from the model" in _text(result) and "host_vars/" in _squeezed(result)
    assert "run `yardarm ansible inventory` with the same options" in _text(result)
    assert not (out / ".controller").exists()  # nothing issued, nothing served


def test_the_controller_needs_the_vault_and_its_password(tmp_path: Path) -> None:
    hosts, config, password = _files(tmp_path)
    out = tmp_path / "inventory"
    assert _inventory(hosts, config, out).exit_code == 0  # no vault issued
    missing = _controller(hosts, config, out, password)
    assert missing.exit_code == 1 and "vault.yml" in _squeezed(missing), missing.output
    assert _inventory(hosts, config, out, "--vault-password-file", str(password)).exit_code == 0
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    refused = _controller(hosts, config, out, wrong)
    assert refused.exit_code == 1, refused.output
    assert "does not open with this vault password" in _text(refused)
    assert not (out / ".controller").exists()
