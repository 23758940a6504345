"""The services' databases on a stack's Postgres, for every target."""

from __future__ import annotations

from collections.abc import Sequence

SERVICE_DATABASES = ("orders", "fulfillment")


async def create_databases(dsn: str, names: Sequence[str]) -> None:
    """Create each database unless it exists (idempotent; safe to run on every start).

    `dsn` names a database the user may connect to (`postgres`) as a role that may
    create databases."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for name in names:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
