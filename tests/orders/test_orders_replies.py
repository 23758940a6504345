"""The reply handler as the kit's InboxConsumer drives it: apply in the batch transaction,
then after_commit for what committed."""

from __future__ import annotations

import logging
import uuid
from typing import cast

import asyncpg
from nats.aio.msg import Msg
from yardarm_kit.consumer import Delivery
from yardarm_kit.messaging import Envelope
from yardarm_orders.saga.definition import Trigger
from yardarm_orders.saga.replies import ReplyHandler

from tests.orders.test_orders_saga_engine import fire, make_engine, placed


def delivery(order_id: uuid.UUID | str, event: str, **data: str) -> Delivery:
    envelope = Envelope(
        type=event,
        id=f"{order_id}:{event}:reply",
        saga_id=str(order_id),
        data={"order_id": str(order_id), **data},
    )
    return Delivery(
        envelope=envelope,
        subject=f"evt.{event}",
        schema=1,
        headers={},
        num_delivered=1,
        stream_seq=1,
        msg=cast(Msg, None),
    )


def handler(nudged: list[str]) -> ReplyHandler:
    engine, _ = make_engine()
    return ReplyHandler(
        engine,
        log=logging.getLogger("test"),
        on_outbox=lambda: nudged.append("outbox"),
        on_local_step=lambda: nudged.append("worker"),
    )


async def test_a_reply_moves_the_saga_and_nudges_only_after_commit(pool: asyncpg.Pool) -> None:
    nudged: list[str] = []
    replies = handler(nudged)
    async with pool.acquire() as conn:
        order_id = await placed(conn)
        await fire(make_engine()[0], conn, order_id, Trigger.STOCK_RESERVED)
        charged = delivery(order_id, "payments.charged", charge_id="ch_1")
        await replies.prepare(charged)
        async with conn.transaction():
            await replies.apply(conn, charged)
            assert nudged == []  # nothing is published before the commit
        replies.after_commit([charged])
        assert nudged == ["outbox"]
        assert await conn.fetchval("SELECT state FROM sagas") == "SHIPPING"
        detail = await conn.fetchval(
            "SELECT detail FROM saga_history WHERE step = 'payments.charged'"
        )
        assert detail == "ch_1"

        declined = delivery(order_id, "payments.declined", reason="late")
        async with conn.transaction():  # a state left behind: recorded, no nudge
            await replies.apply(conn, declined)
        replies.after_commit([declined])
        assert nudged == ["outbox"]
        assert await conn.fetchval("SELECT state FROM sagas") == "SHIPPING"


async def test_a_reply_whose_batch_rolled_back_leaves_no_trace(pool: asyncpg.Pool) -> None:
    nudged: list[str] = []
    replies = handler(nudged)
    async with pool.acquire() as conn:
        order_id = await placed(conn)
        await fire(make_engine()[0], conn, order_id, Trigger.STOCK_RESERVED)
        declined = delivery(order_id, "payments.declined", reason="card declined")
        transaction = conn.transaction()
        await transaction.start()
        await replies.apply(conn, declined)
        await transaction.rollback()
        assert await conn.fetchval("SELECT state FROM sagas") == "CHARGING"
        # the redelivery applies it for real; the worker is told to release the stock
        async with conn.transaction():
            await replies.apply(conn, declined)
        replies.after_commit([declined])
        assert nudged == ["worker"]
        assert await conn.fetchval("SELECT state FROM sagas") == "RELEASING"


async def test_events_that_are_not_replies_and_unknown_orders_are_acknowledged(
    pool: asyncpg.Pool,
) -> None:
    nudged: list[str] = []
    replies = handler(nudged)
    async with pool.acquire() as conn:
        order_id = await placed(conn)
        for other in (
            delivery(order_id, "stock.reserved"),  # only the worker decides stock steps
            delivery(order_id, "orders.audited"),
            delivery(uuid.uuid4(), "payments.charged", charge_id="ch"),
            delivery("not-an-order", "payments.charged"),
        ):
            async with conn.transaction():
                await replies.apply(conn, other)  # no exception: acked, never redelivered
            replies.after_commit([other])
        assert nudged == []
        assert await conn.fetchval("SELECT state FROM sagas") == "RESERVING"
        assert await conn.fetchval("SELECT count(*) FROM saga_history") == 1
