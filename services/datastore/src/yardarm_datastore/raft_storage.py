"""The durable state of one Raft replica: its hard state, its log and its latest snapshot.

Two files live in the replica's directory:

- `raft.log`: records framed as in `wal.py`, `[u32 length][u32 crc32][body]`, the checksum
  covering the length and the body. A body is an entry (type 1, term, index, kind, data)
  or a hard state (type 2, term, vote, commit), appended in the order the core asks for.
  Replay rebuilds the log: an entry at an index already present replaces it and everything
  after it (Raft's truncation on conflict), and the last hard state wins. A crash may lose
  any unsynced suffix, so the first torn or damaged record ends the log and is cut off.
- `raft.snapshot`: a header whose checksum covers the metadata (index, term, voters) and
  the data, replaced atomically (temporary file, fsync, rename, fsync of the directory).

Whenever the log is replaced rather than appended to (a received snapshot, a compaction),
the snapshot file is made durable first and the new log, which starts with the latest hard
state, is swapped in atomically afterwards. A crash in between leaves the new snapshot next
to the old log; `open` then drops the entries the snapshot covers, and if the old log
disagrees with the snapshot at its index (a follower's divergent tail) everything after it
too, exactly as Raft's InstallSnapshot would have, and the term and vote are never lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from yardarm_datastore.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Snapshot,
    SnapshotMeta,
)

HEADER = struct.Struct(">II")  # record length, crc32 of the length and the body
LENGTH = struct.Struct(">I")
MAX_RECORD_BYTES = 64 * 1024 * 1024


def fsync_dir(path: Path) -> None:
    """Make the creation, rename or removal of an entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


LOG_NAME = "raft.log"
SNAPSHOT_NAME = "raft.snapshot"
TEMP_SUFFIX = ".tmp"

_ENTRY_RECORD = 1
_HARD_STATE_RECORD = 2
_ENTRY = struct.Struct(">BQQB")  # record type, term, index, kind; the data follows
_HARD_STATE = struct.Struct(">BQQQ")  # record type, term, vote, commit

_SNAPSHOT_MAGIC = b"YRS1"
_SNAPSHOT_HEAD = struct.Struct(">4sI")  # magic, crc32 of everything after this header
_SNAPSHOT_META = struct.Struct(">QQIQ")  # index, term, voter count, data length
_VOTER = struct.Struct(">Q")

_REMEDY = (
    "restore it from another replica or remove the replica's directory {} and re-add it to "
    "the cluster"
)

log = logging.getLogger("yardarm.datastore.raft_storage")


class StorageCorrupt(RuntimeError):
    """What is on disk cannot be a state this replica wrote; it needs an operator."""


@dataclass(frozen=True)
class Recovered:
    """What `open` found: the state the replica restarts from."""

    hard_state: HardState
    snapshot: Snapshot | None
    entries: list[Entry]  # contiguous, starting right after the snapshot (or at 1)
    truncated_bytes: int  # torn or damaged tail cut off the log


