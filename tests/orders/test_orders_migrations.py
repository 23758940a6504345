"""Schema migrations: ordered, recorded, idempotent, and safe when replicas race."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from yardarm_kit import postgres
from yardarm_kit.postgres import Migration, MigrationError
from yardarm_orders.app import MIGRATION_LOCK_ID

PACKAGE = "yardarm_orders"

EXPECTED_TABLES = {
    "orders",
    "idempotency_keys",
    "sagas",
    "reservations",
    "saga_history",
    "outbox",
    "inbox",
    "schema_migrations",
}


def bundled_migrations() -> list[Migration]:
    return postgres.bundled_migrations(PACKAGE)


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    return await postgres.migrate(conn, PACKAGE, MIGRATION_LOCK_ID, migrations)


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row["tablename"] for row in rows}


def test_bundled_migrations_are_numbered_from_0001_in_order() -> None:
    migrations = bundled_migrations()
    assert migrations[0].name == "0001_init.sql"
    versions = [m.version for m in migrations]
    assert versions == sorted(versions) == list(range(1, len(versions) + 1))


async def test_migrate_twice_applies_once(pg_database: str) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        first = await migrate(conn)
        second = await migrate(conn)
        assert first == [m.name for m in bundled_migrations()]
        assert second == []
        assert await _tables(conn) >= EXPECTED_TABLES
        recorded = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert recorded == len(first)
    finally:
        await conn.close()


async def test_concurrent_replicas_apply_each_migration_exactly_once(pg_database: str) -> None:
    conns = [await asyncpg.connect(pg_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(conn) for conn in conns))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(m.name for m in bundled_migrations())
        assert await _tables(conns[0]) >= EXPECTED_TABLES
    finally:
        for conn in conns:
            await conn.close()


async def test_a_later_migration_applies_on_top_and_an_edited_one_is_refused(
    pg_database: str,
) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        shipped = bundled_migrations()
        await migrate(conn, shipped)
        extra = Migration(
            len(shipped) + 1, "9999_add_note.sql", "ALTER TABLE orders ADD COLUMN note text;"
        )
        assert await migrate(conn, [*shipped, extra]) == ["9999_add_note.sql"]
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders'"
        )
        assert "note" in {row["column_name"] for row in columns}

        edited = Migration(shipped[0].version, shipped[0].name, shipped[0].sql + "\n-- edited")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, [edited])
        # the advisory lock was released despite the error: another run proceeds at once
        assert await asyncio.wait_for(migrate(conn, shipped), timeout=30) == []
    finally:
        await conn.close()
