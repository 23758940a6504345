"""The rollout engine's effects on Kubernetes: which Deployment each effect changes, with
what image and settings, and how long it waits.

The Kubernetes API is faked at the client's boundary (`AppsV1Api`, `CoreV1Api`): the
Deployments are the JSON the API server keeps, read back as the client's models, changed
only by the JSON patches the effects send (their `test` operations checked), and rolled
out by a small stand-in for the Deployment controller that takes a few reads to get there.
The expected settings are taken from the chart's values and the deployment model, not
from the effects' own rendering.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes.client import V1Deployment, V1Pod, V1PodList
from kubernetes.client.exceptions import ApiException

from tests.gateway.conftest import datastore_url
from yardarm.kubernetes.effects import Cluster, KubernetesEffects
from yardarm.kubernetes.endpoints import EndpointPublisher
from yardarm.kubernetes.values import render_values
from yardarm.model import Topology
from yardarm.rollout.engine import EffectFailed
from yardarm.routing_writer import ROUTING_KEY, Endpoint, RoutingWriter

__all__ = ["datastore_url"]

RELEASE = "shop"
NAMESPACE = "yardarm"
IMAGES = {
    name: f"yardarm/{name}:0.1.0"
    for name in ("orders", "fulfillment", "gateway", "datastore", "control")
}
VERSION_LABEL = "app.kubernetes.io/version"


def env_of(values_env: dict[str, str], service: str) -> list[dict[str, Any]]:
    """A container's env as the chart renders it: the workload's, then the per-pod ones."""
    prefix = f"YARDARM_{service.upper()}_"
    return [
        *({"name": k, "value": v} for k, v in values_env.items()),
        {"name": f"{prefix}INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": f"{prefix}DRAIN_DELAY_S", "value": "5"},
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector:4318"},
    ]


def deployment_doc(
    name: str, service: str, track: str, version: str, replicas: int, image: str, env: Any
) -> dict[str, Any]:
    selector = {
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": service,
        "yardarm.dev/service": service,
        "yardarm.dev/track": track,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "generation": 1,
                     "resourceVersion": "100"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**selector, VERSION_LABEL: version}},
                "spec": {"containers": [{"name": service, "image": image, "env": env}]},
            },
        },
        "status": rolled_status(replicas, 1),
    }  # fmt: skip


def rolled_status(replicas: int, generation: int) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
    }


def model(doc: dict[str, Any]) -> V1Deployment:
    """The client's model of a stored Deployment, as a read returns it."""
    found = V1Deployment.from_dict(copy.deepcopy(doc))
    assert found is not None
    return found


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def _walk(doc: Any, path: str) -> tuple[Any, str | int]:
    parts = [_unescape(p) for p in path.split("/")[1:]]
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last: str | int = int(parts[-1]) if isinstance(node, list) else parts[-1]
    return node, last


