"""The canary and blue-green strategies over a simulated world: the effects a target
would apply, recorded in order, and windows drawn from the seeded traffic model of
tests/rollout/simulate.py. A deterministic simulation of our own algorithm; the
controller's live tests run it against a real stack."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from tests.rollout.simulate import STABLE, Release, Traffic, step_windows
from yardarm.rollout.engine import EffectFailed, EngineConfig, World, tick, world
from yardarm.rollout.judge import JudgeConfig
from yardarm.rollout.spec import RolloutSpec
from yardarm.rollout.state import Rollout
from yardarm.rollout.window import TrackWindow

INTERVAL_S = 10.0
ROUTE_RPS = 150.0  # 15 req/s on a canary at 10%
SMOKE_RPS = 20.0  # per track
STABLE_REPLICAS = 2


@dataclass
class SimulatedStack:
    """Effects on a world kept in memory, each call logged."""

    canary: Release
    seed: int = 1
    t: float = 1_000.0
    tracks: dict[str, tuple[str, int]] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"stable": 100})
    version: str = "0.1.0"  # what stable is set to run
    calls: list[tuple[str, object]] = field(default_factory=list)
    smoked: tuple[str, ...] = ()
    broken: tuple[str, ...] = ()  # versions whose instances do not start
    sticky: str = ""  # the routes' sticky key ("" none)

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

    def replicas(self, service: str) -> int:
        return STABLE_REPLICAS

    async def promote(self, service: str, version: str) -> None:
        # The stable track is replaced only while another track takes all its traffic.
        assert service != "orders" or self.weights.get("stable", 0) == 0, self.weights
        self.calls.append(("promote", version))
        self.version = version
        if version in self.broken:
            raise EffectFailed(f"{service} {version} did not start")

    def stable_version(self, service: str) -> str:
        return self.version

    async def set_weights(
        self, service: str, weights: Mapping[str, int], sticky: str | None = None
    ) -> None:
        if sticky is not None and sticky != self.sticky:
            self.calls.append(("sticky", sticky))
            self.sticky = sticky
        if dict(weights) != self.weights:
            self.calls.append(("weights", dict(weights)))
            for track, weight in weights.items():
                assert weight == 0 or track == "stable" or track in self.tracks, (track, weights)
        self.weights = dict(weights)

    async def sample(self, service: str) -> None:
        return None

    def _release(self, track: str) -> Release:
        return self.canary if track in ("canary", "green") else STABLE

    async def windows(
        self, service: str, start: float, end: float, tracks: tuple[str, ...]
    ) -> dict[str, TrackWindow]:
        if "canary" in tracks:
            traffic = Traffic(
                route_rps=ROUTE_RPS, weight=self.weights["canary"], looks_s=(end - start,)
            )
            canary, baseline = step_windows(self.rng, traffic, self.canary, STABLE)[-1]
            return {"canary": canary, "baseline": baseline}
        # Blue-green: what green served, its weight's share of users' traffic and the
        # smoke requests.
        weight = self.weights.get("green", 0)
        served = ROUTE_RPS * weight / 100.0 + (SMOKE_RPS if "green" in self.smoked else 0.0)
        traffic = Traffic(route_rps=2 * served, weight=50.0, looks_s=(end - start,))
        green, stable = step_windows(self.rng, traffic, self._release("green"), STABLE)[-1]
        return {"green": replace(green, track="green", weight=weight),
                "stable": replace(stable, track="stable", weight=100 - weight)}  # fmt: skip

    async def smoke(self, service: str, tracks: tuple[str, ...]) -> None:
        if tuple(tracks) != self.smoked:
            self.calls.append(("smoke", tuple(tracks)))
            assert all(t == "stable" or t in self.tracks for t in tracks), tracks
        self.smoked = tuple(tracks)

    def smoke_windows(
        self, service: str, start: float, end: float, tracks: tuple[str, ...]
    ) -> dict[str, TrackWindow]:
        """The same smoke requests to green and stable (SMOKE_RPS each)."""
        traffic = Traffic(route_rps=2 * SMOKE_RPS, weight=50.0, looks_s=(end - start,))
        green, stable = step_windows(self.rng, traffic, self._release("green"), STABLE)[-1]
        return {"green": replace(green, track="green", weight=0.0),
                "stable": replace(stable, track="stable", weight=0.0)}  # fmt: skip


def rollout(steps: tuple[int | str, ...] = (10, 25, 50, 100), **spec_fields: object) -> Rollout:
    spec = RolloutSpec.model_validate(
        {"service": "orders", "version": "0.2.0", "steps": steps, "step_duration_s": 30.0,
         "analysis_interval_s": INTERVAL_S, **spec_fields}
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
    assert (stack.version, stack.weights, stack.tracks) == ("0.2.0", {"stable": 100}, {})
    weights = [c[1] for c in stack.calls if c[0] == "weights"]
    assert [w["canary"] for w in weights[:3]] == [10, 25, 50]  # type: ignore[index]
    assert weights[0] == {"stable": 80, "canary": 10, "baseline": 10}
    assert weights[2] == {"stable": 0, "canary": 50, "baseline": 50}
    # Tracks start before traffic moves to them; they stop only after it left them. At
    # the promotion the canary, at stable's size, takes all traffic while stable is
    # replaced (SimulatedStack.promote asserts it), then stable takes it back.
    kinds = [c[0] for c in stack.calls]
    assert kinds[0] == "ensure" and kinds[-5:] == [
        "ensure",
        "weights",
        "promote",
        "weights",
        "stop",
    ]
    assert stack.calls[-5:-2] == [
        ("ensure", {"canary": ("0.2.0", STABLE_REPLICAS)}),
        ("weights", {"canary": 100}),
        ("promote", "0.2.0"),
    ]


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
        assert (stack.version, stack.weights, stack.tracks) == (
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
    assert (stack.weights, stack.tracks, stack.version) == ({"stable": 100}, {}, "0.1.0")


def test_the_world_follows_from_the_stored_rollout_alone() -> None:
    """A controller that restarts mid-rollout needs nothing but the stored document."""
    stack = SimulatedStack(Release())
    stored = run(stack, rollout(), ticks=5)
    again = Rollout.model_validate_json(stored.model_dump_json())
    assert world(again, EngineConfig()) == world(stored, EngineConfig())
    assert world(again, EngineConfig()) == World(
        {"canary": ("0.2.0", 1), "baseline": ("0.1.0", 1)}, stack.weights, "0.1.0"
    )


def _blue_green(**spec_fields: object) -> Rollout:
    return rollout(strategy="blue-green", **spec_fields)


def test_blue_green_previews_green_switches_at_once_and_keeps_blue_for_the_delay() -> None:
    stack = SimulatedStack(Release())
    done = run(stack, _blue_green(scale_down_delay_s=20.0), ticks=60)
    assert done.phase == "completed", [e.message for e in done.events]
    assert (stack.version, stack.weights, stack.tracks) == ("0.2.0", {"stable": 100}, {})
    calls = stack.calls
    # Green at full size and smoked with stable before it takes any traffic.
    assert calls[:2] == [("ensure", {"green": ("0.2.0", 2)}), ("smoke", ("green", "stable"))]
    weights = [c[1] for c in calls if c[0] == "weights"]
    # One write switches everything to green; stable is replaced with no traffic; one
    # write switches back to stable (now the new version).
    assert weights == [{"stable": 100, "green": 0}, {"stable": 0, "green": 100},
                       {"green": 100}, {"stable": 100}]  # fmt: skip
    switch, back = calls.index(("weights", weights[1])), calls.index(("weights", weights[3]))
    assert calls.index(("promote", "0.2.0")) > switch
    assert calls[back + 1] == ("stop", ("canary", "baseline", "green"))
    kinds = [e.kind for e in done.events]
    assert kinds.count("step") == 3  # preview, switched, delay
    delay = [e.at for e in done.events if e.kind == "step"][-1]
    assert next(e.at for e in done.events if e.kind == "completed") - delay >= 20.0
    # Smoke stops once the post-promotion analysis has passed.
    assert ("smoke", ()) in calls


def test_a_failing_green_never_takes_user_traffic() -> None:
    stack = SimulatedStack(Release(error_ratio=0.3))
    done = run(stack, _blue_green(), ticks=60)
    assert done.phase == "failed", [e.message for e in done.events]
    assert "error-rate" in (done.reason or "")
    assert all(c[1].get("green", 0) == 0 for c in stack.calls if c[0] == "weights")  # type: ignore[attr-defined]
    assert (stack.version, stack.weights, stack.tracks) == ("0.1.0", {"stable": 100}, {})
    failed = next(e for e in done.events if e.kind == "failed")
    assert failed.data["user_failures"] == 0


def test_an_abort_after_the_switch_goes_back_to_blue_in_one_write() -> None:
    stack = SimulatedStack(Release())
    stored = _blue_green(scale_down_delay_s=300.0)
    while stored.step < 2:  # through preview and post-promotion analysis
        stored = run(stack, stored, ticks=1)
    assert stack.weights == {"stable": 0, "green": 100} and stack.version == "0.1.0"
    before = len(stack.calls)
    stored.phase, stored.reason = "aborted", "by the operator"
    run(stack, stored, ticks=1)
    after = [c for c in stack.calls[before:] if c[0] != "smoke"]
    assert after == [("weights", {"stable": 100}), ("stop", ("canary", "baseline", "green"))]
    assert stack.version == "0.1.0"


def test_a_rolling_restart_replaces_stable_and_a_failed_start_goes_back() -> None:
    """The gateway and the datastore: no weights, no tracks, stable replaced in place."""
    stack = SimulatedStack(Release())
    done = run(stack, rollout(service="datastore"), ticks=5)
    assert done.phase == "completed" and stack.version == "0.2.0"
    assert [c for c in stack.calls if c[0] in ("weights", "ensure")] == []
    stack = SimulatedStack(Release(), broken=("0.2.0",))
    done = run(stack, rollout(service="gateway"), ticks=5)
    assert done.phase == "failed" and "did not start" in (done.reason or "")
    assert stack.calls[-1] == ("promote", "0.1.0") and stack.version == "0.1.0"


def test_an_abort_landing_while_tracks_start_moves_no_traffic_to_them() -> None:
    """Starting instances takes seconds; the stored rollout is read again after it, and
    the step's weights are not applied for a rollout that was aborted meanwhile."""
    stack = SimulatedStack(Release())
    stored = rollout()
    aborted = Rollout.model_validate_json(stored.model_dump_json())
    aborted.phase = "aborted"

    async def reread() -> Rollout:
        return aborted

    judging = JudgeConfig.for_service("orders")
    assert asyncio.run(tick(stored, stack, judging, EngineConfig(), reread)) is None
    assert stack.tracks and stack.weights == {"stable": 100}  # started, never weighted
    run(stack, aborted, ticks=1)
    assert (stack.tracks, stack.weights) == ({}, {"stable": 100})


