"""Prometheus and Grafana (kube-prometheus-stack), Jaeger, Loki and the OpenTelemetry
Collector, from their upstream charts, wired as the compose stack wires them.

The collector's config, the dashboards and the datasource UIDs are the files
`yardarm observability` renders (`observability/`), which name Jaeger, Loki and the
collector by `yardarm.observability.stack`'s hosts: each chart's `fullnameOverride`
gives its Service that name in the namespace, so the files work here unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pulumi
import yaml
from pulumi_kubernetes.core.v1 import ConfigMap
from pulumi_kubernetes.meta.v1 import ObjectMetaArgs

from yardarm.observability import stack
from yardarm_infra import pins
from yardarm_infra.charts import pinned_chart

# kube-prometheus-stack names its Prometheus Service `<fullname>-prometheus`.
MONITORING: Final = "monitoring"
PROMETHEUS_SERVICE: Final = f"{MONITORING}-prometheus"
GRAFANA_SERVICE: Final = stack.GRAFANA_HOST
GRAFANA_SERVICE_PORT: Final = 80  # the Grafana chart's Service port
# Grafana's sidecar loads every ConfigMap with this label as dashboards.
DASHBOARD_LABEL: Final = "grafana_dashboard"
DASHBOARD_LABEL_VALUE: Final = "1"
COLLECTOR_CONFIG: Final = "observability/otel-collector/config.yaml"
JAEGER_CONFIG: Final = "observability/jaeger/config.yaml"
DASHBOARDS: Final = "observability/dashboards"


def prometheus_url(namespace: str) -> str:
    """Prometheus as a pod in the cluster reaches it."""
    return f"http://{PROMETHEUS_SERVICE}.{namespace}.svc:{stack.PROMETHEUS_PORT}"


def collector_url(namespace: str) -> str:
    """The collector's OTLP/HTTP endpoint as a pod in the cluster reaches it."""
    return f"http://{stack.COLLECTOR_HOST}.{namespace}.svc:{stack.OTLP_HTTP_PORT}"


def jaeger_query_url(namespace: str) -> str:
    return f"http://{stack.JAEGER_HOST}.{namespace}.svc:{stack.JAEGER_QUERY_PORT}"


def grafana_url(namespace: str) -> str:
    return f"http://{GRAFANA_SERVICE}.{namespace}.svc:{GRAFANA_SERVICE_PORT}"


def dashboard_files(root: Path) -> list[Path]:
    """The dashboards, one ConfigMap each."""
    return sorted((root / DASHBOARDS).glob("*.json"))


@dataclass(frozen=True)
class ObservabilityArgs:
    """Where the stack goes and where its rendered observability files are."""

    namespace: pulumi.Input[str]
    root: Path  # the repository (the directory of Pulumi.yaml)


def monitoring_values() -> dict[str, Any]:
    """kube-prometheus-stack: Prometheus selects every ServiceMonitor and PrometheusRule
    (the yardarm chart's carry no label of this release), Grafana has the datasource
    UIDs the dashboards use and loads the labelled ConfigMaps."""
    select_all = {
        "serviceMonitorSelectorNilUsesHelmValues": False,
        "podMonitorSelectorNilUsesHelmValues": False,
        "ruleSelectorNilUsesHelmValues": False,
    }
    return {
        "fullnameOverride": MONITORING,
        "prometheus": {"prometheusSpec": {**select_all, "retention": "2d"}},
        "grafana": {
            "fullnameOverride": GRAFANA_SERVICE,
            "sidecar": {
                "datasources": {"uid": stack.PROMETHEUS_UID},
                "dashboards": {
                    "enabled": True,
                    "label": DASHBOARD_LABEL,
                    "labelValue": DASHBOARD_LABEL_VALUE,
                },
            },
            "additionalDataSources": [
                {"name": "Loki", "uid": stack.LOKI_UID, "type": "loki",
                 "url": stack.LOKI_URL, "access": "proxy"},
                {"name": "Jaeger", "uid": stack.JAEGER_UID, "type": "jaeger",
                 "url": stack.JAEGER_QUERY_URL, "access": "proxy"},
            ],
        },
    }  # fmt: skip


def collector_values(root: Path) -> dict[str, Any]:
    """The collector chart: the contrib image the config is written for, running that
    config as it is (`alternateConfig` replaces the chart's default pipelines; `config`
    would be merged into them)."""
    repository, _, tag = stack.COLLECTOR_IMAGE.rpartition(":")
    config = yaml.safe_load((root / COLLECTOR_CONFIG).read_text())
    return {
        "fullnameOverride": stack.COLLECTOR_HOST,
        "mode": "deployment",
        "image": {"repository": repository, "tag": tag},
        "command": {"name": "otelcol-contrib"},
        "alternateConfig": config,
    }


def jaeger_values(root: Path) -> dict[str, Any]:
    """Jaeger v2 all in one (in-memory traces), with the stack's Jaeger config."""
    return {
        "fullnameOverride": stack.JAEGER_HOST,
        "jaeger": {"enabled": True},
        "userconfig": yaml.safe_load((root / JAEGER_CONFIG).read_text()),
    }


def loki_values() -> dict[str, Any]:
    """Loki as one binary on its filesystem, taking OTLP logs (structured metadata)."""
    return {
        "fullnameOverride": stack.LOKI_HOST,
        "deploymentMode": "SingleBinary",
        "loki": {
            "auth_enabled": False,
            "commonConfig": {"replication_factor": 1},
            "storage": {"type": "filesystem"},
            "schemaConfig": {"configs": [{
                "from": "2024-04-01", "store": "tsdb", "object_store": "filesystem",
                "schema": "v13", "index": {"prefix": "loki_index_", "period": "24h"},
            }]},
            "limits_config": {"allow_structured_metadata": True},
        },
        "singleBinary": {"replicas": 1},
        "read": {"replicas": 0},
        "write": {"replicas": 0},
        "backend": {"replicas": 0},
        "gateway": {"enabled": False},
        "chunksCache": {"enabled": False},
        "resultsCache": {"enabled": False},
        "lokiCanary": {"enabled": False},
        "test": {"enabled": False},
    }  # fmt: skip


class Observability(pulumi.ComponentResource):
    """The observability charts and the dashboards; the URLs the stack is given."""

    def __init__(
        self,
        resource_name: str,
        args: ObservabilityArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("yardarm:kubernetes:Observability", resource_name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        pinned_chart(MONITORING, pins.KUBE_PROMETHEUS_STACK, ns, monitoring_values(), child)
        pinned_chart(stack.JAEGER_HOST, pins.JAEGER, ns, jaeger_values(args.root), child)
        pinned_chart(stack.LOKI_HOST, pins.LOKI, ns, loki_values(), child)
        pinned_chart(
            stack.COLLECTOR_HOST, pins.OTEL_COLLECTOR, ns, collector_values(args.root), child
        )
        for path in dashboard_files(args.root):
            ConfigMap(
                f"dashboard-{path.stem}",
                metadata=ObjectMetaArgs(
                    name=f"dashboard-{path.stem}",
                    namespace=ns,
                    labels={DASHBOARD_LABEL: DASHBOARD_LABEL_VALUE},
                ),
                data={path.name: path.read_text()},
                opts=child,
            )
        self.register_outputs({})
