"""The settings of a baremetal stack (`pulumi config set yardarm:target baremetal`), read
and checked once, and the inventory they render.

Every problem is reported together, before a resource is declared, each with the
`pulumi config` command that fixes it: a host list Ansible could not use, or one that
cannot run the deployment, stops `pulumi preview` before anything reaches a machine.
The host entries are checked by the host list's own model (`yardarm.baremetal.hosts`),
in its words, so the stack and `yardarm ansible inventory --hosts` refuse the same hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pulumi
from pydantic import ValidationError

from yardarm.baremetal.hosts import HostList, duplicates, validation_reason
from yardarm.baremetal.inventory import (
    HAPROXY_PORT,
    planned_deployment,
    read_state,
    render_inventory,
)
from yardarm.baremetal.target import SHARED_PARTS, PlacementError, place
from yardarm.model import Topology, TopologyError, load_topology
from yardarm_infra.config import NAMESPACE, ConfigError, config_file

# Below the repository's root, one folder per stack (`.yardarm` is not committed).
WORK_ROOT: Final = Path(".yardarm/baremetal")
INVENTORY_DIR: Final = "inventory"
WHEELHOUSE_DIR: Final = "wheelhouse"
# An example value for each host key, in the command that sets it.
_EXAMPLES: Final = {
    "name": "node1",
    "address": "10.0.0.11",
    "ssh_address": "203.0.113.11",
    "ssh_port": "22",
    "user": "yardarm",
    "roles": "gateway",
}
_ADD_HOST: Final = (
    "pulumi config set --path 'yardarm:hosts[{i}].name' node{n} && "
    "pulumi config set --path 'yardarm:hosts[{i}].address' <its address>"
)


@dataclass(frozen=True)
class BaremetalConfig:
    """The validated settings of one baremetal stack."""

    stack: str
    hosts: HostList
    vault_password: str = field(repr=False)  # secret: wrapped as one wherever it is declared
    config_path: Path | None  # a yardarm.yaml; None: the model's defaults
    place: dict[str, str]  # shared part -> host name
    wheelhouse: Path | None  # a folder of wheels; None: `pulumi up` gathers them
    private_key: Path | None  # ansible-playbook's --private-key
    work_dir: Path  # the stack's working folder

    @property
    def inventory_dir(self) -> Path:
        return self.work_dir / INVENTORY_DIR

    @property
    def gathered_wheelhouse(self) -> Path:
        """Where `pulumi up` gathers the wheels when `yardarm:wheelhouse` is unset."""
        return self.work_dir / WHEELHOUSE_DIR


@dataclass(frozen=True)
class InventoryPlan:
    """The inventory the settings render, and where the stack is reached."""

    files: dict[str, str]  # path relative to the inventory folder -> text
    gateway_url: str  # HAProxy's, in front of the gateways
    notes: tuple[str, ...]  # what the placement had to compromise on


def config_path_of(loc: Sequence[str | int]) -> str:
    """A place in the host list (`hosts`, 1, `roles`, 0) as `pulumi config set --path`
    writes it (`hosts[1].roles[0]`)."""
    text = ""
    for part in loc:
        if isinstance(part, int) or part.isdigit():
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _host_fix(loc: Sequence[str | int], kind: str, count: int) -> str:
    """The command that fixes the host list at `loc`."""
    path = config_path_of(loc)
    if kind == "extra_forbidden":
        return f"pulumi config rm --path 'yardarm:{path}'"
    if len(loc) <= 2:  # the list itself (a host is added), or a whole entry
        index = int(loc[1]) if len(loc) == 2 else count
        return _ADD_HOST.format(i=index, n=index + 1)
    key = str(loc[2])
    if key == "roles" and len(loc) == 3:  # the list, not one of its items
        path += "[0]"
    example = f"node{int(loc[1]) + 1}" if key == "name" else _EXAMPLES.get(key, "<value>")
    return f"pulumi config set --path 'yardarm:{path}' {example}"


def _hosts(config: pulumi.Config) -> tuple[HostList | None, list[str]]:
    """`yardarm:hosts` as a host list, or every problem with its fix."""
    try:
        listed = config.get_object("hosts")
    except pulumi.ConfigTypeError:
        listed = config.get("hosts")
    if listed is None:
        return None, [
            "yardarm:hosts is required: the machines the stack runs on, each with a name and "
            "the address Ansible reaches it at (ansible/hosts.example.yml shows every key): "
            + _ADD_HOST.format(i=0, n=1)
        ]
    try:
        return HostList.model_validate({"hosts": listed}), _duplicate_problems(listed)
    except ValidationError as exc:
        count = len(listed) if isinstance(listed, list) else 0
        problems = [
            f"yardarm:{config_path_of(error['loc'])}: {validation_reason(error)}: "
            + _host_fix(error["loc"], error["type"], count)
            for error in exc.errors()
        ]
        return None, problems + _duplicate_problems(listed)


def _duplicate_problems(listed: Any) -> list[str]:
    """Names and addresses used twice, which the model alone does not see."""
    if not isinstance(listed, list):
        return []
    return [
        f"yardarm:{config_path_of(loc)}: {why}: pulumi config set --path "
        f"'yardarm:{config_path_of(loc)}' <another {loc[-1]}>"
        for loc, why in duplicates(listed)
    ]


def _password(config: pulumi.Config) -> tuple[str, list[str]]:
    password = (config.get("vaultPassword") or "").strip()
    if password:
        return password, []
    return "", [
        "yardarm:vaultPassword is required for the baremetal target (it encrypts the "
        "stack's tokens in the inventory's vault; keep it, the vault opens with no other): "
        'pulumi config set --secret yardarm:vaultPassword "$(openssl rand -hex 24)"'
    ]


def _place(config: pulumi.Config, hosts: HostList | None) -> tuple[dict[str, str], list[str]]:
    """`yardarm:place` (shared part -> host name), checked against the host list."""
    try:
        chosen = config.get_object("place") or {}
    except pulumi.ConfigTypeError:
        chosen = config.get("place")
    if not isinstance(chosen, dict) or not all(isinstance(v, str) for v in chosen.values()):
        return {}, [
            "yardarm:place must map shared parts to host names: pulumi config rm yardarm:place"
            " && pulumi config set --path 'yardarm:place.nats' node2"
        ]
    problems = []
    for part, name in chosen.items():
        key = f"yardarm:place.{part}"
        if part not in SHARED_PARTS:
            problems.append(
                f"{key}: no shared part {part!r} (parts: {', '.join(SHARED_PARTS)}): "
                f"pulumi config rm --path '{key}'"
            )
        elif hosts is not None:
            names = [host.name for host in hosts.hosts]
            if name not in names:
                problems.append(
                    f"{key}: no host {name!r} (hosts: {', '.join(names)}): "
                    f"pulumi config set --path '{key}' {names[0]}"
                )
            elif not hosts.named(name).may_run(part):
                index = names.index(name)
                roles = hosts.named(name).roles or []
                problems.append(
                    f"{key}: host {name!r} may not run {part} (its roles leave it out): "
                    f"pulumi config set --path 'yardarm:hosts[{index}].roles[{len(roles)}]' "
                    f"{part}, or pulumi config rm --path '{key}'"
                )
    return dict(chosen), problems


def _path_key(
    root: Path, config: pulumi.Config, key: str, fix: str, is_ok: Callable[[Path], bool]
) -> tuple[Path | None, list[str]]:
    """An optional path setting (relative to `root`, `~` expanded), or its problem."""
    raw = config.get(key)
    if not raw:
        return None, []
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = root / path
    if is_ok(path):
        return path, []
    return None, [f"yardarm:{key} names {raw!r}, {fix}"]


def read_baremetal_config(
    root: Path,
    stack: str,
    config: pulumi.Config | None = None,
    work_root: Path | None = None,
) -> BaremetalConfig:
    """The stack's settings; relative paths are taken from `root` (the directory of
    Pulumi.yaml), and the stack's working folder is `work_root/<stack>` (by default
    `root/.yardarm/baremetal/<stack>`)."""
    config = config or pulumi.Config(NAMESPACE)
    problems: list[str] = []
    hosts, found = _hosts(config)
    problems += found
    password, found = _password(config)
    problems += found
    chosen, found = _place(config, hosts)
    problems += found
    wheelhouse, found = _path_key(
        root,
        config,
        "wheelhouse",
        "which is not a folder of wheels (*.whl): `uv run yardarm ansible wheelhouse -o "
        "DIR` writes one, or pulumi config rm yardarm:wheelhouse to have `pulumi up` "
        "gather them",
        lambda path: path.is_dir() and any(path.glob("*.whl")),
    )
    problems += found
    private_key, found = _path_key(
        root,
        config,
        "privateKeyFile",
        "which is not a file: pulumi config set yardarm:privateKeyFile ~/.ssh/id_ed25519",
        Path.is_file,
    )
    problems += found
    try:
        config_path = config_file(root, config)
    except ConfigError as exc:
        config_path = None
        problems.append(str(exc))
    if problems or hosts is None:
        raise ConfigError(_together(problems))
    return BaremetalConfig(
        stack=stack,
        hosts=hosts,
        vault_password=password,
        config_path=config_path,
        place=chosen,
        wheelhouse=wheelhouse,
        private_key=private_key,
        work_dir=(work_root or root / WORK_ROOT) / stack,
    )


def _together(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems with the stack's settings:\n" + "\n".join(
        f"  - {problem}" for problem in problems
    )


def plan_inventory(settings: BaremetalConfig) -> InventoryPlan:
    """The inventory of the settings' deployment on their hosts; ConfigError when the
    hosts cannot run it."""
    topology = Topology()
    if settings.config_path is not None:
        try:
            topology = load_topology(settings.config_path)
        except TopologyError as exc:
            raise ConfigError(f"yardarm:config: {exc}") from exc
    count = len(settings.hosts.hosts)
    try:
        # What `yardarm ansible controller` keeps beside the inventory: a rollout's tracks.
        desired, ports = read_state(settings.inventory_dir)
        placement = place(planned_deployment(topology, desired), settings.hosts, settings.place)
        files = render_inventory(topology, settings.hosts, settings.place, desired, ports)
    except PlacementError as exc:
        raise ConfigError(
            f"yardarm:hosts: {exc}: {_ADD_HOST.format(i=count, n=count + 1)} adds a host; "
            "pulumi config set --path 'yardarm:hosts[<i>].roles[<j>]' <role> lets one run a "
            "part; or change yardarm:config's file"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"yardarm:config: {exc}") from exc
    haproxy = placement.shared["haproxy"]
    return InventoryPlan(
        files=files,
        gateway_url=f"http://{haproxy.netloc(HAPROXY_PORT)}",
        notes=placement.notes,
    )
