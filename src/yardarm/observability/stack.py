"""Where the observability stack lives on the container targets, said once.

The compose file and the Helm chart run Prometheus, Grafana, Jaeger, Loki and the
OpenTelemetry Collector under these service names and ports; the collector config, the
Grafana datasources and the dashboards name them from here, so a renamed service cannot
leave a dashboard pointing nowhere.
"""

from __future__ import annotations

from typing import Final

# Service (DNS) names on the compose network and in the chart's namespace.
COLLECTOR_HOST: Final = "otel-collector"
JAEGER_HOST: Final = "jaeger"
LOKI_HOST: Final = "loki"
PROMETHEUS_HOST: Final = "prometheus"
GRAFANA_HOST: Final = "grafana"

# Ports.
OTLP_GRPC_PORT: Final = 4317
OTLP_HTTP_PORT: Final = 4318
JAEGER_QUERY_PORT: Final = 16686
LOKI_PORT: Final = 3100
PROMETHEUS_PORT: Final = 9090
GRAFANA_PORT: Final = 3000
# The collector's and Jaeger's health_check extensions (liveness/readiness probes).
HEALTH_CHECK_PORT: Final = 13133

# Grafana datasource UIDs: dashboards and datasource links refer to these.
PROMETHEUS_UID: Final = "prometheus"
JAEGER_UID: Final = "jaeger"
LOKI_UID: Final = "loki"

# URLs as seen from inside the stack's network.
COLLECTOR_OTLP_HTTP_URL: Final = f"http://{COLLECTOR_HOST}:{OTLP_HTTP_PORT}"
JAEGER_OTLP_GRPC_ENDPOINT: Final = f"{JAEGER_HOST}:{OTLP_GRPC_PORT}"
JAEGER_OTLP_HTTP_URL: Final = f"http://{JAEGER_HOST}:{OTLP_HTTP_PORT}"
JAEGER_QUERY_URL: Final = f"http://{JAEGER_HOST}:{JAEGER_QUERY_PORT}"
LOKI_URL: Final = f"http://{LOKI_HOST}:{LOKI_PORT}"
LOKI_OTLP_URL: Final = f"{LOKI_URL}/otlp"
PROMETHEUS_URL: Final = f"http://{PROMETHEUS_HOST}:{PROMETHEUS_PORT}"

# Paths inside the containers. Grafana reads its provisioning from its default place;
# the compose file and the chart mount `observability/grafana/provisioning/` there and
# `observability/dashboards/` at the dashboards path, which the provider names.
GRAFANA_PROVISIONING_PATH: Final = "/etc/grafana/provisioning"
GRAFANA_DASHBOARDS_PATH: Final = "/etc/grafana/dashboards"
# Loki's chunks and index (a volume on both targets).
LOKI_DATA_PATH: Final = "/loki"

# The label every scraped series gets from its scrape target, naming the environment
# (`local` for `yardarm up`); dashboards filter on it.
ENVIRONMENT_LABEL: Final = "environment"
# Scrape jobs are named after the services.
SERVICES: Final = ("gateway", "orders", "fulfillment", "datastore")
# The control plane's processes that are scraped too, a job each, named as their
# `service` label: the rollout controller (`yardarm_rollout_*`, about the services it
# rolls, in `rollout_service`).
ROLLOUT_CONTROLLER: Final = "rollouts"
CONTROLLERS: Final = (ROLLOUT_CONTROLLER,)

# Logs reach Loki over OTLP (Loki 3's native ingestion): the resource attribute
# `service.name` becomes the stream label `service_name`; `severity_text`, `trace_id` and
# `span_id` are structured metadata. The collector's pipeline and the dashboards' log
# panels both rely on this shape.
LOKI_SERVICE_LABEL: Final = "service_name"
LOKI_ERROR_SEVERITIES: Final = ("ERROR", "CRITICAL")
# The structured-metadata key holding a line's trace id; log-to-trace links read it.
LOKI_TRACE_ID_FIELD: Final = "trace_id"


def loki_error_logs(service: str) -> str:
    """LogQL selecting one service's error lines."""
    severities = "|".join(LOKI_ERROR_SEVERITIES)
    return f'{{{LOKI_SERVICE_LABEL}="{service}"}} | severity_text=~"{severities}"'


# The public images the container targets run, pinned (the collector at the release its
# config is written for, `collector.MIN_COLLECTOR_VERSION`).
COLLECTOR_IMAGE: Final = "otel/opentelemetry-collector-contrib:0.144.0"
JAEGER_IMAGE: Final = "jaegertracing/jaeger:2.14.0"
LOKI_IMAGE: Final = "grafana/loki:3.6.2"
PROMETHEUS_IMAGE: Final = "prom/prometheus:v3.8.0"
GRAFANA_IMAGE: Final = "grafana/grafana:12.3.0"
# Where each reads the config `yardarm observability` renders (collector and Jaeger take
# `--config`, Loki `-config.file`); the compose file and the chart mount them here.
COLLECTOR_CONFIG_PATH: Final = "/etc/otelcol-contrib/config.yaml"
JAEGER_CONFIG_PATH: Final = "/etc/jaeger/config.yaml"
LOKI_CONFIG_PATH: Final = "/etc/loki/config.yaml"
PROMETHEUS_CONFIG_PATH: Final = "/etc/prometheus/prometheus.yml"
PROMETHEUS_RULES_PATH: Final = "/etc/prometheus/rules"
PROMETHEUS_DATA_PATH: Final = "/prometheus"
GRAFANA_DATA_PATH: Final = "/var/lib/grafana"
