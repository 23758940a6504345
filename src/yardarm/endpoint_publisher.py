"""Publish an upstream's endpoints in the gateway's routing document, and wait until
every gateway replica routes by them.

This is the control plane's half of live endpoints (Envoy's EDS, a Kubernetes
EndpointSlice): when instances start or leave, the document's `endpoints[upstream]` is
rewritten (compare-and-set on the key's version, so an admin's concurrent route change is
never lost) and each gateway replica, polling the document, applies it within its poll
interval. A gateway stops sending new requests to an endpoint that leaves the list and
lets the requests it has in flight finish, so the control plane stops the instance only
after every replica reports the new version. Every target uses it: the local supervisor
today, the Kubernetes and bare-metal controllers later.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from yardarm.model import GATEWAY_ROUTES

log = logging.getLogger("yardarm.endpoints")

ROUTING_KEY = "config/gateway/routing"
RETRY_S = 0.25
MAX_CAS_ATTEMPTS = 8


@dataclass(frozen=True)
class Endpoint:
    """One instance as every gateway replica reaches it."""

    url: str
    track: str

    def document(self) -> dict[str, str]:
        return {"url": self.url, "track": self.track}


class PublishError(RuntimeError):
    """The document could not be written before the deadline; the message says why."""


class EndpointPublisher:
    """Writes `endpoints` into the routing document with the admin credential."""

    def __init__(
        self,
        datastore_urls: Sequence[str],
        gateway_admin_urls: Sequence[str],
        token: str,
        *,
        verify: ssl.SSLContext | bool = True,
        timeout_s: float = 30.0,
    ) -> None:
        self._datastores = list(datastore_urls)
        self._gateways = list(gateway_admin_urls)
        self._headers = {"Authorization": f"Bearer {token}"}
        self._verify = verify
        self._timeout_s = timeout_s

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers=self._headers, verify=self._verify, timeout=5.0, trust_env=False
        )

    async def _datastore(
        self, client: httpx.AsyncClient, method: str, path: str, deadline: float, **kw: Any
    ) -> httpx.Response:
        """One request to the first replica that answers something other than 503."""
        last = "no replica answered"
        while time.monotonic() < deadline:
            for base in self._datastores:
                try:
                    response = await client.request(method, base + path, **kw)
                except httpx.HTTPError as exc:
                    last = f"{base}: {exc!r}"
                    continue
                if response.status_code != 503:
                    return response
                last = f"{base}: 503 {response.text[:200]}"
            await asyncio.sleep(RETRY_S)
        raise PublishError(f"the datastore did not take the routing document: {last}")

    async def publish(
        self, upstream: str, endpoints: Sequence[Endpoint], *, only_if_listed: bool = False
    ) -> int:
        """Set `endpoints[upstream]`; returns the document's version now in force.

        `only_if_listed`: change nothing unless the document lists this upstream's
        endpoints already (a stack that was scaled before, coming back up), so a stack
        never scaled keeps the endpoints its gateways were started with.
        """
        deadline = time.monotonic() + self._timeout_s
        listed = [endpoint.document() for endpoint in endpoints]
        async with self._client() as client:
            for _ in range(MAX_CAS_ATTEMPTS):
                got = await self._datastore(client, "GET", f"/kv/{ROUTING_KEY}", deadline)
                if got.status_code == 404:
                    doc: dict[str, Any] = {"routes": GATEWAY_ROUTES}
                    version = 0
                elif got.status_code == 200:
                    entry = got.json()
                    doc, version = dict(entry["value"]), int(entry["version"])
                else:
                    raise PublishError(f"reading {ROUTING_KEY}: {got.status_code} {got.text}")
                current = doc.get("endpoints", {}).get(upstream)
                if current == listed or (only_if_listed and current is None):
                    return version  # nothing to write
                doc["endpoints"] = {**doc.get("endpoints", {}), upstream: listed}
                put = await self._datastore(
                    client,
                    "PUT",
                    f"/kv/{ROUTING_KEY}",
                    deadline,
                    json={"value": doc, "if_version": version},
                )
                if put.status_code in (200, 201):
                    written = int(put.json()["version"])
                    log.info("published %d %s endpoint(s) in routing v%d", len(listed),
                             upstream, written)  # fmt: skip
                    return written
                if put.status_code != 409:
                    raise PublishError(f"writing {ROUTING_KEY}: {put.status_code} {put.text}")
        raise PublishError(f"{ROUTING_KEY} kept changing during {MAX_CAS_ATTEMPTS} attempts")

    async def wait_applied(self, version: int, timeout_s: float) -> list[str]:
        """Wait until every gateway replica routes by `version` or a later one; the admin
        URLs of replicas that did not within `timeout_s` (a replica that is down routes
        nothing, so the caller goes on)."""
        deadline = time.monotonic() + timeout_s
        pending = set(self._gateways)
        async with self._client() as client:
            while pending and time.monotonic() < deadline:
                for url in sorted(pending):
                    try:
                        response = await client.get(f"{url}/admin/routes")
                    except httpx.HTTPError:
                        continue
                    if response.status_code == 200 and response.json()["version"] >= version:
                        pending.discard(url)
                if pending:
                    await asyncio.sleep(0.1)
        return sorted(pending)
