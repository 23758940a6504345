"""The KV HTTP API on the real Service: contract answers and a precise problem for every
bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yardarm_datastore import DatastoreSettings, create_service

from tests.conftest import free_port

Http = aiohttp.ClientSession


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[Http]:
    port = free_port()
    service = create_service(
        DatastoreSettings(port=port, data_dir=tmp_path / "data", state_dir=tmp_path)
    )
    await service.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            yield session
    finally:
        await service.stop()


async def _json(response: aiohttp.ClientResponse, status: int) -> Any:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def _problem(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["status"] == status and body["title"] and body.get("detail")
    return body


def _path(key: str) -> str:
    return "/kv/" + quote(key, safe="/")


async def test_create_read_update_delete(http: Http) -> None:
    created = await _json(await http.put("/kv/a/b", json={"value": {"x": [1, None]}}), 201)
    v1 = created["version"]
    assert created == {"key": "a/b", "version": v1}
    assert await _json(await http.get("/kv/a/b"), 200) == {
        "key": "a/b",
        "value": {"x": [1, None]},
        "version": v1,
    }
    updated = await _json(await http.put("/kv/a/b", json={"value": None, "if_version": v1}), 200)
    assert updated["version"] > v1
    got = await _json(await http.get("/kv/a/b?consistency=stale"), 200)
    assert got["value"] is None and got["version"] == updated["version"]
    deleted = await _json(await http.delete(f"/kv/a/b?if_version={updated['version']}"), 200)
    assert deleted == {"key": "a/b", "version": updated["version"] + 1}
    missing = await _problem(await http.get("/kv/a/b?consistency=linearizable"), 404)
    assert missing["key"] == "a/b"
    await _problem(await http.delete("/kv/a/b"), 404)
    again = await _json(await http.put("/kv/a/b", json={"value": 1, "if_version": 0}), 201)
    assert again["version"] > deleted["version"]


async def test_conflicts_carry_the_current_version(http: Http) -> None:
    version = (await _json(await http.put("/kv/k", json={"value": 1}), 201))["version"]
    exists = await _problem(await http.put("/kv/k", json={"value": 2, "if_version": 0}), 409)
    assert exists["current_version"] == version and exists["expected_version"] == 0
    stale = await _problem(
        await http.put("/kv/k", json={"value": 2, "if_version": version + 5}), 409
    )
    assert stale["current_version"] == version
    absent = await _problem(await http.put("/kv/none", json={"value": 2, "if_version": 3}), 409)
    assert absent["current_version"] == 0
    on_delete = await _problem(await http.delete(f"/kv/k?if_version={version + 1}"), 409)
    assert on_delete["current_version"] == version
    assert (await _json(await http.get("/kv/k"), 200))["value"] == 1


@pytest.mark.parametrize(
    "key", ["with space", "q?x=1&y", "per%cent", "ünïcødé/日本", "trailing/", "a//b", "#hash"]
)
async def test_keys_with_awkward_characters_round_trip(http: Http, key: str) -> None:
    await _json(await http.put(_path(key), json={"value": key}), 201)
    got = await _json(await http.get(_path(key)), 200)
    assert got["key"] == key and got["value"] == key
    listed = await _json(await http.get("/kv", params={"prefix": key}), 200)
    assert [item["key"] for item in listed["items"]] == [key]


async def test_listing_pages_by_prefix(http: Http) -> None:
    for i in range(25):
        await _json(await http.put(f"/kv/p/{i:02d}", json={"value": i}), 201)
    await _json(await http.put("/kv/q/0", json={"value": 0}), 201)
    seen: list[str] = []
    after: str | None = None
    for _ in range(10):
        params = {"prefix": "p/", "limit": "10", **({"after": after} if after else {})}
        page = await _json(await http.get("/kv", params=params), 200)
        seen.extend(item["key"] for item in page["items"])
        after = page["next"]
        if after is None:
            break
    assert seen == [f"p/{i:02d}" for i in range(25)]
    default = await _json(await http.get("/kv"), 200)
    assert len(default["items"]) == 26 and default["next"] is None
    first = default["items"][0]
    assert set(first) == {"key", "value", "version"}


async def test_an_idempotent_retry_replays_the_first_outcome(http: Http) -> None:
    headers = {"Idempotency-Key": "reserve:o1:sku"}
    first = await http.put("/kv/s", json={"value": 1}, headers=headers)
    first_body = await _json(first, 201)
    assert "Idempotent-Replayed" not in first.headers
    retry = await http.put("/kv/s", json={"value": 5, "if_version": 99}, headers=headers)
    assert await _json(retry, 201) == first_body
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert (await _json(await http.get("/kv/s"), 200))["value"] == 1

    refused = {"Idempotency-Key": "cas-1"}
    await _problem(
        await http.put("/kv/s", json={"value": 2, "if_version": 0}, headers=refused), 409
    )
    after_refusal = await http.put(
        "/kv/s", json={"value": 2, "if_version": first_body["version"]}, headers=refused
    )
    assert (await _json(after_refusal, 200))["version"] > first_body["version"]
    assert "Idempotent-Replayed" not in after_refusal.headers

    delete_key = {"Idempotency-Key": "del-1"}
    deleted = await _json(await http.delete("/kv/s", headers=delete_key), 200)
    replayed = await http.delete("/kv/s", headers=delete_key)
    assert await _json(replayed, 200) == deleted
    assert replayed.headers["Idempotent-Replayed"] == "true"


async def test_values_up_to_the_limit_are_stored(http: Http) -> None:
    value = "x" * (256 * 1024 - 2)  # exactly 256 KiB as JSON, quotes included
    await _json(await http.put("/kv/big", json={"value": value}), 201)
    assert (await _json(await http.get("/kv/big"), 200))["value"] == value


BAD_WRITES: list[tuple[str, str, dict[str, Any], int, str | None]] = [
    # (method, path, request kwargs, status, field named in `errors`)
    ("PUT", "/kv/k", {"data": b"{nope"}, 400, None),
    ("PUT", "/kv/k", {"data": b""}, 400, None),
    ("PUT", "/kv/k", {"data": b"\xff\xfe"}, 400, None),
    ("PUT", "/kv/k", {"json": [1]}, 422, "body"),
    ("PUT", "/kv/k", {"json": {"val": 1}}, 422, "value"),
    ("PUT", "/kv/k", {"json": {"value": 1, "extra": 2}}, 422, "extra"),
    ("PUT", "/kv/k", {"json": {"value": 1, "if_version": -1}}, 422, "if_version"),
    ("PUT", "/kv/k", {"json": {"value": 1, "if_version": "3"}}, 422, "if_version"),
    ("PUT", "/kv/k", {"json": {"value": 1, "if_version": True}}, 422, "if_version"),
    ("PUT", "/kv/k", {"json": {"value": 1, "if_version": 1.5}}, 422, "if_version"),
    ("PUT", "/kv/k", {"json": {"value": 1, "if_version": 2**64}}, 422, "if_version"),
    ("PUT", "/kv/k", {"data": b'{"value": NaN}'}, 422, "value"),
    ("PUT", "/kv/k", {"data": b'{"value": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"}, 422, None),
    ("PUT", "/kv/k", {"json": {"value": "x" * (256 * 1024)}}, 413, None),
    ("PUT", "/kv/k", {"json": {"value": "x" * (2 * 1024 * 1024)}}, 413, None),
    ("PUT", "/kv/" + "k" * 513, {"json": {"value": 1}}, 422, None),
    ("PUT", "/kv/" + quote("é" * 257), {"json": {"value": 1}}, 422, None),
    ("PUT", "/kv/a%01b", {"json": {"value": 1}}, 422, None),
    ("PUT", "/kv/a%7Fb", {"json": {"value": 1}}, 422, None),
    ("PUT", "/kv/", {"json": {"value": 1}}, 422, None),
    ("PUT", "/kv/k", {"json": {"value": 1}, "headers": {"Idempotency-Key": "i" * 256}}, 400, None),
    ("PUT", "/kv/k", {"json": {"value": 1}, "headers": {"Idempotency-Key": ""}}, 400, None),
    ("DELETE", "/kv/k?if_version=x", {}, 422, None),
    ("DELETE", "/kv/k?if_version=-1", {}, 422, None),
    ("DELETE", "/kv/k?if_version=1_0", {}, 422, None),
    ("DELETE", "/kv/k", {"headers": {"Idempotency-Key": "i" * 256}}, 400, None),
    ("DELETE", "/kv/", {}, 422, None),
    ("GET", "/kv/", {}, 422, None),
    ("GET", "/kv/k?consistency=eventual", {}, 422, None),
    ("GET", "/kv/a%00b", {}, 422, None),
    ("GET", "/kv?consistency=eventual", {}, 422, None),
    ("GET", "/kv?limit=0", {}, 422, None),
    ("GET", "/kv?limit=1001", {}, 422, None),
    ("GET", "/kv?limit=abc", {}, 422, None),
    ("GET", "/kv?limit=-5", {}, 422, None),
    ("GET", "/kv?prefix=" + "p" * 513, {}, 422, None),
    ("GET", "/kv?after=a%0Ab", {}, 422, None),
    ("GET", "/kv?after=", {}, 422, None),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "field"), BAD_WRITES)
async def test_bad_input_gets_a_precise_problem_and_changes_nothing(
    http: Http, method: str, path: str, kwargs: dict[str, Any], status: int, field: str | None
) -> None:
    body = await _problem(await http.request(method, path, **kwargs), status)
    if field is not None:
        assert field in {error["field"] for error in body["errors"]}, body
    assert (await _json(await http.get("/kv"), 200))["items"] == []


async def test_metrics_count_writes_and_the_log(http: Http) -> None:
    await http.put("/kv/m", json={"value": 1})
    await http.put("/kv/m", json={"value": 2, "if_version": 0})
    await http.delete("/kv/m")
    await http.put("/kv/n", json={"value": 1})
    assert (await http.get("/readyz")).status == 200
    text = await (await http.get("/metrics")).text()
    lines = text.splitlines()

    def sample(name: str, *labels: str) -> float:
        for line in lines:
            if line.startswith(name + "{") and all(label in line for label in labels):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} {labels} not exposed")

    assert sample("yardarm_datastore_writes_total", 'op="put"', 'outcome="created"') == 2
    assert sample("yardarm_datastore_writes_total", 'op="put"', 'outcome="conflict"') == 1
    assert sample("yardarm_datastore_writes_total", 'op="delete"', 'outcome="deleted"') == 1
    assert sample("yardarm_datastore_keys") == 1
    assert sample("yardarm_datastore_revision") == 3
    assert sample("yardarm_datastore_wal_fsync_seconds_count") >= 1
    # Four proposals (a refused write is decided on the committed state, so it is logged
    # too) and the leader's no-op.
    assert sample("yardarm_datastore_wal_batch_size_sum") == 5
    assert sample("yardarm_datastore_raft_role", 'role="leader"') == 1
    assert sample("yardarm_datastore_raft_commit_index") == 5
