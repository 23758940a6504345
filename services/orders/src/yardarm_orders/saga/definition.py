"""The order saga as data: declared steps, and the transition table derived from them.

Pure: no I/O, no clock of its own. A `Step` says what runs in its state (a local stock
step or a command), what undoes it, how long it may take and how it retries. `Saga`
derives every edge from the step order, so the compensation order can never disagree
with the steps: a failure in step i undoes, in reverse, the steps before it (and step i
itself when its failure may have left part of its effect, like a reservation of several
SKUs); a timeout in step i also undoes step i, since the participant may have acted on a
command whose reply never came. The worker, the reply handler and the cancel API ask
`decide` what a trigger means in a saga's state; the engine writes the answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class SagaState(StrEnum):
    RESERVING = "RESERVING"
    CHARGING = "CHARGING"
    SHIPPING = "SHIPPING"
    CONFIRMED = "CONFIRMED"
    CANCELLING_SHIPMENT = "CANCELLING_SHIPMENT"
    REFUNDING = "REFUNDING"
    RELEASING = "RELEASING"
    CANCELLED = "CANCELLED"


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


class Trigger(StrEnum):
    """What can happen to a saga: local step outcomes, participant replies, the clock, a user."""

    STOCK_RESERVED = "stock.reserved"
    STOCK_INSUFFICIENT = "stock.insufficient"
    STOCK_MISSING = "stock.missing"
    STOCK_UNAVAILABLE = "stock.unavailable"
    STOCK_RELEASED = "stock.released"
    PAYMENT_CHARGED = "payments.charged"
    PAYMENT_DECLINED = "payments.declined"
    PAYMENT_REFUNDED = "payments.refunded"
    SHIPPING_SCHEDULED = "shipping.scheduled"
    SHIPPING_FAILED = "shipping.failed"
    SHIPPING_CANCELLED = "shipping.cancelled"
    TIMED_OUT = "step.timeout"
    CANCEL_REQUESTED = "order.cancel"


class CommandType(StrEnum):
    """Commands the saga sends; the subject is `cmd.<type>`."""

    CHARGE = "payments.charge"
    REFUND = "payments.refund"
    SCHEDULE_SHIPPING = "shipping.schedule"
    CANCEL_SHIPPING = "shipping.cancel"

    @property
    def subject(self) -> str:
        return f"cmd.{self.value}"


TERMINAL_STATES: frozenset[SagaState] = frozenset({SagaState.CONFIRMED, SagaState.CANCELLED})
RUNNING_STATES: frozenset[SagaState] = frozenset(SagaState) - TERMINAL_STATES
CANCEL_REASON = "cancelled on request"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: `base_s`, doubling, capped at `max_s`.

    `attempts` bounds the tries of a local step (None: until it succeeds, or, for a
    remote step, until its timeout). A remote step re-sends its command on this backoff.
    """

    base_s: float
    max_s: float
    attempts: int | None = None

    def delay_s(self, tries: int) -> float:
        """How long to wait after the `tries`-th try (1-based) before the next one."""
        return min(self.max_s, self.base_s * float(2 ** min(max(tries - 1, 0), 30)))

    def exhausted(self, tries: int) -> bool:
        return self.attempts is not None and tries >= self.attempts


@dataclass(frozen=True)
class Compensation:
    """What undoes a step: a local release or a command, ended by `done`."""

    name: str
    state: SagaState
    command: CommandType | None
    done: Trigger


@dataclass(frozen=True)
class Step:
    """One forward step of the saga, declared as data."""

    name: str
    state: SagaState
    command: CommandType | None  # None: a local step the worker runs here
    succeeded: Trigger
    # Failure outcomes and the order's reason for each (`{detail}` filled in).
    failures: tuple[tuple[Trigger, str], ...]
    compensation: Compensation
    retry: RetryPolicy
    timeout_s: float | None = None  # a remote step's reply must come within this
    # A failure may have left part of the effect behind (some SKUs reserved), so it is
    # compensated too; a remote step's failure reply means it took no effect.
    partial_failure: bool = False


@dataclass(frozen=True)
class Phase:
    """What runs in one state: a step's action or its compensation (derived)."""

    name: str
    state: SagaState
    command: CommandType | None
    retry: RetryPolicy
    timeout_s: float | None
    compensating: bool

    @property
    def remote(self) -> bool:
        return self.command is not None


@dataclass(frozen=True)
class Transition:
    """One edge of the saga, derived from the steps."""

    source: SagaState
    trigger: Trigger
    target: SagaState
    command: CommandType | None = None
    # A reason sets the order's reason; `{detail}` is filled from the trigger's detail.
    reason: str | None = None


@dataclass(frozen=True)
class Decision:
    """What a trigger does to a saga in a given state.

    `target is None` means the saga stays where it is; `outcome` says why ("recorded" for
    a record-only trigger, "ignored" for one the current state does not expect).
    """

    outcome: str
    target: SagaState | None = None
    command: CommandType | None = None
    reason: str | None = None

    @property
    def moves(self) -> bool:
        return self.target is not None


@dataclass(frozen=True)
class Due:
    """What a remote step whose time came does: time out, or send command number `send`."""

    timed_out: bool
    send: int
    deadline_at: datetime | None
    next_at: datetime | None  # when to look again after this send


# Triggers only this service raises (the worker's clock, the API), never a message.
INTERNAL_TRIGGERS: frozenset[Trigger] = frozenset({Trigger.TIMED_OUT, Trigger.CANCEL_REQUESTED})
# Triggers accepted and recorded in any state without moving the saga.
RECORD_ONLY: frozenset[Trigger] = frozenset({Trigger.SHIPPING_CANCELLED})


