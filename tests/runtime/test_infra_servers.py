"""The embedded infrastructure servers start for real and answer."""

from __future__ import annotations

import asyncpg
import nats


async def test_postgres_fixture_serves_queries(pg_database: str) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
    finally:
        await conn.close()


async def test_nats_fixture_has_jetstream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.account_info()
        assert info.limits is not None
    finally:
        await nc.close()
