"""The baremetal stack: under Pulumi's mocks, what the program declares from the stack's
settings and how it refuses bad ones; the digest that decides when the playbook runs
again; and the playbook runner and its provider run for real with ansible-playbook, on
a small playbook against this machine (`ansible_connection=local`: no SSH)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import MockResourceArgs
from yardarm_infra.baremetal import playbook_digest
from yardarm_infra.baremetal_config import plan_inventory, read_baremetal_config
from yardarm_infra.config import ConfigError
from yardarm_infra.playbook import PlaybookError, parse_recap, run_playbook
from yardarm_infra.playbook_resource import PlaybookProvider
from yardarm_infra.program import ROOT, main

from tests.infra.conftest import Recorder as BaseRecorder
from yardarm.baremetal.hosts import HostList
from yardarm.baremetal.inventory import render_inventory
from yardarm.baremetal.vault import VAULT_FILE, decrypt, ensure_vault
from yardarm.model import Topology

PLAYBOOK = "pulumi-python:dynamic/yardarm:Playbook"
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # how Pulumi marks a secret value
PASSWORD = "vault-pass-7f3a"
STACK = "dev"
HOSTS: list[dict[str, Any]] = [
    {"name": "node1", "address": "10.0.0.11", "user": "yardarm"},
    {"name": "node2", "address": "10.0.0.12", "user": "yardarm"},
    {"name": "node3", "address": "10.0.0.13", "user": "yardarm", "ssh_port": 2222},
]


class Recorder(BaseRecorder):
    """Every resource the program registers, with its inputs."""

    def playbook(self) -> MockResourceArgs:
        (found,) = [r for r in self.resources if r.typ == PLAYBOOK]
        return found


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    """A folder of wheels (stand-ins: the program only reads their names and sums)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / "yardarm-0.1.0-py3-none-any.whl").write_bytes(b"yardarm")
    (folder / "pydantic-2.0-py3-none-any.whl").write_bytes(b"pydantic")
    return folder


@pytest.fixture
def work_root(tmp_path: Path) -> Path:
    return tmp_path / "work"


def settings_of(wheels: Path, /, **overrides: Any) -> dict[str, Any]:
    """A complete baremetal stack's settings (no postgresPassword: not this target's)."""
    settings: dict[str, Any] = {
        "target": "baremetal",
        "hosts": HOSTS,
        "vaultPassword": PASSWORD,
        "wheelhouse": str(wheels),
    }
    settings |= overrides
    return {key: value for key, value in settings.items() if value is not None}


def run(
    monkeypatch: pytest.MonkeyPatch,
    work_root: Path,
    settings: dict[str, Any],
    recorder: Recorder | None = None,
) -> Recorder:
    """The program run under mocks with stack config `yardarm:<key>` = value (objects as
    JSON, as Pulumi passes what `pulumi config set --path` stored)."""
    config = {
        f"yardarm:{key}": value if isinstance(value, str) else json.dumps(value)
        for key, value in settings.items()
    }
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(config))
    recorder = recorder or Recorder()
    pulumi.runtime.set_mocks(recorder, stack=STACK, preview=False)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> None:
        main(ROOT, work_root)

    program()
    return recorder


def unsecret(value: Any) -> Any:
    assert isinstance(value, dict) and SECRET_SIG in value, f"not marked secret: {value!r}"
    return value["value"]


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, work_root: Path, wheelhouse: Path) -> Iterator[Recorder]:
    yield run(monkeypatch, work_root, settings_of(wheelhouse))


def test_the_stack_is_one_playbook_run_and_no_kubernetes(
    stack: Recorder, work_root: Path, wheelhouse: Path
) -> None:
    assert not [r for r in stack.resources if r.typ.startswith("kubernetes:")]
    assert {r.typ for r in stack.resources} == {"yardarm:baremetal:Stack", PLAYBOOK}
    inputs = stack.playbook().inputs
    inventory = work_root / STACK / "inventory"
    assert inputs["playbook"] == str(ROOT / "ansible/site.yml")
    assert inputs["inventory"] == str(inventory)
    assert inputs["wheelhouse"] == str(wheelhouse)
    assert inputs["log"] == str(work_root / STACK / "playbook.log")
    assert inputs.get("privateKeyFile") is None
    assert inputs["digest"] == playbook_digest(inventory, ROOT / "ansible", wheelhouse)
    assert len(inputs["digest"]) == 64


