"""Hand-written scenarios on the simulator's cluster: the situations Raft's extensions
exist for, each driven message by message, with every invariant checked after every
event as in the random runs."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from yardarm_datastore.raft.types import ConfChange, Message, MsgType, Mutation, Role

from tests.datastore.raft.cluster import Cluster
from tests.datastore.raft.invariants import LEADER_COMPLETENESS, InvariantViolation

ELECTION = 10


def make(nodes: int = 3, *, mutations: Iterable[Mutation] = (), **config: Any) -> Cluster:
    return Cluster(
        range(1, nodes + 1),
        rng=random.Random(0),
        config={"election_ticks": ELECTION, **config},
        mutations=mutations,
    )


def rounds(c: Cluster, count: int, until: Callable[[], bool] | None = None) -> int:
    """Tick every live node and let the cluster settle, `count` times or until `until`;
    the rounds it took."""
    for done in range(1, count + 1):
        c.tick_all()
        c.settle()
        if until is not None and until():
            return done
    return count


def elect(c: Cluster, node: int) -> None:
    c.campaign(node)
    c.settle()
    assert c.core(node).role is Role.LEADER


def win(c: Cluster, node: int, voters: set[int]) -> None:
    """`node` campaigns until it wins, its vote requests reaching only `voters`."""
    for _ in range(5):
        c.campaign(node)
        c.flush_writes()
        c.deliver_where(lambda m: m.type is MsgType.VOTE and m.src == node and m.dst in voters)
        c.flush_writes()
        c.deliver_where(lambda m: m.type is MsgType.VOTE_RESP and m.dst == node)
        c.drop_where(lambda m: m.type in (MsgType.VOTE, MsgType.VOTE_RESP))
        if c.core(node).role is Role.LEADER:
            return
    raise AssertionError(f"node {node} did not win an election")


def figure8(mutations: Iterable[Mutation] = ()) -> tuple[Cluster, int]:
    """The Raft paper's Figure 8, on five nodes with one-entry appends. Returns the
    cluster and S1's commit index once its old entry was on a majority (step c)."""
    c = make(
        5,
        mutations=mutations,
        pre_vote=False,
        check_quorum=False,
        max_entries_per_msg=1,
        max_inflight=1,
    )
    # (a) S1 leads; its entry x at index 2 reaches S2 only.
    win(c, 1, {2, 3, 4, 5})
    c.settle()
    c.propose(1, b"x")
    c.flush_writes()
    c.deliver_where(lambda m: m.type is MsgType.APPEND and m.dst == 2)
    c.flush_writes()
    c.drop_where(lambda m: True)
    # (b) S1 crashes; S5 wins with S3 and S4 and logs its own entries at 2 and 3, which
    # reach nobody before S5 crashes too.
    c.crash(1)
    win(c, 5, {3, 4})
    c.propose(5, b"y")
    c.flush_writes()
    c.crash(5)
    # (c) S1 restarts, wins with S2 and S3, and copies x to S3: x is on a majority, but
    # it is from an older term, and S1's own entry is not.
    c.restart(1)
    win(c, 1, {2, 3})
    term = c.core(1).term
    c.flush_writes()
    c.deliver_where(lambda m: m.type is MsgType.APPEND and m.dst == 2)
    c.flush_writes()
    c.deliver_where(lambda m: m.type is MsgType.APPEND_RESP and m.src == 2)

    def old_entries_to_s3(m: Message) -> bool:
        refused = m.index > c.core(3).last_index
        return (
            m.type is MsgType.APPEND
            and m.dst == 3
            and (refused or all(e.term != term for e in m.entries))
        )

    for _ in range(4):
        c.deliver_where(old_entries_to_s3)
        c.flush_writes()
        c.deliver_where(lambda m: m.type is MsgType.APPEND_RESP and m.src == 3)
        c.flush_writes()
    assert [c.replicas[n].disk.term(2) for n in (1, 2, 3)] == [1, 1, 1]
    commit = c.core(1).commit
    # (d) S1 crashes; S5 wins with S3 and S4 and overwrites index 2 with its own entry.
    c.drop_where(lambda m: True)
    c.crash(1)
    c.restart(5)
    win(c, 5, {3, 4})
    c.settle()
    return c, commit


