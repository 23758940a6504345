"""What a batch may skip: the tracer for a delivery of an unsampled trace, only where its
sampler would drop the span anyway."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
)
from opentelemetry.trace import NoOpTracer
from yardarm_kit.deliveries import unsampled_parents_dropped_by


def test_unsampled_parents_are_skipped_only_where_the_sampler_would_drop_them() -> None:
    default = TracerProvider().get_tracer("t")  # ParentBased(ALWAYS_ON)
    ratio = TracerProvider(sampler=ParentBasedTraceIdRatio(0.5)).get_tracer("t")
    keeps_unsampled = ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)
    assert unsampled_parents_dropped_by(default) is not None
    assert unsampled_parents_dropped_by(ratio) is not None
    assert unsampled_parents_dropped_by(TracerProvider(sampler=ALWAYS_ON).get_tracer("t")) is None
    assert (
        unsampled_parents_dropped_by(TracerProvider(sampler=keeps_unsampled).get_tracer("t"))
        is None
    )
    assert unsampled_parents_dropped_by(NoOpTracer()) is None
