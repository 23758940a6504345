"""Faults for the saga invariant test: crashes, duplicate messages and poison messages.

- `ProcessKiller` SIGKILLs a random orders or fulfillment replica through the stack's
  chaos controller (so the kill is logged and counted, and the supervisor restarts it),
  noting how many sagas were mid-flight at that moment.
- `Duplicator` watches `cmd.>` and `evt.>` with core NATS and republishes a share of
  what it sees with a NEW `Nats-Msg-Id` but the same bytes and headers: JetStream's
  duplicate window cannot catch these, so only the consumers' inboxes can.
- `poison_messages` are messages no consumer version in the stack can ever process; they
  must end in the DLQ stream, each exactly once, and change nothing else.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from yardarm.chaos.client import ChaosClientError, send_fault
from yardarm.local import control

SCHEMA_HEADER = "yardarm-schema"
MSG_ID_HEADER = "Nats-Msg-Id"
DUPLICATE_ID_PREFIX = "dup:"
POISON_ID_PREFIX = "poison:"


@dataclass(frozen=True)
class Kill:
    """One SIGKILL: when (seconds since the faults started), whom, and the sagas in flight."""

    at_s: float
    target: str
    in_flight: int


class ProcessKiller:
    """Kills one replica every `interval_s` (jittered) while its sibling is ready.

    Sparing the last ready replica of a service keeps orders flowing; an instance the
    supervisor is still restarting is never a target (its restart backoff grows with
    every crash, and the controller would refuse it).
    """

    def __init__(
        self,
        home: Path,
        targets: Sequence[str],
        *,
        in_flight: Callable[[], Awaitable[int]],
        interval_s: float,
        min_kills: int,
        rng: random.Random,
    ) -> None:
        self._home = home
        self._min_kills = min_kills
        # Set once `min_kills` kills have landed.
        self.enough = asyncio.Event()
        self._targets = list(targets)
        self._in_flight = in_flight
        self._interval_s = interval_s
        self._rng = rng
        self.kills: list[Kill] = []
        self.refused: list[str] = []

    def _eligible(self) -> list[str]:
        states = {s.name: s.state for s in control.read_status(self._home)}
        eligible = []
        for target in self._targets:
            service = target.rsplit("-", 1)[0]
            siblings = [t for t in self._targets if t.rsplit("-", 1)[0] == service]
            if all(states.get(t) == "ready" for t in siblings):
                eligible.append(target)
        return eligible

    async def run(self, stop: asyncio.Event) -> None:
        """Kill until `stop` is set."""
        started = time.monotonic()
        while not stop.is_set():
            pause = self._interval_s * self._rng.uniform(0.7, 1.3)
            try:
                await asyncio.wait_for(stop.wait(), timeout=pause)
                return
            except TimeoutError:
                pass
            eligible = await asyncio.to_thread(self._eligible)
            if not eligible:
                continue
            target = self._rng.choice(eligible)
            in_flight = await self._in_flight()
            try:
                await asyncio.to_thread(send_fault, self._home, "kill", target)
            except ChaosClientError as exc:  # restarting at this very moment: next time
                self.refused.append(f"{target}: {exc.message}")
                continue
            self.kills.append(Kill(round(time.monotonic() - started, 1), target, in_flight))
            if len(self.kills) >= self._min_kills:
                self.enough.set()


class Duplicator:
    """Republishes about `share` of the commands and events it observes.

    `stored` holds the envelope ids whose copy JetStream stored (its PubAck was not a
    duplicate): each of them must appear at least twice when the streams are read back.
    """

    def __init__(self, nc: NATS, js: JetStreamContext, share: float, rng: random.Random) -> None:
        self.nc = nc
        self.js = js
        self.share = share
        self.rng = rng
        self.observed = 0
        self.stored: list[str] = []
        self.failed = 0
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for subject in ("cmd.>", "evt.>"):
            self._subs.append(await self.nc.subscribe(subject, cb=self._seen))

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=15)

    async def _seen(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        msg_id = headers.get(MSG_ID_HEADER, "")
        if msg_id.startswith((DUPLICATE_ID_PREFIX, POISON_ID_PREFIX)):
            return  # our own copies, and poison, which must reach the DLQ exactly once
        try:
            envelope_id = str(json.loads(msg.data)["id"])
        except (ValueError, KeyError, TypeError):
            return
        self.observed += 1
        if self.rng.random() >= self.share:
            return
        headers[MSG_ID_HEADER] = f"{DUPLICATE_ID_PREFIX}{uuid.uuid4().hex}"
        task = asyncio.create_task(self._republish(msg.subject, msg.data, headers, envelope_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _republish(
        self, subject: str, data: bytes, headers: dict[str, str], envelope_id: str
    ) -> None:
        try:
            ack = await self.js.publish(subject, data, headers=headers, timeout=5)
        except Exception:  # the server is busy or restarting: this copy is simply not sent
            self.failed += 1
            return
        if not ack.duplicate:
            self.stored.append(envelope_id)


@dataclass(frozen=True)
class Poison:
    """A message that cannot be processed by any consumer version running."""

    name: str
    subject: str
    body: bytes
    msg_id: str
    schema: int | None
    saga_id: str | None
    # Words the dead letter's reason must contain, where the contract fixes them.
    reason_says: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        headers = {MSG_ID_HEADER: self.msg_id}
        if self.schema is not None:
            headers[SCHEMA_HEADER] = str(self.schema)
        return headers


def _envelope(kind: str, msg_id: str, saga_id: str, data: dict[str, object]) -> bytes:
    return json.dumps({"type": kind, "id": msg_id, "saga_id": saga_id, "data": data}).encode()


def poison_messages(run: str) -> list[Poison]:
    """Four poisons, each on a real consumer's subject, for sagas no order owns.

    The schema-3 charge is well formed for both shapes a consumer knows (v1 and v2
    fields), so only its schema header makes it unprocessable: a consumer that ignored
    the header would charge it, and the ledger would show it.
    """
    saga_nocard, saga_schema3 = str(uuid.uuid4()), str(uuid.uuid4())
    amount = {"cents": 1999, "currency": "USD"}
    teleport_id = f"{POISON_ID_PREFIX}{run}:teleport"
    nocard_id = f"{POISON_ID_PREFIX}{run}:charge-without-card"
    schema3_id = f"{POISON_ID_PREFIX}{run}:schema-3"
    notjson_id = f"{POISON_ID_PREFIX}{run}:not-json"
    teleport = _envelope("payments.teleport", teleport_id, str(uuid.uuid4()), {"to": "mars"})
    nocard = _envelope(
        "payments.charge", nocard_id, saga_nocard, {"order_id": saga_nocard, "amount": amount}
    )
    both_shapes = {"amount": amount, "amount_cents": 1999, "card": "4242424242424242"}
    schema3 = _envelope(
        "payments.charge", schema3_id, saga_schema3, {"order_id": saga_schema3, **both_shapes}
    )
    return [
        Poison("unknown command type", "cmd.payments.teleport", teleport, teleport_id, 2, None),
        Poison("charge without a card", "cmd.payments.charge", nocard, nocard_id, 2, saga_nocard),
        Poison(
            "schema 3 command",
            "cmd.payments.charge",
            schema3,
            schema3_id,
            3,
            saga_schema3,
            reason_says="unsupported schema 3",
        ),
        Poison(
            "body that is not JSON",
            "cmd.shipping.schedule",
            b"\x00this is not JSON {",
            notjson_id,
            None,
            None,
        ),
    ]


async def inject(js: JetStreamContext, poisons: Sequence[Poison]) -> None:
    """Publish each poison once (its PubAck awaited, so it is in the COMMANDS stream)."""
    for poison in poisons:
        ack = await js.publish(poison.subject, poison.body, headers=poison.headers, timeout=10)
        assert ack.stream == "COMMANDS", (poison.name, ack)
