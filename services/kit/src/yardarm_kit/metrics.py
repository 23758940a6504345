"""Prometheus metrics that always carry the service identity labels.

Every series gets `service`, `version`, `track` and `instance`, so canary queries need no
joins; histograms attach the current trace id as an exemplar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from yardarm_kit.settings import ServiceSettings
from yardarm_kit.telemetry import current_trace_ids

BASE_LABELS = ("service", "version", "track", "instance")
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class _Labeled:
    """Base labels filled in, and labelled children cached by label values:
    prometheus_client's `labels()` validates and hashes on every call, which shows on
    hot paths."""

    def __init__(self, metric: Any, base: dict[str, str]) -> None:
        self._metric = metric
        self._base = base
        self._children: dict[tuple[tuple[str, str], ...], Any] = {}

    def remove(self, **labels: str) -> None:
        """Drop one series (a thing that no longer exists), if it was ever set."""
        key = tuple(labels.items())
        if self._children.pop(key, None) is not None:
            merged = {**self._base, **labels}
            self._metric.remove(*(merged[name] for name in self._metric._labelnames))

    def _child(self, labels: dict[str, str]) -> Any:
        key = tuple(labels.items())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metric.labels(**self._base, **labels)
        return child


class LabeledCounter(_Labeled):
    """A counter whose base labels are filled in for you."""

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)


class LabeledGauge(_Labeled):
    """A gauge whose base labels are filled in for you."""

    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).dec(amount)


class LabeledHistogram(_Labeled):
    """A histogram whose observations carry the current trace id as an exemplar."""

    def observe(self, value: float, **labels: str) -> None:
        child = self._child(labels)
        trace_id, _ = current_trace_ids()
        child.observe(value, exemplar={"trace_id": trace_id} if trace_id else None)


GaugeReading = Iterable[tuple[Sequence[str], float]]


class _ReadGauge:
    """A gauge whose samples are read from live state at scrape time, so a label set
    that no longer exists (a removed route) vanishes instead of keeping its last value."""

    def __init__(
        self,
        name: str,
        doc: str,
        labelnames: Sequence[str],
        base: dict[str, str],
        read: Callable[[], GaugeReading],
    ) -> None:
        self._name = name
        self._doc = doc
        self._labelnames = (*BASE_LABELS, *labelnames)
        self._base = tuple(base[label] for label in BASE_LABELS)
        self._read = read

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self._name, self._doc, labels=self._labelnames)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for labels, value in self._read():
            family.add_metric([*self._base, *labels], value)
        yield family


class Metrics:
    """The metric registry of one service process."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.registry = CollectorRegistry()
        self._base = {
            "service": settings.service,
            "version": settings.version,
            "track": settings.track,
            "instance": settings.instance,
        }
        self.http_server_duration = self.histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
            ("http_route", "http_request_method", "http_response_status_code"),
        )
        self.http_client_duration = self.histogram(
            "http_client_request_duration_seconds",
            "Duration of HTTP client requests to upstreams.",
            ("upstream", "http_request_method", "http_response_status_code"),
        )

    def counter(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> LabeledCounter:
        metric = Counter(name, doc, (*BASE_LABELS, *labelnames), registry=self.registry)
        return LabeledCounter(metric, self._base)

    def gauge(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> LabeledGauge:
        metric = Gauge(name, doc, (*BASE_LABELS, *labelnames), registry=self.registry)
        return LabeledGauge(metric, self._base)

    def read_gauge(
        self, name: str, doc: str, labelnames: Sequence[str], read: Callable[[], GaugeReading]
    ) -> None:
        """A gauge computed from `read()` (label values, value) at every scrape."""
        self.registry.register(_ReadGauge(name, doc, labelnames, self._base, read))

    def histogram(
        self,
        name: str,
        doc: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] | None = None,
    ) -> LabeledHistogram:
        metric = Histogram(
            name,
            doc,
            (*BASE_LABELS, *labelnames),
            registry=self.registry,
            buckets=tuple(buckets or LATENCY_BUCKETS),
        )
        return LabeledHistogram(metric, self._base)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """Body and content type: OpenMetrics (with exemplars) when the scraper asks."""
        if "application/openmetrics-text" in accept:
            return openmetrics_latest(self.registry), OPENMETRICS_CONTENT_TYPE  # type: ignore[no-untyped-call]
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
