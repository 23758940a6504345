"""The outbox relay: each row goes out with the message schema stored beside it, and
published rows past the retention are pruned in small batches from the relay's loop."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from yardarm_kit import Metrics, ServiceSettings, outbox
from yardarm_kit.messaging import Envelope, connect, ensure_streams
from yardarm_kit.outbox import OutboxRelay
from yardarm_kit.postgres import create_pool

from tests.kit.consumer_rig import wait_until

OUTBOX = """
CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    subject       text        NOT NULL,
    msg_id        text        NOT NULL UNIQUE,
    payload       jsonb       NOT NULL,
    traceparent   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    schema        smallint    NOT NULL DEFAULT 1
);
"""
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass
class Setup:
    nc: NATS
    js: JetStreamContext
    pool: asyncpg.Pool
    relay: OutboxRelay
    subject: str

    async def add(self, key: str, *, schema: int | None = None, age: str | None = None,
                  published: bool = False) -> None:  # fmt: skip
        envelope = Envelope(type="t", id=f"{self.subject}:{key}", saga_id="s", data={"k": key})
        columns = "subject, msg_id, payload, traceparent"
        values = "$1, $2, $3, $4"
        if schema is not None:
            columns, values = f"{columns}, schema", f"{values}, {schema}"
        if age is not None:
            stamp = f"now() - interval '{age}'"
            columns += ", created_at, published_at"
            values += f", {stamp}, {stamp if published else 'NULL'}"
        await self.pool.execute(
            f"INSERT INTO outbox ({columns}) VALUES ({values})",
            self.subject, envelope.id, envelope.model_dump(), TRACEPARENT,
        )  # fmt: skip

    async def remaining(self) -> list[str]:
        rows = await self.pool.fetch("SELECT msg_id FROM outbox ORDER BY id")
        return [row["msg_id"].rsplit(":", 1)[1] for row in rows]


@pytest.fixture
async def setup(nats_url: str, pg_database: str) -> AsyncIterator[Setup]:
    nc, js = await connect(nats_url, "kit-relay-test")
    await ensure_streams(js)
    pool = await create_pool(pg_database, min_size=1, max_size=4)  # jsonb as Python values
    await pool.execute(OUTBOX)
    metrics = Metrics(ServiceSettings(service="kit-test", port=8080))
    pending = metrics.gauge("yardarm_outbox_pending", "Rows not yet published.")
    relay = OutboxRelay(pool, js, batch=10, poll_s=0.05, pending=pending,
                        log=logging.getLogger("t"))  # fmt: skip
    try:
        yield Setup(nc, js, pool, relay, f"evt.ob{uuid.uuid4().hex[:10]}.done")
    finally:
        await relay.stop(grace_s=1.0)
        await pool.close()
        await nc.close()


async def test_each_row_is_published_with_its_stored_schema(setup: Setup) -> None:
    await setup.add("v2", schema=2)
    await setup.add("v1")  # the column's default: rows written by a version before schemas
    assert await setup.relay.publish_batch() == 2
    sub = await setup.js.pull_subscribe(setup.subject, stream="EVENTS")
    msgs = await sub.fetch(2, timeout=5)
    seen = {Envelope.model_validate_json(m.data).data["k"]: dict(m.headers or {}) for m in msgs}
    assert seen["v2"]["yardarm-schema"] == "2" and seen["v1"]["yardarm-schema"] == "1"
    assert seen["v2"]["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
    assert await setup.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0


async def test_published_rows_past_the_retention_are_pruned_in_small_batches(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "PRUNE_BATCH", 2)
    for key in ("old1", "old2", "old3"):
        await setup.add(key, age="8 days", published=True)
    await setup.add("stuck", age="8 days")  # never published: kept whatever its age
    await setup.add("recent", age="1 day", published=True)
    statements: list[str] = []
    real_execute = asyncpg.pool.PoolConnectionProxy.execute

    async def counting(self: object, query: str, *args: object, **kwargs: object) -> str:
        if query.lstrip().startswith("DELETE"):
            statements.append(query)
        return await real_execute(self, query, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncpg.pool.PoolConnectionProxy, "execute", counting)
    assert await setup.relay.prune() == 3
    assert await setup.remaining() == ["stuck", "recent"]
    assert len(statements) == 2  # batches of PRUNE_BATCH rows

    await setup.add("old4", age="30 days", published=True)
    setup.relay.start()  # the loop prunes on its first round, then once a minute
    await wait_until(lambda: _gone(setup, "old4"), timeout=10.0, what="the loop's pruning")
    await setup.add("old5", age="30 days", published=True)
    # Two rows published one after the other: the loop went through a whole round, with
    # its chance to prune, after old5 was there; yet pruning is not due within the minute.
    for probe in ("probe1", "probe2"):
        await setup.add(probe)
        await wait_until(functools.partial(_published, setup, probe), timeout=10.0, what=probe)
    assert "old5" in await setup.remaining()


async def _gone(setup: Setup, key: str) -> bool:
    return key not in await setup.remaining()


async def _published(setup: Setup, key: str) -> bool:
    return bool(
        await setup.pool.fetchval(
            "SELECT published_at IS NOT NULL FROM outbox WHERE msg_id = $1",
            f"{setup.subject}:{key}",
        )
    )
