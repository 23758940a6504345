"""Where things are when every instance is a process on one of a list of Linux hosts.

Each instance runs on the host its placement gives it and listens on that host's address
(`Host.address`, the one its peers dial: nothing listens on a machine's other networks,
which matters while the links are plaintext) at the port the model's port plan gives it,
as on the local target. The plan gives every instance of a stack its own ports, so
instances share a host without colliding; only the gateway's replicas share one port
(the public `base_port`) and so need a host each, HAProxy in front of them. NATS and
Postgres run on the hosts the placement names, at the plan's ports. Files are at fixed
paths, the same on every host: the credentials under `CONFIG_DIR` in the stack home's
layout, the flag files under `FLAGS_DIR`, each instance's state under `STATE_ROOT`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from yardarm.baremetal.hosts import Host, HostList
from yardarm.credentials import CredentialFiles, StackCredentials
from yardarm.model import SERVICE_NAMES, Deployment, Instance, TlsFiles, release_pins
from yardarm.model import track_ports as assign_track_ports

CONFIG_DIR: Final = "/etc/yardarm"  # the stack home's layout: tokens, access document
FLAGS_DIR: Final = "/etc/yardarm/flags"
FLAGS_FILE: Final = "flags.json"
STATE_ROOT: Final = "/var/lib/yardarm"  # one directory per instance below it
POSTGRES_USER: Final = "yardarm"
# The stack's parts besides the services' instances, one host each. The rollout
# controller is not one: it runs where Ansible and the SSH keys are (`yardarm ansible
# controller`), since it changes the hosts through site.yml's roles.
SHARED_PARTS: Final = ("nats", "postgres", "haproxy", "prometheus")


class PlacementError(ValueError):
    """The hosts cannot run the deployment; the message says what to change."""


@dataclass(frozen=True)
class Placement:
    """Which host runs each instance (by name) and each shared part (`SHARED_PARTS`; the
    stack's Prometheus only when it runs one); `notes` say what the placement had to
    compromise on."""

    instances: Mapping[str, Host]
    shared: Mapping[str, Host]
    notes: tuple[str, ...] = field(default=())


def _allowed(hosts: HostList, role: str) -> list[Host]:
    found = [host for host in hosts.hosts if host.may_run(role)]
    if not found:
        raise PlacementError(
            f"no host may run {role}: add {role} to a host's roles (a host without roles "
            "may run anything)"
        )
    return found


def place(
    deployment: Deployment, hosts: HostList, shared: Mapping[str, str] | None = None
) -> Placement:
    """Each service's primary track round-robin over the hosts that may run it, from
    the first such host, and each other track's instances over the hosts after those,
    by ordinal (so a canary and its baseline sit side by side, and neither moves when
    the other scales); each shared part on the host `shared` names for it, else the
    first host that may run it.

    The datastore's replicas land on distinct hosts when there are as many hosts for it
    as replicas; with fewer they wrap around (their ports differ, so they still run, but
    losing one host then costs the Raft group more than one vote: a note says so). The
    gateway's replicas cannot share a host (they listen on the same public port without
    SO_REUSEPORT): too few hosts for them is an error.
    """
    topology = deployment.topology
    instances: dict[str, Host] = {}
    notes: list[str] = []
    for service in SERVICE_NAMES:
        running = deployment.of(service)
        allowed = _allowed(hosts, service)
        if service == "gateway" and len(running) > len(allowed):
            raise PlacementError(
                f"{len(running)} gateway replicas need as many hosts that may run the gateway "
                f"(they share the public port {topology.gateway_port}), and {len(allowed)} "
                "may: add hosts or lower services.gateway.replicas"
            )
        if service == "gateway" and len(running) < 2:
            notes.append(
                "one gateway behind HAProxy: its host cannot restart (or upgrade) without "
                "refusing requests; set services.gateway.replicas to 2 or more"
            )
        if service == "datastore" and len(running) > len(allowed):
            notes.append(
                f"{len(running)} datastore replicas on {len(allowed)} host(s): some hosts run "
                "two, so losing one of them loses more than one Raft vote"
            )
        primaries = sum(1 for inst in running if inst.primary)
        for index, inst in enumerate(running):
            # A track's instance keeps its host while other tracks come and go: the
            # hosts after the primary track's, by its ordinal.
            at = index if inst.primary else primaries + inst.ordinal
            instances[inst.name] = allowed[at % len(allowed)]
    chosen = dict(shared or {})
    unknown = sorted(set(chosen) - set(SHARED_PARTS))
    if unknown:
        raise PlacementError(f"no shared part {unknown[0]!r} (parts: {', '.join(SHARED_PARTS)})")
    parts: dict[str, Host] = {}
    for part in SHARED_PARTS:
        if part == "prometheus" and not topology.prometheus.enabled:
            continue
        name = chosen.get(part)
        if name is None:
            parts[part] = _allowed(hosts, part)[0]
            continue
        try:
            host = hosts.named(name)
        except KeyError as exc:
            raise PlacementError(f"{part}: {exc.args[0]}") from exc
        if not host.may_run(part):
            raise PlacementError(f"{part}: host {name!r} may not run it (its roles leave it out)")
        parts[part] = host
    return Placement(instances, parts, tuple(notes))


def track_ports(deployment: Deployment, recorded: Mapping[str, int]) -> dict[str, int]:
    """The port of each instance off its service's primary track, handed out as the local
    plan does: the one it had (`recorded`), else the lowest free one of the topology's
    track range (so a running instance never changes port while a rollout scales)."""
    try:
        return assign_track_ports(deployment, recorded)
    except ValueError as exc:
        raise PlacementError(str(exc)) from exc


def version_flags_file(instance: Instance) -> str:
    """The flag file of a version that pins some (its name, relative to `FLAGS_DIR`)."""
    return f"{instance.service}-{instance.version}.json"


class BareMetalTarget(CredentialFiles):
    """Host addresses and the model's ports; files at the fixed paths the roles install."""

    def __init__(
        self,
        deployment: Deployment,
        placement: Placement,
        recorded_ports: Mapping[str, int] | None = None,
    ) -> None:
        self.deployment = deployment
        self.topology = deployment.topology
        self.placement = placement
        self.credentials = StackCredentials(Path(CONFIG_DIR))
        if self.topology.tls.enabled:
            raise ValueError(
                "tls.enabled is not supported by the bare-metal target yet: the roles install"
                " no certificates; turn tls off in yardarm.yaml for `yardarm ansible inventory`"
            )
        missing = [
            inst.name for inst in deployment.instances if inst.name not in placement.instances
        ]
        if missing:
            raise PlacementError(f"no host for {', '.join(missing)}")
        self.track_ports = track_ports(deployment, recorded_ports or {})

    def host(self, instance: Instance) -> Host:
        return self.placement.instances[instance.name]

    def shared_host(self, part: str) -> Host:
        return self.placement.shared[part]

    def port(self, instance: Instance) -> int:
        """Where an instance's HTTP listener binds: its primary track's port, else its
        track port."""
        if instance.primary:
            return self.topology.service_port(instance.service, instance.ordinal)
        return self.track_ports[instance.name]

    def bind(self, instance: Instance) -> tuple[str, int]:
        return self.host(instance).address, self.port(instance)

    def url(self, client: Instance, server: Instance) -> str:
        return f"http://{self.host(server).netloc(self.port(server))}"

    def raft_bind(self, instance: Instance) -> tuple[str, int]:
        return self.host(instance).address, self.topology.raft_port(instance.ordinal)

    def raft_address(self, client: Instance, peer: Instance) -> str:
        return self.host(peer).netloc(self.topology.raft_port(peer.ordinal))

    def postgres_dsn(self, client: Instance, database: str) -> str:
        where = self.shared_host("postgres").netloc(self.topology.postgres_port)
        return f"postgresql://{POSTGRES_USER}@{where}/{database}?passfile={self.pgpass_file()}"

    def nats_url(self, client: Instance) -> str:
        return f"nats://{self.shared_host('nats').netloc(self.topology.nats_port)}"

    def gateway_admin_port(self, instance: Instance) -> int:
        return self.topology.gateway_admin_port(instance.ordinal)

    def shares_gateway_port(self) -> bool:
        return False  # a host per replica, HAProxy in front

    def state_dir(self, instance: Instance) -> str:
        return f"{STATE_ROOT}/{instance.name}"

    def data_dir(self, instance: Instance) -> str:
        return f"{STATE_ROOT}/{instance.name}/data"

    def pins(self, instance: Instance) -> dict[str, str]:
        """The flags the instance's version pins (flag key -> variant)."""
        return release_pins(self.deployment, instance)

    def flags_file(self, instance: Instance) -> str:
        name = version_flags_file(instance) if self.pins(instance) else FLAGS_FILE
        return f"{FLAGS_DIR}/{name}"

    def pgpass_file(self) -> str:
        """The services' pgpass (`*:*:*:yardarm:<password>`, mode 0600), where the
        container targets keep theirs in the stack home's layout."""
        return str(self.credentials.directory / "pgpass")

    def tls(self, instance: Instance) -> TlsFiles | None:
        return None
