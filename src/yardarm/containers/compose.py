"""The deployment model as a compose project: `compose.yaml` and the files it mounts.

`yardarm compose` renders it from `yardarm.yaml` (the defaults without one). Each
instance is a service of its own, named after the instance, with the settings every
target gives it (`yardarm.model.instance_settings` through `ContainerTarget`); the
order of starting is said with health conditions, so `docker-compose up` needs nothing
else:

1. `init-credentials` (the control image) issues the stack's credentials into the home
   volume;
2. Postgres (its password from that volume), NATS and the datastore replicas start;
3. `init-data` creates the databases and seeds the catalog once Postgres and the
   datastore answer;
4. orders and fulfillment start after it, the gateways after orders.

With observability on, the OpenTelemetry Collector, Jaeger, Loki, Prometheus and
Grafana run beside them from their public images, configured by the files
`yardarm observability` renders (mounted from `observability/`); the services send
OTLP to the collector. Only the gateway's listeners, Grafana, Jaeger's UI and
Prometheus are published, on 127.0.0.1.

Postgres and NATS images are compose variables (`YARDARM_IMAGE_POSTGRES`,
`YARDARM_IMAGE_NATS`, the public images by default), so a machine without a registry
runs the same file on its own builds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from yardarm.containers.target import (
    FLAGS_FILE,
    FLAGS_MOUNT,
    HOME_MOUNT,
    NATS_HOST,
    NATS_MONITOR_PORT,
    POSTGRES_HOST,
    POSTGRES_PASSWORD_FILE,
    POSTGRES_USER,
    STATE_MOUNT,
    ContainerTarget,
    postgres_dsn,
    version_flags_file,
)
from yardarm.databases import SERVICE_DATABASES
from yardarm.model import Deployment, Instance, Topology, deployment, instance_settings, pinned
from yardarm.observability import stack
from yardarm.observability.scrape import (
    JOBS,
    duration,
    prometheus_config,
    scrape_job,
    scrape_targets,
    target_groups,
)
from yardarm.observability.yamltext import dump

COMPOSE_FILE: Final = "compose.yaml"
FILES_DIR: Final = "compose"  # beside compose.yaml: what it mounts besides observability/
COMMAND: Final = "yardarm compose"

INIT_CREDENTIALS: Final = "init-credentials"
INIT_DATA: Final = "init-data"
# How long `init-data` waits for Postgres and the datastore's first leader.
INIT_TIMEOUT_S: Final = 120
HOME_VOLUME: Final = "yardarm-home"
LOOPBACK: Final = "127.0.0.1"

# Compose variables naming the dependencies' images, and the public images by default.
DEPENDENCY_IMAGES: Final = {
    "postgres": ("YARDARM_IMAGE_POSTGRES", "postgres:16"),
    "nats": ("YARDARM_IMAGE_NATS", "nats:2"),
}
POSTGRES_DATA: Final = "/var/lib/postgresql/data"
NATS_STORE: Final = "/data"

COLLECTOR: Final = stack.COLLECTOR_HOST
JAEGER: Final = stack.JAEGER_HOST
LOKI: Final = stack.LOKI_HOST
PROMETHEUS: Final = stack.PROMETHEUS_HOST
GRAFANA: Final = stack.GRAFANA_HOST


@dataclass(frozen=True)
class ComposeProject:
    """A rendered project: every file by its path relative to the output folder
    (`compose.yaml` first), and compose.yaml's document."""

    files: dict[str, str]
    document: dict[str, Any]


def _escaped(value: str) -> str:
    """A value compose must not interpolate (`$` doubled)."""
    return value.replace("$", "$$")


def _image_variable(service: str) -> str:
    variable, default = DEPENDENCY_IMAGES[service]
    return f"${{{variable}:-{default}}}"


def _healthy(*names: str) -> dict[str, dict[str, str]]:
    return {name: {"condition": "service_healthy"} for name in names}


def _completed(*names: str) -> dict[str, dict[str, str]]:
    return {name: {"condition": "service_completed_successfully"} for name in names}


