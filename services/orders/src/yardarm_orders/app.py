"""Wires the orders service into the kit's Service: API, saga worker, relay, reply consumer.

Start-up order matters for readiness: the pool and migrations first, then NATS and the
streams, then the background loops; the listener opens only after all of them.
Shutdown runs in reverse: stop taking replies, finish the current step, stop publishing,
then close NATS and the pool.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client as NATS
from yardarm_kit import Service
from yardarm_kit.access import read_token
from yardarm_kit.consumer import ConsumerMetrics, InboxConsumer
from yardarm_kit.datastore_client import DatastoreClient
from yardarm_kit.messaging import connect, ensure_streams
from yardarm_kit.outbox import OutboxRelay
from yardarm_kit.postgres import create_pool, migrate

from yardarm_orders import orders_api, stock_api
from yardarm_orders.orders_api import OrdersApi
from yardarm_orders.outbox import forget_cards
from yardarm_orders.saga.commands import CommandWriter
from yardarm_orders.saga.engine import SagaEngine
from yardarm_orders.saga.metrics import SagaMetrics
from yardarm_orders.saga.replies import ReplyHandler
from yardarm_orders.saga.steps import order_saga
from yardarm_orders.saga.stock_steps import StockSteps
from yardarm_orders.saga.worker import SagaWorker
from yardarm_orders.settings import OrdersSettings
from yardarm_orders.stock_api import StockApi

CONSUMER_DURABLE = "orders"
# Any constant shared by every version of this service; "yardarm_orders" as an int64.
MIGRATION_LOCK_ID = 0x7961726461726D4F


@dataclass
class _Running:
    pool: asyncpg.Pool
    nc: NATS
    orders: OrdersApi
    stock: StockApi
    worker: SagaWorker
    relay: OutboxRelay
    consumer: InboxConsumer


class OrdersService:
    """One orders replica; `service.run()` serves it until SIGTERM."""

    def __init__(self, settings: OrdersSettings) -> None:
        self.settings = settings
        self.service = Service(settings)
        self.metrics = SagaMetrics(self.service.metrics)
        self.consumer_metrics = ConsumerMetrics(self.service.metrics)
        self.saga = order_saga(settings.saga_timing())
        # Unique per process, so a restarted replica never mistakes an old lease for its own.
        self.owner = f"{settings.instance}:{uuid.uuid4().hex[:8]}"
        self.migrated = False
        self._running: _Running | None = None
        orders_api.add_routes(self.service.api, lambda: self.running.orders)
        stock_api.add_routes(self.service.api, lambda: self.running.stock)
        self.service.on_startup(self._start)
        self.service.on_shutdown(self._stop)
        self.service.add_readiness_check("postgres", self._postgres_ready)
        self.service.add_readiness_check("nats", self._nats_ready)
        self.service.add_readiness_check("migrations", self._migrations_ready)

    @property
    def running(self) -> _Running:
        if self._running is None:
            raise RuntimeError("the orders service has not started")
        return self._running

    async def _start(self) -> None:
        s = self.settings
        log = self.service.log
        pool = await create_pool(s.database_url, max_size=s.pool_max_size)
        async with pool.acquire() as conn:
            applied = await migrate(conn, "yardarm_orders", MIGRATION_LOCK_ID)
        self.migrated = True
        log.info("migrations applied: %s", ", ".join(applied) or "none needed")
        nc, js = await connect(s.nats_url, s.instance)
        await ensure_streams(js)
        token = None if s.datastore_token_file is None else read_token(s.datastore_token_file)
        if token is None:
            log.warning(
                "no YARDARM_ORDERS_DATASTORE_TOKEN_FILE: datastore requests carry no credential",
                extra={"event": "datastore_unauthenticated"},
            )
        datastore = DatastoreClient(
            self.service.http_client("datastore"),
            s.datastore_urls,
            timeout_s=s.datastore_timeout_s,
            token=token,
        )
        relay = OutboxRelay(
            pool,
            js,
            batch=s.outbox_batch,
            poll_s=s.poll_interval_s,
            pending=self.metrics.outbox_pending,
            log=log,
            after_publish=forget_cards,
        )
        steps = StockSteps(
            pool, datastore, owner=self.owner, lease_s=s.lease_s, cas_retries=s.cas_retries
        )
        engine = SagaEngine(self.saga, CommandWriter(s.message_schema), self.metrics, log)
        worker = SagaWorker(
            pool,
            steps,
            engine,
            owner=self.owner,
            lease_s=s.lease_s,
            poll_interval_s=s.poll_interval_s,
            metrics=self.metrics,
            tracer=self.service.tracer,
            log=log,
            on_outbox=relay.nudge,
            concurrency=s.worker_concurrency,
        )
        handler = ReplyHandler(engine, log=log, on_outbox=relay.nudge, on_local_step=worker.nudge)
        consumer = InboxConsumer(
            js,
            pool,
            handler=handler,
            metrics=self.consumer_metrics,
            tracer=self.service.tracer,
            log=log,
            stream="EVENTS",
            durable=CONSUMER_DURABLE,
            filter_subject="evt.>",
            ack_wait_s=s.reply_ack_wait_s,
            max_deliver=s.reply_max_deliver,
            backoff_s=s.reply_backoff_s,
            batch=s.reply_batch,
        )
        self._running = _Running(
            pool=pool,
            nc=nc,
            orders=OrdersApi(
                pool,
                datastore,
                engine,
                log=log,
                on_created=worker.nudge,
                on_outbox=relay.nudge,
                in_flight_wait_ms=s.in_flight_wait_ms,
            ),
            stock=StockApi(datastore, log),
            worker=worker,
            relay=relay,
            consumer=consumer,
        )
        relay.start()
        await worker.start()
        await consumer.start()

    async def _stop(self) -> None:
        running = self._running
        if running is None:
            return
        await running.consumer.stop()
        await running.worker.stop()
        await running.relay.stop()
        # The consumer and relay have stopped, so nothing is left to drain; draining
        # a connection with pull subscriptions would wait out its whole timeout.
        await running.nc.close()
        await running.pool.close()
        self._running = None

    async def _postgres_ready(self) -> bool:
        if self._running is None:
            return False
        async with self._running.pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT true"))

    async def _nats_ready(self) -> bool:
        return self._running is not None and bool(self._running.nc.is_connected)

    async def _migrations_ready(self) -> bool:
        return self.migrated


def create_orders(settings: OrdersSettings) -> OrdersService:
    """An orders replica ready to `service.run()`."""
    return OrdersService(settings)
