"""The asyncpg pool: jsonb values decoded to Python objects, sized for one replica."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # What the SQL functions accept: a plain connection or one borrowed from the pool.
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.Connection


async def _init_connection(conn: Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, max_size: int = 10) -> asyncpg.Pool:
    """A connection pool whose jsonb columns read and write plain Python values."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=max_size, init=_init_connection
    )
    return pool


async def saga_lock(conn: Connection, participant: str, saga_id: str) -> None:
    """Serialise one participant's commands for one saga until the transaction ends.

    A refund racing a charge (or a cancel racing a schedule) must see the other's row,
    or both would commit on stale reads.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{participant}:{saga_id}"
    )
