"""Backend processes for gateway tests, and reading the gateway's metrics.

Backends are separate processes (tests/gateway/backend_app.py) so a SIGKILL is real, and
a killed one can be started again on its port, as a supervisor restarts a crashed replica.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import free_port

BACKEND = Path(__file__).with_name("backend_app.py")


@dataclass
class Backend:
    name: str
    url: str
    port: int
    process: subprocess.Popen[bytes]

    async def control(self, session: aiohttp.ClientSession, **state: Any) -> dict[str, Any]:
        async with session.post(f"{self.url}/control", json=state) as resp:
            assert resp.status == 200
            result: dict[str, Any] = await resp.json()
            return result

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


def spawn(
    command: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


async def wait_ready(url: str, log: Path, within_s: float = 15.0) -> None:
    """Until `url/readyz` answers 200; the process log in the error otherwise."""
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {within_s}s; see {log}")


class Backends:
    """Starts backend processes (`await backends("a", "b")`) and restarts killed ones."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self.started: list[Backend] = []

    async def __call__(self, *names: str) -> list[Backend]:
        batch = [self._spawn(name, free_port()) for name in names]
        for backend in batch:
            await wait_ready(backend.url, self._log(backend.name))
        return batch

    async def restart(self, backend: Backend) -> Backend:
        """A killed backend started again on its port, ready; the same name and URL."""
        assert backend.process.poll() is not None, f"{backend.name} is still running"
        again = self._spawn(backend.name, backend.port)
        await wait_ready(again.url, self._log(again.name))
        return again

    def stop_all(self) -> None:
        for backend in self.started:
            if backend.process.poll() is None:
                backend.process.kill()
            backend.process.wait(10)

    def _spawn(self, name: str, port: int) -> Backend:
        command = [sys.executable, str(BACKEND), str(port), name]
        backend = Backend(name, f"http://127.0.0.1:{port}", port, spawn(command, self._log(name)))
        self.started.append(backend)
        return backend

    def _log(self, name: str) -> Path:
        return self._log_dir / f"{name}.log"


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The gateway's metrics as {'name{labels}': value}."""
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in samples.items():
        if not key.startswith(name + "{"):
            continue
        if all(re.search(rf'{k}="{re.escape(v)}"', key) for k, v in labels.items()):
            total += value
    return total
