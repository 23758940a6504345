"""What a person sees: one live progress line during the run, a compact summary after."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from yardarm.load.engine import LoadProgress
from yardarm.load.summary import LoadSummary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def progress_line(progress: LoadProgress) -> Text:
    """elapsed, sent, rate, errors, dropped and p99 so far."""
    line = Text()
    line.append(f"{progress.elapsed_s:6.1f}s", style="bold")
    line.append(f"  sent {progress.sent:,}")
    line.append(f"  rate {progress.rate:,.1f}/s")
    line.append(f"  errors {progress.failures:,}", style="red" if progress.failures else "")
    if progress.dropped:
        line.append(f"  dropped {progress.dropped:,}", style="yellow")
    line.append(f"  p99 {_ms(progress.p99_ms)}")
    return line


class LiveLine:
    """A transient status line; `update` is the engine's on_progress callback."""

    def __init__(self, console: Console) -> None:
        self._live = Live(
            Text("connecting..."), console=console, transient=True, auto_refresh=False
        )

    def __enter__(self) -> LiveLine:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.__exit__(exc_type, exc, tb)

    def update(self, progress: LoadProgress) -> None:
        """Redraw with the latest numbers."""
        self._live.update(progress_line(progress), refresh=True)


def render_summary(summary: LoadSummary) -> RenderableType:
    """The summary for a terminal; `LoadSummary.to_json` is the machine-readable form."""
    if summary.mode == "open":
        shape = (
            f"open loop at {summary.target_rate:g}/s, {summary.workers} connections, "
            f"at most {summary.max_in_flight} in flight"
        )
    else:
        shape = f"closed loop, {summary.workers} workers"
    head = Text.assemble(
        ("load ", "bold"),
        (summary.target, "cyan"),
        f"\n{shape}, mix {_mix(summary)}, stopped by {summary.stopped_by}",
    )
    success = "-" if summary.success_rate is None else f"{summary.success_rate:.2%}"
    totals = Table.grid(padding=(0, 2))
    totals.add_row(
        "requests",
        f"{summary.requests:,} in {summary.duration_s:.2f}s "
        f"({summary.achieved_rate:,.1f}/s sent, {summary.throughput:,.1f}/s ok)",
    )
    if summary.mode == "open":
        totals.add_row("dropped", _count(summary.dropped, "yellow"))
    totals.add_row(
        "success",
        f"{success}  2xx/3xx {summary.ok:,}  4xx {_count(summary.client_errors, 'yellow')}  "
        f"5xx {_count(summary.server_errors, 'red')}  "
        f"transport {_count(summary.transport_errors, 'red')}",
    )
    latency = summary.latency_ms
    totals.add_row(
        "latency",
        f"p50 {_ms(latency.p50)}  p95 {_ms(latency.p95)}  p99 {_ms(latency.p99)}  "
        f"max {_ms(latency.max)}",
    )
    if summary.status_codes:
        codes = "  ".join(f"{code}: {n:,}" for code, n in sorted(summary.status_codes.items()))
        totals.add_row("status", codes)
    if summary.errors:
        totals.add_row(
            "errors", "  ".join(f"{name}: {n:,}" for name, n in sorted(summary.errors.items()))
        )
    kinds = Table("kind", "requests", "ok", "4xx", "5xx", "transport", "p50", "p99")
    for kind, stats in summary.kinds.items():
        kinds.add_row(
            kind,
            f"{stats.requests:,}",
            f"{stats.ok:,}",
            f"{stats.client_errors:,}",
            f"{stats.server_errors:,}",
            f"{stats.transport_errors:,}",
            _ms(stats.p50_ms),
            _ms(stats.p99_ms),
        )
    return Group(head, totals, kinds)


def _mix(summary: LoadSummary) -> str:
    return ",".join(f"{kind}={weight}" for kind, weight in summary.mix.items())


def _count(value: int, style: str) -> str:
    return f"[{style}]{value:,}[/]" if value else "0"
