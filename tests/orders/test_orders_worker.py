"""The saga worker's claim loops: several due steps at once, never one saga twice."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from uuid import UUID

import asyncpg
from opentelemetry.sdk.trace import TracerProvider
from yardarm_orders import order_store
from yardarm_orders.saga.commands import CommandWriter
from yardarm_orders.saga.engine import SagaEngine
from yardarm_orders.saga.steps import order_saga
from yardarm_orders.saga.stock_steps import StockOutcome, StockSteps
from yardarm_orders.saga.store import Reservation
from yardarm_orders.saga.worker import SagaWorker

from tests.orders.test_orders_store import new_order, saga_metrics

SAGAS = 6
POLL_S = 0.05


class GatedSteps(StockSteps):
    """Reservations that wait at a gate, so the test sees how many run at once."""

    def __init__(self) -> None:
        self.running: set[UUID] = set()
        self.started: list[UUID] = []
        self.peak = 0
        self.gate = asyncio.Event()

    async def reserve(
        self, order_id: UUID, item: Reservation, trace_id: str | None
    ) -> StockOutcome:
        assert order_id not in self.running, "two claim loops ran the same saga"
        self.running.add(order_id)
        self.started.append(order_id)
        self.peak = max(self.peak, len(self.running))
        try:
            await self.gate.wait()
        finally:
            self.running.discard(order_id)
        return StockOutcome.INSUFFICIENT  # ends the step without touching a datastore

    async def release(self, order_id: UUID, item: Reservation, trace_id: str | None) -> None:
        return None


async def _run(pool: asyncpg.Pool, concurrency: int) -> GatedSteps:
    async with pool.acquire() as conn:
        for _ in range(SAGAS):
            await order_store.create(conn, new_order(), key=uuid.uuid4().hex, request_hash="h")
    steps = GatedSteps()
    metrics = saga_metrics()
    log = logging.getLogger("test.worker")
    engine = SagaEngine(order_saga(), CommandWriter(2), metrics, log)
    worker = SagaWorker(
        pool, steps, engine, owner=f"w-{uuid.uuid4().hex[:6]}", lease_s=30.0,
        poll_interval_s=POLL_S, metrics=metrics, tracer=TracerProvider().get_tracer("t"),
        log=log, on_outbox=lambda: None, concurrency=concurrency,
    )  # fmt: skip
    await worker.start()
    try:
        # Every loop claims within a few poll intervals: the allowed ones did so in
        # `reached_s`; one beyond the bound would claim as fast, so wait well past both.
        started = time.monotonic()
        for _ in range(100):
            if len(steps.running) >= min(concurrency, SAGAS):
                break
            await asyncio.sleep(POLL_S)
        reached_s = time.monotonic() - started
        assert len(steps.running) == min(concurrency, SAGAS), steps.running
        await asyncio.sleep(max(10 * POLL_S, 3 * reached_s))
        steps.gate.set()
        for _ in range(200):
            async with pool.acquire() as conn:
                left = await conn.fetchval("SELECT count(*) FROM sagas WHERE state = 'RESERVING'")
            if left == 0:
                break
            await asyncio.sleep(0.05)
        assert left == 0, f"{left} sagas still reserving"
    finally:
        await worker.stop(grace_s=5.0)
    return steps


async def test_claim_loops_run_that_many_steps_at_once(pool: asyncpg.Pool) -> None:
    steps = await _run(pool, concurrency=4)
    assert steps.peak == 4
    assert len(steps.started) == len(set(steps.started)) == SAGAS


async def test_one_claim_loop_runs_one_step_at_a_time(pool: asyncpg.Pool) -> None:
    steps = await _run(pool, concurrency=1)
    assert steps.peak == 1
    assert len(set(steps.started)) == SAGAS


def test_a_worker_needs_a_claim_loop() -> None:
    try:
        SagaWorker(
            None, None, None, owner="w", lease_s=1.0, poll_interval_s=1.0,  # type: ignore[arg-type]
            metrics=saga_metrics(), tracer=TracerProvider().get_tracer("t"),
            log=logging.getLogger("t"), on_outbox=lambda: None, concurrency=0,
        )  # fmt: skip
    except ValueError as exc:
        assert "at least one" in str(exc)
    else:
        raise AssertionError("concurrency 0 was accepted")
