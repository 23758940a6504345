"""The reply outbox: rows written in the command's transaction, published after commit.

The kit's `OutboxRelay` publishes them with the row's schema version as the
`yardarm-schema` header; a reply's envelope id is deterministic (`<command id>:reply`),
so a row published twice is a no-op for JetStream's duplicate window and the
orchestrator's inbox.
"""

from __future__ import annotations

from yardarm_kit.messaging import Envelope
from yardarm_kit.postgres import Connection

# Replies kept their shape when commands moved to schema 2.
REPLY_SCHEMA = 1


async def enqueue(
    conn: Connection,
    subject: str,
    envelope: Envelope,
    traceparent: str | None,
    *,
    schema: int = REPLY_SCHEMA,
) -> None:
    """Add a reply to the outbox of the open transaction (once per envelope id)."""
    await conn.execute(
        "INSERT INTO outbox (subject, msg_id, payload, traceparent, schema)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (msg_id) DO NOTHING",
        subject,
        envelope.id,
        envelope.model_dump(mode="json"),
        traceparent,
        schema,
    )
