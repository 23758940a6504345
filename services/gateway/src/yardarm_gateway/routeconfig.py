"""The routing document: routes, track weights, manual ejections and upstream endpoints,
kept in the datastore.

Every gateway replica polls one key (`config/gateway/routing` by default) every
`config_poll_s` and applies a new version as soon as it sees it, so a change made
through any replica's admin API reaches all of them within a second, and survives
restarts. Writes are compare-and-set on the key's version: two admins never
overwrite each other's change unseen. Without a datastore the document lives only in
the process (tests, a lone gateway).

A document that fails validation (for instance written by hand through /api/kv) is
refused and counted; the gateway keeps routing with the last good one, and `version`
stays that one's, so a writer waiting for its version to be in force is not misled.

`endpoints` is written by the control plane as it scales services (an upstream listed
there is routed to exactly those endpoints; one not listed keeps the endpoints the
gateway was started with). The admin API never changes it and stores it back exactly as
it was read.

Credentials: the gateway reads the document with its own datastore credential, which
may only read `config/gateway/`; a change is written with the credential of the admin
who asked for it, so the gateway itself can never rewrite its routing. A refused read
is logged and counted (`refused`) like an unreachable datastore, and polling goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from yardarm_kit.datastore_client import DatastoreClient, DatastoreRefused, DatastoreUnavailable
from yardarm_kit.lifecycle import cancel_task

from yardarm_gateway.routing import Route
from yardarm_gateway.settings import EndpointSpec

log = logging.getLogger(__name__)

MAX_CAS_ATTEMPTS = 5


class Ejection(BaseModel):
    """An endpoint taken out of rotation by an operator until `until` (Unix seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstream: str
    endpoint: str
    until: float = Field(gt=0)
    reason: str = Field(default="admin", max_length=200)


class RoutingDoc(BaseModel):
    """What the admin API reads and writes, and the control plane's endpoint lists."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: list[Route]
    ejections: list[Ejection] = Field(default_factory=list)
    endpoints: dict[str, list[EndpointSpec]] = Field(
        default_factory=dict,
        description="per upstream, the endpoints to route to instead of those the gateway "
        "was started with (an empty list: none)",
    )

    @field_validator("endpoints")
    @classmethod
    def _distinct(cls, value: dict[str, list[EndpointSpec]]) -> dict[str, list[EndpointSpec]]:
        for upstream, specs in value.items():
            urls = [spec.url for spec in specs]
            if len(set(urls)) != len(urls):
                raise ValueError(f"upstream {upstream!r} lists an endpoint twice")
        return value

    def endpoints_of(
        self, upstream: str, bootstrap: Sequence[EndpointSpec]
    ) -> Sequence[EndpointSpec]:
        """The endpoints `upstream` routes to by this document; `bootstrap` when unlisted."""
        return self.endpoints.get(upstream, bootstrap)

    def stored(self) -> dict[str, Any]:
        """The JSON to store: `endpoints` exactly as it was given (no defaults added,
        absent when it was absent), so a change of routes or ejections leaves the control
        plane's lists as it wrote them."""
        data = self.model_dump(mode="json", exclude={"endpoints"})
        if "endpoints" in self.model_fields_set:
            data["endpoints"] = {
                upstream: [spec.model_dump(mode="json", exclude_unset=True) for spec in specs]
                for upstream, specs in self.endpoints.items()
            }
        return data


class RoutingConflict(Exception):
    """The document kept changing under a compare-and-set; the caller may try again."""


Apply = Callable[[RoutingDoc, int], None]
Check = Callable[[RoutingDoc], None]


def parse_doc(value: Any) -> RoutingDoc:
    """A RoutingDoc from stored JSON; raises ValueError with the field paths."""
    try:
        return RoutingDoc.model_validate(value)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None


class RoutingSync:
    """Keeps the local routing in step with the datastore's document."""

    def __init__(
        self,
        client: DatastoreClient | None,
        key: str,
        *,
        poll_s: float,
        check: Check,
        apply: Apply,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self._key = key
        self._poll_s = poll_s
        self._check = check
        self._apply = apply
        self._on_error = on_error
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._failing: str | None = None  # why the last read failed, logged once per outage
        self._seen = 0  # the last version read, valid or not: a bad one is refused once
        self.version = 0
        """The datastore version of the document in force (0: the built-in routes)."""
        self.doc: RoutingDoc | None = None

    @property
    def persistent(self) -> bool:
        return self._client is not None

    async def start(self) -> None:
        """Read the stored document once (a failure keeps the built-in routes), then poll."""
        if self._client is None:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="routing-sync")

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None

    async def refresh(self) -> None:
        """Apply the stored document if its version is new."""
        assert self._client is not None
        try:
            record = await self._client.get(self._key)
        except DatastoreUnavailable as exc:
            kind = "refused" if isinstance(exc, DatastoreRefused) else "unreachable"
            if self._failing != kind:  # log the outage once, count every failed poll
                why = (
                    "the datastore refused the gateway's credential (see datastore_token_file)"
                    if kind == "refused"
                    else "the datastore is unreachable"
                )
                log.warning(
                    "routing document not read: %s: %s", why, exc,
                    extra={"event": "routing_error", "kind": kind},
                )  # fmt: skip
            self._failing = kind
            if self._on_error is not None:
                self._on_error(kind)
            return
        if self._failing is not None:
            log.info("routing document readable again", extra={"event": "routing"})
            self._failing = None
        if record is None or record.version in (self._seen, self.version):
            return
        self._seen = record.version  # do not refuse (and count) the same bad version twice
        try:
            doc = parse_doc(record.value)
            self._check(doc)
        except ValueError as exc:
            self._error("invalid", f"routing document v{record.version} refused: {exc}")
            return
        self._install(doc, record.version)

    async def update(
        self,
        change: Callable[[RoutingDoc], RoutingDoc],
        base: RoutingDoc,
        *,
        token: str | None = None,
    ) -> int:
        """Apply `change` to the current document and store it; returns the new version.

        `base` is the document in force when nothing is stored yet (the built-in
        routes); a stored document that is invalid is replaced by the one in force with
        the change. The write is made with `token`, the credential of the admin asking
        (the read with the gateway's own). Raises ValueError when the changed document
        is invalid, RoutingConflict after repeated concurrent changes, DatastoreRefused
        when the datastore refused `token`, DatastoreUnavailable otherwise (a refused
        read included: that is the gateway's misconfiguration, not the caller's).
        """
        async with self._lock:
            if self._client is None:
                doc = change(self.doc or base)
                self._check(doc)
                self._install(doc, self.version + 1)
                return self.version
            for _ in range(MAX_CAS_ATTEMPTS):
                try:
                    record = await self._client.get(self._key)
                except DatastoreRefused as exc:
                    self._error("refused", f"routing document not read for a change: {exc}")
                    raise DatastoreUnavailable(
                        f"the datastore refused the gateway's own credential: {exc}"
                    ) from None
                current, version = base, 0
                if record is not None:
                    version = record.version
                    current = self.doc or base
                    with contextlib.suppress(ValueError):
                        current = parse_doc(record.value)
                doc = change(current)
                self._check(doc)
                result = await self._client.put(
                    self._key, doc.stored(), if_version=version, token=token
                )
                if result.applied and result.version is not None:
                    self._install(doc, result.version)
                    return result.version
                if not result.conflict:
                    raise DatastoreUnavailable(f"routing write answered {result.status}")
            raise RoutingConflict(
                f"the routing document changed {MAX_CAS_ATTEMPTS} times during this update"
            )

    def _install(self, doc: RoutingDoc, version: int) -> None:
        self._apply(doc, version)
        self.doc = doc
        self.version = self._seen = version
        log.info("routing v%d in force", version, extra={"event": "routing", "version": version})

    def _error(self, kind: str, message: str) -> None:
        log.warning(message, extra={"event": "routing_error", "kind": kind})
        if self._on_error is not None:
            self._on_error(kind)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self.refresh()
            except Exception:  # one bad round must not end the sync for good
                log.exception("routing refresh failed")
