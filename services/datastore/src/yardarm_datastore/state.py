"""The key-value state machine: deterministic, in memory, rebuilt from snapshot + log.

No I/O and no clocks: the same commands applied in the same order give the same state,
which is what lets a replica rebuild itself from its log (and later, lets Raft replicas
agree). `version` is the global revision of a key's last write (etcd's mod_revision), so
it strictly increases across writes, deletes and re-creates of one key.

A command is a dict: `op` ("put" | "del"), `k` key, `v` value (put), `iv` if_version
(optional), `ik` Idempotency-Key (optional), `fp` the request's fingerprint (with `ik`),
`r` the revision it creates (set when it is logged; replay checks it).

Idempotency follows Stripe's model: an Idempotency-Key names one request. The outcome of
the first write with a key is recorded with the request's fingerprint (`fingerprint`: the
operation, the key and a SHA-256 of the canonical body); a later write with the same key
and fingerprint replays that outcome, one with another fingerprint is refused (422) and
changes nothing. The fingerprint is computed once, by the replica that takes the request,
and travels in the logged command: applying never recomputes it, so every replica (and a
replay of the log by a later version whose JSON canonicalization differs) compares the
same text. Either way the state cannot diverge: a replay and a refusal both leave it
untouched, only the answer differs.

Records of the previous format (snapshot format 1, and commands logged before `fp`
existed) have no fingerprint: such a record matches only a write to the same key, which
its recorded body names.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

IDEMPOTENCY_CAPACITY = 100_000
SNAPSHOT_FORMAT = 2  # 2: idempotency records carry the request's fingerprint
READABLE_FORMATS = (1, 2)
REUSED = 422  # the status of a write whose Idempotency-Key named another request

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


def fingerprint(op: str, key: str, value: Any = None, if_version: int | None = None) -> str:
    """The SHA-256 (hex) of a write request: operation, key and canonical body (`value`
    and `if_version` for a put, `if_version` for a delete), as JSON with sorted object
    keys, no spaces and ASCII escapes, so equal requests give equal text whatever the
    client's key order or spacing."""
    body: dict[str, Any] = {"if_version": if_version}
    if op == "put":
        body["value"] = value
    text = json.dumps(
        [op, key, body], sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return hashlib.sha256(text.encode()).hexdigest()


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
        command["fp"] = fingerprint(command["op"], command["k"], command.get("v"), if_version)
    return command


def conflict(key: str, expected: int, current: int) -> Outcome:
    return Outcome(409, {"key": key, "expected_version": expected, "current_version": current})


@dataclass(frozen=True)
class Record:
    """The first outcome of a write with an Idempotency-Key, and which request it was
    (`fingerprint` None: a record of the previous format, known only by its key)."""

    outcome: Outcome
    fingerprint: str | None

    def matches(self, command: Command) -> bool:
        theirs: str | None = command.get("fp")
        if self.fingerprint is None or theirs is None:
            key: str = command["k"]
            return key == self.outcome.body.get("key")
        return self.fingerprint == theirs


class KVState:
    """Keys, their versions, the revision counter and the idempotency table."""

    def __init__(self, idempotency_capacity: int = IDEMPOTENCY_CAPACITY) -> None:
        self.entries: dict[str, Entry] = {}
        self.sorted_keys: list[str] = []
        self.revision = 0
        self.idempotency: OrderedDict[str, Record] = OrderedDict()
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

    def recorded(self, command: Command) -> Outcome | None:
        """What a write whose Idempotency-Key was used before answers without applying:
        the first outcome as a replay for the same request, a 422 for another one; None
        for a write to apply (no key, or a key not recorded). The API asks this before
        proposing (a fast path); applying asks it again, on the logged command."""
        idem = command.get("ik")
        if idem is None:
            return None
        record = self.idempotency.get(idem)
        if record is None:
            return None
        if record.matches(command):
            return dataclasses.replace(record.outcome, replayed=True)
        return Outcome(REUSED, {"key": command["k"]})

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
        """Apply one command. A repeated Idempotency-Key replays its recorded outcome (or
        refuses another request), and a refused command changes nothing; all of it is
        deterministic, so replay is exact."""
        recorded = self.recorded(command)
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
            fp = command.get("fp")
            self._remember(str(idem), Record(outcome, None if fp is None else str(fp)))
        return outcome

    def _remember(self, idempotency_key: str, record: Record) -> None:
        self.idempotency[idempotency_key] = record
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
            "idempotency": [
                [k, r.outcome.status, r.outcome.body, r.fingerprint]
                for k, r in self.idempotency.items()
            ],
        }

    @classmethod
    def from_snapshot(
        cls, doc: dict[str, Any], idempotency_capacity: int = IDEMPOTENCY_CAPACITY
    ) -> KVState:
        """Read a snapshot of this format or of format 1 (records without fingerprints)."""
        snapshot_format = doc.get("format")
        if snapshot_format not in READABLE_FORMATS:
            raise CorruptState(f"unknown snapshot format {snapshot_format!r}")
        state = cls(idempotency_capacity)
        state.revision = int(doc["revision"])
        for key, value, version in doc["entries"]:
            state.entries[key] = Entry(value, int(version))
        state.sorted_keys = sorted(state.entries)
        for row in doc["idempotency"]:
            key, status, body = row[:3]
            fp = row[3] if snapshot_format >= 2 else None
            state._remember(key, Record(Outcome(int(status), body), fp))
        return state
