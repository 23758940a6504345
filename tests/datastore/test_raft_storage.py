"""A replica's Raft state survives restarts: entries, hard state and snapshot come back as
written, conflicts truncate the log, a torn or damaged tail is cut and never returned, and
snapshots and compaction leave a recoverable state whenever a crash strikes."""

from __future__ import annotations

import os
import random
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from yardarm_datastore.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Snapshot,
    SnapshotMeta,
)
from yardarm_datastore.raft_storage import (
    LOG_NAME,
    SNAPSHOT_NAME,
    TEMP_SUFFIX,
    RaftStorage,
    Recovered,
    StorageCorrupt,
)

SCALE = float(os.environ.get("YARDARM_TEST_SCALE", "1.0"))


def _entries(first: int, last: int, term: int = 1, tag: str = "") -> list[Entry]:
    return [
        Entry(term, i, EntryKind.NORMAL, f"cmd{tag}-{i}".encode()) for i in range(first, last + 1)
    ]


def _snapshot(index: int, term: int, data: bytes = b"state") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ConfState(frozenset({1, 2, 3}))), data)


def _opened(directory: Path) -> tuple[RaftStorage, Recovered]:
    storage = RaftStorage(directory)
    return storage, storage.open()


def _recover(directory: Path) -> Recovered:
    storage, recovered = _opened(directory)
    storage.close()
    return recovered


def _write_each(directory: Path, entries: list[Entry]) -> list[int]:
    """Appends one entry per call; returns the log size after each."""
    storage, _ = _opened(directory)
    ends = []
    for entry in entries:
        storage.write(entries=[entry])
        ends.append(storage.log_bytes)
    storage.sync()
    storage.close()
    return ends


def _frame(body: bytes) -> bytes:
    length = struct.pack(">I", len(body))
    return length + struct.pack(">I", zlib.crc32(body, zlib.crc32(length))) + body


def test_a_new_directory_is_created_and_recovers_empty(tmp_path: Path) -> None:
    directory = tmp_path / "node" / "raft"
    assert _recover(directory) == Recovered(HardState(), None, [], 0)
    assert directory.is_dir()
    assert sorted(p.name for p in directory.iterdir()) == [LOG_NAME]


def test_entries_hard_state_and_snapshot_survive_close_and_open(tmp_path: Path) -> None:
    snapshot = Snapshot(SnapshotMeta(10, 2, ConfState(frozenset({1, 4, 9}))), b"\x00\xffkv" * 50)
    entries = [
        Entry(3, 11, EntryKind.NOOP, b""),
        Entry(3, 12, EntryKind.NORMAL, bytes(range(256))),
        Entry(3, 13, EntryKind.CONF, ConfChange("add", 4, "10.0.0.4:7000").encode()),
        *_entries(14, 40, term=3),
    ]
    storage, _ = _opened(tmp_path)
    written = storage.write(snapshot=snapshot, entries=entries, hard_state=HardState(3, 2, 12))
    storage.sync()
    storage.close()

    storage, recovered = _opened(tmp_path)
    assert recovered == Recovered(HardState(3, 2, 12), snapshot, entries, 0)
    assert storage.log_bytes == (tmp_path / LOG_NAME).stat().st_size == written
    storage.write(entries=_entries(41, 42, term=3))
    storage.close()
    assert _recover(tmp_path).entries == [*entries, *_entries(41, 42, term=3)]


def test_the_latest_hard_state_wins(tmp_path: Path) -> None:
    storage, _ = _opened(tmp_path)
    storage.write(entries=_entries(1, 2), hard_state=HardState(1, 1, 0))
    storage.write(hard_state=HardState(2, 0, 1))
    storage.write(entries=_entries(3, 3, term=2), hard_state=HardState(2, 3, 2))
    storage.close()
    assert _recover(tmp_path).hard_state == HardState(2, 3, 2)


