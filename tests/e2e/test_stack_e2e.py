"""End to end: a whole stack from `yardarm up --detach` on its own base port.

Real NATS, real Postgres, the four real services as processes, driven only through the
CLI and the gateway, the way a user drives them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import asyncpg
import httpx
import nats
import psutil
import pytest

from tests.harness.adapter import StackTarget
from tests.harness.local import LocalStackTarget, Stack, pick_base_port, start_stack, stop_stack
from yardarm import tracing_view
from yardarm.catalog import DEMO_CATALOG

pytestmark = pytest.mark.e2e

CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000002"
TERMINAL = {"CONFIRMED", "CANCELLED"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("e2e"), pick_base_port(21000))
    try:
        yield running
    finally:
        stop_stack(running)


@pytest.fixture(scope="module")
def target(stack: Stack) -> StackTarget:
    """The checks' view of the stack, for the checks every target runs."""
    return LocalStackTarget(stack)


class Gateway(Protocol):
    """Anything that knows the stack's public gateway (a `Stack`, a `StackTarget`)."""

    @property
    def gateway(self) -> str: ...


def place_order(
    stack: Gateway, items: list[dict[str, Any]], card: str = CARD_OK, customer: str = "c-1"
) -> str:
    body = {"customer_id": customer, "items": items, "payment": {"card": card}}
    response = httpx.post(
        f"{stack.gateway}/api/orders",
        json=body,
        headers={"Idempotency-Key": str(uuid.uuid4())},
        timeout=20,
    )
    assert response.status_code == 202, response.text
    order_id = str(response.json()["id"])
    # a public path: the gateway maps orders' own `/orders/{id}` under its route
    assert response.headers["Location"] == f"/api/orders/{order_id}"
    return order_id


