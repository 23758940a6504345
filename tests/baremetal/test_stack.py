"""The whole stack on three real SSH hosts, converged by site.yml from the inventory the
model renders: the first run converges fresh hosts, a second changes nothing, every
instance runs under supervisord with the model's settings, and an order placed through
HAProxy confirms with its trace across the four services."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.baremetal.conftest import (
    ANSIBLE_DIR,
    PLACE,
    STACK_CONFIG,
    VAULT_PASSWORD,
    AnsibleRun,
    SshHost,
    StackInventory,
    host_list,
    run_ansible,
    ssh_command,
)
from tests.order_checks import SERVICES, confirmed_order, poll, trace_roots, whole_trace
from yardarm.baremetal.inventory import GROUP_VARS_FILE, HOST_VARS_DIR
from yardarm.baremetal.vault import VAULT_FILE, decrypt
from yardarm.model import Topology
from yardarm.tracing_view import Span, iter_spans

SITE = str(ANSIBLE_DIR / "site.yml")
UPGRADE = str(ANSIBLE_DIR / "upgrade.yml")
TRACKS = str(ANSIBLE_DIR / "tracks.yml")
# The load during the rolling upgrade: steady (open loop), bounded in time and count;
# it is stopped (SIGINT, which prints the summary) once the upgrade is over.
LOAD_RATE = 20
LOAD_BOUND = "15m"
LOAD_MAX_REQUESTS = 18_000
# Load before and after the upgrade, so the summary covers the whole of it.
LOAD_MARGIN_S = 3.0
VENV_PYTHON = "/opt/yardarm/venv/bin/python"
# The canary: one step of 50%, short, so the judge's minimum samples are lowered (as
# the local rollout tests lower them), scaled back up by YARDARM_TEST_SCALE.
SCALE = max(1, int(os.environ.get("YARDARM_TEST_SCALE", "1")))
CANARY_STEP_S = 20.0 * SCALE
CANARY_ENV = {
    "YARDARM_ROLLOUTS_MIN_REQUESTS": str(25 * SCALE),
    "YARDARM_ROLLOUTS_MIN_LATENCY_POINTS": str(6 * SCALE),
    "YARDARM_ROLLOUTS_MAX_INCONCLUSIVE": "6",
}
CANARY_BOUND_S = 900.0  # four playbook runs (start, handover, promote, stop) and the step
RUNNING = ("progressing", "paused")
# Each task's time in a playbook's output (after the recap).
TASK_TIMES = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks"}
# Ad-hoc commands' results as one JSON document.
JSON_OUTPUT = {
    "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
    "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
}


def _shown(run: AnsibleRun) -> str:
    return f"exit {run.returncode} after {run.seconds} s:\n{run.output[-8000:]}"


def _converge(inventory: StackInventory, wheelhouse: Path) -> AnsibleRun:
    return run_ansible(
        "ansible-playbook", "-i", str(inventory.path), "-e", f"yardarm_wheelhouse={wheelhouse}",
        SITE,
        settings={**inventory.settings(), **TASK_TIMES},
    )  # fmt: skip


@pytest.fixture(scope="module")
def first_converge(inventory: StackInventory, wheelhouse: Path) -> AnsibleRun:
    """site.yml on the fresh hosts."""
    return _converge(inventory, wheelhouse)


@pytest.fixture(scope="module")
def converged(first_converge: AnsibleRun) -> AnsibleRun:
    """The first converge, which must have succeeded."""
    assert first_converge.returncode == 0, _shown(first_converge)
    return first_converge


@pytest.fixture(scope="module")
def second_converge(
    converged: AnsibleRun, inventory: StackInventory, wheelhouse: Path
) -> AnsibleRun:
    """site.yml again, on the hosts the first run converged."""
    return _converge(inventory, wheelhouse)


def _adhoc(inventory: StackInventory, pattern: str, *args: str) -> dict[str, dict[str, Any]]:
    """An ad-hoc `ansible PATTERN ARGS` over SSH; each host's result (from the json
    callback, so no human-readable output is parsed)."""
    run = run_ansible(
        "ansible", pattern, "-i", str(inventory.path), *args,
        timeout=120,
        settings={**inventory.settings(), **JSON_OUTPUT},
    )  # fmt: skip
    assert run.returncode == 0, _shown(run)
    [play] = json.loads(run.stdout)["plays"]
    [task] = play["tasks"]
    return dict(task["hosts"])


def _command(inventory: StackInventory, pattern: str, command: str) -> dict[str, str]:
    """`command` on the hosts `pattern` names (as root); each host's standard output."""
    results = _adhoc(inventory, pattern, "--become", "-m", "ansible.builtin.command", "-a", command)
    return {name: str(result["stdout"]) for name, result in results.items()}


