"""End to end: a whole stack from `yardarm up --detach` on its own base port.

Real NATS, real Postgres, the four real services as processes, driven only through the
CLI and the gateway, the way a user drives them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from yardarm import tracing_view
from yardarm.catalog import DEMO_CATALOG
from yardarm.local.plan import port_plan
from yardarm.model import Topology

pytestmark = pytest.mark.e2e

CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000002"
TERMINAL = {"CONFIRMED", "CANCELLED"}


def _ports_free(base: int) -> bool:
    for port in port_plan(Topology(base_port=base)).values():
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def pick_base_port(start: int) -> int:
    """A base port whose derived ports are all free."""
    for base in range(start, start + 2000, 100):
        if _ports_free(base):
            return base
    raise RuntimeError("no free port range for a test stack")


@dataclass
class Stack:
    home: Path
    base_port: int
    config: Path | None = None  # the yardarm.yaml it runs with

    def up(self) -> Stack:
        """`yardarm up --detach` on the stack's base port (and config)."""
        config = () if self.config is None else ("--config", str(self.config))
        self.cli("up", "--detach", "--base-port", str(self.base_port), *config)
        return self

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.base_port}"

    def cli(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "YARDARM_HOME": str(self.home), "COLUMNS": "200"}
        result = subprocess.run(
            [sys.executable, "-m", "yardarm", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"yardarm {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.cli("status", "--json").stdout)
        return rows


def _start(tmp: Path, base_port: int) -> Stack:
    stack = Stack(home=tmp / f"stack-{base_port}", base_port=base_port)
    started = time.monotonic()
    stack.cli("up", "--detach", "--base-port", str(base_port))
    # The bound is a minute on a fresh clone; allow a wide margin on a busy CI box.
    assert time.monotonic() - started < 180
    return stack


def configured_stack(tmp: Path, topology: str, start_port: int) -> Stack:
    """A stack whose yardarm.yaml says `topology`, on the first free base port from
    `start_port`; it is not started yet (`.up()`)."""
    config = tmp / "yardarm.yaml"
    config.write_text(topology)
    return Stack(home=tmp / "home", base_port=pick_base_port(start_port), config=config)


class BackgroundLoad:
    """`yardarm load --json` against a stack, running while the test does something else."""

    def __init__(self, stack: Stack, *args: str) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "yardarm", "load", *args, "--json"],
            env={**os.environ, "YARDARM_HOME": str(stack.home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def running(self) -> bool:
        return self._proc.poll() is None

    def summary(self, timeout: float) -> dict[str, Any]:
        """Wait for the run's end; its summary (the run must have exited 0)."""
        out, err = self._proc.communicate(timeout=timeout)
        assert self._proc.returncode == 0, err
        summary: dict[str, Any] = json.loads(out)
        return summary

    def __enter__(self) -> BackgroundLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def _stop(stack: Stack) -> None:
    stack.cli("down", check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = _start(tmp_path_factory.mktemp("e2e"), pick_base_port(21000))
    try:
        yield running
    finally:
        _stop(running)


def place_order(
    stack: Stack, items: list[dict[str, Any]], card: str = CARD_OK, customer: str = "c-1"
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


def wait_terminal(stack: Stack, order_id: str, timeout: float = 60.0) -> dict[str, Any]:
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


def available(stack: Stack, sku: str) -> int:
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


def test_one_order_is_one_trace_across_all_four_services(stack: Stack) -> None:
    order_id = place_order(stack, [{"sku": "lantern-green", "quantity": 1}])
    order = wait_terminal(stack, order_id)
    trace_id = order["trace_id"]
    wanted = {"gateway", "orders", "datastore", "fulfillment"}
    deadline = time.monotonic() + 20
    while True:
        found = tracing_view.services_in(tracing_view.load_trace(stack.home, trace_id))
        if wanted <= found or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert wanted <= found, found
    printed = stack.cli("trace", order_id).stdout
    assert trace_id in printed
    for service in wanted:
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
    second = _start(tmp_path_factory.mktemp("e2e-second"), pick_base_port(stack.base_port + 100))
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
        _stop(second)
    _gone, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, [p.pid for p in alive]
    # the first stack is untouched by the second's shutdown
    assert all(row["state"] == "ready" for row in stack.status())
