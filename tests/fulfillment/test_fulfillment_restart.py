"""`python -m yardarm_fulfillment` killed mid-stream and started again loses and doubles nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import free_port, wait_for_port

from .conftest import Bus, charge, charge_v2, wait_until, write_flags

COMMANDS = 32


def start_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "yardarm_fulfillment"],
            env={**os.environ, **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


async def wait_ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"fulfillment on :{port} not ready after {timeout}s")


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
async def test_restart_mid_stream_loses_nothing_and_doubles_nothing(
    bus: Bus,
    pg_database: str,
    nats_url: str,
    tmp_path: Path,
    stop_signal: signal.Signals,
) -> None:
    flags = tmp_path / "flags.json"
    write_flags(flags, {"payments.latency-ms": 300})  # slow enough to stop it mid-stream
    port = free_port()
    env = {
        "YARDARM_FULFILLMENT_PORT": str(port),
        "YARDARM_FULFILLMENT_DATABASE_URL": pg_database,
        "YARDARM_FULFILLMENT_NATS_URL": nats_url,
        "YARDARM_FULFILLMENT_STATE_DIR": str(tmp_path / "state"),
        "YARDARM_FULFILLMENT_FLAGS_FILE": str(flags),
        "YARDARM_FULFILLMENT_BATCH": "4",
        "YARDARM_FULFILLMENT_ACK_WAIT_S": "2",
        "YARDARM_FULFILLMENT_BACKOFF_S": "0.2,0.5",
        "YARDARM_FULFILLMENT_MAX_BATCHES_IN_FLIGHT": "2",
    }
    log = tmp_path / "fulfillment.log"
    sagas = [str(uuid.uuid4()) for _ in range(COMMANDS)]
    for index, saga_id in enumerate(sagas):  # both schema versions in one stream
        if index % 2:
            await bus.send(charge_v2(saga_id), schema=2)
        else:
            await bus.send(charge(saga_id))

    proc = start_process(env, log)
    db = await asyncpg.connect(pg_database)
    try:
        wait_for_port(port, timeout=60)

        async def some_processed() -> bool:
            try:
                return int(await db.fetchval("SELECT count(*) FROM inbox")) >= 4
            except asyncpg.UndefinedTableError:
                return False

        await wait_until(some_processed, timeout=60, what="the first commands")
        proc.send_signal(stop_signal)
        # SIGTERM is a graceful stop (exit 0); SIGKILL leaves no say.
        expected = -signal.SIGKILL if stop_signal == signal.SIGKILL else 0
        assert proc.wait(timeout=30) == expected
        processed_before = int(await db.fetchval("SELECT count(*) FROM inbox"))
        assert processed_before < COMMANDS, "stopped too late to be mid-stream"

        proc = start_process(env, log)
        await wait_ready(port)

        async def all_replied() -> bool:
            return len({e.envelope.saga_id for e in await bus.events()}) == COMMANDS

        await wait_until(all_replied, timeout=90, what=f"replies for all {COMMANDS} sagas")
        # Every command acked and every reply published: no redelivery and no late reply
        # can follow.
        await wait_until(bus.quiet, timeout=30, what="fulfillment to go quiet")
        events = await bus.events()
        per_saga = Counter(e.envelope.saga_id for e in events)
        assert per_saga == Counter(dict.fromkeys(sagas, 1))
        assert {e.subject for e in events} == {"evt.payments.charged"}
        ledger = await db.fetch("SELECT saga_id, count(*) AS n FROM payments GROUP BY saga_id")
        assert {r["saga_id"]: r["n"] for r in ledger} == dict.fromkeys(sagas, 1)
        assert await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    finally:
        await db.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
