"""One trace's log lines from every instance's log file, in time order: the data behind
`yardarm logs --trace`.

The services write one JSON object per line with `ts` (ISO 8601, UTC) and `trace_id`;
lines that are not JSON (NATS, Postgres, the supervisor's own notes) are skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TRACE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, order=True)
class LogLine:
    ts: str
    source: str
    text: str


def trace_lines(files: Iterable[Path], trace_id: str, service: str | None = None) -> list[LogLine]:
    """Every JSON line of `trace_id` in `files` (rotated ones too), oldest first; only
    `service`'s when given."""
    needle = f'"trace_id": "{trace_id}"'
    found: list[LogLine] = []
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for raw in handle:
                if needle not in raw:  # cheap filter before parsing
                    continue
                try:
                    doc = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                if not isinstance(doc, dict) or doc.get("trace_id") != trace_id:
                    continue
                if service is not None and doc.get("service") != service:
                    continue
                found.append(LogLine(str(doc.get("ts", "")), path.stem, raw.rstrip("\n")))
    return sorted(found)
