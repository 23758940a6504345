"""The upstream Helm charts the program installs, each pinned to one version.

A chart version pins its templates and, through them, the images it runs; moving one is
a change reviewed like any other (`helm search repo <chart> --versions` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class ChartPin:
    """Where a chart comes from: a name in a repository, or an `oci://` reference (then
    `repository` is empty)."""

    chart: str
    version: str
    repository: str = ""


NATS: Final = ChartPin("nats", "2.14.2", "https://nats-io.github.io/k8s/helm/charts/")
# Bitnami publishes its charts as OCI artifacts; its versioned images moved to
# `bitnamilegacy` (see `POSTGRES_IMAGE_REPOSITORY`).
POSTGRES: Final = ChartPin("oci://registry-1.docker.io/bitnamicharts/postgresql", "16.7.27")
POSTGRES_IMAGE_REPOSITORY: Final = "bitnamilegacy/postgresql"
KUBE_PROMETHEUS_STACK: Final = ChartPin(
    "kube-prometheus-stack", "79.0.0", "https://prometheus-community.github.io/helm-charts"
)
JAEGER: Final = ChartPin("jaeger", "4.11.1", "https://jaegertracing.github.io/helm-charts")
LOKI: Final = ChartPin("loki", "6.29.0", "https://grafana.github.io/helm-charts")
OTEL_COLLECTOR: Final = ChartPin(
    "opentelemetry-collector",
    "0.145.0",
    "https://open-telemetry.github.io/opentelemetry-helm-charts",
)
