"""A replica's Raft log in memory: a snapshot boundary, the entries after it, and what has
been handed to the driver to persist and what it has confirmed durable.

Indexes are 1-based; index 0 (term 0) is the empty log. After compaction the log starts
just past `snap_index`, whose term is still known (`snap_term`) so appends can be matched
against it.
"""

from __future__ import annotations

from collections.abc import Sequence

from yardarm_datastore.raft.types import Entry


class RaftLog:
    """Entries after the snapshot point, plus the persistence watermarks."""

    def __init__(self, snap_index: int = 0, snap_term: int = 0) -> None:
        self.snap_index = snap_index
        self.snap_term = snap_term
        self.entries: list[Entry] = []
        self.handed = snap_index  # last index given to the driver in a Ready
        self.persisted = snap_index  # last index the driver confirmed durable

    @property
    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term(self, index: int) -> int | None:
        """The term of the entry at `index`, or None if compacted away or not there."""
        if index == self.snap_index:
            return self.snap_term
        if index < self.snap_index or index > self.last_index:
            return None
        return self.entries[index - self.snap_index - 1].term

    def matches(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def slice(self, low: int, high: int) -> list[Entry]:
        """Entries with low <= index <= high (both within the log)."""
        start = low - self.snap_index - 1
        return self.entries[start : high - self.snap_index]

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries that continue the log, or replace a conflicting suffix: the first
        entry may sit at any index up to last+1; everything from it on is replaced."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.snap_index:
            raise ValueError(f"append at {first} below the snapshot at {self.snap_index}")
        if first > self.last_index + 1:
            raise ValueError(f"append at {first} leaves a gap after {self.last_index}")
        del self.entries[first - self.snap_index - 1 :]
        self.entries.extend(entries)
        self.handed = min(self.handed, first - 1)
        self.persisted = min(self.persisted, first - 1)

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """The index of the first entry that is new or disagrees with the log (0 if none)."""
        for entry in entries:
            if entry.index <= self.snap_index:
                continue  # covered by the snapshot, which only holds committed entries
            if self.term(entry.index) != entry.term:
                return entry.index
        return 0

    def unhanded(self) -> list[Entry]:
        return self.slice(self.handed + 1, self.last_index) if self.handed < self.last_index else []

    def mark_persisted(self, index: int, term: int) -> None:
        """The driver made entries up to (index, term) durable; a later truncation below
        `index` would already have lowered the watermark, so only a matching entry counts."""
        if index > self.persisted and self.term(index) == term:
            self.persisted = index

    def compact(self, index: int) -> None:
        """Drop entries up to and including `index` (it must be in the log)."""
        term = self.term(index)
        if term is None or index <= self.snap_index:
            return
        del self.entries[: index - self.snap_index]
        self.snap_index, self.snap_term = index, term

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot boundary (InstallSnapshot)."""
        self.entries = []
        self.snap_index, self.snap_term = index, term
        self.handed = index  # the snapshot itself goes out in the next Ready
        self.persisted = min(self.persisted, index)

    def last_index_at_or_below(self, index: int, term: int) -> int:
        """The highest index <= `index` whose term is <= `term`: where a follower and a
        leader can agree, skipping whole terms at once after a rejected append."""
        index = min(index, self.last_index)
        while index > self.snap_index:
            found = self.term(index)
            if found is not None and found <= term:
                return index
            index -= 1
        return self.snap_index
