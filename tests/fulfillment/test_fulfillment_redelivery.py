"""Failures roll a delivery back and it is redelivered on the backoff, then applied once:
injected after the writes (`fault.consumer-error-rate`), before the transaction
(`fault.transient-error-rate`), slowed (`<participant>.latency-ms`) or with Postgres gone.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from pathlib import Path

import asyncpg

from .conftest import (
    Bus,
    StartFulfillment,
    charge,
    charge_v2,
    metric_value,
    schedule,
    wait_until,
    write_flags,
)

SCALE = float(os.environ.get("YARDARM_TEST_SCALE", "1.0"))


async def test_an_injected_failure_rolls_back_and_the_redelivery_charges_once(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection, tmp_path: Path
) -> None:
    flags = tmp_path / "flags.json"
    write_flags(flags, {"fault.consumer-error-rate": 1.0})
    service = await start_fulfillment(flags_file=flags, max_deliver=100)
    saga_id = str(uuid.uuid4())
    await bus.send(charge(saga_id))

    async def failed_twice() -> bool:
        return metric_value(service, "yardarm_consumer_messages_total", outcome="failed") >= 2

    await wait_until(failed_twice, what="two failed deliveries")
    # The failure came after the ledger row and the reply were written: all rolled back.
    assert await db.fetchval("SELECT count(*) FROM payments") == 0
    assert await db.fetchval("SELECT count(*) FROM inbox") == 0
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0

    write_flags(flags, {"fault.consumer-error-rate": 0.0})
    events = await bus.wait_events(saga_id, settle=True)
    assert [e.subject for e in events] == ["evt.payments.charged"]
    assert await db.fetchval("SELECT count(*) FROM payments WHERE saga_id = $1", saga_id) == 1
    assert metric_value(service, "yardarm_consumer_messages_total", outcome="processed") == 1


async def test_postgres_unavailable_for_a_while_delays_but_does_not_lose_a_command(
    bus: Bus,
    start_fulfillment: StartFulfillment,
    db: asyncpg.Connection,
    pg_database: str,
    postgres_port: int,
) -> None:
    service = await start_fulfillment(max_deliver=100)
    name = pg_database.rsplit("/", 1)[1].split("?")[0]
    admin = await asyncpg.connect(pg_database.replace(f"/{name}", "/postgres"))
    try:
        # No new connections, and the service's existing ones are cut.
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        saga_id = str(uuid.uuid4())
        await bus.send(charge(saga_id))

        async def failed() -> bool:
            return metric_value(service, "yardarm_consumer_messages_total", outcome="failed") >= 1

        await wait_until(failed, what="a delivery failing while Postgres refuses connections")
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()

    events = await bus.wait_events(saga_id, settle=True)
    assert [e.subject for e in events] == ["evt.payments.charged"]
    check = await asyncpg.connect(pg_database)
    try:
        ledger = await check.fetch("SELECT kind FROM payments WHERE saga_id = $1", saga_id)
        assert [r["kind"] for r in ledger] == ["charge"]
        assert await check.fetchval("SELECT count(*) FROM inbox") == 1
    finally:
        await check.close()


async def test_a_transient_failure_before_the_transaction_redelivers_and_charges_once(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection, tmp_path: Path
) -> None:
    flags = tmp_path / "flags.json"
    write_flags(flags, {"fault.transient-error-rate": 1.0})
    service = await start_fulfillment(flags_file=flags, max_deliver=100)
    saga_id = str(uuid.uuid4())
    await bus.send(charge_v2(saga_id), schema=2)

    async def redelivered() -> bool:
        return metric_value(service, "yardarm_consumer_redeliveries_total") >= 2

    await wait_until(redelivered, what="two redeliveries of the failing command")
    assert metric_value(service, "yardarm_consumer_messages_total", outcome="failed") >= 2
    assert await db.fetchval("SELECT count(*) FROM payments") == 0
    assert await db.fetchval("SELECT count(*) FROM inbox") == 0
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0

    write_flags(flags, {"fault.transient-error-rate": 0.0})
    events = await bus.wait_events(saga_id, settle=True)
    assert [e.subject for e in events] == ["evt.payments.charged"]
    assert await db.fetchval("SELECT count(*) FROM payments WHERE saga_id = $1", saga_id) == 1
    assert metric_value(service, "yardarm_payments_total", outcome="charged") == 1


async def test_injected_latency_delays_each_participant_without_doubling_anything(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection, tmp_path: Path
) -> None:
    flags = tmp_path / "flags.json"
    write_flags(flags, {"payments.latency-ms": 600, "shipping.latency-ms": 900})
    await start_fulfillment(flags_file=flags)
    charged, shipped = str(uuid.uuid4()), str(uuid.uuid4())

    sent = time.monotonic()
    await bus.send(charge(charged))
    await bus.send(schedule(shipped))
    await bus.wait_events(charged)
    charge_took = time.monotonic() - sent
    await bus.wait_events(shipped)
    schedule_took = time.monotonic() - sent
    assert charge_took >= 0.6
    assert schedule_took >= 0.9

    events = await bus.wait_events(charged, settle=True)
    assert [e.subject for e in events] == ["evt.payments.charged"]
    assert await db.fetchval("SELECT count(*) FROM payments") == 1
    assert await db.fetchval("SELECT count(*) FROM shipments") == 1


async def test_random_faults_and_latency_leave_exactly_one_charge_per_saga(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Deliveries fail at random on both sides of the transaction while others in the same
    batch commit: every saga still ends with one charge and one reply."""
    flags = tmp_path / "flags.json"
    write_flags(
        flags,
        {
            "payments.latency-ms": 30,
            "fault.transient-error-rate": 0.3,
            "fault.consumer-error-rate": 0.3,
        },
    )
    service = await start_fulfillment(
        flags_file=flags, max_deliver=60, backoff_s=[0.05, 0.1], batch=4
    )
    sagas = [str(uuid.uuid4()) for _ in range(max(4, int(16 * SCALE)))]
    for index, saga_id in enumerate(sagas):
        if index % 2:
            await bus.send(charge_v2(saga_id), schema=2)
        else:
            await bus.send(charge(saga_id))

    async def all_replied() -> bool:
        return len({e.envelope.saga_id for e in await bus.events()}) == len(sagas)

    await wait_until(all_replied, timeout=60, what=f"replies for all {len(sagas)} sagas")
    # Every command acked and every reply published: no doubled reply can follow.
    await wait_until(bus.quiet, timeout=30, what="fulfillment to go quiet")
    events = await bus.events()
    assert Counter(e.envelope.saga_id for e in events) == Counter(dict.fromkeys(sagas, 1))
    assert {e.subject for e in events} == {"evt.payments.charged"}
    ledger = await db.fetch("SELECT saga_id, count(*) AS n FROM payments GROUP BY saga_id")
    assert {r["saga_id"]: r["n"] for r in ledger} == dict.fromkeys(sagas, 1)
    assert await db.fetchval("SELECT count(*) FROM inbox") == len(sagas)
    # With a failure chance near one in two per delivery, some deliveries failed.
    assert metric_value(service, "yardarm_consumer_messages_total", outcome="failed") >= 1
    assert metric_value(service, "yardarm_payments_total", outcome="charged") == len(sagas)
