"""A cluster of Raft cores under a simulated driver, network and disk, one event at a time.

Each public method is one event (a tick, a message arriving, a disk write completing, a
crash...) and every event is followed by the invariant checks, so a violation names the
event that caused it. Scenarios call these methods directly; the seeded simulation calls
them at random. Randomness comes only from the injected `random.Random`, so a run
replays exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

from yardarm_datastore.raft.core import RaftNode
from yardarm_datastore.raft.types import ConfChange, Message, Mutation, Role

from tests.datastore.raft.driver import REFUSALS, Driver
from tests.datastore.raft.invariants import (
    DRIVER_CONTRACT,
    LIVENESS,
    InvariantViolation,
    check_quorum_contact,
)
from tests.datastore.raft.replica import PendingRead, Replica
from tests.datastore.raft.storage import encode_commands

T = TypeVar("T")
P = ParamSpec("P")


def _event(method: Callable[Concatenate[Cluster, P], T]) -> Callable[Concatenate[Cluster, P], T]:
    """A public event: a violation raised inside it carries the step and recent events."""

    def run(self: Cluster, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except InvariantViolation as exc:
            raise self.annotate(exc) from exc.__cause__

    return run


class Cluster(Driver):
    """Raft nodes wired to a simulated network and disks, checked after every event."""

    def __init__(
        self,
        ids: Iterable[int],
        *,
        rng: random.Random,
        config: Mapping[str, Any] | None = None,
        mutations: Iterable[Mutation] = (),
        check_step_down: bool | None = None,
        trace_length: int = 40,
    ) -> None:
        super().__init__(
            ids, rng=rng, config=config, mutations=mutations, trace_length=trace_length
        )
        base = self.configs[self.ids[0]]
        self.election_ticks = base.election_ticks
        # The step-down check holds where check-quorum is configured and not broken on
        # purpose; a test may force it on to see the mutation trip it.
        if check_step_down is None:
            check_step_down = base.check_quorum and Mutation.NO_CHECK_QUORUM not in self.mutations
        self.check_step_down = check_step_down
        for i in self.ids:
            self.restart(i)

    # -- queries ---------------------------------------------------------------------------

    def core(self, node: int) -> RaftNode:
        core = self.replicas[node].core
        if core is None:
            raise LookupError(f"node {node} is down")
        return core

    def alive(self, node: int) -> bool:
        return self.replicas[node].core is not None

    def live(self) -> list[int]:
        return [i for i in self.ids if self.alive(i)]

    def leaders(self) -> list[int]:
        return [i for i in self.live() if self.core(i).role is Role.LEADER]

    def leader(self) -> int | None:
        """The live leader of the highest term, if any."""
        leaders = self.leaders()
        return max(leaders, key=lambda i: self.core(i).term) if leaders else None

    def values(self, node: int) -> list[bytes]:
        return [data for _, data in self.replicas[node].commands]

    # -- events ----------------------------------------------------------------------------

    @_event
    def tick(self, node: int) -> None:
        replica = self.replicas[node]
        core = self.core(node)
        self._begin(f"tick {node}")
        replica.ticks += 1
        self._call(core.tick)
        self._pump(replica)
        self._check(node)
        self._check_quorum_contact(replica)

    @_event
    def campaign(self, node: int) -> None:
        """`node` starts an election now (a pre-vote first, if configured)."""
        core = self.core(node)
        self._begin(f"campaign {node}")
        self._call(core.campaign)
        self._pump(self.replicas[node])
        self._check(node)

    def tick_all(self) -> None:
        """One round of the clock: every live node ticks once."""
        self.now += 1
        for node in self.live():
            self.tick(node)

    @_event
    def deliver(self, position: int) -> None:
        self._arrive(self.net.take(position))

    @_event
    def deliver_oldest(self) -> bool:
        msg = self.net.take_oldest(self.now)
        if msg is None:
            return False
        self._arrive(msg)
        return True

    @_event
    def deliver_where(self, predicate: Callable[[Message], bool]) -> int:
        """Deliver, oldest first, every message now in flight that matches."""
        self.net.release(self.now)
        chosen = sorted((f for f in self.net.in_flight if predicate(f.msg)), key=lambda f: f.seq)
        for flight in chosen:
            self.net.in_flight.remove(flight)
            self._arrive(flight.msg)
        return len(chosen)

    @_event
    def drop(self, position: int) -> None:
        self._begin("drop", self.net.take(position))
        self.stats["dropped"] += 1

    @_event
    def duplicate(self, position: int) -> None:
        self._begin("duplicate", self.net.duplicate(position, self.now))
        self.stats["duplicated"] += 1

    @_event
    def delay(self, position: int, rounds: int) -> None:
        msg = self.net.delay(position, self.now + rounds)
        self._begin(f"delay by {rounds} rounds:", msg)
        self.stats["delayed"] += 1

    @_event
    def drop_where(self, predicate: Callable[[Message], bool]) -> int:
        dropped = self.net.drop_where(predicate)
        self._begin(f"drop {dropped} messages")
        self.stats["dropped"] += dropped
        return dropped

    @_event
    def complete_write(self, node: int) -> None:
        replica = self.replicas[node]
        if replica.pending is not None:
            self._begin(f"disk write of {node} done")
            self._finish(replica, replica.pending)
            self._check(node)

    def flush_writes(self, max_writes: int = 1000) -> None:
        """Complete disk writes until none is in flight (a completed write may start the
        node's next one)."""
        for _ in range(max_writes):
            pending = [r.id for r in self.replicas.values() if r.pending is not None]
            if not pending:
                return
            self.complete_write(pending[0])
        raise AssertionError(f"disk writes kept coming after {max_writes}")

    @_event
    def settle(self, max_events: int = 20_000) -> int:
        """Complete every disk write and deliver every message (oldest first) until the
        cluster is quiet; the count of events it took."""
        for events in range(max_events):
            pending = [r.id for r in self.replicas.values() if r.pending is not None]
            if pending:
                self.complete_write(pending[0])
            elif not self.deliver_oldest():
                return events
        raise InvariantViolation(
            LIVENESS, f"the cluster was still busy after {max_events} events (a message storm)"
        )

    @_event
    def propose(self, node: int, data: bytes) -> tuple[int, int] | None:
        """Propose `data` at `node`; None if it refused (not leader, transfer, ...)."""
        core = self.core(node)
        self._begin(f"propose {data!r} at {node}")
        try:
            at: tuple[int, int] | None = self._call(lambda: core.propose(data), refusable=True)
        except REFUSALS as exc:
            self._note(f"refused: {exc}")
            at = None
        if at is not None:
            self._proposals[data] = (node, at[0], at[1])
            self.stats["proposed"] += 1
            self._note(f"-> t{at[0]} index {at[1]}")
        self._pump(self.replicas[node])
        self._check(node)
        return at

    @_event
    def forward(self, node: int, data: bytes) -> bool:
        """A follower hands a client's command to its leader; nothing reports back, and
        a duplicated message may append it twice (the command is at-least-once)."""
        core = self.core(node)
        self._begin(f"forward {data!r} from {node}")
        self.monitor.at_least_once.add(data)
        try:
            self._call(lambda: core.forward_proposal(data), refusable=True)
            done = True
            self.stats["forwarded"] += 1
        except REFUSALS as exc:
            self._note(f"refused: {exc}")
            done = False
        self._pump(self.replicas[node])
        self._check(node)
        return done

    @_event
    def read(self, node: int) -> int | None:
        """Issue a linearizable read at `node` (a follower forwards it to its leader); its
        request id, or None if refused."""
        core = self.core(node)
        self._next_request += 1
        request = self._next_request
        pending = PendingRead(request, node, self.step + 1, self.monitor.known_committed)
        self._begin(f"read #{request} at {node} (known committed: {pending.known})")
        self._reads[request] = pending
        self._read_origin[request] = node
        try:
            self._call(lambda: core.read_index(request), refusable=True)
        except REFUSALS:
            del self._reads[request]
            self._note("refused")
            return None
        finally:
            self._pump(self.replicas[node])
            self._check(node)
        return request

    @_event
    def compact(self, node: int) -> bool:
        """Snapshot `node`'s state machine at its applied index and compact its log."""
        replica = self.replicas[node]
        core = self.core(node)
        if replica.applied <= replica.disk.snap_index:
            return False
        self._begin(f"compact {node} at {replica.applied}")
        data = encode_commands(replica.commands)
        snap = self._call(lambda: core.compact(replica.applied, data))
        if snap is None:  # a snapshot from the leader already covers it
            self._note("already covered by a snapshot")
            self.stats["compactions_overtaken"] += 1
            self._check(node)
            return False
        meta = snap.meta
        expected = (replica.applied, replica.applied_term, replica.voters)
        if (meta.index, meta.term, meta.conf.voters) != expected:
            raise InvariantViolation(
                DRIVER_CONTRACT,
                f"node {node} compacted to {expected} but the snapshot says "
                f"{(meta.index, meta.term, meta.conf.voters)}",
            )
        self._persist(replica, lambda: replica.disk.compact(snap))
        self.stats["compactions"] += 1
        self._pump(replica)
        self._check(node)
        return True

    @_event
    def transfer(self, node: int, to: int) -> bool:
        core = self.core(node)
        self._begin(f"transfer leadership {node} -> {to}")
        try:
            self._call(lambda: core.transfer_leadership(to), refusable=True)
            done = True
            self.replicas[node].transferred = self.replicas[node].ticks
            self.stats["transfers"] += 1
        except REFUSALS as exc:
            self._note(f"refused: {exc}")
            done = False
        self._pump(self.replicas[node])
        self._check(node)
        return done

    @_event
    def change_membership(self, node: int, change: ConfChange) -> tuple[int, int] | None:
        core = self.core(node)
        self._begin(f"membership: {change.op} {change.node} at {node}")
        try:
            at: tuple[int, int] | None = self._call(
                lambda: core.propose_conf_change(change), refusable=True
            )
            self.stats["conf_proposed"] += 1
        except REFUSALS as exc:
            self._note(f"refused: {exc}")
            at = None
        self._pump(self.replicas[node])
        self._check(node)
        return at

    @_event
    def crash(self, node: int) -> None:
        self._begin(f"crash {node}")
        self.replicas[node].crash()
        self._reads = {r: p for r, p in self._reads.items() if p.node != node}
        # Its connections reset: what it sent and was not yet received is lost.
        self.stats["lost"] += self.net.drop_where(lambda m: m.src == node)
        self.stats["crashes"] += 1

    @_event
    def restart(self, node: int) -> None:
        """Start `node` from what its disk holds (a first start has an empty disk)."""
        self._begin(f"start {node}")
        replica = self.replicas[node]
        disk = replica.disk
        config = self.configs[node]
        rng = random.Random(self.rng.getrandbits(64))
        core = self._call(
            lambda: RaftNode(
                config,
                rng=rng,
                voters=self.bootstrap,
                hard_state=disk.hard_state,
                snapshot=disk.snapshot,
                entries=list(disk.entries),
            )
        )
        replica.started(core, self.bootstrap)
        if disk.snapshot is not None:
            self.monitor.restored(node, replica.applied, replica.commands)
        self._pump(replica)
        self._check(node)

    @_event
    def partition(self, *sides: Iterable[int]) -> None:
        groups = [sorted(side) for side in sides]
        self._begin(f"partition {groups}")
        self.net.partition(groups)
        self.stats["partitions"] += 1

    @_event
    def cut(self, *links: tuple[int, int]) -> None:
        self._begin(f"cut links {sorted(links)}")
        self.net.cut(links)
        self.stats["partitions"] += 1

    @_event
    def heal(self) -> None:
        self._begin("heal")
        self.net.heal()

    # -- the driver --------------------------------------------------------------------------

    def _arrive(self, msg: Message) -> None:
        replica = self.replicas[msg.dst]
        core = replica.core
        if core is None or not self.net.connected(msg.src, msg.dst):
            self._begin("lost", msg)
            self.stats["lost"] += 1
            return
        self._begin("deliver", msg)
        if core.role is Role.LEADER and msg.term == core.term:
            replica.heard[msg.src] = replica.ticks
        self.stats["delivered"] += 1
        self._call(lambda: core.step(msg))
        self._pump(replica)
        self._check(msg.dst)

    # -- checks --------------------------------------------------------------------------------

    def _check(self, node: int) -> None:
        """What must hold after every event that ran `node`'s core (no other core changed):
        one leader per term, and a new leader holds every committed entry."""
        replica = self.replicas[node]
        core = replica.core
        if core is not None:
            role = (core.role, core.term)
            if role != replica.role:
                replica.role = role
                self._note(f"node {node} is {role[0].value} in t{role[1]}")
        if core is None or core.role is not Role.LEADER:
            replica.led = None
            return
        self.monitor.leader(node, core.term)
        if replica.led is None or replica.led[0] != core.term:
            replica.led = (core.term, replica.ticks)
            replica.quorum = (core.voters, replica.ticks)
            replica.heard = {}
            self.monitor.new_leader(node, core.term, core.log.term, core.log.snap_index)
        elif replica.quorum[0] != core.voters:
            replica.quorum = (core.voters, replica.ticks)

    def _check_quorum_contact(self, replica: Replica) -> None:
        """After a leader's tick (only time makes the deadline pass): it must have heard
        from a quorum recently. The deadline counts from the last quorum contact, or from
        when the leadership, its membership, or a leader transfer (which restarts the
        leader's election clock, as in etcd) began, whichever is latest."""
        core = replica.core
        if not self.check_step_down or core is None or replica.led is None:
            return
        check_quorum_contact(
            replica.id,
            replica.ticks,
            max(replica.led[1], replica.transferred, replica.quorum[1]),
            replica.heard,
            core.voters,
            self.election_ticks,
        )
