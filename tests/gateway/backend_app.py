"""A controllable backend process for gateway integration tests.

    python tests/gateway/backend_app.py PORT NAME

Answers every path with `{"backend": NAME, "path": ..., "method": ...}` after the
configured latency and with the configured status; `/readyz` follows `ready`.
`POST /control` with `{"latency_ms": 300, "status": 200, "ready": true}` changes
behaviour at run time; `GET /control` returns the counters (requests seen, in flight).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from aiohttp import web

NAME = sys.argv[2] if len(sys.argv) > 2 else "backend"
STATE: dict[str, Any] = {"latency_ms": 0, "status": 200, "ready": True}
COUNTS = {"requests": 0, "in_flight": 0, "max_in_flight": 0}


async def control(request: web.Request) -> web.Response:
    if request.method == "POST":
        STATE.update(await request.json())
    return web.json_response({**STATE, **COUNTS, "backend": NAME})


async def readyz(_: web.Request) -> web.Response:
    return web.Response(status=200 if STATE["ready"] else 503, text=NAME)


async def serve(request: web.Request) -> web.Response:
    COUNTS["requests"] += 1
    COUNTS["in_flight"] += 1
    COUNTS["max_in_flight"] = max(COUNTS["max_in_flight"], COUNTS["in_flight"])
    try:
        await request.read()
        if STATE["latency_ms"]:
            await asyncio.sleep(STATE["latency_ms"] / 1000)
        body = {
            "items": [{"sku": "rope-10m"}],  # enough of the stock API for `yardarm load`
            "backend": NAME,
            "path": request.path_qs,
            "method": request.method,
            "headers": dict(request.headers),
        }
        return web.Response(
            status=int(STATE["status"]), text=json.dumps(body), content_type="application/json"
        )
    finally:
        COUNTS["in_flight"] -= 1


def main() -> None:
    app = web.Application()
    app.router.add_route("*", "/control", control)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", serve)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
