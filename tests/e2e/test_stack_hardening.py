"""End to end, the way an attacker and a careless client try a running stack.

One stack from `yardarm up`, with authentication on (the default): a replica killed
under load fails no request; every guarded operation, found by walking the stack's
OpenAPI documents, refuses anonymous and wrong-role callers; and schemathesis fuzzes
every document the stack serves, with all its checks (no 5xx among them), orders through
the gateway as clients reach it. Operations that would tear the stack down (Raft
membership and leadership, fault injection, replacing the gateway's routes) get only
invalid requests here, which must be refused; their valid use is fuzzed against a
service of their own in the services' tests.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require_servers
from tests.harness.local import BackgroundLoad, Stack, pick_base_port, start_stack, stop_stack
from tests.openapi_checks import run_schemathesis
from yardarm.credentials import StackCredentials

pytestmark = pytest.mark.e2e

SCALE = float(os.environ.get("YARDARM_TEST_SCALE", "1"))
LOAD_S = max(20.0, 20.0 * SCALE)

LOAD_WORKERS = 8
# Before the kill the load must have warmed up: this many answered requests.
WARM_REQUESTS = 150
SAFE = frozenset({"get", "head", "options"})
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_servers()
    running = start_stack(tmp_path_factory.mktemp("hardening"), pick_base_port(23000))
    try:
        yield running
    finally:
        stop_stack(running)


def _token(stack: Stack, principal: str) -> str:
    return StackCredentials(stack.home).token(principal)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _counter(text: str, name: str, **labels: str) -> float:
    """The sum of a counter's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _pid(stack: Stack, instance: str) -> int:
    rows = {row["instance"]: row for row in stack.status()}

    return int(rows[instance]["pid"])


def test_killing_an_orders_replica_under_load_fails_no_request(stack: Stack) -> None:
    """Retries on at the gateway, none at the client: a SIGKILLed replica's refused
    connections and cut requests are retried on the other replica."""
    before = _pid(stack, "orders-0")
    args = ("--concurrency", str(LOAD_WORKERS), "--duration", f"{LOAD_S:.0f}s",
            "--mix", "orders=40,reads=40,stock=20", "--seed", "11")  # fmt: skip
    with BackgroundLoad(stack, *args) as load:
        deadline = time.monotonic() + LOAD_S
        while time.monotonic() < deadline:
            text = httpx.get(f"{stack.gateway}/metrics", timeout=5).text
            if _counter(text, "http_server_request_duration_seconds_count") >= WARM_REQUESTS:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the load never warmed up")
        stack.cli("chaos", "kill", "orders-0")
        assert load.running(), "the load ended before the kill"
        summary = load.summary(timeout=LOAD_S + 60)
    assert summary["requests"] > WARM_REQUESTS
    assert summary["server_errors"] == 0, summary["status_codes"]
    assert summary["transport_errors"] == 0, summary["errors"]
    assert summary["client_errors"] == 0, summary["status_codes"]
    # The kill happened: the supervisor restarted orders-0 under another pid...
    deadline = time.monotonic() + 60
    while _pid(stack, "orders-0") == before:
        assert time.monotonic() < deadline, "orders-0 was not restarted"
        time.sleep(0.5)
    # ...and the gateway did retry requests the dead replica never answered.
    gateway = httpx.get(f"{stack.gateway}/metrics", timeout=5).text
    retried = [line for line in gateway.splitlines() if "retries" in line]
    assert _counter(gateway, "yardarm_gateway_retries_total", upstream="orders") > 0, retried


# --- authentication, found by walking the documents ------------------------------------


def _documents(stack: Stack) -> dict[str, tuple[str, dict[str, Any]]]:
    """The guarded APIs' documents, by name: (base URL, document)."""
    base = stack.base_port
    bases = {
        "datastore": f"http://127.0.0.1:{base + 10}",
        "gateway-admin": f"http://127.0.0.1:{base + 1}",
        "chaos": f"http://127.0.0.1:{base + 49}",
    }
    return {
        name: (url, httpx.get(f"{url}/openapi.json", timeout=10).json())
        for name, url in bases.items()
    }


