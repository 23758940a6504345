"""Who may call the datastore: a bearer token whose roles allow the request (etcd's
model), refused with 401 or 403 before anything else is looked at; the probes stay open;
a replica without an access document or peer secret says so at start-up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yardarm_datastore import DatastoreSettings, create_service

from tests.conftest import free_port
from tests.datastore.access import Credentials, make_credentials
from tests.datastore.cluster import ELECTION_S, Cluster

Http = aiohttp.ClientSession

# Every guarded operation, with a request it would otherwise accept.
MEMBER = {"id": 7, "raft": "127.0.0.1:1", "http": "http://127.0.0.1:1"}
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/kv/stock/a", None),
    ("GET", "/kv?prefix=stock/", None),
    ("PUT", "/kv/stock/a", {"value": 1}),
    ("DELETE", "/kv/stock/a", None),
    ("GET", "/raft/status", None),
    ("POST", "/raft/members", MEMBER),
    ("DELETE", "/raft/members/7", None),
    ("POST", "/raft/transfer", {"to": 1}),
]
IDS = [f"{method} {path}" for method, path, _ in ENDPOINTS]


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[Http, Credentials]]:
    """A single replica with an access document; a client that sends no credential."""
    creds = make_credentials(tmp_path / "credentials")
    port = free_port()
    settings = DatastoreSettings(
        port=port,
        data_dir=tmp_path / "data",
        state_dir=tmp_path,
        access_file=creds.access_file,
        peer_token_file=creds.peer_token_file,
    )
    service = create_service(settings)
    await service.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            for _ in range(200):  # the group of one elects itself right after start
                async with http.get("/readyz") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.05)
            yield http, creds
    finally:
        await service.stop()


async def _call(
    http: Http, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    async with http.request(method, path, json=body, headers=headers) as response:
        payload = await response.json(content_type=None)
        return response.status, dict(response.headers), payload


async def _keys(http: Http, creds: Credentials) -> list[str]:
    status, _, page = await _call(http, "GET", "/kv", headers=creds.bearer("admin"))
    assert status == 200, page
    return [item["key"] for item in page["items"]]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-token", "Bearer ", "Basic YWRtaW46YWRtaW4=", "bearer-without-space"],
    ids=["none", "unknown", "empty", "basic", "garbled"],
)
async def test_without_a_valid_token_every_operation_is_a_401(
    guarded: tuple[Http, Credentials],
    method: str,
    path: str,
    body: Any,
    authorization: str | None,
) -> None:
    http, creds = guarded
    headers = {"Authorization": authorization} if authorization is not None else None
    status, answer_headers, problem = await _call(http, method, path, body, headers)
    assert status == 401, problem
    assert answer_headers["WWW-Authenticate"] == 'Bearer realm="yardarm-datastore"'
    assert answer_headers["Content-Type"] == "application/problem+json"
    assert problem["status"] == 401 and problem["title"] == "Unauthorized"
    assert await _keys(http, creds) == []


ROLE_REFUSALS: list[tuple[str, str, str, Any]] = [
    # (principal, method, path, body): a valid token whose roles do not allow it
    *[("gateway", method, path, body) for method, path, body in ENDPOINTS],
    *[("orders", method, path, body) for method, path, body in ENDPOINTS if "/raft/" in path],
    ("orders", "GET", "/kv/config/gateway/routes", None),
    ("orders", "PUT", "/kv/config/x", {"value": 1}),
    ("orders", "DELETE", "/kv/config/x", None),
    ("orders", "GET", "/kv", None),  # the prefix "" covers every key
    ("orders", "GET", "/kv?prefix=s", None),  # covers more than stock/
    ("orders", "GET", "/kv?prefix=stock", None),
    ("orders", "GET", "/kv/stock", None),
    ("gateway", "PUT", "/kv/config/gateway/routes", {"value": 1}),  # read only
    ("gateway", "DELETE", "/kv/config/gateway/routes", None),
    ("gateway", "GET", "/kv?prefix=config/", None),
]


@pytest.mark.parametrize(("principal", "method", "path", "body"), ROLE_REFUSALS)
async def test_a_role_that_does_not_allow_the_request_is_a_403(
    guarded: tuple[Http, Credentials], principal: str, method: str, path: str, body: Any
) -> None:
    http, creds = guarded
    status, headers, problem = await _call(http, method, path, body, creds.bearer(principal))
    assert status == 403, problem
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["title"] == "Forbidden" and principal in problem["detail"]
    assert await _keys(http, creds) == []


async def test_roles_that_allow_the_request_are_served(
    guarded: tuple[Http, Credentials],
) -> None:
    http, creds = guarded
    orders, gateway, admin = (creds.bearer(p) for p in ("orders", "gateway", "admin"))
    status, _, written = await _call(http, "PUT", "/kv/stock/a", {"value": 5}, orders)
    assert status == 201, written
    assert (await _call(http, "GET", "/kv/stock/a", None, orders))[0] == 200
    for prefix in ("stock/", "stock/a", "stock/zzz"):
        status, _, page = await _call(http, "GET", f"/kv?prefix={prefix}", None, orders)
        assert status == 200, page
    status, _, page = await _call(http, "GET", "/kv?prefix=stock/&after=stock/a", None, orders)
    assert (status, page["items"]) == (200, [])
    assert (await _call(http, "PUT", "/kv/config/gateway/routes", {"value": []}, admin))[0] == 201
    status, _, entry = await _call(http, "GET", "/kv/config/gateway/routes", None, gateway)
    assert (status, entry["value"]) == (200, [])
    status, _, page = await _call(http, "GET", "/kv?prefix=config/gateway/", None, gateway)
    assert [item["key"] for item in page["items"]] == ["config/gateway/routes"]
    assert (await _call(http, "DELETE", "/kv/stock/a", None, orders))[0] == 200
    # The admin role: every key and the Raft admin API (these requests are authorized;
    # the group of one refuses the changes themselves).
    assert (await _call(http, "GET", "/raft/status", None, admin))[0] == 200
    assert (await _call(http, "POST", "/raft/transfer", {"to": 1}, admin))[0] == 202
    assert (await _call(http, "DELETE", "/raft/members/7", None, admin))[0] == 409
    assert (await _call(http, "POST", "/raft/members", {**MEMBER, "id": 1}, admin))[0] == 409
    assert (await _call(http, "DELETE", "/kv/config/gateway/routes", None, admin))[0] == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
async def test_probes_metrics_and_the_api_document_stay_open(
    guarded: tuple[Http, Credentials], path: str
) -> None:
    http, _ = guarded
    async with http.get(path) as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("principal", "method", "path", "data", "status"),
    [
        (None, "PUT", "/kv/stock/a", b"{not json", 401),
        (None, "PUT", "/kv/a%01b", b'{"value": 1}', 401),
        (None, "PUT", "/kv/a%0Ab", b'{"value": 1}', 401),
        (None, "GET", "/kv?limit=0&consistency=eventual", None, 401),
        (None, "DELETE", "/raft/members/x", None, 401),
        ("orders", "PUT", "/kv/config/x", b"{not json", 403),
        ("orders", "PUT", "/kv/config/x", b'{"value": 1, "if_version": -1}', 403),
        ("orders", "GET", "/kv?prefix=&limit=0", None, 403),
        ("orders", "POST", "/raft/transfer", b'{"to": "x"}', 403),
        ("orders", "PUT", "/kv/stock/a", b"{not json", 400),  # authorized: now validated
    ],
)
async def test_authorization_comes_before_validation(
    guarded: tuple[Http, Credentials],
    principal: str | None,
    method: str,
    path: str,
    data: bytes | None,
    status: int,
) -> None:
    """A caller without the right credential learns nothing, not even whether its input
    was valid."""
    http, creds = guarded
    headers = {"Content-Type": "application/json"}
    if principal is not None:
        headers.update(creds.bearer(principal))
    async with http.request(method, path, data=data, headers=headers) as response:
        assert response.status == status, await response.text()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("secured", [False, True], ids=["open", "secured"])
async def test_an_open_replica_says_so_at_start_up(tmp_path: Path, secured: bool) -> None:
    creds = make_credentials(tmp_path / "credentials")
    files = (
        {"access_file": creds.access_file, "peer_token_file": creds.peer_token_file}
        if secured
        else {}
    )
    settings = DatastoreSettings(
        port=free_port(), data_dir=tmp_path / "data", state_dir=tmp_path, **files
    )
    service = create_service(settings)
    captured = _Records()
    logger = logging.getLogger("yardarm.datastore")
    logger.addHandler(captured)
    try:
        await service.start()
        await service.stop()
    finally:
        logger.removeHandler(captured)
    events = {getattr(r, "event", None): r.getMessage() for r in captured.records}
    if secured:
        assert "auth_disabled" not in events and "peer_auth_disabled" not in events
    else:
        assert "anyone who reaches" in events["auth_disabled"]
        assert "read and write every key" in events["auth_disabled"]
        assert "Raft port" in events["peer_auth_disabled"]


async def test_a_group_with_credentials_serves_through_any_replica(tmp_path: Path) -> None:
    """Writes a follower takes reach the leader over the (peer-authenticated) Raft stream;
    admin requests a follower relays over HTTP carry the caller's credential."""
    creds = make_credentials(tmp_path / "credentials")
    group = Cluster(tmp_path, extra_env=creds.env(), headers=creds.bearer("admin"))
    group.start_all()
    try:
        async with aiohttp.ClientSession() as http:
            await group.wait_ready(http)
            leader = await group.wait_leader(http)
            followers = [i for i in group.nodes if i != leader]
            first, second = (group.nodes[i].url for i in followers)
            status, _, written = await _call(
                http, "PUT", f"{first}/kv/stock/x", {"value": 3}, creds.bearer("orders")
            )
            assert status == 201, written
            status, _, entry = await _call(
                http, "GET", f"{second}/kv/stock/x", None, creds.bearer("orders")
            )
            assert (status, entry["value"]) == (200, 3)
            for url in (first, second):
                status, headers, _ = await _call(http, "PUT", f"{url}/kv/stock/x", {"value": 4})
                assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
                refused = await _call(
                    http, "POST", f"{url}/raft/transfer", {"to": 1}, creds.bearer("orders")
                )
                assert refused[0] == 403
            # An admin request on a follower is relayed to the leader, credential and all.
            target = followers[0]
            status, _, answer = await _call(
                http, "POST", f"{first}/raft/transfer", {"to": target}, creds.bearer("admin")
            )
            assert status == 202, answer
            deadline = time.monotonic() + 40 * ELECTION_S
            while await group.wait_leader(http, timeout=40 * ELECTION_S) != target:
                assert time.monotonic() < deadline, f"leadership never moved to {target}"
                await asyncio.sleep(0.05)
            status, _, answer = await _call(
                http, "DELETE", f"{second}/raft/members/9", None, creds.bearer("admin")
            )
            assert status == 409 and "not a member" in answer["detail"], answer
    finally:
        group.stop_all()
