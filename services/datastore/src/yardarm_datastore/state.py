"""The key-value state machine: deterministic, in memory, rebuilt from snapshot + log.

`version` is the global revision of a key's last write (etcd's mod_revision), so it
strictly increases across writes, deletes and re-creates of the same key.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

IDEMPOTENCY_CAPACITY = 100_000


@dataclass
class Entry:
    value: Any
    version: int


@dataclass(frozen=True)
class Outcome:
    """The answer to a write: HTTP status and body (what an idempotent retry replays)."""

    status: int
    body: dict[str, Any]


class KVState:
    """Keys, their versions, the revision counter and the idempotency table."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.sorted_keys: list[str] = []
        self.revision = 0
        self.idempotency: OrderedDict[str, Outcome] = OrderedDict()

    # -- reads ---------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def list(self, prefix: str, limit: int, after: str | None) -> tuple[list[str], bool]:
        """Up to `limit` keys with `prefix`, strictly after `after`; and whether more remain."""
        if after is not None and after >= prefix:
            index = bisect.bisect_right(self.sorted_keys, after)
        else:
            index = bisect.bisect_left(self.sorted_keys, prefix)
        keys: list[str] = []
        while index < len(self.sorted_keys):
            key = self.sorted_keys[index]
            if not key.startswith(prefix):
                break
            if len(keys) == limit:
                return keys, True
            keys.append(key)
            index += 1
        return keys, False

    # -- writes (called only with records that are, or will be, in the log) --------

    def apply(self, record: dict[str, Any]) -> None:
        """Apply one logged record; replaying the same records yields the same state."""
        revision = int(record["r"])
        key = record["k"]
        if record["op"] == "put":
            if key not in self.entries:
                bisect.insort(self.sorted_keys, key)
            self.entries[key] = Entry(record["v"], revision)
        elif record["op"] == "del" and self.entries.pop(key, None) is not None:
            del self.sorted_keys[bisect.bisect_left(self.sorted_keys, key)]
        self.revision = max(self.revision, revision)
        idem = record.get("ik")
        if idem:
            self.remember(idem, Outcome(int(record["s"]), record["b"]))

    def remember(self, idem_key: str, outcome: Outcome) -> None:
        self.idempotency[idem_key] = outcome
        self.idempotency.move_to_end(idem_key)
        while len(self.idempotency) > IDEMPOTENCY_CAPACITY:
            self.idempotency.popitem(last=False)

    # -- snapshots -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "entries": [
                [k, self.entries[k].value, self.entries[k].version] for k in self.sorted_keys
            ],
            "idempotency": [[k, o.status, o.body] for k, o in self.idempotency.items()],
        }

    @classmethod
    def from_snapshot(cls, doc: dict[str, Any]) -> KVState:
        state = cls()
        state.revision = int(doc["revision"])
        for key, value, version in doc["entries"]:
            state.entries[key] = Entry(value, int(version))
            state.sorted_keys.append(key)
        state.sorted_keys.sort()
        for key, status, body in doc["idempotency"]:
            state.idempotency[key] = Outcome(int(status), body)
        return state
