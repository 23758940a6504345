"""A linearizability checker for key-value histories recorded against the datastore.

The search is Wing & Gong's with Lowe's memoization, as Porcupine implements it: place
operations one at a time at a linearization point, in call order, where an operation may
be placed only once every operation that returned before its call has been placed; a
cache of (placed operations as a bitset, model state) prunes every revisit. A KV store is
linearizable iff each key is (P-compositionality), so keys are checked one by one, which
keeps each search small.

The model is one key of `yardarm_datastore.state.KVState`. A key's `version` there is
the store's global revision at its last write (etcd's mod_revision), so on one key it
strictly increases across puts, deletes and re-creates but skips the revisions other keys
took. The per-key model therefore treats a write's version as a fresh number above every
revision seen on the key so far, rather than predicting it. Per key the state is
(present, value, version, floor): `version` is the current entry's revision (None when an
unknown-outcome put wrote it and no read has observed it yet) and `floor` the highest
revision observed on the key. The rules, one per outcome (`if_version` absent matches
anything; an absent key's version is 0):

- put -> {"status": "ok", "version": v}: `if_version` matches the current version and
  v > floor; the key becomes present with the value and version v.
- put -> {"status": "conflict"}: `if_version` was given and differs; nothing changes.
- get -> {"status": "found", "value": x, "version": v}: the key is present with value x
  and version v (an unobserved version is learned here, provided v > floor).
- get -> {"status": "not_found"}: the key is absent.
- delete -> {"status": "ok"} (a "version" in it is the delete's revision, > floor): the
  key is present and `if_version` matches; the key becomes absent.
- delete -> {"status": "not_found"}: the key is absent (checked before `if_version`).
- delete -> {"status": "conflict"}: present, `if_version` given and different.
- outcome unknown (`ret` None): the operation may take effect at any point after its call,
  as a successful write the rules allow, or never; a read with unknown outcome says
  nothing and is ignored.

Every key starts absent. Because versions are only bounded from below, the check is
sound (a reported violation is real) but does not check facts that span keys, such as
two keys' writes sharing a revision.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

OpName = Literal["get", "put", "delete"]


@dataclass(frozen=True, kw_only=True)
class Operation:
    """One client call as recorded: `ret` and `outcome` are None when the client never
    learned the result (timeout, crash), so the write may or may not have happened."""

    client: int
    op: OpName
    key: str
    value: Any = None
    if_version: int | None = None
    call: float
    ret: float | None
    outcome: dict[str, Any] | None


@dataclass(frozen=True)
class CheckResult:
    """The verdict; `key` and `reason` name the first non-linearizable key, if any."""

    ok: bool
    key: str | None
    reason: str
    explored: int
    budget_exhausted: bool


@dataclass(frozen=True)
class KeyState:
    """One key of the model (see the module docstring); hashable for the search cache."""

    present: bool = False
    value: Any = None  # frozen (hashable) form of the stored value
    version: int | None = 0
    floor: int = 0


ABSENT = KeyState()


def freeze(value: Any) -> Any:
    """A hashable stand-in for a JSON value that is equal exactly when the values are."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), freeze(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("list", tuple(freeze(v) for v in value))
    if isinstance(value, bool):
        return ("bool", value)
    return value


def apply(state: KeyState, op: Operation) -> KeyState | None:
    """The key's state after `op` took effect with its recorded outcome, or None if the
    model cannot produce that outcome from `state`."""
    outcome = op.outcome
    status = None if outcome is None else outcome.get("status")
    version = None if outcome is None else outcome.get("version")
    if op.op == "get":
        if status == "not_found":
            return state if not state.present else None
        if status != "found" or not state.present or outcome is None:
            return None
        if freeze(outcome.get("value")) != state.value or not isinstance(version, int):
            return None
        if state.version is None:
            return _learn(state, version)
        return state if version == state.version else None
    if status == "conflict":
        if op.op == "delete" and not state.present:
            return None
        if op.if_version is None:
            return None
        unobserved = state.present and state.version is None  # may differ from anything
        return state if unobserved or not _matches(state, op) else None
    if op.op == "put" and status in ("ok", None):
        return _write(state, op, version, present=True, value=freeze(op.value))
    if op.op == "delete":
        if status == "not_found":
            return state if not state.present else None
        if status in ("ok", None) and state.present:
            return _write(state, op, version, present=False, value=None)
    return None


