"""Seeded simulations of whole clusters: every seed must keep every invariant.

`int(300 * YARDARM_TEST_SCALE)` seeds (3- and 5-node clusters, ReadIndex and lease reads,
every fault regime), stopped early by a time box on a slow machine once a minimum ran;
then every seed recorded in `fixtures/regressions.json`. A failure prints the command that
replays its seed; the replay test runs the seed named by YARDARM_RAFT_SEED.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from yardarm_datastore.raft.types import Mutation

from tests.datastore.raft.invariants import InvariantViolation
from tests.datastore.raft.seeds import SEED_ENV, RunSpec, Sweep, scale, sweep, time_box

SEEDS = max(1, int(300 * scale()))
TIME_BOX = time_box(45.0 * scale())  # seconds; past it the sweep stops, once MIN_SEEDS ran
MIN_SEEDS = min(SEEDS, 60)
REGRESSIONS = Path(__file__).parent / "fixtures" / "regressions.json"


def explain(result: Sweep) -> str:
    lines = [f"{len(result.failures)} of {result.runs} seeds broke an invariant:"]
    for spec, exc in result.failures:
        lines.append(f"  seed {spec.seed}: {exc.invariant} at step {exc.step}")
        lines.append(f"    replay: {spec.replay_command()}")
    lines.append("")
    lines.append(str(result.failures[0][1]))
    return "\n".join(lines)


@pytest.mark.timeout(max(300, int(TIME_BOX * 4)))
def test_random_seeds_keep_every_invariant() -> None:
    result = sweep(
        (RunSpec.for_seed(seed) for seed in range(SEEDS)), time_box=TIME_BOX, min_runs=MIN_SEEDS
    )
    print(
        f"\n{result.runs} seeds in {result.elapsed:.1f}s"
        + (" (time box reached)" if result.timed_out else "")
    )
    if result.failures:
        pytest.fail(explain(result), pytrace=False)

    # The sweep went where it is meant to go, or passing it would prove little (judged
    # only on a sample big enough to have met every kind of event).
    if result.runs < 30:
        return
    total: Counter[str] = Counter()
    for report in result.reports:
        total.update(report.stats)
    regimes = {report.regime for report in result.reports}
    leader_changes = sum(report.terms - 1 for report in result.reports)
    print(f"regimes {sorted(regimes)}, {leader_changes} leader changes, {dict(total)}")
    assert {3, 5} <= {report.nodes for report in result.reports}
    assert leader_changes > result.runs
    for what in (
        "acknowledged",
        "reads_served",
        "crashes",
        "partitions",
        "snapshots_installed",
        "conf_applied",
        "transfers",
        "duplicated",
    ):
        assert total[what] > 0, f"no run had any {what}"
    assert len(regimes) >= 4, regimes


def regressions() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(REGRESSIONS.read_text())
    return entries


def regression_spec(entry: dict[str, Any]) -> RunSpec:
    return RunSpec.for_seed(
        entry["seed"],
        nodes=entry["nodes"],
        read_mode=entry.get("read_mode"),
        regime=entry.get("regime"),
        mutations=[Mutation(m) for m in entry["mutations"]],
        config=entry.get("config"),
        check_step_down=entry.get("check_step_down"),
    )


@pytest.mark.parametrize(
    "entry", regressions(), ids=lambda e: f"seed{e['seed']}-{'+'.join(e['mutations']) or 'core'}"
)
def test_recorded_seed(entry: dict[str, Any]) -> None:
    """A seed that once found a bug in the core passes; a seed recorded as catching a
    mutation still catches it, with the same invariant."""
    spec = regression_spec(entry)
    if not spec.mutations:
        spec.run()
        return
    with pytest.raises(InvariantViolation) as caught:
        spec.run()
    assert caught.value.invariant == entry["invariant"], str(caught.value)


def test_replay_seed_from_environment() -> None:
    spec = RunSpec.from_env(os.environ)
    if spec is None:
        pytest.skip(f"set {SEED_ENV} (and what the failure printed) to replay a seed")
    report = spec.run()
    print(f"\nseed {spec.seed} passed: {report}")


def test_a_seed_reruns_identically() -> None:
    """Same seed, same run: the whole event history and every result repeat."""
    first, second = RunSpec.for_seed(7).simulation(), RunSpec.for_seed(7).simulation()
    assert first.run() == second.run()
    assert first.cluster.trace_lines() == second.cluster.trace_lines()
    assert first.cluster.read_results == second.cluster.read_results
    for node in first.cluster.ids:
        assert first.cluster.values(node) == second.cluster.values(node)
