"""Background probing of every upstream endpoint's /readyz.

Requests never wait for a probe: the loop refreshes `Upstream.ready` on its own
schedule and the gateway's readiness check only reads it. Probes use a plain,
untraced HTTP session so health polling does not flood the trace store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import aiohttp

from yardarm_gateway.upstreams import Upstream

log = logging.getLogger(__name__)


class ReadinessProbe:
    """Probes each endpoint every `interval_s`, each probe bounded by `timeout_s`."""

    def __init__(
        self, upstreams: Mapping[str, Upstream], *, interval_s: float, timeout_s: float
    ) -> None:
        self._upstreams = upstreams
        self._interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def not_ready(self) -> list[str]:
        """Upstreams with no endpoint that answered its last probe."""
        return sorted(name for name, upstream in self._upstreams.items() if not upstream.ready)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._task = asyncio.create_task(self._loop(), name="upstream-readiness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe_once(self) -> None:
        """Probe all endpoints concurrently and record which answered 200."""
        checks = [
            (upstream, endpoint)
            for upstream in self._upstreams.values()
            for endpoint in upstream.endpoints
        ]
        results = await asyncio.gather(*(self._probe(endpoint) for _, endpoint in checks))
        for (upstream, endpoint), ok in zip(checks, results, strict=True):
            if ok:
                if endpoint not in upstream.ready:
                    log.info(
                        "endpoint ready", extra={"upstream": upstream.name, "endpoint": endpoint}
                    )
                upstream.ready.add(endpoint)
            elif endpoint in upstream.ready:
                log.warning(
                    "endpoint not ready", extra={"upstream": upstream.name, "endpoint": endpoint}
                )
                upstream.ready.discard(endpoint)

    async def _probe(self, endpoint: str) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(f"{endpoint}/readyz", allow_redirects=False) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return False

    async def _loop(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception:  # a bug in one round must not end probing for good
                log.exception("readiness probe round failed")
            await asyncio.sleep(self._interval_s)
