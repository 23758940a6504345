"""A seeded random walk through a Raft cluster's life: faults first, then recovery.

Everything random comes from one `random.Random(seed)`: the configuration, the fault mix,
every event, and each node's own rng, so a seed replays exactly. Time is virtual: the
clock advances in rounds in which every live node ticks once (in random order), so two
nodes' clocks never drift apart by more than one tick, the bound lease reads assume.

A run is `steps` random events (ticks, deliveries, drops, duplicates, delays, disk
writes, client writes and reads, compactions), with node and network faults rolled once
per round (partitions, crashes, power failures, restarts, leader transfers, membership
changes), then a recovery phase (heal, restart everything, a reliable network) in which
a leader must emerge and a new write must reach every node within 50 election timeouts.
Clients send to the leader they last knew, so a deposed leader that has not noticed
keeps getting requests.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from yardarm_datastore.raft.types import ConfChange, Mutation, Role

from tests.datastore.raft.cluster import Cluster
from tests.datastore.raft.faults import FaultMix, draw_config, draw_regime
from tests.datastore.raft.invariants import DURABILITY, LIVENESS, InvariantViolation

RECOVERY_TIMEOUTS = 50  # election timeouts the cluster gets to recover after the faults


@dataclass(frozen=True)
class SimulationReport:
    seed: int
    nodes: int
    regime: str
    config: Mapping[str, Any]
    faults: FaultMix
    steps: int
    rounds: int  # rounds of the clock the fault phase lasted
    recovery_rounds: int
    terms: int  # terms that had a leader
    committed: int  # the highest index applied anywhere
    stats: Mapping[str, int]


class Simulation:
    """One seeded run. `run()` returns a report, or raises `InvariantViolation` carrying the
    seed, the step and the recent events."""

    def __init__(
        self,
        seed: int,
        *,
        nodes: int = 3,
        read_mode: str = "index",
        regime: str | None = None,
        config: Mapping[str, Any] | None = None,
        mutations: Iterable[Mutation] = (),
        steps: int = 1500,
        faults: FaultMix | None = None,
        check_step_down: bool | None = None,
        replay: str = "",
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.regime = regime or draw_regime(self.rng)
        self.config = {**draw_config(self.rng, read_mode, self.regime), **(config or {})}
        self.faults = faults or FaultMix.draw(self.rng, nodes, self.regime)
        self.steps = steps
        self.replay = replay
        self.nodes = nodes
        self.cluster = Cluster(
            range(1, nodes + 1),
            rng=self.rng,
            config=self.config,
            mutations=mutations,
            check_step_down=check_step_down,
        )
        self.election_ticks = self.cluster.election_ticks
        self._round: list[int] = []  # nodes yet to tick in this round
        self._events: list[Callable[[], None]] = [
            self._tick,
            self._deliver,
            self._disk,
            self._propose,
            self._read,
            self._drop,
            self._duplicate,
            self._delay,
            self._compact,
        ]
        self._values = 0
        self._writing = True
        self._heal_at = 0  # the round the current partition ends
        self._known_leader: int | None = None  # the leader clients send requests to

    def run(self) -> SimulationReport:
        try:
            for _ in range(self.steps):
                self._random_event()
            rounds = self.cluster.now
            recovery_rounds = self._recover()
        except InvariantViolation as exc:
            exc = self.cluster.annotate(exc)
            exc.seed = self.seed
            exc.replay = self.replay
            raise
        monitor = self.cluster.monitor
        return SimulationReport(
            seed=self.seed,
            nodes=self.nodes,
            regime=self.regime,
            config=self.config,
            faults=self.faults,
            steps=self.steps,
            rounds=rounds,
            recovery_rounds=recovery_rounds,
            terms=len(monitor.leaders),
            committed=monitor.known_committed,
            stats=Counter(self.cluster.stats),
        )

    # -- the fault phase ---------------------------------------------------------------------

    def _random_event(self) -> None:
        c, f = self.cluster, self.faults
        ready = c.net.release(c.now)
        pending = sum(1 for r in c.replicas.values() if r.pending is not None)
        weights = (
            12.0,  # tick
            min(60.0, 4.0 * ready),  # deliver
            8.0 * pending * f.disk,  # a disk write completes
            f.writes if self._writing else 0.0,
            f.reads,
            f.drop if ready else 0.0,
            f.duplicate if ready else 0.0,
            f.delay if ready else 0.0,
            f.compact,
        )
        self.rng.choices(self._events, weights)[0]()

    def _tick(self) -> None:
        c = self.cluster
        self._round = [n for n in self._round if c.alive(n)]
        if not self._round:
            c.now += 1
            self._round_faults()
            self._round = c.live()
            if not self._round:
                return
        node = self._round.pop(self.rng.randrange(len(self._round)))
        c.tick(node)

    def _round_faults(self) -> None:
        """Node, network and client-load changes, rolled once per round of the clock."""
        c, f, rng = self.cluster, self.faults, self.rng
        if c.net.partitioned and c.now >= self._heal_at:
            c.heal()
        elif not c.net.partitioned and rng.random() < f.partition:
            self._partition()
            longest = max(1, int(f.outage * self.election_ticks))
            self._heal_at = c.now + rng.randint(1, longest)
        for node in c.ids:
            if not c.alive(node) and rng.random() < f.restart:
                c.restart(node)
        if c.live() and rng.random() < f.crash:
            self._crash()
        if rng.random() < f.power_failure:
            self._power_failure()
        if rng.random() < f.transfer:
            self._transfer()
        if rng.random() < f.membership:
            self._membership()
        if rng.random() < f.idle:
            # Bursts and lulls: with no writes, logs stay level, which is when a node
            # that lost touch with the leader can win an election.
            self._writing = not self._writing

    def _deliver(self) -> None:
        position = self.cluster.net.pick(self.rng, self.cluster.now)
        if position is not None:
            self.cluster.deliver(position)

    def _disk(self) -> None:
        c = self.cluster
        node = self.rng.choice([r.id for r in c.replicas.values() if r.pending is not None])
        c.complete_write(node)
        # A new leader that dies just after a write of its own is durable (its first
        # entry, or a commit) and before its messages are out: logs diverge across terms.
        replica = c.replicas[node]
        fresh = replica.led is not None and replica.ticks - replica.led[1] <= 2
        if fresh and self.rng.random() < self.faults.fragile:
            c.crash(node)

    def _value(self) -> bytes:
        self._values += 1
        return f"v{self._values}".encode()

    def _some_leader(self) -> int | None:
        leaders = self.cluster.leaders()
        return self.rng.choice(leaders) if leaders else None

    def _client_leader(self) -> int | None:
        """Where a client sends a request: the leader it knew last, for as long as that
        node still claims to lead (so a deposed leader that has not noticed keeps getting
        requests, as with clients that cache the leader), else any node that claims to."""
        c = self.cluster
        known = self._known_leader
        if known is None or not c.alive(known) or c.core(known).role is not Role.LEADER:
            self._known_leader = known = self._some_leader()
        return known

    def _propose(self) -> None:
        """A client write, mostly to a leader, sometimes through a follower."""
        c = self.cluster
        leader = self._client_leader()
        followers = [n for n in c.live() if n != leader]
        if followers and (leader is None or self.rng.random() < 0.3):
            c.forward(self.rng.choice(followers), self._value())
        elif leader is not None:
            c.propose(leader, self._value())

    def _read(self) -> None:
        """A linearizable read, mostly at a leader, sometimes at a follower."""
        c = self.cluster
        leader = self._client_leader()
        live = c.live()
        if leader is not None and self.rng.random() < 0.6:
            c.read(leader)
        elif live:
            c.read(self.rng.choice(live))

    def _drop(self) -> None:
        position = self.cluster.net.pick(self.rng, self.cluster.now)
        if position is not None:
            self.cluster.drop(position)

    def _duplicate(self) -> None:
        position = self.cluster.net.pick(self.rng, self.cluster.now)
        if position is not None:
            self.cluster.duplicate(position)

    def _delay(self) -> None:
        position = self.cluster.net.pick(self.rng, self.cluster.now)
        if position is not None:
            self.cluster.delay(position, self.rng.randint(1, self.election_ticks))

    def _compact(self) -> None:
        live = self.cluster.live()
        if live:
            self.cluster.compact(self.rng.choice(live))

    def _partition(self) -> None:
        c, f, rng = self.cluster, self.faults, self.rng
        nodes = list(c.ids)
        rng.shuffle(nodes)
        leader = self._some_leader()
        kind = rng.choices(("isolate", "split", "links"), (f.isolate, f.split, f.links))[0]
        if kind == "isolate" and leader is not None:
            # Cut the leader off (with a companion in a bigger cluster): the leader
            # keeps taking writes it cannot commit, and must step down.
            nodes.remove(leader)
            minority = [leader, *nodes[: (len(c.ids) - 1) // 2 - 1]]
            c.partition(minority, [n for n in c.ids if n not in minority])
        elif kind == "links":
            # A partial partition: some links fail, so a node may reach a peer that
            # still hears the leader while it does not.
            links = [(a, b) for a in c.ids for b in c.ids if a < b]
            c.cut(*rng.sample(links, rng.randint(1, max(1, len(links) // 3))))
        else:
            cut = rng.randrange(1, len(nodes))
            c.partition(nodes[:cut], nodes[cut:])

    def _crash(self) -> None:
        """Crash the leader, a node with a disk write in flight (where a crash costs
        something), or any node."""
        c = self.cluster
        leader = self._some_leader()
        writing = [n for n in c.live() if c.replicas[n].pending is not None]
        roll = self.rng.random()
        if leader is not None and roll < 0.4:
            c.crash(leader)
        elif writing and roll < 0.7:
            c.crash(self.rng.choice(writing))
        else:
            c.crash(self.rng.choice(c.live()))

    def _power_failure(self) -> None:
        """A majority, or everyone, loses power at once: every unsynced write is gone."""
        c = self.cluster
        nodes = list(c.ids)
        self.rng.shuffle(nodes)
        count = self.rng.choice((len(nodes) // 2 + 1, len(nodes)))
        for node in nodes[:count]:
            if c.alive(node):
                c.crash(node)

    def _transfer(self) -> None:
        leader = self._some_leader()
        if leader is not None:
            others = [n for n in self.cluster.core(leader).voters if n != leader]
            if others:
                self.cluster.transfer(leader, self.rng.choice(sorted(others)))

    def _membership(self) -> None:
        """Remove a follower, later add it back: one single-server change at a time."""
        c = self.cluster
        leader = self._some_leader()
        if leader is None:
            return
        voters = c.core(leader).voters
        missing = [n for n in c.ids if n not in voters]
        if missing:
            c.change_membership(leader, ConfChange("add", missing[0]))
        else:
            victim = self.rng.choice([n for n in sorted(voters) if n != leader])
            c.change_membership(leader, ConfChange("remove", victim))

    # -- recovery ----------------------------------------------------------------------------

    def _recover(self) -> int:
        """Heal everything; within the budget a leader must commit a new write everywhere.
        Returns the rounds it took."""
        c = self.cluster
        c.heal()
        for node in c.ids:
            if not c.alive(node):
                c.restart(node)
        c.net.release_all()
        probes: dict[int, bytes] = {}  # leader term -> the write proposed in it
        budget = RECOVERY_TIMEOUTS * self.election_ticks
        for rounds in range(1, budget + 1):
            c.tick_all()
            c.settle()
            if self._probe_everywhere(probes):
                self._check_acknowledged_writes()
                return rounds
            leader = c.leader()
            if leader is None:
                continue
            core = c.core(leader)
            missing = [n for n in c.ids if n not in core.voters]
            if missing:
                c.change_membership(leader, ConfChange("add", missing[0]))
            elif core.term not in probes:
                value = self._value()
                if c.propose(leader, value) is not None:
                    probes[core.term] = value
        raise InvariantViolation(
            LIVENESS,
            f"no write reached every node within {budget} rounds of recovery "
            f"({RECOVERY_TIMEOUTS} election timeouts); {self._status()}",
        )

    def _probe_everywhere(self, probes: Mapping[int, bytes]) -> bool:
        c = self.cluster
        for value in probes.values():
            index = c.monitor.index_of(value)
            if index is not None and all(r.applied >= index for r in c.replicas.values()):
                return True
        return False

    def _check_acknowledged_writes(self) -> None:
        """Every write a client was told committed is in every node's state machine."""
        c = self.cluster
        everywhere = min(r.applied for r in c.replicas.values())
        for replica in c.replicas.values():
            held = dict(replica.commands)
            for index, data in c.monitor.acked.items():
                if index <= everywhere and held.get(index) != data:
                    raise InvariantViolation(
                        DURABILITY,
                        f"node {replica.id} ended without the acknowledged write {data!r} at "
                        f"{index} (has {held.get(index)!r})",
                    )

    def _status(self) -> str:
        c = self.cluster
        parts = []
        for node in c.ids:
            core = c.core(node)
            parts.append(
                f"node {node}: {core.role.value} t{core.term} leader={core.leader} "
                f"last={core.last_index} commit={core.commit} applied={core.applied} "
                f"voters={sorted(core.voters)}"
            )
        return "; ".join(parts)
