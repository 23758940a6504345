"""The key-value state machine: deterministic, in memory, rebuilt from snapshot + log.

No I/O and no clocks: the same commands applied in the same order give the same state,
which is what lets a replica rebuild itself from its log (and later, lets Raft replicas
agree). `version` is the global revision of a key's last write (etcd's mod_revision), so
it strictly increases across writes, deletes and re-creates of one key.

A command is a dict: `op` ("put" | "del"), `k` key, `v` value (put), `iv` if_version
(optional), `ik` Idempotency-Key (optional), `r` the revision it creates (set when it is
logged; replay checks it).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

IDEMPOTENCY_CAPACITY = 100_000
SNAPSHOT_FORMAT = 1

Command = dict[str, Any]


class CorruptState(RuntimeError):
    """A log or snapshot that cannot have come from this state machine."""


@dataclass(frozen=True)
class Entry:
    value: Any
    version: int


@dataclass(frozen=True)
class Outcome:
    """The answer to a write: HTTP status and body (what an idempotent retry replays)."""

    status: int
    body: dict[str, Any]
    replayed: bool = False

    @property
    def applied(self) -> bool:
        return 200 <= self.status < 300


def put_command(
    key: str, value: Any, if_version: int | None = None, idempotency_key: str | None = None
) -> Command:
    command: Command = {"op": "put", "k": key, "v": value}
    return _with_options(command, if_version, idempotency_key)


def delete_command(
    key: str, if_version: int | None = None, idempotency_key: str | None = None
) -> Command:
    return _with_options({"op": "del", "k": key}, if_version, idempotency_key)


def _with_options(command: Command, if_version: int | None, idem: str | None) -> Command:
    if if_version is not None:
        command["iv"] = if_version
    if idem is not None:
        command["ik"] = idem
    return command


def conflict(key: str, expected: int, current: int) -> Outcome:
    return Outcome(409, {"key": key, "expected_version": expected, "current_version": current})


class KVState:
    """Keys, their versions, the revision counter and the idempotency table."""

    def __init__(self, idempotency_capacity: int = IDEMPOTENCY_CAPACITY) -> None:
        self.entries: dict[str, Entry] = {}
        self.sorted_keys: list[str] = []
        self.revision = 0
        self.idempotency: OrderedDict[str, Outcome] = OrderedDict()
        self.idempotency_capacity = idempotency_capacity

    # -- reads ---------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def list(
        self, prefix: str, limit: int, after: str | None = None
    ) -> tuple[list[tuple[str, Entry]], str | None]:
        """Up to `limit` entries whose key starts with `prefix`, in key order, strictly
        after `after`; and the key to pass as `after` for the next page (None at the end)."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        index = bisect.bisect_left(self.sorted_keys, prefix)
        if after is not None:
            index = max(index, bisect.bisect_right(self.sorted_keys, after))
        items: list[tuple[str, Entry]] = []
        for key in self.sorted_keys[index : index + limit + 1]:
            if not key.startswith(prefix):
                return items, None
            if len(items) == limit:
                return items, items[-1][0]
            items.append((key, self.entries[key]))
        return items, None

    def recorded(self, idempotency_key: str | None) -> Outcome | None:
        """The first outcome of a write with this Idempotency-Key, as a replay."""
        if idempotency_key is None:
            return None
        outcome = self.idempotency.get(idempotency_key)
        return None if outcome is None else dataclasses.replace(outcome, replayed=True)

    def check(self, command: Command) -> Outcome | None:
        """Why `command` would not change the state (409, 404), or None if it would."""
        key = command["k"]
        current = self.entries.get(key)
        actual = current.version if current is not None else 0
        expected = command.get("iv")
        if command["op"] == "del" and current is None:
            return Outcome(404, {"key": key})
        if expected is not None and expected != actual:
            return conflict(key, int(expected), actual)
        return None

    # -- writes --------------------------------------------------------------------

    def apply(self, command: Command) -> Outcome:
        """Apply one command. A repeated Idempotency-Key replays its recorded outcome and
        a refused command changes nothing; both are deterministic, so replay is exact."""
        recorded = self.recorded(command.get("ik"))
        if recorded is not None:
            return recorded
        refusal = self.check(command)
        if refusal is not None:
            return refusal
        revision = self.revision + 1
        logged = command.get("r")
        if logged is not None and int(logged) != revision:
            raise CorruptState(f"command for revision {logged} applied at revision {revision}")
        key = command["k"]
        existed = key in self.entries
        if command["op"] == "put":
            if not existed:
                bisect.insort(self.sorted_keys, key)
            self.entries[key] = Entry(command["v"], revision)
            outcome = Outcome(200 if existed else 201, {"key": key, "version": revision})
        elif command["op"] == "del":
            del self.entries[key]
            del self.sorted_keys[bisect.bisect_left(self.sorted_keys, key)]
            outcome = Outcome(200, {"key": key, "version": revision})
        else:
            raise CorruptState(f"unknown command op {command['op']!r}")
        self.revision = revision
        idem = command.get("ik")
        if idem is not None:
            self._remember(str(idem), outcome)
        return outcome

    def _remember(self, idempotency_key: str, outcome: Outcome) -> None:
        self.idempotency[idempotency_key] = outcome
        while len(self.idempotency) > self.idempotency_capacity:
            self.idempotency.popitem(last=False)

    # -- snapshots -----------------------------------------------------------------

    def to_snapshot(self) -> dict[str, Any]:
        """The whole state as a JSON document (values are shared, never mutated)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "revision": self.revision,
            "entries": [
                [k, self.entries[k].value, self.entries[k].version] for k in self.sorted_keys
            ],
            "idempotency": [[k, o.status, o.body] for k, o in self.idempotency.items()],
        }

    @classmethod
    def from_snapshot(
        cls, doc: dict[str, Any], idempotency_capacity: int = IDEMPOTENCY_CAPACITY
    ) -> KVState:
        if doc.get("format") != SNAPSHOT_FORMAT:
            raise CorruptState(f"unknown snapshot format {doc.get('format')!r}")
        state = cls(idempotency_capacity)
        state.revision = int(doc["revision"])
        for key, value, version in doc["entries"]:
            state.entries[key] = Entry(value, int(version))
        state.sorted_keys = sorted(state.entries)
        for key, status, body in doc["idempotency"]:
            state._remember(key, Outcome(int(status), body))
        return state
