"""The write-ahead log keeps every complete record and drops a torn or corrupt tail."""

from __future__ import annotations

from pathlib import Path

from yardarm_datastore.wal import WriteAheadLog, encode


def _write(path: Path, count: int) -> None:
    wal = WriteAheadLog(path)
    wal.open()
    wal.append(
        b"".join(encode({"r": i, "op": "put", "k": f"k{i}", "v": i}) for i in range(1, count + 1))
    )
    wal.close()


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    _write(path, 50)
    recovery = WriteAheadLog(path).open()
    assert [r["r"] for r in recovery.records] == list(range(1, 51))
    assert recovery.truncated_bytes == 0


def test_torn_tail_is_truncated_and_later_appends_are_readable(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    _write(path, 10)
    full = path.stat().st_size
    path.write_bytes(path.read_bytes()[: full - 7])  # a crash mid-record
    wal = WriteAheadLog(path)
    recovery = wal.open()
    assert [r["r"] for r in recovery.records] == list(range(1, 10))
    assert recovery.truncated_bytes > 0
    wal.append(encode({"r": 10, "op": "put", "k": "again", "v": 1}))
    wal.close()
    again = WriteAheadLog(path).open()
    assert [r["r"] for r in again.records] == list(range(1, 11))
    assert again.records[-1]["k"] == "again"


def test_flipped_byte_in_last_record_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "wal.log"
    _write(path, 5)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    recovery = WriteAheadLog(path).open()
    assert [r["r"] for r in recovery.records] == [1, 2, 3, 4]
    assert recovery.truncated_bytes > 0
    assert path.stat().st_size == recovery.valid_bytes
