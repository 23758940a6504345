"""The desired state: how many instances of each version run on each track, now.

It starts as the topology says and then changes live (`yardarm scale`), like a
Deployment's replica count after `kubectl scale`: the topology is what a stack is made
of, the desired state what it should run at this moment. It remembers the topology it
came from (`source`), so a changed `yardarm.yaml` starts over from the file rather than
being silently overridden by an older scale.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field
from yardarm_kit.identity import TRACKS

from yardarm.model.deployment import Deployment, Instance
from yardarm.model.specs import MAX_REPLICAS, ROLLABLE, SERVICE_NAMES, Topology, TrackSpec

DESIRED_FORMAT = 1


class DesiredState(BaseModel):
    """Replicas and version per service and track (`services[svc][track]`)."""

    model_config = ConfigDict(extra="forbid")

    format: int = DESIRED_FORMAT
    source: str
    generation: int = Field(default=0, ge=0)
    services: dict[str, dict[str, TrackSpec]]


class ScaleError(ValueError):
    """A scale request the model refuses; the message says what to do instead."""


def fingerprint(topology: Topology) -> str:
    """What of the topology the desired state derives from (its services), hashed."""
    text = topology.services.model_dump_json()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def desired_from(topology: Topology) -> DesiredState:
    """The desired state the topology starts with."""
    return DesiredState(
        source=fingerprint(topology),
        services={name: dict(topology.services.spec(name).tracks_of()) for name in SERVICE_NAMES},
    )


def current_for(topology: Topology, stored: DesiredState | None) -> DesiredState:
    """The stored state when it derives from this topology, else the topology's own."""
    if stored is not None and stored.source == fingerprint(topology):
        return stored
    return desired_from(topology)


def scaled(
    topology: Topology,
    desired: DesiredState,
    service: str,
    replicas: int,
    track: str | None = None,
    version: str | None = None,
) -> DesiredState:
    """`desired` with `service`'s `track` (its primary one by default) at `replicas`
    instances of `version` (the track's current version, else the primary one's).

    Only the services that can run several instances without a membership change
    scale live (orders, fulfillment); 0 replicas on another track removes that track.
    The gateway and the datastore change only their primary track's version, at the
    replica count they run (a rolling restart: the supervisor replaces one replica at a
    time in place).
    """
    if service not in ROLLABLE and not _restart_only(topology, desired, service, replicas, track):
        why = {
            "datastore": "its replicas form a Raft group: membership changes, one replica at "
            "a time, go through `POST /raft/members` (a new version at the same count rolls "
            "through its replicas one at a time)",
            "gateway": "its replicas share the public port; set services.gateway.replicas in "
            "yardarm.yaml and restart (a new version at the same count rolls through its "
            "replicas one at a time)",
        }.get(service, f"there is no such service (services: {', '.join(SERVICE_NAMES)})")
        raise ScaleError(f"{service} does not scale live: {why}")
    spec = topology.services.spec(service)
    track = track or spec.track
    if track not in TRACKS:
        raise ScaleError(f"unknown track {track!r} (tracks: {', '.join(TRACKS)})")
    tracks = dict(desired.services.get(service, {}))
    primary = track == spec.track
    if not 0 <= replicas <= MAX_REPLICAS or (primary and replicas < 1):
        low = 1 if primary else 0
        raise ScaleError(
            f"{service} on track {track}: replicas must be between {low} and {MAX_REPLICAS} "
            f"(got {replicas})"
            + ("; the primary track keeps at least one" if primary and replicas < 1 else "")
        )
    chosen = version or (tracks[track].version if track in tracks else spec.version)
    if chosen not in spec.declared():
        raise ScaleError(
            f"{service} has no version {chosen!r} (declared: {', '.join(spec.declared())}); "
            "declare it under services."
            f"{service}.versions in yardarm.yaml"
        )
    if replicas == 0:
        tracks.pop(track, None)
    else:
        tracks[track] = TrackSpec(replicas=replicas, version=chosen)
    services = {**desired.services, service: tracks}
    return desired.model_copy(update={"services": services, "generation": desired.generation + 1})


def _restart_only(
    topology: Topology, desired: DesiredState, service: str, replicas: int, track: str | None
) -> bool:
    """Whether a change of the gateway or the datastore keeps its primary track's replica
    count (only its version may change: a rolling restart)."""
    if service not in SERVICE_NAMES:
        return False
    spec = topology.services.spec(service)
    placed = desired.services.get(service, {}).get(spec.track)
    return track in (None, spec.track) and placed is not None and placed.replicas == replicas


def deployment_of(topology: Topology, desired: DesiredState) -> Deployment:
    """The instances a desired state runs, in dependency order, primary tracks first."""
    found: list[Instance] = []
    for service in SERVICE_NAMES:
        spec = topology.services.spec(service)
        tracks = desired.services.get(service, {})
        ordered = sorted(tracks.items(), key=lambda item: item[0] != spec.track)
        for track, placed in ordered:
            primary = track == spec.track
            found.extend(
                Instance(service, track, ordinal, placed.version, primary)
                for ordinal in range(placed.replicas)
            )
    return Deployment(topology, tuple(found))


def deployment(topology: Topology) -> Deployment:
    """The instances the topology starts with: each service's tracks, primary first."""
    return deployment_of(topology, desired_from(topology))
