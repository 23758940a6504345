"""The rollout strategies, level-triggered: from a stored rollout, what should run and
take traffic now, and what the next analysis means for it.

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

Canary: at a step of w percent, the canary takes w, a baseline of the stable version w
(the judge compares the two, equally new and equally warm), stable the rest; from 50%
on the baseline takes what stable would have had.

A queue consumer (fulfillment) has no router: at a step of w percent the canary runs
ceil(w% of stable's instances) instances, the baseline as many, stable keeps its own,
and each takes the share of deliveries its consumers pull (Argo Rollouts' canary without
a traffic router: approximate, measured, and judged on what each track handled).

Blue-green: green runs the new version at stable's size with no weight; the same smoke
traffic goes to green and to stable (blue) through the override header and the judge
compares the two (pre-promotion); then all traffic switches to green in one write and
the comparison goes on, green's live traffic held to the guardrails (post-promotion);
blue stays up for the scale-down delay, so a rollback is one write back.

Promotion (a canary's 100%, blue-green's end): the stable track must end up running the
new version, recorded so `down`/`up` keeps it. It is replaced while it takes no traffic:
the canary (or green) runs at stable's size and takes all of it (the handover), stable
is replaced in place, then all traffic returns to stable in one write and the rollout's
tracks stop. No instance that takes traffic is ever restarted.

Rolling restart (the gateway, the datastore): the stable track runs the new version,
replaced one replica at a time by the target (a rollback is the same, backwards).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from yardarm.rollout.analysis import step_outcome
from yardarm.rollout.judge import JudgeConfig, Verdict, combine, judge, judge_guardrails
from yardarm.rollout.spec import (
    BLUE_GREEN_DELAY,
    BLUE_GREEN_PREVIEW,
    BLUE_GREEN_SWITCHED,
    PAUSE,
)
from yardarm.rollout.state import Rollout
from yardarm.rollout.window import TrackWindow

CANARY, BASELINE, STABLE, GREEN = "canary", "baseline", "stable", "green"
ROLLOUT_TRACKS = (CANARY, BASELINE, GREEN)

Edit = Callable[[Rollout], None]


class EffectFailed(RuntimeError):
    """A target could not do what the rollout asks (a new version's instances did not
    start, the router refused the change); the message says what and where to look."""


class Effects(Protocol):
    """What a target and its router do for the engine; every call is idempotent."""

    def now(self) -> float: ...

    async def ensure_tracks(self, service: str, tracks: Mapping[str, tuple[str, int]]) -> None:
        """Run each named track at (version, replicas), ready and routable on return."""

    async def stop_tracks(self, service: str, tracks: tuple[str, ...]) -> None:
        """Stop every instance of the named tracks (drained first)."""

    def replicas(self, service: str) -> int:
        """How many instances the service's stable track runs."""

    def stable_version(self, service: str) -> str:
        """The version the service's stable track is set to run."""

    async def promote(self, service: str, version: str) -> None:
        """Make the stable track run `version`, recorded so `down`/`up` keeps it; its
        instances are replaced one at a time."""

    async def set_weights(
        self, service: str, weights: Mapping[str, int], sticky: str | None = None
    ) -> None:
        """Split the service's traffic by track (every route of it in one change);
        `sticky` (`header:NAME`, `cookie:NAME`) keeps each client on one track, "" takes
        that away, None leaves the routes' own."""

    async def windows(
        self, service: str, start: float, end: float, tracks: tuple[str, ...]
    ) -> Mapping[str, TrackWindow]:
        """Each named track's live traffic over [start, end]."""

    async def smoke(self, service: str, tracks: tuple[str, ...]) -> None:
        """Send smoke traffic to exactly these tracks from now on (none: stop)."""

    def smoke_windows(
        self, service: str, start: float, end: float, tracks: tuple[str, ...]
    ) -> Mapping[str, TrackWindow]:
        """What each track's smoke requests got over [start, end]."""

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
    weights: dict[str, int] | None  # None: the service is not routed by weights
    stable_version: str
    handover: str | None = None  # takes all traffic while stable is replaced
    smoke: tuple[str, ...] = ()  # tracks that get smoke traffic (blue-green)
    sticky: str | None = None  # with the weights (`Effects.set_weights`)

    def expected_shares(self, stable_replicas: int) -> dict[str, float]:
        """Each track's share of a consumer's deliveries, in percent, if every instance
        pulls alike (what a rollout by instances calls the tracks' weights)."""
        counts = {STABLE: stable_replicas} | {t: n for t, (_, n) in self.tracks.items()}
        total = sum(counts.values())
        return {t: 100.0 * n / total for t, n in counts.items()} if total else {}


