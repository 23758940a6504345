"""The controller's start against a real datastore: every service rolls (fulfillment by
its instances), and a rolling restart of a lone replica says what it costs."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from yardarm_kit.problem import Problem

from yardarm.control_kv import ControlKv
from yardarm.model import Topology
from yardarm.rollout.api import RolloutController, StartRequest
from yardarm.rollout.engine import EngineConfig
from yardarm.rollout.state import RolloutStore

TOPOLOGY = Topology.model_validate(
    {"services": {"gateway": {"versions": {"0.2.0": {}}}, "datastore": {"versions": {"0.2.0": {}}}}}
)


class Idle:
    """A target that starts nothing and never finishes a change: the rollout stays
    where `start` left it while the test reads it."""

    topology = TOPOLOGY

    def __init__(self, replicas: int) -> None:
        self._replicas = replicas

    def now(self) -> float:
        return 0.0

    def stable_version(self, service: str) -> str:
        return "0.1.0"

    def replicas(self, service: str) -> int:
        return self._replicas

    async def ensure_tracks(self, service: str, tracks: Mapping[str, tuple[str, int]]) -> None:
        await asyncio.Event().wait()

    async def promote(self, service: str, version: str) -> None:
        await asyncio.Event().wait()

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"not reached: {name}")


async def _start(datastore_url: str, replicas: int, **request: Any) -> list[tuple[str, str]]:
    store = RolloutStore(ControlKv([datastore_url], "no-auth-here", timeout_s=10))
    target: Any = Idle(replicas)
    controller = RolloutController(store, target, {}, EngineConfig(), sub_window_s=0.1)
    try:
        rollout = await controller.start(StartRequest(**request))
        await controller.abort(rollout.spec.service, "the test is done")
    finally:
        await controller.stop()
    return [(e.kind, e.message) for e in rollout.events]


async def test_fulfillment_rolls_by_instances_and_refuses_blue_green(datastore_url: str) -> None:
    events = await _start(datastore_url, 1, service="fulfillment", version="0.2.0")
    assert [kind for kind, _ in events] == ["started"]
    with pytest.raises(Problem) as refused:
        await _start(datastore_url, 1, service="fulfillment", version="0.2.0",
                     strategy="blue-green")  # fmt: skip
    assert refused.value.status == 422 and "roll it with --strategy canary" in refused.value.detail


@pytest.mark.parametrize(
    ("service", "cost"),
    [("gateway", "connections are refused"), ("datastore", "it has no quorum")],
)
async def test_a_rolling_restart_of_one_replica_warns_and_of_two_does_not(
    datastore_url: str, service: str, cost: str
) -> None:
    alone = await _start(datastore_url, 1, service=service, version="0.2.0")
    [warning] = [message for kind, message in alone if kind == "warning"]
    assert warning.startswith(f"{service} runs one replica: {cost}")
    several = await _start(datastore_url, 3, service=service, version="0.2.0")
    assert [kind for kind, _ in several] == ["started"]
