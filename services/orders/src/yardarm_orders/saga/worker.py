"""The claim loop for due saga steps: local stock steps, and remote steps waiting too long.

Any replica's worker may run any saga's due step: it leases the saga row first
(`FOR UPDATE SKIP LOCKED`, so two workers never take the same one), and every progress
write re-checks the lease, so a worker that stalled past its lease cannot overwrite the
work of the replica that took over. Local steps (reserve, release) that hit a transient
datastore failure go back with backoff through `next_attempt_at`. A remote step is due
when its command needs re-sending or its deadline passed; the engine decides which.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import asyncpg
from opentelemetry import trace
from yardarm_kit.datastore_client import DatastoreRefused, DatastoreUnavailable
from yardarm_kit.lifecycle import finish_task

from yardarm_orders.datastore import log_failure
from yardarm_orders.saga import store
from yardarm_orders.saga.definition import RUNNING_STATES, SagaState, Trigger
from yardarm_orders.saga.engine import Applied, SagaEngine
from yardarm_orders.saga.metrics import SagaMetrics
from yardarm_orders.saga.stock_steps import Contended, StockOutcome, StockSteps
from yardarm_orders.saga.store import LeaseLost, SagaRow
from yardarm_orders.saga.tracing import order_span

_FAILED_STOCK = {
    StockOutcome.INSUFFICIENT: Trigger.STOCK_INSUFFICIENT,
    StockOutcome.MISSING: Trigger.STOCK_MISSING,
}


class SagaWorker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        steps: StockSteps,
        engine: SagaEngine,
        *,
        owner: str,
        lease_s: float,
        poll_interval_s: float,
        metrics: SagaMetrics,
        tracer: trace.Tracer,
        log: logging.Logger,
        on_outbox: Callable[[], None],
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError("a saga worker needs at least one claim loop")
        self._concurrency = concurrency
        self._pool = pool
        self._steps = steps
        self._engine = engine
        self._owner = owner
        self._lease_s = lease_s
        self._poll_interval_s = poll_interval_s
        self._metrics = metrics
        self._tracer = tracer
        self._log = log
        self._on_outbox = on_outbox
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def nudge(self) -> None:
        """Look for work now instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Start `concurrency` claim loops: each runs one due step at a time, and leases
        keep them (and other replicas) off each other's sagas."""
        self._tasks = [
            asyncio.create_task(self._loop(), name=f"saga-worker-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self, grace_s: float = 10.0) -> None:
        """Let the current units of work finish (bounded by `grace_s`), then stop."""
        self._stopping.set()
        self._wake.set()
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*(finish_task(task, grace_s) for task in tasks))

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                worked = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The lease, if any, runs out and the step is picked up again.
                self._log.exception("saga worker: step failed unexpectedly")
                worked = False
            if worked:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def run_once(self) -> bool:
        """Claim and run one due step; False when none was due."""
        async with self._pool.acquire() as conn:
            saga = await store.claim_due(conn, self._owner, self._lease_s, RUNNING_STATES)
        if saga is None:
            return False
        with order_span(self._tracer, f"saga {saga.state.value}", saga.order_id, saga.traceparent):
            try:
                if saga.state is SagaState.RESERVING:
                    await self._reserve(saga)
                elif saga.state is SagaState.RELEASING:
                    await self._release(saga)
                else:
                    await self._remote_due(saga)
            except LeaseLost:
                self._log.warning(
                    "saga lease lost; another worker continues",
                    extra={"order_id": str(saga.order_id), "state": saga.state.value},
                )
            except (DatastoreUnavailable, Contended) as exc:
                if isinstance(exc, DatastoreRefused):
                    log_failure(self._log, exc, f"running {saga.state.value}")
                await self._retry_later(saga, str(exc))
        return True

    async def _reserve(self, saga: SagaRow) -> None:
        async with self._pool.acquire() as conn:
            items = await store.reservations(conn, saga.order_id)
        for item in items:
            if item.state != "pending":
                continue
            outcome = await self._steps.reserve(saga.order_id, item, saga.trace_id)
            failed = _FAILED_STOCK.get(outcome)
            if failed is not None:
                await self._finish(saga, failed, item.sku)
                return
        await self._finish(saga, Trigger.STOCK_RESERVED, None)

    async def _release(self, saga: SagaRow) -> None:
        async with self._pool.acquire() as conn:
            items = await store.reservations(conn, saga.order_id)
        for item in items:
            if item.state == "reserved":
                await self._steps.release(saga.order_id, item, saga.trace_id)
        await self._finish(saga, Trigger.STOCK_RELEASED, None)

    async def _finish(self, saga: SagaRow, trigger: Trigger, detail: str | None) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            held = await store.hold_lease(conn, saga.order_id, self._owner, self._lease_s)
            applied = await self._engine.fire(conn, held, trigger, detail)
        self._after(applied)

    async def _remote_due(self, saga: SagaRow) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            held = await store.hold_lease(conn, saga.order_id, self._owner, self._lease_s)
            if held.state is not saga.state:  # moved on since the claim: nothing due
                return
            applied = await self._engine.on_due(conn, held)
        self._after(applied)

    def _after(self, applied: Applied) -> None:
        self._engine.observe(applied)
        if self._engine.is_local(applied.target):
            self.nudge()
        if applied.wrote_outbox:
            self._on_outbox()

    async def _retry_later(self, saga: SagaRow, error: str) -> None:
        # Compensation must finish, so releasing retries for as long as it takes;
        # a reservation that cannot get through gives up and cancels the order.
        phase = self._engine.saga.phase(saga.state)
        if phase is None:
            return
        if phase.retry.exhausted(saga.attempts + 1):
            await self._finish(saga, Trigger.STOCK_UNAVAILABLE, error)
            return
        delay = phase.retry.delay_s(saga.attempts + 1) * random.uniform(0.5, 1.0)
        self._metrics.steps.inc(step=saga.state.value, outcome="retry")
        self._log.warning(
            "saga step failed, retrying in %.1fs: %s",
            delay,
            error,
            extra={"order_id": str(saga.order_id), "state": saga.state.value},
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await store.schedule_retry(conn, saga.order_id, self._owner, delay)
            await store.add_history(conn, saga.order_id, phase.name, "retry", error, saga.trace_id)
