"""The rollout engine's effects on the local target: tracks through the supervisor's
desired state (`yardarm scale`'s path, so a scale and a rollout never lose each other's
change), traffic through the routing document, windows from the stack's Prometheus or
from scrapes of every instance.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from pathlib import Path

from yardarm.credentials import StackCredentials
from yardarm.local import control
from yardarm.local.desired import read_desired, read_topology
from yardarm.local.render import routing_writer
from yardarm.model import ScaleError, current_for
from yardarm.rollout.engine import EffectFailed
from yardarm.rollout.observation import TrafficObservation
from yardarm.rollout.routes import APPLIED_WITHIN_S, ROUTES
from yardarm.rollout.spec import sticky_key
from yardarm.routing_writer import KEEP


class LocalEffects(TrafficObservation):
    """`yardarm.rollout.engine.Effects` for a stack the local supervisor runs."""

    def __init__(
        self,
        home: Path,
        sub_window_s: float = 2.0,
        timeout_s: float = 180.0,
        smoke_rate: float = 20.0,
    ) -> None:
        self.home = home.resolve()
        topology = read_topology(self.home)
        if topology is None:
            raise control.ScaleFailedError(f"no stack has run from {self.home}")
        self.topology = topology
        self._writer = routing_writer(topology, self.home)
        self._timeout_s = timeout_s
        super().__init__(
            prometheus_url=control.prometheus_url(self.home),
            sub_window_s=sub_window_s,
            smoke_rate=smoke_rate,
        )

    def _tracks(self, service: str) -> dict[str, tuple[str, int]]:
        desired = current_for(self.topology, read_desired(self.home))
        return {
            track: (spec.version, spec.replicas)
            for track, spec in desired.services.get(service, {}).items()
        }

    async def _scale(self, service: str, track: str, version: str, replicas: int) -> None:
        try:
            state = await asyncio.to_thread(
                control.scale_stack,
                self.home,
                service,
                replicas,
                track=track,
                version=version,
                timeout=self._timeout_s,
            )
        except (control.ScaleFailedError, ScaleError) as exc:
            raise EffectFailed(f"{service} on {track} at {version}: {exc}") from exc
        if state.reconcile_error:
            raise EffectFailed(
                f"{service} on {track} at {version}: {state.reconcile_error} (see `yardarm logs`)"
            )

    async def ensure_tracks(self, service: str, tracks: Mapping[str, tuple[str, int]]) -> None:
        current = self._tracks(service)
        for track, (version, replicas) in tracks.items():
            if current.get(track) != (version, replicas):
                await self._scale(service, track, version, replicas)

    async def stop_tracks(self, service: str, tracks: tuple[str, ...]) -> None:
        current = self._tracks(service)
        for track in tracks:
            if track in current and current[track][1] > 0:
                await self._scale(service, track, current[track][0], 0)

    def _primary(self, service: str) -> tuple[str, str, int]:
        """The service's primary track: (name, version, replicas), as desired now."""
        track = self.topology.services.spec(service).track
        version, replicas = self._tracks(service)[track]
        return track, version, replicas

    def replicas(self, service: str) -> int:
        return self._primary(service)[2]

    def stable_version(self, service: str) -> str:
        """What the service's primary track runs now."""
        return self._primary(service)[1]

    async def promote(self, service: str, version: str) -> None:
        primary, current_version, replicas = self._primary(service)
        if current_version != version:
            await self._scale(service, primary, version, replicas)

    async def set_weights(
        self, service: str, weights: Mapping[str, int], sticky: str | None = None
    ) -> None:
        key = KEEP if sticky is None else sticky_key(sticky) if sticky else None
        version = await self._writer.set_splits(ROUTES[service], dict(weights), sticky=key)
        await self._writer.wait_applied(version, APPLIED_WITHIN_S)

    async def scrape_urls(self, service: str) -> list[str]:
        return control.metrics_urls(self.home)

    def smoke_gateway(self) -> tuple[str, str]:
        url = control.gateway_url(self.home)
        if url is None:
            raise control.ScaleFailedError(f"no gateway runs from {self.home}")
        return url, StackCredentials(self.home).token("admin")

    def client_verify(self) -> ssl.SSLContext | bool:
        return control.stack_ssl(self.home) or True