PATH_VALUES = {"key": "walk/secret", "id": "2", "name": "api-orders", "upstream": "orders"}


def _url(base: str, path: str) -> str:
    return base + re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m.group(1), "walk"), path)


def _wrong_role(name: str, method: str, path: str) -> str:
    """A principal whose roles do not allow this operation on the walk's values."""
    if name == "datastore" and path.startswith("/kv"):
        return "gateway"  # may read config/gateway/ only: not walk/secret, not a write
    return "orders"  # not an admin


def test_every_guarded_operation_refuses_anonymous_and_wrong_role_callers(
    stack: Stack,
) -> None:
    walked: set[str] = set()
    for name, (base, doc) in _documents(stack).items():
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                label = f"{name} {method.upper()} {path}"
                if "security" not in operation:
                    # Only probes and the description are open; never a write.
                    assert method in SAFE and path in {"/healthz", "/readyz", "/metrics",
                                                       "/openapi.json"}, label  # fmt: skip
                    continue
                walked.add(label)
                url = _url(base, path)
                params = {"prefix": "walk/"} if path == "/kv" else None
                for headers, expected in (
                    ({}, {401}),
                    (_bearer("not-a-credential"), {401}),
                    (_bearer(_token(stack, _wrong_role(name, method, path))),
                     {403} if name == "datastore" else {401, 403}),
                ):  # fmt: skip
                    answer = httpx.request(method, url, headers=headers, params=params,
                                           json={}, timeout=10)  # fmt: skip
                    assert answer.status_code in expected, (label, headers, answer.text)
                    assert answer.headers["Content-Type"] == "application/problem+json", label
                    if answer.status_code == 401:
                        assert answer.headers["WWW-Authenticate"].startswith("Bearer"), label
    # The walk reached every write the issue names (a document that lost its security
    # marker would fail above; one that lost an operation fails here).
    assert {
        "datastore PUT /kv/{key}",
        "datastore DELETE /kv/{key}",
        "datastore GET /kv/{key}",
        "datastore GET /kv",
        "datastore POST /raft/members",
        "datastore DELETE /raft/members/{id}",
        "datastore POST /raft/transfer",
        "datastore GET /raft/status",
        "gateway-admin PUT /admin/routes",
        "gateway-admin PUT /admin/routes/{name}/split",
        "gateway-admin POST /admin/upstreams/{upstream}/ejections",
        "chaos POST /faults",
    } <= walked, sorted(walked)


def test_the_routing_document_cannot_be_written_around_the_admin_token(stack: Stack) -> None:
    """The door that was: an anonymous PUT of the routing document through the gateway
    was applied by every gateway replica."""
    hostile = {"value": {"routes": [], "ejections": []}}
    url = f"{stack.gateway}/api/kv/config/gateway/routing"
    assert httpx.put(url, json=hostile, timeout=10).status_code == 401
    gateway_token = _bearer(_token(stack, "gateway"))
    assert httpx.put(url, json=hostile, headers=gateway_token, timeout=10).status_code == 403
    # The gateway still routes orders.
    assert httpx.get(f"{stack.gateway}/api/stock", timeout=10).status_code == 200
    # The admin, and only the admin, writes routing through the admin API.
    admin_api = f"http://127.0.0.1:{stack.base_port + 1}/admin/routes"
    routes = httpx.get(admin_api, headers=_bearer(_token(stack, "admin")), timeout=10)
    assert routes.status_code == 200, routes.text
    body = {"routes": routes.json()["routes"]}
    assert httpx.put(admin_api, json=body, timeout=10).status_code == 401
    written = httpx.put(admin_api, json=body, headers=_bearer(_token(stack, "admin")), timeout=10)
    assert written.status_code == 200, written.text
    assert written.json()["persistent"] is True


