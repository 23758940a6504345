"""The systemd units the yardarm_service role installs where systemd runs the host: each
one rendered by Ansible itself from the role's own template, defaults and vars, for the
instances of an inventory the model renders, is one systemd loads without a complaint
(`systemd-analyze verify`), and runs its instance's launch document as the service
account, restarted always, in a read-only system but for its state and log folders.

The role runs here from a copy that links the role's defaults, vars and templates and
holds two of its tasks, the instance selection (tasks/main.yml) and the unit template
(tasks/systemd.yml) with only its destination's folder changed, so a unit is rendered
exactly as a converge renders it, with no root, no SSH and no systemd to reload.

One of the role's variables is overridden: `yardarm_service_python` is this interpreter
(sys.executable), since verify fails a unit whose ExecStart binary is not executable and
the role's venv (/opt/yardarm/venv) exists only on a converged host. The account is the
role's own: verify does not look users up (systemd 252 passes an unknown User=), so
User= and Group= are checked in the unit's text instead.

Without systemd-analyze the tests that run it skip; with CI=true they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.baremetal.conftest import ANSIBLE_DIR, run_ansible
from yardarm.baremetal.hosts import HostList
from yardarm.baremetal.inventory import INVENTORY_FILE, host_vars_file, render_inventory
from yardarm.model import SERVICE_NAMES, Topology

ROLE = ANSIBLE_DIR / "roles" / "yardarm_service"
COMMON_DEFAULTS = ANSIBLE_DIR / "roles" / "common" / "defaults" / "main.yml"
TEMPLATE = "unit.service.j2"
TEMPLATE_MODULE = "ansible.builtin.template"
SYSTEM_UNITS = "/etc/systemd/system/"  # where tasks/systemd.yml writes the units
# Where the role writes each instance's launch document, and where the common role
# creates the log folder.
INSTANCES_DIR = "/etc/yardarm/instances"
LOG_DIR = "/var/log/yardarm"
HOSTS = HostList.model_validate(
    {"hosts": [{"name": "node1", "address": "10.0.0.11", "user": "deploy"}]}
)
CHECKED = ("datastore-0", "orders-0", "fulfillment-0", "gateway-0")
RENDER_TIMEOUT_S = 120.0
VERIFY_TIMEOUT_S = 30.0


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        why = "systemd-analyze is not installed (Debian: apt-get install systemd)"
        if os.environ.get("CI") == "true":  # CI must check the units
            pytest.fail(f"{why} (CI=true)", pytrace=False)
        pytest.skip(why)
    return found


def verify(unit: Path) -> list[str]:
    """What `systemd-analyze verify` finds wrong with `unit`: its lines naming the unit
    (an unknown key is only a warning, exit status 0), or all of its output when it
    exits non-zero. Other units' problems (the host's own) are not the unit's."""
    done = subprocess.run(
        [_systemd_analyze(), "verify", "--recursive-errors=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_S,
        check=False,
    )
    lines = (done.stdout + done.stderr).splitlines()
    found = [line for line in lines if unit.name in line]
    if done.returncode != 0 and not found:
        found = [f"systemd-analyze verify exited {done.returncode}", *lines]
    return found


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's settings by section and key, each key's values in order (a key may
    be given more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert current is not None and equals, f"not a unit file line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _task(path: Path, matches: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = yaml.safe_load(path.read_text())
    found = [task for task in tasks if matches(task)]
    assert len(found) == 1, f"{path}: expected one such task, found {len(found)}"
    return found[0]


def _role_copy(folder: Path, units: Path) -> Path:
    """The role as it runs on a systemd host, writing its units into `units`: its own
    defaults, vars and templates, its instance selection and its unit template task
    (without owner, group and handler: root and systemd are not needed to render)."""
    role = folder / ROLE.name
    (role / "tasks").mkdir(parents=True)
    for part in ("defaults", "vars", "templates"):
        (role / part).symlink_to(ROLE / part, target_is_directory=True)
    select = _task(
        ROLE / "tasks" / "main.yml",
        lambda task: "yardarm_service_here" in task.get("ansible.builtin.set_fact", {}),
    )
    write = _task(
        ROLE / "tasks" / "systemd.yml",
        lambda task: task.get(TEMPLATE_MODULE, {}).get("src") == TEMPLATE,
    )
    arguments = write[TEMPLATE_MODULE]
    assert arguments["dest"].startswith(SYSTEM_UNITS), arguments["dest"]
    arguments["dest"] = f"{units}/{arguments['dest'].removeprefix(SYSTEM_UNITS)}"
    for key in ("owner", "group"):
        arguments.pop(key, None)
    for key in ("notify", "register"):
        write.pop(key, None)
    (role / "tasks" / "main.yml").write_text(yaml.safe_dump([select, write], sort_keys=False))
    return role


@dataclass(frozen=True)
class Rendered:
    """The units Ansible wrote (`folder`) and the inventory's instances by name."""

    folder: Path
    instances: dict[str, dict[str, Any]]

    def unit(self, name: str) -> Path:
        return self.folder / f"yardarm-{name}.service"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """Every instance's unit of the default topology on one host, rendered in one
    ansible-playbook run (the role once per service, as site.yml applies it)."""
    folder = tmp_path_factory.mktemp("units")
    inventory = folder / "inventory"
    files = render_inventory(Topology(), HOSTS)
    for relative, text in files.items():
        path = inventory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    units = folder / "systemd"
    units.mkdir()
    role = _role_copy(folder / "roles", units)
    playbook = folder / "units.yml"
    play = {
        "name": "Render the instances' units",
        "hosts": "all",
        "connection": "local",
        "gather_facts": False,
        "roles": [{"role": str(role), "yardarm_service_name": name} for name in SERVICE_NAMES],
    }
    playbook.write_text(yaml.safe_dump([play], sort_keys=False))
    overrides = {
        "yardarm_service_python": sys.executable,
        "ansible_python_interpreter": sys.executable,  # Ansible's modules: no discovery
    }
    run = run_ansible(
        "ansible-playbook",
        "-i",
        str(inventory / INVENTORY_FILE),
        "-e",
        json.dumps(overrides),
        str(playbook),
        timeout=RENDER_TIMEOUT_S,
    )
    assert run.returncode == 0, run.output
    host_vars = yaml.safe_load(files[host_vars_file(HOSTS.hosts[0])])
    return Rendered(units, {inst["name"]: inst for inst in host_vars["yardarm_instances"]})


@pytest.fixture(scope="module")
def account() -> str:
    """The service account the common role creates."""
    defaults: dict[str, Any] = yaml.safe_load(COMMON_DEFAULTS.read_text())
    return str(defaults["common_user"])


def test_every_instance_of_the_host_gets_its_own_unit(rendered: Rendered) -> None:
    assert set(CHECKED) <= set(rendered.instances)
    assert sorted(path.name for path in rendered.folder.iterdir()) == sorted(
        f"yardarm-{name}.service" for name in rendered.instances
    )


@pytest.mark.parametrize("name", CHECKED)
def test_systemd_loads_the_unit_without_a_complaint(rendered: Rendered, name: str) -> None:
    assert verify(rendered.unit(name)) == []


@pytest.mark.parametrize("name", CHECKED)
def test_the_unit_runs_the_instances_launch_document_as_the_service_account(
    rendered: Rendered, account: str, name: str
) -> None:
    service = directives(rendered.unit(name).read_text())["Service"]
    assert service["ExecStart"] == [
        f"{sys.executable} -m yardarm.baremetal.launch {INSTANCES_DIR}/{name}.json"
    ]
    assert service["Restart"] == ["always"]
    assert service["User"] == [account]
    assert service["Group"] == [account]


@pytest.mark.parametrize("name", CHECKED)
def test_the_instance_writes_only_its_state_and_the_logs(rendered: Rendered, name: str) -> None:
    instance = rendered.instances[name]
    state = instance["env"][f"YARDARM_{instance['service'].upper()}_STATE_DIR"]
    service = directives(rendered.unit(name).read_text())["Service"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    writable = [path for value in service["ReadWritePaths"] for path in value.split()]
    assert state in writable
    assert LOG_DIR in writable


def _unknown_key(text: str, folder: Path) -> str:
    return text.replace("[Service]\n", "[Service]\nRestartForever=yes\n", 1)


def _missing_binary(text: str, folder: Path) -> str:
    return text.replace(sys.executable, str(folder / "venv" / "bin" / "python"))


@pytest.mark.parametrize(
    ("breakage", "complaint"),
    [(_unknown_key, "Unknown key"), (_missing_binary, "is not executable")],
    ids=["unknown-key", "missing-binary"],
)
def test_the_check_finds_a_broken_unit(
    rendered: Rendered,
    tmp_path: Path,
    breakage: Callable[[str, Path], str],
    complaint: str,
) -> None:
    good = rendered.unit("gateway-0")
    text = good.read_text()
    broken = tmp_path / good.name
    broken.write_text(breakage(text, tmp_path))
    assert broken.read_text() != text
    found = verify(broken)
    assert any(complaint in line for line in found), found
