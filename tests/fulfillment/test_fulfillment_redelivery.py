"""Failures inside a handler roll everything back; the redelivery then applies it once."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg

from .conftest import (
    Bus,
    StartFulfillment,
    charge,
    metric_value,
    wait_until,
    write_flags,
)


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
    events = await bus.wait_events(saga_id, settle=1.0)
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

    events = await bus.wait_events(saga_id, settle=1.0)
    assert [e.subject for e in events] == ["evt.payments.charged"]
    check = await asyncpg.connect(pg_database)
    try:
        ledger = await check.fetch("SELECT kind FROM payments WHERE saga_id = $1", saga_id)
        assert [r["kind"] for r in ledger] == ["charge"]
        assert await check.fetchval("SELECT count(*) FROM inbox") == 1
    finally:
        await check.close()


async def test_an_unknown_command_type_is_redelivered_then_given_up(
    bus: Bus, start_fulfillment: StartFulfillment, db: asyncpg.Connection
) -> None:
    service = await start_fulfillment(max_deliver=3)
    saga_id = str(uuid.uuid4())
    bogus = charge(saga_id).model_copy(update={"type": "payments.teleport", "id": "x:teleport"})
    await bus.send(bogus)

    async def three_failures() -> bool:
        return metric_value(service, "yardarm_consumer_messages_total", outcome="failed") >= 3

    await wait_until(three_failures, what="max_deliver failed deliveries")
    await bus.send(charge(saga_id))  # the consumer is not stuck behind it
    events = await bus.wait_events(saga_id, settle=1.0)
    assert [e.subject for e in events] == ["evt.payments.charged"]
    assert metric_value(service, "yardarm_consumer_messages_total", outcome="failed") == 3
