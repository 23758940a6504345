"""The payment participant: a simulated card provider with a charge/refund ledger.

Decisions are deterministic so tests and demos can pick an outcome by card number:
`4000000000000002` is declined ("card declined"), any number failing the Luhn check is
declined ("invalid card number"), other valid numbers (`4242424242424242`) are charged.
Only the last four digits of a card are stored.

Per saga there is at most one charge and one refund (a UNIQUE constraint). A repeated
command for the same saga answers with the recorded outcome. A refund for a saga with no
successful charge records a zero refund and still replies `payments.refunded` (the saga
can go on compensating); that row also makes a charge arriving after it decline, so a
late charge can never take money that nothing will give back.

Commands of schema 1 carry `amount_cents` (US dollars); schema 2 carries
`amount: {cents, currency}`. The ledger records the currency, and a refund returns the
amount and currency of the charge row, whatever the refund command says.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, Field
from yardarm_kit import Flags
from yardarm_kit.messaging import Envelope
from yardarm_kit.postgres import Connection

from yardarm_fulfillment.commands import (
    CommandTable,
    Readers,
    Reply,
    parse_command,
    read_command,
)
from yardarm_fulfillment.saga_lock import saga_lock

DECLINED_CARD = "4000000000000002"
REASON_DECLINED = "card declined"
REASON_INVALID_CARD = "invalid card number"
REASON_INVALID_AMOUNT = "invalid amount"
REASON_ALREADY_REFUNDED = "order already refunded"
REASON_INJECTED = "declined by fault injection (payments.decline-rate)"
NOTHING_TO_REFUND = "nothing to refund"
# What a schema 1 amount is in, and what the ledger assumes of rows written before 0002.
DEFAULT_CURRENCY = "USD"


class Money(BaseModel):
    """An amount in the currency's minor unit, with its ISO 4217 code."""

    cents: int
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class ChargeCommand(BaseModel):
    """`payments.charge`, schema 2 (the current shape)."""

    order_id: str = Field(min_length=1)
    amount: Money
    card: str


class RefundCommand(BaseModel):
    """`payments.refund`, schema 2; the amount is informational (the charge row decides)."""

    order_id: str = Field(min_length=1)
    amount: Money | None = None


class ChargeCommandV1(BaseModel):
    """`payments.charge`, schema 1: an amount in US cents."""

    order_id: str = Field(min_length=1)
    amount_cents: int
    card: str

    def upgrade(self) -> ChargeCommand:
        amount = Money(cents=self.amount_cents, currency=DEFAULT_CURRENCY)
        return ChargeCommand(order_id=self.order_id, amount=amount, card=self.card)


class RefundCommandV1(BaseModel):
    """`payments.refund`, schema 1."""

    order_id: str = Field(min_length=1)
    amount_cents: int | None = None

    def upgrade(self) -> RefundCommand:
        amount = (
            None
            if self.amount_cents is None
            else Money(cents=self.amount_cents, currency=DEFAULT_CURRENCY)
        )
        return RefundCommand(order_id=self.order_id, amount=amount)


CHARGE_READERS: Readers[ChargeCommand] = {
    1: lambda envelope: parse_command(ChargeCommandV1, envelope).upgrade(),
    2: lambda envelope: parse_command(ChargeCommand, envelope),
}
REFUND_READERS: Readers[RefundCommand] = {
    1: lambda envelope: parse_command(RefundCommandV1, envelope).upgrade(),
    2: lambda envelope: parse_command(RefundCommand, envelope),
}


def card_digits(card: str) -> str:
    """The card number without the spaces or dashes people type."""
    return card.replace(" ", "").replace("-", "")


def luhn_valid(number: str) -> bool:
    """The Luhn (mod 10) check every card number satisfies; 12 to 19 digits."""
    if not number.isascii() or not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def decline_reason(card: str, amount_cents: int) -> str | None:
    """Why the provider declines this charge, or None when it accepts it."""
    if amount_cents <= 0:
        return REASON_INVALID_AMOUNT
    number = card_digits(card)
    if not luhn_valid(number):
        return REASON_INVALID_CARD
    if number == DECLINED_CARD:
        return REASON_DECLINED
    return None


def last4(card: str) -> str | None:
    """The last four digits kept in the ledger (None if the input has no digits)."""
    digits = "".join(c for c in card_digits(card) if c.isascii() and c.isdigit())
    return digits[-4:] or None


