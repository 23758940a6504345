"""The linearizability checker: known histories, the model's rules, and random histories
recorded from the real state machine (every one must pass; mutated reads are judged
against an exhaustive search)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from yardarm_datastore.linearizability import (
    ABSENT,
    KeyState,
    Operation,
    apply,
    check_history,
)
from yardarm_datastore.state import KVState, delete_command, put_command


def put(
    call: float,
    ret: float | None,
    value: Any,
    version: int | None = None,
    *,
    key: str = "k",
    client: int = 0,
    if_version: int | None = None,
    status: str = "ok",
) -> Operation:
    outcome: dict[str, Any] | None = None
    if ret is not None:
        outcome = {"status": status} if version is None else {"status": status, "version": version}
    return Operation(
        client=client,
        op="put",
        key=key,
        value=value,
        if_version=if_version,
        call=call,
        ret=ret,
        outcome=outcome,
    )


def get(
    call: float, ret: float, value: Any = None, version: int | None = None, *, key: str = "k"
) -> Operation:
    outcome: dict[str, Any] = (
        {"status": "not_found"}
        if version is None
        else {"status": "found", "value": value, "version": version}
    )
    return Operation(client=9, op="get", key=key, call=call, ret=ret, outcome=outcome)


def delete(
    call: float, ret: float, status: str = "ok", *, key: str = "k", if_version: int | None = None
) -> Operation:
    return Operation(
        client=8,
        op="delete",
        key=key,
        if_version=if_version,
        call=call,
        ret=ret,
        outcome={"status": status},
    )


# -- known histories -----------------------------------------------------------------


def test_sequential_history_is_linearizable() -> None:
    history = [
        get(0, 1),
        put(2, 3, "a", 1),
        get(4, 5, "a", 1),
        put(6, 7, "b", 2),
        delete(8, 9),
        get(10, 11),
        put(12, 13, "c", 3, if_version=0),
        get(14, 15, "c", 3),
    ]
    result = check_history(history)
    assert result.ok and result.key is None and not result.budget_exhausted


@pytest.mark.parametrize("seen", [("a", 1), ("b", 2)])
def test_read_overlapping_a_write_may_see_either_value(seen: tuple[str, int]) -> None:
    history = [put(0, 1, "a", 1), put(2, 6, "b", 2, client=1), get(3, 5, *seen)]
    assert check_history(history).ok


def test_overlapping_writes_may_land_in_either_order() -> None:
    history = [
        put(0, 5, "a", 2, client=1),
        put(1, 4, "b", 1, client=2),
        get(6, 7, "a", 2),
    ]
    assert check_history(history).ok
    reversed_versions = [put(0, 5, "a", 1, client=1), put(1, 4, "b", 2, client=2)]
    # a read after both sees the later write, whose version is the higher one
    assert not check_history([*reversed_versions, get(6, 7, "a", 1)]).ok
    assert check_history([*reversed_versions, get(6, 7, "b", 2)]).ok


def test_stale_read_after_a_completed_write_is_a_violation() -> None:
    history = [put(0, 1, "a", 1), put(2, 3, "b", 2), get(4, 5, "a", 1)]
    result = check_history(history)
    assert not result.ok and not result.budget_exhausted
    assert result.key == "k" and "'k'" in result.reason and "get" in result.reason


@pytest.mark.parametrize("read", [get(4, 5), get(4, 5, "a", 1)])
def test_lost_acknowledged_write_is_a_violation(read: Operation) -> None:
    history = [put(0, 1, "a", 1), put(2, 3, "b", 2)]
    assert check_history(history).ok
    assert not check_history([*history, read]).ok
    assert not check_history([put(0, 1, "a", 1), get(2, 3)]).ok


def test_read_of_a_value_never_written_is_a_violation() -> None:
    assert not check_history([put(0, 1, "a", 1), get(2, 3, "zzz", 1)]).ok
    assert not check_history([get(0, 1, "a", 1)]).ok
    # the right value under a version its write did not get is just as wrong
    assert not check_history([put(0, 1, "a", 1), get(2, 3, "a", 5)]).ok


def test_versions_must_increase_across_writes_and_deletes() -> None:
    # revisions are global: gaps (writes to other keys) are fine, going back is not
    assert check_history([put(0, 1, "a", 3), put(2, 3, "b", 7)]).ok
    assert not check_history([put(0, 1, "a", 3), put(2, 3, "b", 3)]).ok
    deleted = [put(0, 1, "a", 3), delete_with_version(2, 3, 5)]
    assert check_history([*deleted, put(4, 5, "b", 6)]).ok
    assert not check_history([*deleted, put(4, 5, "b", 4)]).ok


def delete_with_version(call: float, ret: float, version: int) -> Operation:
    outcome = {"status": "ok", "version": version}
    return Operation(client=8, op="delete", key="k", call=call, ret=ret, outcome=outcome)


def test_conflicts_must_agree_with_if_version() -> None:
    created = put(0, 1, "a", 1)
    assert check_history([created, put(2, 3, "b", status="conflict", if_version=0)]).ok
    assert not check_history([created, put(2, 3, "b", status="conflict", if_version=1)]).ok
    assert not check_history([created, put(2, 3, "b", status="conflict")]).ok
    assert check_history([created, put(2, 3, "b", 2, if_version=1)]).ok
    assert not check_history([created, put(2, 3, "b", 2, if_version=0)]).ok
    # a refused write changes nothing
    history = [created, put(2, 3, "b", status="conflict", if_version=7), get(4, 5, "a", 1)]
    assert check_history(history).ok
    # create-only-if-absent against an absent key, and a guarded delete
    assert check_history([put(0, 1, "a", 1, if_version=0)]).ok
    assert not check_history([put(0, 1, "a", status="conflict", if_version=0)]).ok
    assert check_history([created, delete(2, 3, "conflict", if_version=4)]).ok
    assert not check_history([created, delete(2, 3, "conflict", if_version=1)]).ok
    assert not check_history([delete(0, 1, "conflict", if_version=1)]).ok  # 404 comes first


def test_delete_of_absent_key_reports_not_found() -> None:
    assert check_history([delete(0, 1, "not_found")]).ok
    assert not check_history([delete(0, 1, "ok")]).ok
    assert not check_history([put(0, 1, "a", 1), delete(2, 3, "not_found")]).ok


@pytest.mark.parametrize("read", [get(5, 6, "a", 1), get(5, 6, "b", 4)])
def test_unknown_put_may_or_may_not_have_applied(read: Operation) -> None:
    history = [put(0, 1, "a", 1), put(2, None, "b", client=1), read]
    assert check_history(history).ok


def test_unknown_put_read_before_its_call_is_a_violation() -> None:
    history = [put(0, 1, "a", 1), get(2, 3, "b", 4), put(5, None, "b", client=1)]
    result = check_history(history)
    assert not result.ok and not result.budget_exhausted


def test_unknown_put_once_seen_cannot_be_unseen() -> None:
    history = [put(0, 1, "a", 1), put(2, None, "b", client=1), get(3, 4, "b", 4)]
    assert check_history(history).ok
    assert not check_history([*history, get(5, 6, "a", 1)]).ok
    assert not check_history([*history, get(5, 6, "b", 5)]).ok


def test_budget_exhaustion_is_a_failure() -> None:
    # many unknown writes, each possibly applied in any order, and a read none explains
    history = [put(0, None, f"v{i}", client=i) for i in range(20)]
    history.append(get(1, 2, "never", 99))
    result = check_history(history, budget=5_000)
    assert not result.ok and result.budget_exhausted
    assert result.explored == 5_000 and "budget" in result.reason


def test_orders_reaching_the_same_state_are_explored_once() -> None:
    # 12 unknown writes of one value: 12! orders but only 2**12 distinct (placed, state)
    history = [put(0, None, "same", client=i) for i in range(12)]
    history.append(get(1, 2, "never", 99))
    result = check_history(history, budget=100_000)
    assert not result.ok and not result.budget_exhausted and result.explored < 100_000


def test_violation_on_one_key_is_found_among_many_keys() -> None:
    history: list[Operation] = []
    for k in range(50):
        key = f"key{k}"
        history += [put(0, 2, k, 1, key=key), get(1, 3, k, 1, key=key), get(4, 5, k, 1, key=key)]
    history.append(get(6, 7, key="key31"))  # the acknowledged write vanished
    result = check_history(history)
    assert not result.ok and result.key == "key31" and "key31" in result.reason


def test_too_many_operations_on_one_key_is_refused() -> None:
    history = [get(i, i + 0.5) for i in range(11)]
    with pytest.raises(ValueError, match="max_ops_per_key"):
        check_history(history, max_ops_per_key=10)
    assert check_history(history[:10], max_ops_per_key=10).ok


# -- random histories from the real state machine ---------------------------------------


def record(state: KVState, rng: random.Random, key: str, lin: float) -> Operation:
    """Run one random command at linearization point `lin`; the client's window straddles
    it. A write may lose its answer (and then may or may not have been applied)."""
    call, ret = lin - rng.uniform(0, 3), lin + rng.uniform(0, 3)
    kind = rng.choice(["get", "get", "put", "put", "delete"])
    entry = state.get(key)
    if kind == "get":
        outcome: dict[str, Any] = (
            {"status": "not_found"}
            if entry is None
            else {"status": "found", "value": entry.value, "version": entry.version}
        )
        return Operation(client=0, op="get", key=key, call=call, ret=ret, outcome=outcome)
    current = 0 if entry is None else entry.version
    if_version = rng.choice([None, None, current, current + rng.randint(1, 3)])
    value = rng.randint(0, 5)
    command = (
        put_command(key, value, if_version) if kind == "put" else delete_command(key, if_version)
    )
    unknown = rng.random() < 0.15
    if unknown and rng.random() < 0.5:
        outcome = {}  # lost before it reached the state machine
    else:
        answer = state.apply(command)
        status = {200: "ok", 201: "ok", 404: "not_found", 409: "conflict"}[answer.status]
        outcome = {"status": status}
        if status == "ok":
            outcome["version"] = answer.body["version"]
    return Operation(
        client=1,
        op="put" if kind == "put" else "delete",
        key=key,
        value=value if kind == "put" else None,
        if_version=if_version,
        call=call,
        ret=None if unknown else ret,
        outcome=None if unknown else outcome,
    )


def random_history(seed: int) -> list[Operation]:
    rng = random.Random(seed)
    state = KVState()
    history = []
    for step in range(rng.randint(6, 15)):
        history.append(record(state, rng, rng.choice("abc"), float(step)))
    rng.shuffle(history)  # the checker must not rely on the recording order
    return history


def exhaustive(ops: list[Operation]) -> bool:
    """Every real-time-respecting order of every subset of the unknown writes, tried
    without pruning: slow but plainly right, for tiny histories."""
    required = [o for o in ops if o.ret is not None]

    def extend(state: KeyState, left: list[Operation]) -> bool:
        if all(o not in required for o in left):
            return True
        for op in left:
            rest = [o for o in left if o is not op]
            if any(o.ret is not None and o.ret < op.call for o in rest):
                continue
            after = apply(state, op)
            if after is not None and extend(after, rest):
                return True
        return False

    return extend(ABSENT, [o for o in ops if not (o.op == "get" and o.outcome is None)])


def mutate_read(history: list[Operation], rng: random.Random) -> list[Operation] | None:
    reads = [i for i, o in enumerate(history) if o.op == "get"]
    if not reads:
        return None
    i = rng.choice(reads)
    op = history[i]
    assert op.outcome is not None
    written = [
        (o.value, o.outcome["version"])
        for o in history
        if o.op == "put" and o.outcome is not None and "version" in o.outcome
    ]
    choices: list[dict[str, Any]] = [{"status": "found", "value": "never", "version": 1}]
    if op.outcome["status"] == "found":
        choices.append({"status": "not_found"})
        choices.append({**op.outcome, "version": op.outcome["version"] + 1})
    choices += [{"status": "found", "value": v, "version": n} for v, n in written]
    outcome = rng.choice([c for c in choices if c != op.outcome] or choices)
    mutated = list(history)
    mutated[i] = Operation(
        client=op.client, op="get", key=op.key, call=op.call, ret=op.ret, outcome=outcome
    )
    return mutated


def test_histories_recorded_from_the_state_machine_are_linearizable() -> None:
    for seed in range(200):
        history = random_history(seed)
        result = check_history(history)
        assert result.ok, (seed, result.reason)


def test_mutated_reads_are_judged_like_an_exhaustive_search() -> None:
    rng = random.Random(7)
    violations = 0
    for seed in range(200):
        mutated = mutate_read(random_history(seed), rng)
        if mutated is None:
            continue
        expected = all(
            exhaustive([o for o in mutated if o.key == key]) for key in {o.key for o in mutated}
        )
        result = check_history(mutated)
        assert result.ok == expected, (seed, result.reason)
        violations += not result.ok
    assert violations >= 120  # most mutations break the history; the check is not vacuous
