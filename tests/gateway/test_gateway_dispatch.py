"""One attempt's bookkeeping when the request is cancelled mid-flight."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from opentelemetry import trace
from yardarm_gateway.dispatch import Dispatcher
from yardarm_gateway.settings import UpstreamSpec
from yardarm_gateway.telemetry import GatewayTelemetry
from yardarm_gateway.upstream_client import UpstreamPool
from yardarm_gateway.upstreams import Upstream
from yardarm_kit.metrics import Metrics
from yardarm_kit.settings import ServiceSettings

StartBackend = Callable[..., Awaitable[str]]


async def test_a_cancelled_attempt_gives_its_half_open_permit_back(
    start_backend: StartBackend, tmp_path: Path
) -> None:
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    url = await start_backend(app)
    breaker = {"window_size": 1, "minimum_calls": 1, "wait_in_open_s": 1.0,
               "permitted_calls_in_half_open": 1}  # fmt: skip
    spec = UpstreamSpec.model_validate({"endpoints": [url], "breaker": breaker})
    upstream = Upstream("svc", spec, now=0.0)
    endpoint = upstream.endpoints[0]
    circuit = upstream.breakers[endpoint]
    loop = asyncio.get_running_loop()
    now = loop.time()
    assert circuit.try_acquire(now)
    circuit.record(now, 0.0, failed=True)
    assert circuit.state == "open"
    later = now + 2.0
    assert circuit.try_acquire(later)  # the one half-open trial
    assert not circuit.try_acquire(later)

    settings = ServiceSettings(service="gateway", port=1, state_dir=tmp_path)
    dispatcher = Dispatcher(GatewayTelemetry(Metrics(settings)), trace.NoOpTracer())
    dispatcher.pool = UpstreamPool()
    async with aiohttp.ClientSession() as session:
        dispatcher.session = session
        attempt = asyncio.create_task(
            dispatcher.send("GET", endpoint, "/x", b"", {}, 10.0, upstream)
        )
        await asyncio.sleep(0.2)
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
    await dispatcher.pool.close()
    assert endpoint.active == 0
    assert circuit.try_acquire(later)  # the trial's permit came back: no stuck half-open