def _charge_reply(order_id: str, row: Any, effect: str | None) -> Reply:
    if row["status"] == "charged":
        data = {
            "order_id": order_id,
            "charge_id": str(row["id"]),
            "amount_cents": row["amount_cents"],
            "card_last4": row["card_last4"],
        }
        return Reply("payments.charged", data, effect)
    return Reply("payments.declined", {"order_id": order_id, "reason": row["reason"]}, effect)


def _refund_reply(order_id: str, row: Any, effect: str | None) -> Reply:
    data: dict[str, Any] = {
        "order_id": order_id,
        "refund_id": str(row["id"]),
        "amount_cents": row["amount_cents"],
    }
    if row["refund_of"] is None:
        data["note"] = NOTHING_TO_REFUND
    else:
        data["charge_id"] = str(row["refund_of"])
    return Reply("payments.refunded", data, effect)


_COLUMNS = "id, status, reason, amount_cents, currency, card_last4, refund_of"


class Payments:
    """The payment commands; a flag injects declines for demos and drills."""

    def __init__(self, flags: Flags) -> None:
        self._flags = flags

    @property
    def commands(self) -> CommandTable:
        return {"payments.charge": self.charge, "payments.refund": self.refund}

    async def charge(self, conn: Connection, envelope: Envelope, schema: int) -> Reply:
        cmd = read_command(CHARGE_READERS, envelope, schema)
        await saga_lock(conn, "payments", envelope.saga_id)
        existing = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM payments WHERE saga_id = $1 AND kind = 'charge'",
            envelope.saga_id,
        )
        if existing is not None:
            return _charge_reply(cmd.order_id, existing, None)
        refunded = await conn.fetchval(
            "SELECT true FROM payments WHERE saga_id = $1 AND kind = 'refund'", envelope.saga_id
        )
        cents = cmd.amount.cents
        reason = REASON_ALREADY_REFUNDED if refunded else decline_reason(cmd.card, cents)
        decline_rate = self._flags.float("payments.decline-rate", 0.0)
        if reason is None and decline_rate > 0 and random.random() < decline_rate:
            reason = REASON_INJECTED
        row = await conn.fetchrow(
            f"""
            INSERT INTO payments (saga_id, order_id, kind, amount_cents, currency, card_last4,
                                  status, reason)
            VALUES ($1, $2, 'charge', $3, $4, $5, $6, $7)
            RETURNING {_COLUMNS}
            """,
            envelope.saga_id,
            cmd.order_id,
            max(cents, 0),
            cmd.amount.currency,
            last4(cmd.card),
            "declined" if reason else "charged",
            reason,
        )
        assert row is not None  # INSERT ... RETURNING always yields the row
        return _charge_reply(cmd.order_id, row, row["status"])

    async def refund(self, conn: Connection, envelope: Envelope, schema: int) -> Reply:
        cmd = read_command(REFUND_READERS, envelope, schema)
        await saga_lock(conn, "payments", envelope.saga_id)
        existing = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM payments WHERE saga_id = $1 AND kind = 'refund'",
            envelope.saga_id,
        )
        if existing is not None:
            return _refund_reply(cmd.order_id, existing, None)
        charge = await conn.fetchrow(
            "SELECT id, amount_cents, currency, card_last4 FROM payments"
            " WHERE saga_id = $1 AND kind = 'charge' AND status = 'charged'",
            envelope.saga_id,
        )
        # The ledger, not the command, says how much was taken, so that is what goes back.
        if charge is not None:
            currency = charge["currency"]
        else:
            currency = cmd.amount.currency if cmd.amount else DEFAULT_CURRENCY
        row = await conn.fetchrow(
            f"""
            INSERT INTO payments (saga_id, order_id, kind, amount_cents, currency, card_last4,
                                  status, reason, refund_of)
            VALUES ($1, $2, 'refund', $3, $4, $5, 'refunded', $6, $7)
            RETURNING {_COLUMNS}
            """,
            envelope.saga_id,
            cmd.order_id,
            charge["amount_cents"] if charge else 0,
            currency,
            charge["card_last4"] if charge else None,
            None if charge else NOTHING_TO_REFUND,
            charge["id"] if charge else None,
        )
        assert row is not None  # INSERT ... RETURNING always yields the row
        return _refund_reply(cmd.order_id, row, "refunded" if charge else "nothing_to_refund")
