"""The Grafana dashboards: committed as rendered, loadable by the pinned SDK without
loss, and every query names only series, labels and variables that exist."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.cog.runtime import UnknownDataquery
from grafana_foundation_sdk.models import loki as loki_models
from grafana_foundation_sdk.models import prometheus as prometheus_models
from grafana_foundation_sdk.models.dashboard import Dashboard

from tests.observability.binaries import require_binary
from yardarm.observability import dashboards, stack
from yardarm.observability.metrics_catalog import label_names, reference_problems, selectors

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "observability" / dashboards.DIRECTORY
RENDER = "uv run yardarm observability"

# The only variables a query may use: the dashboards' own and Grafana's interval ones,
# which the live test substitutes.
ALLOWED_VARIABLES = {
    "environment",
    "service",
    "version",
    "track",
    "__rate_interval",
    "__interval",
    "__range",
}
SERVICE_DASHBOARDS = {f"yardarm-{service}": service for service in stack.SERVICES}
DATASOURCE_UIDS = {stack.PROMETHEUS_UID, stack.LOKI_UID, stack.JAEGER_UID}

DOCUMENTS = dashboards.documents()
QUERIES = dashboards.prometheus_queries()


def _panels(uid: str) -> list[dict[str, Any]]:
    return list(dashboards.panels(DOCUMENTS[uid]))


def _targets() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [
        (uid, panel, target)
        for uid in DOCUMENTS
        for panel in _panels(uid)
        for target in panel.get("targets", [])
    ]


def test_the_committed_files_are_the_rendered_ones() -> None:
    rendered = dashboards.render_files()
    committed = {
        f"{dashboards.DIRECTORY}/{path.name}": path.read_text()
        for path in sorted(COMMITTED.glob("*.json"))
    }
    assert committed.keys() == rendered.keys(), f"dashboards are out of date: run `{RENDER}`"
    for path, text in rendered.items():
        assert committed[path] == text, f"{path} is out of date: run `{RENDER}`"


def test_dashboards_are_named_by_uid_only() -> None:
    """A numeric id belongs to one Grafana instance; provisioning matches on the uid."""
    for document in DOCUMENTS.values():
        assert "id" not in document
        assert "version" not in document


def test_the_six_dashboards_have_their_fixed_uids() -> None:
    assert set(DOCUMENTS) == {
        "yardarm-overview",
        "yardarm-gateway",
        "yardarm-orders",
        "yardarm-fulfillment",
        "yardarm-datastore",
        "yardarm-rollouts",
    }


@pytest.mark.parametrize("uid", sorted(DOCUMENTS))
def test_each_dashboard_round_trips_through_the_sdk_model(uid: str) -> None:
    """Load the committed JSON into the SDK's Dashboard model and encode it again:
    anything the pinned SDK (hence Grafana 11.6's schema) does not know would be
    dropped or rewritten, and the documents would differ."""
    register_default_plugins()
    original = json.loads((COMMITTED / f"{uid}.json").read_text())
    model = Dashboard.from_json(original)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == original
    # Targets decode as the datasource's own query type, not an opaque bag, so the
    # comparison above covers their fields.
    for panel in model.panels or []:
        for target in getattr(panel, "targets", None) or []:
            assert not isinstance(target, UnknownDataquery), panel.title
            assert isinstance(target, prometheus_models.Dataquery | loki_models.Dataquery)


@pytest.mark.parametrize(("uid", "title", "expr"), QUERIES)
def test_queries_use_only_the_allowed_variables(uid: str, title: str, expr: str) -> None:
    used = set(re.findall(r"\$\{?(\w+)", expr))
    assert used <= ALLOWED_VARIABLES, f"{uid} / {title}: {used - ALLOWED_VARIABLES}"
    assert "[[" not in expr, "the deprecated [[var]] syntax"


@pytest.mark.parametrize(("uid", "title", "expr"), QUERIES)
def test_queries_name_only_existing_series_and_labels(uid: str, title: str, expr: str) -> None:
    assert reference_problems(expr) == [], f"{uid} / {title}"


@pytest.mark.parametrize(("uid", "title", "expr"), QUERIES)
def test_every_selector_is_narrowed_by_the_variables(uid: str, title: str, expr: str) -> None:
    """Each series is filtered on $environment and $track, on $service unless the
    dashboard is one service's, and on $version unless it is the gateway's view of an
    upstream (the gateway's series carry the gateway's version, not the upstream's) or
    the rollout controller's view of a rolled service (likewise: `rollout_service`, and
    `rollout_track` where the series has one)."""
    service = SERVICE_DASHBOARDS.get(uid)
    for selector in selectors(expr):
        where = f"{uid} / {title}: {selector.name}"
        assert "$environment" in selector.values("environment"), where
        controller_view = "$service" in selector.values("rollout_service")
        if controller_view:
            assert selector.values("service") == [stack.ROLLOUT_CONTROLLER], where
            if "rollout_track" in label_names(selector.name):
                assert "$track" in selector.values("rollout_track"), where
        else:
            tracks = selector.values("track") + selector.values("upstream_track")
            assert "$track" in tracks, where
        upstream_view = "$service" in selector.values("upstream") or controller_view
        if service is None:
            assert upstream_view or "$service" in selector.values("service"), where
        else:
            assert selector.values("service") == [service], where
        assert upstream_view or "$version" in selector.values("version"), where
        for label, op, value in selector.matchers:
            if value.startswith("$"):
                assert op == "=~", f"{where}: {label}{op}{value} (multi-value needs =~)"


@pytest.mark.parametrize(("uid", "title", "expr"), QUERIES)
def test_rates_use_the_rate_interval(uid: str, title: str, expr: str) -> None:
    """Grafana widens `$__rate_interval` to at least four scrape intervals; a fixed
    window would be empty or coarse depending on the scrape interval and zoom."""
    for window in re.findall(r"\[([^\]]+)\]", expr):
        assert window in ("$__rate_interval", "$__range"), f"{uid} / {title}: [{window}]"


def test_every_expression_parses(tmp_path: Path) -> None:
    """promtool parses each expression (variables substituted) as a recording rule."""
    promtool = require_binary("promtool")
    substitutions = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
    rules = []
    for index, (_, _, expr) in enumerate(QUERIES):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        expr = re.sub(r"\$\w+", ".*", expr)
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "queries.json"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_variables_are_multi_value_prometheus_queries_over_known_labels() -> None:
    for uid, document in DOCUMENTS.items():
        variables = {v["name"]: v for v in document["templating"]["list"]}
        expected = ["environment", "version", "track"]
        if uid not in SERVICE_DASHBOARDS:
            expected.insert(1, "service")
        assert list(variables) == expected, uid
        for name, variable in variables.items():
            assert variable["datasource"]["uid"] == stack.PROMETHEUS_UID
            assert variable["multi"] and variable["includeAll"], (uid, name)
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
            assert match, variable["query"]
            assert match.group(2) == name
            used = set(re.findall(r"\$(\w+)", match.group(1)))
            assert used <= ALLOWED_VARIABLES
            assert reference_problems(match.group(1)) == [], (uid, name)


def test_every_panel_names_a_stack_datasource() -> None:
    for uid, panel, target in _targets():
        assert panel["datasource"]["uid"] in DATASOURCE_UIDS, (uid, panel["title"])
        assert target["datasource"] == panel["datasource"], (uid, panel["title"])
    for uid in DOCUMENTS:
        for panel in _panels(uid):
            assert panel["datasource"]["uid"] in DATASOURCE_UIDS, (uid, panel["title"])


def test_latency_panels_carry_exemplars() -> None:
    """Every quantile of a duration histogram asks for exemplars, whose trace_id the
    Prometheus datasource links to Jaeger."""
    latency_targets = [
        (uid, panel["title"], target)
        for uid, panel, target in _targets()
        if re.search(r"histogram_quantile\(.*_seconds_bucket\{", target.get("expr", ""))
    ]
    assert len(latency_targets) >= len(DOCUMENTS)
    for uid, title, target in latency_targets:
        assert target.get("exemplar") is True, f"{uid} / {title}"


def test_panels_say_what_they_answer_in_what_unit() -> None:
    for uid in DOCUMENTS:
        titles = [panel["title"] for panel in _panels(uid)]
        assert len(titles) == len(set(titles)), f"{uid}: titles name panels in reports"
        for panel in _panels(uid):
            assert panel.get("description", "").strip(), (uid, panel["title"])
            if panel["type"] in ("timeseries", "stat"):
                assert panel["fieldConfig"]["defaults"].get("unit"), (uid, panel["title"])
            for target in panel.get("targets", []):
                if panel["type"] != "logs":
                    assert target.get("legendFormat"), (uid, panel["title"])


def test_panels_tile_the_grid() -> None:
    for uid, document in DOCUMENTS.items():
        taken: set[tuple[int, int]] = set()
        ids = [panel["id"] for panel in document["panels"]]
        assert ids == list(range(1, len(ids) + 1)), uid
        for panel in document["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (uid, panel["title"])
            cells = {
                (pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])
            }
            assert not cells & taken, f"{uid}: {panel['title']} overlaps another panel"
            taken |= cells


@pytest.mark.parametrize(("uid", "service"), sorted(SERVICE_DASHBOARDS.items()))
def test_each_service_dashboard_shows_its_error_logs_from_loki(uid: str, service: str) -> None:
    logs = [panel for panel in _panels(uid) if panel["type"] == "logs"]
    assert len(logs) == 1, uid
    assert logs[0]["datasource"]["uid"] == stack.LOKI_UID
    [target] = logs[0]["targets"]
    assert target["expr"] == f'{{service_name="{service}"}} | severity_text=~"ERROR|CRITICAL"'


def test_the_rollouts_dashboard_compares_canary_with_baseline_and_shows_weights() -> None:
    exprs = {title: expr for uid, title, expr in QUERIES if uid == "yardarm-rollouts"}
    assert "yardarm_gateway_route_weight{" in exprs["Route weights per track"]
    for title in ("Error ratio: canary vs baseline", "p99 latency: canary vs baseline"):
        assert 'track=~"canary|baseline"' in exprs[title]
        assert re.search(r"by \((le, )?service, track\)", exprs[title]), title


def test_the_rollouts_dashboard_shows_what_the_controller_did() -> None:
    """Each rollout's phase, weights, events, verdicts and notifications, from the
    controller's own series, per rolled service."""
    exprs = {title: expr for uid, title, expr in QUERIES if uid == "yardarm-rollouts"}
    shown = {
        "Rollout phase per service": "yardarm_rollout_phase{",
        "Rollout weights per track": "yardarm_rollout_weight{",
        "Rollout events": "yardarm_rollout_events_total{",
        "Analyses by outcome and rule": "yardarm_rollout_analyses_total{",
        "Webhook notifications": "yardarm_rollout_webhook_deliveries_total{",
    }
    for title, series in shown.items():
        assert series in exprs[title], title
        assert re.search(r"by \(rollout_service\b", exprs[title]), title
    assert "by (rollout_service, outcome, rule)" in exprs["Analyses by outcome and rule"]
    phases = exprs["Rollout phase per service"]
    for phase in ("progressing", "paused", "completed", "aborted", "failed"):
        assert f'phase="{phase}"' in phases