def test_the_vault_password_is_a_secret_input_and_nowhere_else(
    stack: Recorder, work_root: Path
) -> None:
    inputs = stack.playbook().inputs
    assert unsecret(inputs["vaultPassword"]) == PASSWORD
    others = {key: value for key, value in inputs.items() if key != "vaultPassword"}
    assert PASSWORD not in json.dumps(others, default=str)
    for path in (work_root / STACK).rglob("*"):
        assert not path.is_file() or PASSWORD.encode() not in path.read_bytes(), path


def test_the_inventory_folder_holds_the_rendering_and_a_vault(
    stack: Recorder, work_root: Path
) -> None:
    inventory = work_root / STACK / "inventory"
    expected = render_inventory(Topology(), HostList.model_validate({"hosts": HOSTS}))
    written = {
        path.relative_to(inventory).as_posix(): path.read_text()
        for path in inventory.rglob("*")
        if path.is_file()
    }
    assert written.pop(VAULT_FILE).startswith("$ANSIBLE_VAULT;")
    assert written == expected
    secrets = decrypt(inventory / VAULT_FILE, PASSWORD)["yardarm_secrets"]
    assert secrets["tokens"] and secrets["peer_secret"] and secrets["postgres_password"]
    hosts = yaml.safe_load(expected["inventory.yml"])["all"]["hosts"]
    assert hosts["node3"] == {"ansible_host": "10.0.0.13", "ansible_port": 2222,
                              "ansible_user": "yardarm"}  # fmt: skip


