"""The local target's port plan and the chaos controller's link proxies.

Every port derives from the topology's base port (docs/architecture.md, "Ports"), so
stacks can run side by side. With `chaos.dependency_links`, each primary-track client
instance reaches each dependency through its own link proxy (base+200 upward), so one
connection can be cut, delayed or partitioned without touching the others.
"""

from __future__ import annotations

from collections.abc import Mapping

from yardarm.chaos.config import LinkConfig
from yardarm.model import (
    DEPENDENCY_LINK_OFFSET,
    Deployment,
    Instance,
    Topology,
    deployment,
    track_ports,
)

CHAOS_INSTANCE = "chaos"


def instance_port(topology: Topology, instance: Instance, ports: Mapping[str, int]) -> int:
    """Where an instance listens: its primary track's fixed port, else its track port."""
    if instance.primary:
        return topology.service_port(instance.service, instance.ordinal)
    return ports[instance.name]


def _dependencies(deployment: Deployment) -> list[tuple[str, list[tuple[str, int]]]]:
    """Each primary-track client instance with the instances it connects to and their
    real ports, in the order dependency link ports are handed out."""
    topology = deployment.topology

    def primaries(service: str) -> list[Instance]:
        return [inst for inst in deployment.of(service) if inst.primary]

    def port(inst: Instance) -> int:
        return topology.service_port(inst.service, inst.ordinal)

    datastores = [(inst.name, port(inst)) for inst in primaries("datastore")]
    orders = [(inst.name, port(inst)) for inst in primaries("orders")]
    infra_deps = [("postgres", topology.postgres_port), ("nats", topology.nats_port)]
    return (
        [(inst.name, datastores + infra_deps) for inst in primaries("orders")]
        + [(inst.name, infra_deps) for inst in primaries("fulfillment")]
        + [(inst.name, orders + datastores) for inst in primaries("gateway")]
    )


def dependency_links(topology: Topology) -> list[LinkConfig]:
    """One proxied link per (client instance, dependency instance) pair when the topology
    opts in (`chaos.dependency_links`), else none. Ports from base+200 upward. Each gateway
    replica gets its own links (`gateway-1->orders-0`), so one replica can be cut off."""
    if not topology.chaos.dependency_links:
        return []
    links: list[LinkConfig] = []
    first = topology.base_port + DEPENDENCY_LINK_OFFSET
    for src, targets in _dependencies(deployment(topology)):
        for dst, port in targets:
            listen = first + len(links)
            links.append(
                LinkConfig(
                    name=f"{src}->{dst}", src=src, dst=dst, listen_port=listen, target_port=port
                )
            )
    return links


def chaos_links(topology: Topology) -> list[LinkConfig]:
    """One proxied link per ordered pair of datastore replicas, then the dependency links."""
    count = topology.services.datastore.replicas
    raft = [
        LinkConfig(
            name=f"datastore-{i}->datastore-{j}",
            src=f"datastore-{i}",
            dst=f"datastore-{j}",
            listen_port=topology.link_port(i, j),
            target_port=topology.raft_port(j),
        )
        for i in range(count)
        for j in range(count)
        if i != j
    ]
    return raft + dependency_links(topology)


def port_plan(
    topology: Topology,
    planned: Deployment | None = None,
    recorded: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Every port the stack listens on, by what listens there (for the topology's own
    deployment unless another is given, with the track ports recorded for it)."""
    planned = planned or deployment(topology)
    ports = track_ports(planned, recorded or {})
    plan = {"gateway-0": topology.gateway_port, "gateway-admin": topology.admin_port}
    plan |= {
        f"gateway-admin-{inst.ordinal}": topology.gateway_admin_port(inst.ordinal)
        for inst in planned.of("gateway")
        if inst.ordinal > 0
    }
    plan |= {
        inst.name: instance_port(topology, inst, ports)
        for inst in planned.instances
        if inst.service != "gateway"
    }
    plan |= {
        "nats": topology.nats_port,
        "nats-monitor": topology.nats_monitor_port,
        "postgres": topology.postgres_port,
        CHAOS_INSTANCE: topology.chaos_port,
        "rollouts": topology.rollouts_port,
    }
    if topology.prometheus.enabled:
        plan["prometheus"] = topology.prometheus_port
    plan |= {
        f"{inst.name}-raft": topology.raft_port(inst.ordinal) for inst in planned.of("datastore")
    }
    plan |= {f"chaos link {link.name}": link.listen_port for link in chaos_links(topology)}
    return plan
