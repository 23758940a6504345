"""Store semantics: versions, compare-and-set, pagination, idempotency, recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path

from yardarm_datastore.store import Store


async def _store(path: Path, **kwargs: int) -> Store:
    store = Store(path, **kwargs)  # type: ignore[arg-type]
    store.open()
    await store.start()
    return store


async def test_version_strictly_increases_across_delete_and_recreate(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    first, _ = await store.put("a", 1, None, None)
    second, _ = await store.put("a", 2, None, None)
    deleted, _ = await store.delete("a", None, None)
    again, _ = await store.put("a", 3, 0, None)
    versions = [o.body["version"] for o in (first, second, deleted, again)]
    assert versions == sorted(versions) and len(set(versions)) == 4
    assert first.status == 201 and second.status == 200 and again.status == 201
    await store.close()


async def test_compare_and_set_admits_exactly_one_of_concurrent_writers(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    created, _ = await store.put("stock", {"available": 10}, 0, None)
    version = created.body["version"]
    results = await asyncio.gather(
        *(store.put("stock", {"n": i}, version, None) for i in range(20))
    )
    assert sorted(o.status for o, _ in results).count(200) == 1
    assert all(o.status in (200, 409) for o, _ in results)
    conflict = next(o for o, _ in results if o.status == 409)
    assert conflict.body["current_version"] > version
    await store.close()


async def test_prefix_listing_pages_with_after(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    for key in ("a/1", "a/2", "a/3", "b/1", "a/0"):
        await store.put(key, key, None, None)
    page, next_key = await store.list("a/", 2, None)
    assert [k for k, _ in page] == ["a/0", "a/1"] and next_key == "a/1"
    page, next_key = await store.list("a/", 2, next_key)
    assert [k for k, _ in page] == ["a/2", "a/3"] and next_key is None
    await store.close()


async def test_idempotent_write_applies_once_even_after_recovery(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    first, replayed = await store.put("k", 1, None, "key-1")
    assert not replayed
    await store.put("k", 2, None, None)
    retry, replayed = await store.put("k", 99, None, "key-1")
    assert replayed and retry == first
    await store.close()
    reopened = await _store(tmp_path)
    after, replayed = await reopened.put("k", 77, None, "key-1")
    assert replayed and after == first
    entry = await reopened.get("k")
    assert entry is not None and entry.value == 2
    await reopened.close()


async def test_compaction_then_recovery_keeps_everything(tmp_path: Path) -> None:
    store = await _store(tmp_path, compact_bytes=2048)
    for i in range(300):
        await store.put(f"k{i % 37}", i, None, f"idem-{i}")
    expected = {k: (e.value, e.version) for k, e in store.state.entries.items()}
    await store.close()
    assert (tmp_path / "snapshot.json").exists()
    reopened = await _store(tmp_path)
    got = {k: (e.value, e.version) for k, e in reopened.state.entries.items()}
    assert got == expected
    replay, replayed = await reopened.put("k0", -1, None, "idem-5")
    assert replayed and replay.status in (200, 201)
    await reopened.close()
