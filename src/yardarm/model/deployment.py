"""Instances: which copies of which service run, on which track, at which version.

An instance is (service, track, ordinal) with a version. The primary track's instances
keep the names they always had (`orders-0`); another track's carry it (`orders-canary-0`).
A `Deployment` is the topology plus the instances it runs: every renderer and every
target works from one.
"""

from __future__ import annotations

from dataclasses import dataclass

from yardarm.model.specs import Topology


@dataclass(frozen=True, slots=True)
class Instance:
    """One copy of a service: who it is, never where it runs."""

    service: str
    track: str
    ordinal: int
    version: str
    primary: bool = True  # on its service's primary track

    @property
    def name(self) -> str:
        if self.primary:
            return f"{self.service}-{self.ordinal}"
        return f"{self.service}-{self.track}-{self.ordinal}"


@dataclass(frozen=True)
class Deployment:
    """The topology and the instances it runs, in dependency order."""

    topology: Topology
    instances: tuple[Instance, ...]

    def of(self, service: str, track: str | None = None) -> list[Instance]:
        """The instances of a service (on one track, when given)."""
        return [
            inst
            for inst in self.instances
            if inst.service == service and (track is None or inst.track == track)
        ]

    def named(self, name: str) -> Instance:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(name)
