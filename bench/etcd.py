"""etcd 3.4 as a peer: a cluster of members on loopback, spoken to through its JSON gateway.

Each member has its own data directory and etcd's default durability (every commit is
fsynced). Clients use the grpc-gateway's JSON API (`/v3/kv/put`, `/v3/kv/range`), whose
range requests are linearizable unless they ask for `serializable`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.loopback import LOOPBACK, check_loopback, free_port
from bench.options import BenchError
from bench.processes import ManagedProcess, start_process, tool_version, wait_http_ok

ETCD_PATH = "/usr/bin/etcd"
INSTALL_HINT = "apt-get install -y etcd-server"
START_TIMEOUT_S = 60.0

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def find_etcd() -> str:
    """The etcd binary, or a BenchError saying how to install it."""
    path = shutil.which("etcd") or (ETCD_PATH if os.access(ETCD_PATH, os.X_OK) else None)
    if path is None:
        raise BenchError(f"etcd not found: {INSTALL_HINT} (Debian 12 ships etcd 3.4)")
    return path


def etcd_version(path: str) -> str:
    return tool_version([path, "--version"], r"etcd Version: (\S+)")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdGateway:
    """etcd's v3 KV API over its JSON gateway: the wire format of the peer."""

    name = "etcd"

    def __init__(self) -> None:
        self._encoded: dict[str, str] = {}

    def _encode(self, text: str) -> str:
        encoded = self._encoded.get(text)
        if encoded is None:
            encoded = self._encoded[text] = _b64(text)
        return encoded

    async def put(self, session: aiohttp.ClientSession, endpoint: str, key: str, value: str) -> int:
        body = {"key": self._encode(key), "value": self._encode(value)}
        async with session.post(f"{endpoint}/v3/kv/put", json=body) as response:
            await response.read()
            return response.status

    async def get(self, session: aiohttp.ClientSession, endpoint: str, key: str) -> int:
        async with session.post(
            f"{endpoint}/v3/kv/range", json={"key": self._encode(key)}
        ) as response:
            await response.read()
            return response.status

    async def value(self, session: aiohttp.ClientSession, endpoint: str, key: str) -> str | None:
        async with session.post(
            f"{endpoint}/v3/kv/range", json={"key": self._encode(key)}
        ) as response:
            if response.status != 200:
                return None
            kvs = (await response.json()).get("kvs") or []
            return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def _post_json(url: str, body: dict[str, Any], timeout_s: float = 2.0) -> Any:
    check_loopback(url)
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with _OPENER.open(request, timeout=timeout_s) as response:
        return json.loads(response.read())


@dataclass
class EtcdCluster:
    """Running members and their client URLs, in member order."""

    members: list[ManagedProcess]
    client_urls: list[str]

    def leader_url(self) -> str:
        """The client URL of the current leader, asked of the members themselves."""
        for url in self.client_urls:
            try:
                status = _post_json(f"{url}/v3/maintenance/status", {})
            except OSError:
                continue
            if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                return url
        raise BenchError("no etcd member reports itself as the leader; see the member logs")


@contextmanager
def etcd_cluster(path: str, root: Path, replicas: int, log_dir: Path) -> Iterator[EtcdCluster]:
    """Start `replicas` members in data dirs under `root`; stop them all on exit."""
    names = [f"etcd-{index}" for index in range(replicas)]
    client_ports = [free_port() for _ in names]
    peer_ports = [free_port() for _ in names]
    initial = ",".join(
        f"{name}=http://{LOOPBACK}:{port}" for name, port in zip(names, peer_ports, strict=True)
    )
    # etcd reads ETCD_* variables as flags: none may leak in from the environment.
    env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD_")}
    with ExitStack() as stack:
        members: list[ManagedProcess] = []
        for name, client, peer in zip(names, client_ports, peer_ports, strict=True):
            client_url, peer_url = f"http://{LOOPBACK}:{client}", f"http://{LOOPBACK}:{peer}"
            argv = [
                path, "--name", name, "--data-dir", str(root / name),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"yardarm-bench-{os.getpid()}",
                "--logger", "zap", "--log-level", "warn", "--log-outputs", "stderr",
            ]  # fmt: skip
            member = start_process(name, argv, log_dir=log_dir, env=env)
            stack.callback(member.stop)
            members.append(member)
        urls = [f"http://{LOOPBACK}:{port}" for port in client_ports]
        for member, url in zip(members, urls, strict=True):
            # /health answers 200 once the member has a leader and serves a quorum read.
            wait_http_ok(f"{url}/health", member, timeout_s=START_TIMEOUT_S)
        yield EtcdCluster(members, urls)
