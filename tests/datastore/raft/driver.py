"""The simulated server: how each node's `Ready` is carried out, and the event trace.

It follows the `Ready` contract, with fsync as an asynchronous disk write: a Ready's
snapshot, entries and hard state become durable only when its write completes (an event
of its own); its `messages` go out after that (or at once under
`Mutation.ACK_BEFORE_FSYNC`), then the state machine applies it, reads are served and the
core is told to `advance`. `early_messages` go out as soon as the Ready is taken. A node
has one write in flight at a time; a crash loses it.
"""

from __future__ import annotations

import dataclasses
import random
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from yardarm_datastore.raft.core import NotLeader, ProposalRefused, RaftConfig, RaftNode
from yardarm_datastore.raft.types import Entry, EntryKind, Message, Mutation, Ready

from tests.datastore.raft.invariants import (
    CORE_ERROR,
    DRIVER_CONTRACT,
    InvariantViolation,
    SafetyMonitor,
)
from tests.datastore.raft.network import Network, describe
from tests.datastore.raft.replica import PendingRead, ReadResult, Replica
from tests.datastore.raft.storage import StorageError

T = TypeVar("T")
REFUSALS = (NotLeader, ProposalRefused)


class Driver:
    """The nodes, their disks and the network, and the driver loop each node runs."""

    def __init__(
        self,
        ids: Iterable[int],
        *,
        rng: random.Random,
        config: Mapping[str, Any] | None,
        mutations: Iterable[Mutation],
        trace_length: int,
    ) -> None:
        self.rng = rng
        self.mutations = frozenset(mutations)
        core_mutations = self.mutations - {Mutation.ACK_BEFORE_FSYNC}
        self.ids = sorted(ids)
        self.bootstrap = frozenset(self.ids)
        self.configs = {
            i: dataclasses.replace(RaftConfig(id=i), **dict(config or {}), mutations=core_mutations)
            for i in self.ids
        }
        self.ack_before_fsync = Mutation.ACK_BEFORE_FSYNC in self.mutations
        self.net = Network()
        self.monitor = SafetyMonitor()
        self.replicas = {i: Replica(i) for i in self.ids}
        self.now = 0  # rounds of the clock: the virtual time delays are measured in
        self.step = 0  # events so far: the virtual time reads are stamped with
        self.trace: deque[tuple[int, int, str, Message | None]] = deque(maxlen=trace_length)
        self.stats: Counter[str] = Counter()
        self.read_results: list[ReadResult] = []
        self._proposals: dict[bytes, tuple[int, int, int]] = {}  # command -> node, term, index
        self._reads: dict[int, PendingRead] = {}
        self._read_origin: dict[int, int] = {}  # every request ever issued -> its node
        self._next_request = 0

    # -- the Ready contract ----------------------------------------------------------------

    def _send(self, msgs: list[Message]) -> None:
        for msg in msgs:
            self.net.send(msg, self.now)

    def _pump(self, replica: Replica) -> None:
        """Take the node's next Ready, unless its previous disk write is still going."""
        core = replica.core
        if core is None or replica.pending is not None or not self._call(core.has_ready):
            return
        ready = self._call(core.ready)
        self._check_entries(replica, ready)
        if ready.hard_state is not None:
            self._report_commit(replica, core, ready)
        self._send(ready.early_messages)
        replica.pending_sent = self.ack_before_fsync
        if self.ack_before_fsync:
            self._send(ready.messages)
        if ready.snapshot is None and not ready.entries and ready.hard_state is None:
            self._finish(replica, ready)  # nothing to make durable: no fsync to wait for
        else:
            replica.pending = ready

    def _check_entries(self, replica: Replica, ready: Ready) -> None:
        """Log matching over what the node hands out to persist (its durable + volatile log)."""
        if not ready.entries:
            return
        first = ready.entries[0].index
        if ready.snapshot is not None:
            meta = ready.snapshot.meta
            prev = meta.term if first - 1 == meta.index else None
        else:
            prev = replica.disk.term(first - 1)
        if prev is None:
            raise InvariantViolation(
                DRIVER_CONTRACT,
                f"node {replica.id} asked to persist entries from {first}, which does not "
                f"follow its log (last {replica.disk.last_index}, snapshot "
                f"{replica.disk.snap_index})",
            )
        self.monitor.log_entries(replica.id, ready.entries, prev)

    def _report_commit(self, replica: Replica, core: RaftNode, ready: Ready) -> None:
        """A commit index names committed entries: learn them as soon as it is reported,
        from the log as the driver sees it."""
        assert ready.hard_state is not None
        commit = ready.hard_state.commit
        snapshot = ready.snapshot
        floor = snapshot.meta.index if snapshot is not None else replica.disk.snap_index
        for index in range(max(replica.reported, floor) + 1, commit + 1):
            term = replica.visible_term(ready, index)
            if term is None:
                raise InvariantViolation(
                    DRIVER_CONTRACT,
                    f"node {replica.id} reports commit {commit} but holds no entry at {index}",
                )
            self.monitor.committed(replica.id, index, term, core.term)
        replica.reported = max(replica.reported, commit)

    def _persist(self, replica: Replica, write: Callable[[], None]) -> None:
        try:
            write()
        except StorageError as exc:
            raise InvariantViolation(DRIVER_CONTRACT, f"node {replica.id}: {exc}") from exc

    def _finish(self, replica: Replica, ready: Ready) -> None:
        """The Ready's disk write completed: persist, send, apply, serve reads, advance."""
        core = replica.core
        assert core is not None
        disk = replica.disk
        snapshot = ready.snapshot
        if snapshot is not None:
            disk.install(snapshot)
        self._persist(replica, lambda: disk.append(ready.entries))
        if ready.hard_state is not None:
            self.monitor.hard_state(replica.id, disk.hard_state, ready.hard_state)
            disk.hard_state = ready.hard_state
        if not replica.pending_sent:
            self._send(ready.messages)
        if snapshot is not None:
            meta = snapshot.meta
            if meta.index <= replica.applied:
                raise InvariantViolation(
                    DRIVER_CONTRACT,
                    f"node {replica.id} was given a snapshot at {meta.index} but has "
                    f"applied {replica.applied}",
                )
            replica.install(snapshot)
            self.monitor.restored(replica.id, meta.index, replica.commands)
            self.stats["snapshots_installed"] += 1
        for entry in ready.committed:
            self._apply(replica, core, entry)
        for state in ready.read_states:
            if self._read_origin.get(state.request) != replica.id:
                raise InvariantViolation(
                    DRIVER_CONTRACT,
                    f"node {replica.id} answered read #{state.request}, never asked there",
                )
            pending = self._reads.pop(state.request, None)
            if pending is None:
                # Answered twice (a duplicated forward), or asked before a crash.
                self.stats["stale_read_answers"] += 1
                continue
            replica.reads.append((state, pending))
        self._serve_reads(replica)
        replica.pending = None
        self._call(lambda: core.advance(ready))
        self._pump(replica)

    def _apply(self, replica: Replica, core: RaftNode, entry: Entry) -> None:
        if entry.index == replica.applied + 1:
            self.monitor.applied_entry(replica.id, entry, core.term)
        replica.apply(entry)
        if entry.kind is EntryKind.NORMAL:
            if self._proposals.get(entry.data) == (replica.id, entry.term, entry.index):
                # The node the client asked applied it: the client hears "committed".
                self.stats["acknowledged"] += entry.index not in self.monitor.acked
                self.monitor.acknowledge(entry.index, entry.data)
        elif entry.kind is EntryKind.CONF:
            self.stats["conf_applied"] += 1

    def _serve_reads(self, replica: Replica) -> None:
        waiting = []
        for state, pending in replica.reads:
            if state.index > replica.applied:
                waiting.append((state, pending))
                continue
            last = replica.commands[-1][1] if replica.commands else None
            result = ReadResult(
                pending.request,
                replica.id,
                pending.issued,
                self.step,
                replica.applied,
                len(replica.commands),
                last,
            )
            self.read_results.append(result)
            self.stats["reads_served"] += 1
            self.monitor.read_served(
                replica.id,
                pending.request,
                pending.issued,
                pending.known,
                self.step,
                replica.applied,
            )
        replica.reads = waiting

    # -- the trace -------------------------------------------------------------------------

    def _begin(self, event: str, msg: Message | None = None) -> None:
        self.step += 1
        self.trace.append((self.step, self.now, event, msg))

    def _note(self, note: str) -> None:
        self.trace.append((0, 0, note, None))

    def trace_lines(self) -> list[str]:
        """The recent events, oldest first: `step r<round> event`, notes indented."""
        lines = []
        for step, now, event, msg in self.trace:
            text = f"{event} {describe(msg)}" if msg is not None else event
            lines.append(f"{step} r{now} {text}" if step else f"      {text}")
        return lines

    def annotate(self, exc: InvariantViolation) -> InvariantViolation:
        """Attach the step and the recent events, once (the innermost event wins)."""
        if not exc.trace:
            exc.step = self.step
            exc.trace = self.trace_lines()
        return exc

    def _call(self, fn: Callable[[], T], *, refusable: bool = False) -> T:
        """Run core code. Any exception is a bug in the core, except NotLeader and
        ProposalRefused where they are an answer (`refusable`)."""
        try:
            return fn()
        except REFUSALS:
            if refusable:
                raise
            raise InvariantViolation(CORE_ERROR, traceback.format_exc(limit=-3)) from None
        except InvariantViolation:
            raise
        except Exception:
            raise InvariantViolation(CORE_ERROR, traceback.format_exc(limit=-3)) from None
