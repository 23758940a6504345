"""Acknowledged writes survive SIGKILL of the real datastore process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import free_port, wait_for_port

WRITES = 400


def _start(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "YARDARM_DATASTORE_PORT": str(port),
        "YARDARM_DATASTORE_DATA_DIR": str(tmp / "data"),
        "YARDARM_DATASTORE_STATE_DIR": str(tmp),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "yardarm_datastore"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "datastore.log", "ab"),
    )


async def test_sigkill_right_after_acks_loses_no_acknowledged_write(tmp_path: Path) -> None:
    port = free_port()
    proc = _start(tmp_path, port)
    wait_for_port(port)
    acked: dict[str, int] = {}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:

        async def write(i: int) -> None:
            response = await http.put(f"/kv/durable/{i:04d}", json={"value": {"i": i}})
            if response.status in (200, 201):
                acked[f"durable/{i:04d}"] = (await response.json())["version"]

        await asyncio.gather(*(write(i) for i in range(WRITES)))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert len(acked) == WRITES

    port = free_port()
    proc = _start(tmp_path, port)
    try:
        wait_for_port(port)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            found: dict[str, int] = {}
            after = None
            while True:
                query = "prefix=durable/&limit=1000" + (f"&after={after}" if after else "")
                page = await (await http.get(f"/kv?{query}")).json()
                found.update({item["key"]: item["version"] for item in page["items"]})
                after = page["next"]
                if after is None:
                    break
        assert found == acked
    finally:
        proc.terminate()
        proc.wait(timeout=15)
