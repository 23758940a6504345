"""The Raft consensus algorithm as a pure state machine (after etcd's raft library).

A `RaftNode` never touches a socket, a clock or a disk. Time is `tick()`, the network is
`step(message)`, and everything the outside world must do comes back from `ready()`:
entries and hard state to persist, messages to send, committed entries to apply, reads
to serve. That is what lets one seeded simulator drive many nodes through crashes and
partitions deterministically, and the server drive one node over TCP and fsync.

Beyond the paper's core: pre-vote (a node that cannot win does not raise terms),
check-quorum (a leader that lost its majority steps down, and followers that hear from a
leader ignore vote requests, which is what makes leases sound), batched and pipelined
replication, ReadIndex and lease reads, leader transfer, InstallSnapshot, and
single-server membership changes that take effect when committed.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from yardarm_datastore.raft.log import RaftLog
from yardarm_datastore.raft.progress import Progress, ProgressState
from yardarm_datastore.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    Mutation,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

# Messages that promise nothing about the sender's disk (see `Ready.early_messages`).
EARLY = frozenset(
    {
        MsgType.APPEND,
        MsgType.HEARTBEAT,
        MsgType.SNAPSHOT,
        MsgType.TIMEOUT_NOW,
        MsgType.PROPOSE,
        MsgType.READ_INDEX,
        MsgType.READ_INDEX_RESP,
    }
)


class NotLeader(Exception):
    """Only the leader takes proposals and reads; `leader` is who is (0 if unknown)."""

    def __init__(self, leader: int) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class ProposalRefused(Exception):
    """The leader cannot take this proposal now (a transfer or membership change)."""


@dataclass(frozen=True)
class RaftConfig:
    id: int
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_entries_per_msg: int = 256
    max_inflight: int = 64
    pre_vote: bool = True
    check_quorum: bool = True
    read_mode: str = "index"  # "index" (ReadIndex) | "lease"
    lease_drift_ticks: int = 1
    mutations: frozenset[Mutation] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.id < 1:
            raise ValueError("node ids start at 1")
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.read_mode not in ("index", "lease"):
            raise ValueError(f"read_mode must be 'index' or 'lease' (got {self.read_mode!r})")
        if self.read_mode == "lease" and not (
            self.check_quorum and 0 <= self.lease_drift_ticks < self.election_ticks
        ):
            raise ValueError("lease reads need check_quorum and a drift below the election")


@dataclass
class _PendingRead:
    context: int  # the heartbeat round that must be acknowledged by a quorum
    origin: int  # the node that asked (this leader, or a follower that forwarded it)
    request: int
    index: int


class RaftNode:
    """One replica's consensus state. Not thread-safe; drive it from one place."""

    def __init__(
        self,
        config: RaftConfig,
        *,
        rng: random.Random,
        voters: frozenset[int],
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
    ) -> None:
        self.config = config
        self.id = config.id
        self._rng = rng
        self._check_quorum = (
            config.check_quorum and Mutation.NO_CHECK_QUORUM not in config.mutations
        )
        hs = hard_state or HardState()
        self.term = hs.term
        self.vote = hs.vote
        self.log = RaftLog()
        self.voters = voters
        self._conf_history: list[tuple[int, frozenset[int]]] = []
        self._snapshot: Snapshot | None = None
        if snapshot is not None:
            self.log.restore(snapshot.meta.index, snapshot.meta.term)
            self.log.persisted = snapshot.meta.index
            self.voters = snapshot.meta.conf.voters
            self._snapshot = snapshot
        self._conf_history.append((self.log.snap_index, self.voters))
        if entries:
            self.log.append(entries)
        self.log.handed = self.log.persisted = self.log.last_index
        self.commit = self.log.snap_index
        self.applied = self.log.snap_index
        self._pending_snapshot: Snapshot | None = None
        self._emitted_hs = HardState(hs.term, hs.vote, hs.commit)
        self.role = Role.FOLLOWER
        self.leader = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._votes: dict[int, bool] = {}
        self._progress: dict[int, Progress] = {}
        self._transferee = 0
        self._campaign_forced = False  # the running campaign was asked for by a transfer
        # Forwarded commands, never appended, that wait for a leader: those that reached
        # this leader while it handed over (appended if the transfer lapses) or this node
        # while it knew no leader; passed to the next leader it hears from.
        self._held: list[bytes] = []
        self._held_at = 0
        self.elected_by_transfer = False  # this leadership began with a transfer
        self._pending_conf = 0
        self._msgs: list[Message] = []
        self._early: list[Message] = []
        self._read_states: list[ReadState] = []
        self._reads: list[_PendingRead] = []
        self._unsent_reads: list[tuple[int, int, int]] = []  # (origin, request, index)
        self._reads_awaiting_commit: list[tuple[int, int]] = []  # (origin, request)
        self._hb_seq = 0
        self._hb_sent_tick: dict[int, int] = {}
        self._hb_acks: dict[int, int] = {}
        self._last_heard: dict[int, int] = {}  # leader: follower -> tick of its last answer
        self._now = 0
        self._timeout_now_tick = -(10**9)
        self._commit_to(min(hs.commit, self.log.last_index))

    # -- introspection ---------------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader, self.term)

    def progress(self) -> dict[int, tuple[int, int, str]]:
        """Leader only: follower -> (match, next, state), for status pages."""
        return {n: (p.match, p.next, p.state.value) for n, p in self._progress.items()}

    def conf_at(self, index: int) -> frozenset[int]:
        """The membership in force once `index` was committed."""
        voters = self._conf_history[0][1]
        for at, conf in self._conf_history:
            if at > index:
                break
            voters = conf
        return voters

    # -- time --------------------------------------------------------------------------

    def _random_timeout(self) -> int:
        base = self.config.election_ticks
        return base + self._rng.randrange(base)

    def tick(self) -> None:
        self._now += 1
        self._election_elapsed += 1
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        if self._held and self._now - self._held_at > self.config.election_ticks:
            self._held = []  # no leader heard from in time: the callers time out
        if self._election_elapsed >= self._timeout and self._promotable():
            self._election_elapsed = 0
            self._start_election(pre_vote=self.config.pre_vote)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        for pr in self._progress.values():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= self.config.election_ticks:
                    pr.become_probe()  # the snapshot was lost: offer it again
        if self._election_elapsed >= self.config.election_ticks:
            self._election_elapsed = 0
            if self._check_quorum and not self._quorum_active():
                self._become_follower(self.term, 0)
                return
            if self._transferee:
                self._transferee = 0  # the transfer took too long; take proposals again
                self._append_held()
        if self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = sum(1 for n in self.voters if n == self.id or self._progress_of(n).recent_active)
        for pr in self._progress.values():
            pr.recent_active = False
        return active >= self.quorum

    def _promotable(self) -> bool:
        return self.id in self.voters

    # -- elections ---------------------------------------------------------------------

    def campaign(self) -> None:
        """Start an election now (a test's shortcut, or a single-node bootstrap)."""
        if self.role is not Role.LEADER and self._promotable():
            self._start_election(pre_vote=self.config.pre_vote)

    def _start_election(self, *, pre_vote: bool, transfer: bool = False) -> None:
        if pre_vote:
            self.role = Role.PRE_CANDIDATE
            self.leader = 0
            self._votes = {self.id: True}
            msg_type, term = MsgType.PRE_VOTE, self.term + 1
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.id
            self._votes = {self.id: True}
            msg_type, term = MsgType.VOTE, self.term
        self._campaign_forced = transfer
        self._timeout = self._random_timeout()
        if self._tally() >= self.quorum:
            self._won(msg_type)
            return
        for node in self.voters:
            if node != self.id:
                self._send(
                    Message(
                        msg_type,
                        self.id,
                        node,
                        term,
                        log_term=self.log.last_term,
                        index=self.log.last_index,
                        force=transfer,
                    )
                )

    def _tally(self) -> int:
        return sum(1 for n, granted in self._votes.items() if granted and n in self.voters)

    def _won(self, msg_type: MsgType) -> None:
        if msg_type is MsgType.PRE_VOTE:
            self._start_election(pre_vote=False)
        else:
            self._become_leader()

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
        self.leader = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._votes = {}
        self._transferee = 0
        self._progress = {}
        self._reads = []
        self._unsent_reads = []
        self._reads_awaiting_commit = []
        self._hb_acks = {}
        self._hb_sent_tick = {}
        self._last_heard = {}

    def _become_follower(self, term: int, leader: int) -> None:
        if self.role is Role.LEADER and self._held:
            self._held_at = self._now  # handed over: the successor is awaited from now on
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self.elected_by_transfer = self._campaign_forced
        for node in self.voters:
            if node != self.id:
                self._progress[node] = self._new_progress()
        self._pending_conf = self.log.last_index  # no membership change before this commits
        self._append_local([(EntryKind.NOOP, b"")])
        self._append_held()

    def _append_held(self) -> None:
        if self._held:
            held, self._held = self._held, []
            self._append_local([(EntryKind.NORMAL, data) for data in held])

    def _new_progress(self) -> Progress:
        pr = Progress(self.log.last_index + 1, self.config.max_inflight)
        pr.recent_active = True
        return pr

    def _progress_of(self, node: int) -> Progress:
        pr = self._progress.get(node)
        if pr is None:
            pr = self._progress[node] = self._new_progress()
        return pr

    # -- messages ----------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        if msg.type in EARLY:
            self._early.append(msg)
        else:
            self._msgs.append(msg)

    def step(self, msg: Message) -> None:
        """Take one message from the network: any term, possibly stale or duplicated."""
        if msg.dst != self.id:
            return
        if msg.term > self.term:
            voting = msg.type in (MsgType.VOTE, MsgType.PRE_VOTE)
            if voting and self._in_lease() and not msg.force:
                return  # we hear from a leader: a disruptive candidate is ignored
            if msg.type is MsgType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif msg.type is MsgType.PRE_VOTE_RESP and not msg.reject:
                pass  # granted pre-votes carry the future term
            elif msg.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
                self._become_follower(msg.term, msg.src)
            else:
                self._become_follower(msg.term, 0)
        elif msg.term < self.term:
            if msg.type is MsgType.PROPOSE:
                # Commands, not a claim to lead: sent to a leader that has stepped down
                # since (a hand-over), they are passed on rather than lost.
                self._on_propose(msg)
                return
            self._step_stale(msg)
            return
        handler = _HANDLERS.get(msg.type)
        if handler is not None:
            handler(self, msg)

    def _in_lease(self) -> bool:
        """Whether to ignore vote requests: a leader was heard from within an election
        timeout, or this node restarted less than one ago (it may have confirmed a
        leader's lease just before it went down, and forgot whom it heard from)."""
        if not self._check_quorum:
            return False
        timeout = self.config.election_ticks
        if self.leader != 0 and self._election_elapsed < timeout:
            return True
        return self.term > 0 and self._now < timeout

    def _step_stale(self, msg: Message) -> None:
        if msg.type in (MsgType.APPEND, MsgType.HEARTBEAT) and (
            self._check_quorum or self.config.pre_vote
        ):
            # A deposed leader that missed the new term: tell it, so it steps down
            # (with pre-vote it would otherwise never see a higher term).
            self._send(Message(MsgType.APPEND_RESP, self.id, msg.src, self.term))
        elif msg.type is MsgType.PRE_VOTE:
            self._send(Message(MsgType.PRE_VOTE_RESP, self.id, msg.src, self.term, reject=True))

    def _on_vote(self, msg: Message) -> None:
        resp = MsgType.VOTE_RESP if msg.type is MsgType.VOTE else MsgType.PRE_VOTE_RESP
        can_vote = (
            self.vote == msg.src
            or (self.vote == 0 and self.leader == 0)
            or (msg.type is MsgType.PRE_VOTE and msg.term > self.term)
        )
        up_to_date = msg.log_term > self.log.last_term or (
            msg.log_term == self.log.last_term and msg.index >= self.log.last_index
        )
        if can_vote and up_to_date:
            self._send(Message(resp, self.id, msg.src, msg.term))
            if msg.type is MsgType.VOTE:
                self.vote = msg.src
                self._election_elapsed = 0
        else:
            self._send(Message(resp, self.id, msg.src, self.term, reject=True))

    def _on_vote_resp(self, msg: Message) -> None:
        wanted = Role.CANDIDATE if msg.type is MsgType.VOTE_RESP else Role.PRE_CANDIDATE
        if self.role is not wanted:
            return
        self._votes.setdefault(msg.src, not msg.reject)
        granted = self._tally()
        rejected = sum(1 for n, g in self._votes.items() if not g and n in self.voters)
        if granted >= self.quorum:
            self._won(MsgType.PRE_VOTE if wanted is Role.PRE_CANDIDATE else MsgType.VOTE)
        elif rejected >= self.quorum:
            self._become_follower(self.term, 0)

    # -- replication: follower side ----------------------------------------------------

    def _heard_from_leader(self, msg: Message) -> None:
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, msg.src)
        self.leader = msg.src
        self._election_elapsed = 0
        if self._held:  # what was forwarded here during a hand-over goes to the successor
            held, self._held = self._held, []
            entries = tuple(Entry(0, 0, EntryKind.NORMAL, data) for data in held)
            self._send(Message(MsgType.PROPOSE, self.id, msg.src, self.term, entries=entries))

    def _on_append(self, msg: Message) -> None:
        self._heard_from_leader(msg)
        reply = Message(MsgType.APPEND_RESP, self.id, msg.src, self.term)
        if msg.index < self.commit:
            self._send(_with(reply, index=self.commit))
            return
        if not self.log.matches(msg.index, msg.log_term):
            hint = self.log.last_index_at_or_below(msg.index, msg.log_term)
            self._send(_with(reply, index=msg.index, reject=True, reject_hint=hint))
            return
        last_new = msg.index + len(msg.entries)
        conflict = self.log.find_conflict(msg.entries)
        if conflict:
            if conflict <= self.commit:
                raise AssertionError(f"entry {conflict} conflicts with the committed log")
            self.log.append(msg.entries[conflict - msg.index - 1 :])
        self._commit_to(min(msg.commit, last_new))
        self._send(_with(reply, index=last_new))

    def _on_heartbeat(self, msg: Message) -> None:
        self._heard_from_leader(msg)
        self._commit_to(min(msg.commit, self.log.last_index))
        self._send(
            Message(MsgType.HEARTBEAT_RESP, self.id, msg.src, self.term, context=msg.context)
        )

    def _on_snapshot(self, msg: Message) -> None:
        self._heard_from_leader(msg)
        snap = msg.snapshot
        assert snap is not None
        meta = snap.meta
        reply = Message(MsgType.APPEND_RESP, self.id, msg.src, self.term)
        if meta.index <= self.commit:
            self._send(_with(reply, index=self.commit))
            return
        if self.log.matches(meta.index, meta.term):
            self._commit_to(meta.index)  # we have it all: just learn it is committed
        else:
            self.log.restore(meta.index, meta.term)
            self.voters = meta.conf.voters
            self._conf_history = [(meta.index, self.voters)]
            self.commit = meta.index
            self._pending_snapshot = snap
        self._send(_with(reply, index=meta.index))

    def _on_timeout_now(self, msg: Message) -> None:
        if self._promotable():
            self._start_election(pre_vote=False, transfer=True)

    # -- replication: leader side ------------------------------------------------------

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append a command; (term, index) identify it: it took effect if and only if
        the entry committed at that index has that term."""
        self._check_can_propose()
        return self._append_local([(EntryKind.NORMAL, data)])

    def forward_proposal(self, data: bytes) -> None:
        """A follower's way to propose: hand the command to the leader, which appends it
        (or, no longer leading, passes it on: `_on_propose`). Nothing reports back: the
        caller recognizes its command when it is applied, or gives up after a timeout
        (the outcome is then unknown)."""
        if self.role is Role.LEADER:
            self.propose(data)
            return
        if not self.leader:
            raise NotLeader(0)
        self._send(
            Message(
                MsgType.PROPOSE,
                self.id,
                self.leader,
                self.term,
                entries=(Entry(0, 0, EntryKind.NORMAL, data),),
            )
        )

    def _on_propose(self, msg: Message) -> None:
        """Forwarded commands, in whatever term they were sent: a leader appends them, a
        follower passes them to its leader, and a leader handing over (or a node that
        knows no leader) holds them for the next leader it hears from (at most an election
        timeout without one). Never appended anywhere yet, so each is added once."""
        if self.role is Role.LEADER and not self._transferee:
            self._append_local([(EntryKind.NORMAL, e.data) for e in msg.entries])
        elif self.role is not Role.LEADER and self.leader:
            self._send(
                Message(MsgType.PROPOSE, self.id, self.leader, self.term, entries=msg.entries)
            )
        else:
            if not self._held:
                self._held_at = self._now
            self._held.extend(e.data for e in msg.entries)

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        """Add or remove one voter. Refused while another change is uncommitted, or until
        this leader has committed an entry of its own term (Ongaro's fix for the
        single-server change bug)."""
        self._check_can_propose()
        if self._pending_conf > self.commit:
            raise ProposalRefused("a membership change is still in progress; retry shortly")
        if change.op == "add" and change.node in self.voters:
            raise ProposalRefused(f"node {change.node} is already a member")
        if change.op == "remove" and change.node not in self.voters:
            raise ProposalRefused(f"node {change.node} is not a member")
        if change.op == "remove" and len(self.voters) == 1:
            raise ProposalRefused("cannot remove the last member")
        at = self._append_local([(EntryKind.CONF, change.encode())])
        self._pending_conf = at[1]
        return at

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self._transferee:
            raise ProposalRefused(f"leadership is moving to node {self._transferee}")

    def _append_local(self, items: list[tuple[EntryKind, bytes]]) -> tuple[int, int]:
        index = self.log.last_index
        self.log.append(
            [Entry(self.term, index + i + 1, kind, data) for i, (kind, data) in enumerate(items)]
        )
        return self.term, self.log.last_index

    def _flush(self) -> None:
        """Send what each follower is owed: new entries (batched, pipelined), a commit
        they have not seen, a snapshot, and a heartbeat round for waiting reads."""
        if self.role is not Role.LEADER:
            return
        for node in self.voters:
            if node != self.id:
                self._send_append(node, self._progress_of(node), allow_empty=False)
        if self._unsent_reads:
            self._broadcast_heartbeat()

    def _send_append(self, node: int, pr: Progress, *, allow_empty: bool) -> None:
        while not pr.blocked():
            prev = pr.next - 1
            prev_term = self.log.term(prev)
            if prev_term is None or (prev < self.log.snap_index):
                self._send_snapshot(node, pr)
                return
            last = min(self.log.last_index, prev + self.config.max_entries_per_msg)
            entries = tuple(self.log.slice(prev + 1, last)) if last > prev else ()
            probing = pr.state is ProgressState.PROBE and pr.match + 1 != pr.next
            if not (entries or allow_empty or probing or pr.sent_commit < self.commit):
                return
            self._send(
                Message(
                    MsgType.APPEND,
                    self.id,
                    node,
                    self.term,
                    log_term=prev_term,
                    index=prev,
                    entries=entries,
                    commit=self.commit,
                )
            )
            pr.sent_commit = self.commit
            pr.sent(prev + len(entries))
            allow_empty = False
            if not entries:
                return

    def _send_snapshot(self, node: int, pr: Progress) -> None:
        snap = self._snapshot
        if snap is None:
            raise AssertionError("entries were compacted without a snapshot")
        pr.become_snapshot(snap.meta.index)
        self._send(Message(MsgType.SNAPSHOT, self.id, node, self.term, snapshot=snap))

    def _responder(self, msg: Message) -> Progress | None:
        """The progress of the follower that answered, if this node still leads it."""
        pr = self._progress.get(msg.src) if self.role is Role.LEADER else None
        if pr is not None:
            pr.recent_active = True
            self._last_heard[msg.src] = self._now
        return pr

    def _on_append_resp(self, msg: Message) -> None:
        pr = self._responder(msg)
        if pr is None:
            return
        if msg.reject:
            if pr.rejected(msg.index, msg.reject_hint):
                self._send_append(msg.src, pr, allow_empty=True)
            return
        was_paused = pr.blocked()
        if pr.update(msg.index):
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                pr.become_probe()
                pr.become_replicate()
            self._maybe_commit()
            if msg.src == self._transferee and pr.match == self.log.last_index:
                self._send_timeout_now(msg.src)
        elif was_paused and pr.state is ProgressState.PROBE:
            pr.paused = False
        self._send_append(msg.src, pr, allow_empty=False)

    def _maybe_commit(self) -> None:
        matches = sorted(
            (self.log.persisted if n == self.id else self._progress_of(n).match)
            for n in self.voters
        )
        index = matches[len(matches) - self.quorum]
        if index <= self.commit:
            return
        if (
            self.log.term(index) != self.term
            and Mutation.COMMIT_OLD_TERM not in self.config.mutations
        ):
            return  # only entries of the current term commit by counting (Raft §5.4.2)
        self._commit_to(index)
        self._release_reads_awaiting_commit()

    def _commit_to(self, index: int) -> None:
        if index <= self.commit:
            return
        for entry in self.log.slice(max(self.commit, self.log.snap_index) + 1, index):
            if entry.kind is EntryKind.CONF:
                self._apply_conf(entry)
        self.commit = index

    def _apply_conf(self, entry: Entry) -> None:
        change = ConfChange.decode(entry.data)
        add = change.op == "add"
        voters = self.voters | {change.node} if add else self.voters - {change.node}
        self.voters = voters
        self._conf_history.append((entry.index, voters))
        if self.role is Role.LEADER:
            if change.op == "add" and change.node != self.id:
                self._progress_of(change.node)
            elif change.op == "remove":
                self._progress.pop(change.node, None)
                if change.node == self.id:
                    self._become_follower(self.term, 0)
                elif self._transferee == change.node:
                    self._transferee = 0

    # -- heartbeats and reads ----------------------------------------------------------

    def _broadcast_heartbeat(self) -> None:
        self._hb_seq += 1
        self._hb_sent_tick[self._hb_seq] = self._now
        for origin, request, index in self._unsent_reads:
            self._reads.append(_PendingRead(self._hb_seq, origin, request, index))
        self._unsent_reads = []
        for node in self.voters:
            if node == self.id:
                continue
            pr = self._progress_of(node)
            self._send(
                Message(
                    MsgType.HEARTBEAT,
                    self.id,
                    node,
                    self.term,
                    commit=min(self.commit, pr.match),
                    context=self._hb_seq,
                )
            )
        self._confirm_rounds()

    def _on_heartbeat_resp(self, msg: Message) -> None:
        pr = self._responder(msg)
        if pr is None:
            return
        if pr.state is ProgressState.PROBE:
            pr.paused = False
        elif pr.state is ProgressState.REPLICATE and pr.blocked():
            pr.inflight.popleft()  # an append may have been lost: let one more go
        if pr.match < self.log.last_index or pr.sent_commit < self.commit:
            self._send_append(msg.src, pr, allow_empty=pr.match < self.log.last_index)
        if msg.context > self._hb_acks.get(msg.src, 0):
            self._hb_acks[msg.src] = msg.context
            self._confirm_rounds()

    def _confirmed_round(self) -> int:
        """The newest heartbeat round a quorum (this leader included) has answered."""
        acks = sorted(
            (self._hb_seq if n == self.id else self._hb_acks.get(n, 0)) for n in self.voters
        )
        return acks[len(acks) - self.quorum]

    def _confirm_rounds(self) -> None:
        confirmed = self._confirmed_round()
        while self._reads and self._reads[0].context <= confirmed:
            read = self._reads.pop(0)
            self._answer_read(read.origin, read.request, read.index)
        for old in [s for s in self._hb_sent_tick if s < confirmed]:
            del self._hb_sent_tick[old]

    def _lease_valid(self) -> bool:
        confirmed = self._confirmed_round()
        sent = self._hb_sent_tick.get(confirmed)
        if sent is None:
            return False
        lease = self.config.election_ticks - self.config.lease_drift_ticks
        if self._now < self._timeout_now_tick + self.config.election_ticks:
            return False  # a transfer's forced election ignores leases
        return self._now < sent + lease

    def read_index(self, request: int) -> None:
        """Ask for a linearizable read; a `ReadState(request, index)` follows in a Ready
        once the leader is known to still lead (a quorum answered a heartbeat sent after
        the request) and the read may be served at `index`. A follower forwards the
        request to its leader (NotLeader when it knows none)."""
        if self.role is not Role.LEADER:
            if not self.leader:
                raise NotLeader(0)
            self._send(
                Message(MsgType.READ_INDEX, self.id, self.leader, self.term, context=request)
            )
            return
        self._leader_read(self.id, request)

    def _leader_read(self, origin: int, request: int) -> None:
        if self.log.term(self.commit) != self.term:
            self._reads_awaiting_commit.append((origin, request))  # commit not yet known
            return
        lease = self.config.read_mode == "lease" and self._lease_valid()
        if len(self.voters) == 1 or lease:
            self._answer_read(origin, request, self.commit)
        else:
            self._unsent_reads.append((origin, request, self.commit))

    def _answer_read(self, origin: int, request: int, index: int) -> None:
        if origin == self.id:
            self._read_states.append(ReadState(request, index))
        else:
            self._send(
                Message(
                    MsgType.READ_INDEX_RESP,
                    self.id,
                    origin,
                    self.term,
                    context=request,
                    index=index,
                )
            )

    def _on_read_index(self, msg: Message) -> None:
        if self.role is Role.LEADER:
            self._leader_read(msg.src, msg.context)

    def _on_read_index_resp(self, msg: Message) -> None:
        self._read_states.append(ReadState(msg.context, msg.index))

    def _release_reads_awaiting_commit(self) -> None:
        if self._reads_awaiting_commit and self.log.term(self.commit) == self.term:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for origin, request in waiting:
                self._leader_read(origin, request)

    # -- leader transfer -----------------------------------------------------------------

    @property
    def transferring(self) -> bool:
        """Whether this leader is handing leadership over: it refuses proposals of its
        own and holds those forwarded to it for its successor."""
        return self.role is Role.LEADER and self._transferee != 0

    def transfer_target(self) -> int:
        """The follower best placed to take over: among the voters heard from within half
        an election timeout (alive and reachable) and replicated to normally (not
        probed, not sent a snapshot), the one whose log matches furthest; 0 when no
        follower qualifies. Leader only."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        since = self._now - self.config.election_ticks // 2
        ranked = [
            (pr.match, node)
            for node, pr in self._progress.items()
            if node in self.voters
            and pr.state is ProgressState.REPLICATE
            and self._last_heard.get(node, since - 1) >= since
        ]
        return max(ranked)[1] if ranked else 0

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to `to` (after bringing its log up to date); proposals are
        refused meanwhile (forwarded ones held for the successor), and the attempt ends
        after an election timeout."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if to == self.id:
            return
        if to not in self.voters:
            raise ProposalRefused(f"node {to} is not a member")
        self._transferee = to
        self._election_elapsed = 0
        pr = self._progress_of(to)
        if pr.match == self.log.last_index:
            self._send_timeout_now(to)
        else:
            self._send_append(to, pr, allow_empty=True)

    def _send_timeout_now(self, to: int) -> None:
        self._timeout_now_tick = self._now
        self._send(Message(MsgType.TIMEOUT_NOW, self.id, to, self.term))

    # -- the driver's side ---------------------------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    def has_ready(self) -> bool:
        self._flush()
        return bool(
            self._msgs
            or self._early
            or self._read_states
            or self._pending_snapshot is not None
            or self.log.handed < self.log.last_index
            or self.applied < min(self.commit, self.log.last_index)
            or self._hard_state() != self._emitted_hs
        )

    def ready(self) -> Ready:
        """Everything to persist, send and apply now (see `Ready` for the order)."""
        self._flush()
        hs = self._hard_state()
        rd = Ready(soft_state=self.soft_state())
        if hs != self._emitted_hs:
            rd.hard_state = hs
            self._emitted_hs = hs
        rd.snapshot = self._pending_snapshot
        self._pending_snapshot = None
        rd.entries = self.log.unhanded()
        self.log.handed = self.log.last_index
        low = max(self.applied, self.log.snap_index) + 1
        high = min(self.commit, self.log.last_index)
        rd.committed = self.log.slice(low, high) if high >= low else []
        rd.early_messages, self._early = self._early, []
        rd.messages, self._msgs = self._msgs, []
        rd.read_states, self._read_states = self._read_states, []
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver did what `rd` asked: its entries are durable, its commands applied."""
        if rd.snapshot is not None:
            self.log.persisted = max(self.log.persisted, rd.snapshot.meta.index)
            self._snapshot = rd.snapshot
            self.applied = max(self.applied, rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.mark_persisted(last.index, last.term)
        if rd.committed:
            self.applied = max(self.applied, rd.committed[-1].index)
        if self.role is Role.LEADER:
            self._maybe_commit()

    def compact(self, index: int, data: bytes) -> Snapshot | None:
        """The driver captured its state machine at `index` (<= applied) as `data`: keep
        that as the snapshot, drop the log up to it, and return the snapshot to persist.
        None when a snapshot at or past `index` is already held (one the leader sent may
        have overtaken the driver's capture)."""
        if index > self.applied:
            raise ValueError(f"cannot compact to {index}: only {self.applied} is applied")
        if index <= self.log.snap_index:
            return None
        term = self.log.term(index)
        if term is None:
            raise ValueError(f"cannot compact to {index}: not in the log")
        snap = Snapshot(SnapshotMeta(index, term, ConfState(self.conf_at(index))), data)
        self.log.compact(index)
        self._snapshot = snap
        later = [(i, v) for i, v in self._conf_history if i > index]
        self._conf_history = [(index, snap.meta.conf.voters), *later]
        return snap


def _with(msg: Message, **changes: object) -> Message:
    return dataclasses.replace(msg, **changes)  # type: ignore[arg-type]


_HANDLERS = {
    MsgType.PRE_VOTE: RaftNode._on_vote,
    MsgType.VOTE: RaftNode._on_vote,
    MsgType.PRE_VOTE_RESP: RaftNode._on_vote_resp,
    MsgType.VOTE_RESP: RaftNode._on_vote_resp,
    MsgType.APPEND: RaftNode._on_append,
    MsgType.APPEND_RESP: RaftNode._on_append_resp,
    MsgType.HEARTBEAT: RaftNode._on_heartbeat,
    MsgType.HEARTBEAT_RESP: RaftNode._on_heartbeat_resp,
    MsgType.SNAPSHOT: RaftNode._on_snapshot,
    MsgType.TIMEOUT_NOW: RaftNode._on_timeout_now,
    MsgType.PROPOSE: RaftNode._on_propose,
    MsgType.READ_INDEX: RaftNode._on_read_index,
    MsgType.READ_INDEX_RESP: RaftNode._on_read_index_resp,
}
