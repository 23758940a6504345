"""Verdicts on a batch's deliveries: ack, nak on the backoff schedule, or dead-letter.

A failure is nak'ed with the delay `backoff_s` gives its delivery count (its last step
for every later one); the last delivery (`max_deliver`) is dead-lettered instead and
then acked, so JetStream stops redelivering it. When the dead letter cannot be stored
the message is nak'ed once more: out of deliveries, the MAX_DELIVERIES advisory brings
it back to `dead_letters.MaxDeliveriesWatcher`, which is told the last failure seen
here. Each verdict ends the delivery's span and is counted once per batch.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.errors import MsgAlreadyAckdError
from opentelemetry.trace import Status, StatusCode

from yardarm_kit.dead_letters import NO_VERDICT, publish_dead_letter

if TYPE_CHECKING:
    from yardarm_kit.deliveries import BatchSettings, Received

REMEMBERED_FAILURES = 1024


class Verdicts:
    """Settles the messages of one consumer's batches."""

    def __init__(self, settings: BatchSettings) -> None:
        self.s = settings
        self._failures: OrderedDict[int, str] = OrderedDict()

    def no_verdict_reason(self, seq: int) -> str:
        """Why message `seq` ran out of deliveries, for the advisory's dead letter."""
        last = self._failures.pop(seq, None)
        return f"{NO_VERDICT}; last failure: {last}" if last else NO_VERDICT

    def count_dead_letter(self, subject: str) -> None:
        self.s.metrics.dead_letters.inc(consumer=self.s.durable, subject=subject)

    async def settle(self, items: list[Received]) -> None:
        """A verdict for every message of the batch, then the batch's counts."""
        outcomes: Counter[tuple[str, str]] = Counter()
        redelivered = 0
        for item in items:
            if item.num_delivered > 1:
                redelivered += 1
            if item.failure is None:
                outcome = "duplicate" if item.duplicate else "processed"
                await self._ack(item.msg)
            elif item.num_delivered >= self.s.max_deliver:
                outcome = "dead_lettered" if await self._dead_letter(item) else "failed"
            else:
                outcome = "failed"
                await self._nak(item)
            item.settled = True
            outcomes[(item.subject, outcome)] += 1
            self._end_span(item, outcome)
        metrics, durable = self.s.metrics, self.s.durable
        for (subject, outcome), count in outcomes.items():
            metrics.messages.inc(count, consumer=durable, subject=subject, outcome=outcome)
        if redelivered:
            metrics.redeliveries.inc(redelivered, consumer=durable)
        metrics.lag.set(float(items[-1].num_pending), consumer=durable)

    def _end_span(self, item: Received, outcome: str, why: str | None = None) -> None:
        span = item.span
        span.set_attribute("yardarm.consumer.outcome", outcome)
        if why or item.failure is not None:
            span.set_status(Status(StatusCode.ERROR, (why or item.failure or "")[:200]))
        span.end()

    async def _ack(self, msg: Msg) -> None:
        try:
            await msg.ack()
        except MsgAlreadyAckdError:
            pass
        except Exception as exc:  # lost connection: redelivered after ack_wait, a duplicate
            self.s.log.warning("could not ack %s: %r", msg.subject, exc)

    async def _nak(self, item: Received, *, at_once: bool = False) -> None:
        """Redeliver after the delay the schedule gives this delivery (or at once)."""
        delay = 0.0
        if not at_once:
            backoff = self.s.backoff_s
            delay = backoff[min(item.num_delivered - 1, len(backoff) - 1)]
            self._remember_failure(item)
            self.s.log.warning(
                "delivery %d of %s (seq %d) on %s failed: %s; redelivering in %.1fs",
                item.num_delivered, item.subject, item.stream_seq, self.s.durable,
                item.failure, delay,
            )  # fmt: skip
        try:
            await item.msg.nak(delay=delay or None)
        except MsgAlreadyAckdError:
            pass
        except Exception as exc:
            self.s.log.warning("could not nak %s: %r", item.subject, exc)

    async def _dead_letter(self, item: Received) -> bool:
        """Store the message on the DLQ, then ack it; on failure leave it to the advisory."""
        reason = item.failure or "unknown"
        try:
            stored = await publish_dead_letter(
                self.s.js, subject=item.subject, body=item.msg.data, headers=item.headers,
                reason=reason, stream=self.s.stream, consumer=self.s.durable,
                stream_seq=item.stream_seq, deliveries=item.num_delivered,
            )  # fmt: skip
        except Exception as exc:
            self.s.log.error("could not dead-letter %s (seq %d): %r; it returns after the "
                             "backoff", item.subject, item.stream_seq, exc)  # fmt: skip
            await self._nak(item)
            return False
        self.s.log.error(
            "dead-lettered %s (seq %d) after %d deliveries on %s: %s",
            item.subject, item.stream_seq, item.num_delivered, self.s.durable, reason,
        )  # fmt: skip
        if stored:
            self.count_dead_letter(item.subject)
        await self._ack(item.msg)
        return True

    async def give_back(self, items: list[Received], why: str) -> None:
        """Nak what has no verdict yet, at once: another replica may take it now."""
        for item in items:
            if not item.settled:
                item.settled = True
                await self._nak(item, at_once=True)
                self._end_span(item, "abandoned", why)

    def _remember_failure(self, item: Received) -> None:
        failures = self._failures
        failures[item.stream_seq] = item.failure or ""
        failures.move_to_end(item.stream_seq)
        while len(failures) > REMEMBERED_FAILURES:
            failures.popitem(last=False)