class FakeApps:
    """`AppsV1Api`'s Deployment calls over JSON documents, with a Deployment controller
    that needs `delay` reads after a change to roll it out (never, when `stuck`)."""

    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs
        self.patches: list[tuple[str, list[dict[str, Any]], str | None]] = []
        self.reads: list[str] = []
        self.delay = 2
        self.stuck = False
        self.interfere: dict[str, Any] | None = None  # one write by someone else
        self._pending: dict[str, int] = {}

    def read_namespaced_deployment(self, name: str, namespace: str, **_: Any) -> V1Deployment:
        assert namespace == NAMESPACE
        if name not in self.docs:
            raise ApiException(status=404, reason="Not Found")
        self.reads.append(name)
        doc = self.docs[name]
        pending = self._pending.get(name)
        if pending is not None and not self.stuck:
            if pending <= 0:
                del self._pending[name]
                generation = doc["metadata"]["generation"]
                doc["status"] = rolled_status(doc["spec"]["replicas"], generation)
            else:
                self._pending[name] = pending - 1
        return model(doc)

    def patch_namespaced_deployment(
        self, name: str, namespace: str, body: Any, _content_type: str | None = None, **_: Any
    ) -> V1Deployment:
        assert namespace == NAMESPACE
        self.patches.append((name, copy.deepcopy(body), _content_type))
        doc = self.docs[name]
        if self.interfere is not None:  # someone else wrote in between
            doc["metadata"]["resourceVersion"] = str(int(doc["metadata"]["resourceVersion"]) + 1)
            self.interfere = None
        changed = copy.deepcopy(doc)
        for op in body:
            node, key = _walk(changed, op["path"])
            if op["op"] == "test":
                if node[key] != op["value"]:
                    raise ApiException(status=422, reason="the test operation failed")
            elif op["op"] == "add":
                node[key] = copy.deepcopy(op["value"])
            else:
                raise AssertionError(f"unexpected operation {op}")
        if changed["spec"] != doc["spec"]:
            changed["metadata"]["generation"] += 1
            old = doc["status"]
            changed["status"] = {**old, "updatedReplicas": 0, "readyReplicas": 0,
                                 "availableReplicas": 0}  # fmt: skip
            self._pending[name] = self.delay
        changed["metadata"]["resourceVersion"] = str(int(doc["metadata"]["resourceVersion"]) + 1)
        self.docs[name] = changed
        return model(changed)

    def patched(self) -> list[str]:
        return [name for name, _, _ in self.patches]


class FakeCore:
    """`CoreV1Api.list_namespaced_pod`: the running pods of the fake Deployments (and, for
    `lingering` reads, the pods of one being scaled to 0 while they terminate)."""

    def __init__(self, apps: FakeApps) -> None:
        self.apps = apps
        self.lingering: dict[str, int] = {}
        self.selectors: list[str] = []

    def list_namespaced_pod(self, namespace: str, label_selector: str = "", **_: Any) -> V1PodList:
        self.selectors.append(label_selector)
        wanted = dict(pair.split("=", 1) for pair in label_selector.split(","))
        pods = []
        for index, (name, doc) in enumerate(sorted(self.apps.docs.items())):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            if any(labels.get(k) != v for k, v in wanted.items()):
                continue
            count = doc["status"].get("replicas") or 0
            if self.lingering.get(name):
                self.lingering[name] -= 1
                count = max(count, 1)
            for i in range(count):
                pod = V1Pod.from_dict({
                    "metadata": {"name": f"{name}-{i}", "labels": labels},
                    "status": {"phase": "Running", "podIP": f"10.0.{index}.{i + 1}"},
                })  # fmt: skip
                assert pod is not None
                pods.append(pod)
        return V1PodList(items=pods)


def make_cluster(topology: Topology) -> tuple[Cluster, FakeApps, FakeCore]:
    """The chart's Deployments for `topology`, as the chart renders them from its values."""
    values = render_values(topology, IMAGES, RELEASE)
    docs = {}
    for service in ("orders", "fulfillment"):
        for track, spec in values[service]["tracks"].items():
            name = f"{RELEASE}-{service}-{track}"
            image = spec["image"] or IMAGES[service]
            env = env_of(spec["env"], service)
            docs[name] = deployment_doc(
                name, service, track, spec["version"], spec["replicas"], image, env
            )
    gateway = values["gateway"]
    docs[f"{RELEASE}-gateway"] = deployment_doc(
        f"{RELEASE}-gateway", "gateway", "stable", gateway["version"], gateway["replicas"],
        IMAGES["gateway"], env_of(gateway["env"], "gateway"),
    )  # fmt: skip
    apps = FakeApps(docs)
    core = FakeCore(apps)
    return Cluster(NAMESPACE, apps, core), apps, core  # type: ignore[arg-type]


def make_effects(
    topology: Topology,
    *,
    writer: RoutingWriter | None = None,
    timeout_s: float = 5.0,
    publisher: EndpointPublisher | None = None,
) -> tuple[KubernetesEffects, FakeApps, FakeCore, list[list[str]]]:
    cluster, apps, core = make_cluster(topology)
    gateways_seen: list[list[str]] = []

    def routing(gateways: Sequence[str]) -> RoutingWriter:
        gateways_seen.append(list(gateways))
        assert writer is not None
        return writer

    effects = KubernetesEffects(
        topology,
        cluster,
        RELEASE,
        routing=routing,
        timeout_s=timeout_s,
        poll_s=0.01,
        publisher=publisher,
    )
    return effects, apps, core, gateways_seen