def _consumer_windows(stack: SimulatedStack, start: float, end: float) -> dict[str, TrackWindow]:
    """A consumer's deliveries: each instance pulls alike, so a track's share is its
    share of the instances."""
    counts = {"stable": STABLE_REPLICAS} | {t: n for t, (_, n) in stack.tracks.items()}
    share = 100.0 * counts.get("canary", 0) / sum(counts.values())
    traffic = Traffic(route_rps=ROUTE_RPS, weight=share, looks_s=(end - start,))
    canary, baseline = step_windows(stack.rng, traffic, stack.canary, STABLE)[-1]
    return {"canary": canary, "baseline": baseline}


@dataclass
class SimulatedConsumer(SimulatedStack):
    """A queue consumer: no router, so the engine must never set weights."""

    async def set_weights(
        self, service: str, weights: Mapping[str, int], sticky: str | None = None
    ) -> None:
        raise AssertionError(f"a consumer has no split to set ({weights})")

    async def windows(
        self, service: str, start: float, end: float, tracks: tuple[str, ...]
    ) -> dict[str, TrackWindow]:
        return _consumer_windows(self, start, end)


def test_a_consumer_rolls_by_its_share_of_instances_and_hands_over_at_100() -> None:
    stack = SimulatedConsumer(Release())
    done = run(stack, rollout(service="fulfillment"), ticks=60)
    assert done.phase == "completed", [e.message for e in done.events]
    assert (stack.version, stack.tracks) == ("0.2.0", {})
    ensured = [c[1] for c in stack.calls if c[0] == "ensure"]
    # ceil(w% of stable's 2 instances) canary instances, as many baseline ones; at 100%
    # the canary runs at stable's size while stable is replaced, then every track stops.
    assert ensured[0] == {"canary": ("0.2.0", 1), "baseline": ("0.1.0", 1)}
    assert ensured[-1] == {"canary": ("0.2.0", STABLE_REPLICAS)}
    assert [c[0] for c in stack.calls][-3:] == ["ensure", "promote", "stop"]
    step = next(e for e in done.events if e.kind == "step")
    assert "1 canary and 1 baseline instance(s) beside 2 stable, about 25%" in step.message
    # The judge's weight for the canary is its share of the instances.
    verdict = next(e.data["verdict"] for e in done.events if e.kind == "verdict")
    share = next(c for c in verdict["checks"] if c["name"] == "share")
    assert share["numbers"]["weight"] == 25.0


