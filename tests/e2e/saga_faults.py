"""Faults for the saga invariant test: crashes, duplicate messages and poison messages.

- `ProcessKiller` kills a random orders or fulfillment replica through the stack's
  target (locally: SIGKILL from the chaos controller, so the kill is logged and counted,
  and the supervisor restarts it), noting how many sagas were mid-flight at that moment.
- `pause_together` pauses every replica of a service at once for a while (locally
  SIGSTOP: the supervisor does not restart a paused process), so commands to it get no
  reply and the saga's step timeouts fire; the killer leaves those replicas alone
  meanwhile, and while they catch up on what piled up.
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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from tests.harness.adapter import FaultRefused, Instance, StackTarget

SCHEMA_HEADER = "yardarm-schema"
MSG_ID_HEADER = "Nats-Msg-Id"
DUPLICATE_ID_PREFIX = "dup:"
POISON_ID_PREFIX = "poison:"


def _service(instance: str) -> str:
    return instance.rsplit("-", 1)[0]


@dataclass(frozen=True)
class Kill:
    """One kill: when (seconds since the faults started), whom, the sagas in flight,
    and the victim as the target listed it just before (its process: `pid`)."""

    at_s: float
    target: str
    in_flight: int
    victim: Instance | None

    @property
    def pid(self) -> int | None:
        return None if self.victim is None else self.victim.pid


class ProcessKiller:
    """Kills one replica every `interval_s` (jittered) while its sibling is ready.

    Sparing the last ready replica of a service keeps orders flowing; an instance still
    being restarted is never chosen (its restart backoff grows with every crash, and the
    stack would refuse the kill). Nor is a held one (`hold`): a kill would end its pause
    early, and its restart would not be paused.
    """

    def __init__(
        self,
        stack: StackTarget,
        targets: Sequence[str],
        *,
        in_flight: Callable[[], Awaitable[int]],
        interval_s: float,
        min_kills: int,
        rng: random.Random,
    ) -> None:
        self._stack = stack
        self._min_kills = min_kills
        # Set once `min_kills` kills have landed, at least one in every service.
        self.enough = asyncio.Event()
        self._targets = list(targets)
        self._in_flight = in_flight
        self._interval_s = interval_s
        self._rng = rng
        self.kills: list[Kill] = []
        self.refused: list[str] = []
        self._held: set[str] = set()
        # Held while a target is chosen and killed, so `hold` never races a kill.
        self._choosing = asyncio.Lock()

    async def hold(self, targets: Iterable[str]) -> None:
        """Spare `targets` (and their siblings) from now on, once any kill under way landed."""
        async with self._choosing:
            self._held.update(targets)

    def release(self, targets: Iterable[str]) -> None:
        self._held.difference_update(targets)

    def _eligible(self) -> list[str]:
        states = {s.name: s.state for s in self._stack.instances()}
        ready = {t for t in self._targets if states.get(t) == "ready" and t not in self._held}
        eligible = []
        for target in self._targets:
            siblings = [t for t in self._targets if _service(t) == _service(target)]
            if all(t in ready for t in siblings):
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
            async with self._choosing:
                await self._kill_one(started)

    async def _kill_one(self, started: float) -> None:
        eligible = await asyncio.to_thread(self._eligible)
        if not eligible:
            return
        target = self._rng.choice(eligible)
        in_flight = await self._in_flight()
        victim = await asyncio.to_thread(self._stack.instance, target)
        try:
            await asyncio.to_thread(self._stack.kill, target)
        except FaultRefused as exc:  # restarting at this very moment: next time
            self.refused.append(f"{target}: {exc}")
            return
        self.kills.append(Kill(round(time.monotonic() - started, 1), target, in_flight, victim))
        services = {_service(t) for t in self._targets}
        if (
            len(self.kills) >= self._min_kills
            and {_service(k.target) for k in self.kills} >= services
        ):
            self.enough.set()


@dataclass(frozen=True)
class Pause:
    """One pause of every replica of a service, and what it caught mid-step."""

    targets: tuple[str, ...]
    at_s: float  # seconds since `zero` when the last replica stopped
    waited_s: float  # for the replicas to be ready and sagas to wait on them
    held_s: float  # how long all of them stood still together
    # From the resume until the service had taken every message waiting for it (None:
    # not within the bound); the killer spared it until then.
    caught_up_s: float | None
    # What the target's fault injector listed as paused while they were held, and which
    # of them the target showed stopped then (locally: state T in /proc).
    listed: tuple[str, ...]
    stopped: tuple[str, ...]
    # Sagas waiting on the paused service, order id -> saga state, read `read_s` after
    # the last replica stopped.
    in_step: Mapping[str, str]
    read_s: float


async def _send_until_accepted(fault: Callable[[str], None], target: str, bound_s: float) -> None:
    """Apply a process fault, again while the target refuses it, at most `bound_s`."""
    until = time.monotonic() + bound_s
    while True:
        try:
            await asyncio.to_thread(fault, target)
            return
        except FaultRefused:
            if time.monotonic() > until:
                raise
        await asyncio.sleep(0.5)


async def _until(done: Callable[[], Awaitable[bool]], bound_s: float) -> float | None:
    """Seconds until `done()` held, polling; None if it did not within `bound_s`."""
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        if await done():
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    return None


async def pause_together(
    stack: StackTarget,
    targets: Sequence[str],
    killer: ProcessKiller,
    *,
    hold_s: float,
    ready_bound_s: float,
    in_step: Callable[[], Awaitable[Mapping[str, str]]],
    min_in_step: int,
    caught_up: Callable[[], Awaitable[bool]],
    catch_up_bound_s: float,
    zero: float,
) -> Pause:
    """Pause every one of `targets` at once, hold them `hold_s`, resume them.

    The pause starts once all are ready and `in_step` (sagas waiting on them) has
    `min_in_step` entries, or `ready_bound_s` passed. Then `in_step` is read until it has
    `min_in_step` entries again (a quarter of the hold at most): the sagas caught. While
    the service answers, a saga stays in step only briefly; now nothing answers, so
    those reads only grow, but for replies already on their way.

    The killer spares the targets from before the first pause until they `caught_up`
    after the resumes (or `catch_up_bound_s` passed): a kill then would leave one
    replica to work off the pause's backlog while every new step waits behind it and
    times out in turn.
    """

    async def ready() -> bool:
        states = {s.name: s.state for s in await asyncio.to_thread(stack.instances)}
        return all(states.get(t) == "ready" for t in targets)

    async def waiting() -> bool:
        return len(await in_step()) >= min_in_step

    await killer.hold(targets)
    held_at = time.monotonic()
    try:
        await _until(ready, ready_bound_s)
        await _until(waiting, ready_bound_s)
        paused: list[str] = []
        try:
            for target in targets:
                await _send_until_accepted(stack.pause, target, ready_bound_s)
                paused.append(target)
            stopped_at = time.monotonic()
            caught = dict(await in_step())
            while len(caught) < min_in_step and time.monotonic() - stopped_at < hold_s / 4:
                await asyncio.sleep(0.2)
                caught = dict(await in_step())
            read_s = time.monotonic() - stopped_at
            listed = tuple(sorted(await asyncio.to_thread(stack.paused)))
            seen = {t: await asyncio.to_thread(stack.instance, t) for t in targets}
            stopped = tuple(
                sorted(
                    t
                    for t, inst in seen.items()
                    if inst is not None and stack.process_state(inst) == "stopped"
                )
            )
            await asyncio.sleep(max(0.0, hold_s - (time.monotonic() - stopped_at)))
        finally:
            resumed_at = time.monotonic()
            for target in paused:
                await _send_until_accepted(stack.resume, target, ready_bound_s)
        recovered = await _until(caught_up, catch_up_bound_s)
    finally:
        killer.release(targets)
    return Pause(
        targets=tuple(targets),
        at_s=round(stopped_at - zero, 1),
        waited_s=round(stopped_at - held_at, 1),
        held_s=round(resumed_at - stopped_at, 1),
        caught_up_s=None if recovered is None else round(recovered, 1),
        listed=listed,
        stopped=stopped,
        in_step=caught,
        read_s=round(read_s, 1),
    )


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
