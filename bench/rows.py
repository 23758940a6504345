"""Result rows: one format for every benchmark, in a file and on screen.

A row compares yardarm with its peer and its ratio always reads "higher is better", so
every results file can be read the same way (see README.md, "Result rows").
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypedDict

from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"
INVERTED = " (ratio inverted: peer/yardarm)"


class Row(TypedDict):
    """One comparison: yardarm's value, the peer's, and yardarm/peer (higher is better)."""

    benchmark: str
    metric: str
    yardarm: float | None
    peer: str | None
    peer_value: float | None
    ratio: float | None
    params: dict[str, object]
    date: str


def make_row(
    benchmark: str,
    metric: str,
    value: float | None,
    *,
    params: Mapping[str, object],
    date: str,
    peer: str | None = None,
    peer_value: float | None = None,
    lower_is_better: bool = False,
    with_ratio: bool = True,
) -> Row:
    """A row whose ratio always reads "higher is better" for yardarm.

    For lower-is-better metrics the ratio is peer/yardarm and the metric name says so,
    so a reader never has to know which way a metric points.
    """
    ratio: float | None = None
    if with_ratio and peer is not None and value and peer_value:
        ratio = peer_value / value if lower_is_better else value / peer_value
    return Row(
        benchmark=benchmark,
        metric=metric + (INVERTED if lower_is_better and ratio is not None else ""),
        yardarm=_rounded(value),
        peer=peer,
        peer_value=_rounded(peer_value),
        ratio=None if ratio is None else round(ratio, 4),
        params=dict(params),
        date=date,
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def write_results(path: Path, rows: Sequence[Row]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(rows), indent=2) + "\n", encoding="utf-8")
    return path


def results_table(title: str, rows: Sequence[Row]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("setup")
    table.add_column("yardarm", justify="right")
    table.add_column("peer")
    table.add_column("peer value", justify="right")
    table.add_column("ratio (>1: yardarm better)", justify="right")
    for row in rows:
        table.add_row(
            row["metric"],
            str(row["params"].get("setup", "")),
            _cell(row["yardarm"]),
            row["peer"] or "-",
            _cell(row["peer_value"]),
            "-" if row["ratio"] is None else f"{row['ratio']:.3f}",
        )
    return table


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
