"""Active health checks against real HTTP servers, and what a passing one does to an ejection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from yardarm_gateway.endpoints import Endpoint
from yardarm_gateway.health import HealthChecker
from yardarm_gateway.settings import UpstreamSpec
from yardarm_gateway.upstreams import ALL_TRACKS, Upstream

StartBackend = Callable[..., Awaitable[str]]
SLOW_PROBES = {"interval_s": 300.0}  # the background loop stays asleep; rounds are driven


def readiness_app(state: dict[str, int]) -> web.Application:
    """Answers /readyz with state["status"] and everything else with 200."""

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(status=state["status"])

    async def work(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", work)
    return app


@pytest.fixture
async def checkers() -> AsyncIterator[list[HealthChecker]]:
    started: list[HealthChecker] = []
    yield started
    for checker in started:
        await checker.stop()


async def upstream_with_checker(
    urls: list[str], checkers: list[HealthChecker], **policy: Any
) -> tuple[Upstream, HealthChecker, list[tuple[Endpoint, float, float]]]:
    spec = UpstreamSpec.model_validate({"endpoints": urls, "health": SLOW_PROBES, **policy})
    up = Upstream("svc", spec, now=0.0)
    passes: list[tuple[Endpoint, float, float]] = []

    def on_pass(endpoint: Endpoint, probed_at: float, now: float) -> None:
        passes.append((endpoint, probed_at, now))
        up.health_check_passed(endpoint, probed_at, now)

    checker = HealthChecker("svc", up.health, lambda: up.endpoints, on_pass=on_pass)
    checkers.append(checker)
    await checker.start()  # the first round
    return up, checker, passes


def eject(up: Upstream, endpoint: Endpoint, now: float) -> None:
    for _ in range(up.spec.outlier.consecutive_gateway_failure):
        up.outlier.record(endpoint, None, now)
    assert up.outlier.is_ejected(endpoint, now)


async def test_a_passing_health_check_returns_an_ejected_endpoint_long_before_its_time(
    start_backend: StartBackend, checkers: list[HealthChecker]
) -> None:
    urls = [await start_backend(readiness_app({"status": 200})) for _ in range(2)]
    up, checker, _ = await upstream_with_checker(urls, checkers)
    a, b = up.endpoints
    loop = asyncio.get_running_loop()
    ejected_at = loop.time()
    eject(up, a, ejected_at)  # out for the base ejection time, 30 s
    pool = up.pools[ALL_TRACKS]
    assert {up.pick(pool, None, loop.time(), []) for _ in range(4)} == {b}

    await checker.probe_once()
    now = loop.time()
    assert now - ejected_at < up.spec.outlier.base_ejection_time_s
    assert not up.outlier.is_ejected(a, now)
    assert up.outlier.snapshot(a, now)["ejections"] == 1  # the next ejection lasts longer
    assert {up.pick(pool, None, now, []) for _ in range(4)} == {a, b}


async def test_an_ejected_endpoint_stays_out_while_its_health_check_fails(
    start_backend: StartBackend, checkers: list[HealthChecker]
) -> None:
    state = {"status": 200}
    urls = [
        await start_backend(readiness_app(state)),
        await start_backend(readiness_app({"status": 200})),
    ]
    up, checker, passes = await upstream_with_checker(urls, checkers)
    a, _ = up.endpoints
    state["status"] = 503
    eject(up, a, asyncio.get_running_loop().time())
    for _ in range(3):
        await checker.probe_once()
    assert not up.health.is_healthy(a)
    assert up.outlier.ejected(a)
    # Recovery takes healthy_threshold passing probes; only a healthy verdict returns it.
    state["status"] = 200
    passes.clear()
    await checker.probe_once()
    assert up.outlier.ejected(a)
    assert [endpoint for endpoint, _, _ in passes] == [up.endpoints[1]]
    await checker.probe_once()
    assert not up.outlier.ejected(a)
    assert a in [endpoint for endpoint, _, _ in passes]
    assert all(probed_at <= now for _, probed_at, now in passes)


async def test_with_uneject_on_health_check_off_a_passing_check_leaves_the_ejection(
    start_backend: StartBackend, checkers: list[HealthChecker]
) -> None:
    urls = [await start_backend(readiness_app({"status": 200})) for _ in range(2)]
    up, checker, passes = await upstream_with_checker(
        urls, checkers, outlier={"successful_active_health_check_uneject_host": False}
    )
    a, _ = up.endpoints
    eject(up, a, asyncio.get_running_loop().time())
    await checker.probe_once()
    assert a in [endpoint for endpoint, _, _ in passes]  # it passed ...
    assert up.outlier.is_ejected(a, asyncio.get_running_loop().time())  # ... and stays out


async def test_a_health_check_never_ends_an_admins_ejection(
    start_backend: StartBackend, checkers: list[HealthChecker]
) -> None:
    urls = [await start_backend(readiness_app({"status": 200})) for _ in range(2)]
    up, checker, _ = await upstream_with_checker(urls, checkers)
    a, _ = up.endpoints
    loop = asyncio.get_running_loop()
    assert up.outlier.eject(a, loop.time(), duration_s=60.0, reason="admin: maintenance")
    await checker.probe_once()
    assert up.outlier.is_ejected(a, loop.time())