def test_an_entry_at_a_stored_index_replaces_it_and_everything_after(tmp_path: Path) -> None:
    storage, _ = _opened(tmp_path)
    storage.write(entries=_entries(1, 5))
    replacement = Entry(2, 3, EntryKind.NORMAL, b"3-prime")
    storage.write(entries=[replacement])
    with pytest.raises(ValueError, match="cannot follow"):  # index 4 is next, not 6
        storage.write(entries=_entries(5, 5, term=2))
    storage.close()
    assert _recover(tmp_path).entries == [*_entries(1, 2), replacement]

    # the in-memory view follows the truncation: the next index is 4, not 6
    storage, _ = _opened(tmp_path)
    with pytest.raises(ValueError, match="cannot follow"):
        storage.write(entries=_entries(5, 5, term=2))
    storage.write(entries=_entries(4, 6, term=2, tag="b"))
    storage.write(entries=_entries(2, 3, term=3, tag="c"))  # a batch that conflicts
    storage.close()
    assert _recover(tmp_path).entries == [*_entries(1, 1), *_entries(2, 3, term=3, tag="c")]


def test_every_cut_inside_the_last_record_drops_only_that_record(tmp_path: Path) -> None:
    ends = _write_each(tmp_path, _entries(1, 4))
    path = tmp_path / LOG_NAME
    full = path.read_bytes()
    for cut in range(ends[2] + 1, ends[3]):
        path.write_bytes(full[:cut])
        recovered = _recover(tmp_path)
        assert recovered.entries == _entries(1, 3), cut
        assert recovered.truncated_bytes == cut - ends[2]
        assert path.stat().st_size == ends[2]
    # the cut tail never hides what is appended after it
    storage, _ = _opened(tmp_path)
    storage.write(entries=_entries(4, 5, tag="again"))
    storage.close()
    assert _recover(tmp_path).entries == [*_entries(1, 3), *_entries(4, 5, tag="again")]


def test_a_torn_hard_state_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    storage, _ = _opened(tmp_path)
    storage.write(entries=_entries(1, 1), hard_state=HardState(1, 1, 0))
    storage.write(hard_state=HardState(2, 3, 1))
    storage.close()
    path = tmp_path / LOG_NAME
    path.write_bytes(path.read_bytes()[:-1])
    recovered = _recover(tmp_path)
    assert recovered.hard_state == HardState(1, 1, 0)
    assert recovered.entries == _entries(1, 1)


def test_a_flipped_bit_in_a_middle_record_drops_it_and_everything_after(tmp_path: Path) -> None:
    ends = _write_each(tmp_path, _entries(1, 6))
    path = tmp_path / LOG_NAME
    full = path.read_bytes()
    for byte in range(ends[1], ends[2]):  # every byte of entry 3: header, fields and data
        damaged = bytearray(full)
        damaged[byte] ^= 1 << (byte % 8)
        path.write_bytes(damaged)
        recovered = _recover(tmp_path)
        assert recovered.entries == _entries(1, 2), byte
        assert recovered.truncated_bytes == len(full) - ends[1]
        assert path.stat().st_size == ends[1]


def test_a_snapshot_written_with_entries_replaces_the_whole_log(tmp_path: Path) -> None:
    storage, _ = _opened(tmp_path)
    storage.write(entries=_entries(1, 10), hard_state=HardState(1, 2, 8))
    snapshot = _snapshot(20, 3)
    written = storage.write(
        snapshot=snapshot, entries=_entries(21, 22, term=3), hard_state=HardState(3, 1, 20)
    )
    assert written < storage.log_bytes == (tmp_path / LOG_NAME).stat().st_size
    storage.sync()
    storage.close()
    assert _recover(tmp_path) == Recovered(
        HardState(3, 1, 20), snapshot, _entries(21, 22, term=3), 0
    )


def test_a_received_snapshot_keeps_the_stored_term_and_vote(tmp_path: Path) -> None:
    storage, _ = _opened(tmp_path)
    storage.write(entries=_entries(1, 3, term=4), hard_state=HardState(4, 2, 3))
    storage.sync()
    storage.write(snapshot=_snapshot(9, 4))  # no hard state in this call
    storage.close()
    recovered = _recover(tmp_path)
    assert (recovered.hard_state, recovered.entries) == (HardState(4, 2, 3), [])
    assert recovered.snapshot == _snapshot(9, 4)


