"""The write-ahead log: checksummed records, group commit, torn-tail recovery.

A record is `[u32 length][u32 crc32][payload]` (big-endian); the payload is compact JSON.
On open, every record whose length and checksum hold is returned; the first one that does
not (a write cut short by a crash, or a flipped bit) ends the log, and the file is
truncated there so it is never applied and never shadows later appends.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADER = struct.Struct(">II")
MAX_RECORD_BYTES = 64 * 1024 * 1024

log = logging.getLogger("yardarm.datastore.wal")


@dataclass(frozen=True)
class Recovery:
    """What opening the log found."""

    records: list[dict[str, Any]]
    valid_bytes: int
    truncated_bytes: int


def encode(payload: dict[str, Any]) -> bytes:
    """One framed record."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def scan(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The complete, intact records in `data` and the offset where they end."""
    records: list[dict[str, Any]] = []
    offset = 0
    while offset + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        end = start + length
        if length > MAX_RECORD_BYTES or end > len(data):
            break
        body = data[start:end]
        if zlib.crc32(body) != crc:
            break
        try:
            records.append(json.loads(body))
        except ValueError:
            break
        offset = end
    return records, offset


def fsync_dir(path: Path) -> None:
    """Make a file's creation or rename durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """An append-only file; `append` is called from one flusher at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.size = 0

    def open(self) -> Recovery:
        """Read and verify the log, cut off any bad tail, and open it for appends."""
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"" if created else self.path.read_bytes()
        records, valid = scan(data)
        truncated = len(data) - valid
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if truncated:
            log.warning(
                "write-ahead log %s: dropping %d bytes of torn or corrupt tail at offset %d",
                self.path, truncated, valid,
            )  # fmt: skip
            os.ftruncate(self._fd, valid)
            os.fsync(self._fd)
        if created:
            os.fsync(self._fd)
            fsync_dir(self.path.parent)
        self.size = valid
        return Recovery(records, valid, truncated)

    def append(self, frames: bytes) -> None:
        """Write frames and fsync; returns only once they are on stable storage."""
        assert self._fd is not None, "open() first"
        view = memoryview(frames)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self.size += len(frames)

    def reset(self) -> None:
        """Empty the log (after a snapshot has captured everything in it)."""
        assert self._fd is not None, "open() first"
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.size = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
