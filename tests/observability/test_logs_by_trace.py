"""`yardarm logs --trace`: one trace's lines from every instance's file, in time order,
with the lines that are not the services' JSON (NATS, Postgres, the supervisor) left out."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from yardarm.cli import app

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "0af7651916cd43dd8448eb211c80319c"


def line(ts: str, service: str, instance: str, trace_id: str | None, message: str) -> str:
    return json.dumps(
        {"ts": ts, "level": "info", "logger": f"yardarm.{service}", "message": message,
         "service": service, "version": "0.1.0", "track": "stable", "instance": instance,
         "trace_id": trace_id, "span_id": None}
    )  # fmt: skip


def write_logs(home: Path) -> None:
    logs = home / "logs"
    logs.mkdir(parents=True)
    (logs / "gateway-0.log").write_text(
        "--- yardarm: starting gateway-0\n"
        + line("2026-12-07T10:00:00.100+00:00", "gateway", "gateway-0", TRACE, "routed") + "\n"
        + line("2026-12-07T10:00:00.900+00:00", "gateway", "gateway-0", OTHER, "other") + "\n"
    )  # fmt: skip
    (logs / "orders-1.log").write_text(
        line("2026-12-07T10:00:00.050+00:00", "orders", "orders-1", None, "idle") + "\n"
        + line("2026-12-07T10:00:00.300+00:00", "orders", "orders-1", TRACE, "saga started")
        + "\n" + '{"torn": "line' + "\n"
    )  # fmt: skip
    (logs / "fulfillment-0.log").write_text(
        line("2026-12-07T10:00:00.200+00:00", "fulfillment", "fulfillment-0", TRACE, "charged")
        + "\n"
    )
    (logs / "nats.log").write_text(f"[1] 2026/12/07 10:00:00 [INF] {TRACE} is not JSON\n")


def test_a_traces_lines_from_every_instance_come_in_time_order(tmp_path: Path) -> None:
    write_logs(tmp_path)
    result = CliRunner().invoke(app, ["logs", "--trace", TRACE, "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = [row.split(" | ", 1) for row in result.output.splitlines()]
    assert [(src, json.loads(doc)["message"]) for src, doc in rows] == [
        ("gateway-0", "routed"),
        ("fulfillment-0", "charged"),
        ("orders-1", "saga started"),
    ]


def test_a_service_narrows_the_trace_to_its_own_lines(tmp_path: Path) -> None:
    write_logs(tmp_path)
    result = CliRunner().invoke(app, ["logs", "orders", "--trace", TRACE, "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert [row.split(" | ")[0] for row in result.output.splitlines()] == ["orders-1"]


def test_an_unknown_or_malformed_trace_id_is_a_clear_error(tmp_path: Path) -> None:
    write_logs(tmp_path)
    runner = CliRunner()
    missing = runner.invoke(app, ["logs", "--trace", "f" * 32, "--home", str(tmp_path)])
    assert missing.exit_code == 1
    assert "no log line of trace" in missing.output
    bad = runner.invoke(app, ["logs", "--trace", "order-123", "--home", str(tmp_path)])
    assert bad.exit_code == 1
    assert "is not a trace id" in bad.output