class RaftStorage:
    """The files behind one replica. Blocking calls, for a worker thread, one at a time.

    Only the shape of the log is kept in memory (where each live entry's record starts),
    since the core keeps the entries themselves; that is enough to validate appends and
    to copy the surviving suffix verbatim when compacting.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._log_path = directory / LOG_NAME
        self._snapshot_path = directory / SNAPSHOT_NAME
        self._fd: int | None = None
        self._broken: str | None = None
        self._size = 0
        self._snapshot_index = 0
        self._offsets: list[int] = []  # record of entry snapshot_index + 1 + k starts here
        self._hard_state: HardState | None = None

    @property
    def log_bytes(self) -> int:
        return self._size

    def open(self) -> Recovered:
        """Read the snapshot and replay the log, cutting off a bad tail; then accept writes."""
        self.close()
        self._broken = None
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True)
            fsync_dir(self.directory.parent)
        for name in (LOG_NAME, SNAPSHOT_NAME):  # left by a crash before their rename
            (self.directory / (name + TEMP_SUFFIX)).unlink(missing_ok=True)
        snapshot = _read_snapshot(self._snapshot_path)
        try:
            data = self._log_path.read_bytes()
            created = False
        except FileNotFoundError:
            data, created = b"", True
        entries, offsets, hard_state, valid = _replay(self._log_path, data)
        snapshot_index = snapshot.meta.index if snapshot is not None else 0
        covered = _covered(entries, snapshot)
        if covered:
            log.info(
                "raft log %s: dropping %d entries up to %d that the snapshot at %d covers "
                "or contradicts", self._log_path, covered, entries[covered - 1].index,
                snapshot_index, extra={"event": "raft_log_covered", "dropped": covered},
            )  # fmt: skip
            entries, offsets = entries[covered:], offsets[covered:]
        if entries and entries[0].index != snapshot_index + 1:
            raise StorageCorrupt(
                f"the raft log {self._log_path} starts at entry {entries[0].index} but the "
                f"snapshot ends at {snapshot_index}, so entries in between are missing; "
                + _REMEDY.format(self.directory)
            )
        truncated = len(data) - valid
        self._fd = os.open(self._log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = valid
        self._snapshot_index = snapshot_index
        self._offsets = offsets
        self._hard_state = hard_state
        with self._guard():
            if truncated:
                log.warning(
                    "raft log %s: cutting %d bytes of torn or corrupt tail at offset %d",
                    self._log_path, truncated, valid,
                    extra={"event": "raft_log_truncated", "dropped_bytes": truncated},
                )  # fmt: skip
                os.ftruncate(self._fd, valid)
                os.fsync(self._fd)
            if created:
                os.fsync(self._fd)
                fsync_dir(self.directory)
            if covered:  # so later appends are never shadowed by the stale records
                head = self._hard_state_frame()
                body, moved = _copy_frames(data, 0, offsets, len(head))
                self._install_log(head + body, moved)
        return Recovered(hard_state or HardState(), snapshot, entries, truncated)

    def write(
        self,
        *,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
        hard_state: HardState | None = None,
    ) -> int:
        """Store a snapshot (replacing the whole log), then append entries and a hard state.

        Appends are not durable until `sync`. Returns the bytes this call added to the log.
        """
        fd = self._require_open()
        snapshot_index = self._snapshot_index
        last = snapshot_index + len(self._offsets)
        if snapshot is not None:
            if snapshot.meta.index < snapshot_index:
                raise ValueError(
                    f"snapshot at {snapshot.meta.index} is older than the stored one at "
                    f"{snapshot_index}; the core must not install it"
                )
            snapshot_index = last = snapshot.meta.index
        frames: list[bytes] = []
        positions: list[int] = []
        position = 0
        if entries:
            first = entries[0].index
            if not snapshot_index < first <= last + 1:
                raise ValueError(
                    f"entry {first} cannot follow a log holding {snapshot_index + 1}..{last}"
                )
            for offset, entry in enumerate(entries):
                if entry.index != first + offset:
                    raise ValueError(f"entry {entry.index} where {first + offset} was due")
                frame = _entry_frame(entry)
                frames.append(frame)
                positions.append(position)
                position += len(frame)
        if hard_state is not None:
            frames.append(_hard_state_frame(hard_state))
        payload = b"".join(frames)
        with self._guard():
            if snapshot is not None:
                _replace_file(self._snapshot_path, _encode_snapshot(snapshot))
                self._snapshot_index = snapshot_index
                head = self._hard_state_frame()  # the term and vote outlive the old log
                self._install_log(head + payload, [len(head) + p for p in positions])
            else:
                base = self._size
                _write_all(fd, payload)
                self._size += len(payload)
                if entries:
                    del self._offsets[entries[0].index - snapshot_index - 1 :]
                    self._offsets.extend(base + p for p in positions)
        if hard_state is not None:
            self._hard_state = hard_state
        return len(payload)

    def sync(self) -> None:
        """Make every write so far durable."""
        fd = self._require_open()
        with self._guard():
            os.fdatasync(fd)

    def compact(self, snapshot: Snapshot) -> None:
        """Store the replica's own snapshot and drop the log entries it covers."""
        fd = self._require_open()
        index, first = snapshot.meta.index, self._snapshot_index + 1
        last = self._snapshot_index + len(self._offsets)
        if not self._snapshot_index <= index <= last:
            raise ValueError(
                f"cannot compact to {index}: the log holds {first}..{last} after a snapshot "
                f"at {self._snapshot_index}"
            )
        keep = index - self._snapshot_index  # offsets[keep:] belong to entries after index
        start = max(keep - 1, 0)
        base = self._offsets[start] if start < len(self._offsets) else self._size
        with self._guard():
            chunk = _read_all(fd, base, self._size - base)
        if keep > 0:
            term = _ENTRY.unpack_from(chunk, self._offsets[keep - 1] - base + HEADER.size)[1]
            if term != snapshot.meta.term:
                raise ValueError(
                    f"snapshot at {index} has term {snapshot.meta.term} but the log's entry "
                    f"there has term {term}; it was not taken from this log"
                )
        head = self._hard_state_frame()
        body, moved = _copy_frames(chunk, base, self._offsets[keep:], len(head))
        with self._guard():
            _replace_file(self._snapshot_path, _encode_snapshot(snapshot))
            self._snapshot_index = index
            self._install_log(head + body, moved)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _require_open(self) -> int:
        if self._fd is None:
            if self._broken is not None:
                raise RuntimeError(
                    f"raft storage {self.directory} failed ({self._broken}); open it again "
                    "to recover what is durable"
                )
            raise RuntimeError(f"raft storage {self.directory} is not open; call open() first")
        return self._fd

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """After a failed disk operation memory and disk may disagree: refuse further use."""
        try:
            yield
        except OSError as exc:
            self._broken = str(exc)
            self.close()
            raise

    def _hard_state_frame(self) -> bytes:
        return b"" if self._hard_state is None else _hard_state_frame(self._hard_state)

    def _install_log(self, payload: bytes, offsets: list[int]) -> None:
        _replace_file(self._log_path, payload)
        self.close()
        self._fd = os.open(self._log_path, os.O_RDWR | os.O_APPEND)
        self._size = len(payload)
        self._offsets = offsets


