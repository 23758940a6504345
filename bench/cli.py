"""CLI start-up: wall time of `yardarm --help` and `yardarm status`, against `python -c pass`.

Every `yardarm` command pays for the interpreter's start-up and the CLI's imports before
it does anything, so these two commands, which do almost nothing else, measure that
cost. The peer is the interpreter alone (`python -c pass`, the same venv's python): the
floor no command can go below.

The commands are the venv's `yardarm` script (what a user runs; not `uv run`, which adds
its own start-up) with an empty temporary home (`--home` and `YARDARM_HOME`), so
`status` finds no stack and touches no running one. Each of the three commands runs once
unmeasured (a warm-up that also checks it does what is expected: `--help` exits 0,
`status` exits 1 saying there is no stack), then `5 x --runs` times (15 by default, 5
with `--quick`), round robin so that a burst of load on the machine weighs on all three
alike; the median wall time is kept, and each row's params also hold every run and the
median CPU time (user + system), which the machine's load stretches less.

Two conditions, since Python's bytecode cache decides most of the cost: as the
environment is (where PYTHONDONTWRITEBYTECODE=1 and a venv installed without bytecode,
every run compiles every module it imports), and with a bytecode cache
(PYTHONPYCACHEPREFIX in the temporary directory, written by the warm-up run), which is
what a Python installation does after the first run by default.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata, util
from pathlib import Path

from rich.console import Console

from bench.options import BenchError, Options
from bench.rows import Row, make_row, median

BENCHMARK = "cli"
PEER = "python -c pass"
INVOCATIONS_PER_RUN = 5
WARMUP_INVOCATIONS = 1
COMMAND_TIMEOUT_S = 60.0  # a start-up takes seconds at worst; longer is a hang


@dataclass(frozen=True)
class Command:
    """One command line to time, and what it must do to count."""

    name: str
    argv: tuple[str, ...]
    exit_code: int
    says: str  # in its output (checked on the warm-up run)


@dataclass(frozen=True)
class Condition:
    """An environment the commands run in."""

    setup: str  # short, for the results table
    bytecode: str  # what it means for the bytecode cache
    env: Mapping[str, str]


def commands(yardarm: Path, home: Path) -> list[Command]:
    """`yardarm --help`, `yardarm status` on an empty home, and the peer."""
    return [
        Command("yardarm --help", (str(yardarm), "--help"), 0, "Deploy and observe the yardarm"),
        Command(
            "yardarm status", (str(yardarm), "status", "--home", str(home)), 1, "no stack here"
        ),
        Command(PEER, (sys.executable, "-c", "pass"), 0, ""),
    ]


def _has_bytecode(module: str) -> bool:
    """Whether this environment has `module` compiled already (its cache file exists)."""
    spec = util.find_spec(module)
    if spec is None or spec.origin is None:
        return False
    return Path(util.cache_from_source(spec.origin)).is_file()


def conditions(home: Path, pycache: Path) -> list[Condition]:
    """The environment as it is, and the same with a bytecode cache of its own."""
    # No stray configuration from the caller's shell; the (empty) home is the temporary one.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YARDARM_", "OTEL_"))}
    env["YARDARM_HOME"] = str(home)
    no_write = env.get("PYTHONDONTWRITEBYTECODE", "")
    as_is = (
        f"as the environment is: PYTHONDONTWRITEBYTECODE={no_write or '(unset)'}, "
        f"PYTHONPYCACHEPREFIX={env.get('PYTHONPYCACHEPREFIX', '(unset)')}"
    )
    cached_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached_env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return [
        Condition("bytecode: as configured", as_is, env),
        Condition(
            "bytecode: cached",
            "PYTHONPYCACHEPREFIX set to a temporary directory, PYTHONDONTWRITEBYTECODE "
            "unset; the warm-up run writes the cache",
            cached_env,
        ),
    ]


@dataclass(frozen=True)
class Timing:
    wall_s: float
    cpu_s: float  # user + system: what the machine's load does not stretch
    output: str  # when captured


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def _run(command: Command, env: Mapping[str, str], capture: bool) -> Timing:
    """One invocation, timed."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    cpu = _children_cpu()
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command.argv,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT if capture else subprocess.DEVNULL,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`{command.name}` ran for over {COMMAND_TIMEOUT_S:.0f}s") from exc
    elapsed = time.perf_counter() - start
    cpu = _children_cpu() - cpu
    output = done.stdout.decode(errors="replace") if capture else ""
    if done.returncode != command.exit_code:
        raise BenchError(
            f"`{command.name}` exited {done.returncode}, expected {command.exit_code}"
            + (f":\n{output[-2000:]}" if output else "")
        )
    return Timing(elapsed, cpu, output)


