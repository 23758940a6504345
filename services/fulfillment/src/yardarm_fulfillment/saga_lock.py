"""A per-saga transaction lock, so one participant handles one saga's commands in turn."""

from __future__ import annotations

from yardarm_kit.postgres import Connection


async def saga_lock(conn: Connection, participant: str, saga_id: str) -> None:
    """Serialise one participant's commands for one saga until the transaction ends.

    A refund racing a charge (or a cancel racing a schedule) must see the other's row,
    or both would commit on stale reads.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{participant}:{saga_id}"
    )
