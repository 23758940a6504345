"""A rolling restart of the datastore under steady `yardarm load` (retries off) fails no
request: its three Raft replicas are replaced by a new version, one at a time in place
(`yardarm scale datastore 3 --version 0.2.0`, the rollout engine's path), then back,
while writes go to the replicas directly; every acknowledged write is read back after.

What it takes: a leader that is stopped hands leadership to its most up-to-date
follower before it drains (services/datastore), so the group never waits out an
election; a replica is ready only once it has caught up, and the supervisor stops one
only while the rest of its group is ready, so the group keeps its quorum throughout.
That the leadership moved by transfer, not by an election timeout, is read from the
replicas' logs: each replica logs how it became the leader (`elected`, with its cause).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Histogram
from yardarm_datastore.linearizability import Operation, check_history
from yardarm_datastore.settings import DatastoreSettings
from yardarm_kit.datastore_client import DatastoreClient, DatastoreUnavailable
from yardarm_kit.httpclient import HttpClient
from yardarm_kit.metrics import LabeledHistogram

from tests.harness.local import BackgroundLoad, LocalStackTarget, Stack, configured_stack

pytestmark = pytest.mark.e2e

SCALE = max(1, int(os.environ.get("YARDARM_TEST_SCALE", "1")))
TOPOLOGY = """
services:
  datastore:
    replicas: 3
    versions:
      "0.2.0": {description: "the same datastore, a new release"}
"""
REPLICAS = ("datastore-0", "datastore-1", "datastore-2")
RATE = 30
# Steady traffic before the first roll and after the last (more under YARDARM_TEST_SCALE).
QUIET_S = 3.0 * SCALE
# The load runs until the rolls are done; this only bounds a run that never ends.
LOAD_BOUND_S = 600
WRITE_EVERY_S = 0.05
# A write's bound: the datastore's commit timeout (5 s) with room to spare.
WRITE_TIMEOUT_S = 8.0
# As the load's: a read through the gateway not answered within it has failed.
READ_TIMEOUT = aiohttp.ClientTimeout(total=3.0)
# How long a roll is watched while a replica is paused: 15 of the supervisor's readiness
# probes (0.2 s apart), where one would do to take the next replica down.
HOLD_S = 3.0
# The stack runs the datastore with its default timing: the shortest election timeout.
_TIMING = DatastoreSettings.model_fields
ELECTION_S = float(_TIMING["tick_s"].default) * int(_TIMING["election_ticks"].default)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = configured_stack(tmp_path_factory.mktemp("datastore-roll"), TOPOLOGY, 19000)
    try:
        yield running.up()
    finally:
        running.cli("down", check=False)


def _replicas(stack: Stack) -> dict[str, tuple[str, str, int | None]]:
    """Each datastore replica's version, state and process."""
    return {
        row["instance"]: (row["version"], row["state"], row.get("pid"))
        for row in stack.status()
        if row["service"] == "datastore"
    }


class Load(BackgroundLoad):
    """`yardarm load` until interrupted (SIGINT ends a run with its summary), so it spans
    the rolls however long a busy machine takes over them."""

    def interrupt(self) -> None:
        self._proc.send_signal(signal.SIGINT)


def _failed(summary: dict[str, Any]) -> dict[str, int]:
    """The run's failed requests by kind: 5xx and transport errors."""
    return {
        kind: counts["server_errors"] + counts["transport_errors"]
        for kind, counts in summary["kinds"].items()
    }


