"""Grafana provisioning: the Prometheus, Jaeger and Loki datasources, linked to each
other on the trace id, and the provider that loads `observability/dashboards/`.

The links, all on fixed datasource UIDs (`stack`), so dashboards and links never name
a datasource Grafana made up:
- metric -> trace: Prometheus exemplars carry `trace_id` (the kit's histograms), opened
  in Jaeger;
- trace -> logs: a span opens the Loki lines of its whole trace. Logs arrive over OTLP,
  so the trace id is structured metadata, not text in the line: the query filters on
  it (`| trace_id="..."`); Grafana's generated query would search the line's text;
- log -> trace: a derived field reads the `trace_id` structured metadata
  (`matcherType: label`) and opens it in Jaeger.

Grafana expands `$VAR` and `${VAR}` from its environment in provisioning files, so the
link templates write `$$` for the `$` Grafana's own interpolation needs.
"""

from __future__ import annotations

from typing import Any

from yardarm.observability import stack
from yardarm.observability.yamltext import dump

DATASOURCES_PATH = "grafana/provisioning/datasources/datasources.yaml"
DASHBOARDS_PROVIDER_PATH = "grafana/provisioning/dashboards/dashboards.yaml"
DASHBOARDS_FOLDER = "yardarm"

# Log lines from a minute either side of the span (clocks differ, logs are batched).
LOG_WINDOW = "1m"


def _escaped(template: str) -> str:
    """A Grafana link template as provisioning must spell it (`$` doubled)."""
    return template.replace("$", "$$")


def trace_logs_query() -> str:
    """The LogQL a span opens: every service's lines of the span's trace."""
    return (
        f'{{{stack.LOKI_SERVICE_LABEL}=~".+"}} | {stack.LOKI_TRACE_ID_FIELD}="${{__span.traceId}}"'
    )


def datasources() -> list[dict[str, Any]]:
    """The three datasources, in provisioning's shape."""
    return [
        {
            "name": "Prometheus",
            "type": "prometheus",
            "uid": stack.PROMETHEUS_UID,
            "access": "proxy",
            "url": stack.PROMETHEUS_URL,
            "isDefault": True,
            "editable": False,
            "jsonData": {
                "httpMethod": "POST",
                "prometheusType": "Prometheus",
                "exemplarTraceIdDestinations": [
                    {"name": "trace_id", "datasourceUid": stack.JAEGER_UID},
                ],
            },
        },
        {
            "name": "Jaeger",
            "type": "jaeger",
            "uid": stack.JAEGER_UID,
            "access": "proxy",
            "url": stack.JAEGER_QUERY_URL,
            "editable": False,
            "jsonData": {
                "tracesToLogsV2": {
                    "datasourceUid": stack.LOKI_UID,
                    "spanStartTimeShift": f"-{LOG_WINDOW}",
                    "spanEndTimeShift": LOG_WINDOW,
                    "filterByTraceID": True,
                    "filterBySpanID": False,
                    "customQuery": True,
                    "query": _escaped(trace_logs_query()),
                },
            },
        },
        {
            "name": "Loki",
            "type": "loki",
            "uid": stack.LOKI_UID,
            "access": "proxy",
            "url": stack.LOKI_URL,
            "editable": False,
            "jsonData": {
                "derivedFields": [
                    {
                        "name": "trace_id",
                        "matcherType": "label",
                        "matcherRegex": stack.LOKI_TRACE_ID_FIELD,
                        "datasourceUid": stack.JAEGER_UID,
                        "url": _escaped("${__value.raw}"),
                        "urlDisplayLabel": "Open the trace in Jaeger",
                    },
                ],
            },
        },
    ]


def dashboard_providers() -> list[dict[str, Any]]:
    """One file provider over the mounted dashboards: read-only in the UI (the JSON is
    generated), and a dashboard removed from the directory is removed from Grafana."""
    return [
        {
            "name": "yardarm",
            "orgId": 1,
            "folder": DASHBOARDS_FOLDER,
            "type": "file",
            "disableDeletion": False,
            "allowUiUpdates": False,
            "updateIntervalSeconds": 30,
            "options": {"path": stack.GRAFANA_DASHBOARDS_PATH},
        }
    ]


def render_files() -> dict[str, str]:
    """Path relative to `observability/` -> file text."""
    return {
        DASHBOARDS_PROVIDER_PATH: dump(
            {"apiVersion": 1, "providers": dashboard_providers()}, __name__
        ),
        DATASOURCES_PATH: dump({"apiVersion": 1, "datasources": datasources()}, __name__),
    }
