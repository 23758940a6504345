"""The Helm chart's values, rendered from the deployment model.

`charts/yardarm/values.yaml` is this module's output for the defaults (`yardarm chart`
writes it, `--check` and the tests compare), and the Pulumi program hands the chart the
same rendering of the stack's own `yardarm.yaml`. The chart's templates decide how
things run on Kubernetes (probes, security contexts, policies); every setting a service
reads comes from here, through `instance_settings` and `KubernetesTarget`, so the chart
cannot drift from the other targets.

A workload's pods share one environment. What differs per pod the chart sets from the
downward API: each pod's instance name (its own name) and a datastore replica's id (its
pod index). So the per-pod keys are left out here, the datastore's peer list names every
replica (a replica leaves itself out), and the gateway's bootstrap endpoints name each
track's Service once (the controller replaces them with the pods' own addresses from the
EndpointSlices).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from yardarm.containers.target import (
    FLAGS_FILE,
    FLAGS_MOUNT,
    HOME_MOUNT,
    POSTGRES_PORT,
    POSTGRES_USER,
    STATE_MOUNT,
    version_flags_file,
)
from yardarm.databases import SERVICE_DATABASES
from yardarm.kubernetes.target import DEFAULT_RELEASE, KubernetesTarget
from yardarm.model import (
    ROLLABLE,
    Deployment,
    Instance,
    Topology,
    deployment,
    instance_settings,
    pinned,
)
from yardarm.observability.yamltext import dump

CHART_DIR: Final = "charts/yardarm"
VALUES_FILE: Final = "values.yaml"
COMMAND: Final = "yardarm chart"
RULES_SOURCE: Final = "prometheus/rules/"  # under observability/
RULES_DIR: Final = "files/rules"
# The tracks a rollable service has a Deployment for: its primary track and each one the
# rollout engine runs (`blue` is the stable track of a blue-green rollout).
ROLLOUT_TRACKS: Final = ("canary", "baseline", "green")
CONTROL: Final = "control"

# Resources per container: requests sized for a small cluster (kind, k3d), limits that
# keep one runaway pod from starving its node.
RESOURCES: Final[dict[str, dict[str, dict[str, str]]]] = {
    "gateway": {"requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "1", "memory": "256Mi"}},
    "orders": {"requests": {"cpu": "100m", "memory": "160Mi"},
               "limits": {"cpu": "1", "memory": "320Mi"}},
    "fulfillment": {"requests": {"cpu": "50m", "memory": "128Mi"},
                    "limits": {"cpu": "500m", "memory": "256Mi"}},
    "datastore": {"requests": {"cpu": "100m", "memory": "128Mi"},
                  "limits": {"cpu": "1", "memory": "256Mi"}},
    CONTROL: {"requests": {"cpu": "50m", "memory": "192Mi"},
              "limits": {"cpu": "500m", "memory": "512Mi"}},
}  # fmt: skip
# Stateless services scale out on CPU between the model's replicas and this many.
AUTOSCALE_MAX_FACTOR: Final = 4
AUTOSCALE_CPU_PERCENT: Final = 70


def _per_pod_keys(service: str) -> set[str]:
    prefix = f"YARDARM_{service.upper()}_"
    keys = {prefix + "INSTANCE"}
    if service == "datastore":
        keys.add(prefix + "REPLICA_ID")
    return keys


def _stand_in(deployment: Deployment, service: str, track: str) -> Instance:
    """An instance of a track that runs none yet (a rollout's, at 0 replicas): the
    service's primary version, on that track."""
    spec = deployment.topology.services.spec(service)
    return Instance(service=service, track=track, ordinal=0, version=spec.version, primary=False)


def _dedupe_upstreams(value: str) -> str:
    """The gateway's UPSTREAMS with each URL once (replicas share their track's Service)."""
    upstreams = json.loads(value)
    for name, listed in upstreams.items():
        endpoints = listed["endpoints"] if isinstance(listed, dict) else listed
        kept: list[dict[str, str]] = []
        for endpoint in endpoints:
            if all(endpoint["url"] != other["url"] for other in kept):
                kept.append(endpoint)
        if isinstance(listed, dict):
            listed["endpoints"] = kept
        else:
            upstreams[name] = kept
    return json.dumps(upstreams)


def workload_env(
    deployment: Deployment, target: KubernetesTarget, service: str, track: str
) -> dict[str, str]:
    """The settings every pod of one workload shares (per-pod keys left out)."""
    instances = deployment.of(service, track) or [_stand_in(deployment, service, track)]
    drop = _per_pod_keys(service)
    envs = [
        {k: v for k, v in instance_settings(deployment, inst, target).items() if k not in drop}
        for inst in instances
    ]
    shared = dict(envs[0])
    if service == "datastore":
        key = "YARDARM_DATASTORE_PEERS"
        peers: dict[str, Any] = {}
        for env in envs:
            peers |= json.loads(env.pop(key))
        if peers:
            shared[key] = json.dumps(dict(sorted(peers.items(), key=lambda item: int(item[0]))))
    for env in envs[1:]:
        differ = {k for k in shared if env.get(k) != shared[k]} - {"YARDARM_DATASTORE_PEERS"}
        if differ:
            raise ValueError(f"{service} pods on {track} would differ in {sorted(differ)}")
    if service == "gateway":
        key = "YARDARM_GATEWAY_UPSTREAMS"
        shared[key] = _dedupe_upstreams(shared[key])
    return shared


def _version(deployment: Deployment, service: str, track: str) -> str:
    instances = deployment.of(service, track)
    return instances[0].version if instances else _stand_in(deployment, service, track).version


def _track(
    deployment: Deployment, target: KubernetesTarget, service: str, track: str
) -> dict[str, Any]:
    version = _version(deployment, service, track)
    release = deployment.topology.services.spec(service).release(version)
    return {
        "replicas": len(deployment.of(service, track)),
        "version": version,
        "image": release.image,
        "env": workload_env(deployment, target, service, track),
    }


def _flags(deployment: Deployment, target: KubernetesTarget) -> dict[str, str]:
    """Every flag file by name: the stack's, and each declared pinning version's (a
    rollout may start any declared version on any track)."""
    topology = deployment.topology
    files = {FLAGS_FILE: json.dumps({"flags": topology.flags}, separators=(",", ":"))}
    for service in ROLLABLE:
        spec = topology.services.spec(service)
        for version, declared in spec.versions.items():
            pins = declared.flags
            if pins:
                inst = Instance(service=service, track="canary", ordinal=0, version=version)
                document = {"flags": pinned(topology.flags, pins)}
                files[version_flags_file(inst)] = json.dumps(document, separators=(",", ":"))
    return files


def _access_roles() -> dict[str, Any]:
    from yardarm.credentials import PRINCIPALS, ROLES

    return {
        "roles": {name: role.model_dump(mode="json") for name, role in ROLES.items()},
        "principals": {name: list(roles) for name, roles in PRINCIPALS.items()},
    }


def _autoscaling(replicas: int) -> dict[str, Any]:
    return {
        "enabled": True,
        "minReplicas": max(1, replicas),
        "maxReplicas": max(1, replicas) * AUTOSCALE_MAX_FACTOR,
        "targetCPUUtilizationPercentage": AUTOSCALE_CPU_PERCENT,
    }


def render_values(
    topology: Topology, images: dict[str, str], release: str = DEFAULT_RELEASE
) -> dict[str, Any]:
    """The chart's values for `topology`'s initial deployment; `images` maps each service
    and `control` to `repository:tag`."""
    planned = deployment(topology)
    target = KubernetesTarget(planned, release)
    services = topology.services

    def image(name: str) -> dict[str, str]:
        repository, _, tag = images[name].rpartition(":")
        return {"repository": repository, "tag": tag}

    values: dict[str, Any] = {
        # The names below (Services, pods) are the release's: the chart refuses another.
        "release": release,
        "environment": topology.environment,
        "image": {"registry": "", "pullPolicy": "IfNotPresent"},
        "images": {name: image(name) for name in (*ROLLABLE, "gateway", "datastore", CONTROL)},
        "mounts": {"home": HOME_MOUNT, "flags": FLAGS_MOUNT, "state": STATE_MOUNT},
        "flags": _flags(planned, target),
        "credentials": {"existingSecret": "", **_access_roles()},
        "postgres": {
            "host": target.postgres_host,
            "port": POSTGRES_PORT,
            "user": POSTGRES_USER,
            "existingSecret": "",
            "databases": list(SERVICE_DATABASES),
        },
        "nats": {"url": target.nats_url(planned.instances[0])},
        "otlp": {"endpoint": ""},
        # The model itself, for the controller (a rollout renders its version's settings
        # from it, as this module does): the chart mounts it as `topology.json`.
        "topology": topology.model_dump_json(),
    }
    gateway = planned.of("gateway")[0]
    values["gateway"] = {
        "replicas": services.gateway.replicas,
        "version": gateway.version,
        "ports": {"http": target.port(gateway), "admin": target.gateway_admin_port(gateway)},
        "env": workload_env(planned, target, "gateway", gateway.track),
        "service": {"type": "ClusterIP"},
        "autoscaling": _autoscaling(services.gateway.replicas),
        "resources": RESOURCES["gateway"],
    }
    for service in ROLLABLE:
        spec = services.spec(service)
        tracks = (spec.track, *(t for t in ROLLOUT_TRACKS if t != spec.track))
        values[service] = {
            "port": target.port(planned.of(service)[0]),
            "primaryTrack": spec.track,
            "tracks": {track: _track(planned, target, service, track) for track in tracks},
            "autoscaling": _autoscaling(spec.replicas),
            "resources": RESOURCES[service],
        }
    first = planned.of("datastore")[0]
    values["datastore"] = {
        "replicas": services.datastore.replicas,
        "version": first.version,
        "ports": {"http": target.port(first), "raft": topology.raft_port(0)},
        "env": workload_env(planned, target, "datastore", first.track),
        "storage": {"size": "1Gi", "storageClassName": ""},
        "resources": RESOURCES["datastore"],
    }
    values["controller"] = {
        "enabled": True,
        "port": topology.rollouts_port,
        # The in-cluster Prometheus the rollout judge reads (the Pulumi program sets it);
        # empty: the controller scrapes the pods itself.
        "prometheusUrl": "",
        "resources": RESOURCES[CONTROL],
    }
    values["init"] = {"enabled": True, "datastoreUrls": [target.url(i, i) for i in
                                                          planned.of("datastore")]}  # fmt: skip
    values["podDisruptionBudget"] = {"enabled": True}
    values["networkPolicy"] = {"enabled": True}
    values["serviceMonitor"] = {"enabled": False, "interval": "15s"}
    values["prometheusRule"] = {"enabled": False}
    return values


def render_files(
    root: Path, topology: Topology | None = None, release: str = DEFAULT_RELEASE
) -> dict[str, str]:
    """The chart's generated files by path relative to the chart: `values.yaml`, and the
    project's Prometheus rules under `files/rules/` (Helm reads no file outside the chart;
    the PrometheusRule template embeds them)."""
    from yardarm.containers.compose import project_images
    from yardarm.observability import rules

    values = render_values(topology or Topology(), project_images(root), release)
    files = {VALUES_FILE: dump(values, __name__, COMMAND)}
    for path, text in sorted(rules.render_files().items()):
        if path.startswith(RULES_SOURCE):
            files[f"{RULES_DIR}/{path.removeprefix(RULES_SOURCE)}"] = text
    return files
