"""The orders benchmark: a short run against a real local stack, and the rows it writes."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from bench.options import Options
from bench.orders import PhaseResult, bench_orders, build_rows

SATURATION = "saturation_orders_accepted_per_s"
METRICS = [
    "orders_accepted_per_s",
    "saga_p50_latency_ms",
    "saga_p99_latency_ms",
    "saga_completions_per_s",
    "orders_pending_after_drain",
]


@pytest.mark.e2e
def test_a_short_run_places_orders_and_reports_each_phase() -> None:
    log = io.StringIO()
    console = Console(file=log, width=200)
    options = Options(duration_s=2, warmup_s=0, runs=1, quick=True)
    rows = bench_orders(options, console, (1, 2), drain_s=60.0)
    assert [row["metric"] for row in rows] == [
        *METRICS,
        *METRICS,
        "saturation_orders_accepted_per_s",
    ]
    assert {row["benchmark"] for row in rows} == {"orders"}
    assert all(row["peer"] is None and row["ratio"] is None for row in rows)
    assert [row["params"]["concurrency"] for row in rows[:10:5]] == [1, 2]
    for first in (rows[0], rows[5]):
        params = first["params"]
        accepted = params["accepted"]
        assert isinstance(accepted, int) and accepted > 0
        assert first["yardarm"] is not None and first["yardarm"] > 0
        statuses = params["statuses"]
        assert isinstance(statuses, dict) and sum(statuses.values()) == accepted
        # Every order is either finished (and timed) or counted as pending.
        terminal, pending = params["terminal"], params["pending_after_drain"]
        assert isinstance(terminal, int) and isinstance(pending, int)
        assert terminal + pending == accepted
    saturation = rows[-1]
    best = max(rows[0], rows[5], key=lambda row: row["yardarm"] or 0.0)
    assert saturation["yardarm"] == best["yardarm"]
    assert saturation["params"]["concurrency"] == best["params"]["concurrency"]
    assert "stopping the stack" in log.getvalue()


def _phase(concurrency: int, accepted: int, saga_ms: list[float], pending: int) -> PhaseResult:
    return PhaseResult(
        concurrency=concurrency,
        elapsed_s=10.0,
        order_ids=[f"id-{n}" for n in range(accepted)],
        errors={},
        accept_ms=[5.0] * accepted,
        saga_ms=saga_ms,
        statuses={"CONFIRMED": len(saga_ms), "CHARGING": pending},
        pending=pending,
        completions_per_s=len(saga_ms) / 20.0,
    )


def test_rows_have_no_peer_and_name_the_saturated_phase() -> None:
    phases = [
        _phase(4, 200, [float(n) for n in range(1, 201)], 0),
        _phase(16, 500, [100.0] * 490, 10),
        _phase(64, 450, [300.0] * 450, 0),
    ]
    rows = build_rows(phases, {"stack": "test"}, "2026-01-01T00:00:00+00:00")
    by_setup = {(row["metric"], row["params"]["setup"]): row["yardarm"] for row in rows[:-1]}
    assert by_setup[("orders_accepted_per_s", "c=4")] == 20.0
    assert by_setup[("saga_p50_latency_ms", "c=4")] == 100.0
    assert by_setup[("saga_p99_latency_ms", "c=4")] == 198.0
    assert by_setup[("orders_pending_after_drain", "c=16")] == 10.0
    assert by_setup[("saga_completions_per_s", "c=64")] == 22.5
    saturation = rows[-1]
    assert saturation["metric"] == SATURATION
    assert saturation["yardarm"] == 50.0 and saturation["params"]["concurrency"] == 16
    assert all(row["peer"] is None and row["ratio"] is None for row in rows)
    assert all(row["params"]["stack"] == "test" for row in rows)
