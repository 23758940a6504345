"""Fixtures for fulfillment tests: a clean JetStream, the service in-process, and helpers
to send commands (schema 1 or 2) and read what reached the EVENTS and DLQ streams.

The NATS server is shared by the session, so every test starts from purged streams and
no `payments`/`shipping` durables (a durable keeps its first config and its backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from yardarm_fulfillment import Fulfillment, FulfillmentSettings, create_fulfillment
from yardarm_kit.messaging import Envelope, connect, ensure_streams

from tests.conftest import free_port

CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000002"


def new_traceparent() -> tuple[str, str]:
    """(traceparent, trace_id) for a fresh sampled trace."""
    trace_id = uuid.uuid4().hex
    return f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01", trace_id


def command(saga_id: str, kind: str, **data: Any) -> Envelope:
    """A command envelope as the orders saga builds it (id `<saga>:<type>`)."""
    return Envelope(type=kind, id=f"{saga_id}:{kind}", saga_id=saga_id, data=data)


def charge(saga_id: str, card: str = CARD_OK, amount_cents: int = 2500) -> Envelope:
    """`payments.charge` in its schema 1 shape."""
    return command(saga_id, "payments.charge", order_id=saga_id, amount_cents=amount_cents,
                   card=card)  # fmt: skip


def charge_v2(
    saga_id: str, card: str = CARD_OK, cents: int = 2500, currency: str = "USD"
) -> Envelope:
    """`payments.charge` in its schema 2 shape (send it with `schema=2`)."""
    amount = {"cents": cents, "currency": currency}
    return command(saga_id, "payments.charge", order_id=saga_id, amount=amount, card=card)


def refund(saga_id: str, amount_cents: int = 2500) -> Envelope:
    """`payments.refund` in its schema 1 shape."""
    return command(saga_id, "payments.refund", order_id=saga_id, amount_cents=amount_cents)


def refund_v2(saga_id: str, cents: int = 2500, currency: str = "USD") -> Envelope:
    """`payments.refund` in its schema 2 shape (send it with `schema=2`)."""
    amount = {"cents": cents, "currency": currency}
    return command(saga_id, "payments.refund", order_id=saga_id, amount=amount)


def schedule(saga_id: str, customer_id: str = "cust-1") -> Envelope:
    items = [{"sku": "anchor", "quantity": 2}]
    return command(saga_id, "shipping.schedule", order_id=saga_id, customer_id=customer_id,
                   items=items)  # fmt: skip


def cancel(saga_id: str) -> Envelope:
    return command(saga_id, "shipping.cancel", order_id=saga_id)


@dataclass
class Event:
    subject: str
    headers: dict[str, str]
    envelope: Envelope


@dataclass
class StoredMsg:
    subject: str
    headers: dict[str, str]
    data: bytes


# Fulfillment's durable consumers of COMMANDS.
DURABLES = ("payments", "shipping")


@dataclass
class Bus:
    nc: NATS
    js: JetStreamContext
    # The test's fulfillment database, where the replies wait in the outbox.
    database_url: str | None = None

    async def send(
        self,
        envelope: Envelope,
        *,
        traceparent: str | None = None,
        msg_id: str | None = None,
        schema: int = 1,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> None:
        """Publish a command on `cmd.<type>` with header `yardarm-schema: <schema>`;
        `msg_id` overrides the Nats-Msg-Id, `body` the serialised envelope."""
        sent = {"Nats-Msg-Id": msg_id or envelope.id, "yardarm-schema": str(schema)}
        if traceparent:
            sent["traceparent"] = traceparent
        sent.update(headers or {})
        data = envelope.model_dump_json().encode() if body is None else body
        await self.js.publish(f"cmd.{envelope.type}", data, headers=sent)

    async def stored(self, stream: str) -> list[StoredMsg]:
        """Every message stored in `stream` right now, in order."""
        info = await self.js.stream_info(stream)
        found: list[StoredMsg] = []
        if info.state.messages == 0:
            return found
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                raw = await self.js.get_msg(stream, seq)
            except NotFoundError:
                continue
            assert raw.data is not None and raw.subject is not None
            found.append(StoredMsg(raw.subject, dict(raw.headers or {}), raw.data))
        return found

    async def events(self) -> list[Event]:
        """Every message stored in EVENTS right now, in order."""
        return [
            Event(m.subject, m.headers, Envelope.model_validate_json(m.data))
            for m in await self.stored("EVENTS")
        ]

    async def wait_dead_letters(self, count: int = 1, *, timeout: float = 30.0) -> list[StoredMsg]:
        """Wait (bounded) until the DLQ stream holds `count` messages."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.stored("DLQ")
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} dead letters: {found}")
            await asyncio.sleep(0.05)

    async def quiet(self) -> bool:
        """Nothing can add an event any more: every command is delivered and acked (none
        waits for a first delivery, a redelivery or its ack) and every reply written is
        published."""
        for durable in DURABLES:
            try:
                info = await self.js.consumer_info("COMMANDS", durable)
            except NotFoundError:
                continue
            if info.num_pending or info.num_ack_pending:
                return False
        if self.database_url is None:
            return True
        conn = await asyncpg.connect(self.database_url)
        try:
            unpublished = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            )
        except asyncpg.UndefinedTableError:  # no fulfillment ever started here
            return True
        finally:
            await conn.close()
        return not unpublished

    async def wait_events(
        self, saga_id: str, count: int = 1, *, timeout: float = 30.0, settle: bool = False
    ) -> list[Event]:
        """Wait (bounded) until `count` events for the saga exist. With `settle`, then
        until the bus is `quiet`, so a test asserting "exactly N" also sees any extra one
        a redelivery or the outbox still had on its way."""
        deadline = time.monotonic() + timeout
        while True:
            mine = [e for e in await self.events() if e.envelope.saga_id == saga_id]
            if len(mine) >= count:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(mine)} of {count} events for {saga_id}: {mine}")
            await asyncio.sleep(0.05)
        if settle:
            await wait_until(self.quiet, timeout=timeout, what="fulfillment to go quiet")
            mine = [e for e in await self.events() if e.envelope.saga_id == saga_id]
        return mine


