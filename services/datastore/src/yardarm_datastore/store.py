"""The durable store: decide a write against the state, log it, apply it, acknowledge.

Writes are decided and applied in memory in order (no await in between, so compare-and-
set is exact), then acknowledged only after the flusher has fsynced their record. Many
concurrent writes share one fsync (group commit). A read of a key whose newest write is
not yet durable waits for that fsync, so nobody observes a write a crash could undo.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yardarm_datastore.state import Entry, KVState, Outcome
from yardarm_datastore.wal import WriteAheadLog, encode, fsync_dir

SNAPSHOT_NAME = "snapshot.json"
WAL_NAME = "wal.log"
COMPACT_BYTES = 64 * 1024 * 1024

log = logging.getLogger("yardarm.datastore.store")


class Store:
    """One replica's durable key-value store."""

    def __init__(
        self,
        data_dir: Path,
        *,
        compact_bytes: int = COMPACT_BYTES,
        on_flush: Callable[[float, int], None] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.state = KVState()
        self._wal = WriteAheadLog(data_dir / WAL_NAME)
        self._compact_bytes = compact_bytes
        self._on_flush = on_flush
        self._pending: list[bytes] = []
        self._pending_revision = 0
        self._durable_revision = 0
        self._key_revision: dict[str, int] = {}
        self._durable = asyncio.Condition()
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self.recovered_records = 0
        self.truncated_bytes = 0

    # -- lifecycle -----------------------------------------------------------------

    def open(self) -> None:
        """Load the snapshot, replay the log, then compact so the next start is quick."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        snapshot = self.data_dir / SNAPSHOT_NAME
        if snapshot.exists():
            self.state = KVState.from_snapshot(json.loads(snapshot.read_bytes()))
        recovery = self._wal.open()
        for record in recovery.records:
            if int(record["r"]) > self.state.revision:
                self.state.apply(record)
        self.recovered_records = len(recovery.records)
        self.truncated_bytes = recovery.truncated_bytes
        self._durable_revision = self._pending_revision = self.state.revision
        if recovery.records:
            self._write_snapshot()

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_loop(), name="wal-flusher")

    async def close(self) -> None:
        if self._flusher is not None:
            await self._wait_durable(self._pending_revision)
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._wal.close()

    # -- reads ---------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        await self._wait_durable(self._key_revision.get(key, 0))
        return self.state.get(key)

    async def list(
        self, prefix: str, limit: int, after: str | None
    ) -> tuple[list[tuple[str, Entry]], str | None]:
        await self._wait_durable(self._pending_revision)
        keys, more = self.state.list(prefix, limit, after)
        items = [(k, self.state.entries[k]) for k in keys]
        return items, (keys[-1] if more and keys else None)

    # -- writes --------------------------------------------------------------------

    async def put(
        self, key: str, value: Any, if_version: int | None, idem_key: str | None
    ) -> tuple[Outcome, bool]:
        """(outcome, replayed). Conflicts are answered, not logged."""
        replay = self._replay(idem_key)
        if replay is not None:
            return replay, True
        current = self.state.get(key)
        if if_version is not None:
            actual = current.version if current else 0
            if actual != if_version:
                return self._conflict(key, if_version, actual), False
        revision = self._pending_revision + 1
        outcome = Outcome(200 if current else 201, {"key": key, "version": revision})
        record = {"op": "put", "k": key, "v": value, "r": revision}
        return await self._commit(record, outcome, idem_key), False

    async def delete(
        self, key: str, if_version: int | None, idem_key: str | None
    ) -> tuple[Outcome, bool]:
        replay = self._replay(idem_key)
        if replay is not None:
            return replay, True
        current = self.state.get(key)
        if current is None:
            return Outcome(404, {"key": key}), False
        if if_version is not None and current.version != if_version:
            return self._conflict(key, if_version, current.version), False
        revision = self._pending_revision + 1
        outcome = Outcome(200, {"key": key, "version": revision})
        record = {"op": "del", "k": key, "r": revision}
        return await self._commit(record, outcome, idem_key), False

    def _replay(self, idem_key: str | None) -> Outcome | None:
        if idem_key is None:
            return None
        return self.state.idempotency.get(idem_key)

    @staticmethod
    def _conflict(key: str, expected: int, actual: int) -> Outcome:
        return Outcome(409, {"key": key, "expected_version": expected, "current_version": actual})

    async def _commit(self, record: dict[str, Any], outcome: Outcome, idem: str | None) -> Outcome:
        if self._failed is not None:
            raise RuntimeError(
                "the write-ahead log failed; restart the datastore"
            ) from self._failed
        if idem:
            record = {**record, "ik": idem, "s": outcome.status, "b": outcome.body}
        revision = int(record["r"])
        self._pending.append(encode(record))
        self._pending_revision = revision
        self._key_revision[record["k"]] = revision
        self.state.apply(record)
        self._wakeup.set()
        await self._wait_durable(revision)
        return outcome

    # -- durability ----------------------------------------------------------------

    async def _wait_durable(self, revision: int) -> None:
        if revision <= self._durable_revision:
            return
        async with self._durable:
            await self._durable.wait_for(
                lambda: self._durable_revision >= revision or self._failed is not None
            )
        if self._durable_revision < revision:
            raise RuntimeError("the write-ahead log failed; restart the datastore")

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                continue
            batch, self._pending = self._pending, []
            frames = b"".join(batch)
            revision = self._pending_revision
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._wal.append, frames)
            except OSError as exc:
                log.exception("write-ahead log append failed")
                self._failed = exc
                async with self._durable:
                    self._durable.notify_all()
                return
            if self._on_flush is not None:
                self._on_flush(time.perf_counter() - started, len(batch))
            async with self._durable:
                self._durable_revision = revision
                self._durable.notify_all()
            if self._wal.size > self._compact_bytes:
                # The copy is taken on the loop (consistent); records still pending are
                # in it too and are skipped on replay, as their revision is not newer.
                await asyncio.to_thread(self._write_snapshot, self.state.snapshot())

    def _write_snapshot(self, doc: dict[str, Any] | None = None) -> None:
        """Atomically persist the whole state, then empty the log it covers."""
        doc = doc if doc is not None else self.state.snapshot()
        path = self.data_dir / SNAPSHOT_NAME
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            handle.write(json.dumps(doc, separators=(",", ":")).encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(self.data_dir)
        self._wal.reset()
