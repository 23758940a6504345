"""InboxConsumer: JetStream deliveries applied exactly once, a batch per transaction.

Imported as `yardarm_kit.consumer` (it needs the kit's `postgres` extra). A service
implements a `MessageHandler` (prepare, apply, after_commit) and starts one consumer per
durable. `yardarm_kit.pull` fetches each batch, `yardarm_kit.deliveries` applies it (one
transaction with the inbox) and `yardarm_kit.verdicts` settles its messages.

Concurrency is bounded: at most `max_batches_in_flight` batches are handled at once, and
the next one is fetched only when a slot is free (`max_ack_pending` is the same bound on
the server).

A failed delivery is nak'ed with the delay `backoff_s` schedules for its delivery count.
The server's own `backoff` setting is not used: it replaces the ack wait (the server
takes its first step as the ack wait), so a short first step would redeliver a message
that a slow handler still holds. Its last delivery (`max_deliver`) is dead-lettered,
then acked. A delivery that never gets a verdict (its process died) returns after
`ack_wait_s`; out of deliveries, it is dead-lettered from JetStream's MAX_DELIVERIES
advisory (see `yardarm_kit.dead_letters`).

Each delivery runs in a CONSUMER span, a child of the producer's traceparent; `prepare`
and `apply` run with it as the current span, so what they send continues the trace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError
from opentelemetry import trace

from yardarm_kit.dead_letters import MaxDeliveriesWatcher
from yardarm_kit.deliveries import (
    BatchSettings,
    BatchWork,
    ConsumerMetrics,
    Delivery,
    MessageHandler,
)
from yardarm_kit.inbox import Inbox, InboxPruner
from yardarm_kit.lifecycle import cancel_task
from yardarm_kit.pull import BatchFetcher, PullError

__all__ = [
    "ConsumerConfigError",
    "ConsumerMetrics",
    "Delivery",
    "InboxConsumer",
    "MessageHandler",
]

FETCH_EXPIRES_S = 2.0
LAG_REFRESH_S = 5.0
FETCH_BACKOFF_MIN_S = 0.25
FETCH_BACKOFF_MAX_S = 5.0
FLUSH_TIMEOUT_S = 2.0


class ConsumerConfigError(RuntimeError):
    """The durable consumer exists with settings the server will not change in place."""


class InboxConsumer:
    """A durable pull consumer whose deliveries take effect exactly once (see module doc)."""

    def __init__(
        self,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        *,
        handler: MessageHandler,
        metrics: ConsumerMetrics,
        tracer: trace.Tracer,
        log: logging.Logger,
        stream: str,
        durable: str,
        filter_subject: str,
        inbox_table: str = "inbox",
        accepted_schemas: frozenset[int] = frozenset({1, 2}),
        ack_wait_s: float = 30.0,
        max_deliver: int = 5,
        backoff_s: Sequence[float] = (1.0, 5.0, 15.0, 30.0),
        batch: int = 64,
        max_batches_in_flight: int = 2,
        shutdown_grace_s: float = 10.0,
        inbox_retention_s: float = 7 * 86400,
    ) -> None:
        if max_deliver < 1 or batch < 1 or max_batches_in_flight < 1 or ack_wait_s <= 0:
            raise ValueError("max_deliver, batch and max_batches_in_flight must be >= 1, "
                             "ack_wait_s > 0")  # fmt: skip
        if not backoff_s or min(backoff_s) < 0:
            raise ValueError("backoff_s needs at least one delay, none negative")
        if not accepted_schemas:
            raise ValueError("accepted_schemas must name at least one schema version")
        self._js = js
        self._m = metrics
        self._log = log
        self.stream = stream
        self.durable = durable
        self.filter_subject = filter_subject
        self._ack_wait_s = ack_wait_s
        self._max_deliver = max_deliver
        self._batch = batch
        self._max_batches = max_batches_in_flight
        self._grace_s = shutdown_grace_s
        inbox = Inbox(inbox_table)
        self._work = BatchWork(
            BatchSettings(
                js=js, pool=pool, handler=handler, metrics=metrics, tracer=tracer, log=log,
                stream=stream, durable=durable, inbox=inbox,
                accepted_schemas=frozenset(accepted_schemas), max_deliver=max_deliver,
                backoff_s=tuple(float(s) for s in backoff_s),
            )
        )  # fmt: skip
        self._nc: Any = js._nc  # nats-py exposes no public getter for the core client
        self._fetcher = BatchFetcher(self._nc, stream, durable)
        self._watcher = MaxDeliveriesWatcher(
            js, self._nc, stream=stream, durable=durable, log=log,
            on_dead_letter=self._work.verdicts.count_dead_letter,
            reason_of=self._work.verdicts.no_verdict_reason,
        )  # fmt: skip
        self._pruner = InboxPruner(inbox, pool, inbox_retention_s, log)
        self._slots = asyncio.Semaphore(max_batches_in_flight)
        self._batches: set[asyncio.Task[None]] = set()
        self._fetch_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lag_checked = 0.0

    # -- lifecycle

    async def start(self) -> None:
        """Create or update the durable, watch its advisories, start fetching."""
        await self._ensure_durable()
        await self._watcher.start()
        await self._fetcher.start()
        self._pruner.start()
        self._stopping = False
        self._fetch_task = asyncio.create_task(self._fetch_loop(), name=f"consumer:{self.durable}")

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop fetching; batches in hand get `grace_s` to finish, then are cancelled
        (their transactions roll back) and their messages nak'ed for another replica."""
        grace = self._grace_s if grace_s is None else grace_s
        self._stopping = True
        await cancel_task(self._fetch_task)
        self._fetch_task = None
        await self._fetcher.close()
        if self._batches:
            _, late = await asyncio.wait(set(self._batches), timeout=max(grace, 0.0))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._watcher.stop()
        await self._pruner.stop()
        try:  # the verdicts leave before the caller closes the connection or exits
            await self._nc.flush(timeout=FLUSH_TIMEOUT_S)
        except Exception as exc:
            self._log.debug("flush at stop failed: %r", exc)

    async def _ensure_durable(self) -> None:
        """Create the durable, or bring an existing one to this config.

        The server updates ack wait, max deliver, max ack pending and the filter in
        place; a durable differing in what it cannot change (ack or deliver policy) is
        refused with a ConsumerConfigError that says how to recreate it.
        """
        config = ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            filter_subject=self.filter_subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait_s,
            max_deliver=self._max_deliver,
            max_ack_pending=self._batch * self._max_batches,
        )
        try:
            await self._js.add_consumer(self.stream, config)
        except APIError as exc:
            raise ConsumerConfigError(
                f"cannot create or update durable consumer {self.durable!r} on stream "
                f"{self.stream}: {exc.description or exc}. If its settings cannot change "
                f"in place, delete it (nats consumer rm {self.stream} {self.durable}) and "
                "start again; unacknowledged messages are delivered to the new one"
            ) from exc

    # -- fetching

    async def _fetch_loop(self) -> None:
        backoff = FETCH_BACKOFF_MIN_S
        while not self._stopping:
            await self._slots.acquire()
            handed_over = False
            msgs: list[Msg] = []
            try:
                msgs = await self._fetcher.fetch(self._batch, FETCH_EXPIRES_S)
                if msgs:
                    task = asyncio.create_task(self._run_batch(msgs))
                    self._batches.add(task)
                    task.add_done_callback(self._batch_done)
                    handed_over = True
                backoff = FETCH_BACKOFF_MIN_S
            except PullError as exc:
                self._log.warning("pull from %s refused: %s", self.durable, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, FETCH_BACKOFF_MAX_S)
                if exc.status == "503" or "Deleted" in exc.description:
                    await self._recreate()
            except Exception as exc:  # server gone or restarting: back off, keep going
                self._log.warning("fetch from %s failed: %r; retrying", self.durable, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, FETCH_BACKOFF_MAX_S)
            finally:
                if not handed_over:
                    self._slots.release()
            if not msgs:
                await self._refresh_lag()

    async def _recreate(self) -> None:
        try:
            await self._ensure_durable()
            self._log.warning("durable %s was missing on %s: recreated", self.durable,
                              self.stream)  # fmt: skip
        except Exception as exc:
            self._log.warning("could not recreate durable %s: %r", self.durable, exc)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            self._log.error("batch on %s crashed", self.durable, exc_info=task.exception())

    async def _refresh_lag(self) -> None:
        """Idle: ask the server, at most every LAG_REFRESH_S (batches set it for free)."""
        now = time.monotonic()
        if now - self._lag_checked < LAG_REFRESH_S:
            return
        self._lag_checked = now
        try:
            info = await self._js.consumer_info(self.stream, self.durable)
        except Exception as exc:
            self._log.debug("consumer info for %s failed: %r", self.durable, exc)
            return
        self._m.lag.set(float(info.num_pending or 0), consumer=self.durable)

    async def _run_batch(self, msgs: list[Msg]) -> None:
        started = time.perf_counter()
        self._m.in_flight.inc(len(msgs), consumer=self.durable)
        try:
            await self._work.run(msgs)
        finally:
            self._m.in_flight.dec(len(msgs), consumer=self.durable)
            self._m.batch_duration.observe(time.perf_counter() - started, consumer=self.durable)
