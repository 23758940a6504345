"""The inbox table: which envelope ids a consumer has applied, so a redelivery applies once.

A row is written in the same transaction as the delivery's effects, so "in the inbox"
means "applied", whatever happened to the ack. The key is the envelope id, not the
transport's Nats-Msg-Id: a command republished under another transport id is still the
same command. Every table named here must have the columns
`msg_id text PRIMARY KEY, subject text, processed_at timestamptz DEFAULT now()`.

Rows only need to outlive redelivery and re-sends, so old ones are pruned in small
batches (`FOR UPDATE SKIP LOCKED`: replicas pruning the same table never wait on each
other, nor hold long locks).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence

import asyncpg

from yardarm_kit.lifecycle import cancel_task
from yardarm_kit.postgres import Connection

PRUNE_EVERY_S = 60.0
PRUNE_BATCH = 500
PRUNE_ROUND_S = 0.5  # one round stops after this long; the next minute continues

_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$")


def checked_table(name: str) -> str:
    """The table name, if it is a plain (optionally schema-qualified) identifier.

    It is interpolated into SQL, so anything else is refused rather than quoted.
    """
    if not _TABLE_NAME.match(name):
        raise ValueError(f"inbox table must be a lower-case SQL identifier, got {name!r}")
    return name


class Inbox:
    """The SQL of one inbox table."""

    def __init__(self, table: str) -> None:
        self.table = checked_table(table)
        self._claim = (
            f"INSERT INTO {self.table} (msg_id, subject)"
            " SELECT * FROM unnest($1::text[], $2::text[])"
            " ON CONFLICT DO NOTHING RETURNING msg_id"
        )
        self._forget = f"DELETE FROM {self.table} WHERE msg_id = ANY($1::text[])"
        self._prune = (
            f"DELETE FROM {self.table} WHERE msg_id IN ("
            f" SELECT msg_id FROM {self.table}"
            "  WHERE processed_at < now() - make_interval(secs => $1)"
            " LIMIT $2 FOR UPDATE SKIP LOCKED)"
        )

    async def claim(
        self, conn: Connection, msg_ids: Sequence[str], subjects: Sequence[str]
    ) -> set[str]:
        """Insert the ids in one statement; returns those not seen before.

        Ids go in sorted, so two transactions claiming overlapping ids lock them in the
        same order and wait for each other instead of deadlocking.
        """
        pairs = sorted(zip(msg_ids, subjects, strict=True))
        rows = await conn.fetch(self._claim, [p[0] for p in pairs], [p[1] for p in pairs])
        return {row[0] for row in rows}

    async def forget(self, conn: Connection, msg_ids: Sequence[str]) -> None:
        """Delete the rows of deliveries whose effects were rolled back."""
        await conn.execute(self._forget, list(msg_ids))

    async def prune(self, pool: asyncpg.Pool, retention_s: float) -> int:
        """Delete rows older than the retention, a small batch per transaction, for at
        most PRUNE_ROUND_S; returns how many went."""
        removed = 0
        deadline = time.monotonic() + PRUNE_ROUND_S
        while time.monotonic() < deadline:
            async with pool.acquire() as conn:
                status = await conn.execute(self._prune, float(retention_s), PRUNE_BATCH)
            count = int(status.split()[-1])
            removed += count
            if count < PRUNE_BATCH:
                break
        return removed


class InboxPruner:
    """Prunes one inbox table every PRUNE_EVERY_S until stopped."""

    def __init__(
        self, inbox: Inbox, pool: asyncpg.Pool, retention_s: float, log: logging.Logger
    ) -> None:
        self._inbox = inbox
        self._pool = pool
        self._retention_s = retention_s
        self._log = log
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"inbox-prune:{self._inbox.table}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_task(task)

    async def _loop(self) -> None:
        while True:
            try:
                removed = await self._inbox.prune(self._pool, self._retention_s)
                if removed:
                    self._log.info("pruned %d inbox rows from %s", removed, self._inbox.table)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: try again next round
                self._log.warning("pruning %s failed: %r", self._inbox.table, exc)
            await asyncio.sleep(PRUNE_EVERY_S)
