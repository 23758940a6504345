"""The durable store: decide a write against the state, log it, apply it, acknowledge.

A write is checked, logged (queued to the group committer) and applied in memory in one
synchronous step, so compare-and-set decisions are exact and the log order is the apply
order; it is acknowledged only once its record is fsynced. Refused writes (409, 404) and
idempotent replays change nothing and are not logged. A read that sees a write whose record
is not yet durable waits for it, so nobody observes a write a crash could undo.

On disk: `snapshot` (the state at some revision) and `wal.log` (the commands after it).
Recovery loads the snapshot and replays the log; compaction writes a new snapshot and
empties the log, at startup and whenever the log outgrows `compact_bytes`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace

from yardarm_datastore.snapshot import read_snapshot, write_snapshot
from yardarm_datastore.state import (
    IDEMPOTENCY_CAPACITY,
    Command,
    CorruptState,
    Entry,
    KVState,
    Outcome,
    delete_command,
    put_command,
)
from yardarm_datastore.wal import (
    CommitInfo,
    GroupCommitter,
    WalFailed,
    WriteAheadLog,
    encode,
    fsync_dir,
)

SNAPSHOT_NAME = "snapshot"
WAL_NAME = "wal.log"
COMPACT_BYTES = 64 * 1024 * 1024

log = logging.getLogger("yardarm.datastore.store")
tracer = trace.get_tracer("yardarm.datastore.store")


class StoreUnavailable(RuntimeError):
    """The store cannot serve: not open yet, closed, or its log failed (restart it)."""


@dataclass(frozen=True)
class RecoveryReport:
    snapshot_revision: int
    replayed: int
    truncated_bytes: int
    revision: int
    seconds: float


class Store:
    """One replica's durable key-value store."""

    def __init__(
        self,
        data_dir: Path,
        *,
        compact_bytes: int = COMPACT_BYTES,
        idempotency_capacity: int = IDEMPOTENCY_CAPACITY,
        on_batch: Callable[[CommitInfo], None] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.state = KVState(idempotency_capacity)
        self._idempotency_capacity = idempotency_capacity
        self._wal = WriteAheadLog(data_dir / WAL_NAME)
        self._committer = GroupCommitter(self._wal, on_batch=on_batch)
        self._compact_bytes = compact_bytes
        self._compacting = False
        self._open = False
        # the newest not-yet-durable write of each key, and of the whole store
        self._pending: dict[str, asyncio.Future[CommitInfo]] = {}
        self._tail: asyncio.Future[CommitInfo] | None = None

    @property
    def ready(self) -> bool:
        """Recovered and able to write."""
        return self._open and self._committer.failed is None

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> RecoveryReport:
        """Load the snapshot, replay the log (cutting a bad tail), compact, start."""
        report = await asyncio.to_thread(self._recover)
        self._committer.start()
        self._open = True
        return report

    def _recover(self) -> RecoveryReport:
        started = time.perf_counter()
        created = not self.data_dir.exists()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_dir(self.data_dir.parent)
        doc = read_snapshot(self.data_dir / SNAPSHOT_NAME)
        if doc is not None:
            self.state = KVState.from_snapshot(doc, self._idempotency_capacity)
        snapshot_revision = self.state.revision
        recovery = self._wal.open()
        replayed = 0
        for record in recovery.records:
            if int(record.get("r", 0)) <= snapshot_revision:
                continue  # already in the snapshot (a crash between snapshot and reset)
            outcome = self.state.apply(record)
            if not outcome.applied or outcome.replayed:
                raise CorruptState(
                    f"logged command for revision {record.get('r')} does not apply "
                    f"(answer {outcome.status}); the log does not match the snapshot"
                )
            replayed += 1
        if recovery.records or recovery.truncated_bytes:
            self._compact_files(self.state.to_snapshot())
        return RecoveryReport(
            snapshot_revision=snapshot_revision,
            replayed=replayed,
            truncated_bytes=recovery.truncated_bytes,
            revision=self.state.revision,
            seconds=time.perf_counter() - started,
        )

    async def close(self) -> None:
        """Make queued writes durable, then close the log."""
        if not self._open:
            return
        self._open = False
        await self._committer.close()
        self._wal.close()

    # -- reads ---------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        self._usable()
        entry = self.state.get(key)
        await self._durable(self._pending.get(key))
        return entry

    async def list(
        self, prefix: str, limit: int, after: str | None = None
    ) -> tuple[list[tuple[str, Entry]], str | None]:
        """A page of entries under `prefix` and the `after` key of the next page."""
        self._usable()
        page = self.state.list(prefix, limit, after)
        await self._durable(self._tail)
        return page

    # -- writes --------------------------------------------------------------------

    async def put(
        self,
        key: str,
        value: Any,
        if_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> Outcome:
        """201 created / 200 updated, 409 on a version mismatch, or a replayed outcome."""
        return await self._write(put_command(key, value, if_version, idempotency_key))

    async def delete(
        self, key: str, if_version: int | None = None, idempotency_key: str | None = None
    ) -> Outcome:
        """200 deleted, 404 when absent, 409 on a version mismatch, or a replay."""
        return await self._write(delete_command(key, if_version, idempotency_key))

    async def _write(self, command: Command) -> Outcome:
        self._usable()
        recorded = self.state.recorded(command.get("ik"))
        if recorded is not None:
            await self._durable(self._tail)  # the first attempt may still be in flight
            return recorded
        refusal = self.state.check(command)
        if refusal is not None:
            return refusal
        command["r"] = self.state.revision + 1
        frame = encode(command)
        done = self._committer.submit(frame)
        outcome = self.state.apply(command)
        key = command["k"]
        self._pending[key] = self._tail = done
        done.add_done_callback(functools.partial(self._settled, key))
        with tracer.start_as_current_span("wal.commit") as span:
            span.set_attribute("yardarm.kv.revision", outcome.body["version"])
            info = await self._durable(done)
            if info is not None:
                span.set_attribute("yardarm.wal.batch_records", info.records)
                span.set_attribute("yardarm.wal.batch_bytes", info.bytes)
                span.set_attribute("yardarm.wal.fsync_seconds", info.seconds)
        self._maybe_compact()
        return outcome

    def _settled(self, key: str, done: asyncio.Future[CommitInfo]) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]
        if self._tail is done:
            self._tail = None
        if not done.cancelled():
            done.exception()  # retrieved here, so a failure is never reported as unawaited

    async def _durable(self, done: asyncio.Future[CommitInfo] | None) -> CommitInfo | None:
        if done is None:
            return None
        try:
            return await asyncio.shield(done)
        except WalFailed as exc:
            raise StoreUnavailable(f"{exc}; restart the datastore to recover") from exc

    def _usable(self) -> None:
        if self._committer.failed is not None:
            raise StoreUnavailable(
                f"write-ahead log failed ({self._committer.failed}); restart the datastore"
            )
        if not self._open:
            raise StoreUnavailable("the store is not open (recovering or shut down)")

    # -- compaction ----------------------------------------------------------------

    @property
    def wal_bytes(self) -> int:
        return self._wal.size

    async def compact(self) -> None:
        """Snapshot the state now and empty the log (ordered with concurrent writes)."""
        self._usable()
        await self._committer.barrier(
            functools.partial(self._compact_files, self.state.to_snapshot())
        )

    def _maybe_compact(self) -> None:
        if self._compacting or self._wal.size < self._compact_bytes or not self._open:
            return
        self._compacting = True
        # The document is taken now, in the same step as the barrier is queued: it holds
        # exactly the writes queued before it, and later ones go to the emptied log.
        done = self._committer.barrier(
            functools.partial(self._compact_files, self.state.to_snapshot())
        )
        done.add_done_callback(self._compacted)

    def _compacted(self, done: asyncio.Future[None]) -> None:
        self._compacting = False
        if not done.cancelled() and done.exception() is not None:
            log.error("compaction failed; the log keeps growing", exc_info=done.exception())

    def _compact_files(self, doc: dict[str, Any]) -> None:
        write_snapshot(self.data_dir / SNAPSHOT_NAME, doc)
        self._wal.reset()
        log.info(
            "snapshot at revision %d written, log emptied", doc["revision"],
            extra={"event": "compacted", "revision": doc["revision"]},
        )  # fmt: skip
