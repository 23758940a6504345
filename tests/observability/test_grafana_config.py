"""Grafana's provisioning: committed as generated, datasources on the stack's fixed UIDs
and URLs, every link between them (metric -> trace -> logs -> trace) landing on a
datasource that exists and of the right kind, link templates that survive Grafana's
environment expansion, and the dashboards provider reading where the dashboards are
mounted."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from yardarm.observability import backends, grafana, stack

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "observability"
RENDER = "uv run yardarm observability"
FILES = grafana.render_files()

# Grafana expands `$VAR`, `${VAR}` and `$$` (a literal `$`) in provisioning files.
_EXPANSION = re.compile(r"\$\$|\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")


def grafana_expand(text: str, env: dict[str, str] | None = None) -> str:
    """What Grafana makes of a provisioned string: variables from its environment (unset
    ones are empty), `$$` as `$`."""
    env = env or {}

    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$$":
            return "$"
        return env.get(token.strip("${}"), "")

    return _EXPANSION.sub(one, text)


def _datasources() -> dict[str, dict[str, Any]]:
    """The provisioned datasources by uid, as Grafana reads them (expanded)."""
    expanded = grafana_expand(FILES[grafana.DATASOURCES_PATH])
    document = yaml.safe_load(expanded)
    assert document["apiVersion"] == 1
    return {source["uid"]: source for source in document["datasources"]}


def test_the_committed_files_are_the_rendered_ones() -> None:
    on_disk = {
        str(path.relative_to(OBSERVABILITY))
        for path in (OBSERVABILITY / "grafana").rglob("*")
        if path.is_file()
    }
    assert on_disk == set(FILES), f"observability/grafana is out of date: run `{RENDER}`"
    for relative, text in FILES.items():
        assert (OBSERVABILITY / relative).read_bytes() == text.encode(), (
            f"{relative} is out of date: run `{RENDER}`"
        )
    assert grafana.render_files() == FILES  # deterministic


def test_the_expansion_model_is_grafanas() -> None:
    assert grafana_expand("a $$b ${C} $D $${e}", {"C": "c", "D": "d"}) == "a $b c d ${e}"


def test_datasources_are_the_stacks() -> None:
    sources = _datasources()
    assert {uid: (s["type"], s["url"]) for uid, s in sources.items()} == {
        stack.PROMETHEUS_UID: ("prometheus", stack.PROMETHEUS_URL),
        stack.JAEGER_UID: ("jaeger", stack.JAEGER_QUERY_URL),
        stack.LOKI_UID: ("loki", stack.LOKI_URL),
    }
    assert [uid for uid, s in sources.items() if s.get("isDefault")] == [stack.PROMETHEUS_UID]


def test_every_cross_link_lands_on_a_datasource_of_the_right_kind() -> None:
    sources = _datasources()
    kinds = {uid: source["type"] for uid, source in sources.items()}
    links = [
        ("exemplar", "jaeger", destination["datasourceUid"])
        for destination in sources[stack.PROMETHEUS_UID]["jsonData"]["exemplarTraceIdDestinations"]
    ]
    to_logs = sources[stack.JAEGER_UID]["jsonData"]["tracesToLogsV2"]
    links.append(("trace to logs", "loki", to_logs["datasourceUid"]))
    links += [
        ("log to trace", "jaeger", field["datasourceUid"])
        for field in sources[stack.LOKI_UID]["jsonData"]["derivedFields"]
    ]
    assert len(links) == 3
    for what, kind, uid in links:
        assert kinds.get(uid) == kind, f"the {what} link names {uid!r}, not a {kind} datasource"


def test_exemplars_link_the_label_the_services_put_their_trace_id_in() -> None:
    (destination,) = _datasources()[stack.PROMETHEUS_UID]["jsonData"]["exemplarTraceIdDestinations"]
    assert destination == {"name": "trace_id", "datasourceUid": stack.JAEGER_UID}


def test_a_span_opens_its_traces_lines_by_structured_metadata() -> None:
    links = _datasources()[stack.JAEGER_UID]["jsonData"]["tracesToLogsV2"]
    assert links["customQuery"] is True  # Grafana's own query searches the line's text
    # After Grafana's expansion the query still holds the span variable it interpolates.
    assert links["query"] == (
        f'{{{stack.LOKI_SERVICE_LABEL}=~".+"}} | {stack.LOKI_TRACE_ID_FIELD}="${{__span.traceId}}"'
    )
    indexed = {
        attribute.replace(".", "_")
        for rule in backends.loki_config()["limits_config"]["otlp_config"]["resource_attributes"][
            "attributes_config"
        ]
        for attribute in rule["attributes"]
    }
    assert stack.LOKI_SERVICE_LABEL in indexed, "the query selects on a label Loki indexes"


def test_a_log_line_opens_its_trace_from_structured_metadata() -> None:
    (field,) = _datasources()[stack.LOKI_UID]["jsonData"]["derivedFields"]
    assert field["matcherType"] == "label"  # the OTLP line's body has no trace id in it
    assert field["matcherRegex"] == stack.LOKI_TRACE_ID_FIELD
    assert field["url"] == "${__value.raw}"  # survived the expansion as Grafana needs it


def test_the_dashboards_provider_reads_the_mounted_dashboards() -> None:
    document = yaml.safe_load(grafana_expand(FILES[grafana.DASHBOARDS_PROVIDER_PATH]))
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == stack.GRAFANA_DASHBOARDS_PATH
    assert provider["allowUiUpdates"] is False  # the JSON is generated; edits would be lost


def test_every_datasource_the_dashboards_name_is_provisioned() -> None:
    sources = {(source["type"], uid) for uid, source in _datasources().items()}
    named: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            reference = node.get("datasource")
            if isinstance(reference, dict) and "uid" in reference:
                named.add((reference.get("type", "?"), reference["uid"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    dashboards = sorted((OBSERVABILITY / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        walk(json.loads(path.read_text()))
    assert named, "the dashboards name no datasource"
    assert named <= sources, f"not provisioned: {sorted(named - sources)}"