class Saga:
    """The transition table and per-state phases derived from `steps`, in order."""

    def __init__(self, steps: Iterable[Step]) -> None:
        self.steps: tuple[Step, ...] = tuple(steps)
        self.phases: dict[SagaState, Phase] = {}
        for step in self.steps:
            self.phases[step.state] = Phase(
                step.name, step.state, step.command, step.retry, step.timeout_s, False
            )
            comp = step.compensation
            # Compensations retry until done: the step's backoff, no limit, no timeout.
            retry = RetryPolicy(step.retry.base_s, step.retry.max_s)
            self.phases[comp.state] = Phase(comp.name, comp.state, comp.command, retry, None, True)
        self.transitions: tuple[Transition, ...] = tuple(self._derive())
        self._by_edge = {(t.source, t.trigger): t for t in self.transitions}
        if len(self._by_edge) != len(self.transitions):
            raise ValueError("two steps declare the same trigger in one state")
        self.local_states = frozenset(s for s, p in self.phases.items() if not p.remote)
        self.remote_states = frozenset(s for s, p in self.phases.items() if p.remote)
        # What a participant can answer: the outcomes of the steps that send commands.
        self.reply_triggers = (
            frozenset(t.trigger for t in self.transitions if t.source in self.remote_states)
            | RECORD_ONLY
        ) - INTERNAL_TRIGGERS

    def _unwind(self, index: int) -> tuple[SagaState, CommandType | None]:
        """Where compensating from step `index` downwards starts (CANCELLED if none)."""
        if index < 0:
            return SagaState.CANCELLED, None
        comp = self.steps[index].compensation
        return comp.state, comp.command

    def _derive(self) -> Iterable[Transition]:
        last = len(self.steps) - 1
        for i, step in enumerate(self.steps):
            if i < last:
                nxt = self.steps[i + 1]
                yield Transition(step.state, step.succeeded, nxt.state, nxt.command)
            else:
                yield Transition(step.state, step.succeeded, SagaState.CONFIRMED)
            for trigger, reason in step.failures:
                target, command = self._unwind(i if step.partial_failure else i - 1)
                yield Transition(step.state, trigger, target, command, reason)
            if step.timeout_s is not None:
                target, command = self._unwind(i)
                reason = f"{step.name} timed out: {{detail}}"
                yield Transition(step.state, Trigger.TIMED_OUT, target, command, reason)
            target, command = self._unwind(i - 1)
            yield Transition(step.compensation.state, step.compensation.done, target, command)
        target, command = self._unwind(last)
        yield Transition(
            SagaState.CONFIRMED, Trigger.CANCEL_REQUESTED, target, command, CANCEL_REASON
        )

    def decide(self, state: SagaState, trigger: Trigger, detail: str = "") -> Decision:
        """The saga's answer to `trigger` while in `state`."""
        edge = self._by_edge.get((state, trigger))
        if edge is not None:
            reason = edge.reason.format(detail=detail or "no reason given") if edge.reason else None
            return Decision("applied", edge.target, edge.command, reason)
        if trigger in RECORD_ONLY:
            return Decision("recorded")
        return Decision("ignored")

    def phase(self, state: SagaState) -> Phase | None:
        """What runs in `state`; None for CONFIRMED and CANCELLED."""
        return self.phases.get(state)

    def first_wait_s(self, state: SagaState) -> float | None:
        """After entering `state`, how long until the worker looks at it (None: never).

        A local step is due at once; a remote step after its first re-send interval (or
        its timeout, if sooner); a terminal state never.
        """
        phase = self.phases.get(state)
        if phase is None:
            return None
        if not phase.remote:
            return 0.0
        wait = phase.retry.delay_s(1)
        return wait if phase.timeout_s is None else min(wait, phase.timeout_s)

    def due(
        self,
        state: SagaState,
        *,
        sends: int,
        step_started_at: datetime,
        deadline_at: datetime | None,
        now: datetime,
    ) -> Due:
        """A remote step's time came: time out past its deadline, else send once more.

        A saga that entered the step without a deadline (a version before deadlines)
        gets one counted from when it entered the step.
        """
        phase = self.phases.get(state)
        if phase is None or not phase.remote:
            raise ValueError(f"{state.value} is not a remote step")
        if phase.timeout_s is None:  # compensations retry until done
            deadline_at = None
        elif deadline_at is None:
            deadline_at = step_started_at + timedelta(seconds=phase.timeout_s)
        if deadline_at is not None and now >= deadline_at:
            return Due(True, sends, deadline_at, None)
        send = max(sends, 1) + 1
        next_at = now + timedelta(seconds=phase.retry.delay_s(send))
        if deadline_at is not None:
            next_at = min(next_at, deadline_at)
        return Due(False, send, deadline_at, next_at)

    def parse_reply(self, name: str) -> Trigger | None:
        """The trigger a reply (`payments.charged` or `evt.payments.charged`) stands for;
        None for anything a participant cannot send (stock outcomes, timeouts, cancels)."""
        try:
            trigger = Trigger(name.removeprefix("evt."))
        except ValueError:
            return None
        return trigger if trigger in self.reply_triggers else None


def status_of(state: SagaState) -> OrderStatus:
    """The order status a client sees: PENDING while any saga (forward or compensating)
    runs on the order."""
    if state is SagaState.CONFIRMED:
        return OrderStatus.CONFIRMED
    if state is SagaState.CANCELLED:
        return OrderStatus.CANCELLED
    return OrderStatus.PENDING
