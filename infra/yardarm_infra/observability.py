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

# kube-prometheus-stack names its Prometheus Service `<fullname>-prometheus` (the fullname
# is `fullnameOverride` cut to 26 characters), port `prometheus.service.port` (9090).
MONITORING: Final = "monitoring"
PROMETHEUS_SERVICE: Final = f"{MONITORING}-prometheus"
GRAFANA_SERVICE: Final = stack.GRAFANA_HOST
GRAFANA_SERVICE_PORT: Final = 80  # the Grafana chart's `service.port` (to its 3000)
# Grafana's sidecar loads every ConfigMap with this label as dashboards.
DASHBOARD_LABEL: Final = "grafana_dashboard"
DASHBOARD_LABEL_VALUE: Final = "1"
# The collector chart's default `ports` the rendered config has no receiver for.
COLLECTOR_UNUSED_PORTS: Final = ("jaeger-compact", "jaeger-thrift", "jaeger-grpc", "zipkin")
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
    UIDs the dashboards use and loads the labelled ConfigMaps.

    Checked against prometheus-community/helm-charts `charts/kube-prometheus-stack` 79.0.0
    (commit c215211, values.yaml, templates/prometheus/prometheus.yaml and service.yaml,
    templates/grafana/configmaps-datasources.yaml) and the `grafana` chart 10.1.2 it
    bundles (grafana/helm-charts commit 4e47276, values.yaml, templates/service.yaml).
    With a `*NilUsesHelmValues` false and its selector left empty, the Prometheus resource
    gets `{}` (every object) instead of `release: <release>`; the namespace selectors
    default to `{}` too. The chart's own Prometheus datasource takes
    `sidecar.datasources.uid`, `additionalDataSources` are appended to it. Its default
    `sidecar.dashboards.searchNamespace` is ALL, which covers this namespace. The
    chart has no values.schema.json.
    """
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
    would be merged into them).

    Checked against open-telemetry/opentelemetry-helm-charts `charts/opentelemetry-collector`
    0.145.0 (commit 8ba8e06, values.yaml, values.schema.json, templates/service.yaml,
    _config.tpl, _pod.tpl, NOTES.txt): the Service is named the fullname
    (`fullnameOverride` verbatim) with one port per enabled `ports` entry, `otlp-http`
    4318 among them; `image.repository` and `mode` are required; the probes ask port
    13133, where the config's health_check listens. The ports the config does not
    listen on are left out of the Service.
    """
    repository, _, tag = stack.COLLECTOR_IMAGE.rpartition(":")
    config = yaml.safe_load((root / COLLECTOR_CONFIG).read_text())
    return {
        "fullnameOverride": stack.COLLECTOR_HOST,
        "mode": "deployment",
        "image": {"repository": repository, "tag": tag},
        "command": {"name": "otelcol-contrib"},
        "alternateConfig": config,
        "ports": {name: {"enabled": False} for name in COLLECTOR_UNUSED_PORTS},
    }


def jaeger_values(root: Path) -> dict[str, Any]:
    """Jaeger v2 all in one (in-memory traces): the image and config the compose stack runs.

    Checked against jaegertracing/helm-charts `charts/jaeger` 4.11.1 (commit 6c602b5,
    values.yaml, templates/jaeger/jaeger-service.yaml, jaeger-deploy.yaml,
    jaeger-user-config.yaml): the Service is named the fullname (`fullnameOverride`
    verbatim) with fixed ports, 16686 (query) and 4317 (OTLP gRPC) among them;
    `userconfig` becomes the ConfigMap `user-config` passed as `--config`; the probes ask
    `/status` on 13133, the config's healthcheckv2. The chart's image would be its own
    appVersion (2.19.0), not the release the config is written for. The chart has no
    values.schema.json.
    """
    repository, _, tag = stack.JAEGER_IMAGE.rpartition(":")
    return {
        "fullnameOverride": stack.JAEGER_HOST,
        "jaeger": {"enabled": True, "image": {"repository": repository, "tag": tag}},
        "userconfig": yaml.safe_load((root / JAEGER_CONFIG).read_text()),
    }


def loki_values() -> dict[str, Any]:
    """Loki as one binary on its filesystem, taking OTLP logs (structured metadata).

    Checked against grafana/loki `production/helm/loki` 6.29.0 (commit 3a68bc4, "release
    loki helm chart 6.29.0": values.yaml, templates/single-binary/service.yaml,
    validate.yaml, _helpers.tpl): in SingleBinary mode the Service is named the fullname
    (`fullnameOverride` verbatim) with port `loki.server.http_listen_port` (3100), where
    Loki 3 serves OTLP at `/otlp`. validate.yaml refuses a filesystem store with more than
    one binary or any read/write/backend replica, no schema, and the Helm test without the
    canary. `loki.limits_config` is merged into the chart's and rendered as Loki's
    `limits_config`. The chart has no values.schema.json.
    """
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
