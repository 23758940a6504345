"""Backend applications shared by the gateway tests."""

from __future__ import annotations

import hashlib

from aiohttp import web


def echo_app(backend_id: str) -> web.Application:
    """A backend that says who it is and what it received."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "backend": backend_id,
                "method": request.method,
                "path": request.raw_path,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_len": len(body),
            },
            headers={"X-Backend": backend_id},
        )

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
