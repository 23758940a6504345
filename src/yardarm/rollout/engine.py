"""The canary strategy, level-triggered: from a stored rollout, what should run and take
traffic now, and what the next analysis means for it.

A controller calls `tick` for every rollout every analysis interval. Each tick first
makes the world match the rollout as stored (`world` -> `converge`: tracks up before
traffic moves to them, traffic back before tracks stop, every effect idempotent), then
judges the step's traffic so far and returns the change to store; when that change
ends the rollout (failed, completed), the controller ticks again at once, so a rollback
takes effect as soon as it is decided. Because the world is
derived from the stored state alone, a controller that restarts mid-rollout resumes by
ticking again, and an `abort` or `promote` written by the CLI between ticks takes effect
at the next one. The change a tick returns is guarded: it applies only to the rollout
the tick saw (same id, phase and step), so it never undoes a concurrent CLI change.

Weights at a step of w percent: the canary w, a baseline of the stable version w (the
judge compares the two, equally new and equally warm), stable the rest; from 50% on the
baseline takes what stable would have had. The last step (100) promotes: the stable
track moves to the new version, all traffic goes back to it, canary and baseline stop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from yardarm.rollout.analysis import step_outcome
from yardarm.rollout.judge import JudgeConfig, Verdict, judge
from yardarm.rollout.spec import PAUSE
from yardarm.rollout.state import Rollout
from yardarm.rollout.window import TrackWindow

CANARY, BASELINE, STABLE = "canary", "baseline", "stable"
ROLLOUT_TRACKS = (CANARY, BASELINE)

Edit = Callable[[Rollout], None]


class Effects(Protocol):
    """What a target and its router do for the engine; every call is idempotent."""

    def now(self) -> float: ...

    async def ensure_tracks(self, service: str, tracks: Mapping[str, tuple[str, int]]) -> None:
        """Run each named track at (version, replicas), ready and routable on return."""

    async def stop_tracks(self, service: str, tracks: tuple[str, ...]) -> None:
        """Stop every instance of the named tracks (drained first)."""

    async def promote(self, service: str, version: str) -> None:
        """Make the stable track run `version`, recorded so `down`/`up` keeps it."""

    async def set_weights(self, service: str, weights: Mapping[str, int]) -> None:
        """Split the service's traffic by track (every route of it in one change)."""

    async def windows(self, service: str, start: float, end: float) -> Mapping[str, TrackWindow]:
        """The canary's and the baseline's traffic over [start, end]."""

    async def sample(self, service: str) -> None:
        """Take a metrics sample now, if the source needs the controller to (scrapes
        without Prometheus); called every sub-window."""


@dataclass(frozen=True)
class EngineConfig:
    replicas: int = 1  # of the canary, and of the baseline
    max_inconclusive: int = 3  # extra analyses a step may take before it fails safe


@dataclass(frozen=True)
class World:
    """What runs and takes traffic for a rollout as it stands."""

    tracks: dict[str, tuple[str, int]]  # the rollout's tracks that run
    weights: dict[str, int]
    stable_version: str


def current_weight(rollout: Rollout) -> int:
    """The weight in force at the rollout's step: a pause holds the one before it."""
    for step in reversed(rollout.spec.steps[: rollout.step + 1]):
        if step != PAUSE:
            return int(step)
    return 0


def world(rollout: Rollout, config: EngineConfig) -> World:
    """The world the stored rollout asks for."""
    spec = rollout.spec
    if rollout.phase == "completed" or (
        rollout.phase == "progressing" and current_weight(rollout) >= 100
    ):
        return World({}, {STABLE: 100}, spec.version)
    if rollout.phase in ("aborted", "failed"):
        return World({}, {STABLE: 100}, rollout.stable_version)
    weight = current_weight(rollout)
    baseline = min(weight, 100 - weight)
    tracks = {
        CANARY: (spec.version, config.replicas),
        BASELINE: (rollout.stable_version, config.replicas),
    }
    weights = {STABLE: 100 - weight - baseline, CANARY: weight, BASELINE: baseline}
    return World(tracks, weights, rollout.stable_version)


