"""The test plays the payment and shipping participants over real JetStream."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from yardarm_kit.messaging import Envelope, connect, ensure_streams, publish


class Participant:
    """Reads commands from the COMMANDS stream (new ones only) and publishes replies."""

    def __init__(self, nats_url: str) -> None:
        self._url = nats_url
        self._durable = f"test-participant-{uuid.uuid4().hex[:8]}"
        self._seen: list[tuple[Envelope, Msg]] = []
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None

    async def __aenter__(self) -> Participant:
        self.nc, self.js = await connect(self._url, self._durable)
        await ensure_streams(self.js)
        self._sub = await self.js.pull_subscribe(
            "cmd.>",
            durable=self._durable,
            stream="COMMANDS",
            config=ConsumerConfig(
                durable_name=self._durable,
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.EXPLICIT,
            ),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.js is not None and self.nc is not None
        await self.js.delete_consumer("COMMANDS", self._durable)
        await self.nc.close()

    async def _pull(self, timeout: float) -> None:
        assert self._sub is not None
        try:
            msgs = await self._sub.fetch(32, timeout=timeout)
        except (NatsTimeoutError, TimeoutError):
            return
        for msg in msgs:
            self._seen.append((Envelope.model_validate_json(msg.data), msg))
            await msg.ack()

    def received(self, order_id: str, subject: str | None = None) -> list[tuple[Envelope, Msg]]:
        return [
            (env, msg)
            for env, msg in self._seen
            if env.saga_id == order_id and (subject is None or msg.subject == subject)
        ]

    async def expect(
        self, order_id: str, subject: str, timeout: float = 30
    ) -> tuple[Envelope, Msg]:
        """The first command on `subject` for this order (waits for it)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.received(order_id, subject)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                got = [m.subject for _, m in self.received(order_id)]
                raise AssertionError(f"no {subject} for {order_id} in {timeout}s (got {got})")
            await self._pull(0.5)

    async def settle(self, seconds: float) -> None:
        """Keep collecting for a while, to prove something did NOT arrive."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self._pull(0.3)

    async def reply(
        self, command: Envelope, event: str, *, keep_trace: bool = True, **data: Any
    ) -> Envelope:
        """Publish the participant's reply per the message contract; like a real participant
        it continues the command's trace unless `keep_trace` is False."""
        assert self.js is not None
        traceparent = None
        if keep_trace:
            msg = next(m for env, m in self._seen if env.id == command.id)
            traceparent = (msg.headers or {}).get("traceparent")
        envelope = Envelope(
            type=event,
            id=f"{command.id}:reply",
            saga_id=command.saga_id,
            data={"order_id": command.saga_id, **data},
        )
        await publish(self.js, f"evt.{event}", envelope, traceparent=traceparent)
        return envelope

    async def redeliver(self, envelope: Envelope) -> None:
        """The same envelope again under another Nats-Msg-Id: JetStream will not dedupe it."""
        assert self.js is not None
        await self.js.publish(
            f"evt.{envelope.type}",
            envelope.model_dump_json().encode(),
            headers={"Nats-Msg-Id": f"{envelope.id}:again:{uuid.uuid4().hex}"},
        )


async def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)
