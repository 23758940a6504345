"""The OpenTelemetry Collector's config: OTLP in, traces tail-sampled to Jaeger, logs
to Loki.

The services export OTLP/HTTP to the collector (`stack.COLLECTOR_OTLP_HTTP_URL`). Traces
pass `memory_limiter` first (refusing data before the process runs out of memory, so
the SDKs retry), then `tail_sampling`, then `batch`; logs skip the sampler. Both go out
over OTLP: Jaeger v2 and Loki 3 ingest it natively, so neither the old `jaeger` nor the
`loki` exporter is used.

Component names are those of collector releases from v0.144.0 on, which renamed the
OTLP exporters `otlp_grpc` and `otlp_http` (the old `otlp` and `otlphttp` are deprecated
aliases): the compose file and the chart run `otel/opentelemetry-collector-contrib`
at `MIN_COLLECTOR_VERSION` or later.
"""

from __future__ import annotations

from typing import Any

from yardarm.observability import stack
from yardarm.observability.yamltext import dump

CONFIG_PATH = "otel-collector/config.yaml"
MIN_COLLECTOR_VERSION = "0.144.0"

TRACES_EXPORTER = "otlp_grpc/jaeger"
LOGS_EXPORTER = "otlp_http/loki"

# Tail sampling. A trace is decided `DECISION_WAIT_S` after its first span: long
# enough for an order's saga steps over NATS to arrive. Every trace with an error span
# is kept, and every trace longer than `SLOW_TRACE_MS` (twice the 500 ms latency
# objective of the gateway and orders, so a request that clearly broke it is kept
# whole); `BASELINE_PERCENT` of the rest keeps normal traffic visible for comparison.
# The decision cache remembers kept traces, so a span arriving after the decision (a
# compensation after a step's timeout) joins its trace instead of being dropped.
DECISION_WAIT_S = 10
SLOW_TRACE_MS = 1000
BASELINE_PERCENT = 10
NUM_TRACES = 50_000
SAMPLED_CACHE_SIZE = 100_000

ERROR_POLICY = "errors"


def _policies() -> list[dict[str, Any]]:
    return [
        {"name": ERROR_POLICY, "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
        {"name": "slow", "type": "latency", "latency": {"threshold_ms": SLOW_TRACE_MS}},
        {
            "name": "baseline",
            "type": "probabilistic",
            "probabilistic": {"sampling_percentage": BASELINE_PERCENT},
        },
    ]


def config() -> dict[str, Any]:
    """The collector's config document."""
    return {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"0.0.0.0:{stack.OTLP_GRPC_PORT}"},
                    "http": {"endpoint": f"0.0.0.0:{stack.OTLP_HTTP_PORT}"},
                }
            }
        },
        "processors": {
            # Percentages of the container's memory limit (cgroup), the same on both
            # targets whatever limit each sets.
            "memory_limiter": {
                "check_interval": "1s",
                "limit_percentage": 80,
                "spike_limit_percentage": 25,
            },
            "tail_sampling": {
                "decision_wait": f"{DECISION_WAIT_S}s",
                "num_traces": NUM_TRACES,
                "decision_cache": {"sampled_cache_size": SAMPLED_CACHE_SIZE},
                "policies": _policies(),
            },
            "batch": {"timeout": "1s"},
        },
        "exporters": {
            TRACES_EXPORTER: {
                "endpoint": stack.JAEGER_OTLP_GRPC_ENDPOINT,
                "tls": {"insecure": True},
            },
            LOGS_EXPORTER: {"endpoint": stack.LOKI_OTLP_URL},
        },
        "extensions": {
            "health_check": {"endpoint": f"0.0.0.0:{stack.HEALTH_CHECK_PORT}"},
        },
        "service": {
            "extensions": ["health_check"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", "tail_sampling", "batch"],
                    "exporters": [TRACES_EXPORTER],
                },
                "logs": {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", "batch"],
                    "exporters": [LOGS_EXPORTER],
                },
            },
        },
    }


def render_files() -> dict[str, str]:
    """Path relative to `observability/` -> file text."""
    return {CONFIG_PATH: dump(config(), __name__)}