def test_compact_keeps_the_suffix_and_the_hard_state(tmp_path: Path) -> None:
    storage, _ = _opened(tmp_path)
    storage.write(entries=_entries(1, 10, term=2), hard_state=HardState(2, 1, 6))
    storage.write(entries=_entries(8, 11, term=3, tag="b"), hard_state=HardState(3, 2, 7))
    before = storage.log_bytes
    storage.compact(_snapshot(6, 2))
    assert storage.log_bytes < before
    storage.write(entries=[Entry(4, 10, EntryKind.NOOP)])  # conflicts with a kept entry
    storage.close()
    recovered = _recover(tmp_path)
    assert recovered.snapshot == _snapshot(6, 2)
    assert recovered.entries == [
        *_entries(7, 7, term=2),
        *_entries(8, 9, term=3, tag="b"),
        Entry(4, 10, EntryKind.NOOP),
    ]
    assert recovered.hard_state == HardState(3, 2, 7)


def test_a_crash_at_any_step_of_compact_recovers_the_same_log(tmp_path: Path) -> None:
    live = tmp_path / "live"
    storage, _ = _opened(live)
    storage.write(snapshot=_snapshot(3, 1), entries=_entries(4, 12, term=2))
    storage.write(entries=_entries(10, 14, term=3), hard_state=HardState(3, 2, 11))
    storage.sync()
    old_log = (live / LOG_NAME).read_bytes()
    old_snapshot = (live / SNAPSHOT_NAME).read_bytes()
    storage.compact(_snapshot(8, 2, b"state at 8"))
    storage.close()
    new_log = (live / LOG_NAME).read_bytes()
    new_snapshot = (live / SNAPSHOT_NAME).read_bytes()
    logical = [*_entries(9, 9, term=2), *_entries(10, 14, term=3)]

    crash_states = {  # which files a crash between compact's steps can leave
        "writing the snapshot": {SNAPSHOT_NAME: old_snapshot, LOG_NAME: old_log,
                                 SNAPSHOT_NAME + TEMP_SUFFIX: new_snapshot[:20]},
        "after the snapshot rename": {SNAPSHOT_NAME: new_snapshot, LOG_NAME: old_log},
        "writing the new log": {SNAPSHOT_NAME: new_snapshot, LOG_NAME: old_log,
                                LOG_NAME + TEMP_SUFFIX: new_log[:-3]},
        "after the log rename": {SNAPSHOT_NAME: new_snapshot, LOG_NAME: new_log},
    }  # fmt: skip
    for step, files in crash_states.items():
        directory = tmp_path / step.replace(" ", "-")
        directory.mkdir()
        for name, content in files.items():
            (directory / name).write_bytes(content)
        storage, recovered = _opened(directory)
        index = recovered.snapshot.meta.index if recovered.snapshot else 0
        assert [e for e in recovered.entries if e.index > 8] == logical, step
        assert recovered.entries[0].index == index + 1, step
        assert recovered.hard_state == HardState(3, 2, 11), step
        assert sorted(p.name for p in directory.iterdir()) == [LOG_NAME, SNAPSHOT_NAME], step
        # appends after recovery are not shadowed by whatever the crash left behind
        storage.write(entries=[Entry(4, 10, EntryKind.NOOP)])
        storage.close()
        again = _recover(directory)
        assert again.entries[-1] == Entry(4, 10, EntryKind.NOOP), step
        assert [e for e in again.entries if e.index > 8] == [logical[0], again.entries[-1]]


