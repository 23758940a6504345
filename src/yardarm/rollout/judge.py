"""The rollout judge: one analysis of a canary against its baseline over one window.

Pure and deterministic: two `TrackWindow`s and a `JudgeConfig` in, a `Verdict` out, so
the controller, the tests and a replay of recorded windows all get the same answer.
Every check runs and reports its numbers; the verdict is decided in this order, the first
failing check deciding:

1. `unavailable`: the gateway keeps canary endpoints from traffic (ejected, failing
   health checks, circuit open). A fail, never "too few samples": a gateway that hides a
   failing canary must not turn its failure into silence.
2. `starved`: the canary receives much less than its weight while the routes had
   traffic (an exact binomial test, so a small window's noise is not starvation).
3. `no-traffic` / `minimum-requests`: too little traffic on either track. Inconclusive,
   never a pass.
4. `error-rate`: Fisher's exact test, one-sided (canary worse), exact at any count and
   with a baseline that has no errors; fails only when significant AND the increase
   clears both the absolute and the relative floor. Being exact, it may fail a canary
   before the minimum request count (10 errors in 10 requests need no more traffic).
5. `latency`: Mann-Whitney U, one-sided, over latency points, with the Hodges-Lehmann
   shift as effect size; fails only when significant AND the shift clears both floors.
   Points of one instance are correlated, so p-values run small: the floors, not alpha,
   keep per-instance variation from failing a good release.
6. `guardrail-error-ratio`, `guardrail-latency`: absolute ceilings from the SLOs, for a
   canary that is as bad as its baseline but bad in itself.

A verdict passes only when every check passes; it is inconclusive when none fails and
one is inconclusive (the rule is the first inconclusive check's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast

from yardarm.observability.rules.slo import BURN_ALERTS, SLOS
from yardarm.rollout import stats
from yardarm.rollout.window import TrackWindow

Outcome = Literal["pass", "fail", "inconclusive"]
Number = int | float | str | None
ALL_PASS = "all-checks-pass"


@dataclass(frozen=True, kw_only=True)
class JudgeConfig:
    """How sure the judge must be, and how large a difference must be, to fail a canary.

    The guardrails are per service: `JudgeConfig.for_service(name)` takes them from the
    SLO table. The other defaults are argued in docs/rollouts.md ("The judge").
    """

    guardrail_error_ratio: float  # canary error ratio ceiling (0.072 = 7.2%)
    guardrail_latency_s: float  # ceiling for the high latency points
    # One-sided test levels. Exact tests at small counts are conservative, and the effect
    # floors below come on top, so false fails per analysis are far rarer than these.
    alpha_errors: float = 0.01
    alpha_latency: float = 0.01
    alpha_share: float = 0.01
    # A pass needs this many requests on each track: the error test's power against
    # +5 points over a 0.5% base is about 80% there.
    min_requests: int = 250
    # And this many latency points per track (10 sub-windows' p50 and p90 of one instance).
    min_latency_points: int = 20
    # Error increases under 2 points, or under half the baseline's ratio, never fail the
    # error rule: at a 0.5% base, smaller observed increases are Poisson noise at the
    # window sizes rollouts see (a 1-point floor failed 6 of 9000 identical analyses).
    min_error_increase_pp: float = 2.0
    min_error_increase_relative: float = 0.5
    # Latency shifts under 25 ms, or under half the baseline's median point, never fail:
    # one instance against another (and the kit's coarse buckets) differ that much.
    min_latency_shift_ms: float = 25.0
    min_latency_shift_relative: float = 0.5
    # A canary receiving under half its weight is starved.
    starved_share_ratio: float = 0.5
    # The latency guardrail reads this quantile of the canary's points (p50 and p90 per
    # instance and sub-window: about the typical p90, a few noisy sub-windows aside).
    guardrail_latency_quantile: float = 0.9

    def __post_init__(self) -> None:
        problems = []
        for name in ("alpha_errors", "alpha_latency", "alpha_share"):
            if not 0.0 < getattr(self, name) <= 0.5:
                problems.append(f"{name} must be in (0, 0.5], got {getattr(self, name)}")
        for name in ("min_requests", "min_latency_points"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "min_error_increase_pp",
            "min_error_increase_relative",
            "min_latency_shift_ms",
            "min_latency_shift_relative",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                problems.append(f"{name} must be a number >= 0, got {value}")
        if not 0.0 < self.guardrail_error_ratio < 1.0:
            problems.append(
                f"guardrail_error_ratio must be in (0, 1), got {self.guardrail_error_ratio}"
            )
        if not (math.isfinite(self.guardrail_latency_s) and self.guardrail_latency_s > 0.0):
            problems.append(f"guardrail_latency_s must be > 0, got {self.guardrail_latency_s}")
        for name in ("starved_share_ratio", "guardrail_latency_quantile"):
            if not 0.0 < getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def for_service(cls, service: str, **overrides: Any) -> JudgeConfig:
        """The defaults, with guardrails from `service`'s SLOs: the error ceiling is the
        error budget burnt as fast as the fastest page alert burns it (14.4 x 0.5% = 7.2%
        for orders), the latency ceiling the latency SLI's threshold (500 ms)."""
        for slo in SLOS:
            if slo.service == service:
                fastest = max(burn.factor for burn in BURN_ALERTS)
                assert slo.latency.threshold_s is not None
                settings: dict[str, Any] = {
                    "guardrail_error_ratio": round(slo.availability.budget * fastest, 10),
                    "guardrail_latency_s": slo.latency.threshold_s,
                }
                return cls(**(settings | overrides))
        known = ", ".join(slo.service for slo in SLOS)
        raise ValueError(f"no SLO for service {service!r}: known services are {known}")

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Check:
    """One check's outcome, the rule that decided it, and the numbers behind it."""

    name: str
    outcome: Outcome
    rule: str
    detail: str
    numbers: dict[str, Number] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome,
            "rule": self.rule,
            "detail": self.detail,
            "numbers": dict(self.numbers),
        }