def test_settings_reach_the_playbook_and_the_placement(
    monkeypatch: pytest.MonkeyPatch, work_root: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key\n")
    recorder = run(
        monkeypatch,
        work_root,
        settings_of(wheelhouse, privateKeyFile=str(key), place={"haproxy": "node2"}),
    )
    assert recorder.playbook().inputs["privateKeyFile"] == str(key)
    group_vars = yaml.safe_load(
        (work_root / STACK / "inventory/group_vars/all/main.yml").read_text()
    )
    assert group_vars["yardarm_haproxy"]["host"] == "10.0.0.12"


def test_the_public_url_is_haproxys_on_its_host(
    monkeypatch: pytest.MonkeyPatch, work_root: Path, wheelhouse: Path
) -> None:
    def url(**overrides: Any) -> str:
        config = {
            f"yardarm:{key}": value if isinstance(value, str) else json.dumps(value)
            for key, value in settings_of(wheelhouse, **overrides).items()
        }
        monkeypatch.setenv("PULUMI_CONFIG", json.dumps(config))
        settings = read_baremetal_config(ROOT, STACK, pulumi.Config("yardarm"), work_root)
        return plan_inventory(settings).gateway_url

    assert url() == "http://10.0.0.11:80"
    assert url(place={"haproxy": "node3"}) == "http://10.0.0.13:80"
    assert url(hosts=[{"name": "v6", "address": "fd00::1"}]) == "http://[fd00::1]:80"


def gateways(tmp_path: Path, replicas: int) -> str:
    config = tmp_path / "yardarm.yaml"
    config.write_text(f"services:\n  gateway:\n    replicas: {replicas}\n")
    return str(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"hosts": None},
            r"yardarm:hosts is required.* pulumi config set --path 'yardarm:hosts\[0\]\.name' "
            r"node1 && pulumi config set --path 'yardarm:hosts\[0\]\.address'",
        ),
        (
            {"hosts": [{"name": "node1", "address": "10.0.0.300"}]},
            r"^yardarm:hosts\[0\]\.address: must be an IP address or a host name "
            r"\(got '10\.0\.0\.300'\): pulumi config set --path 'yardarm:hosts\[0\]\.address' ",
        ),
        (
            {"hosts": [{"name": "node1", "address": "10.0.0.11", "port": 22}]},
            r"^yardarm:hosts\[0\]\.port: unknown key: pulumi config rm --path "
            r"'yardarm:hosts\[0\]\.port'$",
        ),
        (
            {"hosts": [{"name": "node1", "address": "10.0.0.11", "roles": ["gateway", "web"]}]},
            r"^yardarm:hosts\[0\]\.roles\[1\]: must be one of .*\(got 'web'\): "
            r"pulumi config set --path 'yardarm:hosts\[0\]\.roles\[1\]' gateway$",
        ),
        (
            {"hosts": [{"address": "10.0.0.11"}]},
            r"^yardarm:hosts\[0\]\.name: missing: this key is required: "
            r"pulumi config set --path 'yardarm:hosts\[0\]\.name' node1$",
        ),
        (
            {"hosts": [HOSTS[0], {**HOSTS[1], "name": "node1"}]},
            r"^yardarm:hosts\[1\]\.name: name 'node1' is already hosts\.0's; each host once: "
            r"pulumi config set --path 'yardarm:hosts\[1\]\.name' <another name>$",
        ),
        (
            {"hosts": "node1"},
            r"^yardarm:hosts: input should be a valid list .*'yardarm:hosts\[0\]\.name' node1",
        ),
        (
            {"vaultPassword": None},
            r"^yardarm:vaultPassword is required for the baremetal target.*: "
            r"pulumi config set --secret yardarm:vaultPassword ",
        ),
        (
            {"target": "openstack"},
            r"^yardarm:target must be one of kubernetes, baremetal, got 'openstack'",
        ),
        (
            {"place": {"nats": "node9"}},
            r"^yardarm:place\.nats: no host 'node9' .*pulumi config set --path "
            r"'yardarm:place\.nats' node1$",
        ),
        (
            {"place": {"redis": "node1"}},
            r"^yardarm:place\.redis: no shared part 'redis'.*pulumi config rm --path "
            r"'yardarm:place\.redis'$",
        ),
        (
            {"wheelhouse": "no/such/folder"},
            r"^yardarm:wheelhouse names 'no/such/folder', which is not a folder of wheels",
        ),
        (
            {"privateKeyFile": "/no/such/key"},
            r"^yardarm:privateKeyFile names '/no/such/key', which is not a file: "
            r"pulumi config set yardarm:privateKeyFile",
        ),
        (
            {"config": "missing.yaml"},
            r"^yardarm:config names 'missing.yaml', which is not a file",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_fix_before_anything_is_declared(
    monkeypatch: pytest.MonkeyPatch,
    work_root: Path,
    wheelhouse: Path,
    overrides: dict[str, Any],
    message: str,
) -> None:
    recorder = Recorder()
    with pytest.raises(ConfigError, match=message):
        run(monkeypatch, work_root, settings_of(wheelhouse, **overrides), recorder)
    assert recorder.resources == []
    assert not work_root.exists()  # nothing written either


def test_every_problem_is_reported_at_once(
    monkeypatch: pytest.MonkeyPatch, work_root: Path, wheelhouse: Path
) -> None:
    bad = [
        {"name": "node1", "address": "10.0.0.11", "ssh_port": 0},
        {"name": "node1", "address": "10.0.0.12"},
    ]
    with pytest.raises(ConfigError) as caught:
        run(monkeypatch, work_root, settings_of(wheelhouse, hosts=bad, vaultPassword=None))
    text = str(caught.value)
    assert text.startswith("3 problems with the stack's settings:\n  - ")
    assert "yardarm:hosts[0].ssh_port: must be >= 1 (got 0): pulumi config set --path " in text
    assert "yardarm:hosts[1].name: name 'node1' is already hosts.0's" in text
    assert "pulumi config set --secret yardarm:vaultPassword" in text


def test_hosts_that_cannot_run_the_gateways_replicas_are_refused(
    monkeypatch: pytest.MonkeyPatch, work_root: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    recorder = Recorder()
    two = settings_of(wheelhouse, hosts=HOSTS[:2], config=gateways(tmp_path, 3))
    with pytest.raises(
        ConfigError,
        match=r"^yardarm:hosts: 3 gateway replicas need as many hosts .* "
        r"pulumi config set --path 'yardarm:hosts\[2\]\.name' node3 && ",
    ):
        run(monkeypatch, work_root, two, recorder)
    roles = ["datastore", "orders", "fulfillment", "nats", "postgres", "haproxy", "prometheus"]
    no_gateway = [{**host, "roles": roles} for host in HOSTS]
    with pytest.raises(ConfigError, match=r"no host may run gateway.*roles\[<j>\]' <role>"):
        run(monkeypatch, work_root, settings_of(wheelhouse, hosts=no_gateway), recorder)
    assert recorder.resources == []
    # As many hosts as replicas run them.
    run(monkeypatch, work_root, settings_of(wheelhouse, config=gateways(tmp_path, 3)))


def test_a_vault_the_password_does_not_open_is_refused_before_anything_is_declared(
    monkeypatch: pytest.MonkeyPatch, work_root: Path, wheelhouse: Path
) -> None:
    run(monkeypatch, work_root, settings_of(wheelhouse))
    vault = (work_root / STACK / "inventory" / VAULT_FILE).read_bytes()
    recorder = Recorder()
    with pytest.raises(ConfigError, match=r"^yardarm:vaultPassword: .* does not open"):
        run(monkeypatch, work_root, settings_of(wheelhouse, vaultPassword="other"), recorder)
    assert recorder.resources == []
    # The secrets are kept: a second run does not issue new ones.
    run(monkeypatch, work_root, settings_of(wheelhouse))
    assert (work_root / STACK / "inventory" / VAULT_FILE).read_bytes() == vault


def test_the_digest_follows_the_inventory(
    monkeypatch: pytest.MonkeyPatch, work_root: Path, wheelhouse: Path
) -> None:
    def digest(hosts: list[dict[str, Any]]) -> str:
        recorder = run(monkeypatch, work_root, settings_of(wheelhouse, hosts=hosts))
        value = recorder.playbook().inputs["digest"]
        assert isinstance(value, str)
        return value

    first = digest(HOSTS)
    assert digest(HOSTS) == first  # nothing changed: the playbook does not run again
    moved = [HOSTS[0], {**HOSTS[1], "address": "10.0.0.22"}, HOSTS[2]]
    assert digest(moved) != first
    assert digest(HOSTS) == first
    # A host that leaves the list takes its host_vars with it.
    digest(HOSTS[:2])
    host_vars = work_root / STACK / "inventory/host_vars"
    assert sorted(p.name for p in host_vars.iterdir()) == ["node1.yml", "node2.yml"]


def test_the_digest_changes_exactly_when_what_the_playbook_applies_changes(
    tmp_path: Path, wheelhouse: Path
) -> None:
    ansible = tmp_path / "ansible"
    shutil.copytree(ROOT / "ansible", ansible, ignore=shutil.ignore_patterns("wheelhouse"))
    inventory = tmp_path / "inventory"
    files = render_inventory(Topology(), HostList.model_validate({"hosts": HOSTS}))
    for relative, text in files.items():
        (inventory / relative).parent.mkdir(parents=True, exist_ok=True)
        (inventory / relative).write_text(text)

    def digest() -> str:
        return playbook_digest(inventory, ansible, wheelhouse)

    first = digest()
    role = ansible / "roles/common/tasks/main.yml"
    original = role.read_text()
    os.utime(role, (1, 1))
    assert digest() == first  # a file's time is not a change
    role.write_text(original + "\n# changed\n")
    assert digest() != first
    role.write_text(original)
    assert digest() == first
    host_vars = inventory / "host_vars/node1.yml"
    host_vars.write_text(host_vars.read_text() + "# changed\n")
    assert digest() != first
    host_vars.write_text(files["host_vars/node1.yml"])
    assert digest() == first
    (wheelhouse / "extra-1.0-py3-none-any.whl").write_bytes(b"extra")
    assert digest() != first
    (wheelhouse / "extra-1.0-py3-none-any.whl").unlink()
    assert digest() == first
    # Not applied by the playbook: the host list's template, the CLI's outputs, an
    # editor's swap file.
    (ansible / "hosts.example.yml").write_text("hosts: []\n")
    (ansible / "inventories/local").mkdir(parents=True, exist_ok=True)
    (ansible / "inventories/local/inventory.yml").write_text("all: {}\n")
    (ansible / "roles/common/tasks/.main.yml.swp").write_bytes(b"swap")
    (wheelhouse / "notes.txt").write_text("not a wheel")
    assert digest() == first


# The real runs: a small playbook on this machine.

SITE = """\
- name: A small play
  hosts: all
  gather_facts: false
  tasks:
    - name: Change something
      ansible.builtin.copy:
        content: "{{ yardarm_wheelhouse }}\\n"
        dest: "{{ output_file }}"
        mode: "0600"
    - name: The vault opened with the password
      ansible.builtin.assert:
        that: yardarm_secrets.peer_secret | length > 0
        quiet: true
    - name: Fail when asked
      ansible.builtin.fail:
        msg: it broke on purpose
      when: break_it | default(false) | bool
"""


@dataclass(frozen=True)
class SmallPlay:
    playbook: Path
    inventory: Path  # the folder
    output: Path  # what the play writes
    scratch: Path  # the temporary files' folder


@pytest.fixture
def small_play(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SmallPlay:
    play = tmp_path / "play"
    play.mkdir()
    (play / "site.yml").write_text(SITE)
    inventory = tmp_path / "inventory"
    output = tmp_path / "written.txt"
    local = {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "output_file": str(output),
    }
    (inventory / "group_vars/all").mkdir(parents=True)
    (inventory / "inventory.yml").write_text(
        yaml.safe_dump({"all": {"hosts": {"localhost": local}}})
    )
    ensure_vault(inventory, PASSWORD)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return SmallPlay(play / "site.yml", inventory, output, scratch)


def test_run_playbook_returns_the_recap(small_play: SmallPlay, tmp_path: Path) -> None:
    log = tmp_path / "logs/playbook.log"
    run_ = run_playbook(
        small_play.playbook,
        small_play.inventory / "inventory.yml",
        vault_password=PASSWORD,
        extra_vars={"yardarm_wheelhouse": "/a folder/with a space"},
        log_file=log,
    )
    assert run_.recap == {
        "localhost": {"ok": 2, "changed": 1, "unreachable": 0, "failed": 0,
                      "skipped": 1, "rescued": 0, "ignored": 0},
    }  # fmt: skip
    assert small_play.output.read_text() == "/a folder/with a space\n"
    assert log.read_text() == run_.output
    assert PASSWORD not in run_.output
    assert list(small_play.scratch.iterdir()) == []  # the password file is gone
    again = run_playbook(
        small_play.playbook,
        small_play.inventory / "inventory.yml",
        vault_password=PASSWORD,
        extra_vars={"yardarm_wheelhouse": "/a folder/with a space"},
    )
    assert again.recap["localhost"]["changed"] == 0


def test_a_failing_playbook_raises_with_its_last_lines(small_play: SmallPlay) -> None:
    with pytest.raises(PlaybookError) as caught:
        run_playbook(
            small_play.playbook,
            small_play.inventory / "inventory.yml",
            vault_password=PASSWORD,
            extra_vars={"yardarm_wheelhouse": "/w", "break_it": "true"},
        )
    text = str(caught.value)
    assert text.startswith("ansible-playbook site.yml failed (exit 2); the last lines")
    assert "it broke on purpose" in text
    assert "failed=1" in text  # the recap closes the output
    assert PASSWORD not in text
    assert list(small_play.scratch.iterdir()) == []
    with pytest.raises(PlaybookError, match=r"failed \(exit [1-9]"):
        run_playbook(
            small_play.playbook,
            small_play.inventory / "inventory.yml",
            vault_password="wrong",
            extra_vars={"yardarm_wheelhouse": "/w"},
        )


def test_the_provider_runs_the_playbook_and_keeps_the_password_out_of_its_outputs(
    small_play: SmallPlay, tmp_path: Path
) -> None:
    props = {
        "playbook": str(small_play.playbook),
        "inventory": str(small_play.inventory),
        "digest": "a" * 64,
        "wheelhouse": "/w",
        "vaultPassword": PASSWORD,
        "privateKeyFile": None,
        "log": str(tmp_path / "playbook.log"),
        "recap": None,
    }
    provider = PlaybookProvider()
    created = provider.create(props)
    assert created.outs is not None
    assert created.outs["recap"]["localhost"]["changed"] == 1
    assert "vaultPassword" not in created.outs
    assert PASSWORD not in json.dumps(created.outs)
    assert created.outs["digest"] == "a" * 64
    assert not provider.diff(created.id, created.outs, props).changes
    news = props | {"digest": "b" * 64}
    assert provider.diff(created.id, created.outs, news).changes
    updated = provider.update(created.id, created.outs, news)
    assert updated.outs is not None and updated.outs["recap"]["localhost"]["changed"] == 0
    small_play.output.unlink()
    provider.delete(created.id, updated.outs)
    assert not small_play.output.exists()  # nothing ran


def test_the_provider_loads_where_pulumi_runs_it() -> None:
    """`python -m pulumi.dynamic` runs in the project's root without infra/ on its path."""
    serialized = serialize_provider(PlaybookProvider())
    script = textwrap.dedent(
        """
        import base64, sys, dill
        provider = dill.loads(base64.b64decode(sys.stdin.read()))
        diff = provider.diff("id", {"digest": "a"}, {"digest": "b"})
        print(type(provider).__module__, diff.changes)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run(
        [sys.executable, "-c", "import yardarm_infra"], cwd=ROOT, env=env, capture_output=True
    )
    assert probe.returncode != 0  # the folder is not importable there by itself
    loaded = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        input=serialized,
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.split() == ["yardarm_infra.playbook_resource", "True"]


def test_the_recap_is_read_per_host() -> None:
    output = textwrap.dedent(
        """\
        TASK [x] ***
        ok: [node1]

        PLAY RECAP *********************************************************************
        node1            : ok=5  changed=2  unreachable=0  failed=0  skipped=1  rescued=0  ignored=0
        node-2.example   : ok=1  changed=0  unreachable=1  failed=0  skipped=0  rescued=0  ignored=0

        """
    )
    recap = parse_recap(output)
    assert recap["node1"]["changed"] == 2
    assert recap["node-2.example"]["unreachable"] == 1
    assert parse_recap("no recap here") == {}