def _frame(body: bytes) -> bytes:
    length = LENGTH.pack(len(body))
    return length + LENGTH.pack(zlib.crc32(body, zlib.crc32(length))) + body


def _entry_frame(entry: Entry) -> bytes:
    if len(entry.data) > MAX_RECORD_BYTES - _ENTRY.size:
        raise ValueError(f"entry {entry.index} of {len(entry.data)} bytes is too large")
    return _frame(_ENTRY.pack(_ENTRY_RECORD, entry.term, entry.index, entry.kind) + entry.data)


def _hard_state_frame(state: HardState) -> bytes:
    return _frame(_HARD_STATE.pack(_HARD_STATE_RECORD, state.term, state.vote, state.commit))


def _replay(path: Path, data: bytes) -> tuple[list[Entry], list[int], HardState | None, int]:
    """The log the intact records describe, where each entry's record starts, the last
    hard state, and the offset where the intact records end."""
    entries: list[Entry] = []
    offsets: list[int] = []
    hard_state: HardState | None = None
    view = memoryview(data)
    offset, size = 0, len(data)
    while offset + HEADER.size <= size:
        length, crc = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        end = start + length
        if length > MAX_RECORD_BYTES or end > size:
            break
        body = view[start:end]
        if zlib.crc32(body, zlib.crc32(view[offset : offset + LENGTH.size])) != crc:
            break
        kind = body[0] if length else None
        if kind == _ENTRY_RECORD and length >= _ENTRY.size:
            _, term, index, entry_kind = _ENTRY.unpack_from(body)
            try:
                entry_kind = EntryKind(entry_kind)
            except ValueError:
                raise _unreadable(path, offset, f"an entry of unknown kind {entry_kind}") from None
            if entries and index <= entries[-1].index:  # replaces it and all after it
                cut = max(index - entries[0].index, 0)
                del entries[cut:]
                del offsets[cut:]
            elif entries and index != entries[-1].index + 1:
                raise StorageCorrupt(
                    f"the raft log {path} is not contiguous: entry {index} follows "
                    f"{entries[-1].index} at offset {offset}; " + _REMEDY.format(path.parent)
                )
            entries.append(Entry(term, index, entry_kind, bytes(body[_ENTRY.size :])))
            offsets.append(offset)
        elif kind == _HARD_STATE_RECORD and length == _HARD_STATE.size:
            _, term, vote, commit = _HARD_STATE.unpack_from(body)
            hard_state = HardState(term, vote, commit)
        else:
            raise _unreadable(path, offset, f"a record of unknown type {kind}")
        offset = end
    return entries, offsets, hard_state, offset