def container(apps: FakeApps, name: str) -> dict[str, Any]:
    found: dict[str, Any] = apps.docs[name]["spec"]["template"]["spec"]["containers"][0]
    return found


def plain_env(apps: FakeApps, name: str) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(apps, name)["env"] if "value" in e}


def with_versions(**versions: dict[str, Any]) -> Topology:
    """The default topology with orders' extra versions."""
    data = json.loads(Topology().model_dump_json())
    data["services"]["orders"]["versions"] |= versions
    return Topology.model_validate(data)


# -- tracks --------------------------------------------------------------------------


async def test_a_track_runs_the_version_with_the_settings_the_model_gives_it() -> None:
    topology = Topology()
    effects, apps, _, _ = make_effects(topology)
    canary = f"{RELEASE}-orders-canary"
    before = plain_env(apps, canary)

    await effects.ensure_tracks("orders", {"canary": ("0.3.0-errors", 2)})

    # Only the canary's Deployment, in one JSON patch guarded by its resourceVersion.
    assert apps.patched() == [canary]
    _, operations, content_type = apps.patches[0]
    assert content_type == "application/json-patch+json"
    assert operations[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "100"}
    doc = apps.docs[canary]
    assert doc["spec"]["replicas"] == 2
    # 0.3.0-errors names no image: the service's own, from the stable Deployment.
    assert container(apps, canary)["image"] == "yardarm/orders:0.1.0"
    env = plain_env(apps, canary)
    assert env["YARDARM_ORDERS_VERSION"] == "0.3.0-errors"
    assert env["YARDARM_ORDERS_TRACK"] == "canary"
    # The version pins a flag: its own flag file, as the chart's flags ConfigMap names it.
    assert env["YARDARM_ORDERS_FLAGS_FILE"] == "/etc/yardarm/flags/orders-0.3.0-errors.json"
    flag_files = render_values(topology, IMAGES, RELEASE)["flags"]
    assert "orders-0.3.0-errors.json" in flag_files
    changed = {k for k in env if env[k] != before.get(k)} | (before.keys() - env.keys())
    assert changed == {"YARDARM_ORDERS_VERSION", "YARDARM_ORDERS_FLAGS_FILE"}
    # What the chart gives each pod is kept.
    names = [e["name"] for e in container(apps, canary)["env"]]
    assert "YARDARM_ORDERS_INSTANCE" in names and "OTEL_EXPORTER_OTLP_ENDPOINT" in names
    assert env["YARDARM_ORDERS_DRAIN_DELAY_S"] == "5"
    assert doc["spec"]["template"]["metadata"]["labels"][VERSION_LABEL] == "0.3.0-errors"
    # It returned once the Deployment controller had rolled it out, not before.
    assert doc["status"]["readyReplicas"] == 2
    assert doc["status"]["observedGeneration"] == doc["metadata"]["generation"] == 2

    # Idempotent: asked again, nothing is patched.
    await effects.ensure_tracks("orders", {"canary": ("0.3.0-errors", 2)})
    assert apps.patched() == [canary]


async def test_a_version_with_its_own_image_and_settings_and_back() -> None:
    topology = with_versions(
        **{"0.4.0": {"image": "registry.example/orders:0.4.0", "env": {"POOL_SIZE": "9"}}}
    )
    effects, apps, _, _ = make_effects(topology)
    canary = f"{RELEASE}-orders-canary"
    await effects.ensure_tracks("orders", {"canary": ("0.4.0", 1)})
    assert container(apps, canary)["image"] == "registry.example/orders:0.4.0"
    assert plain_env(apps, canary)["YARDARM_ORDERS_POOL_SIZE"] == "9"
    # Back to the primary version: the service's image, and 0.4.0's setting gone.
    await effects.ensure_tracks("orders", {"canary": ("0.1.0", 1)})
    assert container(apps, canary)["image"] == "yardarm/orders:0.1.0"
    assert "YARDARM_ORDERS_POOL_SIZE" not in plain_env(apps, canary)
    assert plain_env(apps, canary)["YARDARM_ORDERS_DRAIN_DELAY_S"] == "5"


