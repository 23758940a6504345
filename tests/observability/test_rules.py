"""The Prometheus rules: committed as generated, valid for promtool, each alert tested
firing and not firing, and every expression naming only series and labels the services
really expose."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.utils import floatToGoString

from tests.observability.binaries import require_binary
from yardarm.observability import metrics_catalog
from yardarm.observability.rules import alert_names, recording_rules, render_files
from yardarm.observability.rules.model import Alert, Record
from yardarm.observability.rules.promql import names_in
from yardarm.observability.rules.render import all_alerts, groups
from yardarm.observability.rules.slo import OPERATIONAL_ROUTES, SLOS, le_text

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "observability"
FILES = render_files()
RULE_FILES = sorted(p for p in FILES if p.startswith("prometheus/rules/"))
TEST_FILES = sorted(p for p in FILES if p.startswith("prometheus/tests/"))
# Prometheus' own series: the scrape's health, with the target labels.
SYNTHETIC = {"up": frozenset({"job", "instance", "environment"})}


def _documents(prefix: str) -> list[dict[str, Any]]:
    return [yaml.safe_load(FILES[p]) for p in sorted(FILES) if p.startswith(prefix)]


def _rules() -> list[dict[str, Any]]:
    return [
        rule
        for doc in _documents("prometheus/rules/")
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def test_committed_files_are_generated() -> None:
    for sub in ("rules", "tests"):
        on_disk = {
            str(p.relative_to(OBSERVABILITY))
            for p in (OBSERVABILITY / "prometheus" / sub).glob("*")
        }
        assert on_disk == {p for p in FILES if p.startswith(f"prometheus/{sub}/")}, (
            "run `uv run yardarm observability` to rewrite observability/"
        )
    for path, text in FILES.items():
        assert (OBSERVABILITY / path).read_text() == text, f"{path} differs from its source"


def test_rendering_is_deterministic() -> None:
    assert render_files() == FILES


@pytest.mark.parametrize("path", RULE_FILES)
def test_promtool_check_rules(path: str) -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", "--lint=all", "--lint-fatal", str(OBSERVABILITY / path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", TEST_FILES)
def test_promtool_test_rules(path: str) -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(OBSERVABILITY / path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _alert_cases() -> list[dict[str, Any]]:
    return [
        case
        for doc in _documents("prometheus/tests/")
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = _alert_cases()
    names = alert_names()
    assert names, "no alerts rendered"
    for name in names:
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"no test fires {name}"
        assert any(not c["exp_alerts"] for c in mine), f"no test shows {name} silent"


def test_every_alert_rule_fires_in_some_test() -> None:
    """Each rule, not only each name: every service's every burn-rate window."""
    fired = [
        (case["alertname"], alert["exp_labels"])
        for case in _alert_cases()
        for alert in case["exp_alerts"]
    ]
    for rule in all_alerts():
        labels = rule.all_labels()
        assert any(name == rule.alert and labels.items() <= exp.items() for name, exp in fired), (
            f"no test fires {rule.alert} {labels}"
        )


def _record_labels() -> dict[str, set[str]]:
    """The labels each recorded series carries: its `by` clause and the rule's labels."""
    out: dict[str, set[str]] = {}
    for group in groups():
        for rule in group.rules:
            if isinstance(rule, Record):
                labels = (names_in(rule.expr).grouping - {"le"}) | {k for k, _ in rule.labels}
                out.setdefault(rule.record, set()).update(labels)
    return out


def _known(series: str, records: dict[str, set[str]]) -> frozenset[str]:
    if series in SYNTHETIC:
        return SYNTHETIC[series]
    if series in records:
        return frozenset(records[series])
    try:
        return metrics_catalog.label_names(series)
    except KeyError:
        raise AssertionError(f"{series} is no series a service exposes") from None


def test_expressions_use_only_known_series_and_labels() -> None:
    records = _record_labels()
    for rule in _rules():
        name = rule.get("record") or rule.get("alert")
        names = names_in(rule["expr"])
        carried: set[str] = set()
        for series, matchers in names.selectors:
            known = _known(series, records)
            carried |= known
            for matcher in matchers:
                assert matcher.label in known, f"{name}: {series} has no label {matcher.label}"
                if matcher.label == "service" and matcher.op == "=" and series not in records:
                    family = metrics_catalog.BY_SERIES.get(series)
                    assert family is None or matcher.value in family.services, (
                        f"{name}: {matcher.value} does not expose {series}"
                    )
        missing = names.grouping - carried
        assert not missing, f"{name}: grouping by {missing}, which no series it reads carries"


