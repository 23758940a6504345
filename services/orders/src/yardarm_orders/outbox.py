"""What orders adds to the kit's outbox relay: a charge command's card is forgotten.

Once a charge command is published, the card number it carried is deleted from its row
(in the transaction that marks it published): the payment provider has it, we no longer
need it.
"""

from __future__ import annotations

from yardarm_kit.postgres import Connection


async def forget_cards(conn: Connection, ids: list[int]) -> None:
    """Delete `data.card` from the payloads of the outbox rows just published."""
    await conn.execute(
        "UPDATE outbox SET payload = payload #- '{data,card}' WHERE id = ANY($1::bigint[])", ids
    )
