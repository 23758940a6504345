"""The rollout engine on a real local stack, under `yardarm load`: a healthy release goes
to 100% by itself and `down`/`up` keeps it; a release that fails half its requests is
rolled back by the judge, and the user requests that failed because of it are counted.

The controller process and the `yardarm rollout` commands are not built yet; the test
drives the engine as the controller will (`yardarm.rollout.controller.drive`), with the
stack's Prometheus as the judge's source and short steps (the judge's minimum samples
lowered to match, as `YARDARM_TEST_SCALE` raises them back).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from tests.harness.local import BackgroundLoad, Stack, configured_stack
from tests.observability.binaries import require_binary
from yardarm.control_kv import ControlKv
from yardarm.local.desired import read_desired
from yardarm.local.rollout_effects import LocalEffects
from yardarm.rollout.controller import drive
from yardarm.rollout.engine import EngineConfig
from yardarm.rollout.judge import JudgeConfig
from yardarm.rollout.spec import RolloutSpec
from yardarm.rollout.state import Rollout, RolloutStore

pytestmark = pytest.mark.e2e

SCALE = max(1, int(os.environ.get("YARDARM_TEST_SCALE", "1")))
TOPOLOGY = """
services:
  orders:
    replicas: 2
"""
STEP_S = 10.0 * SCALE
INTERVAL_S = 5.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binary("prometheus")
    running = configured_stack(tmp_path_factory.mktemp("rollout"), TOPOLOGY, 22000)
    running.prometheus = True
    try:
        yield running.up()
    finally:
        running.cli("down", check=False)


def _store(stack: Stack) -> RolloutStore:
    token = (stack.home / "admin-token").read_text().strip()
    return RolloutStore(ControlKv([f"http://127.0.0.1:{stack.base_port + 10}"], token))


def _roll(stack: Stack, version: str) -> Rollout:
    spec = RolloutSpec(
        service="orders",
        version=version,
        steps=(25, 50, 100),
        step_duration_s=STEP_S,
        analysis_interval_s=INTERVAL_S,
    )
    store = _store(stack)
    stable = read_desired(stack.home)
    assert stable is not None
    effects = LocalEffects(stack.home)
    judging = JudgeConfig.for_service(
        "orders", min_requests=25 * SCALE, min_latency_points=6 * SCALE
    )

    async def run() -> Rollout | None:
        await store.start(
            Rollout(spec=spec, stable_version=stable.services["orders"]["stable"].version)
        )
        return await drive(store, effects, "orders", judging, EngineConfig(max_inconclusive=6))

    try:
        ended = asyncio.run(run())
    finally:
        effects.close()
    assert ended is not None
    return ended


def _orders_versions(stack: Stack) -> dict[str, str]:
    return {row["instance"]: row["version"] for row in stack.status() if row["service"] == "orders"}


def test_a_failing_release_is_rolled_back_and_its_failed_requests_counted(stack: Stack) -> None:
    with BackgroundLoad(stack, "--rate", "40", "--duration", "180s", "--timeout", "3s") as load:
        ended = _roll(stack, "0.3.0-errors")
        assert load.running()
    assert ended.phase == "failed", [e.message for e in ended.events]
    assert ended.reason and "failed" in ended.reason
    kinds = [e.kind for e in ended.events]
    assert kinds[0] == "started" and kinds[-1] == "failed"
    # Decided at the first step (25%), within 30 s of the canary's first request.
    steps = [e for e in ended.events if e.kind == "step"]
    assert [e.data["step"] for e in steps] == [0]
    failed_at = next(e.at for e in ended.events if e.kind == "failed")
    assert failed_at - steps[0].at <= 30.0
    # The users' requests the canary failed are counted in the event (the gateway's view:
    # often none, when its breaker and retries shield users before the first analysis).
    failed = next(e for e in ended.events if e.kind == "failed")
    assert isinstance(failed.data["canary_errors"], int), failed
    assert f"{failed.data['canary_errors']} request(s) failed" in failed.message
    # Back to stable alone: no canary or baseline instance, all traffic on stable.
    assert set(_orders_versions(stack).values()) == {"0.1.0"}
    desired = read_desired(stack.home)
    assert desired is not None
    running = {t: s.replicas for t, s in desired.services["orders"].items() if s.replicas}
    assert running == {"stable": 2}


def test_a_healthy_release_goes_to_100_percent_and_down_up_keeps_it(stack: Stack) -> None:
    with BackgroundLoad(stack, "--rate", "40", "--duration", "240s", "--timeout", "3s") as load:
        ended = _roll(stack, "0.2.0")
        assert load.running()
    assert ended.phase == "completed", [e.message for e in ended.events]
    assert ended.stable_version == "0.2.0"
    assert set(_orders_versions(stack).values()) == {"0.2.0"}
    stack.cli("down")
    stack.up()
    assert set(_orders_versions(stack).values()) == {"0.2.0"}