async def converge(rollout: Rollout, target: World, effects: Effects) -> None:
    """Make the world so, in an order that refuses no request: tracks that will take
    traffic start (and are ready) before any weight moves to them; weights move; only
    then do tracks that take none stop."""
    service = rollout.spec.service
    if target.tracks:
        await effects.ensure_tracks(service, target.tracks)
    if target.stable_version != rollout.stable_version:
        await effects.promote(service, target.stable_version)
    await effects.set_weights(service, target.weights)
    idle = tuple(track for track in ROLLOUT_TRACKS if track not in target.tracks)
    if idle:
        await effects.stop_tracks(service, idle)


def _guarded(seen: Rollout, edit: Edit) -> Edit:
    """`edit`, applied only to the rollout as the tick saw it."""

    as_seen = (seen.id, seen.phase, seen.step)

    def apply(stored: Rollout) -> None:
        if (stored.id, stored.phase, stored.step) == as_seen:
            edit(stored)

    return apply


def analyses_per_step(rollout: Rollout) -> int:
    return max(1, int(rollout.spec.step_duration_s // rollout.spec.analysis_interval_s))


async def tick(
    rollout: Rollout, effects: Effects, judge_config: JudgeConfig, config: EngineConfig
) -> Edit | None:
    """Converge the world to the stored rollout, then judge; the change to store."""
    await converge(rollout, world(rollout, config), effects)
    now = effects.now()
    if not rollout.running:
        return None
    if rollout.phase == "paused":
        return None
    step = rollout.spec.steps[rollout.step]
    if step == PAUSE:

        def pause(r: Rollout) -> None:
            r.phase = "paused"
            r.record(
                "paused",
                f"paused at {current_weight(r)}%: `yardarm rollout promote` goes on",
                at=now,
            )

        return _guarded(rollout, pause)
    if int(step) >= 100:

        def complete(r: Rollout) -> None:
            r.phase = "completed"
            r.stable_version = r.spec.version
            r.weights = {STABLE: 100}
            r.record("completed", f"{r.spec.service} runs {r.spec.version} on stable", at=now)

        return _guarded(rollout, complete)
    started = rollout.step_started_at
    if started is None:

        def begin(r: Rollout) -> None:
            r.step_started_at = now
            r.last_analysis_at = now
            r.weights = dict(world(r, config).weights)
            r.record(
                "step", f"step {r.step + 1}: canary at {current_weight(r)}%", at=now, step=r.step
            )

        return _guarded(rollout, begin)
    if now - (rollout.last_analysis_at or started) < rollout.spec.analysis_interval_s:
        return None
    windows = await effects.windows(rollout.spec.service, started, now)
    verdict = judge(windows[CANARY], windows[BASELINE], judge_config)
    verdicts = [*(Verdict.from_dict(v) for v in rollout.verdicts), verdict]
    decision = step_outcome(verdicts, config.max_inconclusive, analyses_per_step(rollout))

    def judged(r: Rollout) -> None:
        r.last_analysis_at = now
        r.verdicts.append(verdict.as_dict())
        r.record("verdict", f"{verdict.outcome} ({verdict.rule}): {verdict.reason}",
                 at=now, step=r.step, verdict=verdict.as_dict())  # fmt: skip
        if decision.outcome == "promote-step":
            r.step += 1
            r.step_started_at = None
            r.verdicts = []
        elif decision.outcome == "fail":
            r.phase = "failed"
            r.reason = decision.reason
            r.weights = {STABLE: 100}
            failed = windows[CANARY].errors  # the users' requests the release failed
            r.record(
                "failed",
                f"rolled back: {decision.reason}; {failed} request(s) failed on the canary "
                "in this step",
                at=now,
                canary_errors=failed,
            )

    return _guarded(rollout, judged)
