"""The simulator would catch the bugs we know how to make: each `Mutation` switched on must
break an invariant within a bounded number of seeds.

Each hunt runs seeds in the fault regime aimed at its bug and stops at the first seed
that fails. A failing seed only counts if the same seed passes without the mutation, so
a bug in the core itself cannot pass for a catch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from yardarm_datastore.raft.types import Mutation

from tests.datastore.raft.invariants import (
    CHECK_QUORUM,
    LIVENESS,
    READ_LINEARIZABILITY,
    SAFETY,
    InvariantViolation,
)
from tests.datastore.raft.seeds import RunSpec, scale, time_box

MAX_SEEDS = max(1, int(400 * scale()))
TIME_BOX = time_box(60.0 * scale())  # seconds per hunt


@dataclass(frozen=True)
class Catch:
    spec: RunSpec
    violation: InvariantViolation
    seeds: int  # seeds run until this one
    elapsed: float

    def summary(self, mutation: Mutation) -> str:
        return (
            f"{mutation.value}: caught by {self.violation.invariant} after {self.seeds} "
            f"seeds ({self.elapsed:.1f}s), seed {self.spec.seed}; replay: "
            f"{self.spec.replay_command()}"
        )


def hunt(mutation: Mutation, spec_for: Callable[[int], RunSpec]) -> Catch | None:
    """Run seeds with `mutation` on until one fails (and passes without it)."""
    started = time.monotonic()
    for seeds, seed in enumerate(range(MAX_SEEDS), start=1):
        if time.monotonic() - started > TIME_BOX:
            break
        spec = spec_for(seed)
        assert mutation in spec.mutations
        try:
            spec.run()
        except InvariantViolation as exc:
            try:
                spec.without_mutations().run()
            except InvariantViolation:
                continue  # the core fails this seed by itself: not the mutation's doing
            return Catch(spec, exc, seeds, time.monotonic() - started)
    return None


def spec(
    seed: int,
    mutation: Mutation,
    regime: str,
    *,
    read_mode: str | None = None,
    config: Mapping[str, Any] | None = None,
    check_step_down: bool | None = None,
) -> RunSpec:
    return RunSpec.for_seed(
        seed,
        nodes=3,
        read_mode=read_mode,
        regime=regime,
        mutations=[mutation],
        config=config,
        check_step_down=check_step_down,
    )


def assert_caught(
    mutation: Mutation, catch: Catch | None, expected: frozenset[str] | set[str]
) -> None:
    assert catch is not None, (
        f"{mutation.value} went unnoticed for {MAX_SEEDS} seeds (or {TIME_BOX:.0f}s): "
        "the simulator lost its teeth"
    )
    print(f"\n{catch.summary(mutation)}")
    assert catch.violation.invariant in expected, str(catch.violation)


@pytest.mark.timeout(max(300, int(TIME_BOX * 3)))
def test_acknowledging_before_fsync_loses_committed_writes() -> None:
    """Replies sent before the disk write: crashes and power failures lose what a
    majority acknowledged."""
    mutation = Mutation.ACK_BEFORE_FSYNC
    catch = hunt(mutation, lambda seed: spec(seed, mutation, "churn"))
    assert_caught(mutation, catch, SAFETY | {LIVENESS})


@pytest.mark.timeout(max(300, int(TIME_BOX * 3)))
def test_committing_old_term_entries_by_counting_loses_them() -> None:
    """The Raft paper's Figure 8: an entry of an older term, counted onto a majority and
    declared committed, is overwritten by a later leader."""
    mutation = Mutation.COMMIT_OLD_TERM
    catch = hunt(mutation, lambda seed: spec(seed, mutation, "figure8"))
    assert_caught(mutation, catch, SAFETY)


@pytest.mark.timeout(max(300, int(TIME_BOX * 3)))
def test_without_check_quorum_a_deposed_leader_serves_stale_lease_reads() -> None:
    """Followers no longer ignore candidates while they hear from a leader, so a node
    that lost only its link to the leader gets elected while the old leader's lease
    still runs, and the old leader answers reads without the new writes. (Pre-vote off:
    with it, the old leader learns the new term from the first refused heartbeat.)"""
    mutation = Mutation.NO_CHECK_QUORUM
    catch = hunt(
        mutation,
        lambda seed: spec(seed, mutation, "flaky", read_mode="lease", config={"pre_vote": False}),
    )
    assert_caught(mutation, catch, {READ_LINEARIZABILITY})


@pytest.mark.timeout(max(300, int(TIME_BOX * 3)))
def test_without_check_quorum_a_cut_off_leader_never_steps_down() -> None:
    """With the step-down check forced on, a leader cut off from its majority is caught
    still leading after two election timeouts."""
    mutation = Mutation.NO_CHECK_QUORUM
    catch = hunt(mutation, lambda seed: spec(seed, mutation, "mixed", check_step_down=True))
    assert_caught(mutation, catch, {CHECK_QUORUM})
