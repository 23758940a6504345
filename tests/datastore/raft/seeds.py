"""Which run a seed stands for, how to replay it, and time-boxed sweeps over seeds.

A seed alone picks the cluster size and read mode (so a failing seed is replayed by its
number), unless a sweep pinned them; everything else is drawn inside the simulation.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from yardarm_datastore.raft.types import Mutation

from tests.datastore.raft.faults import REGIMES
from tests.datastore.raft.invariants import InvariantViolation
from tests.datastore.raft.simulator import Simulation, SimulationReport

SEED_ENV = "YARDARM_RAFT_SEED"
NODES_ENV = "YARDARM_RAFT_NODES"
READ_MODE_ENV = "YARDARM_RAFT_READ_MODE"
REGIME_ENV = "YARDARM_RAFT_REGIME"
MUTATIONS_ENV = "YARDARM_RAFT_MUTATIONS"
CONFIG_ENV = "YARDARM_RAFT_CONFIG"  # e.g. "pre_vote=false,max_entries_per_msg=1"
STEP_DOWN_ENV = "YARDARM_RAFT_CHECK_STEP_DOWN"  # "1"/"0": force the check-quorum check
TIME_BOX_ENV = "YARDARM_RAFT_TIME_BOX"  # seconds: overrides a sweep's time box
REPLAY_TEST = "tests/datastore/raft/test_raft_simulation.py"
STEPS = 1500  # random events per run, before recovery


def scale() -> float:
    return float(os.environ.get("YARDARM_TEST_SCALE", "1.0"))


def time_box(default: float) -> float:
    """A sweep's time budget: `default` unless YARDARM_RAFT_TIME_BOX says otherwise."""
    return float(os.environ.get(TIME_BOX_ENV, default))


def default_nodes(seed: int) -> int:
    return 3 if seed % 2 == 0 else 5


def default_read_mode(seed: int) -> str:
    return "lease" if (seed // 2) % 2 else "index"


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class RunSpec:
    """One simulation run, reproducible from its fields."""

    seed: int
    nodes: int
    read_mode: str
    regime: str | None = None  # None: drawn from the seed
    mutations: frozenset[Mutation] = frozenset()
    config: Mapping[str, Any] = field(default_factory=dict)
    check_step_down: bool | None = None  # None: where check-quorum is on and not mutated
    steps: int = STEPS

    @classmethod
    def for_seed(
        cls,
        seed: int,
        *,
        nodes: int | None = None,
        read_mode: str | None = None,
        regime: str | None = None,
        mutations: Iterable[Mutation] = (),
        config: Mapping[str, Any] | None = None,
        check_step_down: bool | None = None,
    ) -> RunSpec:
        if regime is not None and regime not in REGIMES:
            raise ValueError(f"unknown regime {regime!r}; expected one of {REGIMES}")
        return cls(
            seed=seed,
            nodes=nodes or default_nodes(seed),
            read_mode=read_mode or default_read_mode(seed),
            regime=regime,
            mutations=frozenset(mutations),
            config=dict(config or {}),
            check_step_down=check_step_down,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RunSpec | None:
        """The run named by YARDARM_RAFT_* variables (None without a seed)."""
        if SEED_ENV not in env:
            return None
        nodes = env.get(NODES_ENV)
        config = {}
        for item in filter(None, env.get(CONFIG_ENV, "").split(",")):
            key, _, value = item.partition("=")
            config[key.strip()] = _parse_value(value.strip())
        mutations = filter(None, env.get(MUTATIONS_ENV, "").split(","))
        step_down = env.get(STEP_DOWN_ENV)
        return cls.for_seed(
            int(env[SEED_ENV]),
            nodes=int(nodes) if nodes else None,
            read_mode=env.get(READ_MODE_ENV) or None,
            regime=env.get(REGIME_ENV) or None,
            mutations=[Mutation(m.strip()) for m in mutations],
            config=config,
            check_step_down=None if step_down is None else step_down == "1",
        )

    def env(self) -> dict[str, str]:
        """The variables that name this run (only what the seed does not imply)."""
        env = {SEED_ENV: str(self.seed)}
        if self.nodes != default_nodes(self.seed):
            env[NODES_ENV] = str(self.nodes)
        if self.read_mode != default_read_mode(self.seed):
            env[READ_MODE_ENV] = self.read_mode
        if self.regime is not None:
            env[REGIME_ENV] = self.regime
        if self.mutations:
            env[MUTATIONS_ENV] = ",".join(sorted(m.value for m in self.mutations))
        if self.config:
            pairs = (f"{k}={str(v).lower()}" for k, v in sorted(self.config.items()))
            env[CONFIG_ENV] = ",".join(pairs)
        if self.check_step_down is not None:
            env[STEP_DOWN_ENV] = "1" if self.check_step_down else "0"
        return env

    def replay_command(self) -> str:
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env().items())
        return f"{assignments} uv run pytest {REPLAY_TEST} -k replay -q -p no:cacheprovider"

    def simulation(self) -> Simulation:
        return Simulation(
            self.seed,
            nodes=self.nodes,
            read_mode=self.read_mode,
            regime=self.regime,
            config=self.config,
            mutations=self.mutations,
            steps=self.steps,
            check_step_down=self.check_step_down,
            replay=self.replay_command(),
        )

    def run(self) -> SimulationReport:
        return self.simulation().run()

    def without_mutations(self) -> RunSpec:
        return dataclasses.replace(self, mutations=frozenset())


@dataclass
class Sweep:
    """What a sweep ran and found."""

    runs: int = 0
    elapsed: float = 0.0
    timed_out: bool = False
    reports: list[SimulationReport] = field(default_factory=list)
    failures: list[tuple[RunSpec, InvariantViolation]] = field(default_factory=list)


def sweep(
    specs: Iterable[RunSpec],
    *,
    time_box: float,
    min_runs: int,
    stop_at_first: bool = False,
    max_failures: int = 10,
) -> Sweep:
    """Run `specs` in order until they run out, `max_failures` fail (or the first does,
    with `stop_at_first`), or `time_box` seconds pass once at least `min_runs` ran."""
    result = Sweep()
    started = time.monotonic()
    for spec in specs:
        if result.runs >= min_runs and time.monotonic() - started > time_box:
            result.timed_out = True
            break
        result.runs += 1
        try:
            result.reports.append(spec.run())
        except InvariantViolation as exc:
            result.failures.append((spec, exc))
            if stop_at_first or len(result.failures) >= max_failures:
                break
    result.elapsed = time.monotonic() - started
    return result
