"""Shared fixtures: real NATS and real Postgres servers, started once per test session.

They use the same launchers as `yardarm up`, so the tests exercise the servers users run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from yardarm.local import binaries, infra


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


async def raw_exchange(port: int, raw: bytes) -> bytes:
    """Send `raw` bytes to 127.0.0.1:port and read what comes back (what no HTTP client
    library would send: malformed requests)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every 0.1 s; fail naming `what` once `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def require_servers() -> None:
    """Skip when nats-server or Postgres is missing on a laptop; under CI, fail instead."""
    try:
        binaries.nats_server_binary()
        binaries.postgres_bin_dir()
    except binaries.MissingDependencyError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide the servers: {exc}")
        pytest.skip(str(exc))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real nats-server with JetStream for the whole test session."""
    port = free_port()
    store = tmp_path_factory.mktemp("nats")
    cmd = infra.nats_command(port=port, monitor_port=free_port(), store_dir=store)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"nats://127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def postgres_port() -> Iterator[int]:
    """A real Postgres cluster for the whole test session; returns its port.

    Its data lives outside pytest's temp tree: another pytest session starting on the
    same machine resets that tree's permissions, which would lock the Postgres user out.
    """
    root = Path(tempfile.mkdtemp(prefix="yardarm-test-pg-"))
    data_dir = root / "data"
    run_as = infra.prepare_postgres(data_dir)
    port = free_port()
    log = open(data_dir.parent / "postgres.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        infra.postgres_command(data_dir=data_dir, port=port),
        stdout=log,
        stderr=subprocess.STDOUT,
        user=run_as.uid,
        group=run_as.gid,
        cwd=data_dir,
    )
    try:
        wait_for_port(port)
        deadline = time.monotonic() + 30
        while True:  # accepting TCP is not yet accepting queries
            try:
                asyncio.run(_ping(port))
                break
            except (OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield port
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


async def _ping(port: int) -> None:
    conn = await asyncpg.connect(infra.postgres_dsn(port))
    await conn.close()


@pytest.fixture(scope="session")
def postgres_admin_dsn(postgres_port: int) -> str:
    """The session's Postgres as a superuser; the container tests (tests/integration)
    override it with a Postgres container's."""
    return infra.postgres_dsn(postgres_port)


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str) -> AsyncIterator[str]:
    """A new, empty database on the server of `admin_dsn`; yields its DSN and drops it
    on the way out."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield urlsplit(admin_dsn)._replace(path=f"/{name}").geturl()
    finally:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def pg_database(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test; yields its DSN and drops it afterwards."""
    async with fresh_database(postgres_admin_dsn) as dsn:
        yield dsn
