"""The properties every run must keep, checked as the simulation goes.

Raft's safety properties (election safety, log matching, leader completeness,
state-machine safety) plus what a client of the datastore relies on: an acknowledged
write is never lost, a read reflects every write committed before it was issued, and a
leader cut off from its majority gives up (check-quorum), which lease reads depend on.

The monitor sees the cluster only through what a driver sees (Ready contents, applied
entries, served reads) plus a read-only look at a new leader's log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from yardarm_datastore.raft.types import Entry, EntryKind, HardState

ELECTION_SAFETY = "election safety"
LOG_MATCHING = "log matching"
LEADER_COMPLETENESS = "leader completeness"
STATE_MACHINE_SAFETY = "state-machine safety"
DURABILITY = "acknowledged-write durability"
READ_LINEARIZABILITY = "read linearizability"
VOTE_DURABILITY = "vote durability"
CHECK_QUORUM = "check-quorum step-down"
LIVENESS = "liveness"
DRIVER_CONTRACT = "driver contract"
CORE_ERROR = "core raised"

SAFETY = frozenset(
    {
        ELECTION_SAFETY,
        LOG_MATCHING,
        LEADER_COMPLETENESS,
        STATE_MACHINE_SAFETY,
        DURABILITY,
        VOTE_DURABILITY,
    }
)


class InvariantViolation(AssertionError):
    """A run broke an invariant. Carries what is needed to replay and read it: the seed
    and replay command (set by the simulation), the step, and the last events."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(invariant, detail)
        self.invariant = invariant
        self.detail = detail
        self.step = 0
        self.trace: list[str] = []
        self.seed: int | None = None
        self.replay = ""

    def __str__(self) -> str:
        where = f"seed {self.seed}, " if self.seed is not None else ""
        lines = [f"{self.invariant} violated ({where}step {self.step}): {self.detail}"]
        if self.replay:
            lines.append(f"replay: {self.replay}")
        if self.trace:
            lines.append("recent events (oldest first):")
            lines.extend(f"  {event}" for event in self.trace)
        return "\n".join(lines)


def _describe(entry: Entry) -> str:
    kind = "" if entry.kind is EntryKind.NORMAL else f" {entry.kind.name}"
    return f"({entry.index}, t{entry.term}{kind} {entry.data!r})"


