"""Live endpoint sets: the routing document's `endpoints` replace the bootstrap set.

The control plane scales a service by rewriting `endpoints[upstream]` in the routing
document; every gateway replica applies it within its poll interval. Added endpoints
join at once; removed ones drain (no new request or retry, the ones in flight finish)
and are then dropped with their pooled connections. The process tests run a real
gateway, a real datastore and real upstream HTTP servers; the policy tests drive
`Upstream` directly.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yardarm_gateway.endpoints import Endpoint
from yardarm_gateway.panic import PanicEvent
from yardarm_gateway.settings import EndpointSpec, UpstreamSpec
from yardarm_gateway.upstreams import ALL_TRACKS, Upstream

from tests.gateway.processes import metric_sum, scrape
from yardarm.model import GATEWAY_ROUTES
from yardarm.routing_writer import Endpoint as Published
from yardarm.routing_writer import PublishError, RoutingWriter

StartGateway = Callable[..., Awaitable[Any]]

TOKEN = "endpoints-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY = "config/gateway/routing"
POLL_S = 0.25  # the gateway's default config_poll_s
APPLIED_WITHIN_S = 20 * POLL_S  # a wide margin over one poll
SLOW_S = 1.5  # long enough to hold a request across a document change
PROBLEM = "application/problem+json"


@dataclass
class Replica:
    """An upstream HTTP server that counts what reaches it; `/slow` takes SLOW_S."""

    name: str
    url: str = ""
    hits: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    runner: web.AppRunner | None = None

    def connections(self) -> int:
        assert self.runner is not None and self.runner.server is not None
        return len(self.runner.server.connections)


@pytest.fixture
async def replicas() -> AsyncIterator[Callable[[str], Awaitable[Replica]]]:
    started: list[Replica] = []

    async def start(name: str) -> Replica:
        replica = Replica(name)

        async def serve(request: web.Request) -> web.Response:
            replica.hits[request.path] += 1
            replica.in_flight += 1
            try:
                if request.path.endswith("/slow"):
                    await asyncio.sleep(SLOW_S)
                return web.json_response({"backend": name}, headers={"X-Backend": name})
            finally:
                replica.in_flight -= 1

        async def readyz(_: web.Request) -> web.Response:
            replica.hits["/readyz"] += 1
            return web.json_response({"status": "ready"})

        app = web.Application()
        app.router.add_get("/readyz", readyz)
        app.router.add_route("*", "/{tail:.*}", serve)
        replica.runner = web.AppRunner(app, access_log=None)
        await replica.runner.setup()
        site = web.TCPSite(replica.runner, "127.0.0.1", 0)
        await site.start()
        host, port = replica.runner.addresses[0][:2]
        replica.url = f"http://{host}:{port}"
        started.append(replica)
        return replica

    yield start
    for replica in started:
        assert replica.runner is not None
        await replica.runner.cleanup()


async def write_doc(
    client: aiohttp.ClientSession, datastore: str, change: Callable[[dict[str, Any]], None]
) -> int:
    """Apply `change` to the stored routing document (compare-and-set); its new version."""
    async with client.get(f"{datastore}/kv/{KEY}") as resp:
        if resp.status == 404:
            doc: dict[str, Any] = {}
            version = 0
        else:
            assert resp.status == 200, await resp.text()
            entry = await resp.json()
            doc, version = entry["value"], entry["version"]
    change(doc)
    async with client.put(
        f"{datastore}/kv/{KEY}", json={"value": doc, "if_version": version}
    ) as resp:
        assert resp.status in (200, 201), await resp.text()
        written: int = (await resp.json())["version"]
        return written


async def stored(client: aiohttp.ClientSession, datastore: str) -> dict[str, Any]:
    async with client.get(f"{datastore}/kv/{KEY}") as resp:
        assert resp.status == 200
        value: dict[str, Any] = (await resp.json())["value"]
        return value


async def admin_get(client: aiohttp.ClientSession, gw: Any, path: str) -> Any:
    async with client.get(f"{gw.admin_url}{path}", headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def wait_version(client: aiohttp.ClientSession, gw: Any, version: int) -> None:
    deadline = time.monotonic() + APPLIED_WITHIN_S
    while (await admin_get(client, gw, "/admin/routes"))["version"] < version:
        assert time.monotonic() < deadline, f"routing v{version} not in force"
        await asyncio.sleep(POLL_S / 5)


def endpoint_rows(view: dict[str, Any], upstream: str) -> dict[str, dict[str, Any]]:
    return {row["url"]: row for row in view[upstream]["endpoints"]}


async def get(client: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, str, str]:
    """Status, serving backend and track of one request."""
    async with client.get(url, **kw) as resp:
        body = await resp.read()
        backend = json.loads(body).get("backend", "") if resp.status == 200 else ""
        return resp.status, backend, resp.headers.get("x-yardarm-track", "")


# -- through a real gateway, datastore and upstream servers ---------------------------


async def test_published_endpoints_replace_the_bootstrap_set(
    start_gateway: StartGateway,
    replicas: Callable[[str], Awaitable[Replica]],
    datastore_url: str,
    client: aiohttp.ClientSession,
) -> None:
    old, new = await replicas("old"), await replicas("new")
    upstreams = {"orders": [old.url], "datastore": [old.url]}
    gw = await start_gateway(
        GATEWAY_ROUTES, upstreams, admin=True, admin_token=TOKEN, datastore_urls=[datastore_url]
    )
    assert (await get(client, f"{gw.url}/api/orders/1"))[1] == "old"

    # The control plane's writer, as `yardarm scale` drives it.
    publisher = RoutingWriter([datastore_url], [gw.admin_url], TOKEN, timeout_s=10)
    version = await publisher.publish("orders", [Published(new.url, "stable")])
    assert await publisher.wait_applied(version, APPLIED_WITHIN_S) == []

    view = await admin_get(client, gw, "/admin/upstreams")
    assert list(endpoint_rows(view, "orders")) == [new.url]  # exactly the document's set
    assert list(endpoint_rows(view, "datastore")) == [old.url]  # not listed: the bootstrap
    row = endpoint_rows(view, "orders")[new.url]
    assert (row["track"], row["draining"], row["usable"]) == ("stable", False, True)
    routing = await admin_get(client, gw, "/admin/routes")
    assert routing["endpoints"] == {"orders": [{"url": new.url, "track": "stable", "weight": 1}]}

    before = old.hits["/orders/1"]
    for _ in range(20):
        assert await get(client, f"{gw.url}/api/orders/1") == (200, "new", "")
    assert old.hits["/orders/1"] == before
    assert new.hits["/orders/1"] == 20
    assert (await get(client, f"{gw.url}/api/kv/a"))[1] == "old"

    # Active health checks include the new endpoint.
    probes = new.hits["/readyz"]
    deadline = time.monotonic() + 10  # the probe interval is 1 s
    while new.hits["/readyz"] < probes + 2:
        assert time.monotonic() < deadline, "the added endpoint is not probed"
        await asyncio.sleep(0.1)
    # Publishing the same set again writes nothing.
    assert await publisher.publish("orders", [Published(new.url, "stable")]) == version


async def test_a_rollout_moves_every_route_of_a_service_in_one_write(
    start_gateway: StartGateway,
    replicas: Callable[[str], Awaitable[Replica]],
    datastore_url: str,
    client: aiohttp.ClientSession,
) -> None:
    stable, canary = await replicas("stable"), await replicas("canary")
    upstreams = {
        "orders": [stable.url, {"url": canary.url, "track": "canary"}],
        "datastore": [stable.url],
    }
    gw = await start_gateway(
        GATEWAY_ROUTES, upstreams, admin=True, admin_token=TOKEN, datastore_urls=[datastore_url]
    )
    writer = RoutingWriter([datastore_url], [gw.admin_url], TOKEN, timeout_s=10)
    routes = ("api-orders", "api-stock")
    version = await writer.set_splits(routes, {"stable": 75, "canary": 25})
    assert await writer.wait_applied(version, APPLIED_WITHIN_S) == []
    routing = await admin_get(client, gw, "/admin/routes")
    splits = {r["name"]: r.get("split") for r in routing["routes"]}
    assert routing["version"] == version  # both routes changed by the one write
    assert splits["api-orders"] == splits["api-stock"] == {"stable": 75, "canary": 25}
    assert splits["api-kv"] is None  # another service's route is untouched
    tracks = Counter([(await get(client, f"{gw.url}/api/orders/1"))[2] for _ in range(40)])
    assert tracks == {"stable": 30, "canary": 10}  # smooth weighted round robin is exact

    assert await writer.set_splits(routes, {"stable": 75, "canary": 25}) == version
    with pytest.raises(PublishError, match="no route api-nope"):
        await writer.set_splits(("api-orders", "api-nope"), {"stable": 100})
    assert (await admin_get(client, gw, "/admin/routes"))["version"] == version


async def test_a_removed_endpoint_drains_its_requests_in_flight_and_takes_no_new_ones(
    start_gateway: StartGateway,
    replicas: Callable[[str], Awaitable[Replica]],
    datastore_url: str,
    client: aiohttp.ClientSession,
) -> None:
    a, b = await replicas("a"), await replicas("b")
    routes = [{"prefix": "/api/work", "upstream": "svc"}]
    gw = await start_gateway(
        routes, {"svc": [a.url, b.url]}, admin=True, admin_token=TOKEN,
        datastore_urls=[datastore_url],
    )  # fmt: skip
    # Round robin: two slow requests, one on each endpoint.
    slow = [asyncio.create_task(get(client, f"{gw.url}/api/work/slow")) for _ in range(2)]
    deadline = time.monotonic() + 5
    while not (a.in_flight and b.in_flight):
        assert time.monotonic() < deadline, (a.hits, b.hits)
        await asyncio.sleep(0.01)

    def keep_a(doc: dict[str, Any]) -> None:
        doc.update(routes=routes, endpoints={"svc": [{"url": a.url, "track": "stable"}]})

    await wait_version(client, gw, await write_doc(client, datastore_url, keep_a))
    assert b.in_flight == 1  # still at work
    row = endpoint_rows(await admin_get(client, gw, "/admin/upstreams"), "svc")[b.url]
    assert (row["draining"], row["active"], row["usable"]) == (True, 1, False)
    for _ in range(30):
        assert await get(client, f"{gw.url}/api/work/fast") == (200, "a", "")
    assert b.hits["/work/fast"] == 0  # not one new request

    assert sorted(await asyncio.gather(*slow)) == [(200, "a", ""), (200, "b", "")]
    assert b.hits["/work/slow"] == 1
    deadline = time.monotonic() + 5
    while b.url in endpoint_rows(await admin_get(client, gw, "/admin/upstreams"), "svc"):
        assert time.monotonic() < deadline, "the drained endpoint was never dropped"
        await asyncio.sleep(0.05)
    while b.connections():  # its pooled keep-alive connection is closed too
        assert time.monotonic() < deadline, "the drained endpoint's connections stay open"
        await asyncio.sleep(0.05)
    log = gw.log()
    assert '"event": "endpoint_draining"' in log and '"event": "endpoint_gone"' in log


async def test_a_split_whose_track_lost_its_endpoints_routes_all_to_the_other_without_errors(
    start_gateway: StartGateway,
    replicas: Callable[[str], Awaitable[Replica]],
    datastore_url: str,
    client: aiohttp.ClientSession,
) -> None:
    stable, canary = await replicas("stable"), await replicas("canary")
    routes = [
        {
            "prefix": "/api/work",
            "upstream": "svc",
            "split": {"stable": 50, "canary": 50},
            "sticky": {"header": "x-user"},
        }
    ]
    upstreams = {
        "svc": {"endpoints": [stable.url, {"url": canary.url, "track": "canary"}]},
    }
    gw = await start_gateway(
        routes, upstreams, admin=True, admin_token=TOKEN, datastore_urls=[datastore_url]
    )
    outcomes: list[tuple[float, int, str, str]] = []
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            path = "slow" if n % 5 == 0 else "fast"  # some in flight across the change
            started = time.monotonic()
            status, backend, track = await get(
                client, f"{gw.url}/api/work/{path}", headers={"x-user": f"u{worker}-{n}"}
            )
            outcomes.append((started, status, backend, track))

    weight = "yardarm_gateway_route_weight"
    before = await scrape(client, gw.url)
    for track in ("stable", "canary"):  # what the split sends each track, in percent
        assert metric_sum(before, weight, route="api-work", upstream_track=track) == 50.0
    workers = [asyncio.create_task(load(i)) for i in range(4)]
    deadline = time.monotonic() + 10
    while canary.in_flight == 0:  # a canary request in flight when it leaves
        assert time.monotonic() < deadline, canary.hits
        await asyncio.sleep(0.01)

    def stable_only(doc: dict[str, Any]) -> None:
        doc.update(routes=routes, endpoints={"svc": [{"url": stable.url, "track": "stable"}]})

    await wait_version(client, gw, await write_doc(client, datastore_url, stable_only))
    applied = time.monotonic()
    await asyncio.sleep(4 * POLL_S + SLOW_S)
    stop.set()
    await asyncio.gather(*workers)

    assert [o for o in outcomes if o[1] != 200] == []  # zero errors, across the change
    assert {o[2] for o in outcomes if o[0] < applied} == {"stable", "canary"}
    after = [o for o in outcomes if o[0] > applied]
    assert len(after) > 10 and {(o[2], o[3]) for o in after} == {("stable", "stable")}
    shares = await scrape(client, gw.url)  # a track without endpoints takes no weight
    assert metric_sum(shares, weight, route="api-work", upstream_track="stable") == 100.0
    assert metric_sum(shares, weight, route="api-work", upstream_track="canary") == 0.0
    assert any(k.startswith(weight) and 'upstream_track="canary"' in k for k in shares)

    override = {"x-yardarm-track": "canary", "x-yardarm-admin-token": TOKEN}
    async with client.get(f"{gw.url}/api/work/x", headers=override) as resp:
        assert resp.status == 503
        assert resp.content_type == PROBLEM
        assert "no endpoint on track 'canary'" in (await resp.json())["detail"]
    view = (await admin_get(client, gw, "/admin/upstreams"))["svc"]
    assert view["tracks"]["canary"]["endpoints"] == 0
    assert not any(track["panic"] for track in view["tracks"].values())
    split = f"{gw.admin_url}/admin/routes/api-work/split"
    async with client.put(split, json={"weights": {"canary": 10, "stable": 90}}, headers=AUTH) as r:
        assert r.status == 409, await r.text()
        assert "no endpoint on it" in (await r.json())["detail"]
    async with client.put(split, json={"weights": {"stable": 100}}, headers=AUTH) as r:
        assert r.status == 200, await r.text()
        version = (await r.json())["version"]
    await wait_version(client, gw, version)
    shares = await scrape(client, gw.url)  # a track the split no longer names vanishes
    assert [k for k in shares if k.startswith(weight)] == [
        k for k in shares if k.startswith(weight) and 'upstream_track="stable"' in k
    ]
    assert metric_sum(shares, weight, route="api-work", upstream_track="stable") == 100.0


async def test_admin_changes_keep_the_documents_endpoints_as_written(
    start_gateway: StartGateway,
    replicas: Callable[[str], Awaitable[Replica]],
    datastore_url: str,
    client: aiohttp.ClientSession,
) -> None:
    a, b, gone = await replicas("a"), await replicas("b"), await replicas("gone")
    routes = [
        {"prefix": "/api/work", "upstream": "svc", "name": "work"},
        {"prefix": "/api/kv", "upstream": "kv"},
    ]
    upstreams = {"svc": [a.url], "kv": [a.url]}
    gw = await start_gateway(
        routes, upstreams, admin=True, admin_token=TOKEN, datastore_urls=[datastore_url]
    )
    listed = {
        "svc": [{"url": a.url, "track": "stable"}, {"url": b.url, "track": "canary", "weight": 3}],
        "kv": [],
    }
    stale = {"upstream": "svc", "endpoint": gone.url, "until": time.time() + 600}

    def publish(doc: dict[str, Any]) -> None:
        doc.update(routes=routes, endpoints=listed, ejections=[stale])

    await wait_version(client, gw, await write_doc(client, datastore_url, publish))
    assert (await admin_get(client, gw, "/admin/routes"))["endpoints"]["svc"][1]["weight"] == 3

    changes = [
        ("PUT", "/admin/routes/work/split", {"weights": {"stable": 9, "canary": 1}}),
        ("POST", "/admin/upstreams/svc/ejections", {"endpoint": b.url, "duration_s": 60}),
        ("DELETE", f"/admin/upstreams/svc/ejections?endpoint={b.url}", None),
        ("PUT", "/admin/routes", {"routes": [{**routes[0], "timeout_s": 5}, routes[1]]}),
    ]
    for method, path, body in changes:
        async with client.request(method, gw.admin_url + path, json=body, headers=AUTH) as resp:
            assert resp.status in (200, 201), (path, await resp.text())
        doc = await stored(client, datastore_url)
        assert doc["endpoints"] == listed, path  # byte for byte: no defaults added
        # The ejection of an endpoint no longer listed is dropped by any change.
        assert all(e["endpoint"] != gone.url for e in doc["ejections"]), path
    assert doc["routes"][0]["timeout_s"] == 5
    view = await admin_get(client, gw, "/admin/upstreams")
    assert list(endpoint_rows(view, "svc")) == [a.url, b.url]
    assert view["kv"]["endpoints"] == []  # an empty list: no endpoint at all
    async with client.get(f"{gw.url}/api/kv/x") as resp:
        assert resp.status == 503
        assert resp.content_type == PROBLEM
        assert (await resp.json())["detail"] == "upstream 'kv' has no endpoint now"
    async with client.get(f"{gw.url}/readyz") as resp:
        assert resp.status == 200  # an upstream scaled to zero does not unready the gateway


async def test_an_invalid_endpoints_member_is_refused_and_the_last_good_set_stays(
    start_gateway: StartGateway,
    replicas: Callable[[str], Awaitable[Replica]],
    datastore_url: str,
    client: aiohttp.ClientSession,
) -> None:
    a, b = await replicas("a"), await replicas("b")
    routes = [{"prefix": "/api/work", "upstream": "svc"}]
    gw = await start_gateway(
        routes, {"svc": [a.url]}, admin=True, admin_token=TOKEN, datastore_urls=[datastore_url]
    )
    good = {"svc": [{"url": b.url, "track": "stable"}]}

    def publish(endpoints: Any) -> Callable[[dict[str, Any]], None]:
        return lambda doc: doc.update(routes=routes, endpoints=endpoints)

    good_version = await write_doc(client, datastore_url, publish(good))
    await wait_version(client, gw, good_version)
    invalid = [
        {"nope": [{"url": b.url}]},  # an unknown upstream
        {"svc": [{"url": "ftp://somewhere"}]},
        {"svc": [{"url": b.url}, {"url": b.url + "/"}]},  # the same endpoint twice
        {"svc": [{"url": b.url, "track": "Canary"}]},
        {"svc": [{"url": b.url, "weight": 0}]},
        {"svc": [{"url": b.url, "zone": "a"}]},
        {"svc": [b.url]},  # the settings' shorthand is not the document's shape
        {"svc": {"url": b.url}},
    ]
    for number, endpoints in enumerate(invalid, start=1):
        await write_doc(client, datastore_url, publish(endpoints))
        deadline = time.monotonic() + APPLIED_WITHIN_S
        while metric_sum(await scrape(client, gw.url), "yardarm_gateway_routing_errors_total",
                         kind="invalid") < number:  # fmt: skip
            assert time.monotonic() < deadline, f"{endpoints} was not refused"
            await asyncio.sleep(POLL_S / 5)
        routing = await admin_get(client, gw, "/admin/routes")
        assert routing["version"] == good_version, endpoints  # the last good one, in force
        assert routing["endpoints"] == {"svc": [{"url": b.url, "track": "stable", "weight": 1}]}
        assert list(endpoint_rows(await admin_get(client, gw, "/admin/upstreams"), "svc")) == [
            b.url
        ]
        assert (await get(client, f"{gw.url}/api/work"))[:2] == (200, "b")
    assert "routing document" in gw.log() and "refused" in gw.log()
    back = await write_doc(client, datastore_url, publish({"svc": [{"url": a.url}]}))
    await wait_version(client, gw, back)
    assert (await get(client, f"{gw.url}/api/work"))[:2] == (200, "a")


# -- the policies, driven directly --------------------------------------------------


def _spec(endpoints: list[Any], **policy: Any) -> UpstreamSpec:
    return UpstreamSpec.model_validate({"endpoints": endpoints, **policy})


def _specs(*items: tuple[str, str]) -> list[EndpointSpec]:
    return [EndpointSpec(url=url, track=track) for url, track in items]


URLS = [f"http://10.0.0.{i}:80" for i in range(1, 5)]

POLICIES = [
    {"policy": "round_robin"},
    {"policy": "weighted_round_robin"},
    {"policy": "least_request"},
    {"policy": "peak_ewma"},
    {"policy": "consistent_hash", "hash_on": "header", "hash_key": "x-user"},
]


@pytest.mark.parametrize("balancer", POLICIES, ids=lambda b: str(b["policy"]))
def test_no_policy_picks_a_draining_endpoint_for_a_new_request_or_a_retry(
    balancer: dict[str, Any],
) -> None:
    up = Upstream("svc", _spec(URLS, balancer=balancer), now=0.0)
    held = up.pools[ALL_TRACKS]  # a request in flight chose its pool before the change
    leaving = up.by_url[URLS[1]]
    keys = [f"user-{i}".encode() for i in range(300)]
    before = {up.pick(held, key, 1.0, []) for key in keys}
    assert leaving in before  # it had its share of keys
    leaving.active = 1

    remaining = _specs(*((u, "stable") for u in URLS if u != URLS[1]))
    added, drained = up.set_endpoints(remaining, 2.0, drain_s=15.0)
    assert (added, drained) == ([], [leaving]) and leaving.draining
    for pool in (held, up.pools["stable"]):
        picks = [up.pick(pool, key, 3.0, []) for key in [*keys, *[None] * 300]]
        assert leaving not in picks and None not in picks
        # A retry after a first attempt elsewhere does not fall back on it either.
        retries = [up.pick(pool, key, 3.0, [up.by_url[URLS[0]]]) for key in keys]
        assert leaving not in retries
    assert up.reap(4.0) == []  # its request still runs
    leaving.active = 0
    assert up.reap(4.0) == [leaving] and leaving not in up.breakers


def test_a_draining_endpoint_is_dropped_after_the_drain_time_whatever_is_in_flight() -> None:
    dropped: list[tuple[str, Endpoint]] = []
    up = Upstream("svc", _spec(URLS[:2]), now=0.0, on_drop=lambda n, e: dropped.append((n, e)))
    leaving = up.by_url[URLS[1]]
    leaving.active = 3
    up.set_endpoints(_specs((URLS[0], "stable")), 10.0, drain_s=15.0)
    assert up.reap(24.9) == []
    rows: Any = up.snapshot(24.9)["endpoints"]
    assert [(row["url"], row["draining"], row["active"]) for row in rows] == [
        (URLS[0], False, 0),
        (URLS[1], True, 3),
    ]
    assert up.reap(25.0) == [leaving]
    assert dropped == [("svc", leaving)]
    rows = up.snapshot(25.0)["endpoints"]
    assert [row["url"] for row in rows] == [URLS[0]]


def test_readding_a_draining_url_cancels_its_drain_with_fresh_state() -> None:
    up = Upstream("svc", _spec(URLS[:2], outlier={"consecutive_5xx": 1}), now=0.0)
    back = up.by_url[URLS[1]]
    back.active = 1
    up.outlier.record(back, 500, 0.5)
    assert up.outlier.is_ejected(back, 0.5)
    old_breaker = up.breakers[back]
    up.set_endpoints(_specs((URLS[0], "stable")), 1.0)
    assert back.draining and back not in up.pools[ALL_TRACKS].endpoints

    added, _ = up.set_endpoints(_specs((URLS[0], "stable"), (URLS[1], "stable")), 2.0)
    assert added == [back]  # the same object: its in-flight count carries on
    assert not back.draining and back.active == 1 and back not in up.draining
    assert up.by_url[URLS[1]] is back and back in up.pools[ALL_TRACKS].endpoints
    assert not up.outlier.is_ejected(back, 2.0) and up.breakers[back] is not old_breaker
    assert up.usable(back, 2.0)


def test_an_added_endpoint_joins_healthy_and_keeps_the_thresholds() -> None:
    up = Upstream("svc", _spec(URLS[:1]), now=0.0)
    up.health.record(up.by_url[URLS[0]], True)
    up.health.settled = True  # the first probe round is over
    added, _ = up.set_endpoints(_specs((URLS[0], "stable"), (URLS[1], "canary")), 5.0)
    new = added[0]
    assert (new.track, new.added_at) == ("canary", 5.0)
    assert up.usable(new, 5.0) and up.tracks == {"stable", "canary"}
    assert not up.health.record(new, False)  # one failed probe is not a verdict
    assert up.health.record(new, False) and not up.usable(new, 6.0)


def test_a_track_without_endpoints_is_not_in_panic_and_makes_no_other_panic() -> None:
    events: list[PanicEvent] = []
    spec = _spec(
        [URLS[0], {"url": URLS[1], "track": "canary"}, {"url": URLS[2], "track": "canary"}]
    )
    up = Upstream("svc", spec, now=0.0, on_panic=events.append)
    for url in URLS[1:3]:  # the canary's processes are stopping: unhealthy
        up.health.record(up.by_url[url], False)
    assert up.pools["canary"].panic and up.pools[ALL_TRACKS].panic  # 1 of 3 in rotation

    up.set_endpoints(_specs((URLS[0], "stable")), 1.0)
    assert up.pools["canary"].endpoints == () and not up.pools["canary"].panic
    assert not up.pools[ALL_TRACKS].panic and not up.pools["stable"].panic
    assert {(e.track, e.panic) for e in events[-2:]} == {("canary", False), ("*", False)}
    assert [pool.track for pool in up.distinct_pools()] == [ALL_TRACKS]
    tracks: Any = up.snapshot(1.0)["tracks"]
    assert tracks["canary"] == {"breaker": tracks["canary"]["breaker"], "endpoints": 0,
                                "panic": False}  # fmt: skip


def test_a_weight_or_track_change_moves_the_endpoint_between_pools() -> None:
    up = Upstream("svc", _spec(URLS[:2]), now=0.0)
    first, second = (up.by_url[url] for url in URLS[:2])
    up.set_endpoints(
        [EndpointSpec(url=URLS[0], weight=3), EndpointSpec(url=URLS[1], track="canary")], 1.0
    )
    assert up.by_url[URLS[0]] is first and first.weight == 3
    assert up.pools["stable"].endpoints == (first,)
    assert up.pools["canary"].endpoints == (second,)
    picks = Counter(up.pick(up.pools[ALL_TRACKS], None, 2.0, []) for _ in range(400))
    assert picks == {first: 300, second: 100}


def test_a_dropped_endpoint_takes_its_breaker_ejection_and_health_series_with_it() -> None:
    """A URL that leaves and comes back starts with fresh state, so its old breaker gauge
    must not stay behind saying `open` (an alert reads it), nor its health gauge saying
    it fails its checks (a rollout's judge reads it)."""
    from prometheus_client import generate_latest
    from yardarm_gateway.outlier import OutlierEvent
    from yardarm_gateway.telemetry import GatewayTelemetry
    from yardarm_kit.metrics import Metrics
    from yardarm_kit.settings import ServiceSettings

    metrics = Metrics(ServiceSettings(service="gateway", instance="gateway-test", port=9))
    telemetry = GatewayTelemetry(metrics)
    gone, kept = Endpoint("http://127.0.0.1:1"), Endpoint("http://127.0.0.1:2")
    for endpoint in (gone, kept):
        telemetry.endpoint_added("svc", endpoint)
        telemetry.health_change("svc", endpoint, False)
        telemetry.breaker_transition(f"svc/{endpoint.url}", "closed", "open", "failures")
        telemetry.outlier_event("svc", OutlierEvent(endpoint, "eject", "consecutive_5xx", 1, None))
    telemetry.endpoint_gone("svc", gone)
    text = generate_latest(metrics.registry).decode()
    names = ("breaker_state", "endpoint_ejected", "endpoint_healthy")
    for name in (f"yardarm_gateway_{n}" for n in names):
        lines = [line for line in text.splitlines() if line.startswith(name + "{")]
        assert [gone.url in line for line in lines] == [False], lines


def test_a_track_back_from_no_endpoints_starts_with_its_circuit_closed() -> None:
    """The next canary (or green) is not refused because the last one tripped the
    track's circuit; a track that keeps endpoints keeps its circuit's state."""
    changes: list[tuple[str, str, str]] = []
    spec = _spec([URLS[0], {"url": URLS[1], "track": "canary"}],
                 track_breaker={"minimum_calls": 2, "window_size": 2})  # fmt: skip
    up = Upstream("svc", spec, now=0.0, on_breaker=lambda n, a, b, r: changes.append((n, a, b)))
    canary = up.pools["canary"].breaker
    for now in (1.0, 2.0):
        assert canary.try_acquire(now)
        canary.record(now, 0.01, failed=True)
    assert canary.state == "open"
    up.set_endpoints(_specs((URLS[0], "stable"), (URLS[2], "canary")), 3.0)  # one left, one came
    assert up.pools["canary"].breaker.state == "open"
    up.set_endpoints(_specs((URLS[0], "stable")), 4.0)
    assert up.pools["canary"].breaker.state == "open"  # no endpoints: nothing to guard
    up.set_endpoints(_specs((URLS[0], "stable"), (URLS[3], "canary")), 5.0)
    assert up.pools["canary"].breaker.state == "closed"
    assert changes[-1] == ("svc/track:canary", "open", "closed")
