"""Is an instance ready to be depended on? One probe per readiness kind."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl

import httpx

from yardarm.local import infra
from yardarm.local.render import InstanceSpec

PROBE_TIMEOUT_S = 2.0


@functools.cache
def _trusting(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


async def _http(url: str, ca_file: str | None) -> bool:
    verify: ssl.SSLContext | bool = _trusting(ca_file) if ca_file is not None else True
    try:
        async with httpx.AsyncClient(
            timeout=PROBE_TIMEOUT_S, trust_env=False, verify=verify
        ) as client:
            response = await client.get(url)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def _tcp(port: int) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), PROBE_TIMEOUT_S
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _postgres(port: int, databases: list[str]) -> bool:
    """Answers `SELECT 1`, then has the services' databases (created on first readiness)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(infra.postgres_dsn(port), timeout=PROBE_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        if await conn.fetchval("SELECT 1") != 1:
            return False
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    finally:
        await conn.close()
    if databases:
        await infra.create_databases(port, databases)
    return True


async def probe(spec: InstanceSpec) -> bool:
    """One readiness check; never raises for an instance that is merely not ready yet."""
    if spec.readiness == "http":
        url = spec.readiness_url or f"http://127.0.0.1:{spec.port}/readyz"
        return await _http(url, spec.readiness_ca_file)

    if spec.readiness == "tcp":
        return await _tcp(spec.port)
    return await _postgres(spec.port, spec.databases)
