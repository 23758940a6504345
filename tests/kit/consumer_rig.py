"""What the InboxConsumer tests share: a real NATS and Postgres, a recording handler, a
connection that counts its statements, and helpers to publish and wait.

Every test gets its own subject under `cmd.` and its own durables (deleted afterwards),
so tests never see each other's messages on the session's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from yardarm_kit import Metrics, ServiceSettings
from yardarm_kit.consumer import ConsumerMetrics, Delivery, InboxConsumer
from yardarm_kit.messaging import Envelope, connect, ensure_streams
from yardarm_kit.postgres import Connection

from tests.conftest import _stop, free_port, wait_for_port
from yardarm.local import infra

SCHEMA = """
CREATE TABLE inbox (
    msg_id        text        PRIMARY KEY,
    subject       text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE effects (
    msg_id      text    NOT NULL,
    delivery    integer NOT NULL,
    traceparent text
);
"""

log = logging.getLogger("tests.consumer")


class CountingConnection(asyncpg.Connection):
    """Records every statement the consumer sends, through whichever method."""

    statements: list[str] = []

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
        CountingConnection.statements.append(query)
        return await super().execute(query, *args, **kwargs)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.statements.append(query)
        return await super().fetch(query, *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.statements.append(query)
        return await super().fetchval(query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.statements.append(query)
        return await super().fetchrow(query, *args, **kwargs)


def statements(word: str) -> int:
    """How many recorded statements start with `word`: BEGIN and SAVEPOINT, or INSERT and
    DELETE on the inbox by a batch (the background pruning is not a batch's)."""
    found = 0
    for query in CountingConnection.statements:
        text = " ".join(query.split()).upper()
        if not text.startswith(word) or "PROCESSED_AT <" in text:
            continue
        if word in ("BEGIN", "SAVEPOINT") or "INBOX" in text:
            found += 1
    return found


@dataclass
class Recorder:
    """A MessageHandler that writes one `effects` row per apply and records everything."""

    fail_apply: dict[str, int] = field(default_factory=dict)  # id -> failures still to come
    fail_prepare: set[str] = field(default_factory=set)
    prepare_delay_s: float = 0.0
    apply_delay_s: float = 0.0
    hang_prepare: asyncio.Event | None = None  # prepare waits for it (a stuck provider)
    hang_apply: asyncio.Event | None = None  # apply waits for it after its write
    prepared: list[tuple[str, int]] = field(default_factory=list)
    applied: list[tuple[str, int, float]] = field(default_factory=list)
    committed: list[list[str]] = field(default_factory=list)
    preparing: int = 0
    most_preparing: int = 0
    applying: int = 0
    most_applying: int = 0
    on_commit: Callable[[], None] | None = None

    async def prepare(self, delivery: Delivery) -> None:
        self.prepared.append((delivery.envelope.id, delivery.num_delivered))
        self.preparing += 1
        self.most_preparing = max(self.most_preparing, self.preparing)
        try:
            if self.prepare_delay_s:
                await asyncio.sleep(self.prepare_delay_s)
            if self.hang_prepare is not None:
                await self.hang_prepare.wait()
            if delivery.envelope.id in self.fail_prepare:
                raise RuntimeError(f"provider down for {delivery.envelope.id}")
        finally:
            self.preparing -= 1

    async def apply(self, conn: Connection, delivery: Delivery) -> None:
        from yardarm_kit.messaging import current_traceparent

        key = delivery.envelope.id
        self.applied.append((key, delivery.num_delivered, time.monotonic()))
        self.applying += 1
        self.most_applying = max(self.most_applying, self.applying)
        try:
            await conn.execute(
                "INSERT INTO effects (msg_id, delivery, traceparent) VALUES ($1, $2, $3)",
                key, delivery.num_delivered, current_traceparent(),
            )  # fmt: skip
            if self.apply_delay_s:
                await asyncio.sleep(self.apply_delay_s)
            if self.hang_apply is not None:
                await self.hang_apply.wait()
            if self.fail_apply.get(key, 0) > 0:
                self.fail_apply[key] -= 1
                raise RuntimeError(f"boom: {key} cannot be applied")
        finally:
            self.applying -= 1

    def after_commit(self, applied: Sequence[Delivery]) -> None:
        self.committed.append([d.envelope.id for d in applied])
        if self.on_commit is not None:
            self.on_commit()


@dataclass
class Rig:
    nc: NATS
    js: JetStreamContext
    pool: asyncpg.Pool
    metrics: Metrics
    consumer_metrics: ConsumerMetrics
    spans: InMemorySpanExporter
    provider: TracerProvider
    subject: str
    started: list[InboxConsumer] = field(default_factory=list)
    durables: set[str] = field(default_factory=set)
    extra: list[NATS] = field(default_factory=list)
    nats_url: str = ""

    def consumer(self, handler: Any, *, js: JetStreamContext | None = None,
                 durable: str = "k", **kwargs: Any) -> InboxConsumer:  # fmt: skip
        """An InboxConsumer on this test's subject (durable name made unique)."""
        name = f"{durable}{self.subject.split('.')[1]}"
        self.durables.add(name)
        options: dict[str, Any] = {"ack_wait_s": 30.0, "backoff_s": (0.2,), "batch": 16}
        options.update(kwargs)
        consumer = InboxConsumer(
            js or self.js, self.pool, handler=handler, metrics=self.consumer_metrics,
            tracer=self.provider.get_tracer("test"), log=log, stream="COMMANDS",
            durable=name, filter_subject=self.subject, **options,
        )  # fmt: skip
        self.started.append(consumer)
        return consumer

    async def connection(self) -> tuple[NATS, JetStreamContext]:
        """Another NATS connection: another process, as far as the server can tell."""
        nc, js = await connect(self.nats_url, "kit-consumer-test")
        self.extra.append(nc)
        return nc, js

    async def send(
        self,
        key: str,
        *,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        schema: str | None = "2",
    ) -> int:
        """Publish envelope `key` (or a raw body); returns its stream sequence."""
        envelope = Envelope(type="kit.test", id=key, saga_id=f"saga-{key}", data={"k": key})
        wanted = {"Nats-Msg-Id": msg_id or f"{key}:{uuid.uuid4().hex[:6]}"}
        if schema is not None:
            wanted["yardarm-schema"] = schema
        wanted.update(headers or {})
        payload = envelope.model_dump_json().encode() if body is None else body
        ack = await self.js.publish(self.subject, payload, headers=wanted)
        return int(ack.seq)

    async def effects(self) -> list[tuple[str, int]]:
        rows = await self.pool.fetch("SELECT msg_id, delivery FROM effects ORDER BY msg_id")
        return [(row["msg_id"], row["delivery"]) for row in rows]

    async def inbox(self) -> set[str]:
        return {row["msg_id"] for row in await self.pool.fetch("SELECT msg_id FROM inbox")}

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):  # fmt: skip
                    total += sample.value
        return total

    async def dead_letter(self) -> Any:
        """The newest dead letter of this test's subject, or None."""
        try:
            return await self.js.get_msg("DLQ", subject=f"dlq.{self.subject}")
        except NotFoundError:
            return None

    async def dead_letter_count(self) -> int:
        info = await self.js.stream_info("DLQ", subjects_filter=f"dlq.{self.subject}")
        return sum((info.state.subjects or {}).values())


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool], *, timeout: float = 15.0, what: str = ""
) -> float:
    """Poll every 20 ms; returns the seconds it took; fails after `timeout`."""
    started = time.monotonic()
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what or 'condition'}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def rig(nats_url: str, pg_database: str) -> AsyncIterator[Rig]:
    nc, js = await connect(nats_url, "kit-consumer-test")
    await ensure_streams(js)
    setup = await asyncpg.connect(pg_database)
    try:
        await setup.execute(SCHEMA)
    finally:
        await setup.close()
    pool = await asyncpg.create_pool(
        pg_database, min_size=1, max_size=8, connection_class=CountingConnection
    )
    CountingConnection.statements = []
    metrics = Metrics(ServiceSettings(service="kit-test", port=8080))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    subject = f"cmd.kt{uuid.uuid4().hex[:10]}.do"
    rig = Rig(nc, js, pool, metrics, ConsumerMetrics(metrics), exporter, provider, subject,
              nats_url=nats_url)  # fmt: skip
    try:
        yield rig
    finally:
        for consumer in rig.started:
            await consumer.stop(grace_s=1.0)
        for durable in rig.durables:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer("COMMANDS", durable)
        for other in rig.extra:
            if not other.is_closed:
                await other.close()
        await pool.close()
        await nc.close()


class PrivateNats:
    """A nats-server of one test, which it may stop and start again (same port, same store)."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = infra.nats_command(port=self.port, monitor_port=free_port(), store_dir=self.store)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None
