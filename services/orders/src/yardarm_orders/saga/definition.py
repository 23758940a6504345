"""The order saga as data: states, the triggers each state accepts, and what follows.

Pure: no I/O, no clock. The worker (local stock steps) and the event consumer (replies
from the participants) ask `decide` what a trigger means in the saga's current state and
the store writes the answer (state, history, outbox command) in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SagaState(StrEnum):
    RESERVING = "RESERVING"
    CHARGING = "CHARGING"
    SHIPPING = "SHIPPING"
    CONFIRMED = "CONFIRMED"
    REFUNDING = "REFUNDING"
    RELEASING = "RELEASING"
    CANCELLED = "CANCELLED"


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


class Trigger(StrEnum):
    """What can happen to a saga: local step outcomes and participant replies."""

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


class CommandType(StrEnum):
    """Commands the saga sends; the subject is `cmd.<type>`."""

    CHARGE = "payments.charge"
    REFUND = "payments.refund"
    SCHEDULE_SHIPPING = "shipping.schedule"

    @property
    def subject(self) -> str:
        return f"cmd.{self.value}"


# States whose step runs in this service (claimed by any replica's worker under a lease).
LOCAL_STATES: frozenset[SagaState] = frozenset({SagaState.RESERVING, SagaState.RELEASING})
TERMINAL_STATES: frozenset[SagaState] = frozenset({SagaState.CONFIRMED, SagaState.CANCELLED})


@dataclass(frozen=True)
class Transition:
    """One declared edge of the saga."""

    source: SagaState
    trigger: Trigger
    target: SagaState
    command: CommandType | None = None
    # A reason sets the order's reason; `{detail}` is filled from the trigger's detail.
    reason: str | None = None


TRANSITIONS: tuple[Transition, ...] = (
    Transition(SagaState.RESERVING, Trigger.STOCK_RESERVED, SagaState.CHARGING, CommandType.CHARGE),
    Transition(
        SagaState.RESERVING,
        Trigger.STOCK_INSUFFICIENT,
        SagaState.RELEASING,
        reason="insufficient stock for {detail}",
    ),
    Transition(
        SagaState.RESERVING,
        Trigger.STOCK_MISSING,
        SagaState.RELEASING,
        reason="stock record for {detail} no longer exists",
    ),
    Transition(
        SagaState.RESERVING,
        Trigger.STOCK_UNAVAILABLE,
        SagaState.RELEASING,
        reason="stock could not be reserved: {detail}",
    ),
    Transition(
        SagaState.CHARGING,
        Trigger.PAYMENT_CHARGED,
        SagaState.SHIPPING,
        CommandType.SCHEDULE_SHIPPING,
    ),
    Transition(
        SagaState.CHARGING,
        Trigger.PAYMENT_DECLINED,
        SagaState.RELEASING,
        reason="payment declined: {detail}",
    ),
    Transition(SagaState.SHIPPING, Trigger.SHIPPING_SCHEDULED, SagaState.CONFIRMED),
    Transition(
        SagaState.SHIPPING,
        Trigger.SHIPPING_FAILED,
        SagaState.REFUNDING,
        CommandType.REFUND,
        reason="shipping failed: {detail}",
    ),
    Transition(SagaState.REFUNDING, Trigger.PAYMENT_REFUNDED, SagaState.RELEASING),
    Transition(SagaState.RELEASING, Trigger.STOCK_RELEASED, SagaState.CANCELLED),
)

# Triggers accepted and recorded in any state without moving the saga.
RECORD_ONLY: frozenset[Trigger] = frozenset({Trigger.SHIPPING_CANCELLED})

_BY_EDGE: dict[tuple[SagaState, Trigger], Transition] = {
    (t.source, t.trigger): t for t in TRANSITIONS
}


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


def status_of(state: SagaState) -> OrderStatus:
    """The order status a client sees for a saga state."""
    if state is SagaState.CONFIRMED:
        return OrderStatus.CONFIRMED
    if state is SagaState.CANCELLED:
        return OrderStatus.CANCELLED
    return OrderStatus.PENDING


def decide(state: SagaState, trigger: Trigger, detail: str = "") -> Decision:
    """The saga's answer to `trigger` while in `state`."""
    edge = _BY_EDGE.get((state, trigger))
    if edge is not None:
        reason = edge.reason.format(detail=detail or "no reason given") if edge.reason else None
        return Decision("applied", edge.target, edge.command, reason)
    if trigger in RECORD_ONLY:
        return Decision("recorded")
    return Decision("ignored")


def parse_trigger(name: str) -> Trigger | None:
    """The trigger an event name (`payments.charged` or `evt.payments.charged`) stands for."""
    bare = name.removeprefix("evt.")
    try:
        trigger = Trigger(bare)
    except ValueError:
        return None
    return None if bare.startswith("stock.") else trigger