def test_figure8_an_older_term_entry_is_not_committed_by_counting_replicas() -> None:
    c, commit = figure8()
    assert commit < 2, "an entry of an older term was committed by counting replicas"
    assert [c.replicas[n].disk.term(2) for n in (2, 3, 4, 5)] == [2, 2, 2, 2]
    assert all(b"x" not in c.values(n) for n in (2, 3, 4, 5))


def test_figure8_with_old_term_commits_loses_a_committed_entry() -> None:
    with pytest.raises(InvariantViolation) as caught:
        figure8([Mutation.COMMIT_OLD_TERM])
    assert caught.value.invariant == LEADER_COMPLETENESS


def test_a_rejoining_node_does_not_disrupt_a_stable_leader_with_pre_vote() -> None:
    c = make(3)
    elect(c, 1)
    rounds(c, 3)
    term = c.core(1).term
    c.partition([3], [1, 2])
    rounds(c, 5 * ELECTION)
    assert c.core(3).term == term, "pre-vote: a node that cannot win does not raise terms"
    c.heal()
    rounds(c, 3 * ELECTION)
    assert c.leader() == 1
    assert {c.core(n).term for n in c.ids} == {term}
    c.propose(1, b"after")
    rounds(c, 2)
    assert all(c.values(n)[-1:] == [b"after"] for n in c.ids)


def test_without_pre_vote_a_rejoining_node_disrupts_the_leader() -> None:
    """The contrast that shows the test above is sensitive."""
    c = make(3, pre_vote=False, check_quorum=False)
    elect(c, 1)
    rounds(c, 3)
    term = c.core(1).term
    c.partition([3], [1, 2])
    rounds(c, 5 * ELECTION)
    c.heal()
    rounds(c, 3 * ELECTION)
    assert c.core(1).term > term


def test_a_leader_cut_off_from_its_majority_steps_down_within_two_timeouts() -> None:
    c = make(3)
    elect(c, 1)
    rounds(c, 3)
    c.partition([1], [2, 3])
    took = rounds(c, 2 * ELECTION + 1, until=lambda: c.core(1).role is not Role.LEADER)
    assert c.core(1).role is not Role.LEADER
    assert took <= 2 * ELECTION
    rounds(c, 2 * ELECTION, until=lambda: c.leader() in (2, 3))
    assert c.leader() in (2, 3)


def test_without_check_quorum_a_cut_off_leader_stays_leader() -> None:
    c = make(3, mutations=[Mutation.NO_CHECK_QUORUM])
    elect(c, 1)
    rounds(c, 3)
    c.partition([1], [2, 3])
    rounds(c, 4 * ELECTION)
    assert c.core(1).role is Role.LEADER


def test_leader_transfer_hands_leadership_to_the_named_node() -> None:
    c = make(3)
    elect(c, 1)
    for value in (b"a", b"b"):
        c.propose(1, value)
    rounds(c, 2)
    term = c.core(1).term
    assert c.transfer(1, 3)
    assert c.propose(1, b"during") is None, "proposals wait while leadership moves"
    took = rounds(c, ELECTION, until=lambda: c.leader() == 3)
    assert c.leader() == 3 and took <= 2
    assert c.core(3).term == term + 1
    assert c.core(1).role is Role.FOLLOWER
    c.propose(3, b"c")
    rounds(c, 2)
    assert all(c.values(n) == [b"a", b"b", b"c"] for n in c.ids)


def test_a_lagging_follower_catches_up_from_a_snapshot_after_compaction() -> None:
    c = make(3, max_entries_per_msg=4)
    elect(c, 1)
    c.crash(3)
    for i in range(30):
        c.propose(1, f"w{i}".encode())
        c.settle()
    rounds(c, 2)
    assert c.compact(1) and c.compact(2)
    snapshot = c.replicas[1].disk.snapshot
    assert snapshot is not None and c.replicas[1].disk.entries == []
    c.restart(3)
    rounds(c, 3)
    assert c.stats["snapshots_installed"] == 1
    disk = c.replicas[3].disk
    assert disk.snapshot is not None and disk.snapshot.meta.index == snapshot.meta.index
    c.propose(1, b"after")
    rounds(c, 2)
    assert c.values(3) == c.values(1) == [f"w{i}".encode() for i in range(30)] + [b"after"]


