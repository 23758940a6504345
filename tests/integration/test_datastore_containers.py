"""The datastore as three containers of its image on a Docker network: each runs as a
non-root user on a read-only root filesystem and is healthy within 10 s of its start;
the leader's container is stopped in the middle of writes (`docker stop`: SIGTERM, so it
hands leadership over first) and started again; the group goes on, the started replica
catches up, and the clients' history (writes, conditional writes, deletes, reads on
every replica) is linearizable by the project's checker, so no acknowledged write was
lost.

The image comes from YARDARM_IMAGE_DATASTORE (default `yardarm/datastore:<version>`, built
by `yardarm images build`). The replicas find each other by container name on the
test's own network; the test reaches each one's HTTP API on a port published on
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest
from docker.errors import DockerException
from docker.models.containers import Container
from yardarm_datastore.linearizability import check_history
from yardarm_datastore.settings import DatastoreSettings

from tests.conftest import free_port
from tests.harness.kv_history import History, kv_client
from tests.integration.conftest import (
    require_docker,
    require_project_image,
    started_to_healthy_s,
)

SCALE = max(1.0, float(os.environ.get("YARDARM_TEST_SCALE", "1")))
HTTP_PORT, RAFT_PORT = 8090, 8140  # the image's defaults
REPLICAS = 3
# The group's timing is the image's default.
_TIMING = DatastoreSettings.model_fields
ELECTION_S = float(_TIMING["tick_s"].default) * int(_TIMING["election_ticks"].default)
HEALTHY_WITHIN_S = 10.0  # what the image promises (its HEALTHCHECK runs every 2 s)
BOUND_S = 60.0  # a start, a hand-over, a catch-up: seconds; wide for a busy machine
WRITE_S = 12.0 * SCALE
CLIENTS = 4
KEYS = [f"containers/{i}" for i in range(8)]
MAX_OPS_PER_KEY = 150


@dataclass
class Replica:
    id: int
    container: Container
    url: str  # its HTTP API as the test reaches it

    def inspect(self) -> dict[str, Any]:
        self.container.reload()
        attrs: dict[str, Any] = self.container.attrs
        return attrs


def _status(url: str) -> dict[str, Any] | None:
    try:
        answer = httpx.get(f"{url}/raft/status", timeout=ELECTION_S, trust_env=False)
        answer.raise_for_status()
        found: dict[str, Any] = answer.json()
    except (httpx.HTTPError, ValueError):
        return None
    return found


def _poll(what: str, check: Any, bound_s: float = BOUND_S) -> Any:
    deadline = time.monotonic() + bound_s
    while (found := check()) in (None, False):
        assert time.monotonic() < deadline, f"{what}: not within {bound_s}s"
        time.sleep(0.1)
    return found


def _leader(replicas: list[Replica]) -> Replica:
    """The replica every running one agrees leads."""

    def agreed() -> Replica | None:
        seen = {(s or {}).get("leader") for r in replicas if (s := _status(r.url)) is not None}
        leader = next(iter(seen)) if len(seen) == 1 else None
        return next((r for r in replicas if r.id == leader), None)

    found: Replica = _poll("a leader every running replica agrees on", agreed)
    return found


def _healthy_after(replica: Replica) -> float:
    """Seconds from the container's start to its first passing health check."""
    _poll(f"replica {replica.id} healthy",
          lambda: replica.inspect()["State"]["Health"]["Status"] == "healthy")  # fmt: skip
    return started_to_healthy_s(replica.inspect()["State"])