class SafetyMonitor:
    """Global knowledge gathered over a whole run, and the checks against it."""

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}  # term -> the one node that led it
        self._log: dict[tuple[int, int], tuple[int, EntryKind, bytes]] = {}
        self.applied: dict[int, Entry] = {}  # index -> the entry every node must apply there
        # index -> (term of the entry committed there, a term by which it was committed)
        self._committed: dict[int, tuple[int, int]] = {}
        self._value_at: dict[bytes, int] = {}  # command -> the index it was applied at
        self.acked: dict[int, bytes] = {}  # index -> command a client was told committed
        self.at_least_once: set[bytes] = set()  # commands that may apply more than once
        self.known_committed = 0  # the highest index any node reported committed

    # -- elections -----------------------------------------------------------------------

    def leader(self, node: int, term: int) -> None:
        """Election safety: at most one leader per term, over the whole run."""
        seen = self.leaders.setdefault(term, node)
        if seen != node:
            raise InvariantViolation(
                ELECTION_SAFETY, f"nodes {seen} and {node} were both leader in term {term}"
            )

    def new_leader(
        self, node: int, term: int, log_term: Callable[[int], int | None], snap_index: int
    ) -> None:
        """Leader completeness: every entry committed before `term` is in the new
        leader's log (or under its snapshot, which holds only committed entries)."""
        for index, (entry_term, by_term) in self._committed.items():
            if index <= snap_index or by_term >= term:
                continue
            found = log_term(index)
            if found != entry_term:
                raise InvariantViolation(
                    LEADER_COMPLETENESS,
                    f"node {node} leads term {term} but its log has term {found} at {index}, "
                    f"where an entry of term {entry_term} was committed by term {by_term}",
                )

    # -- logs ------------------------------------------------------------------------------

    def log_entries(self, node: int, entries: Sequence[Entry], prev_term: int) -> None:
        """Log matching, by induction: an (index, term) pair always names the same entry
        and the same predecessor term, in every log that holds it."""
        for entry in entries:
            key = (entry.index, entry.term)
            found = (prev_term, entry.kind, entry.data)
            seen = self._log.setdefault(key, found)
            if seen != found:
                raise InvariantViolation(
                    LOG_MATCHING,
                    f"node {node} logs {_describe(entry)} after term {prev_term}; another "
                    f"log has ({entry.index}, t{entry.term}) as {seen[1].name} {seen[2]!r} "
                    f"after term {seen[0]}",
                )
            prev_term = entry.term

    def hard_state(self, node: int, before: HardState, after: HardState) -> None:
        """A vote, once durable, is never taken back nor given twice in a term."""
        if after.term < before.term:
            raise InvariantViolation(
                VOTE_DURABILITY, f"node {node} persisted term {after.term} after {before.term}"
            )
        if after.term == before.term and before.vote and after.vote != before.vote:
            raise InvariantViolation(
                VOTE_DURABILITY,
                f"node {node} voted for {before.vote} and then {after.vote} in term {after.term}",
            )

    # -- the state machine -------------------------------------------------------------------

    def applied_entry(self, node: int, entry: Entry, node_term: int) -> None:
        acked = self.acked.get(entry.index)
        if acked is not None and (entry.kind is not EntryKind.NORMAL or entry.data != acked):
            raise InvariantViolation(
                DURABILITY,
                f"node {node} applied {_describe(entry)} where the acknowledged write "
                f"{acked!r} committed",
            )
        first = self.applied.setdefault(entry.index, entry)
        if first != entry:
            raise InvariantViolation(
                STATE_MACHINE_SAFETY,
                f"node {node} applied {_describe(entry)}; another node applied "
                f"{_describe(first)} at that index",
            )
        self.committed(node, entry.index, entry.term, node_term)
        if entry.kind is EntryKind.NORMAL:
            at = self._value_at.setdefault(entry.data, entry.index)
            if at != entry.index and entry.data not in self.at_least_once:
                raise InvariantViolation(
                    STATE_MACHINE_SAFETY,
                    f"node {node} applied command {entry.data!r} at {entry.index}, "
                    f"already applied at {at}",
                )

    def committed(self, node: int, index: int, term: int, node_term: int) -> None:
        """`node`, in `node_term`, knows the entry of `term` at `index` is committed: it was
        committed by a leader of a term no later than `node_term`, no other entry is ever
        committed there, and reads issued from now on must see it."""
        known = self._committed.get(index)
        if known is not None and known[0] != term:
            raise InvariantViolation(
                STATE_MACHINE_SAFETY,
                f"node {node} has the entry of term {term} at {index} committed; an entry "
                f"of term {known[0]} was committed there",
            )
        by_term = node_term if known is None else min(known[1], node_term)
        self._committed[index] = (term, by_term)
        self.known_committed = max(self.known_committed, index)

    def acknowledge(self, index: int, data: bytes) -> None:
        self.acked[index] = data

    def index_of(self, data: bytes) -> int | None:
        return self._value_at.get(data)

    def restored(self, node: int, index: int, commands: Sequence[tuple[int, bytes]]) -> None:
        """A snapshot's state machine holds exactly the commands applied up to `index`."""
        held = dict(commands)
        for at, data in held.items():
            entry = self.applied.get(at)
            if at > index or (entry is not None and entry.data != data):
                raise InvariantViolation(
                    STATE_MACHINE_SAFETY,
                    f"node {node} restored a snapshot at {index} holding {data!r} at {at}",
                )
        for at, entry in self.applied.items():
            if at <= index and entry.kind is EntryKind.NORMAL and held.get(at) != entry.data:
                invariant = DURABILITY if at in self.acked else STATE_MACHINE_SAFETY
                raise InvariantViolation(
                    invariant,
                    f"node {node} restored a snapshot at {index} without {_describe(entry)}",
                )
        self.known_committed = max(self.known_committed, index)

    # -- reads -------------------------------------------------------------------------------

    def read_served(
        self, node: int, request: int, issued: int, known: int, served: int, index: int
    ) -> None:
        """A read must see every write known committed when it was issued."""
        if index < known:
            raise InvariantViolation(
                READ_LINEARIZABILITY,
                f"read {request} issued at step {issued} to node {node} was served at step "
                f"{served} from applied index {index}, but index {known} was already known "
                "committed when it was issued (a stale read)",
            )


def check_quorum_contact(
    node: int,
    ticks: int,
    since: int,
    heard: dict[int, int],
    voters: frozenset[int],
    election_ticks: int,
) -> None:
    """A leader that has not heard from a quorum for more than two election timeouts
    must have stepped down. `heard` maps a peer to the tick it last answered; contact
    before `since` (when the leadership began, say) does not count against it."""
    if node not in voters:
        return
    peers_needed = len(voters) // 2
    if peers_needed == 0:
        return
    contacts = sorted(
        (max(heard.get(peer, since), since) for peer in voters if peer != node),
        reverse=True,
    )
    latest = contacts[peers_needed - 1]
    if ticks - latest > 2 * election_ticks:
        raise InvariantViolation(
            CHECK_QUORUM,
            f"node {node} is still leader {ticks - latest} ticks after it last heard from "
            f"a quorum of {sorted(voters)} (limit {2 * election_ticks})",
        )
