"""Schema migrations: ordered, recorded, idempotent, and safe when replicas race."""

from __future__ import annotations

import asyncio
import uuid

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


async def test_0002_expands_a_database_at_0001_with_rows_and_0001_writes_keep_working(
    pg_database: str,
) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        shipped = bundled_migrations()
        assert [m.name for m in shipped[:2]] == ["0001_init.sql", "0002_saga_timeouts_schema.sql"]
        await migrate(conn, shipped[:1])
        await _write_as_0001(conn, uuid.uuid4(), "first")
        assert await migrate(conn, shipped[:2]) == ["0002_saga_timeouts_schema.sql"]

        # rows from before the migration read with the new columns' defaults
        old = await conn.fetchrow(
            "SELECT o.currency, s.deadline_at, x.schema, i.subject FROM orders o"
            " JOIN sagas s ON s.order_id = o.id, outbox x, inbox i WHERE i.msg_id = 'first'"
        )
        assert old is not None and dict(old) == {
            "currency": "USD",
            "deadline_at": None,
            "schema": 1,
            "subject": None,
        }
        # a replica of the previous version still writes every table as it did
        await _write_as_0001(conn, uuid.uuid4(), "second")
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE schema = 1") == 2
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE currency = 'USD'") == 2
    finally:
        await conn.close()


async def _write_as_0001(conn: asyncpg.Connection, order_id: uuid.UUID, msg_id: str) -> None:
    """The statements the 0001-era service ran, column lists and all."""
    await conn.execute(
        "INSERT INTO orders (id, customer_id, items, total_cents, card_last4, status)"
        " VALUES ($1, 'c', '[]', 500, '4242', 'PENDING')",
        order_id,
    )
    await conn.execute(
        "INSERT INTO sagas (order_id, state, card) VALUES ($1, 'CHARGING', '4242424242424242')",
        order_id,
    )
    await conn.execute(
        "UPDATE sagas SET state = 'CHARGING', lease_owner = NULL, lease_until = NULL,"
        " attempts = 0, next_attempt_at = now(), step_started_at = now(), updated_at = now()"
        " WHERE order_id = $1",
        order_id,
    )
    await conn.execute(
        "INSERT INTO outbox (subject, msg_id, payload, traceparent) VALUES ($1, $2, $3, NULL)",
        "cmd.payments.charge",
        f"{order_id}:payments.charge",
        '{"type": "payments.charge"}',
    )
    await conn.execute("INSERT INTO inbox (msg_id) VALUES ($1)", msg_id)
