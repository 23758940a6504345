"""Active health checks: probe every endpoint on a schedule, with thresholds.

An endpoint turns unhealthy after `unhealthy_threshold` failed probes in a row and
healthy again after `healthy_threshold` good ones, as in Envoy, so one slow probe
does not flap it. At start every endpoint is probed once before the gateway opens its
listener; an endpoint that passes that first probe is healthy at once. Probes use a
plain, untraced session so health polling does not flood the trace store.

Every passing probe of a healthy endpoint is reported with the time the probe began, so
outlier detection can end an ejection the endpoint has recovered from.

Endpoints come and go with the routing document: each round probes the upstream's
endpoints as they are when it starts. One that joins after the first round is healthy
at once (the control plane publishes only instances that passed readiness) and the
thresholds apply to it from then on; one that leaves is no longer probed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence

import aiohttp
from yardarm_kit.gateway_policy import HealthConfig
from yardarm_kit.lifecycle import cancel_task

from yardarm_gateway.endpoints import Endpoint

log = logging.getLogger(__name__)


Change = Callable[[Endpoint, bool], None]
"""Called as (endpoint, healthy) when an endpoint's verdict changes."""
Pass = Callable[[Endpoint, float, float], None]
"""Called as (endpoint, loop time the probe began, loop time now) for each passing probe of
an endpoint whose verdict is healthy."""


class HealthTracker:
    """The health verdict per endpoint, from the stream of probe results.

    `on_change` lets the upstream's routing state follow the verdicts.
    """

    def __init__(
        self,
        config: HealthConfig,
        endpoints: Sequence[Endpoint],
        on_change: Change | None = None,
    ) -> None:
        self.config = config
        self._on_change = on_change
        # Healthy until probed: the first probe round runs before the listener opens.
        self._healthy = dict.fromkeys(endpoints, True)
        self._streak = dict.fromkeys(endpoints, 0)  # >0 successes in a row, <0 failures
        self._probed: set[Endpoint] = set()
        self.settled = False
        """Set once the first probe round is over: endpoints added later skip the
        first-probe rule."""

    def is_healthy(self, endpoint: Endpoint) -> bool:
        return not self.config.enabled or self._healthy[endpoint]

    def knows(self, endpoint: Endpoint) -> bool:
        return endpoint in self._healthy

    def add(self, endpoint: Endpoint) -> None:
        """A new endpoint (or one back from draining), healthy with a fresh streak.

        Before the first round it waits for its first probe like the others; after it,
        it was published ready, so only `unhealthy_threshold` failures turn it unhealthy.
        """
        self._healthy[endpoint] = True
        self._streak[endpoint] = 0
        if self.settled:
            self._probed.add(endpoint)
        else:
            self._probed.discard(endpoint)

    def remove(self, endpoint: Endpoint) -> None:
        self._healthy.pop(endpoint, None)
        self._streak.pop(endpoint, None)
        self._probed.discard(endpoint)

    def record(self, endpoint: Endpoint, ok: bool) -> bool:
        """Apply one probe result; True when the verdict changed."""
        first = endpoint not in self._probed
        self._probed.add(endpoint)
        streak = self._streak[endpoint]
        streak = (max(streak, 0) + 1) if ok else (min(streak, 0) - 1)
        self._streak[endpoint] = streak
        was = self._healthy[endpoint]
        if first:
            now = ok  # the first probe decides: do not route to what never answered
        elif was:
            now = -streak < self.config.unhealthy_threshold
        else:
            now = streak >= self.config.healthy_threshold
        self._healthy[endpoint] = now
        if now == was:
            return False
        if self._on_change is not None:
            self._on_change(endpoint, now)
        return True

    def snapshot(self, endpoint: Endpoint) -> dict[str, object]:
        return {"healthy": self.is_healthy(endpoint), "streak": self._streak[endpoint]}


class HealthChecker:
    """Runs the probe loop of one upstream's endpoints."""

    def __init__(
        self,
        name: str,
        tracker: HealthTracker,
        endpoints: Callable[[], Iterable[Endpoint]],
        on_change: Change | None = None,
        on_pass: Pass | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`endpoints` gives the endpoints to probe now (read at the start of each round)."""
        self.name = name
        self._ssl = ssl_context
        self.tracker = tracker
        self._endpoints = endpoints
        self._on_change = on_change
        self._on_pass = on_pass
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def config(self) -> HealthConfig:
        return self.tracker.config

    async def start(self) -> None:
        """Probe once (bounded by the probe timeout), then keep probing in the background."""
        if not self.config.enabled:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            connector=aiohttp.TCPConnector(force_close=True, ssl=self._ssl or True),
        )
        await self.probe_once()
        self.tracker.settled = True
        self._task = asyncio.create_task(self._loop(), name=f"health-{self.name}")

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe_once(self) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        endpoints = tuple(self._endpoints())
        results = await asyncio.gather(*(self._probe(e) for e in endpoints))
        now = loop.time()
        for endpoint, ok in zip(endpoints, results, strict=True):
            if endpoint.draining or not self.tracker.knows(endpoint):
                continue  # it left the routing document during the round
            changed = self.tracker.record(endpoint, ok)
            healthy = self.tracker.is_healthy(endpoint)
            if changed:
                (log.info if healthy else log.warning)(
                    "endpoint %s", "healthy" if healthy else "unhealthy",
                    extra={"upstream": self.name, "endpoint": endpoint.url,
                           "track": endpoint.track, "event": "health_change"},
                )  # fmt: skip
                if self._on_change is not None:
                    self._on_change(endpoint, healthy)
            if ok and healthy and self._on_pass is not None:
                self._on_pass(endpoint, began, now)

    async def _probe(self, endpoint: Endpoint) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(
                endpoint.url + self.config.path, allow_redirects=False
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return False

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                await self.probe_once()
            except Exception:  # a bug in one round must not end probing for good
                log.exception("health check round failed", extra={"upstream": self.name})