def _started(*names: str) -> dict[str, dict[str, str]]:
    return {name: {"condition": "service_started"} for name in names}


def instance_image(topology: Topology, instance: Instance, images: Mapping[str, str]) -> str:
    """The image an instance runs: its version's own, else the service's build."""
    release = topology.services.spec(instance.service).release(instance.version)
    return release.image or images[instance.service]


def _depends_on(deployment: Deployment, instance: Instance) -> dict[str, dict[str, str]]:
    """What must have happened before an instance starts."""
    if instance.service == "datastore":
        return _completed(INIT_CREDENTIALS)
    if instance.service in ("orders", "fulfillment"):
        return _completed(INIT_DATA) | _started(NATS_HOST)
    orders = [inst.name for inst in deployment.of("orders")]
    return _completed(INIT_DATA) | _started(*orders)


def _ports(topology: Topology, instance: Instance, target: ContainerTarget) -> list[str]:
    """The first gateway's public and admin listeners, published on loopback."""
    if instance.service != "gateway" or instance.ordinal != 0 or instance.track != "stable":
        return []
    public = target.port(instance)
    admin = target.gateway_admin_port(instance)
    return [
        f"{LOOPBACK}:{topology.gateway_port}:{public}",
        f"{LOOPBACK}:{topology.admin_port}:{admin}",
    ]


def _instance_service(
    deployment: Deployment,
    instance: Instance,
    target: ContainerTarget,
    images: Mapping[str, str],
    observability: bool,
) -> dict[str, Any]:
    topology = deployment.topology
    environment = {
        key: _escaped(value)
        for key, value in instance_settings(deployment, instance, target).items()
    }
    if observability:
        environment["OTEL_EXPORTER_OTLP_ENDPOINT"] = stack.COLLECTOR_OTLP_HTTP_URL
    service: dict[str, Any] = {
        "image": instance_image(topology, instance, images),
        "read_only": True,
        "restart": "unless-stopped",
        "environment": environment,
        "volumes": [
            f"{instance.name}-state:{STATE_MOUNT}",
            f"{HOME_VOLUME}:{HOME_MOUNT}:ro",
            f"./{FILES_DIR}/flags:{FLAGS_MOUNT}:ro",
        ],
        "depends_on": _depends_on(deployment, instance),
    }
    if ports := _ports(topology, instance, target):
        service["ports"] = ports
    return service


def _init_services(
    deployment: Deployment, target: ContainerTarget, images: Mapping[str, str]
) -> dict[str, Any]:
    """The control image's two one-shot steps (`yardarm init`)."""
    datastores = deployment.of("datastore")
    data_command = [
        "yardarm",
        "init",
        "data",
        "--home",
        STATE_MOUNT,
        "--postgres",
        postgres_dsn("postgres", STATE_MOUNT),
        *(arg for name in SERVICE_DATABASES for arg in ("--database", name)),
        *(arg for inst in datastores for arg in ("--datastore", target.url(inst, inst))),
        "--timeout",
        str(INIT_TIMEOUT_S),
    ]
    return {
        INIT_CREDENTIALS: {
            "image": images["control"],
            "read_only": True,
            "restart": "no",
            "command": ["yardarm", "init", "credentials", "--home", STATE_MOUNT],
            "volumes": [f"{HOME_VOLUME}:{STATE_MOUNT}"],
        },
        INIT_DATA: {
            "image": images["control"],
            "read_only": True,
            "restart": "on-failure",
            "command": _escaped_list(data_command),
            "volumes": [f"{HOME_VOLUME}:{STATE_MOUNT}:ro"],
            "depends_on": _healthy(POSTGRES_HOST, *(inst.name for inst in datastores)),
        },
    }


def _escaped_list(values: list[str]) -> list[str]:
    return [_escaped(value) for value in values]


