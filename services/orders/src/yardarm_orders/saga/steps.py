"""The order saga's steps: reserve stock, charge the payment, schedule the shipment.

Only the timing comes from settings; the order of the steps, what undoes each and which
outcomes fail them are fixed here, and `Saga` derives the transition table from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from yardarm_orders.saga.definition import (
    CommandType,
    Compensation,
    RetryPolicy,
    Saga,
    SagaState,
    Step,
    Trigger,
)


@dataclass(frozen=True)
class SagaTiming:
    """Timeouts and retry pacing; the defaults suit a demo."""

    charge_timeout_s: float = 30.0
    shipping_timeout_s: float = 30.0
    # A command without a reply is sent again after resend_after_s, doubling to resend_max_s.
    resend_after_s: float = 5.0
    resend_max_s: float = 30.0
    # Local stock steps: backoff after a datastore failure; reserving gives up after
    # reserve_max_attempts runs (releasing never does).
    retry_base_s: float = 0.5
    retry_max_s: float = 30.0
    reserve_max_attempts: int = 20


def order_steps(timing: SagaTiming) -> tuple[Step, ...]:
    """The three steps of an order, in order."""
    local = RetryPolicy(timing.retry_base_s, timing.retry_max_s, timing.reserve_max_attempts)
    remote = RetryPolicy(timing.resend_after_s, timing.resend_max_s)
    return (
        Step(
            name="stock.reserve",
            state=SagaState.RESERVING,
            command=None,
            succeeded=Trigger.STOCK_RESERVED,
            failures=(
                (Trigger.STOCK_INSUFFICIENT, "insufficient stock for {detail}"),
                (Trigger.STOCK_MISSING, "stock record for {detail} no longer exists"),
                (Trigger.STOCK_UNAVAILABLE, "stock could not be reserved: {detail}"),
            ),
            compensation=Compensation(
                "stock.release", SagaState.RELEASING, None, Trigger.STOCK_RELEASED
            ),
            retry=local,
            partial_failure=True,
        ),
        Step(
            name="payments.charge",
            state=SagaState.CHARGING,
            command=CommandType.CHARGE,
            succeeded=Trigger.PAYMENT_CHARGED,
            failures=((Trigger.PAYMENT_DECLINED, "payment declined: {detail}"),),
            compensation=Compensation(
                "payments.refund", SagaState.REFUNDING, CommandType.REFUND, Trigger.PAYMENT_REFUNDED
            ),
            retry=remote,
            timeout_s=timing.charge_timeout_s,
        ),
        Step(
            name="shipping.schedule",
            state=SagaState.SHIPPING,
            command=CommandType.SCHEDULE_SHIPPING,
            succeeded=Trigger.SHIPPING_SCHEDULED,
            failures=((Trigger.SHIPPING_FAILED, "shipping failed: {detail}"),),
            compensation=Compensation(
                "shipping.cancel",
                SagaState.CANCELLING_SHIPMENT,
                CommandType.CANCEL_SHIPPING,
                Trigger.SHIPPING_CANCELLED,
            ),
            retry=remote,
            timeout_s=timing.shipping_timeout_s,
        ),
    )


def order_saga(timing: SagaTiming | None = None) -> Saga:
    return Saga(order_steps(timing or SagaTiming()))
