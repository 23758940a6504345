"""A leader's hand-over, as a stopping replica does it: whom it picks, how the successor
knows it was handed leadership, and that commands forwarded to the leader while it
hands over are neither lost nor applied twice. Driven message by message on the
simulator's cluster, every invariant checked after every event."""

from __future__ import annotations

import pytest
from yardarm_datastore.raft.core import NotLeader
from yardarm_datastore.raft.types import MsgType, Role

from tests.datastore.raft.test_raft_scenarios import ELECTION, elect, make, rounds


def test_the_successor_is_the_furthest_follower_that_still_answers() -> None:
    c = make(5)
    elect(c, 1)
    c.propose(1, b"a")
    rounds(c, 2)
    core = c.core(1)
    assert core.transfer_target() in (2, 3, 4, 5)
    # Node 5 goes silent with the whole log; 3 is cut off and falls behind.
    c.cut((1, 3))
    c.propose(1, b"b")
    c.settle()
    c.crash(5)
    rounds(c, ELECTION // 2 + 1)
    assert core.role is Role.LEADER
    assert core.transfer_target() in (2, 4)
    assert core.progress()[core.transfer_target()][0] == core.last_index
    # Only 3 is left beside the leader (and it is cut off): nobody to hand over to.
    c.crash(2)
    c.crash(4)
    rounds(c, ELECTION // 2 + 1)
    assert core.role is not Role.LEADER or core.transfer_target() == 0


def test_a_follower_is_asked_for_no_successor() -> None:
    c = make(3)
    elect(c, 1)
    with pytest.raises(NotLeader):
        c.core(2).transfer_target()


def test_the_new_leader_knows_it_was_handed_leadership() -> None:
    c = make(3)
    elect(c, 1)
    assert not c.core(1).elected_by_transfer  # elected by its own campaign
    rounds(c, 2)
    assert c.transfer(1, 3)
    rounds(c, ELECTION, until=lambda: c.leader() == 3)
    assert c.leader() == 3 and c.core(3).elected_by_transfer
    # The next leader after a crash is elected once no leader is heard: not a transfer.
    c.crash(3)
    rounds(c, 4 * ELECTION, until=lambda: c.leader() in (1, 2))
    leader = c.leader()
    assert leader in (1, 2) and not c.core(leader).elected_by_transfer


def test_commands_forwarded_during_a_hand_over_reach_the_successor_once() -> None:
    c = make(3)
    elect(c, 1)
    c.propose(1, b"before")
    rounds(c, 2)
    assert c.transfer(1, 3)
    # Node 2 forwards a command that reaches the leader while it hands over.
    assert c.forward(2, b"during")
    assert c.deliver_where(lambda m: m.type is MsgType.PROPOSE and m.dst == 1) == 1
    rounds(c, ELECTION, until=lambda: c.leader() == 3)
    rounds(c, 3)
    assert c.leader() == 3
    assert all(c.values(n) == [b"before", b"during"] for n in c.ids)


def test_commands_held_by_a_hand_over_that_lapses_are_appended_by_the_leader() -> None:
    c = make(3)
    elect(c, 1)
    rounds(c, 2)
    c.crash(3)  # the successor never answers: the transfer lapses
    assert c.transfer(1, 3)
    assert c.forward(2, b"held")
    assert c.deliver_where(lambda m: m.type is MsgType.PROPOSE and m.dst == 1) == 1
    assert c.values(1) == []
    rounds(c, ELECTION + 2)
    assert c.leader() == 1
    assert c.values(1) == c.values(2) == [b"held"]
