"""The reply outbox: rows written in the command's transaction, published after commit.

The kit's `OutboxRelay` publishes them; a reply's envelope id is deterministic
(`<command id>:reply`), so a row published twice is a no-op for JetStream's duplicate
window and the orchestrator's inbox.
"""

from __future__ import annotations

from yardarm_kit.messaging import Envelope
from yardarm_kit.postgres import Connection


async def enqueue(
    conn: Connection, subject: str, envelope: Envelope, traceparent: str | None
) -> None:
    """Add a reply to the outbox of the open transaction (once per envelope id)."""
    await conn.execute(
        "INSERT INTO outbox (subject, msg_id, payload, traceparent) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (msg_id) DO NOTHING",
        subject,
        envelope.id,
        envelope.model_dump(mode="json"),
        traceparent,
    )
