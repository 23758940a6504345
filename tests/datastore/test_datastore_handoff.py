"""Stopping a replica costs its group nothing: a leader told to stop (SIGTERM) hands
leadership to a caught-up follower first, so requests that arrive meanwhile, on any
replica, wait for the hand-over rather than fail, and the group never waits out an
election timeout; a follower just drains. A replica started again counts as ready only
once it has caught up with its leader.

A real three-process group with short timing (`tests.datastore.cluster`); the limits
are stated in its election timeout.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.datastore.cluster import COMMIT_TIMEOUT_S, ELECTION_S, Cluster


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def _group(tmp_path: Path, **env: str) -> Cluster:
    group = Cluster(tmp_path, extra_env={"YARDARM_DATASTORE_SNAPSHOT_ENTRIES": "200", **env})
    group.start_all()
    return group


async def _stop(cluster: Cluster, i: int) -> None:
    """SIGTERM replica `i` and wait for it to exit, without blocking the loop."""
    proc = cluster.nodes[i].proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, cluster.logs()


async def _metric(http: aiohttp.ClientSession, url: str, name: str) -> str:
    async with http.get(f"{url}/metrics") as response:
        return "\n".join(line for line in (await response.text()).splitlines() if name in line)


class Traffic:
    """Unkeyed writes and linearizable reads on every replica, answers counted per
    replica (any other than 200, 201 or 404 kept whole, to say why); a connection error
    is the replica being gone (a client moves on)."""

    def __init__(self, cluster: Cluster, http: aiohttp.ClientSession) -> None:
        self.cluster, self.http = cluster, http
        self.answers: dict[int, Counter[str]] = {i: Counter() for i in cluster.nodes}
        self.stop = asyncio.Event()
        self.slowest = 0.0
        self.odd: list[str] = []

    async def client(self, c: int) -> None:
        n = 0
        while not self.stop.is_set():
            i = list(self.cluster.nodes)[(c + n) % len(self.cluster.nodes)]
            url = f"{self.cluster.nodes[i].url}/kv/t{c}-{n // 2}"
            started = time.monotonic()
            try:
                if n % 2 == 0:
                    request = self.http.put(url, json={"value": n})
                else:
                    request = self.http.get(url)
                async with request as response:
                    body = await response.read()
                    outcome = str(response.status)
                if response.status not in (200, 201, 404):
                    self.odd.append(f"{response.method} {url}: {outcome} {body[:300]!r}")
            except aiohttp.ClientConnectionError:
                outcome = "gone"
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.answers[i][outcome] += 1
            n += 1
            await asyncio.sleep(0.005)

    def run(self, clients: int = 6) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.client(c)) for c in range(clients)]


async def test_a_stopping_leader_hands_over_and_no_request_fails(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cluster = _group(tmp_path)
    try:
        await cluster.wait_ready(http)
        leader = await cluster.wait_leader(http)
        term = (await cluster.status(http, leader) or {})["term"]
        traffic = Traffic(cluster, http)
        tasks = traffic.run()
        await asyncio.sleep(0.5)
        await _stop(cluster, leader)
        await asyncio.sleep(0.5)
        traffic.stop.set()
        await asyncio.gather(*tasks)
        survivors = [i for i in cluster.nodes if i != leader]
        successor = await cluster.wait_leader(http, among=survivors)
        status = await cluster.status(http, successor)
        assert status is not None and status["term"] == term + 1  # one ballot, no retries
        # Every request was answered by a replica that was up: only the stopped one's
        # closed port refused, and nobody answered 503 (no leader) or timed out.
        for i, answers in traffic.answers.items():
            allowed = {"200", "201", "404"} | ({"gone"} if i == leader else set())
            assert set(answers) <= allowed, (i, answers, traffic.odd, cluster.logs())
        assert sum(sum(a.values()) for a in traffic.answers.values()) > 100
        # Nobody waited out the commit timeout either (a write lost on the way).
        assert traffic.slowest < COMMIT_TIMEOUT_S, traffic.slowest
        # The successor says it was handed leadership, the old leader says to whom.
        won = await _metric(http, cluster.nodes[successor].url, "elections_won_total{")
        assert 'cause="transfer"' in won and 'cause="election"' not in won, won
        log = cluster.nodes[leader].log_path.read_text()
        assert f"handed leadership to replica {successor}" in log, cluster.logs()
    finally:
        cluster.stop_all()


async def test_a_stopping_follower_leaves_the_leadership_alone(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cluster = _group(tmp_path)
    try:
        await cluster.wait_ready(http)
        leader = await cluster.wait_leader(http)
        term = (await cluster.status(http, leader) or {})["term"]
        follower = next(i for i in cluster.nodes if i != leader)
        await _stop(cluster, follower)
        status = await cluster.status(http, leader)
        assert status is not None and (status["role"], status["term"]) == ("leader", term)
        assert "handed leadership" not in cluster.nodes[follower].log_path.read_text()
    finally:
        cluster.stop_all()


async def test_a_restarted_replica_is_ready_only_once_caught_up(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cluster = _group(tmp_path)
    try:
        await cluster.wait_ready(http)
        leader = await cluster.wait_leader(http)
        follower = next(i for i in cluster.nodes if i != leader)
        await _stop(cluster, follower)
        # The group moves on without it: it comes back far behind (a snapshot and more).
        url = cluster.nodes[leader].url
        for n in range(600):
            async with http.put(f"{url}/kv/r{n}", json={"value": "x" * 2000}) as response:
                assert response.status == 201
        cluster.start(follower)
        node = cluster.nodes[follower]
        deadline = time.monotonic() + 100 * ELECTION_S
        while True:
            try:
                async with http.get(f"{node.url}/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass  # still starting
            assert time.monotonic() < deadline, cluster.logs()
            await asyncio.sleep(0.005)
        # Ready: it has applied everything the group had committed before it started.
        params = {"consistency": "stale"}
        async with http.get(f"{node.url}/kv/r599", params=params) as response:
            assert response.status == 200, await response.text()
    finally:
        cluster.stop_all()
