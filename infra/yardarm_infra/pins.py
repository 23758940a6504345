"""The upstream Helm charts the program installs, each pinned to one version.

A chart version pins its templates and, through them, the images it runs; moving one is
a change reviewed like any other (`helm search repo <chart> --versions` lists them), and
the values written for it (`dependencies`, `observability`) are checked again against the
new version's values.yaml and the templates that name its Services.
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


# Each version below is the `version:` of the chart's Chart.yaml in its source repository
# (the releasing commit is named next to the values written for it).
NATS: Final = ChartPin("nats", "2.14.2", "https://nats-io.github.io/k8s/helm/charts/")
# Bitnami publishes its charts as OCI artifacts. 16.7.27 runs
# `docker.io/bitnami/postgresql:17.6.0-debian-12-r4`; Bitnami's versioned images moved to
# `bitnamilegacy` (see `POSTGRES_IMAGE_REPOSITORY`), the chart's tag is kept.
POSTGRES: Final = ChartPin("oci://registry-1.docker.io/bitnamicharts/postgresql", "16.7.27")
POSTGRES_IMAGE_REPOSITORY: Final = "bitnamilegacy/postgresql"
# Bundles the `grafana` chart 10.1.2 (Grafana's settings are that chart's values).
KUBE_PROMETHEUS_STACK: Final = ChartPin(
    "kube-prometheus-stack", "79.0.0", "https://prometheus-community.github.io/helm-charts"
)
JAEGER: Final = ChartPin("jaeger", "4.11.1", "https://jaegertracing.github.io/helm-charts")
# Released from grafana/loki (`production/helm/loki`) into this repository.
LOKI: Final = ChartPin("loki", "6.29.0", "https://grafana.github.io/helm-charts")
OTEL_COLLECTOR: Final = ChartPin(
    "opentelemetry-collector",
    "0.145.0",
    "https://open-telemetry.github.io/opentelemetry-helm-charts",
)