def _matches(state: KeyState, op: Operation) -> bool:
    expected = op.if_version
    if expected is None:
        return True
    if not state.present:
        return expected == 0
    if state.version is None:  # unobserved revision: any number above the floor
        return expected > state.floor
    return expected == state.version


def _write(
    state: KeyState, op: Operation, version: Any, *, present: bool, value: Any
) -> KeyState | None:
    if not _matches(state, op):
        return None
    if version is None:  # unknown outcome, or a delete answered without its revision
        return KeyState(present, value, None if present else 0, state.floor)
    if not isinstance(version, int) or version <= state.floor:
        return None
    return KeyState(present, value, version if present else 0, version)


def _learn(state: KeyState, version: int) -> KeyState | None:
    if version <= state.floor:
        return None
    return KeyState(state.present, state.value, version, version)


class _Budget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self) -> bool:
        self.used += 1
        return self.used <= self.limit


def check_history(
    ops: Sequence[Operation], *, budget: int = 1_000_000, max_ops_per_key: int = 200
) -> CheckResult:
    """Whether `ops` is linearizable for the per-key model; `budget` bounds search steps
    over the whole history, and running out of it is a failure (nothing was proven)."""
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        if op.ret is not None and op.ret < op.call:
            raise ValueError(f"operation returns before its call: {op}")
        by_key.setdefault(op.key, []).append(op)
    for key, key_ops in by_key.items():
        if len(key_ops) > max_ops_per_key:
            raise ValueError(
                f"key {key!r} has {len(key_ops)} operations, more than max_ops_per_key="
                f"{max_ops_per_key}; record fewer operations per key"
            )
    spent = _Budget(budget)
    for key in sorted(by_key):
        relevant = [o for o in by_key[key] if not (o.op == "get" and o.outcome is None)]
        relevant.sort(key=lambda o: (o.call, math.inf if o.ret is None else o.ret))
        verdict = _check_key(relevant, spent)
        if verdict is not None:
            exhausted = spent.used > spent.limit
            reason = f"key {key!r}: {verdict}"
            return CheckResult(False, key, reason, min(spent.used, budget), exhausted)
    return CheckResult(True, None, "linearizable", spent.used, False)


def _check_key(ops: list[Operation], budget: _Budget) -> str | None:
    """None if the key's operations linearize, else why not."""
    n = len(ops)
    calls = [o.call for o in ops]
    rets = [math.inf if o.ret is None else o.ret for o in ops]
    required = sum(1 << i for i, o in enumerate(ops) if o.ret is not None)

    def successors(placed: int, state: KeyState) -> Iterator[tuple[int, KeyState]]:
        earliest_ret = min((rets[j] for j in range(n) if not placed >> j & 1), default=math.inf)
        for i in range(n):
            if calls[i] > earliest_ret:
                return  # ops are in call order: every later one follows an unplaced return
            if placed >> i & 1:
                continue
            if not budget.spend():
                raise _OutOfBudget
            after = apply(state, ops[i])
            if after is not None:
                yield placed | 1 << i, after

    seen = {(0, ABSENT)}
    stack = [(0, successors(0, ABSENT))]
    deepest = 0
    try:
        while stack:
            placed, options = stack[-1]
            if placed & required == required:
                return None
            if placed.bit_count() > deepest.bit_count():
                deepest = placed
            step = next(options, None)
            if step is None:
                stack.pop()
            elif step not in seen:
                seen.add(step)
                stack.append((step[0], successors(*step)))
    except _OutOfBudget:
        return f"search budget exhausted after {budget.limit} steps ({n} operations)"
    return _describe_failure(ops, deepest, required)


class _OutOfBudget(Exception):
    pass


def _describe_failure(ops: list[Operation], deepest: int, required: int) -> str:
    placed = (deepest & required).bit_count()
    stuck = [o for i, o in enumerate(ops) if not deepest >> i & 1 and o.ret is not None]
    shown = "; ".join(_describe(o) for o in stuck[:3])
    more = f" (+{len(stuck) - 3} more)" if len(stuck) > 3 else ""
    return (
        f"not linearizable: at most {placed} of {required.bit_count()} completed operations "
        f"can be ordered; the rest cannot follow them: {shown}{more}"
    )


def _describe(op: Operation) -> str:
    args = repr(op.value) if op.op == "put" else ""
    if op.if_version is not None:
        args += f"{', ' if args else ''}if_version={op.if_version}"
    return f"client {op.client} {op.op}({args}) [{op.call:g}, {op.ret}] -> {op.outcome}"
