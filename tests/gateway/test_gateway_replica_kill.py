"""One replica of two SIGKILLed under load: no client may see a failure.

The gateway runs as users get it (default health checks, outlier detection, breakers,
retries and budget) in front of two backend processes. Eight clients in a closed loop
send reads and keyed writes (POST with Idempotency-Key, as orders' POST /orders always
is) and never retry themselves. Requests the killed replica held when it died are
retried under the budget; those sent its way afterwards meet a refused connection and
are re-routed at once. Both must reach the survivor.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.gateway.processes import Backends, metric_sum, scrape

StartGateway = Callable[..., Awaitable[Any]]

CLIENTS = 8
RUN_S = 5.0
KILL_AT_S = 1.5
LATENCY_MS = 20  # so a few requests are always in flight on each replica


async def closed_loop(
    session: aiohttp.ClientSession, url: str, until: float, outcomes: list[tuple[float, str, int]]
) -> None:
    """One client: alternately GET an order and POST one with a fresh key, until `until`."""
    n = 0
    while time.monotonic() < until:
        n += 1
        if n % 2:
            method, target, kwargs = "GET", f"{url}/api/orders/{n}", {}
        else:
            key = {"Idempotency-Key": str(uuid.uuid4())}
            method, target = "POST", f"{url}/api/orders"
            kwargs = {"json": {"items": [{"sku": "rope-10m", "quantity": 1}]}, "headers": key}
        try:
            async with session.request(method, target, **kwargs) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        outcomes.append((time.monotonic(), method, status))


@pytest.mark.parametrize("upstream_http", ["native", "aiohttp"])
async def test_a_replica_killed_under_load_fails_no_read_and_no_keyed_write(
    start_gateway: StartGateway, backends: Backends, upstream_http: str
) -> None:
    a, b = await backends("a", "b")
    gw = await start_gateway(
        [{"prefix": "/api/orders", "upstream": "orders"}],
        {"orders": [a.url, b.url]},
        upstream_http=upstream_http,
    )
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    outcomes: list[tuple[float, str, int]] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        session._retry_connection = False  # aiohttp resends idempotent requests otherwise
        for backend in (a, b):
            await backend.control(session, latency_ms=LATENCY_MS)
        started = time.monotonic()
        clients = [
            asyncio.create_task(closed_loop(session, gw.url, started + RUN_S, outcomes))
            for _ in range(CLIENTS)
        ]
        await asyncio.sleep(KILL_AT_S)
        before = (await a.control(session))["requests"], (await b.control(session))["requests"]
        killed_at = time.monotonic()
        b.kill()
        await asyncio.gather(*clients)
        served_by_a = (await a.control(session))["requests"] - before[0]
        samples = await scrape(session, gw.url)

    after_kill = [o for o in outcomes if o[0] > killed_at]
    failed = Counter((method, status) for _, method, status in outcomes if status != 200)
    retries = {
        reason: metric_sum(samples, "yardarm_gateway_retries_total", reason=reason)
        for reason in ("connect_error", "invalid_response", "timeout", "502", "503", "504")
    }
    measured = {
        "requests": len(outcomes),
        "after_kill": len(after_kill),
        "by_method": Counter(method for _, method, _ in outcomes),
        "failed": dict(failed),
        "retries": {reason: n for reason, n in retries.items() if n},
        "refused": metric_sum(samples, "yardarm_gateway_retries_refused_total"),
        "b_requests_before_kill": before[1],
    }
    print(f"\nkill under load ({upstream_http}): {measured}")
    assert not failed, measured
    assert len(after_kill) >= CLIENTS * 10, measured  # the load went on after the kill
    assert served_by_a >= len(after_kill) / 2, measured
    assert before[1] > 0, measured  # b served its share until it died
    assert retries["connect_error"] >= 1, measured  # sent b's way after it died: re-routed
    assert measured["refused"] == 0, measured
    assert metric_sum(samples, "yardarm_gateway_rejected_requests_total") == 0
    codes = {
        key
        for key, value in samples.items()
        if key.startswith("yardarm_gateway_route_requests_total{") and value
    }
    assert codes and all('code="200"' in key for key in codes), codes
    track_opened = metric_sum(
        samples, "yardarm_gateway_breaker_transitions_total", breaker="orders/track:*", state="open"
    )
    assert track_opened == 0
