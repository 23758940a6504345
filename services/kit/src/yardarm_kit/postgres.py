"""Postgres for the services that own a database: the asyncpg pool and schema migrations.

Imported as `yardarm_kit.postgres` (not from the package root), so only services that
install the kit's `postgres` extra import asyncpg.

Migrations are versioned SQL files (`NNNN_name.sql`) in a package's `migrations/` folder,
applied in order at start-up. Replicas (or two versions during a rollout) may start at
once, so the whole run holds a Postgres advisory lock: the second waits, then finds
everything applied. Shipped files are never edited (a changed checksum stops the
process); schema changes are new, additive files, so the previous version keeps working.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # What the SQL functions accept: a plain connection or one borrowed from the pool.
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.Connection

_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


async def _init_connection(conn: Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A connection pool whose jsonb columns read and write plain Python values."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection
    )
    return pool


class MigrationError(RuntimeError):
    """The database's migration record disagrees with the files this version ships."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled_migrations(package: str) -> list[Migration]:
    """The migration files shipped in `package`'s `migrations/` folder, in version order."""
    folder = resources.files(package).joinpath("migrations")
    found = [
        Migration(int(match.group(1)), entry.name, entry.read_text("utf-8"))
        for entry in folder.iterdir()
        if (match := _FILE_NAME.match(entry.name))
    ]
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


async def migrate(
    conn: Connection, package: str, lock_id: int, migrations: list[Migration] | None = None
) -> list[str]:
    """Apply `package`'s migrations not applied yet; returns the names this call applied.

    `lock_id` is the advisory lock every version of one service shares; `migrations`
    replaces the bundled files (tests use it to ship a later or an edited file).
    """
    todo = bundled_migrations(package) if migrations is None else migrations
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", lock_id)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version     integer     PRIMARY KEY,
                name        text        NOT NULL,
                checksum    text        NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        done = {row["version"]: row for row in rows}
        for migration in todo:
            previous = done.get(migration.version)
            if previous is not None:
                if previous["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} changed after it was applied "
                        f"(as {previous['name']}); add a new migration file instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock_id)
    return applied
