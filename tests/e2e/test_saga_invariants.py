"""End to end: the order saga keeps its invariants through crashes, duplicates and poison.

A stack with two orders and two fulfillment replicas, real Postgres, NATS and the Raft
datastore, short redelivery settings and injected consumer failures, reached through
its target (`tests.harness`; locally a stack from `yardarm up`). Orders with a mix of
outcomes (good card, declined card, unserviceable address, more than the stock) are
placed through the gateway while

- replicas are killed through the target (locally SIGKILL from the chaos controller)
  and restarted by it (the supervisor),
- both fulfillment replicas are paused together for twice the charge and shipping step
  timeout, so sagas caught charging or shipping re-send their commands, then time out
  and compensate, while the participants may still apply the late commands on resume,
- a tenth of the commands and events are republished under new `Nats-Msg-Id`s,
- poison messages (unknown type, missing card, schema 3, not JSON) are injected.

Then faults stop, every saga must become terminal within a bound stated in the
configured intervals, and the read-back state is judged against the test's own plan
(which orders it placed, with which items, card and customer) and the seeded prices,
never against what the orders service says of itself: every planned order stored
exactly once and nothing else; each ended as its plan allows, and a healthy share of
the confirmable ones confirmed; stock conserved per SKU by the planned quantities; at
most one charge per order, of the planned amount, none kept for a cancelled order (a
timed-out charge applied late was refunded) and a shipment for every confirmed one; and
exactly the poison in the DLQ. The scenario runs once (module fixture); each test
judges one invariant, so a failure names the rule that broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import nats
import pytest
import yaml
from nats.js import JetStreamContext

from tests.conftest import require_servers
from tests.e2e import saga_ledger as ledger
from tests.e2e.saga_faults import (
    Duplicator,
    Kill,
    Pause,
    Poison,
    ProcessKiller,
    inject,
    pause_together,
    poison_messages,
)
from tests.e2e.saga_workload import (
    Placement,
    PlannedOrder,
    Sku,
    available,
    catalog,
    confirmable,
    contended,
    place_all,
    plan_orders,
    seed,
)
from tests.harness.adapter import Instance, Recovery, StackTarget
from tests.harness.local import LocalStackTarget, Stack, pick_base_port, stop_stack
from yardarm.model import default_flags

SCALE = float(os.environ.get("YARDARM_TEST_SCALE", "1"))
ORDERS = max(20, int(200 * SCALE))
CLIENTS = 16
SEED = int(os.environ.get("YARDARM_TEST_SEED", str(random.randrange(2**32))))

# What the services run with (passed through the supervisor's environment).
ACK_WAIT_S = 2.0
MAX_DELIVER = 8
BACKOFF_S = (0.5, 1.0, 2.0)
LEASE_S = 3.0
# Short enough that crashes cause command re-sends; the pause below lasts twice the timeout.
RESEND_AFTER_S = 2.0
STEP_TIMEOUT_S = 6.0
# A reply held by a killed orders replica comes back to the other one after this.
REPLY_ACK_WAIT_S = 2.0
CONSUMER_ERROR_RATE = 0.05
SERVICE_ENV = {
    "YARDARM_FULFILLMENT_ACK_WAIT_S": str(ACK_WAIT_S),
    "YARDARM_FULFILLMENT_MAX_DELIVER": str(MAX_DELIVER),
    "YARDARM_FULFILLMENT_BACKOFF_S": json.dumps(BACKOFF_S),
    "YARDARM_FULFILLMENT_SHUTDOWN_GRACE_S": "2",
    "YARDARM_ORDERS_LEASE_S": str(LEASE_S),
    "YARDARM_ORDERS_RETRY_MAX_S": "2",
    "YARDARM_ORDERS_RESEND_AFTER_S": str(RESEND_AFTER_S),
    "YARDARM_ORDERS_RESEND_MAX_S": str(2 * RESEND_AFTER_S),
    "YARDARM_ORDERS_CHARGE_TIMEOUT_S": str(STEP_TIMEOUT_S),
    "YARDARM_ORDERS_SHIPPING_TIMEOUT_S": str(STEP_TIMEOUT_S),
    "YARDARM_ORDERS_REPLY_ACK_WAIT_S": str(REPLY_ACK_WAIT_S),
}

# The durable consumers of the saga's messages: (stream, durable).
FULFILLMENT_DURABLES = (("COMMANDS", "payments"), ("COMMANDS", "shipping"))
DURABLES = (*FULFILLMENT_DURABLES, ("EVENTS", "orders"))
KILL_TARGETS = ("orders-0", "orders-1", "fulfillment-0", "fulfillment-1")
KILL_INTERVAL_S = 3.0
MIN_KILLS = 4
DUPLICATE_SHARE = 0.10
# Every fulfillment replica stands still this long, once this share of the orders is placed.
PAUSED = ("fulfillment-0", "fulfillment-1")
PAUSE_S = 2 * STEP_TIMEOUT_S
PAUSE_AFTER_SHARE = 0.2
# Sagas charging or shipping at that moment (the pause waits for them, within a bound).
MIN_CAUGHT = 3
# Fulfillment works off what piled up in the pause (commands, re-sends, compensations)
# well within a few pauses' time; the killer spares it until then.
CATCH_UP_BOUND_S = 3 * PAUSE_S

# Bounds, in the configured intervals, each with a wide margin (a noisy 2-core box).
# A message that is never acked is redelivered MAX_DELIVER times, each after at most
# ack wait + the longest backoff, then dead-lettered.
DELIVERY_CYCLE_S = MAX_DELIVER * (ACK_WAIT_S + max(BACKOFF_S))


@dataclass(frozen=True)
class Bounds:
    """The bounds that also depend on how patient the target is with a crashed
    instance (`Recovery`: locally the supervisor's restart backoff and readiness timeout)."""

    settle_s: float
    dlq_s: float
    restart_s: float

    @classmethod
    def of(cls, recovery: Recovery) -> Bounds:
        return cls(
            # A saga waits at most for: a dead worker's lease, a step's timeout, a
            # command's redelivery cycle, a reply held by a killed orders replica, and the
            # target's longest restart backoff.
            settle_s=3 * (
                LEASE_S + STEP_TIMEOUT_S + DELIVERY_CYCLE_S + REPLY_ACK_WAIT_S
                + recovery.backoff_max_s
            ),
            # The pause holds back deliveries to fulfillment, poison included.
            dlq_s=3 * (DELIVERY_CYCLE_S + recovery.backoff_max_s) + PAUSE_S,
            # The target's own patience: its longest restart backoff, then its readiness
            # timeout.
            restart_s=recovery.backoff_max_s + recovery.ready_timeout_s,
        )  # fmt: skip


# A client follows its order this long at most before placing its next one.
FOLLOW_S = 2 * ACK_WAIT_S
# Each client places ORDERS / CLIENTS orders, each followed at most FOLLOW_S (through
# the pause too: orders answers while fulfillment stands still).
PLACE_BOUND_S = 60 + 3 * (ORDERS / CLIENTS) * (FOLLOW_S + 1) + PAUSE_S
FAULTS_BOUND_S = PLACE_BOUND_S + MIN_KILLS * KILL_INTERVAL_S * 5

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(int(900 * max(1.0, SCALE)))]


