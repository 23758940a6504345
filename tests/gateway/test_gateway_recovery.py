"""Recovery with real backend processes: a restarted replica returns on its health check,
and too few replicas in rotation put the gateway in panic mode rather than piling onto
the survivors.

Backends are processes (SIGKILL is real, a restart reuses the port, as the supervisor
does); the gateway runs as `python -m yardarm_gateway` with its default breakers and
retries, so the whole request path is what a user gets.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.gateway.processes import Backends, metric_sum, scrape

StartGateway = Callable[..., Awaitable[Any]]

PROBE_S = 0.2
HEALTH = {"interval_s": PROBE_S, "timeout_s": 0.5, "healthy_threshold": 2, "unhealthy_threshold": 2}
EJECTION_S = 60.0  # far longer than any wait below: only a health check can end it in time
WORKERS = 4
MAX_REQUESTS = 200_000


@dataclass(frozen=True, slots=True)
class Outcome:
    at: float
    status: int  # 0: no answer
    backend: str | None
    title: str | None


async def drive(
    session: aiohttp.ClientSession, url: str, stop: asyncio.Event, outcomes: list[Outcome]
) -> None:
    """One closed-loop client: GET `url` until `stop`, recording every answer."""
    while not stop.is_set() and len(outcomes) < MAX_REQUESTS:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                body = json.loads(await resp.read())
                outcomes.append(
                    Outcome(time.monotonic(), resp.status, body.get("backend"), body.get("title"))
                )
        except (aiohttp.ClientError, TimeoutError, ValueError):
            outcomes.append(Outcome(time.monotonic(), 0, None, None))


async def wait_for_metric(
    session: aiohttp.ClientSession,
    gateway_url: str,
    name: str,
    value: float,
    within_s: float,
    **labels: str,
) -> float:
    """Seconds until the metric's sum equals `value`; fails after `within_s`."""
    started = time.monotonic()
    while True:
        samples = await scrape(session, gateway_url)
        if metric_sum(samples, name, **labels) == value:
            return time.monotonic() - started
        assert time.monotonic() - started < within_s, f"{name}{labels} never reached {value}"
        await asyncio.sleep(PROBE_S / 4)


def log_events(log: str, event: str) -> list[dict[str, Any]]:
    return [
        record
        for line in log.splitlines()
        if line.startswith("{") and (record := json.loads(line)).get("event") == event
    ]


async def test_a_restarted_replica_returns_on_its_health_check_so_losing_the_other_keeps_the_route(
    start_gateway: StartGateway, backends: Backends, client: aiohttp.ClientSession
) -> None:
    a, b = await backends("a", "b")
    upstream = {
        "endpoints": [a.url, b.url],
        "health": HEALTH,
        "outlier": {"base_ejection_time_s": EJECTION_S},
    }
    gw = await start_gateway([{"prefix": "/api/work", "upstream": "svc"}], {"svc": upstream})
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    workers = [
        asyncio.create_task(drive(client, f"{gw.url}/api/work", stop, outcomes))
        for _ in range(WORKERS)
    ]
    try:
        await asyncio.sleep(0.5)
        a.kill()
        await wait_for_metric(
            client, gw.url, "yardarm_gateway_endpoint_ejected", 1, 50 * PROBE_S, endpoint=a.url
        )
        a = await backends.restart(a)
        back_after = await wait_for_metric(
            client, gw.url, "yardarm_gateway_endpoint_ejected", 0, 50 * PROBE_S, endpoint=a.url
        )
        assert back_after < EJECTION_S / 4
        await asyncio.sleep(5 * PROBE_S)
        assert (await a.control(client))["requests"] > 0  # back in rotation

        killed_at = time.monotonic()
        b.kill()
        await asyncio.sleep(15 * PROBE_S)  # detection, then well past it
    finally:
        stop.set()
        await asyncio.gather(*workers)

    after = [o for o in outcomes if o.at > killed_at]
    failed = [o for o in after if o.status != 200]
    # At most the requests in flight to b when it died fail; nothing is refused.
    assert len(failed) <= WORKERS, Counter((o.status, o.title) for o in failed)
    assert not [o for o in after if o.status == 503], Counter(o.title for o in failed)
    settled = [o for o in after if o.at > killed_at + 10 * PROBE_S]
    assert settled and {o.backend for o in settled} == {"a"}
    samples = await scrape(client, gw.url)
    assert metric_sum(samples, "yardarm_gateway_rejected_requests_total") == 0
    opened = metric_sum(samples, "yardarm_gateway_breaker_transitions_total", state="open")
    assert opened == 0, "a circuit opened"
    returns = [e for e in log_events(gw.log(), "uneject") if e["endpoint"] == a.url]
    assert [e["reason"] for e in returns] == ["active_health_check"]


async def test_below_the_panic_threshold_requests_reach_every_replica_until_they_recover(
    start_gateway: StartGateway, backends: Backends, client: aiohttp.ClientSession
) -> None:
    a, b, c = await backends("a", "b", "c")
    upstream: dict[str, Any] = {"endpoints": [a.url, b.url, c.url], "health": HEALTH}
    route = [{"prefix": "/api/work", "upstream": "svc"}]
    gw = await start_gateway(route, {"svc": upstream})
    off = {**upstream, "balancer": {"healthy_panic_threshold_percent": 0}}
    gw_off = await start_gateway(route, {"svc": off})

    async def shares(url: str, n: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(n):
            async with client.get(f"{url}/api/work") as resp:
                assert resp.status == 200
                seen[(await resp.json())["backend"]] += 1
        return seen

    panic = {"upstream": "svc", "upstream_track": "*"}
    assert metric_sum(await scrape(client, gw.url), "yardarm_gateway_upstream_panic", **panic) == 0
    await b.control(client, ready=False)
    await c.control(client, ready=False)  # 1 of 3 in rotation: below 50%
    await wait_for_metric(
        client, gw.url, "yardarm_gateway_upstream_panic", 1, 50 * PROBE_S, **panic
    )
    assert await shares(gw.url, 60) == Counter({"a": 20, "b": 20, "c": 20})
    await wait_for_metric(
        client, gw_off.url, "yardarm_gateway_endpoint_healthy", 0, 50 * PROBE_S, endpoint=c.url
    )
    await wait_for_metric(
        client, gw_off.url, "yardarm_gateway_endpoint_healthy", 0, 50 * PROBE_S, endpoint=b.url
    )
    assert await shares(gw_off.url, 30) == Counter({"a": 30})  # panic mode off: as before

    await b.control(client, ready=True)  # 2 of 3: the panic is over
    await wait_for_metric(
        client, gw.url, "yardarm_gateway_upstream_panic", 0, 50 * PROBE_S, **panic
    )
    assert await shares(gw.url, 40) == Counter({"a": 20, "b": 20})

    samples = await scrape(client, gw.url)
    assert metric_sum(samples, "yardarm_gateway_panics_total", **panic) == 1
    assert metric_sum(await scrape(client, gw_off.url), "yardarm_gateway_panics_total") == 0
    changes = [(e["panic"], e["available"], e["endpoints"]) for e in log_events(gw.log(), "panic")]
    assert changes == [(True, 1, 3), (False, 2, 3)]
