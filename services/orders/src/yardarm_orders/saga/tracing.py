"""Spans for saga work, placed in the trace of the order's original request."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from opentelemetry import propagate, trace
from yardarm_kit.messaging import current_traceparent


@contextmanager
def order_span(
    tracer: trace.Tracer, name: str, order_id: UUID, traceparent: str | None
) -> Iterator[trace.Span]:
    """A span continuing the order's trace (so one order is one trace), current inside."""
    context = propagate.extract({"traceparent": traceparent}) if traceparent else None
    with tracer.start_as_current_span(
        name, context=context, attributes={"order.id": str(order_id)}
    ) as span:
        yield span


def command_traceparent(order_trace_id: str | None, stored: str | None) -> str | None:
    """The traceparent a command should carry: the current span when it belongs to the
    order's trace (so the trace tree shows what caused the command), else the order's own.

    A reply from a participant that lost the trace context must not split the saga.
    """
    current = current_traceparent()
    if current and order_trace_id and current.split("-")[1:2] == [order_trace_id]:
        return current
    return stored or current
