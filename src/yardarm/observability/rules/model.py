"""Recording rules, alerts and rule groups as values.

An alert's summary and description are written once, as Python format strings whose
fields are `{value}` (the alert's value, printed with `value_format`) and label names
(`{environment}`): `annotations()` renders them as Prometheus templates for the rule
file, `expected_annotations()` with given values for a promtool test, so a test's
expectation cannot drift from the rule's text.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["page", "ticket"]

RUNBOOK = "docs/alerts.md"


def runbook_url(alert: str) -> str:
    """The alert's section of docs/alerts.md (its heading is the alert name)."""
    return f"{RUNBOOK}#{alert.lower()}"


@dataclass(frozen=True)
class Record:
    """A recording rule."""

    record: str
    expr: str
    labels: tuple[tuple[str, str], ...] = ()

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"record": self.record, "expr": self.expr}
        if self.labels:
            doc["labels"] = dict(self.labels)
        return doc


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


@dataclass(frozen=True)
class Alert:
    """An alerting rule. `labels` are added to the expression's own; `severity` is
    `page` (someone acts now) or `ticket` (someone acts within the working day)."""

    alert: str
    expr: str
    severity: Severity
    summary: str
    description: str
    for_: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    value_format: str = "%.0f"

    def _render(self, template: str, values: dict[str, str]) -> str:
        return template.format(**{name: values[name] for name in _fields(template)})

    def annotations(self) -> dict[str, str]:
        """The annotations as Prometheus templates."""
        names = set(_fields(self.summary)) | set(_fields(self.description))
        values = {name: "{{ $labels." + name + " }}" for name in names}
        values["value"] = '{{ $value | printf "' + self.value_format + '" }}'
        return {
            "summary": self._render(self.summary, values),
            "description": self._render(self.description, values),
            "runbook_url": runbook_url(self.alert),
        }

    def expected_annotations(self, value: float, labels: dict[str, str]) -> dict[str, str]:
        """The annotations Prometheus renders for this value and these labels."""
        values = {**labels, "value": self.value_format % value}
        return {
            "summary": self._render(self.summary, values),
            "description": self._render(self.description, values),
            "runbook_url": runbook_url(self.alert),
        }

    def all_labels(self) -> dict[str, str]:
        """The labels the rule adds (severity included)."""
        return {"severity": self.severity, **dict(self.labels)}

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"alert": self.alert, "expr": self.expr}
        if self.for_:
            doc["for"] = self.for_
        doc["labels"] = self.all_labels()
        doc["annotations"] = self.annotations()
        return doc


Rule = Record | Alert


@dataclass(frozen=True)
class Group:
    """A rule group; it is written to `prometheus/rules/<name>.yml`."""

    name: str
    rules: tuple[Rule, ...]
    interval: str | None = None  # None: Prometheus' evaluation_interval

    def document(self) -> dict[str, Any]:
        group: dict[str, Any] = {"name": self.name}
        if self.interval:
            group["interval"] = self.interval
        group["rules"] = [r.document() for r in self.rules]
        return {"groups": [group]}
