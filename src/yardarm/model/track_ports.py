"""Ports for instances off their service's primary track, the same on every target
that gives each instance a port of its own (the local target, bare metal)."""

from __future__ import annotations

from collections.abc import Mapping

from yardarm.model.deployment import Deployment


def track_ports(deployment: Deployment, recorded: Mapping[str, int]) -> dict[str, int]:
    """A port for every instance off its service's primary track: the one it was given
    before (`recorded`), else the lowest of the topology's track range no instance holds.

    A name keeps its port for the life of the stack's home; records of instances that no
    longer run are only taken back when the range is full.
    """
    wanted = [inst.name for inst in deployment.instances if not inst.primary]
    assigned = dict(recorded)
    for name in wanted:
        if name in assigned:
            continue
        taken = set(assigned.values())
        free = [port for port in deployment.topology.track_ports if port not in taken]
        if not free:
            for stale in [n for n in assigned if n not in wanted]:
                del assigned[stale]
            taken = set(assigned.values())
            free = [port for port in deployment.topology.track_ports if port not in taken]
        if not free:
            raise ValueError(
                f"no port left for {name}: at most {len(deployment.topology.track_ports)} "
                "instances run off their primary track"
            )
        assigned[name] = free[0]
    return assigned