def _leader(target: LocalStackTarget) -> int:
    """The Raft id of the replica the group agrees leads."""
    headers = {"Authorization": f"Bearer {target.admin_token}"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = set()
        for url in target.datastore:
            try:
                seen.add(httpx.get(f"{url}/raft/status", headers=headers).json()["leader"])
            except (httpx.HTTPError, ValueError, KeyError):
                seen.add(None)
        if len(seen) == 1 and None not in seen and 0 not in seen:
            return int(seen.pop())
        time.sleep(0.1)
    raise AssertionError("the replicas never agreed on a leader")


def _log_offsets(home: Path) -> dict[str, int]:
    return {name: (home / "logs" / f"{name}.log").stat().st_size for name in REPLICAS}


def _events(home: Path, since: dict[str, int], *names: str) -> list[dict[str, Any]]:
    """The replicas' JSON log records of events `names` written after `since`."""
    found = []
    for name, offset in since.items():
        with (home / "logs" / f"{name}.log").open("rb") as log:
            log.seek(offset)
            for line in log:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # the supervisor's own marker lines
                if isinstance(record, dict) and record.get("event") in names:
                    found.append({"replica": name, **record})
    return found


class Writer:
    """Writes one new key every WRITE_EVERY_S through the kit's datastore client (as
    orders does: keyed, so a write retried on another replica applies once) and reads
    it back through the gateway's datastore route (`/api/kv`, no retry of the test's
    own), recording each as the linearizability checker takes it."""

    def __init__(
        self, client: DatastoreClient, session: aiohttp.ClientSession, gateway: str, token: str
    ) -> None:
        self.client = client
        self.session, self.gateway = session, gateway
        self.headers = {"Authorization": f"Bearer {token}"}
        self.ops: list[Operation] = []
        self.failures: list[str] = []
        self.gateway_failures: list[str] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            key, value = f"rolling/{n}", {"n": n}
            call = time.monotonic()
            outcome: dict[str, Any] | None = None
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    put = await self.client.put(key, value, idempotency_key=f"rolling-{n}")
                outcome = {"status": "ok", "version": put.version}
            except (DatastoreUnavailable, TimeoutError) as exc:
                self.failures.append(f"{key}: {exc!r}")
            ret = time.monotonic() if outcome is not None else None
            self.ops.append(
                Operation(client=0, op="put", key=key, value=value, call=call, ret=ret,
                          outcome=outcome)
            )  # fmt: skip
            await self.read_through_gateway(key)
            n += 1
            await asyncio.sleep(WRITE_EVERY_S)

    async def read_through_gateway(self, key: str) -> None:
        call = time.monotonic()
        try:
            async with self.session.get(
                f"{self.gateway}/api/kv/{key}", headers=self.headers, timeout=READ_TIMEOUT
            ) as response:
                body = await response.json()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.gateway_failures.append(f"{key}: {exc!r}")
            return
        if status == 404:
            found: dict[str, Any] = {"status": "not_found"}
        elif status == 200:
            found = {"status": "found", "value": body["value"], "version": body["version"]}
        else:
            self.gateway_failures.append(f"{key}: {status} {body}")
            return
        self.ops.append(
            Operation(client=2, op="get", key=key, call=call, ret=time.monotonic(),
                      outcome=found)
        )  # fmt: skip

    async def read_back(self) -> None:
        """Read every key written (acknowledged or not) after the writes ended."""
        for op in list(self.ops):
            call = time.monotonic()
            record = await self.client.get(op.key)
            found = (
                {"status": "not_found"}
                if record is None
                else {"status": "found", "value": record.value, "version": record.version}
            )
            self.ops.append(
                Operation(client=1, op="get", key=op.key, call=call, ret=time.monotonic(),
                          outcome=found)
            )  # fmt: skip


def _http(session: aiohttp.ClientSession) -> HttpClient:
    histogram = Histogram(
        "writes", "writes", ["upstream", "http_request_method", "http_response_status_code"],
        registry=CollectorRegistry(),
    )  # fmt: skip
    return HttpClient(session, "datastore", trace.NoOpTracer(), LabeledHistogram(histogram, {}))


async def test_a_rolling_restart_of_the_datastore_fails_no_request(stack: Stack) -> None:
    target = LocalStackTarget(stack)
    before = _replicas(stack)
    assert {name: row[:2] for name, row in before.items()} == dict.fromkeys(
        REPLICAS, ("0.1.0", "ready")
    )
    first_leader = _leader(target)
    offsets = _log_offsets(stack.home)
    load = Load(stack, "--rate", str(RATE), "--duration", f"{LOAD_BOUND_S}s", "--timeout", "3s")
    async with aiohttp.ClientSession() as session:
        client = DatastoreClient(
            _http(session), target.datastore, timeout_s=WRITE_TIMEOUT_S, token=target.admin_token
        )
        writer = Writer(client, session, stack.gateway, target.admin_token)
        writes = asyncio.create_task(writer.run())
        try:
            with load:
                await asyncio.sleep(QUIET_S)
                started = time.monotonic()
                await asyncio.to_thread(stack.cli, "scale", "datastore", "3", "--version", "0.2.0")
                rolled_s = time.monotonic() - started
                rolled = _replicas(stack)
                await asyncio.to_thread(stack.cli, "scale", "datastore", "3", "--version", "0.1.0")
                back = _replicas(stack)
                await asyncio.sleep(QUIET_S)
                writer.stop.set()
                await writes
                assert load.running(), "the load ended before the rolls did"
                load.interrupt()
                summary = await asyncio.to_thread(load.summary, 60)
        finally:
            writes.cancel()
        await writer.read_back()

    # Every replica ran 0.2.0 (a new process each, the leader's too), then 0.1.0 again.
    assert {name: row[:2] for name, row in rolled.items()} == dict.fromkeys(
        REPLICAS, ("0.2.0", "ready")
    )
    assert all(rolled[name][2] != before[name][2] for name in REPLICAS)
    assert {name: row[:2] for name, row in back.items()} == dict.fromkeys(
        REPLICAS, ("0.1.0", "ready")
    )
    # No failed request: not through the gateway, and no acknowledged write lost.
    failed = _failed(summary)
    puts = [o for o in writer.ops if o.op == "put"]
    slowest = max((o.ret - o.call for o in puts if o.ret is not None), default=0.0)
    print(
        f"load: {summary['requests']} requests in {summary['send_duration_s']:.1f}s "
        f"({summary['stopped_by']}), failed {failed}, latency ms "
        f"{summary['latency_ms']}; direct writes: {len(puts)}, failed {len(writer.failures)} "
        f"{writer.failures[:3]}, slowest {slowest:.3f}s; reads through the gateway failed: "
        f"{len(writer.gateway_failures)} {writer.gateway_failures[:3]}; the roll to 0.2.0 "
        f"took {rolled_s:.1f}s"
    )
    assert summary["stopped_by"] == "interrupted", summary  # it ran through both rolls
    assert summary["achieved_rate"] >= RATE * 0.9 and summary["dropped"] == 0, summary
    assert sum(failed.values()) == 0, (failed, summary)
    assert len([o for o in puts if o.outcome is not None]) > 100
    assert writer.gateway_failures == []
    verdict = check_history(writer.ops)
    assert verdict.ok, verdict.reason
    # Leadership moved by hand-over only, each within an election timeout: the first
    # leader and every later one stopped handed over, and no replica became the leader
    # because an election timeout passed without one.
    events = _events(stack.home, offsets, "leader_transfer", "elected")
    transfers = [e for e in events if e["event"] == "leader_transfer"]
    elections = [e for e in events if e["event"] == "elected"]
    print(
        f"first leader: replica {first_leader}; hand-overs (from, to, seconds): "
        f"{[(e['replica'], e.get('to'), round(e['elapsed_s'], 3)) for e in transfers]}"
    )
    assert f"datastore-{first_leader - 1}" in {e["replica"] for e in transfers}, transfers
    assert all(e["outcome"] == "transferred" for e in transfers), transfers
    assert all(e["elapsed_s"] < ELECTION_S for e in transfers), transfers
    assert elections and all(e["cause"] == "transfer" for e in elections), elections
    assert len(elections) == len(transfers)


def test_no_replica_is_stopped_while_another_of_its_group_is_down(stack: Stack) -> None:
    """The supervisor takes a replica down for its replacement only while the rest of
    its group is ready: with one replica paused, a roll waits instead of taking a second
    one down (two of three down would cost the group its quorum)."""
    target = LocalStackTarget(stack)
    before = _replicas(stack)
    assert {name: row[1] for name, row in before.items()} == dict.fromkeys(REPLICAS, "ready")
    version = "0.2.0" if before["datastore-0"][0] == "0.1.0" else "0.1.0"
    target.pause("datastore-2")
    with ThreadPoolExecutor(1) as pool:
        try:
            rolling = pool.submit(stack.cli, "scale", "datastore", "3", "--version", version)
            time.sleep(HOLD_S)
            during = _replicas(stack)
            assert not rolling.done(), rolling.result()
        finally:
            target.resume("datastore-2")
        rolling.result(timeout=180)
    assert during == before, "a replica was stopped while another one was down"
    after = _replicas(stack)
    assert {name: row[:2] for name, row in after.items()} == dict.fromkeys(
        REPLICAS, (version, "ready")
    )
