"""Read the local OTLP/JSON telemetry files and render one trace as a tree.

Every service appends `ExportTraceServiceRequest` objects, one per line, to
`<home>/telemetry/<instance>.jsonl` (rotated files get a numeric suffix). This module
is the reader behind `yardarm trace`; it needs no running collector. The same OTLP/JSON
parsing (`spans_of`) and tree building (`tree`) serve Jaeger's query API
(`yardarm.jaeger_query`), whose answers are OTLP/JSON too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from rich.tree import Tree

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
# OTLP/JSON writers spell enums either way: our files by name, Jaeger by number.
_KIND_NUMBERS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer",
                 5: "consumer"}  # fmt: skip
ORDER_ID_ATTRIBUTES = ("order.id", "yardarm.order.id", "messaging.message.conversation_id")


@dataclass
class Span:
    """One span, flattened from OTLP/JSON with its resource's service identity."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    service: str
    instance: str
    attributes: dict[str, Any]
    error: bool
    children: list[Span] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _attr_value(value: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_attr_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def _attributes(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _attr_value(item.get("value", {})) for item in items}


def telemetry_files(home: Path) -> list[Path]:
    """All span files under the state directory, rotated ones included."""
    directory = home / "telemetry"
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if ".jsonl" in p.name)


def iter_spans(files: Iterable[Path]) -> Iterator[Span]:
    """Every span in the files; a torn last line (a process still writing) is skipped."""
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    request = json.loads(line)
                except json.JSONDecodeError:
                    continue
                yield from spans_of(request)


def _kind(value: object) -> str:
    if isinstance(value, int):
        return _KIND_NUMBERS.get(value, str(value))
    return str(value or "").removeprefix("SPAN_KIND_").lower()


def spans_of(request: dict[str, Any]) -> Iterator[Span]:
    """The spans of one OTLP/JSON traces document (`{"resourceSpans": [...]}`)."""
    for resource_spans in request.get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", "?"))
        instance = str(resource.get("service.instance.id", service))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for raw in scope_spans.get("spans", []):
                status = raw.get("status", {})
                yield Span(
                    trace_id=raw["traceId"],
                    span_id=raw["spanId"],
                    parent_id=raw.get("parentSpanId") or None,
                    name=raw.get("name", ""),
                    kind=_kind(raw.get("kind")),
                    start_ns=int(raw.get("startTimeUnixNano", 0)),
                    end_ns=int(raw.get("endTimeUnixNano", 0)),
                    service=service,
                    instance=instance,
                    attributes=_attributes(raw.get("attributes", [])),
                    error=status.get("code") in ("STATUS_CODE_ERROR", 2),
                )


def find_trace_id(home: Path, ref: str) -> str | None:
    """A trace id as given, or the trace of the span that names this order id."""
    if TRACE_ID.match(ref.lower()):
        return ref.lower()
    for span in iter_spans(telemetry_files(home)):
        if any(str(span.attributes.get(key)) == ref for key in ORDER_ID_ATTRIBUTES):
            return span.trace_id
    return None


def load_trace(home: Path, trace_id: str) -> list[Span]:
    """The root spans of one trace, children attached and sorted by start time."""
    return tree(s for s in iter_spans(telemetry_files(home)) if s.trace_id == trace_id)


def tree(trace_spans: Iterable[Span]) -> list[Span]:
    """The root spans of one trace's spans, children attached and sorted by start time;
    a span whose parent is missing (not flushed, or sampled away) is a root."""
    spans = {s.span_id: s for s in trace_spans}
    roots: list[Span] = []
    for span in spans.values():
        parent = spans.get(span.parent_id) if span.parent_id else None
        if parent is None:
            roots.append(span)
        else:
            parent.children.append(span)
    for span in spans.values():
        span.children.sort(key=lambda s: s.start_ns)
    return sorted(roots, key=lambda s: s.start_ns)


def services_in(roots: Iterable[Span]) -> set[str]:
    """Every service that contributed a span under these roots."""
    found: set[str] = set()
    stack = list(roots)
    while stack:
        span = stack.pop()
        found.add(span.service)
        stack.extend(span.children)
    return found


def render(trace_id: str, roots: list[Span]) -> Tree:
    """A rich tree: service, span name, kind, offset from the trace start and duration."""
    start = min((r.start_ns for r in roots), default=0)
    tree = Tree(Text(f"trace {trace_id}", style="bold"))

    def add(node: Tree, span: Span) -> None:
        label = Text()
        label.append(f"{span.service:<12}", style="cyan")
        label.append(f" {span.name}", style="bold red" if span.error else "bold")
        label.append(f"  {span.kind}", style="dim")
        offset = (span.start_ns - start) / 1e6
        label.append(f"  +{offset:.1f} ms  {span.duration_ms:.1f} ms", style="green")
        status = span.attributes.get("http.response.status_code")
        if status is not None:
            label.append(f"  {status}", style="red" if int(status) >= 500 else "yellow")
        child = node.add(label)
        for sub in span.children:
            add(child, sub)

    for root in roots:
        add(tree, root)
    return tree