def test_entries_the_snapshot_covers_are_dropped(tmp_path: Path) -> None:
    # A crash after a received snapshot was stored but before the log was replaced.
    old = tmp_path / "old"
    storage, _ = _opened(old)
    storage.write(entries=_entries(1, 10, term=1), hard_state=HardState(2, 1, 4))
    storage.close()

    for term, expected in [(1, _entries(6, 10)), (2, [])]:  # (2: our tail diverged there)
        directory = tmp_path / f"snapshot-term-{term}"
        shutil.copytree(old, directory)
        newer, _ = _opened(tmp_path / f"source-{term}")
        newer.write(snapshot=_snapshot(5, term))
        newer.close()
        shutil.copy(tmp_path / f"source-{term}" / SNAPSHOT_NAME, directory / SNAPSHOT_NAME)
        storage, recovered = _opened(directory)
        assert recovered.entries == expected, term
        assert recovered.hard_state == HardState(2, 1, 4)
        storage.write(entries=_entries(6, 6, term=2, tag="new"))
        storage.close()
        assert _recover(directory).entries == _entries(6, 6, term=2, tag="new")


@pytest.mark.parametrize(
    ("damage", "diagnosis"),
    [
        ("flip a data byte", "checksum mismatch"),
        ("flip a voter byte", "checksum mismatch"),
        ("cut the end", "bytes where its header promises"),
        ("bad magic", "bad magic"),
        ("empty", "only 0 bytes"),
    ],
)
def test_a_damaged_snapshot_file_fails_open_with_advice(
    tmp_path: Path, damage: str, diagnosis: str
) -> None:
    storage, _ = _opened(tmp_path)
    storage.write(snapshot=_snapshot(5, 1, b"the state machine" * 10), entries=_entries(6, 7))
    storage.close()
    path = tmp_path / SNAPSHOT_NAME
    data = bytearray(path.read_bytes())
    log_size = (tmp_path / LOG_NAME).stat().st_size
    if damage == "flip a data byte":
        data[-5] ^= 0x10
    elif damage == "flip a voter byte":
        data[8 + 28 + 7] ^= 0x01  # header, meta, then the first voter's low byte
    elif damage == "cut the end":
        del data[-1:]
    elif damage == "bad magic":
        data[0:4] = b"JUNK"
    else:
        data = bytearray()
    path.write_bytes(data)
    with pytest.raises(StorageCorrupt, match="corrupt") as caught:
        RaftStorage(tmp_path).open()
    assert diagnosis in str(caught.value)
    assert str(path) in str(caught.value)
    assert "restore it from another replica" in str(caught.value)
    assert (tmp_path / LOG_NAME).stat().st_size == log_size  # evidence left untouched


def test_a_log_with_entries_missing_before_it_is_corrupt(tmp_path: Path) -> None:
    storage, _ = _opened(tmp_path)
    storage.write(snapshot=_snapshot(5, 1), entries=_entries(6, 8))
    storage.close()
    (tmp_path / SNAPSHOT_NAME).unlink()  # entries 1..5 now exist nowhere
    with pytest.raises(StorageCorrupt, match="starts at entry 6"):
        RaftStorage(tmp_path).open()


def test_a_gap_inside_the_log_is_corrupt(tmp_path: Path) -> None:
    _write_each(tmp_path, _entries(1, 2))
    with (tmp_path / LOG_NAME).open("ab") as log:
        log.write(_frame(struct.pack(">BQQB", 1, 1, 4, 0) + b"four"))
    with pytest.raises(StorageCorrupt, match="not contiguous: entry 4 follows 2"):
        RaftStorage(tmp_path).open()


def test_an_intact_record_of_unknown_type_is_reported_not_dropped(tmp_path: Path) -> None:
    _write_each(tmp_path, _entries(1, 2))
    with (tmp_path / LOG_NAME).open("ab") as log:
        log.write(_frame(b"\x09future record"))
    size = (tmp_path / LOG_NAME).stat().st_size
    with pytest.raises(StorageCorrupt, match=r"unknown type 9.*newer version"):
        RaftStorage(tmp_path).open()
    assert (tmp_path / LOG_NAME).stat().st_size == size


