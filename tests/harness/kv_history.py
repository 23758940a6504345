"""Clients that call datastore replicas directly and record what they saw, for the
project's linearizability checker (`yardarm_datastore.linearizability.check_history`):
gets, puts (half of them conditional) and deletes on a few keys, each operation with its
call and return time, an answer that never came recorded as an unknown outcome."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from yardarm_datastore.linearizability import Operation, OpName


def outcome_of(op: str, status: int, body: dict[str, Any]) -> dict[str, Any] | None:
    """The checker's outcome for an answer, or None when the outcome is unknown."""
    if op == "get":
        if status == 200:
            return {"status": "found", "value": body["value"], "version": body["version"]}
        return {"status": "not_found"} if status == 404 else None
    if status in (200, 201):
        return {"status": "ok", "version": body["version"]}
    if status == 409:
        return {"status": "conflict"}
    if status == 404 and op == "delete":
        return {"status": "not_found"}
    return None


class History:
    """Every operation of every client, and how many each key may still take (the
    checker's search grows with the operations per key)."""

    def __init__(self, keys: Sequence[str], max_ops_per_key: int) -> None:
        self.ops: list[Operation] = []
        self.max_ops_per_key = max_ops_per_key
        self.per_key = dict.fromkeys(keys, 0)
        self.versions: dict[str, int] = dict.fromkeys(keys, 0)
        self.answered = 0

    def keys_left(self) -> list[str]:
        return [k for k, n in self.per_key.items() if n < self.max_ops_per_key]

    def acknowledged_writes(self) -> list[Operation]:
        """Puts the datastore answered as applied."""
        return [
            op
            for op in self.ops
            if op.op == "put" and op.outcome is not None and op.outcome["status"] == "ok"
        ]


async def kv_client(
    n: int, urls: Sequence[str], history: History, until: float, http: aiohttp.ClientSession
) -> None:
    """Client `n` (its own seeded choices) until `until` (monotonic) or every key's quota
    is used, each operation on a replica chosen at random."""
    rng = random.Random(n)
    for _ in range(100_000):
        left = history.keys_left()
        if time.monotonic() > until or not left:
            return
        key = rng.choice(left)
        history.per_key[key] += 1
        roll = rng.random()
        op: OpName = "get" if roll < 0.45 else "put" if roll < 0.9 else "delete"
        value = {"c": n, "r": rng.randrange(1_000_000)} if op == "put" else None
        if_version = history.versions[key] if op != "get" and rng.random() < 0.5 else None
        url = f"{rng.choice(urls)}/kv/{key}"
        call = time.monotonic()
        outcome: dict[str, Any] | None = None
        try:
            if op == "get":
                request = http.get(url)
            elif op == "put":
                body: dict[str, Any] = {"value": value}
                if if_version is not None:
                    body["if_version"] = if_version
                request = http.put(url, json=body)
            else:
                query = "" if if_version is None else f"?if_version={if_version}"
                request = http.delete(url + query)
            async with request as response:
                outcome = outcome_of(op, response.status, await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            outcome = None
        ret = time.monotonic() if outcome is not None else None
        if outcome is None and op == "get":
            history.per_key[key] -= 1  # a read that never answered says nothing
            await asyncio.sleep(0.02)
            continue
        if outcome is not None:
            history.answered += 1
            if "version" in outcome:
                history.versions[key] = int(outcome["version"])
        record = Operation(
            client=n, op=op, key=key, value=value, if_version=if_version,
            call=call, ret=ret, outcome=outcome,
        )  # fmt: skip
        history.ops.append(record)
        if outcome is None:
            await asyncio.sleep(0.02)
