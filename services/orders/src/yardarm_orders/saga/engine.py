"""Applies the saga's decisions: one trigger, or one due remote step, per call.

Every write of one application (history, state, deadline, order status, outbox command)
goes on the caller's connection inside the caller's transaction, with the saga row
already locked by the caller (`lock_saga`, or `hold_lease` for a worker), so replies,
re-sends, timeouts and cancels on one saga are serialized and each sees the state the
previous one left. What must wait for the commit (metrics, logs, nudges) comes back as
an `Applied`, handed to `observe` once the transaction has committed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from yardarm_kit.postgres import Connection

from yardarm_orders.saga import store
from yardarm_orders.saga.commands import CardGone, CommandWriter
from yardarm_orders.saga.definition import (
    CommandType,
    Decision,
    Saga,
    SagaState,
    Trigger,
    status_of,
)
from yardarm_orders.saga.metrics import SagaMetrics
from yardarm_orders.saga.store import SagaRow
from yardarm_orders.saga.tracing import command_traceparent

# The card stays on the saga only while a charge may still need to be (re)sent.
_KEEPS_CARD = frozenset({SagaState.RESERVING, SagaState.CHARGING})


@dataclass(frozen=True)
class Applied:
    """What one application did, for the after-commit bookkeeping."""

    saga: SagaRow
    trigger: Trigger | None  # None: a re-send
    decision: Decision | None
    sent: CommandType | None = None  # a command written to the outbox
    send: int = 1

    @property
    def target(self) -> SagaState | None:
        return None if self.decision is None else self.decision.target

    @property
    def wrote_outbox(self) -> bool:
        return self.sent is not None


class SagaEngine:
    """The saga definition bound to this replica's command schema and metrics."""

    def __init__(
        self, saga: Saga, commands: CommandWriter, metrics: SagaMetrics, log: logging.Logger
    ) -> None:
        self.saga = saga
        self._commands = commands
        self._metrics = metrics
        self._log = log

    def is_local(self, state: SagaState | None) -> bool:
        return state in self.saga.local_states

    async def fire(
        self, conn: Connection, saga: SagaRow, trigger: Trigger, detail: str | None
    ) -> Applied:
        """Apply `trigger` to the locked `saga`."""
        decision = self.saga.decide(saga.state, trigger, detail or "")
        recorded = detail
        if decision.outcome == "ignored":
            recorded = f"in state {saga.state.value}" + (f": {detail}" if detail else "")
        await store.add_history(
            conn, saga.order_id, trigger.value, decision.outcome, recorded, saga.trace_id
        )
        target = decision.target
        if target is None:
            return Applied(saga, trigger, decision)
        phase = self.saga.phase(target)
        await store.enter_state(
            conn,
            saga.order_id,
            target,
            attempts=1 if phase is not None and phase.remote else 0,
            first_wait_s=self.saga.first_wait_s(target),
            timeout_s=None if phase is None else phase.timeout_s,
            keep_card=target in _KEEPS_CARD,
        )
        await store.set_order_status(conn, saga.order_id, status_of(target), decision.reason)
        if decision.command is None:
            return Applied(saga, trigger, decision)
        await self._commands.enqueue(
            conn,
            saga.order_id,
            decision.command,
            send=1,
            traceparent=command_traceparent(saga.trace_id, saga.traceparent),
        )
        return Applied(saga, trigger, decision, sent=decision.command)

    async def on_due(self, conn: Connection, saga: SagaRow) -> Applied:
        """The locked remote step's time came: time it out, or send its command again."""
        phase = self.saga.phase(saga.state)
        if phase is None or phase.command is None:
            raise ValueError(f"{saga.state.value} is not a remote step")
        due = self.saga.due(
            saga.state,
            sends=saga.attempts,
            step_started_at=saga.step_started_at,
            deadline_at=saga.deadline_at,
            now=saga.now,
        )
        if due.timed_out:
            waited = (saga.now - saga.step_started_at).total_seconds()
            detail = f"no reply after {max(saga.attempts, 1)} sends in {waited:.1f}s"
            return await self.fire(conn, saga, Trigger.TIMED_OUT, detail)
        try:
            msg_id = await self._commands.enqueue(
                conn,
                saga.order_id,
                phase.command,
                send=due.send,
                traceparent=command_traceparent(saga.trace_id, saga.traceparent),
            )
        except CardGone as exc:  # only the reply or the timeout can end this step now
            await store.schedule_resend(
                conn,
                saga.order_id,
                sends=saga.attempts,
                deadline_at=due.deadline_at,
                next_at=due.deadline_at,
            )
            await store.add_history(
                conn, saga.order_id, phase.name, "not resent", str(exc), saga.trace_id
            )
            return Applied(saga, None, None)
        await store.schedule_resend(
            conn, saga.order_id, sends=due.send, deadline_at=due.deadline_at, next_at=due.next_at
        )
        await store.add_history(
            conn, saga.order_id, phase.name, "resent", f"send {due.send}: {msg_id}", saga.trace_id
        )
        return Applied(saga, None, None, sent=phase.command, send=due.send)

    def observe(self, applied: Applied) -> None:
        """Metrics and logs for an application whose transaction committed."""
        saga = applied.saga
        extra = {"order_id": str(saga.order_id), "state": saga.state.value}
        if applied.decision is None:
            if applied.sent is not None:
                self._metrics.resends.inc(command=applied.sent.value)
                self._log.info(
                    "re-sent %s (send %d): no reply yet", applied.sent.value, applied.send,
                    extra=extra,
                )  # fmt: skip
            return
        trigger = applied.trigger.value if applied.trigger else "resend"
        target = applied.decision.target
        if target is None:
            self._metrics.steps.inc(step=saga.state.value, outcome=applied.decision.outcome)
            self._log.info(
                "%s %s in state %s", trigger, applied.decision.outcome, saga.state.value,
                extra=extra,
            )  # fmt: skip
            return
        self._metrics.transition(saga.state, target, trigger, saga.step_started_at)
        if applied.trigger is Trigger.TIMED_OUT:
            self._metrics.timeouts.inc(step=saga.state.value)
        phase = self.saga.phase(target)
        if phase is not None and phase.compensating:
            self._metrics.compensations.inc(step=target.value)
        log = self._log.warning if applied.trigger is Trigger.TIMED_OUT else self._log.info
        log(
            "saga %s -> %s", saga.state.value, target.value,
            extra={**extra, "trigger": trigger, "reason": applied.decision.reason},
        )  # fmt: skip
