"""A second version on a canary track, from `yardarm.yaml`, end to end: the stack starts
it beside stable, the gateway routes to it on request, and its telemetry says which
release and track served.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness.local import Stack, configured_stack

pytestmark = pytest.mark.e2e

TOPOLOGY = """
services:
  orders:
    tracks:
      canary: {replicas: 1, version: 0.2.0}
  datastore:
    replicas: 1
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = configured_stack(tmp_path_factory.mktemp("tracks"), TOPOLOGY, 25000)
    try:
        yield running.up()
    finally:
        running.cli("down", check=False)


def _served(metrics: str, version: str, track: str) -> float:
    """Requests to POST /orders this instance counted with these labels."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith("http_server_request_duration_seconds_count{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if (labels.get("version"), labels.get("track")) != (version, track):
            continue
        if labels.get("http_request_method") == "POST" and labels.get("http_route") == "/orders":
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_canary_release_runs_beside_stable_and_is_labelled_as_such(stack: Stack) -> None:
    rows = {row["instance"]: row for row in stack.status()}
    canary = rows["orders-canary-0"]
    assert (canary["version"], canary["track"], canary["state"]) == ("0.2.0", "canary", "ready")
    assert (rows["orders-0"]["version"], rows["orders-0"]["track"]) == ("0.1.0", "stable")

    token = (stack.home / "admin-token").read_text().strip()
    body = {
        "customer_id": "c-canary",
        "items": [{"sku": "rope-10m", "quantity": 1}],
        "payment": {"card": "4242424242424242"},
    }
    sent = 3
    for _ in range(sent):
        answer = httpx.post(
            f"{stack.gateway}/api/orders",
            json=body,
            headers={
                "Idempotency-Key": str(uuid.uuid4()),
                "x-yardarm-track": "canary",
                "x-yardarm-admin-token": token,
            },
            timeout=20,
        )
        assert answer.status_code == 202, answer.text

    canary_metrics = httpx.get(f"http://127.0.0.1:{canary['port']}/metrics", timeout=10).text
    assert _served(canary_metrics, "0.2.0", "canary") == sent
    for name in ("orders-0", "orders-1"):
        stable = httpx.get(f"http://127.0.0.1:{rows[name]['port']}/metrics", timeout=10).text
        assert _served(stable, "0.1.0", "stable") == 0, name

    logs = (stack.home / "logs" / "orders-canary-0.log").read_text().splitlines()
    records = [json.loads(line) for line in logs if line.startswith("{")]
    assert records and all(
        (r["version"], r["track"], r["instance"]) == ("0.2.0", "canary", "orders-canary-0")
        for r in records
    )
    # `yardarm logs orders` shows every track's instances; `orders-canary` only the canary.
    shown = {
        line.split(" | ", 1)[0]
        for line in stack.cli("logs", "orders", "-n", "2").stdout.splitlines()
    }
    assert shown == {"orders-0", "orders-1", "orders-canary-0"}
    shown = {
        line.split(" | ", 1)[0] for line in stack.cli("logs", "orders-canary").stdout.splitlines()
    }
    assert shown == {"orders-canary-0"}
    spans = Path(stack.home / "telemetry" / "orders-canary-0.jsonl").read_text().splitlines()
    resources = [
        {a["key"]: a["value"].get("stringValue") for a in batch["resource"]["attributes"]}
        for line in spans
        for batch in json.loads(line)["resourceSpans"]
    ]
    assert resources and all(
        (r["service.version"], r["yardarm.track"]) == ("0.2.0", "canary") for r in resources
    )