def _topology() -> dict[str, Any]:
    """What the stack runs, on any target: the replicas and the flags."""
    flags = default_flags()
    # Fails a fulfillment delivery after its writes (they roll back): redeliveries happen.
    flags["fault.consumer-error-rate"] = {
        "state": "ENABLED",
        # "high": fulfillment's demo release 0.3.0-errors pins it.
        "variants": {"on": CONSUMER_ERROR_RATE, "off": 0.0, "high": 0.5},
        "defaultVariant": "off",
        "targeting": {"if": [{"==": [{"var": "service"}, "fulfillment"]}, "on", "off"]},
    }
    return {
        "services": {"orders": {"replicas": 2}, "fulfillment": {"replicas": 2}},
        "flags": flags,
    }


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_servers()
    root = tmp_path_factory.mktemp("saga-invariants")
    base_port = pick_base_port(28000)
    config = root / "yardarm.yaml"
    config.write_text(yaml.safe_dump({"base_port": base_port, **_topology()}))
    running = Stack(home=root / "home", base_port=base_port)
    env = {**os.environ, **SERVICE_ENV, "YARDARM_HOME": str(running.home), "COLUMNS": "200"}
    try:
        started = subprocess.run(
            [sys.executable, "-m", "yardarm", "up", "--detach", "--config", str(config),
             "--no-prometheus"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert started.returncode == 0, f"yardarm up failed:\n{started.stdout}\n{started.stderr}"
        yield running
    finally:
        stop_stack(running)


@pytest.fixture(scope="module")
def stack(local_stack: Stack) -> StackTarget:
    """The checks' view of the stack (a later target builds its own adapter here)."""
    return LocalStackTarget(local_stack)


@dataclass
class Run:
    """Everything the scenario produced, for the tests to judge."""

    wall_s: float
    # The oracle: what the test seeded and placed, not what the services say of it.
    skus: list[Sku]
    planned: list[PlannedOrder]
    placement: Placement
    poisons: list[Poison]
    kills: list[Kill]
    kills_counted: int | None
    # Killed pids that still ran when the faults were over.
    survived_kill: list[str]
    refused_kills: list[str]
    pause: Pause
    pauses_counted: int | None
    observed: int
    duplicates_stored: list[str]
    stream_duplicates: dict[str, int]
    settle_s: float
    left_in_flight: int
    initial: dict[str, int]
    available: dict[str, int]
    orders: list[ledger.OrderRow]
    history: dict[str, list[tuple[str, str]]]
    payments: list[ledger.PaymentRow]
    shipments: dict[str, str]
    instances: dict[str, tuple[str, int]]
    dead: list[ledger.StoredMsg]
    backlog: dict[str, int]
    redeliveries: float | None
    failed_deliveries: float | None
    duplicates_recognised: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def prices(self) -> dict[str, int]:
        return {s.sku: s.price_cents for s in self.skus}

    def placed(self, kind: str) -> set[str]:
        """Order ids the placement got for the plan entries of one kind."""
        ids = self.placement.ids
        return {ids[p.key] for p in self.planned if p.kind == kind and p.key in ids}


async def _wait(
    what: str, done: Callable[[], Awaitable[bool]], bound_s: float, notes: list[str]
) -> float:
    """Poll `done()` every 0.5 s up to `bound_s`; seconds it took (bound_s if never)."""
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        if await done():
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    notes.append(f"{what}: not reached within {bound_s:.0f}s")
    return bound_s


def _brought_back(instance: Instance | None, kills: list[Kill]) -> bool:
    """Whether the target brought this instance back from every kill of it: ready, in a
    process other than those killed, restarted at least once per kill. Ready alone is not
    enough: just after a kill the target may still list the killed process as ready (the
    supervisor has not yet seen it exit)."""
    if instance is None or instance.state != "ready":
        return False
    mine = [kill for kill in kills if kill.target == instance.name]
    killed_pids = {kill.pid for kill in mine if kill.pid is not None}
    return instance.restarts >= len(mine) and (
        instance.pid is None or instance.pid not in killed_pids
    )


async def _pause_fulfillment(
    stack: StackTarget,
    bounds: Bounds,
    killer: ProcessKiller,
    progress: Placement,
    orders_db: asyncpg.Pool,
    js: JetStreamContext,
    notes: list[str],
) -> Pause:
    """Once orders flow and sagas wait on fulfillment, pause all of it past the step
    timeout.

    The killer spares fulfillment from the start (the caller holds it) until fulfillment
    caught up after the pause: a replica restarting after a kill can take many seconds
    to be ready again, and the pause must begin while orders flow.
    """
    zero = time.monotonic()

    async def flowing() -> bool:
        return len(progress.ids) >= PAUSE_AFTER_SHARE * ORDERS

    async def caught_up() -> bool:  # every command to fulfillment handled, for a moment
        return not any((await ledger.backlog(js, FULFILLMENT_DURABLES)).values())

    await _wait("orders flowing before the pause", flowing, PLACE_BOUND_S, notes)
    return await pause_together(
        stack, PAUSED, killer, hold_s=PAUSE_S, ready_bound_s=bounds.restart_s,
        in_step=lambda: ledger.read_in_step(orders_db), min_in_step=MIN_CAUGHT,
        caught_up=caught_up, catch_up_bound_s=CATCH_UP_BOUND_S, zero=zero,
    )  # fmt: skip


async def _scenario(stack: StackTarget) -> Run:
    began = time.monotonic()
    rng = random.Random(SEED)
    run_tag = uuid.UUID(int=rng.getrandbits(128)).hex[:6]
    bounds = Bounds.of(stack.recovery)
    datastore, token, verify = stack.datastore[0], stack.admin_token, stack.ssl or True
    skus = catalog(run_tag, ORDERS)
    initial = await seed(datastore, token, skus, verify=verify)
    planned = plan_orders(run_tag, ORDERS, skus, rng)
    poisons = poison_messages(run_tag)
    notes: list[str] = []

    orders_db = await asyncpg.create_pool(stack.postgres_dsn("orders"), min_size=1, max_size=3)
    ledger_db = await asyncpg.create_pool(stack.postgres_dsn("fulfillment"), min_size=1, max_size=2)
    nc = await nats.connect(stack.nats_url, max_reconnect_attempts=-1)
    js = nc.jetstream(timeout=10)
    try:
        duplicator = Duplicator(nc, js, DUPLICATE_SHARE, random.Random(rng.random()))
        await duplicator.start()
        killer = ProcessKiller(
            stack, KILL_TARGETS, in_flight=lambda: ledger.count_in_flight(orders_db),
            interval_s=KILL_INTERVAL_S, min_kills=MIN_KILLS, rng=random.Random(rng.random()),
        )  # fmt: skip
        stop = asyncio.Event()
        await killer.hold(PAUSED)  # until the pause is over: see _pause_fulfillment
        killing = asyncio.create_task(killer.run(stop))
        progress = Placement()
        placing = asyncio.create_task(
            place_all(
                stack.gateway, planned, clients=CLIENTS, follow_s=FOLLOW_S,
                deadline=time.monotonic() + PLACE_BOUND_S, result=progress, verify=verify,
            )
        )  # fmt: skip
        pausing = asyncio.create_task(
            _pause_fulfillment(stack, bounds, killer, progress, orders_db, js, notes)
        )
        await asyncio.sleep(1.0)
        await inject(js, poisons)
        injected_at = time.monotonic()
        placement = await placing
        pause = await pausing
        left = max(0.0, began + FAULTS_BOUND_S - time.monotonic())
        with contextlib.suppress(TimeoutError):  # too few kills: test_faults_... says so
            await asyncio.wait_for(killer.enough.wait(), timeout=left)
        stop.set()
        await killing
        await duplicator.stop()

        async def settled() -> bool:
            return await ledger.count_in_flight(orders_db) == 0

        settle_s = await _wait("every saga terminal", settled, bounds.settle_s, notes)

        async def restarted() -> bool:
            now = {inst.name: inst for inst in await asyncio.to_thread(stack.instances)}
            return all(_brought_back(now.get(target), killer.kills) for target in KILL_TARGETS)

        await _wait("every killed replica ready again", restarted, bounds.restart_s, notes)

        async def dead_lettered() -> bool:
            info = await js.stream_info("DLQ")
            return int(info.state.messages) >= len(poisons)

        dlq_left = max(0.0, bounds.dlq_s - (time.monotonic() - injected_at))
        await _wait("every poison dead-lettered", dead_lettered, dlq_left, notes)

        async def drained() -> bool:
            return not any((await ledger.backlog(js, DURABLES)).values())

        # Nothing left to deliver: no legitimate message can still be dead-lettered.
        await _wait("every consumer drained", drained, bounds.dlq_s, notes)
        streams = await ledger.read_stream(js, "COMMANDS") + await ledger.read_stream(js, "EVENTS")
        names = [s.sku for s in skus]
        counted = await asyncio.to_thread(stack.faults_counted)
        instances = [
            inst.url
            for inst in await asyncio.to_thread(stack.instances)
            if inst.service in ("orders", "fulfillment") and inst.url is not None
        ]
        redeliveries = await asyncio.to_thread(
            ledger.scrape_counter, instances, "yardarm_consumer_redeliveries_total", verify=verify
        )
        failed = await asyncio.to_thread(
            ledger.scrape_counter, instances, "yardarm_consumer_messages_total",
            'outcome="failed"', verify=verify,
        )  # fmt: skip
        recognised = await asyncio.to_thread(
            ledger.scrape_counter, instances, "yardarm_consumer_messages_total",
            'outcome="duplicate"', verify=verify,
        )  # fmt: skip
        return Run(
            wall_s=0.0,
            skus=skus,
            planned=planned,
            placement=placement,
            poisons=poisons,
            kills=killer.kills,
            kills_counted=None if counted is None else counted.get("kill", 0),
            survived_kill=[
                f"{k.target} pid {k.pid}"
                for k in killer.kills
                if k.victim is None or stack.process_state(k.victim) != "gone"
            ],
            refused_kills=killer.refused,
            pause=pause,
            pauses_counted=None if counted is None else counted.get("pause", 0),
            observed=duplicator.observed,
            duplicates_stored=duplicator.stored,
            stream_duplicates=dict(ledger.duplicated_ids(streams)),
            settle_s=settle_s,
            left_in_flight=await ledger.count_in_flight(orders_db),
            initial=initial,
            available=await available(datastore, token, names, verify=verify),
            orders=await ledger.read_orders(orders_db),
            history=await ledger.read_history(orders_db),
            payments=await ledger.read_payments(ledger_db),
            shipments=await ledger.read_shipments(ledger_db),
            instances={
                inst.name: (inst.state, inst.restarts)
                for inst in stack.instances()
                if inst.name in KILL_TARGETS
            },
            dead=await ledger.read_stream(js, "DLQ"),
            backlog=await ledger.backlog(js, DURABLES),
            redeliveries=redeliveries,
            failed_deliveries=failed,
            duplicates_recognised=recognised,
            notes=notes,
        )
    finally:
        await nc.close()
        await orders_db.close()
        await ledger_db.close()


def _summary(run: Run) -> list[str]:
    confirmed = sum(1 for o in run.orders if o.status == "CONFIRMED")
    fits = confirmable(run.planned, run.skus)
    reasons = ledger.cancel_reasons(run.orders)
    kills = ", ".join(f"{k.target}@{k.at_s}s/{k.in_flight}" for k in run.kills)
    resent = ledger.resent(run.history)
    pause = run.pause
    caught = Counter(pause.in_step.values())
    timed_out = ledger.timed_out(run.orders)
    return [
        f"saga invariants (seed {SEED}, scale {SCALE:g}): {len(run.orders)} orders, "
        f"{confirmed} confirmed ({len(fits)} confirmable by the plan), "
        f"{sum(reasons.values())} cancelled {dict(reasons)}",
        f"  kills {len(run.kills)} (controller counted {run.kills_counted}) "
        f"[target@time/in-flight sagas]: {kills}",
        f"  duplicates republished {len(run.duplicates_stored)} of {run.observed} observed; "
        f"envelope ids stored more than once: {len(run.stream_duplicates)}; consumers "
        f"recognised {run.duplicates_recognised} duplicates (metrics, since last restart)",
        f"  paused {', '.join(pause.targets)} at {pause.at_s}s (after {pause.waited_s}s for "
        f"readiness and sagas in step) for {pause.held_s}s, caught up {pause.caught_up_s}s "
        f"after (controller listed {list(pause.listed)}, counted {run.pauses_counted}; "
        f"seen stopped {list(pause.stopped)}); "
        f"sagas waiting on them {pause.read_s}s in: {len(pause.in_step)} {dict(caught)}",
        f"  step timeouts {len(timed_out)} {dict(Counter(timed_out.values()))}, "
        f"{len(set(timed_out) & set(pause.in_step))} of them caught by the pause; ledger of "
        f"the timed-out: {dict(ledger.timeout_outcomes(run.orders, run.payments))}",
        f"  redeliveries (metrics, since last restart) {run.redeliveries}, failed deliveries "
        f"{run.failed_deliveries}; commands re-sent {sum(resent.values())} {dict(resent)}; "
        f"placement retries {run.placement.retries} {dict(run.placement.retried_on)}",
        f"  DLQ {len(run.dead)} messages ({len(run.poisons)} poison injected); settled in "
        f"{run.settle_s:.1f}s; wall {run.wall_s:.0f}s",
        *(f"  note: {note}" for note in run.notes),
    ]


@pytest.fixture(scope="module")
def run(stack: StackTarget, request: pytest.FixtureRequest) -> Run:
    started = time.monotonic()
    result = asyncio.run(_scenario(stack))
    result.wall_s = time.monotonic() - started
    lines = _summary(result)
    (stack.artifacts / "saga-invariants.txt").write_text("\n".join(lines) + "\n")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown whatever the capture mode
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)
    return result


def test_faults_really_happened(run: Run) -> None:
    # Seen by the test, not taken from the controller's counters: each victim's process
    # is gone and the supervisor restarted it (below).
    assert len(run.kills) >= 3, run.kills
    assert not run.survived_kill, run.survived_kill
    assert any(kill.in_flight >= 1 for kill in run.kills), run.kills
    assert {kill.target.rsplit("-", 1)[0] for kill in run.kills} == {"orders", "fulfillment"}
    # The supervisor brought every victim back.
    for target in KILL_TARGETS:
        state, restarts = run.instances[target]
        killed = sum(1 for kill in run.kills if kill.target == target)
        assert state == "ready" and restarts >= killed, (target, state, restarts, killed, run.notes)
    # Every copy JetStream acknowledged as new is in the stream beside its original.
    assert run.duplicates_stored, f"nothing republished out of {run.observed} observed"
    missing = set(run.duplicates_stored) - set(run.stream_duplicates)
    assert not missing, sorted(missing)[:5]


def test_every_order_placed_once_and_every_saga_terminal(run: Run) -> None:
    assert not run.placement.rejected, run.placement.rejected[:5]
    assert not run.placement.gave_up, run.placement.gave_up[:5]
    # Exactly the planned orders, each once, as planned: matched on the plan, not on
    # what the orders service reports about itself.
    assert ledger.check_exactly_once(run.planned, run.placement.ids, run.orders) == []
    assert len(run.placement.ids) == ORDERS
    assert (
        ledger.check_recorded_as_planned(run.planned, run.placement.ids, run.orders, run.prices)
        == []
    )
    assert run.left_in_flight == 0, run.notes
    assert ledger.check_terminal(run.orders) == []


def test_every_order_ends_as_its_plan_allows(run: Run) -> None:
    short = contended(run.planned, run.skus)
    assert ledger.check_outcomes(run.planned, run.placement.ids, run.orders, short) == []
    # Every way to fail was exercised, as fulfillment's own records show: a declined
    # card was refused by the payment simulator, and an unserviceable order was charged,
    # failed at shipping and had its money returned (the amounts: the ledger test).
    declined = run.placed("declined")
    assert any(
        p.saga_id in declined and p.kind == "charge" and p.status == "declined"
        for p in run.payments
    ), "no declined card reached the payment step"
    charged = {p.saga_id for p in run.payments if p.kind == "charge" and p.status == "charged"}
    refunded = {p.saga_id for p in run.payments if p.kind == "refund" and p.amount_cents > 0}
    failed_shipping = {
        oid for oid in run.placed("noship") & charged if run.shipments.get(oid) == "failed"
    }
    assert failed_shipping, "no unserviceable order was charged and failed at shipping"
    assert failed_shipping <= refunded, sorted(failed_shipping - refunded)[:5]
    assert run.placed("oversized"), "the plan placed no order above every stock level"


# The plan's confirmable orders are its `ok` entries the seeded stock covers, taken in
# plan order (113-135 of 200 for the seeds tried at scale 1). The fulfillment pause times
# out the sagas that reach payment while it lasts and while fulfillment catches up, which
# takes longer the busier the machine (31-96 step timeouts at scale 1 so far), and kills
# and stock races take a few more: healthy runs confirmed 40-80% of the confirmable
# orders (50 of 125 at worst). An eighth keeps a 3x margin under the worst run seen and
# still fails a run in which payments, shipping or the saga stop confirming. Calibrated
# at scale 1; far smaller scales place most orders inside the pause.
MIN_CONFIRMED_SHARE = 1 / 8


def test_a_healthy_share_of_the_confirmable_orders_confirms(run: Run) -> None:
    fits = confirmable(run.planned, run.skus)
    assert len(fits) >= ORDERS // 4, f"the plan itself confirms only {len(fits)} orders"
    ok = run.placed("ok")
    confirmed = {o.id for o in run.orders if o.status == "CONFIRMED"}
    needed = math.ceil(MIN_CONFIRMED_SHARE * len(fits))
    assert len(confirmed & ok) >= needed, (
        f"{len(confirmed & ok)} orders confirmed; the plan can confirm {len(fits)}, at least "
        f"{needed} must; cancel reasons {dict(ledger.cancel_reasons(run.orders))}"
    )


def test_steps_without_a_reply_time_out_and_are_compensated(run: Run) -> None:
    pause = run.pause
    # Both replicas stood still together (stopped, as the kernel shows), longer than a
    # step may wait for its reply.
    assert set(pause.stopped) >= set(PAUSED), pause
    assert pause.held_s > STEP_TIMEOUT_S, pause
    assert pause.in_step, "no saga was charging or shipping when fulfillment was paused"
    assert pause.read_s < STEP_TIMEOUT_S, pause  # read before any of them could time out
    # Waiting for the reply, the sagas sent their commands again, then gave up on them.
    resent = {
        oid for oid, steps in run.history.items() if any(o == ledger.RESENT for _, o in steps)
    }
    assert resent & set(pause.in_step), (
        f"none of the {len(pause.in_step)} sagas caught by the pause re-sent its command; "
        f"{len(resent)} others did"
    )
    timed_out = ledger.timed_out(run.orders)
    assert set(timed_out) & set(pause.in_step), (
        f"none of the {len(pause.in_step)} sagas caught by the pause timed out; "
        f"timed out: {sorted(timed_out)[:5]}"
    )
    # Each was compensated as if the participant had acted: no money kept, no shipment.
    assert ledger.check_timed_out(run.orders, run.history, run.payments, run.shipments) == []


def test_stock_is_conserved_per_sku(run: Run) -> None:
    assert ledger.check_terminal(run.orders) == [], "stock is only settled once sagas are"
    assert (
        ledger.check_stock(run.initial, run.available, run.planned, run.placement.ids, run.orders)
        == []
    )


def test_payment_ledger_matches_every_outcome(run: Run) -> None:
    assert (
        ledger.check_money(run.planned, run.orders, run.payments, run.shipments, run.prices) == []
    )


def test_dlq_holds_exactly_the_poison_messages(run: Run) -> None:
    assert not any(run.backlog.values()), f"consumers not drained: {run.backlog}"
    assert ledger.check_dlq(run.dead, run.poisons) == []


def test_poison_messages_take_no_effect(run: Run) -> None:
    # The schema-3 charge is well formed in both known shapes: only its schema header
    # keeps a consumer from charging it.
    sagas = [p.saga_id for p in run.poisons if p.saga_id is not None]
    assert ledger.check_untouched(sagas, run.payments, run.shipments) == []