def _dependencies() -> dict[str, Any]:
    """Postgres and NATS."""
    return {
        POSTGRES_HOST: {
            "image": _image_variable("postgres"),
            "restart": "unless-stopped",
            "environment": {
                "POSTGRES_USER": POSTGRES_USER,
                "POSTGRES_DB": "postgres",
                "POSTGRES_PASSWORD_FILE": f"{HOME_MOUNT}/{POSTGRES_PASSWORD_FILE}",
            },
            "volumes": [f"postgres-data:{POSTGRES_DATA}", f"{HOME_VOLUME}:{HOME_MOUNT}:ro"],
            "healthcheck": {
                "test": [
                    "CMD",
                    "pg_isready",
                    "-q",
                    "-h",
                    LOOPBACK,
                    "-U",
                    POSTGRES_USER,
                    "-d",
                    "postgres",
                ],
                "interval": "2s",
                "timeout": "3s",
                "retries": 3,
                "start_period": "30s",
            },
            "depends_on": _completed(INIT_CREDENTIALS),
        },
        NATS_HOST: {
            "image": _image_variable("nats"),
            "restart": "unless-stopped",
            # Flags both the public image and yardarm/nats take: JetStream on, its store in
            # the volume, monitoring (`/healthz`) on its usual port.
            "command": ["-js", "-sd", NATS_STORE, "-m", str(NATS_MONITOR_PORT)],
            "volumes": [f"nats-data:{NATS_STORE}"],
        },
    }


def prometheus_yaml(deployment: Deployment, target: ContainerTarget) -> dict[str, Any]:
    """Prometheus' config: a job per service, each instance by its container name (a
    gateway's metrics on its admin listener), the rules from `observability/`."""
    topology = deployment.topology

    def address(inst: Instance) -> str:
        port = target.gateway_admin_port(inst) if inst.service == "gateway" else target.port(inst)
        return f"{inst.name}:{port}"

    targets = scrape_targets(deployment, address)
    jobs = [
        scrape_job(job, scheme="http", static=target_groups(targets[job], topology.environment))
        for job in JOBS
    ]
    interval = duration(topology.prometheus.scrape_interval_s)
    return prometheus_config(
        jobs,
        environment=topology.environment,
        scrape_interval=interval,
        evaluation_interval=interval,
        rule_files=[f"{stack.PROMETHEUS_RULES_PATH}/*.yml"],
    )


def _observability(topology: Topology, observability_dir: str) -> dict[str, Any]:
    """The collector, Jaeger, Loki, Prometheus and Grafana, configured from
    `observability/` (and Prometheus' scrape config from `compose/`)."""
    source = f"./{observability_dir}"
    return {
        COLLECTOR: {
            "image": stack.COLLECTOR_IMAGE,
            "restart": "unless-stopped",
            "command": [f"--config={stack.COLLECTOR_CONFIG_PATH}"],
            "volumes": [f"{source}/otel-collector/config.yaml:{stack.COLLECTOR_CONFIG_PATH}:ro"],
            "depends_on": _started(JAEGER, LOKI),
        },
        JAEGER: {
            "image": stack.JAEGER_IMAGE,
            "restart": "unless-stopped",
            "command": [f"--config={stack.JAEGER_CONFIG_PATH}"],
            "volumes": [f"{source}/jaeger/config.yaml:{stack.JAEGER_CONFIG_PATH}:ro"],
            "ports": [f"{LOOPBACK}:{stack.JAEGER_QUERY_PORT}:{stack.JAEGER_QUERY_PORT}"],
        },
        LOKI: {
            "image": stack.LOKI_IMAGE,
            "restart": "unless-stopped",
            "command": [f"-config.file={stack.LOKI_CONFIG_PATH}"],
            "volumes": [
                f"{source}/loki/config.yaml:{stack.LOKI_CONFIG_PATH}:ro",
                f"loki-data:{stack.LOKI_DATA_PATH}",
            ],
        },
        PROMETHEUS: {
            "image": stack.PROMETHEUS_IMAGE,
            "restart": "unless-stopped",
            "command": [
                f"--config.file={stack.PROMETHEUS_CONFIG_PATH}",
                f"--storage.tsdb.path={stack.PROMETHEUS_DATA_PATH}",
                f"--storage.tsdb.retention.time={topology.prometheus.retention}",
                "--enable-feature=exemplar-storage",
                "--log.format=json",
            ],
            "volumes": [
                f"./{FILES_DIR}/prometheus.yml:{stack.PROMETHEUS_CONFIG_PATH}:ro",
                f"{source}/prometheus/rules:{stack.PROMETHEUS_RULES_PATH}:ro",
                f"prometheus-data:{stack.PROMETHEUS_DATA_PATH}",
            ],
            "ports": [f"{LOOPBACK}:{stack.PROMETHEUS_PORT}:{stack.PROMETHEUS_PORT}"],
        },
        GRAFANA: {
            "image": stack.GRAFANA_IMAGE,
            "restart": "unless-stopped",
            "environment": {
                "GF_AUTH_ANONYMOUS_ENABLED": "true",
                "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
            },
            "volumes": [
                f"{source}/grafana/provisioning:{stack.GRAFANA_PROVISIONING_PATH}:ro",
                f"{source}/dashboards:{stack.GRAFANA_DASHBOARDS_PATH}:ro",
                f"grafana-data:{stack.GRAFANA_DATA_PATH}",
            ],
            "ports": [f"{LOOPBACK}:{stack.GRAFANA_PORT}:{stack.GRAFANA_PORT}"],
            "depends_on": _started(PROMETHEUS, JAEGER, LOKI),
        },
    }


