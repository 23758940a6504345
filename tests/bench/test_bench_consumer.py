"""The consumer benchmark: a tiny real run (its own nats-server and Postgres) and the rows
it writes; no throughput thresholds."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from bench import consumer
from bench.consumer import MESSAGES_ENV, PEER, VARIANTS, Outcome, build_rows, message_count
from bench.options import BenchError, Options


def test_a_tiny_run_drains_every_target_and_writes_comparable_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(MESSAGES_ENV, "300")
    rows = consumer.run(Options(runs=1, quick=True), Console(file=io.StringIO()))
    assert [row["metric"] for row in rows] == [variant.metric for variant in VARIANTS]
    assert rows[0]["metric"] == "messages_per_s"
    for row in rows:
        assert row["benchmark"] == "consumer" and row["peer"] == PEER
        assert row["yardarm"] is not None and row["yardarm"] > 0
        assert row["peer_value"] is not None and row["peer_value"] > 0
        assert row["ratio"] == pytest.approx(row["yardarm"] / row["peer_value"], abs=1e-4)
        params = row["params"]
        assert params["messages"] == 300 and params["runs"] == 1
        assert len(params["yardarm_runs_msgs_per_s"]) == 1  # type: ignore[arg-type]
        assert len(params["peer_runs_msgs_per_s"]) == 1  # type: ignore[arg-type]
    assert isinstance(rows[0]["params"]["goal_met"], bool)


def test_the_goal_is_judged_on_the_headline_row_only() -> None:
    outcome = Outcome(
        messages=1000, fill_rate=5000.0, bare=[100.0, 110.0, 90.0],
        yardarm={"file": [85.0, 80.0, 70.0], "sampled_1pct": [120.0] * 3,
                 "not_encoded": [95.0] * 3},
        versions={}, load_avg={},
    )  # fmt: skip
    rows = build_rows(outcome, Options(), "2026-01-01T00:00:00+00:00")
    headline = rows[0]
    assert headline["yardarm"] == 80.0 and headline["peer_value"] == 100.0
    assert headline["ratio"] == 0.8 and headline["params"]["goal_met"] is True
    assert "goal ratio >= 0.8: met" in str(headline["params"]["setup"])
    assert all("goal_met" not in row["params"] for row in rows[1:])
    assert rows[1]["ratio"] == 1.2


def test_the_message_count_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MESSAGES_ENV, raising=False)
    assert message_count(Options()) == consumer.DEFAULT_MESSAGES
    assert message_count(Options(quick=True)) == consumer.QUICK_MESSAGES
    monkeypatch.setenv(MESSAGES_ENV, "lots")
    with pytest.raises(BenchError, match=MESSAGES_ENV):
        message_count(Options())
