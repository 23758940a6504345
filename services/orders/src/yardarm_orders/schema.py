"""Versioned SQL migrations, applied in order at start-up.

Both replicas start at once, so the whole run holds a Postgres advisory lock: the second
replica waits, then finds everything applied. Files are never edited once shipped (a
changed checksum stops the process); schema changes are new, additive files.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from yardarm_orders.database import Connection

# Any constant shared by every version of this service; "yardarm_orders" as an int64.
MIGRATION_LOCK_ID = 0x7961726461726D4F
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """The database's migration record disagrees with the files shipped."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled_migrations() -> list[Migration]:
    """The migration files shipped in this package, in version order."""
    folder = resources.files("yardarm_orders").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


async def migrate(conn: Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply the migrations not yet applied; returns the names applied by this call."""
    todo = bundled_migrations() if migrations is None else migrations
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version     integer PRIMARY KEY,
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
            applied_now.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied_now
