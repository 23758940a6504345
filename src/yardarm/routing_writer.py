"""The control plane's writes to the gateway's routing document, and the wait until every
gateway replica routes by them.

Two writers share it. Live endpoints (Envoy's EDS, a Kubernetes EndpointSlice): when
instances start or leave, `endpoints[upstream]` is rewritten; a gateway stops sending new
requests to an endpoint that leaves the list and lets those in flight finish, so the
control plane stops the instance only after every replica reports the new version.
Rollouts: the weights of several routes (all of a service's) change in one write, so
the routes never disagree on a service's traffic split. Every write is a
compare-and-set on the key's version, so an admin's concurrent route change is never
lost. Every target uses it: the local supervisor today, the Kubernetes and bare-metal
controllers later.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx

from yardarm.control_kv import ControlKv, KvError
from yardarm.model import GATEWAY_ROUTES

log = logging.getLogger("yardarm.routing")

ROUTING_KEY = "config/gateway/routing"


@dataclass(frozen=True)
class Endpoint:
    """One instance as every gateway replica reaches it."""

    url: str
    track: str

    def document(self) -> dict[str, str]:
        return {"url": self.url, "track": self.track}


class PublishError(KvError):
    """The document could not be written before the deadline, or the change does not
    fit it (an unknown route); the message says why."""


# Changes the document in place; returns False when it needs no write.
Mutation = Callable[[dict[str, Any]], bool]


class Keep(enum.Enum):
    """The type of `KEEP`."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP
"""`set_splits(..., sticky=KEEP)` (the default): each route keeps the sticky it has."""


def _sticky_document(sticky: Mapping[str, str]) -> dict[str, str]:
    """`sticky` as the routing document holds it, checked as the gateway checks it, so a
    bad one is refused here rather than written and then rejected by every replica."""
    # Imported here: the gateway's package pulls in aiohttp, which the supervisor lacks.
    from pydantic import ValidationError
    from yardarm_gateway.split import StickyConfig

    try:
        config = StickyConfig.model_validate(dict(sticky))
    except ValidationError as exc:
        reasons = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            reason = error["msg"].removeprefix("Value error, ")
            reasons.append(f"{where}: {reason}" if where else reason)
        raise PublishError(f"sticky {dict(sticky)!r} refused: {'; '.join(reasons)}") from None
    return config.model_dump(exclude_none=True)


def _present(sticky: Any) -> Any:
    """A stored sticky without its null fields (the gateway's admin API writes them)."""
    if isinstance(sticky, dict):
        return {key: value for key, value in sticky.items() if value is not None}
    return sticky


class RoutingWriter:
    """Writes the routing document with the admin credential."""

    def __init__(
        self,
        datastore_urls: Sequence[str],
        gateway_admin_urls: Sequence[str],
        token: str,
        *,
        verify: ssl.SSLContext | bool = True,
        timeout_s: float = 30.0,
    ) -> None:
        self._kv = ControlKv(datastore_urls, token, verify=verify, timeout_s=timeout_s)
        self._gateways = list(gateway_admin_urls)

    async def update(self, mutate: Mutation, what: str) -> int:
        """Apply `mutate` to the document as it stands (the built-in routes when there is
        none yet) and write it back if it changed; the version now in force."""

        def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            current = doc if doc is not None else {"routes": copy.deepcopy(GATEWAY_ROUTES)}
            return current if mutate(current) else None

        try:
            return await self._kv.update(ROUTING_KEY, change, what)
        except PublishError:
            raise
        except KvError as exc:
            raise PublishError(str(exc)) from exc

    async def publish(
        self, upstream: str, endpoints: Sequence[Endpoint], *, only_if_listed: bool = False
    ) -> int:
        """Set `endpoints[upstream]`; returns the document's version now in force.

        `only_if_listed`: change nothing unless the document lists this upstream's
        endpoints already (a stack that was scaled before, coming back up), so a stack
        never scaled keeps the endpoints its gateways were started with.
        """
        listed = [endpoint.document() for endpoint in endpoints]

        def mutate(doc: dict[str, Any]) -> bool:
            current = doc.get("endpoints", {}).get(upstream)
            if current == listed or (only_if_listed and current is None):
                return False
            doc["endpoints"] = {**doc.get("endpoints", {}), upstream: listed}
            return True

        return await self.update(mutate, f"{len(listed)} {upstream} endpoint(s)")

    async def set_splits(
        self,
        routes: Sequence[str],
        weights: Mapping[str, int],
        *,
        sticky: Mapping[str, str] | Literal[Keep.KEEP] | None = KEEP,
    ) -> int:
        """Give every route in `routes` the same track weights, in one write (a weight
        of 0 keeps a track named; a split of one track at 100 is the plain route).

        `sticky` (`{"header": name}` or `{"cookie": name}`) is set on those routes in the
        same write, None removes it, and `KEEP` leaves each route's own: the gateway
        refuses a sticky without a split, so the two change together. A sticky that is
        not exactly one header or cookie named by an HTTP token is a PublishError and
        nothing is written.
        """
        wanted_sticky = sticky if sticky is None or sticky is KEEP else _sticky_document(sticky)

        def mutate(doc: dict[str, Any]) -> bool:
            by_name = {route.get("name"): route for route in doc.get("routes", [])}
            missing = [name for name in routes if name not in by_name]
            if missing:
                raise PublishError(f"the routing document has no route {', '.join(missing)}")
            wanted = dict(weights)
            changed = False
            for name in routes:
                route = by_name[name]
                if route.get("split") != wanted:
                    route["split"] = wanted
                    changed = True
                if wanted_sticky is KEEP:
                    continue
                if wanted_sticky is None:
                    changed |= route.pop("sticky", None) is not None
                elif _present(route.get("sticky")) != wanted_sticky:
                    route["sticky"] = dict(wanted_sticky)
                    changed = True
            return changed

        shown = ", ".join(f"{track} {weight}" for track, weight in sorted(weights.items()))
        what = f"{', '.join(routes)} split {shown}"
        if wanted_sticky is None:
            what += ", not sticky"
        elif wanted_sticky is not KEEP:
            what += ", sticky " + " ".join(next(iter(wanted_sticky.items())))
        return await self.update(mutate, what)

    async def wait_applied(self, version: int, timeout_s: float) -> list[str]:
        """Wait until every gateway replica routes by `version` or a later one; the admin
        URLs of replicas that did not within `timeout_s` (a replica that is down routes
        nothing, so the caller goes on)."""
        deadline = time.monotonic() + timeout_s
        pending = set(self._gateways)
        async with self._kv.client() as client:
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
