"""The KV HTTP API answers bad input with precise problems, and good input per contract."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yardarm_datastore import DatastoreSettings, create_service

from tests.conftest import free_port


@pytest.fixture
async def base_url(tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    service = create_service(
        DatastoreSettings(port=port, data_dir=tmp_path / "data", state_dir=tmp_path)
    )
    await service.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await service.stop()


async def _problem(response: aiohttp.ClientResponse, status: int) -> dict[str, object]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, object] = await response.json(content_type=None)
    assert body["status"] == status
    return body


async def test_crud_and_conflict(base_url: str) -> None:
    async with aiohttp.ClientSession(base_url) as http:
        created = await http.put("/kv/a/b", json={"value": {"x": 1}, "if_version": 0})
        assert created.status == 201
        version = (await created.json())["version"]
        got = await (await http.get("/kv/a/b")).json()
        assert got == {"key": "a/b", "value": {"x": 1}, "version": version}
        conflict = await _problem(
            await http.put("/kv/a/b", json={"value": 2, "if_version": 0}), 409
        )
        assert conflict["current_version"] == version
        deleted = await http.delete(f"/kv/a/b?if_version={version}")
        assert deleted.status == 200
        await _problem(await http.get("/kv/a/b"), 404)
        await _problem(await http.delete("/kv/a/b"), 404)


async def test_bad_input_gets_precise_problems(base_url: str) -> None:
    async with aiohttp.ClientSession(base_url) as http:
        await _problem(await http.put("/kv/k", data=b"{nope"), 400)
        body = await _problem(await http.put("/kv/k", json={"val": 1}), 422)
        assert {e["field"] for e in body["errors"]} == {"value", "val"}  # type: ignore[union-attr]
        body = await _problem(await http.put("/kv/k", json={"value": 1, "if_version": -1}), 422)
        await _problem(await http.put("/kv/k", json={"value": 1, "if_version": "3"}), 422)
        await _problem(await http.put("/kv/" + "k" * 600, json={"value": 1}), 422)
        await _problem(await http.put("/kv/k", json={"value": "x" * (300 * 1024)}), 413)
        await _problem(await http.get("/kv?limit=0"), 422)
        await _problem(await http.get("/kv?limit=abc"), 422)
        await _problem(await http.get("/kv/k?consistency=eventual"), 422)
        await _problem(await http.delete("/kv/k?if_version=x"), 422)


async def test_idempotency_key_replays_first_outcome(base_url: str) -> None:
    async with aiohttp.ClientSession(base_url) as http:
        headers = {"Idempotency-Key": "reserve:o1:sku"}
        first = await http.put("/kv/s", json={"value": 1}, headers=headers)
        retry = await http.put("/kv/s", json={"value": 5}, headers=headers)
        assert retry.headers.get("Idempotent-Replayed") == "true"
        assert await retry.json() == await first.json()
        assert (await (await http.get("/kv/s")).json())["value"] == 1
