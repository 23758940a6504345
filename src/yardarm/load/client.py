"""The HTTP side of a run: one keep-alive session, one attempt per request, named errors."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from yardarm.load.mix import PlannedRequest


class LoadSetupError(RuntimeError):
    """The run could not start (target unreachable, no SKUs); `hint` says what to do."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request ended with: an HTTP status, or a transport error's name."""

    status: int | None
    error: str | None = None
    order_id: str | None = None


def open_session(
    connections: int, timeout_s: float, ca_file: Path | None = None
) -> aiohttp.ClientSession:
    """A session whose connection limit is the number of senders, and that never retries.

    aiohttp resends an idempotent request once when a reused keep-alive connection turns
    out closed; a load generator must show that failure instead, as its own test client
    does (`aiohttp.test_utils` clears the same flag). `ca_file` is trusted for https.
    """
    tls = True if ca_file is None else ssl.create_default_context(cafile=str(ca_file))
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections, ssl=tls)

    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        raise_for_status=False,
    )
    session._retry_connection = False
    return session


def error_name(exc: BaseException) -> str:
    """A stable short name for a transport failure (summary keys depend on it)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "protocol"
    if isinstance(exc, aiohttp.ClientOSError):
        return "os_error"
    return type(exc).__name__


async def send(session: aiohttp.ClientSession, base_url: str, planned: PlannedRequest) -> Outcome:
    """Send once and read the whole answer; failures come back as an Outcome, not raised."""
    try:
        async with session.request(
            planned.method,
            base_url + planned.path,
            json=planned.body,
            headers=planned.headers,
            allow_redirects=False,
        ) as response:
            body = await response.read()
            location = response.headers.get("Location")
            status = response.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Outcome(None, error_name(exc))
    order_id = None
    if planned.kind == "orders" and 200 <= status < 300:
        order_id = _order_id(body, location)
    return Outcome(status, order_id=order_id)


def _order_id(body: bytes, location: str | None) -> str | None:
    """The id from the 202 body, else the last segment of its Location."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("id"), str) and document["id"]:
        return str(document["id"])
    if location:
        last = location.rstrip("/").rsplit("/", 1)[-1]
        return last or None
    return None


async def fetch_skus(session: aiohttp.ClientSession, base_url: str) -> list[str]:
    """The SKUs from GET /api/stock: the run's first contact, so it also proves reachability."""
    url = f"{base_url}/api/stock"
    hint = "is the stack up? check `uv run yardarm status`, start it with `uv run yardarm up`"
    try:
        async with session.get(url, allow_redirects=False) as response:
            status = response.status
            text = await response.text(errors="replace")
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise LoadSetupError(
            f"could not reach {url}: {error_name(exc)} ({str(exc) or type(exc).__name__})", hint
        ) from exc
    if status != 200:
        raise LoadSetupError(f"GET {url} answered {status}: {text[:200]}", hint)
    try:
        document: Any = json.loads(text)
    except ValueError as exc:
        raise LoadSetupError(f"GET {url} did not answer JSON: {text[:200]}", hint) from exc
    items = document.get("items") if isinstance(document, dict) else None
    skus: list[str] = []
    for item in items if isinstance(items, list) else []:
        sku = item.get("sku") if isinstance(item, dict) else None
        if isinstance(sku, str) and sku and sku not in skus:
            skus.append(sku)
    if not skus:
        raise LoadSetupError(
            f"GET {url} listed no SKUs, so there is nothing to order",
            "`uv run yardarm up` seeds the demo catalog; check `curl " + url + "`",
        )
    return skus
