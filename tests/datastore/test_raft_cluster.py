"""A real three-process Raft group: any replica answers, failures keep acknowledged writes,
no quorum means a prompt 503, and membership and leadership can be changed live."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yardarm_datastore.models import MemberChanged

from tests.datastore.cluster import COMMIT_TIMEOUT_S, ELECTION_S, Cluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    group = Cluster(tmp_path, extra_env={"YARDARM_DATASTORE_SNAPSHOT_ENTRIES": "40"})
    group.start_all()
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _put(
    http: aiohttp.ClientSession, url: str, key: str, value: Any, **headers: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.put(f"{url}/kv/{key}", json={"value": value}, headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


async def _get(
    http: aiohttp.ClientSession, url: str, key: str, stale: bool = False
) -> tuple[int, dict[str, Any]]:
    params = {"consistency": "stale"} if stale else {}
    async with http.get(f"{url}/kv/{key}", params=params) as response:
        return response.status, await response.json()


async def test_every_replica_takes_writes_and_serves_linearizable_reads(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.wait_ready(http)
    for i, node in cluster.nodes.items():
        status, body, _ = await _put(http, node.url, f"k{i}", {"from": i})
        assert status == 201, body
        # Right after the write, a linearizable read on every replica sees it.
        for other in cluster.nodes.values():
            assert await _get(http, other.url, f"k{i}") == (
                200,
                {"key": f"k{i}", "value": {"from": i}, "version": body["version"]},
            )
    leader = await cluster.wait_leader(http)
    follower = next(i for i in cluster.nodes if i != leader)
    async with http.get(f"{cluster.nodes[follower].url}/kv", params={"prefix": "k"}) as response:
        assert [item["key"] for item in (await response.json())["items"]] == ["k1", "k2", "k3"]
    # A stale read on a follower converges without any write.
    deadline = time.monotonic() + 20 * ELECTION_S
    while (await _get(http, cluster.nodes[follower].url, "k3", stale=True))[0] != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_killing_the_leader_mid_writes_loses_no_acknowledged_write(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.wait_ready(http)
    first = await cluster.wait_leader(http)
    acked: dict[str, int] = {}
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        urls = [n.url for n in cluster.nodes.values()]
        n = tries = 0
        while not stop.is_set() and tries < 5000:
            key = f"w{w}-{n}"
            tries += 1  # every try goes to the next replica, so a dead one is passed over
            try:
                status, body, _ = await _put(http, urls[(w + tries) % len(urls)], key, n)
            except aiohttp.ClientError:
                await asyncio.sleep(0.01)
                continue
            if status in (200, 201):
                acked[key] = body["version"]
                n += 1
            else:
                assert status == 503, body  # the only refusal allowed during a failover
                await asyncio.sleep(0.01)

    writers = [asyncio.create_task(writer(w)) for w in range(8)]
    await asyncio.sleep(0.5)
    before = len(acked)
    cluster.kill(first)
    killed_at = time.monotonic()
    while len(acked) < before + 50:
        assert time.monotonic() - killed_at < 40 * ELECTION_S, cluster.logs()
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*writers)
    second = await cluster.wait_leader(http)
    assert second != first
    for key, version in acked.items():
        status, body = await _get(http, cluster.nodes[second].url, key)
        assert status == 200 and body["version"] == version, (key, body)


async def test_kill_all_and_restart_keeps_every_acknowledged_write(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.wait_ready(http)
    urls = [n.url for n in cluster.nodes.values()]
    acked: dict[str, int] = {}

    async def writer(w: int) -> None:
        for n in range(30):  # 240 writes: snapshots (every 40 entries) happen meanwhile
            status, body, _ = await _put(http, urls[(w + n) % 3], f"d{w}-{n}", {"n": n})
            assert status == 201, body
            acked[f"d{w}-{n}"] = body["version"]

    await asyncio.gather(*(writer(w) for w in range(8)))
    for i in cluster.nodes:
        cluster.kill(i)
    cluster.start_all()
    await cluster.wait_ready(http)
    leader = await cluster.wait_leader(http)
    async with http.get(
        f"{cluster.nodes[leader].url}/kv", params={"prefix": "d", "limit": "1000"}
    ) as response:
        items = (await response.json())["items"]
    assert {i["key"]: i["version"] for i in items} == acked
    status = await cluster.status(http, leader)
    assert status is not None and status["snapshot_index"] > 0  # recovery used a snapshot


async def test_without_a_quorum_writes_and_reads_fail_fast_with_retry_after(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.wait_ready(http)
    leader = await cluster.wait_leader(http)
    assert (await _put(http, cluster.nodes[leader].url, "q", 1))[0] == 201
    survivor = next(i for i in cluster.nodes if i != leader)
    for i in cluster.nodes:
        if i != survivor:
            cluster.kill(i)
    url = cluster.nodes[survivor].url
    started = time.monotonic()
    status, body, headers = await _put(http, url, "q", 2)
    assert status == 503 and headers.get("Retry-After") == "1", body
    assert body["title"] in ("Datastore unavailable", "Leader unreachable")
    async with http.get(f"{url}/kv/q") as response:
        assert response.status == 503 and response.headers.get("Retry-After") == "1"
    # Each request ended within the commit timeout plus an election's worth of margin.
    assert time.monotonic() - started < 2 * (COMMIT_TIMEOUT_S + 10 * ELECTION_S)
    # A stale read still answers from what this replica applied.
    assert await _get(http, url, "q", stale=True) == (200, {"key": "q", "value": 1, "version": 1})


async def test_a_retried_write_applies_once_across_a_leader_change(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.wait_ready(http)
    leader = await cluster.wait_leader(http)
    status, first, _ = await _put(
        http, cluster.nodes[leader].url, "once", "a", **{"Idempotency-Key": "k-1"}
    )
    assert status == 201
    cluster.kill(leader)
    other = next(i for i in cluster.nodes if i != leader)
    deadline = time.monotonic() + COMMIT_TIMEOUT_S + 40 * ELECTION_S
    tries: list[str] = []
    while True:
        status, again, headers = await _put(
            http, cluster.nodes[other].url, "once", "a", **{"Idempotency-Key": "k-1"}
        )
        if status != 503:
            break
        tries.append(again["detail"])
        assert time.monotonic() < deadline, (tries, cluster.logs())
        await asyncio.sleep(0.05)
    assert (status, again, headers.get("Idempotent-Replayed")) == (201, first, "true")
    # Every replica holds the request's fingerprint: another body under the key is refused.
    for i in cluster.nodes:
        if i != leader:
            status, problem, _ = await _put(
                http, cluster.nodes[i].url, "once", "b", **{"Idempotency-Key": "k-1"}
            )
            assert status == 422, problem
    await cluster.wait_leader(http)
    assert (await _get(http, cluster.nodes[other].url, "once")) == (
        200,
        {"key": "once", "value": "a", "version": first["version"]},
    )


async def test_leader_transfer_and_membership_changes(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.wait_ready(http)
    leader = await cluster.wait_leader(http)
    target = next(i for i in cluster.nodes if i != leader)
    for n in range(60):  # enough entries that the new member needs a snapshot
        assert (await _put(http, cluster.nodes[leader].url, f"m{n}", n))[0] == 201
    # Transfer, asked of a follower: forwarded to the leader.
    async with http.post(
        f"{cluster.nodes[target].url}/raft/transfer", json={"to": target}
    ) as response:
        assert response.status == 202, await response.text()
    # The 202 comes before the hand-over: wait for the group to agree on the new leader.
    deadline = time.monotonic() + 40 * ELECTION_S
    while await cluster.wait_leader(http, timeout=40 * ELECTION_S) != target:
        assert time.monotonic() < deadline, f"leadership never moved to {target}"
        await asyncio.sleep(0.05)

    # Add a fourth replica: it starts knowing the group and catches up by snapshot.
    new = cluster.add_node()
    async with http.post(
        f"{cluster.nodes[leader].url}/raft/members",
        json={"id": new.id, "raft": f"127.0.0.1:{new.raft_port}", "http": new.url},
    ) as response:
        assert response.status == 200, await response.text()
        added = MemberChanged.model_validate(await response.json())  # as documented
        assert (added.op, added.member, added.voters) == ("add", new.id, [1, 2, 3, 4])
    cluster.start(new.id, members=[1, 2, 3, 4])
    deadline = time.monotonic() + 100 * ELECTION_S
    while True:
        with contextlib.suppress(aiohttp.ClientError):  # the new process may still be starting
            if (await _get(http, new.url, "m59", stale=True))[0] == 200:
                break
        assert time.monotonic() < deadline, cluster.logs()
        await asyncio.sleep(0.05)
    # A change while none is pending is fine; a bad payload is a precise 422.
    async with http.post(f"{new.url}/raft/members", json={"id": 0}) as response:
        assert response.status == 422
    async with http.delete(f"{new.url}/raft/members/{leader}") as response:
        assert response.status == 200, await response.text()
        removed = MemberChanged.model_validate(await response.json())
        assert removed.op == "remove" and removed.member == leader
        assert leader not in removed.voters
    # The removed replica stops being ready, so clients and the gateway pass it over.
    deadline = time.monotonic() + 20 * ELECTION_S
    while True:
        async with http.get(f"{cluster.nodes[leader].url}/readyz") as response:
            if response.status == 503:
                break
        assert time.monotonic() < deadline, "the removed replica still says it is ready"
        await asyncio.sleep(0.05)
    cluster.kill(leader, signal.SIGTERM)
    # Three voters remain and still commit.
    assert (await _put(http, new.url, "after", 1))[0] == 201