def measure(
    targets: Sequence[Command], condition: Condition, invocations: int
) -> dict[str, list[Timing]]:
    """Each command's timings: warm-ups first (not kept), then round robin."""
    for command in targets:
        for _ in range(WARMUP_INVOCATIONS):
            output = _run(command, condition.env, capture=True).output
            if command.says not in output:
                raise BenchError(f"`{command.name}` did not say {command.says!r}:\n{output}")
    timings: dict[str, list[Timing]] = {command.name: [] for command in targets}
    for _ in range(invocations):
        for command in targets:
            timings[command.name].append(_run(command, condition.env, capture=False))
    return timings


@dataclass(frozen=True)
class Measured:
    condition: Condition
    timings: dict[str, list[Timing]]  # per command name


def build_rows(measured: Sequence[Measured], base: Mapping[str, object], date: str) -> list[Row]:
    """Per condition, `yardarm --help` and `yardarm status` against `python -c pass`."""
    rows: list[Row] = []
    for outcome in measured:
        peer = outcome.timings[PEER]
        for name, runs in outcome.timings.items():
            if name == PEER:
                continue
            params = {
                **base,
                "setup": outcome.condition.setup,
                "bytecode": outcome.condition.bytecode,
                "command": name,
                "runs": len(runs),
                "yardarm_runs_s": [round(t.wall_s, 4) for t in runs],
                "peer_runs_s": [round(t.wall_s, 4) for t in peer],
                "yardarm_cpu_median_s": round(median([t.cpu_s for t in runs]), 4),
                "peer_cpu_median_s": round(median([t.cpu_s for t in peer]), 4),
            }
            rows.append(
                make_row(
                    BENCHMARK,
                    f"`{name}` wall time (s), lower is better",
                    median([t.wall_s for t in runs]),
                    params=params,
                    date=date,
                    peer=PEER,
                    peer_value=median([t.wall_s for t in peer]),
                    lower_is_better=True,
                )
            )
    return rows


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def run(options: Options, console: Console) -> list[Row]:
    """Start-up wall time of two CLI commands and of the bare interpreter, two conditions."""
    yardarm = Path(sys.executable).with_name("yardarm")
    if not yardarm.is_file():
        raise BenchError(f"no {yardarm}: run the benchmark with the project's venv (uv run)")
    invocations = INVOCATIONS_PER_RUN * options.runs
    load_before = [round(x, 2) for x in os.getloadavg()]
    as_configured_compiled = _has_bytecode("typer")
    measured: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="yardarm-bench-cli-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        targets = commands(yardarm, home)
        for condition in conditions(home, Path(tmp) / "pycache"):
            console.log(f"{condition.setup}: {invocations} runs of each command")
            timings = measure(targets, condition, invocations)
            for name, runs in timings.items():
                wall = [t.wall_s for t in runs]
                cpu = median([t.cpu_s for t in runs])
                console.log(
                    f"  {name}: median {median(wall):.3f}s (min {min(wall):.3f}s), cpu {cpu:.3f}s"
                )
            measured.append(Measured(condition, timings))
    base: dict[str, object] = {
        "yardarm_command": f"{yardarm} (the venv's console script)",
        "peer_command": f"{sys.executable} -c pass",
        "home": "an empty temporary directory (--home and YARDARM_HOME): no stack",
        "warmup_runs": WARMUP_INVOCATIONS,
        "statistic": "median",
        "order": "round robin over the three commands",
        "venv_has_bytecode_for_typer": as_configured_compiled,
        "versions": {
            "python": sys.version.split()[0],
            "yardarm": _dist("yardarm"),
            "typer": _dist("typer"),
            "rich": _dist("rich"),
        },
        "cpu_count": len(os.sched_getaffinity(0)),
        "machine_load_avg_1_5_15m": {
            "before": load_before,
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "quick": options.quick,
    }
    return build_rows(measured, base, datetime.now(UTC).isoformat(timespec="seconds"))