def current_weight(rollout: Rollout) -> int:
    """The weight in force at a canary's step: a pause holds the one before it."""
    for step in reversed(rollout.spec.steps[: rollout.step + 1]):
        if step != PAUSE:
            return int(step)
    return 0


def promoting(rollout: Rollout) -> bool:
    """Whether the rollout stands at its promotion: the stable track moves now."""
    return rollout.phase == "progressing" and (
        rollout.step >= rollout.spec.last_step
        if rollout.spec.strategy == "blue-green" or rollout.spec.rolls_by == "restart"
        else current_weight(rollout) >= 100
    )


def canary_instances(weight: int, stable_replicas: int) -> int:
    """A consumer canary's instances at a step of `weight` percent: that share of
    stable's instances, rounded up (at least one)."""
    return max(1, math.ceil(stable_replicas * weight / 100))


def world(rollout: Rollout, config: EngineConfig, stable_replicas: int = 1) -> World:
    """The world the stored rollout asks for."""
    spec = rollout.spec
    weighted = spec.rolls_by == "weights"
    back = {STABLE: 100} if weighted else None
    # A rollout's sticky key lasts as long as the rollout: off with the last split.
    unstick = None if spec.sticky is None else ""
    if rollout.phase in ("aborted", "failed"):
        return World({}, back, rollout.stable_version, sticky=unstick)
    if rollout.phase == "completed":
        return World({}, back, spec.version, sticky=unstick)
    if promoting(rollout):
        handover = None
        if spec.rolls_by != "restart":  # a rolling restart replaces stable in place
            handover = GREEN if spec.strategy == "blue-green" else CANARY
        return World({}, back, spec.version, handover=handover, sticky=unstick)
    if spec.strategy == "blue-green":
        green = {GREEN: (spec.version, stable_replicas)}
        if rollout.step == BLUE_GREEN_PREVIEW:
            return World(green, {STABLE: 100, GREEN: 0}, rollout.stable_version,
                         smoke=(GREEN, STABLE))  # fmt: skip
        smoke = (GREEN, STABLE) if rollout.step == BLUE_GREEN_SWITCHED else ()
        return World(green, {STABLE: 0, GREEN: 100}, rollout.stable_version, smoke=smoke)
    weight = current_weight(rollout)
    if spec.rolls_by == "instances":
        n = canary_instances(weight, stable_replicas)
        tracks = {CANARY: (spec.version, n), BASELINE: (rollout.stable_version, n)}
        return World(tracks, None, rollout.stable_version)
    baseline = min(weight, 100 - weight)
    tracks = {
        CANARY: (spec.version, config.replicas),
        BASELINE: (rollout.stable_version, config.replicas),
    }
    weights = {STABLE: 100 - weight - baseline, CANARY: weight, BASELINE: baseline}
    return World(tracks, weights, rollout.stable_version, sticky=spec.sticky)


Reread = Callable[[], Awaitable["Rollout | None"]]


class Superseded(Exception):
    """The stored rollout changed while the world was converging to it (an `abort` or
    `promote` landed during a slow start): the rest of that convergence is dropped."""


