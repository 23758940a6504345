"""The claim loop for the saga's local steps (reserve and release stock).

Any replica's worker may run any saga's local step: it leases the saga row first
(`FOR UPDATE SKIP LOCKED`, so two workers never take the same one), and every progress
write re-checks the lease, so a worker that stalled past its lease cannot overwrite the
work of the replica that took over. Transient datastore failures put the step back with
exponential backoff through `next_attempt_at`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import asyncpg
from opentelemetry import trace
from yardarm_kit.datastore_client import DatastoreUnavailable
from yardarm_kit.lifecycle import finish_task

from yardarm_orders.saga import store
from yardarm_orders.saga.definition import LOCAL_STATES, SagaState, Trigger, decide
from yardarm_orders.saga.metrics import SagaMetrics
from yardarm_orders.saga.stock_steps import Contended, StockOutcome, StockSteps
from yardarm_orders.saga.store import LeaseLost, SagaRow
from yardarm_orders.saga.tracing import command_traceparent, order_span

_FAILED_STOCK = {
    StockOutcome.INSUFFICIENT: Trigger.STOCK_INSUFFICIENT,
    StockOutcome.MISSING: Trigger.STOCK_MISSING,
}


class SagaWorker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        steps: StockSteps,
        *,
        owner: str,
        lease_s: float,
        poll_interval_s: float,
        retry_base_s: float,
        retry_max_s: float,
        reserve_max_attempts: int,
        metrics: SagaMetrics,
        tracer: trace.Tracer,
        log: logging.Logger,
        on_outbox: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._steps = steps
        self._owner = owner
        self._lease_s = lease_s
        self._poll_interval_s = poll_interval_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._reserve_max_attempts = reserve_max_attempts
        self._metrics = metrics
        self._tracer = tracer
        self._log = log
        self._on_outbox = on_outbox
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def nudge(self) -> None:
        """Look for work now instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="saga-worker")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Let the current unit of work finish (bounded by `grace_s`), then stop."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await finish_task(self._task, grace_s)
            self._task = None

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
        """Claim and run one due local step; False when none was due."""
        async with self._pool.acquire() as conn:
            saga = await store.claim_local(conn, self._owner, self._lease_s)
        if saga is None:
            return False
        with order_span(self._tracer, f"saga {saga.state.value}", saga.order_id, saga.traceparent):
            try:
                if saga.state is SagaState.RESERVING:
                    await self._reserve(saga)
                elif saga.state is SagaState.RELEASING:
                    await self._release(saga)
            except LeaseLost:
                self._log.warning(
                    "saga lease lost; another worker continues",
                    extra={"order_id": str(saga.order_id), "state": saga.state.value},
                )
            except (DatastoreUnavailable, Contended) as exc:
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
        decision = decide(saga.state, trigger, detail or "")
        async with self._pool.acquire() as conn, conn.transaction():
            await store.hold_lease(conn, saga.order_id, self._owner, self._lease_s)
            wrote_outbox = await store.apply_decision(
                conn,
                saga,
                decision,
                step=trigger.value,
                detail=detail,
                traceparent=command_traceparent(saga.trace_id, saga.traceparent),
                trace_id=saga.trace_id,
            )
        if decision.target is not None:
            self._metrics.transition(
                saga.state, decision.target, trigger.value, saga.step_started_at
            )
            self._log.info(
                "saga %s -> %s",
                saga.state.value,
                decision.target.value,
                extra={
                    "order_id": str(saga.order_id),
                    "trigger": trigger.value,
                    "reason": decision.reason,
                },
            )
            if decision.target in LOCAL_STATES:
                self.nudge()
        if wrote_outbox:
            self._on_outbox()

    async def _retry_later(self, saga: SagaRow, error: str) -> None:
        # Compensation must finish, so releasing retries for as long as it takes;
        # a reservation that cannot get through gives up and cancels the order.
        if saga.state is SagaState.RESERVING and saga.attempts + 1 >= self._reserve_max_attempts:
            await self._finish(saga, Trigger.STOCK_UNAVAILABLE, error)
            return
        delay = min(self._retry_max_s, self._retry_base_s * 2 ** min(saga.attempts, 16))
        delay *= random.uniform(0.5, 1.0)
        self._metrics.steps.inc(step=saga.state.value, outcome="retry")
        self._log.warning(
            "saga step failed, retrying in %.1fs: %s",
            delay,
            error,
            extra={"order_id": str(saga.order_id), "state": saga.state.value},
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await store.schedule_retry(conn, saga.order_id, self._owner, delay)
            await store.add_history(
                conn, saga.order_id, saga.state.value.lower(), "retry", error, saga.trace_id
            )
