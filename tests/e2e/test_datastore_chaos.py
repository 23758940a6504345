"""End to end: the datastore's three Raft replicas stay linearizable under `yardarm chaos`.

A whole stack from `yardarm up`; clients call random replicas directly with gets, puts
(some conditional) and deletes on a few keys while faults go to the stack's chaos
controller through the same client `yardarm chaos` uses (a process start per fault would
eat the window): SIGKILL of the leader (the supervisor restarts it), a paused follower, a
partitioned leader, slow links. `yardarm chaos status` and `heal` run as real commands.
The recorded history is checked with the Wing-Gong/Lowe search.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from yardarm_datastore.linearizability import Operation, OpName, check_history

from tests.e2e.test_stack_e2e import Stack, _start, _stop, pick_base_port
from yardarm.chaos.client import ChaosClientError, send_fault

pytestmark = pytest.mark.e2e

SCALE = float(os.environ.get("YARDARM_TEST_SCALE", "1"))
DURATION_S = 20.0 * SCALE
CLIENTS = 6
KEYS = [f"lin/{i}" for i in range(10)]
MAX_OPS_PER_KEY = 180
REQUEST_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = _start(tmp_path_factory.mktemp("chaos"), pick_base_port(31000))
    try:
        yield running
    finally:
        running.cli("chaos", "heal", "all", check=False)
        running.cli("chaos", "resume", "all", check=False)
        _stop(running)


def _replicas(stack: Stack) -> list[str]:
    return [f"http://127.0.0.1:{stack.base_port + 10 + i}" for i in range(3)]


def _leader(stack: Stack, timeout: float = 30.0) -> int:
    """The index (0-based, as in `datastore-<i>`) of the replica the group agrees leads."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = set()
        for url in _replicas(stack):
            try:
                seen.add(httpx.get(f"{url}/raft/status", timeout=1).json()["leader"])
            except (httpx.HTTPError, ValueError, KeyError):
                seen.add(None)
        if len(seen) == 1 and None not in seen and 0 not in seen:
            return int(seen.pop()) - 1
        time.sleep(0.1)
    raise AssertionError("the datastore replicas never agreed on a leader")


def _outcome(op: str, status: int, body: dict[str, Any]) -> dict[str, Any] | None:
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
    def __init__(self) -> None:
        self.ops: list[Operation] = []
        self.per_key = dict.fromkeys(KEYS, 0)
        self.versions: dict[str, int] = dict.fromkeys(KEYS, 0)
        self.answered = 0

    def keys_left(self) -> list[str]:
        return [k for k, n in self.per_key.items() if n < MAX_OPS_PER_KEY]


async def _client(
    n: int, stack: Stack, history: History, until: float, http: aiohttp.ClientSession
) -> None:
    rng = random.Random(n)
    urls = _replicas(stack)
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
                outcome = _outcome(op, response.status, await response.json())
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


def _faults(stack: Stack, until: float) -> list[str]:
    """Run the fault schedule until `until`; the faults injected."""
    done: list[str] = []
    schedule = ["kill-leader", "pause-follower", "partition-leader", "delay", "kill-leader"]
    for step in range(100):
        if time.monotonic() > until:
            break
        fault = schedule[step % len(schedule)]
        time.sleep(0.8)
        leader = _leader(stack)
        target = f"datastore-{leader}"
        follower = f"datastore-{(leader + 1) % 3}"
        if fault == "kill-leader":
            send_fault(stack.home, "kill", target)
        elif fault == "pause-follower":
            # A replica the supervisor is still restarting cannot be paused (409): take
            # the other follower then.
            for other in (1, 2):
                follower = f"datastore-{(leader + other) % 3}"
                try:
                    send_fault(stack.home, "pause", follower)
                    break
                except ChaosClientError:
                    continue
            else:
                continue
            time.sleep(1.5)
            send_fault(stack.home, "resume", follower)
        elif fault == "partition-leader":
            send_fault(stack.home, "partition", target)
            time.sleep(2.0)
            send_fault(stack.home, "heal", target)
        else:
            send_fault(stack.home, "delay", target, ms=60, jitter_ms=30)
            time.sleep(1.5)
            send_fault(stack.home, "delay", target, ms=0)
        done.append(f"{fault} {target if fault != 'pause-follower' else follower}")
    return done


def _terms(stack: Stack) -> list[int]:
    return [int(httpx.get(f"{u}/raft/status", timeout=5).json()["term"]) for u in _replicas(stack)]


def _fault_counts(stack: Stack) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{stack.base_port + 49}/metrics", timeout=5).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("yardarm_chaos_faults_total{"):
            action = line.split('action="', 1)[1].split('"', 1)[0]
            counts[action] = counts.get(action, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


async def test_histories_under_chaos_are_linearizable(stack: Stack, tmp_path: Path) -> None:
    _leader(stack)
    history = History()
    until = time.monotonic() + DURATION_S
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        clients = [
            asyncio.create_task(_client(n, stack, history, until, http)) for n in range(CLIENTS)
        ]
        injected = await asyncio.to_thread(_faults, stack, until)
        await asyncio.gather(*clients)
    stack.cli("chaos", "heal", "all")
    assert "datastore-0" in stack.cli("chaos", "status").stdout
    counts = _fault_counts(stack)
    # The faults really happened: counted by the controller, and seen by the group.
    assert counts.get("kill", 0) >= 1 and counts.get("partition", 0) >= 1, (counts, injected)
    assert counts.get("pause", 0) >= 1, (counts, injected)
    terms = await asyncio.to_thread(_terms, stack)
    assert max(terms) >= 2, terms
    unknown = sum(1 for op in history.ops if op.outcome is None)
    assert history.answered >= 100, (history.answered, injected)
    result = check_history(history.ops)
    report = (
        f"{len(history.ops)} operations ({unknown} with unknown outcome) over "
        f"{len(KEYS)} keys, faults {injected}: {result.reason}"
    )
    (tmp_path / "history.txt").write_text("\n".join(repr(op) for op in history.ops))
    print(report, f"(search explored {result.explored} states)")
    assert result.ok and not result.budget_exhausted, report
