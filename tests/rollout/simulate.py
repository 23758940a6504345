"""Seeded canary and baseline windows, shaped like the metrics source's.

One simulated step: route traffic arrives as a Poisson process and is split by weight
(canary and baseline at equal weight, stable the rest); each track's errors are
binomial; each instance has its own median latency (the service's median, drawn per
step, times a lognormal per-instance factor) and its requests are lognormal around it.
Latency points are what the metrics source reads: per instance and sub-window, the
p50 and p90 that Prometheus' `histogram_quantile` gives over the kit's buckets.
Windows are cumulative from the step's start, one per look.

`uv run python -m tests.rollout.simulate` prints the experiments of docs/rollouts.md
(`... simulate STEPS SEED`: only the identical version, longer).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from yardarm_kit.metrics import LATENCY_BUCKETS

from yardarm.red import histogram_quantile
from yardarm.rollout.metrics_source import QUANTILES
from yardarm.rollout.window import TrackWindow

BOUNDS = np.array([*LATENCY_BUCKETS, math.inf])


@dataclass(frozen=True)
class Release:
    """How a version behaves: its error ratio and the latency it adds to every request."""

    error_ratio: float = 0.005
    extra_latency_s: float = 0.0


STABLE = Release()


@dataclass(frozen=True)
class Traffic:
    route_rps: float = 100.0
    weight: float = 10.0  # the canary's, and the baseline's
    instances: int = 1  # per track
    sub_window_s: float = 2.0
    looks_s: tuple[float, ...] = (10.0, 20.0, 30.0)
    median_range_s: tuple[float, float] = (0.010, 0.020)
    instance_sigma: float = 0.15  # instance medians vary by about +-15%
    request_sigma: float = 0.4  # p99 about 2.5 times the median

    @property
    def per_track_rps(self) -> float:
        return self.route_rps * self.weight / 100.0


@dataclass
class _Track:
    release: Release
    medians: np.ndarray
    requests: int = 0
    errors: int = 0
    points: list[float] = field(default_factory=list)


def step_windows(
    rng: np.random.Generator, traffic: Traffic, canary: Release, baseline: Release = STABLE
) -> list[tuple[TrackWindow, TrackWindow]]:
    """(canary, baseline) windows at each of `traffic.looks_s`, cumulative."""
    service_median = rng.uniform(*traffic.median_range_s)
    tracks = {
        name: _Track(
            release,
            service_median * np.exp(rng.normal(0.0, traffic.instance_sigma, traffic.instances)),
        )
        for name, release in (("canary", canary), ("baseline", baseline))
    }
    split = [traffic.weight / 100.0] * 2 + [1.0 - 2 * traffic.weight / 100.0]
    even = [1.0 / traffic.instances] * traffic.instances
    looks = {round(t / traffic.sub_window_s) for t in traffic.looks_s}
    route = 0
    out = []
    for sub in range(1, max(looks) + 1):
        arrived = int(rng.poisson(traffic.route_rps * traffic.sub_window_s))
        route += arrived
        for track, n in zip(tracks.values(), rng.multinomial(arrived, split)[:2], strict=True):
            track.requests += int(n)
            track.errors += int(rng.binomial(n, track.release.error_ratio))
            for median, k in zip(track.medians, rng.multinomial(n, even), strict=True):
                if k:
                    track.points.extend(_points(rng, float(median), int(k), track.release, traffic))
        if sub in looks:
            out.append(tuple(_window(name, t, traffic, route) for name, t in tracks.items()))
    return out  # type: ignore[return-value]


def _points(
    rng: np.random.Generator, median: float, k: int, release: Release, traffic: Traffic
) -> Iterator[float]:
    latency = rng.lognormal(math.log(median), traffic.request_sigma, k)
    latencies = np.sort(latency) + release.extra_latency_s
    cumulative = np.searchsorted(latencies, BOUNDS, side="right")
    buckets = dict(zip(BOUNDS.tolist(), cumulative.tolist(), strict=True))
    for q in QUANTILES:
        point = histogram_quantile(q, buckets)
        if point is not None:
            yield point


def _window(name: str, track: _Track, traffic: Traffic, route: int) -> TrackWindow:
    return TrackWindow(
        track=name,
        requests=track.requests,
        errors=track.errors,
        latency_points=tuple(track.points),
        weight=traffic.weight,
        share=100.0 * track.requests / route if route else 0.0,
        route_requests=route,
    )


# -- the experiments of docs/rollouts.md ----------------------------------------------


def _identical(steps: int, seed: int) -> None:
    from collections import Counter

    from yardarm.rollout.judge import JudgeConfig, judge

    config = JudgeConfig.for_service("orders")
    rng = np.random.default_rng(seed)
    mix = [
        Traffic(route_rps=r, weight=w, instances=i)
        for r in (50.0, 100.0, 200.0)
        for w in (10.0, 25.0, 50.0)
        for i in (1, 2)
    ]
    outcomes: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    floors: Counter[str] = Counter()
    shifts = []
    for step in range(steps):
        for canary, baseline in step_windows(rng, mix[step % len(mix)], STABLE):
            verdict = judge(canary, baseline, config)
            outcomes[verdict.outcome] += 1
            rules[verdict.rule] += 1
            floors.update(c.rule for c in verdict.checks if c.rule.endswith("effect-floor"))
            shift = verdict.check("latency").numbers.get("shift_ms")
            if isinstance(shift, float):
                shifts.append(shift)
    total = sum(outcomes.values())
    print(f"identical version, {steps} steps x 3 looks = {total} analyses: {dict(outcomes)}")
    print(f"  deciding rules: {dict(rules)}")
    print(f"  significant but under the effect floors: {dict(floors)}")
    q = np.quantile(np.abs(shifts), [0.5, 0.99, 1.0]).round(1).tolist()
    print(f"  |Hodges-Lehmann shift| ms, median / p99 / max: {q}")


def _errors_power(trials: int) -> None:
    from yardarm.rollout.judge import JudgeConfig, judge

    config = JudgeConfig.for_service("orders")
    looks = (10.0, 20.0, 30.0, 40.0, 60.0)
    print(f"+5 pp errors, 10% weight, share of {trials} steps failed by {looks} s:")
    for base in (0.005, 0.0):
        for rps in (50.0, 100.0, 150.0, 200.0):
            rng = np.random.default_rng(11)
            traffic = Traffic(route_rps=rps, weight=10.0, looks_s=looks)
            first = [0] * len(looks)
            for _ in range(trials):
                windows = step_windows(rng, traffic, Release(base + 0.05), Release(base))
                for i, (canary, baseline) in enumerate(windows):
                    if judge(canary, baseline, config).outcome == "fail":
                        first[i] += 1
                        break
            by = np.cumsum(first) / trials
            print(f"  base {base:.1%}, {rps * 0.1:g} req/s per track: {by.round(3).tolist()}")


def _latency(trials: int) -> None:
    from collections import Counter

    from yardarm.rollout.judge import JudgeConfig, judge

    config = JudgeConfig.for_service("orders")
    rng = np.random.default_rng(100)
    for extra in (0.100, 0.030, 0.002):
        caught: Counter[str] = Counter()
        for trial in range(trials):
            traffic = Traffic(route_rps=100.0, weight=10.0, instances=1 + trial % 2)
            for look, (c, b) in enumerate(
                step_windows(rng, traffic, Release(extra_latency_s=extra))
            ):
                verdict = judge(c, b, config)
                if verdict.outcome == "fail":
                    caught[f"{verdict.rule} at {10 * (look + 1)} s"] += 1
                    break
        print(f"+{extra * 1000:g} ms, 10 req/s per track, {trials} steps: {dict(caught)}")


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3:  # a longer run of the identical version: STEPS SEED
        _identical(int(sys.argv[1]), int(sys.argv[2]))
    else:
        _identical(3000, 20240601)
        _errors_power(300)
        _latency(300)
