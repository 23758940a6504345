"""Participant replies (the `orders` consumer of EVENTS), applied to sagas exactly once.

The kit's `InboxConsumer` records each reply's envelope id in the inbox and calls `apply`
inside the batch transaction, so the inbox row, the saga's transition, its history and
any next command commit together; a duplicate never reaches `apply`. A reply the saga
no longer expects (it has moved on, e.g. a charge confirmed after the step timed out) is
recorded as "ignored" and acknowledged: the compensation under way already covers it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from yardarm_kit.consumer import Delivery
from yardarm_kit.messaging import Envelope
from yardarm_kit.postgres import Connection

from yardarm_orders.saga import store
from yardarm_orders.saga.definition import Trigger
from yardarm_orders.saga.engine import Applied, SagaEngine

# Which field of a reply's data explains it, for the history and the order's reason.
_DETAIL_FIELD = {
    Trigger.PAYMENT_CHARGED: "charge_id",
    Trigger.PAYMENT_DECLINED: "reason",
    Trigger.PAYMENT_REFUNDED: "refund_id",
    Trigger.SHIPPING_SCHEDULED: "shipment_id",
    Trigger.SHIPPING_FAILED: "reason",
    Trigger.SHIPPING_CANCELLED: "shipment_id",
}
# Applications waiting for their batch to commit; a batch whose commit failed leaves its
# entries behind until the redelivery overwrites them, so the map is bounded.
_MAX_PENDING = 10_000


def _order_id(envelope: Envelope) -> UUID | None:
    for candidate in (envelope.saga_id, envelope.data.get("order_id")):
        if isinstance(candidate, str):
            try:
                return UUID(candidate)
            except ValueError:
                continue
    return None


def _detail(trigger: Trigger, data: dict[str, Any]) -> str | None:
    value = data.get(_DETAIL_FIELD.get(trigger, ""))
    return None if value is None else str(value)


class ReplyHandler:
    """The `MessageHandler` of the replies consumer."""

    prepares = False  # a reply is only database work

    def __init__(
        self,
        engine: SagaEngine,
        *,
        log: logging.Logger,
        on_outbox: Callable[[], None],
        on_local_step: Callable[[], None],
    ) -> None:
        self._engine = engine
        self._log = log
        self._on_outbox = on_outbox
        self._on_local_step = on_local_step
        self._pending: dict[str, Applied] = {}

    async def prepare(self, delivery: Delivery) -> None:
        """Nothing to do outside the transaction: a reply is only database work."""

    async def apply(self, conn: Connection, delivery: Delivery) -> None:
        envelope = delivery.envelope
        trigger = self._engine.saga.parse_reply(delivery.subject) or (
            self._engine.saga.parse_reply(envelope.type)
        )
        order_id = _order_id(envelope)
        if trigger is None or order_id is None:
            self._log.info(
                "event not for the order saga; acknowledged",
                extra={"subject": delivery.subject, "type": envelope.type, "msg_id": envelope.id},
            )
            return
        saga = await store.lock_saga(conn, order_id)
        if saga is None:
            self._log.warning(
                "reply for an unknown order; acknowledged",
                extra={"order_id": str(order_id), "msg_id": envelope.id},
            )
            return
        applied = await self._engine.fire(conn, saga, trigger, _detail(trigger, envelope.data))
        if len(self._pending) >= _MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        self._pending[envelope.id] = applied

    def after_commit(self, applied: Sequence[Delivery]) -> None:
        outbox = local = False
        for delivery in applied:
            done = self._pending.pop(delivery.envelope.id, None)
            if done is None:
                continue
            self._engine.observe(done)
            outbox = outbox or done.wrote_outbox
            local = local or self._engine.is_local(done.target)
        if outbox:
            self._on_outbox()
        if local:
            self._on_local_step()
