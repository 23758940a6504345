"""The host list: the Linux machines a bare-metal stack runs on (`hosts.yml`).

Validated like `yardarm.yaml` (`yardarm.model.load`): a bad file is refused as a whole,
with every problem as `hosts.<i>.<key>: what is wrong (line N)`, so an operator fixes
them all in one pass before Ansible touches a machine.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from yardarm.model.load import describe, key_lines

# What a host may run: a service's instances, or one of the stack's shared parts
# (`yardarm.baremetal.target.SHARED_PARTS`).
Role = Literal[
    "datastore",
    "orders",
    "fulfillment",
    "gateway",
    "nats",
    "postgres",
    "haproxy",
    "prometheus",
]
# An inventory host name is also the name of its host_vars file.
HOST_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
USER_NAME = r"^[a-z_][a-z0-9_-]{0,31}$"
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class HostsError(ValueError):
    """The host list cannot be used; the message says where and why."""


def check_address(value: str) -> str:
    """An IP address, or a host name (RFC 1123) that does not pose as a bad IPv4 one."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if (
        len(value) <= 253
        and all(_LABEL.match(label) for label in labels)
        and not all(label.isdigit() for label in labels)
    ):
        return value
    raise ValueError(f"must be an IP address or a host name (got {value!r})")


class Host(BaseModel):
    """One machine: how Ansible reaches it, and what of the stack it may run (every part
    when `roles` is left out)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    address: str
    # Where Ansible connects when it is not `address` (a NAT or a port forward in front
    # of the host's SSH); the stack itself always uses `address`.
    ssh_address: str | None = None
    # Where the operator's machine reaches the host's service ports when it is not
    # `address` (a port forward or tunnel): the rollout controller that
    # `yardarm ansible controller` runs there talks to the datastore, the gateways'
    # admin ports and Prometheus through it.
    control_address: str | None = None
    ssh_port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    roles: list[Role] | None = Field(default=None, min_length=1)

    @field_validator("address", "ssh_address", "control_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else check_address(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.match(HOST_NAME, value):
            raise ValueError(
                "must be 1-63 letters, digits or . _ - starting with a letter or digit "
                f"(got {value!r}): it names the host's host_vars file"
            )
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not re.match(USER_NAME, value):
            raise ValueError(
                f"must be a Linux user name: lower case letters, digits, _ or - (got {value!r})"
            )
        return value

    def may_run(self, role: str) -> bool:
        return self.roles is None or role in self.roles

    def netloc(self, port: int) -> str:
        """`address:port`, an IPv6 address in brackets (as URLs and NATS want it)."""
        return _netloc(self.address, port)

    def control_netloc(self, port: int) -> str:
        """`netloc` as the operator's machine reaches it (`control_address`)."""
        return _netloc(self.control_address or self.address, port)


def _netloc(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}"


class HostList(BaseModel):
    """Every machine of the stack; names and addresses unique."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: list[Host] = Field(min_length=1)

    def named(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")


def validation_reason(error: Any) -> str:
    """One pydantic error in the model loader's words, with the two kinds a host list
    meets that it does not phrase."""
    if error["type"] == "missing":
        return "missing: this key is required"
    if error["type"] == "too_short":
        return f"must list at least {error['ctx']['min_length']} (got none)"
    return describe(error)


def _placed(path: tuple[str, ...], why: str, lines: dict[tuple[str, ...], int]) -> str:
    """`path: why (line N)`; a missing key at the line of what should hold it."""
    found = [lines[path[:end]] for end in range(len(path), 0, -1) if path[:end] in lines]
    line = found[0] if found else None
    return f"{'.'.join(path) or '(document)'}: {why}" + (f" (line {line})" if line else "")


def duplicates(hosts: list[Any]) -> list[tuple[tuple[str, ...], str]]:
    """Names and addresses used twice (one machine listed twice would collide on ports)."""
    problems: list[tuple[tuple[str, ...], str]] = []
    for key in ("name", "address"):
        first: dict[str, int] = {}
        for index, host in enumerate(hosts):
            value = host.get(key) if isinstance(host, dict) else None
            if not isinstance(value, str):
                continue
            if key == "address":
                try:
                    value = check_address(value)
                except ValueError:
                    continue
            if value in first:
                problems.append(
                    (
                        ("hosts", str(index), key),
                        f"{key} {value!r} is already hosts.{first[value]}'s; each host once",
                    )
                )
            else:
                first[value] = index
    return problems


def parse_hosts(text: str) -> tuple[HostList | None, list[str]]:
    """The host list in `text`, or every problem with its place."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return None, [f"YAML syntax error at {where}{getattr(exc, 'problem', None) or exc}"]
    if not isinstance(data, dict):
        got = "nothing" if data is None else type(data).__name__
        return None, [f"(document): must be a mapping with a `hosts` list (got {got})"]
    lines = key_lines(text)
    problems: list[str] = []
    parsed: HostList | None = None
    try:
        parsed = HostList.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            path = tuple(str(part) for part in error["loc"])
            problems.append(_placed(path, validation_reason(error), lines))
    listed = data.get("hosts")
    if isinstance(listed, list):
        problems += [_placed(path, why, lines) for path, why in duplicates(listed)]
    return (None, problems) if problems else (parsed, [])


def load_hosts(path: Path) -> HostList:
    """The host list in a file; HostsError names every problem."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise HostsError(f"cannot read {path}: {exc.strerror}") from exc
    hosts, problems = parse_hosts(text)
    if hosts is None:
        raise HostsError(f"{path}: " + "; ".join(problems))
    return hosts
