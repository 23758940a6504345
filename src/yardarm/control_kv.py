"""The control plane's documents in the datastore, changed by compare-and-set.

The routing document (`config/gateway/routing`) and the rollouts (`rollouts/...`) are
JSON documents that several writers change: an admin, the supervisor, the rollout
controller. Every change reads the document with its version, changes it, and writes it
back only if nobody wrote in between (`if_version`; 0: only if absent), reading again
on a conflict, so no writer's change is ever lost. Requests go to the first replica that
answers something other than 503 (a follower without a leader, an election).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

log = logging.getLogger("yardarm.control_kv")

RETRY_S = 0.25
MAX_CAS_ATTEMPTS = 8

# The document as it stands (None: absent) -> the document to write, or None to write
# nothing. It may raise to refuse the change.
Change = Callable[[dict[str, Any] | None], dict[str, Any] | None]


class KvError(RuntimeError):
    """The datastore did not answer, refused, or the document kept changing; or the
    change refused itself. The message says which."""


class ControlKv:
    """JSON documents under the admin credential, on any replica of the datastore."""

    def __init__(
        self,
        datastore_urls: Sequence[str],
        token: str,
        *,
        verify: ssl.SSLContext | bool = True,
        timeout_s: float = 30.0,
    ) -> None:
        self._datastores = list(datastore_urls)
        self._headers = {"Authorization": f"Bearer {token}"}
        self._verify = verify
        self.timeout_s = timeout_s

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers=self._headers, verify=self._verify, timeout=5.0, trust_env=False
        )

    async def _request(
        self, client: httpx.AsyncClient, method: str, path: str, deadline: float, **kw: Any
    ) -> httpx.Response:
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
        raise KvError(f"the datastore did not answer: {last}")

    async def get(self, key: str) -> tuple[dict[str, Any] | None, int]:
        """The document and its version (None and 0 when absent)."""
        deadline = time.monotonic() + self.timeout_s
        async with self.client() as client:
            return await self._get(client, key, deadline)

    async def _get(
        self, client: httpx.AsyncClient, key: str, deadline: float
    ) -> tuple[dict[str, Any] | None, int]:
        got = await self._request(client, "GET", f"/kv/{key}", deadline)
        if got.status_code == 404:
            return None, 0
        if got.status_code != 200:
            raise KvError(f"reading {key}: {got.status_code} {got.text[:300]}")
        entry = got.json()
        return dict(entry["value"]), int(entry["version"])

    async def update(self, key: str, change: Change, what: str) -> int:
        """Apply `change` to the document as it stands and write the result back
        (compare-and-set, again on a concurrent write); the version now in force."""
        deadline = time.monotonic() + self.timeout_s
        async with self.client() as client:
            for _ in range(MAX_CAS_ATTEMPTS):
                doc, version = await self._get(client, key, deadline)
                new = change(doc)
                if new is None:
                    return version  # nothing to write
                put = await self._request(
                    client,
                    "PUT",
                    f"/kv/{key}",
                    deadline,
                    json={"value": new, "if_version": version},
                )
                if put.status_code in (200, 201):
                    written = int(put.json()["version"])
                    log.info("%s v%d: %s", key, written, what)
                    return written
                if put.status_code != 409:
                    raise KvError(f"writing {key}: {put.status_code} {put.text[:300]}")
        raise KvError(f"{key} kept changing during {MAX_CAS_ATTEMPTS} attempts")