def test_recording_rules_read_series_a_healthy_stack_produces() -> None:
    """Every recording rule must return data from a stack under load (the live test
    queries each one), so none may read a series that appears only on trouble."""
    records = _record_labels()
    for rule in _rules():
        if "record" not in rule:
            continue
        for series, _ in names_in(rule["expr"]).selectors:
            if series in records or series in SYNTHETIC:
                continue
            assert metrics_catalog.BY_SERIES[series].healthy, f"{rule['record']} reads {series}"


def test_the_names_for_the_live_test() -> None:
    rules = _rules()
    for names, key in ((recording_rules(), "record"), (alert_names(), "alert")):
        assert len(names) == len(set(names))
        assert set(names) == {r[key] for r in rules if key in r}
    assert "DatastoreNoLeader" in alert_names()
    assert {"service:slo_errors:ratio_rate5m", "service_version_track:requests:rate1m"} <= set(
        recording_rules()
    )


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_alert_has_labels_annotations_and_a_runbook_section() -> None:
    anchors = _anchors((ROOT / "docs" / "alerts.md").read_text())
    for rule in _rules():
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in ("page", "ticket")
        notes = rule["annotations"]
        assert "{{ $value" in notes["description"], f"{rule['alert']} shows no number"
        assert notes["summary"] and notes["description"]
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "docs/alerts.md" and anchor in anchors, notes["runbook_url"]


def test_latency_thresholds_are_buckets_printed_alike_by_every_client() -> None:
    from yardarm_kit.metrics import LATENCY_BUCKETS

    for slo in SLOS:
        threshold = slo.latency.threshold_s
        assert threshold in LATENCY_BUCKETS, f"{slo.service}: {threshold} is no bucket boundary"
        assert le_text(threshold) == floatToGoString(threshold)
        assert str(threshold) == f"{threshold:g}", "Go prints the boundary without a .0"
    with pytest.raises(ValueError, match="fractional"):
        le_text(1.0)


def test_the_left_out_routes_are_the_kits_operational_paths() -> None:
    from yardarm_kit.service import OPERATIONAL_PATHS

    assert set(OPERATIONAL_ROUTES) == set(OPERATIONAL_PATHS)


def test_label_values_the_rules_match_are_ones_the_services_set() -> None:
    from yardarm_datastore.app import ROLES
    from yardarm_gateway.telemetry import BREAKER_VALUE

    exprs = "\n".join(r["expr"] for r in _rules())
    assert 'role="leader"' in exprs and "leader" in ROLES
    assert 'state="open"' in exprs and "open" in BREAKER_VALUE
    kit = ROOT / "services" / "kit" / "src" / "yardarm_kit" / "verdicts.py"
    for outcome in ("failed", "dead_lettered"):  # the consumer's verdicts
        assert f'"{outcome}"' in kit.read_text()


def test_alert_annotations_render_the_templates() -> None:
    """The promtool tests expect exactly what Prometheus would print for a value."""
    alert = next(a for a in all_alerts() if a.alert == "DatastoreNoLeader")
    assert isinstance(alert, Alert)
    assert '{{ $value | printf "%.0f" }} replica(s)' in alert.annotations()["description"]
    shown = alert.expected_annotations(1, {"environment": "local"})
    assert "in local has" in shown["description"] and "; 1 replica(s)" in shown["description"]


def test_names_in_reads_selectors_and_grouping() -> None:
    names = names_in(
        'sum by (environment, service) (rate(foo_total{service="orders", '
        'http_route!~"/a\\\\.b"}[5m])) / on (environment) group_left bar offset 5m > 0'
    )
    assert names.metrics == {"foo_total", "bar"}
    assert names.grouping == {"environment", "service"}
    matchers = dict(names.selectors)["foo_total"]
    assert [(m.label, m.op, m.value) for m in matchers] == [
        ("service", "=", "orders"),
        ("http_route", "!~", "/a\\.b"),
    ]