def _flag_files(deployment: Deployment, target: ContainerTarget) -> dict[str, str]:
    """The stack's flags, and each pinning version's own, by name under `flags/`."""
    topology = deployment.topology
    files = {FLAGS_FILE: json.dumps({"flags": topology.flags}, indent=2) + "\n"}
    for inst in deployment.instances:
        if pins := target.pins(inst):
            document = {"flags": pinned(topology.flags, pins)}
            files[version_flags_file(inst)] = json.dumps(document, indent=2) + "\n"
    return files


def render(
    topology: Topology,
    images: Mapping[str, str],
    *,
    observability: bool = True,
    observability_dir: str = "observability",
) -> ComposeProject:
    """The compose project of `topology`'s initial deployment.

    `images` maps each service and `control` to its image; `observability_dir` is where
    `observability/` is, relative to the output folder.
    """
    planned = deployment(topology)
    target = ContainerTarget(planned)
    services: dict[str, Any] = {}
    services |= _init_services(planned, target, images)
    services |= _dependencies()
    for inst in planned.instances:
        services[inst.name] = _instance_service(planned, inst, target, images, observability)
    if observability:
        services |= _observability(topology, observability_dir)
    volumes: dict[str, dict[str, Any]] = {HOME_VOLUME: {}, "postgres-data": {}, "nats-data": {}}
    volumes |= {f"{inst.name}-state": {} for inst in planned.instances}
    if observability:
        volumes |= {"loki-data": {}, "prometheus-data": {}, "grafana-data": {}}
    document: dict[str, Any] = {"services": services, "volumes": volumes}
    files = {COMPOSE_FILE: dump(document, __name__, COMMAND)}
    for name, text in _flag_files(planned, target).items():
        files[f"{FILES_DIR}/flags/{name}"] = text
    if observability:
        config = prometheus_yaml(planned, target)
        files[f"{FILES_DIR}/prometheus.yml"] = dump(config, __name__, COMMAND)
    return ComposeProject(files=files, document=document)


def project_images(root: Path) -> dict[str, str]:
    """Each project image's versioned tag, as `yardarm images build` makes it."""
    from yardarm.images.specs import SERVICE_IMAGES

    return {spec.name: spec.tags(root)[0] for spec in SERVICE_IMAGES}


def write(project: ComposeProject, out: Path) -> list[Path]:
    """Write every file of the project under `out`; the paths written."""
    written = []
    for relative, text in project.files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def stale(project: ComposeProject, out: Path) -> list[Path]:
    """The project's files under `out` that differ from the rendering, or are missing."""
    return [
        out / relative
        for relative, text in project.files.items()
        if not (out / relative).is_file() or (out / relative).read_text() != text
    ]


def load(path: Path) -> dict[str, Any]:
    """A compose file's document."""
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document