async def test_what_the_chart_set_apart_from_the_version_is_kept() -> None:
    effects, apps, _, _ = make_effects(Topology())
    stable = f"{RELEASE}-orders-stable"
    env = container(apps, stable)["env"]
    moved = "postgresql://yardarm@db.example:5432/orders?passfile=/run/yardarm/credentials/pgpass"
    for entry in env:
        if entry["name"] == "YARDARM_ORDERS_DATABASE_URL":
            entry["value"] = moved  # the release's values point elsewhere
    await effects.promote("orders", "0.3.0-slow")
    after = plain_env(apps, stable)
    assert after["YARDARM_ORDERS_DATABASE_URL"] == moved
    assert after["YARDARM_ORDERS_VERSION"] == "0.3.0-slow"
    assert after["YARDARM_ORDERS_FLAGS_FILE"] == "/etc/yardarm/flags/orders-0.3.0-slow.json"


async def test_a_track_that_never_gets_ready_fails_naming_where_to_look() -> None:
    effects, apps, _, _ = make_effects(Topology(), timeout_s=0.3)
    apps.stuck = True
    with pytest.raises(EffectFailed) as failed:
        await effects.ensure_tracks("orders", {"canary": ("0.2.0", 1)})
    message = str(failed.value)
    assert "orders on canary at 0.2.0" in message
    assert "0/1 ready" in message
    assert f"`kubectl describe deployment/{RELEASE}-orders-canary -n {NAMESPACE}`" in message


class Published:
    async def publish(self, upstream: str, endpoints: Sequence[Endpoint]) -> int:
        return 1


def orders_slice(track: str, *addresses: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{RELEASE}-orders-{track}-x",
                     "labels": {"kubernetes.io/service-name": f"{RELEASE}-orders-{track}"}},
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
        "ports": [{"name": "http", "port": 8100}],
    }  # fmt: skip


async def test_a_track_is_ready_only_once_the_gateway_is_told_its_pods() -> None:
    publisher = EndpointPublisher(Published(), RELEASE, debounce_s=0.0)
    effects, apps, _, _ = make_effects(Topology(), publisher=publisher)
    publisher.offer([orders_slice("stable", "10.0.0.1")])
    await publisher.flush()
    started = asyncio.create_task(effects.ensure_tracks("orders", {"canary": ("0.2.0", 2)}))
    await asyncio.sleep(0.3)
    assert apps.docs[f"{RELEASE}-orders-canary"]["status"]["readyReplicas"] == 2
    assert not started.done()  # its pods are ready, but not in the routing document yet
    publisher.offer([orders_slice("stable", "10.0.0.1"), orders_slice("canary", "10.0.1.1")])
    await publisher.flush()
    await asyncio.sleep(0.1)
    assert not started.done()  # one of two
    publisher.offer([orders_slice("stable", "10.0.0.1"),
                     orders_slice("canary", "10.0.1.1", "10.0.1.2")])  # fmt: skip
    await publisher.flush()
    await asyncio.wait_for(started, 2.0)


async def test_pods_the_gateway_is_never_told_of_fail_the_step() -> None:
    publisher = EndpointPublisher(Published(), RELEASE, debounce_s=0.0)
    effects, _, _, _ = make_effects(Topology(), publisher=publisher, timeout_s=0.3)
    with pytest.raises(EffectFailed, match="routing document lists none of them"):
        await effects.ensure_tracks("orders", {"canary": ("0.2.0", 1)})


