"""End to end: the datastore's three Raft replicas stay linearizable under chaos.

A whole stack, reached through its target (`tests.harness`; locally a stack from
`yardarm up`); clients call random replicas directly with gets, puts (some conditional)
and deletes on a few keys while faults go to the target (locally the stack's chaos
controller, through the same client `yardarm chaos` uses: a process start per fault
would eat the window): a kill of the leader (the target restarts it), a paused
follower, and where the target has link proxies a partitioned leader and slow links.
The recorded history is checked with the Wing-Gong/Lowe search. Locally,
`yardarm chaos status` and `heal` then run as real commands.

That the faults took effect is observed by the test itself, never taken from the
controller's counters: a killed leader's process is replaced (a new pid) and the
group's term rises; a paused follower is stopped (locally state T in /proc) and a
request to it stalls until it is resumed; a partitioned leader's commit index stands
still while the majority elects a leader in a higher term and commits past it; writes
through a delayed replica take at least two delayed hops longer than before.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx
import pytest
from yardarm_datastore.linearizability import check_history
from yardarm_datastore.settings import DatastoreSettings

from tests.harness.adapter import FaultRefused, Instance, ProcessState, StackTarget, Unsupported
from tests.harness.kv_history import History, kv_client
from tests.harness.local import LocalStackTarget, Stack, pick_base_port, start_stack, stop_stack

pytestmark = pytest.mark.e2e

T = TypeVar("T")

SCALE = float(os.environ.get("YARDARM_TEST_SCALE", "1"))
DURATION_S = 20.0 * SCALE
CLIENTS = 6
KEYS = [f"lin/{i}" for i in range(10)]
MAX_OPS_PER_KEY = 180
REQUEST_TIMEOUT_S = 2.0

# The group's timing: the stack runs the datastore with its default settings.
_TIMING = DatastoreSettings.model_fields
TICK_S = float(_TIMING["tick_s"].default)
HEARTBEAT_S = TICK_S * int(_TIMING["heartbeat_ticks"].default)
ELECTION_S = TICK_S * int(_TIMING["election_ticks"].default)  # a follower waits [E, 2E)
COMMIT_TIMEOUT_S = float(_TIMING["commit_timeout_s"].default)
# A live replica answers its status far within an election timeout; a paused one never.
STATUS_TIMEOUT_S = ELECTION_S
# How long each fault lasts.
PAUSE_S, PARTITION_S, DELAY_HOLD_S = 1.5, 2.0, 1.5
# Well above the noise of a write on two busy cores (50-150 ms under the clients' load),
# well below an election timeout, so the leader keeps leading through it.
DELAY_MS, JITTER_MS = 150, 50
# Writes timed before and during the delay, on a key the clients leave alone.
PROBE_WRITES, PROBE_KEY = 5, "probe/latency"


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("chaos"), pick_base_port(31000))
    try:
        yield running
    finally:
        running.cli("chaos", "heal", "all", check=False)
        running.cli("chaos", "resume", "all", check=False)
        stop_stack(running)


@pytest.fixture(scope="module")
def stack(local_stack: Stack) -> StackTarget:
    """The checks' view of the stack (a later target builds its own adapter here)."""
    return LocalStackTarget(local_stack)


def _observe_bound_s(stack: StackTarget) -> float:
    """A fault shows its effect within the longest election timeout (ten times over, for
    two busy cores), after a restart at the target's longest backoff."""
    return stack.recovery.backoff_max_s + 10 * 2 * ELECTION_S


def _replicas(stack: StackTarget) -> list[str]:
    return stack.datastore


def _admin(stack: StackTarget) -> dict[str, str]:
    """The stack's admin credential: the datastore answers nobody without one."""
    return {"Authorization": f"Bearer {stack.admin_token}"}


