"""The state machine: versions, compare-and-set, pagination, idempotency, snapshots."""

from __future__ import annotations

import random

import pytest
from yardarm_datastore.state import (
    CorruptState,
    KVState,
    Outcome,
    delete_command,
    put_command,
)


def test_version_strictly_increases_across_write_delete_and_recreate() -> None:
    state = KVState()
    state.apply(put_command("other", 1))
    versions = [
        state.apply(put_command("a", 1)).body["version"],
        state.apply(put_command("a", 2)).body["version"],
        state.apply(delete_command("a")).body["version"],
        state.apply(put_command("a", 3, if_version=0)).body["version"],
    ]
    assert versions == sorted(versions) and len(set(versions)) == 4
    entry = state.get("a")
    assert entry is not None and entry.version == versions[-1] == state.revision


def test_create_only_if_absent_and_compare_and_set() -> None:
    state = KVState()
    created = state.apply(put_command("k", "v1", if_version=0))
    assert created == Outcome(201, {"key": "k", "version": 1})
    again = state.apply(put_command("k", "v2", if_version=0))
    assert again.status == 409 and again.body["current_version"] == 1
    stale = state.apply(put_command("k", "v2", if_version=7))
    assert stale.status == 409 and stale.body == {
        "key": "k",
        "expected_version": 7,
        "current_version": 1,
    }
    updated = state.apply(put_command("k", "v2", if_version=1))
    assert updated == Outcome(200, {"key": "k", "version": 2})
    missing = state.apply(put_command("nope", 1, if_version=3))
    assert missing.status == 409 and missing.body["current_version"] == 0
    assert state.revision == 2  # refused writes consume no revision


def test_delete_semantics() -> None:
    state = KVState()
    assert state.apply(delete_command("k")).status == 404
    state.apply(put_command("k", 1))
    assert state.apply(delete_command("k", if_version=5)).status == 409
    deleted = state.apply(delete_command("k", if_version=1))
    assert deleted == Outcome(200, {"key": "k", "version": 2})
    assert state.get("k") is None and state.sorted_keys == []


def test_prefix_listing_pages_through_exactly_the_prefix_in_key_order() -> None:
    state = KVState()
    keys = [f"a/{i:03d}" for i in range(57)] + ["a", "a0", "b/1", "Z", "a/"]
    random.Random(7).shuffle(keys)
    for key in keys:
        state.apply(put_command(key, key))
    state.apply(delete_command("a/010"))
    expected = sorted(k for k in keys if k.startswith("a/") and k != "a/010")
    seen: list[str] = []
    after = None
    for _ in range(100):
        page, after = state.list("a/", 10, after)
        assert len(page) <= 10
        seen.extend(key for key, _ in page)
        if after is None:
            break
        assert after == page[-1][0]
    assert seen == expected
    exact, nxt = state.list("a/", len(expected))
    assert len(exact) == len(expected) and nxt is None  # no empty last page
    everything, _ = state.list("", 1000)
    assert [k for k, _ in everything] == sorted(set(keys) - {"a/010"})
    before_prefix, _ = state.list("a/", 3, after="0")
    assert [k for k, _ in before_prefix] == expected[:3]
    assert state.list("a/", 3, after="b") == ([], None)


def test_an_idempotency_key_replays_the_first_outcome_whatever_the_body() -> None:
    state = KVState()
    first = state.apply(put_command("k", 1, idempotency_key="i-1"))
    state.apply(put_command("k", 2))
    retry = state.apply(put_command("other", 5, if_version=9, idempotency_key="i-1"))
    assert retry == Outcome(first.status, first.body, replayed=True)
    assert state.get("other") is None
    entry = state.get("k")
    assert entry is not None and entry.value == 2


def test_a_refused_write_is_not_recorded_so_its_retry_is_reevaluated() -> None:
    state = KVState()
    state.apply(put_command("k", 1))
    assert state.apply(put_command("k", 2, if_version=0, idempotency_key="i")).status == 409
    retry = state.apply(put_command("k", 2, if_version=1, idempotency_key="i"))
    assert retry.status == 200 and not retry.replayed


def test_the_idempotency_table_is_bounded_and_forgets_the_oldest() -> None:
    state = KVState(idempotency_capacity=3)
    for i in range(5):
        state.apply(put_command(f"k{i}", i, idempotency_key=f"i{i}"))
    assert list(state.idempotency) == ["i2", "i3", "i4"]
    assert state.recorded("i1") is None and state.recorded("i4") is not None


def _random_commands(rng: random.Random, count: int) -> list[dict[str, object]]:
    commands: list[dict[str, object]] = []
    for n in range(count):
        key = f"k{rng.randrange(20)}"
        idem = f"i{rng.randrange(40)}" if rng.random() < 0.3 else None
        iv = rng.choice([None, None, 0, rng.randrange(n + 2)])
        if rng.random() < 0.25:
            commands.append(delete_command(key, iv, idem))
        else:
            commands.append(put_command(key, {"n": n, "nested": [n, None]}, iv, idem))
    return commands


def test_snapshot_then_the_rest_equals_applying_everything() -> None:
    rng = random.Random(42)
    commands = _random_commands(rng, 600)
    whole = KVState(idempotency_capacity=16)
    outcomes = [whole.apply(dict(c)) for c in commands]
    prefix = KVState(idempotency_capacity=16)
    for command in commands[:300]:
        prefix.apply(dict(command))
    restored = KVState.from_snapshot(prefix.to_snapshot(), idempotency_capacity=16)
    assert [restored.apply(dict(c)) for c in commands[300:]] == outcomes[300:]
    assert restored.to_snapshot() == whole.to_snapshot()
    assert restored.sorted_keys == sorted(restored.entries)


def test_a_logged_command_out_of_order_is_refused() -> None:
    state = KVState()
    command = put_command("k", 1)
    command["r"] = 5
    with pytest.raises(CorruptState):
        state.apply(command)
