"""The canary strategy over a simulated world: the effects a target would apply, recorded
in order, and windows drawn from the seeded traffic model of tests/rollout/simulate.py.
A deterministic simulation of our own algorithm; the controller's live tests run it
against a real stack."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tests.rollout.simulate import STABLE, Release, Traffic, step_windows
from yardarm.rollout.engine import EngineConfig, World, tick, world
from yardarm.rollout.judge import JudgeConfig
from yardarm.rollout.spec import RolloutSpec
from yardarm.rollout.state import Rollout
from yardarm.rollout.window import TrackWindow

INTERVAL_S = 10.0
ROUTE_RPS = 150.0  # 15 req/s on a canary at 10%


@dataclass
class SimulatedStack:
    """Effects on a world kept in memory, each call logged."""

    canary: Release
    seed: int = 1
    t: float = 1_000.0
    tracks: dict[str, tuple[str, int]] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"stable": 100})
    stable_version: str = "0.1.0"
    calls: list[tuple[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def now(self) -> float:
        return self.t

    async def ensure_tracks(self, service: str, tracks: Mapping[str, tuple[str, int]]) -> None:
        if any(self.tracks.get(k) != v for k, v in tracks.items()):
            self.calls.append(("ensure", dict(tracks)))
        self.tracks.update(tracks)

    async def stop_tracks(self, service: str, tracks: tuple[str, ...]) -> None:
        if any(track in self.tracks for track in tracks):
            self.calls.append(("stop", tracks))
        for track in tracks:
            self.tracks.pop(track, None)

    async def promote(self, service: str, version: str) -> None:
        self.calls.append(("promote", version))
        self.stable_version = version

    async def set_weights(self, service: str, weights: Mapping[str, int]) -> None:
        if dict(weights) != self.weights:
            self.calls.append(("weights", dict(weights)))
            for track, weight in weights.items():
                assert weight == 0 or track == "stable" or track in self.tracks, (track, weights)
        self.weights = dict(weights)

    async def sample(self, service: str) -> None:
        return None

    async def windows(self, service: str, start: float, end: float) -> dict[str, TrackWindow]:
        traffic = Traffic(
            route_rps=ROUTE_RPS, weight=self.weights["canary"], looks_s=(end - start,)
        )
        canary, baseline = step_windows(self.rng, traffic, self.canary, STABLE)[-1]
        return {"canary": canary, "baseline": baseline}


def rollout(steps: tuple[int | str, ...] = (10, 25, 50, 100)) -> Rollout:
    spec = RolloutSpec(
        service="orders", version="0.2.0", steps=steps, step_duration_s=30.0,
        analysis_interval_s=INTERVAL_S,
    )  # fmt: skip
    return Rollout(spec=spec, stable_version="0.1.0")


def run(stack: SimulatedStack, stored: Rollout, ticks: int) -> Rollout:
    """Tick as a controller does: store each change, tick again at once when it ends the
    rollout, otherwise wait one analysis interval."""
    config, judging = EngineConfig(), JudgeConfig.for_service("orders")
    for _ in range(ticks):
        phase = stored.phase
        edit = asyncio.run(tick(stored, stack, judging, config))
        if edit is not None:
            edit(stored)
            stored = Rollout.model_validate_json(stored.model_dump_json())  # as stored
        if stored.phase == phase and stored.phase in ("progressing", "paused"):
            stack.t += INTERVAL_S
        if stored.phase in ("completed", "aborted", "failed") and phase == stored.phase:
            break
    return stored


def test_a_healthy_version_goes_to_100_percent_by_itself() -> None:
    stack = SimulatedStack(Release())
    done = run(stack, rollout(), ticks=60)
    assert done.phase == "completed", [e.message for e in done.events]
    assert (stack.stable_version, stack.weights, stack.tracks) == ("0.2.0", {"stable": 100}, {})
    weights = [c[1] for c in stack.calls if c[0] == "weights"]
    assert [w["canary"] for w in weights[:3]] == [10, 25, 50]  # type: ignore[index]
    assert weights[0] == {"stable": 80, "canary": 10, "baseline": 10}
    assert weights[2] == {"stable": 0, "canary": 50, "baseline": 50}
    # Tracks start before traffic moves to them; they stop only after it left them.
    kinds = [c[0] for c in stack.calls]
    assert kinds[0] == "ensure" and kinds[-3:] == ["promote", "weights", "stop"]


def test_a_failing_version_is_rolled_back_before_half_the_traffic() -> None:
    for seed in range(5):
        stack = SimulatedStack(Release(error_ratio=0.055), seed=seed)
        done = run(stack, rollout(), ticks=60)
        assert done.phase == "failed", [e.message for e in done.events]
        assert "error-rate" in (done.reason or "")
        began = next(e.at for e in done.events if e.kind == "step")
        failed = next(e.at for e in done.events if e.kind == "failed")
        assert failed - began <= 30.0  # from the canary's first request
        canary = [c[1].get("canary", 0) for c in stack.calls if c[0] == "weights"]  # type: ignore[attr-defined]
        assert max(canary) < 50
        assert (stack.stable_version, stack.weights, stack.tracks) == (
            "0.1.0", {"stable": 100}, {},
        )  # fmt: skip


def test_a_slower_version_is_caught_by_the_latency_rule() -> None:
    stack = SimulatedStack(Release(extra_latency_s=0.1))
    done = run(stack, rollout(), ticks=60)
    assert done.phase == "failed"
    verdicts = [e.data["verdict"] for e in done.events if e.kind == "verdict"]
    assert verdicts[-1]["outcome"] == "fail" and verdicts[-1]["rule"] == "latency"


def test_a_pause_waits_for_promote_and_an_abort_between_ticks_wins() -> None:
    stack = SimulatedStack(Release())
    stored = run(stack, rollout((10, "pause", 50, 100)), ticks=30)
    assert stored.phase == "paused" and stack.weights["canary"] == 10
    assert run(stack, stored, ticks=3).phase == "paused"  # nothing moves by itself
    stored.phase, stored.step = "progressing", stored.step + 1  # `yardarm rollout promote`
    stored.step_started_at = None
    edit = asyncio.run(tick(stored, stack, JudgeConfig.for_service("orders"), EngineConfig()))
    assert stack.weights["canary"] == 50
    stored.phase, stored.reason = "aborted", "by the operator"  # lands before the store
    assert edit is not None
    edit(stored)  # the tick's change is for the rollout it saw: it does not apply
    assert (stored.phase, stored.step_started_at) == ("aborted", None)
    run(stack, stored, ticks=2)
    assert (stack.weights, stack.tracks, stack.stable_version) == ({"stable": 100}, {}, "0.1.0")


def test_the_world_follows_from_the_stored_rollout_alone() -> None:
    """A controller that restarts mid-rollout needs nothing but the stored document."""
    stack = SimulatedStack(Release())
    stored = run(stack, rollout(), ticks=5)
    again = Rollout.model_validate_json(stored.model_dump_json())
    assert world(again, EngineConfig()) == world(stored, EngineConfig())
    assert world(again, EngineConfig()) == World(
        {"canary": ("0.2.0", 1), "baseline": ("0.1.0", 1)}, stack.weights, "0.1.0"
    )
