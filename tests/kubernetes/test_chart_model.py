"""The chart runs what the deployment model says: the images `yardarm images build`
makes, each pod with the settings every target gives its instance, and every address a
pod dials is a rendered Service or pod listening on that port.

The addresses are checked against the rendered objects alone (the StatefulSet, the
Services and the containers' ports), not against the Kubernetes target, so a wrong name in
the target cannot make both sides agree."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from tests.kubernetes.conftest import RELEASE, Manifest, Rendering, containers, env_of
from yardarm.images.specs import SERVICE_IMAGES, source_root
from yardarm.kubernetes.target import KubernetesTarget
from yardarm.model import Instance, Topology, deployment, instance_settings

# Set by the chart, per pod or for Kubernetes only; everything else is the model's.
PER_POD = {"INSTANCE", "REPLICA_ID", "POD_INDEX"}
CHART_ONLY = {"DRAIN_DELAY_S"}


def test_the_images_are_the_ones_the_build_makes(default: Rendering) -> None:
    root = source_root()
    built = {spec.tags(root)[0] for spec in SERVICE_IMAGES}
    used = {c["image"] for m in default.manifests for c in containers(m)}
    assert used == built


def _workloads(rendering: Rendering) -> list[tuple[str, str, Manifest]]:
    """(service, track, workload) for every service workload."""
    found = []
    for manifest in rendering.manifests:
        if manifest["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = manifest["spec"]["template"]["metadata"]["labels"]
        if "yardarm.dev/service" in labels:
            found.append((labels["yardarm.dev/service"], labels["yardarm.dev/track"], manifest))
    return found


def _model_env(service: str, track: str) -> list[dict[str, str]]:
    """The settings of each instance the model runs on (service, track), or of one
    stand-in when the track runs none yet."""
    planned = deployment(Topology())
    target = KubernetesTarget(planned, RELEASE)
    instances = planned.of(service, track)
    if not instances:
        version = planned.topology.services.spec(service).version
        instances = [Instance(service, track, 0, version, primary=False)]
    return [instance_settings(planned, inst, target) for inst in instances]


def _strip(env: dict[str, str], service: str, keys: set[str]) -> dict[str, str]:
    prefix = f"YARDARM_{service.upper()}_"
    return {k: v for k, v in env.items() if k.removeprefix(prefix) not in keys}


def test_each_pod_has_its_instances_settings(default: Rendering) -> None:
    workloads = _workloads(default)
    assert len(workloads) == 10  # gateway, datastore, 2 services x 4 tracks
    for service, track, manifest in workloads:
        rendered, fields = env_of(containers(manifest, init=False)[0])
        prefix = f"YARDARM_{service.upper()}_"
        assert fields[prefix + "INSTANCE"] == "metadata.name"
        assert rendered.pop(prefix + "DRAIN_DELAY_S") == "5"
        for ordinal, expected in enumerate(_model_env(service, track)):
            expected = _strip(expected, service, PER_POD)
            ours = dict(rendered)
            if service == "datastore":
                # Every pod shares one peer list; a replica leaves itself out.
                peers = json.loads(ours.pop(prefix + "PEERS"))
                peers.pop(str(ordinal + 1))
                assert json.loads(expected.pop(prefix + "PEERS")) == peers
            if service == "gateway":
                # One endpoint per track's Service: the model's replicas share it.
                key = prefix + "UPSTREAMS"
                model = json.loads(expected.pop(key))
                assert json.loads(ours.pop(key)) == {
                    name: [dict(t) for t in {json.dumps(e): e for e in endpoints}.values()]
                    for name, endpoints in model.items()
                }
            assert ours == expected, f"{service} {track} #{ordinal}"


def _listening(rendering: Rendering) -> dict[str, set[int]]:
    """Every DNS name the chart makes, with the ports a container behind it listens on:
    each Service (its ports that reach a container port) and each datastore pod by its
    name on the StatefulSet's governing Service."""
    pods = [
        (m["spec"]["template"]["metadata"]["labels"], containers(m, init=False)[0]["ports"])
        for m in rendering.manifests
        if m["kind"] in ("Deployment", "StatefulSet")
    ]
    names: dict[str, set[int]] = {}
    for service in rendering.of_kind("Service"):
        selector = service["spec"]["selector"]
        behind = [ports for labels, ports in pods if selector.items() <= labels.items()]
        assert behind, f"Service {service['metadata']['name']} selects no pod"
        reachable: set[int] = set()
        for port in service["spec"]["ports"]:
            for ports in behind:
                by_name = {p["name"]: p["containerPort"] for p in ports}
                if by_name.get(port["targetPort"]) == port["port"]:
                    reachable.add(port["port"])
        names[service["metadata"]["name"]] = reachable
    for sts in rendering.of_kind("StatefulSet"):
        governing = sts["spec"]["serviceName"]
        ports = {p["containerPort"] for p in containers(sts, init=False)[0]["ports"]}
        headless = rendering.get("Service", governing)
        assert headless["spec"]["clusterIP"] == "None"
        for index in range(sts["spec"]["replicas"]):
            names[f"{sts['metadata']['name']}-{index}.{governing}"] = ports
    return names


