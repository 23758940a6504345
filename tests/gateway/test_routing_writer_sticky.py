"""The control plane's split writes carry the routes' sticky key in the same write.

A rollout that keeps clients on one track sets the split and the sticky key of all of a
service's routes in one document version (the gateway refuses a sticky route without a
split, and a replica between two writes would route half of it unsticky). The tests run
a real datastore and, where the gateway must take the document, a real gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from yardarm.model import GATEWAY_ROUTES
from yardarm.routing_writer import PublishError, RoutingWriter

StartGateway = Callable[..., Awaitable[Any]]
StartBackend = Callable[..., Awaitable[str]]

TOKEN = "sticky-writer-admin-token-0123456789"
KEY = "config/gateway/routing"
APPLIED_WITHIN_S = 5.0  # 20 times the gateway's default config_poll_s of 0.25 s
ROUTES = ("api-orders", "api-stock")


async def stored(client: aiohttp.ClientSession, datastore: str) -> tuple[int, dict[str, Any]]:
    """The routing document's version and its routes by name."""
    async with client.get(f"{datastore}/kv/{KEY}") as resp:
        assert resp.status == 200, await resp.text()
        entry = await resp.json()
    return entry["version"], {route["name"]: route for route in entry["value"]["routes"]}


async def gateway_routes(client: aiohttp.ClientSession, gw: Any) -> tuple[int, dict[str, Any]]:
    """The routing version a gateway applies and its routes by name."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with client.get(f"{gw.admin_url}/admin/routes", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        view = await resp.json()
    return view["version"], {route["name"]: route for route in view["routes"]}


def given(sticky: dict[str, Any] | None) -> dict[str, Any] | None:
    """A sticky without its null fields (the gateway's view lists both)."""
    return None if sticky is None else {k: v for k, v in sticky.items() if v is not None}


async def track_of(client: aiohttp.ClientSession, url: str, user: str) -> str:
    async with client.get(url, headers={"x-user": user}) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["x-yardarm-track"]


async def test_sticky_is_set_kept_and_removed_with_the_split_in_one_write(
    start_gateway: StartGateway,
    start_backend: StartBackend,
    datastore_url: str,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="yardarm.control_kv")

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({})

    backends = []
    for _ in range(2):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", ok)
        backends.append(await start_backend(app))
    upstreams = {
        "orders": [backends[0], {"url": backends[1], "track": "canary"}],
        "datastore": [backends[0]],
    }
    gw = await start_gateway(
        GATEWAY_ROUTES, upstreams, admin=True, admin_token=TOKEN, datastore_urls=[datastore_url]
    )
    writer = RoutingWriter([datastore_url], [gw.admin_url], TOKEN, timeout_s=10)
    header = {"header": "x-user"}

    # Set: split and sticky of both routes in one version, which the gateway takes.
    version = await writer.set_splits(ROUTES, {"stable": 50, "canary": 50}, sticky=header)
    assert await writer.wait_applied(version, APPLIED_WITHIN_S) == []
    applied, routes = await gateway_routes(client, gw)
    assert applied == version
    for name in ROUTES:
        assert routes[name]["split"] == {"stable": 50, "canary": 50}
        assert given(routes[name]["sticky"]) == header
    assert routes["api-kv"]["sticky"] is None
    assert (
        f"v{version}: api-orders, api-stock split canary 50, stable 50, sticky header x-user"
        in caplog.text
    )
    # The gateway routes by it: each user keeps one track, and users land on both.
    tracks = {}
    for user in (f"user-{index}" for index in range(16)):
        tracks[user] = await track_of(client, f"{gw.url}/api/orders/1", user)
        for _ in range(3):
            assert await track_of(client, f"{gw.url}/api/orders/1", user) == tracks[user]
    assert set(tracks.values()) == {"stable", "canary"}
    # The same split and sticky again writes nothing.
    assert await writer.set_splits(ROUTES, {"stable": 50, "canary": 50}, sticky=header) == version

    # Not given: each route keeps its sticky while the weights move.
    version = await writer.set_splits(ROUTES, {"stable": 25, "canary": 75})
    _, doc = await stored(client, datastore_url)
    assert [doc[name]["sticky"] for name in ROUTES] == [header, header]
    assert [doc[name]["split"]["canary"] for name in ROUTES] == [75, 75]

    # A sticky change alone is a change, written in one version.
    cookie = {"cookie": "session"}
    changed = await writer.set_splits(ROUTES, {"stable": 25, "canary": 75}, sticky=cookie)
    assert changed > version
    written, doc = await stored(client, datastore_url)
    assert written == changed
    assert [doc[name]["sticky"] for name in ROUTES] == [cookie, cookie]
    assert (
        f"v{changed}: api-orders, api-stock split canary 75, stable 25, sticky cookie session"
        in caplog.text
    )

    # None: the sticky goes, in the same write as the split.
    version = await writer.set_splits(ROUTES, {"stable": 0, "canary": 100}, sticky=None)
    assert await writer.wait_applied(version, APPLIED_WITHIN_S) == []
    written, doc = await stored(client, datastore_url)
    assert written == version
    assert (
        f"v{version}: api-orders, api-stock split canary 100, stable 0, not sticky" in caplog.text
    )
    for name in ROUTES:
        assert "sticky" not in doc[name]
        assert doc[name]["split"] == {"stable": 0, "canary": 100}
    applied, routes = await gateway_routes(client, gw)
    assert applied == version
    assert [routes[name]["sticky"] for name in ROUTES] == [None, None]
    # Removing a sticky that is not there writes nothing.
    assert await writer.set_splits(ROUTES, {"stable": 0, "canary": 100}, sticky=None) == version


async def test_a_sticky_with_null_fields_is_the_same_sticky(
    datastore_url: str, client: aiohttp.ClientSession
) -> None:
    """The gateway's admin API stores `{"header": name, "cookie": null}`: setting the same
    header again is no change and no write."""
    writer = RoutingWriter([datastore_url], [], TOKEN, timeout_s=10)
    await writer.set_splits(ROUTES, {"stable": 90, "canary": 10})

    def admin_style(doc: dict[str, Any]) -> bool:
        for route in doc["routes"]:
            if route["name"] in ROUTES:
                route["sticky"] = {"header": "x-user", "cookie": None}
        return True

    version = await writer.update(admin_style, "sticky as the admin API writes it")
    sticky = {"header": "x-user"}
    assert await writer.set_splits(ROUTES, {"stable": 90, "canary": 10}, sticky=sticky) == version


@pytest.mark.parametrize(
    ("sticky", "message"),
    [
        ({"header": "a b"}, "header name 'a b' must be an HTTP token"),
        ({"header": "x-user", "cookie": "session"}, "exactly one of 'header' or 'cookie'"),
        ({}, "exactly one of 'header' or 'cookie'"),
        ({"query": "user"}, "query: Extra inputs are not permitted"),
        ({"cookie": ""}, "cookie name '' must be an HTTP token"),
    ],
)
async def test_a_bad_sticky_is_refused_and_nothing_is_written(
    datastore_url: str, client: aiohttp.ClientSession, sticky: dict[str, str], message: str
) -> None:
    writer = RoutingWriter([datastore_url], [], TOKEN, timeout_s=10)
    version = await writer.set_splits(ROUTES, {"stable": 90, "canary": 10})
    with pytest.raises(PublishError, match=message):
        await writer.set_splits(ROUTES, {"stable": 80, "canary": 20}, sticky=sticky)
    written, doc = await stored(client, datastore_url)
    assert written == version
    assert [doc[name]["split"] for name in ROUTES] == [{"stable": 90, "canary": 10}] * 2
    assert all("sticky" not in doc[name] for name in ROUTES)
