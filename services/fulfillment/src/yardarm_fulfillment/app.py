"""The fulfillment process: two JetStream inbox consumers (payments, shipping), the reply
outbox relay and read-only ledger views, on the kit's `Service`.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from yardarm_kit import Service
from yardarm_kit.consumer import ConsumerMetrics, InboxConsumer
from yardarm_kit.messaging import connect, ensure_streams
from yardarm_kit.metrics import LabeledCounter
from yardarm_kit.outbox import OutboxRelay
from yardarm_kit.postgres import create_pool, migrate

from yardarm_fulfillment import ledger_api
from yardarm_fulfillment.command_consumer import CommandConsumer
from yardarm_fulfillment.commands import CommandTable
from yardarm_fulfillment.metrics import FulfillmentMetrics
from yardarm_fulfillment.payments import Payments
from yardarm_fulfillment.settings import FulfillmentSettings
from yardarm_fulfillment.shipping import Shipping

COMMANDS_STREAM = "COMMANDS"
# The command schema versions this version reads: the current one and the previous one.
ACCEPTED_SCHEMAS = frozenset({1, 2})
# "yardarmF" as an int64: constant across every version of this service.
MIGRATION_LOCK_ID = 0x7961726461726D46
# At shutdown the relay loop is cancelled, then what is pending is published for this long.
RELAY_DRAIN_S = 5.0


class Fulfillment:
    """One fulfillment instance; `service.run()` (or `start()`/`stop()`) drives it."""

    def __init__(self, settings: FulfillmentSettings) -> None:
        self.settings = settings
        self.service = Service(settings)
        self.metrics = FulfillmentMetrics(self.service.metrics)
        self.consumer_metrics = ConsumerMetrics(self.service.metrics)
        self.payments = Payments(self.service.flags)
        self._pool: asyncpg.Pool | None = None
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._relay: OutboxRelay | None = None
        self._consumers: list[InboxConsumer] = []
        self.service.add_readiness_check("postgres", self._postgres_ready)
        self.service.add_readiness_check("nats", self._nats_ready)
        self.service.on_startup(self._start)
        self.service.on_shutdown(self._stop)
        ledger_api.add_routes(self.service.api, lambda: self.pool)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the database pool is not open (service not started)")
        return self._pool

    async def _start(self) -> None:
        settings = self.settings
        log = self.service.log
        self._pool = await create_pool(settings.database_url, max_size=settings.pool_max_size)
        async with self._pool.acquire() as conn:
            applied = await migrate(conn, "yardarm_fulfillment", MIGRATION_LOCK_ID)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        self._nc, self._js = await connect(settings.nats_url, name=settings.instance)
        await ensure_streams(self._js)
        self._relay = OutboxRelay(
            self._pool, self._js, batch=settings.relay_batch, poll_s=settings.relay_poll_s,
            pending=self.metrics.outbox_pending, log=log,
        )  # fmt: skip
        self._relay.start()
        participants: list[tuple[str, CommandTable, LabeledCounter]] = [
            ("payments", self.payments.commands, self.metrics.payments),
            ("shipping", Shipping().commands, self.metrics.shipments),
        ]
        for name, commands, effects in participants:
            handler = CommandConsumer(
                name, commands, effects=effects, flags=self.service.flags, log=log,
                on_commit=self._relay.nudge,
            )  # fmt: skip
            consumer = InboxConsumer(
                self._js, self._pool, handler=handler, metrics=self.consumer_metrics,
                tracer=self.service.tracer, log=log, stream=COMMANDS_STREAM, durable=name,
                filter_subject=f"cmd.{name}.>", inbox_table="inbox",
                accepted_schemas=ACCEPTED_SCHEMAS, ack_wait_s=settings.ack_wait_s,
                max_deliver=settings.max_deliver, backoff_s=settings.backoff_s,
                batch=settings.batch, max_batches_in_flight=settings.max_batches_in_flight,
                shutdown_grace_s=settings.shutdown_grace_s,
            )  # fmt: skip
            await consumer.start()
            self._consumers.append(consumer)

    async def _stop(self) -> None:
        """Consumers first (in-flight batches finish), then the relay drains, then I/O closes."""
        grace_s = self.settings.shutdown_grace_s
        await asyncio.gather(*(consumer.stop(grace_s) for consumer in self._consumers))
        self._consumers.clear()
        if self._relay is not None:
            await self._relay.stop(grace_s=0.0, drain_s=RELAY_DRAIN_S)
            self._relay = None
        if self._nc is not None:
            # Consumers and relay have stopped, so nothing is in flight: close, not drain.
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None
            self._js = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _postgres_ready(self) -> bool:
        return self._pool is not None and await self._pool.fetchval("SELECT 1") == 1

    async def _nats_ready(self) -> bool:
        return self._nc is not None and bool(self._nc.is_connected)


def create_fulfillment(settings: FulfillmentSettings) -> Fulfillment:
    """The fulfillment instance for these settings (not started)."""
    return Fulfillment(settings)