def _dialled(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


def test_the_datastore_peers_are_every_replica_by_its_stable_name(
    rendering: Rendering,
) -> None:
    sts = rendering.get("StatefulSet", f"{RELEASE}-datastore")
    listening = _listening(rendering)
    rendered, _ = env_of(containers(sts, init=False)[0])
    peers = json.loads(rendered["YARDARM_DATASTORE_PEERS"])
    container = containers(sts, init=False)[0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert sorted(peers, key=int) == [str(i + 1) for i in range(sts["spec"]["replicas"])]
    for replica_id, peer in peers.items():
        pod = f"{sts['metadata']['name']}-{int(replica_id) - 1}.{sts['spec']['serviceName']}"
        assert _dialled(peer["raft"]) == (pod, ports["raft"])
        assert _dialled(peer["http"]) == (pod, ports["http"])
        assert pod in listening


def test_every_address_a_pod_dials_is_listening(rendering: Rendering) -> None:
    listening = _listening(rendering)
    gateway = rendering.get("Deployment", f"{RELEASE}-gateway")
    env, _ = env_of(containers(gateway, init=False)[0])
    upstreams: dict[str, Any] = json.loads(env["YARDARM_GATEWAY_UPSTREAMS"])
    urls = [e["url"] for endpoints in upstreams.values() for e in endpoints]
    urls += json.loads(env["YARDARM_GATEWAY_DATASTORE_URLS"])
    for service, _track, manifest in _workloads(rendering):
        env, _ = env_of(containers(manifest, init=False)[0])
        if service == "orders":
            urls += json.loads(env["YARDARM_ORDERS_DATASTORE_URLS"])
    job = rendering.get("Job", f"{RELEASE}-init")
    command = containers(job, init=False)[0]["command"]
    urls += [command[i + 1] for i, arg in enumerate(command) if arg == "--datastore"]
    assert len(urls) > 10
    for url in urls:
        host, port = _dialled(url)
        assert port in listening.get(host, set()), f"{url}: nothing of the chart listens there"
    # The gateway's orders upstream is the primary track's Service.
    (orders,) = upstreams["orders"]
    assert _dialled(orders["url"])[0] == f"{RELEASE}-orders-stable"


def test_every_service_port_reaches_its_containers_port(rendering: Rendering) -> None:
    """Each Service port forwards to a named container port of every pod it selects, the
    same number a client dials (what Prometheus and the controller rely on)."""
    listening = _listening(rendering)
    for service in rendering.of_kind("Service"):
        name = service["metadata"]["name"]
        assert {p["port"] for p in service["spec"]["ports"]} == listening[name], name
