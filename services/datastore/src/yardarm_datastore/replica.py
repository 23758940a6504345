"""One datastore replica: drives the pure Raft core with a clock, a disk and a network.

The loop follows the core's `Ready` contract. Leader appends go out at once; the entries
and hard state are written and fsynced on the storage thread while the event loop keeps
taking messages and requests (so the next Ready batches everything that arrived
meanwhile); only then do replies leave, committed commands reach the key-value state
machine, waiting writes get their outcome and waiting reads their answer.

A write is a proposal: it took effect exactly when the entry committed at its index has
its term. A linearizable read is a ReadIndex round: served from local state once the
state machine has applied the index the leader confirmed it still led at.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import random
import secrets
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yardarm_datastore.raft.core import NotLeader, ProposalRefused, RaftConfig, RaftNode
from yardarm_datastore.raft.types import (
    ConfChange,
    EntryKind,
    Message,
    Ready,
    Role,
    Snapshot,
    SoftState,
)
from yardarm_datastore.raft_storage import RaftStorage
from yardarm_datastore.state import Command, Entry, KVState, Outcome
from yardarm_datastore.transport import Peer, Transport

log = logging.getLogger("yardarm.datastore.replica")
NO_LEADER = "no leader is known (an election is under way); retry shortly"


class Unavailable(RuntimeError):
    """This replica cannot answer now (no leader, no quorum, closed); retry shortly."""


class LeaderChanged(Unavailable):
    """The leader a read was sent to lost its leadership before confirming it."""


class Redirect(Exception):
    """Another replica leads: send the request there."""

    def __init__(self, leader: int, url: str) -> None:
        super().__init__(f"replica {leader} leads ({url})")
        self.leader = leader
        self.url = url


@dataclass(frozen=True)
class Member:
    """How this replica reaches another: its Raft stream and its HTTP API."""

    raft: str  # host:port
    http: str  # base URL

    def peer(self, node: int) -> Peer:
        host, _, port = self.raft.rpartition(":")
        return Peer(node, host, int(port))


@dataclass(frozen=True)
class ReplicaConfig:
    node_id: int
    data_dir: Path
    raft_host: str
    raft_port: int
    members: dict[int, Member]  # the other replicas at bootstrap
    tick_s: float = 0.05
    election_ticks: int = 20
    heartbeat_ticks: int = 2
    snapshot_entries: int = 10_000
    commit_timeout_s: float = 5.0
    peer_secret: bytes | None = None  # proves this replica to its peers (transport.py)
    raft_server_ssl: ssl.SSLContext | None = None  # mutual TLS on the Raft streams
    raft_client_ssl: ssl.SSLContext | None = None


@dataclass
class Hooks:
    """Where the replica reports what it measures (metrics live in the service)."""

    on_persist: Callable[[int, float, float], None] = lambda entries, write_s, fsync_s: None
    on_soft_state: Callable[[SoftState, bool], None] = lambda state, leader_changed: None
    on_progress: Callable[[int, int], None] = lambda commit, applied: None
    on_snapshot: Callable[[int, int], None] = lambda index, size: None
    # This replica became the leader: "transfer" (its predecessor handed over) or
    # "election" (no leader was heard within an election timeout).
    on_elected: Callable[[str], None] = lambda cause: None


@dataclass
class _Proposal:
    term: int
    future: asyncio.Future[Outcome | None]


class Replica:
    """The key-value state machine behind Raft, with the API the HTTP layer needs."""

    def __init__(self, config: ReplicaConfig, hooks: Hooks | None = None) -> None:
        self.config = config
        self.hooks = hooks or Hooks()
        self.state = KVState()
        self.members: dict[int, Member] = dict(config.members)
        self._storage = RaftStorage(config.data_dir)
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="raft-disk")
        self.node: RaftNode | None = None
        self._transport: Transport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._proposals: dict[int, _Proposal] = {}
        # read request -> (the leader that confirms it, the answer)
        self._reads: dict[int, tuple[int, asyncio.Future[int]]] = {}
        self._apply_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._read_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        # Request ids are unique across restarts: a replayed log must never match a
        # request of this process's life.
        self._boot = f"{config.node_id}.{secrets.token_hex(6)}"
        self._forwarded: dict[str, asyncio.Future[Outcome | None]] = {}
        self._since_snapshot = 0
        self._compacting = False
        self._soft = SoftState(Role.FOLLOWER, 0, 0)
        self._soft_changed = asyncio.Event()  # set (and replaced) on every change
        self._leader_changes = 0
        self._failed: BaseException | None = None
        self._synced_term_vote = (0, 0)
        self._open = False

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        """Recover term, vote, log and snapshot; rebuild the state; join the group."""
        loop = asyncio.get_running_loop()
        recovered = await loop.run_in_executor(self._disk, self._storage.open)
        if recovered.truncated_bytes:
            log.warning(
                "dropped %d bytes of torn or corrupt log tail", recovered.truncated_bytes,
                extra={"event": "log_truncated", "bytes": recovered.truncated_bytes},
            )  # fmt: skip
        self._synced_term_vote = (recovered.hard_state.term, recovered.hard_state.vote)
        if recovered.snapshot is not None:
            self._restore(recovered.snapshot)
        voters = frozenset({self.config.node_id, *self.config.members})
        raft = RaftConfig(
            self.config.node_id,
            election_ticks=self.config.election_ticks,
            heartbeat_ticks=self.config.heartbeat_ticks,
        )
        self.node = RaftNode(
            raft,
            rng=random.Random(),
            voters=voters,
            hard_state=recovered.hard_state,
            snapshot=recovered.snapshot,
            entries=recovered.entries,
        )
        self._transport = Transport(
            self.config.node_id,
            host=self.config.raft_host,
            port=self.config.raft_port,
            peers=self._peers(),
            on_message=self._on_message,
            secret=self.config.peer_secret,
            server_ssl=self.config.raft_server_ssl,
            client_ssl=self.config.raft_client_ssl,
        )
        await self._transport.start()
        if len(self.node.voters) == 1 and self.config.node_id in self.node.voters:
            self.node.campaign()  # alone: no need to wait out an election timeout
        self._tasks = [
            asyncio.create_task(self._ticker(), name="raft-ticker"),
            asyncio.create_task(self._driver(), name="raft-driver"),
        ]
        self._open = True
        self._wake.set()

    async def close(self) -> None:
        self._open = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._transport is not None:
            await self._transport.close()
        self._fail_waiters(Unavailable("the replica is shutting down"))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._disk, self._storage.close)
        self._disk.shutdown(wait=True)

    @property
    def raft_port(self) -> int:
        """Where the Raft listener is (the configured port, or the one it got for 0)."""
        return self._transport.port if self._transport is not None else self.config.raft_port

    @property
    def ready(self) -> bool:
        """Serving: recovered, the loop alive, a leader known, and still a member (a
        replica removed from the group stops being ready, so clients pass it over)."""
        node = self.node
        member = node is not None and self.config.node_id in node.voters
        return self._open and self._failed is None and self._soft.leader != 0 and member

    # -- the loop --------------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        if self.node is None:
            return
        try:
            self.node.step(msg)
        except ValueError as exc:
            log.warning("dropped a bad message from %d: %s", msg.src, exc)
            return
        self._wake.set()

    async def _ticker(self) -> None:
        assert self.node is not None
        interval = self.config.tick_s
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick += interval
            if next_tick < loop.time():
                next_tick = loop.time() + interval  # a stalled loop does not burst ticks
            self.node.tick()
            self._wake.set()

    async def _driver(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                node = self.node
                assert node is not None
                while node.has_ready():
                    await self._handle(node.ready())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failed = exc
            log.exception("the Raft loop failed; restart the replica to recover")
            self._fail_waiters(Unavailable(f"the replica failed ({exc}); restart it"))
            raise

    async def _handle(self, rd: Ready) -> None:
        node = self.node
        transport = self._transport
        assert node is not None and transport is not None
        for msg in rd.early_messages:
            transport.send(msg)
        if rd.snapshot is not None or rd.entries or rd.hard_state is not None:
            # Entries, a snapshot, a new term or a vote must be durable before anything
            # goes out; a commit index alone is only a hint for restarts (etcd's MustSync).
            hs = rd.hard_state
            sync = bool(rd.snapshot is not None or rd.entries) or (
                hs is not None and (hs.term, hs.vote) != self._synced_term_vote
            )
            loop = asyncio.get_running_loop()
            write_s, fsync_s = await loop.run_in_executor(self._disk, self._persist, rd, sync)
            if hs is not None:
                self._synced_term_vote = (hs.term, hs.vote)
            if sync:
                self.hooks.on_persist(len(rd.entries), write_s, fsync_s)
        for msg in rd.messages:
            transport.send(msg)
        if rd.snapshot is not None:
            self._restore(rd.snapshot)
            self._fail_proposals_below(rd.snapshot.meta.index)
        for entry in rd.committed:
            self._apply(entry.index, entry.term, entry.kind, entry.data)
        node.advance(rd)
        for read in rd.read_states:
            _, future = self._reads.pop(read.request, (0, None))
            if future is not None and not future.done():
                future.set_result(read.index)
        self._release_applied()
        if rd.soft_state != self._soft:
            changed = rd.soft_state.leader != self._soft.leader
            if changed:
                self._leader_changes += 1
                log.info(
                    "leader is now %s in term %d (this replica: %s)",
                    rd.soft_state.leader or "unknown", rd.soft_state.term, rd.soft_state.role,
                    extra={"event": "leader_changed", "leader": rd.soft_state.leader},
                )  # fmt: skip
                # Reads waiting on another leader (or on us, if we lost it) are lost.
                self._fail_reads(
                    LeaderChanged("the leader changed before the read was confirmed"),
                    keep=rd.soft_state.leader,
                )
            if rd.soft_state.role is Role.LEADER and self._soft.role is not Role.LEADER:
                cause = "transfer" if node.elected_by_transfer else "election"
                log.info(
                    "elected leader in term %d by %s", rd.soft_state.term, cause,
                    extra={"event": "elected", "term": rd.soft_state.term, "cause": cause},
                )  # fmt: skip
                self.hooks.on_elected(cause)
            self._soft = rd.soft_state
            self._soft_changed.set()
            self._soft_changed = asyncio.Event()
            self.hooks.on_soft_state(rd.soft_state, changed)
        self.hooks.on_progress(node.commit, node.applied)
        self._maybe_snapshot()

    def _persist(self, rd: Ready, sync: bool) -> tuple[float, float]:
        started = time.perf_counter()
        self._storage.write(snapshot=rd.snapshot, entries=rd.entries, hard_state=rd.hard_state)
        written = time.perf_counter()
        if sync:
            self._storage.sync()
        return written - started, time.perf_counter() - written

    def _apply(self, index: int, term: int, kind: EntryKind, data: bytes) -> None:
        outcome: Outcome | None = None
        if kind is EntryKind.NORMAL:
            command: Command = json.loads(data)
            outcome = self.state.apply(command)
            rid = command.get("rid")
            if rid is not None:
                waiting = self._forwarded.pop(rid, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(outcome)
        elif kind is EntryKind.CONF:
            self._apply_membership(ConfChange.decode(data))
        self._since_snapshot += 1
        proposal = self._proposals.pop(index, None)
        if proposal is not None and not proposal.future.done():
            if proposal.term == term:
                proposal.future.set_result(outcome)
            else:
                proposal.future.set_exception(
                    Unavailable("leadership changed before the write committed; it did not apply")
                )

    def _apply_membership(self, change: ConfChange) -> None:
        if change.op == "add" and change.context:
            doc = json.loads(change.context)
            self.members[change.node] = Member(raft=doc["raft"], http=doc["http"])
        elif change.op == "remove":
            self.members.pop(change.node, None)
        if self._transport is not None:
            self._transport.set_peers(self._peers())
        log.info(
            "membership: %s replica %d", change.op, change.node,
            extra={"event": "membership", "op": change.op, "node": change.node},
        )  # fmt: skip

    def _peers(self) -> list[Peer]:
        return [m.peer(n) for n, m in self.members.items() if n != self.config.node_id]

    def _restore(self, snapshot: Snapshot) -> None:
        doc = json.loads(snapshot.data)
        self.state = KVState.from_snapshot(doc["kv"])
        self.members = {int(n): Member(**m) for n, m in doc["members"].items()}
        for node, member in self.config.members.items():
            self.members.setdefault(node, member)
        if self._transport is not None:
            self._transport.set_peers(self._peers())

    def _maybe_snapshot(self) -> None:
        node = self.node
        if node is None or self._compacting:
            return
        if self._since_snapshot < self.config.snapshot_entries:
            return
        self._since_snapshot = 0
        doc = {
            "kv": self.state.to_snapshot(),
            "members": {str(n): vars(m) for n, m in self.members.items()},
        }
        data = json.dumps(doc, separators=(",", ":")).encode()
        snapshot = node.compact(node.applied, data)
        if snapshot is None:
            return
        self._compacting = True
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        done = loop.run_in_executor(self._disk, self._storage.compact, snapshot)

        def compacted(future: asyncio.Future[None]) -> None:
            self._compacting = False
            if future.exception() is not None:
                log.error("log compaction failed", exc_info=future.exception())
                return
            self.hooks.on_snapshot(snapshot.meta.index, len(data))
            log.info(
                "snapshot at index %d (%d bytes) in %.3fs", snapshot.meta.index, len(data),
                time.perf_counter() - started,
                extra={"event": "snapshot", "index": snapshot.meta.index},
            )  # fmt: skip

        done.add_done_callback(compacted)

    # -- waiting -------------------------------------------------------------------

    def _release_applied(self) -> None:
        if not self._apply_waiters or self.node is None:
            return
        applied = self.node.applied
        waiting = []
        for index, future in self._apply_waiters:
            if index <= applied:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((index, future))
        self._apply_waiters = waiting

    def _fail_proposals_below(self, index: int) -> None:
        for at in [i for i in self._proposals if i <= index]:
            proposal = self._proposals.pop(at)
            if not proposal.future.done():
                proposal.future.set_exception(
                    Unavailable("the write's outcome is unknown (replaced by a snapshot); retry it")
                )

    def _fail_reads(self, exc: Exception, keep: int = 0) -> None:
        """Fail waiting reads, except those the leader `keep` is confirming."""
        reads = self._reads
        self._reads = {r: (at, f) for r, (at, f) in reads.items() if keep and at == keep}
        for request, (_, future) in reads.items():
            if request not in self._reads and not future.done():
                future.set_exception(exc)

    def _fail_waiters(self, exc: Exception) -> None:
        self._fail_reads(exc)
        proposals, self._proposals = self._proposals, {}
        for proposal in proposals.values():
            if not proposal.future.done():
                proposal.future.set_exception(exc)
        forwarded, self._forwarded = self._forwarded, {}
        waiters, self._apply_waiters = self._apply_waiters, []
        pending: list[asyncio.Future[Any]] = [*forwarded.values()]
        pending += [waiting for _, waiting in waiters]
        for future in pending:
            if not future.done():
                future.set_exception(exc)

    def _check(self) -> RaftNode:
        if self._failed is not None:
            raise Unavailable(f"the replica failed ({self._failed}); restart it")
        if not self._open or self.node is None:
            raise Unavailable("the replica is not open (recovering or shutting down)")
        return self.node

    def _redirect(self, leader: int) -> Exception:
        member = self.members.get(leader)
        if leader == 0 or member is None:
            return Unavailable(NO_LEADER)
        return Redirect(leader, member.http)

    # -- the API -------------------------------------------------------------------

    async def propose(self, command: Command) -> Outcome:
        """Commit a write through Raft and return what applying it answered.

        On the leader the entry's (term, index) tells whether it took effect. A follower
        hands the command to the leader over the Raft stream (as etcd's followers do)
        and recognizes it by a request id when its own state machine applies it, so the
        answer comes from here without a second HTTP hop. While leadership moves (a
        transfer, an election) the write waits for it to settle (`_settled`)."""
        loop = asyncio.get_running_loop()
        node = await self._settled(loop.time() + self.config.commit_timeout_s)
        future: asyncio.Future[Outcome | None] = loop.create_future()
        try:
            if node.role is Role.LEADER:
                data = json.dumps(command, separators=(",", ":"), allow_nan=False).encode()
                term, index = node.propose(data)
                self._proposals[index] = _Proposal(term, future)
            else:
                rid = f"{self._boot}.{next(self._request_ids)}"
                command = {**command, "rid": rid}
                data = json.dumps(command, separators=(",", ":"), allow_nan=False).encode()
                node.forward_proposal(data)
                self._forwarded[rid] = future
                future.add_done_callback(lambda _: self._forwarded.pop(rid, None))
        except NotLeader:
            raise Unavailable(NO_LEADER) from None
        except ProposalRefused as exc:
            raise Unavailable(str(exc)) from None
        self._wake.set()
        try:
            outcome = await asyncio.wait_for(asyncio.shield(future), self.config.commit_timeout_s)
        except TimeoutError:
            raise Unavailable(
                f"the write was not committed within {self.config.commit_timeout_s:g}s "
                "(no quorum?); its outcome is unknown: retry with the same Idempotency-Key"
            ) from None
        assert outcome is not None
        return outcome

    async def barrier(self, timeout_s: float | None = None) -> None:
        """Wait until local state reflects every write committed before this call (at
        most `timeout_s`, by default the commit timeout). A read whose leader loses its
        leadership first is asked again of the next one (reads are safe to repeat)."""
        bound = self.config.commit_timeout_s if timeout_s is None else timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        while True:
            node = await self._settled(deadline)
            request = next(self._read_ids)
            try:
                node.read_index(request)  # a follower hands it to its leader
            except NotLeader:
                raise Unavailable(NO_LEADER) from None
            confirmed: asyncio.Future[int] = loop.create_future()
            self._reads[request] = (node.leader, confirmed)
            self._wake.set()
            applied: asyncio.Future[None] = loop.create_future()
            try:
                async with asyncio.timeout_at(deadline):
                    index = await confirmed
                    if index > node.applied:
                        self._apply_waiters.append((index, applied))
                        await applied
                return
            except LeaderChanged:
                continue
            except TimeoutError:
                self._reads.pop(request, None)
                raise Unavailable(
                    f"no quorum confirmed this replica's leadership within {bound:g}s; "
                    "retry shortly"
                ) from None

    async def _settled(self, deadline: float) -> RaftNode:
        """The node once leadership is settled: a leader is known and it is not this
        replica handing over. A transfer settles within a few round trips, so a request
        waits for it rather than fail: this replica's own hand-over at most for the
        core's transfer window (an election timeout), an unknown leader at most half an
        election timeout, so a replica cut off from its group still answers promptly
        (Unavailable); never past `deadline` (the loop's clock)."""
        node = self._check()

        def settled() -> bool:
            return node.leader != 0 and not node.transferring

        if not settled():
            election_s = self.config.election_ticks * self.config.tick_s
            bound = election_s if node.transferring else election_s / 2
            remaining = deadline - asyncio.get_running_loop().time()
            await self._until(settled, min(bound, remaining))
            node = self._check()
            if not settled():
                raise Unavailable(NO_LEADER if node.leader == 0 else "leadership is moving")
        return node

    async def get(self, key: str, *, linearizable: bool = True) -> Entry | None:
        if linearizable:
            await self.barrier()
        else:
            self._check()
        return self.state.get(key)

    async def list(
        self, prefix: str, limit: int, after: str | None = None, *, linearizable: bool = True
    ) -> tuple[list[tuple[str, Entry]], str | None]:
        if linearizable:
            await self.barrier()
        else:
            self._check()
        return self.state.list(prefix, limit, after)

    async def change_membership(self, change: ConfChange) -> int:
        """Propose adding or removing one replica; returns the index it committed at."""
        node = self._check()
        try:
            term, index = node.propose_conf_change(change)
        except NotLeader as exc:
            raise self._redirect(exc.leader) from None
        future: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self._proposals[index] = _Proposal(term, future)
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(future), self.config.commit_timeout_s)
        except TimeoutError:
            raise Unavailable("the membership change did not commit in time") from None
        return index

    async def caught_up(self, timeout_s: float) -> bool:
        """Whether this replica is a voter that has applied everything its leader had
        committed a moment ago (a ReadIndex round confirmed by a quorum, within
        `timeout_s`): what readiness means, so a replica restarted into the group is not
        counted on before it has caught up."""
        if not self.ready:
            return False
        try:
            await self.barrier(timeout_s)
        except Unavailable:
            return False
        return True

    async def hand_off(self, timeout_s: float) -> int | None:
        """If this replica leads, hand leadership to its most up-to-date healthy follower
        and wait until another replica leads (at most `timeout_s`, trying again when an
        attempt lapses); the new leader's id, or None: not the leader, no follower fit
        to take over, or not done in time (the group then elects one itself once this
        replica is gone)."""
        node = self.node
        if node is None or not self._open or self._failed is not None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        attempt = self.config.election_ticks * self.config.tick_s  # the core's own limit
        while node.role is Role.LEADER and loop.time() < deadline:
            target = node.transfer_target()
            if target == 0:
                return None
            if not node.transferring:
                node.transfer_leadership(target)
                self._wake.set()
            remaining = deadline - loop.time()
            await self._until(lambda: node.role is not Role.LEADER, min(attempt, remaining))
        if node.role is Role.LEADER:
            return None
        # Stepped down: wait to hear who leads now (the first append of the new term).
        mine = self.config.node_id
        await self._until(lambda: node.leader not in (0, mine), deadline - loop.time())
        return node.leader if node.leader not in (0, mine) else None

    async def _until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `done()` (at most `timeout_s`), looking again whenever the soft
        state changes and at every tick (a transfer lapses without changing it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._soft_changed.wait(), min(remaining, self.config.tick_s)
                )
        return True

    def transfer(self, to: int) -> None:
        node = self._check()
        try:
            node.transfer_leadership(to)
        except NotLeader as exc:
            raise self._redirect(exc.leader) from None
        self._wake.set()

    def status(self) -> dict[str, Any]:
        node = self.node
        if node is None:
            return {"id": self.config.node_id, "open": False}
        transport = self._transport
        return {
            "id": node.id,
            "role": node.role.value,
            "term": node.term,
            "leader": node.leader,
            "commit": node.commit,
            "applied": node.applied,
            "last_index": node.last_index,
            "snapshot_index": node.log.snap_index,
            "voters": sorted(node.voters),
            "members": {str(n): vars(m) for n, m in sorted(self.members.items())},
            "progress": {str(n): p for n, p in node.progress().items()},
            "leader_changes": self._leader_changes,
            "transport": dataclasses.asdict(transport.stats) if transport is not None else {},
        }
