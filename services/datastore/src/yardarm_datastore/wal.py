"""The write-ahead log: checksummed records, torn-tail recovery, group commit.

A record is `[u32 length][u32 crc32][payload]` (big-endian); the checksum covers the
length field and the payload, so a damaged length is caught too. The payload is compact
JSON. On open, every record whose length and checksum hold is returned; the first one that
does not (a write cut short by a crash, or a flipped bit) ends the log and the file is
truncated there, so a bad tail is never applied and never hides later appends.

`GroupCommitter` lets many concurrent writers share one write + fsync: writes queue up on
the event loop, one task writes whatever has queued in a single call and fsyncs it in a
worker thread (the loop keeps serving), then resolves every writer's future.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADER = struct.Struct(">II")
LENGTH = struct.Struct(">I")
MAX_RECORD_BYTES = 64 * 1024 * 1024
MAX_BATCH_BYTES = 16 * 1024 * 1024

log = logging.getLogger("yardarm.datastore.wal")


class WalFailed(RuntimeError):
    """The log could not be written; nothing after this point is durable."""


@dataclass(frozen=True)
class Recovery:
    """What opening the log found."""

    records: list[dict[str, Any]]
    valid_bytes: int
    truncated_bytes: int


@dataclass(frozen=True)
class CommitInfo:
    """The group commit a write was part of."""

    records: int
    bytes: int
    seconds: float


def _checksum(length: bytes, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(length))


def encode(payload: dict[str, Any], max_bytes: int = MAX_RECORD_BYTES) -> bytes:
    """One framed record."""
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    if len(body) > max_bytes:
        raise ValueError(f"record of {len(body)} bytes exceeds {max_bytes}")
    length = LENGTH.pack(len(body))
    return length + LENGTH.pack(_checksum(length, body)) + body


def scan(data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> tuple[list[dict[str, Any]], int]:
    """The complete, intact records at the start of `data` and the offset where they end."""
    records: list[dict[str, Any]] = []
    offset = 0
    while offset + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        end = start + length
        if length > max_bytes or end > len(data):
            break
        body = data[start:end]
        if _checksum(data[offset : offset + LENGTH.size], body) != crc:
            break
        try:
            record = json.loads(body)
        except ValueError:
            break
        if not isinstance(record, dict):
            break
        records.append(record)
        offset = end
    return records, offset


def fsync_dir(path: Path) -> None:
    """Make the creation, rename or removal of an entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """An append-only file. Blocking calls; one caller at a time (the committer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.size = 0

    def open(self) -> Recovery:
        """Read and verify the log, cut off any bad tail, and open it for appends."""
        created = not self.path.exists()
        data = b"" if created else self.path.read_bytes()
        records, valid = scan(data)
        truncated = len(data) - valid
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if truncated:
            log.warning(
                "write-ahead log %s: dropping %d bytes of torn or corrupt tail at offset %d "
                "(%d intact records kept)",
                self.path, truncated, valid, len(records),
                extra={"event": "wal_truncated", "offset": valid, "dropped_bytes": truncated},
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
        if self._fd is None:
            raise WalFailed(f"write-ahead log {self.path} is not open")
        view = memoryview(frames)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fdatasync(self._fd)
        self.size += len(frames)

    def reset(self) -> None:
        """Empty the log, once a snapshot durably holds everything in it."""
        if self._fd is None:
            raise WalFailed(f"write-ahead log {self.path} is not open")
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.size = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class _Write:
    frame: bytes
    done: asyncio.Future[CommitInfo]


@dataclass
class _Barrier:
    action: Callable[[], None]
    done: asyncio.Future[None]


class GroupCommitter:
    """Batches concurrent appends into one write + fsync, in submission order.

    `submit` is synchronous, so the order of `submit` calls is the order in the log. A
    failed write fails its batch and every later one: the process must restart and
    recover, as the in-memory state may now be ahead of the disk.
    """

    def __init__(
        self,
        wal: WriteAheadLog,
        *,
        on_batch: Callable[[CommitInfo], None] | None = None,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self._wal = wal
        self._on_batch = on_batch
        self._max_batch_bytes = max_batch_bytes
        self._queue: list[_Write | _Barrier] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failed: BaseException | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="wal-committer")

    def submit(self, frame: bytes) -> asyncio.Future[CommitInfo]:
        """Queue one framed record; the future resolves once it is fsynced."""
        done: asyncio.Future[CommitInfo] = asyncio.get_running_loop().create_future()
        self._enqueue(_Write(frame, done))
        return done

    def barrier(self, action: Callable[[], None]) -> asyncio.Future[None]:
        """Run `action` in a thread after everything submitted so far is durable and
        before anything submitted later is written (snapshot + log reset)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Barrier(action, done))
        return done

    def _enqueue(self, item: _Write | _Barrier) -> None:
        if self.failed is not None:
            item.done.set_exception(WalFailed(f"write-ahead log failed: {self.failed}"))
        elif self._closing or self._task is None:
            item.done.set_exception(WalFailed("write-ahead log is not accepting writes"))
        else:
            self._queue.append(item)
            self._wakeup.set()

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                items, self._queue = self._queue, []
                await self._process(items)
            if self._closing:
                return

    async def _process(self, items: list[_Write | _Barrier]) -> None:
        batch: list[_Write] = []
        size = 0
        for item in items:
            if isinstance(item, _Write):
                if batch and size + len(item.frame) > self._max_batch_bytes:
                    await self._flush(batch, size)
                    batch, size = [], 0
                batch.append(item)
                size += len(item.frame)
                continue
            if batch:
                await self._flush(batch, size)
                batch, size = [], 0
            await self._run_barrier(item)
        if batch:
            await self._flush(batch, size)

    async def _flush(self, batch: list[_Write], size: int) -> None:
        if self.failed is not None:
            _fail(batch, WalFailed(f"write-ahead log failed: {self.failed}"))
            return
        frames = b"".join(item.frame for item in batch)
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._wal.append, frames)
        except Exception as exc:
            log.exception("write-ahead log append failed; refusing further writes")
            self.failed = exc
            _fail(batch, WalFailed(f"write-ahead log failed: {exc}"))
            return
        info = CommitInfo(records=len(batch), bytes=size, seconds=time.perf_counter() - started)
        for item in batch:
            if not item.done.done():
                item.done.set_result(info)
        if self._on_batch is not None:
            self._on_batch(info)

    async def _run_barrier(self, item: _Barrier) -> None:
        if self.failed is not None:
            _fail([item], WalFailed(f"write-ahead log failed: {self.failed}"))
            return
        try:
            await asyncio.to_thread(item.action)
        except Exception as exc:
            if not item.done.done():
                item.done.set_exception(exc)
            return
        if not item.done.done():
            item.done.set_result(None)


def _fail(items: list[_Write] | list[_Barrier], exc: BaseException) -> None:
    for item in items:
        if not item.done.done():
            item.done.set_exception(exc)