def _host_vars(inventory: StackInventory, host: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(
        (inventory.directory / HOST_VARS_DIR / f"{host}.yml").read_text()
    )
    return document


def test_ping_reaches_every_host_over_ssh(hosts: list[SshHost], inventory: StackInventory) -> None:
    results = _adhoc(inventory, "all", "-m", "ansible.builtin.ping")
    assert {name: result.get("ping") for name, result in results.items()} == {
        host.name: "pong" for host in hosts
    }


def test_hosts_reach_each_other_by_name(hosts: list[SshHost], inventory: StackInventory) -> None:
    peers = " ".join(host.peer_address for host in hosts)
    probe = (
        "import socket, sys; [print(peer, socket.create_connection((peer, 22), timeout=5)"
        ".recv(8).decode()) for peer in sys.argv[1:]]"
    )
    outputs = _command(inventory, hosts[0].name, f'python3 -c "{probe}" {peers}')
    lines = outputs[hosts[0].name].splitlines()
    assert lines == [f"{host.peer_address} SSH-2.0-" for host in hosts]


@pytest.mark.timeout(1200)
def test_site_converges_fresh_hosts(hosts: list[SshHost], first_converge: AnsibleRun) -> None:
    assert first_converge.returncode == 0, _shown(first_converge)
    recap = first_converge.recap()
    assert set(recap) == {host.name for host in hosts}, _shown(first_converge)
    for name, counts in recap.items():
        assert counts["failed"] == counts["unreachable"] == 0, name
        assert counts["changed"] > 0, f"{name} reported no change on a fresh host"
    print(f"first converge: {first_converge.seconds} s\n{first_converge.output[-4000:]}")


@pytest.mark.timeout(1200)
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
    print(f"second converge: {second_converge.seconds} s\n{second_converge.output[-4000:]}")


def test_the_venv_imports_yardarm(
    hosts: list[SshHost], inventory: StackInventory, converged: AnsibleRun
) -> None:
    check = "import yardarm, yardarm_orders; print(yardarm.__file__)"
    outputs = _command(inventory, "all", f'{VENV_PYTHON} -c "{check}"')
    for host in hosts:
        assert outputs.get(host.name, "").startswith("/opt/yardarm/venv/lib/python3.11/"), outputs


def test_the_service_account_its_directories_and_credentials(
    hosts: list[SshHost], inventory: StackInventory, converged: AnsibleRun
) -> None:
    account = _command(inventory, "all", "getent passwd yardarm")
    files = _command(
        inventory,
        "all",
        "stat -c '%n %a %U %G' /etc/yardarm /var/lib/yardarm /var/log/yardarm /opt/yardarm"
        " /etc/supervisor/conf.d /etc/yardarm/credentials /etc/yardarm/admin-token"
        " /etc/yardarm/credentials/orders.token /etc/yardarm/credentials/raft-peer.secret"
        " /etc/yardarm/credentials/access.json /etc/yardarm/credentials/pgpass",
    )
    for host in hosts:
        assert account[host.name] == "yardarm:x:10001:10001::/var/lib/yardarm:/usr/sbin/nologin"
        assert files[host.name].splitlines() == [
            "/etc/yardarm 750 root yardarm",
            "/var/lib/yardarm 750 yardarm yardarm",
            "/var/log/yardarm 750 yardarm yardarm",
            "/opt/yardarm 755 root root",
            "/etc/supervisor/conf.d 755 root root",
            "/etc/yardarm/credentials 750 root yardarm",
            "/etc/yardarm/admin-token 640 root yardarm",
            "/etc/yardarm/credentials/orders.token 640 root yardarm",
            "/etc/yardarm/credentials/raft-peer.secret 640 root yardarm",
            "/etc/yardarm/credentials/access.json 640 root yardarm",
            # libpq and asyncpg read a pgpass only when its owner alone may.
            "/etc/yardarm/credentials/pgpass 600 yardarm yardarm",
        ]


def test_the_secrets_stay_in_the_vault_and_reach_the_hosts(
    hosts: list[SshHost], inventory: StackInventory, converged: AnsibleRun
) -> None:
    vault = inventory.directory / VAULT_FILE
    secrets = decrypt(vault, inventory.vault_password_file.read_text().strip())["yardarm_secrets"]
    values = [*secrets["tokens"].values(), secrets["peer_secret"], secrets["postgres_password"]]
    for path in inventory.directory.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not [value for value in values if value in text], f"a secret in {path}"
    admin = _command(inventory, "all", "cat /etc/yardarm/admin-token")
    access = _command(inventory, "all", "cat /etc/yardarm/credentials/access.json")
    for host in hosts:
        assert admin[host.name] == secrets["tokens"]["admin"]
        principals = json.loads(access[host.name])["principals"]
        assert {name: p["token_sha256"] for name, p in principals.items()} == {
            name: hashlib.sha256(token.encode()).hexdigest()
            for name, token in secrets["tokens"].items()
        }
        assert secrets["tokens"]["admin"] not in access[host.name]


def test_every_part_runs_under_supervisord_with_the_models_settings(
    hosts: list[SshHost], inventory: StackInventory, converged: AnsibleRun
) -> None:
    status = _command(inventory, "all", "supervisorctl status")
    for host in hosts:
        planned = _host_vars(inventory, host.name)["yardarm_instances"]
        shared = {"nats", "postgres", "haproxy", "prometheus"}
        placed = PLACE | {part: "host1" for part in shared - set(PLACE)}
        expected = {inst["name"] for inst in planned} | {
            part for part in shared if placed[part] == host.name
        }
        running = {line.split()[0]: line.split()[1] for line in status[host.name].splitlines()}
        running.pop("sshd", None)
        assert running == dict.fromkeys(expected, "RUNNING"), (host.name, status[host.name])
        for inst in planned:
            document = _command(
                inventory, host.name, f"cat /etc/yardarm/instances/{inst['name']}.json"
            )[host.name]
            assert json.loads(document) == {"service": inst["service"], "env": inst["env"]}


def _pids(inventory: StackInventory) -> dict[str, str]:
    """Each supervisord program's pid, on every host (a restarted one has a new pid)."""
    status = _command(inventory, "all", "supervisorctl status")
    pids = {}
    for output in status.values():
        for line in output.splitlines():
            name, state, *rest = line.split()
            if state == "RUNNING":
                pids[name] = rest[1].rstrip(",")
    return pids


@pytest.mark.timeout(1200)
def test_a_converge_changes_only_what_the_model_changed(
    hosts: list[SshHost], inventory: StackInventory, wheelhouse: Path, converged: AnsibleRun
) -> None:
    # Two converges (about 2.5 min); the canary test below proves the same of the
    # rollout controller's runs on every scale.
    if SCALE < 2:
        pytest.skip("a scale-down and back converges twice: YARDARM_TEST_SCALE=2 runs it")
    before = _pids(inventory)
    config = yaml.safe_load(STACK_CONFIG)
    config["services"]["orders"] = {"replicas": 1}
    smaller = inventory.rendered(Topology.model_validate(config), "scaled")
    try:
        scaled = _converge(smaller, wheelhouse)
        assert scaled.returncode == 0, _shown(scaled)
        after = _pids(inventory)
    finally:
        restored = _converge(inventory, wheelhouse)
    assert "orders-1" not in after
    # The gateways route to orders by their settings: they restart (one at a time);
    # nothing else does.
    restarted = {name for name, pid in before.items() if after.get(name) != pid}
    assert restarted == {"orders-1", "gateway-0", "gateway-1"}, (before, after)
    assert restored.returncode == 0, _shown(restored)
    assert "orders-1" in _pids(inventory)


def _spans(hosts: list[SshHost], folder: Path) -> list[Span]:
    """Every span the hosts' instances wrote to their span files so far."""
    files = []
    for host in hosts:
        done = subprocess.run(
            ssh_command(host, "sudo sh -c 'cat /var/lib/yardarm/*/telemetry/*.jsonl'"),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        path = folder / f"{host.name}.jsonl"
        path.write_text(done.stdout)
        files.append(path)
    return list(iter_spans(files))


def test_an_order_through_haproxy_confirms_and_is_traced_across_services(
    hosts: list[SshHost], converged: AnsibleRun, tmp_path: Path
) -> None:
    entry = next(host for host in hosts if host.name == PLACE["haproxy"])
    with httpx.Client(base_url=f"http://127.0.0.1:{entry.http_port}", timeout=10.0) as http:
        order = confirmed_order(http, "baremetal", "bm-1")
    spans = whole_trace(order["trace_id"], lambda: _spans(hosts, tmp_path))
    assert {span.service for span in spans} == set(SERVICES)
    assert [service for service, _ in trace_roots(spans)] == ["gateway"], trace_roots(spans)


@pytest.mark.timeout(1500)
def test_a_rolling_upgrade_under_load_fails_no_request(
    hosts: list[SshHost], inventory: StackInventory, wheelhouse: Path, converged: AnsibleRun
) -> None:
    entry = next(host for host in hosts if host.name == PLACE["haproxy"])
    url = f"http://127.0.0.1:{entry.http_port}"
    with httpx.Client(base_url=url, timeout=10.0) as http:
        poll("the catalog through HAProxy", lambda: http.get("/api/stock").json())
    load = subprocess.Popen(
        ["uv", "run", "--frozen", "yardarm", "load", "--url", url, "--rate", str(LOAD_RATE),
         "--connections", "8", "--duration", LOAD_BOUND, "--max-requests",
         str(LOAD_MAX_REQUESTS), "--timeout", "10s", "--seed", "17", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(LOAD_MARGIN_S)
        assert load.poll() is None, load.communicate()
        upgrade = run_ansible(
            "ansible-playbook", "-i", str(inventory.path),
            "-e", f"yardarm_wheelhouse={wheelhouse}", UPGRADE,
            settings={**inventory.settings(), **TASK_TIMES}, timeout=1200,
        )  # fmt: skip
        time.sleep(LOAD_MARGIN_S)
        assert load.poll() is None, "the load ended before the upgrade did"
    finally:
        if load.poll() is None:
            load.send_signal(signal.SIGINT)
        out, err = load.communicate(timeout=120)
    assert upgrade.returncode == 0, _shown(upgrade)
    recap = upgrade.recap()
    upgraded = {"host1", "host2", "host3"}
    assert set(recap) == upgraded, _shown(upgrade)
    assert all(counts["changed"] > 0 for counts in recap.values()), recap
    summary = json.loads(out)
    failed = {
        key: summary[key]
        for key in ("client_errors", "server_errors", "transport_errors", "dropped")
    }
    print(
        f"rolling upgrade: {upgrade.seconds} s; load: {summary['requests']} requests in"
        f" {summary['duration_s']:.0f} s, {failed}, latency {summary['latency_ms']}"
    )
    assert summary["requests"] >= LOAD_RATE * upgrade.seconds / 2, summary
    assert failed == dict.fromkeys(failed, 0), (summary, err[-2000:])
    assert summary["ok"] == summary["requests"], summary


def test_prometheus_scrapes_every_instance(
    inventory: StackInventory, converged: AnsibleRun
) -> None:
    stack = yaml.safe_load((inventory.directory / GROUP_VARS_FILE).read_text())
    prometheus = stack["yardarm_prometheus"]
    url = f"http://{prometheus['host']}:{prometheus['port']}/api/v1/targets?state=active"
    wanted = {
        (job, group["labels"]["instance"])
        for job, groups in prometheus["targets"].items()
        if job != "rollouts"
        for group in groups
    }

    def all_up() -> dict[tuple[str, str], str] | None:
        results = _adhoc(
            inventory, PLACE["prometheus"], "-m", "ansible.builtin.uri", "-a", f"url={url}"
        )
        [result] = results.values()
        seen = {
            (t["labels"]["job"], t["labels"]["instance"]): t["health"]
            for t in result["json"]["data"]["activeTargets"]
        }
        up = {key: health for key, health in seen.items() if key in wanted}
        return up if up == dict.fromkeys(wanted, "up") else None

    assert poll("every instance scraped and up", all_up, bound_s=60.0)


def _start_controller(
    hosts: list[SshHost], inventory: StackInventory, folder: Path
) -> subprocess.Popen[str]:
    """`yardarm ansible controller` for the test stack, as an operator runs it."""
    hosts_file, config = folder / "hosts.yml", folder / "yardarm.yaml"
    hosts_file.write_text(yaml.safe_dump(host_list(hosts).model_dump(exclude_none=True)))
    config.write_text(STACK_CONFIG)
    place = [arg for part, host in PLACE.items() for arg in ("--place", f"{part}={host}")]
    return subprocess.Popen(
        ["uv", "run", "--frozen", "yardarm", "ansible", "controller", "--hosts", str(hosts_file),
         "-c", str(config), "-i", str(inventory.directory), *place,
         "--vault-password-file", str(inventory.vault_password_file)],
        env={**os.environ, **inventory.settings(), **CANARY_ENV},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _placed_tracks(inventory: StackInventory) -> set[tuple[str, str]]:
    """(host, instance) of every orders instance off the stable track the inventory places."""
    return {
        (path.stem, inst["name"])
        for path in (inventory.directory / HOST_VARS_DIR).glob("*.yml")
        for inst in yaml.safe_load(path.read_text())["yardarm_instances"]
        if inst["service"] == "orders" and inst["track"] != "stable"
    }


@pytest.mark.timeout(1800)
def test_a_canary_through_the_bare_metal_controller_completes(
    hosts: list[SshHost], inventory: StackInventory, converged: AnsibleRun, tmp_path: Path
) -> None:
    """orders 0.2.0 as a canary under load: the canary and its baseline start on the
    host that runs no stable orders, take half the traffic through the gateways'
    weights, are judged on Prometheus' numbers, and the promotion replaces the stable
    instances; no request fails."""
    topology = inventory.topology
    api = f"http://127.0.0.1:{topology.rollouts_port}"
    entry = next(host for host in hosts if host.name == PLACE["haproxy"])
    url = f"http://127.0.0.1:{entry.http_port}"
    secrets = decrypt(inventory.directory / VAULT_FILE, VAULT_PASSWORD)
    headers = {"Authorization": f"Bearer {secrets['yardarm_secrets']['tokens']['admin']}"}
    before = _pids(inventory)
    controller = _start_controller(hosts, inventory, tmp_path)
    load: subprocess.Popen[str] | None = None
    seen: set[tuple[str, str]] = set()
    try:
        with httpx.Client(base_url=api, headers=headers, timeout=30.0) as http:
            poll("the controller", lambda: _answer(http, "/readyz"), bound_s=120.0)
            load = subprocess.Popen(
                ["uv", "run", "--frozen", "yardarm", "load", "--url", url, "--rate",
                 str(LOAD_RATE), "--connections", "8", "--duration", LOAD_BOUND,
                 "--max-requests", str(LOAD_MAX_REQUESTS), "--timeout", "10s", "--seed", "23",
                 "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            time.sleep(LOAD_MARGIN_S)
            # As an operator starts it: `yardarm rollout` with the two variables the
            # controller printed.
            token_file = inventory.directory / ".controller" / "admin-token"
            started = subprocess.run(
                ["uv", "run", "--frozen", "yardarm", "rollout", "start", "orders",
                 "--version", "0.2.0", "--steps", "50,100",
                 "--step-duration", f"{CANARY_STEP_S:.0f}s", "--analysis-interval", "5s"],
                env={**os.environ, "YARDARM_ROLLOUTS_URL": api,
                     "YARDARM_ADMIN_TOKEN_FILE": str(token_file)},
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert started.returncode == 0, started.stdout + started.stderr
            deadline = time.monotonic() + CANARY_BOUND_S
            while (ended := http.get("/rollouts/orders").json())["phase"] in RUNNING:
                seen |= _placed_tracks(inventory)
                assert time.monotonic() < deadline, ended
                time.sleep(1.0)
            assert load.poll() is None, "the load ended before the rollout did"
            time.sleep(LOAD_MARGIN_S)
    finally:
        if load is not None and load.poll() is None:
            load.send_signal(signal.SIGINT)
        controller.send_signal(signal.SIGINT)
        try:
            log, _ = controller.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            controller.kill()
            log, _ = controller.communicate()
    events = [event["message"] for event in ended["events"]]
    assert ended["phase"] == "completed", (events, log[-6000:])
    # The canary and its baseline ran side by side on the host without stable orders;
    # for the handover the canary ran at stable's size, its second instance on host1.
    assert seen == {
        ("host3", "orders-canary-0"),
        ("host3", "orders-baseline-0"),
        ("host1", "orders-canary-1"),
    }, seen
    assert _placed_tracks(inventory) == set()
    orders = [
        inst
        for host in hosts
        for inst in _host_vars(inventory, host.name)["yardarm_instances"]
        if inst["service"] == "orders"
    ]
    assert {(inst["name"], inst["version"]) for inst in orders} == {
        ("orders-0", "0.2.0"),
        ("orders-1", "0.2.0"),
    }
    # Only the promoted instances restarted: no gateway, replica or consumer did.
    after = _pids(inventory)
    restarted = {name for name, pid in before.items() if after.get(name) != pid}
    assert restarted == {"orders-0", "orders-1"}, (before, after)
    programs = _command(inventory, "all", "supervisorctl status")
    running = {line.split()[0] for text in programs.values() for line in text.splitlines()}
    assert not {name for name in running if "canary" in name or "baseline" in name}, programs
    assert load is not None
    out, err = load.communicate(timeout=120)
    summary = json.loads(out)
    failed = {key: summary[key] for key in ("server_errors", "transport_errors", "dropped")}
    took = ended["events"][-1]["at"] - ended["events"][0]["at"]
    print(
        f"canary: {took:.0f} s from start to completed, {len(events)} events; load:"
        f" {summary['requests']} requests, {failed}, latency {summary['latency_ms']}"
    )
    assert failed == dict.fromkeys(failed, 0), (summary, err[-2000:])


def _answer(http: httpx.Client, path: str) -> bool:
    try:
        return http.get(path).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("playbook", [SITE, UPGRADE, TRACKS])
def test_the_playbooks_pass_the_syntax_check(playbook: str) -> None:
    run = run_ansible(
        "ansible-playbook", "--syntax-check", "-i", "localhost,", playbook, timeout=120
    )
    assert run.returncode == 0, _shown(run)


def test_tracks_refuses_a_run_without_its_service(tmp_path: Path) -> None:
    """Run without `-e yardarm_tracks_service` (or with the datastore), the playbook
    stops before it touches a host."""
    for extra in ([], ["-e", "yardarm_tracks_service=datastore"]):
        run = run_ansible(
            "ansible-playbook", "-i", "localhost,", *extra, TRACKS, timeout=120,
        )  # fmt: skip
        assert run.returncode == 2, _shown(run)
        assert "give -e yardarm_tracks_service=orders, fulfillment or gateway" in run.output


def test_the_playbooks_pass_ansible_lint_production() -> None:
    run = run_ansible(
        "ansible-lint", "--offline", "--profile", "production", str(ANSIBLE_DIR), timeout=300
    )
    assert run.returncode == 0, _shown(run)
    assert "Profile 'production' was required, and it passed." in run.output, _shown(run)
