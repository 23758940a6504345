"""A rolling restart of the gateway under steady `yardarm load` (retries off) fails no
request: `yardarm scale gateway 2 --version V` (what a rollout of the gateway records)
has the supervisor replace both replicas of the public port, one at a time in place,
with 0.2.0, then back, and every request of the run is answered without a 5xx.

Two loads run through it, both `yardarm load` (no retries): the steady open loop at
40 requests a second, and a closed loop of one worker reading stock, which sends each
request the instant the last one is answered on the same keep-alive connection: the
client a replica closing an idle connection would fail.

What it takes (docs in yardarm_kit.service and yardarm_gateway.settings): a replica
told to stop leaves the shared port at once, taking over the connections the kernel had
queued on its listener, so new connections go to its peer; it keeps serving the
connections it has for a second, each answer closing its connection so keep-alive
clients move to the peer; and it closes no connection a request may be on its way on.
The peer carries everything until the replacement is ready.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.local import BackgroundLoad, Stack, configured_stack

pytestmark = pytest.mark.e2e

TOPOLOGY = """
services:
  datastore:
    replicas: 1
  gateway:
    replicas: 2
    versions:
      "0.2.0": {description: "the same gateway, a new release"}
"""
RATE = 40
# Both run from before the restarts until after them, however long those take on a
# busy machine (`interrupt` ends a run; it still summarizes).
OPEN = ("--duration", "10m", "--timeout", "3s")
STEADY = ("--rate", str(RATE), *OPEN)
BACK_TO_BACK = ("--concurrency", "1", "--mix", "stock=1", *OPEN)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = configured_stack(tmp_path_factory.mktemp("gateway-restart"), TOPOLOGY, 30000)
    try:
        yield running.up()
    finally:
        running.cli("down", check=False)


def _gateways(stack: Stack) -> dict[str, tuple[str, str]]:
    """Each gateway replica's version and state."""
    return {
        row["instance"]: (row["version"], row["state"])
        for row in stack.status()
        if row["service"] == "gateway"
    }


def _failed(summary: dict[str, Any]) -> dict[str, int]:
    """The run's failed requests (5xx and transport errors) by kind, and by error."""
    kinds = {
        kind: counts["server_errors"] + counts["transport_errors"]
        for kind, counts in summary["kinds"].items()
    }
    return {kind: n for kind, n in (kinds | summary["errors"]).items() if n}


def test_a_rolling_restart_of_the_gateway_fails_no_request(stack: Stack) -> None:
    before = _gateways(stack)
    assert before == {"gateway-0": ("0.1.0", "ready"), "gateway-1": ("0.1.0", "ready")}
    with BackgroundLoad(stack, *STEADY) as steady, BackgroundLoad(stack, *BACK_TO_BACK) as busy:
        started = time.monotonic()
        time.sleep(3)  # traffic on pooled connections to both replicas first
        stack.cli("scale", "gateway", "2", "--version", "0.2.0")
        assert _gateways(stack) == {
            "gateway-0": ("0.2.0", "ready"),
            "gateway-1": ("0.2.0", "ready"),
        }
        stack.cli("scale", "gateway", "2", "--version", "0.1.0")
        assert _gateways(stack) == before
        time.sleep(1)
        assert steady.running() and busy.running(), "a load ended before the restarts did"
        ran_s = time.monotonic() - started
        for load in (steady, busy):
            load.interrupt()
        summaries = {"steady": steady.summary(60), "back-to-back": busy.summary(60)}
    assert summaries["steady"]["requests"] >= RATE * ran_s * 0.8, summaries["steady"]
    assert summaries["back-to-back"]["requests"] >= ran_s, summaries["back-to-back"]
    failed = {name: _failed(summary) for name, summary in summaries.items()}
    assert failed == {"steady": {}, "back-to-back": {}}, failed
