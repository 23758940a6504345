"""Smoke traffic for blue-green: the same read-only requests sent through the gateway to
each named track (the `x-yardarm-track` override, with the admin token), measured where
they are sent.

Green takes no user traffic before the switch, so its pre-promotion analysis needs
traffic of its own; sending the same requests at the same rate to stable as well gives
the judge a like-for-like reference (Kayenta's practice: compare what saw the same
traffic), which live traffic of a different mix would not be. After the switch, blue
(stable) takes no user traffic, so the comparison goes on the same way while green's
live traffic is held to the guardrails.

Target-agnostic: a target gives the gateway's URL, the admin token and the paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from yardarm.rollout import stats
from yardarm.rollout.window import TrackWindow

log = logging.getLogger("yardarm.rollout")

TRACK_HEADER = "x-yardarm-track"
TOKEN_HEADER = "x-yardarm-admin-token"
MAX_SAMPLES = 200_000  # per track: hours of smoke at the default rate
QUANTILES = (0.5, 0.9)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    ok: bool
    latency_s: float


class SmokeTraffic:
    """Sends `rate` requests per second to each track it is told to, until told otherwise.

    `paths()` gives the paths to cycle through (read-only requests: a smoke test must not
    change what users see). A request fails when it is answered 5xx or not at all; 4xx
    answers (an unknown order id) are the service working as it should.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        paths: Callable[[], Sequence[str]],
        *,
        rate: float = 20.0,
        timeout_s: float = 5.0,
        verify: Any = True,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._token = token
        self._paths = paths
        self._rate = rate
        self._timeout_s = timeout_s
        self._verify = verify
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._samples: dict[str, deque[Sample]] = {}
        self._client: httpx.AsyncClient | None = None

    @property
    def tracks(self) -> tuple[str, ...]:
        return tuple(sorted(self._tasks))

    async def send_to(self, tracks: Sequence[str]) -> None:
        """Smoke exactly `tracks` from now on (idempotent: a running track goes on)."""
        for track in [t for t in self._tasks if t not in tracks]:
            await self._stop(track)
        for track in tracks:
            if track not in self._tasks:
                self._samples.setdefault(track, deque(maxlen=MAX_SAMPLES))
                self._tasks[track] = asyncio.create_task(self._run(track), name=f"smoke {track}")

    async def close(self) -> None:
        await self.send_to(())
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _stop(self, track: str) -> None:
        task = self._tasks.pop(track)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self._base, timeout=self._timeout_s, verify=self._verify
            )
        return self._client

    async def _run(self, track: str) -> None:
        """One track's requests, paced from a fixed schedule (a slow answer does not
        lower the rate: requests overlap, bounded by the timeout)."""
        interval = 1.0 / self._rate
        headers = {TRACK_HEADER: track, TOKEN_HEADER: self._token}
        pending: set[asyncio.Task[None]] = set()
        sent = 0
        started = time.monotonic()
        try:
            while True:
                paths = self._paths()
                if paths:
                    path = paths[sent % len(paths)]
                    task = asyncio.create_task(self._one(track, path, headers))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                sent += 1
                delay = started + sent * interval - time.monotonic()
                await asyncio.sleep(max(0.0, delay))
        finally:
            for task in pending:
                task.cancel()

    async def _one(self, track: str, path: str, headers: dict[str, str]) -> None:
        began = time.monotonic()
        try:
            response = await self._http().get(path, headers=headers)
            ok = response.status_code < 500
        except httpx.HTTPError as exc:
            log.debug("smoke request to %s failed: %s", track, exc)
            ok = False
        self._samples[track].append(Sample(time.time(), ok, time.monotonic() - began))

    def window(self, track: str, start: float, end: float, sub_window_s: float) -> TrackWindow:
        """What the track's smoke requests got over [start, end]: requests, failures and
        latency points (the p50 and p90 of each sub-window, as the live windows have)."""
        samples = [s for s in self._samples.get(track, ()) if start <= s.at <= end]
        points: list[float] = []
        if samples and sub_window_s > 0:
            buckets: dict[int, list[float]] = {}
            for sample in samples:
                if sample.ok:
                    buckets.setdefault(math.floor((sample.at - start) / sub_window_s), []).append(
                        sample.latency_s
                    )
            for latencies in buckets.values():
                points.extend(stats.quantile(latencies, q) for q in QUANTILES)
        return TrackWindow(
            track=track,
            requests=len(samples),
            errors=sum(1 for s in samples if not s.ok),
            latency_points=tuple(points),
        )
