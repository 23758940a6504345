"""The table `yardarm top` shows: one row per service, version and track."""

from __future__ import annotations

from rich.table import Table

from yardarm.red import RedView


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _percent(ratio: float, rate: float) -> str:
    if rate <= 0:
        return "-"
    colour = "red" if ratio >= 0.01 else "yellow" if ratio > 0 else "green"
    return f"[{colour}]{ratio * 100:.2f}%[/]"


def render(view: RedView, prometheus: str | None) -> Table:
    source = f"Prometheus {prometheus}" if prometheus else "the instances' /metrics"
    table = Table(
        "service", "version", "track", "inst", "req/s", "errors", "p50", "p99", "msg/s",
        "msg errors",
        title=f"rates over {view.window_s:g}s, from {source}",
    )  # fmt: skip
    for row in view.rows:
        table.add_row(
            row.service,
            row.version,
            row.track,
            str(row.instances),
            f"{row.requests_per_s:.1f}",
            _percent(row.error_ratio, row.requests_per_s),
            _ms(row.p50_s),
            _ms(row.p99_s),
            f"{row.messages_per_s:.1f}",
            _percent(row.message_error_ratio, row.messages_per_s),
        )
    if not view.rows:
        table.caption = "no traffic yet: try `yardarm load` in another shell"
    return table
