"""The rollout judge: no false rollbacks of an identical version, bad releases failed by
the rule that names their fault, silence (no traffic, too few samples) never a pass, and
a canary the gateway hides failed, not waited for.

Seeded simulations (tests/rollout/simulate.py) replay steps of cumulative windows;
`YARDARM_TEST_SCALE` multiplies their trials.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from tests.rollout.simulate import STABLE, Release, Traffic, step_windows
from yardarm.rollout import stats
from yardarm.rollout.analysis import step_outcome
from yardarm.rollout.judge import ALL_PASS, Check, JudgeConfig, Verdict, judge
from yardarm.rollout.window import TrackWindow

SCALE = float(os.environ.get("YARDARM_TEST_SCALE", "1"))
ORDERS = JudgeConfig.for_service("orders")
# An identical version over a mix of traffic: route rates, weights, instances per track.
MIX = [
    Traffic(route_rps=rps, weight=weight, instances=instances)
    for rps in (50.0, 100.0, 200.0)
    for weight in (10.0, 25.0, 50.0)
    for instances in (1, 2)
]


def trials(base: int) -> int:
    return max(base, int(base * SCALE))


def window(
    track: str,
    requests: int,
    errors: int = 0,
    points: Sequence[float] = (),
    *,
    weight: float = 10.0,
    share: float | None = None,
    unavailable: tuple[str, ...] = (),
    route: int = 0,
) -> TrackWindow:
    """A track's window; by default it got exactly its weight's share of the route."""
    return TrackWindow(
        track=track,
        requests=requests,
        errors=errors,
        latency_points=tuple(points),
        weight=weight,
        share=weight if share is None else share,
        unavailable=unavailable,
        route_requests=route,
    )


def fast_points(rng: np.random.Generator, n: int, extra_s: float = 0.0) -> list[float]:
    return (rng.lognormal(math.log(0.015), 0.2, n) + extra_s).tolist()


# -- no false rollbacks -------------------------------------------------------------


def test_an_identical_version_fails_no_analysis() -> None:
    rng = np.random.default_rng(20240601)
    outcomes: Counter[str] = Counter()
    last_look: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    for trial in range(trials(70)):
        looks = step_windows(rng, MIX[trial % len(MIX)], STABLE)
        for look, (canary, baseline) in enumerate(looks, 1):
            verdict = judge(canary, baseline, ORDERS)
            outcomes[verdict.outcome] += 1
            rules[verdict.rule] += 1
            if look == len(looks):
                last_look[verdict.outcome] += 1
    analyses = sum(outcomes.values())
    print(
        f"\nidentical version: {analyses} analyses, {outcomes['fail']} failed, "
        f"{outcomes['inconclusive'] / analyses:.1%} inconclusive ({dict(rules)}); "
        f"at 30 s {last_look['pass'] / sum(last_look.values()):.1%} passed"
    )
    # None of the 200+ analyses of scale 1 (the bar of issue 14); over the far longer runs
    # of higher scales, at most one in 10,000 (docs/rollouts.md measured 2 in 45,000).
    assert analyses >= 200
    assert outcomes["fail"] <= analyses * 1e-4
    # An identical version also progresses: once each track has its requests (all but
    # the slowest traffic of the mix by 30 s), the verdict is a pass.
    assert last_look["pass"] >= 0.75 * sum(last_look.values())


def test_small_real_differences_under_the_floors_do_not_fail() -> None:
    """+2 ms on every request and +0.1 point of errors: real, but not worth a rollback."""
    rng = np.random.default_rng(7)
    slightly_worse = Release(error_ratio=0.006, extra_latency_s=0.002)
    for trial in range(trials(40)):
        for canary, baseline in step_windows(rng, MIX[trial % len(MIX)], slightly_worse):
            verdict = judge(canary, baseline, ORDERS)
            assert verdict.outcome != "fail", verdict.as_dict()


def test_a_significant_error_increase_under_the_floors_passes() -> None:
    canary = window("canary", 2_000_000, 12_000)  # 0.6%
    baseline = window("baseline", 2_000_000, 10_000)  # 0.5%
    errors = judge(canary, baseline, ORDERS).check("errors")
    assert errors.numbers["p_value"] < 1e-6  # type: ignore[operator]
    assert (errors.outcome, errors.rule) == ("pass", "error-effect-floor")


def test_a_significant_latency_shift_under_the_floors_passes() -> None:
    rng = np.random.default_rng(3)
    canary = window("canary", 1000, points=fast_points(rng, 2000, extra_s=0.002))
    baseline = window("baseline", 1000, points=fast_points(rng, 2000))
    verdict = judge(canary, baseline, ORDERS)
    latency = verdict.check("latency")
    assert latency.numbers["p_value"] < 1e-6  # type: ignore[operator]
    assert 1.0 < latency.numbers["shift_ms"] < 3.0  # type: ignore[operator]
    assert (latency.outcome, latency.rule) == ("pass", "latency-effect-floor")
    assert verdict.outcome == "pass"


# -- bad releases are failed by the rule that names their fault ---------------------


def test_five_more_points_of_errors_fail_by_the_error_rule_within_30s() -> None:
    """10% canary weight of 150 req/s: 15 req/s per track, judged every 10 s."""
    rng = np.random.default_rng(5)
    traffic = Traffic(route_rps=150.0, weight=10.0)
    bad, base = Release(error_ratio=0.055), Release(error_ratio=0.005)
    caught = 0
    n = trials(100)
    for _ in range(n):
        for canary, baseline in step_windows(rng, traffic, bad, base):
            verdict = judge(canary, baseline, ORDERS)
            if verdict.outcome == "fail":
                assert verdict.rule == "error-rate", verdict.as_dict()
                caught += 1
                break
    print(f"\n+5 pp errors at 15 req/s per track: {caught}/{n} failed within 30 s")
    assert caught >= 0.97 * n


def test_100ms_more_latency_fails_by_the_latency_rule_not_a_guardrail() -> None:
    rng = np.random.default_rng(100)
    slow = Release(extra_latency_s=0.100)
    for trial in range(trials(50)):
        traffic = Traffic(route_rps=100.0, weight=10.0, instances=1 + trial % 2)
        verdicts = [judge(c, b, ORDERS) for c, b in step_windows(rng, traffic, slow)]
        failed = [v for v in verdicts if v.outcome == "fail"]
        assert failed, [v.as_dict() for v in verdicts]
        assert failed[0].rule == "latency", failed[0].as_dict()
        assert failed[0].check("guardrail-latency").outcome == "pass"
        assert failed[0].check("latency").numbers["shift_ms"] > 50  # type: ignore[operator]


def test_a_canary_as_bad_as_its_baseline_fails_the_error_guardrail() -> None:
    canary = window("canary", 1000, 100)
    baseline = window("baseline", 1000, 100)
    verdict = judge(canary, baseline, ORDERS)
    assert verdict.check("errors").outcome == "pass"
    assert (verdict.outcome, verdict.rule) == ("fail", "guardrail-error-ratio")


def test_a_canary_as_slow_as_its_baseline_fails_the_latency_guardrail() -> None:
    rng = np.random.default_rng(9)
    canary = window("canary", 1000, points=fast_points(rng, 40, extra_s=0.6))
    baseline = window("baseline", 1000, points=fast_points(rng, 40, extra_s=0.6))
    verdict = judge(canary, baseline, ORDERS)
    assert verdict.check("latency").outcome == "pass"
    assert (verdict.outcome, verdict.rule) == ("fail", "guardrail-latency")


def test_a_baseline_without_errors_still_gets_an_exact_test() -> None:
    baseline = window("baseline", 300, 0)
    verdict = judge(window("canary", 300, 8), baseline, ORDERS)
    errors = verdict.check("errors")
    # With 8 errors in all, the one-sided p is the chance all 8 land on the canary.
    exact = math.comb(300, 8) / math.comb(600, 8)
    assert errors.numbers["p_value"] == pytest.approx(exact, rel=1e-9)
    assert errors.numbers["increase_relative"] is None
    assert (verdict.outcome, verdict.rule) == ("fail", "error-rate")
    # Two errors against none is not evidence; none against none is a clean pass.
    assert judge(window("canary", 300, 2), baseline, ORDERS).check("errors").outcome == "pass"
    clean = judge(window("canary", 300, 0), baseline, ORDERS).check("errors")
    assert (clean.outcome, clean.numbers["p_value"]) == ("pass", 1.0)


def test_an_overwhelming_error_rate_fails_before_the_minimum_requests() -> None:
    verdict = judge(window("canary", 20, 20), window("baseline", 20, 0), ORDERS)
    assert verdict.check("traffic").outcome == "inconclusive"
    assert (verdict.outcome, verdict.rule) == ("fail", "error-rate")


# -- silence is never a pass --------------------------------------------------------


def test_no_traffic_is_inconclusive() -> None:
    verdict = judge(window("canary", 0, share=0.0), window("baseline", 0, share=0.0), ORDERS)
    assert (verdict.outcome, verdict.rule) == ("inconclusive", "no-traffic")


def test_too_few_requests_is_inconclusive_never_a_pass() -> None:
    rng = np.random.default_rng(1)
    points = fast_points(rng, 40)
    canary = window("canary", 100, points=points)
    baseline = window("baseline", 100, points=points)
    verdict = judge(canary, baseline, ORDERS)
    assert (verdict.outcome, verdict.rule) == ("inconclusive", "minimum-requests")
    assert verdict.check("errors").outcome == "inconclusive"


def test_too_few_latency_points_is_inconclusive_never_a_pass() -> None:
    rng = np.random.default_rng(2)
    canary = window("canary", 1000, points=fast_points(rng, 5))
    baseline = window("baseline", 1000, points=fast_points(rng, 40))
    verdict = judge(canary, baseline, ORDERS)
    assert verdict.check("errors").outcome == "pass"
    assert (verdict.outcome, verdict.rule) == ("inconclusive", "minimum-latency-points")


def test_enough_of_everything_from_an_identical_version_passes() -> None:
    rng = np.random.default_rng(4)
    canary = window("canary", 1000, 5, fast_points(rng, 40))
    baseline = window("baseline", 1000, 5, fast_points(rng, 40))
    verdict = judge(canary, baseline, ORDERS)
    assert (verdict.outcome, verdict.rule) == ("pass", ALL_PASS)
    assert {c.outcome for c in verdict.checks} == {"pass"}


# -- the gateway must not hide a failing canary -------------------------------------


def test_an_unavailable_canary_fails_even_without_requests() -> None:
    hidden = ("http://127.0.0.1:9101 is ejected", "circuit orders/track:canary is open")
    canary = window("canary", 0, share=0.0, unavailable=hidden)
    verdict = judge(canary, window("baseline", 0, share=0.0), ORDERS)
    assert (verdict.outcome, verdict.rule) == ("fail", "unavailable")
    assert "ejected" in verdict.reason and "circuit" in verdict.reason


def test_both_tracks_hidden_is_the_environment_not_the_release() -> None:
    """A machine too busy for health checks hides the baseline too: inconclusive."""
    busy = ("http://127.0.0.1:9101 fails its health checks",)
    canary = window("canary", 300, unavailable=busy)
    baseline = window(
        "baseline", 300, unavailable=("http://127.0.0.1:9102 fails its health checks",)
    )
    verdict = judge(canary, baseline, ORDERS)
    assert (verdict.outcome, verdict.rule) == ("inconclusive", "unavailable-both")
    assert judge(canary, window("baseline", 300), ORDERS).rule == "unavailable"


def test_unavailability_decides_before_every_other_failing_rule() -> None:
    canary = window("canary", 300, 300, unavailable=("circuit orders/track:canary is open",))
    verdict = judge(canary, window("baseline", 300, 0), ORDERS)
    assert verdict.check("errors").outcome == "fail"
    assert verdict.rule == "unavailable"


def test_a_starved_canary_fails_even_without_requests() -> None:
    canary = window("canary", 0, share=0.0)
    verdict = judge(canary, window("baseline", 300), ORDERS)  # 10% of 3000 requests
    assert (verdict.outcome, verdict.rule) == ("fail", "starved")
    assert verdict.check("share").numbers["route_requests"] == 3000


def test_a_starved_canary_fails_when_the_baseline_is_starved_too() -> None:
    canary = window("canary", 0, share=0.0, route=3000)
    baseline = window("baseline", 0, share=0.0, route=3000)
    verdict = judge(canary, baseline, ORDERS)
    assert (verdict.outcome, verdict.rule) == ("fail", "starved")


def test_a_small_window_short_of_its_share_is_not_called_starved() -> None:
    # 3 of 100 requests for a weight of 10%: under half, but chance at this size.
    canary = window("canary", 3, share=3.0, route=100)
    verdict = judge(canary, window("baseline", 10, route=100), ORDERS)
    assert verdict.check("share").outcome == "inconclusive"
    assert verdict.outcome == "inconclusive"
    # The same share over 3000 requests is starvation.
    many = judge(window("canary", 90, share=3.0, route=3000), window("baseline", 300), ORDERS)
    assert (many.outcome, many.rule) == ("fail", "starved")


def test_a_canary_getting_its_share_is_not_starved() -> None:
    verdict = judge(window("canary", 280, share=9.3), window("baseline", 300), ORDERS)
    assert verdict.check("share").outcome == "pass"


# -- the verdict's record -----------------------------------------------------------


def _verdicts() -> list[Verdict]:
    rng = np.random.default_rng(8)
    points = fast_points(rng, 40)
    return [
        judge(window("canary", 300, 8, points), window("baseline", 300, 0, points), ORDERS),
        judge(window("canary", 0, share=0.0), window("baseline", 0, share=0.0), ORDERS),
        judge(window("canary", 1000, 5, points), window("baseline", 1000, 5, points), ORDERS),
        judge(window("canary", 0, unavailable=("x is ejected",)), window("baseline", 9), ORDERS),
    ]


@pytest.mark.parametrize("verdict", _verdicts(), ids=lambda v: v.rule)
def test_a_verdict_round_trips_through_json(verdict: Verdict) -> None:
    text = json.dumps(verdict.as_dict(), allow_nan=False)
    assert json.loads(text) == verdict.as_dict()
    assert Verdict.from_dict(json.loads(text)) == verdict
    assert [c["name"] for c in json.loads(text)["checks"]] == [
        "availability",
        "share",
        "traffic",
        "errors",
        "latency",
        "guardrail-errors",
        "guardrail-latency",
    ]


def test_a_failed_verdict_carries_the_numbers_behind_it() -> None:
    verdict = _verdicts()[0]
    record = verdict.as_dict()
    assert record["rule"] == "error-rate"
    assert "8/300" in record["reason"] and "0/300" in record["reason"]
    errors = next(c for c in record["checks"] if c["name"] == "errors")["numbers"]
    assert errors["canary_errors"] == 8 and errors["baseline_errors"] == 0
    assert errors["increase_pp"] == pytest.approx(8 / 3)
    assert errors["alpha"] == 0.01 and errors["min_increase_pp"] == 2.0


# -- configuration ------------------------------------------------------------------


def test_guardrails_come_from_the_service_slos() -> None:
    assert ORDERS.guardrail_error_ratio == pytest.approx(0.072)  # 14.4 x the 0.5% budget
    assert ORDERS.guardrail_latency_s == 0.5
    datastore = JudgeConfig.for_service("datastore", min_requests=50)
    assert datastore.guardrail_error_ratio == pytest.approx(0.0144)
    assert datastore.guardrail_latency_s == 0.25
    assert datastore.min_requests == 50


def test_an_unknown_service_or_a_bad_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="known services are gateway, orders"):
        JudgeConfig.for_service("billing")
    with pytest.raises(ValueError, match="alpha_errors must be in"):
        JudgeConfig.for_service("orders", alpha_errors=0.0)
    with pytest.raises(ValueError, match="min_requests must be at least 1"):
        JudgeConfig.for_service("orders", min_requests=0)
    with pytest.raises(ValueError, match="min_latency_shift_ms"):
        JudgeConfig.for_service("orders", min_latency_shift_ms=math.nan)


def test_importing_the_judge_loads_no_scipy_nor_numpy() -> None:
    code = (
        "import sys, yardarm.rollout.judge\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'numpy'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


# -- a step's verdicts --------------------------------------------------------------


def _verdict(outcome: str, rule: str = "r") -> Verdict:
    check = Check("c", outcome, rule, f"{outcome} because {rule}")  # type: ignore[arg-type]
    return Verdict(outcome, rule, (check,))  # type: ignore[arg-type]


PASS, INCONCLUSIVE, FAIL = _verdict("pass", ALL_PASS), _verdict("inconclusive"), _verdict("fail")


def test_a_step_promotes_when_its_last_planned_analysis_passes() -> None:
    assert step_outcome([PASS], max_inconclusive=2, analyses=3).outcome == "continue"
    assert step_outcome([INCONCLUSIVE, PASS], 2, analyses=3).outcome == "continue"
    assert step_outcome([INCONCLUSIVE, PASS, PASS], 2, analyses=3).outcome == "promote-step"


def test_inconclusive_extends_a_step_up_to_the_limit_then_fails_safe() -> None:
    assert step_outcome([INCONCLUSIVE], max_inconclusive=2).outcome == "continue"
    assert step_outcome([INCONCLUSIVE] * 2, max_inconclusive=2).outcome == "continue"
    assert step_outcome([INCONCLUSIVE] * 2 + [PASS], max_inconclusive=2).outcome == "promote-step"
    decision = step_outcome([INCONCLUSIVE] * 3, max_inconclusive=2)
    assert decision.outcome == "fail"
    assert "failing safe" in decision.reason
    assert step_outcome([INCONCLUSIVE], max_inconclusive=0).outcome == "fail"


def test_any_failed_analysis_fails_the_step() -> None:
    decision = step_outcome([PASS, _verdict("fail", "latency"), PASS], 2, analyses=3)
    assert decision.outcome == "fail"
    assert "latency" in decision.reason


# -- the statistics -----------------------------------------------------------------


def test_the_shift_estimate_of_many_points_is_the_shift() -> None:
    rng = np.random.default_rng(6)
    baseline = rng.lognormal(math.log(0.015), 0.3, 3000)
    canary = rng.lognormal(math.log(0.015), 0.3, 3000) + 0.040
    assert len(canary) * len(baseline) > stats.MAX_PAIRS  # the thinned path
    assert stats.hodges_lehmann_shift(canary.tolist(), baseline.tolist()) == pytest.approx(
        0.040, abs=0.002
    )
    assert stats.mann_whitney_greater(canary.tolist(), baseline.tolist()) < 1e-9
    assert stats.mann_whitney_greater(baseline.tolist(), canary.tolist()) > 0.99
