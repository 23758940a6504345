"""The KV HTTP API on the real Service: contract answers and a precise problem for every
bad input (hostile input included: never a 5xx, never a write)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yardarm_datastore import DatastoreSettings, create_service
from yarl import URL

from tests.conftest import free_port

Http = aiohttp.ClientSession


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[int]:
    """A running single replica (authentication off) on this port."""
    port = free_port()
    service = create_service(
        DatastoreSettings(port=port, data_dir=tmp_path / "data", state_dir=tmp_path)
    )
    await service.start()
    try:
        yield port
    finally:
        await service.stop()


@pytest.fixture
async def http(port: int) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        yield session


async def _exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send `request` as raw bytes (what no client library would send); the status and
    body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


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
    first = await http.put("/kv/s", json={"value": {"n": 1, "tags": ["a"]}}, headers=headers)
    first_body = await _json(first, 201)
    assert "Idempotent-Replayed" not in first.headers
    # The same request (its object in another key order) replays the first outcome.
    retry = await http.put("/kv/s", data=b'{"value": {"tags": ["a"], "n": 1}}', headers=headers)
    assert await _json(retry, 201) == first_body
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert (await _json(await http.get("/kv/s"), 200))["version"] == first_body["version"]

    refused = {"Idempotency-Key": "cas-1"}
    await _problem(
        await http.put("/kv/s", json={"value": 2, "if_version": 0}, headers=refused), 409
    )
    # A refused write is not recorded: the key may carry the corrected request.
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


REUSES: list[tuple[str, str, dict[str, Any]]] = [
    # (method, path, request kwargs) of a second request under the first one's key
    ("PUT", "/kv/b", {"json": {"value": 1}}),  # another key
    ("PUT", "/kv/a", {"json": {"value": 2}}),  # another value
    ("PUT", "/kv/a", {"json": {"value": 1, "if_version": 1}}),  # another if_version
    ("DELETE", "/kv/a", {}),  # another operation
]


@pytest.mark.parametrize(("method", "path", "kwargs"), REUSES, ids=["key", "value", "if", "op"])
async def test_an_idempotency_key_reused_for_another_request_is_refused(
    http: Http, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    """Before: the table was global, so `PUT /kv/b` replayed the write to `a` (and `b`
    was never written), and a changed body was silently answered with the old outcome."""
    idem = {"Idempotency-Key": "k-1"}
    first = await _json(await http.put("/kv/a", json={"value": 1}, headers=idem), 201)
    problem = await _problem(await http.request(method, path, headers=idem, **kwargs), 422)
    assert problem["title"] == "Idempotency-Key reused with a different request"
    listed = await _json(await http.get("/kv"), 200)
    assert listed["items"] == [{"key": "a", "value": 1, "version": first["version"]}]
    # The first request itself still replays.
    again = await http.put("/kv/a", json={"value": 1}, headers=idem)
    assert await _json(again, 201) == first and again.headers["Idempotent-Replayed"] == "true"


async def test_values_up_to_the_limit_are_stored(http: Http) -> None:
    value = "x" * (256 * 1024 - 2)  # exactly 256 KiB as JSON, quotes included
    await _json(await http.put("/kv/big", json={"value": value}), 201)
    assert (await _json(await http.get("/kv/big"), 200))["value"] == value
    numbers = [10**20 - 1, -(10**20 - 1), 9.9e19, 1e-300, -0.0, 2**63]
    await _json(await http.put("/kv/numbers", json={"value": numbers}), 201)
    assert (await _json(await http.get("/kv/numbers"), 200))["value"] == numbers


async def test_integers_written_as_integral_floats_are_integers(http: Http) -> None:
    """JSON Schema counts 3.0 as an integer, as the OpenAPI document says; found by
    schemathesis (`{"to": 60158.0}` and `"if_version": 6789877.0` were a 422)."""
    version = (await _json(await http.put("/kv/f", json={"value": 1}), 201))["version"]
    body = {"value": 2, "if_version": float(version)}
    assert (await _json(await http.put("/kv/f", json=body), 200))["version"] > version
    async with http.post("/raft/transfer", json={"to": 1.0}) as response:
        assert response.status == 202, await response.text()
    for bad in (1.5, "1", True):
        await _problem(await http.post("/raft/transfer", json={"to": bad}), 422)


async def test_a_key_is_up_to_512_characters_whatever_their_encoded_size(http: Http) -> None:
    key = "日" * 512  # 1536 bytes of UTF-8
    await _json(await http.put(_path(key), json={"value": 1}), 201)
    assert (await _json(await http.get(_path(key)), 200))["key"] == key
    await _problem(await http.put(_path(key + "x"), json={"value": 1}), 422)


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
    ("PUT", "/kv/k", {"data": b'{"value": NaN}'}, 400, None),
    ("PUT", "/kv/k", {"data": b'{"value": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"}, 400, None),
    ("PUT", "/kv/k", {"json": {"value": [1e21]}}, 422, "value"),
    ("PUT", "/kv/k", {"json": {"value": {"n": -1e20}}}, 422, "value"),
    ("PUT", "/kv/k", {"json": {"value": "a\u0000b"}}, 422, "value"),
    ("PUT", "/kv/k", {"json": {"value": "x" * (256 * 1024)}}, 413, None),
    ("PUT", "/kv/k", {"json": {"value": "x" * (2 * 1024 * 1024)}}, 413, None),
    ("PUT", "/kv/" + "k" * 513, {"json": {"value": 1}}, 422, None),
    ("PUT", "/kv/" + quote("é" * 513), {"json": {"value": 1}}, 422, None),
    ("PUT", "/kv/a%01b", {"json": {"value": 1}}, 422, None),
    ("PUT", "/kv/a%7Fb", {"json": {"value": 1}}, 422, None),
    # A line break was a 404 "no route" (the route's `.` stopped at it): found by schemathesis.
    ("PUT", "/kv/a%0Ab", {"json": {"value": 1}}, 422, None),
    ("DELETE", "/kv/%0A", {}, 422, None),
    ("GET", "/kv/a/%0D%0A", {}, 422, None),
    ("PUT", "/kv/", {"json": {"value": 1}}, 422, None),
    ("PUT", "/kv/k", {"json": {"value": 1}, "headers": {"Idempotency-Key": "i" * 256}}, 400, None),
    ("PUT", "/kv/k", {"json": {"value": 1}, "headers": {"Idempotency-Key": ""}}, 400, None),
    ("PUT", "/kv/k", {"json": {"value": 1}, "headers": {"Idempotency-Key": "a b"}}, 400, None),
    ("DELETE", "/kv/k?if_version=x", {}, 422, None),
    ("DELETE", "/kv/k?if_version=-1", {}, 422, None),
    ("DELETE", "/kv/k?if_version=1_0", {}, 422, None),
    ("DELETE", "/kv/k?if_version=%2B1", {}, 422, None),
    ("DELETE", "/kv/k?if_version=9223372036854775808", {}, 422, None),
    ("DELETE", "/kv/k", {"headers": {"Idempotency-Key": "i" * 256}}, 400, None),
    ("DELETE", "/kv/", {}, 422, None),
    ("GET", "/kv/", {}, 422, None),
    ("GET", "/kv/k?consistency=eventual", {}, 422, None),
    ("GET", "/kv/a%00b", {}, 400, None),
    ("GET", "/kv?consistency=eventual", {}, 422, None),
    ("GET", "/kv?limit=0", {}, 422, None),
    ("GET", "/kv?limit=1001", {}, 422, None),
    ("GET", "/kv?limit=abc", {}, 422, None),
    ("GET", "/kv?limit=-5", {}, 422, None),
    ("GET", "/kv?limit=1.0", {}, 422, None),
    ("GET", "/kv?limit=%201", {}, 422, None),
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


HUGE = "9" * 5000  # more digits than Python's int() takes by default (4,300)

HOSTILE: list[tuple[str, str, bytes, int]] = [
    # (method, raw request target, body, status): each was a 500, or changed something
    ("PUT", "/kv/k", b'{"value": ' + HUGE.encode() + b"}", 400),
    ("PUT", "/kv/k", b'{"value": {"a": [-' + HUGE.encode() + b"]}}", 400),
    ("PUT", "/kv/k", b'{"value": 1, "if_version": ' + HUGE.encode() + b"}", 400),
    ("PUT", "/kv/a%zz", b'{"value": 1}', 400),  # was stored as the literal key "a%zz"
    ("PUT", "/kv/a%ED%A0%80", b'{"value": 1}', 400),  # an escaped lone surrogate
    ("PUT", "/kv/k", b'{"value": "\\ud800"}', 422),
    ("PUT", "/kv/k", b'{"value": {"\\udfff": 1}}', 422),
    ("GET", "/kv?limit=" + HUGE, b"", 422),  # int() of 5000 digits: a 500
    ("GET", "/kv?prefix=%00", b"", 400),
    ("GET", "/kv?after=a%ED%A0%80", b"", 400),
    ("GET", "/kv?consistency=" + "x" * 4000, b"", 422),
    ("DELETE", "/kv/k?if_version=" + HUGE, b"", 422),
    ("DELETE", "/raft/members/" + HUGE, b"", 422),  # int() of 5000 digits: a 500
    ("DELETE", "/raft/members/%2B1", b"", 422),
    (
        "POST",
        "/raft/members",
        b'{"id": ' + HUGE.encode() + b', "raft": "h:1", "http": "http://h"}',
        400,
    ),
    ("POST", "/raft/members", b'{"id": 2, "raft": "h:99999", "http": "http://h:1"}', 422),
    ("POST", "/raft/members", b'{"id": 2, "raft": "h:1", "http": "http://["}', 422),
    ("POST", "/raft/members", b'{"id": 2, "raft": "h:1", "http": "http://h:1/path"}', 422),
    ("POST", "/raft/members", b'{"id": 2, "raft": "h\\u0000:1", "http": "http://h:1"}', 422),
    ("POST", "/raft/transfer", b'{"to": ' + b"[" * 100 + b"]" * 100 + b"}", 400),
    ("POST", "/raft/transfer", b'{"to": 1e400}', 400),
    ("POST", "/raft/transfer", b'{"to": "' + b"x" * 1_000_000 + b'"}', 422),
]


@pytest.mark.parametrize(("method", "target", "body", "status"), HOSTILE)
async def test_hostile_input_is_a_4xx_and_changes_nothing(
    port: int, http: Http, method: str, target: str, body: bytes, status: int
) -> None:
    before = await _json(await http.get("/raft/status"), 200)
    url = URL(f"http://127.0.0.1:{port}{target}", encoded=True)
    async with http.request(
        method, url, data=body or None, headers={"Content-Type": "application/json"}
    ) as response:
        await _problem(response, status)
    assert (await _json(await http.get("/kv"), 200))["items"] == []
    after = await _json(await http.get("/raft/status"), 200)
    assert after["voters"] == before["voters"] == [1]
    assert after["last_index"] == before["last_index"]  # nothing was proposed


@pytest.mark.parametrize(
    ("target", "header", "status"),
    [
        (b"/kv/h", b"Idempotency-Key: caf\xc3\xa9", 400),  # UTF-8: not visible ASCII
        (b"/kv/h", b"Idempotency-Key: a\xffb", 400),  # not even UTF-8 (a surrogate, decoded)
        (b"/kv/h", b"Idempotency-Key: " + b"i" * 200_000, 400),  # longer than any header
        (b"/kv/h?x=" + b"q" * 200_000, b"X-Pad: 1", 400),  # a 200 kB request line
        (b"/kv/h", b"Authorization: Bearer \xff", 201),  # authentication is off: ignored
    ],
    ids=["utf8", "not-utf8", "huge-header", "huge-target", "auth-bytes"],
)
async def test_hostile_raw_requests_are_a_400_not_a_500(
    port: int, http: Http, target: bytes, header: bytes, status: int
) -> None:
    body = b'{"value": 1}'
    request = (
        b"PUT %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n\r\n%s"
        % (target, len(body), header, body)
    )
    answered, answer = await _exchange(port, request)
    assert answered == status, answer
    if status == 400:
        assert json.loads(answer)["status"] == 400
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