@pytest.fixture(scope="module")
def group() -> Iterator[list[Replica]]:
    client = require_docker()
    image = require_project_image(client, "datastore")
    tag = uuid.uuid4().hex[:8]
    network = client.networks.create(f"yardarm-it-datastore-{tag}", driver="bridge")
    names = {i: f"yardarm-it-ds{i}-{tag}" for i in range(1, REPLICAS + 1)}
    replicas: list[Replica] = []
    try:
        for i, name in names.items():
            peers = {
                str(j): {"raft": f"{peer}:{RAFT_PORT}", "http": f"http://{peer}:{HTTP_PORT}"}
                for j, peer in names.items()
                if j != i
            }
            port = free_port()
            container = client.containers.run(
                image,
                name=name,
                detach=True,
                read_only=True,
                network=network.name,
                ports={f"{HTTP_PORT}/tcp": ("127.0.0.1", port)},
                environment={
                    "YARDARM_DATASTORE_REPLICA_ID": str(i),
                    "YARDARM_DATASTORE_INSTANCE": f"datastore-{i - 1}",
                    "YARDARM_DATASTORE_PEERS": json.dumps(peers),
                },
            )
            replicas.append(Replica(i, container, f"http://127.0.0.1:{port}"))
        yield replicas
    finally:
        for replica in replicas:
            with contextlib.suppress(DockerException):
                replica.container.remove(force=True, v=True)
        with contextlib.suppress(DockerException):
            network.remove()
        client.close()


def test_each_replica_runs_unprivileged_read_only_and_is_healthy_within_10s(
    group: list[Replica],
) -> None:
    for replica in group:
        took = _healthy_after(replica)
        assert took <= HEALTHY_WITHIN_S, f"replica {replica.id} healthy after {took:.1f}s"
        attrs = replica.inspect()
        assert attrs["Config"]["User"] == "10001:10001"
        assert attrs["HostConfig"]["ReadonlyRootfs"] is True
        uid = replica.container.exec_run(["python", "-c", "import os; print(os.getuid())"])
        assert uid.output.decode().strip() == "10001"
        # Nothing outside the state volume may be written, by design.
        write = replica.container.exec_run(["python", "-c", "open('/opt/yardarm/x', 'w')"])
        assert write.exit_code != 0 and b"Read-only file system" in write.output
        print(f"replica {replica.id}: healthy {took:.1f}s after its start")
    _leader(group)


async def _clients(urls: list[str], history: History, until: float) -> None:
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(kv_client(n, urls, history, until, http) for n in range(CLIENTS)))


def test_the_leaders_container_stopped_mid_write_loses_nothing(group: list[Replica]) -> None:
    leader = _leader(group)
    term = int((_status(leader.url) or {})["term"])
    history = History(KEYS, MAX_OPS_PER_KEY)
    until = time.monotonic() + WRITE_S
    urls = [r.url for r in group]
    writing = threading.Thread(target=lambda: asyncio.run(_clients(urls, history, until)))
    writing.start()
    try:
        time.sleep(WRITE_S / 4)
        stopping = time.monotonic()
        leader.container.stop(timeout=10)  # SIGTERM: the leader hands over, then drains
        stopped_s = time.monotonic() - stopping
        successor = _leader([r for r in group if r is not leader])
        new_term = int((_status(successor.url) or {})["term"])
        leader.container.start()
    finally:
        writing.join(timeout=WRITE_S + BOUND_S)
    assert not writing.is_alive(), "the clients did not finish"
    caught_up = _poll(
        "the restarted replica ready (caught up with the leader)",
        lambda: (
            httpx.get(f"{leader.url}/readyz", timeout=2, trust_env=False).status_code == 200
            if _status(leader.url) is not None
            else None
        ),
    )
    assert caught_up
    unknown = sum(1 for op in history.ops if op.outcome is None)
    assert history.answered >= 100, history.answered
    assert history.acknowledged_writes(), "no write was acknowledged"
    result = check_history(history.ops)
    report = (
        f"{len(history.ops)} operations ({unknown} unknown outcome, "
        f"{len(history.acknowledged_writes())} acknowledged writes); leader {leader.id} "
        f"stopped in {stopped_s:.1f}s, replica {successor.id} leads in term {new_term} "
        f"(was {term}): {result.reason}"
    )
    print(report)
    assert result.ok and not result.budget_exhausted, report
    assert new_term > term
