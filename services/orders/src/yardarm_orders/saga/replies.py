"""Participant replies (the `orders` consumer of EVENTS) applied to sagas exactly once.

Each delivery is handled in one transaction: the inbox row (message id), the saga's
transition, its history and any next command in the outbox. A redelivered or duplicated
message finds its inbox row and changes nothing; a reply the saga no longer expects
(it has moved on) is recorded as "ignored" and acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg
from yardarm_kit.messaging import Envelope

from yardarm_orders.saga import store
from yardarm_orders.saga.definition import LOCAL_STATES, Trigger, decide, parse_trigger
from yardarm_orders.saga.metrics import SagaMetrics
from yardarm_orders.saga.tracing import command_traceparent

# Which field of a reply's data explains it, for the history and the order's reason.
_DETAIL_FIELD = {
    Trigger.PAYMENT_CHARGED: "charge_id",
    Trigger.PAYMENT_DECLINED: "reason",
    Trigger.PAYMENT_REFUNDED: "refund_id",
    Trigger.SHIPPING_SCHEDULED: "shipment_id",
    Trigger.SHIPPING_FAILED: "reason",
    Trigger.SHIPPING_CANCELLED: "reason",
}


def _order_id(envelope: Envelope) -> UUID | None:
    data = envelope.data if isinstance(envelope.data, dict) else {}
    for candidate in (envelope.saga_id, data.get("order_id")):
        if isinstance(candidate, str):
            try:
                return UUID(candidate)
            except ValueError:
                continue
    return None


def _detail(trigger: Trigger, data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    value = data.get(_DETAIL_FIELD.get(trigger, ""))
    return None if value is None else str(value)


class ReplyHandler:
    """The PullConsumer handler: `await handler(envelope, msg)`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        metrics: SagaMetrics,
        log: logging.Logger,
        on_outbox: Callable[[], None],
        on_local_step: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._log = log
        self._on_outbox = on_outbox
        self._on_local_step = on_local_step

    async def __call__(self, envelope: Envelope, msg: Any) -> None:
        subject = getattr(msg, "subject", "") or ""
        trigger = parse_trigger(subject) or parse_trigger(envelope.type)
        order_id = _order_id(envelope)
        if trigger is None or order_id is None:
            self._log.info(
                "event not for the order saga; acknowledged",
                extra={"subject": subject, "type": envelope.type, "msg_id": envelope.id},
            )
            return
        detail = _detail(trigger, envelope.data)
        async with self._pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(
                "INSERT INTO inbox (msg_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true",
                envelope.id,
            )
            if not fresh:
                self._metrics.steps.inc(step=trigger.value, outcome="duplicate")
                return
            saga = await store.lock_saga(conn, order_id)
            if saga is None:
                self._log.warning(
                    "reply for an unknown order; acknowledged",
                    extra={"order_id": str(order_id), "msg_id": envelope.id},
                )
                return
            decision = decide(saga.state, trigger, detail or "")
            wrote_outbox = await store.apply_decision(
                conn,
                saga,
                decision,
                step=trigger.value,
                detail=detail if decision.moves else _ignored_detail(saga.state.value, detail),
                traceparent=command_traceparent(saga.trace_id, saga.traceparent),
                trace_id=saga.trace_id,
            )
        if decision.target is None:
            self._metrics.steps.inc(step=saga.state.value, outcome=decision.outcome)
            self._log.info(
                "reply %s %s in state %s",
                trigger.value,
                decision.outcome,
                saga.state.value,
                extra={"order_id": str(order_id), "msg_id": envelope.id},
            )
            return
        self._metrics.transition(saga.state, decision.target, trigger.value, saga.step_started_at)
        self._log.info(
            "saga %s -> %s",
            saga.state.value,
            decision.target.value,
            extra={"order_id": str(order_id), "trigger": trigger.value, "reason": decision.reason},
        )
        if wrote_outbox:
            self._on_outbox()
        if decision.target in LOCAL_STATES:
            self._on_local_step()


def _ignored_detail(state: str, detail: str | None) -> str:
    return f"in state {state}" + (f": {detail}" if detail else "")
