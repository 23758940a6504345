"""What a leader knows about each follower's log, and how fast it may send to it.

A follower is probed one append at a time until its match is found, then replicated to
optimistically with up to `max_inflight` appends in flight (pipelining), or sent a
snapshot when the entries it needs were compacted away (etcd's progress states).
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    """Replication state of one follower."""

    __slots__ = (
        "inflight",
        "match",
        "max_inflight",
        "next",
        "paused",
        "pending_snapshot",
        "recent_active",
        "sent_commit",
        "snapshot_elapsed",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.paused = False
        self.inflight: deque[int] = deque()
        self.max_inflight = max_inflight
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        self.recent_active = False
        self.sent_commit = 0

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.paused = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.paused = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_elapsed = 0
        self.inflight.clear()

    def update(self, index: int) -> bool:
        """An acknowledgement up to `index`: True if it moved the match forward."""
        moved = index > self.match
        if moved:
            self.match = index
            self.paused = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return moved

    def sent(self, last: int) -> None:
        """An append ending at `last` went out."""
        if self.state is ProgressState.REPLICATE:
            if last >= self.next:
                self.next = last + 1
                self.inflight.append(last)
        elif self.state is ProgressState.PROBE:
            self.paused = True

    def blocked(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.paused
        if self.state is ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= self.max_inflight

    def rejected(self, rejected: int, hint: int) -> bool:
        """A refused append at `rejected`: step back. False if the refusal is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.become_probe()
            self.next = max(self.match + 1, min(rejected, hint + 1))
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(self.match + 1, min(rejected, hint + 1))
        self.paused = False
        return True
