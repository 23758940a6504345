"""The outbox relay: publishes committed `outbox` rows to JetStream, in order, at least once.

Imported as `yardarm_kit.outbox` (it needs the kit's `postgres` extra). The table is the
one every service with an outbox creates: `outbox (id bigint, subject, msg_id, payload
jsonb, traceparent, schema smallint, created_at, published_at)`. Rows are claimed
`FOR UPDATE SKIP LOCKED` in small batches, so every replica can run the relay, published
with the traceparent and message schema (`yardarm-schema`) stored beside them and marked
published in the claiming transaction. A crash between publishing and committing
publishes a row again; envelope ids are deterministic, so JetStream's duplicate window
(Nats-Msg-Id) and the receivers' inboxes make that a no-op.

Published rows are only kept for `retention_s` (a week by default, long enough to
answer "was it sent?"): the relay deletes older ones in small batches, at most once a
minute, so the table stays small without a separate job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from nats.js import JetStreamContext

from yardarm_kit.messaging import Envelope, publish
from yardarm_kit.metrics import LabeledGauge
from yardarm_kit.postgres import Connection

MAX_BACKOFF_S = 5.0
RETENTION_S = 7 * 86400.0
PRUNE_EVERY_S = 60.0
PRUNE_BATCH = 500
PRUNE_ROUND_S = 0.5  # a round yields to publishing after this long; the next continues

# Runs in the claiming transaction with the ids of the rows just published.
AfterPublish = Callable[[Connection, list[int]], Awaitable[None]]


class OutboxRelay:
    """Publishes committed rows: right after a nudge, else every `poll_s`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        *,
        batch: int,
        poll_s: float,
        pending: LabeledGauge,
        log: logging.Logger,
        after_publish: AfterPublish | None = None,
        retention_s: float = RETENTION_S,
    ) -> None:
        self._pool = pool
        self._js = js
        self._batch = batch
        self._poll_s = poll_s
        self._pending = pending
        self._log = log
        self._after_publish = after_publish
        self._retention_s = float(retention_s)
        self._next_prune = 0.0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def nudge(self) -> None:
        """A transaction that wrote outbox rows has committed: publish without waiting."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="outbox-relay")

    async def stop(self, *, grace_s: float = 10.0, drain_s: float = 0.0) -> None:
        """Stop the loop, then publish what is pending for up to `drain_s`.

        The batch in hand may finish within `grace_s` (0 cancels it at once: its
        transaction rolls back and its rows stay pending); what is not published by the
        end waits for the next start.
        """
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=grace_s)
            if not done:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if drain_s <= 0:
            return
        try:
            async with asyncio.timeout(drain_s):
                while await self.publish_batch() >= self._batch:
                    pass
        except Exception as exc:
            self._log.warning("outbox not drained at shutdown (%r); a restart publishes it", exc)

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
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
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + PRUNE_EVERY_S
                try:
                    await self.prune()
                except Exception as exc:  # pruning can wait for the next round
                    self._log.warning("outbox relay: pruning failed: %r", exc)
            if published >= self._batch:
                continue  # a full batch: more are probably waiting
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()

    async def publish_batch(self) -> int:
        """Publish up to one batch of pending rows, oldest first; returns how many."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT id, subject, payload, traceparent, schema FROM outbox
                 WHERE published_at IS NULL
                 ORDER BY id
                 LIMIT $1
                   FOR UPDATE SKIP LOCKED
                """,
                self._batch,
            )
            for row in rows:
                envelope = Envelope.model_validate(row["payload"])
                await publish(
                    self._js,
                    row["subject"],
                    envelope,
                    traceparent=row["traceparent"],
                    schema=row["schema"],
                )
            if rows:
                ids = [row["id"] for row in rows]
                await conn.execute(
                    "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", ids
                )
                if self._after_publish is not None:
                    await self._after_publish(conn, ids)
        return len(rows)

    async def prune(self) -> int:
        """Delete published rows older than the retention, oldest first, a small batch
        per statement, for at most PRUNE_ROUND_S; returns how many went."""
        removed = 0
        deadline = time.monotonic() + PRUNE_ROUND_S
        while time.monotonic() < deadline:
            async with self._pool.acquire() as conn:
                status = await conn.execute(
                    """
                    DELETE FROM outbox WHERE id IN (
                        SELECT id FROM outbox
                         WHERE published_at < now() - make_interval(secs => $1)
                         ORDER BY id
                         LIMIT $2
                           FOR UPDATE SKIP LOCKED)
                    """,
                    self._retention_s,
                    PRUNE_BATCH,
                )
            count = int(status.split()[-1])
            removed += count
            if count < PRUNE_BATCH:
                break
        if removed:
            self._log.info("outbox: pruned %d published rows", removed)
        return removed

    async def _refresh_pending(self) -> None:
        async with self._pool.acquire() as conn:
            pending = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        self._pending.set(float(pending or 0))
