"""The datastore's OpenAPI document: every route is in it and every operation routed, it is
valid OpenAPI 3.1, it says what each operation can answer, and schemathesis, run against
a live replica with an access document, finds nothing it contradicts."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import schemathesis
from yardarm_datastore import DatastoreSettings, create_service

from tests.conftest import free_port
from tests.datastore.access import Credentials, make_credentials
from tests.openapi_checks import documented, routed, run_schemathesis

ROOT = Path(__file__).resolve().parents[2]
GUARDED = {"listKeys", "getKey", "putKey", "deleteKey", "raftStatus", "addMember",
           "removeMember", "transferLeadership"}  # fmt: skip
# Adding a member that never starts takes the quorum away from a group of one (Raft's
# rule, by design), after which every write would be a 503: the fuzzer only sends it
# requests it must refuse. The real change is exercised by the cluster tests.
NEGATIVE_ONLY = "addMember"


@pytest.fixture
def document(tmp_path: Path) -> Iterator[tuple[dict[str, Any], set[tuple[str, str]]]]:
    """The document and the routes of a service that was built but never started."""
    service = create_service(
        DatastoreSettings(port=free_port(), data_dir=tmp_path / "data", state_dir=tmp_path)
    )
    yield service.api.document(), routed(service.app)


def _operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["operationId"]: op for item in doc["paths"].values() for op in item.values()}


def test_every_route_is_documented_and_every_operation_routed(
    document: tuple[dict[str, Any], set[tuple[str, str]]],
) -> None:
    doc, routes = document
    assert routes == documented(doc)
    assert {("GET", "/kv"), ("PUT", "/kv/{key}"), ("DELETE", "/raft/members/{id}")} <= routes


def test_the_document_is_valid_openapi_3_1(
    document: tuple[dict[str, Any], set[tuple[str, str]]],
) -> None:
    doc, _ = document
    schema = schemathesis.openapi.from_dict(doc)
    labels = sorted(result.ok().label for result in schema.get_all_operations())
    assert len(labels) == len(documented(doc)) and "PUT /kv/{key}" in labels


def test_every_guarded_operation_says_what_it_needs_and_everything_it_answers(
    document: tuple[dict[str, Any], set[tuple[str, str]]],
) -> None:
    doc, _ = document
    ops = _operations(doc)
    assert {name for name, op in ops.items() if "security" in op} == GUARDED
    for name in GUARDED:
        op = ops[name]
        assert op["x-yardarm-permission"] and {"401", "403", "503"} <= set(op["responses"])
        retry = op["responses"]["503"]["headers"]["Retry-After"]
        assert retry["required"] is True, name
    put = ops["putKey"]["responses"]
    assert {"200", "201", "400", "409", "413", "422"} <= set(put)
    for status in ("200", "201"):
        assert "Idempotent-Replayed" in put[status]["headers"]
        assert put[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/KvWritten"
        }
    assert {"404", "409", "422"} <= set(ops["deleteKey"]["responses"])
    assert "404" in ops["getKey"]["responses"]
    assert "202" in ops["transferLeadership"]["responses"]
    params = {p["name"]: p["schema"] for p in ops["putKey"]["parameters"]}
    key = params["key"]
    assert (key["type"], key["minLength"], key["maxLength"]) == ("string", 1, 512)
    for text, allowed in [("é/日 x", True), ("a\x01", False), ("a\x85", False), ("a\n", False)]:
        assert bool(re.search(key["pattern"], text)) is allowed, text
    assert params["Idempotency-Key"]["maxLength"] == 255
    limit = {p["name"]: p["schema"] for p in ops["listKeys"]["parameters"]}["limit"]
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)
    value = doc["components"]["schemas"]["JsonValue"]["anyOf"]
    assert {"type": "number", "minimum": -(10**20 - 1), "maximum": 10**20 - 1} in value


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "yardarm_datastore"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[str, Credentials]]:
    """A replica process with an access document, as the stack runs it."""
    creds = make_credentials(tmp_path / "credentials")
    port = free_port()
    env = {
        **os.environ,
        **creds.env(),
        "YARDARM_DATASTORE_PORT": str(port),
        "YARDARM_DATASTORE_HOST": "127.0.0.1",
        "YARDARM_DATASTORE_DATA_DIR": str(tmp_path / "data"),
        "YARDARM_DATASTORE_STATE_DIR": str(tmp_path / "state"),
    }
    log = tmp_path / "replica.log"
    proc = _spawn(env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                try:
                    async with http.get(url + "/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"the replica never became ready: {log.read_text()}")
        yield url, creds
    finally:
        proc.kill()
        proc.wait(timeout=30)


HOOKS = {"SCHEMATHESIS_HOOKS": "tests.datastore.schemathesis_hooks", "PYTHONPATH": str(ROOT)}


async def test_schemathesis_finds_nothing_against_a_live_replica(
    live: tuple[str, Credentials],
) -> None:

    url, creds = live
    admin = creds.bearer("admin")
    run = await run_schemathesis(
        url, headers=admin, env=HOOKS, extra_args=("--exclude-operation-id", NEGATIVE_ONLY)
    )
    assert run.clean, run.report()
    refused = await run_schemathesis(
        url, headers=admin, env=HOOKS,
        extra_args=("--include-operation-id", NEGATIVE_ONLY, "--mode", "negative",
                    "--phases", "coverage,fuzzing"),
    )  # fmt: skip
    assert refused.clean, refused.report()
    async with (
        aiohttp.ClientSession(headers=creds.bearer("admin")) as http,
        http.get(url + "/raft/status") as response,
    ):
        assert (await response.json())["voters"] == [1]  # the group was never changed
