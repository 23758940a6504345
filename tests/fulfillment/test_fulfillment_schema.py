"""Migrations: applied once, safely concurrent, and a shipped file may not change."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from yardarm_fulfillment.app import MIGRATION_LOCK_ID
from yardarm_kit import postgres
from yardarm_kit.postgres import Migration, MigrationError

PACKAGE = "yardarm_fulfillment"


def bundled_migrations() -> list[Migration]:
    return postgres.bundled_migrations(PACKAGE)


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    return await postgres.migrate(conn, PACKAGE, MIGRATION_LOCK_ID, migrations)


async def test_migrations_apply_once_and_create_the_ledgers(pg_database: str) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        first = await migrate(conn)
        again = await migrate(conn)
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
    finally:
        await conn.close()
    assert first == [m.name for m in bundled_migrations()]
    assert again == []
    assert {"inbox", "payments", "shipments", "outbox", "schema_migrations"} <= tables


async def test_concurrent_starts_apply_each_migration_exactly_once(pg_database: str) -> None:
    conns = [await asyncpg.connect(pg_database) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        for c in conns:
            await c.close()
    assert sorted(len(r) for r in results) == [0, 0, len(bundled_migrations())]
    assert count == len(bundled_migrations())


async def test_an_edited_migration_stops_the_start(pg_database: str) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
        edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in bundled_migrations()]
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, edited)
    finally:
        await conn.close()


async def test_the_ledger_allows_one_charge_and_one_refund_per_saga(pg_database: str) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
        insert = (
            "INSERT INTO payments (saga_id, order_id, kind, amount_cents, status)"
            " VALUES ('s', 'o', $1, 100, $2)"
        )
        await conn.execute(insert, "charge", "charged")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert, "charge", "declined")
        await conn.execute(insert, "refund", "refunded")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert, "refund", "refunded")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO payments (saga_id, order_id, kind, amount_cents, status)"
                " VALUES ('t', 'o', 'charge', 100, 'refunded')"
            )
    finally:
        await conn.close()


async def test_migration_0002_only_expands_so_the_previous_version_keeps_writing(
    pg_database: str,
) -> None:
    """Rows the previous version wrote, and writes it still makes, read as USD, schema 1."""
    first, *later = bundled_migrations()
    assert first.version == 1 and later, "0002 ships beside 0001"
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn, [first])
        previous_version_writes = [
            "INSERT INTO payments (saga_id, order_id, kind, amount_cents, status)"
            " VALUES ($1, 'o', 'charge', 100, 'charged')",
            "INSERT INTO outbox (subject, msg_id, payload) VALUES ('evt.x', $1, '{}')",
            "INSERT INTO inbox (msg_id, subject) VALUES ($1, 'cmd.x')",
        ]
        for sql in previous_version_writes:
            await conn.execute(sql, "before")
        await migrate(conn)
        for sql in previous_version_writes:
            await conn.execute(sql, "after")
        currencies = await conn.fetch("SELECT DISTINCT currency FROM payments")
        schemas = await conn.fetch("SELECT DISTINCT schema FROM outbox")
        assert await conn.fetchval("SELECT count(*) FROM inbox") == 2
    finally:
        await conn.close()
    assert [r["currency"] for r in currencies] == ["USD"]
    assert [r["schema"] for r in schemas] == [1]


async def test_the_ledger_refuses_a_currency_that_is_not_an_iso_code(pg_database: str) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO payments (saga_id, order_id, kind, amount_cents, status, currency)"
                " VALUES ('s', 'o', 'charge', 100, 'charged', 'dollars')"
            )
    finally:
        await conn.close()
