"""The shipping participant: schedules and cancels one shipment per saga.

A customer whose id starts with `noship-` lives where nobody delivers: scheduling fails
with "address not serviceable". A repeated schedule answers with the recorded outcome.
A cancel for a saga with no shipment records a cancelled one, so a schedule arriving
after it fails ("shipment cancelled") instead of shipping an abandoned order.
Schema 2 left the shipping commands as they were, so both versions read the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
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

UNSERVICEABLE_PREFIX = "noship-"
REASON_UNSERVICEABLE = "address not serviceable"
REASON_CANCELLED = "shipment cancelled"
REASON_CANCEL_DEFAULT = "cancelled on request"


class ShipItem(BaseModel):
    sku: str = Field(min_length=1)
    quantity: int = Field(ge=1)


class ScheduleCommand(BaseModel):
    order_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1)
    items: list[ShipItem] = Field(min_length=1)


class CancelCommand(BaseModel):
    order_id: str = Field(min_length=1)
    reason: str | None = None


SCHEDULE_READERS: Readers[ScheduleCommand] = {
    1: lambda envelope: parse_command(ScheduleCommand, envelope),
    2: lambda envelope: parse_command(ScheduleCommand, envelope),
}
CANCEL_READERS: Readers[CancelCommand] = {
    1: lambda envelope: parse_command(CancelCommand, envelope),
    2: lambda envelope: parse_command(CancelCommand, envelope),
}


def failure_reason(customer_id: str) -> str | None:
    """Why a shipment for this customer cannot be scheduled, or None when it can."""
    if customer_id.startswith(UNSERVICEABLE_PREFIX):
        return REASON_UNSERVICEABLE
    return None


_COLUMNS = "shipment_id, status, reason"


def _schedule_reply(order_id: str, row: Any, effect: str | None) -> Reply:
    if row["status"] == "scheduled":
        data = {"order_id": order_id, "shipment_id": str(row["shipment_id"])}
        return Reply("shipping.scheduled", data, effect)
    reason = row["reason"] if row["status"] == "failed" else REASON_CANCELLED
    return Reply("shipping.failed", {"order_id": order_id, "reason": reason}, effect)


def _cancel_reply(order_id: str, row: Any, effect: str | None) -> Reply:
    data = {"order_id": order_id, "shipment_id": str(row["shipment_id"]), "reason": row["reason"]}
    return Reply("shipping.cancelled", data, effect)


class Shipping:
    """The shipping commands."""

    @property
    def commands(self) -> CommandTable:
        return {"shipping.schedule": self.schedule, "shipping.cancel": self.cancel}

    async def schedule(self, conn: Connection, envelope: Envelope, schema: int) -> Reply:
        cmd = read_command(SCHEDULE_READERS, envelope, schema)
        await saga_lock(conn, "shipping", envelope.saga_id)
        existing = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM shipments WHERE saga_id = $1", envelope.saga_id
        )
        if existing is not None:
            return _schedule_reply(cmd.order_id, existing, None)
        reason = failure_reason(cmd.customer_id)
        row = await conn.fetchrow(
            f"""
            INSERT INTO shipments (saga_id, order_id, status, reason, items, customer_id)
            VALUES ($1, $2, $3, $4, $5, $6)
            RETURNING {_COLUMNS}
            """,
            envelope.saga_id,
            cmd.order_id,
            "failed" if reason else "scheduled",
            reason,
            [item.model_dump() for item in cmd.items],
            cmd.customer_id,
        )
        assert row is not None  # INSERT ... RETURNING always yields the row
        return _schedule_reply(cmd.order_id, row, row["status"])

    async def cancel(self, conn: Connection, envelope: Envelope, schema: int) -> Reply:
        cmd = read_command(CANCEL_READERS, envelope, schema)
        await saga_lock(conn, "shipping", envelope.saga_id)
        reason = cmd.reason or REASON_CANCEL_DEFAULT
        existing = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM shipments WHERE saga_id = $1", envelope.saga_id
        )
        if existing is not None and existing["status"] == "cancelled":
            return _cancel_reply(cmd.order_id, existing, None)
        if existing is not None:
            row = await conn.fetchrow(
                f"""
                UPDATE shipments SET status = 'cancelled', reason = $2, updated_at = now()
                 WHERE saga_id = $1
                RETURNING {_COLUMNS}
                """,
                envelope.saga_id,
                reason,
            )
        else:
            row = await conn.fetchrow(
                f"""
                INSERT INTO shipments (saga_id, order_id, status, reason)
                VALUES ($1, $2, 'cancelled', $3)
                RETURNING {_COLUMNS}
                """,
                envelope.saga_id,
                cmd.order_id,
                reason,
            )
        assert row is not None  # UPDATE/INSERT ... RETURNING of a locked, present row
        return _cancel_reply(cmd.order_id, row, "cancelled")
