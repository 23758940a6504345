"""Live scaling end to end: `yardarm scale` under steady open-loop load fails no request,
the gateways' endpoints follow each change within two seconds, a second version starts
on a canary track and comes back after `down`/`up`, and a killed canary instance is
restarted and routed to again.

The gateway's own retries are off here (and the load client never retries), so a request
sent to an instance on its way out would fail: zero failures means every gateway took
the instance out of rotation before it stopped, and it finished what it had in flight.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness.local import BackgroundLoad, Stack, configured_stack

pytestmark = pytest.mark.e2e

TOPOLOGY = """
services:
  datastore:
    replicas: 1
  gateway:
    upstreams:
      orders:
        retry: {enabled: false}
"""
LOAD_S = 60
FOLLOW_S = 2.0  # the issue's bound on the gateways' endpoint set following a change


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = configured_stack(tmp_path_factory.mktemp("scale"), TOPOLOGY, 27000)
    try:
        yield running.up()
    finally:
        running.cli("down", check=False)


def _admin(stack: Stack) -> dict[str, str]:
    token = (stack.home / "admin-token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def _gateway_endpoints(stack: Stack) -> dict[str, str]:
    """The orders endpoints the gateway routes to now: url -> track."""
    view = httpx.get(
        f"http://127.0.0.1:{stack.base_port + 1}/admin/upstreams",
        headers=_admin(stack),
        timeout=5,
    ).json()["orders"]
    return {e["url"]: e["track"] for e in view["endpoints"] if not e.get("draining")}


def _instances(stack: Stack, service: str = "orders") -> dict[str, dict[str, Any]]:
    return {
        row["instance"]: row
        for row in stack.status()
        if row["service"] == service and row["state"] != "stopped"
    }


def _urls(rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {f"http://127.0.0.1:{row['port']}": row["track"] for row in rows.values()}


def _scale(stack: Stack, *args: str) -> None:
    """Scale, then check the gateway routes to exactly the instances that run, in time."""
    stack.cli("scale", *args)
    scaled_at = time.monotonic()
    expected = _urls({k: v for k, v in _instances(stack).items() if v["state"] == "ready"})
    while _gateway_endpoints(stack) != expected:
        assert time.monotonic() - scaled_at < FOLLOW_S, (_gateway_endpoints(stack), expected)
        time.sleep(0.05)


def test_scaling_under_load_fails_no_request(stack: Stack) -> None:
    args = ("--rate", "40", "--duration", f"{LOAD_S}s", "--mix", "orders=30,reads=50,stock=20",
            "--seed", "7")  # fmt: skip
    with BackgroundLoad(stack, *args) as load:
        time.sleep(3)
        _scale(stack, "orders", "4")
        assert sorted(_instances(stack)) == ["orders-0", "orders-1", "orders-2", "orders-3"]
        time.sleep(2)
        _scale(stack, "orders", "1")
        assert sorted(_instances(stack)) == ["orders-0"]
        time.sleep(2)
        _scale(stack, "orders", "2")
        assert sorted(_instances(stack)) == ["orders-0", "orders-1"]
        assert load.running(), "the load ended before the last scale"
        summary = load.summary(timeout=LOAD_S + 60)
    assert summary["requests"] > 100
    assert summary["server_errors"] == 0, summary["status_codes"]
    assert summary["transport_errors"] == 0, summary["errors"]


def test_a_second_version_on_a_canary_track_starts_live_and_survives_down_up(
    stack: Stack,
) -> None:
    _scale(stack, "orders", "1", "--track", "canary", "--version", "0.2.0")
    canary = _instances(stack)["orders-canary-0"]
    assert (canary["version"], canary["track"], canary["state"]) == ("0.2.0", "canary", "ready")
    status = stack.cli("status").stdout
    assert "canary" in status and "0.2.0" in status

    # A killed canary is restarted and routed to again; its endpoint never left the list.
    stack.cli("chaos", "kill", "orders-canary-0")
    deadline = time.monotonic() + 60
    while True:
        row = _instances(stack)["orders-canary-0"]
        if row["pid"] != canary["pid"] and row["state"] == "ready":
            break
        assert time.monotonic() < deadline, row
        time.sleep(0.2)
    assert _gateway_endpoints(stack)[f"http://127.0.0.1:{canary['port']}"] == "canary"
    token = (stack.home / "admin-token").read_text().strip()
    answer = httpx.get(
        f"{stack.gateway}/api/stock",
        headers={"x-yardarm-track": "canary", "x-yardarm-admin-token": token},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text

    # down, then up: the stack comes back as it was last scaled.
    stack.cli("down")
    stack.up()
    again = _instances(stack)
    assert again["orders-canary-0"]["version"] == "0.2.0"
    assert again["orders-canary-0"]["port"] == canary["port"]
    assert _gateway_endpoints(stack)[f"http://127.0.0.1:{canary['port']}"] == "canary"

    # Scaled to zero, the canary leaves the gateway before its process stops.
    _scale(stack, "orders", "0", "--track", "canary")
    assert "orders-canary-0" not in _instances(stack)
