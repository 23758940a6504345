"""The simulated network: messages in flight, partitions, and the faults a real one has.

Nothing is delivered by itself: the simulator picks which message arrives next, so any
order is possible (reordering), and it may also drop, duplicate or hold back a message.
A partition (a set of cut links, so partial partitions too) is checked when a message
arrives, like a connection that breaks while data is on the wire.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from yardarm_datastore.raft.types import Message, MsgType


@dataclass
class InFlight:
    msg: Message
    not_before: int  # the simulation round before which it cannot arrive (a delay)
    seq: int  # send order, so "oldest first" delivery is well defined


class Network:
    """Messages on the wire between the nodes, and which nodes can reach each other."""

    def __init__(self) -> None:
        self.in_flight: list[InFlight] = []  # may arrive now, in send order
        self.held: list[InFlight] = []  # delayed: may arrive from `not_before` on
        self._cut: set[tuple[int, int]] = set()  # (low, high) links that carry nothing
        self._seq = 0

    def send(self, msg: Message, now: int) -> None:
        self._seq += 1
        self.in_flight.append(InFlight(msg, now, self._seq))

    def connected(self, a: int, b: int) -> bool:
        return (a, b) not in self._cut and (b, a) not in self._cut

    @property
    def partitioned(self) -> bool:
        return bool(self._cut)

    def partition(self, sides: Iterable[Iterable[int]]) -> None:
        """Cut every link between two different sides."""
        groups = [list(side) for side in sides]
        self._cut = {
            (a, b)
            for i, side in enumerate(groups)
            for other in groups[i + 1 :]
            for a in side
            for b in other
        }

    def cut(self, links: Iterable[tuple[int, int]]) -> None:
        """Cut single links (a partial partition: a and b cannot talk, others can)."""
        self._cut |= set(links)

    def heal(self) -> None:
        self._cut = set()

    def release(self, now: int) -> int:
        """Let delayed messages whose time has come join the others; how many may arrive."""
        if self.held:
            due = [f for f in self.held if f.not_before <= now]
            if due:
                self.held = [f for f in self.held if f.not_before > now]
                self.in_flight.extend(due)
                self.in_flight.sort(key=lambda f: f.seq)
        return len(self.in_flight)

    def release_all(self) -> None:
        self.in_flight.extend(self.held)
        self.in_flight.sort(key=lambda f: f.seq)
        self.held = []

    def take(self, position: int) -> Message:
        return self.in_flight.pop(position).msg

    def take_oldest(self, now: int) -> Message | None:
        """The message sent first among those that may arrive (`in_flight` is in send
        order)."""
        return self.take(0) if self.release(now) else None

    def pick(self, rng: random.Random, now: int) -> int | None:
        """A random message among those that may arrive now (uniform: any reordering)."""
        count = self.release(now)
        return rng.randrange(count) if count else None

    def duplicate(self, position: int, now: int) -> Message:
        msg = self.in_flight[position].msg
        self.send(msg, now)
        return msg

    def delay(self, position: int, until: int) -> Message:
        flight = self.in_flight[position]
        self.take(position)
        flight.not_before = until
        self.held.append(flight)
        return flight.msg

    def drop_where(self, predicate: Callable[[Message], bool]) -> int:
        before = len(self.in_flight) + len(self.held)
        self.in_flight = [f for f in self.in_flight if not predicate(f.msg)]
        self.held = [f for f in self.held if not predicate(f.msg)]
        return before - len(self.in_flight) - len(self.held)


def describe(msg: Message) -> str:
    text = f"{msg.type.value} {msg.src}>{msg.dst} t{msg.term}"
    if msg.type is MsgType.APPEND:
        text += f" prev={msg.index}/t{msg.log_term} +{len(msg.entries)} commit={msg.commit}"
    elif msg.type in (MsgType.VOTE, MsgType.PRE_VOTE):
        text += f" last={msg.index}/t{msg.log_term}" + (" force" if msg.force else "")
    elif msg.type is MsgType.APPEND_RESP:
        text += f" index={msg.index}" + (f" reject hint={msg.reject_hint}" if msg.reject else "")
    elif msg.type in (MsgType.HEARTBEAT, MsgType.HEARTBEAT_RESP):
        text += f" commit={msg.commit} ctx={msg.context}"
    elif msg.type is MsgType.SNAPSHOT and msg.snapshot is not None:
        text += f" at={msg.snapshot.meta.index}/t{msg.snapshot.meta.term}"
    elif msg.reject:
        text += " reject"
    return text