async def test_a_write_in_between_is_read_again_not_overwritten() -> None:
    effects, apps, _, _ = make_effects(Topology())
    apps.interfere = {}
    await effects.ensure_tracks("orders", {"baseline": ("0.1.0", 1)})
    name = f"{RELEASE}-orders-baseline"
    assert apps.patched() == [name, name]  # refused once (its test failed), then applied
    assert apps.docs[name]["spec"]["replicas"] == 1


async def test_stopping_a_track_scales_it_to_zero_and_waits_for_its_pods_to_go() -> None:
    effects, apps, core, _ = make_effects(Topology())
    await effects.ensure_tracks("orders", {"canary": ("0.2.0", 1)})
    canary = f"{RELEASE}-orders-canary"
    env = container(apps, canary)["env"]
    core.lingering[canary] = 3  # terminating for three listings
    await effects.stop_tracks("orders", ("canary", "baseline"))
    assert apps.docs[canary]["spec"]["replicas"] == 0
    assert core.lingering[canary] == 0  # it waited until they were gone
    assert container(apps, canary)["env"] == env  # the settings left as they were
    # The baseline ran nothing: nothing to patch.
    assert apps.patched() == [canary, canary]
    _, operations, _ = apps.patches[-1]
    assert [op["path"] for op in operations if op["op"] == "add"] == ["/spec/replicas"]


# -- stable --------------------------------------------------------------------------


async def test_promote_rolls_the_stable_deployment_and_waits_for_the_rollout() -> None:
    effects, apps, _, _ = make_effects(Topology())
    stable = f"{RELEASE}-orders-stable"
    assert effects.replicas("orders") == 2
    assert effects.stable_version("orders") == "0.1.0"
    apps.delay = 4

    await effects.promote("orders", "0.2.0")

    assert apps.patched() == [stable]
    _, operations, _ = apps.patches[0]
    assert "/spec/replicas" not in [op["path"] for op in operations]  # its size is its own
    env = plain_env(apps, stable)
    assert env["YARDARM_ORDERS_VERSION"] == "0.2.0"
    assert env["YARDARM_ORDERS_TRACK"] == "stable"
    assert env["YARDARM_ORDERS_FLAGS_FILE"] == "/etc/yardarm/flags/flags.json"  # pins none
    doc = apps.docs[stable]
    assert doc["status"] == rolled_status(2, doc["metadata"]["generation"])
    assert apps.reads.count(stable) >= 4 + 2  # it polled until the rollout finished
    assert effects.stable_version("orders") == "0.2.0"
    assert effects.replicas("orders") == 2


async def test_the_gateway_is_promoted_in_its_own_deployment() -> None:
    effects, apps, _, _ = make_effects(Topology())
    await effects.promote("gateway", "0.1.0")  # as it is: nothing to do
    assert apps.patched() == []
    topology = Topology.model_validate(
        json.loads(Topology().model_dump_json())
        | {"services": {**json.loads(Topology().services.model_dump_json()),
                        "gateway": {"versions": {"0.2.0": {}}}}}
    )  # fmt: skip
    effects, apps, _, _ = make_effects(topology)
    await effects.promote("gateway", "0.2.0")
    assert apps.patched() == [f"{RELEASE}-gateway"]
    assert plain_env(apps, f"{RELEASE}-gateway")["YARDARM_GATEWAY_VERSION"] == "0.2.0"


async def test_a_deployment_of_anything_else_is_never_patched() -> None:
    effects, apps, _, _ = make_effects(Topology())
    # A Deployment whose pods say they are another track's: left as it is.
    labels = apps.docs[f"{RELEASE}-orders-green"]["spec"]["template"]["metadata"]["labels"]
    labels["yardarm.dev/track"] = "stable"
    with pytest.raises(EffectFailed, match=r"yardarm\.dev/track=stable, not green"):
        await effects.ensure_tracks("orders", {"green": ("0.2.0", 1)})
    with pytest.raises(EffectFailed, match="no gateway on track canary"):
        await effects.ensure_tracks("gateway", {"canary": ("0.1.0", 1)})
    with pytest.raises(EffectFailed, match="datastore is not rolled by the Kubernetes"):
        await effects.promote("datastore", "0.1.0")
    with pytest.raises(EffectFailed, match="no orders on track blue"):
        await effects.stop_tracks("orders", ("blue",))
    with pytest.raises(EffectFailed, match="unknown version"):
        await effects.ensure_tracks("orders", {"canary": ("9.9.9", 1)})
    assert apps.patched() == []


