"""One simulated node: its disk, its Raft core, its state machine, and what the checks
remember about it. A crash keeps only the disk."""

from __future__ import annotations

from dataclasses import dataclass, field

from yardarm_datastore.raft.core import RaftNode
from yardarm_datastore.raft.types import (
    ConfChange,
    Entry,
    EntryKind,
    ReadState,
    Ready,
    Role,
    Snapshot,
)

from tests.datastore.raft.invariants import DRIVER_CONTRACT, InvariantViolation
from tests.datastore.raft.storage import Disk, decode_commands


@dataclass(frozen=True)
class PendingRead:
    request: int
    node: int
    issued: int  # the step it was issued at
    known: int  # the highest index known committed then


@dataclass(frozen=True)
class ReadResult:
    """A served read: what the client saw, and the (virtual) interval it took."""

    request: int
    node: int
    issued: int
    served: int
    index: int  # the applied index the answer reflects
    length: int  # the state machine's length then
    last: bytes | None  # its last command


@dataclass
class Replica:
    """One node: its durable disk, and the volatile state a crash loses."""

    id: int
    disk: Disk = field(default_factory=Disk)
    core: RaftNode | None = None
    pending: Ready | None = None  # a Ready whose disk write has not completed
    pending_sent: bool = False  # its `messages` already went out (ACK_BEFORE_FSYNC)
    # The state machine: an append-only list of (index, command).
    commands: list[tuple[int, bytes]] = field(default_factory=list)
    applied: int = 0
    applied_term: int = 0
    voters: frozenset[int] = frozenset()  # membership as of `applied`
    reads: list[tuple[ReadState, PendingRead]] = field(default_factory=list)
    ticks: int = 0  # local clock since the last start
    # What the checks track about it:
    led: tuple[int, int] | None = None  # (term, tick) of the leadership being watched
    transferred: int = -1  # tick of its last accepted leader transfer (restarts its clock)
    quorum: tuple[frozenset[int], int] = (frozenset(), -1)  # the voters it leads, since when
    reported: int = 0  # the commit index its last hard state reported
    heard: dict[int, int] = field(default_factory=dict)  # peer -> tick it last answered
    role: tuple[Role, int] | None = None  # last (role, term) seen, for the trace

    def crash(self) -> None:
        self.core = None
        self.pending = None
        self.commands = []
        self.reads = []
        self.led = self.role = None

    def started(self, core: RaftNode, bootstrap: frozenset[int]) -> None:
        """A fresh start from the disk: the state machine is the disk's snapshot."""
        self.core = core
        self.pending = None
        self.ticks = 0
        self.reported = self.disk.snap_index
        self.transferred = -1
        self.heard = {}
        self.led = self.role = None
        if self.disk.snapshot is not None:
            self.install(self.disk.snapshot)
        else:
            self.commands, self.applied, self.applied_term = [], 0, 0
            self.voters = bootstrap

    def install(self, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        self.commands = decode_commands(snapshot.data)
        self.applied, self.applied_term = meta.index, meta.term
        self.voters = meta.conf.voters

    def apply(self, entry: Entry) -> None:
        """Apply one committed entry: a command, a no-op, or a membership change."""
        if entry.index != self.applied + 1:
            raise InvariantViolation(
                DRIVER_CONTRACT,
                f"node {self.id} was given entry {entry.index} to apply after {self.applied}",
            )
        if entry.kind is EntryKind.NORMAL:
            self.commands.append((entry.index, entry.data))
        elif entry.kind is EntryKind.CONF:
            change = ConfChange.decode(entry.data)
            if change.op == "add":
                self.voters = self.voters | {change.node}
            else:
                self.voters = self.voters - {change.node}
        self.applied, self.applied_term = entry.index, entry.term

    def visible_term(self, ready: Ready, index: int) -> int | None:
        """The term at `index` in the log as the driver sees it once `ready` is taken:
        its disk, overlaid by the Ready's snapshot and entries."""
        entries = ready.entries
        if entries and index >= entries[0].index:
            at = index - entries[0].index
            return entries[at].term if at < len(entries) else None
        if ready.snapshot is not None:
            meta = ready.snapshot.meta
            return meta.term if index == meta.index else None
        return self.disk.term(index)