def test_read_index_on_a_new_leader_waits_until_it_commits_in_its_term() -> None:
    c = make(3)
    elect(c, 1)
    c.propose(1, b"first")
    rounds(c, 2)
    # Node 2 takes over; its first entry has not reached anyone yet.
    c.partition([1], [2, 3])
    rounds(c, 2 * ELECTION, until=lambda: c.core(1).role is not Role.LEADER)
    c.heal()
    c.campaign(2)
    while c.core(2).role is not Role.LEADER:
        c.deliver_where(lambda m: m.type in (MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP))
        c.deliver_where(lambda m: m.type in (MsgType.VOTE, MsgType.VOTE_RESP))
        c.flush_writes()
    noop = c.core(2).last_index
    assert c.core(2).commit < noop
    request = c.read(2)
    assert request is not None
    # Heartbeats come and go (leadership is confirmed), but the read waits for a commit
    # in node 2's term: before it, node 2 cannot know what is committed.
    not_append = {MsgType.APPEND, MsgType.APPEND_RESP}
    for _ in range(3):
        c.tick(2)
        c.flush_writes()
        c.deliver_where(lambda m: m.type not in not_append)
        c.flush_writes()
        c.deliver_where(lambda m: m.type not in not_append)
    assert not [r for r in c.read_results if r.request == request]
    c.settle()
    rounds(c, 2)
    served = [r for r in c.read_results if r.request == request]
    assert len(served) == 1 and served[0].index >= noop
    assert served[0].last == b"first"


def test_membership_changes_one_server_at_a_time() -> None:
    c = make(5)
    elect(c, 1)
    rounds(c, 2)
    assert c.change_membership(1, ConfChange("remove", 5)) is not None
    assert c.change_membership(1, ConfChange("remove", 4)) is None, "one change at a time"
    rounds(c, 2)
    assert all(c.core(n).voters == frozenset({1, 2, 3, 4}) for n in (1, 2, 3, 4))
    c.propose(1, b"without 5")
    rounds(c, 2)
    assert b"without 5" not in c.values(5)
    assert all(c.values(n)[-1] == b"without 5" for n in (1, 2, 3, 4))
    # Three of four voters still make a quorum without node 4.
    c.crash(4)
    c.propose(1, b"three of four")
    rounds(c, 2)
    assert c.values(1)[-1] == b"three of four"
    c.restart(4)
    assert c.change_membership(1, ConfChange("add", 5)) is not None
    rounds(c, 3)
    assert all(c.core(n).voters == frozenset(c.ids) for n in c.ids)
    c.propose(1, b"with 5")
    rounds(c, 3)
    assert all(c.values(n) == c.values(1) for n in c.ids)
    assert c.values(5)[-1] == b"with 5"


@pytest.mark.parametrize("seed", range(3))
def test_a_restarted_follower_does_not_vote_away_a_leaders_lease(seed: int) -> None:
    """A lease read is safe only if no other leader can commit before the lease ends:
    the followers that confirmed the lease refuse votes for an election timeout after
    hearing from the leader. A follower that restarts must not forget that. Here node 2
    confirms node 1's lease, restarts just as node 3 (cut off from node 1 only) campaigns,
    and must not let node 3 win while node 1 still answers reads from its lease."""
    c = Cluster(
        range(1, 4),
        rng=random.Random(seed),
        config={"election_ticks": ELECTION, "read_mode": "lease"},
    )
    elect(c, 1)
    rounds(c, 3)
    c.propose(1, b"a")
    c.settle()
    c.cut((1, 3))
    rounds(c, 3 * ELECTION, until=lambda: c.core(3).role is Role.PRE_CANDIDATE)
    assert c.core(3).role is Role.PRE_CANDIDATE, "node 2 refused node 3 while in the lease"
    rounds(c, ELECTION - 1)  # node 3 may campaign again from the next round on
    c.crash(2)
    c.restart(2)
    c.cut((1, 2))
    for _ in range(2 * ELECTION):
        c.tick_all()
        c.settle()
        c.read(1)
        c.settle()
