"""Readiness: ready once every upstream has an endpoint answering /readyz."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

StartBackend = Callable[..., Awaitable[str]]
StartGateway = Callable[..., Awaitable[Any]]
FreePort = Callable[[], int]


def ready_app() -> web.Application:
    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    return app


def not_ready_app() -> web.Application:
    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"status": "starting"}, status=503)

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    return app


async def _readyz(client: aiohttp.ClientSession, url: str) -> int:
    async with client.get(f"{url}/readyz") as resp:
        return resp.status


async def _wait_status(
    client: aiohttp.ClientSession, url: str, status: int, within_s: float
) -> None:
    deadline = time.monotonic() + within_s
    last = None
    while time.monotonic() < deadline:
        last = await _readyz(client, url)
        if last == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz stayed {last}, wanted {status} within {within_s}s")


async def test_ready_only_when_every_upstream_has_a_ready_endpoint(
    start_backend: StartBackend,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
    free_port: FreePort,
) -> None:
    orders_live = await start_backend(ready_app())
    orders_dead = f"http://127.0.0.1:{free_port()}"
    datastore_starting = await start_backend(not_ready_app())
    datastore_port = free_port()
    routes = [
        {"prefix": "/api/orders", "upstream": "orders"},
        {"prefix": "/api/kv", "upstream": "datastore"},
    ]
    gw = await start_gateway(
        routes,
        {
            "orders": [orders_live, orders_dead],
            "datastore": [datastore_starting, f"http://127.0.0.1:{datastore_port}"],
        },
    )

    # Several probe rounds pass and datastore still has no ready endpoint.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert await _readyz(client, gw.url) == 503
        await asyncio.sleep(0.2)

    await start_backend(ready_app(), port=datastore_port)
    await _wait_status(client, gw.url, 200, within_s=15)
