"""The local renderer: the deployment model as processes on this machine.

Every instance is a process on loopback with a port from the plan (`yardarm.local.plan`),
files under the stack's home, and the settings every target gives it
(`yardarm.model.instance_settings`). NATS, Postgres and the chaos controller run
beside them, from this machine's binaries.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from yardarm import databases
from yardarm.certificates import StackCertificates, ensure_certificates
from yardarm.chaos.config import ChaosConfig, config_path
from yardarm.credentials import CredentialFiles, StackCredentials, ensure_credentials
from yardarm.local import infra, prometheus
from yardarm.local.desired import read_desired, read_ports, write_desired, write_ports
from yardarm.local.plan import (
    CHAOS_INSTANCE,
    chaos_links,
    dependency_links,
    instance_port,
)
from yardarm.model import (
    Deployment,
    Instance,
    TlsFiles,
    Topology,
    current_for,
    deployment_of,
    instance_settings,
    pinned,
    release_pins,
    track_ports,
)

if TYPE_CHECKING:
    from yardarm.routing_writer import RoutingWriter

ReadinessKind = Literal["http", "tcp", "postgres"]
LOOPBACK = "127.0.0.1"
SERVICE_DATABASES = list(databases.SERVICE_DATABASES)
TLS_SERVICES = ("datastore", "orders", "fulfillment", "gateway")
ROLLOUTS_INSTANCE = "rollouts"


class InstanceSpec(BaseModel):
    """One process the supervisor runs: how to start it and how to tell it is ready."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    service: str
    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    port: int
    readiness: ReadinessKind
    readiness_url: str | None = None
    readiness_ca_file: str | None = None  # the stack's CA, for an https readiness URL
    depends_on: list[str] = Field(default_factory=list)
    version: str = "0.1.0"
    track: str = "stable"
    run_as_uid: int | None = None
    run_as_gid: int | None = None
    cwd: str | None = None
    stop_signal: int = 15
    databases: list[str] = Field(default_factory=list)
    # A gateway upstream's instance: the upstream and the URL every gateway replica dials.
    upstream: str | None = None
    endpoint: str | None = None
    # Instances that must not be down together (a Raft group keeps its quorum): one of
    # a group is stopped for a replacement only while every other one answers ready.
    disruption_group: str | None = None


def urls(topology: Topology) -> dict[str, str]:
    """Where each part of the stack answers (first replica for replicated services)."""
    host = f"{topology.tls.scheme}://{LOOPBACK}"
    return {
        "gateway": f"{host}:{topology.gateway_port}",
        "admin": f"{host}:{topology.admin_port}",
        "datastore": f"{host}:{topology.datastore_port(0)}",
        "orders": f"{host}:{topology.orders_port(0)}",
        "fulfillment": f"{host}:{topology.fulfillment_port(0)}",
        "nats": f"nats://{LOOPBACK}:{topology.nats_port}",
        "postgres": infra.postgres_dsn(topology.postgres_port),
        "chaos": f"{host}:{topology.chaos_port}",
    } | (
        {"prometheus": prometheus.url(topology)}
        if topology.prometheus.enabled and prometheus.binary()
        else {}
    )


def _replace(path: Path, text: str) -> Path:
    """Write a file in one rename: the services and the controller watch these."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def flags_file(home: Path) -> Path:
    """Where the runtime renders the topology's flags."""
    return home / "flags.json"


def version_flags_file(home: Path, instance: Instance) -> Path:
    """The flags of an instance whose version pins some: `<home>/flags/<svc>-<v>.json`."""
    return home / "flags" / f"{instance.service}-{instance.version}.json"


def write_flags(topology: Topology, home: Path) -> Path:
    """Render the flags in flagd's file format (atomically, services watch the file)."""
    return _replace(flags_file(home), json.dumps({"flags": topology.flags}, indent=2))


def write_chaos_config(topology: Topology, home: Path) -> Path:
    """Render the chaos controller's config (atomically: a restart may be reading it)."""
    config = ChaosConfig(
        instance=CHAOS_INSTANCE,
        control_port=topology.chaos_port,
        home=home,
        links=chaos_links(topology),
        environment=topology.environment,
        admin_token_file=StackCredentials(home).token_file("admin"),
    )
    if topology.tls.enabled:
        own = StackCertificates(home).service(CHAOS_INSTANCE)
        config = config.model_copy(
            update={"tls_cert_file": own.cert_file, "tls_key_file": own.key_file}
        )
    return _replace(config_path(home), config.model_dump_json(indent=2))


