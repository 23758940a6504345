"""Rolling out fulfillment, a queue consumer, on a real local stack under steady orders:
no router splits its traffic, so each step runs a share of instances (canary and
baseline) beside stable and the judge reads each track's own deliveries from the stack's
Prometheus. A release that fails half its deliveries is rolled back at its first step and
one that takes a second per delivery is failed; a healthy one completes, its stable
track replaced while the canary consumes, and `down`/`up` keeps it.

Short steps (`tests.harness.rollout_api`), scaled back up by `YARDARM_TEST_SCALE`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.harness.local import BackgroundLoad, Stack, configured_stack
from tests.harness.rollout_api import (
    INTERVAL_S,
    ROLLOUT_BOUND_S,
    SHORT_STEPS_ENV,
    STEP_S,
    RolloutApi,
)
from tests.observability.binaries import require_binary

pytestmark = pytest.mark.e2e

TOPOLOGY = """
services:
  fulfillment:
    replicas: 2
"""
# Every order is a charge and a shipment for fulfillment's consumers.
LOAD = ("--rate", "15", "--mix", "orders=100", "--timeout", "5s")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binary("prometheus")
    running = configured_stack(tmp_path_factory.mktemp("rollout-consumer"), TOPOLOGY, 24000)
    running.prometheus = True
    running.env = SHORT_STEPS_ENV
    try:
        yield running.up()
    finally:
        running.cli("down", check=False)


def _tracks(stack: Stack) -> dict[str, set[str]]:
    """fulfillment's running instances: track -> versions."""
    found: dict[str, set[str]] = {}
    for row in stack.status():
        if row["service"] == "fulfillment":
            found.setdefault(row["track"], set()).add(row["version"])
    return found


def _wait_tracks(stack: Stack, wanted: dict[str, set[str]]) -> None:
    deadline = time.monotonic() + ROLLOUT_BOUND_S
    while (running := _tracks(stack)) != wanted:
        assert time.monotonic() < deadline, f"fulfillment runs {running}, not {wanted}"
        time.sleep(1.0)


def _verdicts(rollout: dict[str, object]) -> list[dict[str, object]]:
    events = rollout["events"]
    assert isinstance(events, list)
    return [e["data"]["verdict"] for e in events if e["kind"] == "verdict"]


def test_bad_consumer_releases_are_rolled_back_by_their_own_deliveries(stack: Stack) -> None:
    api = RolloutApi(stack, "fulfillment", STEP_S, INTERVAL_S, ROLLOUT_BOUND_S)
    stack.restock()
    with BackgroundLoad(stack, *LOAD, "--duration", "600s") as load:
        api.start("0.3.0-errors")
        errors = api.wait_end()
        _wait_tracks(stack, {"stable": {"0.1.0"}})
        api.start("0.3.0-slow")
        slow = api.wait_end()
        load.interrupt()
        load.summary(timeout=60)
    assert errors["phase"] == "failed", [e["message"] for e in errors["events"]]
    steps = [e for e in errors["events"] if e["kind"] == "step"]
    assert [e["data"]["step"] for e in steps] == [0]  # never past its first step
    # 1 canary and 1 baseline instance beside stable's 2: about a quarter each.
    assert "1 canary and 1 baseline instance(s) beside 2 stable" in steps[0]["message"]
    failing = _verdicts(errors)[-1]
    assert failing["rule"] in ("error-rate", "guardrail-error-ratio"), failing
    numbers = {c["name"]: c["numbers"] for c in failing["checks"]}  # type: ignore[attr-defined]
    # Read from Prometheus: the canary's and the baseline's deliveries, and its share.
    assert numbers["errors"]["canary_errors"] > 0 and numbers["errors"]["baseline_requests"] > 0
    assert numbers["share"]["weight"] == 25.0
    print(f"consumer +50% failed deliveries: {failing['reason']}")
    assert slow["phase"] == "failed", [e["message"] for e in slow["events"]]
    verdict = _verdicts(slow)[-1]
    # A slower consumer pulls fewer deliveries and takes longer over each batch.
    assert verdict["rule"] in ("latency", "starved", "guardrail-latency"), verdict
    print(f"consumer +1 s per delivery: {verdict['rule']}: {verdict['reason']}")
    _wait_tracks(stack, {"stable": {"0.1.0"}})


def test_a_healthy_consumer_release_completes_and_down_up_keeps_it(stack: Stack) -> None:
    api = RolloutApi(stack, "fulfillment", STEP_S, INTERVAL_S, ROLLOUT_BOUND_S)
    stack.restock()
    with BackgroundLoad(stack, *LOAD, "--duration", "600s") as load:
        api.start("0.2.0")
        ended = api.wait_end()
        load.interrupt()
        summary = load.summary(timeout=60)
    assert ended["phase"] == "completed", [e["message"] for e in ended["events"]]
    assert summary["requests"] > 0
    _wait_tracks(stack, {"stable": {"0.2.0"}})
    stack.cli("down")
    stack.up()
    _wait_tracks(stack, {"stable": {"0.2.0"}})
