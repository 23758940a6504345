"""The Ansible playbooks against real SSH hosts: the common role converges three fresh
Debian hosts, a second run changes nothing, and the venv it installs imports yardarm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.baremetal.conftest import ANSIBLE_DIR, AnsibleRun, SshHost, run_ansible

SITE = str(ANSIBLE_DIR / "site.yml")
VENV_PYTHON = "/opt/yardarm/venv/bin/python"
# Each task's time in a playbook's output (after the recap).
TASK_TIMES = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks"}
# Ad-hoc commands' results as one JSON document.
JSON_OUTPUT = {
    "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
    "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
}


def _shown(run: AnsibleRun) -> str:
    return f"exit {run.returncode} after {run.seconds} s:\n{run.output[-6000:]}"


@pytest.fixture(scope="module")
def first_converge(inventory: Path, wheelhouse: Path) -> AnsibleRun:
    """site.yml on the fresh hosts."""
    return run_ansible(
        "ansible-playbook", "-i", str(inventory), "-e", f"yardarm_wheelhouse={wheelhouse}", SITE,
        settings=TASK_TIMES,
    )  # fmt: skip


@pytest.fixture(scope="module")
def second_converge(first_converge: AnsibleRun, inventory: Path, wheelhouse: Path) -> AnsibleRun:
    """site.yml again, on the hosts the first run converged."""
    assert first_converge.returncode == 0, _shown(first_converge)
    return run_ansible(
        "ansible-playbook", "-i", str(inventory), "-e", f"yardarm_wheelhouse={wheelhouse}", SITE,
        settings=TASK_TIMES,
    )  # fmt: skip


def _adhoc(inventory: Path, pattern: str, *args: str) -> dict[str, dict[str, Any]]:
    """An ad-hoc `ansible PATTERN ARGS` over SSH; each host's result (from the json
    callback, so no human-readable output is parsed)."""
    run = run_ansible(
        "ansible", pattern, "-i", str(inventory), *args,
        timeout=120,
        settings=JSON_OUTPUT,
    )  # fmt: skip
    assert run.returncode == 0, _shown(run)
    [play] = json.loads(run.stdout)["plays"]
    [task] = play["tasks"]
    return dict(task["hosts"])


def _command(inventory: Path, pattern: str, command: str) -> dict[str, str]:
    """`command` on the hosts `pattern` names; each host's standard output."""
    results = _adhoc(inventory, pattern, "-m", "ansible.builtin.command", "-a", command)
    return {name: str(result["stdout"]) for name, result in results.items()}


def test_ping_reaches_every_host_over_ssh(hosts: list[SshHost], inventory: Path) -> None:
    results = _adhoc(inventory, "all", "-m", "ansible.builtin.ping")
    assert {name: result.get("ping") for name, result in results.items()} == {
        host.name: "pong" for host in hosts
    }


def test_hosts_reach_each_other_by_name(hosts: list[SshHost], inventory: Path) -> None:
    peers = " ".join(host.peer_address for host in hosts)
    probe = (
        "import socket, sys; [print(peer, socket.create_connection((peer, 22), timeout=5)"
        ".recv(8).decode()) for peer in sys.argv[1:]]"
    )
    outputs = _command(inventory, hosts[0].name, f'python3 -c "{probe}" {peers}')
    lines = outputs[hosts[0].name].splitlines()
    assert lines == [f"{host.peer_address} SSH-2.0-" for host in hosts]


@pytest.mark.timeout(900)
def test_site_converges_fresh_hosts(hosts: list[SshHost], first_converge: AnsibleRun) -> None:
    assert first_converge.returncode == 0, _shown(first_converge)
    recap = first_converge.recap()
    assert set(recap) == {host.name for host in hosts}, _shown(first_converge)
    for name, counts in recap.items():
        assert counts["failed"] == counts["unreachable"] == 0, name
        assert counts["changed"] > 0, f"{name} reported no change on a fresh host"
    print(f"first converge: {first_converge.seconds} s\n{first_converge.output[-3000:]}")


@pytest.mark.timeout(900)
def test_a_second_converge_changes_nothing(
    hosts: list[SshHost], second_converge: AnsibleRun
) -> None:
    assert second_converge.returncode == 0, _shown(second_converge)
    recap = second_converge.recap()
    assert set(recap) == {host.name for host in hosts}, _shown(second_converge)
    for name, counts in recap.items():
        assert counts == {**counts, "changed": 0, "failed": 0, "unreachable": 0}, (
            f"{name}: {counts}\n{_shown(second_converge)}"
        )
    print(f"second converge: {second_converge.seconds} s\n{second_converge.output[-3000:]}")


def test_the_venv_imports_yardarm(
    hosts: list[SshHost], inventory: Path, first_converge: AnsibleRun
) -> None:
    assert first_converge.returncode == 0, _shown(first_converge)
    check = "import yardarm, yardarm_orders; print(yardarm.__file__)"
    outputs = _command(inventory, "all", f'{VENV_PYTHON} -c "{check}"')
    for host in hosts:
        assert outputs.get(host.name, "").startswith("/opt/yardarm/venv/lib/python3.11/"), outputs


def test_the_service_account_and_its_directories(
    hosts: list[SshHost], inventory: Path, first_converge: AnsibleRun
) -> None:
    assert first_converge.returncode == 0, _shown(first_converge)
    account = _command(inventory, "all", "getent passwd yardarm")
    folders = _command(
        inventory,
        "all",
        "stat -c '%n %a %U %G' /etc/yardarm /var/lib/yardarm /var/log/yardarm /opt/yardarm"
        " /etc/supervisor/conf.d",
    )
    for host in hosts:
        assert account[host.name] == "yardarm:x:10001:10001::/var/lib/yardarm:/usr/sbin/nologin"
        assert folders[host.name].splitlines() == [
            "/etc/yardarm 750 root yardarm",
            "/var/lib/yardarm 750 yardarm yardarm",
            "/var/log/yardarm 750 yardarm yardarm",
            "/opt/yardarm 755 root root",
            "/etc/supervisor/conf.d 755 root root",
        ]


def test_site_passes_the_syntax_check() -> None:
    run = run_ansible("ansible-playbook", "--syntax-check", "-i", "localhost,", SITE, timeout=120)
    assert run.returncode == 0, _shown(run)


def test_the_playbooks_pass_ansible_lint_production() -> None:
    run = run_ansible(
        "ansible-lint", "--offline", "--profile", "production", str(ANSIBLE_DIR), timeout=300
    )
    assert run.returncode == 0, _shown(run)
    assert "Profile 'production' was required, and it passed." in run.output, _shown(run)