def test_writes_that_would_break_the_log_are_refused_before_touching_disk(tmp_path: Path) -> None:
    storage, _ = _opened(tmp_path)
    storage.write(snapshot=_snapshot(2, 1), entries=_entries(3, 5))
    size = storage.log_bytes
    refused: list[Callable[[], object]] = [
        lambda: storage.write(entries=_entries(7, 7)),  # gap after 5
        lambda: storage.write(entries=_entries(2, 3)),  # at the snapshot's index
        lambda: storage.write(entries=[*_entries(5, 5), *_entries(7, 7)]),  # not consecutive
        lambda: storage.write(snapshot=_snapshot(1, 1)),  # older than the stored one
        lambda: storage.compact(_snapshot(6, 1)),  # beyond the log
        lambda: storage.compact(_snapshot(4, 9)),  # term differs from entry 4's
    ]
    for attempt in refused:
        with pytest.raises(ValueError):
            attempt()
    assert storage.log_bytes == size == (tmp_path / LOG_NAME).stat().st_size
    storage.close()
    assert _recover(tmp_path).entries == _entries(3, 5)


def test_use_before_open_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"call open\(\) first"):
        RaftStorage(tmp_path).write(entries=_entries(1, 1))


@dataclass
class _Model:
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    hard_state: HardState = field(default_factory=HardState)

    def state(self) -> tuple[Snapshot | None, list[Entry], HardState]:
        return self.snapshot, list(self.entries), self.hard_state

    def first(self) -> int:
        return self.snapshot.meta.index + 1 if self.snapshot else 1

    def last(self) -> int:
        return self.first() + len(self.entries) - 1

    def term_at(self, index: int) -> int:
        if index >= self.first():
            return self.entries[index - self.first()].term
        return self.snapshot.meta.term if self.snapshot else 0


def test_random_histories_with_crashes_recover_a_state_that_was_written(tmp_path: Path) -> None:
    """Any sequence of writes, syncs, snapshots and compactions, cut short at any byte of
    its unsynced suffix, recovers exactly the state after the last whole record."""
    for seed in range(max(1, round(4 * SCALE))):
        rng = random.Random(seed)
        directory = tmp_path / f"seed-{seed}"
        storage, _ = _opened(directory)
        model = _Model()
        term = 1
        # (log size, state) after every record since the last point known to be durable
        points = [(storage.log_bytes, model.state())]
        for step in range(300):
            roll = rng.random()
            if roll < 0.55:
                index = rng.randint(max(model.first(), model.last() - 3), model.last() + 1)
                entry = Entry(term, index, EntryKind.NORMAL, rng.randbytes(rng.randint(0, 40)))
                storage.write(entries=[entry])
                del model.entries[index - model.first() :]
                model.entries.append(entry)
            elif roll < 0.7:
                term += rng.random() < 0.5
                model.hard_state = HardState(term, rng.randint(0, 3), model.last())
                storage.write(hard_state=model.hard_state)
            elif roll < 0.78:
                storage.sync()
                points = []
            elif roll < 0.83:
                index = rng.randint(model.first() - 1, model.last())
                snapshot = _snapshot(index, model.term_at(index), rng.randbytes(30))
                storage.compact(snapshot)
                model.snapshot, model.entries = snapshot, model.entries[index - model.first() + 1 :]
                points = []
            elif roll < 0.86:
                term += 1
                index = model.last() + rng.randint(-2, 5)
                index = max(index, model.first() - 1)
                snapshot = _snapshot(index, term, rng.randbytes(30))
                storage.write(snapshot=snapshot)
                storage.sync()
                model.snapshot, model.entries = snapshot, []
                points = []
            else:
                storage.close()
                path = directory / LOG_NAME
                cut = rng.randint(points[0][0], storage.log_bytes)
                os.truncate(path, cut)
                size, (kept_snapshot, entries, hard_state) = max(
                    (point for point in points if point[0] <= cut),
                    key=lambda p: p[0],
                )
                storage, recovered = _opened(directory)
                context = f"seed {seed} step {step} cut {cut}"
                assert recovered.snapshot == kept_snapshot, context
                assert recovered.entries == entries, context
                assert recovered.hard_state == hard_state, context
                assert recovered.truncated_bytes == cut - size, context
                model = _Model(kept_snapshot, entries, hard_state)
                points = []
            points.append((storage.log_bytes, model.state()))
        storage.close()
