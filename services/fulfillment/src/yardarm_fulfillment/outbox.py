"""The reply outbox: rows written in the command's transaction, published after commit.

The relay claims unpublished rows `FOR UPDATE SKIP LOCKED` in small batches (so replicas
can share the work), publishes each with the traceparent stored beside it and marks it
published in the claiming transaction. A crash between publish and commit publishes the
row again; its envelope id is deterministic (`<command id>:reply`), so JetStream's
duplicate window and the orchestrator's inbox make that a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from nats.js import JetStreamContext
from yardarm_kit.messaging import Envelope, publish

from yardarm_fulfillment.database import Connection
from yardarm_fulfillment.metrics import FulfillmentMetrics

MAX_BACKOFF_S = 5.0


async def enqueue(
    conn: Connection, subject: str, envelope: Envelope, traceparent: str | None
) -> None:
    """Add a reply to the outbox of the open transaction (once per envelope id)."""
    await conn.execute(
        "INSERT INTO outbox (subject, msg_id, payload, traceparent) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (msg_id) DO NOTHING",
        subject,
        envelope.id,
        envelope.model_dump(mode="json"),
        traceparent,
    )


class OutboxRelay:
    """Publishes committed replies: right after a nudge, else every `poll_s`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        *,
        batch: int,
        poll_s: float,
        metrics: FulfillmentMetrics,
        log: logging.Logger,
    ) -> None:
        self._pool = pool
        self._js = js
        self._batch = batch
        self._poll_s = poll_s
        self._metrics = metrics
        self._log = log
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def nudge(self) -> None:
        """A transaction that wrote a reply has committed: publish without waiting."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="outbox-relay")

    async def stop(self, drain_s: float = 5.0) -> None:
        """Stop the loop, then publish what is pending (bounded); the rest waits for restart."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            async with asyncio.timeout(drain_s):
                while await self.publish_batch() >= self._batch:
                    pass
        except Exception as exc:
            self._log.warning("outbox not drained at shutdown (%r); a restart publishes it", exc)

    async def _loop(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                published = await self.publish_batch()
                await self._refresh_pending()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                self._log.exception("outbox relay: publishing failed; retrying")
                await asyncio.sleep(min(MAX_BACKOFF_S, self._poll_s * 2**failures))
                continue
            if published >= self._batch:
                continue  # a full batch: more are probably waiting
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()

    async def publish_batch(self) -> int:
        """Publish up to one batch of pending replies, oldest first; returns how many."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT id, subject, payload, traceparent FROM outbox
                 WHERE published_at IS NULL
                 ORDER BY id
                 LIMIT $1
                   FOR UPDATE SKIP LOCKED
                """,
                self._batch,
            )
            for row in rows:
                envelope = Envelope.model_validate(row["payload"])
                await publish(self._js, row["subject"], envelope, traceparent=row["traceparent"])
            if rows:
                await conn.execute(
                    "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
                    [row["id"] for row in rows],
                )
        return len(rows)

    async def _refresh_pending(self) -> None:
        async with self._pool.acquire() as conn:
            pending = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        self._metrics.outbox_pending.set(float(pending or 0))
