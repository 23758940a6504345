"""The saga's declared transitions, checked without any I/O."""

from __future__ import annotations

import pytest
from yardarm_orders.saga.definition import (
    LOCAL_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    CommandType,
    OrderStatus,
    SagaState,
    Trigger,
    decide,
    parse_trigger,
    status_of,
)


def run(*triggers: tuple[Trigger, str]) -> tuple[SagaState, list[CommandType], str | None]:
    """Feed triggers from RESERVING; returns the final state, commands sent and last reason."""
    state = SagaState.RESERVING
    commands: list[CommandType] = []
    reason: str | None = None
    for trigger, detail in triggers:
        decision = decide(state, trigger, detail)
        assert decision.moves, (state, trigger)
        assert decision.target is not None
        state = decision.target
        if decision.command:
            commands.append(decision.command)
        reason = decision.reason or reason
    return state, commands, reason


def test_happy_path_reserves_charges_ships_and_confirms() -> None:
    state, commands, reason = run(
        (Trigger.STOCK_RESERVED, ""),
        (Trigger.PAYMENT_CHARGED, "ch_1"),
        (Trigger.SHIPPING_SCHEDULED, "sh_1"),
    )
    assert state is SagaState.CONFIRMED
    assert commands == [CommandType.CHARGE, CommandType.SCHEDULE_SHIPPING]
    assert reason is None
    assert status_of(state) is OrderStatus.CONFIRMED


def test_decline_releases_stock_then_cancels_with_the_decline_reason() -> None:
    state, commands, reason = run(
        (Trigger.STOCK_RESERVED, ""),
        (Trigger.PAYMENT_DECLINED, "card declined"),
        (Trigger.STOCK_RELEASED, ""),
    )
    assert state is SagaState.CANCELLED
    assert commands == [CommandType.CHARGE]  # no refund: nothing was charged
    assert reason == "payment declined: card declined"


def test_shipping_failure_refunds_then_releases_in_reverse_order() -> None:
    state, commands, reason = run(
        (Trigger.STOCK_RESERVED, ""),
        (Trigger.PAYMENT_CHARGED, "ch_1"),
        (Trigger.SHIPPING_FAILED, "no carrier"),
        (Trigger.PAYMENT_REFUNDED, ""),
        (Trigger.STOCK_RELEASED, ""),
    )
    assert state is SagaState.CANCELLED
    assert commands == [CommandType.CHARGE, CommandType.SCHEDULE_SHIPPING, CommandType.REFUND]
    assert reason == "shipping failed: no carrier"


def test_insufficient_stock_cancels_naming_the_sku() -> None:
    state, commands, reason = run(
        (Trigger.STOCK_INSUFFICIENT, "sextant"), (Trigger.STOCK_RELEASED, "")
    )
    assert state is SagaState.CANCELLED
    assert commands == []
    assert reason == "insufficient stock for sextant"


@pytest.mark.parametrize(
    ("state", "trigger"),
    [
        (SagaState.RESERVING, Trigger.PAYMENT_CHARGED),
        (SagaState.SHIPPING, Trigger.PAYMENT_CHARGED),  # a late duplicate charge reply
        (SagaState.CONFIRMED, Trigger.SHIPPING_FAILED),
        (SagaState.CANCELLED, Trigger.PAYMENT_REFUNDED),
        (SagaState.RELEASING, Trigger.PAYMENT_DECLINED),
    ],
)
def test_unexpected_replies_are_ignored_without_moving(state: SagaState, trigger: Trigger) -> None:
    decision = decide(state, trigger, "x")
    assert decision.outcome == "ignored"
    assert not decision.moves and decision.command is None and decision.reason is None


def test_shipping_cancelled_is_recorded_in_any_state() -> None:
    for state in SagaState:
        decision = decide(state, Trigger.SHIPPING_CANCELLED)
        assert decision.outcome == "recorded" and not decision.moves


def test_terminal_states_have_no_way_out() -> None:
    for transition in TRANSITIONS:
        assert transition.source not in TERMINAL_STATES
    for state in TERMINAL_STATES:
        for trigger in Trigger:
            assert not decide(state, trigger).moves


def test_every_non_terminal_state_can_reach_a_terminal_state() -> None:
    edges: dict[SagaState, set[SagaState]] = {}
    for t in TRANSITIONS:
        edges.setdefault(t.source, set()).add(t.target)
    for start in set(SagaState) - TERMINAL_STATES:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges.get(todo.pop(), set()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & TERMINAL_STATES, start


def test_local_states_are_the_stock_steps_and_commands_go_to_cmd_subjects() -> None:
    assert {SagaState.RESERVING, SagaState.RELEASING} == LOCAL_STATES
    assert CommandType.CHARGE.subject == "cmd.payments.charge"
    assert CommandType.SCHEDULE_SHIPPING.subject == "cmd.shipping.schedule"
    assert CommandType.REFUND.subject == "cmd.payments.refund"


def test_reply_names_parse_from_subjects_or_types_but_never_local_triggers() -> None:
    assert parse_trigger("evt.payments.charged") is Trigger.PAYMENT_CHARGED
    assert parse_trigger("shipping.failed") is Trigger.SHIPPING_FAILED
    assert parse_trigger("evt.stock.reserved") is None  # only the worker decides stock steps
    assert parse_trigger("evt.orders.something") is None
