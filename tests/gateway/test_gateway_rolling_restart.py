"""Two gateway replicas share the public port (SO_REUSEPORT); each is replaced in turn
(SIGTERM, exit, a new process on the same ports, ready), as the supervisor rolls them,
while clients that never retry keep sending: none may see a failure.

Three kinds of clients, as real ones behave: a keep-alive pool on a fixed schedule
(like `yardarm load`: aiohttp's client with its retry of a stale connection turned
off), whose connections a leaving replica must move to its peer with `Connection:
close` and never close under a request; a client sending back to back on one keep-alive
connection (an SDK in a loop), which has a request on its way almost whenever that
connection looks idle; and a client opening a connection per request (curl, scripts),
whose connections land on the leaving replica's listener up to the instant it leaves
and must not be reset there.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.gateway.conftest import unused_port
from tests.gateway.processes import Backends, spawn, wait_ready

KEEP_ALIVE_RATE = 60.0  # requests per second through the pool
BACK_TO_BACK = 3  # clients sending their next request as soon as the last is answered
FRESH_RATE = 30.0  # requests per second, each on a connection of its own
REPLACEMENTS = 4  # each replica twice
TIMEOUT_S = 5.0


@dataclass
class Replica:
    index: int
    admin_port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = spawn([sys.executable, "-m", "yardarm_gateway"], self.log, self.env)
        await wait_ready(f"http://127.0.0.1:{self.admin_port}", self.log, within_s=60)

    async def stop(self) -> int:
        """SIGTERM, as the supervisor stops a replica; the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, 30)


def replicas(tmp_path: Path, port: int, backend_url: str) -> list[Replica]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("YARDARM_", "OTEL_"))}
    made = []
    for index in range(2):
        admin_port = unused_port()
        env = base | {
            "YARDARM_GATEWAY_INSTANCE": f"gateway-{index}",
            "YARDARM_GATEWAY_PORT": str(port),
            "YARDARM_GATEWAY_REUSE_PORT": "true",  # and so the shared-port drain delay
            "YARDARM_GATEWAY_ADMIN_PORT": str(admin_port),
            "YARDARM_GATEWAY_SPAN_FILES": "false",
            "YARDARM_GATEWAY_STATE_DIR": str(tmp_path / f"state-{index}"),
            "YARDARM_GATEWAY_ROUTES": json.dumps([{"prefix": "/api/orders", "upstream": "o"}]),
            "YARDARM_GATEWAY_UPSTREAMS": json.dumps({"o": [backend_url]}),
        }
        made.append(Replica(index, admin_port, env, tmp_path / f"gateway-{index}.log"))
    return made


async def open_loop(
    session: aiohttp.ClientSession, url: str, rate: float, stop: asyncio.Event
) -> Counter[str]:
    """GETs and POSTs on a fixed schedule whatever the answers; outcomes by kind."""
    outcomes: Counter[str] = Counter()

    async def one(n: int) -> None:
        method = "POST" if n % 4 == 0 else "GET"
        try:
            async with session.request(
                method, f"{url}/api/orders/{n}", json={"n": n} if method == "POST" else None
            ) as resp:
                await resp.read()
                outcomes["ok" if resp.status < 500 else f"status {resp.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcomes[type(exc).__name__] += 1

    started = time.monotonic()
    sent: list[asyncio.Task[None]] = []
    while not stop.is_set():
        sent.append(asyncio.create_task(one(len(sent))))
        await asyncio.sleep(max(0.0, started + len(sent) / rate - time.monotonic()))
    await asyncio.gather(*sent)
    return outcomes


async def back_to_back(
    session: aiohttp.ClientSession, url: str, stop: asyncio.Event
) -> Counter[str]:
    """BACK_TO_BACK workers, each sending one GET after another on a keep-alive
    connection of the session; outcomes by kind."""
    outcomes: Counter[str] = Counter()

    async def worker() -> None:
        while not stop.is_set():
            try:
                async with session.get(f"{url}/api/orders/{sum(outcomes.values())}") as resp:
                    await resp.read()
                    outcomes["ok" if resp.status < 500 else f"status {resp.status}"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1

    await asyncio.gather(*(worker() for _ in range(BACK_TO_BACK)))
    return outcomes


def client(*, keep_alive: bool) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=64, force_close=not keep_alive)
    session = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
    )
    session._retry_connection = False  # as `yardarm load`: a stale connection is a failure
    return session


async def test_replacing_each_replica_in_turn_fails_no_request(
    tmp_path: Path, backends: Backends
) -> None:
    (backend,) = await backends("orders")
    port = unused_port()
    fleet = replicas(tmp_path, port, backend.url)
    try:
        for replica in fleet:
            await replica.start()
        url = f"http://127.0.0.1:{port}"
        stop = asyncio.Event()
        async with (
            client(keep_alive=True) as pooled,
            client(keep_alive=True) as looping,
            client(keep_alive=False) as fresh,
        ):
            loads = [
                asyncio.create_task(open_loop(pooled, url, KEEP_ALIVE_RATE, stop)),
                asyncio.create_task(back_to_back(looping, url, stop)),
                asyncio.create_task(open_loop(fresh, url, FRESH_RATE, stop)),
            ]
            await asyncio.sleep(1.0)  # both replicas hold pooled connections
            for turn in range(REPLACEMENTS):
                replica = fleet[turn % 2]
                assert await replica.stop() == 0, replica.log.read_text()
                await replica.start()
                await asyncio.sleep(0.5)
            stop.set()
            outcomes = dict(
                zip(("pooled", "back-to-back", "fresh"), await asyncio.gather(*loads), strict=True)
            )
    finally:
        for replica in fleet:
            if replica.process is not None and replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait()
    failed = {name: {k: n for k, n in seen.items() if k != "ok"} for name, seen in outcomes.items()}
    assert failed == {"pooled": {}, "back-to-back": {}, "fresh": {}}, outcomes
    assert outcomes["pooled"]["ok"] > KEEP_ALIVE_RATE * REPLACEMENTS  # it ran throughout