async def converge(
    rollout: Rollout, target: World, effects: Effects, reread: Reread | None = None
) -> None:
    """Make the world so, in an order that refuses no request: tracks that will take
    traffic start (and are ready) before any weight moves to them; the stable track is
    replaced only while another track takes all its traffic; weights move; only then do
    tracks that take none stop.

    Starting instances takes seconds; after each start `reread` (the stored rollout)
    says whether the rollout is still the one being converged to, so an abort that lands
    meanwhile never sees traffic moved to the tracks it is taking away."""
    service = rollout.spec.service

    async def still_current() -> None:
        if reread is not None and running_as(await reread()) != running_as(rollout):
            raise Superseded

    if target.tracks:
        await effects.ensure_tracks(service, target.tracks)
        await still_current()
    await effects.smoke(service, target.smoke)  # to tracks that run, and before they stop
    if target.stable_version != effects.stable_version(service):
        if target.handover is not None:
            size = effects.replicas(service)
            await effects.ensure_tracks(service, {target.handover: (target.stable_version, size)})
            await still_current()
            if target.weights is not None:
                await effects.set_weights(service, {target.handover: 100})
        await effects.promote(service, target.stable_version)
    if target.weights is not None:
        await effects.set_weights(service, target.weights, target.sticky)
    idle = tuple(track for track in ROLLOUT_TRACKS if track not in target.tracks)
    await effects.stop_tracks(service, idle)


def running_as(rollout: Rollout | None) -> tuple[str, str, int] | None:
    """What a guarded change and a convergence are for: the rollout, its phase, its step."""
    return None if rollout is None else (rollout.id, rollout.phase, rollout.step)


def _guarded(seen: Rollout, edit: Edit) -> Edit:
    """`edit`, applied only to the rollout as the tick saw it."""

    as_seen = running_as(seen)

    def apply(stored: Rollout) -> None:
        if running_as(stored) == as_seen:
            edit(stored)

    return apply