def test_a_failing_consumer_release_is_rolled_back_to_stable_alone() -> None:
    stack = SimulatedConsumer(Release(error_ratio=0.055))
    done = run(stack, rollout(service="fulfillment"), ticks=60)
    assert done.phase == "failed", [e.message for e in done.events]
    assert "error-rate" in (done.reason or "") and done.weights == {}
    assert (stack.version, stack.tracks) == ("0.1.0", {})
    assert "promote" not in [c[0] for c in stack.calls]


def test_a_consumer_canary_grows_with_the_weight_and_stable_s_size() -> None:
    stored = rollout(service="fulfillment", steps=(10, 50, 75, 100))
    sizes = []
    for step in range(3):
        stored.step = step
        target = world(stored, EngineConfig(), stable_replicas=4)
        assert target.weights is None and target.tracks["baseline"][1] == target.tracks["canary"][1]
        sizes.append(target.tracks["canary"][1])
    assert sizes == [1, 2, 3]
    assert world(stored, EngineConfig(), 4).expected_shares(4) == {
        "stable": 40.0, "canary": 30.0, "baseline": 30.0,
    }  # fmt: skip


def test_a_sticky_canary_keeps_its_key_while_it_runs_and_takes_it_away_at_the_end() -> None:
    for canary, phase in ((Release(), "completed"), (Release(error_ratio=0.3), "failed")):
        stack = SimulatedStack(canary)
        done = run(stack, rollout(sticky="header:x-user"), ticks=60)
        assert done.phase == phase, [e.message for e in done.events]
        calls = [c for c in stack.calls if c[0] in ("sticky", "weights")]
        # Set with the first split, never changed while weights move, off with the last.
        assert calls[0] == ("sticky", "header:x-user") and calls[1][0] == "weights"
        assert [c for c in calls if c[0] == "sticky"] == [
            ("sticky", "header:x-user"), ("sticky", "")
        ]  # fmt: skip
        assert calls[-1] == ("weights", {"stable": 100}) and stack.sticky == ""
    stack = SimulatedStack(Release())
    run(stack, rollout(), ticks=60)  # no --sticky: the routes' own is never touched
    assert "sticky" not in [c[0] for c in stack.calls]
