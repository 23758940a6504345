"""Commands into the outbox, in the message schema this replica speaks.

Schema 2 changes only the payment commands (an `amount` object with its currency in
place of `amount_cents`); every command row records its schema, so the relay publishes
it with the matching `yardarm-schema` header. Replicas of both versions can share one
database and stream during a rollout, because participants accept both.

Envelope ids: the first send of a command is `<saga>:<type>`; send n >= 2 is
`<saga>:<type>:<n>`, so a re-send is a new message (JetStream's dedupe window would drop
the same id) that an idempotent participant answers with its recorded outcome.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from yardarm_kit.postgres import Connection

from yardarm_orders.saga.definition import CommandType

SCHEMAS = (1, 2)


class CardGone(LookupError):
    """The saga no longer holds the card, so a charge cannot be sent again (a version
    that dropped the card with the first send moved the saga into CHARGING)."""


def command_id(order_id: UUID, command: CommandType, send: int) -> str:
    base = f"{order_id}:{command.value}"
    return base if send <= 1 else f"{base}:{send}"


def command_data(command: CommandType, order: Any, schema: int) -> dict[str, Any]:
    """The command's `data` from the order's row (`id, customer_id, items, total_cents,
    currency, reason, card`)."""
    oid = str(order["id"])
    if command in (CommandType.CHARGE, CommandType.REFUND):
        data: dict[str, Any] = {"order_id": oid}
        if schema >= 2:
            data["amount"] = {"cents": order["total_cents"], "currency": order["currency"]}
        else:
            data["amount_cents"] = order["total_cents"]
        if command is CommandType.CHARGE:
            data["card"] = order["card"]
        return data
    if command is CommandType.SCHEDULE_SHIPPING:
        items = [{"sku": i["sku"], "quantity": i["quantity"]} for i in order["items"]]
        return {"order_id": oid, "customer_id": order["customer_id"], "items": items}
    return {"order_id": oid, "reason": order["reason"]}


class CommandWriter:
    """Writes command envelopes into the caller's transaction's outbox."""

    def __init__(self, schema: int) -> None:
        if schema not in SCHEMAS:
            raise ValueError(f"unsupported message schema {schema} (supported: 1, 2)")
        self.schema = schema

    async def enqueue(
        self,
        conn: Connection,
        order_id: UUID,
        command: CommandType,
        *,
        send: int,
        traceparent: str | None,
    ) -> str:
        """Send number `send` of `command` into the outbox; returns its envelope id."""
        order = await conn.fetchrow(
            "SELECT o.id, o.customer_id, o.items, o.total_cents, o.currency, o.reason, s.card"
            " FROM orders o JOIN sagas s ON s.order_id = o.id WHERE o.id = $1",
            order_id,
        )
        if order is None:
            raise LookupError(f"order {order_id} vanished inside its own transaction")
        if command is CommandType.CHARGE and order["card"] is None:
            raise CardGone(f"order {order_id} holds no card to charge")
        msg_id = command_id(order_id, command, send)
        envelope = {
            "type": command.value,
            "id": msg_id,
            "saga_id": str(order_id),
            "data": command_data(command, order, self.schema),
        }
        await conn.execute(
            "INSERT INTO outbox (subject, msg_id, payload, traceparent, schema)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (msg_id) DO NOTHING",
            command.subject,
            msg_id,
            envelope,
            traceparent,
            self.schema,
        )
        return msg_id
