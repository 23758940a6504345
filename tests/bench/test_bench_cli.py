"""The CLI start-up benchmark: a tiny real run and the rows it writes; no time thresholds."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console

from bench import cli
from bench.cli import PEER, Command, Condition, Measured, Timing, build_rows, measure
from bench.options import BenchError, Options

METRICS = [
    "`yardarm --help` wall time (s), lower is better (ratio inverted: peer/yardarm)",
    "`yardarm status` wall time (s), lower is better (ratio inverted: peer/yardarm)",
]


def test_a_tiny_run_times_both_commands_in_both_conditions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli, "INVOCATIONS_PER_RUN", 2)
    rows = cli.run(Options(runs=1, quick=True), Console(file=io.StringIO()))
    assert [row["metric"] for row in rows] == METRICS * 2
    assert [row["params"]["setup"] for row in rows] == [
        "bytecode: as configured",
        "bytecode: as configured",
        "bytecode: cached",
        "bytecode: cached",
    ]
    for row in rows:
        assert row["benchmark"] == "cli" and row["peer"] == PEER
        assert row["yardarm"] is not None and row["yardarm"] > 0
        assert row["peer_value"] is not None and row["peer_value"] > 0
        assert row["ratio"] == pytest.approx(row["peer_value"] / row["yardarm"], abs=1e-3)
        params = row["params"]
        assert params["runs"] == 2 and params["statistic"] == "median"
        assert params["versions"]["python"] == sys.version.split()[0]  # type: ignore[index]
        assert len(params["yardarm_runs_s"]) == 2  # type: ignore[arg-type]
        assert row["date"].endswith("+00:00")


def test_the_rows_keep_the_median_and_invert_the_ratio() -> None:
    def timings(*walls: float) -> list[Timing]:
        return [Timing(wall, wall / 2, "") for wall in walls]

    condition = Condition("bytecode: cached", "a cache", {})
    measured = Measured(
        condition,
        {
            "yardarm --help": timings(0.3, 0.9, 0.2),
            "yardarm status": timings(0.5, 0.4, 0.6),
            PEER: timings(0.02, 0.01, 0.03),
        },
    )
    rows = build_rows([measured], {"versions": {"python": "3.11.7"}}, "2026-01-01T00:00:00+00:00")
    assert [row["metric"] for row in rows] == METRICS
    assert [row["yardarm"] for row in rows] == [0.3, 0.5]
    assert {row["peer_value"] for row in rows} == {0.02}
    assert [row["ratio"] for row in rows] == [round(0.02 / 0.3, 4), 0.04]
    assert rows[0]["params"]["yardarm_cpu_median_s"] == 0.15


def test_a_command_that_does_not_do_its_job_fails_the_run() -> None:
    condition = Condition("as is", "as is", {})
    crashes = Command("crash", (sys.executable, "-c", "raise SystemExit(3)"), 0, "")
    with pytest.raises(BenchError, match="exited 3, expected 0"):
        measure([crashes], condition, 1)
    quiet = Command("quiet", (sys.executable, "-c", "pass"), 0, "no stack here")
    with pytest.raises(BenchError, match="did not say"):
        measure([quiet], condition, 1)
