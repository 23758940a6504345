"""Dead letters: a message no delivery could apply, kept whole on `dlq.<subject>`.

The body is the original bytes and the headers the original ones (traceparent, schema,
...), so a replay (`yardarm dlq replay`) sends the very message again; `yardarm-dlq-*`
headers say where it came from and why it failed. The DLQ message's own Nats-Msg-Id is
`dlq:<stream>:<stream sequence>`, so two replicas (or the consumer and the advisory
watcher) dead-lettering the same message store it once.

Besides the consumer's own verdict on a last delivery, `MaxDeliveriesWatcher` listens to
JetStream's MAX_DELIVERIES advisory: a message whose every delivery ended without a
verdict (its process died, or hung past the ack wait) is dead-lettered from the stream
by its sequence instead of being silently dropped. The server sends that advisory when
the next pull request finds the message out of deliveries, so some replica of the
consumer must be running.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

DLQ_STREAM = "DLQ"
DLQ_SUBJECT_PREFIX = "dlq."
MSG_ID = "Nats-Msg-Id"
REASON = "yardarm-dlq-reason"
STREAM = "yardarm-dlq-stream"
SUBJECT = "yardarm-dlq-subject"
CONSUMER = "yardarm-dlq-consumer"
STREAM_SEQ = "yardarm-dlq-stream-seq"
DELIVERIES = "yardarm-dlq-deliveries"
AT = "yardarm-dlq-at"
ORIGINAL_MSG_ID = "yardarm-dlq-msg-id"
REPLAY_OF = "yardarm-replay-of"
DLQ_HEADER_PREFIX = "yardarm-dlq-"
MAX_REASON_CHARS = 1000
NO_VERDICT = "max deliveries reached without a verdict (ack wait expired)"
ADVISORY_PREFIX = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


def dead_letter_subject(subject: str) -> str:
    return f"{DLQ_SUBJECT_PREFIX}{subject}"


def dead_letter_msg_id(stream: str, stream_seq: int) -> str:
    return f"dlq:{stream}:{stream_seq}"


def rfc3339(moment: datetime) -> str:
    """UTC, millisecond precision, `Z` suffix."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def dead_letter_headers(
    original: Mapping[str, str] | None,
    *,
    reason: str,
    stream: str,
    subject: str,
    consumer: str,
    stream_seq: int,
    deliveries: int,
    at: datetime,
) -> dict[str, str]:
    """The original headers (but Nats-Msg-Id) plus the dead-letter contract."""
    headers = {key: value for key, value in (original or {}).items() if key != MSG_ID}
    headers.update(
        {
            MSG_ID: dead_letter_msg_id(stream, stream_seq),
            REASON: _one_line(reason, MAX_REASON_CHARS) or "unknown",
            STREAM: stream,
            SUBJECT: subject,
            CONSUMER: consumer,
            STREAM_SEQ: str(stream_seq),
            DELIVERIES: str(deliveries),
            AT: rfc3339(at),
        }
    )
    original_id = (original or {}).get(MSG_ID)
    if original_id:
        headers[ORIGINAL_MSG_ID] = original_id
    return headers


async def publish_dead_letter(
    js: JetStreamContext,
    *,
    subject: str,
    body: bytes,
    headers: Mapping[str, str] | None,
    reason: str,
    stream: str,
    consumer: str,
    stream_seq: int,
    deliveries: int,
) -> bool:
    """Store the message on `dlq.<subject>` and wait for the PubAck.

    Returns False when the DLQ already held it (deduplicated); raises when it could not
    be stored, so the caller leaves the original unacknowledged.
    """
    wanted = dead_letter_headers(
        headers,
        reason=reason,
        stream=stream,
        subject=subject,
        consumer=consumer,
        stream_seq=stream_seq,
        deliveries=deliveries,
        at=datetime.now(UTC),
    )
    ack = await js.publish(dead_letter_subject(subject), body, headers=wanted)
    return not ack.duplicate


class MaxDeliveriesWatcher:
    """Dead-letters the messages JetStream gave up on without a verdict from us."""

    def __init__(
        self,
        js: JetStreamContext,
        nc: Any,
        *,
        stream: str,
        durable: str,
        log: logging.Logger,
        on_dead_letter: Callable[[str], None] | None = None,
        reason_of: Callable[[int], str] | None = None,
    ) -> None:
        self._js = js
        self._nc = nc
        self.stream = stream
        self.durable = durable
        self._log = log
        self._on_dead_letter = on_dead_letter
        self._reason_of = reason_of
        self._sub: Any = None

    @property
    def subject(self) -> str:
        return f"{ADVISORY_PREFIX}.{self.stream}.{self.durable}"

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self.subject, cb=self._on_advisory)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection already closed
                self._log.debug("advisory subscription not removed cleanly: %r", exc)

    async def _on_advisory(self, msg: Any) -> None:
        try:
            advisory = json.loads(msg.data)
            seq = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError) as exc:
            self._log.warning("unreadable max-deliveries advisory %r: %r", msg.data[:200], exc)
            return
        await self.dead_letter(seq, deliveries)

    async def dead_letter(self, seq: int, deliveries: int) -> None:
        """Copy message `seq` of the stream to the DLQ (logged, never raised)."""
        try:
            raw = await self._js.get_msg(self.stream, seq)
        except NotFoundError:
            self._log.error(
                "message %d of %s ran out of deliveries on %s but left the stream before "
                "it could be dead-lettered", seq, self.stream, self.durable,
            )  # fmt: skip
            return
        except Exception as exc:
            self._log.error(
                "message %d of %s ran out of deliveries on %s and could not be read to "
                "dead-letter it: %r", seq, self.stream, self.durable, exc,
            )  # fmt: skip
            return
        reason = (self._reason_of(seq) if self._reason_of else None) or NO_VERDICT
        subject = str(raw.subject)
        try:
            stored = await publish_dead_letter(
                self._js,
                subject=subject,
                body=raw.data or b"",
                headers=raw.headers,
                reason=reason,
                stream=self.stream,
                consumer=self.durable,
                stream_seq=seq,
                deliveries=deliveries,
            )
        except Exception as exc:
            self._log.error(
                "message %d of %s (%s) ran out of deliveries on %s and could not be "
                "dead-lettered: %r; it stays in the stream", seq, self.stream, subject,
                self.durable, exc,
            )  # fmt: skip
            return
        self._log.error(
            "dead-lettered message %d of %s (%s) after %d deliveries on %s: %s",
            seq, self.stream, subject, deliveries, self.durable, reason,
        )  # fmt: skip
        if stored and self._on_dead_letter is not None:
            self._on_dead_letter(subject)
