"""The saga's declared steps and the transition table derived from them, without any I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from yardarm_orders.saga.definition import (
    RUNNING_STATES,
    TERMINAL_STATES,
    CommandType,
    OrderStatus,
    RetryPolicy,
    Saga,
    SagaState,
    Trigger,
    status_of,
)
from yardarm_orders.saga.steps import SagaTiming, order_saga, order_steps

SAGA = order_saga()
S = SagaState
T = Trigger
C = CommandType


def run(*triggers: tuple[Trigger, str]) -> tuple[SagaState, list[CommandType], str | None]:
    """Feed triggers from RESERVING; returns the final state, commands sent and last reason."""
    state = SagaState.RESERVING
    commands: list[CommandType] = []
    reason: str | None = None
    for trigger, detail in triggers:
        decision = SAGA.decide(state, trigger, detail)
        assert decision.moves, (state, trigger)
        assert decision.target is not None
        state = decision.target
        if decision.command:
            commands.append(decision.command)
        reason = decision.reason or reason
    return state, commands, reason


def unwind(state: SagaState, trigger: Trigger) -> list[tuple[SagaState, CommandType | None]]:
    """The states (and commands) `trigger` in `state` leads through when every
    compensation then succeeds, up to the terminal state."""
    path = []
    decision = SAGA.decide(state, trigger, "x")
    while decision.target is not None:
        path.append((decision.target, decision.command))
        phase = SAGA.phase(decision.target)
        if phase is None:
            break
        done = next(
            s.compensation.done for s in SAGA.steps if s.compensation.state is decision.target
        )
        decision = SAGA.decide(decision.target, done)
    return path


def test_happy_path_reserves_charges_ships_and_confirms() -> None:
    state, commands, reason = run(
        (T.STOCK_RESERVED, ""), (T.PAYMENT_CHARGED, "ch_1"), (T.SHIPPING_SCHEDULED, "sh_1")
    )
    assert state is S.CONFIRMED
    assert commands == [C.CHARGE, C.SCHEDULE_SHIPPING]
    assert reason is None
    assert status_of(state) is OrderStatus.CONFIRMED


@pytest.mark.parametrize(
    ("state", "trigger", "path"),
    [
        # a failed reservation may have reserved some SKUs: release them
        (S.RESERVING, T.STOCK_INSUFFICIENT, [(S.RELEASING, None), (S.CANCELLED, None)]),
        (S.RESERVING, T.STOCK_UNAVAILABLE, [(S.RELEASING, None), (S.CANCELLED, None)]),
        # a declined charge took nothing: no refund
        (S.CHARGING, T.PAYMENT_DECLINED, [(S.RELEASING, None), (S.CANCELLED, None)]),
        # a charge without a reply may have happened: refund it, then release
        (
            S.CHARGING,
            T.TIMED_OUT,
            [(S.REFUNDING, C.REFUND), (S.RELEASING, None), (S.CANCELLED, None)],
        ),
        # a failed shipment shipped nothing: refund, release
        (
            S.SHIPPING,
            T.SHIPPING_FAILED,
            [(S.REFUNDING, C.REFUND), (S.RELEASING, None), (S.CANCELLED, None)],
        ),
        # a shipment without a reply may exist: cancel it first
        (
            S.SHIPPING,
            T.TIMED_OUT,
            [
                (S.CANCELLING_SHIPMENT, C.CANCEL_SHIPPING),
                (S.REFUNDING, C.REFUND),
                (S.RELEASING, None),
                (S.CANCELLED, None),
            ],
        ),
        # cancelling a confirmed order undoes every step, last first
        (
            S.CONFIRMED,
            T.CANCEL_REQUESTED,
            [
                (S.CANCELLING_SHIPMENT, C.CANCEL_SHIPPING),
                (S.REFUNDING, C.REFUND),
                (S.RELEASING, None),
                (S.CANCELLED, None),
            ],
        ),
    ],
)
def test_failure_or_timeout_at_each_step_compensates_in_reverse(
    state: SagaState, trigger: Trigger, path: list[tuple[SagaState, CommandType | None]]
) -> None:
    assert unwind(state, trigger) == path
    for compensating, _ in path[:-1]:
        assert status_of(compensating) is OrderStatus.PENDING  # the order stays locked


def test_reasons_name_what_failed() -> None:
    assert SAGA.decide(S.RESERVING, T.STOCK_INSUFFICIENT, "sextant").reason == (
        "insufficient stock for sextant"
    )
    assert SAGA.decide(S.CHARGING, T.PAYMENT_DECLINED, "card declined").reason == (
        "payment declined: card declined"
    )
    assert SAGA.decide(S.SHIPPING, T.SHIPPING_FAILED, "").reason == (
        "shipping failed: no reason given"
    )
    timed_out = SAGA.decide(S.CHARGING, T.TIMED_OUT, "no reply after 3 sends in 30.0s")
    assert timed_out.reason == "payments.charge timed out: no reply after 3 sends in 30.0s"
    assert SAGA.decide(S.CONFIRMED, T.CANCEL_REQUESTED).reason == "cancelled on request"
    # compensation steps keep the reason that started them
    assert SAGA.decide(S.REFUNDING, T.PAYMENT_REFUNDED).reason is None


@pytest.mark.parametrize(
    ("state", "trigger"),
    [
        (S.RESERVING, T.PAYMENT_CHARGED),
        (S.SHIPPING, T.PAYMENT_CHARGED),  # a late duplicate charge reply
        (S.REFUNDING, T.PAYMENT_CHARGED),  # a charge confirmed after its step timed out
        (S.CANCELLING_SHIPMENT, T.SHIPPING_SCHEDULED),  # shipped after the timeout
        (S.CONFIRMED, T.SHIPPING_FAILED),
        (S.CANCELLED, T.PAYMENT_REFUNDED),
        (S.RELEASING, T.PAYMENT_DECLINED),
        (S.RESERVING, T.TIMED_OUT),  # local steps have no timeout
        (S.REFUNDING, T.TIMED_OUT),  # compensations retry until done
        (S.CHARGING, T.CANCEL_REQUESTED),  # the semantic lock: no cancel mid-saga
        (S.CANCELLED, T.CANCEL_REQUESTED),
    ],
)
def test_unexpected_triggers_are_ignored_without_moving(state: SagaState, trigger: Trigger) -> None:
    decision = SAGA.decide(state, trigger, "x")
    assert decision.outcome == "ignored"
    assert not decision.moves and decision.command is None and decision.reason is None


def test_shipping_cancelled_ends_cancelling_and_is_only_recorded_elsewhere() -> None:
    assert SAGA.decide(S.CANCELLING_SHIPMENT, T.SHIPPING_CANCELLED).target is S.REFUNDING
    for state in set(SagaState) - {S.CANCELLING_SHIPMENT}:
        decision = SAGA.decide(state, T.SHIPPING_CANCELLED)
        assert decision.outcome == "recorded" and not decision.moves


def test_only_a_cancel_leaves_confirmed_and_nothing_leaves_cancelled() -> None:
    for trigger in Trigger:
        assert not SAGA.decide(S.CANCELLED, trigger).moves
        assert SAGA.decide(S.CONFIRMED, trigger).moves is (trigger is T.CANCEL_REQUESTED)


def test_every_running_state_can_reach_a_terminal_state() -> None:
    edges: dict[SagaState, set[SagaState]] = {}
    for t in SAGA.transitions:
        edges.setdefault(t.source, set()).add(t.target)
    assert set(edges) >= RUNNING_STATES
    for start in RUNNING_STATES:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges.get(todo.pop(), set()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & TERMINAL_STATES, start


def test_phases_name_each_state_and_say_where_it_runs() -> None:
    assert SAGA.local_states == {S.RESERVING, S.RELEASING}
    assert SAGA.remote_states == {S.CHARGING, S.SHIPPING, S.CANCELLING_SHIPMENT, S.REFUNDING}
    names = {state: phase.name for state, phase in SAGA.phases.items()}
    assert names == {
        S.RESERVING: "stock.reserve",
        S.CHARGING: "payments.charge",
        S.SHIPPING: "shipping.schedule",
        S.RELEASING: "stock.release",
        S.REFUNDING: "payments.refund",
        S.CANCELLING_SHIPMENT: "shipping.cancel",
    }
    assert SAGA.phase(S.CONFIRMED) is None and SAGA.phase(S.CANCELLED) is None
    # compensations never time out and never give up
    for phase in SAGA.phases.values():
        if phase.compensating:
            assert phase.timeout_s is None and phase.retry.attempts is None
    assert C.CHARGE.subject == "cmd.payments.charge"
    assert C.CANCEL_SHIPPING.subject == "cmd.shipping.cancel"


def test_the_table_follows_the_declared_steps() -> None:
    """Reordering the declared steps reorders the saga: nothing is listed by hand."""
    reserve, charge, ship = order_steps(SagaTiming())
    swapped = Saga((reserve, ship, charge))
    assert swapped.decide(S.RESERVING, T.STOCK_RESERVED).target is S.SHIPPING
    assert swapped.decide(S.SHIPPING, T.SHIPPING_SCHEDULED).command is C.CHARGE
    assert swapped.decide(S.CHARGING, T.TIMED_OUT).target is S.REFUNDING
    assert swapped.decide(S.REFUNDING, T.PAYMENT_REFUNDED).target is S.CANCELLING_SHIPMENT


def test_replies_parse_from_subjects_or_types_but_never_local_triggers() -> None:
    assert SAGA.parse_reply("evt.payments.charged") is T.PAYMENT_CHARGED
    assert SAGA.parse_reply("shipping.failed") is T.SHIPPING_FAILED
    assert SAGA.parse_reply("evt.shipping.cancelled") is T.SHIPPING_CANCELLED
    for name in ("evt.stock.reserved", "step.timeout", "order.cancel", "evt.orders.x"):
        assert SAGA.parse_reply(name) is None, name


def test_the_retry_policy_doubles_to_its_cap_and_bounds_attempts() -> None:
    policy = RetryPolicy(base_s=5, max_s=30, attempts=3)
    assert [policy.delay_s(n) for n in range(1, 6)] == [5, 10, 20, 30, 30]
    assert policy.delay_s(10_000) == 30
    assert not policy.exhausted(2) and policy.exhausted(3)
    assert not RetryPolicy(1, 2).exhausted(10**6)


T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_a_remote_step_resends_on_its_backoff_until_its_deadline_then_times_out() -> None:
    saga = order_saga(SagaTiming(charge_timeout_s=30, resend_after_s=5, resend_max_s=30))
    assert saga.first_wait_s(S.CHARGING) == 5
    assert saga.first_wait_s(S.RESERVING) == 0 and saga.first_wait_s(S.CONFIRMED) is None
    deadline = T0 + timedelta(seconds=30)
    sends, now, looks = 1, T0 + timedelta(seconds=5), []
    for _ in range(10):
        due = saga.due(S.CHARGING, sends=sends, step_started_at=T0, deadline_at=deadline, now=now)
        if due.timed_out:
            break
        assert due.send == sends + 1 and due.deadline_at == deadline
        assert due.next_at is not None
        looks.append((now - T0).total_seconds())
        sends, now = due.send, due.next_at
    assert due.timed_out and now == deadline
    assert looks == [5, 15]  # send 2 at 5 s, send 3 at 15 s, the next (35 s) is past 30 s


def test_compensations_resend_forever_and_old_rows_get_a_deadline_from_their_start() -> None:
    saga = order_saga(SagaTiming(charge_timeout_s=30, resend_after_s=5, resend_max_s=20))
    late = T0 + timedelta(days=1)
    due = saga.due(S.REFUNDING, sends=40, step_started_at=T0, deadline_at=None, now=late)
    assert not due.timed_out and due.send == 41 and due.deadline_at is None
    assert due.next_at == late + timedelta(seconds=20)
    # a saga that entered CHARGING under a version without deadlines (0 sends recorded)
    fresh = saga.due(S.CHARGING, sends=0, step_started_at=T0, deadline_at=None, now=T0)
    assert not fresh.timed_out and fresh.send == 2
    assert fresh.deadline_at == T0 + timedelta(seconds=30)
    stale = saga.due(S.CHARGING, sends=0, step_started_at=T0, deadline_at=None, now=late)
    assert stale.timed_out
    with pytest.raises(ValueError):
        saga.due(S.RESERVING, sends=1, step_started_at=T0, deadline_at=None, now=T0)
