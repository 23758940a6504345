"""Acknowledged writes survive SIGKILL of the real datastore process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import free_port, wait_for_port

WORKERS = 40
STEPS = 10  # per worker: create, updates with compare-and-set, a delete, a re-create


def _start(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "YARDARM_DATASTORE_PORT": str(port),
        "YARDARM_DATASTORE_HOST": "127.0.0.1",
        "YARDARM_DATASTORE_DATA_DIR": str(tmp / "data"),
        "YARDARM_DATASTORE_STATE_DIR": str(tmp / "state"),
        "YARDARM_DATASTORE_SNAPSHOT_ENTRIES": "50",  # snapshots happen during the run too
    }
    with (tmp / "datastore.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "yardarm_datastore"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def _wait_ready(base: str) -> None:
    async with aiohttp.ClientSession(base) as http:
        for _ in range(600):
            try:
                if (await http.get("/readyz")).status == 200:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{base} never became ready")


async def _read_all(base: str, prefix: str) -> dict[str, tuple[Any, int]]:
    found: dict[str, tuple[Any, int]] = {}
    async with aiohttp.ClientSession(base) as http:
        after: str | None = None
        for _ in range(100):
            params = {"prefix": prefix, "limit": "1000", **({"after": after} if after else {})}
            response = await http.get("/kv", params=params)
            assert response.status == 200, await response.text()
            page = await response.json()
            found.update({i["key"]: (i["value"], i["version"]) for i in page["items"]})
            after = page["next"]
            if after is None:
                return found
    raise AssertionError("listing did not end")


async def test_sigkill_right_after_the_last_ack_loses_no_acknowledged_write(
    tmp_path: Path,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(tmp_path, port)
    try:
        wait_for_port(port)
        await _wait_ready(base)
        expected: dict[str, tuple[Any, int] | None] = {}  # None: acknowledged as deleted
        acks = 0
        total = WORKERS * STEPS + 1
        padding = "p" * 300

        def acknowledged() -> None:
            nonlocal acks
            acks += 1
            if acks == total:  # kill the moment the last acknowledgement is in
                os.kill(proc.pid, signal.SIGKILL)

        async with aiohttp.ClientSession(base) as http:
            idem = await http.put(
                "/kv/durable/idem",
                json={"value": "first"},
                headers={"Idempotency-Key": "durable-idem"},
            )
            assert idem.status == 201
            idem_body = await idem.json()
            expected["durable/idem"] = ("first", idem_body["version"])
            acknowledged()

            async def worker(w: int) -> None:
                key = f"durable/{w:03d}"
                version = 0
                for step in range(STEPS):
                    if step == STEPS // 2:
                        response = await http.delete(f"/kv/{key}?if_version={version}")
                        assert response.status == 200, await response.text()
                        version = (await response.json())["version"]
                        expected[key] = None
                        acknowledged()
                        version = 0
                        continue
                    value = {"w": w, "step": step, "pad": padding}
                    body = {"value": value, "if_version": version}
                    response = await http.put(f"/kv/{key}", json=body)
                    assert response.status in (200, 201), await response.text()
                    version = (await response.json())["version"]
                    expected[key] = (value, version)
                    acknowledged()

            await asyncio.gather(*(worker(w) for w in range(WORKERS)))
        assert acks == total
        assert proc.wait(timeout=30) == -signal.SIGKILL

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = _start(tmp_path, port)
        wait_for_port(port)
        await _wait_ready(base)
        found = await _read_all(base, "durable/")
        assert found == {k: v for k, v in expected.items() if v is not None}
        async with aiohttp.ClientSession(base) as http:
            retry = await http.put(
                "/kv/durable/idem",
                json={"value": "first"},
                headers={"Idempotency-Key": "durable-idem"},
            )
            assert retry.status == 201 and await retry.json() == idem_body
            assert retry.headers.get("Idempotent-Replayed") == "true"
            # The request's fingerprint survived too (in a snapshot, or the log).
            other = await http.put(
                "/kv/durable/idem",
                json={"value": "second"},
                headers={"Idempotency-Key": "durable-idem"},
            )
            assert other.status == 422, await other.text()
            newest = max(v[1] for v in found.values())
            after = await http.put("/kv/durable/000", json={"value": "after restart"})
            assert (await after.json())["version"] > newest
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
