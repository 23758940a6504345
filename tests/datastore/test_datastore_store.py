"""The durable store: exact compare-and-set, durable reads, recovery, compaction."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from yardarm_datastore.state import IDEMPOTENCY_CAPACITY, KVState, delete_command, put_command
from yardarm_datastore.store import (
    COMPACT_BYTES,
    SNAPSHOT_NAME,
    WAL_NAME,
    Store,
    StoreUnavailable,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = Store(tmp_path / "data")
    await opened.open()
    yield opened
    await opened.close()


async def _reopen(
    path: Path,
    *,
    compact_bytes: int = COMPACT_BYTES,
    idempotency_capacity: int = IDEMPOTENCY_CAPACITY,
) -> Store:
    store = Store(path, compact_bytes=compact_bytes, idempotency_capacity=idempotency_capacity)
    await store.open()
    return store


async def test_compare_and_set_admits_exactly_one_of_concurrent_writers(store: Store) -> None:
    created = await store.put("stock", {"available": 10}, 0)
    version = created.body["version"]
    results = await asyncio.gather(*(store.put("stock", {"n": i}, version) for i in range(20)))
    assert [o.status for o in results].count(200) == 1
    assert all(o.status in (200, 409) for o in results)
    winner = next(o for o in results if o.status == 200)
    assert all(o.body["current_version"] == winner.body["version"] for o in results if o != winner)


async def test_a_retry_waits_for_and_replays_the_first_outcome(store: Store) -> None:
    first, retry = await asyncio.gather(
        store.put("k", 1, None, "idem"), store.put("k", 2, None, "idem")
    )
    assert first.status == 201 and not first.replayed
    assert retry.replayed and retry.body == first.body and retry.status == first.status
    entry = await store.get("k")
    assert entry is not None and entry.value == 1


async def test_writes_survive_close_and_reopen_with_versions_and_idempotency(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data"
    store = await _reopen(path)
    first = await store.put("k", 1, None, "key-1")
    await store.put("k", 2)
    await store.put("gone", 1)
    gone = await store.delete("gone", None, "del-1")
    await store.close()

    reopened = await _reopen(path)
    try:
        replay = await reopened.put("k", 77, None, "key-1")
        assert replay.replayed and replay.body == first.body
        del_replay = await reopened.delete("gone", None, "del-1")
        assert del_replay.replayed and del_replay.body == gone.body
        entry = await reopened.get("k")
        assert entry is not None and entry.value == 2
        assert await reopened.get("gone") is None
        after = await reopened.put("gone", 3)
        assert after.body["version"] > gone.body["version"]
    finally:
        await reopened.close()


async def test_a_read_of_a_write_in_flight_waits_until_it_is_durable(tmp_path: Path) -> None:
    store = await _reopen(tmp_path / "data")
    gate = threading.Event()
    real_append = store._wal.append

    def held_append(frames: bytes) -> None:
        assert gate.wait(timeout=30)
        real_append(frames)

    store._wal.append = held_append  # type: ignore[method-assign]
    write = asyncio.create_task(store.put("k", "v"))
    await asyncio.sleep(0)
    read = asyncio.create_task(store.get("k"))
    listing = asyncio.create_task(store.list("", 10))
    await asyncio.sleep(0.3)
    assert not write.done() and not read.done() and not listing.done()
    gate.set()
    entry = await asyncio.wait_for(read, 30)
    assert entry is not None and entry.value == "v"
    assert (await write).status == 201
    assert [k for k, _ in (await listing)[0]] == ["k"]
    await store.close()


async def test_a_failed_log_write_makes_the_store_refuse_service(tmp_path: Path) -> None:
    store = await _reopen(tmp_path / "data")
    await store.put("before", 1)

    def broken(frames: bytes) -> None:
        raise OSError(5, "Input/output error")

    store._wal.append = broken  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable, match="restart"):
        await store.put("k", 1)
    assert not store.ready
    with pytest.raises(StoreUnavailable):
        await store.get("before")
    await store.close()
    reopened = await _reopen(tmp_path / "data")
    assert await reopened.get("k") is None and await reopened.get("before") is not None
    await reopened.close()


async def test_a_torn_log_tail_loses_only_the_torn_write(tmp_path: Path) -> None:
    path = tmp_path / "data"
    store = await _reopen(path)
    for i in range(10):
        await store.put(f"k{i}", i)
    await store.close()
    wal = path / WAL_NAME
    wal.write_bytes(wal.read_bytes()[:-5])
    reopened = await _reopen(path)
    assert [k for k, _ in (await reopened.list("k", 100))[0]] == [f"k{i}" for i in range(9)]
    assert (await reopened.put("k9", "again")).body["version"] == 10
    await reopened.close()


async def test_compaction_during_writes_then_recovery_is_equivalent(tmp_path: Path) -> None:
    """Snapshot + log replay rebuilds exactly the state that applying every write gives."""
    path = tmp_path / "data"
    store = await _reopen(path, compact_bytes=4096, idempotency_capacity=50)
    rng = random.Random(3)

    async def worker(w: int) -> None:
        for n in range(60):
            key = f"k{rng.randrange(25)}"
            idem = f"i{rng.randrange(80)}" if rng.random() < 0.3 else None
            if rng.random() < 0.2:
                await store.delete(key, None, idem)
            else:
                await store.put(key, {"w": w, "n": n}, None, idem)

    await asyncio.gather(*(worker(w) for w in range(8)))
    snapshot = store.state.to_snapshot()
    await store.close()
    assert (path / SNAPSHOT_NAME).exists()  # written while the writes ran

    reopened = await _reopen(path, idempotency_capacity=50)
    try:
        assert reopened.state.to_snapshot() == snapshot
        # and the rebuilt state behaves the same as the original on new commands
        for command in (put_command("k1", "x", None, "fresh"), delete_command("k2")):
            assert reopened.state.check(command) == KVState.from_snapshot(
                snapshot, idempotency_capacity=50
            ).check(command)
    finally:
        await reopened.close()


async def test_explicit_compaction_empties_the_log_and_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "data"
    store = await _reopen(path)
    for i in range(30):
        await store.put(f"k{i}", i, None, f"i{i}")
    assert store.wal_bytes > 0
    await store.compact()
    assert store.wal_bytes == 0 and (path / WAL_NAME).stat().st_size == 0
    await store.put("after", 1)
    expected = store.state.to_snapshot()
    await store.close()
    reopened = await _reopen(path)
    assert reopened.state.to_snapshot() == expected
    await reopened.close()