class LocalTarget(CredentialFiles):
    """Loopback addresses from the port plan; files under the stack's home."""

    def __init__(self, deployment: Deployment, home: Path, ports: dict[str, int]) -> None:
        self.deployment = deployment
        self.topology = deployment.topology
        self.home = home
        self.ports = ports
        self.credentials = ensure_credentials(home)
        self.certificates = (
            ensure_certificates(home, [*TLS_SERVICES, CHAOS_INSTANCE, ROLLOUTS_INSTANCE])
            if self.topology.tls.enabled
            else None
        )
        # (client instance, dependency) -> the link proxy's port, with dependency links on
        self.via = {
            (link.src, link.dst): link.listen_port for link in dependency_links(self.topology)
        }

    def port(self, instance: Instance) -> int:
        return instance_port(self.topology, instance, self.ports)

    def _dial(self, client: Instance, server: str, port: int) -> int:
        """The port `client` connects to for `server`: its link proxy's, or `server`'s own."""
        return self.via.get((client.name, server), port)

    def bind(self, instance: Instance) -> tuple[str, int]:
        return LOOPBACK, self.port(instance)

    def url(self, client: Instance, server: Instance) -> str:
        port = self._dial(client, server.name, self.port(server))
        return f"{self.topology.tls.scheme}://{LOOPBACK}:{port}"

    def raft_bind(self, instance: Instance) -> tuple[str, int]:
        return LOOPBACK, self.topology.raft_port(instance.ordinal)

    def raft_address(self, client: Instance, peer: Instance) -> str:
        # Always through the chaos controller's link proxies, so Raft links can be cut.
        return f"{LOOPBACK}:{self.topology.link_port(client.ordinal, peer.ordinal)}"

    def postgres_dsn(self, client: Instance, database: str) -> str:
        return infra.postgres_dsn(
            self._dial(client, "postgres", self.topology.postgres_port), database
        )

    def nats_url(self, client: Instance) -> str:
        return f"nats://{LOOPBACK}:{self._dial(client, 'nats', self.topology.nats_port)}"

    def gateway_admin_port(self, instance: Instance) -> int:
        return self.topology.gateway_admin_port(instance.ordinal)

    def shares_gateway_port(self) -> bool:
        return self.topology.services.gateway.replicas > 1

    def state_dir(self, instance: Instance) -> str:
        return str(self.home)

    def data_dir(self, instance: Instance) -> str:
        return str(self.home / "data" / instance.name)

    def _pins(self, instance: Instance) -> dict[str, str]:
        """The flags the instance's version pins (flag key -> variant)."""
        return release_pins(self.deployment, instance)

    def flags_file(self, instance: Instance) -> str:
        pinned_flags = self._pins(instance)
        return str(
            version_flags_file(self.home, instance) if pinned_flags else flags_file(self.home)
        )

    def tls(self, instance: Instance) -> TlsFiles | None:
        if self.certificates is None:
            return None
        own = self.certificates.service(instance.service)
        return TlsFiles(str(own.cert_file), str(own.key_file), str(self.certificates.ca_file))

    def write_version_flags(self) -> None:
        """Render the flags of every version that pins some."""
        for instance in self.deployment.instances:
            pins = self._pins(instance)
            if pins:
                document = {"flags": pinned(self.topology.flags, pins)}
                _replace(version_flags_file(self.home, instance), json.dumps(document, indent=2))


def _depends_on(deployment: Deployment, instance: Instance, via_chaos: bool) -> list[str]:
    """What must be ready before an instance starts."""
    first_datastore = deployment.of("datastore")[0].name
    depends = {
        "datastore": [CHAOS_INSTANCE],
        "orders": ["nats", "postgres", first_datastore],
        "fulfillment": ["nats", "postgres"],
        "gateway": [inst.name for inst in deployment.of("orders")] + [first_datastore],
    }[instance.service]
    if via_chaos and instance.service != "datastore":  # its links run through the controller
        depends = [CHAOS_INSTANCE, *depends]
    return depends


def _infrastructure(topology: Topology, home: Path, ca_file: str | None) -> list[InstanceSpec]:
    """NATS, Postgres and the chaos controller, which the services depend on."""
    pg_data = home / "data" / "postgres"
    run_as = infra.postgres_run_as()
    scheme = topology.tls.scheme
    return [
        InstanceSpec(
            name="nats",
            service="nats",
            command=infra.nats_command(
                port=topology.nats_port,
                monitor_port=topology.nats_monitor_port,
                store_dir=home / "data" / "nats",
            ),
            port=topology.nats_port,
            readiness="tcp",
        ),
        InstanceSpec(
            name="postgres",
            service="postgres",
            command=infra.postgres_command(data_dir=pg_data, port=topology.postgres_port),
            port=topology.postgres_port,
            readiness="postgres",
            run_as_uid=run_as.uid,
            run_as_gid=run_as.gid,
            cwd=str(pg_data),
            stop_signal=2,  # SIGINT: Postgres "fast" shutdown, no waiting for clients
            databases=SERVICE_DATABASES,
        ),
        # Before the datastores: their Raft traffic runs through its link proxies.
        InstanceSpec(
            name=CHAOS_INSTANCE,
            service=CHAOS_INSTANCE,
            command=[
                sys.executable,
                "-m",
                "yardarm.chaos",
                "--config",
                str(write_chaos_config(topology, home)),
            ],
            port=topology.chaos_port,
            readiness="http",
            readiness_url=f"{scheme}://{LOOPBACK}:{topology.chaos_port}/readyz",
            readiness_ca_file=ca_file,
        ),
    ]


