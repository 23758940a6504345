"""The state machine: versions, compare-and-set, pagination, idempotency, snapshots."""

from __future__ import annotations

import random

import pytest
from yardarm_datastore.state import (
    CorruptState,
    KVState,
    Outcome,
    delete_command,
    fingerprint,
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


def test_an_idempotency_key_replays_the_first_outcome_of_the_same_request() -> None:
    state = KVState()
    first = state.apply(put_command("k", {"a": 1, "b": [1.5, None]}, idempotency_key="i-1"))
    state.apply(put_command("k", 2))
    # The same request, its object written in another key order: the same fingerprint.
    retry = state.apply(put_command("k", {"b": [1.5, None], "a": 1}, idempotency_key="i-1"))
    assert retry == Outcome(first.status, first.body, replayed=True)
    entry = state.get("k")
    assert entry is not None and entry.value == 2
    deleted = state.apply(delete_command("k", if_version=2, idempotency_key="d-1"))
    assert state.apply(delete_command("k", if_version=2, idempotency_key="d-1")) == Outcome(
        deleted.status, deleted.body, replayed=True
    )


@pytest.mark.parametrize(
    "other",
    [
        put_command("other", 1, idempotency_key="i-1"),  # another key
        delete_command("k", idempotency_key="i-1"),  # another operation
        put_command("k", 2, idempotency_key="i-1"),  # another value
        put_command("k", 1.0, idempotency_key="i-1"),  # 1.0 is not the value 1
        put_command("k", 1, if_version=1, idempotency_key="i-1"),  # another if_version
    ],
    ids=["key", "operation", "value", "number-form", "if_version"],
)
def test_an_idempotency_key_reused_for_another_request_is_refused_and_changes_nothing(
    other: dict[str, object],
) -> None:
    state = KVState()
    state.apply(put_command("k", 1, idempotency_key="i-1"))
    before = state.to_snapshot()
    refused = state.apply(other)
    assert refused.status == 422 and not refused.applied and not refused.replayed
    assert state.recorded(other) == refused
    assert state.to_snapshot() == before  # nothing written, no revision spent


def test_the_fingerprint_is_canonical_and_names_the_whole_request() -> None:
    same = fingerprint("put", "k", {"x": [1, "é"], "y": None}, 3)
    assert same == fingerprint("put", "k", {"y": None, "x": [1, "é"]}, 3)
    others = {
        fingerprint("put", "k", {"x": [1, "é"], "y": None}, None),
        fingerprint("put", "k2", {"x": [1, "é"], "y": None}, 3),
        fingerprint("put", "k", {"x": [1, "e"], "y": None}, 3),
        fingerprint("del", "k", None, 3),
        fingerprint("put", "k", None, 3),
    }
    assert same not in others and len(others) == 5
    command = put_command("k", {"y": None, "x": [1, "é"]}, 3, idempotency_key="i")
    assert command["fp"] == same  # logged with the command: applying never recomputes it
    assert "fp" not in put_command("k", 1)  # no key, nothing to compare


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
    assert state.recorded(put_command("k1", 1, idempotency_key="i1")) is None
    replay = state.recorded(put_command("k4", 4, idempotency_key="i4"))
    assert replay is not None and replay.replayed
    # A forgotten key is a new request again.
    assert state.apply(put_command("k9", 9, idempotency_key="i1")).status == 201


# A snapshot as the previous version wrote it: idempotency records without fingerprints.
FORMAT_1_SNAPSHOT = {
    "format": 1,
    "revision": 3,
    "entries": [["a", {"n": 1}, 1], ["b", 2, 3]],
    "idempotency": [
        ["i-a", 201, {"key": "a", "version": 1}],
        ["i-b", 200, {"key": "b", "version": 3}],
    ],
}


def test_a_format_1_snapshot_is_read_and_its_records_match_only_their_own_key() -> None:
    state = KVState.from_snapshot(FORMAT_1_SNAPSHOT)
    entry = state.get("a")
    assert state.revision == 3 and entry is not None and entry.value == {"n": 1}
    # Any write to the recorded key replays (the record cannot say more about its body)...
    replay = state.apply(put_command("a", "whatever", idempotency_key="i-a"))
    assert replay == Outcome(201, {"key": "a", "version": 1}, replayed=True)
    assert state.apply(delete_command("b", idempotency_key="i-b")).replayed
    # ...and a write to another key is refused.
    assert state.apply(put_command("c", 1, idempotency_key="i-a")).status == 422
    assert state.get("c") is None and state.revision == 3
    # Written back in the current format, the old records stay key-only.
    doc = state.to_snapshot()
    assert doc["format"] == 2
    assert doc["idempotency"][0] == ["i-a", 201, {"key": "a", "version": 1}, None]
    again = KVState.from_snapshot(doc)
    assert again.apply(put_command("c", 1, idempotency_key="i-a")).status == 422
    assert again.apply(put_command("a", 0, idempotency_key="i-a")).replayed


def test_a_command_logged_without_a_fingerprint_matches_by_key() -> None:
    """Commands the previous version logged carry `ik` but no `fp`; replaying the log
    must not fail on them, and they compare by key as old records do."""
    state = KVState()
    first = state.apply(put_command("a", 1, idempotency_key="i"))
    legacy = {"op": "put", "k": "a", "v": 2, "ik": "i"}
    assert state.apply(legacy) == Outcome(first.status, first.body, replayed=True)
    assert state.apply({"op": "put", "k": "b", "v": 2, "ik": "i"}).status == 422
    fresh = state.apply({"op": "del", "k": "a", "ik": "j"})
    assert fresh.status == 200 and state.idempotency["j"].fingerprint is None


def test_an_unknown_snapshot_format_is_refused() -> None:
    with pytest.raises(CorruptState):
        KVState.from_snapshot({**FORMAT_1_SNAPSHOT, "format": 3})


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