def wait_terminal(stack: Gateway, order_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{stack.gateway}/api/orders/{order_id}", timeout=10)
        assert response.status_code == 200, response.text
        order: dict[str, Any] = response.json()
        if order["status"] in TERMINAL:
            return order
        if time.monotonic() > deadline:
            raise AssertionError(f"order {order_id} not terminal after {timeout}s: {order}")
        time.sleep(0.2)


def available(stack: Gateway, sku: str) -> int:
    response = httpx.get(f"{stack.gateway}/api/stock/{sku}", timeout=10)
    assert response.status_code == 200, response.text
    return int(response.json()["available"])


def test_status_lists_every_instance_ready(stack: Stack) -> None:
    rows = stack.status()
    by_service: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_service.setdefault(row["service"], []).append(row)
    assert len(by_service["orders"]) == 2
    assert len(by_service["datastore"]) == 3
    for name in ("gateway", "fulfillment", "chaos", "nats", "postgres"):
        assert len(by_service[name]) == 1, name
    for row in rows:
        assert row["state"] == "ready", row
        assert psutil.pid_exists(row["pid"])
        assert {"instance", "port", "restarts", "version", "track"} <= row.keys()


async def _infrastructure_answers(target: StackTarget) -> None:
    connection = await asyncpg.connect(target.postgres_dsn("orders"))
    try:
        assert await connection.fetchval("SELECT 1") == 1
    finally:
        await connection.close()
    client = await nats.connect(target.nats_url)
    await client.close()


def test_the_local_target_answers_as_the_stack_runs(stack: Stack, target: StackTarget) -> None:
    """The adapter the shared checks use tells what `yardarm status` tells, and every
    address it hands out reaches the stack."""
    rows = {row["instance"]: row for row in stack.status()}
    listed = {inst.name: inst for inst in target.instances()}
    assert listed.keys() == rows.keys()
    for name, inst in listed.items():
        row = rows[name]
        assert (inst.service, inst.track, inst.version, inst.state, inst.restarts, inst.pid) == (
            row["service"], row["track"], row["version"], row["state"], row["restarts"],
            row["pid"],
        ), name  # fmt: skip
        assert inst.url is not None, name
        assert target.process_state(inst) == "running", name
        if inst.url.startswith("http"):
            ready = httpx.get(f"{inst.url}/readyz", timeout=10, verify=target.ssl or True)
            assert ready.status_code == 200, (name, inst.url, ready.text)
        if inst.service != "gateway":  # replicas share the public port, listed as theirs
            assert urlsplit(inst.url).port == row["port"], (name, inst.url)
    for url in [target.gateway, *target.gateway_admin, *target.datastore]:
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200, url
    assert [i.url for i in listed.values() if i.service == "gateway"] == target.gateway_admin
    assert [i.url for i in listed.values() if i.service == "datastore"] == target.datastore
    # The admin credential is the one the datastore wants (and it wants one).
    status = f"{target.datastore[0]}/raft/status"
    assert httpx.get(status, timeout=10).status_code == 401
    admin = {"Authorization": f"Bearer {target.admin_token}"}
    assert httpx.get(status, headers=admin, timeout=10).status_code == 200
    asyncio.run(_infrastructure_answers(target))
    # A restart is seen as a new process, ready again, the old one gone.
    before = target.instance("orders-1")
    assert before is not None and before.state == "ready"
    recovery = target.recovery
    after = target.restart("orders-1", recovery.backoff_max_s + recovery.ready_timeout_s)
    assert after is not None and after.state == "ready", after
    assert after.pid not in (None, before.pid) and after.restarts > before.restarts, after
    assert target.process_state(before) == "gone"
    counted = target.faults_counted()
    assert counted is not None and counted["kill"] >= 1, counted
    assert target.paused() == []


def test_confirmed_order_takes_exactly_its_stock(stack: Stack) -> None:
    before = available(stack, "rope-10m")
    order_id = place_order(stack, [{"sku": "rope-10m", "quantity": 3}])
    order = wait_terminal(stack, order_id)
    assert order["status"] == "CONFIRMED", order
    assert available(stack, "rope-10m") == before - 3
    # The saga went forward through each step once: reserved, charged, shipped.
    applied = [entry["step"] for entry in order["history"] if entry["outcome"] == "applied"]
    assert applied == ["stock.reserved", "payments.charged", "shipping.scheduled"], order


def test_declined_card_cancels_and_releases_stock(stack: Stack) -> None:
    before = available(stack, "compass")
    order_id = place_order(stack, [{"sku": "compass", "quantity": 2}], card=CARD_DECLINED)
    order = wait_terminal(stack, order_id)
    assert order["status"] == "CANCELLED"
    assert "declin" in (order.get("reason") or "").lower()
    assert available(stack, "compass") == before


def test_oversized_quantity_cancels_for_stock(stack: Stack) -> None:
    before = available(stack, "sextant")
    order_id = place_order(stack, [{"sku": "sextant", "quantity": before + 1}])
    order = wait_terminal(stack, order_id)
    assert order["status"] == "CANCELLED"
    assert "stock" in (order.get("reason") or "").lower()
    assert available(stack, "sextant") == before


def test_stock_listing_matches_confirmed_quantities(stack: Stack) -> None:
    listing = httpx.get(f"{stack.gateway}/api/stock", timeout=10).json()["items"]
    before = {item["sku"]: item["available"] for item in listing}
    confirmed = place_order(
        stack, [{"sku": "anchor-01", "quantity": 2}, {"sku": "lantern-red", "quantity": 1}]
    )
    cancelled = place_order(stack, [{"sku": "anchor-01", "quantity": 5}], card=CARD_DECLINED)
    assert wait_terminal(stack, confirmed)["status"] == "CONFIRMED"
    assert wait_terminal(stack, cancelled)["status"] == "CANCELLED"
    after = {
        item["sku"]: item["available"]
        for item in httpx.get(f"{stack.gateway}/api/stock", timeout=10).json()["items"]
    }
    expected = dict(before)
    expected["anchor-01"] -= 2
    expected["lantern-red"] -= 1
    assert after == expected


def _assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["title"]
    return problem


def test_bad_requests_get_precise_problems(stack: Stack) -> None:
    url = f"{stack.gateway}/api/orders"
    key = {"Idempotency-Key": str(uuid.uuid4())}
    malformed = httpx.post(
        url, content=b"{not json", headers={**key, "content-type": "application/json"}
    )
    _assert_problem(malformed, 400)

    missing_field = httpx.post(url, json={"customer_id": "c", "items": []}, headers=key)
    problem = _assert_problem(missing_field, 422)
    fields = {error["field"] for error in problem["errors"]}
    assert "payment" in fields and "items" in fields

    unknown = httpx.post(
        url,
        json={
            "customer_id": "c",
            "items": [{"sku": "no-such-sku", "quantity": 1}],
            "payment": {"card": CARD_OK},
        },
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    problem = _assert_problem(unknown, 422)
    assert any(e["field"] == "items.0.sku" for e in problem["errors"]), problem

    body = {
        "customer_id": "c",
        "items": [{"sku": "rope-10m", "quantity": 1}],
        "payment": {"card": CARD_OK},
    }
    reused = {"Idempotency-Key": str(uuid.uuid4())}
    first = httpx.post(url, json=body, headers=reused)
    assert first.status_code == 202
    again = httpx.post(url, json=body, headers=reused)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    other = httpx.post(url, json={**body, "customer_id": "someone-else"}, headers=reused)
    _assert_problem(other, 422)
    wait_terminal(stack, first.json()["id"])

    no_key = httpx.post(url, json=body)
    _assert_problem(no_key, 400)
    _assert_problem(httpx.get(f"{stack.gateway}/api/nowhere"), 404)


TRACED = {"gateway", "orders", "datastore", "fulfillment"}


def _order_traced(target: StackTarget) -> tuple[str, str]:
    """Place an order and wait until its trace holds a span of every service it crosses
    (20 s at most); the order id and the trace id."""
    order_id = place_order(target, [{"sku": "lantern-green", "quantity": 1}])
    order = wait_terminal(target, order_id)
    trace_id = order["trace_id"]
    deadline = time.monotonic() + 20
    while True:
        found = tracing_view.services_in(target.trace(trace_id))
        if found >= TRACED or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found >= TRACED, found
    return order_id, trace_id


def test_one_order_is_one_trace_across_all_four_services(target: StackTarget) -> None:
    _order_traced(target)


def test_trace_command_prints_an_orders_trace(stack: Stack, target: StackTarget) -> None:
    # `yardarm trace` reads the local target's span files: a local-only check.
    order_id, trace_id = _order_traced(target)
    printed = stack.cli("trace", order_id).stdout
    assert trace_id in printed
    for service in TRACED:
        assert service in printed


def test_every_service_serves_red_metrics_and_json_logs(stack: Stack) -> None:
    httpx.get(f"{stack.gateway}/api/stock", timeout=10)
    for row in stack.status():
        if row["service"] in ("nats", "postgres"):
            continue
        text = httpx.get(
            f"http://127.0.0.1:{row['port']}/metrics",
            headers={"Accept": "application/openmetrics-text"},
            timeout=10,
        ).text
        series = [
            line
            for line in text.splitlines()
            if line.startswith("http_server_request_duration_seconds")
        ]
        assert series, row
        for label in (
            "service=",
            "version=",
            "track=",
            "instance=",
            "http_route=",
            "http_request_method=",
            "http_response_status_code=",
        ):
            assert any(label in line for line in series), (row["instance"], label)
    gateway_metrics = httpx.get(f"{stack.gateway}/metrics", timeout=10).text
    # the gateway labels by the route it chose, not by its catch-all
    assert 'http_route="/api/stock"' in gateway_metrics
    log_lines = (stack.home / "logs" / "orders-0.log").read_text().splitlines()
    records = [json.loads(line) for line in log_lines if line.startswith("{")]
    assert records
    assert any(record.get("trace_id") for record in records)


def test_crashed_process_is_restarted_and_counted(stack: Stack) -> None:
    victim = next(row for row in stack.status() if row["instance"] == "orders-1")
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        row = next(r for r in stack.status() if r["instance"] == "orders-1")
        if row["restarts"] >= 1 and row["state"] == "ready" and row["pid"] != victim["pid"]:
            break
        assert time.monotonic() < deadline, row
        time.sleep(0.3)
    order_id = place_order(stack, [{"sku": "rope-10m", "quantity": 1}])
    assert wait_terminal(stack, order_id)["status"] == "CONFIRMED"


def test_two_stacks_side_by_side_and_down_leaves_nothing(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    second = start_stack(
        tmp_path_factory.mktemp("e2e-second"), pick_base_port(stack.base_port + 100)
    )
    try:
        order_id = place_order(second, [{"sku": "rope-10m", "quantity": 1}])
        assert wait_terminal(second, order_id)["status"] == "CONFIRMED"
        # its own datastore: fresh demo stock minus this one order
        initial = next(i["available"] for i in DEMO_CATALOG if i["sku"] == "rope-10m")
        assert available(second, "rope-10m") == initial - 1
        pids = [row["pid"] for row in second.status() if row["pid"]]
        processes = []
        for pid in pids:
            proc = psutil.Process(pid)
            processes.append(proc)
            processes.extend(proc.children(recursive=True))
    finally:
        stop_stack(second)
    _gone, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, [p.pid for p in alive]
    # the first stack is untouched by the second's shutdown
    assert all(row["state"] == "ready" for row in stack.status())
