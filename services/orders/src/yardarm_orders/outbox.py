"""The outbox relay: publishes committed outbox rows to JetStream, in order, at least once.

Rows are claimed `FOR UPDATE SKIP LOCKED` in small batches, so every replica can run the
relay; a row is marked published in the same transaction that claimed it. A crash between
publishing and committing publishes the row again, which JetStream (Nats-Msg-Id) and the
participants' inboxes turn into a no-op. Once published, the card number a charge command
carried is deleted from its row: the payment provider has it, we no longer need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
from yardarm_kit.messaging import Envelope, publish

from yardarm_orders.saga.metrics import SagaMetrics


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        js: Any,
        *,
        batch: int,
        poll_interval_s: float,
        metrics: SagaMetrics,
        log: logging.Logger,
    ) -> None:
        self._pool = pool
        self._js = js
        self._batch = batch
        self._poll_interval_s = poll_interval_s
        self._metrics = metrics
        self._log = log
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def nudge(self) -> None:
        """Publish now: a transaction that wrote outbox rows just committed."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="outbox-relay")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Let the current unit of work finish (bounded by `grace_s`), then stop."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=grace_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                published = await self.publish_batch()
                await self._update_pending()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                self._log.exception("outbox relay: publishing failed; retrying")
                published = 0
                await asyncio.sleep(min(5.0, self._poll_interval_s * 2**failures))
            if published >= self._batch:
                continue  # more may be waiting
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def publish_batch(self) -> int:
        """Publish up to one batch of pending rows; returns how many were published."""
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
                    """
                    UPDATE outbox
                       SET published_at = now(), payload = payload #- '{data,card}'
                     WHERE id = ANY($1::bigint[])
                    """,
                    [row["id"] for row in rows],
                )
        return len(rows)

    async def _update_pending(self) -> None:
        async with self._pool.acquire() as conn:
            pending = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        self._metrics.outbox_pending.set(float(pending or 0))
