"""The collector, Jaeger and Loki configs: committed as generated, every pipeline wired
to components that are declared (and nothing declared unused), and each hop pointing
where the next one listens, at the hosts and ports the compose file and the chart use.

No collector, Jaeger or Loki binary runs here, so these are structural checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from yardarm.observability import backends, collector, stack

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "observability"
RENDER = "uv run yardarm observability"
KINDS = ("receivers", "processors", "exporters")


def _collector() -> dict[str, Any]:
    return yaml.safe_load(collector.render_files()[collector.CONFIG_PATH])


def _jaeger() -> dict[str, Any]:
    return yaml.safe_load(backends.render_files()[backends.JAEGER_CONFIG_PATH])


def _loki() -> dict[str, Any]:
    return yaml.safe_load(backends.render_files()[backends.LOKI_CONFIG_PATH])


def wiring_problems(config: dict[str, Any]) -> list[str]:
    """What the collector would refuse or ignore: a pipeline naming an undeclared
    component, and a declared component (or extension) no pipeline uses."""
    problems = []
    service = config["service"]
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for name, pipeline in service["pipelines"].items():
        for kind in KINDS:
            if kind != "processors" and not pipeline.get(kind):
                problems.append(f"pipeline {name} has no {kind}")
            for component in pipeline.get(kind, []):
                used[kind].add(component)
                if component not in (config.get(kind) or {}):
                    problems.append(f"pipeline {name} uses undeclared {kind} {component}")
    for kind in KINDS:
        for component in sorted(set(config.get(kind) or {}) - used[kind]):
            problems.append(f"{kind} {component} is declared but no pipeline uses it")
    for extension in service.get("extensions", []):
        if extension not in (config.get("extensions") or {}):
            problems.append(f"extension {extension} is enabled but not declared")
    for extension in sorted(set(config.get("extensions") or {}) - set(service["extensions"])):
        problems.append(f"extension {extension} is declared but not enabled")
    return problems


def _port(endpoint: str) -> int:
    """The port of `host:port` or of a URL."""
    return urlsplit(endpoint if "://" in endpoint else f"//{endpoint}").port or 0


def _pipeline_exporters(config: dict[str, Any], signal: str) -> dict[str, dict[str, Any]]:
    names = config["service"]["pipelines"][signal]["exporters"]
    return {name: config["exporters"][name] for name in names}


@pytest.mark.parametrize(
    ("module", "directories"),
    [(collector, ("otel-collector",)), (backends, ("jaeger", "loki"))],
)
def test_the_committed_files_are_the_rendered_ones(
    module: Any, directories: tuple[str, ...]
) -> None:
    rendered = module.render_files()
    on_disk = {
        str(path.relative_to(OBSERVABILITY))
        for directory in directories
        for path in (OBSERVABILITY / directory).rglob("*")
        if path.is_file()
    }
    assert on_disk == set(rendered), f"observability/ is out of date: run `{RENDER}`"
    for relative, text in rendered.items():
        assert (OBSERVABILITY / relative).read_bytes() == text.encode(), (
            f"{relative} is out of date: run `{RENDER}`"
        )
    assert module.render_files() == rendered  # deterministic


def test_wiring_problems_are_found() -> None:
    """The checker itself: an undeclared exporter and an unused processor."""
    config = _collector()
    config["service"]["pipelines"]["logs"]["exporters"].append("debug")
    config["processors"]["attributes"] = {}
    assert wiring_problems(config) == [
        "pipeline logs uses undeclared exporters debug",
        "processors attributes is declared but no pipeline uses it",
    ]


@pytest.mark.parametrize("load", [_collector, _jaeger], ids=["collector", "jaeger"])
def test_every_pipeline_component_is_declared_and_every_declared_one_used(load: Any) -> None:
    assert wiring_problems(load()) == []


def test_the_collector_takes_otlp_where_the_services_send_it() -> None:
    config = _collector()
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["http"]["endpoint"] == f"0.0.0.0:{stack.OTLP_HTTP_PORT}"
    assert protocols["grpc"]["endpoint"] == f"0.0.0.0:{stack.OTLP_GRPC_PORT}"
    assert _port(stack.COLLECTOR_OTLP_HTTP_URL) == _port(protocols["http"]["endpoint"])
    for pipeline in config["service"]["pipelines"].values():
        assert pipeline["receivers"] == ["otlp"]
        # The limiter refuses data first, before anything buffers it.
        assert pipeline["processors"][0] == "memory_limiter"


def test_traces_go_to_jaeger_over_otlp_and_jaeger_listens_there() -> None:
    config = _collector()
    exporters = _pipeline_exporters(config, "traces")
    assert exporters == {
        collector.TRACES_EXPORTER: {
            "endpoint": stack.JAEGER_OTLP_GRPC_ENDPOINT,
            "tls": {"insecure": True},
        }
    }
    assert collector.TRACES_EXPORTER.split("/")[0] == "otlp_grpc"
    jaeger = _jaeger()
    receiver = jaeger["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert receiver == f"0.0.0.0:{_port(stack.JAEGER_OTLP_GRPC_ENDPOINT)}"
    assert stack.JAEGER_OTLP_GRPC_ENDPOINT.split(":")[0] == stack.JAEGER_HOST


def test_logs_go_to_lokis_otlp_endpoint_and_loki_listens_there() -> None:
    exporters = _pipeline_exporters(_collector(), "logs")
    assert exporters == {collector.LOGS_EXPORTER: {"endpoint": stack.LOKI_OTLP_URL}}
    # The OTLP/HTTP exporter appends /v1/logs: Loki's ingestion path is /otlp/v1/logs.
    assert collector.LOGS_EXPORTER.split("/")[0] == "otlp_http"
    assert urlsplit(stack.LOKI_OTLP_URL).path == "/otlp"
    assert urlsplit(stack.LOKI_OTLP_URL).hostname == stack.LOKI_HOST
    assert _loki()["server"]["http_listen_port"] == _port(stack.LOKI_OTLP_URL)


def test_tail_sampling_keeps_every_error_and_slow_trace() -> None:
    config = _collector()
    assert "tail_sampling" in config["service"]["pipelines"]["traces"]["processors"]
    assert "tail_sampling" not in config["service"]["pipelines"]["logs"]["processors"]
    policies = {p["type"]: p for p in config["processors"]["tail_sampling"]["policies"]}
    # Policies are OR-ed: a trace any of them samples is kept.
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    assert policies["latency"]["latency"]["threshold_ms"] == collector.SLOW_TRACE_MS
    assert 0 < policies["probabilistic"]["probabilistic"]["sampling_percentage"] < 100
    assert set(policies) == {"status_code", "latency", "probabilistic"}


def test_jaeger_serves_the_query_api_grafana_and_the_cli_read() -> None:
    jaeger = _jaeger()
    query = jaeger["extensions"]["jaeger_query"]
    assert query["http"]["endpoint"] == f"0.0.0.0:{stack.JAEGER_QUERY_PORT}"
    assert _port(stack.JAEGER_QUERY_URL) == stack.JAEGER_QUERY_PORT
    stores = jaeger["extensions"]["jaeger_storage"]["backends"]
    assert query["storage"]["traces"] in stores
    assert jaeger["exporters"]["jaeger_storage_exporter"]["trace_storage"] in stores


def test_loki_takes_otlp_logs_with_the_labels_the_dashboards_select_on() -> None:
    loki = _loki()
    limits = loki["limits_config"]
    assert limits["allow_structured_metadata"] is True  # OTLP lines are refused otherwise
    resource = limits["otlp_config"]["resource_attributes"]
    indexed = {
        attribute
        for rule in resource["attributes_config"]
        if rule["action"] == "index_label"
        for attribute in rule["attributes"]
    }
    labels = {attribute.replace(".", "_") for attribute in indexed}
    assert stack.LOKI_SERVICE_LABEL in labels
    # Per-line fields stay structured metadata: never a stream per trace or instance.
    assert not indexed & {"service.instance.id", stack.LOKI_TRACE_ID_FIELD}
    assert all(
        str(path).startswith(stack.LOKI_DATA_PATH)
        for path in (
            loki["common"]["path_prefix"],
            *loki["common"]["storage"]["filesystem"].values(),
            loki["compactor"]["working_directory"],
        )
    )