def analyses_per_step(rollout: Rollout) -> int:
    return max(1, int(rollout.spec.step_duration_s // rollout.spec.analysis_interval_s))


def _step_message(rollout: Rollout, target: World) -> str:
    spec = rollout.spec
    if spec.rolls_by == "instances":
        n = target.tracks[CANARY][1]
        shares = target.expected_shares(rollout.stable_replicas)
        return (
            f"step {rollout.step + 1}: canary at {current_weight(rollout)}%: {n} canary and "
            f"{n} baseline instance(s) beside {rollout.stable_replicas} stable, about "
            f"{shares[CANARY]:.0f}% of deliveries each"
        )
    if spec.strategy != "blue-green":
        return f"step {rollout.step + 1}: canary at {current_weight(rollout)}%"
    return {
        BLUE_GREEN_PREVIEW: f"green runs {spec.version} at full size with no traffic; the "
        "same smoke traffic goes to green and blue (pre-promotion analysis)",
        BLUE_GREEN_SWITCHED: "switched: all traffic on green (post-promotion analysis)",
        BLUE_GREEN_DELAY: f"blue kept for {spec.scale_down_delay_s:g}s: a rollback is instant",
    }.get(rollout.step, f"stage {rollout.step}")


@dataclass(frozen=True)
class Analysis:
    verdict: Verdict
    user_failures: int  # users' requests that failed on the new version in the step


async def analyse(
    rollout: Rollout,
    effects: Effects,
    judge_config: JudgeConfig,
    start: float,
    end: float,
    shares: Mapping[str, float] | None = None,
) -> Analysis:
    """One analysis of the step's traffic over [start, end].

    Canary: the canary against its baseline, both on live traffic. Blue-green: green's
    smoke requests against stable's (the same requests, timed where they are sent), with
    the gateway's view of green's availability, and everything green served (smoke
    before the switch, users' traffic after it) against the guardrails, timed by green's
    own servers. `shares` (a rollout by instances) are the tracks' expected shares of
    the deliveries, the weights the judge holds them to.
    """
    service = rollout.spec.service
    if rollout.spec.strategy != "blue-green":
        pair = dict(await effects.windows(service, start, end, (CANARY, BASELINE)))
        if shares is not None:  # no split to read: a track's weight is its share
            pair = {t: replace(w, weight=shares.get(t, 0.0)) for t, w in pair.items()}
        verdict = judge(pair[CANARY], pair[BASELINE], judge_config)
        return Analysis(verdict, pair[CANARY].errors)
    live = await effects.windows(service, start, end, (GREEN, STABLE))
    smoke = effects.smoke_windows(service, start, end, (GREEN, STABLE))
    green = replace(smoke[GREEN], unavailable=live[GREEN].unavailable)
    stable = replace(smoke[STABLE], unavailable=live[STABLE].unavailable)
    compared = judge(green, stable, judge_config, guardrails=False)
    verdict = combine(compared, judge_guardrails(live[GREEN], judge_config))
    switched = rollout.step == BLUE_GREEN_SWITCHED
    return Analysis(verdict, live[GREEN].errors if switched else 0)


async def tick(
    rollout: Rollout,
    effects: Effects,
    judge_config: JudgeConfig,
    config: EngineConfig,
    reread: Reread | None = None,
) -> Edit | None:
    """Converge the world to the stored rollout, then judge; the change to store (None
    also when the rollout changed meanwhile: the caller ticks again on what is stored)."""
    spec = rollout.spec
    stable_replicas = effects.replicas(spec.service)  # read once per tick
    target = world(rollout, config, stable_replicas)
    try:
        await converge(rollout, target, effects, reread)
    except Superseded:
        return None
    except EffectFailed as exc:
        if not rollout.running:
            raise  # already going back: the controller tries again
        at, why = effects.now(), str(exc)

        def failed_safe(r: Rollout) -> None:
            r.phase = "failed"
            r.reason = why
            r.weights = {STABLE: 100} if r.spec.rolls_by == "weights" else {}
            r.record("failed", f"rolled back: {why}", at=at)

        return _guarded(rollout, failed_safe)
    now = effects.now()
    if not rollout.running or rollout.phase == "paused":
        return None
    if promoting(rollout):

        def complete(r: Rollout) -> None:
            r.phase = "completed"
            r.stable_version = r.spec.version
            r.weights = {STABLE: 100} if r.spec.rolls_by == "weights" else {}
            r.record("completed", f"{r.spec.service} runs {r.spec.version} on stable", at=now)

        return _guarded(rollout, complete)
    if spec.strategy == "canary" and spec.steps[rollout.step] == PAUSE:

        def pause(r: Rollout) -> None:
            r.phase = "paused"
            r.record(
                "paused",
                f"paused at {current_weight(r)}%: `yardarm rollout promote` goes on",
                at=now,
            )

        return _guarded(rollout, pause)
    started = rollout.step_started_at
    if started is None:

        def begin(r: Rollout) -> None:
            r.step_started_at = now
            r.last_analysis_at = now
            r.stable_replicas = stable_replicas
            began = world(r, config, stable_replicas)
            r.weights = dict(began.weights or {})
            r.record("step", _step_message(r, began), at=now, step=r.step)

        return _guarded(rollout, begin)
    if spec.strategy == "blue-green" and rollout.step == BLUE_GREEN_DELAY:
        if now - started < spec.scale_down_delay_s:
            return None

        def delayed(r: Rollout) -> None:
            r.step += 1
            r.step_started_at = None

        return _guarded(rollout, delayed)
    if now - (rollout.last_analysis_at or started) < spec.analysis_interval_s:
        return None
    by_instances = spec.rolls_by == "instances"
    shares = target.expected_shares(stable_replicas) if by_instances else None
    analysis = await analyse(rollout, effects, judge_config, started, now, shares)
    verdict = analysis.verdict
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
            r.weights = {STABLE: 100} if r.spec.rolls_by == "weights" else {}
            failed = analysis.user_failures
            r.record(
                "failed",
                f"rolled back: {decision.reason}; {failed} user request(s) failed on "
                f"{spec.version} in this step",
                at=now,
                user_failures=failed,
            )

    return _guarded(rollout, judged)