# --- schemathesis against every document of the running stack ----------------------------

# The SKUs the orders fuzzing draws (schemathesis.toml's `orders-test-catalog`), seeded
# with stock to spare so accepted orders run their sagas.
FUZZ_CATALOG = {"rope": 250, "lamp": 1999}


def _seed_fuzz_catalog(stack: Stack) -> None:
    admin = _bearer(_token(stack, "admin"))
    for sku, price in FUZZ_CATALOG.items():
        item = {"sku": sku, "name": sku, "price_cents": price, "available": 10_000_000}
        answer = httpx.put(f"{stack.gateway}/api/kv/stock/{sku}", json={"value": item},
                           headers=admin, timeout=10)  # fmt: skip
        assert answer.status_code in (200, 201), answer.text


@dataclass(frozen=True)
class Fuzzed:
    """One document of the stack and how to fuzz it."""

    offset: int  # the serving instance's port, from the base port
    via_gateway: bool = False  # fuzz it at the gateway's /api, as clients reach it
    principal: str | None = None  # whose credential every request carries
    hooks: str | None = None  # the API's schemathesis hooks (contract refusals)
    # Operations that would tear the stack down: fuzzed with invalid requests only.
    guarded: tuple[str, ...] = ()
    stateful: bool = True  # False: its links all lead through guarded operations


FUZZED = {
    "gateway": Fuzzed(0),
    "orders (through the gateway)": Fuzzed(20, via_gateway=True,
                                           hooks="tests.orders.schemathesis_hooks"),
    "fulfillment": Fuzzed(30),
    "datastore": Fuzzed(10, principal="admin", hooks="tests.datastore.schemathesis_hooks",
                        guarded=("addMember", "removeMember", "transferLeadership")),
    "gateway admin": Fuzzed(1, principal="admin",
                            guarded=("putRoutes", "putSplit", "eject", "uneject"),
                            stateful=False),
    "chaos": Fuzzed(49, principal="admin", guarded=("applyFault",), stateful=False),
}  # fmt: skip


@pytest.mark.parametrize("name", list(FUZZED))
async def test_schemathesis_finds_nothing_on_the_running_stack(stack: Stack, name: str) -> None:
    fuzzed = FUZZED[name]
    if name.startswith("orders"):
        _seed_fuzz_catalog(stack)
    own = f"http://127.0.0.1:{stack.base_port + fuzzed.offset}"
    base, probes = own, ()
    if fuzzed.via_gateway:  # only the API's own routes are there, not its probes
        base, probes = f"{stack.gateway}/api", ("--exclude-tag", "operations")
    headers = None if fuzzed.principal is None else _bearer(_token(stack, fuzzed.principal))
    env = None
    if fuzzed.hooks is not None:
        env = {"SCHEMATHESIS_HOOKS": fuzzed.hooks, "PYTHONPATH": str(ROOT)}
    only = [arg for op in fuzzed.guarded for arg in ("--include-operation-id", op)]
    skip = [arg for op in fuzzed.guarded for arg in ("--exclude-operation-id", op)]
    phases = () if fuzzed.stateful else ("--phases", "examples,coverage,fuzzing")
    run = await run_schemathesis(
        base, schema_url=f"{own}/openapi.json", headers=headers, env=env,
        extra_args=(*probes, *skip, *phases),
    )  # fmt: skip
    assert run.clean, run.report()
    if fuzzed.guarded:
        refused = await run_schemathesis(
            base, schema_url=f"{own}/openapi.json", headers=headers, env=env,
            extra_args=(*only, "--mode", "negative", "--phases", "coverage,fuzzing"),
        )  # fmt: skip
        assert refused.clean, refused.report()
    # The stack is whole afterwards: every instance ready.

    assert all(row["state"] == "ready" for row in stack.status())
