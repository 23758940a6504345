"""What a simulated replica keeps on disk, and its state machine.

The disk holds only what a completed write made durable, so a crash can be modelled by
dropping everything else. The state machine is an append-only list of (index, command):
keeping the Raft index next to each command lets snapshots be checked entry by entry.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

from yardarm_datastore.raft.types import Entry, HardState, Snapshot


class StorageError(Exception):
    """The core asked the driver for a write no real log could make (a gap, a rewrite
    below the snapshot)."""


@dataclass
class Disk:
    """Durable storage of one replica: a snapshot, the entries after it, the hard state."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    @property
    def snap_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0

    @property
    def snap_term(self) -> int:
        return self.snapshot.meta.term if self.snapshot else 0

    @property
    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    def term(self, index: int) -> int | None:
        """The term stored at `index`; None if compacted away or beyond the end."""
        if index == self.snap_index:
            return self.snap_term
        if index < self.snap_index or index > self.last_index:
            return None
        return self.entries[index - self.snap_index - 1].term

    def install(self, snapshot: Snapshot) -> None:
        """A snapshot from the leader replaces the whole log (as etcd's storage does)."""
        self.snapshot = snapshot
        self.entries = []

    def append(self, entries: list[Entry]) -> None:
        """Store `entries`; one at an index already stored replaces it and all after it."""
        if not entries:
            return
        for before, after in itertools.pairwise(entries):
            if after.index != before.index + 1:
                raise StorageError(f"entries to persist skip from {before.index} to {after.index}")
        first = entries[0].index
        if first <= self.snap_index:
            raise StorageError(f"entry {first} rewrites the snapshot at {self.snap_index}")
        if first > self.last_index + 1:
            raise StorageError(f"entry {first} leaves a gap after {self.last_index}")
        del self.entries[first - self.snap_index - 1 :]
        self.entries.extend(entries)

    def compact(self, snapshot: Snapshot) -> None:
        """Keep `snapshot` and drop the entries it covers."""
        index = snapshot.meta.index
        if index <= self.snap_index:
            return
        if self.term(index) != snapshot.meta.term:
            raise StorageError(f"snapshot at {index} does not match the stored log")
        del self.entries[: index - self.snap_index]
        self.snapshot = snapshot


def encode_commands(commands: list[tuple[int, bytes]]) -> bytes:
    """The state machine's snapshot format."""
    return json.dumps([[index, data.hex()] for index, data in commands]).encode()


def decode_commands(data: bytes) -> list[tuple[int, bytes]]:
    return [(int(index), bytes.fromhex(hexed)) for index, hexed in json.loads(data)]