def _prometheus(
    topology: Topology, home: Path, ca_file: str | None, executable: str
) -> InstanceSpec:
    """The stack's Prometheus; it depends on nothing (a target that is down is data)."""
    config = prometheus.write_config(topology, home, ca_file)
    return InstanceSpec(
        name=prometheus.INSTANCE,
        service=prometheus.INSTANCE,
        command=prometheus.command(topology, home, config, executable),
        port=topology.prometheus_port,
        readiness="http",
        readiness_url=f"{prometheus.url(topology)}/-/ready",
    )


def instances(topology: Topology, home: Path) -> list[InstanceSpec]:
    """Every process of the stack's desired state (`<home>/desired.json` when it derives
    from this topology, else the topology's own), in dependency order.

    With `chaos.dependency_links` on, each client's URLs and DSNs name its own link
    proxies; readiness URLs always name the instance itself, so a cut link never looks
    like a dead process to the supervisor.
    """
    home = home.resolve()
    stored = read_desired(home)
    desired = current_for(topology, stored)
    if desired is not stored:
        write_desired(home, desired)
    planned = deployment_of(topology, desired)
    ports = track_ports(planned, read_ports(home))
    write_ports(home, ports)
    target = LocalTarget(planned, home, ports)
    target.write_version_flags()
    ca_file = None if target.certificates is None else str(target.certificates.ca_file)
    via_chaos = bool(target.via)
    scheme = topology.tls.scheme
    specs = _infrastructure(topology, home, ca_file)
    if topology.prometheus.enabled and (executable := prometheus.binary()) is not None:
        ports_of = {inst.name: target.port(inst) for inst in planned.instances}
        prometheus.write_targets(planned, home, ports_of)
        specs.append(_prometheus(topology, home, ca_file, executable))
    for inst in planned.instances:
        port = target.port(inst)
        probe_port = target.gateway_admin_port(inst) if inst.service == "gateway" else port
        specs.append(
            InstanceSpec(
                name=inst.name,
                service=inst.service,
                command=[sys.executable, "-m", f"yardarm_{inst.service}"],
                env=instance_settings(planned, inst, target),
                port=port,
                readiness="http",
                # Gateway replicas share the public port: each is probed on its admin port.
                readiness_url=f"{scheme}://{LOOPBACK}:{probe_port}/readyz",
                readiness_ca_file=ca_file,
                depends_on=_depends_on(planned, inst, via_chaos),
                version=inst.version,
                track=inst.track,
                upstream="orders" if inst.service == "orders" else None,
                endpoint=f"{scheme}://{LOOPBACK}:{port}" if inst.service == "orders" else None,
                disruption_group="datastore" if inst.service == "datastore" else None,
            )
        )
    specs.append(
        InstanceSpec(
            name=ROLLOUTS_INSTANCE,
            service=ROLLOUTS_INSTANCE,
            command=[sys.executable, "-m", "yardarm.local.rollout_controller", "--home", str(home)],
            port=topology.rollouts_port,
            readiness="http",
            readiness_url=f"{scheme}://{LOOPBACK}:{topology.rollouts_port}/readyz",
            readiness_ca_file=ca_file,
            # It writes the routing document and waits for every gateway to apply it.
            depends_on=[inst.name for inst in planned.of("gateway")],
        )
    )
    return specs


def rendered(topology: Topology, home: Path) -> tuple[list[InstanceSpec], int]:
    """The processes of the home's stack as it is desired now, and that desire's
    generation (what the supervisor reconciles to on SIGHUP)."""
    specs = instances(topology, home)
    desired = read_desired(home.resolve())
    return specs, 0 if desired is None else desired.generation


def routing_writer(topology: Topology, home: Path) -> RoutingWriter:
    """The control plane's writer of the home's stack's routing document."""
    from yardarm.routing_writer import RoutingWriter  # httpx: only the supervisor

    scheme = topology.tls.scheme
    certificates = StackCertificates(home) if topology.tls.enabled else None
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=str(certificates.ca_file)) if certificates else True
    )
    return RoutingWriter(
        [
            f"{scheme}://{LOOPBACK}:{topology.datastore_port(i)}"
            for i in range(topology.services.datastore.replicas)
        ],
        [
            f"{scheme}://{LOOPBACK}:{topology.gateway_admin_port(i)}"
            for i in range(topology.services.gateway.replicas)
        ],
        StackCredentials(home).token("admin"),
        verify=verify,
    )