def _datastore(
    stack: StackTarget, method: str, url: str, path: str, timeout: float, **kwargs: Any
) -> httpx.Response:
    """A direct call of this module's own to one replica (status reads, probe writes)."""
    return httpx.request(
        method, f"{url}{path}", timeout=timeout, trust_env=False, headers=_admin(stack),
        verify=stack.ssl or True, **kwargs,
    )  # fmt: skip


def _raft_status(
    stack: StackTarget, url: str, timeout: float = STATUS_TIMEOUT_S
) -> dict[str, Any] | None:
    """A replica's `/raft/status`, or None when it does not answer within `timeout`."""
    try:
        response = _datastore(stack, "GET", url, "/raft/status", timeout)
        response.raise_for_status()
        status: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return status


def _stalls(stack: StackTarget, url: str) -> bool:
    """The replica takes the connection (the kernel does) but does not answer in time."""
    try:
        _datastore(stack, "GET", url, "/raft/status", STATUS_TIMEOUT_S)
    except httpx.ReadTimeout:
        return True
    except httpx.HTTPError:
        return False
    return False


def _leader(stack: StackTarget, timeout: float = 30.0) -> int:
    """The index (0-based, as in `datastore-<i>`) of the replica the group agrees leads."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen: set[Any] = set()
        for url in _replicas(stack):
            status = _raft_status(stack, url)
            seen.add(None if status is None else status.get("leader"))
        if len(seen) == 1 and None not in seen and 0 not in seen:
            return int(seen.pop()) - 1
        time.sleep(0.1)
    raise AssertionError("the datastore replicas never agreed on a leader")


@dataclass(frozen=True)
class Seen:
    """One injected fault and what the test itself observed of it (`ok`: the effect)."""

    fault: str
    target: str
    ok: bool
    detail: str


def _pid(seen: Instance | None) -> int | None:
    """The process an instance ran in when it was listed (None: not listed, or none)."""
    return None if seen is None else seen.pid


def _process(stack: StackTarget, seen: Instance | None) -> ProcessState | None:
    """What the target observes now of the process `seen` ran in (None: nothing to
    observe: the instance was not listed, or had no process)."""
    return None if seen is None else stack.process_state(seen)


def _poll(check: Callable[[], T | None], bound_s: float) -> T | None:
    """`check()` every heartbeat until it returns something, at most `bound_s`."""
    deadline = time.monotonic() + bound_s
    while True:
        found = check()
        if found is not None or time.monotonic() > deadline:
            return found
        time.sleep(HEARTBEAT_S)


def _terms(stack: StackTarget, urls: list[str]) -> list[int]:
    statuses = [_raft_status(stack, url) for url in urls]
    return [int(s["term"]) for s in statuses if s is not None]


def _kill_leader(stack: StackTarget, leader: int) -> Seen:
    """Kill the leader: its process is replaced and the group elects in a higher term."""
    urls, target = _replicas(stack), f"datastore-{leader}"
    before, term = stack.instance(target), max(_terms(stack, urls), default=0)
    pid = _pid(before)
    stack.kill(target)

    def replaced() -> tuple[int, int | None] | None:
        new_pid, terms = _pid(stack.instance(target)), _terms(stack, urls)
        gone = _process(stack, before) in (None, "gone")
        if gone and new_pid not in (None, pid) and max(terms, default=0) > term:
            return max(terms), new_pid
        return None

    after = _poll(replaced, _observe_bound_s(stack))
    detail = f"pid {pid}, term {term}; after: term and pid {after}"
    return Seen("kill-leader", target, after is not None, detail)


def _pause_follower(stack: StackTarget, leader: int) -> Seen | None:
    """Pause a follower for PAUSE_S: the target shows it stopped, a request to it stalls,
    and it answers again once resumed. None when neither follower could be paused."""
    for other in (1, 2):
        index = (leader + other) % 3
        target, url = f"datastore-{index}", _replicas(stack)[index]
        seen = stack.instance(target)
        try:
            stack.pause(target)
        except FaultRefused:  # the target is still restarting it (locally a 409)
            continue
        break
    else:
        return None
    started = time.monotonic()
    stopped = (
        _poll(lambda: True if _process(stack, seen) == "stopped" else None, PAUSE_S) is not None
    )
    stalled = _stalls(stack, url)
    time.sleep(max(0.0, PAUSE_S - (time.monotonic() - started)))
    stack.resume(target)
    answers = _poll(lambda: _raft_status(stack, url), _observe_bound_s(stack)) is not None
    state = _process(stack, seen)
    detail = (
        f"pid {_pid(seen)} stopped {stopped}, stalled {stalled}, answers after resume {answers}"
    )
    ok = stopped and stalled and answers and state != "stopped"
    return Seen("pause-follower", target, ok, detail)


def _partition_leader(stack: StackTarget, leader: int) -> Seen:
    """Cut the leader off for at least PARTITION_S: the majority elects a leader in a
    higher term and commits past the cut-off replica, whose commit index stands still."""
    urls, target = _replicas(stack), f"datastore-{leader}"
    isolated, majority = urls[leader], [u for i, u in enumerate(urls) if i != leader]
    links = stack.links()
    links.partition(target)
    started = time.monotonic()
    time.sleep(2 * HEARTBEAT_S)  # what was on its way before the cut has landed
    before = _raft_status(stack, isolated)

    def moved_on() -> dict[str, Any] | None:
        now = _raft_status(stack, isolated)
        if before is None or now is None:
            return None
        for status in filter(None, (_raft_status(stack, url) for url in majority)):
            if (
                status["role"] == "leader"
                and status["term"] > before["term"]
                and status["commit"] > now["commit"]
            ):
                return status
        return None

    ahead = _poll(moved_on, _observe_bound_s(stack))
    time.sleep(max(0.0, PARTITION_S - (time.monotonic() - started)))
    after = _raft_status(stack, isolated)
    links.heal(target)
    stood_still = before is not None and after is not None and after["commit"] == before["commit"]
    detail = (
        f"cut off: commit {before and before['commit']} -> {after and after['commit']}; "
        f"majority: {ahead and {k: ahead[k] for k in ('id', 'term', 'commit')}}"
    )
    return Seen("partition-leader", target, ahead is not None and stood_still, detail)


def _timed_write(stack: StackTarget, url: str, n: int) -> float | None:
    """Seconds one write through `url` took to be acknowledged (None: no success)."""
    started = time.monotonic()
    try:
        response = _datastore(
            stack, "PUT", url, f"/kv/{PROBE_KEY}", COMMIT_TIMEOUT_S, json={"value": n}
        )
    except httpx.HTTPError:
        return None
    return time.monotonic() - started if response.status_code in (200, 201) else None


def _delay_leader(stack: StackTarget, leader: int) -> Seen:
    """Slow the leader's links: writes through it take at least two delayed hops longer.

    A write the leader takes needs a follower's acknowledgement (out and back across its
    links); one a follower takes goes to the leader and its entry comes back the same
    way. Each hop is held at least DELAY_MS - JITTER_MS.
    """
    urls, target = _replicas(stack), f"datastore-{leader}"
    links = stack.links()
    fast = [
        t
        for t in (_timed_write(stack, urls[leader], n) for n in range(PROBE_WRITES))
        if t is not None
    ]
    links.delay(target, DELAY_MS, JITTER_MS)
    started = time.monotonic()
    slow = [
        t
        for t in (_timed_write(stack, urls[leader], n) for n in range(PROBE_WRITES))
        if t is not None
    ]
    time.sleep(max(0.0, DELAY_HOLD_S - (time.monotonic() - started)))
    links.delay(target, 0)
    hop_s = (DELAY_MS - JITTER_MS) / 1000
    ok = (
        len(fast) >= PROBE_WRITES // 2
        and len(slow) >= PROBE_WRITES // 2
        and min(slow) >= 2 * hop_s
        and statistics.median(slow) - statistics.median(fast) >= hop_s
    )
    detail = (
        f"write latency ms before {[round(t * 1000) for t in fast]}, "
        f"delayed {[round(t * 1000) for t in slow]}"
    )
    return Seen("delay", target, ok, detail)


FAULTS: dict[str, Callable[[StackTarget, int], Seen | None]] = {
    "kill-leader": _kill_leader,
    "pause-follower": _pause_follower,
    "partition-leader": _partition_leader,
    "delay": _delay_leader,
}
# The faults that need link proxies (`StackTarget.links`).
LINK_FAULTS = frozenset({"partition-leader", "delay"})
SCHEDULE = ("kill-leader", "pause-follower", "partition-leader", "delay", "kill-leader")


def _fault_kinds(stack: StackTarget) -> set[str]:
    """Every fault kind, but those on links where the target has no link proxies."""
    try:
        stack.links()
    except Unsupported:
        return set(FAULTS) - LINK_FAULTS
    return set(FAULTS)


def _faults(stack: StackTarget, kinds: set[str], until: float) -> list[Seen]:
    """Run the fault schedule (of `kinds`) until `until` and until every kind ran once."""
    schedule = [kind for kind in SCHEDULE if kind in kinds]
    seen: list[Seen] = []
    for step in range(100):
        if time.monotonic() > until and {s.fault for s in seen} >= kinds:
            break
        time.sleep(0.8)
        observed = FAULTS[schedule[step % len(schedule)]](stack, _leader(stack))
        if observed is not None:
            seen.append(observed)
    return seen


async def test_histories_under_chaos_are_linearizable(stack: StackTarget, tmp_path: Path) -> None:
    _leader(stack)
    kinds = _fault_kinds(stack)
    history = History(KEYS, MAX_OPS_PER_KEY)
    until = time.monotonic() + DURATION_S
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(ssl=stack.ssl or True)
    async with aiohttp.ClientSession(
        timeout=timeout, headers=_admin(stack), connector=connector
    ) as http:
        clients = [
            asyncio.create_task(kv_client(n, _replicas(stack), history, until, http))
            for n in range(CLIENTS)
        ]
        seen = await asyncio.to_thread(_faults, stack, kinds, until)
        await asyncio.gather(*clients)
    injected = [f"{s.fault} {s.target}" for s in seen]
    if kinds & LINK_FAULTS:
        links = stack.links()
        links.heal_all()
        assert not links.faulted_links()
    assert not stack.paused(), stack.paused()
    # The faults really happened, as the test itself saw them (not the controller's
    # counters): every kind ran, and each showed its effect on the processes and the group.
    assert {s.fault for s in seen} == kinds, injected
    missed = [s for s in seen if not s.ok]
    assert not missed, "\n".join(f"{s.fault} {s.target}: {s.detail}" for s in missed)
    unknown = sum(1 for op in history.ops if op.outcome is None)
    assert history.answered >= 100, (history.answered, injected)
    result = check_history(history.ops)
    report = (
        f"{len(history.ops)} operations ({unknown} with unknown outcome) over "
        f"{len(KEYS)} keys, faults {injected}: {result.reason}"
    )
    (tmp_path / "history.txt").write_text("\n".join(repr(op) for op in history.ops))
    print(report, f"(search explored {result.explored} states)")
    for observed in seen:
        print(f"  {observed.fault} {observed.target}: {observed.detail}")
    assert result.ok and not result.budget_exhausted, report


def test_chaos_commands_report_every_fault_healed(local_stack: Stack) -> None:
    """The local target's `yardarm chaos heal` and `status` as real commands, after the
    chaos above: nothing stays cut, delayed or paused."""
    local_stack.cli("chaos", "heal", "all")
    assert "datastore-0" in local_stack.cli("chaos", "status").stdout
    state = json.loads(local_stack.cli("chaos", "status", "--json").stdout)
    assert not [link for link in state["links"] if link["partitioned"] or link["delay_ms"]]
    assert not state["paused"], state["paused"]
