"""Commands a follower forwards to a leader that hands over before they arrive: each is
passed on (or held until the successor is heard from) and applied once, never dropped
for carrying the old term (a dropped one cost its client the commit timeout and a 503)."""

from __future__ import annotations

from collections.abc import Callable

from yardarm_datastore.raft.types import Message, MsgType, Role

from tests.datastore.raft.cluster import Cluster
from tests.datastore.raft.test_raft_scenarios import ELECTION, elect, make, rounds


def _to_old_leader(m: Message) -> bool:
    return m.type is MsgType.PROPOSE and m.dst == 1


def _successors_append(m: Message) -> bool:
    return m.type is MsgType.APPEND and m.src == 3 and m.dst == 1


def _hand_over_without(c: Cluster, done: Callable[[], bool], *, appends: bool = True) -> None:
    """Run the hand-over 1 -> 3 until `done`, holding back the command forwarded to 1
    (and, with `appends` off, the successor's appends to 1)."""
    for _ in range(50):
        c.flush_writes()
        c.deliver_where(lambda m: not _to_old_leader(m) and (appends or not _successors_append(m)))
        if done():
            return
    raise AssertionError("hand-over did not reach the wanted point")


def _forwarded_during_hand_over() -> tuple[Cluster, int]:
    """Leader 1 with one command applied hands over to 3 while follower 2 forwards
    `during` to 1 (not yet delivered); the cluster and 1's term before the hand-over."""
    c = make(3)
    elect(c, 1)
    c.propose(1, b"before")
    rounds(c, 2)
    term = c.core(1).term
    assert c.transfer(1, 3)
    assert c.forward(2, b"during")  # sent in the old term, to the old leader
    return c, term


def test_a_command_reaching_a_leader_that_already_handed_over_reaches_the_successor() -> None:
    c, term = _forwarded_during_hand_over()
    _hand_over_without(c, lambda: c.core(1).leader == 3)
    assert c.core(1).role is Role.FOLLOWER and c.core(1).term == term + 1
    assert c.deliver_where(_to_old_leader) == 1  # arrives stale, at a follower of 3
    rounds(c, 3)
    assert c.leader() == 3
    assert all(c.values(n) == [b"before", b"during"] for n in c.ids)


def test_a_command_reaching_a_leader_between_stepping_down_and_its_successor() -> None:
    c, _ = _forwarded_during_hand_over()
    _hand_over_without(c, lambda: c.core(1).role is Role.FOLLOWER, appends=False)
    assert c.core(1).leader == 0
    assert c.deliver_where(_to_old_leader) == 1  # held: no leader known yet
    rounds(c, ELECTION // 2)
    assert c.leader() == 3
    assert all(c.values(n) == [b"before", b"during"] for n in c.ids)


def test_a_slow_hand_over_keeps_what_it_held_until_the_successor_is_heard() -> None:
    c, _ = _forwarded_during_hand_over()
    c.flush_writes()
    assert c.deliver_where(_to_old_leader) == 1  # held by the leader handing over
    # The hand-over is slow: most of its window passes before the successor campaigns.
    for _ in range(ELECTION - 2):
        c.tick(1)
        c.flush_writes()
        c.deliver_where(lambda m: m.type is not MsgType.TIMEOUT_NOW and m.src == 1)
        c.deliver_where(lambda m: m.dst == 1)
    assert c.core(1).transferring
    c.deliver_where(lambda m: m.type is MsgType.TIMEOUT_NOW)
    for _ in range(20):
        c.flush_writes()
        c.deliver_where(lambda m: not _successors_append(m))
        if c.core(1).role is Role.FOLLOWER and c.leader() == 3:
            break
    assert c.core(1).leader == 0
    for _ in range(4):  # the successor's first append reaches 1 a few ticks later
        c.tick(1)
        c.flush_writes()
        c.deliver_where(lambda m: not _successors_append(m))
    rounds(c, ELECTION // 2)
    assert c.leader() == 3
    assert all(c.values(n) == [b"before", b"during"] for n in c.ids)