# -- traffic and metrics ---------------------------------------------------------------


async def test_weights_move_both_routes_of_orders_in_the_routing_document(
    datastore_url: str,
) -> None:
    writer = RoutingWriter([datastore_url], [], "unused-token", timeout_s=10)
    effects, _, _, gateways = make_effects(Topology(), writer=writer)
    await effects.set_weights("orders", {"stable": 80, "canary": 10, "baseline": 10})
    async with httpx.AsyncClient() as client:
        entry = (await client.get(f"{datastore_url}/kv/{ROUTING_KEY}")).json()
    routes = {route["name"]: route for route in entry["value"]["routes"]}
    for name in ("api-orders", "api-stock"):
        assert routes[name]["split"] == {"stable": 80, "canary": 10, "baseline": 10}
    # The writer waits for every gateway pod, by its admin port.
    assert gateways == [["http://10.0.4.1:8081"]]


def test_metrics_are_scraped_from_the_gateway_and_every_running_track(tmp_path: Path) -> None:
    effects, apps, _, _ = make_effects(Topology())
    apps.docs[f"{RELEASE}-orders-canary"]["spec"]["replicas"] = 1
    apps.docs[f"{RELEASE}-orders-canary"]["status"] = rolled_status(1, 1)
    assert effects.metrics_urls("orders") == [
        "http://10.0.4.1:8081",  # the gateway's admin port
        "http://10.0.8.1:8100",  # stable's two pods
        "http://10.0.8.2:8100",
        "http://10.0.6.1:8100",  # the canary's
    ]


async def test_the_engine_converges_a_canary_step_and_its_abort(datastore_url: str) -> None:
    from yardarm.rollout.engine import EngineConfig, converge, world
    from yardarm.rollout.spec import RolloutSpec
    from yardarm.rollout.state import Rollout

    writer = RoutingWriter([datastore_url], [], "unused-token", timeout_s=10)
    effects, apps, _, _ = make_effects(Topology(), writer=writer)
    rollout = Rollout(
        spec=RolloutSpec(service="orders", version="0.2.0", steps=(10, 100)),
        stable_version="0.1.0",
        from_version="0.1.0",
    )
    await converge(rollout, world(rollout, EngineConfig(), 2), effects)
    canary, baseline = f"{RELEASE}-orders-canary", f"{RELEASE}-orders-baseline"
    assert plain_env(apps, canary)["YARDARM_ORDERS_VERSION"] == "0.2.0"
    assert plain_env(apps, baseline)["YARDARM_ORDERS_VERSION"] == "0.1.0"
    assert apps.docs[canary]["spec"]["replicas"] == apps.docs[baseline]["spec"]["replicas"] == 1
    async with httpx.AsyncClient() as client:
        entry = (await client.get(f"{datastore_url}/kv/{ROUTING_KEY}")).json()
    split = {r["name"]: r.get("split") for r in entry["value"]["routes"]}
    assert split["api-orders"] == {"stable": 80, "canary": 10, "baseline": 10}

    rollout.phase = "aborted"
    await converge(rollout, world(rollout, EngineConfig(), 2), effects)
    async with httpx.AsyncClient() as client:
        entry = (await client.get(f"{datastore_url}/kv/{ROUTING_KEY}")).json()
    split = {r["name"]: r.get("split") for r in entry["value"]["routes"]}
    assert split["api-orders"] == {"stable": 100}
    assert apps.docs[canary]["spec"]["replicas"] == apps.docs[baseline]["spec"]["replicas"] == 0
    assert f"{RELEASE}-orders-stable" not in apps.patched()  # stable was never touched
