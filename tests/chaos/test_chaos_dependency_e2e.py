"""End to end: with `chaos: {dependency_links: true}`, `yardarm chaos` cuts a service off
from Postgres for real, and healing the link brings it back.

A whole stack from `yardarm up --detach`; every service reaches NATS, Postgres, the
datastore and orders through the controller's link proxies. Cutting fulfillment-0's link
to Postgres fails its readiness check (its pool's `SELECT 1`); the supervisor probes the
instance directly and leaves it running; healing lets the pool reconnect.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.test_stack_e2e import place_order, wait_terminal
from tests.harness.local import Stack, stop_stack
from yardarm.local.plan import port_plan
from yardarm.model import Topology

pytestmark = pytest.mark.e2e

CONFIG = "chaos:\n  dependency_links: true\n"
# Readiness checks time out after 2 s and the pool sees a reset at once; wide margin.
SETTLES_WITHIN_S = 30.0


def _free_base_port(start: int) -> int:
    """A base port whose whole plan, dependency links included, is free (and stays below
    the kernel's ephemeral range, where outgoing connections could take a port first)."""
    for base in range(start, start + 3000, 500):
        topology = Topology.model_validate({"base_port": base, "chaos": {"dependency_links": True}})
        plan = port_plan(topology)
        free = True
        for port in plan.values():
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free:
            return base
    raise RuntimeError("no free port range for a test stack")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("deplinks")
    config = tmp / "yardarm.yaml"
    config.write_text(CONFIG)
    base = _free_base_port(26000)
    running = Stack(home=tmp / "home", base_port=base)
    try:
        running.cli(
            "up", "--detach", "--base-port", str(base), "--config", str(config), "--no-prometheus"
        )
        yield running
    finally:
        running.cli("chaos", "heal", "all", check=False)
        stop_stack(running)


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        answer = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return 0, {}
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


def _wait_readyz(url: str, status: int) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLES_WITHIN_S
    seen: tuple[int, dict[str, Any]] = (0, {})
    for _ in range(1000):
        seen = _readyz(url)
        if seen[0] == status:
            return seen[1]
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer {status} within {SETTLES_WITHIN_S}s: {seen}")


def _row(stack: Stack, name: str) -> dict[str, Any]:
    return next(row for row in stack.status() if row["instance"] == name)


def test_cutting_fulfillment_from_postgres_fails_its_readiness_until_healed(
    stack: Stack,
) -> None:
    readyz = f"http://127.0.0.1:{stack.base_port + 30}/readyz"  # the instance, not a link
    _wait_readyz(readyz, 200)
    before = _row(stack, "fulfillment-0")

    cut = stack.cli("chaos", "partition", "fulfillment-0", "--peer", "postgres")
    assert "1 link: fulfillment-0->postgres" in cut.stdout, cut.stdout
    body = _wait_readyz(readyz, 503)
    assert body["checks"] == {"postgres": False, "nats": True}

    state = json.loads(stack.cli("chaos", "status", "--json").stdout)
    links = {link["name"]: link for link in state["links"]}
    assert links["fulfillment-0->postgres"]["partitioned"] is True
    cut_link = links["fulfillment-0->postgres"]
    assert cut_link["refused"] + cut_link["connections_cut"] > 0  # the pool went through it
    assert not any(v["partitioned"] for k, v in links.items() if k != "fulfillment-0->postgres")

    healed = stack.cli("chaos", "heal", "fulfillment-0", "--peer", "postgres")
    assert "healed 1 link" in healed.stdout, healed.stdout
    _wait_readyz(readyz, 200)

    after = _row(stack, "fulfillment-0")
    # The supervisor probed the instance directly and never restarted it.
    assert (after["pid"], after["restarts"], after["state"]) == (
        before["pid"],
        before["restarts"],
        "ready",
    )
    # Every hop of an order now runs through the proxies, and still works.
    order = wait_terminal(stack, place_order(stack, [{"sku": "rope-10m", "quantity": 1}]))
    assert order["status"] == "CONFIRMED"
