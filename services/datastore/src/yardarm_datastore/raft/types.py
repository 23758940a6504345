"""The values the Raft core exchanges with whoever drives it: entries, messages, state.

Everything here is immutable data. The core (`core.RaftNode`) consumes messages and ticks
and hands back a `Ready`; the driver (a server, or the simulator) persists, sends and
applies what it says, in that order, and calls `advance`. No type here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Role(enum.StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(enum.IntEnum):
    NORMAL = 0  # an opaque command for the state machine
    NOOP = 1  # a new leader's first entry: commits its term (data is empty)
    CONF = 2  # a membership change: data is `ConfChange.encode()`


class MsgType(enum.StrEnum):
    PRE_VOTE = "pre_vote"
    PRE_VOTE_RESP = "pre_vote_resp"
    VOTE = "vote"
    VOTE_RESP = "vote_resp"
    APPEND = "append"
    APPEND_RESP = "append_resp"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat_resp"
    SNAPSHOT = "snapshot"  # InstallSnapshot; answered with APPEND_RESP
    TIMEOUT_NOW = "timeout_now"  # leader transfer: start an election at once
    PROPOSE = "propose"  # a follower hands client commands (`entries`' data) to the leader
    READ_INDEX = "read_index"  # a follower asks the leader to confirm a read (`context`)
    READ_INDEX_RESP = "read_index_resp"  # confirmed: serve read `context` at `index`


class Mutation(enum.StrEnum):
    """Known bugs that can be switched on, so tests can prove they would catch them."""

    NO_CHECK_QUORUM = "no_check_quorum"  # leader never steps down; votes ignore leases
    COMMIT_OLD_TERM = "commit_old_term"  # count replicas of entries from older terms
    ACK_BEFORE_FSYNC = "ack_before_fsync"  # a driver sends replies before persisting


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before a node answers: its term, its vote, what it knows is
    committed (commit may be persisted lazily; it is only a hint on restart)."""

    term: int = 0
    vote: int = 0  # 0 = no vote in this term
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: frozenset[int]


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    conf: ConfState


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes  # the state machine's own encoding of its state at meta.index


@dataclass(frozen=True, slots=True)
class ConfChange:
    """Add or remove one voter (single-server changes only, so any two majorities of the
    old and new configuration overlap). `context` carries what the driver needs to reach
    a new member (its addresses), opaque to the core."""

    op: str  # "add" | "remove"
    node: int
    context: str = ""

    def encode(self) -> bytes:
        return f"{self.op}\x00{self.node}\x00{self.context}".encode()

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        op, node, context = data.decode().split("\x00", 2)
        if op not in ("add", "remove"):
            raise ValueError(f"unknown membership change {op!r}")
        return cls(op, int(node), context)


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft RPC or reply. Fields unused by a type keep their defaults.

    - VOTE / PRE_VOTE: `index`/`log_term` = candidate's last log index/term; `force` set
      by a leader transfer (ignore the leader lease).
    - APPEND: `index`/`log_term` = the entry before `entries`; `commit` = leader's commit.
    - APPEND_RESP: `index` = highest index now matching (or, when `reject`, the index
      that was refused); `reject_hint` = the follower's last index, to skip back fast.
    - HEARTBEAT / HEARTBEAT_RESP: `commit` (capped at what the follower matches) and
      `context`, the leader's read-index round being confirmed (0 = none).
    - SNAPSHOT: `snapshot`; answered by APPEND_RESP with `index` = snapshot index.
    - PROPOSE: `entries` carry the commands (their term and index are assigned by the
      leader); READ_INDEX / READ_INDEX_RESP: `context` = the follower's read request,
      `index` = where it may be served.
    """

    type: MsgType
    src: int
    dst: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: int = 0
    force: bool = False
    snapshot: Snapshot | None = None


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied `index`."""

    request: int
    index: int


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts worth reporting (metrics, redirects); never persisted."""

    role: Role
    leader: int  # 0 = unknown
    term: int


@dataclass(slots=True)
class Ready:
    """Work for the driver, to be done in this order:

    1. persist `snapshot` (if any), then `entries` (an entry at an index already stored
       replaces it and everything after it), then `hard_state` (if any), and fsync;
    2. send `messages` (replies that promise durability: never before step 1);
    3. apply `snapshot` (if any) and then `committed`, in order, to the state machine;
       serve `read_states` whose index is applied;
    4. call `node.advance(ready)`.

    `early_messages` promise nothing about this node's disk and may be sent before step
    1: the leader's appends and heartbeats (it counts its own copy only after `advance`,
    so its disk write overlaps its followers'), and requests forwarded to the leader.
    """

    soft_state: SoftState
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    early_messages: list[Message] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.hard_state
            or self.snapshot
            or self.entries
            or self.early_messages
            or self.messages
            or self.committed
            or self.read_states
        )
