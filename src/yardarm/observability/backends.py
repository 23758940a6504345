"""Jaeger's and Loki's settings: one process each, state kept where the targets put it.

Jaeger v2 is a collector distribution: OTLP receivers, a `jaeger_storage_exporter`
writing to an in-memory store, and the `jaeger_query` extension serving the UI and the
API v3 (`GET /api/v3/traces/{id}`, read by `yardarm trace --jaeger`) on
`stack.JAEGER_QUERY_PORT`. Traces are a debugging aid here, kept for
`JAEGER_MAX_TRACES` traces and lost on restart; the metrics and logs are what persist.

Loki 3 runs as a single process with filesystem storage under `stack.LOKI_DATA_PATH`
(the TSDB index, schema v13) and takes logs over OTLP (`/otlp/v1/logs`). Which resource
attributes become stream labels is said here, not left to Loki's default list (which
indexes `service.instance.id`, a label per process that Loki's own guidance now
advises against): the service, the environment and the track. Everything else (the
instance, the version, `severity_text`, `trace_id`, `span_id`) is structured metadata,
filterable per line without multiplying streams.
"""

from __future__ import annotations

from typing import Any

from yardarm.observability import stack
from yardarm.observability.yamltext import dump

JAEGER_CONFIG_PATH = "jaeger/config.yaml"
LOKI_CONFIG_PATH = "loki/config.yaml"

JAEGER_STORE = "memstore"
JAEGER_MAX_TRACES = 100_000

# OTLP resource attributes Loki indexes as stream labels (dots become underscores:
# `service.name` is the `service_name` label the dashboards' log panels select on).
LOKI_INDEX_ATTRIBUTES = ("service.name", "deployment.environment", "yardarm.track")
LOKI_SCHEMA_FROM = "2024-04-01"
LOKI_RETENTION = "168h"


def jaeger_config() -> dict[str, Any]:
    """Jaeger v2's config document."""
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {"resource": {"service.name": "jaeger"}, "logs": {"level": "info"}},
        },
        "extensions": {
            "healthcheckv2": {
                "use_v2": True,
                "http": {"endpoint": f"0.0.0.0:{stack.HEALTH_CHECK_PORT}"},
            },
            "jaeger_query": {
                "storage": {"traces": JAEGER_STORE},
                "http": {"endpoint": f"0.0.0.0:{stack.JAEGER_QUERY_PORT}"},
            },
            "jaeger_storage": {
                "backends": {JAEGER_STORE: {"memory": {"max_traces": JAEGER_MAX_TRACES}}}
            },
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"0.0.0.0:{stack.OTLP_GRPC_PORT}"},
                    "http": {"endpoint": f"0.0.0.0:{stack.OTLP_HTTP_PORT}"},
                }
            }
        },
        "processors": {"batch": {}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": JAEGER_STORE}},
    }


def loki_config() -> dict[str, Any]:
    """Loki 3's config document (single process, filesystem)."""
    data = stack.LOKI_DATA_PATH
    return {
        "auth_enabled": False,
        "server": {"http_listen_port": stack.LOKI_PORT, "log_level": "info"},
        "common": {
            "instance_addr": "127.0.0.1",
            "path_prefix": data,
            "storage": {
                "filesystem": {
                    "chunks_directory": f"{data}/chunks",
                    "rules_directory": f"{data}/rules",
                }
            },
            "replication_factor": 1,
            "ring": {"kvstore": {"store": "inmemory"}},
        },
        "schema_config": {
            "configs": [
                {
                    "from": LOKI_SCHEMA_FROM,
                    "store": "tsdb",
                    "object_store": "filesystem",
                    "schema": "v13",
                    "index": {"prefix": "index_", "period": "24h"},
                }
            ]
        },
        "limits_config": {
            "allow_structured_metadata": True,
            "retention_period": LOKI_RETENTION,
            "otlp_config": {
                "resource_attributes": {
                    "ignore_defaults": True,
                    "attributes_config": [
                        {"action": "index_label", "attributes": list(LOKI_INDEX_ATTRIBUTES)}
                    ],
                }
            },
        },
        "compactor": {
            "working_directory": f"{data}/compactor",
            "retention_enabled": True,
            "delete_request_store": "filesystem",
        },
        "analytics": {"reporting_enabled": False},
    }


def render_files() -> dict[str, str]:
    """Path relative to `observability/` -> file text."""
    return {
        JAEGER_CONFIG_PATH: dump(jaeger_config(), __name__),
        LOKI_CONFIG_PATH: dump(loki_config(), __name__),
    }
