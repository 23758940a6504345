"""Location and Content-Location name public paths: a client follows them through the
gateway, never to the upstream's own path space (nginx's default `proxy_redirect`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import free_port

StartBackend = Callable[..., Awaitable[str]]
StartGateway = Callable[..., Awaitable[Any]]

ROUTES = [
    {"prefix": "/api/orders", "upstream": "orders"},
    {"prefix": "/api/stock", "upstream": "orders"},
    {"prefix": "/api/legacy", "upstream": "legacy"},
    {"prefix": "/api", "upstream": "orders"},  # forwards everything under /api to /
]


def _answering_app() -> web.Application:
    """Answers 201 with the Location and Content-Location the request asks for
    (`x-reply-location`, `x-reply-content-location`); `{self}` in either stands for the
    origin the request reached, as a service building absolute URLs from Host does."""

    async def answer(request: web.Request) -> web.Response:
        origin = str(request.url.origin())
        headers = {"X-Seen-Path": request.raw_path, "X-Other": "/orders/7"}
        for asked, name in (
            ("x-reply-location", "Location"),
            ("x-reply-content-location", "Content-Location"),
        ):
            value = request.headers.get(asked)
            if value is not None:
                headers[name] = value.replace("{self}", origin)
        status = int(request.headers.get("x-reply-status", "201"))
        return web.Response(status=status, text="{}", headers=headers)

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/readyz", readyz)  # the health check of the `/v1` endpoint
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@pytest.mark.parametrize("upstream_http", ["native", "aiohttp"])
async def test_location_headers_name_the_public_path_of_the_route(
    upstream_http: str,
    start_backend: StartBackend,
    start_gateway: StartGateway,
    client: aiohttp.ClientSession,
) -> None:
    backend = await start_backend(_answering_app())
    gw = await start_gateway(ROUTES, {"orders": [backend], "legacy": [backend]},
                             upstream_http=upstream_http)  # fmt: skip
    port = backend.rsplit(":", 1)[1]
    elsewhere = f"http://127.0.0.1:{free_port()}"

    async def located(path: str, location: str, **extra: str) -> tuple[int, str, str]:
        headers = {"x-reply-location": location, **extra}
        async with client.post(gw.url + path, headers=headers, allow_redirects=False) as resp:
            assert resp.headers["X-Other"] == "/orders/7"  # other headers are never touched
            return resp.status, resp.headers["Location"], resp.headers["X-Seen-Path"]

    rewritten = {
        "/orders/7": "/api/orders/7",
        "/orders": "/api/orders",
        "/orders/": "/api/orders/",
        "/orders/7?view=full&q=a%20b#top": "/api/orders/7?view=full&q=a%20b#top",
        "/orders?page=2": "/api/orders?page=2",
        # absolute URLs of the endpoint's own origin, however it is spelled
        f"{backend}/orders/7?x=1": "/api/orders/7?x=1",
        f"HTTP://127.0.0.1:{port}/orders/7": "/api/orders/7",
        "{self}/orders/7": "/api/orders/7",
        f"{backend}/orders": "/api/orders",
        f"{backend}?x=1": f"{backend}?x=1",  # `/` is outside `/orders`: unchanged
    }
    unchanged = [
        "/stock/SKU-1",  # another route's space: what this route forwards to is /orders
        "/ordersX/1",  # not on a segment boundary
        "/",
        "orders/7",  # a relative reference resolves against the public URL already
        "../stock",
        f"//127.0.0.1:{port}/orders/7",  # a network-path reference names an authority
        "https://example.com/orders/7",  # another origin
        f"https://127.0.0.1:{port}/orders/7",  # another scheme
        f"{elsewhere}/orders/7",  # another port
        f"{backend}/stock/SKU-1",  # the endpoint's origin, outside the route
        "urn:yardarm:orders:7",
    ]
    cases = {**rewritten, **{value: value for value in unchanged}}
    for sent, expected in cases.items():
        status, location, seen = await located("/api/orders", sent)
        assert (status, seen) == (201, "/orders")
        assert location == expected, sent

    # A redirect is rewritten too, and both headers are, each on its own.
    status, location, _ = await located(
        "/api/orders/7", "/orders/7/receipt", **{"x-reply-status": "303"}
    )
    assert (status, location) == (303, "/api/orders/7/receipt")
    headers = {"x-reply-location": "https://example.com/x", "x-reply-content-location": "/orders/7"}
    async with client.get(f"{gw.url}/api/orders/7", headers=headers) as resp:
        assert resp.headers["Location"] == "https://example.com/x"
        assert resp.headers["Content-Location"] == "/api/orders/7"

    # Each route maps its own space: /stock is /api/stock here, and /orders is not.
    assert (await located("/api/stock", "/stock/SKU-1"))[1] == "/api/stock/SKU-1"
    assert (await located("/api/stock", "/orders/7"))[1] == "/orders/7"
    assert (await located("/api/other", "/other/1"))[1] == "/api/other/1"
    assert (await located("/api/other", "/"))[1] == "/api/"
    assert (await located("/api/other", "//example.com/x"))[1] == "//example.com/x"


async def test_the_path_of_an_endpoint_url_is_the_upstreams_never_public(
    start_backend: StartBackend, start_gateway: StartGateway, client: aiohttp.ClientSession
) -> None:
    backend = await start_backend(_answering_app())
    # `/api/legacy/x` goes to `<backend>/v1/legacy/x` (through aiohttp's client: the native
    # pool takes origins only).
    gw = await start_gateway(ROUTES, {"orders": [backend], "legacy": [f"{backend}/v1"]},
                             upstream_http="aiohttp")  # fmt: skip
    cases = {
        "/v1/legacy/8": "/api/legacy/8",
        "{self}/v1/legacy?x=1": "/api/legacy?x=1",
        "/legacy/8": "/legacy/8",  # outside what the route forwards to
        "/v1/orders/8": "/v1/orders/8",
    }
    for sent, expected in cases.items():
        headers = {"x-reply-location": sent}
        async with client.get(f"{gw.url}/api/legacy/7", headers=headers) as resp:
            assert (resp.status, resp.headers["X-Seen-Path"]) == (201, "/v1/legacy/7")
            assert resp.headers["Location"] == expected, sent
