"""The write-ahead log keeps every complete record, drops a torn or corrupt tail, and
batches concurrent writers into one fsync."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from yardarm_datastore.wal import (
    HEADER,
    CommitInfo,
    GroupCommitter,
    WalFailed,
    WriteAheadLog,
    encode,
)


def _record(i: int) -> dict[str, object]:
    return {"r": i, "op": "put", "k": f"k{i}", "v": {"i": i, "text": "x" * (i % 7)}}


def _write(path: Path, count: int) -> list[int]:
    """Writes `count` records; returns the offset where each one ends."""
    wal = WriteAheadLog(path)
    wal.open()
    ends = []
    for i in range(1, count + 1):
        wal.append(encode(_record(i)))
        ends.append(wal.size)
    wal.close()
    return ends


def test_records_round_trip_in_order(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    _write(path, 50)
    recovery = WriteAheadLog(path).open()
    assert recovery.records == [_record(i) for i in range(1, 51)]
    assert recovery.truncated_bytes == 0
    assert recovery.valid_bytes == path.stat().st_size


def test_every_torn_tail_keeps_the_complete_records_and_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    ends = _write(path, 6)
    full = path.read_bytes()
    # cut anywhere inside the last two records, including inside their headers
    for cut in range(ends[3] + 1, ends[5]):
        path.write_bytes(full[:cut])
        wal = WriteAheadLog(path)
        recovery = wal.open()
        complete = sum(1 for end in ends if end <= cut)
        assert [r["r"] for r in recovery.records] == list(range(1, complete + 1)), cut
        assert recovery.valid_bytes == ends[complete - 1]
        assert recovery.truncated_bytes == cut - ends[complete - 1]
        assert path.stat().st_size == ends[complete - 1]
        wal.close()


def test_appends_after_a_truncated_tail_are_readable(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    _write(path, 10)
    path.write_bytes(path.read_bytes()[:-7])
    wal = WriteAheadLog(path)
    assert len(wal.open().records) == 9
    wal.append(encode({"r": 10, "op": "put", "k": "again", "v": 1}))
    wal.close()
    again = WriteAheadLog(path).open()
    assert [r["r"] for r in again.records] == list(range(1, 11))
    assert again.records[-1]["k"] == "again"


@pytest.mark.parametrize("where", ["payload", "length", "checksum"])
def test_a_flipped_bit_in_the_last_record_is_detected_and_cut(tmp_path: Path, where: str) -> None:
    path = tmp_path / "wal.log"
    ends = _write(path, 5)
    data = bytearray(path.read_bytes())
    offset = {"payload": len(data) - 3, "length": ends[3] + 3, "checksum": ends[3] + 5}[where]
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    recovery = WriteAheadLog(path).open()
    assert [r["r"] for r in recovery.records] == [1, 2, 3, 4]
    assert recovery.valid_bytes == ends[3]
    assert path.stat().st_size == ends[3]


def test_garbage_after_the_log_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    ends = _write(path, 3)
    with path.open("ab") as handle:
        handle.write(HEADER.pack(10, 0) + b"0123456789")
    recovery = WriteAheadLog(path).open()
    assert len(recovery.records) == 3 and path.stat().st_size == ends[-1]


class SlowLog(WriteAheadLog):
    """A real log whose appends wait for the test's go-ahead, to hold a flush open."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.started = threading.Event()
        self.release = threading.Event()

    def append(self, frames: bytes) -> None:
        self.started.set()
        assert self.release.wait(timeout=30)
        super().append(frames)


async def _until(flag: threading.Event) -> None:
    for _ in range(3000):
        if flag.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the committer never started writing")


async def test_writers_arriving_during_an_fsync_share_the_next_one(tmp_path: Path) -> None:
    wal = SlowLog(tmp_path / "wal.log")
    wal.open()
    batches: list[CommitInfo] = []
    committer = GroupCommitter(wal, on_batch=batches.append)
    committer.start()
    first = committer.submit(encode(_record(1)))
    await _until(wal.started)
    rest = [committer.submit(encode(_record(i))) for i in range(2, 102)]
    assert not first.done()
    wal.release.set()
    infos = await asyncio.gather(first, *rest)
    await committer.close()
    wal.close()
    assert [b.records for b in batches] == [1, 100]
    assert infos[0].records == 1 and all(info.records == 100 for info in infos[1:])
    recovered = WriteAheadLog(tmp_path / "wal.log").open().records
    assert [r["r"] for r in recovered] == list(range(1, 102))


async def test_concurrent_writers_need_far_fewer_fsyncs_than_writes(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal.log")
    wal.open()
    batches: list[CommitInfo] = []
    committer = GroupCommitter(wal, on_batch=batches.append)
    committer.start()

    async def writer(w: int) -> None:
        for n in range(20):
            await committer.submit(encode({"w": w, "n": n}))

    await asyncio.gather(*(writer(w) for w in range(50)))
    await committer.close()
    assert sum(b.records for b in batches) == 1000
    assert len(batches) < 200  # 50 writers in lock step: ~20 batches, never one per write
    records = WriteAheadLog(tmp_path / "wal.log").open().records
    for w in range(50):  # each writer's records are in its own order
        assert [r["n"] for r in records if r["w"] == w] == list(range(20))


async def test_a_barrier_runs_between_the_writes_before_and_after_it(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path / "wal.log")
    wal.open()
    committer = GroupCommitter(wal)
    committer.start()
    seen: list[int] = []
    before = [committer.submit(encode(_record(i))) for i in range(1, 4)]
    barrier = committer.barrier(lambda: seen.append(wal.size))
    after = [committer.submit(encode(_record(i))) for i in range(4, 6)]
    await asyncio.gather(*before, barrier, *after)
    await committer.close()
    assert seen == [sum(len(encode(_record(i))) for i in range(1, 4))]
    wal.close()


class FailingLog(WriteAheadLog):
    def append(self, frames: bytes) -> None:
        raise OSError(28, "No space left on device")


async def test_a_failed_fsync_fails_its_writers_and_every_later_write(tmp_path: Path) -> None:
    wal = FailingLog(tmp_path / "wal.log")
    wal.open()
    committer = GroupCommitter(wal)
    committer.start()
    with pytest.raises(WalFailed, match="No space left"):
        await committer.submit(encode(_record(1)))
    assert committer.failed is not None
    with pytest.raises(WalFailed):
        await committer.submit(encode(_record(2)))
    await committer.close()
    wal.close()