@dataclass(frozen=True)
class Verdict:
    """One analysis: pass, fail or inconclusive, the rule that decided, every check."""

    outcome: Outcome
    rule: str
    checks: tuple[Check, ...]

    @property
    def reason(self) -> str:
        """The deciding check's explanation, for `rollout status` and `history`."""
        if self.outcome == "pass":
            return "every check passed"
        return next(c.detail for c in self.checks if c.outcome == self.outcome)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "rule": self.rule,
            "reason": self.reason,
            "checks": [c.as_dict() for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """A verdict read back from `as_dict()` (rollout history in the datastore)."""
        checks = tuple(
            Check(c["name"], c["outcome"], c["rule"], c["detail"], dict(c["numbers"]))
            for c in data["checks"]
        )
        return cls(cast(Outcome, data["outcome"]), str(data["rule"]), checks)


def judge(
    canary: TrackWindow, baseline: TrackWindow, config: JudgeConfig, *, guardrails: bool = True
) -> Verdict:
    """Compare `canary` with `baseline` (same window, started together) under `config`.

    `guardrails=False` leaves out the absolute ceilings: for windows measured where the
    requests are sent (blue-green's smoke), whose latency includes the sender's own
    delays; the ceilings then apply to the server's view (`judge_guardrails`)."""
    checks: tuple[Check, ...] = (
        _availability(canary, baseline),
        _share(canary, baseline, config),
        _traffic(canary, baseline, config),
        _errors(canary, baseline, config),
        _latency(canary, baseline, config),
    )
    if guardrails:
        checks += (_guardrail_errors(canary, config), _guardrail_latency(canary, config))
    return _decide(checks)


def judge_guardrails(window: TrackWindow, config: JudgeConfig) -> Verdict:
    """`window` on its own, against the absolute rules only (availability, enough
    requests, the SLO guardrails): for traffic that has no like-for-like reference, such
    as green's live traffic after a blue-green switch."""
    traffic: Check
    if window.requests < config.min_requests:
        traffic = Check(
            "traffic",
            "inconclusive",
            "no-traffic" if window.requests == 0 else "minimum-requests",
            f"too few {window.track} requests ({window.requests}; {config.min_requests} needed)",
            {"requests": window.requests, "min_requests": config.min_requests},
        )
    else:
        traffic = Check("traffic", "pass", "minimum-requests", "enough requests",
                        {"requests": window.requests})  # fmt: skip
    checks = (
        _availability(window),
        traffic,
        _guardrail_errors(window, config),
        _guardrail_latency(window, config),
    )
    return _decide(tuple(Check(f"live-{c.name}", c.outcome, c.rule, c.detail, c.numbers)
                         for c in checks))  # fmt: skip


def combine(*verdicts: Verdict) -> Verdict:
    """Several analyses of one interval as one verdict: every check, decided as `judge`
    decides (the first failing check, else the first inconclusive one)."""
    return _decide(tuple(c for v in verdicts for c in v.checks))


def _decide(checks: tuple[Check, ...]) -> Verdict:
    for wanted in ("fail", "inconclusive"):
        for check in checks:
            if check.outcome == wanted:
                return Verdict(check.outcome, check.rule, checks)
    return Verdict("pass", ALL_PASS, checks)


# -- the checks, in the order that decides ------------------------------------------


def _availability(canary: TrackWindow, baseline: TrackWindow | None = None) -> Check:
    if canary.unavailable:
        hidden = "; ".join(canary.unavailable)
        numbers: dict[str, Number] = {"unavailable": hidden}
        if baseline is not None and baseline.unavailable:
            # Both hidden: the machine or a shared dependency, not the release.
            both = "; ".join(baseline.unavailable)
            return Check(
                "availability",
                "inconclusive",
                "unavailable-both",
                f"the gateway keeps both tracks from traffic ({canary.track}: {hidden}; "
                f"{baseline.track}: {both}): the environment, not the release",
                numbers | {"baseline_unavailable": both},
            )
        return Check(
            "availability",
            "fail",
            "unavailable",
            f"the gateway keeps the {canary.track} from traffic: {hidden}",
            numbers,
        )
    return Check(
        "availability", "pass", "unavailable", f"every {canary.track} endpoint takes traffic"
    )


def route_requests(canary: TrackWindow, baseline: TrackWindow) -> int:
    """Every track's requests on the routes: as counted, or from a track's requests and
    share, or at least what the two tracks got."""
    both = canary.requests + baseline.requests
    for window in (canary, baseline):
        if window.route_requests > 0:
            return max(window.route_requests, both)
    for window in (baseline, canary):
        if window.share > 0 and window.requests > 0:
            return max(round(window.requests * 100.0 / window.share), both)
    return both


def _share(canary: TrackWindow, baseline: TrackWindow, config: JudgeConfig) -> Check:
    if canary.weight <= 0:
        return Check("share", "pass", "starved", "the split gives the canary no weight")
    routes = route_requests(canary, baseline)
    floor = config.starved_share_ratio * canary.weight
    numbers: dict[str, Number] = {
        "weight": canary.weight,
        "route_requests": routes,
        "canary_requests": canary.requests,
        "share_floor": floor,
    }
    if routes == 0:
        return Check("share", "inconclusive", "no-traffic", "no traffic on the routes yet", numbers)
    share = 100.0 * canary.requests / routes
    numbers["share"] = share
    got = f"the canary got {share:.1f}% of {routes} requests for a weight of {canary.weight:g}%"
    if share >= floor:
        return Check("share", "pass", "starved", got, numbers)
    p = stats.binomial_p(min(canary.requests, routes), routes, floor / 100.0, "less")
    numbers |= {"p_value": p, "alpha": config.alpha_share}
    if p < config.alpha_share:
        return Check(
            "share",
            "fail",
            "starved",
            f"{got}: starved (p={p:.2g} < {config.alpha_share:g})",
            numbers,
        )
    return Check(
        "share",
        "inconclusive",
        "starved",
        f"{got}: too few requests to call it starved",
        numbers,
    )


def _traffic(canary: TrackWindow, baseline: TrackWindow, config: JudgeConfig) -> Check:
    numbers: dict[str, Number] = {
        "canary_requests": canary.requests,
        "baseline_requests": baseline.requests,
        "min_requests": config.min_requests,
    }
    if canary.requests == 0 and baseline.requests == 0:
        return Check("traffic", "inconclusive", "no-traffic", "no traffic on either track", numbers)
    short = [w for w in (canary, baseline) if w.requests < config.min_requests]
    if short:
        few = ", ".join(f"{w.track} {w.requests}" for w in short)
        return Check(
            "traffic",
            "inconclusive",
            "minimum-requests",
            f"too few requests ({few}; {config.min_requests} needed per track)",
            numbers,
        )
    return Check("traffic", "pass", "minimum-requests", "enough requests on both tracks", numbers)


def _errors(canary: TrackWindow, baseline: TrackWindow, config: JudgeConfig) -> Check:
    c, b = canary.error_ratio, baseline.error_ratio
    numbers: dict[str, Number] = {
        "canary_requests": canary.requests,
        "canary_errors": canary.errors,
        "canary_error_ratio": c,
        "baseline_requests": baseline.requests,
        "baseline_errors": baseline.errors,
        "baseline_error_ratio": b,
        "min_increase_pp": config.min_error_increase_pp,
        "min_increase_relative": config.min_error_increase_relative,
        "alpha": config.alpha_errors,
    }
    if canary.requests == 0 or baseline.requests == 0:
        return Check(
            "errors", "inconclusive", "minimum-requests", "no requests to compare", numbers
        )
    effect_pp = (c - b) * 100.0
    relative = (c - b) / b if b > 0 else None
    p = stats.fisher_greater(canary.errors, canary.requests, baseline.errors, baseline.requests)
    numbers |= {"increase_pp": effect_pp, "increase_relative": relative, "p_value": p}
    clears = effect_pp >= config.min_error_increase_pp and (
        c > 0 if relative is None else relative >= config.min_error_increase_relative
    )
    seen = (
        f"canary {canary.errors}/{canary.requests} errors ({c:.2%}) vs baseline "
        f"{baseline.errors}/{baseline.requests} ({b:.2%}): {effect_pp:+.2f} pp, p={p:.2g}"
    )
    if p < config.alpha_errors and clears:
        return Check("errors", "fail", "error-rate", f"{seen} < {config.alpha_errors:g}", numbers)
    if min(canary.requests, baseline.requests) < config.min_requests:
        return Check(
            "errors", "inconclusive", "minimum-requests", f"{seen}; too few requests", numbers
        )
    if p < config.alpha_errors:
        floors = f"{config.min_error_increase_pp:g} pp and {config.min_error_increase_relative:.0%}"
        return Check(
            "errors",
            "pass",
            "error-effect-floor",
            f"{seen}, but under the {floors} floors",
            numbers,
        )
    return Check("errors", "pass", "error-rate", seen, numbers)


def _points(window: TrackWindow) -> list[float]:
    return [p for p in window.latency_points if math.isfinite(p) and p >= 0.0]


def _latency(canary: TrackWindow, baseline: TrackWindow, config: JudgeConfig) -> Check:
    x, y = _points(canary), _points(baseline)
    numbers: dict[str, Number] = {
        "canary_points": len(x),
        "baseline_points": len(y),
        "min_points": config.min_latency_points,
        "min_shift_ms": config.min_latency_shift_ms,
        "min_shift_relative": config.min_latency_shift_relative,
        "alpha": config.alpha_latency,
    }
    if x:
        numbers["canary_median_ms"] = stats.median(x) * 1000.0
    if y:
        numbers["baseline_median_ms"] = stats.median(y) * 1000.0
    if min(len(x), len(y)) < config.min_latency_points:
        return Check(
            "latency",
            "inconclusive",
            "minimum-latency-points",
            f"too few latency points (canary {len(x)}, baseline {len(y)}; "
            f"{config.min_latency_points} needed per track)",
            numbers,
        )
    p = stats.mann_whitney_greater(x, y)
    shift_ms = stats.hodges_lehmann_shift(x, y) * 1000.0
    base_ms = stats.median(y) * 1000.0
    relative = shift_ms / base_ms if base_ms > 0 else None
    numbers |= {"shift_ms": shift_ms, "shift_relative": relative, "p_value": p}
    clears = shift_ms >= config.min_latency_shift_ms and (
        shift_ms > 0 if relative is None else relative >= config.min_latency_shift_relative
    )
    seen = (
        f"canary points {shift_ms:+.1f} ms (Hodges-Lehmann) over a baseline median of "
        f"{base_ms:.1f} ms, p={p:.2g}"
    )
    if p < config.alpha_latency and clears:
        return Check("latency", "fail", "latency", f"{seen} < {config.alpha_latency:g}", numbers)
    if p < config.alpha_latency:
        floors = f"{config.min_latency_shift_ms:g} ms and {config.min_latency_shift_relative:.0%}"
        return Check(
            "latency",
            "pass",
            "latency-effect-floor",
            f"{seen}, but under the {floors} floors",
            numbers,
        )
    return Check("latency", "pass", "latency", seen, numbers)


def _guardrail_errors(canary: TrackWindow, config: JudgeConfig) -> Check:
    ceiling = config.guardrail_error_ratio
    ratio = canary.error_ratio
    numbers: dict[str, Number] = {
        "canary_requests": canary.requests,
        "canary_errors": canary.errors,
        "canary_error_ratio": ratio,
        "ceiling": ceiling,
        "alpha": config.alpha_errors,
    }
    if canary.requests == 0:
        return Check(
            "guardrail-errors",
            "inconclusive",
            "minimum-requests",
            f"no {canary.track} requests",
            numbers,
        )
    p = stats.binomial_p(canary.errors, canary.requests, ceiling, "greater")
    numbers["p_value"] = p
    seen = f"{canary.track} error ratio {ratio:.2%} against a ceiling of {ceiling:.2%}, p={p:.2g}"
    if ratio > ceiling and p < config.alpha_errors:
        return Check("guardrail-errors", "fail", "guardrail-error-ratio", seen, numbers)
    if canary.requests < config.min_requests:
        return Check(
            "guardrail-errors",
            "inconclusive",
            "minimum-requests",
            f"{seen}; too few requests",
            numbers,
        )
    return Check("guardrail-errors", "pass", "guardrail-error-ratio", seen, numbers)


def _guardrail_latency(canary: TrackWindow, config: JudgeConfig) -> Check:
    x = _points(canary)
    q = config.guardrail_latency_quantile
    numbers: dict[str, Number] = {
        "canary_points": len(x),
        "quantile": q,
        "ceiling_ms": config.guardrail_latency_s * 1000.0,
    }
    if len(x) < config.min_latency_points:
        return Check(
            "guardrail-latency",
            "inconclusive",
            "minimum-latency-points",
            f"too few {canary.track} latency points ({len(x)}; {config.min_latency_points} needed)",
            numbers,
        )
    high_ms = stats.quantile(x, q) * 1000.0
    numbers["canary_high_ms"] = high_ms
    seen = (
        f"{canary.track} latency points' q{q:g} {high_ms:.1f} ms against a ceiling of "
        f"{config.guardrail_latency_s * 1000.0:g} ms"
    )
    outcome: Outcome = "fail" if high_ms > config.guardrail_latency_s * 1000.0 else "pass"
    return Check("guardrail-latency", outcome, "guardrail-latency", seen, numbers)
