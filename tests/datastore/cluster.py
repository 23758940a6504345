"""A real datastore Raft group for tests: N `python -m yardarm_datastore` processes.

Timing is shortened (20 ms ticks, elections after 200-400 ms) so faults resolve fast;
tests state their limits in these intervals.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import free_port

TICK_S = 0.02
ELECTION_TICKS = 10
ELECTION_S = TICK_S * ELECTION_TICKS  # the shortest election timeout
COMMIT_TIMEOUT_S = 2.0


@dataclass
class Node:
    id: int
    http_port: int
    raft_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    """Starts, kills and restarts replicas; `raft_address(i, j)` lets a test put a proxy
    on the link i -> j (by default replicas talk directly). `headers` go with the status
    requests the helpers make (a credential, when the group has an access document);
    `scheme` is https when the replicas serve TLS."""

    root: Path
    size: int = 3
    extra_env: dict[str, str] = field(default_factory=dict)
    nodes: dict[int, Node] = field(default_factory=dict)
    link_ports: dict[tuple[int, int], int] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"
    node_env: dict[int, dict[str, str]] = field(default_factory=dict)  # per replica

    def __post_init__(self) -> None:
        for i in range(1, self.size + 1):
            self.nodes[i] = self._node(i)

    def _node(self, i: int) -> Node:
        return Node(
            i,
            free_port(),
            free_port(),
            self.root / f"data-{i}",
            self.root / f"replica-{i}.log",
            scheme=self.scheme,
        )

    def raft_address(self, src: int, dst: int) -> str:
        port = self.link_ports.get((src, dst), self.nodes[dst].raft_port)
        return f"127.0.0.1:{port}"

    def peers(self, i: int, members: list[int] | None = None) -> dict[str, Any]:
        ids = members if members is not None else list(self.nodes)
        return {
            str(j): {"raft": self.raft_address(i, j), "http": self.nodes[j].url}
            for j in ids
            if j != i
        }

    def env(self, node: Node, members: list[int] | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "YARDARM_DATASTORE_PORT": str(node.http_port),
            "YARDARM_DATASTORE_HOST": "127.0.0.1",
            "YARDARM_DATASTORE_INSTANCE": f"datastore-{node.id - 1}",
            "YARDARM_DATASTORE_DATA_DIR": str(node.data_dir),
            "YARDARM_DATASTORE_STATE_DIR": str(self.root / "state"),
            "YARDARM_DATASTORE_REPLICA_ID": str(node.id),
            "YARDARM_DATASTORE_RAFT_PORT": str(node.raft_port),
            "YARDARM_DATASTORE_PEERS": json.dumps(self.peers(node.id, members)),
            "YARDARM_DATASTORE_TICK_S": str(TICK_S),
            "YARDARM_DATASTORE_ELECTION_TICKS": str(ELECTION_TICKS),
            "YARDARM_DATASTORE_HEARTBEAT_TICKS": "2",
            "YARDARM_DATASTORE_COMMIT_TIMEOUT_S": str(COMMIT_TIMEOUT_S),
            **self.extra_env,
            **self.node_env.get(node.id, {}),
        }

    def start(self, i: int, members: list[int] | None = None) -> None:
        node = self.nodes[i]
        assert not node.alive, f"replica {i} is already running"
        with node.log_path.open("ab") as log:
            node.proc = subprocess.Popen(
                [sys.executable, "-m", "yardarm_datastore"],
                env=self.env(node, members),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def start_all(self) -> None:
        for i in self.nodes:
            self.start(i)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)
            node.proc.wait(timeout=30)

    def stop_all(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
                node.proc.kill()
                node.proc.wait(timeout=30)

    def add_node(self) -> Node:
        i = max(self.nodes) + 1
        self.nodes[i] = self._node(i)
        return self.nodes[i]

    async def status(self, http: aiohttp.ClientSession, i: int) -> dict[str, Any] | None:
        try:
            async with http.get(
                self.nodes[i].url + "/raft/status",
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=1),
            ) as response:
                return dict(await response.json()) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_leader(
        self, http: aiohttp.ClientSession, timeout: float = 30.0, among: list[int] | None = None
    ) -> int:
        """The id of a leader that every live replica in `among` agrees on."""
        deadline = time.monotonic() + timeout
        ids = among or [i for i, n in self.nodes.items() if n.alive]
        while time.monotonic() < deadline:
            seen = [await self.status(http, i) for i in ids]
            leaders = {s["leader"] for s in seen if s is not None}
            if len(leaders) == 1 and all(s is not None for s in seen):
                leader = leaders.pop()
                if leader in ids and seen[ids.index(leader)]["role"] == "leader":  # type: ignore[index]
                    return int(leader)
            await asyncio.sleep(0.05)
        raise AssertionError(f"no agreed leader among {ids} within {timeout}s: {self.logs()}")

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for i, node in self.nodes.items():
            if not node.alive:
                continue
            while True:
                try:
                    async with http.get(node.url + "/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"replica {i} not ready: {self.logs()}")
                await asyncio.sleep(0.05)

    def logs(self, lines: int = 15) -> str:
        out = []
        for node in self.nodes.values():
            if node.log_path.exists():
                tail = node.log_path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- replica {node.id}\n" + "\n".join(t[:300] for t in tail))
        return "\n".join(out)
