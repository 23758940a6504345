"""The gateway under load with real backend processes: ejection, breakers, live weights.

Backends are separate processes (tests/gateway/backend_app.py) so a SIGKILL is real;
the gateway runs as `python -m yardarm_gateway`. Gateway retries are off in these
tests so every failure shows in the counts.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from tests.gateway.processes import Backends, metric_sum, scrape
from yardarm.load import LoadConfig, parse_mix, run_load

StartGateway = Callable[..., Awaitable[Any]]

TOKEN = "test-admin-token-0123456789"
NO_RETRY = {"enabled": False}


async def test_a_killed_backend_stops_receiving_requests_within_the_detection_threshold(
    start_gateway: StartGateway, backends: Backends, client: aiohttp.ClientSession
) -> None:
    a, b, c = await backends("a", "b", "c")
    consecutive = 5
    upstream = {
        "endpoints": [a.url, b.url, c.url],
        "retry": NO_RETRY,
        "outlier": {"consecutive_gateway_failure": consecutive, "consecutive_5xx": consecutive},
        "health": {"interval_s": 1.0, "unhealthy_threshold": 2},
    }
    gw = await start_gateway([{"prefix": "/api/stock", "upstream": "svc"}], {"svc": upstream})
    concurrency = 8
    load = LoadConfig(
        url=gw.url, concurrency=concurrency, duration_s=5.0, max_requests=50_000,
        mix=parse_mix("stock=100"), timeout_s=5.0, seed=7,
    )  # fmt: skip
    during = asyncio.create_task(run_load(load))
    await asyncio.sleep(1.5)
    before = await scrape(client, gw.url)
    c.process.send_signal(signal.SIGKILL)
    c.process.wait(10)
    summary = await during
    after = await scrape(client, gw.url)

    def connect_errors(samples: dict[str, float]) -> float:
        return metric_sum(
            samples, "yardarm_gateway_upstream_requests_total",
            endpoint=c.url, outcome="connect_error",
        )  # fmt: skip

    sent_after_kill = connect_errors(after) - connect_errors(before)
    # Requests sent to c after the kill: at most the ejection threshold, plus the ones the
    # workers had already sent its way when the threshold was crossed.
    assert 1 <= sent_after_kill <= consecutive + concurrency, sent_after_kill
    failed = sum(n for code, n in summary.status_codes.items() if code != 200)
    failed += summary.transport_errors
    assert summary.status_codes.get(200, 0) > 0
    assert failed <= consecutive + 2 * concurrency, summary.status_codes  # + in flight at kill
    ejected = metric_sum(after, "yardarm_gateway_ejections_total", endpoint=c.url)
    unhealthy = metric_sum(after, "yardarm_gateway_endpoint_healthy", endpoint=c.url) == 0
    assert ejected >= 1 or unhealthy

    # Once detected, c gets nothing and nothing fails.
    steady = await run_load(load.model_copy(update={"duration_s": 1.5}))
    assert set(steady.status_codes) == {200}, steady.status_codes
    assert steady.transport_errors == 0
    assert connect_errors(await scrape(client, gw.url)) == connect_errors(after)


async def test_a_slow_backend_opens_its_circuit_then_half_open_probes_close_it(
    start_gateway: StartGateway, backends: Backends, client: aiohttp.ClientSession
) -> None:
    (slow,) = await backends("slow")
    breaker: dict[str, Any] = {
        "window_type": "count",
        "window_size": 10,
        "minimum_calls": 5,
        "slow_call_duration_s": 0.2,
        "slow_call_rate_threshold": 50,
        "wait_in_open_s": 1.0,
        "permitted_calls_in_half_open": 2,
    }
    upstream = {
        "endpoints": [slow.url],
        "retry": NO_RETRY,
        "outlier": {"enabled": False},
        "breaker": breaker,
        "track_breaker": breaker,
    }
    gw = await start_gateway(
        [{"prefix": "/", "upstream": "svc"}],
        {"svc": upstream},
        strip_prefix="",
        admin=True,
        admin_token=TOKEN,
    )
    await slow.control(client, latency_ms=400)
    for _ in range(5):
        async with client.get(f"{gw.url}/work") as resp:
            assert resp.status == 200  # slow, but answered
    seen = (await slow.control(client))["requests"]
    async with client.get(f"{gw.url}/work") as resp:
        body = await resp.json()
        assert resp.status == 503, body
        assert body["title"] == "circuit open"
        assert int(resp.headers["Retry-After"]) >= 1
    # Failed fast: the open circuit answered without sending anything to the backend.
    assert (await slow.control(client))["requests"] == seen
    await slow.control(client, latency_ms=0)
    deadline = time.monotonic() + 10 * breaker["wait_in_open_s"]
    status = 503
    while time.monotonic() < deadline:
        async with client.get(f"{gw.url}/work") as resp:
            status = resp.status
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200
    for _ in range(5):  # closed again: every request passes
        async with client.get(f"{gw.url}/work") as resp:
            assert resp.status == 200
    samples = await scrape(client, gw.url)
    for state in ("open", "half_open", "closed"):
        assert metric_sum(samples, "yardarm_gateway_breaker_transitions_total", state=state) >= 1
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with client.get(f"{gw.admin_url}/admin/upstreams", headers=headers) as resp:
        view = await resp.json()
    assert view["svc"]["endpoints"][0]["breaker"]["state"] == "closed"
    transitions = [
        json.loads(line)
        for line in gw.log().splitlines()
        if line.startswith("{") and '"event": "breaker"' in line
    ]
    assert {t["to"] for t in transitions} >= {"open", "half_open", "closed"}


async def shares(client: aiohttp.ClientSession, url: str, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        async with client.get(f"{url}/api/work") as resp:
            assert resp.status == 200
            seen[(await resp.json())["backend"]] += 1
    return seen


async def test_weights_changed_through_one_replica_reach_every_replica_and_survive_restart(
    start_gateway: StartGateway,
    backends: Backends,
    client: aiohttp.ClientSession,
    datastore_url: str,
) -> None:
    stable, canary = await backends("stable", "canary")
    upstreams = {
        "svc": {
            "endpoints": [{"url": stable.url}, {"url": canary.url, "track": "canary"}],
            "retry": NO_RETRY,
        }
    }
    routes = [{"prefix": "/api/work", "upstream": "svc", "split": {"stable": 100, "canary": 0}}]
    common = {
        "admin": True,
        "admin_token": TOKEN,
        "datastore_urls": [datastore_url],
        "config_poll_s": 0.25,
    }
    gw_a = await start_gateway(routes, upstreams, **common)
    gw_b = await start_gateway(routes, upstreams, **common)
    assert (await shares(client, gw_a.url, 20)) == Counter({"stable": 20})
    assert (await shares(client, gw_b.url, 20)) == Counter({"stable": 20})

    await stable.control(client, latency_ms=1500)  # a request in flight across the change
    in_flight = asyncio.create_task(client.get(f"{gw_b.url}/api/work"))
    for _ in range(100):  # until the backend holds it
        if (await stable.control(client))["in_flight"] >= 1:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the request never reached the backend")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    changed_at = time.monotonic()
    async with client.put(
        f"{gw_a.admin_url}/admin/routes/api-work/split",
        json={"weights": {"stable": 50, "canary": 50}},
        headers=headers,
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["version"] >= 1
    response = await in_flight
    assert response.status == 200  # the change did not drop it
    response.release()
    await stable.control(client, latency_ms=0)

    # Replica B never received the admin call: it must pick the change up by itself.
    applied_after = None
    while time.monotonic() - changed_at < 20 * 0.25 * 4:
        seen = await shares(client, gw_b.url, 10)
        if seen["canary"]:
            applied_after = time.monotonic() - changed_at
            break
    assert applied_after is not None
    seen = await shares(client, gw_b.url, 200)
    assert seen == Counter({"stable": 100, "canary": 100})  # smooth WRR: exact over 200
    seen = await shares(client, gw_a.url, 200)
    assert seen == Counter({"stable": 100, "canary": 100})

    # A restarted replica starts from the stored routing, not from its built-in routes.
    gw_c = await start_gateway(routes, upstreams, **common)
    assert (await shares(client, gw_c.url, 100)) == Counter({"stable": 50, "canary": 50})

    # Invalid admin payloads are precise 4xx and change nothing; weight on a track
    # without endpoints is valid in itself but conflicts with the upstream: 409.
    for body, status in [
        ({"weights": {"stable": -1}}, 422),
        ({"weights": {"blue": 10}}, 409),
        ({"weights": {"stable": 0, "canary": 0}}, 422),
        ({"weigths": {"stable": 1}}, 422),
    ]:
        async with client.put(
            f"{gw_a.admin_url}/admin/routes/api-work/split", json=body, headers=headers
        ) as resp:
            assert resp.status == status, (body, await resp.text())
            assert resp.content_type == "application/problem+json"
    async with client.put(
        f"{gw_a.admin_url}/admin/routes/nope/split",
        json={"weights": {"stable": 1}},
        headers=headers,
    ) as resp:
        assert resp.status == 404
    async with client.get(f"{gw_a.admin_url}/admin/routes") as resp:
        assert resp.status == 401
    async with client.get(f"{gw_a.admin_url}/admin/routes", headers=headers) as resp:
        doc = await resp.json()
    assert doc["routes"][0]["split"] == {"stable": 50, "canary": 50}
