"""The simulated provider's decision rules: pure functions, no I/O."""

from __future__ import annotations

import pytest
from yardarm_fulfillment.payments import (
    REASON_DECLINED,
    REASON_INVALID_AMOUNT,
    REASON_INVALID_CARD,
    decline_reason,
    last4,
    luhn_valid,
)
from yardarm_fulfillment.shipping import REASON_UNSERVICEABLE, failure_reason


@pytest.mark.parametrize(
    "number",
    ["4242424242424242", "4000000000000002", "5555555555554444", "378282246310005",
     "6011111111111117", "4111111111111111"],
)  # fmt: skip
def test_luhn_accepts_valid_card_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize(
    "number",
    ["4242424242424241", "4000000000000001", "1234567812345678", "", "42424242",
     "4242x42424242424", "42424242424242424242", "\uff14\uff12" * 8],
)  # fmt: skip
def test_luhn_rejects_wrong_check_digits_bad_lengths_and_non_ascii_digits(number: str) -> None:
    assert not luhn_valid(number)


def test_the_test_card_is_charged() -> None:
    assert decline_reason("4242424242424242", 2500) is None
    assert decline_reason("4242 4242 4242 4242", 2500) is None
    assert decline_reason("4242-4242-4242-4242", 1) is None


def test_the_decline_card_is_declined_although_it_passes_luhn() -> None:
    assert luhn_valid("4000000000000002")
    assert decline_reason("4000000000000002", 2500) == REASON_DECLINED


def test_a_number_failing_luhn_is_an_invalid_card() -> None:
    assert decline_reason("4242424242424241", 2500) == REASON_INVALID_CARD
    assert decline_reason("not a card", 2500) == REASON_INVALID_CARD


def test_a_non_positive_amount_is_declined() -> None:
    assert decline_reason("4242424242424242", 0) == REASON_INVALID_AMOUNT
    assert decline_reason("4242424242424242", -5) == REASON_INVALID_AMOUNT


def test_only_the_last_four_digits_are_kept() -> None:
    assert last4("4242 4242 4242 4242") == "4242"
    assert last4("4000000000000002") == "0002"
    assert last4("12") == "12"
    assert last4("no digits") is None


def test_noship_customers_cannot_be_shipped_to() -> None:
    assert failure_reason("noship-42") == REASON_UNSERVICEABLE
    assert failure_reason("cust-7") is None
    assert failure_reason("ship-noship-") is None
