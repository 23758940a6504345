"""Every HTTP service as a real process (`python -m yardarm_<service>`), configured through
its environment as a container runtime would: a bind address, no span files, a flags
file. Orders and fulfillment get the session's real Postgres and NATS; orders, a real
datastore; the gateway, a backend served by the test's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web
from nats.js.errors import NotFoundError
from yardarm_kit.messaging import connect, ensure_streams

from tests.conftest import free_port

SERVICES = ("datastore", "gateway", "orders", "fulfillment")
# A shipment the fulfillment test reads back (`GET /shipments/{saga}` answers 200).
SHIPMENT_SAGA = "drain-saga"


@dataclass
class Deps:
    """What orders and fulfillment need: a database of their own and the session's NATS."""

    dsn: str
    nats_url: str


@dataclass
class Running:
    """One started service: its ports (as the test reaches them), the path of a request
    that answers 2xx, and where it might have written."""

    service: str
    proc: subprocess.Popen[bytes]
    port: int
    slow_path: str
    log: Path
    state_dir: Path
    admin_port: int | None = None
    raft_port: int | None = None
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def http_ports(self) -> list[int]:
        """Every HTTP listener of the process (the gateway's admin one included)."""
        return [self.port] + ([self.admin_port] if self.admin_port is not None else [])

    def log_text(self) -> str:
        return tail(self.log)


def tail(log: Path) -> str:
    """The end of a process's log, for an assertion's message."""
    return log.read_text(errors="replace")[-6000:]


def write_latency_flag(path: Path, latency_ms: int) -> None:
    """A flagd file turning on `fault.latency-ms` for every request of the process."""
    flag = {"state": "ENABLED", "variants": {"on": latency_ms}, "defaultVariant": "on"}
    path.write_text(json.dumps({"flags": {"fault.latency-ms": flag}}))


def spawn(service: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("YARDARM_", "OTEL_"))}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", f"yardarm_{service}"],
            env={**base, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_ready(
    proc: subprocess.Popen[bytes], url: str, log: Path, within_s: float = 60.0
) -> None:
    """Until `url/readyz` answers 200; the process log in the error otherwise."""
    deadline = time.monotonic() + within_s
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode}:\n{tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} not ready after {within_s}s:\n{tail(log)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(30)


@contextlib.asynccontextmanager
async def backend() -> AsyncIterator[str]:
    """An upstream for the gateway on loopback: `/readyz` and every other GET answer 200."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def start_service(
    service: str,
    tmp_path: Path,
    *,
    host: str,
    env: dict[str, str],
    deps: Deps | None = None,
    upstream: str | None = None,
    reach: str = "127.0.0.1",
) -> Running:
    """Start `service` bound to `host` with `env` added to its settings, ready (reached
    on `reach`). Dependencies: `deps` for orders and fulfillment, `upstream` (a base URL)
    for the gateway."""
    prefix = f"YARDARM_{service.upper()}_"
    port = free_port()
    state_dir = tmp_path / f"{service}-state"
    log = tmp_path / f"{service}.log"
    settings = {
        "HOST": host,
        "PORT": str(port),
        "INSTANCE": f"{service}-0",
        "STATE_DIR": str(state_dir),
        "SPAN_FILES": "false",
    }
    others: list[subprocess.Popen[bytes]] = []
    admin_port = raft_port = None
    if service == "datastore":
        raft_port = free_port()
        settings |= {
            "RAFT_HOST": host,
            "RAFT_PORT": str(raft_port),
            "DATA_DIR": str(tmp_path / "datastore-data"),
        }
        slow_path = "/kv?prefix=drain/"
    elif service == "gateway":
        assert upstream is not None
        admin_port = free_port()
        settings |= {
            "ADMIN_PORT": str(admin_port),
            "ROUTES": json.dumps([{"prefix": "/api/echo", "upstream": "echo", "name": "echo"}]),
            "UPSTREAMS": json.dumps({"echo": [upstream]}),
        }
        slow_path = "/api/echo/slow"
    elif service == "orders":
        assert deps is not None
        store = await start_datastore_dependency(tmp_path)
        others.append(store[0])
        settings |= {
            "DATABASE_URL": deps.dsn,
            "NATS_URL": deps.nats_url,
            "DATASTORE_URLS": json.dumps([store[1]]),
        }
        slow_path = "/stock"
    elif service == "fulfillment":
        assert deps is not None
        await reset_fulfillment_consumers(deps.nats_url)
        settings |= {"DATABASE_URL": deps.dsn, "NATS_URL": deps.nats_url}
        slow_path = f"/shipments/{SHIPMENT_SAGA}"
    else:
        raise ValueError(service)
    proc = spawn(service, {prefix + k: v for k, v in (settings | env).items()}, log)
    running = Running(service, proc, port, slow_path, log, state_dir, admin_port, raft_port, others)
    try:
        for http_port in running.http_ports:
            await wait_ready(proc, f"http://{reach}:{http_port}", log)
        if service == "fulfillment":
            assert deps is not None
            await record_shipment(deps.dsn)
    except BaseException:
        for started in [proc, *others]:
            stop(started)
        raise
    return running


async def start_datastore_dependency(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A datastore (a group of one, on loopback) for orders to read its catalog from."""
    port = free_port()
    log = tmp_path / "dependency-datastore.log"
    env = {
        "YARDARM_DATASTORE_PORT": str(port),
        "YARDARM_DATASTORE_INSTANCE": "datastore-dependency",
        "YARDARM_DATASTORE_DATA_DIR": str(tmp_path / "dependency-datastore-data"),
        "YARDARM_DATASTORE_STATE_DIR": str(tmp_path / "dependency-state"),
    }
    proc = spawn("datastore", env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(proc, url, log)
    except BaseException:
        stop(proc)
        raise
    return proc, url


async def reset_fulfillment_consumers(nats_url: str) -> None:
    """No durable left by another test (a durable keeps its first config) and no command
    backlog on the session's NATS, as the fulfillment tests' own fixture does."""
    nc, js = await connect(nats_url, "drain-tests")
    try:
        await ensure_streams(js)
        for durable in ("payments", "shipping"):
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer("COMMANDS", durable)
        await js.purge_stream("COMMANDS")
    finally:
        await nc.close()


async def record_shipment(dsn: str) -> None:
    """A cancelled shipment in fulfillment's ledger (its schema is migrated by now)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO shipments (saga_id, order_id, status) VALUES ($1, $1, 'cancelled')",
            SHIPMENT_SAGA,
        )
    finally:
        await conn.close()


async def connects(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port is accepted (False: refused)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except ConnectionRefusedError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