@pytest.fixture
async def bus(nats_url: str, pg_database: str) -> AsyncIterator[Bus]:
    nc, js = await connect(nats_url, "fulfillment-tests")
    await ensure_streams(js)
    for durable in DURABLES:
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer("COMMANDS", durable)
    for stream in ("COMMANDS", "EVENTS", "DLQ"):
        await js.purge_stream(stream)
    try:
        yield Bus(nc, js, pg_database)
    finally:
        await nc.close()


@pytest.fixture
async def db(pg_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's database, for asserting on the ledgers."""
    conn = await asyncpg.connect(pg_database)
    try:
        yield conn
    finally:
        await conn.close()


def write_flags(path: Path, flags: dict[str, float | int]) -> None:
    """A flagd flag file; each flag has one variant, its value. mtime is bumped so the
    provider's watcher sees every rewrite."""
    doc = {
        "flags": {
            key: {"state": "ENABLED", "variants": {"value": value}, "defaultVariant": "value"}
            for key, value in flags.items()
        }
    }
    previous = path.stat().st_mtime if path.exists() else 0.0
    path.write_text(json.dumps(doc))
    stamp = max(time.time(), previous + 1.0)
    os.utime(path, (stamp, stamp))


StartFulfillment = Callable[..., Awaitable[Fulfillment]]


@pytest.fixture
async def start_fulfillment(
    pg_database: str, nats_url: str, tmp_path: Path, bus: Bus
) -> AsyncIterator[StartFulfillment]:
    """Start fulfillment instances in this event loop; all stop at the end of the test."""
    started: list[Fulfillment] = []

    async def start(**overrides: Any) -> Fulfillment:
        fields: dict[str, Any] = {
            "port": free_port(),
            "database_url": pg_database,
            "nats_url": nats_url,
            "state_dir": tmp_path / "state",
            "instance": f"fulfillment-{len(started)}",
            # Short enough that redeliveries and dead letters take a second, not minutes.
            "ack_wait_s": 5.0,
            "backoff_s": [0.2],
            **overrides,
        }
        instance = create_fulfillment(FulfillmentSettings(**fields))
        await instance.service.start()
        started.append(instance)
        return instance

    try:
        yield start
    finally:
        for instance in reversed(started):
            await instance.service.stop()


def base_url(instance: Fulfillment) -> str:
    return f"http://127.0.0.1:{instance.settings.port}"


def metric_value(instance: Fulfillment, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for family in instance.service.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