def _unreadable(path: Path, offset: int, what: str) -> StorageCorrupt:
    return StorageCorrupt(
        f"the raft log {path} holds {what} at offset {offset} with a valid checksum: it was "
        "written by a newer version or is not a raft log; run the version that wrote it, or "
        + _REMEDY.format(path.parent)
    )


def _covered(entries: list[Entry], snapshot: Snapshot | None) -> int:
    """How many leading entries the snapshot makes obsolete: those up to its index, and all
    of them when the log disagrees with it there (a tail the leader never had)."""
    if snapshot is None or not entries or entries[0].index > snapshot.meta.index:
        return 0
    at = snapshot.meta.index - entries[0].index
    if at < len(entries) and entries[at].term == snapshot.meta.term:
        return at + 1
    return len(entries)


def _copy_frames(
    chunk: bytes, base: int, offsets: list[int], start: int
) -> tuple[bytes, list[int]]:
    """The records at `offsets` (file positions; `chunk` starts at `base`) laid end to end
    from position `start`, and where each now begins."""
    frames: list[bytes] = []
    moved: list[int] = []
    position = start
    for offset in offsets:
        at = offset - base
        (length,) = LENGTH.unpack_from(chunk, at)
        frame = chunk[at : at + HEADER.size + length]
        frames.append(frame)
        moved.append(position)
        position += len(frame)
    return b"".join(frames), moved


def _encode_snapshot(snapshot: Snapshot) -> bytes:
    meta, voters = snapshot.meta, sorted(snapshot.meta.conf.voters)
    described = _SNAPSHOT_META.pack(meta.index, meta.term, len(voters), len(snapshot.data))
    described += b"".join(_VOTER.pack(voter) for voter in voters)
    crc = zlib.crc32(snapshot.data, zlib.crc32(described))
    return _SNAPSHOT_HEAD.pack(_SNAPSHOT_MAGIC, crc) + described + snapshot.data


def _read_snapshot(path: Path) -> Snapshot | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None

    def corrupt(why: str) -> StorageCorrupt:
        return StorageCorrupt(
            f"the snapshot file {path} is corrupt ({why}); " + _REMEDY.format(path.parent)
        )

    fixed = _SNAPSHOT_HEAD.size + _SNAPSHOT_META.size
    if len(data) < fixed:
        raise corrupt(f"only {len(data)} bytes")
    magic, crc = _SNAPSHOT_HEAD.unpack_from(data)
    if magic != _SNAPSHOT_MAGIC:
        raise corrupt("not a raft snapshot: bad magic")
    index, term, count, data_length = _SNAPSHOT_META.unpack_from(data, _SNAPSHOT_HEAD.size)
    expected = fixed + count * _VOTER.size + data_length
    if len(data) != expected:
        raise corrupt(f"{len(data)} bytes where its header promises {expected}")
    if zlib.crc32(memoryview(data)[_SNAPSHOT_HEAD.size :]) != crc:
        raise corrupt("checksum mismatch")
    voters = frozenset(v for (v,) in _VOTER.iter_unpack(data[fixed : fixed + count * _VOTER.size]))
    meta = SnapshotMeta(index, term, ConfState(voters))
    return Snapshot(meta, data[fixed + count * _VOTER.size :])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int, offset: int, size: int) -> bytes:
    parts: list[bytes] = []
    while size > 0:
        part = os.pread(fd, size, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
        size -= len(part)
    return b"".join(parts)


def _replace_file(path: Path, data: bytes) -> None:
    """Leave either the old file or the whole new one at `path`, whatever crashes when."""
    temp = path.with_name(path.name + TEMP_SUFFIX)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_dir(path.parent)
