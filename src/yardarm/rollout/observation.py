"""The observation side of the rollout engine's effects (`yardarm.rollout.engine.Effects`:
`windows`, `sample`, `smoke`, `smoke_windows`), the same on every target.

Live traffic comes from Prometheus when the target has one, or else from scrapes of the
gateway replicas' and the service's instances' `/metrics` taken every sub-window; smoke
traffic goes through the gateway with a track header. A target says only where those are:
the `/metrics` URLs as they are now (instances come and go), and the gateway's URL and
the token its smoke requests carry.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping

from yardarm.rollout.metrics_source import PrometheusSource, ScrapeHistory, Subject
from yardarm.rollout.routes import ROUTES, SMOKE_PATHS, WATCHED
from yardarm.rollout.smoke import SmokeTraffic
from yardarm.rollout.window import TrackWindow


class TrafficObservation(ABC):
    """Each track's traffic over a window, live and smoke, for a target's effects to
    inherit; the target supplies `scrape_urls`, `smoke_gateway` and, if its endpoints
    need another CA than the system's, `client_verify`."""

    def __init__(
        self, *, prometheus_url: str | None, sub_window_s: float, smoke_rate: float
    ) -> None:
        self._sub_window_s = sub_window_s
        self._smoke_rate = smoke_rate
        self._prometheus = PrometheusSource(prometheus_url) if prometheus_url else None
        self._histories: dict[str, ScrapeHistory] = {}
        self._smoke: dict[str, SmokeTraffic] = {}

    @abstractmethod
    async def scrape_urls(self, service: str) -> list[str]:
        """The base URL of every gateway replica's `/metrics` and every instance of the
        service's, as they run now."""

    @abstractmethod
    def smoke_gateway(self) -> tuple[str, str]:
        """The gateway's base URL the smoke traffic goes to, and the token it carries."""

    def client_verify(self) -> ssl.SSLContext | bool:
        """How scrapes and smoke requests check the endpoints' certificates."""
        return True

    async def close(self) -> None:
        if self._prometheus is not None:
            self._prometheus.close()
        for history in self._histories.values():
            history.close()
        for smoke in self._smoke.values():
            await smoke.close()

    def now(self) -> float:
        return time.time()

    def _subject(self, service: str) -> Subject:
        return Subject(upstream=service, routes=ROUTES.get(service, ()), tracks=WATCHED)

    def history(self, service: str) -> ScrapeHistory:
        """Without Prometheus: the scrapes a caller takes every sub-window."""
        if service not in self._histories:
            self._histories[service] = ScrapeHistory(
                self._subject(service), [], self.client_verify()
            )
        return self._histories[service]

    async def sample(self, service: str) -> None:
        if self._prometheus is None:
            history = self.history(service)
            history.urls = await self.scrape_urls(service)  # instances come and go
            await asyncio.to_thread(history.scrape)

    async def windows(
        self, service: str, start: float, end: float, tracks: tuple[str, ...]
    ) -> Mapping[str, TrackWindow]:
        if self._prometheus is not None:
            found = await asyncio.to_thread(
                self._prometheus.windows, self._subject(service), start, end, self._sub_window_s
            )
        else:
            await self.sample(service)
            found = self.history(service).windows(start, end)
        return {track: found[track] for track in tracks}

    async def smoke(self, service: str, tracks: tuple[str, ...]) -> None:
        if not tracks and service not in self._smoke:
            return
        if service not in self._smoke:
            url, token = self.smoke_gateway()
            self._smoke[service] = SmokeTraffic(
                url,
                token,
                lambda: SMOKE_PATHS,
                rate=self._smoke_rate,
                verify=self.client_verify(),
            )
        await self._smoke[service].send_to(tracks)

    def smoke_windows(
        self, service: str, start: float, end: float, tracks: tuple[str, ...]
    ) -> Mapping[str, TrackWindow]:
        smoke = self._smoke.get(service)
        return {
            track: smoke.window(track, start, end, self._sub_window_s)
            if smoke is not None
            else TrackWindow(track=track, requests=0, errors=0)
            for track in tracks
        }
