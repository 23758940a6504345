"""Prometheus scrape configuration from the deployment model: one job per service.

A target says where each instance's `/metrics` is; this module says what Prometheus
does with it, the same for every target. The services label every series with their own
`service`, `version`, `track` and `instance`, so jobs keep them (`honor_labels: true`);
each target also gets `environment` and its instance name, so `up{instance="orders-0"}`
names the same thing as the instance's own series.

Targets whose instances come and go (`yardarm scale`, a rollout) list them in file_sd
files the control plane rewrites; Prometheus rereads them without a restart.

The rollout controller is scraped too, as its own job (`rollouts`): its series say what
each rollout does (events, analyses, weights, phase), its own identity labels name the
controller, and `rollout_service` the service being rolled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from yardarm.model import SERVICE_NAMES, Deployment, Instance
from yardarm.observability.stack import ENVIRONMENT_LABEL, ROLLOUT_CONTROLLER

METRICS_PATH = "/metrics"
# Every job: one per service, and the rollout controller's.
JOBS = (*SERVICE_NAMES, ROLLOUT_CONTROLLER)


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One instance's metrics endpoint."""

    instance: str
    address: str  # host:port


def duration(seconds: float) -> str:
    """A Prometheus duration: whole milliseconds (`1s`, `1500ms`)."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def scrape_targets(
    deployment: Deployment,
    address: Callable[[Instance], str],
    rollout_controller: str | None = None,
) -> dict[str, list[ScrapeTarget]]:
    """Every service's instances (the services without one included, as an empty list,
    so a scaled-to-zero job keeps its file) with the address of their metrics, and the
    rollout controller at `rollout_controller` (host:port) where the target runs one."""
    targets = {
        service: [ScrapeTarget(inst.name, address(inst)) for inst in deployment.of(service)]
        for service in SERVICE_NAMES
    }
    targets[ROLLOUT_CONTROLLER] = (
        [] if rollout_controller is None else [ScrapeTarget(ROLLOUT_CONTROLLER, rollout_controller)]
    )
    return targets


def target_groups(targets: Sequence[ScrapeTarget], environment: str) -> list[dict[str, Any]]:
    """Prometheus' `<static_config>` / file_sd group shape, one group per instance so each
    gets its own `instance` label."""
    return [
        {
            "targets": [target.address],
            "labels": {ENVIRONMENT_LABEL: environment, "instance": target.instance},
        }
        for target in targets
    ]


def scrape_job(
    service: str,
    *,
    scheme: str,
    ca_file: str | None = None,
    file_sd: str | None = None,
    static: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One service's job, its targets from a file_sd file or static groups."""
    job: dict[str, Any] = {
        "job_name": service,
        "honor_labels": True,
        "metrics_path": METRICS_PATH,
        "scheme": scheme,
    }
    if ca_file is not None:
        job["tls_config"] = {"ca_file": ca_file}
    if file_sd is not None:
        job["file_sd_configs"] = [{"files": [file_sd], "refresh_interval": "5s"}]
    else:
        job["static_configs"] = static or []
    return job


def prometheus_config(
    jobs: Sequence[dict[str, Any]],
    *,
    environment: str,
    scrape_interval: str,
    evaluation_interval: str,
    rule_files: Sequence[str] = (),
    external: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The whole `prometheus.yml` document."""
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
            "external_labels": {ENVIRONMENT_LABEL: environment, **(external or {})},
        },
        "rule_files": list(rule_files),
        "scrape_configs": list(jobs),
    }
