"""The chaos controller's response documents, as models: its OpenAPI document says
exactly what `GET /faults` and `POST /faults` answer."""

from __future__ import annotations

from pydantic import BaseModel

from yardarm.chaos.proxy import LinkState


class LinkDocument(LinkState):
    """A link's settings and counters (the proxy's `LinkState`) and its two ends."""

    src: str
    dst: str


class InstancePid(BaseModel):
    instance: str
    pid: int


class FaultCount(BaseModel):
    action: str
    target: str
    count: int


class Targets(BaseModel):
    """What a fault may name: link targets and process targets (`all` first)."""

    links: list[str]
    processes: list[str]


class FaultsState(BaseModel):
    """`GET /faults`: links, paused instances and how many faults of each kind."""

    links: list[LinkDocument]
    paused: list[InstancePid]
    faults: list[FaultCount]
    total: int
    targets: Targets


class AppliedFault(BaseModel):
    """The fault as applied, and what it reached: links, or instances with their pids."""

    action: str
    target: str
    peer: str | None = None
    ms: int | None = None
    jitter_ms: int | None = None
    links: list[str] | None = None
    instances: list[InstancePid] | None = None


class FaultsApplied(FaultsState):
    """`POST /faults`: the applied fault and the state after it."""

    applied: AppliedFault
